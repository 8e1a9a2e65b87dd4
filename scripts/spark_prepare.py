"""Prepare a behavior log with Apache Spark into the pipeline's shard format, for logs beyond one machine.

The job reads the config's log and catalog, runs the preparation's own SQL (`pipeline.data.prepare_sql`, the
statements the DuckDB engine runs) on Spark, and writes the prepared folder that `data.engine: duckdb` looks for:
`data.shards.dir/<key>` (events/shard=K/*.parquet by md5 of the user id, users.parquet, items.parquet, cold.parquet,
manifest.json), published by one rename. `python -m pipeline run CONFIG` (or torchrun, each rank reading its own
shards) then trains on it as it is: it finds the folder and prepares nothing, so DuckDB is not needed there.

    .venv/bin/python scripts/spark_prepare.py configs/x.yaml --master 'local[2]'      # one machine, 2 cores
    spark-submit --master yarn scripts/spark_prepare.py configs/x.yaml                # a cluster

What stays on the driver: the catalog (loaded as the pipeline loads it) and the user vocabulary (every distinct user
id, sorted naturally). The log's paths and `data.shards.dir` must be readable and writable by the driver and the
executors alike (a shared file system), and the key is the sha256 of the input files, read by the driver. Bad rows
are refused with their count and an example, not a row number (Spark reads the file in parallel splits).

Needs `pip install 'interest-pipeline[spark]'` (pyspark) and Java 17 or newer.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.config_data import DataConfig, InteractionsConfig
from pipeline.data.load import MAX_TIMESTAMP, MIN_TIMESTAMP, check_event_types, load_items, require_columns
from pipeline.data.prepare_sql import prepare_in_sql, shard_select, text, vocabularies, write_vocabularies
from pipeline.data.prepared import natural_key
from pipeline.data.shards import build_prepared_folder, prepared_key, source_paths
from pipeline.errors import PipelineInputError
from pipeline.storage import file_fingerprint

log = logging.getLogger("pipeline")


class SparkSql:
    """`prepare_sql.SqlEngine` on a SparkSession: each step a cached temporary view (memory, then local disk)."""

    def __init__(self, spark):
        self.spark = spark

    def materialize(self, name: str, select: str) -> None:
        frame = self.spark.sql(select).persist()
        frame.count()  # computed once, here, rather than again by every later step that reads it
        frame.createOrReplaceTempView(name)

    def define(self, name: str, select: str) -> None:
        self.spark.sql(select).createOrReplaceTempView(name)

    def register(self, name: str, frame: pd.DataFrame) -> None:
        from pyspark.sql import types

        kinds = {"O": types.StringType(), "i": types.LongType(), "f": types.DoubleType()}
        schema = types.StructType([types.StructField(column, kinds[frame[column].dtype.kind]) for column in frame.columns])
        rows = [tuple(None if value is None else value.item() if hasattr(value, "item") else value for value in row)
                for row in frame.itertuples(index=False)]
        self.spark.createDataFrame(rows, schema).createOrReplaceTempView(name)

    def one(self, select: str):
        return self.spark.sql(select).collect()[0][0]

    def column(self, select: str) -> list:
        return [row[0] for row in self.rows(select)]

    def rows(self, select: str) -> list[tuple]:
        return [tuple(row) for row in self.spark.sql(select).collect()]


def load_log(sql: SparkSql, config: InteractionsConfig, rating_range) -> list[str]:
    """Temporary view `log` with the canonical columns; bad values refused with their count and an example."""
    path = Path(config.path)
    parquet = config.format == "parquet" or (config.format == "auto" and path.suffix.lower() in (".parquet", ".pq"))
    reader = sql.spark.read
    raw = reader.parquet(str(path)) if parquet else reader.option("header", True).csv(str(path))
    mapping = config.columns
    roles = {role: column for role, column in
             (("user", mapping.user), ("item", mapping.item), ("timestamp", mapping.timestamp), ("rating", mapping.rating),
              ("event", mapping.event), ("value", mapping.value)) if column}
    require_columns(raw.columns, list(dict.fromkeys(roles.values())), path)
    raw.createOrReplaceTempView("raw_log")
    kinds = dict(raw.dtypes)

    def quoted(column: str) -> str:
        return "`" + column.replace("`", "``") + "`"

    def identifier(column: str) -> str:
        return f"nullif(trim(BOTH ' \\t\\n\\r' FROM CAST({quoted(column)} AS STRING)), '')"

    def number(column: str) -> str:
        if kinds[column] in ("string",):
            return f"try_cast(trim({quoted(column)}) AS DOUBLE)"
        return f"CAST({quoted(column)} AS DOUBLE)"

    time = quoted(mapping.timestamp)
    if kinds[mapping.timestamp].startswith(("timestamp", "date")):
        seconds = f"CAST(CAST({time} AS TIMESTAMP) AS DOUBLE)"
    elif kinds[mapping.timestamp] == "string":
        seconds = f"coalesce(try_cast(trim({time}) AS DOUBLE), CAST(try_cast(trim({time}) AS TIMESTAMP) AS DOUBLE))"
    else:
        seconds = f"CAST({time} AS DOUBLE)"
    columns = ["monotonically_increasing_id() AS ord", f"{identifier(mapping.user)} AS user_id",
               f"{identifier(mapping.item)} AS item", f"{seconds} AS ts"]
    for role in ("rating", "value"):
        if role in roles:
            columns.append(f"{number(roles[role])} AS {role}")
    if "event" in roles:
        columns.append(f"{identifier(mapping.event)} AS event")
    sql.spark.sql(f"SELECT {', '.join(columns)} FROM raw_log").createOrReplaceTempView("canonical_log")
    if "event" in roles:
        observed = sorted(value for value in sql.column("SELECT DISTINCT event FROM canonical_log") if value is not None)
        for key, named in (("event_types", config.event_types), ("event_weights", config.event_weights)):
            check_event_types(named or [], observed, f"data.interactions.{key}", path)

    checks = [("user_id IS NULL", f"an empty {mapping.user!r}"), ("item IS NULL", f"an empty {mapping.item!r}"),
              ("ts IS NULL", f"an empty or unparsable {mapping.timestamp!r} (unix seconds or ISO-8601)"),
              (f"ts < {MIN_TIMESTAMP} OR ts > {MAX_TIMESTAMP} OR isnan(ts)",
               f"a {mapping.timestamp!r} outside 1970..2100 (timestamps must be unix seconds or ISO-8601)")]
    if "event" in roles:
        checks.append(("event IS NULL", f"an empty {mapping.event!r}"))
    for role in ("rating", "value"):
        if role in roles:
            checks.append((f"{role} IS NULL OR isnan({role}) OR abs({role}) = double('inf')",
                           f"an empty, non-numeric or infinite {roles[role]!r}"))
    if rating_range is not None and "rating" in roles:
        checks.append((f"rating < {rating_range[0]} OR rating > {rating_range[1]}",
                       f"a {roles['rating']!r} outside data.rating_range [{rating_range[0]}, {rating_range[1]}]"))
    if "value" in roles:
        checks.append(("value < 0", f"a negative {roles['value']!r}"))
    for condition, what in checks:
        bad = sql.spark.sql(f"SELECT * FROM canonical_log WHERE {condition}")
        count = bad.count()
        if count:
            raise PipelineInputError(f"{path}: {count} rows with {what}, e.g. {bad.first().asDict()}")

    where = ""
    if config.event_types is not None:
        where = f" WHERE event IN ({', '.join(map(text, config.event_types))})"
    names = [name for name in ("ord", "user_id", "item", "ts", "rating", "event", "value") if name in ("ord", "user_id", "item", "ts") or name in roles]
    listed = ", ".join("CAST(floor(ts) AS BIGINT) AS ts" if name == "ts" else name for name in names)
    sql.materialize("log", f"SELECT {listed} FROM canonical_log{where}")
    if sql.one("SELECT count(*) FROM log") == 0:
        raise PipelineInputError(f"{path}: " + (f"no rows with event types {config.event_types}" if where else "no data rows"))
    return names


def prepare_with_spark(spark, config: DataConfig, target_event_types, folder: Path) -> dict:
    """What `outofcore.prepare_shards` does, on Spark: the shards and vocabularies into `folder`."""
    sql = SparkSql(spark)
    items = load_items(config.items, config.tags)
    columns = load_log(sql, config.interactions, config.rating_range)
    prepared = prepare_in_sql(sql, columns, items, config, target_event_types)
    user_ids, event_names = vocabularies(sql, prepared, natural_key)
    count = config.shards.count
    shard = f"pmod(CAST(conv(substr(md5(e.user_id), 1, 15), 16, 10) AS BIGINT), {count})"
    spark.sql(shard_select(prepared, event_names, shard)).write.partitionBy("shard").parquet(str(folder / "events"))
    return write_vocabularies(sql, folder, prepared, user_ids, event_names, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--master", help="Spark master (default: what spark-submit sets, else local[*])")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE", help="config override")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="Spark setting, e.g. spark.sql.shuffle.partitions=8 for a small log")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from pyspark.sql import SparkSession

    config = load_config(args.config, args.overrides)
    if config.data.engine != "duckdb":
        raise SystemExit("data.engine must be duckdb: the run reads prepared shards only on that engine")
    # Naive times are UTC, as in the pipeline's own engines.
    builder = SparkSession.builder.appName("pipeline-prepare").config("spark.sql.session.timeZone", "UTC")
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    for setting in args.conf:
        key, _, value = setting.partition("=")
        builder = builder.config(key, value)
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    try:
        targets = config.eval.target_event_types
        fingerprints = [file_fingerprint(path) for path in source_paths(config.data)]
        folder = Path(config.data.shards.dir) / prepared_key(config.data, targets, fingerprints)
        if (folder / "manifest.json").is_file():
            log.info("already prepared: %s", folder)
        else:
            build_prepared_folder(config.data, targets, folder, fingerprints,
                                  lambda data, targets, partial: prepare_with_spark(spark, data, targets, partial), "spark")
        print(folder)
    except PipelineInputError as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
