"""ANN lists against exact full ranking at catalog scale: 1,000,000 items x 10,000 users by default.

A Transformer (id embeddings, width 64) whose item vectors are given the structure trained ones have (items in
taste clusters: a cluster centre plus item noise; an item bias at log popularity, Zipf-like) lists the top 10 for
every user with seen items removed: exactly by scoring the whole catalog (`ranking.rank_users`, on the first
--exact-users users) and through the HNSW index (`retrieval.AnnLists`, all users). Prints users/s of both, their
ratio, the index build time, and recall@10 of the ANN lists against the exact ones on the same users.

    .venv/bin/python scripts/benchmark_ann.py --items 1000000 --users 10000 --threads 2 [--ef-search 512]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from machine import cpu_name

from pipeline.config_models import model_section
from pipeline.models import Catalog, build_model
from pipeline.models.sequence import log_popularity
from pipeline.ranking import ListPolicy, Ranker, Rankings, rank_users
from pipeline.retrieval import AnnLists, recall_against_exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--exact-users", type=int, default=1_000)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--ef-search", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    config = model_section(name="transformer", item_representation="id", hidden_size=64, num_layers=2, num_heads=2, max_length=50)
    model = build_model(config, Catalog(args.items, np.zeros((args.items + 1, 1), dtype=np.float32))).eval()
    popularity = 1.0 / np.arange(1, args.items + 1) ** 0.8
    popularity /= popularity.sum()
    cluster_of = rng.integers(0, args.clusters, size=args.items)
    centres = rng.normal(size=(args.clusters, 64)).astype(np.float32)
    vectors = centres[cluster_of] + 0.5 * rng.normal(size=(args.items, 64)).astype(np.float32)
    # Users keep to a few clusters, as people keep to a few tastes.
    lengths = rng.integers(5, 51, size=args.users)
    members = np.argsort(cluster_of, kind="stable")
    starts = np.searchsorted(cluster_of[members], np.arange(args.clusters + 1))
    histories = []
    for length in lengths:
        tastes = rng.integers(0, args.clusters, size=3)
        pool = np.concatenate([members[starts[taste] : starts[taste + 1]] for taste in tastes])
        histories.append(rng.choice(pool, size=length) + 1)
    counts = np.bincount(rng.choice(args.items, size=20 * args.items, p=popularity) + 1, minlength=args.items + 1)
    with torch.no_grad():
        model.items.id_embedding.weight[1:] = torch.from_numpy(vectors) * 0.1
        model.statistics.item_counts.copy_(torch.from_numpy(counts))
        model.item_bias.copy_(log_popularity(model.statistics.item_counts.float()))
    ranker = Ranker.for_model(model, ListPolicy(True))
    length = 10

    exact_users = min(args.exact_users, args.users)
    started = time.perf_counter()
    exact = rank_users(model, histories[:exact_users], None, length, ranker, user_batch_size=512)
    exact_seconds = time.perf_counter() - started

    started = time.perf_counter()
    lists = AnnLists(model, ranker, ef_search=args.ef_search)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ann = lists.rank(histories, length)
    ann_seconds = time.perf_counter() - started

    recall = recall_against_exact(Rankings([], ann.top_items[:exact_users], ann.top_scores[:exact_users]), exact)
    exact_rate, ann_rate = exact_users / exact_seconds, args.users / ann_seconds
    print(f"{args.items:,} items, {args.threads} threads, CPU: {cpu_name()}")
    print(f"exact full ranking: {exact_rate:9.1f} users/s ({exact_users:,} users, {exact_seconds:.1f} s)")
    print(f"ANN (HNSW, efSearch {args.ef_search}): {ann_rate:9.1f} users/s ({args.users:,} users, {ann_seconds:.1f} s; "
          f"index built in {build_seconds:.1f} s)")
    print(f"ANN / exact users/s: {ann_rate / exact_rate:.1f}x; recall@{length} vs exact on {exact_users:,} users: {recall:.4f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB")


if __name__ == "__main__":
    main()
