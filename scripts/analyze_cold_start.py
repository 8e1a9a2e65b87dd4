"""Cold start over several draws of the held-out items: the compared models against popularity and a popularity oracle.

One leave-last-out split has one test event per user, so a 10% cold draw puts only ~60 test events on cold items and
one hit moves HitRate by 0.016. This script repeats the cold-start split for several draws (`data.cold_item_seed`),
runs `compare` on each, and pools the cold test events of all draws: hits and NDCG per model over every draw.

It also ranks each cold test item by its number of events in the *whole* log (training, validation and test, before
the cold items lost theirs), against every item the user has not seen, ties broken in the cold item's favour: no
popularity ranking can do better, so this oracle bounds what "popularity" could ever score on these events. (The
popularity model itself, fitted on the split, never ranks a cold item: they have no training events.)

    .venv/bin/python scripts/analyze_cold_start.py [--config configs/movielens_cold_start.yaml] [--draws 0 1 2 3 4]
        [--models popularity item_cf tfidf_content bert_content]   # labels from compare.models; default: all
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.data.prepared import TEST
from pipeline.evaluation import ranking_metrics
from pipeline.recipes.compare import compare

REPO = Path(__file__).resolve().parents[1]


def oracle_ranks(config) -> list[np.ndarray]:
    """Rank of each cold test item when every item is ranked by its count in the whole log."""
    cold_split = prepare(load_data(config.data), config.data)
    whole_log = prepare(load_data(config.data), config.data.model_copy(update={"cold_item_fraction": 0.0}))
    if not np.array_equal(whole_log.item_ids, cold_split.item_ids):
        raise SystemExit("the cold-start split indexed the items differently from the whole log")
    full_counts = np.bincount(whole_log.events["item"], minlength=cold_split.n_items + 1).astype(np.float64)
    full_counts[0] = -1  # padding never ranks
    events = cold_split.events
    test = events[events["split"] == TEST]
    cold_test = test[np.isin(test["item"], cold_split.cold_items)]
    seen = events[events["split"] != TEST].groupby("user")["item"].agg(lambda items: np.unique(items.to_numpy()))
    ranks = []
    for user, item in zip(cold_test["user"], cold_test["item"]):
        ahead = full_counts > full_counts[item]
        ahead[seen.get(user, [])] = False
        ranks.append(np.array([1 + int(ahead.sum())]))
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "movielens_cold_start.yaml")
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="data.cold_item_seed values")
    parser.add_argument("--models", nargs="*", default=None, help="labels of compare.models to run (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--output", type=Path, default=Path("cold_start.json"))
    args = parser.parse_args()
    base = load_config(args.config, args.overrides)
    ks = base.eval.ks
    chosen = [
        {**entry, "label": label} for label, entry in zip(base.compared_models(), base.compare.models)
        if args.models is None or label in args.models
    ]
    if args.models is not None and len(chosen) != len(args.models):
        raise SystemExit(f"--models: labels must be among {list(base.compared_models())}")

    # pooled[model] = (cold test events, sum of each metric over them)
    pooled: dict[str, dict[str, float]] = {}
    per_draw = []

    def add(model: str, draw: int, users: int, metrics: dict[str, float]) -> None:
        totals = pooled.setdefault(model, {"cold_users": 0})
        totals["cold_users"] += users
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value * users
        per_draw.append({"draw": draw, "model": model, "cold_users": users, **{n: round(v, 4) for n, v in metrics.items()}})

    names = [f"{metric}@{k}" for metric in ("hit_rate", "ndcg") for k in ks]
    for draw in args.draws:
        overrides = [*args.overrides, f"data.cold_item_seed={draw}"]
        config = load_config(args.config, overrides)
        oracle = oracle_ranks(config)
        add("oracle popularity (whole-log counts)", draw, len(oracle), {n: v for n, v in ranking_metrics(oracle, ks).items() if n in names})
        result = compare(config, [f"compare.models={json.dumps(chosen)}"])
        for row in result.leaderboard.to_dict("records"):
            add(row["model"], draw, int(row["test_cold_users"]), {name: row[f"test_cold_{name}"] for name in names})
        print(json.dumps(per_draw[-len(result.leaderboard) - 1 :]), flush=True)

    print(f"\ncold start pooled over draws {args.draws} (cold test events; hits = HitRate x events)")
    print("| model | cold events | " + " | ".join(f"cold {name}" for name in names) + " |")
    print("|---|---|" + "---|" * len(names))
    summary = {}
    for model, totals in sorted(pooled.items(), key=lambda item: -item[1][f"ndcg@{ks[0]}"]):
        events = totals["cold_users"]
        means = {name: totals[name] / events for name in names}
        summary[model] = {"cold_events": events, **{name: round(value, 4) for name, value in means.items()}}
        cells = [
            f"{means[name]:.4f} ({round(means[name] * events)})" if name.startswith("hit_rate") else f"{means[name]:.4f}"
            for name in names
        ]
        print(f"| {model} | {events} | " + " | ".join(cells) + " |")
    args.output.write_text(json.dumps({"draws": args.draws, "pooled": summary, "per_draw": per_draw}, indent=2) + "\n")


if __name__ == "__main__":
    main()
