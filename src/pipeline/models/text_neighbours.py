"""Rows for items without training events, borrowed from their nearest trained items by text embedding.

An item nobody interacted with in training has an untrained id row and the lowest popularity bias, so scoring by
learned rows alone would bury it (the cold-start problem). Its text is known, though: its rows become the
similarity-weighted mean of the rows of the trained items whose texts are most alike, so a new sequel starts where
its predecessors are. The sequence models borrow this way at scoring time; the nightly warm start uses it for
tonight's new items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEIGHBOURS = 10
# Softmax temperature over cosine similarities: close neighbours dominate, distant ones barely count.
TEMPERATURE = 0.05
# Borrowing items compared with the catalog at once: bounds memory at CHUNK x trained items similarities.
CHUNK = 4096


@dataclass(eq=False)  # compared by identity: scoring caches are keyed on the borrowing in force
class TextNeighbours:
    borrowers: torch.Tensor  # [n] items whose rows are borrowed
    neighbours: torch.Tensor  # [n, k] the trained items they borrow from
    weights: torch.Tensor  # [n, k] rows sum to 1

    def fill(self, table: torch.Tensor) -> torch.Tensor:
        """`table` (one row per item, any trailing shape) with the borrowers' rows replaced, out of place."""
        if len(self.borrowers) == 0:
            return table
        weights = self.weights.to(table).reshape(*self.weights.shape, *[1] * (table.dim() - 1))
        borrowed = (weights * table[self.neighbours]).sum(1)
        return table.index_copy(0, self.borrowers, borrowed)


def text_neighbours(item_text_embeddings: torch.Tensor, lenders: torch.Tensor, borrowers: torch.Tensor) -> TextNeighbours:
    """Each item of the bool mask `borrowers`, matched to its nearest items of the bool mask `lenders` by cosine."""
    device = item_text_embeddings.device
    borrower_items = torch.nonzero(borrowers).flatten()
    lender_items = torch.nonzero(lenders).flatten()
    k = min(NEIGHBOURS, len(lender_items))
    if k == 0 or len(borrower_items) == 0:
        empty = torch.zeros(0, max(k, 1), device=device)
        return TextNeighbours(torch.zeros(0, dtype=torch.long, device=device), empty.long(), empty)
    def unit_rows(items: torch.Tensor) -> torch.Tensor:  # only these rows widened to float32, not the whole table
        return torch.nn.functional.normalize(item_text_embeddings[items].float(), dim=1)

    lender_embeddings = unit_rows(lender_items)
    neighbours, weights = [], []
    for start in range(0, len(borrower_items), CHUNK):
        top = (unit_rows(borrower_items[start : start + CHUNK]) @ lender_embeddings.T).topk(k, dim=1)
        neighbours.append(lender_items[top.indices])
        weights.append(torch.softmax(top.values / TEMPERATURE, dim=1))
    return TextNeighbours(borrower_items, torch.cat(neighbours), torch.cat(weights))
