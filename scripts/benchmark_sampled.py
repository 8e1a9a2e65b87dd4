"""Sampled softmax against the full softmax on the same config, seeds and data: test NDCG@10 / HR@10 and s/epoch.

    .venv/bin/python scripts/benchmark_sampled.py [--config configs/quickstart.yaml] [--seeds 1 2 3] [--negatives 2048]

Each seed trains the config twice in this process, `train.loss=full` and `train.loss=sampled` (everything else
equal, model selection on validation), and prints mean +- standard deviation and the ratio sampled / full.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import pipeline
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--negatives", type=int, default=None, help="train.negatives (default: the config's)")
    parser.add_argument("--sampling", choices=["uniform", "frequency"], default=None)
    parser.add_argument("--output-root", default="/tmp/benchmark_sampled")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for both runs")
    args = parser.parse_args()
    sampled_overrides = ["train.loss=sampled"]
    if args.negatives:
        sampled_overrides.append(f"train.negatives={args.negatives}")
    if args.sampling:
        sampled_overrides.append(f"train.negative_sampling={args.sampling}")
    results: dict[str, list[tuple[float, float, float]]] = {"full": [], "sampled": []}
    for seed in args.seeds:
        for loss, extra in (("full", ["train.loss=full"]), ("sampled", sampled_overrides)):
            config = load_config(args.config, [f"seed={seed}", f"output.root={args.output_root}", *args.set, *extra])
            result = pipeline.run(config)
            test = result.metrics["splits"]["test"]
            model = next(iter(test))
            seconds = np.mean([record["train_seconds"] for record in result.history])
            results[loss].append((test[model]["ndcg@10"], test[model]["hit_rate@10"], seconds))
            print(f"seed {seed} {loss}: test NDCG@10 {test[model]['ndcg@10']:.4f} HR@10 {test[model]['hit_rate@10']:.4f} "
                  f"{seconds:.1f} s/epoch ({len(result.history)} epochs)", flush=True)
    print(f"{Path(args.config).name}, seeds {args.seeds}, sampled: {' '.join(sampled_overrides)}")
    means = {}
    for loss, values in results.items():
        ndcg, hit, seconds = np.array(values).T
        means[loss] = ndcg.mean(), hit.mean(), seconds.mean()
        print(f"{loss:<8} NDCG@10 {ndcg.mean():.4f} +- {ndcg.std():.4f}  HR@10 {hit.mean():.4f} +- {hit.std():.4f}  {seconds.mean():.1f} s/epoch")
    print(f"sampled / full: NDCG@10 {means['sampled'][0] / means['full'][0]:.3f}, HR@10 {means['sampled'][1] / means['full'][1]:.3f}, "
          f"s/epoch {means['sampled'][2] / means['full'][2]:.2f}")


if __name__ == "__main__":
    main()
