"""Target-attention interest model: each candidate item attends over the user's history (the seed design's attention
model, DIN-style), trained with binary cross-entropy against sampled negatives.

For a history h_1..h_n (item vectors plus recency positions) and a candidate c:
    a_i = softmax_i((W h_i) . c / sqrt(d)),   score(c) = sum_i a_i (h_i . c) + bias_c
so a user's interest is read differently for every candidate: the history items that resemble the candidate speak.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.data.prepare import PreparedData
from pipeline.models.base import ScoringModel, pad_histories
from pipeline.models.sequence import ItemRepresentation, log_popularity

# Users scored at once inside score_items: memory is users x catalog x history floats.
SCORING_CHUNK = 32


class TargetAttention(ScoringModel):
    # Parameters with one row per catalog item: a warm start maps them row by row through item ids.
    ITEM_ROWS = ("items.id_embedding.weight", "item_bias")

    def __init__(self, config: ModelConfig, item_text_embeddings: np.ndarray, category_matrix: np.ndarray):
        n_items = item_text_embeddings.shape[0] - 1
        super().__init__(n_items, category_matrix, config.max_length)
        width = config.hidden_size
        self.negatives = config.negatives
        self.items = ItemRepresentation(item_text_embeddings, width, config.item_representation)
        self.positions = nn.Embedding(config.max_length, width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.query = nn.Linear(width, width, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))
        self.scale = 1.0 / math.sqrt(width)

    def fit_statistics(self, data: PreparedData) -> None:
        super().fit_statistics(data)
        with torch.no_grad():
            self.item_bias.copy_(log_popularity(self.statistics.item_counts))

    def _history(self, inputs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        positions = self.positions(torch.arange(inputs.shape[1], device=inputs.device))
        return self.dropout(items[inputs] + positions)

    def _attend(self, history: torch.Tensor, candidates: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """history [B, L, d], candidates [B, ..., d], visible [B, ..., L] -> scores [B, ...] (without bias)."""
        keys = self.query(history)
        shape = candidates.shape[:-1]
        flat = candidates.reshape(candidates.shape[0], -1, candidates.shape[-1])
        logits = torch.einsum("bkd,bid->bki", flat, keys).reshape(*shape, -1) * self.scale
        values = torch.einsum("bkd,bid->bki", flat, history).reshape(*shape, -1)
        weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
        return (weights * values).sum(-1)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, target_ratings: torch.Tensor | None):
        """The training loss parts of a batch of windows (see `training.fit`)."""
        items = self.items(self.statistics.item_counts)
        batch, length = inputs.shape
        history = self._history(inputs, items)
        # Negatives among the items seen in training: the others take their text neighbours' rows when scored.
        trained_items = torch.nonzero(self.statistics.item_counts > 0).flatten()
        negatives = trained_items[torch.randint(len(trained_items), (batch, length, self.negatives), device=inputs.device)]
        candidates = torch.cat([targets.unsqueeze(-1), negatives], dim=-1)  # [B, L, 1 + K]
        # Position t may look at history items 0..t only.
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).tril()
        visible = causal[None, :, None, :].expand(batch, length, candidates.shape[-1], length)
        scores = self._attend(history, items[candidates], visible) + self.item_bias[candidates]
        labels = torch.zeros_like(scores)
        labels[..., 0] = 1.0
        mask = (targets > 0).unsqueeze(-1).expand_as(scores)
        return {"item": nn.functional.binary_cross_entropy_with_logits(scores[mask], labels[mask])}

    def catalog_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        items = self.items(self.statistics.item_counts)
        item_bias = self.items.untrained_borrowing(self.statistics.item_counts).fill(self.item_bias)
        device = items.device
        chunks = []
        for start in range(0, len(histories), SCORING_CHUNK):
            inputs, lengths = pad_histories(histories[start : start + SCORING_CHUNK], self.max_length, device)
            history = self._history(inputs, items)
            visible = torch.arange(inputs.shape[1], device=device)[None, :] < lengths[:, None]  # [B, L]
            candidates = items.unsqueeze(0).expand(len(inputs), -1, -1)
            visible = visible[:, None, :].expand(-1, items.shape[0], -1)
            chunks.append(self._attend(history, candidates, visible) + item_bias)
        return torch.cat(chunks)
