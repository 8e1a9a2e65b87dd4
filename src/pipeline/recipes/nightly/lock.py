"""One night at a time: an exclusive `flock` on a lock file that records who holds it.

The kernel releases a `flock` when its process dies, so a killed night can never wedge the schedule; the pid written
into the file only serves the messages (who is running, whose stale lock is being taken over).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from pipeline.outputs import process_alive, utc_now

log = logging.getLogger("pipeline")


class LockHeld(Exception):
    """Another night holds the lock."""


class NightLock:
    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def __enter__(self) -> NightLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self.path)
            handle.close()
            raise LockHeld(
                f"another night is running (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                f"since {holder.get('since', '?')}); lock: {self.path}"
            ) from None
        previous = _read_holder(self.path)
        if previous:
            pid = previous.get("pid")
            reused = isinstance(pid, int) and pid > 0 and process_alive(pid)
            alive = "alive but not holding the lock: pid reused" if reused else "no longer running"
            log.warning(
                "taking over a stale lock from pid %s (%s), started %s: that night did not finish",
                previous.get("pid"), alive, previous.get("since"),
            )
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        # Empty the file before unlocking: a non-empty unlocked lock file means its holder died.
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.flush()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def _read_holder(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"pid": "unreadable"}
