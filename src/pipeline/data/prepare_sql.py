"""The preparation as SQL, step for step as `prepare.py` does it, in the SQL that DuckDB and Spark share: the
out-of-core engine (`outofcore.py`, DuckDB) and the distributed job (`scripts/spark_prepare.py`, Spark) run these
same statements, so their shards hold the same events.

Input: a table `log` (ord: the row's place in the file, user_id, item, ts: unix seconds, [rating], [event], [value])
and the catalog. Output: a table with the split label (and the training weight) per kept event, the kept catalog and
the cold items. The steps with a window over each user's events are materialized (`SqlEngine.materialize`, spilled
to disk as the engine needs); filters are views the next step reads through (`SqlEngine.define`), so a 100M-event
log is not copied at every step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline.config_data import DataConfig
from pipeline.data.load import check_event_types
from pipeline.data.prepared import CONTEXT, DROPPED, TEST, TRAIN, VALID
from pipeline.errors import PipelineInputError

log = logging.getLogger("pipeline")

WITHIN_USER = "PARTITION BY user_id ORDER BY ts, ord"


class SqlEngine(Protocol):
    def materialize(self, name: str, select: str) -> None: ...  # table `name` := the rows of `select`
    def define(self, name: str, select: str) -> None: ...  # view `name`: computed where it is read (filters)
    def register(self, name: str, frame: pd.DataFrame) -> None: ...
    def one(self, select: str): ...  # the first column of the first row
    def column(self, select: str) -> list: ...  # the first column of every row
    def rows(self, select: str) -> list[tuple]: ...


@dataclass
class Prepared:
    table: str  # events: the log's columns + split (+ weight)
    columns: list[str]
    items: pd.DataFrame  # the kept catalog, in catalog order
    cold_ids: np.ndarray


def text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def prepare_in_sql(
    sql: SqlEngine, columns: list[str], items: pd.DataFrame, config: DataConfig, target_event_types: list[str] | None
) -> Prepared:
    """From table `log` (with `columns`) to the labelled events; `items` is the loaded catalog."""
    has_events = "event" in columns
    listed = ", ".join(columns)
    if target_event_types is not None:
        observed = sql.column("SELECT DISTINCT event FROM log ORDER BY event")
        check_event_types(target_event_types, observed, "eval.target_event_types", Path(config.interactions.path))
    sql.register("catalog", pd.DataFrame({"item": items["item"].to_numpy(dtype=object)}))
    unknown = sql.one("SELECT count(*) FROM log WHERE item NOT IN (SELECT item FROM catalog)")
    if unknown:
        distinct = sql.one("SELECT count(DISTINCT item) FROM log WHERE item NOT IN (SELECT item FROM catalog)")
        example = sql.one("SELECT min_by(item, ord) FROM log WHERE item NOT IN (SELECT item FROM catalog)")
        log.warning("dropped %d interactions whose item is not in the items table (%d distinct ids, e.g. %r)",
                    unknown, distinct, example)
    sql.define("known", f"SELECT {listed} FROM log WHERE item IN (SELECT item FROM catalog)")
    current = "known"
    if config.deduplicate:
        # The first row of each (user, item, time) in file order: a hash aggregate, cheaper than a window's sort.
        kept = ", ".join(f"min_by({name}, ord) AS {name}" for name in columns if name not in ("ord", "user_id", "item", "ts"))
        sql.materialize("unique_events", f"SELECT {listed} FROM (SELECT user_id, item, ts, min(ord) AS ord"
                        f"{', ' + kept if kept else ''} FROM known GROUP BY user_id, item, ts) firsts")
        repeated = sql.one("SELECT count(*) FROM known") - sql.one("SELECT count(*) FROM unique_events")
        if repeated:
            log.info("dropped %d duplicate interactions (same user, item and timestamp)", repeated)
        current = "unique_events"
    type_weights = config.interactions.event_weights or {}
    strength = type_weight_sql(type_weights) if has_events else "1.0"
    if config.interactions.collapse_repeats:
        # A run: a user's consecutive events on one item; it keeps the strongest event, then the latest.
        before = sql.one(f"SELECT count(*) FROM {current}")
        sql.materialize("collapsed", f"""SELECT {listed} FROM (
            SELECT {listed}, row_number() OVER (PARTITION BY user_id, run ORDER BY {strength} DESC, ts DESC, ord DESC) AS rank_in_run
            FROM (SELECT {listed}, sum(CASE WHEN previous IS NULL OR previous <> item THEN 1 ELSE 0 END)
                  OVER ({WITHIN_USER} ROWS UNBOUNDED PRECEDING) AS run
                  FROM (SELECT {listed}, lag(item) OVER ({WITHIN_USER}) AS previous FROM {current}) lagged) runs) ranked
            WHERE rank_in_run = 1""")
        log.info("collapsed %d repeated consecutive events into %d (data.interactions.collapse_repeats)",
                 before, sql.one("SELECT count(*) FROM collapsed"))
        current = "collapsed"
    target = "1" if target_event_types is None else (
        f"CASE WHEN event IN ({', '.join(map(text, target_event_types))}) THEN 1 ELSE 0 END")

    if config.min_item_interactions > 1:
        label(sql, current, "first_labels", columns, config, target, log_targets=False)
        sql.materialize("frequent_items", f"SELECT item FROM first_labels WHERE split = '{TRAIN}' GROUP BY item "
                        f"HAVING count(*) >= {config.min_item_interactions}")
        frequent = set(sql.column("SELECT item FROM frequent_items"))
        log.info("kept %d of %d items with >= %d training interactions", len(frequent), len(items), config.min_item_interactions)
        items = items[items["item"].isin(frequent)]
        sql.define("frequent", f"SELECT {listed} FROM {current} WHERE item IN (SELECT item FROM frequent_items)")
        current = "frequent"
    if config.split.method == "leave_last_out":
        sql.materialize("long_users", f"SELECT user_id FROM {current} GROUP BY user_id "
                        f"HAVING count(*) >= {config.min_user_interactions}")
        short = sql.one(f"SELECT count(DISTINCT user_id) FROM {current}") - sql.one("SELECT count(*) FROM long_users")
        if short:
            log.info("dropped %d users with fewer than %d interactions", short, config.min_user_interactions)
            sql.define("long_enough", f"SELECT {listed} FROM {current} WHERE user_id IN (SELECT user_id FROM long_users)")
            current = "long_enough"
    if sql.one(f"SELECT count(*) FROM {current}") == 0:
        raise PipelineInputError(f"{config.interactions.path}: no interactions left after cleaning and filtering")
    label(sql, current, "labelled", columns, config, target, log_targets=True)
    dropped = sql.one(f"SELECT count(*) FROM labelled WHERE split = '{DROPPED}'")
    if dropped:
        log.info("dropped %d events after their user's last %s event (the test target)", dropped, target_event_types)
    weight = ""
    if type_weights or config.interactions.weight_by_value:
        weight = type_weight_sql(type_weights) if has_events else "1.0"
        if config.interactions.weight_by_value:
            mean = sql.one(f"SELECT avg(value) FROM labelled WHERE split = '{TRAIN}'")
            weight = f"{weight} * (value / {float(mean)!r})" if mean and mean > 0 else weight
        weight = f", CAST({weight} AS FLOAT) AS weight"
    out_columns = [*columns, "split", *(["weight"] if weight else [])]
    kept = f"SELECT {listed}, split{weight} FROM labelled WHERE split <> '{DROPPED}'"
    cold_ids = np.zeros(0, dtype=object)
    if config.cold_item_fraction > 0:
        sql.materialize("weighted", kept)
        interacted = np.array(sql.column("SELECT DISTINCT item FROM weighted ORDER BY item"), dtype=object)
        size = max(1, round(config.cold_item_fraction * len(interacted)))
        cold_ids = np.random.default_rng(config.cold_item_seed).choice(interacted, size=size, replace=False)
        sql.register("cold_items", pd.DataFrame({"item": cold_ids}))
        cold = "item IN (SELECT item FROM cold_items)"
        log.info("cold-start split: %d items (%.0f%%) keep only their %d test events; dropped their %d earlier events",
                 len(cold_ids), 100 * config.cold_item_fraction,
                 sql.one(f"SELECT count(*) FROM weighted WHERE {cold} AND split = '{TEST}'"),
                 sql.one(f"SELECT count(*) FROM weighted WHERE {cold} AND split <> '{TEST}'"))
        kept = f"SELECT {', '.join(out_columns)} FROM weighted WHERE NOT ({cold}) OR split = '{TEST}'"
    sql.define("prepared", kept)
    return Prepared("prepared", out_columns, items, cold_ids)


def type_weight_sql(type_weights: dict[str, float]) -> str:
    if not type_weights:
        return "1.0"
    cases = " ".join(f"WHEN {text(name)} THEN {float(weight)!r}" for name, weight in type_weights.items())
    return f"(CASE event {cases} ELSE 1.0 END)"


def label(sql: SqlEngine, source: str, destination: str, columns: list[str], config: DataConfig, target: str,
          log_targets: bool) -> None:
    """`destination` = `source` + a split label per event, as `prepare._split_labels` assigns them."""
    listed = ", ".join(columns)
    if config.split.method == "leave_last_out":
        # Counted from each user's end over target-type events only: 1 after it = the validation target, 0 the test.
        sql.materialize(destination, f"""SELECT {listed},
            CASE WHEN coalesce(valid_at, 0) <= 1 OR position < valid_at THEN '{TRAIN}' WHEN position = valid_at THEN '{VALID}'
                 WHEN position < test_at THEN '{CONTEXT}' WHEN position = test_at THEN '{TEST}' ELSE '{DROPPED}' END AS split
            FROM (SELECT {listed}, position,
                         max(CASE WHEN is_target = 1 AND after = 1 THEN position END) OVER (PARTITION BY user_id) AS valid_at,
                         max(CASE WHEN is_target = 1 AND after = 0 THEN position END) OVER (PARTITION BY user_id) AS test_at
                  FROM (SELECT {listed}, is_target, row_number() OVER ({WITHIN_USER}) AS position,
                               coalesce(sum(is_target) OVER ({WITHIN_USER} ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), 0) AS after
                        FROM (SELECT {listed}, {target} AS is_target FROM {source}) targets) positions) ends""")
        if log_targets and target != "1":
            evaluated = sql.one(f"SELECT count(DISTINCT CASE WHEN split = '{VALID}' THEN user_id END) FROM {destination}")
            users = sql.one(f"SELECT count(DISTINCT user_id) FROM {destination}")
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
    sql.materialize(destination, f"""SELECT {listed},
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


