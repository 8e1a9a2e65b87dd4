"""The nightly root's page: the trend over nights (history.csv), the served lists' feedback, interest drift.

history.csv has one row per night, including nights retention has deleted since, so the trend and the served-lists
feedback cover every night. Interest drift is not in history.csv: it comes from each night's summary.json
(`profiles`: mean drift, users whose top category changed) and profiles.parquet (category shares), so it covers
the nights still on disk only (the last `nightly.keep_nights` and every promoted one), which the page says.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipeline.report import figures
from pipeline.report.html import Num, Raw, Section, details, escaped, figure, link, note, page, table, tag
from pipeline.report.sources import PROFILE_NIGHTS, night_interests, read_history_table
from pipeline.storage import follow

HISTORY = "history.csv"
REPORT = "report.html"
COUNTS = {"events", "new_events", "users", "new_users", "items", "new_items", "texts_encoded", "texts_from_cache", "served_users"}
SERVED = ("served_users", "served_hit_rate", "popularity_hit_rate", "served_coverage")
TREND_COLUMNS = ("new_events", "texts_encoded", "texts_from_cache", "train_seconds", "champion", "challenger", "wall_seconds")
TRAINED = ("promoted", "kept_champion")  # the statuses of a night that trained and decided (records.py)
SHOWN_ROWS = 30  # the newest rows in the trend table; all of them are folded below it
SHOWN_CATEGORIES = 8  # categories drawn on their own in the interest chart; the rest is "other"


def nightly_page(root: Path) -> str:
    """The page of a nightly root, from history.csv and the nights on disk."""
    history = read_history_table(root / HISTORY)
    champion = follow(root / "champion")
    subtitle = [escaped(_counts_line(history))]
    if champion is not None and champion.is_dir():
        subtitle.append(f"Champion: {link(f'nights/{champion.name}/{REPORT}', champion.name)} (its own report).")
    sections = [_trend_section(root, history), _served_section(history), _interest_section(root)]
    return page(f"Nightly {root.name}", subtitle, sections, "nightly")


def _counts_line(history: pd.DataFrame) -> str:
    if history.empty:
        return "No night has run yet."
    counts = history["status"].astype(str).value_counts()
    return f"{len(history)} nights in history.csv: " + ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in counts.items()) + "."


def _dates(history: pd.DataFrame) -> list[str]:
    times = pd.to_datetime(history["date"], utc=True, errors="coerce")
    return [time.strftime("%m-%d %H:%M") if not pd.isna(time) else "?" for time in times]


def _column(history: pd.DataFrame, name: str) -> list[float]:
    if name not in history.columns:
        return [math.nan] * len(history)
    return pd.to_numeric(history[name], errors="coerce").tolist()


def _decimals(name: str) -> int:
    return 0 if name in COUNTS else 2 if name.endswith("seconds") else 4


def _history_cell(history: pd.DataFrame, row: int, name: str):
    return Num(history.iloc[row].get(name), HISTORY, [row, name], _decimals(name))


def _night_link(root: Path, night) -> Raw | str:
    if not isinstance(night, str) or not night:
        return ""
    if (root / "nights" / night / REPORT).is_file():
        return Raw(link(f"nights/{night}/{REPORT}", night))
    return f"{night} (deleted)" if not (root / "nights" / night).is_dir() else night


def _date_text(value) -> str:
    """history.csv's ISO date (UTC) as a person reads it: 2026-12-03 14:48:38."""
    return "" if not isinstance(value, str) else value.replace("T", " ").removesuffix("+00:00")


def _trend_section(root: Path, history: pd.DataFrame) -> Section:
    section = Section("trend", "Trend over nights")
    if history.empty:
        return section.add(note(f"{HISTORY} holds no night yet."))
    dates, status = _dates(history), history["status"].astype(str).tolist()
    metrics = history["metric"].dropna() if "metric" in history.columns else pd.Series(dtype=object)
    metric = str(metrics.iloc[-1]) if len(metrics) else "metric"
    section.add(figure("nightly-trend", figures.nightly_trend(dates, _column(history, "champion"), _column(history, "challenger"), status, metric),
                       f"gate {metric} of champion and challenger per night",
                       f"Both models' {metric} on tonight's gate window, which decides; the decision is the challenger's "
                       "marker (up: promoted, down: champion kept); nights with nothing new have no points, failed nights "
                       "are shaded. Test numbers, reported but never decisive, are in each night's own report."))
    section.add(figure("nightly-work", figures.nightly_work(dates, _column(history, "texts_encoded"), _column(history, "texts_from_cache"),
                                                            _column(history, "train_seconds")),
                       "texts encoded and training seconds per night",
                       "Item texts encoded tonight vs taken from the embedding cache, and training seconds (right axis)."))
    columns = ["date (UTC)", "status", "training", *TREND_COLUMNS, "night", "error"]
    rows = []
    for row in range(len(history)):
        record = history.iloc[row]
        rows.append([_date_text(record.get("date")), Raw(tag(status[row])), "" if pd.isna(record.get("training")) else record.get("training"),
                     *[_history_cell(history, row, name) for name in TREND_COLUMNS], _night_link(root, record.get("night")),
                     "" if pd.isna(record.get("error")) else str(record.get("error"))[:120]])
    shown = rows[-SHOWN_ROWS:]
    section.add(table("history", columns, shown))
    if len(rows) > SHOWN_ROWS:
        section.add(details(f"all {len(rows)} rows of {HISTORY}", table("history-full", columns, rows)))
    return section


