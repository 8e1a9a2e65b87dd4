"""How hard is the cold-start split? Ranks of the cold test items under an oracle that knows their full-log popularity.

On the cold-start split (`data.cold_item_fraction`), every model ranks the cold items without having seen one of
their events. This script ranks each cold test item by its number of events in the *whole* log (training, validation
and test, before the cold items lost theirs), against every item the user has not seen, ties broken in the cold
item's favour: no popularity ranking can do better, so its HitRate/NDCG bound what "popularity" could ever score
on these events. It trains nothing and takes seconds.

    .venv/bin/python scripts/analyze_cold_start.py [--config configs/movielens_cold_start.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.data.prepare import TEST
from pipeline.evaluation import ranking_metrics

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "movielens_cold_start.yaml")
    args = parser.parse_args()
    config = load_config(args.config)
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
    metrics = ranking_metrics(ranks, config.eval.ks)
    summary = {
        "cold_items": int(len(cold_split.cold_items)),
        "cold_test_events": len(ranks),
        **{name: round(value, 4) for name, value in metrics.items() if name.split("@")[0] in ("hit_rate", "ndcg")},
    }
    print("oracle ranks of the cold test items:", sorted(int(rank[0]) for rank in ranks))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
