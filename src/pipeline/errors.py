"""The exceptions the CLI turns into one line and an exit code, and the one helper that keeps echoed values short."""

from __future__ import annotations

# Longest echo of a user's value inside a message: enough to recognise it, never a 39 MB line.
MAX_ECHO = 80


class PipelineInputError(Exception):
    """Bad config or data (exit code 2). The message names the file, row or key path so the user can fix it."""


class StorageError(Exception):
    """An output could not be written (disk full, read-only, not a folder): exit code 1; the previous file is kept."""


def shorten(value, limit: int = MAX_ECHO) -> str:
    """`repr(value)` cut to `limit` characters, saying how long it was."""
    return clip(repr(value), limit)


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text):,} characters)"
