"""A run directory appears only when finished; a failed run leaves nothing and keeps `latest`."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import pipeline
from pipeline.storage import file_fingerprint
from tests.conftest import TINY_USERS


@pytest.mark.slow
def test_failed_run_leaves_no_directory_and_keeps_latest(tiny_config, monkeypatch, tmp_path):
    tiny_config["train"]["epochs"] = 1
    first = pipeline.run(tiny_config)
    latest = tmp_path / "runs" / "latest"
    assert latest.resolve() == first.run_dir

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("pipeline.serving.save_model", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        pipeline.run(tiny_config)
    names = sorted(path.name for path in (tmp_path / "runs").iterdir())
    visible = [name for name in names if not name.startswith(".")]
    assert visible == sorted([first.run_dir.name, "latest"])
    assert latest.resolve() == first.run_dir
    # Training had finished, so the hidden partial folder keeps its checkpoint and the run can be completed.
    (partial,) = [name for name in names if name.startswith(".")]
    monkeypatch.undo()
    resumed = pipeline.run(tiny_config, resume="auto")
    assert resumed.run_dir.name == partial[1:].split(".partial-")[0]
    assert latest.resolve() == resumed.run_dir
    assert not (resumed.run_dir / "checkpoint.pt").exists()
    assert resumed.history == [] or resumed.history[-1]["epoch"] == 1


@pytest.mark.slow
def test_library_run_and_reload(tiny_config):
    tiny_config["train"]["epochs"] = 1
    result = pipeline.run(tiny_config, overrides=["model={name: lstm, hidden_size: 16, num_layers: 1, max_length: 20}"])
    assert result.metrics["splits"]["test"]["lstm"]["users"] == TINY_USERS
    assert "metrics.json" in result.paths
    loaded = pipeline.load_run(result.run_dir)
    full_histories = pipeline.data.load_interactions(result.config.data.interactions)
    lists = loaded.recommend(full_histories)
    assert lists["user_id"].nunique() == TINY_USERS
    assert (lists.groupby("user_id").size() == result.config.output.top_k).all()


def test_checkpoint_from_a_different_shape_is_refused(tiny_config, tmp_path):
    tiny_config["train"]["epochs"] = 1
    tiny_config["model"]["item_representation"] = "id"  # no text to encode: the weights' shape is what matters
    result = pipeline.run(tiny_config)
    resolved = result.run_dir / "config.resolved.yaml"
    resolved.write_text(resolved.read_text().replace("hidden_size: 16", "hidden_size: 32"))
    with pytest.raises(pipeline.PipelineInputError, match=r"config\.resolved\.yaml: damaged \(its sha256 differs"):
        pipeline.load_run(result.run_dir)  # an edited config is not the one the weights were trained with
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    manifest["config_sha256"] = file_fingerprint(resolved)["sha256"]  # edited consistently: the weights still differ
    (result.run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(pipeline.PipelineInputError, match=r"model\.safetensors: checkpoint does not fit this model"):
        pipeline.load_run(result.run_dir)


@pytest.mark.slow
def test_recommend_orders_histories_by_time_across_utc_offsets_and_reads_the_runs_own_columns(tiny_config):
    # A sequence model reads order: the same two events as ISO strings with different offsets must give the lists
    # of the same events in unix seconds (10:00+05:00 is 05:00Z, before 06:00Z: sorted as text it would come after).
    tiny_config["train"]["epochs"] = 1
    tiny_config["model"]["item_representation"] = "id"
    result = pipeline.run(tiny_config)
    loaded = pipeline.load_run(result.run_dir)
    first, second = result.recommendations["item_id"].unique()[:2]
    as_iso = pd.DataFrame({
        "userId": ["new", "new"], "movieId": [first, second],
        "timestamp": ["2020-01-01T10:00:00+05:00", "2020-01-01T06:00:00+00:00"],
    })
    as_seconds = pd.DataFrame({"user": ["new", "new"], "item": [first, second], "timestamp": [1577854800, 1577858400]})
    reversed_order = as_seconds.assign(timestamp=[1577858400, 1577854800])
    lists = loaded.recommend(as_iso)  # the run's own column names
    pd.testing.assert_frame_equal(lists, loaded.recommend(as_seconds))
    assert not lists.equals(loaded.recommend(reversed_order))  # the order matters to this model
    with pytest.raises(pipeline.PipelineInputError, match=r"events: needs the run's columns \['userId', 'movieId', 'timestamp'\] or user, item, timestamp; found \['who'\]"):
        loaded.recommend(pd.DataFrame({"who": ["new"]}))


@pytest.mark.slow
def test_the_item_text_table_is_kept_beside_the_weights_and_mapped_back(tiny_config):
    import numpy as np
    from safetensors.torch import load_file, save_file

    from pipeline.outputs import ITEM_TABLE

    tiny_config["train"]["epochs"] = 1
    tiny_config["encoder"]["table_dtype"] = "float16"
    result = pipeline.run(tiny_config)
    table = result.run_dir / ITEM_TABLE
    cached = Path(result.config.encoder.cache_dir).rglob("tables/*.npy")
    assert table.stat().st_ino in {path.stat().st_ino for path in cached}  # a hard link: the vectors are not copied
    weights = load_file(str(result.run_dir / "model.safetensors"))
    assert not [name for name in weights if name.endswith("item_text_embeddings")]  # not inside the weights

    def text_buffer(model):
        (buffer,) = [tensor for name, tensor in model.named_buffers() if name.endswith("item_text_embeddings")]
        return buffer

    loaded = pipeline.load_run(result.run_dir)
    assert text_buffer(loaded.model).dtype == torch.float16
    np.testing.assert_array_equal(text_buffer(loaded.model).numpy(), np.load(table))
    events = pipeline.data.load_interactions(result.config.data.interactions)
    lists = loaded.recommend(events)
    # Weights written before the table was kept beside them carry it: they load the same.
    (name,) = [name for name, _ in loaded.model.named_buffers() if name.endswith("item_text_embeddings")]
    # ... and an id table with one row per item.
    (ids,) = [name for name in weights if name.endswith("id_embedding.weight")]
    id_rows = weights.pop(ids.replace("id_embedding.weight", "id_rows"))
    weights[ids] = weights[ids][id_rows]
    save_file({**weights, name: torch.from_numpy(np.load(table))}, str(result.run_dir / "model.safetensors"))
    table.unlink()
    legacy = pipeline.load_run(result.run_dir)
    np.testing.assert_array_equal(text_buffer(legacy.model).numpy(), text_buffer(loaded.model).numpy())
    pd.testing.assert_frame_equal(legacy.recommend(events), lists)


@pytest.mark.slow
def test_a_run_is_tracked_in_tensorboard_and_mlflow(tiny_config, tmp_path):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config["train"]["epochs"] = 2
    tiny_config["logging"] = {"backends": ["tensorboard", "mlflow"]}
    result = pipeline.run(tiny_config)
    epochs = [record["epoch"] for record in result.history]
    events = EventAccumulator(str(tmp_path / "runs" / "tensorboard" / result.run_dir.name))
    events.Reload()
    assert [event.step for event in events.Scalars("valid_ndcg@10")] == epochs == [1, 2]
    assert [event.value for event in events.Scalars("loss_item")] == pytest.approx([r["loss_item"] for r in result.history])
    test_ndcg = result.metrics["splits"]["test"]["transformer"]["ndcg@10"]
    assert events.Scalars("test/transformer/ndcg@10")[0].value == pytest.approx(test_ndcg)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=[result.config.name], output_format="list")
    assert run.info.run_name == result.run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "transformer" and run.data.params["train.epochs"] == "2"
    assert run.data.metrics["test.transformer.ndcg_at_10"] == pytest.approx(test_ndcg)
    curve = mlflow.MlflowClient().get_metric_history(run.info.run_id, "valid_ndcg_at_10")
    assert [(point.step, point.value) for point in curve] == [(r["epoch"], pytest.approx(r["valid_ndcg@10"])) for r in result.history]
    artifacts = {entry.path for entry in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metrics.json", "model.safetensors", "history.jsonl"} <= artifacts
    assert (tmp_path / "runs" / "mlflow-artifacts").is_dir() and not (Path.cwd() / "mlruns").exists()  # beside the store


def test_a_tracking_backend_without_its_package_is_refused_before_anything_is_written(tiny_config, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "mlflow" else real(name, *args))
    tiny_config["logging"] = {"backends": ["mlflow"]}
    with pytest.raises(pipeline.PipelineInputError, match=r"logging\.backends: mlflow needs the mlflow package: pip install 'interest-pipeline\[mlflow\]'"):
        pipeline.run(tiny_config)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_compare_tracks_one_child_run_per_model(tiny_config, tmp_path):
    import mlflow

    tiny_config["train"]["epochs"] = 2
    tiny_config["compare"] = {"models": [{"name": "transformer", "hidden_size": 16, "num_layers": 1, "max_length": 20}]}
    tiny_config["logging"] = {"backends": ["mlflow"], "experiment": "board"}
    result = pipeline.compare(tiny_config)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = {run.info.run_name: run for run in mlflow.search_runs(experiment_names=["board"], output_format="list")}
    parent = runs.pop(result.run_dir.name)
    assert set(runs) == set(result.leaderboard["model"])  # one child per model, floors included
    assert {run.data.tags["mlflow.parentRunId"] for run in runs.values()} == {parent.info.run_id}
    child = runs["transformer"]
    assert child.info.status == "FINISHED"
    assert child.data.metrics["test.ndcg_at_10"] == pytest.approx(result.metrics["splits"]["test"]["transformer"]["ndcg@10"])
    curve = mlflow.MlflowClient().get_metric_history(child.info.run_id, "loss_item")
    assert [point.step for point in curve] == [1, 2]
