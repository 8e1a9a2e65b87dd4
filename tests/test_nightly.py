"""Nights on the bundled MovieLens log cut by time: scratch, warm start, nothing new, a degraded challenger, the lock."""

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest

from pipeline.recipes.nightly import LockHeld, nightly
from pipeline.recipes.nightly.lock import NightLock
from pipeline.windows import ReplaySelection, TrainingWindows
from tests.conftest import load_benchmark_nightly, tiny_config_dict, write_yaml

benchmark_nightly = load_benchmark_nightly()  # the same cut of the log as the nightly benchmark

USERS = 60


def write_log_until(folder, quantile):
    """The first USERS users' log up to a time quantile, and the movies it mentions (the benchmark's cut)."""
    return benchmark_nightly.write_log_until(folder, quantile, max_user=USERS)


@pytest.fixture(scope="module")
def night_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("nightly")
    config = tiny_config_dict(
        root / "data", root / "runs", root / "cache",
        train={"epochs": 3, "patience": 3, "learning_rate": 0.005},
        eval={"ks": [10, 50], "select_k": 50},
        nightly={"warm_epochs": 2, "metric": "ndcg@50", "tolerance": 0.02, "keep_nights": 2, "replay_fraction": 0.1},
    )
    return root, config


def nights(root):
    folder = root / "runs" / "tiny-nightly" / "nights"
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith(".") and path.name != "latest")


def assert_served_lists_measured(served: dict, last_night, data_folder, watermark_iso: str) -> None:
    """The served numbers, recomputed from the files: last night's lists and the log's events after its newest."""
    lists = pd.read_parquet(last_night / "recommendations.parquet").astype({"user_id": str, "item_id": str})
    ratings = pd.read_csv(data_folder / "ratings.csv").astype({"userId": str, "movieId": str})
    watermark = pd.Timestamp(watermark_iso).timestamp()
    new = ratings[(ratings["timestamp"] > watermark) & ratings["userId"].isin(set(lists["user_id"]))]
    hits = lists.merge(new, left_on=["user_id", "item_id"], right_on=["userId", "movieId"])["user_id"].nunique()
    assert served["night"] == last_night.name and served["k"] == 5
    assert served["users_served"] == new["userId"].nunique() > 0
    assert served["hit_rate"] == pytest.approx(hits / new["userId"].nunique())
    catalog = len(json.loads((last_night / "catalog.json").read_text())["item_ids"])
    assert served["coverage"] == pytest.approx(lists["item_id"].nunique() / catalog)
    # The popularity floor's lists (hand-checked in test_served_hit_rate_against_hand_computed_lists).
    assert 0 <= served["popularity_hit_rate"] <= 1
    assert 0 < served["popularity_coverage"] * catalog <= 5 * served["users_served"]


def test_served_hit_rate_against_hand_computed_lists(tmp_path):
    from pipeline.config import load_config
    from pipeline.data import load_data, prepare
    from pipeline.recipes.nightly.feedback import served_feedback

    # Before the watermark (150): a by all three, b by u1 and u2, c by u3; after it: u1 c, u2 d, u3 e.
    events = [("u1", "a", 100), ("u1", "b", 101), ("u2", "a", 102), ("u2", "b", 103), ("u3", "a", 104),
              ("u3", "c", 105), ("u1", "c", 200), ("u2", "d", 201), ("u3", "e", 202), ("u1", "a", 90)]
    pd.DataFrame(events, columns=["user", "item", "time"]).to_csv(tmp_path / "log.csv", index=False)
    pd.DataFrame({"id": list("abcde"), "title": list("ABCDE"), "genre": ["x"] * 5}).to_csv(tmp_path / "items.csv", index=False)
    config = load_config({"data": {
        "interactions": {"path": str(tmp_path / "log.csv"), "columns": {"user": "user", "item": "item", "timestamp": "time"}},
        "items": {"path": str(tmp_path / "items.csv"), "columns": {"id": "id", "category": "genre"}},
    }})
    data = prepare(load_data(config.data), config.data)
    last_night = tmp_path / "night"
    last_night.mkdir()
    served = {"u1": ["c", "d"], "u2": ["d", "e"], "u3": ["b", "d"], "u4": ["a", "b"]}  # u4: no new events
    pd.DataFrame([(user, rank, item) for user, items in served.items() for rank, item in enumerate(items, 1)],
                 columns=["user_id", "rank", "item_id"]).to_parquet(last_night / "recommendations.parquet")
    (last_night / "metrics.json").write_text(json.dumps({"protocol": {"exclude_seen": True, "n_items": 5}}))
    result = served_feedback(last_night, data, watermark=150)
    # Served: u1 (c) and u2 (d) hit, u3 (e) misses. Popularity before 150, each user's own items left out, is
    # u1 [c], u2 [c], u3 [b]: only u1 hits. Coverage: every served list counts (u4's too), {a, ..., e} of 5 items;
    # the popularity lists of the users measured, {b, c}.
    assert result == {
        "night": "night", "k": 2, "users_with_new_events": 3, "users_served": 3,
        "hit_rate": pytest.approx(2 / 3), "coverage": pytest.approx(1.0),
        "popularity_hit_rate": pytest.approx(1 / 3), "popularity_coverage": pytest.approx(0.4),
    }
    assert served_feedback(None, data, watermark=None) is None  # the first night
    (last_night / "recommendations.parquet").write_bytes(b"not parquet")
    assert served_feedback(last_night, data, watermark=150) is None  # unreadable lists: a warning, no numbers


