"""Out-of-core preparation (`data.engine: duckdb`): the cleaning, filtering, vocabularies and splits of `prepare`,
as SQL over the Parquet or CSV log (`prepare_sql.py`), written as Parquet shards by a hash of the user id
(`data/shards.py` reads them).

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

import pandas as pd

from pipeline.config_data import DataConfig, InteractionsConfig, ShardsConfig
from pipeline.data.load import MAX_TIMESTAMP, MIN_TIMESTAMP, check_event_types, load_items, require_columns
from pipeline.data.prepare_sql import Prepared, prepare_in_sql, shard_select, text, vocabularies, write_vocabularies
from pipeline.data.prepared import natural_key
from pipeline.errors import PipelineInputError, shorten

log = logging.getLogger("pipeline")

NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
# Python's str.strip() set for ASCII: ids and labels are trimmed as the pandas engine trims them.
WHITESPACE = "' \t\n\r\x0b\x0c'"


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
        columns = _load(sql, config.interactions, config.rating_range)
        prepared = prepare_in_sql(sql, columns, items, config, target_event_types)
        return _write(sql, prepared, config.shards.count, folder)
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
    """`prepare_sql.SqlEngine` on a DuckDB connection (tables in its database file, spilled beyond the limit)."""

    def __init__(self, connection):
        self.connection = connection

    def run(self, statement: str, parameters=None):
        return self.connection.execute(statement, parameters or [])

    def materialize(self, name: str, select: str) -> None:
        self.run(f"CREATE OR REPLACE TABLE {name} AS {select}")

    def define(self, name: str, select: str) -> None:
        self.run(f"CREATE OR REPLACE VIEW {name} AS {select}")

    def register(self, name: str, frame: pd.DataFrame) -> None:
        self.connection.register(f"{name}_frame", frame)
        self.materialize(name, f"SELECT * FROM {name}_frame")

    def one(self, statement: str, parameters=None):
        return self.run(statement, parameters).fetchone()[0]

    def column(self, statement: str) -> list:
        return [row[0] for row in self.rows(statement)]

    def rows(self, statement: str) -> list[tuple]:
        return self.run(statement).fetchall()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load(sql: _Sql, config: InteractionsConfig, rating_range) -> list[str]:
    """Table `log`: ord (file row, 0-based), user_id, item, ts (unix seconds)[, rating][, event][, value]; returns
    its columns. Every bad value is an error naming its row, as the pandas engine's."""
    import duckdb

    path = Path(config.path)
    if not path.is_file():
        raise PipelineInputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PipelineInputError(f"{path}: file is empty")
    parquet = config.format == "parquet" or (config.format == "auto" and path.suffix.lower() in (".parquet", ".pq"))
    scan = (f"read_parquet({text(str(path))}, file_row_number = true)" if parquet
            else f"read_csv({text(str(path))}, all_varchar = true, header = true)")
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
        where = f"WHERE {ids['event']} IN ({', '.join(text(name) for name in config.event_types)})"
    sql.run(f"CREATE TABLE log AS SELECT {', '.join(columns)} FROM {scan} {where}")

    def first_bad(condition: str, message: str, column: str, empty: str | None = None) -> None:
        """Raise `message` naming the first row meeting `condition` (`empty` instead where its cell is missing)."""
        row = sql.one(f"SELECT min(ord) FROM log WHERE {condition}")
        if row is None:
            return
        locate = f"WHERE file_row_number = {row}" if parquet else f"LIMIT 1 OFFSET {row}"
        shown = sql.one(f"SELECT CAST({_quote(column)} AS VARCHAR) FROM {scan} {locate}")
        missing = shown is None or not shown.strip()
        detail = (empty if missing and empty else message).format(column=repr(column), value=shorten(shown))
        raise PipelineInputError(f"{path}: row {row + 1}: {detail}")

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
    return [name for name in ("ord", "user_id", "item", "ts", "rating", "event", "value") if name in _columns(sql, "log")]


def _columns(sql: _Sql, table: str) -> list[str]:
    return [row[0] for row in sql.run(f"DESCRIBE {table}").fetchall()]


def _seconds(column: str, types: dict[str, str]) -> str:
    """Unix seconds (DOUBLE) of a time column: a native timestamp (naive = UTC), a number, or text holding either."""
    kind, quoted = types[column], _quote(column)
    if kind.startswith("TIMESTAMP") or kind == "DATE":
        return f"CAST(epoch({quoted}) AS DOUBLE)"
    if kind.startswith(NUMERIC_TYPES):
        return f"CAST({quoted} AS DOUBLE)"
    stripped = f"trim(CAST({quoted} AS VARCHAR))"
    return f"coalesce(TRY_CAST({stripped} AS DOUBLE), CAST(epoch(TRY_CAST({stripped} AS TIMESTAMPTZ)) AS DOUBLE))"


def _number(column: str, types: dict[str, str]) -> str:
    kind, quoted = types[column], _quote(column)
    if kind.startswith(NUMERIC_TYPES):
        return f"CAST({quoted} AS DOUBLE)"
    return f"TRY_CAST(trim(CAST({quoted} AS VARCHAR)) AS DOUBLE)"


def _write(sql: _Sql, prepared: Prepared, shards: int, folder: Path) -> dict:
    user_ids, event_names = vocabularies(sql, prepared, natural_key)
    select = shard_select(prepared, event_names, f"CAST(('0x' || substr(md5(e.user_id), 1, 15)) AS BIGINT) % {shards}")
    sql.run(f"COPY ({select}) TO {text(str(folder / 'events'))} (FORMAT PARQUET, PARTITION_BY (shard))")
    return write_vocabularies(sql, folder, prepared, user_ids, event_names, shards)
