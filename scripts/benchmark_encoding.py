"""Encoding throughput: the pipeline's TextEncoder against sentence-transformers' encode() on the same model and texts.

    python scripts/benchmark_encoding.py [--texts 50000] [--threads 1] [--repeats 3] [--json out.json]

The pipeline's encoder (its defaults: bf16 autocast on a CPU with AMX-BF16, else fp32 under ONNX Runtime; PyTorch fp32;
ONNX Runtime fp32 and int8) and sentence-transformers' encode() with its defaults run interleaved in one process on the bundled MovieLens item texts
(repeated to --texts), median of --repeats; prints texts/s, the ratio to sentence-transformers and the lowest cosine
between the two embeddings of the same text. Then the incremental case: the 9,742 unique item texts encoded into an
empty cache, versus the same catalog with 1% of its texts edited (only those are encoded again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import EncoderConfig, load_config
from pipeline.data import load_data, prepare
from pipeline.encoding import TextEncoder, encode_texts, resolve_model_source

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--changed-fraction", type=float, default=0.01, help="incremental part: share of texts edited")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the auto precision is bf16 on CUDA)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = load_config(REPO / "configs" / "quickstart.yaml")
    data = prepare(load_data(config.data), config.data)
    unique = data.item_texts[1:]
    texts = (unique * (args.texts // len(unique) + 1))[: args.texts]

    from sentence_transformers import SentenceTransformer

    base = EncoderConfig(device=args.device, batch_size=args.batch_size, max_length=config.encoder.max_length)
    variants = {"auto": {}, "torch fp32": {"runtime": "torch", "precision": "fp32"}}
    if args.device == "cpu":
        variants.update({"onnx fp32": {"runtime": "onnx", "precision": "fp32"}, "onnx int8": {"precision": "int8"}})
    encoders = {}
    for label, settings in variants.items():
        encoder = TextEncoder(base.model_copy(update=settings))
        name = f"pipeline {label}" + (f" = {encoder.runtime} {encoder.precision.removeprefix('torch.')}" if label == "auto" else "")
        encoders[name] = encoder.encode
    reference = SentenceTransformer(resolve_model_source(base.model), device=args.device)
    reference.max_seq_length = base.max_length
    encoders["sentence-transformers encode()"] = lambda batch: reference.encode(batch, normalize_embeddings=True)

    timings: dict[str, list[float]] = {name: [] for name in encoders}
    vectors = {}
    for _ in range(args.repeats):  # interleaved, so machine noise hits every encoder alike
        for name, encode in encoders.items():
            started = time.perf_counter()
            vectors[name] = encode(texts)
            timings[name].append(time.perf_counter() - started)
    reference_name = "sentence-transformers encode()"
    rows = {}
    for name, values in timings.items():
        rows[name] = {
            "texts_per_second": round(args.texts / statistics.median(values), 1),
            "median_seconds": round(statistics.median(values), 3),
            "min_cosine_vs_reference": round(float(np.min(np.sum(vectors[name] * vectors[reference_name], axis=1))), 6),
        }
    for row in rows.values():
        row["ratio_vs_reference"] = round(row["texts_per_second"] / rows[reference_name]["texts_per_second"], 2)
    print(f"{'encoder':<40}{'texts/s':>10}{'median s':>10}{'ratio':>8}{'min cosine':>12}")
    for name, row in rows.items():
        print(f"{name:<40}{row['texts_per_second']:>10.0f}{row['median_seconds']:>10.2f}{row['ratio_vs_reference']:>8.2f}{row['min_cosine_vs_reference']:>12.6f}")
    print(f"texts {args.texts} (bundled item texts repeated), threads {args.threads}, median of {args.repeats}")

    incremental = incremental_reencode(unique, base, args.changed_fraction)
    print(
        f"\nincremental: {incremental['texts']} item texts, full encode {incremental['full_seconds']:.2f} s; "
        f"{incremental['changed']} changed ({args.changed_fraction:.0%}) re-encoded in {incremental['incremental_seconds']:.2f} s "
        f"-> {incremental['speedup']:.1f}x faster"
    )
    if args.json:
        payload = {"encoders": rows, "texts": args.texts, "threads": args.threads, "incremental": incremental}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


def incremental_reencode(texts: list[str], config: EncoderConfig, fraction: float) -> dict:
    """A full encode into an empty cache, then the same catalog with `fraction` of its texts edited."""
    with tempfile.TemporaryDirectory() as cache_dir:
        config = config.model_copy(update={"cache_dir": cache_dir})
        encoder = TextEncoder(config)
        started = time.perf_counter()
        encode_texts(texts, config, encoder)
        full_seconds = time.perf_counter() - started
        edited = list(texts)
        changed = np.random.default_rng(0).choice(len(texts), size=max(1, round(fraction * len(texts))), replace=False)
        for index in changed:
            edited[index] += " (director's cut)"
        started = time.perf_counter()
        _, stats = encode_texts(edited, config, encoder)
        incremental_seconds = time.perf_counter() - started
    return {
        "texts": len(texts), "changed": int(len(changed)), "encoded_second_time": stats.encoded,
        "full_seconds": round(full_seconds, 3), "incremental_seconds": round(incremental_seconds, 3),
        "speedup": round(full_seconds / incremental_seconds, 1),
    }


if __name__ == "__main__":
    main()
