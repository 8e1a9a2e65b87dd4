"""Popularity: the floor every learned model must beat. Same list for every user, seen items removed later."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.prepare import PreparedData
from pipeline.models.base import TrainingStatistics


class PopularityModel(torch.nn.Module):
    """Ranks items by training interactions; predicts the most common category and the item's damped mean rating."""

    max_length = 1

    def __init__(self, n_items: int, n_categories: int):
        super().__init__()
        self.statistics = TrainingStatistics(n_items, n_categories)

    def fit_statistics(self, data: PreparedData) -> None:
        self.statistics.fit(data)

    def score_items(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self.statistics.item_counts.unsqueeze(0).expand(len(histories), -1)

    def predict_category(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self.statistics.category_prior.unsqueeze(0).expand(len(histories), -1)

    def predict_rating(self, histories: list[np.ndarray], items: np.ndarray) -> torch.Tensor:
        return self.statistics.item_rating_means[torch.as_tensor(items, dtype=torch.long)]
