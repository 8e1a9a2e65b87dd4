"""Loading with column mapping, clear errors for bad files, and leak-free splits."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.data import TEST, TRAIN, VALID, load_data, prepare
from pipeline.errors import PipelineInputError
from tests.conftest import config_for, write_items, write_log


def test_leave_last_out_keeps_file_order_on_timestamp_ties(tmp_path):
    # user 1 rates 11, 12, 13 all at t=5 (a tie): the file order decides, so 13 is last (test) and 12 is valid.
    events = write_log(tmp_path, ["1,11,5", "1,12,5", "1,13,5", "2,12,1", "2,11,2", "2,13,3", "2,14,4"])
    config = config_for(events, write_items(tmp_path, [11, 12, 13, 14]))
    data = prepare(load_data(config.data), config.data)
    test = data.eval_cases(TEST)
    valid = data.eval_cases(VALID)
    ids = data.item_ids
    assert [ids[t[0]] for t in test.targets] == ["13", "14"]
    assert [ids[t[0]] for t in valid.targets] == ["12", "13"]
    assert [list(ids[h]) for h in test.histories] == [["11", "12"], ["12", "11", "13"]]
    assert [list(ids[h]) for h in valid.histories] == [["11"], ["12", "11"]]

def test_timestamps_one_second_apart_keep_their_order(tmp_path):
    # Near 1.5e9 a float32 has a 128 s spacing (RecBole stores timestamps so): these three would tie and the file
    # order (13, 12, 11) would decide. In whole seconds, 11 is last.
    events = write_log(tmp_path, ["1,13,1500000001", "1,12,1500000002", "1,11,1500000003", "2,11,1", "2,12,2", "2,13,3"])
    config = config_for(events, write_items(tmp_path, [11, 12, 13]))
    data = prepare(load_data(config.data), config.data)
    ids = data.item_ids
    assert [ids[t[0]] for t in data.eval_cases(TEST).targets] == ["11", "13"]
    assert [ids[t[0]] for t in data.eval_cases(VALID).targets] == ["12", "12"]



def test_time_cut_puts_no_future_event_in_training(tmp_path):
    rows = [f"{u},{10 + (u * 7 + t) % 9},{1000 + 10 * t + u}" for u in range(1, 9) for t in range(10)]
    events = write_log(tmp_path, rows)
    config = config_for(events, write_items(tmp_path, list(range(10, 19))), split={"method": "time_cut", "valid_fraction": 0.2, "test_fraction": 0.2})
    data = prepare(load_data(config.data), config.data)
    by_split = data.events.groupby("split")["timestamp"]
    assert by_split.max()[TRAIN] < by_split.min()[VALID]
    assert by_split.max()[VALID] < by_split.min()[TEST]
    # A test user's history holds only events from before the test period.
    cases = data.eval_cases(TEST)
    test_start = by_split.min()[TEST]
    for user, history in zip(cases.users, cases.histories):
        user_events = data.events[(data.events["user"] == user) & (data.events["timestamp"] < test_start)]
        assert list(history) == list(user_events["item"])


def test_popularity_statistics_ignore_valid_and_test(tmp_path):
    from pipeline.models.base import TrainingStatistics

    # Item 14 only ever appears as users' last event: it must have zero training count.
    events = write_log(tmp_path, ["1,11,1", "1,12,2", "1,13,3", "1,14,4", "2,12,1", "2,11,2", "2,13,3", "2,14,4"])
    config = config_for(events, write_items(tmp_path, [11, 12, 13, 14]))
    data = prepare(load_data(config.data), config.data)
    statistics = TrainingStatistics(data.n_items, len(data.category_names))
    statistics.fit(data.train_view())
    counts = dict(zip(data.item_ids[1:], statistics.item_counts[1:].tolist()))
    assert counts == {"11": 2.0, "12": 2.0, "13": 0.0, "14": 0.0}


def test_min_item_filter_counts_training_events_only(tmp_path):
    # Item 14 appears 4 times, but only as valid/test events: with min_item_interactions=2 it is dropped.
    rows = ["1,11,1", "1,12,2", "1,14,3", "1,14,4", "2,11,1", "2,12,2", "2,14,3", "2,14,4", "3,11,1", "3,12,2", "3,11,3", "3,12,4"]
    config = config_for(write_log(tmp_path, rows), write_items(tmp_path, [11, 12, 14]), min_item_interactions=2, deduplicate=False)
    data = prepare(load_data(config.data), config.data)
    assert list(data.item_ids[1:]) == ["11", "12"]


def test_formats_and_iso_timestamps_agree(tmp_path):
    frame = pd.DataFrame({"u": ["a", "a", "a", "b", "b", "b"], "i": [11, 12, 13, 13, 12, 11], "t": [1, 2, 3, 4, 5, 6]})
    items = write_items(tmp_path, [11, 12, 13])
    csv = tmp_path / "e.csv"
    frame.to_csv(csv, index=False)
    parquet = tmp_path / "e.parquet"
    frame.to_parquet(parquet)
    jsonl = tmp_path / "e.jsonl"
    iso = frame.assign(t=pd.to_datetime(frame["t"], unit="s", utc=True).map(lambda ts: ts.isoformat()))
    jsonl.write_text("\n".join(json.dumps(row) for row in iso.to_dict("records")) + "\n", encoding="utf-8")
    loaded = [load_data(config_for(path, items).data).interactions for path in (csv, parquet, jsonl)]
    for other in loaded[1:]:
        pd.testing.assert_frame_equal(loaded[0], other)
    assert loaded[0]["timestamp"].tolist() == [1, 2, 3, 4, 5, 6]


def test_duplicates_and_unknown_items_are_dropped_and_logged(tmp_path, caplog):
    rows = ["1,11,1", "1,11,1", "1,12,2", "1,13,3", "1,99,4"]
    config = config_for(write_log(tmp_path, rows), write_items(tmp_path, [11, 12, 13]))
    with caplog.at_level("INFO", logger="pipeline"):
        data = prepare(load_data(config.data), config.data)
    assert len(data.events) == 3
    assert "dropped 1 duplicate interactions" in caplog.text
    assert "dropped 1 interactions whose item is not in the items table" in caplog.text


def test_multi_valued_categories(tmp_path):
    config = config_for(write_log(tmp_path, ["1,11,1", "1,12,2", "1,21,3"]), write_items(tmp_path, [11, 12, 21]))
    data = prepare(load_data(config.data), config.data)
    assert data.category_names == ["A", "B", "C"]
    names = [[data.category_names[c] for c in categories] for categories in data.item_categories[1:]]
    assert names == [["A", "B"], ["C"], ["A", "B"]]
    np.testing.assert_allclose(data.category_matrix()[1], [0.5, 0.5, 0.0])


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (["1,11,abc"], "u,i,t", r"row 1: cannot parse 't' value 'abc'"),
        (["1,11,5", "1,,6"], "u,i,t", r"row 2: empty 'i'"),
        (["1,11,5", "1,12,99999999999"], "u,i,t", r"row 2: 't' value .* outside 1970\.\.2100"),
        (["1,11,5"], "U,i,t", r"missing column 'u' \(did you mean 'U'\?\)"),
        ([], "u,i,t", r"no data rows"),
        (["1,11,5", "1,12,6,7"], "u,i,t", r"malformed CSV"),
    ],
)
def test_bad_interactions_name_file_and_row(tmp_path, rows, header, message):
    config = config_for(write_log(tmp_path, rows, header=header), write_items(tmp_path, [11, 12]))
    with pytest.raises(PipelineInputError, match=message) as caught:
        load_data(config.data)
    assert "events.csv" in str(caught.value)


def test_non_utf8_and_empty_files(tmp_path):
    items = write_items(tmp_path, [11])
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("u,i,t\n1,11,5\nJos\xe9,11,6\n".encode("latin-1"))
    with pytest.raises(PipelineInputError, match=r"latin1\.csv: not UTF-8"):
        load_data(config_for(bad, items).data)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(PipelineInputError, match=r"empty\.csv: file is empty"):
        load_data(config_for(empty, items).data)


def test_rating_outside_declared_range(tmp_path):
    events = write_log(tmp_path, ["1,11,5,4.0", "1,11,6,7.5"], header="u,i,t,r")
    config = load_config(
        {
            "data": {
                "interactions": {"path": str(events), "columns": {"user": "u", "item": "i", "timestamp": "t", "rating": "r"}},
                "items": {"path": str(write_items(tmp_path, [11])), "columns": {"id": "id", "category": "cat"}},
                "rating_range": [0.5, 5.0],
            }
        }
    )
    with pytest.raises(PipelineInputError, match=r"row 2: 'r' value 7\.5 is outside data\.rating_range"):
        load_data(config.data)


def test_repeated_item_id_in_items_table(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("id,title,cat\n11,A,C\n12,B,C\n11,C,C\n", encoding="utf-8")
    with pytest.raises(PipelineInputError, match=r"items\.csv: row 3: item id '11' repeats row 1"):
        load_data(config_for(write_log(tmp_path, ["1,11,1"]), items).data)
