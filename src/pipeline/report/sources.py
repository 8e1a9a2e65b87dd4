"""What a report reads: only the files a run, comparison or night has already written, so a report can be rebuilt
later for any folder on disk (nothing here needs the data, the config or the model code)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import safe_open

from pipeline.outputs import PARTIAL_MARK
from pipeline.storage import read_json_file

# Every model saves its training statistics under this name (models/base.py: Recommender.statistics): the training
# events per item index, position 0 being padding.
ITEM_COUNTS = "statistics.item_counts"
DECILES = 10
# Ranking metrics reported at every K (evaluation.py); coverage@K is shown on its own.
RANKING_FAMILIES = ("hit_rate", "ndcg", "mrr", "precision", "recall")
COLD_PREFIX = "cold_"
SHARE_PREFIX = "share:"
LINE = "_line"  # see histories_by_model  # interest profiles' category columns (recipes/nightly/profiles.py)
# The interest chart reads whole profile tables: the most recent nights only, so a long-lived root stays cheap.
PROFILE_NIGHTS = 30


def published_name(folder: Path) -> str:
    """The folder's name once published: the recipes write the report into the hidden partial folder."""
    if PARTIAL_MARK in folder.name:
        return folder.name[1:].rsplit(PARTIAL_MARK, 1)[0]
    return folder.name


def read_json(folder: Path, name: str) -> dict:
    return read_json_file(folder / name, name)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def histories_by_model(records: list[dict], label: str) -> dict[str, list[dict]]:
    """history.jsonl's epochs per model: a comparison tags each record with its `model`, a run's are all `label`'s.
    Each record also gets its line number in the file under `LINE`, so a table cell can name where it came from."""
    grouped: dict[str, list[dict]] = {}
    for line, record in enumerate(records):
        grouped.setdefault(str(record.get("model", label)), []).append({**record, LINE: line})
    return grouped


def selection_metric(protocol: dict) -> str:
    """The metric that selects epochs, from the protocol's `model_selection` ("valid ndcg@10" -> "ndcg@10")."""
    return str(protocol.get("model_selection", "valid ndcg@10")).split()[-1]


def kept_epoch(records: list[dict], key: str) -> int | None:
    """The epoch whose weights were kept: the first with the best `key` (training keeps an epoch only when it is
    strictly better than every earlier one)."""
    scored = [(record[key], -index) for index, record in enumerate(records) if isinstance(record.get(key), (int, float))]
    if not scored:
        return None
    return int(records[-max(scored)[1]]["epoch"])


def ks_of(metrics: dict) -> list[int]:
    """The K of the `<family>@K` metrics present, ascending."""
    found = {int(match.group(1)) for name in metrics for match in [re.fullmatch(r"[a-z_]+@(\d+)", name)] if match}
    return sorted(found)


def has_cold(split_metrics: dict[str, dict]) -> bool:
    return any(name.startswith(COLD_PREFIX) for metrics in split_metrics.values() for name in metrics)


@dataclass
class Deciles:
    """Items split into ten groups by training events (most first; ties in the ranker's order, lower index first)."""

    items: np.ndarray  # items per decile
    log_share: np.ndarray  # share of the training events on each decile's items
    slot_share: np.ndarray  # share of the recommended slots (list rows) holding its items
    slots: int
    listed_items: int  # distinct items across all lists
    n_items: int


def popularity_deciles(folder: Path) -> Deciles | None:
    """The lists' popularity bias from `recommendations.parquet`, the saved training statistics and `catalog.json`;
    None where the folder has no model (a comparison)."""
    weights, catalog, lists = (folder / name for name in ("model.safetensors", "catalog.json", "recommendations.parquet"))
    if not (weights.is_file() and catalog.is_file() and lists.is_file()):
        return None
    with safe_open(str(weights), framework="np") as stored:
        counts = np.asarray(stored.get_tensor(ITEM_COUNTS), dtype=np.float64)[1:]
    item_ids = pd.Index([str(item) for item in read_json(folder, "catalog.json")["item_ids"]])
    order = np.lexsort((np.arange(len(counts)), -counts))
    decile = np.empty(len(counts), dtype=np.int64)
    for group, members in enumerate(np.array_split(order, DECILES)):
        decile[members] = group
    listed = pd.read_parquet(lists, columns=["item_id"])["item_id"]
    positions = item_ids.get_indexer(listed if listed.dtype == object else listed.astype(str))
    positions = positions[positions >= 0]  # every listed item is in the catalog; a stray id is not counted
    slots = np.bincount(decile[positions], minlength=DECILES).astype(np.float64)
    events = np.bincount(decile, weights=counts, minlength=DECILES)
    return Deciles(
        items=np.bincount(decile, minlength=DECILES), log_share=events / max(events.sum(), 1.0),
        slot_share=slots / max(slots.sum(), 1.0), slots=int(slots.sum()), listed_items=int(len(np.unique(positions))),
        n_items=len(counts),
    )


def read_history_table(path: Path) -> pd.DataFrame:
    """history.csv (the nightly root's) or leaderboard.csv as written; empty when there is none yet."""
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path)


def night_folders(root: Path) -> list[Path]:
    """The nights still on disk under `root/nights`, oldest first (by the time in their name, as retention sorts)."""
    nights = root / "nights"
    if not nights.is_dir():
        return []
    found = [path for path in nights.iterdir() if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")]
    return sorted(found, key=lambda path: (path.name.rsplit("-", 1)[-1], path.name))


@dataclass
class NightInterests:
    night: str
    profiles: dict  # summary.json's `profiles`: users, new_users, top_categories, mean_drift, users_top_category_changed
    shares: pd.Series | None  # mean category share over users (profiles.parquet), for the most recent nights only


def night_interests(root: Path) -> list[NightInterests]:
    """The interest summary of each night on disk (its summary.json), with the mean category shares of the last
    `PROFILE_NIGHTS` of them read from their profiles.parquet. Nights deleted by retention are gone: the drift
    trend covers the nights kept (`nightly.keep_nights` and every promoted one)."""
    nights = [night for night in night_folders(root) if (night / "summary.json").is_file()]
    found = []
    for position, night in enumerate(nights):
        summary = read_json(night, "summary.json")
        shares = None
        if position >= len(nights) - PROFILE_NIGHTS and (night / "profiles.parquet").is_file():
            shares = _mean_shares(night / "profiles.parquet")
        found.append(NightInterests(night.name, summary.get("profiles", {}), shares))
    return found


def _mean_shares(path: Path) -> pd.Series:
    import pyarrow.parquet as pq

    columns = [name for name in pq.read_schema(path).names if name.startswith(SHARE_PREFIX)]
    shares = pd.read_parquet(path, columns=columns).mean()
    return shares.rename(index=lambda name: name.removeprefix(SHARE_PREFIX))
