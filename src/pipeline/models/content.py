"""Content-based recommendation: a user profile from the texts of their recent items, ranked by cosine similarity.

The profile is the recency-decayed mean of the user's item vectors (the newest weighs 1, halving every
`decay_half_life` items). Item vectors are either TF-IDF over the item text (scikit-learn, sparse) or the BERT text
embeddings. Items are ranked by cosine similarity to the profile, so items nobody interacted with yet are reachable.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from pipeline.data.prepare import TrainView
from pipeline.models.base import Catalog, ScoringModel, recency_weights
from pipeline.schema import ModelSection


class ProfileSection(ModelSection):
    """Shared by the models that read a user as a recency-weighted profile of their recent items."""

    max_length: int = Field(50, ge=2)
    """How many of the user's most recent items make the profile."""
    decay_half_life: float = Field(10.0, gt=0)
    """A history item's weight halves every this many newer items."""


class BertContentConfig(ProfileSection):
    name: Literal["bert_content"] = "bert_content"


class TfidfContentConfig(ProfileSection):
    name: Literal["tfidf_content"] = "tfidf_content"


class BertContent(ScoringModel):
    config_class = BertContentConfig
    reads_text = True

    def __init__(self, config: BertContentConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.half_life = config.decay_half_life
        embeddings = torch.as_tensor(catalog.text_embeddings_or_zeros(), dtype=torch.float32)
        self.register_buffer("item_vectors", torch.nn.functional.normalize(embeddings, dim=1))

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        profiles = recency_weights(histories, self.max_length, self.half_life, self.n_items) @ self.item_vectors
        return torch.nn.functional.normalize(profiles, dim=1) @ self.item_vectors.T


class TfidfContent(ScoringModel):
    config_class = TfidfContentConfig

    @classmethod
    def scores_untrained_items(cls, config: TfidfContentConfig) -> bool:
        return True  # by the words of their texts
    resizable_buffers = ("tfidf_indptr", "tfidf_indices", "tfidf_values")

    def __init__(self, config: TfidfContentConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.half_life = config.decay_half_life
        self.register_buffer("tfidf_indptr", torch.zeros(catalog.n_items + 2, dtype=torch.long))
        self.register_buffer("tfidf_indices", torch.zeros(0, dtype=torch.long))
        self.register_buffer("tfidf_values", torch.zeros(0))

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        from sklearn.feature_extraction.text import (
            TfidfVectorizer,  # scikit-learn loads in ~2 s: only when used
        )

        vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english", ngram_range=(1, 2), min_df=2, dtype=np.float32)
        # Row 0 is the padding item's empty text; fitting on item text only, no behavior, so nothing leaks.
        matrix = vectorizer.fit_transform(train.item_texts).tocsr()
        self.tfidf_indptr = torch.from_numpy(matrix.indptr.astype(np.int64))
        self.tfidf_indices = torch.from_numpy(matrix.indices.astype(np.int64))
        self.tfidf_values = torch.from_numpy(matrix.data.astype(np.float32))

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        indices = self.tfidf_indices.numpy()
        width = int(indices.max()) + 1 if len(indices) else 1
        items = sp.csr_matrix((self.tfidf_values.numpy(), indices, self.tfidf_indptr.numpy()), shape=(self.n_items + 1, width))
        weights = recency_weights(histories, self.max_length, self.half_life, self.n_items).numpy()
        profiles = (items.T @ weights.T).T
        profiles /= np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
        return torch.from_numpy((items @ profiles.T).T.astype(np.float32))
