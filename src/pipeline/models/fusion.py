"""Score fusion: a weighted sum of member models' per-user standardized scores, weights fitted on validation.

A fusion is a model like any other (the contract of `models.base`): its `fit` takes the training view and the
fitter, whose validator supplies the validation split the weights are searched on. Members are fitted already.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from pipeline.data.prepared import TrainView
from pipeline.evaluation import ranking_metrics
from pipeline.models.base import Catalog, Recommender
from pipeline.ranking import history_mask, rank_users
from pipeline.schema import ModelSection

# Weight grid resolution on the simplex: 0, 0.1, ..., 1 for each member, summing to 1.
WEIGHT_STEPS = 10


def standardize(scores: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
    """Per user: zero mean, unit variance over the items the user has not seen (padding excluded), so scales are
    comparable. A user's own items, which most models score highest, would otherwise set each member's scale."""
    candidates = ~history_mask(histories, scores.shape[1], scores.device)
    candidates[:, 0] = False
    count = candidates.sum(dim=1, keepdim=True).clamp(min=2)
    mean = (scores * candidates).sum(dim=1, keepdim=True) / count
    spread = ((((scores - mean) * candidates) ** 2).sum(dim=1, keepdim=True) / (count - 1)).sqrt()
    centred = (scores - mean) / spread.clamp(min=1e-8)
    centred[:, 0] = 0
    return centred


class FusionConfig(ModelSection):
    """Not chosen by name: `compare.fusion` lists the members of each blend."""

    name: str = "fusion"


class ScoreFusion(Recommender):
    config_class = FusionConfig

    def __init__(self, members: dict[str, Recommender], catalog: Catalog):
        super().__init__(FusionConfig(), catalog)
        self.members = torch.nn.ModuleDict(members)
        self.register_buffer("weights", torch.full((len(members),), 1.0 / len(members)))
        self.max_length = max(member.max_length for member in members.values())
        self.scores_untrained = any(member.scores_untrained for member in members.values())

    def member_weights(self) -> dict[str, float]:
        return {name: round(weight, 6) for name, weight in zip(self.members.keys(), self.weights.tolist())}

    def _member_scores(self, histories: list[np.ndarray], events: list[np.ndarray] | None) -> list[torch.Tensor]:
        return [
            standardize(member.score_items(histories, events).float().cpu(), histories) for member in self.members.values()
        ]

    def score_items(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        return sum(weight * scores for weight, scores in zip(self.weights, self._member_scores(histories, events)))

    def predict_category(self, histories: list[np.ndarray], events: list[np.ndarray] | None = None) -> torch.Tensor:
        return sum(
            weight * member.predict_category(histories, events).float().cpu().softmax(dim=1)
            for weight, member in zip(self.weights, self.members.values())
        )

    def predict_rating(
        self, histories: list[np.ndarray], items: np.ndarray, events: list[np.ndarray] | None = None
    ) -> torch.Tensor:
        return sum(
            weight * member.predict_rating(histories, items, events).float().cpu()
            for weight, member in zip(self.weights, self.members.values())
        )

    @torch.inference_mode()
    def fit(self, train: TrainView, fitter) -> list[dict]:
        """Grid-search the weights on the simplex for the best validation NDCG@k (the fitter's validator)."""
        self.fit_statistics(train)
        validator = fitter.validator
        cases, k = validator.cases, validator.k
        member_scores = self._member_scores(cases.histories, cases.history_events)
        ranker = validator.ranker(self)
        best_weights, best_score = None, float("-inf")
        for steps in itertools.product(range(WEIGHT_STEPS + 1), repeat=len(member_scores)):
            if sum(steps) != WEIGHT_STEPS:
                continue
            weights = [step / WEIGHT_STEPS for step in steps]
            blended = _Fixed(sum(w * s for w, s in zip(weights, member_scores)), cases.histories)
            ranks = rank_users(blended, cases.histories, cases.targets, k, ranker, len(cases) or 1).target_ranks
            score = ranking_metrics(ranks, [k])[f"ndcg@{k}"]
            if score > best_score:
                best_weights, best_score = weights, score
        self.weights.copy_(torch.tensor(best_weights))
        return []


class _Fixed:
    """Precomputed scores of `histories` behind the scoring interface, for the weight search.

    The ranking asks for users in chunks (and shards under torchrun), so rows are found by the history objects.
    """

    def __init__(self, scores: torch.Tensor, histories: list[np.ndarray]):
        self.scores = scores
        self.rows = {id(history): row for row, history in enumerate(histories)}

    def score_items(self, histories, events=None):
        return self.scores[[self.rows[id(history)] for history in histories]]
