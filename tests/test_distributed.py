"""torchrun with 2 CPU processes (gloo) gives the same result as one process: texts encoded in shards into one
cache, the same global batches, gradients averaged with each rank weighted by its share of the batch's targets,
evaluation sharded and gathered, and only rank 0 writes."""

import json
import os
import subprocess
import sys

import pytest

import pipeline
from tests.conftest import REPO, tiny_config_dict, write_yaml

pytestmark = pytest.mark.slow  # subprocesses and real training: the full suite, not the fast tier

# Float sums run in a different order across two processes (gradient all-reduce, split batches): agreement to 1e-4.
TOLERANCE = 1e-4


def test_two_gloo_processes_match_one_process(tiny_data, tmp_path):
    # fp32 encoding gives the same vectors whatever the batch composition, so the sharded encode matches too.
    config = tiny_config_dict(
        tiny_data, tmp_path / "runs", tmp_path / "cache-single", encoder={"precision": "fp32"},
        model={"dropout": 0.0},  # dropout masks are drawn per process, so they cannot match
        train={"epochs": 3, "patience": 3, "batch_size": 16, "learning_rate": 0.01},
        eval={"ks": [10, 50], "select_k": 50},
    )
    single = pipeline.run(config, overrides=[f"output.root={tmp_path / 'single'}"])
    single_encoded = json.loads((single.run_dir / "manifest.json").read_text())["encoding"]["encoded"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "pipeline", "run", str(write_yaml(tmp_path / "tiny.yaml", config)),
        "--set", f"encoder.cache_dir={tmp_path / 'cache-distributed'}",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [path for path in (tmp_path / "runs").iterdir() if not path.name.startswith(".") and path.name != "latest"]
    assert len(run_dirs) == 1  # only rank 0 wrote
    manifest = json.loads((run_dirs[0] / "manifest.json").read_text())
    assert manifest["encoding"]["encoded"] == single_encoded == manifest["encoding"]["unique_texts"]
    assert len(list((tmp_path / "cache-distributed").rglob("shard-*.npz"))) == 1  # one cache, written by rank 0

    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())["splits"]
    for split, models in single.metrics["splits"].items():
        for name, value in models["transformer"].items():
            assert metrics[split]["transformer"][name] == pytest.approx(value, abs=TOLERANCE), (split, name)
    history = [json.loads(line) for line in (run_dirs[0] / "history.jsonl").read_text().splitlines()]
    for distributed_epoch, single_epoch in zip(history, single.history, strict=True):
        # Logged losses weigh each rank's mean by its windows, not its targets: equal to about 1%.
        assert distributed_epoch["loss_item"] == pytest.approx(single_epoch["loss_item"], rel=1e-2)
