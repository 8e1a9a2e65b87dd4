"""Carry a trained model's weights over to a model built for a grown catalog (the nightly warm start).

Weights are matched by name. Tensors with one row per item (declared by the model class as `item_row_parameters`) are matched
row by row through the original item ids: known items keep their learned rows; a new item's id-embedding row starts
as the similarity-weighted mean of the rows of its nearest known items by text embedding, so a new movie starts
where similar movies are. Tensors with one row per category (`category_row_parameters`) are matched through category names; a
new category keeps its fresh initialisation. Buffers (statistics, text embeddings) are not carried: they come from tonight's data.
The sequence models have no per-user weights, so new users need no rows: their history is their state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.items import text_table_tensor
from pipeline.models.text_neighbours import text_neighbours

log = logging.getLogger("pipeline")

class ShapeChanged(ValueError):
    """The stored weights do not fit the new model other than through catalog rows: a full retrain is needed."""


@dataclass
class WarmStartReport:
    known_items: int
    new_items: int
    new_items_from_text: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def transplant(
    model: torch.nn.Module,
    stored: dict[str, torch.Tensor],
    stored_vocabulary: dict[str, list],
    vocabulary: dict[str, list],
    item_text_embeddings: np.ndarray | None,
) -> WarmStartReport:
    """Copy `stored` (a state dict) into `model`, in place, mapping catalog rows through the two vocabularies.

    A vocabulary is {"items": original id per item index (position 0: padding), "categories": category names}.
    Raises `ShapeChanged` when a parameter is missing or its shape differs for another reason than the vocabularies.
    """
    item_rows = _source_rows(stored_vocabulary["items"], vocabulary["items"], padding=True)
    category_rows = _source_rows(stored_vocabulary["categories"], vocabulary["categories"], padding=False)
    row_maps = {name: item_rows for name in model.item_row_parameters}
    row_maps.update({name: category_rows for name in model.category_row_parameters})
    known_items = item_rows >= 0
    new_from_text = 0
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name not in stored:
                raise ShapeChanged(f"the stored model has no weight {name!r}")
            source = stored[name]
            if name in row_maps:
                if source.shape[1:] != parameter.shape[1:]:
                    raise ShapeChanged(f"{name}: stored {tuple(source.shape)}, model {tuple(parameter.shape)}")
                source_rows = row_maps[name]
                index = model.item_row_index.get(name)
                if index is not None:
                    # Rows of the trained items only, on both sides: work on one row per item, write back the
                    # model's rows. An item the stored model did not train is new to it.
                    stored_index = stored.get(index, torch.arange(len(source))).numpy()
                    source = source[stored_index]
                    source_rows = np.where(stored_index[source_rows.clip(min=0)] > 0, source_rows, -1)
                    source_rows[0] = 0
                target = parameter[buffers[index]] if index is not None else parameter
                known = source_rows >= 0
                target[torch.from_numpy(np.flatnonzero(known))] = source[torch.from_numpy(source_rows[known])].to(target)
                is_item_table = row_maps[name] is item_rows and parameter.dim() == 2
                # New items borrow (those with a row: with an index, the trained ones).
                borrowers = ~known if index is None else ~known & (buffers[index].numpy() > 0)
                if is_item_table and item_text_embeddings is not None and borrowers.any():
                    lenders = torch.from_numpy(known.copy())
                    lenders[0] = False  # padding (always "known") lends nothing
                    borrowing = text_neighbours(text_table_tensor(item_text_embeddings), lenders, torch.from_numpy(borrowers))
                    target.copy_(borrowing.fill(target))
                    new_from_text = len(borrowing.borrowers)
                if index is not None:
                    rows = buffers[index]
                    parameter[rows[rows > 0]] = target[rows > 0]
            elif source.shape != parameter.shape:
                raise ShapeChanged(f"{name}: stored {tuple(source.shape)}, model {tuple(parameter.shape)}")
            else:
                parameter.copy_(source)
    report = WarmStartReport(int(known_items[1:].sum()), int((~known_items).sum()), new_from_text)
    log.info(
        "warm start: %d known items kept their weights, %d new items (%d initialised from their text neighbours)",
        report.known_items, report.new_items, report.new_items_from_text,
    )
    return report


def _source_rows(stored_keys: list, keys: list, padding: bool) -> np.ndarray:
    """For each row of the new vocabulary, its row in the stored one (-1: new)."""
    stored_index = {key: position for position, key in enumerate(stored_keys) if position or not padding}
    rows = np.array([stored_index.get(key, -1) for key in keys], dtype=np.int64)
    if padding:
        rows[0] = 0
    return rows
