"""Training throughput on the bundled MovieLens: seconds per epoch, training sequences/s and targets/s, peak memory.

For the LSTM and the Transformer on the settings of configs/movielens_transformer.yaml (width 128, 2 layers, length
50, batch 64 windows, strided windows of 10) it times --epochs full epochs in fp32 and, where the device computes bf16
natively (CUDA, AMX-BF16 CPUs), as many in bf16 autocast (`train.precision: bf16`). The reference, in the same process
and on the same model and in the trainer's precision, is RecBole's way of feeding a sequential model: every prefix of
every sequence is a separate sample that predicts only its last item (windows of stride 1 with one target each), timed
over --reference-batches batches of the same size and extrapolated to its epoch. Both see every training event as a
target once per epoch, so the ratio of epoch times is the work saved by training all positions of a window in one
pass.

    .venv/bin/python scripts/benchmark_training.py --threads 2 [--epochs 2] [--models lstm transformer]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.api import build, encode
from pipeline.cli import keep_freed_memory
from pipeline.config import load_config
from pipeline.config_models import model_section
from pipeline.data import load_data, prepare
from pipeline.encoding import native_bf16
from pipeline.models import model_class
from pipeline.training import training_autocast, training_dtype
from pipeline.windows import training_windows, window_batches

REPO = Path(__file__).resolve().parents[1]


def train_batches(
    model, windows, batch_size: int, device: torch.device, dtype: torch.dtype, limit: int | None = None
) -> tuple[float, int, int]:
    """Seconds, windows and targets for one pass (or `limit` batches) of AdamW steps computed in `dtype`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    started, seen_windows, seen_targets = time.perf_counter(), 0, 0
    for step, batch in enumerate(window_batches(windows, batch_size, np.random.default_rng(0), device)):
        inputs, targets = batch[0], batch[1]
        if limit is not None and step >= limit:
            break
        with training_autocast(device, dtype):
            loss = sum(model(*batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen_windows += len(inputs)
        seen_targets += int((targets > 0).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, seen_windows, seen_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "movielens_transformer.yaml")
    parser.add_argument("--models", nargs="+", default=["lstm", "transformer"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reference-batches", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmark_training.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # the allocator setting `python -m pipeline` runs with
    device = torch.device(args.device)

    config = load_config(args.config)
    data = prepare(load_data(config.data), config.data)
    item_embeddings, _ = encode(data, config)
    rows = []
    for name in args.models:
        # The flagship's settings, less the keys this model does not read.
        keys = model_class(name).config_class.model_fields
        shared = {key: value for key, value in config.model.model_dump().items() if key in keys and key not in ("name", "label")}
        model_config = model_section(name=name, **shared)
        model = build(model_config, data, item_embeddings, config.seed).to(device)
        model.fit_statistics(data.train_view())
        windows = training_windows(data.train_view(), model_config.max_length, config.train.window_stride)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        dtypes = [torch.float32, torch.bfloat16] if native_bf16(device) else [torch.float32]
        epoch_seconds = {}
        for dtype in dtypes:
            runs = [train_batches(model, windows, config.train.batch_size, device, dtype) for _ in range(args.epochs)]
            epoch_seconds[dtype] = float(np.median([seconds for seconds, _, _ in runs]))
            _, n_windows, n_targets = runs[0]
        trainer_dtype = training_dtype(device, config.train.precision)
        epoch = epoch_seconds[trainer_dtype]
        bf16_epoch = epoch_seconds.get(torch.bfloat16)

        prefixes = training_windows(data, model_config.max_length, stride=1)
        seconds, reference_windows, _ = train_batches(
            model, prefixes, config.train.batch_size, device, trainer_dtype, args.reference_batches
        )
        reference_epoch = seconds / reference_windows * len(prefixes)
        rows.append({
            "model": name, "width": model_config.hidden_size, "layers": model_config.num_layers,
            "max_length": model_config.max_length, "batch_size": config.train.batch_size,
            "window_stride": config.train.window_stride, "threads": args.threads, "device": str(device),
            "precision": str(trainer_dtype).removeprefix("torch."), "seconds_per_epoch": round(epoch, 2),
            "bf16_seconds_per_epoch": None if bf16_epoch is None else round(bf16_epoch, 2),
            "bf16_speedup": None if bf16_epoch is None else round(epoch_seconds[torch.float32] / bf16_epoch, 2),
            "windows_per_epoch": n_windows, "targets_per_epoch": n_targets,
            "windows_per_s": round(n_windows / epoch, 1), "targets_per_s": round(n_targets / epoch, 1),
            "prefix_samples_per_epoch": len(prefixes), "prefix_reference_seconds_per_epoch": round(reference_epoch, 1),
            "speedup_vs_prefix_samples": round(reference_epoch / epoch, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 2) if device.type == "cuda" else None,
        })
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{'model':<12}{'precision':>10}{'s/epoch':>9}{'bf16 s/epoch':>14}{'windows/s':>11}{'targets/s':>11}"
          f"{'prefix-sample s/epoch':>23}{'speedup':>9}{'peak RSS GiB':>14}")
    for row in rows:
        print(f"{row['model']:<12}{row['precision']:>10}{row['seconds_per_epoch']:>9}{str(row['bf16_seconds_per_epoch']):>14}"
              f"{row['windows_per_s']:>11}{row['targets_per_s']:>11}"
              f"{row['prefix_reference_seconds_per_epoch']:>23}{row['speedup_vs_prefix_samples']:>8}x{row['peak_rss_gib']:>14}")
    args.output.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
