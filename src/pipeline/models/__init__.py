"""Model zoo behind one interface (see `base`). `build_model` is the only place that maps a name to a class."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import ModelConfig
from pipeline.models.attention import TargetAttention
from pipeline.models.classifiers import CategoryClassifier
from pipeline.models.content import BertContent, TfidfContent
from pipeline.models.neighbourhood import ItemCF, UserCF
from pipeline.models.popularity import PopularityModel, RecentPopularity
from pipeline.models.sequence import SequenceRecommender

SEQUENCE_MODELS = ("transformer", "lstm", "gru")
# Models that read items through ItemRepresentation (text, id, or both).
ITEM_REPRESENTATION_MODELS = (*SEQUENCE_MODELS, "target_attention")


def uses_text_embeddings(config: ModelConfig) -> bool:
    if config.name in ITEM_REPRESENTATION_MODELS:
        return "text" in config.item_representation
    return config.name in ("bert_content", "logistic_regression", "random_forest")


def build_model(
    config: ModelConfig,
    n_items: int,
    category_matrix: np.ndarray,
    item_text_embeddings: np.ndarray | None,
    seed: int = 0,
    n_users: int = 0,
) -> torch.nn.Module:
    """A fresh model. `category_matrix` is [n_items + 1, n_categories]; embeddings are [n_items + 1, width] or None.

    The initial weights depend on `seed` only, not on whatever used the global random state before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _construct(config, n_items, category_matrix, item_text_embeddings, n_users, seed)


def _construct(config, n_items, category_matrix, item_text_embeddings, n_users, seed) -> torch.nn.Module:
    n_categories = category_matrix.shape[1]
    baselines = {
        "popularity": lambda: PopularityModel(n_items, n_categories),
        "popularity_recent": lambda: RecentPopularity(n_items, n_categories, config.recent_days),
        "item_cf": lambda: ItemCF(n_items, category_matrix, config.max_length, config.neighbours),
        "user_cf": lambda: UserCF(n_items, category_matrix, config.max_length, config.neighbours, n_users),
        "tfidf_content": lambda: TfidfContent(n_items, category_matrix, config.max_length, config.decay_half_life),
        "bert_content": lambda: BertContent(n_items, category_matrix, config.max_length, config.decay_half_life, item_text_embeddings),
        "logistic_regression": lambda: CategoryClassifier(
            "logistic_regression", n_items, category_matrix, config.max_length, config.decay_half_life, item_text_embeddings, seed
        ),
        "random_forest": lambda: CategoryClassifier(
            "random_forest", n_items, category_matrix, config.max_length, config.decay_half_life, item_text_embeddings, seed
        ),
    }
    if config.name in baselines:
        return baselines[config.name]()
    if item_text_embeddings is None:
        item_text_embeddings = np.zeros((n_items + 1, 1), dtype=np.float32)
    if config.name == "target_attention":
        return TargetAttention(config, item_text_embeddings, category_matrix)
    return SequenceRecommender(config, item_text_embeddings, category_matrix)


__all__ = [
    "build_model", "uses_text_embeddings", "SEQUENCE_MODELS", "BertContent", "CategoryClassifier", "ItemCF", "PopularityModel",
    "RecentPopularity", "SequenceRecommender", "TargetAttention", "TfidfContent", "UserCF",
]
