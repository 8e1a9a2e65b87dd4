"""The CLI end to end on a slice of the bundled data, as a user runs it."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, TINY_USERS, write_yaml

RUN_FILES = {
    "config.resolved.yaml", "manifest.json", "metrics.json", "recommendations.parquet", "recommendations.csv",
    "model.safetensors", "history.jsonl", "run.log", "catalog.json",
}
METRIC_NAMES = {
    "hit_rate@10", "ndcg@10", "mrr@10", "precision@10", "recall@10", "accuracy", "precision", "recall", "f1", "mae",
    "rmse", "coverage",
}


def help_text(*args):
    """`python -m pipeline ARGS --help` in a new interpreter: help imports almost nothing."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="session")
def cli(pipeline_command):
    """`python -m pipeline ARGS` as a user runs it, in its own process (forked from a preloaded server)."""
    return pipeline_command.run


@pytest.fixture(scope="module")
def finished_run(cli, tiny_data, embedding_cache, tmp_path_factory):
    from tests.conftest import tiny_config_dict

    root = tmp_path_factory.mktemp("cli")
    config = write_yaml(root / "tiny.yaml", tiny_config_dict(tiny_data, root / "runs", embedding_cache))
    result = cli("run", config)
    assert result.returncode == 0, result.stderr
    return root, config, result


@pytest.mark.slow
def test_run_writes_every_output(finished_run, tiny_data):
    root, _, result = finished_run
    run_dir = (root / "runs" / "latest").resolve()
    assert str(run_dir) in result.stdout
    assert RUN_FILES <= {path.name for path in run_dir.iterdir()}
    assert not [path for path in (root / "runs").iterdir() if path.name.startswith(".")]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["protocol"]["exclude_seen"] is True
    for split in ("valid", "test"):
        for model in ("transformer", "popularity"):
            assert METRIC_NAMES <= set(metrics["splits"][split][model])

    recommendations = pd.read_parquet(run_dir / "recommendations.parquet")
    assert list(recommendations.columns) == ["user_id", "rank", "item_id", "score"]
    users = pd.read_csv(tiny_data / "ratings.csv")["userId"].astype(str).unique()
    assert set(recommendations["user_id"]) == set(users)
    assert (recommendations.groupby("user_id").size() == 5).all()
    assert metrics["protocol"]["users_evaluated"]["test"] == len(users)
    pd.testing.assert_frame_equal(
        pd.read_csv(run_dir / "recommendations.csv", dtype={"user_id": str, "item_id": str}),
        recommendations.astype({"score": "float64"}),
        check_dtype=False,
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"]["users"] == len(users)
    assert {"encode", "train", "evaluate", "total"} <= set(manifest["timings_seconds"])
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2]


@pytest.mark.slow
def test_second_run_encodes_nothing(cli, finished_run):
    _, config, _ = finished_run
    result = cli("run", config, "--set", "train.epochs=1")
    assert result.returncode == 0, result.stderr
    assert " 0 encoded" in result.stderr


@pytest.mark.slow
def test_recommend_for_new_and_known_users(cli, finished_run, tmp_path):
    root, _, _ = finished_run
    events = tmp_path / "events.csv"
    events.write_text("userId,movieId,timestamp\nnewcomer,1,100\nnewcomer,3114,200\n1,50,100\n", encoding="utf-8")
    result = cli("recommend", root / "runs", "--events", events, "--top-k", "3")
    assert result.returncode == 0, result.stderr
    lists = pd.read_csv(pd.io.common.StringIO(result.stdout), dtype={"user_id": str, "item_id": str})
    assert lists.groupby("user_id").size().to_dict() == {"1": 3, "newcomer": 3}
    assert not set(lists.loc[lists["user_id"] == "newcomer", "item_id"]) & {"1", "3114"}


@pytest.mark.slow
def test_validate_writes_nothing(cli, tiny_data, embedding_cache, tmp_path):
    from tests.conftest import tiny_config_dict

    config = write_yaml(tmp_path / "c.yaml", tiny_config_dict(tiny_data, tmp_path / "runs", embedding_cache))
    result = cli("validate", config)
    assert result.returncode == 0, result.stderr
    assert f"users       {TINY_USERS}" in result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_code_2(cli, tiny_data, embedding_cache, tmp_path):
    from tests.conftest import tiny_config_dict

    config = tiny_config_dict(tiny_data, tmp_path / "runs", embedding_cache)
    config["train"]["epohcs"] = 3
    result = cli("run", write_yaml(tmp_path / "c.yaml", config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "did you mean train.epochs?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_help_everywhere():
    for args in ([], ["run"], ["validate"], ["recommend"]):
        result = help_text(*args)
        assert result.returncode == 0 and "usage:" in result.stdout


def test_quiet_silences_info_on_the_console_and_run_log_keeps_it(tiny_config, tmp_path, capsys):
    from pipeline import cli

    tiny_config["model"] = {"name": "popularity"}
    path = write_yaml(tmp_path / "quiet.yaml", tiny_config)
    assert cli.main(["run", str(path), "--quiet"]) == 0
    console = capsys.readouterr()
    assert " INFO " not in console.err
    run_log = (tmp_path / "runs" / "latest" / "run.log").read_text(encoding="utf-8")
    assert " INFO finished in " in run_log
    assert cli.main(["run", str(path)]) == 0
    assert " INFO finished in " in capsys.readouterr().err


def test_the_console_script_is_pipeline_and_the_package_is_typed():
    from importlib import metadata
    from pathlib import Path

    import pipeline

    scripts = {entry.name: entry.value for entry in metadata.entry_points(group="console_scripts")}
    assert scripts["pipeline"] == "pipeline.cli:main"
    result = subprocess.run([str(Path(sys.executable).with_name("pipeline")), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: pipeline ")
    assert help_text().stdout.startswith("usage: python -m pipeline ")
    assert (Path(pipeline.__file__).parent / "py.typed").is_file()


@pytest.mark.slow
def test_progress_bars_have_totals_when_asked_and_stay_off_otherwise(cli, finished_run):
    import re

    from pipeline.cli import build_parser

    _, config, quiet = finished_run
    bar_drawn = re.compile(r"\d+%\|")
    assert not bar_drawn.search(quiet.stderr)  # stderr is not a terminal
    shown = cli("run", config, "--progress", "--set", "train.epochs=1")
    assert shown.returncode == 0, shown.stderr
    assert build_parser().parse_args(["run", str(config), "--no-progress"]).progress is False  # the override
    # Bars with totals ("5/7"), not counts alone ("5batch"): tqdm clears a finished bar, so look at any state.
    assert re.search(r"epoch 1: +\d+%\|[^|]*\| \d+/\d+ ", shown.stderr), shown.stderr[-2000:]
