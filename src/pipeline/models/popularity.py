"""Popularity: the floor every learned model must beat. Same list for every user (less what they have seen)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from pipeline.data.prepared import TrainView
from pipeline.models.base import Catalog, Recommender
from pipeline.schema import ModelSection


class PopularityConfig(ModelSection):
    name: Literal["popularity"] = "popularity"


class Popularity(Recommender):
    """Ranks items by training interactions; predicts the most common category and the item's damped mean rating."""

    config_class = PopularityConfig
    fits_on_rank_shards = True

    def __init__(self, config: ModelSection, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        return self.statistics.item_counts.unsqueeze(0).expand(len(histories), -1)

    def predict_category(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        return self.statistics.category_prior.unsqueeze(0).expand(len(histories), -1)

    def predict_rating(self, histories: list[np.ndarray], items: np.ndarray, events: list[np.ndarray] | None = None) -> torch.Tensor:
        return self.statistics.rating_of(items)


class RecentPopularityConfig(ModelSection):
    name: Literal["popularity_recent"] = "popularity_recent"
    recent_days: float = Field(30.0, gt=0)
    """Only training events in the last this many days (before the training end) count."""


class RecentPopularity(Popularity):
    """Popularity over the last `recent_days` of training events (ties: all-time popularity, as in every ranking)."""

    config_class = RecentPopularityConfig
    fits_on_rank_shards = False  # its window ends at the newest training event of the whole log

    def __init__(self, config: RecentPopularityConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.recent_days = config.recent_days
        self.register_buffer("recent_counts", torch.zeros(catalog.n_items + 1))

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        events = train.events
        recent = events[events["timestamp"] >= events["timestamp"].max() - self.recent_days * 86400]
        counts = np.bincount(recent["item"].to_numpy(), minlength=train.n_items + 1).astype(np.float32)
        self.recent_counts.copy_(torch.from_numpy(counts))

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        return self.recent_counts.unsqueeze(0).expand(len(histories), -1)
