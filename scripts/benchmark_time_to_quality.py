"""Time to quality: wall-clock training time until the Transformer's test NDCG@10 first reaches a reference value.

Runs the shipped flagship config under RecBole's protocol (`eval.exclude_seen=false`) and, after every epoch, also
measures test NDCG@10 (outside the timed training, which includes the validation pass a real run does). Prints the
cumulative training seconds when test NDCG@10 first reaches --reference-ndcg (default: RecBole 1.2.1 SASRec on the
bundled data, 0.0650, whose best checkpoint came after 13 epochs of ~229 s on this machine: --reference-seconds).

    .venv/bin/python scripts/benchmark_time_to_quality.py --threads 1 [--set model.hidden_size=128]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipeline.api import build, encode, evaluate, validator
from pipeline.cli import keep_freed_memory
from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.training import fit

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "movielens_transformer.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--reference-ndcg", type=float, default=0.0650)
    parser.add_argument("--reference-seconds", type=float, default=13 * 229.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("benchmark_time_to_quality.json"))
    args = parser.parse_args()
    keep_freed_memory()
    config = load_config(args.config, ["eval.exclude_seen=false", f"train.num_threads={args.threads}", *args.overrides])
    data = prepare(load_data(config.data), config.data)
    item_embeddings, _ = encode(data, config)
    model = build(config.model, data, item_embeddings, config.seed)
    train = data.train_view()
    model.fit_statistics(train)

    validate_on_valid = validator(data, config)
    selection = validate_on_valid.selection_metric
    timeline: list[dict] = []
    clock = {"training": 0.0, "since": time.perf_counter()}

    class TimedValidator(type(validate_on_valid)):
        def __call__(self, trained) -> dict[str, float]:
            return validate(trained)

    def validate(trained) -> dict[str, float]:
        metrics = validate_on_valid(trained)
        clock["training"] += time.perf_counter() - clock["since"]  # training + validation, as a real run spends it
        test = evaluate(trained, data, config, "test")[0]
        timeline.append({
            "epoch": len(timeline) + 1, "training_seconds": round(clock["training"], 1),
            f"valid_{selection}": round(metrics[selection], 4),
            "test_ndcg@10": round(test["ndcg@10"], 4), "test_hit_rate@10": round(test["hit_rate@10"], 4),
        })
        print(json.dumps(timeline[-1]), flush=True)
        clock["since"] = time.perf_counter()
        return metrics

    timed = TimedValidator(**vars(validate_on_valid))
    history = fit(model, train, config.train, timed, config.seed, progress=False)
    selected = max(range(len(history)), key=lambda epoch: history[epoch][f"valid_{selection}"])
    final_test = evaluate(model, data, config, "test")[0]  # the best-validation weights, as a run ships them
    reached = next((row for row in timeline if row["test_ndcg@10"] >= args.reference_ndcg), None)
    result = {
        "config": str(args.config), "overrides": args.overrides, "threads": args.threads, "torch_threads": torch.get_num_threads(),
        "reference_ndcg@10": args.reference_ndcg, "reference_seconds": args.reference_seconds, "timeline": timeline,
        "reached": reached, "selected_epoch": selected + 1,
        "selected_test": {name: round(final_test[name], 4) for name in ("ndcg@10", "hit_rate@10", "mrr@10")},
        "speedup": None if reached is None else round(args.reference_seconds / reached["training_seconds"], 1),
    }
    if reached is None:
        best = max(timeline, key=lambda row: row["test_ndcg@10"])
        print(f"not reached: best test NDCG@10 {best['test_ndcg@10']} at epoch {best['epoch']} ({best['training_seconds']} s)")
    else:
        print(f"reached test NDCG@10 {reached['test_ndcg@10']} >= {args.reference_ndcg} after {reached['training_seconds']} s "
              f"(epoch {reached['epoch']}); RecBole: {args.reference_seconds:.0f} s -> {result['speedup']}x")
    print(f"shipped model (best validation epoch {selected + 1}): test {result['selected_test']}")
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
