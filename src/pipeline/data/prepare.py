"""Clean, index and split the raw log: dedup, filtering, id vocabularies, time-ordered train/valid/test.

Index convention used everywhere downstream: item index 0 is padding, catalog items are 1..n_items; per-item arrays
have n_items + 1 rows. Events are ordered by (user, timestamp) with a stable sort, so timestamp ties keep the
file's row order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.data.features import ItemFeatures, item_features
from pipeline.data.load import RawData, check_event_types
from pipeline.errors import PipelineInputError

log = logging.getLogger("pipeline")

# CONTEXT: with target event types, the events between the validation and the test target: test history only.
TRAIN, VALID, CONTEXT, TEST = "train", "valid", "context", "test"
ALL_EVENTS = "all_events"
DROPPED = "dropped"  # events after the test target (target event types only): never read


@dataclass
class EvalCases:
    """One row per evaluated user: what the model sees (history) and what it should predict (targets)."""

    users: np.ndarray  # user indices
    histories: list[np.ndarray]  # item indices, oldest first
    targets: list[np.ndarray]  # relevant item indices; targets[u][0] is the next interaction
    next_ratings: np.ndarray | None  # rating of the next interaction, when the log has ratings
    history_events: list[np.ndarray] | None = None  # event-type codes aligned with histories, when the log has types

    def __len__(self) -> int:
        return len(self.users)

    @property
    def next_items(self) -> np.ndarray:
        return np.array([target[0] for target in self.targets], dtype=np.int64)

    def subset(self, rows: np.ndarray) -> EvalCases:
        """The cases at `rows` (positions), in their order."""
        return EvalCases(
            users=self.users[rows],
            histories=[self.histories[row] for row in rows],
            targets=[self.targets[row] for row in rows],
            next_ratings=None if self.next_ratings is None else self.next_ratings[rows],
            history_events=None if self.history_events is None else [self.history_events[row] for row in rows],
        )


@dataclass
class TrainView:
    """All a model may learn from: the training events and the catalog. No validation or test row is in it, so a
    model cannot leak the evaluation period into its counts, vocabularies or features, however it is written."""

    events: pd.DataFrame  # training events only: user, item (indices), timestamp, [rating], [event], [weight]
    n_users: int
    item_texts: list[str]  # encoder input per item index (position 0: "")
    item_categories: list[np.ndarray]  # category indices per item index
    category_matrix: np.ndarray  # [n_items + 1, n_categories], see `PreparedData.category_matrix`
    recommendable: np.ndarray | None = None  # [n_items + 1] bool (None: every item)
    event_type_weights: np.ndarray | None = None  # [event types + 1]: data.interactions.event_weights by code

    @property
    def n_items(self) -> int:
        return len(self.item_texts) - 1

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.events.columns

    @property
    def has_event_types(self) -> bool:
        return "event" in self.events.columns

    def sequences(self, column: str = "item") -> dict[int, np.ndarray]:
        """Per user, `column` (item indices by default; rating, event, weight) of their training events, oldest first."""
        return {int(user): group.to_numpy() for user, group in self.events.groupby("user", sort=True)[column]}

    def rating_sequences(self) -> dict[int, np.ndarray]:
        return self.sequences("rating")


@dataclass
class PreparedData:
    events: pd.DataFrame  # user, item (indices), timestamp, [rating], split
    item_ids: np.ndarray  # original id of item index i at position i (position 0: padding)
    user_ids: np.ndarray  # original id of user index u
    item_texts: list[str]  # encoder input per item index (position 0: "")
    item_categories: list[np.ndarray]  # category indices per item index
    category_names: list[str]
    split_method: str
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # item indices
    event_names: list[str] = field(default_factory=list)  # event type of code c at position c - 1
    event_type_weights: np.ndarray | None = None  # [len(event_names) + 1]
    target_event_types: list[str] | None = None
    item_features: ItemFeatures | None = None
    recommendable: np.ndarray | None = None  # [n_items + 1] bool (None: every item)
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.events.columns

    @property
    def has_event_types(self) -> bool:
        return "event" in self.events.columns

    def sequences(self, splits: tuple[str, ...] = (TRAIN,), column: str = "item") -> dict[int, np.ndarray]:
        """Per user, `column` (item indices by default) of the events in `splits`, oldest first."""
        rows = self.events[self.events["split"].isin(splits)]
        return {int(user): group.to_numpy() for user, group in rows.groupby("user", sort=True)[column]}

    def train_view(self) -> TrainView:
        if "train_view" not in self._derived:
            events = self.events[self.events["split"] == TRAIN].drop(columns="split")
            self._derived["train_view"] = TrainView(
                events, self.n_users, self.item_texts, self.item_categories, self.category_matrix(),
                self.recommendable, self.event_type_weights,
            )
        return self._derived["train_view"]

    def eval_cases(self, split: str) -> EvalCases:
        """Valid: history = train events. Test: history = every earlier event. Users without history are skipped.

        `all_events` (not a split): every user's whole log as history, no targets: the lists to serve."""
        if split not in self._derived:
            self._derived[split] = self._build_eval_cases(split)
        return self._derived[split]

    def _build_eval_cases(self, split: str) -> EvalCases:
        history_splits = {VALID: (TRAIN,), TEST: (TRAIN, VALID, CONTEXT), ALL_EVENTS: (TRAIN, VALID, CONTEXT, TEST)}[split]
        histories = self.sequences(history_splits)
        events = self.sequences(history_splits, "event") if self.has_event_types else {}
        target_rows = self.events if split == ALL_EVENTS else self.events[self.events["split"] == split]
        users, user_histories, history_events, targets, ratings = [], [], [], [], []
        for user, group in target_rows.groupby("user", sort=True):
            history = histories.get(int(user))
            if history is None or len(history) == 0:
                continue
            users.append(int(user))
            user_histories.append(history)
            if events:
                history_events.append(events[int(user)])
            targets.append(pd.unique(group["item"].to_numpy()))
            if self.has_ratings:
                ratings.append(float(group["rating"].iloc[0]))
        return EvalCases(
            users=np.array(users, dtype=np.int64),
            histories=user_histories,
            targets=targets,
            next_ratings=np.array(ratings) if self.has_ratings else None,
            history_events=history_events if events else None,
        )

    def category_matrix(self) -> np.ndarray:
        """[n_items + 1, n_categories] with each item's categories sharing weight 1 (row 0: padding, all zero)."""
        matrix = np.zeros((self.n_items + 1, len(self.category_names)), dtype=np.float32)
        for item, categories in enumerate(self.item_categories):
            if len(categories):
                matrix[item, categories] = 1.0 / len(categories)
        return matrix


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
    data = _index(events, items, config.split.method, cold_ids)
    data.target_event_types = target_event_types
    data.item_features = item_features(items, config.items.numeric_features, config.items.categorical_features)
    recommendable = items["recommendable"].to_numpy(dtype=bool)
    if not recommendable.all():
        log.info("%d of %d items may be recommended (data.items.recommendable)", int(recommendable.sum()), len(recommendable))
        data.recommendable = np.concatenate([[False], recommendable])
    if data.event_names:
        data.event_type_weights = np.array([0.0] + [type_weights.get(name, 1.0) for name in data.event_names])
    return data


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


