"""How an item and a history position enter a model: text, id and side-feature parts of the item vector, and the
event type of each position.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline import distributed
from pipeline.data.features import ItemFeatures
from pipeline.models.base import Catalog
from pipeline.models.text_neighbours import TextNeighbours, text_neighbours
from pipeline.schema import ModelSection

# Rows of the text table projected at once (bounds the float32 temporaries of a float16 table).
TEXT_ROWS_AT_ONCE = 262_144


class ItemRepresentation(nn.Module):
    """[n_items + 1, width] item vectors: projected frozen text embedding, learnable id embedding, or their sum.

    Given the training item counts, items without training events borrow their id rows from their nearest trained
    items by text (`text_neighbours`), so a text model can rank items it never saw being chosen.

    The text table is used as given (float32 or float16, memory-mapped from the embedding cache) and is not part of
    the saved weights: the run directory keeps the table itself (`item_text_vectors.npy`), so a 10M-item catalogue's
    vectors are neither copied into every checkpoint nor held twice in memory.
    """

    def __init__(self, item_text_embeddings: np.ndarray, width: int, uses: str, features: ItemFeatures | None = None):
        super().__init__()
        n_rows, text_width = item_text_embeddings.shape
        self.register_buffer("item_text_embeddings", text_table_tensor(item_text_embeddings), persistent=False)
        self.text_projection = nn.Linear(text_width, width) if "text" in uses else None
        self.id_embedding = nn.Embedding(n_rows, width, padding_idx=0) if "id" in uses else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=0.02)
            with torch.no_grad():
                self.id_embedding.weight[0].zero_()
            # Each item's row of the id table: every item's until `keep_trained_rows`, then only trained items'.
            self.register_buffer("id_rows", torch.arange(n_rows))
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

    def keep_trained_rows(self, item_counts: torch.Tensor) -> None:
        """Size the id table to the items with training events (and the padding row): no step ever reaches another
        item's row, which would only hold its initialisation, optimizer state and checkpoint space. Untrained items
        read the padding row, or borrow their trained text neighbours' rows (`untrained_borrowing`)."""
        if self.id_embedding is None:
            return
        kept = torch.nonzero(item_counts[1:] > 0).flatten() + 1
        with torch.no_grad():
            table = self.id_embedding.weight[self.id_rows[torch.cat([kept.new_zeros(1), kept])]]
            self.id_rows.zero_()
            self.id_rows[kept] = torch.arange(1, len(kept) + 1, device=kept.device)
        self.id_embedding = nn.Embedding.from_pretrained(table.clone(), freeze=False, padding_idx=0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before the table left them carry it: it is the table those weights were trained with.
        stored = state_dict.pop(prefix + "item_text_embeddings", None)
        if stored is not None and stored.shape == self.item_text_embeddings.shape:
            self.item_text_embeddings = stored.to(self.item_text_embeddings.dtype)
        # An id table sized to the items its run trained (weights saved before that have one row per item).
        # Replaced only when its shape differs: an optimizer may hold the parameter (a resumed run).
        weight = state_dict.get(prefix + "id_embedding.weight")
        if self.id_embedding is not None and weight is not None:
            if weight.shape != self.id_embedding.weight.shape:
                self.id_embedding = nn.Embedding(*weight.shape, padding_idx=0)
            state_dict.setdefault(prefix + "id_rows", torch.arange(len(weight)))  # one row per item
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def id_table(self) -> torch.Tensor:
        """[n_items + 1, width] the id rows by item index (untrained items: the padding row)."""
        return self.id_embedding.weight[self.id_rows]

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

    def rows(self, items: torch.Tensor, id_dropout: float = 0.0, sparse: bool = False) -> torch.Tensor:
        """[len(items), width] the vectors of trained `items` only (a sampled-softmax step): the cost follows the
        batch, not the catalog; with `sparse`, the id table's gradient holds only these rows."""
        return self._compute(None, id_dropout, items, sparse)

    def _compute(
        self, borrowing: TextNeighbours | None, id_dropout: float = 0.0, items: torch.Tensor | None = None,
        sparse: bool = False,
    ) -> torch.Tensor:
        def select(table: torch.Tensor) -> torch.Tensor:
            return table if items is None else table[items]

        parts = []
        if self.text_projection is not None:
            texts = select(self.item_text_embeddings)
            # In slices: a float16 table is widened to float32 a slice at a time, never as a whole.
            parts.append(torch.cat([
                self.text_projection(texts[start : start + TEXT_ROWS_AT_ONCE].float())
                for start in range(0, len(texts), TEXT_ROWS_AT_ONCE)
            ]))
        if self.id_embedding is not None:
            rows = select(self.id_rows)  # a step's items gather their rows only, not the catalog's
            if sparse:
                id_rows = nn.functional.embedding(rows, self.id_embedding.weight, sparse=True)
            else:
                id_rows = self.id_embedding.weight[rows]
                if borrowing is not None:  # given for the whole catalog only
                    id_rows = borrowing.fill(id_rows)
            if id_dropout and self.text_projection is not None:
                kept = torch.rand(len(id_rows), 1, device=id_rows.device) >= id_dropout
                id_rows = id_rows * kept
            parts.append(id_rows)
        if self.numeric_projection is not None:
            parts.append(self.numeric_projection(select(self.item_numeric)))
        if self.label_embeddings is not None:
            labels = select(self.item_labels)
            parts.extend(embedding(labels[:, column]) for column, embedding in enumerate(self.label_embeddings))
        representation = torch.stack(parts).sum(0)
        if items is not None:
            return representation * (items != 0).unsqueeze(1)
        padding = torch.ones_like(representation[:, :1])
        padding[0] = 0
        return representation * padding


def text_table_tensor(table: np.ndarray) -> torch.Tensor:
    """The item text table as a tensor sharing its memory (a memory-mapped table stays mapped); float16 stays float16."""
    array = np.asarray(table)
    if array.dtype not in (np.float16, np.float32):
        array = array.astype(np.float32)
    return torch.from_numpy(array) if array.flags.writeable else torch.tensor(array)


def item_representation(config: ModelSection, catalog: Catalog) -> ItemRepresentation:
    features = catalog.item_features if config.item_features else None
    return ItemRepresentation(catalog.text_embeddings_or_zeros(), config.hidden_size, config.item_representation, features)


class EventTypes(nn.Module):
    """The event types of a sequence model: a learned vector per type added to each history position's item, a
    learned "asked for" vector per type added to the state that predicts the next item, and a score offset for items
    already in the history by the type of the event asked for, the type of each earlier occurrence and its age.

    Training uses each target's own type, so the model learns what a next purchase looks like apart from a next view
    ("carted two events ago" is a strong sign of the next purchase, a weak one of the next view). Scoring asks for the
    evaluation's target types (`eval.target_event_types`), or without them for the types in their training shares;
    the `asked` buffer is saved with the weights, so serving asks the same.
    """

    def __init__(self, n_types: int, width: int, asked: list[int]):
        super().__init__()
        self.inputs = nn.Embedding(n_types + 1, width, padding_idx=0)
        nn.init.normal_(self.inputs.weight, std=0.02)
        self.targets = nn.Embedding(n_types + 1, width, padding_idx=0)
        nn.init.zeros_(self.targets.weight)  # starts as "any next event"
        with torch.no_grad():
            self.inputs.weight[0].zero_()
        self.asked_types = asked
        self.register_buffer("asked", torch.zeros(n_types + 1))
        self.ask(asked)
        # [asked type, occurrence type]: the offset and its decay factor per position of age.
        self.repeat_bias = nn.Parameter(torch.zeros(n_types + 1, n_types + 1))
        self.repeat_decay = nn.Parameter(torch.full((n_types + 1, n_types + 1), 2.0))

    def ask(self, types: list[int], shares: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            self.asked.zero_()
            if types:
                self.asked[types] = 1.0 / len(types)
            elif shares is not None:
                self.asked.copy_(shares / shares.sum().clamp(min=1))

    def fit(self, target_events: torch.Tensor, rank_local: bool = False) -> None:
        """Without asked-for types, ask for every type in its share of the training targets (of every rank's)."""
        if not self.asked_types:
            counts = torch.bincount(target_events, minlength=len(self.asked)).float()
            self.ask([], distributed.sum_tensor_across_ranks(counts) if rank_local else counts)

    def occurrence_bias(self, asked: torch.Tensor, events: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        """Score offset of history occurrences of types `events` and `ages` (0: newest) when the next event is of
        type `asked` (codes, or [types] weights at scoring)."""
        decay = torch.sigmoid(self.repeat_decay)
        if asked.dtype.is_floating_point:  # a mixture of asked types
            bias, decay = asked @ self.repeat_bias, asked @ decay
            return bias[events] * decay[events].pow(ages.to(decay.dtype))
        return self.repeat_bias[asked, events] * decay[asked, events].pow(ages.to(decay.dtype))

    def history_bias(self, histories: list[np.ndarray], events: list[np.ndarray], n_columns: int, length: int) -> torch.Tensor:
        """[users, n_columns]: the summed occurrence biases of each user's last `length` history positions."""
        device = self.repeat_bias.device
        bias = torch.zeros(len(histories), n_columns, device=device)
        for row, (history, codes) in enumerate(zip(histories, events)):
            items = torch.tensor(history[-length:], dtype=torch.long, device=device)
            codes = torch.tensor(codes[-length:], dtype=torch.long, device=device)
            ages = torch.arange(len(items) - 1, -1, -1, device=device)
            bias[row].index_add_(0, items, self.occurrence_bias(self.asked, codes, ages))
        bias[:, 0] = 0
        return bias

    def add_to_inputs(self, items: torch.Tensor, events: torch.Tensor | None) -> torch.Tensor:
        return items if events is None else items + self.inputs(events)

    def add_to_states(self, states: torch.Tensor, target_events: torch.Tensor | None = None) -> torch.Tensor:
        if target_events is not None:
            return states + self.targets(target_events)
        return states + (self.asked @ self.targets.weight).to(states.dtype)


def event_types(config: ModelSection, catalog: Catalog) -> EventTypes | None:
    """The model's event-type part, or None without event types (no column, or `model.event_types: false`)."""
    if not (config.event_types and catalog.event_names):
        return None
    asked = [catalog.event_names.index(name) + 1 for name in catalog.target_event_names]
    return EventTypes(len(catalog.event_names), config.hidden_size, asked)
