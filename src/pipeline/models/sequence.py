"""Sequence models of interest: an item representation, a causal backbone (LSTM, GRU or Transformer), three heads.

Item representation: the frozen text embedding projected to the model width, a learnable id embedding, or their sum,
plus the item's side features (numeric ones projected, one learned vector per categorical label) when configured. A
history position also carries its event type (view, cart, purchase) as a learned vector added to its item's.
Heads, all read from the backbone state after each position:
- next item: dot product with every item representation (tied with the input side) plus an item bias;
- category of the next interaction: a linear layer over the categories;
- rating of the next interaction: a small MLP over (state, candidate item representation), added to the item's
  damped mean rating.
Every position of a training window predicts its successor, so one pass over a sequence trains all its prefixes;
with `loss.future_items`, it also predicts the few items after the successor (a second loss part).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.data.prepared import TrainView
from pipeline.models.backbones import RecurrentBackbone, TransformerBackbone
from pipeline.models.base import Catalog, Recommender, pad_histories
from pipeline.models.items import event_types, item_representation
from pipeline.models.sampled import Candidates
from pipeline.ranking import history_mask
from pipeline.schema import ModelSection, Section


class ItemSequenceSection(ModelSection):
    """Shared by every model that reads a history as a sequence of item representations."""

    item_representation: Literal["text+id", "text", "id"] = "text+id"
    """How an item enters the model: its frozen text embedding projected to the model width, a learnable id
    embedding, or their sum."""
    hidden_size: int = Field(64, ge=4)
    """Width of the item representations and of the model's states."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """Dropout on the model's inputs and states."""
    max_length: int = Field(50, ge=2)
    """How many of the user's most recent items the model reads (and the training window length)."""
    item_features: bool = True
    """Add the items' side features (data.items.numeric_features, categorical_features) to their representation."""
    event_types: bool = True
    """Add a learned vector of each history position's event type (when the log has data.interactions.columns.event),
    so "carted, not yet bought" is learnable."""


def representation_uses_text(cls, config: ItemSequenceSection) -> bool:
    """`uses_text` of the models built on `ItemRepresentation`: their text embeddings are read when configured so."""
    return "text" in config.item_representation


class LossSection(Section):
    """The parts of a sequence model's training loss besides the next item's cross-entropy (weight 1)."""

    category_weight: float = Field(0.5, ge=0)
    """Weight of the next interaction's category cross-entropy."""
    rating_weight: float = Field(0.5, ge=0)
    """Weight of the next interaction's rating squared error (logs with ratings only)."""
    future_items: int = Field(0, ge=0)
    """Each position also learns the items this many steps after its next one (the "future" part). Where the
    order inside a session carries little (MovieLens users rate a batch of movies in one sitting), the next item is
    one draw from a set of equally likely ones, and its neighbours are as good a label."""
    future_weight: float = Field(0.5, ge=0)
    """Weight of the mean loss over the `future_items` later items."""

    @model_validator(mode="after")
    def _future_weight_needs_future_items(self):
        if not self.future_items and self.future_weight != LossSection.model_fields["future_weight"].default:
            raise ValueError("future_weight has no effect with future_items 0; set future_items too or drop it")
        return self


class SequenceSection(ItemSequenceSection):
    num_layers: int = Field(2, ge=1)
    """Stacked recurrent layers or Transformer blocks."""
    id_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of items whose id rows are hidden in each training batch (text + id): those items are read through
    their text alone, so the text path learns to stand on its own, as it must for items never trained."""
    loss: LossSection = LossSection()
    """The training loss's parts besides the next item."""


class TransformerConfig(SequenceSection):
    name: Literal["transformer"] = "transformer"
    num_heads: int = Field(2, ge=1)
    """Attention heads per block; they must divide hidden_size."""
    norm_first: bool = True
    """Layer norm before each attention/feed-forward block (pre-norm, plus one at the output) or after its residual
    sum (post-norm, the original Transformer's and SASRec's order)."""

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class LSTMConfig(SequenceSection):
    name: Literal["lstm"] = "lstm"


class GRUConfig(SequenceSection):
    name: Literal["gru"] = "gru"


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy averaged over the rows with each row's weight (the plain mean without weights)."""
    if weights is None:
        return nn.functional.cross_entropy(logits, labels)
    return weighted_mean(nn.functional.cross_entropy(logits, labels, reduction="none"), weights)


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-target training losses averaged with the targets' weights (event type, value)."""
    return (losses * weights).sum() / weights.sum().clamp(min=1e-12)


