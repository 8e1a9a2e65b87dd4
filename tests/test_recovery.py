"""The faults that lost data or gave wrong results, one test each: the champion's night, temporary files, a full disk,
a damaged history, padded lists, divergence, resume by name, unpublished folders, reused pids, the cache merge."""

import errno
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline
from pipeline import cli
from pipeline.embedding_cache import EmbeddingCache, text_key
from pipeline.outputs import (
    NIGHT_FILES,
    RUN_FILES,
    find_resumable,
    owner_mark,
    resumable_partials,
)
from pipeline.recipes.nightly.records import CHAMPION, read_state
from pipeline.storage import write_atomic
from tests.conftest import NIGHT_USERS, load_benchmark_nightly, tiny_config_dict

benchmark_nightly = load_benchmark_nightly()


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


@pytest.fixture
def id_config(tiny_data, tmp_path):
    """A run without the encoder (ids only): seconds per run."""
    return tiny_config_dict(
        tiny_data, tmp_path / "runs", tmp_path / "cache", model={"item_representation": "id"},
        train={"epochs": 2, "patience": 2, "batch_size": 8},
    )


@pytest.fixture
def night_config(tmp_path):
    config = tiny_config_dict(
        tmp_path / "data", tmp_path / "runs", tmp_path / "cache", model={"item_representation": "id"},
        train={"epochs": 1, "patience": 1}, output={"top_k": 100_000},
        nightly={"warm_epochs": 1, "tolerance": 0.99, "keep_nights": 1},
    )
    benchmark_nightly.write_log_until(tmp_path / "data", 0.7, max_user=NIGHT_USERS)
    return config, tmp_path / "runs" / "tiny-nightly"


def grow_log(config, quantile):
    benchmark_nightly.write_log_until(__import__("pathlib").Path(config["data"]["items"]["path"]).parent, quantile, max_user=NIGHT_USERS)


# ---- 1. the champion's night ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_state_moved_away_then_a_kept_champion_night_keeps_the_champion(night_config, monkeypatch):
    night = importlib.import_module("pipeline.recipes.nightly.night")

    config, root = night_config
    first = pipeline.nightly(config)
    os.replace(root / "state.json", root / "state.json.damaged")  # as the error for a damaged state advises
    grow_log(config, 0.85)
    decide = night.decide
    monkeypatch.setattr(night, "decide", lambda *args: {**decide(*args), "promote": False})  # a worse challenger
    kept = pipeline.nightly(config)
    monkeypatch.undo()
    assert kept.status == "kept_champion" and kept.exit_code == 3
    assert (root / CHAMPION).resolve() == first.night_dir and first.night_dir.is_dir()
    assert {path.name for path in first.night_dir.iterdir()} == NIGHT_FILES
    grow_log(config, 1.0)
    assert pipeline.nightly(config).exit_code in (0, 3)


@pytest.mark.slow
def test_a_dangling_champion_is_reported_and_the_challenger_promoted(night_config, caplog):
    config, root = night_config
    first = pipeline.nightly(config)
    shutil.rmtree(first.night_dir)
    grow_log(config, 0.85)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        second = pipeline.nightly(config)
    assert second.status == "promoted" and second.exit_code == 0
    message = second.summary["decision"]["message"]
    assert message.startswith(f"promoted: champion unusable: {root / CHAMPION}: points at {first.night_dir}, which does not exist")
    assert "champion unusable" in caplog.text and "Decision**: promoted: champion unusable" in (second.night_dir / "summary.md").read_text()
    assert (root / CHAMPION).resolve() == second.night_dir


@pytest.mark.slow
def test_damaged_champion_weights_are_reported_and_the_challenger_promoted(night_config):
    config, root = night_config
    first = pipeline.nightly(config)
    (first.night_dir / "model.safetensors").write_bytes(b"\0" * 100)
    grow_log(config, 0.85)
    second = pipeline.nightly(config)
    assert second.status == "promoted"
    assert "model.safetensors: damaged model weights" in second.summary["decision"]["message"]


@pytest.mark.slow
def test_state_reconciled_with_the_champion_link(night_config):
    config, root = night_config
    first = pipeline.nightly(config)
    state = json.loads((root / "state.json").read_text())
    state["promoted"] = []  # as after a kill between the link swap and the state write
    (root / "state.json").write_text(json.dumps(state))
    assert read_state(root)["promoted"] == [first.night_dir.name]


