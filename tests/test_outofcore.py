"""data.engine duckdb: the out-of-core preparation gives what the pandas engine gives, keeps it as shards by user,
names the row of bad input as the pandas engine does, and never leaves a half-written prepared folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.data import shards as shards_module
from pipeline.data.shards import load_prepared, prepared_folder, shard_of, shards_of_rank
from pipeline.errors import PipelineInputError
from pipeline.storage import file_fingerprint
from tests import shop_log
from tests.conftest import tiny_config_dict

pytest.importorskip("duckdb")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shop")
    shop_log.write(folder, users=120, items=90, seed=3, formats=("parquet",))
    return folder


def shop_config(folder, tmp_path, engine="pandas", interactions=None, **data):
    extra = {"engine": engine, "shards": {"dir": str(tmp_path / "prepared"), "count": 4}} if engine == "duckdb" else {}
    return load_config({
        "data": {
            **extra,
            "interactions": {
                "path": str(folder / "events.parquet"),
                "columns": {"user": "user_id", "item": "sku", "timestamp": "ts", "event": "event_type", "value": "price_paid"},
                "event_weights": {"view": 1, "add_to_cart": 2, "purchase": 4},
                **(interactions or {}),
            },
            "items": {
                "path": str(folder / "items.csv"), "columns": {"id": "sku", "category": "category_path"},
                "text_fields": ["title", "brand"], "text_template": "{title} by {brand}", "category_separator": " > ",
                "numeric_features": ["list_price"], "categorical_features": ["brand"], "recommendable": "in_stock",
            },
            **data,
        },
        "eval": {"target_event_types": ["purchase"]},
    })


def both_engines(make_config, tmp_path):
    """(pandas PreparedData, duckdb PreparedData) of the config `make_config(engine)` builds."""
    pandas_config, duckdb_config = make_config("pandas"), make_config("duckdb")
    in_memory = prepare(load_data(pandas_config.data), pandas_config.data, pandas_config.eval.target_event_types)
    out_of_core, _ = load_prepared(duckdb_config.data, duckdb_config.eval.target_event_types)
    return in_memory, out_of_core


def assert_same(left, right):
    pd.testing.assert_frame_equal(left.events, right.events, check_exact=False, rtol=1e-6)
    assert list(left.user_ids) == list(right.user_ids)
    assert list(left.item_ids) == list(right.item_ids)
    assert left.item_texts == right.item_texts and left.category_names == right.category_names
    assert all(np.array_equal(a, b) for a, b in zip(left.item_categories, right.item_categories, strict=True))
    assert np.array_equal(left.cold_items, right.cold_items)
    assert left.event_names == right.event_names
    for name in ("event_type_weights", "recommendable"):
        a, b = getattr(left, name), getattr(right, name)
        assert (a is None and b is None) or np.array_equal(a, b), name
    assert (left.item_features is None) == (right.item_features is None)
    if left.item_features is not None:
        for name, value in vars(left.item_features).items():
            assert np.array_equal(value, getattr(right.item_features, name)) if isinstance(value, np.ndarray) else value == getattr(right.item_features, name), name


@pytest.mark.parametrize("options", [
    {},
    {"interactions": {"collapse_repeats": True, "weight_by_value": True}},
    {"min_item_interactions": 3, "cold_item_fraction": 0.1, "cold_item_seed": 5},
    {"split": {"method": "time_cut", "valid_fraction": 0.15, "test_fraction": 0.1}},
    {"interactions": {"event_types": ["view", "purchase"], "event_weights": {"purchase": 3}}, "deduplicate": False},
])
def test_duckdb_prepares_what_pandas_prepares(shop, tmp_path, options):
    options = dict(options)
    interactions = options.pop("interactions", None)
    left, right = both_engines(lambda engine: shop_config(shop, tmp_path, engine, interactions, **options), tmp_path)
    assert len(left.events) > 1000 and left.n_users > 100
    assert_same(left, right)


def test_csv_ties_iso_times_and_duplicates_keep_file_order(tmp_path):
    # Same-second events keep the file's order; a duplicate (user, item, time) keeps its first row; ISO strings with
    # offsets and unix seconds mix in one column; ids are trimmed.
    rows = ["u,i,t", "a,1,100", "a,2,100", " a ,3,100", "a,1,100", "a,4,1970-01-01T00:03:20+00:00", "a,5,1970-01-01T01:03:20+01:00",
            "b,1,50", "b,2,60", "b,3,70", "c,9,80", "c,9,90", "c,1,95"]
    events = tmp_path / "events.csv"
    events.write_text("\n".join(rows) + "\n", encoding="utf-8")
    items = tmp_path / "items.csv"
    pd.DataFrame({"id": [1, 2, 3, 4, 5, 9], "title": list("abcdef"), "cat": ["x"] * 6}).to_csv(items, index=False)

    def config(engine):
        extra = {"engine": "duckdb", "shards": {"dir": str(tmp_path / "prepared")}} if engine == "duckdb" else {}
        return load_config({"data": {**extra, "interactions": {"path": str(events), "columns": {"user": "u", "item": "i", "timestamp": "t"}},
                                     "items": {"path": str(items), "columns": {"id": "id", "category": "cat"}}}})

    left, right = both_engines(config, tmp_path)
    assert_same(left, right)
    user_a = right.events[right.events["user"] == 0]
    assert list(right.item_ids[user_a["item"]]) == ["1", "2", "3", "4", "5"]  # file order within the same second
    assert list(user_a["timestamp"]) == [100, 100, 100, 200, 200]


@pytest.mark.parametrize("rows, message", [
    (["u,i,t", "a,1,100", ",1,200"], r"events\.csv: row 2: empty 'u'"),
    (["u,i,t", "a,1,100", "a,1,yesterday"], r"events\.csv: row 2: cannot parse 't' value 'yesterday'"),
    (["u,i,t", "a,1,100", "a,1,99999999999"], r"events\.csv: row 2: 't' value '99999999999' is outside 1970\.\.2100"),
    (["u,i,t,r", "a,1,100,4", "a,1,200,9"], r"events\.csv: row 2: 'r' value .*9.* is outside data\.rating_range"),
    (["u,i,t,r", "a,1,100,4", "a,1,200,lots"], r"events\.csv: row 2: 'r' value 'lots' is not a number"),
    (["u,item,t", "a,1,100"], r"events\.csv: missing column 'i'; columns are \['u', 'item', 't'\]"),
])
def test_bad_rows_are_named_by_both_engines(tmp_path, rows, message):
    events = tmp_path / "events.csv"
    events.write_text("\n".join(rows) + "\n", encoding="utf-8")
    items = tmp_path / "items.csv"
    pd.DataFrame({"id": [1], "title": ["a"], "cat": ["x"]}).to_csv(items, index=False)
    rating = {"rating": "r"} if rows[0].endswith(",r") else {}
    for engine in ("pandas", "duckdb"):
        extra = {"engine": "duckdb", "shards": {"dir": str(tmp_path / "prepared")}} if engine == "duckdb" else {}
        config = load_config({"data": {
            **extra, "rating_range": [0.5, 5],
            "interactions": {"path": str(events), "columns": {"user": "u", "item": "i", "timestamp": "t", **rating}},
            "items": {"path": str(items), "columns": {"id": "id", "category": "cat"}}}})
        with pytest.raises(PipelineInputError, match=message):
            load_prepared(config.data, None)
    assert not any((tmp_path / "prepared").glob("*"))  # nothing half-written is left


def test_shards_hold_whole_users_by_the_hash_of_their_id_and_subsets_read_back(shop, tmp_path):
    config = shop_config(shop, tmp_path, "duckdb")
    whole, fingerprints = load_prepared(config.data, config.eval.target_event_types)
    folder = prepared_folder(config.data, config.eval.target_event_types, fingerprints)
    for shard in range(4):
        users = pq.read_table(folder / "events" / f"shard={shard}", columns=["user"]).column("user").to_numpy()
        assert {shard_of(whole.user_ids[user], 4) for user in np.unique(users)} == {shard}
    ranks = [load_prepared(config.data, config.eval.target_event_types, shards_of_rank(4, rank, 3))[0] for rank in range(3)]
    seen = [set(part.events["user"]) for part in ranks]
    assert sum(len(users) for users in seen) == whole.n_users and set().union(*seen) == set(whole.events["user"])
    combined = pd.concat([part.events for part in ranks]).sort_values(["user"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(combined, whole.events)
    assert all(part.n_users == whole.n_users and part.n_items == whole.n_items for part in ranks)  # whole vocabularies


def test_a_prepared_folder_is_reused_and_a_changed_input_prepares_again(shop, tmp_path, monkeypatch):
    config = shop_config(shop, tmp_path, "duckdb")
    load_prepared(config.data, config.eval.target_event_types)
    from pipeline.data import outofcore

    def refuse(*args):
        raise AssertionError("prepared again")

    monkeypatch.setattr(outofcore, "prepare_shards", refuse)
    again, fingerprints = load_prepared(config.data, config.eval.target_event_types)
    assert fingerprints[0]["sha256"] == file_fingerprint(shop / "events.parquet")["sha256"]
    other = shop_config(shop, tmp_path, "duckdb", min_item_interactions=2)
    with pytest.raises(AssertionError, match="prepared again"):
        load_prepared(other.data, other.eval.target_event_types)


def test_a_failed_preparation_leaves_no_folder(shop, tmp_path, monkeypatch):
    from pipeline.data import outofcore

    real = outofcore.prepare_shards

    def fail_after_writing(config, targets, folder):
        real(config, targets, folder)
        raise OSError("disk gone")

    monkeypatch.setattr(outofcore, "prepare_shards", fail_after_writing)
    config = shop_config(shop, tmp_path, "duckdb")
    with pytest.raises(OSError, match="disk gone"):
        load_prepared(config.data, config.eval.target_event_types)
    assert list((tmp_path / "prepared").iterdir()) == []


def test_config_refuses_shards_without_duckdb_and_jsonl_with_it(shop, tmp_path):
    with pytest.raises(PipelineInputError, match="shards is read only with engine: duckdb"):
        shop_config(shop, tmp_path, shards={"count": 8})
    with pytest.raises(PipelineInputError, match="engine duckdb reads interactions from Parquet or CSV"):
        shop_config(shop, tmp_path, "duckdb", interactions={"path": str(shop / "events.jsonl")})
    assert shards_module.shard_of("user42", 16) == 6  # md5("user42") = fd8689cb8011..., first 60 bits mod 16


@pytest.mark.slow  # two end-to-end runs
def test_a_run_on_the_duckdb_engine_matches_the_pandas_engine_and_validate_writes_nothing(tiny_data, embedding_cache, tmp_path):
    config = tiny_config_dict(tiny_data, tmp_path / "runs", embedding_cache, train={"epochs": 1})
    in_memory = pipeline.run(config)
    prepared = tmp_path / "prepared"
    duckdb_config = {**config, "data": {**config["data"], "engine": "duckdb", "shards": {"dir": str(prepared)}}}
    summary, reference = pipeline.validate(duckdb_config), pipeline.validate(config)
    assert (summary["events"], summary["users"], summary["items"]) == (reference["events"], reference["users"], reference["items"])
    assert not prepared.exists()
    out_of_core = pipeline.run(duckdb_config)
    assert out_of_core.metrics["splits"] == in_memory.metrics["splits"]
    assert len(list(prepared.iterdir())) == 1


def test_a_partial_folder_left_by_a_killed_preparation_is_removed_by_the_next(shop, tmp_path):
    from pipeline.data.shards import prepared_key, source_paths

    config = shop_config(shop, tmp_path, "duckdb")
    key = prepared_key(config.data, config.eval.target_event_types, [file_fingerprint(path) for path in source_paths(config.data)])
    (tmp_path / "prepared").mkdir()
    abandoned = tmp_path / "prepared" / f".{key}.999999999.partial"  # no such process
    (abandoned / "events").mkdir(parents=True)
    load_prepared(config.data, config.eval.target_event_types)
    assert sorted(path.name for path in (tmp_path / "prepared").iterdir()) == [key]
