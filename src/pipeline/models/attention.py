"""Target-attention interest model: each candidate item attends over the user's history (the seed design's attention
model, DIN-style), trained with binary cross-entropy against sampled negatives.

For a history h_1..h_n (item vectors plus recency positions) and a candidate c:
    a_i = softmax_i((W h_i) . c / sqrt(d)),   score(c) = sum_i a_i (h_i . c) + bias_c
so a user's interest is read differently for every candidate: the history items that resemble the candidate speak.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from pipeline.data.prepared import TrainView
from pipeline.models.base import Catalog, ScoringModel, pad_histories
from pipeline.models.items import event_types, item_representation
from pipeline.models.sequence import ItemSequenceSection, log_popularity, representation_uses_text, weighted_mean

# Users scored at once inside score_items: memory is users x catalog x history floats.
SCORING_CHUNK = 32


class TargetAttentionConfig(ItemSequenceSection):
    name: Literal["target_attention"] = "target_attention"
    negatives: int = Field(20, ge=1)
    """Sampled negative items per positive in the binary cross-entropy."""


class TargetAttention(ScoringModel):
    config_class = TargetAttentionConfig
    item_row_parameters = ("items.id_embedding.weight", "item_bias")
    item_row_index = {"items.id_embedding.weight": "items.id_rows"}
    fits_on_rank_shards = True

    def __init__(self, config: TargetAttentionConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        n_items = catalog.n_items
        width = config.hidden_size
        self.negatives = config.negatives
        self.items = item_representation(config, catalog)
        self.event_types = event_types(config, catalog)
        self.positions = nn.Embedding(config.max_length, width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.query = nn.Linear(width, width, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))
        self.scale = 1.0 / math.sqrt(width)

    uses_text = classmethod(representation_uses_text)

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        self.items.keep_trained_rows(self.statistics.item_counts)
        with torch.no_grad():
            self.item_bias.copy_(log_popularity(self.statistics.item_counts))

    def _history(self, inputs: torch.Tensor, items: torch.Tensor, input_events: torch.Tensor | None) -> torch.Tensor:
        positions = self.positions(torch.arange(inputs.shape[1], device=inputs.device))
        vectors = items[inputs] if self.event_types is None else self.event_types.add_to_inputs(items[inputs], input_events)
        return self.dropout(vectors + positions)

    def _attend(self, history: torch.Tensor, candidates: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """history [B, L, d], candidates [B, ..., d], visible [B, ..., L] -> scores [B, ...] (without bias)."""
        keys = self.query(history)
        shape = candidates.shape[:-1]
        flat = candidates.reshape(candidates.shape[0], -1, candidates.shape[-1])
        logits = torch.einsum("bkd,bid->bki", flat, keys).reshape(*shape, -1) * self.scale
        values = torch.einsum("bkd,bid->bki", flat, history).reshape(*shape, -1)
        weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
        return (weights * values).sum(-1)

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, target_ratings: torch.Tensor | None,
        input_events: torch.Tensor | None = None, target_weights: torch.Tensor | None = None,
        target_events: torch.Tensor | None = None,
    ):
        """The training loss parts of a batch of windows (see `training.fit`)."""
        items = self.items(self.statistics.item_counts)
        batch, length = inputs.shape
        history = self._history(inputs, items, input_events)
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
        if target_weights is None:
            return {"item": nn.functional.binary_cross_entropy_with_logits(scores[mask], labels[mask])}
        losses = nn.functional.binary_cross_entropy_with_logits(scores[mask], labels[mask], reduction="none")
        return {"item": weighted_mean(losses, target_weights.unsqueeze(-1).expand_as(scores)[mask])}

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        items = self.items(self.statistics.item_counts)
        item_bias = self.items.untrained_borrowing(self.statistics.item_counts).fill(self.item_bias)
        device = items.device
        chunks = []
        for start in range(0, len(histories), SCORING_CHUNK):
            inputs, lengths = pad_histories(histories[start : start + SCORING_CHUNK], self.max_length, device)
            input_events = None if events is None else pad_histories(events[start : start + SCORING_CHUNK], self.max_length, device)[0]
            history = self._history(inputs, items, input_events)
            visible = torch.arange(inputs.shape[1], device=device)[None, :] < lengths[:, None]  # [B, L]
            candidates = items.unsqueeze(0).expand(len(inputs), -1, -1)
            visible = visible[:, None, :].expand(-1, items.shape[0], -1)
            chunks.append(self._attend(history, candidates, visible) + item_bias)
        return torch.cat(chunks)