def log_popularity(counts: torch.Tensor) -> torch.Tensor:
    """Smoothed log share of training interactions: the item-bias start that ranks like popularity from step one."""
    return torch.log((counts + 1.0) / (counts.sum() + len(counts)))


def later_items(targets: torch.Tensor, count: int) -> torch.Tensor:
    """[batch, L, count]: at each position its next item (the target) and the `count - 1` after it (0 past the end)."""
    padded = nn.functional.pad(targets, (0, count - 1))
    return padded.unfold(1, count, 1)


class SequenceRecommender(Recommender):
    """The shared body of the sequence models; each subclass brings its backbone (`build_backbone`)."""

    item_row_parameters = ("items.id_embedding.weight", "item_bias")
    item_row_index = {"items.id_embedding.weight": "items.id_rows"}
    softmax_over_items = True
    fits_on_rank_shards = True
    category_row_parameters = ("category_head.weight", "category_head.bias")

    def __init__(self, config: SequenceSection, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        item_text_embeddings, category_matrix = catalog.text_embeddings_or_zeros(), catalog.category_matrix
        n_rows = item_text_embeddings.shape[0]
        width = config.hidden_size
        self.id_dropout = config.id_dropout
        self.loss = config.loss
        self.future_items = config.loss.future_items
        self.items = item_representation(config, catalog)
        self.event_types = event_types(config, catalog)
        self.backbone = self.build_backbone(config)
        self.item_bias = nn.Parameter(torch.zeros(n_rows))
        # Learned score offset for items already in the user's history: how likely people are to come back to an
        # item (strongly negative on MovieLens, where nobody rates a movie twice; positive for repeat purchases).
        self.repeat_bias = nn.Parameter(torch.zeros(()))
        self.category_head = nn.Linear(width, category_matrix.shape[1])
        self.rating_head = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, 1))

    uses_text = classmethod(representation_uses_text)

    def build_backbone(self, config: SequenceSection) -> nn.Module:
        raise NotImplementedError

    def loss_weights(self) -> dict[str, float]:
        return {"item": 1.0, "future": self.loss.future_weight, "category": self.loss.category_weight, "rating": self.loss.rating_weight}

    def fit_statistics(self, train: TrainView) -> None:
        super().fit_statistics(train)
        self.items.keep_trained_rows(self.statistics.item_counts)
        # Start the item bias at log-popularity: the first epoch already ranks like the popularity floor, and the
        # sequence signal is learned on top instead of first relearning how popular each item is.
        with torch.no_grad():
            self.item_bias.copy_(log_popularity(self.statistics.item_counts))
        if self.event_types is not None and train.has_event_types:
            self.event_types.fit(torch.from_numpy(train.events["event"].to_numpy(copy=True)), train.rank_local)

    def item_representations(self) -> torch.Tensor:
        return self.items(self.statistics.item_counts)

    def item_biases(self) -> torch.Tensor:
        return self.items.untrained_borrowing(self.statistics.item_counts).fill(self.item_bias)

    def states(
        self, inputs: torch.Tensor, items: torch.Tensor | None = None, input_events: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Backbone state after every position of right-padded item indices [batch, L] -> [batch, L, width]."""
        items = self.item_representations() if items is None else items
        vectors = items[inputs] if self.event_types is None else self.event_types.add_to_inputs(items[inputs], input_events)
        # Each backbone drops out its own input once (a second dropout here would hide 1 - (1 - p)^2 of it).
        return self.backbone(vectors)

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, target_ratings: torch.Tensor | None,
        input_events: torch.Tensor | None = None, target_weights: torch.Tensor | None = None,
        target_events: torch.Tensor | None = None, candidates: Candidates | None = None,
    ):
        """The training loss parts of a batch of windows (see `training.fit`): the next-item softmax over the whole
        catalog, or over the batch's `candidates` (sampled softmax, `models.sampled`)."""
        dropout = self.id_dropout if self.training else 0.0
        mask = targets > 0
        weights = None if target_weights is None else target_weights[mask]
        if candidates is None:
            items = self.items(self.statistics.item_counts, dropout)
            rows_of = columns_of = None
            # Items without training events are never targets: as negatives they would only learn "never chosen",
            # which buries them at scoring time, where they take their text neighbours' rows instead (padding too).
            biases = self.item_bias.masked_fill(self.statistics.item_counts == 0, float("-inf"))
            output_items = items
        else:
            # Only the rows a step reads: padding, the windows' items and the candidates.
            needed = torch.unique(torch.cat([inputs.new_zeros(1), inputs.reshape(-1), candidates.items]))
            items = self.items.rows(needed, dropout, candidates.sparse_rows)

            def rows_of(indices: torch.Tensor) -> torch.Tensor:
                return torch.searchsorted(needed, indices)

            def columns_of(indices: torch.Tensor) -> torch.Tensor:
                return candidates.columns(indices)[0]

            inputs_rows = rows_of(inputs)
            candidate_biases = torch.gather(self.item_bias, 0, candidates.items, sparse_grad=candidates.sparse_rows)
            biases = candidate_biases - candidates.log_inclusion
            output_items = items[rows_of(candidates.items)]
        states = self.states(inputs if rows_of is None else inputs_rows, items, input_events)[mask]
        if self.event_types is not None and target_events is not None:
            states = self.event_types.add_to_states(states, target_events[mask])
        next_items = targets[mask]
        next_columns = next_items if columns_of is None else columns_of(next_items)
        # [targets, candidates] is the largest tensor of a step: written once by addmm, then only changed in place.
        logits = self._add_repeat_bias(
            torch.addmm(biases.to(states.dtype), states, output_items.T.to(states.dtype)), inputs, mask, input_events,
            target_events, candidates,
        )
        parts = {"item": weighted_cross_entropy(logits, next_columns, weights)}
        if self.future_items:
            parts["future"] = self._future_loss(logits, targets, mask, columns_of)
        parts["category"] = weighted_cross_entropy(self.category_head(states), self.item_category_weights[next_items], weights)
        if target_ratings is not None:
            next_vectors = items[next_items if rows_of is None else rows_of(next_items)]
            parts["rating"] = nn.functional.mse_loss(self._rating(states, next_vectors, next_items), target_ratings[mask])
        return parts

    def _future_loss(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, columns_of=None) -> torch.Tensor:
        """Mean cross-entropy, over the same logits, of the `future_items` items after each row's next item (every
        one of them is a target of the batch, so a candidate of a sampled step too)."""
        later = later_items(targets, self.future_items + 1)[mask][:, 1:]  # 0 past the window's end
        present = later > 0
        if columns_of is not None:
            later = columns_of(later)
        normaliser = torch.logsumexp(logits.float(), dim=1, keepdim=True)
        # Padding's logit is -inf: its rows are masked out, not multiplied by 0.
        losses = (normaliser - logits.gather(1, later).float()).masked_fill(~present, 0.0)
        return losses.sum() / present.sum().clamp(min=1)

    def _add_repeat_bias(
        self, logits: torch.Tensor, inputs: torch.Tensor, mask: torch.Tensor, input_events: torch.Tensor | None = None,
        target_events: torch.Tensor | None = None, candidates: Candidates | None = None,
    ) -> torch.Tensor:
        """Add the repeat bias at (position, item) for every item at or before that position in its window (and,
        with event types, each earlier occurrence's own bias by its type and age); with `candidates`, at the
        item's column where it is a candidate."""
        batch, length = inputs.shape
        later, earlier = torch.tril_indices(length, length, device=inputs.device)
        # Row of each masked position among the logits' rows (-1 for positions without a target).
        rows = torch.full((batch * length,), -1, dtype=torch.long, device=inputs.device)
        rows[mask.reshape(-1)] = torch.arange(int(mask.sum()), device=inputs.device)
        pair_rows = rows[(torch.arange(batch, device=inputs.device)[:, None] * length + later[None, :]).reshape(-1)]
        pair_items = inputs[:, earlier].reshape(-1)
        keep = (pair_rows >= 0) & (pair_items > 0)
        pair_columns = pair_items
        if candidates is not None:
            pair_columns, is_candidate = candidates.columns(pair_items)
            keep &= is_candidate
        # An item seen twice in a window still gets the bias once.
        flat = torch.unique(pair_rows[keep] * logits.shape[1] + pair_columns[keep])
        bias = self.repeat_bias.to(logits.dtype).expand(len(flat))  # logits are bf16 under autocast
        logits.view(-1).index_add_(0, flat, bias)
        if self.event_types is not None and input_events is not None and target_events is not None:
            asked = target_events[mask][pair_rows[keep]]
            occurrences = self.event_types.occurrence_bias(
                asked, input_events[:, earlier].reshape(-1)[keep], (later - earlier).repeat(batch)[keep]
            )
            logits.view(-1).index_add_(0, pair_rows[keep] * logits.shape[1] + pair_columns[keep], occurrences.to(logits.dtype))
        return logits

    def _rating(self, states: torch.Tensor, item_vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        offset = self.rating_head(torch.cat([states, item_vectors], dim=-1)).squeeze(-1)
        return self.statistics.item_rating_means[items] + offset

    def user_states(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        device = self.item_bias.device
        inputs, lengths = pad_histories(histories, self.max_length, device)
        input_events = None if events is None else pad_histories(events, self.max_length, device)[0]
        states = self.states(inputs, input_events=input_events)
        last = states[torch.arange(len(histories), device=device), (lengths - 1).clamp(min=0)]
        return last if self.event_types is None else self.event_types.add_to_states(last)

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        scores = self.user_states(histories, events) @ self.item_representations().T + self.item_biases()
        # The learned repeat bias: how likely people are to come back to an item they already have.
        scores = scores + self.repeat_bias * history_mask(histories, scores.shape[1], scores.device)
        if self.event_types is not None and events is not None:
            scores = scores + self.event_types.history_bias(histories, events, scores.shape[1], self.max_length)
        return scores

    def score_candidates(
        self, histories: list[np.ndarray], candidates: torch.Tensor, events: list[np.ndarray] | None = None,
        user_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        candidates = candidates.to(self.item_bias.device)
        states = self.user_states(histories, events) if user_vectors is None else user_vectors[:, :-1]
        scores = torch.einsum("ud,umd->um", states, self.item_representations()[candidates]) + self.item_biases()[candidates]
        return scores + self._history_offsets(histories, events, candidates)

    def retrieval_vectors(
        self, histories: list[np.ndarray], events: list[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # [state, 1] . [item, bias]: the score of every item outside the history (the offsets are for history items).
        states = self.user_states(histories, events)
        users = torch.cat([states, torch.ones_like(states[:, :1])], dim=1)
        return users, torch.cat([self.item_representations(), self.item_biases()[:, None]], dim=1)

    def _history_offsets(self, histories: list[np.ndarray], events: list[np.ndarray] | None, candidates: torch.Tensor) -> torch.Tensor:
        """[users, M] what `score_items` adds at history items (the repeat bias, the event-type offsets), at each
        user's candidates: the same sums, kept sparse, so a chunk costs its candidates, not the catalog."""
        stride = self.n_items + 1
        offsets = torch.zeros(candidates.shape, device=candidates.device)
        keys = torch.arange(len(histories), device=candidates.device)[:, None] * stride + candidates
        rows = np.repeat(np.arange(len(histories)), [len(history) for history in histories])
        seen = torch.unique(torch.from_numpy(rows * stride + np.concatenate(histories).astype(np.int64)).to(candidates.device))
        offsets += self.repeat_bias * torch.isin(keys, seen)
        if self.event_types is not None and events is not None:
            pair_keys, values = [], []
            for row, (history, codes) in enumerate(zip(histories, events)):
                recent = torch.tensor(history[-self.max_length:], dtype=torch.long, device=candidates.device)
                ages = torch.arange(len(recent) - 1, -1, -1, device=candidates.device)
                codes = torch.tensor(codes[-self.max_length:], dtype=torch.long, device=candidates.device)
                pair_keys.append(row * stride + recent)
                values.append(self.event_types.occurrence_bias(self.event_types.asked, codes, ages))
            pair_keys, inverse = torch.unique(torch.cat(pair_keys), return_inverse=True)
            summed = torch.zeros(len(pair_keys), device=candidates.device).index_add_(0, inverse, torch.cat(values))
            position = torch.searchsorted(pair_keys, keys).clamp(max=len(pair_keys) - 1)
            offsets += torch.where(pair_keys[position] == keys, summed[position], 0.0)
        return offsets.masked_fill(candidates == 0, 0.0)

    def predict_category(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        return self.category_head(self.user_states(histories, events))

    def predict_rating(
        self, histories: list[np.ndarray], items: np.ndarray, events: list[np.ndarray] | None = None
    ) -> torch.Tensor:
        items = torch.as_tensor(items, dtype=torch.long, device=self.item_bias.device)
        return self._rating(self.user_states(histories, events), self.item_representations()[items], items)


class Transformer(SequenceRecommender):
    config_class = TransformerConfig

    def build_backbone(self, config: TransformerConfig) -> nn.Module:
        return TransformerBackbone(
            config.hidden_size, config.num_layers, config.num_heads, config.dropout, config.max_length, config.norm_first
        )


class LSTM(SequenceRecommender):
    config_class = LSTMConfig

    def build_backbone(self, config: LSTMConfig) -> nn.Module:
        return RecurrentBackbone(nn.LSTM, config.hidden_size, config.num_layers, config.dropout)


class GRU(SequenceRecommender):
    config_class = GRUConfig

    def build_backbone(self, config: GRUConfig) -> nn.Module:
        return RecurrentBackbone(nn.GRU, config.hidden_size, config.num_layers, config.dropout)
