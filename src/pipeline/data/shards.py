"""The prepared log on disk (`data.engine: duckdb`), and `load_prepared`: how every recipe gets its `PreparedData`.

A prepared log is one folder under `data.shards.dir`, named by a hash of the input files' contents and the data
config, so a second run (or a second torchrun rank, or tomorrow's run on the same files) reads it instead of preparing
again. It is built in a temporary folder and published by one rename, so a killed preparation leaves no folder a
reader could take for finished. Inside:

    manifest.json              format, counts, event types, shard count
    users.parquet              user_id of user index u at row u (natural id order)
    items.parquet              item id of item index i at row i - 1 (the kept catalog, in catalog order)
    cold.parquet               the cold-start items (data.cold_item_fraction)
    events/shard=K/*.parquet   user, item (indices), timestamp, [rating], [event], [weight], split, ord (the order
                               of same-second events: their place in the file)

Shard K holds the users whose md5(user id) is K modulo the shard count: a user's whole log is in one shard, and the
assignment does not move when other users come and go. `scripts/spark_prepare.py` writes the same format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline import distributed
from pipeline.config import DataConfig
from pipeline.data.load import load_data, load_items
from pipeline.data.prepare import prepare
from pipeline.data.prepared import PreparedData, assemble
from pipeline.errors import PipelineInputError
from pipeline.storage import file_fingerprint, fsync_folder, pid_alive, read_json_file, write_json_atomic

log = logging.getLogger("pipeline")

FORMAT = 2
# Settings that change how a log is prepared, not what comes out: they do not name the folder.
NOT_IN_KEY = ("dir", "memory_limit_gb", "threads")


def shard_of(user_id: str, count: int) -> int:
    """The shard of one user id: the first 60 bits of md5(user id) modulo `count`, as the engines compute it in SQL."""
    return int(hashlib.md5(user_id.encode("utf-8")).hexdigest()[:15], 16) % count


def shards_of_rank(count: int, rank: int, world: int) -> list[int]:
    return list(range(rank, count, world))


def source_paths(config: DataConfig) -> list[Path]:
    sources = [config.interactions, config.items, config.tags]
    return [Path(source.path) for source in sources if source is not None]


def load_prepared(
    config: DataConfig, target_event_types: list[str] | None, shards: Sequence[int] | None = None, persist: bool = True
) -> tuple[PreparedData, list[dict]]:
    """The prepared data and the fingerprints of the files it comes from.

    pandas engine: loaded and prepared in memory. duckdb engine: read from the prepared folder of these files and
    this config (prepared first when there is none; under torchrun by rank 0 while the others wait); `shards`
    selects the shards to read (None: all of them), the vocabularies are always whole. `persist=False` (validate)
    prepares a missing folder in a temporary place and removes it after reading.
    """
    fingerprints = [file_fingerprint(path) for path in source_paths(config)]
    if config.engine == "pandas":
        return prepare(load_data(config), config, target_event_types), fingerprints
    folder = Path(config.shards.dir) / prepared_key(config, target_event_types, fingerprints)
    if not persist and not (folder / "manifest.json").is_file():
        with tempfile.TemporaryDirectory(prefix="pipeline-prepared-") as scratch:
            folder = Path(scratch) / folder.name
            build_prepared_folder(config, target_event_types, folder, fingerprints)
            return read_prepared(folder, config, target_event_types, shards), fingerprints
    return read_prepared(prepared_folder(config, target_event_types, fingerprints, folder), config, target_event_types,
                         shards), fingerprints


def prepared_folder(
    config: DataConfig, target_event_types: list[str] | None, fingerprints: list[dict], folder: Path | None = None
) -> Path:
    """The prepared folder of these inputs and this data config (`folder`, when the caller has its name already),
    prepared now if there is none."""
    folder = folder or Path(config.shards.dir) / prepared_key(config, target_event_types, fingerprints)
    if (folder / "manifest.json").is_file():
        log.info("reading the prepared log %s", folder)
    else:
        distributed.run_on_main(lambda: build_prepared_folder(config, target_event_types, folder, fingerprints))
    return folder


def prepared_key(config: DataConfig, target_event_types: list[str] | None, fingerprints: list[dict]) -> str:
    settings = config.model_dump(mode="json")
    for key in NOT_IN_KEY:
        settings["shards"].pop(key)
    for source in ("interactions", "items", "tags"):
        if settings.get(source):
            settings[source].pop("path")  # the contents count, not where the file lies
    identity = {"format": FORMAT, "data": settings, "targets": target_event_types, "code": _preparation_code(),
                "inputs": [fingerprint["sha256"] for fingerprint in fingerprints]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def _preparation_code() -> str:
    """A digest of the modules that decide what a prepared folder holds: a changed preparation prepares again."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("load.py", "prepare_sql.py", "outofcore.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def build_prepared_folder(
    config: DataConfig, target_event_types, folder: Path, fingerprints: list[dict], prepare_into=None, engine: str = "duckdb"
) -> None:
    """Prepare into a temporary folder beside `folder` with `prepare_into(config, targets, partial) -> facts`
    (default: DuckDB, `outofcore.prepare_shards`), then publish it as `folder` by one rename."""
    if prepare_into is None:
        from pipeline.data.outofcore import prepare_shards as prepare_into

    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        log.info("preparing the log out of core (%s, %d shards) into %s", engine, config.shards.count, folder)
        facts = prepare_into(config, target_event_types, partial)
        write_json_atomic(partial / "manifest.json", {"format": FORMAT, "engine": engine, **facts, "inputs": fingerprints})
        fsync_folder(partial)
        try:
            os.replace(partial, folder)
        except OSError:
            if not (folder / "manifest.json").is_file():  # not another process's finished folder: a real failure
                raise
            shutil.rmtree(partial, ignore_errors=True)
        fsync_folder(folder.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _remove_abandoned(folder: Path) -> None:
    """Delete the partial folders of `folder` that killed preparations left (their process is gone); a live one is
    another process preparing the same log, and stays."""
    for partial in folder.parent.glob(f".{folder.name}.*.partial"):
        pid = partial.name[len(folder.name) + 2 : -len(".partial")]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)
            log.info("removed %s, left by a preparation that was stopped", partial)