def _served_section(history: pd.DataFrame) -> Section:
    section = Section("served", "Served lists")
    measured = [row for row, value in enumerate(_column(history, "served_hit_rate")) if not math.isnan(value)] if not history.empty else []
    if not measured:
        return section.add(note("No served-lists feedback yet: it is measured from the second night on, on the events that "
                                "arrived since the lists the night before served."))
    dates = _dates(history)
    section.add(figure("served", figures.served_feedback(dates, _column(history, "served_hit_rate"), _column(history, "popularity_hit_rate"),
                                                         _column(history, "served_coverage")),
                       "served hit rate vs popularity floor, and served coverage",
                       "Each night measures the lists the night before served: the share of the users with new events and "
                       "a list whose new events include an item of that list, beside the same share for the popularity "
                       "floor's lists (the most frequent items before then); coverage is the share of the catalogue listed."))
    rows = [[_date_text(history.iloc[row].get("date")), *[_history_cell(history, row, name) for name in SERVED]] for row in measured]
    return section.add(table("served", ["date (UTC)", *SERVED], rows[-SHOWN_ROWS:]))


def _interest_section(root: Path) -> Section:
    section = Section("interests", "Interest drift")
    nights = night_interests(root)
    if not nights:
        return section.add(note("No night on disk has interest profiles yet."))
    labels = [_night_time(night.night) for night in nights]
    shares = _shares_for_chart([night.shares for night in nights])
    changed = [night.profiles.get("users_top_category_changed", math.nan) for night in nights]
    drift = [math.nan if night.profiles.get("mean_drift") is None else night.profiles["mean_drift"] for night in nights]
    section.add(figure("interests", figures.interest_drift(labels, shares, changed, drift),
                       "category shares over nights, users whose top category changed, mean drift",
                       "Left: each category's share of users' interest profiles, averaged over users (events weighted "
                       "by recency, nightly.profile_half_life_days); right: users whose top category changed since the "
                       "night before, and the mean total variation distance between a user's shares tonight and then."))
    rows = []
    for night in nights:
        source = f"nights/{night.night}/summary.json"
        top = night.profiles.get("top_categories") or {}
        first = next(iter(top), None)
        rows.append([night.night, *[Num(night.profiles.get(key), source, ["profiles", key], 0 if key != "mean_drift" else 4)
                                    for key in ("users", "new_users", "mean_drift", "users_top_category_changed")],
                     first or "", Num(top[first], source, ["profiles", "top_categories", first]) if first else "",
                     ", ".join(list(top)[1:])])
    section.add(table("interests", ["night", "users", "new users", "mean drift", "users whose top category changed",
                                    "top category", "its share", "next categories"], rows))
    return section.add(note(f"{len(nights)} nights on disk (retention deletes older nights that were never promoted), so "
                            f"this covers fewer nights than {HISTORY} may list; the category chart reads the profiles of "
                            f"the most recent {PROFILE_NIGHTS} of them."))


def _night_time(name: str) -> str:
    """A night's time from its folder name (`<name>-<UTC time>`), as the trend's dates are shown."""
    try:
        return datetime.strptime(name.rsplit("-", 1)[-1], "%Y%m%dT%H%M%S%fZ").strftime("%m-%d %H:%M")
    except ValueError:
        return name


def _shares_for_chart(shares: list[pd.Series | None]) -> dict[str, list[float]]:
    """The categories with the largest mean share across nights, each a line over nights, the rest summed as other."""
    frame = pd.DataFrame([series if series is not None else pd.Series(dtype=float) for series in shares]).reset_index(drop=True)
    if frame.empty or frame.columns.empty:
        return {}
    order = frame.mean().sort_values(ascending=False).index.tolist()
    chosen = {name: frame[name].tolist() for name in order[:SHOWN_CATEGORIES]}
    if len(order) > SHOWN_CATEGORIES:
        chosen["other"] = frame[order[SHOWN_CATEGORIES:]].sum(axis=1, min_count=1).tolist()
    return chosen
