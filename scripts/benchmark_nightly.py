"""Wall time of a warm-start night versus a full retrain, on the bundled MovieLens log cut by time.

Night 1 trains from scratch on the events up to the --first-quantile of event time (the items table holds only the
movies that log mentions, as a growing catalog would); night 2 sees the whole log and warm-starts from night 1's
champion; the reference is a night on the same whole log with `nightly.warm_start=false` (a full retrain), started
from night 1's state in a copy of the nightly folder. Prints one row per night and the warm/full ratios, writes JSON.

    .venv/bin/python scripts/benchmark_nightly.py --config configs/quickstart.yaml --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from pipeline.cli import keep_freed_memory
from pipeline.outputs import markdown_table
from pipeline.recipes.nightly import nightly

REPO = Path(__file__).resolve().parents[1]
MOVIELENS = REPO / "data" / "ml-latest-small"


def write_log_until(folder: Path, quantile: float, max_user: int | None = None) -> int:
    """The bundled log (of users up to `max_user`) up to a time quantile, and only the movies that log mentions.

    Returns the number of movies written."""
    ratings = pd.read_csv(MOVIELENS / "ratings.csv")
    if max_user is not None:
        ratings = ratings[ratings["userId"] <= max_user]
    ratings = ratings[ratings["timestamp"] <= ratings["timestamp"].quantile(quantile)]
    movies = pd.read_csv(MOVIELENS / "movies.csv")
    movies = movies[movies["movieId"].isin(ratings["movieId"])]
    tags = pd.read_csv(MOVIELENS / "tags.csv")
    folder.mkdir(parents=True, exist_ok=True)
    ratings.to_csv(folder / "ratings.csv", index=False)
    movies.to_csv(folder / "movies.csv", index=False)
    tags[tags["movieId"].isin(movies["movieId"])].to_csv(folder / "tags.csv", index=False)
    return len(movies)


def night_row(label: str, result, wall: float) -> dict:
    summary = result.summary
    return {
        "night": label,
        "status": result.status,
        "training": summary["training"]["mode"],
        "epochs": summary["training"]["epochs"],
        "events": summary["data"]["events"],
        "new_events": summary["data"]["new_events"],
        "new_items": summary["data"]["new_items"],
        "texts_encoded": summary["texts"]["encoded"],
        "texts_from_cache": summary["texts"]["from_cache"],
        "encode_s": summary["timings_seconds"].get("encode"),
        "train_s": summary["training"]["seconds"],
        "wall_s": round(wall, 1),
        "metric": summary["decision"]["metric"],
        "challenger": round(summary["decision"]["challenger"], 4),
        "champion": None if summary["decision"]["champion"] is None else round(summary["decision"]["champion"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--first-quantile", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=Path("benchmark_nightly.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # the allocator setting `python -m pipeline` runs with

    work = args.work or Path(tempfile.mkdtemp(prefix="benchmark_nightly_"))
    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    data = work / "data"
    for role in ("interactions", "items", "tags"):
        config["data"][role]["path"] = str(data / Path(config["data"][role]["path"]).name)
    config["encoder"]["cache_dir"] = str(work / "cache")  # a fresh cache: night 1 encodes everything
    config["output"]["root"] = str(work / "runs")
    config.setdefault("train", {})["num_threads"] = args.threads
    warm_root, full_root = work / "nightly-warm", work / "nightly-full"

    rows = []
    write_log_until(data, args.first_quantile)
    started = time.perf_counter()
    first = nightly(config, [f"nightly.root={warm_root}"])
    rows.append(night_row(f"1: first {args.first_quantile:.0%} of the log", first, time.perf_counter() - started))
    shutil.copytree(warm_root, full_root, symlinks=True)

    write_log_until(data, 1.0)
    started = time.perf_counter()
    warm = nightly(config, [f"nightly.root={warm_root}"])
    rows.append(night_row("2: whole log, warm start", warm, time.perf_counter() - started))
    started = time.perf_counter()
    full = nightly(config, [f"nightly.root={full_root}", "nightly.warm_start=false"])
    rows.append(night_row("2': whole log, full retrain", full, time.perf_counter() - started))

    table = pd.DataFrame(rows)
    print(markdown_table(table))
    ratios = {
        "wall_full_over_warm": round(rows[2]["wall_s"] / rows[1]["wall_s"], 2),
        "train_full_over_warm": round(rows[2]["train_s"] / rows[1]["train_s"], 2),
    }
    print(f"\nfull retrain / warm start: wall {ratios['wall_full_over_warm']}x, training {ratios['train_full_over_warm']}x")
    print(f"\nnight 2 summary ({warm.night_dir / 'summary.md'}):\n")
    print((warm.night_dir / "summary.md").read_text(encoding="utf-8"))
    args.output.write_text(json.dumps({"threads": args.threads, "nights": rows, "ratios": ratios}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
