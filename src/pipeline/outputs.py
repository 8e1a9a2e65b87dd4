"""The run directory: written under a hidden temporary name, renamed when complete, then `latest` is moved.

A run that fails or is killed leaves at most a `.partial` folder; no directory ever appears under a final name
half-written, and `latest` only ever points at finished runs. A partial folder holding an epoch checkpoint can be
resumed (`RunDirectory.resume`); one without is removed by the next run once its owner process is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineInputError

log = logging.getLogger("pipeline")

LATEST = "latest"
PARTIAL_MARK = ".partial-"
CHECKPOINT = "checkpoint.pt"


class RunDirectory:
    """Collects a run's files in a temporary folder; `commit()` publishes it atomically."""

    def __init__(self, root: str | Path, name: str, partial: Path | None = None):
        self.root = Path(root)
        self.resumed = partial is not None
        self.scratch = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_partials(self.root)
            if partial is None:
                final_name = f"{name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}"
            else:
                final_name = partial.name[1:].rsplit(PARTIAL_MARK, 1)[0]
            self.final_path = self.root / final_name
            self.path = self.root / f".{final_name}{PARTIAL_MARK}{os.getpid()}"
            if partial is None:
                self.path.mkdir()
            else:
                os.rename(partial, self.path)  # the folder now belongs to this process
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
        path = self.file(name)
        path.write_text(text, encoding="utf-8")
        return path

    def write_json(self, name: str, payload) -> Path:
        return self.write_text(name, json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")

    def write_jsonl(self, name: str, rows: list[dict]) -> Path:
        return self.write_text(name, "".join(json.dumps(row, default=_json_default) + "\n" for row in rows))

    def commit(self) -> Path | None:
        if self.scratch:
            shutil.rmtree(self.path, ignore_errors=True)
            return None
        # The epoch checkpoint (optimizer state included) only serves resuming; the finished run has its weights.
        self.file(CHECKPOINT).unlink(missing_ok=True)
        _fsync_tree(self.path)
        os.rename(self.path, self.final_path)
        point_latest(self.root, self.final_path)
        return self.final_path

    def abort(self) -> None:
        """Remove the partial folder, unless it holds an epoch checkpoint to resume from."""
        if self.file(CHECKPOINT).is_file() and not self.scratch:
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
        if folder.is_dir() and _partial_owner(folder) is not None and process_alive(_partial_owner(folder)):
            raise PipelineInputError(f"--resume: {folder} belongs to a run that is still running (pid {_partial_owner(folder)})")
        raise PipelineInputError(f"--resume: {folder} is not a stopped run of {name!r} with a checkpoint under {root.resolve()}")
    return folder


def point_latest(root: Path, target: Path) -> None:
    """Move `root/latest` to `target` in one rename."""
    point(root / LATEST, target)


def point(link: Path, target: Path) -> None:
    """Make `link` lead to `target` in one rename (a relative symlink where the platform allows, else a text file)."""
    relative = os.path.relpath(target, link.parent)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.symlink(relative, temporary, target_is_directory=True)
    except OSError:
        temporary.write_text(relative + "\n", encoding="utf-8")
    os.replace(temporary, link)


def follow(link: Path) -> Path | None:
    """Where a pointer made by `point` leads, or None when there is none."""
    if link.is_symlink() or link.is_dir():
        return link.resolve()
    if link.is_file():
        return (link.parent / link.read_text(encoding="utf-8").strip()).resolve()
    return None


def write_json_atomic(path: Path, payload) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(payload, indent=2, default=_json_default) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def resolve_run(path: str | Path) -> Path:
    """A run folder, or an output root / `latest` pointer that leads to one."""
    path = Path(path).expanduser()
    if (path / LATEST).exists() and not (path / "metrics.json").exists():
        path = path / LATEST
    path = follow(path) or path.resolve()
    if not (path / "config.resolved.yaml").is_file():
        raise PipelineInputError(f"{path}: not a finished run directory (no config.resolved.yaml)")
    return path


def save_model(model: torch.nn.Module, path: Path) -> None:
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}, str(path))


def load_model_state(model: torch.nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
        model.load_state_dict(state)
    except (RuntimeError, OSError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise PipelineInputError(f"{path}: checkpoint does not fit this model: {first_line}") from None


def file_fingerprint(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


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


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Parquet or CSV by suffix, written to a temporary name and renamed into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".parquet":
        frame.to_parquet(temporary, index=False)
    else:
        frame.to_csv(temporary, index=False)
    os.replace(temporary, path)


def markdown_table(frame: pd.DataFrame) -> str:
    """A Markdown table of `frame` (floats with 4 decimals), without needing the `tabulate` package."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(f"{value:.4f}" if isinstance(value, float) else str(value) for value in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def resumable_partials(root: Path, name: str) -> list[Path]:
    """Partial folders of `name` whose run has ended (its process is gone, or it is this one) and which hold a checkpoint."""
    folders = []
    for folder in root.resolve().glob(f".{name}-*{PARTIAL_MARK}*"):
        owner = _partial_owner(folder)
        ended = owner is not None and (owner == os.getpid() or not process_alive(owner))
        if ended and (folder / CHECKPOINT).is_file():
            folders.append(folder)
    return folders


def _partial_owner(folder: Path) -> int | None:
    owner = folder.name.rsplit(PARTIAL_MARK, 1)[-1]
    return int(owner) if owner.isdigit() else None


def _remove_abandoned_partials(root: Path) -> None:
    """Partial folders of dead processes, except those that can still be resumed."""
    for folder in root.glob(f".*{PARTIAL_MARK}*"):
        owner = _partial_owner(folder)
        if owner is not None and not process_alive(owner) and not (folder / CHECKPOINT).is_file():
            shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 3)
