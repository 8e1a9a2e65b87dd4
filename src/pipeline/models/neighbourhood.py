"""Collaborative filtering by neighbourhoods, on the binary user x item matrix of training events.

- Item-based: cosine similarity between item columns, pruned to each item's top `neighbours`; a user's score for an
  item is the sum of its similarities to the user's history items.
- User-based: cosine similarity between the user's history and every training user, the top `neighbours` users vote
  with their similarity. Works for users never seen in training: only their history is used.
Both use sparse matrices (scipy) and chunked dense products, never Python loops over pairs.
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

# Items whose similarity rows are computed at once: bounds memory at chunk x n_items floats.
SIMILARITY_CHUNK = 1024


def interaction_matrix(sequences: dict[int, np.ndarray], n_rows: int, n_items: int) -> sp.csr_matrix:
    """Binary [n_rows, n_items + 1] matrix, row r = the items of sequences[r] (repeats count once)."""
    rows = np.concatenate([np.full(len(items), user) for user, items in sequences.items()]) if sequences else np.zeros(0)
    columns = np.concatenate(list(sequences.values())) if sequences else np.zeros(0)
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(n_rows, n_items + 1))
    matrix.data[:] = 1.0
    return matrix


class NeighbourhoodSection(ModelSection):
    max_length: int = Field(50, ge=2)
    """How many of the user's most recent items are looked up."""
    neighbours: int = Field(100, ge=1)
    """Similar items (item_cf) or users (user_cf) kept per item or user."""


class ItemCFConfig(NeighbourhoodSection):
    name: Literal["item_cf"] = "item_cf"


class UserCFConfig(NeighbourhoodSection):
    name: Literal["user_cf"] = "user_cf"


def _unit_columns(matrix: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=0))).ravel()
    return (matrix @ sp.diags(1.0 / np.maximum(norms, 1e-12))).tocsr()


class ItemCF(ScoringModel):
    config_class = ItemCFConfig

    def __init__(self, config: ItemCFConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        n_items = catalog.n_items
        neighbours = min(config.neighbours, n_items)  # a small catalog has fewer items than neighbours asked for
        self.register_buffer("neighbour_items", torch.zeros(n_items + 1, neighbours, dtype=torch.long))
        self.register_buffer("neighbour_weights", torch.zeros(n_items + 1, neighbours))

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        users_by_items = _unit_columns(interaction_matrix(train.sequences(), train.n_users, train.n_items))
        items_by_users = users_by_items.T.tocsr()
        k = self.neighbour_items.shape[1]
        for start in range(0, train.n_items + 1, SIMILARITY_CHUNK):
            stop = min(start + SIMILARITY_CHUNK, train.n_items + 1)
            similarity = (items_by_users[start:stop] @ users_by_items).toarray()
            similarity[np.arange(stop - start), np.arange(start, stop)] = 0.0  # an item is not its own neighbour
            similarity[:, 0] = 0.0
            top = np.argpartition(-similarity, k - 1, axis=1)[:, :k] if k < similarity.shape[1] else np.argsort(-similarity, axis=1)
            self.neighbour_items[start:stop] = torch.from_numpy(top)
            self.neighbour_weights[start:stop] = torch.from_numpy(np.take_along_axis(similarity, top, axis=1))

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        scores = torch.zeros(len(histories), self.n_items + 1)
        for row, history in enumerate(histories):
            recent = torch.as_tensor(np.unique(history[-self.max_length :]), dtype=torch.long)
            scores[row].index_add_(0, self.neighbour_items[recent].reshape(-1), self.neighbour_weights[recent].reshape(-1))
        return scores


class UserCF(ScoringModel):
    config_class = UserCFConfig
    resizable_buffers = ("user_item_indptr", "user_item_indices")

    def __init__(self, config: UserCFConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.neighbours = config.neighbours
        # The training matrix in CSR parts, as buffers so it saves with the model.
        self.register_buffer("user_item_indptr", torch.zeros(catalog.n_users + 1, dtype=torch.long))
        self.register_buffer("user_item_indices", torch.zeros(0, dtype=torch.long))

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        matrix = interaction_matrix(train.sequences(), train.n_users, train.n_items)
        self.user_item_indptr = torch.from_numpy(matrix.indptr.astype(np.int64))
        self.user_item_indices = torch.from_numpy(matrix.indices.astype(np.int64))

    def _training_matrix(self) -> sp.csr_matrix:
        indices = self.user_item_indices.numpy()
        indptr = self.user_item_indptr.numpy()
        return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(indptr) - 1, self.n_items + 1))

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        train = self._training_matrix()
        queries = interaction_matrix({row: h[-self.max_length :] for row, h in enumerate(histories)}, len(histories), self.n_items)
        overlap = (queries @ train.T).toarray()
        norms = np.sqrt(np.asarray(queries.sum(axis=1))) * np.sqrt(np.asarray(train.sum(axis=1))).T
        similarity = overlap / np.maximum(norms, 1e-12)
        k = min(self.neighbours, similarity.shape[1])
        keep = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        votes = np.zeros_like(similarity)
        np.put_along_axis(votes, keep, np.take_along_axis(similarity, keep, axis=1), axis=1)
        return torch.from_numpy((train.T @ votes.T).T.astype(np.float32))
