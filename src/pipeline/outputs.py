"""The run directory: written under a hidden temporary name, renamed when complete, then `latest` is moved.

A run that fails or is killed leaves at most a `.partial` folder; no directory ever appears under a final name
half-written, and `latest` only ever points at finished runs. A partial folder holding an epoch checkpoint can be
resumed (`RunDirectory(..., partial=...)`); one without is removed by the next run once its owner process is gone.
Every file is written by `write_atomic` (temporary file, fsync, rename; the temporary file is removed on failure),
and publishing removes temporary files a killed process left, so a published folder holds only the files below.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from pipeline import faults
from pipeline.config import Config, load_config
from pipeline.distributed import gather_rows
from pipeline.embedding_cache import npy_writer
from pipeline.encoding import resolve_device
from pipeline.errors import PipelineInputError, clip
from pipeline.storage import (
    file_fingerprint,
    follow,
    fsync_folder,
    fsync_tree,
    json_default,
    link_or_copy,
    point,
    read_json_file,
    remove_temporaries,
    write_atomic,
)

log = logging.getLogger("pipeline")

LATEST = "latest"
# Where `compare` points: its folders hold no model, so `latest` (what `load_run` and `recommend` follow) never leads there.
LATEST_COMPARE = "latest-compare"
# Where `tune` points (its folders hold no model either).
LATEST_TUNE = "latest-tune"
PARTIAL_MARK = ".partial-"
CHECKPOINT = "checkpoint.pt"
# A tune search's trials (Optuna's SQLite store), kept in the published folder too.
TRIALS = "trials.db"
# What a stopped run's folder is kept (and can be resumed) for: an epoch checkpoint, or a search's trials.
RESUMABLE_STATE = (CHECKPOINT, TRIALS)
# A run's folder name: <name>-<UTC time to the microsecond>.
RUN_TIME_PATTERN = r"-\d{8}T\d{12}Z"

# What a published folder holds, exactly (tests list the folders against these).
RUN_FILES = frozenset({
    "config.resolved.yaml", "inputs.json", "run.log", "model.safetensors", "catalog.json", "metrics.json",
    "history.jsonl", "recommendations.parquet", "manifest.json", "report.html",
})  # + recommendations.csv with output.write_csv, + EMBEDDING_FILES with output.embeddings, + ITEM_TABLE with text
EMBEDDING_FILES = ("item_embeddings.parquet", "user_embeddings.parquet")
# The item text table of a model that reads texts, kept beside (not inside) the weights.
ITEM_TABLE = "item_text_vectors.npy"
COMPARE_FILES = frozenset({
    "config.resolved.yaml", "inputs.json", "run.log", "metrics.json", "history.jsonl", "leaderboard.csv",
    "leaderboard.md", "manifest.json", "report.html",
})
TUNE_FILES = frozenset({
    "config.resolved.yaml", "inputs.json", "run.log", "metrics.json", "history.jsonl", TRIALS, "trials.csv",
    "best_config.yaml", "manifest.json", "report.html",
})
NIGHT_FILES = (RUN_FILES | {"profiles.parquet", "summary.json", "summary.md"})


def check_output_root(root: str | Path, key: str = "output.root") -> None:
    """Refuse an output root that cannot hold run folders, before any work (and without creating it)."""
    root = Path(root)
    existing = next(folder for folder in (root, *root.parents) if folder.exists())
    if not existing.is_dir():
        raise PipelineInputError(f"{key}: cannot write to {root}: Not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PipelineInputError(f"{key}: cannot write to {root}: Permission denied")


class RunDirectory:
    """Collects a run's files in a temporary folder; `commit()` publishes it atomically."""

    def __init__(self, root: str | Path, name: str, partial: Path | None = None, pointer: str = LATEST):
        self.root = Path(root)
        self.pointer = pointer
        self.resumed = partial is not None
        self.scratch = False
        check_output_root(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_partials(self.root)
            if partial is None:
                final_name = f"{name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}"
            else:
                final_name = partial.name[1:].rsplit(PARTIAL_MARK, 1)[0]
            self.final_path = self.root / final_name
            self.path = self.root / f".{final_name}{PARTIAL_MARK}{owner_mark()}"
            if partial is None:
                self.path.mkdir()
            else:
                os.rename(partial, self.path)  # the folder now belongs to this process
                remove_temporaries(self.path)
        except OSError as err:
            raise PipelineInputError(f"output.root: cannot write to {self.root}: {err.strerror}") from None

    @classmethod
    def scratch_space(cls) -> RunDirectory:
        """For a process that must not publish (a rank other than 0 under torchrun): a private temporary folder that
        takes the same writes and is deleted at commit."""
        directory = cls.__new__(cls)
        directory.root = directory.path = Path(tempfile.mkdtemp(prefix="pipeline-rank-"))
        directory.final_path, directory.resumed, directory.scratch = None, False, True
        return directory

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        return write_atomic(self.file(name), text)

    def write_json(self, name: str, payload) -> Path:
        return self.write_text(name, json.dumps(payload, indent=2, sort_keys=False, default=json_default) + "\n")

    def write_jsonl(self, name: str, rows: list[dict]) -> Path:
        return self.write_text(name, "".join(json.dumps(row, default=json_default) + "\n" for row in rows))

    def commit(self) -> Path | None:
        if self.scratch:
            shutil.rmtree(self.path, ignore_errors=True)
            return None
        # The epoch checkpoint (optimizer state included) only serves resuming; the finished run has its weights.
        self.file(CHECKPOINT).unlink(missing_ok=True)
        remove_temporaries(self.path)
        fsync_tree(self.path)
        faults.reached("publish:tree-synced")
        os.rename(self.path, self.final_path)
        fsync_folder(self.root)
        faults.reached("publish:renamed")
        point(self.root / self.pointer, self.final_path)
        return self.final_path

    def abort(self) -> None:
        """Remove the partial folder, unless it holds an epoch checkpoint or a search's trials to resume from."""
        if _resumable(self.path) and not self.scratch:
            log.warning("kept %s: resume it with --resume %s", self.path, self.path)
            return
        shutil.rmtree(self.path, ignore_errors=True)


def find_resumable(root: str | Path, name: str, partial: str | Path) -> Path:
    """The partial folder of a stopped or killed run of `name`; `partial` may be "auto": the newest one."""
    root = Path(root)
    if str(partial) == "auto":
        candidates = sorted(resumable_partials(root, name), key=lambda folder: folder.name)
        if not candidates:
            raise PipelineInputError(f"--resume auto: no stopped run of {name!r} with a checkpoint under {root}")
        return candidates[-1]
    folder = Path(partial).expanduser().resolve()
    if folder not in resumable_partials(root, name):
        owner = _partial_owner(folder)
        if folder.is_dir() and owner is not None and process_alive(*owner):
            raise PipelineInputError(f"--resume: {folder} belongs to a run that is still running (pid {owner[0]})")
        raise PipelineInputError(f"--resume: {folder} is not a stopped run of {name!r} with a checkpoint under {root.resolve()}")
    return folder


def resolve_run(path: str | Path) -> Path:
    """A finished run folder, or an output root / `latest` pointer that leads to one."""
    path = Path(path).expanduser()
    if (path / LATEST).exists() and not (path / "metrics.json").exists():
        path = path / LATEST
    path = follow(path) or path.resolve()
    if PARTIAL_MARK in path.name:
        raise PipelineInputError(f"{path}: an unpublished run folder (stopped or still running), not a finished run")
    for name in ("config.resolved.yaml", "catalog.json", "model.safetensors", "manifest.json"):
        if not (path / name).is_file():
            raise PipelineInputError(f"{path}: not a finished run directory (no {name})")
    return path


def read_run_config(run_dir: Path) -> Config:
    """A finished run's config. Its manifest records the file's sha256, so a truncated or edited file is refused
    instead of read with defaults filling in for the missing keys (manifests without the digest: read as it is)."""
    path = run_dir / "config.resolved.yaml"
    manifest_info = read_json_file(run_dir / "manifest.json", "run manifest")
    expected = manifest_info.get("config_sha256") if isinstance(manifest_info, dict) else None
    if expected is not None and file_fingerprint(path)["sha256"] != expected:
        raise PipelineInputError(f"{path}: damaged (its sha256 differs from the one recorded in manifest.json)")
    return load_config(path, check_paths=False, stored=True)


def save_model(model: torch.nn.Module, path: Path) -> Path:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    return write_atomic(path, safetensors_bytes(tensors))


def save_item_table(table: np.ndarray, path: Path) -> Path:
    """A memory-mapped table (the embedding cache's file) as a hard link to it where possible, else its bytes."""
    source = getattr(table, "filename", None)
    if source is not None:
        return link_or_copy(Path(source), path)
    return write_atomic(path, npy_writer(table.shape, table.dtype, [table]))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise PipelineInputError(f"{path}: missing (model weights)") from None
    except Exception as err:  # safetensors raises its own error type for a damaged header or payload
        raise PipelineInputError(f"{path}: damaged model weights: {clip(str(err))}") from None


def load_model_state(model: torch.nn.Module, path: Path) -> None:
    state = read_weights(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise PipelineInputError(f"{path}: checkpoint does not fit this model: {first_line}") from None



def environment_manifest(device: str) -> dict:
    packages = {}
    for name in ("interest-pipeline", "torch", "transformers", "tokenizers", "pandas", "numpy", "scikit-learn", "pyarrow", "pydantic", "safetensors"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "device": device,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def markdown_table(frame: pd.DataFrame) -> str:
    """A Markdown table of `frame` (floats with 4 decimals), without needing the `tabulate` package."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(f"{value:.4f}" if isinstance(value, float) else str(value) for value in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])




def resumable_partials(root: Path, name: str) -> list[Path]:
    """Partial folders of exactly `name` whose run has ended (process gone, or this one) and which hold a checkpoint
    (or a search's trials)."""
    pattern = re.compile(rf"\.{re.escape(name)}{RUN_TIME_PATTERN}{re.escape(PARTIAL_MARK)}")
    folders = []
    for folder in root.resolve().glob(f".{name}-*{PARTIAL_MARK}*"):
        owner = _partial_owner(folder)
        if not pattern.match(folder.name) or owner is None:
            continue
        ended = owner[0] == os.getpid() or not process_alive(*owner)
        if ended and _resumable(folder):
            folders.append(folder)
    return folders


def owner_mark() -> str:
    """`<pid>-<start time>` of this process: a pid alone is reused by the system after its process ends."""
    return f"{os.getpid()}-{process_start_time(os.getpid()) or 0}"


def _partial_owner(folder: Path) -> tuple[int, int | None] | None:
    """(pid, start time or None) from a partial folder's name."""
    mark = folder.name.rsplit(PARTIAL_MARK, 1)[-1]
    pid, _, started = mark.partition("-")
    if not pid.isascii() or not pid.isdigit():
        return None
    return int(pid), int(started) if started.isascii() and started.isdigit() else None


def _resumable(folder: Path) -> bool:
    return any((folder / name).is_file() for name in RESUMABLE_STATE)


def _remove_abandoned_partials(root: Path) -> None:
    """Partial folders of dead processes, except those that can still be resumed."""
    for folder in root.glob(f".*{PARTIAL_MARK}*"):
        owner = _partial_owner(folder)
        if owner is not None and not process_alive(*owner) and not _resumable(folder):
            shutil.rmtree(folder, ignore_errors=True)


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None where that is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether process `pid` runs, and, given its start time, is still the same process (pids are reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started:
        now = process_start_time(pid)
        return now is None or now == started
    return True



def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def manifest(config, config_path: Path, inputs: list[dict], data, encoding, timings: dict, started_at: str) -> dict:
    """`inputs`: the input files' fingerprints, as hashed when the run loaded them."""
    split_counts: dict[str, int] = {}
    for counts in gather_rows([data.events["split"].value_counts().to_dict()], data.rank_local):
        for split, count in counts.items():  # rank shards: every rank counts its own users' events
            split_counts[split] = split_counts.get(split, 0) + int(count)
    return {
        "name": config.name,
        "config_sha256": file_fingerprint(config_path)["sha256"],
        "started_at": started_at,
        "finished_at": utc_now(),
        "data": {
            "files": inputs,
            "events": sum(split_counts.values()),
            "events_per_split": {key: int(value) for key, value in split_counts.items()},
            "users": data.n_users,
            "items": data.n_items,
            "categories": len(data.category_names),
            **({} if not data.rank_local else {"ranks": gather_rows([{
                "shards": data.shards, "users": int(data.events["user"].nunique()), "events": int(len(data.events)),
            }], True)}),
        },
        "encoding": encoding.to_dict() if encoding else None,
        "timings_seconds": timings,
        "environment": environment_manifest(str(resolve_device(config.train.device))),
    }
