"""How an item and a history position enter a model: text, id and side-feature parts of the item vector, and the
event type of each position.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.data.features import ItemFeatures
from pipeline.models.base import Catalog
from pipeline.models.text_neighbours import TextNeighbours, text_neighbours
from pipeline.schema import ModelSection


class ItemRepresentation(nn.Module):
    """[n_items + 1, width] item vectors: projected frozen text embedding, learnable id embedding, or their sum.

    Given the training item counts, items without training events borrow their id rows from their nearest trained
    items by text (`text_neighbours`), so a text model can rank items it never saw being chosen.
    """

    def __init__(self, item_text_embeddings: np.ndarray, width: int, uses: str, features: ItemFeatures | None = None):
        super().__init__()
        n_rows, text_width = item_text_embeddings.shape
        self.register_buffer("item_text_embeddings", torch.as_tensor(item_text_embeddings, dtype=torch.float32))
        self.text_projection = nn.Linear(text_width, width) if "text" in uses else None
        self.id_embedding = nn.Embedding(n_rows, width, padding_idx=0) if "id" in uses else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=0.02)
            with torch.no_grad():
                self.id_embedding.weight[0].zero_()
        self.numeric_projection = self.label_embeddings = None
        if features is not None:
            if features.numeric.shape[1]:
                self.register_buffer("item_numeric", torch.as_tensor(features.numeric, dtype=torch.float32))
                self.numeric_projection = nn.Linear(features.numeric.shape[1], width)
            if features.categorical_sizes:
                self.register_buffer("item_labels", torch.as_tensor(features.categorical, dtype=torch.long))
                self.label_embeddings = nn.ModuleList(nn.Embedding(size, width) for size in features.categorical_sizes)
                for embedding in self.label_embeddings:
                    nn.init.normal_(embedding.weight, std=0.02)
        self._cached: tuple | None = None
        self._borrowing: tuple | None = None

    def forward(self, item_counts: torch.Tensor | None = None, id_dropout: float = 0.0) -> torch.Tensor:
        """With `id_dropout` (training), that share of the items, drawn afresh, has its id rows hidden."""
        borrowing = None if item_counts is None else self.untrained_borrowing(item_counts)
        if torch.is_grad_enabled():
            return self._compute(borrowing, id_dropout)
        # Scoring calls this once per user chunk; with a large catalog the text projection dominates, so reuse it
        # until a weight changes (in-place updates bump a tensor's version; moving the model replaces the tensors).
        key = (borrowing, *((id(tensor), tensor._version) for tensor in (*self.parameters(), *self.buffers())))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._compute(borrowing))
        return self._cached[1]

    def untrained_borrowing(self, item_counts: torch.Tensor) -> TextNeighbours:
        """Who borrows from whom: items with no training events from trained items (nobody without text)."""
        key = (id(item_counts), item_counts._version, item_counts.device)
        if self._borrowing is None or self._borrowing[0] != key:
            trained = item_counts > 0
            untrained = ~trained
            untrained[0] = False  # padding
            lenders = trained if self.text_projection is not None else torch.zeros_like(trained)
            self._borrowing = (key, text_neighbours(self.item_text_embeddings, lenders, untrained))
        return self._borrowing[1]

    def _compute(self, borrowing: TextNeighbours | None, id_dropout: float = 0.0) -> torch.Tensor:
        parts = []
        if self.text_projection is not None:
            parts.append(self.text_projection(self.item_text_embeddings))
        if self.id_embedding is not None:
            id_rows = self.id_embedding.weight if borrowing is None else borrowing.fill(self.id_embedding.weight)
            if id_dropout and self.text_projection is not None:
                kept = torch.rand(len(id_rows), 1, device=id_rows.device) >= id_dropout
                id_rows = id_rows * kept
            parts.append(id_rows)
        if self.numeric_projection is not None:
            parts.append(self.numeric_projection(self.item_numeric))
        if self.label_embeddings is not None:
            parts.extend(embedding(self.item_labels[:, column]) for column, embedding in enumerate(self.label_embeddings))
        representation = torch.stack(parts).sum(0)
        padding = torch.ones_like(representation[:, :1])
        padding[0] = 0
        return representation * padding


def item_representation(config: ModelSection, catalog: Catalog) -> ItemRepresentation:
    features = catalog.item_features if config.item_features else None
    return ItemRepresentation(catalog.text_embeddings_or_zeros(), config.hidden_size, config.item_representation, features)


def event_embedding(config: ModelSection, catalog: Catalog) -> nn.Embedding | None:
    """One learned vector per event type (code 0, unknown or padding, stays zero); None without event types."""
    if not (config.event_types and catalog.event_names):
        return None
    embedding = nn.Embedding(len(catalog.event_names) + 1, config.hidden_size, padding_idx=0)
    nn.init.normal_(embedding.weight, std=0.02)
    with torch.no_grad():
        embedding.weight[0].zero_()
    return embedding


def with_event_types(items: torch.Tensor, embedding: nn.Embedding | None, events: torch.Tensor | None) -> torch.Tensor:
    """[batch, L, width] item vectors plus their positions' event-type vectors (unchanged without types)."""
    if embedding is None or events is None:
        return items
    return items + embedding(events)
