"""After a run: load a finished run directory (or the nightly champion) and recommend for any users' events.

The run's `catalog.json` (written by `catalog_record`, read by `read_catalog`) holds what the weights alone do not:
original item ids and the catalog's shape. Lists are ranked by the same policy as the run's evaluation
(`pipeline.ranking`), from the training statistics saved with the weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.api import list_policy
from pipeline.config import Config
from pipeline.data import PreparedData
from pipeline.data.features import ItemFeatures
from pipeline.data.load import clean_ids, load_interactions, parse_timestamps, read_table
from pipeline.data.prepared import ALL_EVENTS, TEST
from pipeline.distributed import gather_rows
from pipeline.embedding_cache import map_npy
from pipeline.errors import PipelineInputError, clip, shorten
from pipeline.models import Catalog, Recommender, build_model
from pipeline.models.registry import empty_catalog
from pipeline.outputs import (
    ITEM_TABLE,
    RunDirectory,
    load_model_state,
    read_run_config,
    resolve_run,
    save_item_table,
    save_model,
)
from pipeline.ranking import Ranker, Rankings
from pipeline.retrieval import ListMaker, retrieval_vectors_of
from pipeline.storage import read_json_file

log = logging.getLogger("pipeline")


def catalog_record(data: PreparedData, item_embeddings: np.ndarray | None) -> dict:
    """What `recommend` needs besides the weights: original ids, event types and shapes."""
    return {
        "item_ids": data.item_ids[1:].tolist(),
        "category_names": data.category_names,
        "text_embedding_width": None if item_embeddings is None else int(item_embeddings.shape[1]),
        "event_names": data.event_names,
        "item_features": None if data.item_features is None else data.item_features.shape,
    }


def save_trained(output: RunDirectory, model: torch.nn.Module, data: PreparedData, item_embeddings: np.ndarray | None) -> None:
    """What `load_run` reads back: the weights, the catalog record, and the item text table of a model that reads
    texts (the weights leave it out: `ItemRepresentation`)."""
    save_model(model, output.file("model.safetensors"))
    output.write_json("catalog.json", catalog_record(data, item_embeddings))
    if item_embeddings is not None:
        save_item_table(item_embeddings, output.file(ITEM_TABLE))


@dataclass
class StoredCatalog:
    item_ids: np.ndarray  # original id per item index (position 0: padding)
    category_names: list
    text_embedding_width: int | None
    event_names: list[str]
    item_features: dict | None  # ItemFeatures.shape
    text_table: Path | None = None  # ITEM_TABLE, where the run kept one

    def empty(self) -> Catalog:
        """The stored model's catalog shape, to load its weights into (the saved buffers are overwritten), with the
        run's item text table memory-mapped (runs written before it was kept have it in their weights)."""
        n_items = len(self.item_ids) - 1
        features = None if self.item_features is None else ItemFeatures.empty(n_items, **self.item_features)
        catalog = empty_catalog(
            n_items, len(self.category_names), self.text_embedding_width, features, tuple(self.event_names)
        )  # the asked-for event types are a buffer of the weights
        if self.text_table is not None:
            try:
                catalog.item_text_embeddings = map_npy(self.text_table)
            except (OSError, ValueError) as err:
                raise PipelineInputError(f"{self.text_table}: damaged item text table: {clip(str(err))}") from None
            if catalog.item_text_embeddings.shape != (n_items + 1, self.text_embedding_width):
                raise PipelineInputError(
                    f"{self.text_table}: {catalog.item_text_embeddings.shape} vectors, the catalog has {n_items} items "
                    f"of width {self.text_embedding_width}"
                )
        return catalog

    @property
    def vocabulary(self) -> dict[str, list]:
        """Items and categories by index, as the warm start maps rows (`models.warm_start.transplant`)."""
        return {"items": list(self.item_ids), "categories": list(self.category_names)}


