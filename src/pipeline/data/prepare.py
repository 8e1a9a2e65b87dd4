"""Clean, index and split the raw log: dedup, filtering, id vocabularies, time-ordered train/valid/test.

Index convention used everywhere downstream: item index 0 is padding, catalog items are 1..n_items; per-item arrays
have n_items + 1 rows. Events are ordered by (user, timestamp) with a stable sort, so timestamp ties keep the
file's row order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.data.load import RawData, check_event_types
from pipeline.data.prepared import CONTEXT, DROPPED, TEST, TRAIN, VALID, PreparedData, assemble, natural_key
from pipeline.errors import PipelineInputError

log = logging.getLogger("pipeline")


def prepare(raw: RawData, config: DataConfig, target_event_types: list[str] | None = None) -> PreparedData:
    """The cleaned, indexed and split log; `target_event_types` is `eval.target_event_types` (None: every event is
    a possible target)."""
    items = raw.items
    events = raw.interactions.copy()
    events["order"] = np.arange(len(events))
    if target_event_types is not None:
        check_event_types(target_event_types, sorted(events["event"].unique()), "eval.target_event_types", Path(config.interactions.path))

    known = events["item"].isin(set(items["item"]))
    if not known.all():
        missing = events.loc[~known, "item"]
        log.warning(
            "dropped %d interactions whose item is not in the items table (%d distinct ids, e.g. %r)",
            int((~known).sum()), missing.nunique(), missing.iloc[0],
        )
        events = events[known]
    if config.deduplicate:
        repeated = events.duplicated(subset=["user", "item", "timestamp"], keep="first")
        if repeated.any():
            log.info("dropped %d duplicate interactions (same user, item and timestamp)", int(repeated.sum()))
            events = events[~repeated]
    events = events.sort_values(["user", "timestamp", "order"], kind="stable")
    type_weights = config.interactions.event_weights or {}
    if config.interactions.collapse_repeats:
        events = _collapse_repeats(events, type_weights)

    if config.min_item_interactions > 1:
        labels = _split_labels(events, config, target_event_types)
        training_counts = events.loc[labels == TRAIN, "item"].value_counts()
        frequent = set(training_counts.index[training_counts >= config.min_item_interactions])
        log.info(
            "kept %d of %d items with >= %d training interactions",
            len(frequent), len(items), config.min_item_interactions,
        )
        items = items[items["item"].isin(frequent)]
        events = events[events["item"].isin(frequent)]

    if config.split.method == "leave_last_out":
        per_user = events.groupby("user", sort=False)["item"].transform("size")
        too_short = per_user < config.min_user_interactions
        if too_short.any():
            log.info(
                "dropped %d users with fewer than %d interactions",
                events.loc[too_short, "user"].nunique(), config.min_user_interactions,
            )
            events = events[~too_short]
    if events.empty:
        raise PipelineInputError(f"{config.interactions.path}: no interactions left after cleaning and filtering")

    events = events.assign(split=_split_labels(events, config, target_event_types))
    dropped = events["split"] == DROPPED
    if dropped.any():
        log.info(
            "dropped %d events after their user's last %s event (the test target)", int(dropped.sum()), target_event_types
        )
        events = events[~dropped]
    if type_weights or config.interactions.weight_by_value:
        events = events.assign(weight=_event_weights(events, type_weights, config.interactions.weight_by_value))
    cold_ids = np.zeros(0, dtype=object)
    if config.cold_item_fraction > 0:
        events, cold_ids = _hold_out_cold_items(events, config.cold_item_fraction, config.cold_item_seed)
    indexed, user_ids, event_names = _index(events, items)
    return assemble(indexed, items, user_ids, event_names, cold_ids, config, target_event_types)


def _collapse_repeats(events: pd.DataFrame, type_weights: dict[str, float]) -> pd.DataFrame:
    """One row per run of a user's consecutive events on one item: the strongest type (then the latest) stays."""
    users, items = events["user"].to_numpy(), events["item"].to_numpy()
    starts = np.ones(len(events), dtype=bool)
    starts[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    run = np.cumsum(starts)
    strength = _type_weight_per_event(events, type_weights)
    # Within a run: highest strength, ties to the latest row.
    order = np.lexsort((np.arange(len(events)), strength, run))
    last_of_run = np.ones(len(order), dtype=bool)
    last_of_run[:-1] = run[order][1:] != run[order][:-1]
    kept = np.sort(order[last_of_run])
    log.info("collapsed %d repeated consecutive events into %d (data.interactions.collapse_repeats)", len(events), len(kept))
    return events.iloc[kept]


def _type_weight_per_event(events: pd.DataFrame, type_weights: dict[str, float]) -> np.ndarray:
    """`data.interactions.event_weights` of each event's type (1 for types not listed, and without a type column)."""
    if "event" not in events or not type_weights:
        return np.ones(len(events))
    return events["event"].map(type_weights).fillna(1.0).to_numpy(dtype=np.float64)


def _event_weights(events: pd.DataFrame, type_weights: dict[str, float], by_value: bool) -> np.ndarray:
    """Training weight per event: its type's weight, times its value over the mean training value."""
    weights = _type_weight_per_event(events, type_weights)
    if by_value:
        values = events["value"].to_numpy(dtype=np.float64)
        mean = values[events["split"].to_numpy() == TRAIN].mean()
        weights = weights * (values / mean if mean > 0 else 1.0)
    return weights.astype(np.float32)


def _hold_out_cold_items(events: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Pick `fraction` of the interacted items and drop their non-test events: they are new in the test period."""
    interacted = np.sort(events["item"].unique())
    cold = np.random.default_rng(seed).choice(interacted, size=max(1, round(fraction * len(interacted))), replace=False)
    drop = events["item"].isin(set(cold)) & (events["split"] != TEST)
    log.info(
        "cold-start split: %d items (%.0f%%) keep only their %d test events; dropped their %d earlier events",
        len(cold), 100 * fraction, int((events["item"].isin(set(cold)) & (events["split"] == TEST)).sum()), int(drop.sum()),
    )
    return events[~drop], cold


def _split_labels(events: pd.DataFrame, config: DataConfig, target_event_types: list[str] | None) -> np.ndarray:
    """Split label per event. `events` must be sorted by (user, timestamp, file order)."""
    is_target = np.ones(len(events), dtype=bool) if target_event_types is None else events["event"].isin(target_event_types).to_numpy()
    if config.split.method == "leave_last_out":
        # Counted from each user's end over target-type events only: 0 = the test target, 1 = the validation target.
        from_end = _targets_from_end(events["user"].to_numpy(), is_target)
        user_codes = pd.factorize(events["user"])[0]
        valid_position = np.where(is_target & (from_end == 1), np.arange(len(events)), -1)
        test_position = np.where(is_target & (from_end == 0), np.arange(len(events)), -1)
        valid_at = np.full(user_codes.max() + 1, -1)
        test_at = np.full(user_codes.max() + 1, -1)
        np.maximum.at(valid_at, user_codes, valid_position)
        np.maximum.at(test_at, user_codes, test_position)
        first_at = np.full(user_codes.max() + 1, len(events))
        np.minimum.at(first_at, user_codes, np.arange(len(events)))
        position = np.arange(len(events))
        # A user is evaluated with two targets and at least one training event before the first of them.
        evaluated = (valid_at > first_at)[user_codes]
        labels = np.full(len(events), TRAIN, dtype=object)
        valid, test = valid_at[user_codes], test_at[user_codes]
        labels[evaluated & (position == valid)] = VALID
        labels[evaluated & (position > valid) & (position < test)] = CONTEXT
        labels[evaluated & (position == test)] = TEST
        labels[evaluated & (position > test)] = DROPPED
        if target_event_types is not None:
            log.info(
                "targets: each user's last two %s events; %d of %d users have them (the others train only)",
                target_event_types, int((valid_at > first_at).sum()), len(valid_at),
            )
        return labels
    split = config.split
    times = events["timestamp"].to_numpy()
    valid_start = np.quantile(times, 1.0 - split.valid_fraction - split.test_fraction, method="higher")
    test_start = np.quantile(times, 1.0 - split.test_fraction, method="higher")
    labels = np.where(times >= test_start, TEST, np.where(times >= valid_start, VALID, TRAIN)).astype(object)
    # With target types, other events of the validation period are test history; of the test period, dropped.
    labels[(labels == VALID) & ~is_target] = CONTEXT
    labels[(labels == TEST) & ~is_target] = DROPPED
    for name in (TRAIN, VALID, TEST):
        if not (labels == name).any():
            raise PipelineInputError(
                f"data.split: time_cut leaves the {name} period empty (all events share too few timestamps, "
                "or none of the period's events is of eval.target_event_types)"
            )
    return labels


def _targets_from_end(users: np.ndarray, is_target: np.ndarray) -> np.ndarray:
    """Per event, how many target-type events of its user come after it (for target-type events: 0 = the last)."""
    frame = pd.DataFrame({"user": users, "target": is_target.astype(np.int64)})
    after = frame.iloc[::-1].groupby("user", sort=False)["target"].cumsum().iloc[::-1].to_numpy()
    return after - frame["target"].to_numpy()


def _index(events: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Events with user, item and event-type codes, grouped by user index in time order; the user ids; the types."""
    item_index = pd.Series(np.arange(1, len(items) + 1), index=items["item"].to_numpy())
    user_ids = pd.unique(events["user"].to_numpy())
    user_ids = np.array(sorted(user_ids, key=natural_key), dtype=object)
    user_index = pd.Series(np.arange(len(user_ids)), index=user_ids)

    indexed = pd.DataFrame(
        {
            "user": user_index.loc[events["user"].to_numpy()].to_numpy(),
            "item": item_index.loc[events["item"].to_numpy()].to_numpy(),
            "timestamp": events["timestamp"].to_numpy(),
        }
    )
    if "rating" in events.columns:
        indexed["rating"] = events["rating"].to_numpy()
    event_names: list[str] = []
    if "event" in events.columns:
        event_names = sorted(events["event"].unique())
        indexed["event"] = pd.Series(np.arange(1, len(event_names) + 1), index=event_names).loc[events["event"].to_numpy()].to_numpy()
    if "weight" in events.columns:
        indexed["weight"] = events["weight"].to_numpy()
    indexed["split"] = events["split"].to_numpy()
    # Users were sorted by original id above; keep events grouped by user and in time order within each user.
    indexed = indexed.iloc[np.argsort(indexed["user"].to_numpy(), kind="stable")].reset_index(drop=True)
    return indexed, user_ids, event_names
