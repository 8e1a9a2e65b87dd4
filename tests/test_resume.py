"""A run killed (SIGKILL) or stopped (SIGTERM) mid-training resumes from its epoch checkpoint to the same result."""

import json
import signal
import time

import pytest

import pipeline
from tests.conftest import tiny_config_dict, write_yaml

pytestmark = pytest.mark.slow  # subprocesses and real training: the full suite, not the fast tier

EPOCHS = 5


@pytest.fixture(scope="module")
def resumable(tiny_data, embedding_cache, tmp_path_factory):
    """A config long enough to interrupt, and the test metrics of the same config run without interruption."""
    root = tmp_path_factory.mktemp("resume")
    config = tiny_config_dict(
        tiny_data, root / "runs", embedding_cache,
        train={
            "epochs": EPOCHS, "patience": EPOCHS, "batch_size": 8, "learning_rate": 0.01,
            # A schedule and a weight average whose state must be restored too: a resumed run would diverge otherwise.
            "lr_schedule": "cosine", "warmup_epochs": 1, "weight_average_decay": 0.9,
        },
        eval={"ks": [10, 50], "select_k": 50},
    )
    uninterrupted = pipeline.run(config, overrides=[f"output.root={root / 'reference'}"])
    assert uninterrupted.metrics["splits"]["test"]["transformer"]["ndcg@50"] > 0  # something to compare
    return root, write_yaml(root / "tiny.yaml", config), uninterrupted


@pytest.fixture(scope="module")
def start_run(pipeline_command):
    """`python -m pipeline run CONFIG` in its own process, to kill or stop."""
    return lambda config_path, *extra: pipeline_command.start("run", config_path, *extra)


def wait_for_checkpoint(runs, process, timeout=300):
    """Return once the first epoch checkpoint of the run in `runs` exists (training is then in epoch 2 or later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(runs.glob(".tiny-*.partial-*/checkpoint.pt")):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def finished_runs(runs):
    return [path for path in runs.iterdir() if not path.name.startswith(".")] if runs.exists() else []


def resume_and_compare(pipeline_command, root, config_path, uninterrupted):
    resumed = pipeline_command.run("run", config_path, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    run_dir = (root / "runs" / "latest").resolve()
    metrics = json.loads((run_dir / "metrics.json").read_text())["splits"]
    for split, models in uninterrupted.metrics["splits"].items():
        for model, values in models.items():
            for name, value in values.items():
                assert metrics[split][model][name] == pytest.approx(value, abs=1e-6), (split, model, name)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == list(range(1, EPOCHS + 1))
    # Epochs trained after the resume follow the same losses as the uninterrupted run's.
    for resumed_epoch, reference_epoch in zip(history, uninterrupted.history):
        assert resumed_epoch["loss_item"] == pytest.approx(reference_epoch["loss_item"], abs=1e-5)
    assert not list((root / "runs").glob(".*partial*"))
    return run_dir


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(resumable, start_run, pipeline_command):
    root, config_path, uninterrupted = resumable
    runs = root / "runs"
    process = start_run(config_path)
    wait_for_checkpoint(runs, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert finished_runs(runs) == []  # no run under a final name, no `latest`
    resume_and_compare(pipeline_command, root, config_path, uninterrupted)


def test_sigterm_stops_at_a_safe_point_and_resumes(resumable, start_run, pipeline_command):
    root, config_path, uninterrupted = resumable
    runs = root / "runs"
    before = finished_runs(runs)
    process = start_run(config_path)
    wait_for_checkpoint(runs, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped by SIGTERM" in stderr and "--resume auto" in stderr
    assert finished_runs(runs) == before  # `latest` did not move
    resume_and_compare(pipeline_command, root, config_path, uninterrupted)


def test_resume_refuses_a_different_config(resumable, start_run, pipeline_command):
    root, config_path, _ = resumable
    process = start_run(config_path)
    wait_for_checkpoint(root / "runs", process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    with pytest.raises(pipeline.PipelineInputError, match="train.learning_rate"):
        pipeline.run(config_path, overrides=["train.learning_rate=0.5"], resume="auto")
    resume_and_compare(pipeline_command, root, config_path, resumable[2])
