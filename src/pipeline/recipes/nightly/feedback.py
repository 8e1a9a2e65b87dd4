"""How the lists served last night did: the events that arrived since, against those lists.

Last night's run directory holds the lists it served (`recommendations.parquet`: every user's top K) and the
protocol they were ranked under. Tonight's log holds what the users did next. The served hit rate@K is the share of
the users with new events (of the evaluation's target types, where configured) and a served list whose new events
include an item of that list; the served coverage is the share of last night's catalogue that appears in some
list. The same two numbers for the popularity floor's lists (last night's log's most frequent items, with the same
seen-items policy) say whether the model's lists beat the simplest lists an operator could have served.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.data import PreparedData
from pipeline.errors import clip
from pipeline.ranking import popularity_order
from pipeline.storage import read_json_file

log = logging.getLogger("pipeline")


def served_feedback(previous_night: Path | None, data: PreparedData, watermark: int | None) -> dict | None:
    """The served hit rate and coverage of `previous_night`'s lists over tonight's events after `watermark`, beside
    the popularity floor's; None on the first night or when those lists cannot be read (a warning says why)."""
    if previous_night is None or watermark is None:
        return None
    try:
        lists = pd.read_parquet(previous_night / "recommendations.parquet", columns=["user_id", "item_id"])
        protocol = read_json_file(previous_night / "metrics.json", "night metrics")["protocol"]
    except Exception as err:  # pyarrow's own error types for a damaged file; a missing file or key
        log.warning("served lists of %s unreadable (%s): no served hit rate tonight", previous_night.name, clip(str(err)))
        return None
    events = data.events
    if data.target_event_types:
        codes = [data.event_names.index(name) + 1 for name in data.target_event_types if name in data.event_names]
        asked = events["event"].isin(codes)
    else:
        asked = pd.Series(True, index=events.index)
    after = events["timestamp"] > watermark
    arrived = events.loc[after & asked, ["user", "item"]]
    new = pd.DataFrame({
        "user_id": data.user_ids[arrived["user"].to_numpy()].astype(str),
        "item_id": data.item_ids[arrived["item"].to_numpy()].astype(str),
    }).drop_duplicates()
    lists = lists.astype(str)
    k = int(lists.groupby("user_id").size().max()) if len(lists) else 0
    served_users = set(lists["user_id"])
    new = new[new["user_id"].isin(served_users)]
    users = new["user_id"].unique()
    popular = _popularity_lists(data, events[~after], users, k, bool(protocol.get("exclude_seen", True)))
    n_items = int(protocol.get("n_items", data.n_items))
    return {
        "night": previous_night.name, "k": k,
        "users_with_new_events": int(arrived["user"].nunique()), "users_served": len(users),
        "hit_rate": _hit_rate(lists, new, users), "coverage": lists["item_id"].nunique() / max(n_items, 1),
        "popularity_hit_rate": _hit_rate(popular, new, users),
        "popularity_coverage": popular["item_id"].nunique() / max(n_items, 1),
    }


def _hit_rate(lists: pd.DataFrame, new: pd.DataFrame, users: np.ndarray) -> float | None:
    if not len(users):
        return None
    hits = lists.merge(new, on=["user_id", "item_id"])["user_id"].nunique()
    return hits / len(users)


def _popularity_lists(data: PreparedData, before: pd.DataFrame, users: np.ndarray, k: int, exclude_seen: bool) -> pd.DataFrame:
    """Each of `users`' top k of the log before the watermark by event count, without their own items if seen items
    were excluded from the served lists."""
    counts = torch.from_numpy(np.bincount(before["item"].to_numpy(), minlength=data.n_items + 1))
    counts[0] = 0  # padding
    # Only the measured users' own items matter (users with new events are in tonight's log: each has a code).
    codes = pd.Series(np.arange(len(data.user_ids)), index=data.user_ids.astype(str)).reindex(users).astype(np.int64)
    measured = before[before["user"].isin(codes)] if exclude_seen else before.iloc[:0]
    seen = measured.groupby("user")["item"].agg(set)
    longest = max(map(len, seen), default=0)
    order = popularity_order(counts)[: k + longest].numpy()
    order = order[counts.numpy()[order] > 0]
    rows = []
    for user, code in codes.items():
        own = seen.get(code, set())
        top = [item for item in order if item not in own][:k]
        rows.extend((user, item) for item in top)
    frame = pd.DataFrame(rows, columns=["user_id", "item"])
    return pd.DataFrame({"user_id": frame["user_id"], "item_id": data.item_ids[frame["item"].to_numpy(dtype=np.int64)].astype(str)})


def served_message(served: dict) -> str:
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"night {served['night']}'s top {served['k']}: served hit rate {share(served['hit_rate'])} over "
        f"{served['users_served']:,} users with new events and a list (popularity's lists: {share(served['popularity_hit_rate'])}); "
        f"coverage {served['coverage']:.3f} (popularity: {served['popularity_coverage']:.3f})"
    )
