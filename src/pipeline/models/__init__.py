"""Model zoo behind one interface (see `base`). `build_model` is the only place that maps a name to a class."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import ModelConfig
from pipeline.models.popularity import PopularityModel
from pipeline.models.sequence import SequenceRecommender


def uses_text_embeddings(config: ModelConfig) -> bool:
    return config.name != "popularity" and "text" in config.item_representation


def build_model(
    config: ModelConfig,
    n_items: int,
    category_matrix: np.ndarray,
    item_text_embeddings: np.ndarray | None,
    seed: int = 0,
) -> torch.nn.Module:
    """A fresh model. `category_matrix` is [n_items + 1, n_categories]; embeddings are [n_items + 1, width] or None.

    The initial weights depend on `seed` only, not on whatever used the global random state before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _construct(config, n_items, category_matrix, item_text_embeddings)


def _construct(config, n_items, category_matrix, item_text_embeddings) -> torch.nn.Module:
    if config.name == "popularity":
        return PopularityModel(n_items, category_matrix.shape[1])
    if item_text_embeddings is None:
        item_text_embeddings = np.zeros((n_items + 1, 1), dtype=np.float32)
    return SequenceRecommender(config, item_text_embeddings, category_matrix)


__all__ = ["build_model", "uses_text_embeddings", "PopularityModel", "SequenceRecommender"]
