"""Popularity: the floor every learned model must beat. Same list for every user (less what they have seen)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.prepare import TRAIN, PreparedData
from pipeline.models.base import TrainingStatistics, rank_seen_last


class PopularityModel(torch.nn.Module):
    """Ranks items by training interactions; predicts the most common category and the item's damped mean rating."""

    max_length = 1

    def __init__(self, n_items: int, n_categories: int):
        super().__init__()
        self.statistics = TrainingStatistics(n_items, n_categories)

    def fit_statistics(self, data: PreparedData) -> None:
        self.statistics.fit(data)

    def score_items(self, histories: list[np.ndarray]) -> torch.Tensor:
        return rank_seen_last(self.catalog_scores(histories), histories, self.statistics.repeat_share)

    def catalog_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self.statistics.item_counts.unsqueeze(0).expand(len(histories), -1)

    def predict_category(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self.statistics.category_prior.unsqueeze(0).expand(len(histories), -1)

    def predict_rating(self, histories: list[np.ndarray], items: np.ndarray) -> torch.Tensor:
        return self.statistics.item_rating_means[torch.as_tensor(items, dtype=torch.long)]


class RecentPopularity(PopularityModel):
    """Popularity over the last `recent_days` of training events; all-time counts only break ties."""

    def __init__(self, n_items: int, n_categories: int, recent_days: float):
        super().__init__(n_items, n_categories)
        self.recent_days = recent_days
        self.register_buffer("recent_counts", torch.zeros(n_items + 1))

    def fit_statistics(self, data: PreparedData) -> None:
        super().fit_statistics(data)
        train = data.events[data.events["split"] == TRAIN]
        recent = train[train["timestamp"] >= train["timestamp"].max() - self.recent_days * 86400]
        counts = np.bincount(recent["item"].to_numpy(), minlength=data.n_items + 1).astype(np.float32)
        self.recent_counts.copy_(torch.from_numpy(counts))

    def catalog_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        all_time = self.statistics.item_counts
        scores = self.recent_counts + all_time / (all_time.max().clamp(min=1) + 1)
        return scores.unsqueeze(0).expand(len(histories), -1)