@pytest.mark.long
@pytest.mark.slow
def test_three_nights_then_a_degraded_challenger(night_config):
    root, config = night_config
    nightly_root = root / "runs" / "tiny-nightly"

    items_night1 = write_log_until(root / "data", 0.7)
    first = nightly(config)
    assert first.status == "promoted" and first.exit_code == 0
    assert first.summary["training"]["mode"] == "full"
    assert first.summary["texts"] == {"encoded": items_night1, "from_cache": 0}
    assert (nightly_root / "champion").resolve() == first.night_dir
    assert {"summary.md", "profiles.parquet", "model.safetensors", "metrics.json", "run.log"} <= {p.name for p in first.night_dir.iterdir()}

    assert first.summary["served"] is None  # no lists served before the first night
    items_night2 = write_log_until(root / "data", 0.85)
    second = nightly(config)
    assert_served_lists_measured(second.summary["served"], first.night_dir, root / "data", first.summary["data"]["newest_event"])
    assert second.summary["training"]["mode"] == "warm"
    assert second.summary["data"]["new_items"] == items_night2 - items_night1 > 0
    assert second.summary["data"]["new_events"] > 0
    # Only the new movies' texts are encoded; every other text comes from the cache.
    assert second.summary["texts"] == {"encoded": items_night2 - items_night1, "from_cache": items_night1}
    windows = second.summary["training"]["epoch_windows"]  # windows not trained on last night + a tenth of the others
    assert 0 < windows["new_windows"] < windows["windows"]
    assert windows["replayed_windows"] == round(0.1 * (windows["windows"] - windows["new_windows"]))
    warm = second.summary["training"]["warm_start"]
    assert warm["new_items"] == items_night2 - items_night1
    # The new items with training events tonight (they have id rows) start from their text neighbours' rows.
    assert 0.9 * warm["new_items"] < warm["new_items_from_text"] <= warm["new_items"]
    decision = second.summary["decision"]
    assert decision["champion"] is not None and decision["window"] == "gate"
    assert "- **Deciding window**: gate, the validation events of half the users" in (second.night_dir / "summary.md").read_text()
    assert set(json.loads((second.night_dir / "metrics.json").read_text())["splits"]) == {"gate", "test"}
    assert second.status == ("promoted" if decision["challenger"] >= decision["champion"] * 0.98 else "kept_champion")
    profiles = pd.read_parquet(second.night_dir / "profiles.parquet")
    returning = profiles[~profiles["new_user"]]
    assert len(returning) > 0 and returning["drift"].between(0, 1).all()
    share_columns = [c for c in profiles.columns if c.startswith("share:")]
    assert profiles[share_columns].sum(axis=1).round(6).eq(1).all()

    third = nightly(config)
    assert third.status == "nothing_new" and third.exit_code == 0 and third.night_dir is None
    assert "nothing new" in third.summary["message"]
    assert len(nights(root)) == 2

    champion_before = (nightly_root / "champion").resolve()
    write_log_until(root / "data", 1.0)
    degraded = nightly(config, overrides=["train.learning_rate=50", "nightly.warm_epochs=1", "logging.backends=[mlflow]"])
    assert degraded.status == "kept_champion" and degraded.exit_code == 3
    import mlflow  # the night as one MLflow run, its decision as a tag

    mlflow.set_tracking_uri(f"sqlite:///{nightly_root / 'nights' / 'mlflow.db'}")
    (tracked,) = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert tracked.info.run_name == degraded.night_dir.name and tracked.data.tags["decision"] == "kept_champion"
    assert tracked.data.metrics["gate.challenger.ndcg_at_50"] == pytest.approx(degraded.summary["decision"]["challenger"])
    assert degraded.summary["decision"]["challenger"] < degraded.summary["decision"]["champion"]
    assert (nightly_root / "champion").resolve() == champion_before

    assert_served_lists_measured(degraded.summary["served"], second.night_dir, root / "data", second.summary["data"]["newest_event"])
    assert "- **Served lists**: night " in (degraded.night_dir / "summary.md").read_text()
    history = pd.read_csv(nightly_root / "history.csv")
    assert list(history["status"]) == ["promoted", second.status, "nothing_new", "kept_champion"]
    assert history["served_hit_rate"].isna().tolist() == [True, False, True, False]
    assert history["served_hit_rate"].iloc[3] == degraded.summary["served"]["hit_rate"]
    assert history["new_events"].iloc[[0, 1, 3]].gt(0).all()
    # Retention: the last 2 nights plus every promoted one.
    state = json.loads((nightly_root / "state.json").read_text())
    kept = set(nights(root))
    assert set(state["promoted"]) <= kept and {second.night_dir.name, degraded.night_dir.name} <= kept
    assert "# Night" in (degraded.night_dir / "summary.md").read_text()


