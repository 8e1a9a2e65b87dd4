"""Content-based recommendation: a user profile from the texts of their recent items, ranked by cosine similarity.

The profile is the recency-decayed mean of the user's item vectors (the newest weighs 1, halving every
`decay_half_life` items). Item vectors are either TF-IDF over the item text (scikit-learn, sparse) or the BERT text
embeddings. Items are ranked by cosine similarity to the profile, so items nobody interacted with yet are reachable.
With item side features (`data.items.categorical_features`, `numeric_features`), an item's vector is its text
vector joined with its labels (each categorical value, each numeric feature's quantile band), weighted by
`feature_weight`: a user who buys one brand at one price level is near other items of that brand and price.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from pipeline.data.prepared import TrainView
from pipeline.models.base import Catalog, ScoringModel, recency_weights
from pipeline.schema import ModelSection


class ProfileSection(ModelSection):
    """Shared by the models that read a user as a recency-weighted profile of their recent items."""

    max_length: int = Field(50, ge=2)
    """How many of the user's most recent items make the profile."""
    decay_half_life: float = Field(10.0, gt=0)
    """A history item's weight halves every this many newer items."""


class ContentSection(ProfileSection):
    feature_weight: float = Field(0.5, ge=0)
    """Weight of an item's side-feature labels (categorical values, numeric quantile bands) beside its text, both
    parts of unit length; 0 = text only. Read only where `data.items` lists side features."""


class ProfileModel(ScoringModel):
    """A user's profile is the recency-weighted sum of their items' vectors; items rank by cosine to it."""

    resizable_buffers = ("label_indptr", "label_indices", "label_values")

    def __init__(self, config: ContentSection, catalog: Catalog):
        super().__init__(config, catalog)
        self.half_life = config.decay_half_life
        self.feature_weight = config.feature_weight
        labels = catalog.item_features.label_matrix() if catalog.item_features is not None and config.feature_weight else None
        self.register_csr("label", labels if labels is not None and labels.nnz else sp.csr_matrix((catalog.n_items + 1, 0)))

    def register_csr(self, name: str, matrix: sp.csr_matrix) -> None:
        """A sparse item matrix as three buffers (`resizable_buffers`), so it is saved with the weights."""
        for part, values, dtype in (("indptr", matrix.indptr, torch.long), ("indices", matrix.indices, torch.long),
                                    ("values", matrix.data, torch.float32)):
            self.register_buffer(f"{name}_{part}", torch.as_tensor(np.asarray(values), dtype=dtype))

    def csr(self, name: str) -> sp.csr_matrix:
        indices = getattr(self, f"{name}_indices").numpy()
        width = int(indices.max()) + 1 if len(indices) else 1
        parts = getattr(self, f"{name}_values").numpy(), indices, getattr(self, f"{name}_indptr").numpy()
        return sp.csr_matrix(parts, shape=(self.n_items + 1, width))

    def profile_weights(self, histories: list[np.ndarray]) -> torch.Tensor:
        return recency_weights(histories, self.max_length, self.half_life, self.n_items)

    def with_labels(self, text_scores: torch.Tensor, text_profiles: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Cosine over [text, feature_weight x labels] from the text part's cosine (`text_scores`, items of unit
        or zero text norm) and its unnormalised profiles; unchanged without labels."""
        if not len(self.label_values):
            return text_scores
        labels = self.csr("label")
        label_profiles = (labels.T @ weights.numpy().T).T
        squared = self.feature_weight**2
        text_norms = text_profiles.norm(dim=1, keepdim=True)
        profile_norms = torch.sqrt(text_norms**2 + squared * torch.from_numpy(np.square(label_profiles).sum(axis=1, keepdims=True)))
        item_norms = torch.sqrt(self.text_norms_squared() + squared * torch.from_numpy(np.asarray(labels.multiply(labels).sum(axis=1)).ravel()))
        agreement = text_scores * text_norms + squared * torch.from_numpy((labels @ label_profiles.T).T.astype(np.float32))
        return agreement / profile_norms.clamp_min(1e-12) / item_norms.clamp_min(1e-12)

    def text_norms_squared(self) -> torch.Tensor:
        raise NotImplementedError


class BertContentConfig(ContentSection):
    name: Literal["bert_content"] = "bert_content"


class TfidfContentConfig(ContentSection):
    name: Literal["tfidf_content"] = "tfidf_content"


class BertContent(ProfileModel):
    config_class = BertContentConfig
    reads_text = True

    def __init__(self, config: BertContentConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        embeddings = torch.as_tensor(catalog.text_embeddings_or_zeros(), dtype=torch.float32)
        self.register_buffer("item_vectors", torch.nn.functional.normalize(embeddings, dim=1))

    def text_norms_squared(self) -> torch.Tensor:
        return self.item_vectors.square().sum(dim=1)

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        weights = self.profile_weights(histories)
        profiles = weights @ self.item_vectors
        scores = torch.nn.functional.normalize(profiles, dim=1) @ self.item_vectors.T
        return self.with_labels(scores, profiles, weights)


class TfidfContent(ProfileModel):
    config_class = TfidfContentConfig
    resizable_buffers = ProfileModel.resizable_buffers + ("tfidf_indptr", "tfidf_indices", "tfidf_values")

    @classmethod
    def scores_untrained_items(cls, config: TfidfContentConfig) -> bool:
        return True  # by the words of their texts

    def __init__(self, config: TfidfContentConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.register_csr("tfidf", sp.csr_matrix((catalog.n_items + 1, 0), dtype=np.float32))

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        from sklearn.feature_extraction.text import (
            TfidfVectorizer,  # scikit-learn loads in ~2 s: only when used
        )

        vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english", ngram_range=(1, 2), min_df=2, dtype=np.float32)
        # Row 0 is the padding item's empty text; fitting on item text only, no behavior, so nothing leaks.
        self.register_csr("tfidf", vectorizer.fit_transform(train.item_texts).tocsr())

    def text_norms_squared(self) -> torch.Tensor:
        items = self.csr("tfidf")
        return torch.from_numpy(np.asarray(items.multiply(items).sum(axis=1), dtype=np.float32).ravel())

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        items = self.csr("tfidf")
        weights = self.profile_weights(histories)
        profiles = (items.T @ weights.numpy().T).T
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        scores = torch.from_numpy((items @ (profiles / np.maximum(norms, 1e-12)).T).T.astype(np.float32))
        return self.with_labels(scores, torch.from_numpy(profiles.astype(np.float32)), weights)
