"""The text-embedding cache on disk, and the item tables the models read memory-mapped from it.

A catalogue of 10M items has 15 GB of fp32 text vectors: more than a training process should hold. So the cache's
shards are `.npy` files read memory-mapped (only an index of text hashes lives in memory, 64 bytes per text), and an
item table (one row per item index, row 0 the padding) is streamed from them into one `.npy` file, in float16 where
configured, which the models map instead of loading.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from pipeline.errors import StorageError, clip
from pipeline.storage import remove_abandoned_temporaries, write_atomic

log = logging.getLogger("pipeline")

# Shards are appended by each encoding call; past this many they are merged into one file on the next write.
MAX_CACHE_SHARDS = 16
# Item tables kept per encoder (the newest by use); a run directory keeps its own link to the table it read.
KEPT_TABLES = 4
# Rows copied at once while streaming vectors between files: bounds the memory of a merge or a table build.
CHUNK_ROWS = 65_536
KEYS_SUFFIX, VECTORS_SUFFIX = ".keys.npy", ".vectors.npy"


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


def npy_writer(shape: tuple[int, ...], dtype, chunks):
    """A `write_atomic` content writer for an `.npy` file of `shape` whose rows come from the iterable `chunks`."""

    def write(handle) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header)
        for chunk in chunks:
            handle.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())

    return write


def map_npy(path: Path) -> np.ndarray:
    """An `.npy` file memory-mapped copy-on-write: pages are read on use, and no write ever reaches the file."""
    return np.load(path, mmap_mode="c", allow_pickle=False)


class EmbeddingCache:
    """Append-only shards of (text hash -> float32 vector) under cache_dir/<encoder identity>/.

    A shard is `shard-<id>.vectors.npy` (memory-mapped) and `shard-<id>.keys.npy`, written after it through the
    atomic writer: the keys file makes the shard visible, so a reader needs no lock. Past `MAX_CACHE_SHARDS` shards,
    a writer merges: it re-reads every shard it is about to delete, so vectors another process added meanwhile are
    kept. A damaged shard is skipped with a warning (its texts are encoded again); an unwritable cache is a warning,
    and the run goes on with the vectors in memory. Shards of the earlier `.npz` format are read too.
    """

    def __init__(self, cache_dir: str | Path, identity: str):
        self.folder = Path(cache_dir) / identity
        self.width: int | None = None
        self._shards: list[tuple[np.ndarray, np.ndarray]] = []  # (keys, vectors) per shard
        self._read = self._absorb(self._shard_files())

    def _shard_files(self) -> list[Path]:
        return sorted(self.folder.glob(f"shard-*{KEYS_SUFFIX}")) + sorted(self.folder.glob("shard-*.npz"))

    def _absorb(self, shards: list[Path]) -> list[Path]:
        """Map `shards`; return those read or found damaged (a merge may delete them)."""
        handled = []
        for shard in shards:
            try:
                keys, vectors = _read_shard(shard)
                if keys.ndim != 1 or vectors.ndim != 2 or len(keys) != len(vectors):
                    raise ValueError(f"keys {keys.shape} and vectors {vectors.shape} do not match")
            except Exception as err:  # a truncated or foreign file fails in zipfile, numpy or here
                if isinstance(err, FileNotFoundError) and not shard.exists():
                    continue  # merged and deleted by another process meanwhile: its vectors are in that merge
                # A merge deletes the keys file first, so keys without their vectors are damage too.
                log.warning("embedding cache: ignoring damaged shard %s (%s); its texts are encoded again", shard, clip(str(err)))
                handled.append(shard)
                continue
            if self.width is not None and vectors.shape[1] != self.width:
                log.warning(
                    "embedding cache: ignoring shard %s: vectors of width %d, the cache's are %d", shard, vectors.shape[1], self.width
                )
                continue
            self.width = int(vectors.shape[1])
            self._shards.append((keys.astype("S64"), vectors))
            handled.append(shard)
        self._index()
        return handled

    def _index(self) -> None:
        """Sorted unique keys with the shard and row holding each (the first shard's where two hold one text)."""
        sizes = [len(keys) for keys, _ in self._shards]
        keys = np.concatenate([keys for keys, _ in self._shards]) if self._shards else np.zeros(0, dtype="S64")
        self._keys, first = np.unique(keys, return_index=True)
        self._shard_of = np.repeat(np.arange(len(sizes)), sizes)[first]
        self._row_of = (first - np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)[self._shard_of]
                        if len(first) else first)

    def __len__(self) -> int:
        return len(self._keys)

    def _positions(self, keys: np.ndarray) -> np.ndarray:
        """Each key's position in the index, -1 where the cache does not hold it."""
        if not len(self._keys):
            return np.full(len(keys), -1, dtype=np.int64)
        positions = np.searchsorted(self._keys, keys).clip(max=len(self._keys) - 1)
        return np.where(self._keys[positions] == keys, positions, -1)

    def missing(self, keys: list[bytes]) -> list[bytes]:
        """The keys the cache does not hold, in order."""
        found = self._positions(np.array(keys, dtype="S64")) >= 0
        return [key for key, held in zip(keys, found) if not held]

    def vectors(self, keys: list[bytes] | np.ndarray) -> np.ndarray:
        """[len(keys), width] float32 vectors of held keys, in memory."""
        positions = self._positions(np.asarray(keys, dtype="S64"))
        if (positions < 0).any():
            raise KeyError(f"embedding cache {self.folder}: {int((positions < 0).sum())} keys are not held")
        output = np.zeros((len(positions), self.width or 0), dtype=np.float32)
        shard_of, row_of = self._shard_of[positions], self._row_of[positions]
        for shard in np.unique(shard_of):
            rows = shard_of == shard
            output[rows] = self._shards[shard][1][row_of[rows]]
        return output

    def _chunks(self, keys: np.ndarray, dtype=np.float32):
        for start in range(0, len(keys), CHUNK_ROWS):
            yield self.vectors(keys[start : start + CHUNK_ROWS]).astype(dtype)

    def add(self, keys: list[bytes], vectors: np.ndarray, persist: bool = True) -> None:
        if not keys:
            return
        self.width = int(vectors.shape[1])
        self._shards.append((np.array(keys, dtype="S64"), np.asarray(vectors, dtype=np.float32)))
        self._index()
        if not persist:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_abandoned_temporaries(self.folder)  # a killed writer's half shard or half merge
            shards = self._shard_files()
            if len(shards) < MAX_CACHE_SHARDS:
                self._write_shard(np.array(keys, dtype="S64"), [np.asarray(vectors, dtype=np.float32)])
                return
            merged = set(self._read) | set(self._absorb([shard for shard in shards if shard not in self._read]))
            written = self._write_shard(self._keys, self._chunks(self._keys))
            for shard in merged:
                _remove_shard(shard)
            self._shards, self._read = [], []
            self._read = self._absorb([written])
        except (OSError, StorageError) as err:
            log.warning(
                "embedding cache %s not written (%s); continuing without caching: %d new vectors stay in memory only",
                self.folder, clip(str(err), 200), len(keys),
            )

    def _write_shard(self, keys: np.ndarray, chunks) -> Path:
        name = f"shard-{uuid.uuid4().hex}"
        write_atomic(self.folder / f"{name}{VECTORS_SUFFIX}", npy_writer((len(keys), self.width), np.float32, chunks))
        return write_atomic(self.folder / f"{name}{KEYS_SUFFIX}", npy_writer(keys.shape, keys.dtype, [keys]))

    def table(self, keys: list[bytes], dtype: str) -> np.ndarray:
        """[len(keys) + 1, width] vectors of `keys` (row 0: zero, the padding) in `dtype`, memory-mapped from
        cache_dir/<identity>/tables/ (built once per key list and dtype), or in memory where the cache is unwritable."""
        ordered = np.array(keys, dtype="S64")
        digest = hashlib.sha256(ordered.tobytes() + dtype.encode()).hexdigest()[:32]
        path = self.folder / "tables" / f"{digest}.npy"
        padding = np.zeros((1, self.width or 0), dtype=dtype)
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                remove_abandoned_temporaries(path.parent)  # a killed build's half table (gigabytes at scale)
                write_atomic(path, npy_writer((len(keys) + 1, self.width or 0), dtype, [padding, *self._chunks(ordered, dtype)]))
            os.utime(path)  # "used": pruning keeps the tables used last
            self._prune_tables(path.parent)
            return map_npy(path)
        except (OSError, StorageError) as err:
            log.warning("embedding cache: item table %s not written (%s); it stays in memory", path, clip(str(err), 200))
            return np.concatenate([padding, *self._chunks(ordered, dtype)]) if keys else padding

    @staticmethod
    def _prune_tables(folder: Path) -> None:
        """Keep the `KEPT_TABLES` tables used last: a process mapping a removed one keeps reading it (POSIX)."""
        tables = sorted(folder.glob("*.npy"), key=lambda path: path.stat().st_mtime_ns, reverse=True)
        for stale in tables[KEPT_TABLES:]:
            stale.unlink(missing_ok=True)


def _read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as stored:
            return stored["keys"], stored["vectors"].astype(np.float32)
    keys = np.load(path, allow_pickle=False)
    return keys, np.load(_vectors_path(path), mmap_mode="r", allow_pickle=False)


def _vectors_path(keys_path: Path) -> Path:
    return keys_path.with_name(keys_path.name[: -len(KEYS_SUFFIX)] + VECTORS_SUFFIX)


def _remove_shard(path: Path) -> None:
    """The keys file first: a shard without it is invisible to readers, and its vectors file is then removed."""
    path.unlink(missing_ok=True)
    if path.name.endswith(KEYS_SUFFIX):
        _vectors_path(path).unlink(missing_ok=True)
