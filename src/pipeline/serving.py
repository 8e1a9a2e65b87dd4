"""After a run: load a finished run directory (or the nightly champion) and recommend for any users' events.

The run's `catalog.json` (written by `catalog_record`, read by `read_catalog`) holds what the weights alone do not:
original item ids and the catalog's shape. Lists are ranked by the same policy as the run's evaluation
(`pipeline.ranking`), from the training statistics saved with the weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.data import PreparedData
from pipeline.data.load import clean_ids, load_interactions, parse_timestamps
from pipeline.errors import PipelineInputError, shorten
from pipeline.models import Recommender, build_model
from pipeline.models.registry import empty_catalog
from pipeline.outputs import load_model_state, read_run_config, resolve_run
from pipeline.ranking import Ranker, Rankings, rank_users
from pipeline.storage import read_json_file

log = logging.getLogger("pipeline")


def catalog_record(data: PreparedData, item_embeddings: np.ndarray | None) -> dict:
    """What `recommend` needs besides the weights: original ids and shapes."""
    return {
        "item_ids": data.item_ids[1:].tolist(),
        "category_names": data.category_names,
        "text_embedding_width": None if item_embeddings is None else int(item_embeddings.shape[1]),
    }


@dataclass
class StoredCatalog:
    item_ids: np.ndarray  # original id per item index (position 0: padding)
    category_names: list
    text_embedding_width: int | None

    @property
    def vocabulary(self) -> dict[str, list]:
        """Items and categories by index, as the warm start maps rows (`models.warm_start.transplant`)."""
        return {"items": list(self.item_ids), "categories": list(self.category_names)}


def read_catalog(run_dir: Path) -> StoredCatalog:
    path = run_dir / "catalog.json"
    record = read_json_file(path, "run catalog")
    try:
        catalog = StoredCatalog(
            np.array([None, *record["item_ids"]], dtype=object), list(record["category_names"]), record["text_embedding_width"]
        )
    except (TypeError, KeyError) as err:
        raise PipelineInputError(f"{path}: not a run catalog (missing or mistyped {err})") from None
    return catalog


def recommendation_frame(user_ids: np.ndarray, item_ids: np.ndarray, rankings: Rankings) -> pd.DataFrame:
    """Top lists in original ids: one row per (user, rank). A list stops at the user's last valid candidate, so it
    is shorter than top_k when fewer items are left to offer (a small catalog, most of it already seen)."""
    n_users, length = rankings.top_items.shape
    items = rankings.top_items.reshape(-1)
    valid = items > 0
    return pd.DataFrame(
        {
            "user_id": np.repeat(user_ids, length)[valid],
            "rank": np.tile(np.arange(1, length + 1), n_users)[valid],
            "item_id": item_ids[items[valid]],
            "score": rankings.top_scores.reshape(-1)[valid].astype(np.float32),
        }
    )


@dataclass
class LoadedRun:
    run_dir: Path | None  # None on ranks other than 0 under torchrun
    config: Config
    model: Recommender
    item_ids: np.ndarray  # original id per item index (position 0: padding)

    def recommend(self, events: pd.DataFrame, top_k: int | None = None) -> pd.DataFrame:
        """Top-K lists for the users in `events`, new users included: columns named as in the run's log (its
        `data.interactions.columns`) or user, item, timestamp. Times are read as training read them (unix seconds,
        ISO-8601 with any offset, native datetimes) and each history is ordered by them, ties in row order.

        Items unknown to the catalog are ignored; a user's own items are excluded when the run excluded seen items.
        """
        events = self._canonical(events)
        index = {item: position for position, item in enumerate(self.item_ids) if position}
        known = events["item"].map(index)
        if known.isna().any():
            log.warning("ignored %d events on items not in the run's catalog", int(known.isna().sum()))
        events = events.assign(item_index=known).dropna(subset=["item_index"])
        events = events.sort_values(["user", "timestamp"], kind="stable")
        users, histories = [], []
        for user, group in events.groupby("user", sort=False):
            users.append(user)
            histories.append(group["item_index"].to_numpy(dtype=np.int64))
        if not users:
            raise PipelineInputError("no events on known items: nothing to recommend from")
        ranker = Ranker.for_model(self.model, self.config.eval.exclude_seen)
        rankings = rank_users(
            self.model, histories, None, top_k or self.config.output.top_k, ranker, self.config.eval.user_batch_size
        )
        return recommendation_frame(np.array(users, dtype=object), self.item_ids, rankings)


    def _canonical(self, events: pd.DataFrame) -> pd.DataFrame:
        mapping = self.config.data.interactions.columns
        names = {"user": mapping.user, "item": mapping.item, "timestamp": mapping.timestamp}
        source = names if all(column in events.columns for column in names.values()) else {role: role for role in names}
        if any(column not in events.columns for column in source.values()):
            raise PipelineInputError(
                f"events: needs the run's columns {list(names.values())} or user, item, timestamp; "
                f"found {shorten(list(map(str, events.columns)))}"
            )
        where = Path("events")
        return pd.DataFrame({
            "user": clean_ids(events[source["user"]], where, source["user"]),
            "item": clean_ids(events[source["item"]], where, source["item"]),
            "timestamp": parse_timestamps(events[source["timestamp"]], where, source["timestamp"]),
        })


def load_run(run_dir: str | Path) -> LoadedRun:
    run_dir = resolve_run(run_dir)
    config = read_run_config(run_dir)
    catalog = read_catalog(run_dir)
    shape = empty_catalog(len(catalog.item_ids) - 1, len(catalog.category_names), catalog.text_embedding_width)
    model = build_model(config.model, shape)
    load_model_state(model, run_dir / "model.safetensors")
    model.eval()
    return LoadedRun(run_dir, config, model, catalog.item_ids)


def recommend(run_dir: str | Path, events_path: str | Path, top_k: int | None = None) -> pd.DataFrame:
    """Load a finished run and recommend for the users in an events file (read with the run's column mapping)."""
    loaded = load_run(run_dir)
    source = loaded.config.data.interactions
    # Only who did what when matters for a list: ratings and event types may be absent from the events file.
    columns = source.columns.model_copy(update={"rating": None, "event": None})
    interactions = source.model_copy(update={"path": str(Path(events_path).resolve()), "columns": columns, "event_types": None})
    events = load_interactions(interactions)
    return loaded.recommend(events, top_k)
