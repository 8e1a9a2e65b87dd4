"""`report.html`: a self-contained page (inline CSS, PNG charts as data URIs, no script, no network) a person
reads after a run, a comparison, a search or a night.

Each writer reads only the files already in the folder, so a report can be rebuilt later for any folder on disk:

    from pipeline.report import write_run_report
    write_run_report("runs/latest")

The recipes write it last, before publishing (`run`, `compare`, `tune`, each night's folder: a broken report is a
bug and fails the run like any other file), and after each night at the nightly root (like history.csv, a report of
the nights: a failure there is logged, never a failed night). The page's tables name the file and key each number was
read from (see `pipeline.report.html`). matplotlib is imported on the first report, not with the package.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path

from pipeline.storage import write_atomic

REPORT = "report.html"

__all__ = ["REPORT", "write_compare_report", "write_nightly_report", "write_run_report", "write_tune_report"]


@contextmanager
def _collector_paused():
    """Drawing a page allocates some 200,000 short-lived matplotlib objects. In a process that already holds a large
    heap (torch, the model, the log), each cyclic collection they trigger walks that heap: a third of the drawing
    time, measured on a run's page. The collector is paused while drawing, and the page's garbage (all of it in the
    youngest generation) collected once after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.collect(0)


def write_run_report(run_dir: str | Path) -> Path:
    """Write `report.html` into a run folder (or a night's folder, a run folder with a decision): training curves,
    metrics at every K, coverage, the lists' popularity bias, cold-start metrics when measured. Returns its path."""
    from pipeline.report.pages import run_page

    folder = Path(run_dir)
    with _collector_paused():
        page = run_page(folder)
    return write_atomic(folder / REPORT, page)


def write_compare_report(compare_dir: str | Path) -> Path:
    """Write `report.html` into a comparison folder: the leaderboard (chart and table), curves per model, metrics at
    every K, coverage, cold-start metrics when measured, fusion weights. Returns its path."""
    from pipeline.report.pages import compare_page

    folder = Path(compare_dir)
    with _collector_paused():
        page = compare_page(folder)
    return write_atomic(folder / REPORT, page)


def write_tune_report(tune_dir: str | Path) -> Path:
    """Write `report.html` into a search folder (`pipeline tune`): the best trial beside trial 0 (the config's own
    settings), the score per trial, validation curves per trial, each searched setting against the score, the trials
    table, the best trial's metrics at every K and coverage. Returns its path."""
    from pipeline.report.tune_page import tune_page

    folder = Path(tune_dir)
    with _collector_paused():
        page = tune_page(folder)
    return write_atomic(folder / REPORT, page)


def write_nightly_report(root: str | Path) -> Path:
    """Write `report.html` at a nightly root: the trend over nights, the served lists' feedback and interest drift,
    from history.csv and the nights still on disk. Returns its path."""
    from pipeline.report.nightly_page import nightly_page

    folder = Path(root)
    with _collector_paused():
        page = nightly_page(folder)
    return write_atomic(folder / REPORT, page)
