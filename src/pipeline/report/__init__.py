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

from pathlib import Path

from pipeline.storage import write_atomic

REPORT = "report.html"

__all__ = ["REPORT", "write_compare_report", "write_nightly_report", "write_run_report", "write_tune_report"]


def write_run_report(run_dir: str | Path) -> Path:
    """Write `report.html` into a run folder (or a night's folder, a run folder with a decision): training curves,
    metrics at every K, coverage, the lists' popularity bias, cold-start metrics when measured. Returns its path."""
    from pipeline.report.pages import run_page

    folder = Path(run_dir)
    return write_atomic(folder / REPORT, run_page(folder))


def write_compare_report(compare_dir: str | Path) -> Path:
    """Write `report.html` into a comparison folder: the leaderboard (chart and table), curves per model, metrics at
    every K, coverage, cold-start metrics when measured, fusion weights. Returns its path."""
    from pipeline.report.pages import compare_page

    folder = Path(compare_dir)
    return write_atomic(folder / REPORT, compare_page(folder))


def write_tune_report(tune_dir: str | Path) -> Path:
    """Write `report.html` into a search folder (`pipeline tune`): the best trial beside trial 0 (the config's own
    settings), the score per trial, validation curves per trial, each searched setting against the score, the trials
    table, the best trial's metrics at every K and coverage. Returns its path."""
    from pipeline.report.tune_page import tune_page

    folder = Path(tune_dir)
    return write_atomic(folder / REPORT, tune_page(folder))


def write_nightly_report(root: str | Path) -> Path:
    """Write `report.html` at a nightly root: the trend over nights, the served lists' feedback and interest drift,
    from history.csv and the nights still on disk. Returns its path."""
    from pipeline.report.nightly_page import nightly_page

    folder = Path(root)
    return write_atomic(folder / REPORT, nightly_page(folder))
