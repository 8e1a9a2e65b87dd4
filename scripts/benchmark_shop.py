"""Next-purchase quality on the bundled shop log: the Transformer with event types and side features against the
floors (popularity, recently interacted, co-visitation, item-CF) and against itself without event types, 3 seeds;
the content baselines (text and side-feature labels) for reference.

    .venv/bin/python scripts/benchmark_shop.py [--seeds 1 2 3] [--epochs 30]

Each seed is one `compare` of configs/shop_example.yaml (every model trained on the same prepared data, selected on
validation); prints test NDCG@10 and HR@10 per model as mean +- standard deviation, and the ratios the shop
acceptance asks for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from machine import cpu_name

import pipeline
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]
FLOORS = ["popularity", "recent_items", "covisitation", "item_cf"]
CONTENT = ["tfidf_content", "bert_content"]  # not floors: they read the side features too
WITH, WITHOUT = "transformer", "transformer_no_event_types"




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--output-root", default="/tmp/benchmark_shop")
    args = parser.parse_args()
    base = load_config(REPO / "configs" / "shop_example.yaml")
    model = base.model.model_dump()
    compared = [{"name": name} for name in FLOORS + CONTENT] + [
        {**model, "label": WITH},
        {**model, "label": WITHOUT, "event_types": False},
    ]
    results: dict[str, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        overrides = [f"seed={seed}", f"output.root={args.output_root}"]
        if args.epochs:
            overrides.append(f"train.epochs={args.epochs}")
        config = load_config({**base.to_dict(), "compare": {"models": compared}}, overrides)
        board = pipeline.compare(config).leaderboard.set_index("model")
        for label in board.index:
            results.setdefault(label, []).append((board.loc[label, "test_ndcg@10"], board.loc[label, "test_hit_rate@10"]))
    print(f"shop next-purchase, test, {len(args.seeds)} seeds {args.seeds}, CPU: {cpu_name()}")
    print(f"{'model':<28} {'NDCG@10':>17} {'HR@10':>17}")
    means = {}
    for label, values in results.items():
        ndcg, hit = np.array(values).T
        means[label] = ndcg.mean()
        print(f"{label:<28} {ndcg.mean():.4f} +- {ndcg.std():.4f} {hit.mean():.4f} +- {hit.std():.4f}")
    strongest = max(FLOORS, key=means.get)
    print(f"strongest floor: {strongest}; {WITH} / {strongest} = {means[WITH] / means[strongest]:.3f}")
    print(f"{WITH} / {WITHOUT} = {means[WITH] / means[WITHOUT]:.3f}")


if __name__ == "__main__":
    main()
