"""Sampled softmax: the next-item loss over a batch's candidates instead of the whole catalog.

The candidates of a batch are its target items (in-batch negatives for every other row) plus `train.negatives`
items drawn with replacement from the trained items, uniformly or in proportion to their training counts; one
shared set per batch, deduplicated and sorted. Each candidate's logit is corrected by the log of its probability of
being in the set (logQ correction), so a popular item, which is in nearly every set, is not pushed down for being a
negative more often than a rare one:

    P(item in set) = 1 - (1 - p_item) ** targets * (1 - q_item) ** negatives

with p the training target distribution (in-batch) and q the sampling distribution. When the draw cannot miss any
trained item (negatives at least the trained catalog), the candidates are the whole trained catalog without a
correction: exactly the full softmax. Memory and time per step then grow with the batch and `train.negatives`, not
with the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Candidates:
    """A batch's candidate items (sorted, unique, every target included) and their logit corrections."""

    items: torch.Tensor  # [candidates] item indices
    log_inclusion: torch.Tensor  # [candidates] log P(item in the set); 0 where the set is the whole catalog
    # Read the item tables with sparse gradients (only the rows a step read are updated: `training.RowSparseAdamW`).
    sparse_rows: bool = False

    def columns(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Column of each item among the candidates and whether it is one."""
        columns = torch.searchsorted(self.items, items.contiguous()).clamp(max=len(self.items) - 1)
        return columns, self.items[columns] == items


class NegativeSampler:
    """Draws a batch's candidates (`Candidates`) from the training item counts."""

    def __init__(
        self, item_counts: torch.Tensor, negatives: int, distribution: str, generator: torch.Generator,
        sparse_rows: bool = False,
    ):
        self.sparse_rows = sparse_rows
        counts = item_counts.double().clone()
        counts[0] = 0
        self.trained = torch.nonzero(counts > 0).squeeze(1)
        self.negatives = negatives
        self.generator = generator
        self.target_probability = counts / counts.sum()
        weights = counts if distribution == "frequency" else (counts > 0).double()
        self.sample_probability = weights / weights.sum()
        self.cumulative = torch.cumsum(self.sample_probability[self.trained], 0)
        self.everything = negatives >= len(self.trained)

    def draw(self, targets: torch.Tensor) -> Candidates:
        """The candidates of a batch whose targets (0 = none) are `targets`."""
        device = targets.device
        if self.everything:
            return Candidates(self.trained.to(device), torch.zeros(len(self.trained), device=device), self.sparse_rows)
        positives = targets[targets > 0].cpu()
        uniform = torch.rand(self.negatives, generator=self.generator, dtype=torch.float64)
        drawn = self.trained[torch.searchsorted(self.cumulative, uniform * self.cumulative[-1]).clamp(max=len(self.trained) - 1)]
        items = torch.unique(torch.cat([positives, drawn]))
        missed = len(positives) * torch.log1p(-self.target_probability[items]) + self.negatives * torch.log1p(-self.sample_probability[items])
        log_inclusion = torch.log(-torch.expm1(missed)).float()
        return Candidates(items.to(device), log_inclusion.to(device), self.sparse_rows)
