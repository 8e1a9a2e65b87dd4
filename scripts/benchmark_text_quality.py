"""The Amazon Scientific protocol (text-heavy catalogue, short histories): leave-one-out, full ranking over 4,385
items, model selection on validation, 3 seeds. Prints the pipeline's rows next to popularity and the published
Recformer numbers.

    python scripts/benchmark_text_quality.py                                  # configs/amazon_scientific.yaml
    python scripts/benchmark_text_quality.py --config configs/x.yaml --set model.dropout=0.3 --seeds 1 2 3

The data (research use only) is read from ../shared/datasets/amazon-scientific/ and converted once into
.cache/amazon-scientific/ by scripts/convert_amazon.py; it is never bundled and no test needs it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from convert_amazon import convert  # noqa: E402
from machine import cpu_name  # noqa: E402

SOURCE = REPO.parent / "shared" / "datasets" / "amazon-scientific"
CONVERTED = REPO / ".cache" / "amazon-scientific"
PUBLISHED = {"Recformer (published)": {"ndcg@10": 0.1027, "hit_rate@10": 0.1448}}
TARGET = 1.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "amazon_scientific.yaml"))
    parser.add_argument("--source", default=str(SOURCE), help="the dataset folder in UniSRec's format")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (CONVERTED / "events.csv").is_file():
        convert(args.source, CONVERTED)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads")
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        started = time.perf_counter()
        result = pipeline.run(args.config, overrides=[f"seed={seed}", *args.overrides])
        test = result.metrics["splits"]["test"]
        valid = result.metrics["splits"]["valid"]
        for name, values in test.items():
            rows.setdefault(name, []).append({**values, "valid_ndcg@10": valid[name]["ndcg@10"]})
        best = max(result.history, key=lambda record: record.get("valid_ndcg@10", 0)) if result.history else {}
        model = result.config.model.name
        print(f"seed {seed}: {model} test NDCG@10 {test[model]['ndcg@10']:.4f} HR@10 {test[model]['hit_rate@10']:.4f} "
              f"(valid {valid[model]['ndcg@10']:.4f}, best epoch {best.get('epoch')}, {time.perf_counter() - started:.0f} s) "
              f"{result.run_dir}", flush=True)

    print(f"\n| model | test NDCG@10 | test HR@10 (= Recall@10) | valid NDCG@10 |  (mean ± std of {len(args.seeds)} seeds)")
    print("|---|---|---|---|")
    for name, values in rows.items():
        cells = []
        for key in ("ndcg@10", "hit_rate@10", "valid_ndcg@10"):
            series = [value[key] for value in values]
            spread = statistics.stdev(series) if len(series) > 1 else 0.0
            cells.append(f"{statistics.mean(series):.4f} ± {spread:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, values in PUBLISHED.items():
        print(f"| {name} | {values['ndcg@10']:.4f} | {values['hit_rate@10']:.4f} | - |")
    reference = PUBLISHED["Recformer (published)"]
    for name, values in rows.items():
        ndcg = statistics.mean(value["ndcg@10"] for value in values) / reference["ndcg@10"]
        recall = statistics.mean(value["hit_rate@10"] for value in values) / reference["hit_rate@10"]
        print(f"{name}: {ndcg:.3f}x Recformer's NDCG@10, {recall:.3f}x its Recall@10 (target {TARGET}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