def read_catalog(run_dir: Path) -> StoredCatalog:
    path = run_dir / "catalog.json"
    record = read_json_file(path, "run catalog")
    try:
        catalog = StoredCatalog(
            np.array([None, *record["item_ids"]], dtype=object), list(record["category_names"]), record["text_embedding_width"],
            # Runs written before event types and side features were read had neither.
            list(record.get("event_names", [])), record.get("item_features"),
            run_dir / ITEM_TABLE if (run_dir / ITEM_TABLE).is_file() else None,
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


def list_maker(model: Recommender, config: Config, rank_local: bool = False) -> ListMaker:
    """How lists are ranked for `model` under `config`: the evaluation's policy, exact or ANN (`output.retrieval`)."""
    policy = Ranker.for_model(model, list_policy(config))
    return ListMaker(model, policy, config.output, config.eval.user_batch_size, rank_local)


def serving_lists(model: Recommender, data: PreparedData, config: Config) -> tuple[pd.DataFrame, dict | None]:
    """`output.users: all`: a list for every user, ranked from the whole log, by the evaluation's policy; and with
    ANN retrieval, its recall against exact lists (`ListMaker.check`)."""
    cases = data.eval_cases(ALL_EVENTS)
    lists = list_maker(model, config, cases.rank_local)
    rankings = lists.rank(cases.histories, config.output.top_k, cases.history_events)
    report = lists.check(rankings, cases.histories, cases.history_events)
    users = np.array(gather_rows(cases.users, cases.rank_local), dtype=np.int64)
    return recommendation_frame(data.user_ids[users], data.item_ids, rankings), report


@torch.inference_mode()
def embedding_tables(model: Recommender, data: PreparedData, config: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`output.embeddings`: (items: item_id, vector; users: user_id, vector) for the users the lists are for."""
    cases = data.eval_cases(ALL_EVENTS if config.output.users == "all" else TEST)
    users, items = [], None
    for start in range(0, len(cases.histories), config.eval.user_batch_size):
        end = start + config.eval.user_batch_size
        events = None if cases.history_events is None else cases.history_events[start:end]
        vectors, items = model.retrieval_vectors(cases.histories[start:end], events)
        users.extend(vectors.float().cpu().numpy())
    if items is None:  # no user to list
        items = retrieval_vectors_of(model)[1]
    item_vectors = items.float().cpu().numpy()[1:]
    return (
        pd.DataFrame({"item_id": data.item_ids[1:], "vector": list(item_vectors)}),
        pd.DataFrame({
            "user_id": data.user_ids[np.array(gather_rows(cases.users, cases.rank_local), dtype=np.int64)],
            "vector": gather_rows(users, cases.rank_local),
        }),
    )


@dataclass
class LoadedRun:
    run_dir: Path | None  # None on ranks other than 0 under torchrun
    config: Config
    model: Recommender
    item_ids: np.ndarray  # original id per item index (position 0: padding)
    event_names: list[str]
    _lists: ListMaker | None = field(default=None, repr=False)  # built on the first `recommend` (an ANN index)

    def recommend(self, events: pd.DataFrame, top_k: int | None = None) -> pd.DataFrame:
        """Top-K lists for the users in `events`, new users included.

        Columns are named as in the run's log (its `data.interactions.columns`) or user, item, timestamp (and event,
        when the run read event types: optional, unknown types count as unknown). Times are read as training read
        them (unix seconds, ISO-8601 with any offset, native datetimes) and each history is ordered by them, ties in
        row order. Items unknown to the catalog are ignored; a user without any known item gets the popularity list
        (`output.fallback: popular`, marked `source: popular`) or none (`fallback: none`).

        Result columns: user_id, rank (1 = best), item_id, score (the model's; for the fallback the item's training
        events), source (`model` or `popular`).
        """
        events = self._canonical(events)
        index = {item: position for position, item in enumerate(self.item_ids) if position}
        known = events["item"].map(index)
        if known.isna().any():
            log.warning("ignored %d events on items not in the run's catalog", int(known.isna().sum()))
        all_users = pd.unique(events["user"])
        events = events.assign(item_index=known).dropna(subset=["item_index"])
        events = events.sort_values(["user", "timestamp"], kind="stable")
        users, histories, history_events = [], [], []
        for user, group in events.groupby("user", sort=False):
            users.append(user)
            histories.append(group["item_index"].to_numpy(dtype=np.int64))
            if "event" in group:
                history_events.append(group["event"].to_numpy(dtype=np.int64))
        with_history = set(users)
        lonely = [user for user in all_users if user not in with_history]
        use_fallback = self.config.output.fallback == "popular"
        if not users and not (lonely and use_fallback):
            raise PipelineInputError("no events on known items: nothing to recommend from")
        if lonely:
            log.warning(
                "%d users have no events on known items: %s", len(lonely),
                "given the popularity list" if use_fallback else "no list (output.fallback: none)",
            )
        length = top_k or self.config.output.top_k
        if self._lists is None:
            self._lists = list_maker(self.model, self.config)
        ranker = self._lists.ranker
        frames = []
        if users:
            rankings = self._lists.rank(histories, length, history_events if self.event_names else None)
            frames.append(recommendation_frame(np.array(users, dtype=object), self.item_ids, rankings).assign(source="model"))
        if lonely and use_fallback:
            popular = self.model.statistics.item_counts.unsqueeze(0).expand(len(lonely), -1)
            top = ranker.rank(popular, [np.zeros(0, dtype=np.int64)] * len(lonely), None, length)
            rankings = Rankings([], np.stack([items for _, items, _ in top]), np.stack([scores for _, _, scores in top]))
            frames.append(recommendation_frame(np.array(lonely, dtype=object), self.item_ids, rankings).assign(source="popular"))
        return pd.concat(frames, ignore_index=True)

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
        canonical = pd.DataFrame({
            "user": clean_ids(events[source["user"]], where, source["user"]),
            "item": clean_ids(events[source["item"]], where, source["item"]),
            "timestamp": parse_timestamps(events[source["timestamp"]], where, source["timestamp"]),
        })
        event_column = next((name for name in (mapping.event, "event") if name and name in events.columns), None)
        if self.event_names:
            codes = {name: code for code, name in enumerate(self.event_names, start=1)}
            types = clean_ids(events[event_column], where, event_column) if event_column else pd.Series([None] * len(events))
            canonical["event"] = types.map(codes).fillna(0).astype(np.int64).to_numpy()
        return canonical


def load_run(run_dir: str | Path) -> LoadedRun:
    """A finished run directory (or an output root, or its `latest` pointer; a nightly champion's night folder too)
    loaded for serving: its config, its model with the saved weights and item text table, and the item ids. Call
    `recommend` on the result with any users' events."""
    run_dir = resolve_run(run_dir)
    config = read_run_config(run_dir)
    catalog = read_catalog(run_dir)
    model = build_model(config.model, catalog.empty())
    load_model_state(model, run_dir / "model.safetensors")
    model.eval()
    return LoadedRun(run_dir, config, model, catalog.item_ids, catalog.event_names)


def recommend(run_dir: str | Path, events_path: str | Path, top_k: int | None = None) -> pd.DataFrame:
    """Load a finished run and recommend for the users in an events file (read with the run's column mapping)."""
    loaded = load_run(run_dir)
    source = loaded.config.data.interactions
    # Who did what when makes a list, with the event type where the run read types: ratings, values and the type
    # column may be absent from the events file.
    path = Path(events_path).resolve()
    reads_types = bool(loaded.event_names) and source.columns.event in read_table(path, source.format).columns
    event = source.columns.event if reads_types else None
    columns = source.columns.model_copy(update={"rating": None, "event": event, "value": None})
    interactions = source.model_copy(update={
        "path": str(path), "columns": columns, "event_types": None, "event_weights": None, "weight_by_value": False,
    })
    events = load_interactions(interactions)
    return loaded.recommend(events, top_k)
