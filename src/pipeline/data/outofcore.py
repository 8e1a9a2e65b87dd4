"""Out-of-core preparation (`data.engine: duckdb`): the cleaning, filtering, vocabularies and splits of `prepare`,
as SQL over the Parquet or CSV log, written as Parquet shards by a hash of the user id (`data/shards.py` reads them).

The log is never a pandas frame: only its mapped columns are scanned, the event-type filter runs inside the scan,
and DuckDB's sorts, joins and per-user windows spill to a temporary folder beyond `data.shards.memory_limit_gb`.
What stays in memory is catalog-sized (the items table, the user and item vocabularies). Every step mirrors one of
`prepare.py`, in the same order, so both engines give the same `PreparedData` (tested on logs exercising every
option).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config_data import DataConfig, InteractionsConfig, ShardsConfig
from pipeline.data.load import MAX_TIMESTAMP, MIN_TIMESTAMP, check_event_types, load_items, require_columns
from pipeline.data.prepared import CONTEXT, DROPPED, TEST, TRAIN, VALID, natural_key
from pipeline.errors import PipelineInputError, shorten
from pipeline.storage import write_table

log = logging.getLogger("pipeline")

NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
# Python's str.strip() set for ASCII: ids and labels are trimmed as the pandas engine trims them.
WHITESPACE = "' \t\n\r\x0b\x0c'"


def shard_sql(user_column: str, count: int) -> str:
    """The shard of a user: the first 60 bits of md5(user id) modulo `count` (the same in Python, DuckDB and Spark)."""
    return f"CAST(('0x' || substr(md5({user_column}), 1, 15)) AS BIGINT) % {count}"


def prepare_shards(config: DataConfig, target_event_types: list[str] | None, folder: Path) -> dict:
    """Prepare the log into `folder` (events/shard=K/*.parquet, users.parquet, items.parquet, cold.parquet);
    return the manifest's facts (counts, event names). `folder` must exist and be empty."""
    try:
        import duckdb
    except ImportError:
        raise PipelineInputError("data.engine duckdb needs DuckDB: pip install 'interest-pipeline[outofcore]'") from None
    items = load_items(config.items, config.tags)
    connection = duckdb.connect(str(folder / "work.duckdb"), config=_settings(config.shards, folder))
    try:
        sql = _Sql(connection)
        _load(sql, config.interactions, config.rating_range)
        return _prepare(sql, items, config, target_event_types, folder)
    finally:
        connection.close()
        for leftover in (folder / "work.duckdb", folder / "work.duckdb.wal"):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(folder / "spill", ignore_errors=True)


def _settings(shards: ShardsConfig, folder: Path) -> dict:
    settings = {
        "memory_limit": f"{shards.memory_limit_gb}GB", "temp_directory": str(folder / "spill"),
        "preserve_insertion_order": "true",
    }
    if shards.threads is not None:
        settings["threads"] = str(shards.threads)
    return settings


class _Sql:
    def __init__(self, connection):
        self.connection = connection

    def run(self, statement: str, parameters=None):
        return self.connection.execute(statement, parameters or [])

    def one(self, statement: str, parameters=None):
        return self.run(statement, parameters).fetchone()[0]

    def column(self, statement: str) -> list:
        return [row[0] for row in self.run(statement).fetchall()]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _load(sql: _Sql, config: InteractionsConfig, rating_range) -> None:
    """Table `log`: ord (file row, 0-based), user_id, item, ts (unix seconds)[, rating][, event][, value]."""
    import duckdb

    path = Path(config.path)
    if not path.is_file():
        raise PipelineInputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PipelineInputError(f"{path}: file is empty")
    parquet = config.format == "parquet" or (config.format == "auto" and path.suffix.lower() in (".parquet", ".pq"))
    scan = (f"read_parquet({_text(str(path))}, file_row_number = true)" if parquet
            else f"read_csv({_text(str(path))}, all_varchar = true, header = true)")
    try:
        described = sql.run(f"DESCRIBE SELECT * FROM {scan}").fetchall()
    except duckdb.Error as err:
        raise PipelineInputError(f"{path}: cannot read as {'parquet' if parquet else 'csv'}: {str(err).splitlines()[0]}") from None
    types = {name: kind.upper() for name, kind, *_ in described}
    mapping = config.columns
    roles = {role: column for role, column in
             (("user", mapping.user), ("item", mapping.item), ("timestamp", mapping.timestamp), ("rating", mapping.rating),
              ("event", mapping.event), ("value", mapping.value)) if column}
    require_columns([name for name in types if name != "file_row_number"], list(dict.fromkeys(roles.values())), path)
    for role, column in roles.items():
        if types[column].startswith(("STRUCT", "MAP")) or types[column].endswith("]") or (
            types[column] == "BOOLEAN" and role != "event"
        ):
            kind = "a boolean" if types[column] == "BOOLEAN" else "a list or an object"
            raise PipelineInputError(f"{path}: row 1: {column!r} values are {kind} ({types[column]}), not plain values")

    ids = {role: f"nullif(trim(CAST({_quote(column)} AS VARCHAR), {WHITESPACE}), '')" for role, column in roles.items()}
    columns = [f"{'file_row_number' if parquet else 'row_number() OVER () - 1'} AS ord",
               f"{ids['user']} AS user_id", f"{ids['item']} AS item", f"{_seconds(mapping.timestamp, types)} AS ts"]
    for role in ("rating", "value"):
        if role in roles:
            columns.append(f"{_number(roles[role], types)} AS {role}")
    if "event" in roles:
        columns.append(f"{ids['event']} AS event")
        observed = sorted(value for value in sql.column(f"SELECT DISTINCT {ids['event']} FROM {scan}") if value is not None)
        for key, named in (("event_types", config.event_types), ("event_weights", config.event_weights)):
            check_event_types(named or [], observed, f"data.interactions.{key}", path)
    where = ""
    if config.event_types is not None:
        where = f"WHERE {ids['event']} IN ({', '.join(_text(name) for name in config.event_types)})"
    sql.run(f"CREATE TABLE log AS SELECT {', '.join(columns)} FROM {scan} {where}")

    def first_bad(condition: str, message: str, column: str, empty: str | None = None) -> None:
        """Raise `message` naming the first row meeting `condition` (`empty` instead where its cell is missing)."""
        row = sql.one(f"SELECT min(ord) FROM log WHERE {condition}")
        if row is None:
            return
        locate = f"WHERE file_row_number = {row}" if parquet else f"LIMIT 1 OFFSET {row}"
        shown = sql.one(f"SELECT CAST({_quote(column)} AS VARCHAR) FROM {scan} {locate}")
        missing = shown is None or not shown.strip()
        text = (empty if missing and empty else message).format(column=repr(column), value=shorten(shown))
        raise PipelineInputError(f"{path}: row {row + 1}: {text}")

    total = sql.one("SELECT count(*) FROM log")
    if total == 0:
        raise PipelineInputError(f"{path}: " + (f"no rows with event types {config.event_types}" if where else "no data rows"))
    for role, name in (("user", "user_id"), ("item", "item"), ("event", "event")):
        if role in roles:
            first_bad(f"{name} IS NULL", "empty {column}", roles[role])
    first_bad("ts IS NULL", "cannot parse {column} value {value} as unix seconds or ISO-8601", mapping.timestamp,
              empty="empty {column}")
    first_bad(f"ts < {MIN_TIMESTAMP} OR ts > {MAX_TIMESTAMP} OR NOT isfinite(ts)", "{column} value {value} is outside "
              "1970..2100 (timestamps must be unix seconds or ISO-8601)", mapping.timestamp)
    for role in ("rating", "value"):
        if role in roles:
            first_bad(f"{role} IS NULL", "{column} value {value} is not a number", roles[role], empty="empty {column}")
            first_bad(f"NOT isfinite({role})", "{column} value {value} is not a finite number", roles[role])
    if rating_range is not None and "rating" in roles:
        low, high = rating_range
        first_bad(f"rating < {low} OR rating > {high}",
                  f"{{column}} value {{value}} is outside data.rating_range [{low}, {high}]", roles["rating"])
    if "value" in roles:
        first_bad("value < 0", "{column} value {value} is negative", roles["value"])
    sql.run("ALTER TABLE log ALTER ts TYPE BIGINT USING CAST(floor(ts) AS BIGINT)")
    if where:
        log.info("kept %d interactions with event types %s", total, config.event_types)


def _seconds(column: str, types: dict[str, str]) -> str:
    """Unix seconds (DOUBLE) of a time column: a native timestamp (naive = UTC), a number, or text holding either."""
    kind, quoted = types[column], _quote(column)
    if kind.startswith("TIMESTAMP") or kind == "DATE":
        return f"CAST(epoch({quoted}) AS DOUBLE)"
    if kind.startswith(NUMERIC_TYPES):
        return f"CAST({quoted} AS DOUBLE)"
    text = f"trim(CAST({quoted} AS VARCHAR))"
    return f"coalesce(TRY_CAST({text} AS DOUBLE), CAST(epoch(TRY_CAST({text} AS TIMESTAMPTZ)) AS DOUBLE))"


def _number(column: str, types: dict[str, str]) -> str:
    kind, quoted = types[column], _quote(column)
    if kind.startswith(NUMERIC_TYPES):
        return f"CAST({quoted} AS DOUBLE)"
    return f"TRY_CAST(trim(CAST({quoted} AS VARCHAR)) AS DOUBLE)"


def _prepare(sql: _Sql, items: pd.DataFrame, config: DataConfig, target_event_types, folder: Path) -> dict:
    """From table `log` to the shards, step by step as `prepare` does."""
    path = Path(config.interactions.path)
    has_events = "event" in _columns(sql, "log")
    if target_event_types is not None:
        observed = sql.column("SELECT DISTINCT event FROM log ORDER BY event")
        check_event_types(target_event_types, observed, "eval.target_event_types", path)
    sql.connection.register("catalog_frame", pd.DataFrame({"item": items["item"].to_numpy(dtype=object)}))
    sql.run("CREATE TABLE catalog AS SELECT item FROM catalog_frame")
    unknown = sql.one("SELECT count(*) FROM log WHERE item NOT IN (SELECT item FROM catalog)")
    if unknown:
        distinct, example = sql.run("SELECT count(DISTINCT item), arg_min(item, ord) FROM log WHERE item NOT IN (SELECT item FROM catalog)").fetchone()
        log.warning("dropped %d interactions whose item is not in the items table (%d distinct ids, e.g. %r)",
                    unknown, distinct, example)
    sql.run("CREATE TABLE known AS SELECT * FROM log WHERE item IN (SELECT item FROM catalog)")
    sql.run("DROP TABLE log")
    current = "known"
    if config.deduplicate:
        sql.run("CREATE TABLE unique_events AS SELECT * EXCLUDE (copy) FROM (SELECT *, row_number() OVER "
                "(PARTITION BY user_id, item, ts ORDER BY ord) AS copy FROM known) WHERE copy = 1")
        repeated = sql.one("SELECT count(*) FROM known") - sql.one("SELECT count(*) FROM unique_events")
        if repeated:
            log.info("dropped %d duplicate interactions (same user, item and timestamp)", repeated)
        current = "unique_events"
    type_weights = config.interactions.event_weights or {}
    strength = _type_weight_sql(type_weights) if has_events else "1.0"
    if config.interactions.collapse_repeats:
        before = sql.one(f"SELECT count(*) FROM {current}")
        sql.run(f"""CREATE TABLE collapsed AS SELECT * EXCLUDE (previous, run, rank_in_run) FROM (
            SELECT *, row_number() OVER (PARTITION BY user_id, run ORDER BY {strength} DESC, ts DESC, ord DESC) AS rank_in_run
            FROM (SELECT *, sum(CASE WHEN previous IS NULL OR previous <> item THEN 1 ELSE 0 END)
                  OVER (PARTITION BY user_id ORDER BY ts, ord ROWS UNBOUNDED PRECEDING) AS run
                  FROM (SELECT *, lag(item) OVER (PARTITION BY user_id ORDER BY ts, ord) AS previous FROM {current})))
            WHERE rank_in_run = 1""")
        log.info("collapsed %d repeated consecutive events into %d (data.interactions.collapse_repeats)",
                 before, sql.one("SELECT count(*) FROM collapsed"))
        current = "collapsed"
    target = "1" if target_event_types is None else f"CAST(event IN ({', '.join(map(_text, target_event_types))}) AS INTEGER)"

    if config.min_item_interactions > 1:
        _label(sql, current, "first_labels", config, target, log_targets=False)
        frequent = set(sql.column(f"SELECT item FROM first_labels WHERE split = '{TRAIN}' GROUP BY item "
                                  f"HAVING count(*) >= {config.min_item_interactions}"))
        log.info("kept %d of %d items with >= %d training interactions", len(frequent), len(items), config.min_item_interactions)
        items = items[items["item"].isin(frequent)]
        sql.run("DELETE FROM catalog WHERE item NOT IN (SELECT item FROM first_labels WHERE split = ? GROUP BY item "
                "HAVING count(*) >= ?)", [TRAIN, config.min_item_interactions])
        sql.run(f"CREATE TABLE frequent AS SELECT * FROM {current} WHERE item IN (SELECT item FROM catalog)")
        current = "frequent"
    if config.split.method == "leave_last_out":
        short = sql.one(f"SELECT count(*) FROM (SELECT user_id FROM {current} GROUP BY user_id HAVING count(*) < ?)",
                        [config.min_user_interactions])
        if short:
            log.info("dropped %d users with fewer than %d interactions", short, config.min_user_interactions)
            sql.run(f"CREATE TABLE long_users AS SELECT * FROM {current} WHERE user_id IN (SELECT user_id FROM {current} "
                    "GROUP BY user_id HAVING count(*) >= ?)", [config.min_user_interactions])
            current = "long_users"
    if sql.one(f"SELECT count(*) FROM {current}") == 0:
        raise PipelineInputError(f"{config.interactions.path}: no interactions left after cleaning and filtering")
    _label(sql, current, "labelled", config, target, log_targets=True)
    dropped = sql.one(f"SELECT count(*) FROM labelled WHERE split = '{DROPPED}'")
    if dropped:
        log.info("dropped %d events after their user's last %s event (the test target)", dropped, target_event_types)
        sql.run(f"DELETE FROM labelled WHERE split = '{DROPPED}'")
    if type_weights or config.interactions.weight_by_value:
        weight = _type_weight_sql(type_weights) if has_events else "1.0"
        if config.interactions.weight_by_value:
            mean = sql.one(f"SELECT avg(value) FROM labelled WHERE split = '{TRAIN}'")
            weight = f"{weight} * (value / {mean!r})" if mean and mean > 0 else weight
        sql.run("ALTER TABLE labelled ADD COLUMN weight FLOAT")
        sql.run(f"UPDATE labelled SET weight = CAST({weight} AS FLOAT)")
    cold_ids = np.zeros(0, dtype=object)
    if config.cold_item_fraction > 0:
        interacted = np.array(sql.column("SELECT DISTINCT item FROM labelled ORDER BY item"), dtype=object)
        size = max(1, round(config.cold_item_fraction * len(interacted)))
        cold_ids = np.random.default_rng(config.cold_item_seed).choice(interacted, size=size, replace=False)
        sql.connection.register("cold_frame", pd.DataFrame({"item": cold_ids}))
        kept_tests, removed = sql.run(f"SELECT count(*) FILTER (split = '{TEST}'), count(*) FILTER (split <> '{TEST}') "
                                      "FROM labelled WHERE item IN (SELECT item FROM cold_frame)").fetchone()
        log.info("cold-start split: %d items (%.0f%%) keep only their %d test events; dropped their %d earlier events",
                 len(cold_ids), 100 * config.cold_item_fraction, kept_tests, removed)
        sql.run(f"DELETE FROM labelled WHERE item IN (SELECT item FROM cold_frame) AND split <> '{TEST}'")
    return _write(sql, items, has_events, cold_ids, config.shards.count, folder)


def _columns(sql: _Sql, table: str) -> list[str]:
    return [row[0] for row in sql.run(f"DESCRIBE {table}").fetchall()]


def _type_weight_sql(type_weights: dict[str, float]) -> str:
    if not type_weights:
        return "1.0"
    cases = " ".join(f"WHEN {_text(name)} THEN {float(weight)!r}" for name, weight in type_weights.items())
    return f"(CASE event {cases} ELSE 1.0 END)"


def _label(sql: _Sql, source: str, destination: str, config: DataConfig, target: str, log_targets: bool) -> None:
    """`destination` = `source` + a split label per event, as `prepare._split_labels` assigns them."""
    if config.split.method == "leave_last_out":
        sql.run(f"""CREATE TABLE {destination} AS SELECT * EXCLUDE (position, valid_at, test_at, is_target, after),
            CASE WHEN coalesce(valid_at, 0) <= 1 OR position < valid_at THEN '{TRAIN}' WHEN position = valid_at THEN '{VALID}'
                 WHEN position < test_at THEN '{CONTEXT}' WHEN position = test_at THEN '{TEST}' ELSE '{DROPPED}' END AS split
            FROM (SELECT *, max(CASE WHEN is_target = 1 AND after = 1 THEN position END) OVER (PARTITION BY user_id) AS valid_at,
                            max(CASE WHEN is_target = 1 AND after = 0 THEN position END) OVER (PARTITION BY user_id) AS test_at
                  FROM (SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY ts, ord) AS position,
                               coalesce(sum(is_target) OVER (PARTITION BY user_id ORDER BY ts, ord
                                        ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), 0) AS after
                        FROM (SELECT *, {target} AS is_target FROM {source})))""")
        if log_targets and target != "1":
            evaluated, users = sql.run(f"SELECT count(DISTINCT user_id) FILTER (split = '{VALID}'), count(DISTINCT user_id) "
                                       f"FROM {destination}").fetchone()
            log.info("targets: each user's last two target-type events; %d of %d users have them (the others train only)",
                     evaluated, users)
        return
    count = sql.one(f"SELECT count(*) FROM {source}")
    split = config.split
    starts = []
    for fraction in (1.0 - split.valid_fraction - split.test_fraction, 1.0 - split.test_fraction):
        # np.quantile(method="higher") of the times is the time at this position of their sorted order.
        position = int(np.quantile(np.arange(count), fraction, method="higher"))
        starts.append(sql.one(f"SELECT ts FROM {source} ORDER BY ts LIMIT 1 OFFSET {position}"))
    valid_start, test_start = starts
    sql.run(f"""CREATE TABLE {destination} AS SELECT *,
        CASE WHEN ts >= {test_start} THEN (CASE WHEN {target} = 1 THEN '{TEST}' ELSE '{DROPPED}' END)
             WHEN ts >= {valid_start} THEN (CASE WHEN {target} = 1 THEN '{VALID}' ELSE '{CONTEXT}' END)
             ELSE '{TRAIN}' END AS split FROM {source}""")
    present = set(sql.column(f"SELECT DISTINCT split FROM {destination}"))
    for name in (TRAIN, VALID, TEST):
        if name not in present:
            raise PipelineInputError(
                f"data.split: time_cut leaves the {name} period empty (all events share too few timestamps, "
                "or none of the period's events is of eval.target_event_types)"
            )


def _write(sql: _Sql, items: pd.DataFrame, has_events: bool, cold_ids: np.ndarray, shards: int, folder: Path) -> dict:
    """The shards and the vocabularies; users are indexed in natural id order, items in catalog order."""
    user_ids = sorted(sql.column("SELECT DISTINCT user_id FROM labelled"), key=natural_key)
    sql.connection.register("user_frame", pd.DataFrame({"user_id": np.array(user_ids, dtype=object),
                                                        "user_index": np.arange(len(user_ids), dtype=np.int64)}))
    sql.connection.register("item_frame", pd.DataFrame({"item": items["item"].to_numpy(dtype=object),
                                                        "item_index": np.arange(1, len(items) + 1, dtype=np.int64)}))
    event_names = sql.column("SELECT DISTINCT event FROM labelled ORDER BY event") if has_events else []
    columns = ["u.user_index AS user", "i.item_index AS item", "e.ts AS timestamp"]
    present = _columns(sql, "labelled")
    if "rating" in present:
        columns.append("e.rating")
    joins = ""
    if event_names:
        sql.connection.register("type_frame", pd.DataFrame({"event": event_names, "code": np.arange(1, len(event_names) + 1)}))
        columns.append("t.code AS event")
        joins = "JOIN type_frame t ON t.event = e.event"
    if "weight" in present:
        columns.append("e.weight")
    columns += ["e.split", "CAST(row_number() OVER (PARTITION BY e.user_id ORDER BY e.ts, e.ord) AS INTEGER) AS position",
                f"{shard_sql('e.user_id', shards)} AS shard"]
    sql.run(f"""COPY (SELECT {', '.join(columns)} FROM labelled e JOIN user_frame u ON u.user_id = e.user_id
                JOIN item_frame i ON i.item = e.item {joins})
                TO {_text(str(folder / 'events'))} (FORMAT PARQUET, PARTITION_BY (shard))""")
    write_table(pd.DataFrame({"user_id": np.array(user_ids, dtype=object)}), folder / "users.parquet")
    write_table(pd.DataFrame({"item": items["item"].to_numpy(dtype=object)}), folder / "items.parquet")
    write_table(pd.DataFrame({"item": np.asarray(cold_ids, dtype=object)}), folder / "cold.parquet")
    splits = dict(sql.run("SELECT split, count(*) FROM labelled GROUP BY split ORDER BY split").fetchall())
    return {"events": int(sum(splits.values())), "events_per_split": splits, "users": len(user_ids),
            "items": len(items), "event_names": event_names, "shards": shards,
            "weights": "weight" in present, "ratings": "rating" in present}
