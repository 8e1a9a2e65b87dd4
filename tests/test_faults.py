"""Kill `run`, `run --resume` and `nightly` with SIGKILL at every named step (pipeline.faults) and check what is left.

After each kill: the champion resolves to a complete night, `latest` to a complete run, no published folder holds a
temporary file (each lists exactly its documented files), and the next run succeeds. The killed processes are
forked from a server that has imported the pipeline once, so a kill costs the work, not another interpreter start.
"""

import os
import shutil
from pathlib import Path

import pytest

import pipeline
from pipeline.faults import ENVIRONMENT_VARIABLE, STEPS
from pipeline.outputs import LATEST, NIGHT_FILES, RUN_FILES
from pipeline.recipes.nightly.records import CHAMPION, read_state
from tests.conftest import NIGHT_USERS, load_benchmark_nightly, one_thread_under_xdist, tiny_config_dict

benchmark_nightly = load_benchmark_nightly()

pytestmark = pytest.mark.slow

RUN_WRITES = [
    "write:config.resolved.yaml", "write:inputs.json", "write:checkpoint.pt", "write:model.safetensors",
    "write:catalog.json", "write:metrics.json", "write:history.jsonl", "write:recommendations.parquet",
    "write:recommendations.csv", "write:report.html", "write:manifest.json",
]
PUBLISH_STEPS = [step for step in STEPS if step.startswith("publish:")] + ["write:latest"]
RUN_STEPS = RUN_WRITES + PUBLISH_STEPS
RESUME_STEPS = [step for step in RUN_STEPS if step not in ("write:config.resolved.yaml", "write:inputs.json")]
NIGHT_STEPS = [
    "write:config.resolved.yaml", "write:inputs.json", "write:recommendations.parquet", "write:profiles.parquet",
    "write:model.safetensors", "write:catalog.json", "write:metrics.json", "write:history.jsonl", "write:summary.json",
    "write:summary.md", "write:report.html", "write:manifest.json", *PUBLISH_STEPS, "write:champion", "write:state.json",
    "write:history.csv", *[step for step in STEPS if step.startswith("nightly:")],
    "write:report.html#2",  # the nightly root's page, after retention
]


def _killed_child(command: str, config: dict, fault: str, resume: str | None) -> None:
    os.environ[ENVIRONMENT_VARIABLE] = fault
    one_thread_under_xdist()
    if command == "nightly":
        pipeline.nightly(config)
    else:
        pipeline.run(config, resume=resume)
    os._exit(0)  # the step was never reached


def kill_at(fork_server, command: str, config: dict, fault: str, resume: str | None = None) -> None:
    process = fork_server.Process(target=_killed_child, args=(command, config, fault, resume))
    process.start()
    process.join(300)
    assert process.exitcode == -9, f"{command} never reached step {fault!r} (exit code {process.exitcode})"