# ---- 2. and 3. temporary files, a full disk ------------------------------------------------------------------------


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    write_atomic(target, "old\n")

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pipeline.storage.os.fsync", full)
    with pytest.raises(pipeline.StorageError, match=r"table\.csv: disk full \(no space left on device\); the previous table\.csv, if any, is unchanged"):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n" and [path.name for path in tmp_path.iterdir()] == ["table.csv"]


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_then_resume(id_config, monkeypatch, capsys):
    import pipeline.storage

    real_fsync, writes = os.fsync, []

    def fsync_until_full(descriptor):
        if os.fstat(descriptor).st_size > 50_000:  # an epoch checkpoint, not a small file
            writes.append(descriptor)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(pipeline.storage.os, "fsync", fsync_until_full)
    config_path = tmp_config = id_config["output"]["root"] + ".yaml"
    open(tmp_config, "w").write(json.dumps(id_config))
    assert cli.main(["run", config_path]) == 1
    error = capsys.readouterr().err
    assert "checkpoint.pt: disk full (no space left on device); the previous checkpoint.pt, if any, is unchanged" in error
    runs = __import__("pathlib").Path(id_config["output"]["root"])
    (partial,) = runs.glob(".tiny-*.partial-*")
    assert sorted(path.name for path in partial.iterdir()) == ["checkpoint.pt", "config.resolved.yaml", "inputs.json", "run.log"]
    assert torch.load(partial / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the previous checkpoint is usable
    monkeypatch.setattr(pipeline.storage.os, "fsync", real_fsync)  # space freed
    result = pipeline.run(id_config, resume="auto")
    assert {path.name for path in result.run_dir.iterdir()} == RUN_FILES | {"recommendations.csv"}


# ---- 4. a damaged history ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage\n1,2\n3\n", b"night,date\n"], ids=["empty", "garbage", "other columns"])
@pytest.mark.slow
def test_damaged_history_is_rotated_and_the_night_tells_the_truth(night_config, content, caplog):
    config, root = night_config
    root.mkdir(parents=True)
    (root / "history.csv").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        night = pipeline.nightly(config)
    assert night.status == "promoted" and night.exit_code == 0
    assert f"{root / 'history.csv'}: damaged" in caplog.text
    (aside,) = root.glob("history.csv.damaged-*")
    assert aside.read_bytes() == content
    assert list(pd.read_csv(root / "history.csv")["status"]) == ["promoted"]


# ---- 5. lists stop at the last valid candidate ---------------------------------------------------------------------


@pytest.mark.slow
def test_lists_stop_at_the_last_valid_candidate(id_config, tmp_path, night_config):
    id_config["output"]["top_k"] = 100_000  # more than the catalog
    result = pipeline.run(id_config)
    n_items = result.metrics["protocol"]["n_items"]
    for lists in (result.recommendations, pd.read_csv(result.run_dir / "recommendations.csv", dtype={"item_id": str})):
        assert lists["item_id"].notna().all() and (lists["item_id"] != "").all()
        assert np.isfinite(lists["score"]).all()
        sizes = lists.groupby("user_id").size()
        assert sizes.max() < n_items and (lists.groupby("user_id")["rank"].max() == sizes).all()
    events = tmp_path / "events.csv"
    events.write_text("userId,movieId,timestamp\nnew,1,100\nnew,3,200\n", encoding="utf-8")
    served = pipeline.recommend(result.run_dir, events, top_k=100_000)
    # Candidates: the items with training events (an id-only model cannot score the others), less the two seen.
    trained = pipeline.load_run(result.run_dir).model.statistics.item_counts[1:] > 0
    assert int(trained.sum()) < n_items
    assert len(served) == int(trained.sum()) - 2 and np.isfinite(served["score"]).all() and served["item_id"].notna().all()
    config, _ = night_config
    night = pd.read_parquet(pipeline.nightly(config).night_dir / "recommendations.parquet")
    assert np.isfinite(night["score"]).all() and night["item_id"].notna().all()


# ---- 6. divergence -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_divergence_is_a_named_stop_with_nothing_published(id_config, capsys):
    id_config["train"]["learning_rate"] = 1e30
    with pytest.raises(pipeline.PipelineInputError, match=r"training diverged at epoch 1 \(non-finite (loss|validation scores)\)"):
        pipeline.run(id_config)
    runs = __import__("pathlib").Path(id_config["output"]["root"])
    assert not [path for path in runs.iterdir() if not path.name.startswith(".")]


# ---- 7. and 8. resume by exact name, unpublished folders, reused pids ----------------------------------------------


def test_resume_auto_matches_the_exact_name(tmp_path):
    other = tmp_path / f".rt-b-20260101T000000000000Z.partial-{dead_pid()}-1"
    other.mkdir()
    (other / "checkpoint.pt").write_bytes(b"x")
    assert resumable_partials(tmp_path, "rt-b") == [other]
    with pytest.raises(pipeline.PipelineInputError, match=r"--resume auto: no stopped run of 'rt' with a checkpoint"):
        find_resumable(tmp_path, "rt", "auto")


def test_a_reused_pid_does_not_keep_a_stopped_run_running(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reused = tmp_path / f".rt-20260101T000000000000Z.partial-{sleeper.pid}-1"  # that pid, another start time
        mine = tmp_path / f".rt-20260101T000000000001Z.partial-{owner_mark()}"
        for folder in (reused, mine):
            folder.mkdir()
            (folder / "checkpoint.pt").write_bytes(b"x")
        alive = tmp_path / f".rt-20260101T000000000002Z.partial-{sleeper.pid}-{open(f'/proc/{sleeper.pid}/stat').read().rsplit(')', 1)[1].split()[19]}"
        alive.mkdir()
        (alive / "checkpoint.pt").write_bytes(b"x")
        assert sorted(resumable_partials(tmp_path, "rt")) == [reused, mine]
    finally:
        sleeper.kill()


@pytest.mark.slow
def test_recommend_refuses_an_unpublished_folder(id_config, tmp_path, capsys):
    result = pipeline.run(id_config)
    partial = result.run_dir.with_name(f".{result.run_dir.name}.partial-{dead_pid()}-1")
    shutil.copytree(result.run_dir, partial)
    events = tmp_path / "events.csv"
    events.write_text("userId,movieId,timestamp\nnew,1,100\n", encoding="utf-8")
    assert cli.main(["recommend", str(partial), "--events", str(events)]) == 2
    assert f"error: {partial}: an unpublished run folder (stopped or still running), not a finished run" in capsys.readouterr().err


# ---- 9. the cache merge --------------------------------------------------------------------------------------------


def test_a_concurrent_merge_keeps_the_other_process_vectors(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.embedding_cache.MAX_CACHE_SHARDS", 4)
    vectors = lambda n, seed: np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)  # noqa: E731
    keys = lambda prefix, n: [text_key(f"{prefix}{i}") for i in range(n)]  # noqa: E731
    seeding = EmbeddingCache(tmp_path, "id")
    for shard in range(3):
        seeding.add(keys(f"s{shard}-", 2), vectors(2, shard))
    first = EmbeddingCache(tmp_path, "id")  # has read the three shards; a fourth makes its next add merge
    other = EmbeddingCache(tmp_path, "id")
    other.add(keys("other-", 5), vectors(5, 9))  # another process: a fourth shard, after `first` read the folder
    first.add(keys("first-", 1), vectors(1, 8))  # merges: must not delete what it has not read
    reread = EmbeddingCache(tmp_path, "id")
    assert len(reread) == 3 * 2 + 5 + 1
    assert np.allclose(reread.vectors(keys("other-", 5)), vectors(5, 9))
    assert np.allclose(reread.vectors(keys("s1-", 2)), vectors(2, 1))
    assert len(list(tmp_path.glob("id/shard-*"))) == 2  # one merged shard: its keys and its vectors


@pytest.mark.slow
def test_a_champion_with_non_finite_weights_is_replaced(night_config):
    from safetensors.torch import load_file, save_file

    config, root = night_config
    first = pipeline.nightly(config)
    weights = load_file(first.night_dir / "model.safetensors")
    save_file({name: tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor for name, tensor in weights.items()},
              first.night_dir / "model.safetensors")
    grow_log(config, 0.85)
    second = pipeline.nightly(config)
    assert second.status == "promoted" and second.summary["training"]["mode"] == "full"
    assert second.summary["training"]["reason"].startswith("warm start diverged: training diverged at epoch 1")
    assert "champion unusable: " in second.summary["decision"]["message"] and "scored items NaN" in second.summary["decision"]["message"]
