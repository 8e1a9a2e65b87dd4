"""Clean, index and split the raw log: dedup, filtering, id vocabularies, time-ordered train/valid/test.

Index convention used everywhere downstream: item index 0 is padding, catalog items are 1..n_items; per-item arrays
have n_items + 1 rows. Events are ordered by (user, timestamp) with a stable sort, so timestamp ties keep the
file's row order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.data.load import RawData
from pipeline.errors import PipelineInputError

log = logging.getLogger("pipeline")

TRAIN, VALID, TEST = "train", "valid", "test"


@dataclass
class EvalCases:
    """One row per evaluated user: what the model sees (history) and what it should predict (targets)."""

    users: np.ndarray  # user indices
    histories: list[np.ndarray]  # item indices, oldest first
    targets: list[np.ndarray]  # relevant item indices; targets[u][0] is the next interaction
    next_ratings: np.ndarray | None  # rating of the next interaction, when the log has ratings

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
        )


@dataclass
class TrainView:
    """All a model may learn from: the training events and the catalog. No validation or test row is in it, so a
    model cannot leak the evaluation period into its counts, vocabularies or features, however it is written."""

    events: pd.DataFrame  # training events only: user, item (indices), timestamp, [rating]
    n_users: int
    item_texts: list[str]  # encoder input per item index (position 0: "")
    item_categories: list[np.ndarray]  # category indices per item index
    category_matrix: np.ndarray  # [n_items + 1, n_categories], see `PreparedData.category_matrix`

    @property
    def n_items(self) -> int:
        return len(self.item_texts) - 1

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.events.columns

    def sequences(self) -> dict[int, np.ndarray]:
        """Per user, the item indices of their training events, oldest first."""
        return {int(user): group.to_numpy() for user, group in self.events.groupby("user", sort=True)["item"]}

    def rating_sequences(self) -> dict[int, np.ndarray]:
        return {int(user): group.to_numpy() for user, group in self.events.groupby("user", sort=True)["rating"]}


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

    def sequences(self, splits: tuple[str, ...] = (TRAIN,)) -> dict[int, np.ndarray]:
        """Per user, the item indices of the events in `splits`, oldest first."""
        rows = self.events[self.events["split"].isin(splits)]
        return {int(user): group.to_numpy() for user, group in rows.groupby("user", sort=True)["item"]}

    def train_view(self) -> TrainView:
        if "train_view" not in self._derived:
            events = self.events[self.events["split"] == TRAIN].drop(columns="split")
            self._derived["train_view"] = TrainView(
                events, self.n_users, self.item_texts, self.item_categories, self.category_matrix()
            )
        return self._derived["train_view"]

    def eval_cases(self, split: str) -> EvalCases:
        """Valid: history = train events. Test: history = train + valid events. Users without history are skipped."""
        if split not in self._derived:
            self._derived[split] = self._build_eval_cases(split)
        return self._derived[split]

    def _build_eval_cases(self, split: str) -> EvalCases:
        history_splits = (TRAIN,) if split == VALID else (TRAIN, VALID)
        histories = self.sequences(history_splits)
        target_rows = self.events[self.events["split"] == split]
        users, user_histories, targets, ratings = [], [], [], []
        for user, group in target_rows.groupby("user", sort=True):
            history = histories.get(int(user))
            if history is None or len(history) == 0:
                continue
            users.append(int(user))
            user_histories.append(history)
            targets.append(pd.unique(group["item"].to_numpy()))
            if self.has_ratings:
                ratings.append(float(group["rating"].iloc[0]))
        return EvalCases(
            users=np.array(users, dtype=np.int64),
            histories=user_histories,
            targets=targets,
            next_ratings=np.array(ratings) if self.has_ratings else None,
        )

    def category_matrix(self) -> np.ndarray:
        """[n_items + 1, n_categories] with each item's categories sharing weight 1 (row 0: padding, all zero)."""
        matrix = np.zeros((self.n_items + 1, len(self.category_names)), dtype=np.float32)
        for item, categories in enumerate(self.item_categories):
            if len(categories):
                matrix[item, categories] = 1.0 / len(categories)
        return matrix


def prepare(raw: RawData, config: DataConfig) -> PreparedData:
    items = raw.items
    events = raw.interactions.copy()
    events["order"] = np.arange(len(events))

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

    if config.min_item_interactions > 1:
        training_counts = events.loc[_split_labels(events, config) == TRAIN, "item"].value_counts()
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

    events = events.assign(split=_split_labels(events, config))
    cold_ids = np.zeros(0, dtype=object)
    if config.cold_item_fraction > 0:
        events, cold_ids = _hold_out_cold_items(events, config.cold_item_fraction, config.cold_item_seed)
    return _index(events, items, config.split.method, cold_ids)


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


def _split_labels(events: pd.DataFrame, config: DataConfig) -> np.ndarray:
    """Split label per event. `events` must be sorted by (user, timestamp, file order)."""
    if config.split.method == "leave_last_out":
        from_end = events.groupby("user", sort=False).cumcount(ascending=False).to_numpy()
        return np.where(from_end == 0, TEST, np.where(from_end == 1, VALID, TRAIN))
    split = config.split
    times = events["timestamp"].to_numpy()
    valid_start = np.quantile(times, 1.0 - split.valid_fraction - split.test_fraction, method="higher")
    test_start = np.quantile(times, 1.0 - split.test_fraction, method="higher")
    labels = np.where(times >= test_start, TEST, np.where(times >= valid_start, VALID, TRAIN))
    for name in (TRAIN, VALID, TEST):
        if not (labels == name).any():
            raise PipelineInputError(
                f"data.split: time_cut leaves the {name} period empty (all events share too few timestamps)"
            )
    return labels


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
    )


def _natural_key(value: str):
    """Numeric ids sort as numbers, others as text, so user 10 comes after user 9."""
    # isdigit() alone also accepts '²' and other Unicode digits that int() refuses: those ids sort as text.
    return (0, int(value), "") if value.isascii() and value.isdigit() else (1, 0, value)