def _index(events: pd.DataFrame, items: pd.DataFrame, split_method: str, cold_ids: np.ndarray) -> PreparedData:
    item_ids = items["item"].to_numpy()
    item_index = pd.Series(np.arange(1, len(item_ids) + 1), index=item_ids)
    user_ids = pd.unique(events["user"].to_numpy())
    user_ids = np.array(sorted(user_ids, key=_natural_key), dtype=object)
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

    category_names = sorted({c for categories in items["categories"] for c in categories})
    category_index = {name: i for i, name in enumerate(category_names)}
    item_categories = [np.array([], dtype=np.int64)] + [
        np.array([category_index[c] for c in categories], dtype=np.int64) for categories in items["categories"]
    ]
    return PreparedData(
        events=indexed,
        item_ids=np.concatenate([[None], item_ids]).astype(object),
        user_ids=user_ids,
        item_texts=[""] + list(items["text"]),
        item_categories=item_categories,
        category_names=category_names,
        split_method=split_method,
        cold_items=item_index.loc[cold_ids].to_numpy(dtype=np.int64),
        event_names=event_names,
    )


def _natural_key(value: str):
    """Numeric ids sort as numbers, others as text, so user 10 comes after user 9."""
    # isdigit() alone also accepts '²' and other Unicode digits that int() refuses: those ids sort as text.
    return (0, int(value), "") if value.isascii() and value.isdigit() else (1, 0, value)