@pytest.mark.slow
def test_two_nights_at_once_only_one_trains(night_config, tmp_path, pipeline_command):
    root, config = night_config
    write_log_until(root / "data", 1.0)
    config = {**config, "nightly": {**config["nightly"], "root": str(tmp_path / "nightly")}}
    path = write_yaml(tmp_path / "night.yaml", config)
    processes = [pipeline_command.start("nightly", path) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    codes = sorted(process.returncode for process in processes)
    assert codes in ([0, 4], [3, 4]), outputs
    skipped = outputs[[process.returncode for process in processes].index(4)][1]
    assert "another night is running" in skipped
    assert len([p for p in (tmp_path / "nightly" / "nights").iterdir() if not p.name.startswith(".") and p.name != "latest"]) == 1


@pytest.mark.slow
def test_stale_lock_is_taken_over_and_a_held_lock_refuses(tmp_path, caplog):
    lock_path = tmp_path / "lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path.write_text(json.dumps({"pid": int(dead.stdout), "host": "h", "since": "yesterday"}))
    with caplog.at_level("WARNING", logger="pipeline"):
        with NightLock(lock_path):
            assert json.loads(lock_path.read_text())["pid"] == os.getpid()
            holder = subprocess.run(
                [sys.executable, "-c", f"from pipeline.recipes.nightly.lock import NightLock\nwith NightLock(__import__('pathlib').Path({str(lock_path)!r})): pass"],
                capture_output=True, text=True,
            )
            assert holder.returncode != 0 and "another night is running" in holder.stderr
    assert "taking over a stale lock" in caplog.text
    assert lock_path.read_text() == ""  # released cleanly: not stale for the next night
    with NightLock(lock_path):
        pass
    with pytest.raises(LockHeld):
        with NightLock(lock_path):
            with NightLock(lock_path):
                pass


def test_the_gate_window_decides_and_the_test_window_only_reports(tiny_config):
    from pipeline.config import load_config
    from pipeline.recipes.nightly.night import decide

    config = load_config(tiny_config)  # nightly.metric: ndcg@10, tolerance 0.02
    better_on_test_only = {"gate": {"ndcg@10": 0.10}, "test": {"ndcg@10": 0.30}}
    champion = {"gate": {"ndcg@10": 0.20}, "test": {"ndcg@10": 0.15}}
    kept = decide(config, better_on_test_only, champion)
    assert not kept["promote"] and kept["window"] == "gate"
    assert (kept["challenger"], kept["champion"], kept["challenger_test"], kept["champion_test"]) == (0.10, 0.20, 0.30, 0.15)
    assert kept["message"].startswith("kept the champion on the gate window: challenger ndcg@10 0.1000 vs champion 0.2000")
    # Within the tolerance on the gate window (0.197 >= 0.2 x 0.98 = 0.196), whatever the test window says.
    close = decide(config, {"gate": {"ndcg@10": 0.197}, "test": {"ndcg@10": 0.01}}, champion)
    assert close["promote"]


@pytest.mark.slow
def test_a_challenger_better_only_on_test_is_not_promoted(night_config, tmp_path, monkeypatch):
    from pipeline.recipes.nightly import night

    root, config = night_config
    config = {**config, "nightly": {**config["nightly"], "root": str(tmp_path / "nightly")}}
    write_log_until(root / "data", 0.85)
    first = nightly(config)
    assert first.status == "promoted"
    write_log_until(root / "data", 1.0)
    evaluate_windows = night._evaluate_windows
    calls = []

    def challenger_worse_on_gate_better_on_test(model, data, night_config, gate):
        metrics = evaluate_windows(model, data, night_config, gate)
        calls.append(model)
        if len(calls) == 1:  # the challenger is evaluated first
            metrics["gate"] = {**metrics["gate"], "ndcg@50": 0.0}
            metrics["test"] = {**metrics["test"], "ndcg@50": 1.0}
        return metrics

    monkeypatch.setattr(night, "_evaluate_windows", challenger_worse_on_gate_better_on_test)
    second = nightly(config)
    assert len(calls) == 2
    assert second.status == "kept_champion" and second.exit_code == 3
    decision = second.summary["decision"]
    assert decision["challenger_test"] == 1.0 > decision["champion_test"] and decision["challenger"] == 0.0
    assert (tmp_path / "nightly" / "champion").resolve() == first.night_dir
    assert "Deciding window**: gate" in (second.night_dir / "summary.md").read_text()


def test_the_gate_is_the_validation_half_the_challenger_does_not_select_on(tiny_config):
    from pipeline.config import load_config
    from pipeline.data import VALID, load_data, prepare
    from pipeline.recipes.nightly.night import split_validation

    config = load_config(tiny_config)
    data = prepare(load_data(config.data), config.data)
    selection, gate = split_validation(data)
    everyone = data.eval_cases(VALID)
    assert len(selection) >= 2 and len(gate) >= 2
    assert not set(selection.users) & set(gate.users)
    assert sorted([*selection.users, *gate.users]) == sorted(everyone.users)
    # A user's side follows from their id alone: the same on another night, with other users around.
    fewer = data.user_ids[gate.users][:3]
    assert all(zlib.crc32(str(user).encode("utf-8")) % 2 == 1 for user in fewer)
    row = list(everyone.users).index(gate.users[0])
    assert gate.targets[0].tolist() == everyone.targets[row].tolist()


def test_a_warm_epoch_takes_every_window_with_new_events_and_a_fresh_replay_share_of_the_others():
    newest = np.array([5, 1, 9, 2, 8, 3, 7, 4, 6, 10])
    users_newest = np.zeros(10, dtype=bool)
    users_newest[[0, 2]] = True  # window 0 ends at its user's newest training event (held out last night)
    windows = TrainingWindows(np.zeros((10, 2), dtype=np.int64), np.zeros((10, 2), dtype=np.int64), None,
                              newest_target_time=newest, users_newest=users_newest)
    select, rng = ReplaySelection(newer_than=7, replay_fraction=0.5), np.random.default_rng(0)
    draws = [select(windows, rng) for _ in range(20)]
    for rows in draws:
        assert {0, 2, 4, 9} <= set(rows) and len(rows) == 4 + 3  # 3 newer + window 0, half of the 6 others
    assert len({tuple(rows) for rows in draws}) > 1  # the replayed windows are drawn afresh each epoch
    assert select.counts == {"new_windows": 4, "replayed_windows": 3, "windows": 10}
