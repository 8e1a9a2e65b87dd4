"""One sampled-softmax training step at a 10M-item catalog: peak RSS of each stage against the memory model.

A synthetic log (`scripts/generate_log.py`: 2M events by default) over a catalog of `--items` items is prepared, a
Transformer with id item vectors (width 64, the 1M-item benchmark's) is built and its statistics fitted, then one
step runs as the training loop runs it (`train.loss: sampled`, 2,048 negatives, batch 128, sparse item rows with
`RowSparseAdamW`). With `--text-width`, the items also carry text vectors: a float16 item table of that width
(random unit vectors) written as the embedding cache writes one and memory-mapped as the models read it, the
representation text+id. Prints the peak RSS after each stage, the memory model's prediction for the model's own
tables (docs/benchmarks.md), and the step's seconds.

    .venv/bin/python scripts/benchmark_step_10m.py [--items 10000000] [--events 2000000] [--threads 2] [--text-width 384]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

import pipeline
from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.embedding_cache import CHUNK_ROWS, map_npy, npy_writer
from pipeline.storage import write_atomic
from pipeline.training import RowSparseAdamW, clip_gradients, negative_sampler
from pipeline.windows import training_windows, window_batches

SCRIPTS = Path(__file__).resolve().parent
GIB = 1024**3


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def rss_gib() -> float:
    """The resident set now (the peak is a high-water mark: it cannot tell what a later stage holds)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / GIB


def file_rss_gib() -> float:
    """Of the resident set, the file-backed pages (the memory-mapped text table): clean pages the kernel may drop."""
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return int(fields["RssFile"].split()[0]) / 1024**2


def stage(name: str) -> tuple[str, float, float, float]:
    return name, rss_gib(), file_rss_gib(), peak_rss_gib()


def model_tables_gib(items: int, trained: int, width: int, categories: int, text_width: int = 0) -> dict[str, float]:
    """The memory model: what the model holds per catalog item and per trained item (fp32), and what the optimizer
    adds."""
    rows, trained_rows = items + 1, trained + 1
    text = {"text vectors in float16 (file-backed pages, read where used)": rows * text_width * 2 / GIB} if text_width else {}
    return {**text,
        "id embedding (rows of the trained items)": trained_rows * width * 4 / GIB,
        "lazy Adam moments: id rows of the trained items, item bias of all (2 each)": 2 * (trained_rows * width + rows) * 4 / GIB,
        "item bias, statistics (counts, rating means, recommendable), id row index": rows * (4 + 4 + 4 + 1 + 8) / GIB,
        "category weights [items, categories]": rows * categories * 4 / GIB,
        "negative sampler (counts, 2 probabilities in float64)": rows * 3 * 8 / GIB,
    }


def text_table(path: Path, rows: int, width: int) -> np.ndarray:
    """Random unit vectors in float16, row 0 zero, streamed to an `.npy` file and memory-mapped."""
    rng = np.random.default_rng(0)

    def chunks():
        for start in range(0, rows, CHUNK_ROWS):
            vectors = rng.standard_normal((min(CHUNK_ROWS, rows - start), width), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            if start == 0:
                vectors[0] = 0
            yield vectors

    write_atomic(path, npy_writer((rows, width), np.float16, chunks()))
    return map_npy(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-width", type=int, default=0, help="text vectors per item, float16 memory-mapped (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(SCRIPTS))
    from benchmark_data import config_for
    from generate_log import generate, write

    stages = []
    with tempfile.TemporaryDirectory() as work:
        log, catalog = generate(args.events, args.users, args.items, seed=0)
        ratings, movies = write(log, catalog, Path(work), "parquet")
        del log, catalog
        gc.collect()
        stages.append(stage("generate the log (parquet written)"))
        config = load_config({
            **config_for(ratings, movies),
            "model": {"name": "transformer", "item_representation": "id", "hidden_size": 64, "max_length": 50},
            "train": {"loss": "sampled", "negatives": 2048, "batch_size": 128, "num_threads": args.threads},
            "output": {"root": str(Path(work) / "runs")},
        })
        data = prepare(load_data(config.data), config.data)
        stages.append(stage("load + prepare"))
        table = None
        if args.text_width:
            table = text_table(Path(work) / "item_text.npy", data.n_items + 1, args.text_width)
            config = config.model_copy(update={"model": config.model.model_copy(update={"item_representation": "text+id"})})
            stages.append(stage(f"float16 text table written, mapped ({table.nbytes / GIB:.1f} GiB)"))
        model = pipeline.api.build(config.model, data, table, config.seed)
        train = data.train_view()
        model.fit_statistics(train)
        stages.append(stage("build the model, fit its statistics"))
        windows = training_windows(train, model.max_length)
        sampler = negative_sampler(model, config.train, sparse_rows=True)
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = RowSparseAdamW(model, parameters, config.train)
        batch = next(window_batches(windows, config.train.batch_size, np.random.default_rng(0), torch.device("cpu")))
        stages.append(stage("windows, sampler, optimizer"))
        started = time.perf_counter()
        model.train()
        parts = model(*batch, candidates=sampler.draw(batch[1]))
        weights = model.loss_weights()
        loss = sum(weights[name] * value for name, value in parts.items())
        optimizer.zero_grad()
        loss.backward()
        clip_gradients(parameters, 5.0)
        optimizer.step()
        seconds = time.perf_counter() - started
        stages.append(stage("one training step"))
        trained = int((model.statistics.item_counts > 0).sum())
        categories = data.category_matrix().shape[1]

    print(f"{args.items:,} items ({trained:,} trained), {args.events:,} events, {args.threads} threads, CPU: {cpu_name()}")
    print(f"  {'after':<50} {'RSS GiB':>8} {'of it file-backed':>18} {'peak GiB':>9}")
    for name, rss, file_backed, peak in stages:
        print(f"  {name:<50} {rss:8.2f} {file_backed:18.2f} {peak:9.2f}")
    print(f"one step: {seconds:.2f} s (its lazy Adam moments allocated in it), loss {float(loss.detach()):.3f}")
    model_tables = model_tables_gib(args.items, trained, 64, categories, args.text_width)
    print("memory model of the model's own tables:")
    for name, gib in model_tables.items():
        print(f"  {name:<66} {gib:6.2f} GiB")
    print(f"  {'total':<66} {sum(model_tables.values()):6.2f} GiB")


if __name__ == "__main__":
    main()
