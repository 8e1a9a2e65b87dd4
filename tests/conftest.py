"""Shared fixtures: a tiny slice of the bundled MovieLens data and configs that point at it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MOVIELENS = REPO / "data" / "ml-latest-small"
TINY_USERS = 15
# Tests that run night after night (or kill runs and nights) read the first 10 users' log: every night still has new
# events and a gate window, and a night costs about a second.
NIGHT_USERS = 10


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The first users of the bundled ratings, the movies they rated and those movies' tags."""
    folder = tmp_path_factory.mktemp("tiny_movielens")
    ratings = pd.read_csv(MOVIELENS / "ratings.csv")
    ratings = ratings[ratings["userId"] <= TINY_USERS]
    movies = pd.read_csv(MOVIELENS / "movies.csv")
    movies = movies[movies["movieId"].isin(ratings["movieId"])]
    tags = pd.read_csv(MOVIELENS / "tags.csv")
    tags = tags[tags["movieId"].isin(movies["movieId"])]
    ratings.to_csv(folder / "ratings.csv", index=False)
    movies.to_csv(folder / "movies.csv", index=False)
    tags.to_csv(folder / "tags.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    """One encoder cache for the whole session: the tiny catalog is encoded once."""
    return tmp_path_factory.mktemp("embedding_cache")


def tiny_config_dict(data: Path, output_root: Path, cache: Path, **sections) -> dict:
    config = {
        "name": "tiny",
        "seed": 7,
        "data": {
            "interactions": {
                "path": str(data / "ratings.csv"),
                "columns": {"user": "userId", "item": "movieId", "timestamp": "timestamp", "rating": "rating"},
            },
            "items": {
                "path": str(data / "movies.csv"),
                "columns": {"id": "movieId", "category": "genres"},
                "text_fields": ["title", "genres"],
                "text_template": "{title}. Genres: {genres}. Tags: {tags}",
            },
            "tags": {"path": str(data / "tags.csv"), "columns": {"item": "movieId", "tag": "tag"}},
            "rating_range": [0.5, 5.0],
        },
        "encoder": {"cache_dir": str(cache), "max_length": 32},
        "model": {"name": "transformer", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_length": 20},
        "train": {"epochs": 2, "batch_size": 32, "patience": 2},
        "eval": {"ks": [5, 10], "select_k": 10},
        "output": {"root": str(output_root), "top_k": 5},
    }
    for section, values in sections.items():
        # A model section holds one model's keys only: another model replaces it rather than adding to it.
        replaced = section == "model" and values.get("name", "transformer") != "transformer"
        config[section] = dict(values) if replaced else {**config.get(section, {}), **values}
    return config


@pytest.fixture
def tiny_config(tiny_data, embedding_cache, tmp_path) -> dict:
    return tiny_config_dict(tiny_data, tmp_path / "runs", embedding_cache)


def write_successor_log(folder: Path, n_items: int = 100, n_users: int = 150, length: int = 12) -> Path:
    """A planted signal: each item has a hidden successor that follows it 90% of the time (events.csv with columns
    user, item, time, stars; items.csv with item, title, kind)."""
    rng = np.random.default_rng(0)
    successor = rng.permutation(n_items)
    rows = []
    for user in range(n_users):
        item = int(rng.integers(n_items))
        for step in range(length):
            rows.append((user, item, 1_600_000_000 + 60 * step, float(1 + item % 5)))
            item = int(successor[item]) if rng.random() < 0.9 else int(rng.integers(n_items))
    pd.DataFrame(rows, columns=["user", "item", "time", "stars"]).to_csv(folder / "events.csv", index=False)
    pd.DataFrame(
        {"item": range(n_items), "title": [f"item number {i}" for i in range(n_items)], "kind": [f"k{i % 4}" for i in range(n_items)]}
    ).to_csv(folder / "items.csv", index=False)
    return folder


# ---- hand-written logs: one "user,item,timestamp" row per event ----------------------------------------------------


def write_log(tmp_path, rows, name="events.csv", header="u,i,t"):
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_items(tmp_path, ids, name="items.csv"):
    frame = pd.DataFrame({"id": ids, "title": [f"Item {i}" for i in ids], "cat": ["A|B" if str(i).endswith("1") else "C" for i in ids]})
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def config_for(events, items, **data):
    from pipeline.config import load_config

    return load_config(
        {
            "data": {
                "interactions": {"path": str(events), "columns": {"user": "u", "item": "i", "timestamp": "t"}},
                "items": {"path": str(items), "columns": {"id": "id", "category": "cat"}},
                **data,
            }
        }
    )


def load_benchmark_nightly():
    """scripts/benchmark_nightly.py as a module: the nightly tests cut the log as the benchmark does."""
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    return importlib.import_module("benchmark_nightly")


def write_yaml(path: Path, payload: dict) -> Path:
    path.write_text(yaml.safe_dump(payload, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def pipeline_logger_restored():
    """`cli.main` called in-process points the pipeline logger at the captured stderr of that test: undo it after."""
    import logging

    logger = logging.getLogger("pipeline")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def pytest_collection_modifyitems(items):
    """Tests marked `long` run first (a stable sort: the rest keep their order)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread: two workers of
    two threads each on two cores would spend their time descheduling each other."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


# ---- pipeline commands in their own processes, forked from a server that imported the pipeline once ----------------

# Imported once by the fork server: every process it forks starts with them, so a command costs its work, not the
# ~10 s an interpreter spends importing torch, transformers, matplotlib and the pipeline on two busy cores.
FORK_PRELOAD = [
    "pipeline.cli", "pipeline.recipes.run", "pipeline.recipes.nightly", "pipeline.report.pages",
    "pipeline.report.nightly_page", "pipeline.encoder_onnx", "transformers", "onnxruntime", "torch._dynamo",
    "tests.conftest",
]


@pytest.fixture(scope="session")
def fork_server():
    """The multiprocessing context whose processes fork from the preloaded server (one per test worker)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORK_PRELOAD)
    return context


def one_thread_under_xdist() -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def _command_child(args: list[str], env: dict, cwd: str, stdout: str, stderr: str) -> None:
    """`python -m pipeline ARGS` in a forked process: the same `cli.main`, its output in two files."""
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    os.chdir(cwd)
    for descriptor, path in ((1, stdout), (2, stderr)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, descriptor)
        os.close(handle)
    one_thread_under_xdist()
    from pipeline.cli import main

    sys.argv = [str(REPO / "src" / "pipeline" / "__main__.py"), *args]
    try:
        code = main(args)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


class CommandProcess:
    """A running `pipeline` command with the parts of `subprocess.Popen` the tests use; returncode is negative for
    a process ended by a signal, as Popen's is."""

    def __init__(self, context, args, env: dict | None, cwd: Path, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self._out, self._err = folder / "stdout", folder / "stderr"
        self._process = context.Process(
            target=_command_child, args=([str(arg) for arg in args], env or {}, str(cwd), str(self._out), str(self._err)),
        )
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            self.kill()
            raise TimeoutError(f"pipeline command {self.pid} still running after {timeout} s")
        return self._process.exitcode

    def send_signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = 600) -> tuple[str, str]:
        self.wait(timeout)
        return self._out.read_text(errors="replace"), self._err.read_text(errors="replace")


class CompletedCommand:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture(scope="session")
def pipeline_command(fork_server, tmp_path_factory):
    """`start(*args, env=..., cwd=...)` starts `python -m pipeline ARGS` in a forked process (a CommandProcess);
    `start(...).communicate()` or `run(*args)` waits for it. `env` adds variables (None removes one)."""
    outputs = tmp_path_factory.mktemp("command-output")
    counter = iter(range(10**9))

    class Commands:
        @staticmethod
        def start(*args, env: dict | None = None, cwd: Path = REPO) -> CommandProcess:
            return CommandProcess(fork_server, args, env, cwd, outputs / str(next(counter)))

        @staticmethod
        def run(*args, env: dict | None = None, cwd: Path = REPO, timeout: float = 600) -> CompletedCommand:
            process = Commands.start(*args, env=env, cwd=cwd)
            stdout, stderr = process.communicate(timeout)
            return CompletedCommand(process.returncode, stdout, stderr)

    return Commands
