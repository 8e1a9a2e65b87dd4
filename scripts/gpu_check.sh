#!/usr/bin/env bash
# One short run on a lent GPU machine (docs/benchmarks.md, "GPU"): bf16 encoding of the bundled catalogue, one epoch
# of the flagship, the sampled loss at 1M items, and the torchrun NCCL path over the GPUs present. Prints every
# figure; writes them under ${OUT:-/tmp/gpu_check}. Run from the repository root:  bash scripts/gpu_check.sh
set -euo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { make setup TORCH_SPEC="torch==2.13.0" >/dev/null; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
GPUS=$(nvidia-smi -L | wc -l)

echo "== encoding: the bundled catalogue in bf16 (texts/s, share of the dense bf16 peak from real token counts)"
$PY scripts/benchmark_encoding.py --texts 50000 --repeats 1 --threads 8 --json "$OUT/encoding.json" --device cuda 2>&1 | tail -8

echo "== one epoch of the flagship (s/epoch, peak GPU memory)"
$PY -m pipeline run configs/movielens_transformer.yaml --set train.epochs=1 --set train.device=cuda \
  --set output.root="$OUT/runs" 2>&1 | tail -4
$PY - "$OUT/runs" <<'PY'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1]) / "latest"
print("s/epoch", [line["epoch_seconds"] for line in map(json.loads, (run / "history.jsonl").read_text().splitlines())])
print("manifest device", json.loads((run / "manifest.json").read_text()).get("device"))
PY

echo "== sampled softmax at 1M items (s/epoch vs 10k items, peak memory)"
$PY scripts/benchmark_sampled_scale.py --events 2000000 --items 10000 1000000 --device cuda 2>&1 | tail -4

echo "== torchrun over $GPUS GPUs (NCCL)"
.venv/bin/torchrun --standalone --nproc_per_node "$GPUS" -m pipeline run configs/quickstart.yaml \
  --set train.epochs=1 --set train.device=cuda --set output.root="$OUT/ddp" 2>&1 | tail -4
