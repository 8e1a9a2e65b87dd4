"""Content-based recommendation: a user profile from the texts of their recent items, ranked by cosine similarity.

The profile is the recency-decayed mean of the user's item vectors (the newest weighs 1, halving every
`decay_half_life` items). Item vectors are either TF-IDF over the item text (scikit-learn, sparse) or the BERT text
embeddings. Items are ranked by cosine similarity to the profile, so items nobody interacted with yet are reachable.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.data.prepare import PreparedData
from pipeline.models.base import ScoringModel, recency_weights


class BertContent(ScoringModel):
    def __init__(self, n_items: int, category_matrix: np.ndarray, max_length: int, half_life: float, item_text_embeddings: np.ndarray):
        super().__init__(n_items, category_matrix, max_length)
        self.half_life = half_life
        self.register_buffer("item_vectors", torch.nn.functional.normalize(torch.as_tensor(item_text_embeddings, dtype=torch.float32), dim=1))

    def catalog_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        profiles = recency_weights(histories, self.max_length, self.half_life, self.n_items) @ self.item_vectors
        scores = torch.nn.functional.normalize(profiles, dim=1) @ self.item_vectors.T
        return self.break_ties_by_popularity(scores)


class TfidfContent(ScoringModel):
    RESIZABLE_BUFFERS = ("tfidf_indptr", "tfidf_indices", "tfidf_values")

    def __init__(self, n_items: int, category_matrix: np.ndarray, max_length: int, half_life: float):
        super().__init__(n_items, category_matrix, max_length)
        self.half_life = half_life
        self.register_buffer("tfidf_indptr", torch.zeros(n_items + 2, dtype=torch.long))
        self.register_buffer("tfidf_indices", torch.zeros(0, dtype=torch.long))
        self.register_buffer("tfidf_values", torch.zeros(0))

    def fit_statistics(self, data: PreparedData) -> None:
        super().fit_statistics(data)
        from sklearn.feature_extraction.text import (
            TfidfVectorizer,  # scikit-learn loads in ~2 s: only when used
        )

        vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english", ngram_range=(1, 2), min_df=2, dtype=np.float32)
        # Row 0 is the padding item's empty text; fitting on item text only, no behavior, so nothing leaks.
        matrix = vectorizer.fit_transform(data.item_texts).tocsr()
        self.tfidf_indptr = torch.from_numpy(matrix.indptr.astype(np.int64))
        self.tfidf_indices = torch.from_numpy(matrix.indices.astype(np.int64))
        self.tfidf_values = torch.from_numpy(matrix.data.astype(np.float32))

    def catalog_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        indices = self.tfidf_indices.numpy()
        width = int(indices.max()) + 1 if len(indices) else 1
        items = sp.csr_matrix((self.tfidf_values.numpy(), indices, self.tfidf_indptr.numpy()), shape=(self.n_items + 1, width))
        weights = recency_weights(histories, self.max_length, self.half_life, self.n_items).numpy()
        profiles = (items.T @ weights.T).T
        profiles /= np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
        scores = torch.from_numpy((items @ profiles.T).T.astype(np.float32))
        return self.break_ties_by_popularity(scores)
