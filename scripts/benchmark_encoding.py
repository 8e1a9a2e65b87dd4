"""Encoding throughput: the pipeline's TextEncoder against sentence-transformers' encode() on the same model and texts.

    python scripts/benchmark_encoding.py [--texts 50000] [--threads 1] [--repeats 3] [--json out.json]

Both run interleaved in one process on the bundled MovieLens item texts (repeated to --texts), median of --repeats;
prints texts/s for each, the ratio, and the lowest cosine between the two embeddings of the same text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import EncoderConfig, load_config
from pipeline.data import load_data, prepare
from pipeline.encoding import TextEncoder, resolve_model_source

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = load_config(REPO / "configs" / "quickstart.yaml")
    data = prepare(load_data(config.data), config.data)
    unique = data.item_texts[1:]
    texts = (unique * (args.texts // len(unique) + 1))[: args.texts]

    from sentence_transformers import SentenceTransformer

    encoder_config = EncoderConfig(device="cpu", batch_size=args.batch_size, max_length=config.encoder.max_length)
    ours = TextEncoder(encoder_config)
    reference = SentenceTransformer(resolve_model_source(encoder_config.model), device="cpu")
    reference.max_seq_length = encoder_config.max_length

    timings: dict[str, list[float]] = {"pipeline": [], "sentence_transformers": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        ours_vectors = ours.encode(texts)
        timings["pipeline"].append(time.perf_counter() - started)
        started = time.perf_counter()
        reference_vectors = reference.encode(texts, normalize_embeddings=True)
        timings["sentence_transformers"].append(time.perf_counter() - started)
    cosine = float(np.min(np.sum(ours_vectors * reference_vectors, axis=1)))
    result = {name: {"median_seconds": statistics.median(values), "texts_per_second": args.texts / statistics.median(values)} for name, values in timings.items()}
    ratio = result["pipeline"]["texts_per_second"] / result["sentence_transformers"]["texts_per_second"]
    print(f"{'encoder':<24}{'texts/s':>12}{'median s':>12}")
    for name, row in result.items():
        print(f"{name:<24}{row['texts_per_second']:>12.0f}{row['median_seconds']:>12.2f}")
    print(f"ratio pipeline / sentence-transformers: {ratio:.2f}x   min cosine: {cosine:.6f}   texts {args.texts}, threads {args.threads}")
    if args.json:
        args.json.write_text(json.dumps({**result, "ratio": ratio, "min_cosine": cosine, "texts": args.texts, "threads": args.threads}, indent=2))


if __name__ == "__main__":
    main()
