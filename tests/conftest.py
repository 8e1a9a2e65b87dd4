"""Shared fixtures: a tiny slice of the bundled MovieLens data and configs that point at it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MOVIELENS = REPO / "data" / "ml-latest-small"
TINY_USERS = 25


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


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread: two workers of
    two threads each on two cores would spend their time descheduling each other."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