def published(root: Path) -> list[Path]:
    return [path for path in root.iterdir() if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")]


def assert_invariants(runs: Path, documented: frozenset[str], write_csv: bool = True) -> None:
    """Every published folder under `runs` holds exactly its documented files; `latest` leads to one of them."""
    expected = documented | ({"recommendations.csv"} if write_csv else set())
    for folder in published(runs):
        assert {path.name for path in folder.iterdir()} == expected, folder
    if (runs / LATEST).exists() or (runs / LATEST).is_symlink():
        assert (runs / LATEST).resolve() in [folder.resolve() for folder in published(runs)]


def restore(snapshot: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(snapshot, target, symlinks=True)


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    # Ten users' log and ids only (no encoder): each killed run costs about a second, most of it the report.
    benchmark_nightly.write_log_until(root / "data", 1.0, max_user=NIGHT_USERS)
    return root, tiny_config_dict(
        root / "data", root / "runs", root / "cache", model={"item_representation": "id"},
        train={"epochs": 2, "patience": 2, "batch_size": 16},
    )


def kill_then_run_again(fork_server, config: dict, step: str, resume: str | None) -> None:
    """Kill a run at `step`, check the invariants, then run again (resuming if a checkpoint is left) and check them."""
    runs = Path(config["output"]["root"])
    kill_at(fork_server, "run", config, step, resume)
    assert_invariants(runs, RUN_FILES)
    stopped = [path for path in runs.glob(".tiny-*.partial-*") if (path / "checkpoint.pt").is_file()]
    result = pipeline.run(config, resume="auto" if stopped else None)
    assert_invariants(runs, RUN_FILES)
    assert (runs / LATEST).resolve() == result.run_dir


@pytest.mark.parametrize("step", RUN_STEPS)
def test_run_killed_at_every_step(fork_server, run_config, step):
    root, config = run_config
    shutil.rmtree(config["output"]["root"], ignore_errors=True)
    kill_then_run_again(fork_server, config, step, resume=None)


@pytest.fixture(scope="module")
def stopped_run(fork_server, run_config, tmp_path_factory):
    """A run killed while writing its second epoch checkpoint: the first one is complete, the second's temporary
    file is left behind by the dead process."""
    root, config = run_config
    runs = Path(config["output"]["root"])
    shutil.rmtree(runs, ignore_errors=True)
    kill_at(fork_server, "run", config, "write:checkpoint.pt#2")
    (partial,) = runs.glob(".tiny-*.partial-*")
    assert any(path.name.startswith(".checkpoint.pt.") for path in partial.iterdir())
    snapshot = tmp_path_factory.mktemp("stopped") / "runs"
    shutil.copytree(runs, snapshot, symlinks=True)
    return snapshot


@pytest.mark.parametrize("step", RESUME_STEPS)
def test_resume_killed_at_every_step(fork_server, run_config, stopped_run, step):
    root, config = run_config
    restore(stopped_run, Path(config["output"]["root"]))
    kill_then_run_again(fork_server, config, step, resume="auto")


@pytest.fixture(scope="module")
def night_setup(tmp_path_factory):
    """After one good night, plus an older never-promoted night for retention to delete; data grown for night 2."""
    root = tmp_path_factory.mktemp("night-faults")
    config = tiny_config_dict(
        root / "data", root / "runs", root / "cache", model={"item_representation": "id"},
        train={"epochs": 1, "patience": 1},
        # Promote whatever the challenger scores, so every night reaches the link swap.
        nightly={"warm_epochs": 1, "tolerance": 0.99, "keep_nights": 1},
    )
    benchmark_nightly.write_log_until(root / "data", 0.7, max_user=NIGHT_USERS)
    first = pipeline.nightly(config)
    nightly_root = first.night_dir.parents[1]
    shutil.copytree(first.night_dir, first.night_dir.with_name("tiny-20000101T000000000000Z"))
    benchmark_nightly.write_log_until(root / "data", 0.85, max_user=NIGHT_USERS)
    snapshot = root / "snapshot"
    shutil.copytree(nightly_root, snapshot, symlinks=True)
    return config, nightly_root, snapshot, first.night_dir.name


def assert_night_invariants(nightly_root: Path) -> None:
    nights = nightly_root / "nights"
    assert_invariants(nights, NIGHT_FILES, write_csv=False)
    champion = (nightly_root / CHAMPION).resolve()
    assert champion.parent == nights.resolve() and {path.name for path in champion.iterdir()} == NIGHT_FILES


@pytest.mark.parametrize("step", NIGHT_STEPS)
def test_nightly_killed_at_every_step(fork_server, night_setup, step):
    config, nightly_root, snapshot, first_night = night_setup
    restore(snapshot, nightly_root)
    kill_at(fork_server, "nightly", config, step)
    assert_night_invariants(nightly_root)
    assert (nightly_root / "nights" / first_night).is_dir() or (nightly_root / CHAMPION).resolve().name != first_night
    after = pipeline.nightly(config)
    assert after.exit_code in (0, 3)
    assert_night_invariants(nightly_root)
    assert (nightly_root / CHAMPION).resolve().name in read_state(nightly_root)["promoted"]
