"""Full-ranking evaluation at catalog scale: users/s and peak memory, 1,000,000 items x 10,000 users by default.

A Transformer (id embeddings, width 64) over a synthetic catalog scores every item for every user, removes each
user's history, ranks a held-out item and keeps the top 10: exactly the evaluation protocol of a run. Memory stays
bounded because users are scored in chunks sized to the catalog (`evaluation.SCORE_BUDGET`). The reference, in the
same process on the first --reference-users users, is the textbook approach the pipeline replaced: one chunk of
`eval.user_batch_size` users and a full sort of every row.

    .venv/bin/python scripts/benchmark_evaluation.py --items 1000000 --users 10000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.cli import keep_freed_memory
from pipeline.config_models import model_section
from pipeline.models import Catalog, build_model
from pipeline.ranking import ListPolicy, Ranker, history_mask, rank_users


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


@torch.inference_mode()
def full_sort_reference(model, histories, targets, list_length: int) -> None:
    """All users in one chunk, every row fully sorted: memory and time grow with users x catalog."""
    scores = model.score_items(histories).float().clone()
    scores[:, 0] = float("-inf")
    scores[history_mask(histories, scores.shape[1], scores.device)] = float("-inf")
    order = torch.sort(-scores, dim=1, stable=True).indices
    target_ranks = (order == torch.as_tensor(np.concatenate(targets))[:, None]).float().argmax(dim=1) + 1
    order[:, :list_length].numpy(), target_ranks.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--reference-users", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path, default=Path("benchmark_evaluation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # As `python -m pipeline` does: without it glibc's moving mmap threshold fragments the heap chunk after chunk
    # (measured: +15 MB per chunk of 33 users at 1M items, instead of flat).
    keep_freed_memory()

    rng = np.random.default_rng(0)
    config = model_section(name="transformer", item_representation="id", hidden_size=64, num_layers=2, num_heads=2, max_length=50)
    model = build_model(config, Catalog(args.items, np.zeros((args.items + 1, 1), dtype=np.float32))).eval()
    # Zipf-like popularity: a few items appear in many histories, as in real logs.
    popularity = 1.0 / np.arange(1, args.items + 1) ** 0.8
    popularity /= popularity.sum()
    lengths = rng.integers(5, 51, size=args.users)
    histories = [rng.choice(args.items, size=length, p=popularity) + 1 for length in lengths]
    targets = [rng.integers(1, args.items + 1, size=1) for _ in range(args.users)]
    rss_before = peak_rss_gib()

    started = time.perf_counter()
    rank_users(model, histories, targets, 10, Ranker.for_model(model, ListPolicy(True)), user_batch_size=512)
    pipeline_seconds = time.perf_counter() - started
    rss_pipeline = peak_rss_gib()

    reference_users = min(args.reference_users, args.users)
    started = time.perf_counter()
    full_sort_reference(model, histories[:reference_users], targets[:reference_users], 10)
    reference_seconds = time.perf_counter() - started
    rss_reference = peak_rss_gib()

    result = {
        "items": args.items, "users": args.users, "threads": args.threads,
        "pipeline_users_per_s": round(args.users / pipeline_seconds, 1),
        "pipeline_seconds": round(pipeline_seconds, 2),
        "peak_rss_gib_after_setup": round(rss_before, 2),
        "peak_rss_gib_pipeline": round(rss_pipeline, 2),
        "reference_users": reference_users,
        "reference_users_per_s": round(reference_users / reference_seconds, 1),
        "peak_rss_gib_after_reference": round(rss_reference, 2),
    }
    result["speedup_vs_full_sort"] = round(result["pipeline_users_per_s"] / result["reference_users_per_s"], 2)
    print(f"{'':28}{'users/s':>10}{'peak RSS GiB':>14}")
    print(f"{'pipeline (chunked top-K)':28}{result['pipeline_users_per_s']:>10}{rss_pipeline:>14.2f}")
    print(f"{'reference (one chunk, sort)':28}{result['reference_users_per_s']:>10}{rss_reference:>14.2f}   ({reference_users} users)")
    print(f"speedup {result['speedup_vs_full_sort']}x; {args.items:,} items x {args.users:,} users in {pipeline_seconds:.1f} s, "
          f"peak RSS {rss_pipeline:.2f} GiB (target: under 8 GiB)")
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
