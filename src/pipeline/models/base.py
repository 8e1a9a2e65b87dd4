"""The one interface every model implements; the trainer and the evaluator see nothing else.

A model is a `torch.nn.Module` (so its state saves to safetensors the same way for all) with:

- `fit_statistics(data)`: counts taken from the training split (popularity, category prior, rating means).
  Baselines are fully fitted here; a model without trainable parameters is never handed to the gradient loop.
- `training_loss(inputs, targets, target_ratings)`: one scalar loss and its named parts, for models with parameters.
- `score_items(histories)`: [users, n_items + 1] scores over the whole catalog (column 0 is padding).
- `predict_category(histories)`: [users, n_categories] scores for the category of the next interaction.
- `predict_rating(histories, items)`: [users] predicted rating of the given next items.
- `max_length`: how many of the most recent history items the model reads.

Histories are lists of item-index arrays, oldest first, of any length (users never seen in training included).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.prepare import TRAIN, PreparedData


def pad_histories(histories: list[np.ndarray], max_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [users, L] item indices of the most recent `max_length` items, and each row's length."""
    recent = [np.asarray(history[-max_length:], dtype=np.int64) for history in histories]
    lengths = np.array([len(history) for history in recent], dtype=np.int64)
    padded = np.zeros((len(recent), max(1, int(lengths.max(initial=1)))), dtype=np.int64)
    for row, history in enumerate(recent):
        padded[row, : len(history)] = history
    return torch.from_numpy(padded).to(device), torch.from_numpy(lengths).to(device)


class TrainingStatistics(torch.nn.Module):
    """Counts every model starts from: item popularity, category prior and damped item rating means."""

    # Pseudo-count pulling an item's mean rating toward the global mean: few ratings, little trust.
    RATING_DAMPING = 10.0

    def __init__(self, n_items: int, n_categories: int):
        super().__init__()
        self.register_buffer("item_counts", torch.zeros(n_items + 1))
        self.register_buffer("category_prior", torch.zeros(n_categories))
        self.register_buffer("item_rating_means", torch.zeros(n_items + 1))
        self.register_buffer("global_rating_mean", torch.zeros(()))

    @torch.no_grad()
    def fit(self, data: PreparedData) -> None:
        train = data.events[data.events["split"] == TRAIN]
        items = torch.from_numpy(train["item"].to_numpy(copy=True))
        counts = torch.bincount(items, minlength=data.n_items + 1).float()
        counts[0] = 0
        self.item_counts.copy_(counts)
        self.category_prior.copy_(counts @ torch.from_numpy(data.category_matrix()))
        if data.has_ratings:
            ratings = torch.from_numpy(train["rating"].to_numpy(copy=True)).float()
            global_mean = ratings.mean()
            sums = torch.zeros(data.n_items + 1).index_add_(0, items, ratings)
            self.global_rating_mean.fill_(global_mean)
            self.item_rating_means.copy_((sums + self.RATING_DAMPING * global_mean) / (counts + self.RATING_DAMPING))
