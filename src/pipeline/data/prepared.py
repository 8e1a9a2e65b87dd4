"""What preparation produces: the indexed, split log (`PreparedData`), the training-only view models learn from
(`TrainView`) and the evaluation cases; `assemble` builds it from indexed events and the kept catalog, whichever
engine prepared them (pandas in memory, or DuckDB into shards).

Index convention used everywhere downstream: item index 0 is padding, catalog items are 1..n_items; per-item arrays
have n_items + 1 rows. Events are grouped by user index and in time order within each user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.data.features import ItemFeatures, item_features

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
    rank_local: bool = False  # only this rank's users (torchrun on shards): results gather across ranks

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
            rank_local=self.rank_local,
        )


class _LogColumns:
    """What the log of an `events` frame holds besides users, items and times."""

    events: pd.DataFrame

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.events.columns

    @property
    def has_event_types(self) -> bool:
        return "event" in self.events.columns


@dataclass
class TrainView(_LogColumns):
    """All a model may learn from: the training events and the catalog. No validation or test row is in it, so a
    model cannot leak the evaluation period into its counts, vocabularies or features, however it is written."""

    events: pd.DataFrame  # training events only: user, item (indices), timestamp, [rating], [event], [weight]
    n_users: int
    item_texts: list[str]  # encoder input per item index (position 0: "")
    item_categories: list[np.ndarray]  # category indices per item index
    category_matrix: np.ndarray  # [n_items + 1, n_categories], see `PreparedData.category_matrix`
    recommendable: np.ndarray | None = None  # [n_items + 1] bool (None: every item)
    event_type_weights: np.ndarray | None = None  # [event types + 1]: data.interactions.event_weights by code
    rank_local: bool = False  # `events` are this rank's users only (torchrun on shards): counts add up across ranks

    @property
    def n_items(self) -> int:
        return len(self.item_texts) - 1

    def sequences(self, column: str = "item") -> dict[int, np.ndarray]:
        """Per user, `column` (item indices by default; rating, event, weight) of their training events, oldest first."""
        return {int(user): group.to_numpy() for user, group in self.events.groupby("user", sort=True)[column]}

    def rating_sequences(self) -> dict[int, np.ndarray]:
        """{user index: the ratings of the user's training events, oldest first}."""
        return self.sequences("rating")


@dataclass
class PreparedData(_LogColumns):
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
    shards: list[int] | None = None  # the shards `events` come from, when not all (a torchrun rank's own)
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def rank_local(self) -> bool:
        """Whether `events` hold only some users (this rank's shards): counts and results add up across ranks."""
        return self.shards is not None

    def sequences(self, splits: tuple[str, ...] = (TRAIN,), column: str = "item") -> dict[int, np.ndarray]:
        """Per user, `column` (item indices by default) of the events in `splits`, oldest first."""
        rows = self.events[self.events["split"].isin(splits)]
        return {int(user): group.to_numpy() for user, group in rows.groupby("user", sort=True)[column]}

    def train_view(self) -> TrainView:
        """The training events only (what models fit on), computed once and kept."""
        if "train_view" not in self._derived:
            events = self.events[self.events["split"] == TRAIN].drop(columns="split")
            self._derived["train_view"] = TrainView(
                events, self.n_users, self.item_texts, self.item_categories, self.category_matrix(),
                self.recommendable, self.event_type_weights, self.rank_local,
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
            rank_local=self.rank_local,
        )

    def category_matrix(self) -> np.ndarray:
        """[n_items + 1, n_categories] with each item's categories sharing weight 1 (row 0: padding, all zero)."""
        matrix = np.zeros((self.n_items + 1, len(self.category_names)), dtype=np.float32)
        for item, categories in enumerate(self.item_categories):
            if len(categories):
                matrix[item, categories] = 1.0 / len(categories)
        return matrix


def assemble(
    events: pd.DataFrame, items: pd.DataFrame, user_ids: np.ndarray, event_names: list[str], cold_ids: np.ndarray,
    config: DataConfig, target_event_types: list[str] | None,
) -> PreparedData:
    """`PreparedData` from indexed events (user, item, timestamp, [rating], [event], [weight], split; grouped by user
    in time order) and the kept catalog `items` (item index i is row i - 1)."""
    item_index = pd.Series(np.arange(1, len(items) + 1), index=items["item"].to_numpy())
    category_names = sorted({c for categories in items["categories"] for c in categories})
    category_index = {name: i for i, name in enumerate(category_names)}
    item_categories = [np.array([], dtype=np.int64)] + [
        np.array([category_index[c] for c in categories], dtype=np.int64) for categories in items["categories"]
    ]
    data = PreparedData(
        events=events,
        item_ids=np.concatenate([[None], items["item"].to_numpy()]).astype(object),
        user_ids=user_ids,
        item_texts=[""] + list(items["text"]),
        item_categories=item_categories,
        category_names=category_names,
        split_method=config.split.method,
        cold_items=item_index.loc[cold_ids].to_numpy(dtype=np.int64),
        event_names=event_names,
        target_event_types=target_event_types,
        item_features=item_features(items, config.items.numeric_features, config.items.categorical_features),
    )
    recommendable = items["recommendable"].to_numpy(dtype=bool)
    if not recommendable.all():
        log.info("%d of %d items may be recommended (data.items.recommendable)", int(recommendable.sum()), len(recommendable))
        data.recommendable = np.concatenate([[False], recommendable])
    if event_names:
        type_weights = config.interactions.event_weights or {}
        data.event_type_weights = np.array([0.0] + [type_weights.get(name, 1.0) for name in event_names])
    return data


def natural_key(value: str):
    """Numeric ids sort as numbers, others as text, so user 10 comes after user 9."""
    # isdigit() alone also accepts '²' and other Unicode digits that int() refuses: those ids sort as text.
    return (0, int(value), "") if value.isascii() and value.isdigit() else (1, 0, value)
