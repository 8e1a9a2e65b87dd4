"""Durable files: the one atomic writer (every output goes through it), pointers swapped in one rename, the one
file hasher, and readers that name the damaged file.

`write_atomic` writes a temporary file beside the target, fsyncs it and renames it over the target; on failure it
removes the temporary file, so the target is either the old complete file or the new complete file. Each write is a
fault-injection step (`pipeline.faults`): `write:<file name>`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

import pandas as pd

from pipeline import faults
from pipeline.errors import PipelineInputError, StorageError, clip

log = logging.getLogger("pipeline")

TEMPORARY_SUFFIX = ".tmp"


def point(link: Path, target: Path) -> None:
    """Make `link` lead to `target` in one rename (a relative symlink where the platform allows, else a text file)."""
    relative = os.path.relpath(target, link.parent)
    temporary = link.with_name(f".{link.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        temporary.unlink(missing_ok=True)
        os.symlink(relative, temporary, target_is_directory=True)
    except OSError:
        write_atomic(link, relative + "\n")  # no symlinks here: the pointer is a file, written like any other
        return
    _rename_into(temporary, link)
    fsync_folder(link.parent)


def follow(link: Path) -> Path | None:
    """Where a pointer made by `point` leads, or None when there is none."""
    if link.is_symlink() or link.is_dir():
        return link.resolve()
    if link.is_file():
        return (link.parent / link.read_text(encoding="utf-8").strip()).resolve()
    return None


def write_atomic(path: Path, content: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """The one writer: `content` into a temporary file beside `path`, fsynced, renamed over `path`.

    `content` may be a function writing into the open file, for files larger than should be held in memory at once.
    On any failure (a kill aside) the temporary file is removed and `path` keeps its previous content; a full disk or
    an unwritable folder is a `StorageError` naming the path.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with temporary.open("wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            faults.reached(f"write:{path.name}")
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise storage_error(path, err) from None
        raise
    return path


def link_or_copy(source: Path, path: Path) -> Path:
    """`source`'s content at `path`: a hard link where both lie on one file system (nothing copied: the files that
    link are never rewritten in place, only replaced), else a copy through `write_atomic`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.link{TEMPORARY_SUFFIX}")
    try:
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
    except OSError:
        with source.open("rb") as stored:
            return write_atomic(path, lambda handle: shutil.copyfileobj(stored, handle, 1 << 20))
    _rename_into(temporary, path)
    return path


def _rename_into(temporary: Path, path: Path) -> None:
    """A link made beside `path` renamed over it (a fault-injection step, `write:<name>`); on failure it is removed."""
    try:
        faults.reached(f"write:{path.name}")
        os.replace(temporary, path)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise storage_error(path, err) from None
        raise


def storage_error(path: Path, err: OSError) -> StorageError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{path}: disk full (no space left on device); the previous {path.name}, if any, is unchanged")
    return StorageError(f"{path}: cannot write: {err.strerror or err}")


def write_json_atomic(path: Path, payload) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, default=json_default) + "\n")


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Parquet (`.parquet`, `.pq`, any case) or CSV, through `write_atomic`."""
    if path.suffix.lower() in (".parquet", ".pq"):
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return write_atomic(path, buffer.getvalue())
    return write_atomic(path, frame.to_csv(index=False))


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files (`.<name>.<pid>.tmp`) that a killed process left in `folder`."""
    for path in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            log.info("removed %s, left by a process that was stopped while writing it", path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned_temporaries(folder: Path) -> None:
    """Delete the temporary files (`.<name>.<pid>[.link].tmp`) whose writer is gone (killed mid-write); a live
    writer's stay. For folders several processes write into (the embedding cache)."""
    for path in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        parts = path.name[: -len(TEMPORARY_SUFFIX)].split(".")
        pid = next((part for part in reversed(parts) if part.isdigit()), None)
        if pid is not None and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            log.info("removed %s, left by a process that was stopped while writing it", path)


def read_json_file(path: Path, what: str):
    """A JSON file of a run or of the nightly root; missing or damaged is bad input naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineInputError(f"{path}: missing ({what})") from None
    except (ValueError, OSError) as err:
        raise PipelineInputError(f"{path}: damaged {what}: {clip(str(err))}") from None


def file_fingerprint(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    fsync_folder(folder)


def fsync_folder(folder: Path) -> None:
    """Make renames inside `folder` durable (a power cut must not undo a publish the log reported)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
