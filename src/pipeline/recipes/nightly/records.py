"""What outlives a night under `nightly.root`: the champion link, state.json, history.csv, retention, the summary.

The champion link is the truth about which night serves: state.json records the watermark, the input fingerprints
and the promoted nights, and is reconciled with the link on reading. history.csv is a report: damaged, it is moved
aside and restarted. Retention never deletes the night the link leads to, whatever state.json says.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from pipeline import faults
from pipeline.errors import PipelineInputError, StorageError, clip
from pipeline.outputs import utc_now
from pipeline.recipes.nightly.feedback import served_message
from pipeline.storage import follow, read_json_file, write_table

log = logging.getLogger("pipeline")

PROMOTED, KEPT_CHAMPION = "promoted", "kept_champion"

CHAMPION = "champion"
DELETING = ".deleting-"


STATE_KEYS = {"night": str, "finished_at": str, "watermark": int, "inputs": dict, "config_sha256": str, "promoted": list}


def read_state(root: Path) -> dict:
    """state.json, checked, with the champion link's night added to `promoted` if a kill kept it from being recorded."""
    path = root / "state.json"
    if not path.exists():
        return {}
    advice = "move it away to start over (the champion is kept)"
    try:
        state = read_json_file(path, "nightly state")
    except PipelineInputError as err:
        raise PipelineInputError(f"{err}; {advice}") from None
    wrong = [key for key, kind in STATE_KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(key), kind)]
    if wrong:
        raise PipelineInputError(f"{path}: not a nightly state (missing or mistyped: {', '.join(wrong)}); {advice}")
    champion = follow(root / CHAMPION)
    if champion is not None and champion.is_dir() and champion.name not in state["promoted"]:
        log.warning("state.json did not record the promotion of %s (the last night was stopped after moving the champion link); recorded now", champion.name)
        state["promoted"].append(champion.name)
    return state


HISTORY_COLUMNS = [
    "night", "date", "status", "events", "new_events", "users", "new_users", "items", "new_items", "texts_encoded",
    "texts_from_cache", "training", "train_seconds", "metric", "champion", "challenger", "served_users",
    "served_hit_rate", "popularity_hit_rate", "served_coverage", "wall_seconds", "error",
]


def history_row(summary: dict) -> dict:
    data, decision, served = summary["data"], summary["decision"], summary.get("served")
    return {
        "night": summary["night"], "date": summary["date"], "status": summary["status"],
        **{key: data[key] for key in ("events", "new_events", "users", "new_users", "items", "new_items")},
        "texts_encoded": summary["texts"]["encoded"], "texts_from_cache": summary["texts"]["from_cache"],
        "training": summary["training"]["mode"], "train_seconds": summary["training"]["seconds"],
        "metric": decision["metric"], "champion": decision["champion"], "challenger": decision["challenger"],
        **({"served_users": served["users_served"], "served_hit_rate": served["hit_rate"],
            "popularity_hit_rate": served["popularity_hit_rate"], "served_coverage": served["coverage"]} if served else {}),
        "wall_seconds": summary["timings_seconds"]["total"],
    }


def append_history(root: Path, row: dict) -> None:
    """Rewrite history.csv with one more row (through the atomic writer: a crash never leaves half a table).

    The history is a report, not state: a damaged one is moved aside with a warning and a new one started, and a
    failure to write it is logged, never turned into a failed night.
    """
    path = root / "history.csv"
    try:
        root.mkdir(parents=True, exist_ok=True)
        history = _read_history(path)
        row_frame = pd.DataFrame([{column: row.get(column) for column in HISTORY_COLUMNS}])
        write_table(pd.concat([history, row_frame], ignore_index=True) if len(history) else row_frame, path)
    except (OSError, StorageError) as err:
        log.error("%s: history row not written: %s", path, err)


def _read_history(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    try:
        history = pd.read_csv(path, dtype=str, keep_default_na=False)
        unexpected = [column for column in history.columns if column not in HISTORY_COLUMNS]
        if unexpected or "status" not in history.columns:
            raise ValueError(f"unexpected columns {unexpected[:5]}")
        return history
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        aside = path.with_name(f"{path.name}.damaged-{utc_now().replace(':', '')}")
        os.replace(path, aside)
        log.warning("%s: damaged (%s); moved to %s and started a new history", path, clip(str(err)), aside.name)
        return pd.DataFrame(columns=HISTORY_COLUMNS)


def remove_old_nights(root: Path, keep: int, promoted: set[str]) -> None:
    """Delete nights older than the last `keep`, except promoted ones and, whatever state.json says, the champion's."""
    champion = follow(root / CHAMPION)
    protected = promoted | ({champion.name} if champion is not None else set())
    nights = root / "nights"
    finished = [path for path in nights.iterdir() if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")]
    # Oldest first by the time in the name (`<name>-<UTC time>`): a renamed config must not make tonight look old.
    finished.sort(key=lambda path: (path.name.rsplit("-", 1)[-1], path.name))
    # A night is renamed out of sight before it is deleted, so a kill during the deletion never leaves half a night
    # under its name; the next retention finishes what a killed one started.
    doomed = [folder for folder in nights.glob(f"{DELETING}*") if folder.is_dir()]
    for night_dir in finished[:-keep]:
        if night_dir.name not in protected:
            faults.reached("nightly:retention")
            hidden = night_dir.with_name(DELETING + night_dir.name)
            try:
                os.rename(night_dir, hidden)
            except OSError as err:
                log.error("retention: cannot delete %s: %s", night_dir, err)
                continue
            doomed.append(hidden)
            log.info("retention: deleted %s (older than the last %d nights, never promoted)", night_dir.name, keep)
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)


def summary_markdown(summary: dict) -> str:
    data, texts, training, decision, profiles = (
        summary["data"], summary["texts"], summary["training"], summary["decision"], summary["profiles"]
    )
    status = {PROMOTED: "challenger promoted", KEPT_CHAMPION: "champion kept"}[summary["status"]]
    top = ", ".join(f"{name} {share:.0%}" for name, share in profiles["top_categories"].items())
    drift = "n/a (first profiles)" if profiles["mean_drift"] is None else f"{profiles['mean_drift']:.3f}"
    lines = [
        f"# Night {summary['night']}: {status}",
        "",
        f"- **Data**: {data['events']:,} events ({data['new_events']:,} new), {data['users']:,} users ({data['new_users']:,} new), "
        f"{data['items']:,} items ({data['new_items']:,} new); newest event {data['newest_event']}",
        f"- **Served lists**: {served_message(summary['served']) if summary.get('served') else 'n/a (no lists served before tonight)'}",
        f"- **Texts**: {texts['encoded']:,} encoded, {texts['from_cache']:,} from the cache",
        f"- **Training**: {training['mode']} ({training['reason']}), {training['epochs']} epochs, {training['seconds']:.1f} s"
        + _epoch_windows(training.get("epoch_windows")),
        f"- **Decision**: {decision['message']}",
        f"- **Deciding window**: {decision['window']}, the {decision['window_description']}",
        f"- **Interests**: {profiles['users']:,} profiles; top categories {top}; mean drift since last night {drift}; "
        f"{profiles['users_top_category_changed']:,} users' top category changed",
        f"- **Wall time**: {sum(v for k, v in summary['timings_seconds'].items() if k != 'total'):.1f} s in stages",
        "",
    ]
    return "\n".join(lines)




def _epoch_windows(counts: dict | None) -> str:
    if not counts:
        return ""
    return (f"; each epoch {counts['new_windows']:,} windows with new events + {counts['replayed_windows']:,} replayed "
            f"of {counts['windows'] - counts['new_windows']:,} others")