def vocabularies(sql: SqlEngine, prepared: Prepared, natural_key) -> tuple[list[str], list[str]]:
    """(user ids in natural order, event types in order), registered as `user_index` and `type_codes`."""
    user_ids = sorted(sql.column(f"SELECT DISTINCT user_id FROM {prepared.table}"), key=natural_key)
    sql.register("user_index", pd.DataFrame({"user_id": np.array(user_ids, dtype=object),
                                             "user": np.arange(len(user_ids), dtype=np.int64)}))
    sql.register("item_index", pd.DataFrame({"item": prepared.items["item"].to_numpy(dtype=object),
                                             "item_code": np.arange(1, len(prepared.items) + 1, dtype=np.int64)}))
    event_names = []
    if "event" in prepared.columns:
        event_names = sql.column(f"SELECT DISTINCT event FROM {prepared.table} ORDER BY event")
        sql.register("type_codes", pd.DataFrame({"event": event_names, "code": np.arange(1, len(event_names) + 1)}))
    return user_ids, event_names


def shard_select(prepared: Prepared, event_names: list[str], shard: str) -> str:
    """The shard rows: indices, time, [rating], [event code], [weight], split, ord, shard (`shard`: the engine's SQL
    for the shard of `e.user_id`). A reader orders a user's events by (timestamp, ord): no sort is spent on it here."""
    columns = ["u.user AS user", "i.item_code AS item", "e.ts AS timestamp"]
    if "rating" in prepared.columns:
        columns.append("e.rating")
    joins = ""
    if event_names:
        columns.append("t.code AS event")
        joins = "JOIN type_codes t ON t.event = e.event"
    if "weight" in prepared.columns:
        columns.append("e.weight")
    columns += ["e.split", "e.ord", f"{shard} AS shard"]
    return (f"SELECT {', '.join(columns)} FROM {prepared.table} e JOIN user_index u ON u.user_id = e.user_id "
            f"JOIN item_index i ON i.item = e.item {joins}")


def write_vocabularies(sql: SqlEngine, folder, prepared: Prepared, user_ids: list[str], event_names: list[str],
                       shards: int) -> dict:
    """users.parquet, items.parquet and cold.parquet beside the shards; the manifest's facts."""
    from pipeline.storage import write_table

    write_table(pd.DataFrame({"user_id": np.array(user_ids, dtype=object)}), folder / "users.parquet")
    write_table(pd.DataFrame({"item": prepared.items["item"].to_numpy(dtype=object)}), folder / "items.parquet")
    write_table(pd.DataFrame({"item": np.asarray(prepared.cold_ids, dtype=object)}), folder / "cold.parquet")
    splits = {split: int(count) for split, count in sql.rows(f"SELECT split, count(*) FROM {prepared.table} GROUP BY split")}
    return {"events": sum(splits.values()), "events_per_split": splits, "users": len(user_ids),
            "items": len(prepared.items), "event_names": list(event_names), "shards": shards,
            "weights": "weight" in prepared.columns, "ratings": "rating" in prepared.columns}