def read_prepared(
    folder: Path, config: DataConfig, target_event_types: list[str] | None, shards: Sequence[int] | None = None
) -> PreparedData:
    """`PreparedData` from a prepared folder (this package's or `scripts/spark_prepare.py`'s), of `shards` only."""
    manifest = read_json_file(folder / "manifest.json", "prepared-log manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PipelineInputError(f"{folder / 'manifest.json'}: not a prepared log of format {FORMAT}")
    count = int(manifest["shards"])
    selected = range(count) if shards is None else shards
    user_ids = _ids(folder / "users.parquet", "user_id")
    kept = _ids(folder / "items.parquet", "item")
    items = load_items(config.items, config.tags)
    rows = pd.Series(np.arange(len(items)), index=items["item"].to_numpy()).reindex(kept)
    if rows.isna().any():
        raise PipelineInputError(f"{folder}: item {rows.index[rows.isna()][0]!r} is not in {config.items.path}; prepare again")
    items = items.iloc[rows.to_numpy(dtype=np.int64)].reset_index(drop=True)
    events = _read_events(folder / "events", selected, manifest)
    data = assemble(events, items, user_ids, list(manifest["event_names"]), _ids(folder / "cold.parquet", "item"),
                    config, target_event_types)
    data.shards = None if shards is None else list(shards)
    return data


def _ids(path: Path, column: str) -> np.ndarray:
    try:
        return np.array(pq.read_table(path, columns=[column]).column(column).to_pylist(), dtype=object)
    except (OSError, KeyError, ValueError) as err:
        raise PipelineInputError(f"{path}: damaged prepared log ({type(err).__name__}: {err}); delete the folder") from None


def _read_events(folder: Path, shards, manifest: dict) -> pd.DataFrame:
    dtypes = {"user": np.int64, "item": np.int64, "timestamp": np.int64}
    if manifest["ratings"]:
        dtypes["rating"] = np.float64
    if manifest["event_names"]:
        dtypes["event"] = np.int64
    if manifest["weights"]:
        dtypes["weight"] = np.float32
    frames = [pq.read_table(folder / f"shard={shard}").to_pandas() for shard in shards if (folder / f"shard={shard}").is_dir()]
    if not frames:
        return pd.DataFrame({**{name: np.zeros(0, dtype=kind) for name, kind in dtypes.items()},
                             "split": np.zeros(0, dtype=object)})
    events = pd.concat(frames, ignore_index=True)
    order = np.lexsort((events["ord"].to_numpy(), events["timestamp"].to_numpy(), events["user"].to_numpy()))
    events = events.iloc[order].reset_index(drop=True)
    out = pd.DataFrame({name: events[name].to_numpy(dtype=kind) for name, kind in dtypes.items()})
    out["split"] = events["split"].to_numpy(dtype=object)
    return out
