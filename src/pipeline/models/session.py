"""Floors from a user's own recent events, the baselines a shop's log is measured against:

- recently interacted (`recent_items`): the user's own items, ranked by recency and frequency, each event weighted
  by its type (`data.interactions.event_weights`): where people come back (re-buying, buying what they carted), the
  hardest floor there is;
- item co-visitation (`covisitation`, session kNN): the items that followed each item within a few events of the
  same session in training, looked up from the user's last items.
Both score every other item 0, so the ranker's tie-break (training popularity) fills the rest of a list.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from pipeline.data.prepared import TrainView
from pipeline.models.base import Catalog, ScoringModel
from pipeline.schema import ModelSection


class RecentItemsConfig(ModelSection):
    name: Literal["recent_items"] = "recent_items"
    max_length: int = Field(50, ge=1)
    """How many of the user's most recent events count."""
    decay_half_life: float = Field(5.0, gt=0)
    """An event's weight halves every this many newer events."""


def event_weights_of(events: list[np.ndarray] | None, histories: list[np.ndarray], weights: torch.Tensor) -> list[torch.Tensor]:
    """Per history position, the weight of its event type (1 without event types)."""
    if events is None:
        return [torch.ones(len(history)) for history in histories]
    return [weights[torch.tensor(codes, dtype=torch.long)] for codes in events]


def copy_type_weights(buffer: torch.Tensor, train: TrainView) -> None:
    """The log's event-type weights into a model's buffer (it stays all ones without them)."""
    if train.event_type_weights is not None:
        buffer.copy_(torch.as_tensor(train.event_type_weights, dtype=torch.float32))


class RecentItems(ScoringModel):
    config_class = RecentItemsConfig

    def __init__(self, config: RecentItemsConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.half_life = config.decay_half_life
        self.register_buffer("event_type_weights", torch.ones(len(catalog.event_names) + 1))

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        copy_type_weights(self.event_type_weights, train)

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        scores = torch.zeros(len(histories), self.n_items + 1)
        for row, (history, weights) in enumerate(zip(histories, event_weights_of(events, histories, self.event_type_weights))):
            recent, weights = torch.tensor(history[-self.max_length :], dtype=torch.long), weights[-self.max_length :]
            ages = torch.arange(len(recent) - 1, -1, -1, dtype=torch.float32)
            scores[row].index_add_(0, recent, weights.float() * torch.pow(0.5, ages / self.half_life))
        scores[:, 0] = 0
        return scores


class CovisitationConfig(ModelSection):
    name: Literal["covisitation"] = "covisitation"
    window: int = Field(3, ge=1)
    """An item counts as following another when it comes at most this many events later in the same session."""
    session_gap_hours: float = Field(24.0, gt=0)
    """A pause longer than this between two of a user's events starts a new session."""
    last_items: int = Field(3, ge=1)
    """How many of the user's most recent distinct items are looked up (weighted 1, 1/2, 1/3, ...)."""
    neighbours: int = Field(50, ge=1)
    """Following items kept per item, by weight."""

    @property
    def max_length(self) -> int:
        return self.last_items


class Covisitation(ScoringModel):
    config_class = CovisitationConfig

    def __init__(self, config: CovisitationConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.window, self.gap_seconds, self.last_items = config.window, config.session_gap_hours * 3600, config.last_items
        neighbours = min(config.neighbours, catalog.n_items + 1)
        self.register_buffer("event_type_weights", torch.ones(len(catalog.event_names) + 1))
        self.register_buffer("neighbour_items", torch.zeros(catalog.n_items + 1, neighbours, dtype=torch.long))
        self.register_buffer("neighbour_weights", torch.zeros(catalog.n_items + 1, neighbours))

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        copy_type_weights(self.event_type_weights, train)
        following = self._following_counts(train)
        k = self.neighbour_items.shape[1]
        for item in range(following.shape[0]):
            start, stop = following.indptr[item], following.indptr[item + 1]
            if start == stop:
                continue
            columns, weights = following.indices[start:stop], following.data[start:stop]
            top = np.argsort(-weights, kind="stable")[:k]
            self.neighbour_items[item, : len(top)] = torch.from_numpy(columns[top].astype(np.int64))
            self.neighbour_weights[item, : len(top)] = torch.from_numpy((weights[top] / weights.sum()).astype(np.float32))

    def _following_counts(self, train: TrainView) -> sp.csr_matrix:
        """[n_items + 1, n_items + 1]: weight of b following a within `window` events of one session (the nearer
        and the stronger b's event type, the more)."""
        events = train.events  # grouped by user, in time order
        users, items, times = (events[column].to_numpy() for column in ("user", "item", "timestamp"))
        new_session = np.ones(len(events), dtype=bool)
        new_session[1:] = (users[1:] != users[:-1]) | (times[1:] - times[:-1] > self.gap_seconds)
        session = np.cumsum(new_session)
        type_weight = (
            self.event_type_weights.numpy()[events["event"].to_numpy()] if train.has_event_types else np.ones(len(events))
        )
        rows, columns, weights = [], [], []
        for distance in range(1, self.window + 1):
            same = session[distance:] == session[:-distance]
            rows.append(items[:-distance][same])
            columns.append(items[distance:][same])
            weights.append(type_weight[distance:][same] / distance)
        size = train.n_items + 1
        return sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(rows), np.concatenate(columns))), shape=(size, size)
        )

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        scores = torch.zeros(len(histories), self.n_items + 1)
        for row, history in enumerate(histories):
            last = newest_distinct(history, self.last_items)
            weights = 1.0 / torch.arange(1, len(last) + 1, dtype=torch.float32)
            contributions = self.neighbour_weights[last] * weights[:, None]
            scores[row].index_add_(0, self.neighbour_items[last].reshape(-1), contributions.reshape(-1))
        scores[:, 0] = 0
        return scores


def newest_distinct(history: np.ndarray, count: int) -> torch.Tensor:
    """The `count` most recent distinct items of a history, newest first."""
    newest_first = history[::-1]
    _, first = np.unique(newest_first, return_index=True)
    return torch.as_tensor(newest_first[np.sort(first)][:count], dtype=torch.long)
