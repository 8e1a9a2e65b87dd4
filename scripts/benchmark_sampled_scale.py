"""Training with the sampled softmax at catalog scale: s/epoch and peak RSS, 2M events over 10k and 1M items.

The same number of events (`scripts/generate_log.py`: Zipf users and items, sessions) over a small and a large
catalog; one epoch of the Transformer (id embeddings, width 64, `train.loss: sampled`, 2048 negatives) each, in
this process, validated on 200 users. Prints s/epoch of both, their ratio (the target: within 2x) and the peak RSS
after each (the target: under 6 GiB at 1M items).

    .venv/bin/python scripts/benchmark_sampled_scale.py [--events 2000000] [--items 10000 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

import pipeline
from pipeline.config import load_config
from pipeline.data import VALID, load_data, prepare
from pipeline.training import Fitter

SCRIPTS = Path(__file__).resolve().parent


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--negatives", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(SCRIPTS))
    from benchmark_data import config_for
    from generate_log import generate, write

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for items in args.items:
            log, catalog = generate(args.events, args.users, items, seed=0)
            ratings, movies = write(log, catalog, Path(work) / str(items), "parquet")
            del log, catalog
            config = load_config({
                **config_for(ratings, movies),
                "model": {"name": "transformer", "item_representation": "id", "hidden_size": 64, "max_length": 50},
                "train": {"epochs": 1, "batch_size": 128, "loss": "sampled", "negatives": args.negatives, "num_threads": args.threads,
                          "device": args.device},
                "output": {"root": str(Path(work) / "runs")},
            })
            data = prepare(load_data(config.data), config.data)
            model = pipeline.api.build(config.model, data, None, config.seed)
            cases = data.eval_cases(VALID)
            validator = pipeline.api.validator(data, config, cases.subset(np.arange(min(200, len(cases)))))
            model.fit_statistics(data.train_view())
            history = Fitter(config.train, validator, config.seed).loop(model, data.train_view())
            trained = int((model.statistics.item_counts > 0).sum())
            rows.append((items, trained, history[0]["train_seconds"], peak_rss_gib()))
            if args.device == "cuda":
                print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 1024**3:.2f} GiB")
            print(f"{items:>9,} items ({trained:,} trained): {history[0]['train_seconds']:.1f} s/epoch, "
                  f"peak RSS so far {rows[-1][3]:.2f} GiB", flush=True)
            del data, model
    print(f"{args.events:,} events, {args.threads} threads, {args.negatives} negatives, CPU: {cpu_name()}")
    small, large = rows[0], rows[-1]
    print(f"s/epoch {large[0]:,} items / {small[0]:,} items: {large[2] / small[2]:.2f}x (target <= 2x); "
          f"peak RSS {large[3]:.2f} GiB (target <= 6 GiB)")


if __name__ == "__main__":
    main()
