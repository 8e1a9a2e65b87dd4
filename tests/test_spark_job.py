"""scripts/spark_prepare.py: the same shard format produced by Spark (a local cluster on 2 cores), which the
pipeline then trains on unchanged, to the same metrics as its own preparation of the same log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import pipeline
from pipeline.config import load_config
from pipeline.data import load_data, outofcore, prepare
from pipeline.data.shards import load_prepared
from tests import shop_log
from tests.conftest import REPO, write_yaml
from tests.test_outofcore import assert_same

pytestmark = pytest.mark.slow  # a Spark session (a JVM) and two trainings


@pytest.fixture(scope="module")
def spark_available():
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java")


@pytest.mark.long
def test_the_spark_job_writes_shards_the_pipeline_trains_on_to_the_same_metrics(spark_available, tmp_path, monkeypatch):
    shop_log.write(tmp_path / "shop", users=150, items=80, seed=3, formats=("parquet",))
    data = {
        "interactions": {"path": str(tmp_path / "shop" / "events.parquet"),
                         "columns": {"user": "user_id", "item": "sku", "timestamp": "ts", "event": "event_type", "value": "price_paid"},
                         "event_weights": {"view": 1, "add_to_cart": 2, "purchase": 4}, "weight_by_value": True},
        "items": {"path": str(tmp_path / "shop" / "items.csv"), "columns": {"id": "sku", "category": "category_path"},
                  "category_separator": " > ", "numeric_features": ["list_price"], "categorical_features": ["brand"]},
        "cold_item_fraction": 0.1,
    }
    common = {
        "name": "spark", "seed": 5, "eval": {"target_event_types": ["purchase"], "ks": [10], "select_k": 10},
        "encoder": {"cache_dir": str(tmp_path / "cache"), "max_length": 16},
        "model": {"name": "transformer", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_length": 20},
        "train": {"epochs": 2, "batch_size": 32},
        "output": {"root": str(tmp_path / "runs"), "top_k": 10},
    }
    on_shards = {**common, "data": {**data, "engine": "duckdb", "shards": {"dir": str(tmp_path / "prepared"), "count": 4}}}
    config_path = write_yaml(tmp_path / "spark.yaml", on_shards)
    job = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "spark_prepare.py"), str(config_path), "--master", "local[2]",
         "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.ui.enabled=false"],
        cwd=REPO, env={**os.environ, "PYSPARK_PYTHON": sys.executable}, capture_output=True, text=True, timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    folder = tmp_path / "prepared" / job.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    assert (folder / "manifest.json").is_file() and len(list((folder / "events").glob("shard=*"))) == 4

    def refuse(*args):
        raise AssertionError("the pipeline prepared the log itself instead of reading the Spark job's shards")

    monkeypatch.setattr(outofcore, "prepare_shards", refuse)
    spark_config, in_memory_config = load_config(on_shards), load_config({**common, "data": data})
    from_spark, _ = load_prepared(spark_config.data, spark_config.eval.target_event_types)
    own = prepare(load_data(in_memory_config.data), in_memory_config.data, in_memory_config.eval.target_event_types)
    assert_same(own, from_spark)

    trained_on_spark = pipeline.run(on_shards)
    trained_in_memory = pipeline.run({**common, "data": data})
    assert trained_on_spark.metrics["splits"] == trained_in_memory.metrics["splits"]
    assert trained_on_spark.metrics["splits"]["test"]["transformer"]["users"] > 100
