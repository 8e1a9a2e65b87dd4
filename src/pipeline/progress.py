"""Progress bars: shown on a terminal, never under CI or into a log file, unless `--progress/--no-progress` (or the
library's `progress=True/False`) says otherwise. tqdm.auto draws widgets in a notebook and plain text elsewhere."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


def bar(iterable: Iterable, show: bool, description: str, total: int | None = None, unit: str = "batch"):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, total=total, disable=not show, leave=False, unit=unit)
