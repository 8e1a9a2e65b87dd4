"""Metrics and the full-ranking evaluation protocol, the same for every model.

Every catalog item is a candidate, ranked by the one policy of `pipeline.ranking` (seen items, ties). The metric
functions are pure and take ranks, so each one is checked against hand-computed values in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.prepared import EvalCases
from pipeline.distributed import gather_rows, map_sharded
from pipeline.ranking import ListPolicy, Ranker, Rankings, rank_users

# ---- pure metric functions ---------------------------------------------------------------------------------------


def ranking_metrics(target_ranks: list[np.ndarray], ks: list[int]) -> dict[str, float]:
    """HitRate, NDCG, MRR, Precision and Recall at each K, averaged over users.

    `target_ranks[u]` holds the 1-based rank of each of user u's relevant items (np.inf when not ranked at all).
    """
    metrics: dict[str, float] = {}
    n_users = len(target_ranks)
    for k in ks:
        hit = ndcg = reciprocal = precision = recall = 0.0
        for ranks in target_ranks:
            ranks = np.asarray(ranks, dtype=np.float64)
            in_top = ranks[ranks <= k]
            if len(in_top):
                hit += 1.0
                reciprocal += 1.0 / in_top.min()
            ideal = sum(1.0 / math.log2(position + 1) for position in range(1, min(len(ranks), k) + 1))
            ndcg += float(np.sum(1.0 / np.log2(in_top + 1))) / ideal
            precision += len(in_top) / k
            recall += len(in_top) / len(ranks)
        for name, total in (("hit_rate", hit), ("ndcg", ndcg), ("mrr", reciprocal), ("precision", precision), ("recall", recall)):
            metrics[f"{name}@{k}"] = total / n_users if n_users else 0.0
    return metrics


def category_metrics(true_categories: list[np.ndarray], predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 of the predicted category of the next interaction.

    An item may have several categories (e.g. Adventure|Comedy); a prediction is correct when it is any of them, and
    a wrong prediction counts against the item's first-listed category.
    """
    truth = np.array(
        [guess if guess in categories else categories[0] for guess, categories in zip(predicted, true_categories)]
    )
    labels, truth_index = np.unique(truth, return_inverse=True)
    predicted_index = np.searchsorted(labels, predicted)
    known = predicted_index < len(labels)
    known[known] = labels[predicted_index[known]] == predicted[known]
    # A predicted category no target ever has is a label of its own: it adds a class with no true positives.
    extra_labels = np.unique(predicted[~known])
    predicted_index[~known] = len(labels) + np.searchsorted(extra_labels, predicted[~known])
    n_labels = len(labels) + len(extra_labels)
    hits = truth_index == predicted_index
    true_positives = np.bincount(truth_index[hits], minlength=n_labels)
    predicted_counts = np.bincount(predicted_index, minlength=n_labels)
    true_counts = np.bincount(truth_index, minlength=n_labels)
    # Macro averages over every label seen in either, a label with nothing to divide by scoring 0 (as sklearn's
    # precision_recall_fscore_support with zero_division=0, without its import cost in every process).
    precision = np.divide(true_positives, predicted_counts, out=np.zeros(n_labels), where=predicted_counts > 0)
    recall = np.divide(true_positives, true_counts, out=np.zeros(n_labels), where=true_counts > 0)
    f1 = np.divide(2 * true_positives, predicted_counts + true_counts, out=np.zeros(n_labels), where=predicted_counts + true_counts > 0)
    return {
        "accuracy": float(hits.mean()) if len(hits) else 0.0,
        "precision": float(precision.mean()) if n_labels else 0.0,
        "recall": float(recall.mean()) if n_labels else 0.0,
        "f1": float(f1.mean()) if n_labels else 0.0,
    }


def rating_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    errors = np.asarray(predicted, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return {"mae": float(np.mean(np.abs(errors))), "rmse": float(np.sqrt(np.mean(errors**2)))}


def catalog_coverage(top_items: np.ndarray, n_items: int) -> float:
    """Distinct items across all users' lists / catalog size (padding entries, index 0, are not items)."""
    distinct = np.unique(top_items)
    return float(len(distinct[distinct > 0]) / n_items)


# ---- one model on one split ---------------------------------------------------------------------------------------


@dataclass
class Validator:
    """The early-stopping check handed to the training loop: NDCG@k on the validation split, ranked by the same
    policy as the final evaluation."""

    cases: EvalCases
    k: int
    policy: ListPolicy
    user_batch_size: int

    @property
    def selection_metric(self) -> str:
        return f"ndcg@{self.k}"

    def ranker(self, model) -> Ranker:
        return Ranker.for_model(model, self.policy)

    def __call__(self, model) -> dict[str, float]:
        rankings = rank_users(
            model, self.cases.histories, self.cases.targets, self.k, self.ranker(model), self.user_batch_size,
            self.cases.history_events, self.cases.rank_local,
        )
        metrics = ranking_metrics(rankings.target_ranks, [self.k])
        return {name: value for name, value in metrics.items() if name.startswith(("ndcg", "hit_rate"))}


@torch.inference_mode()
def evaluate_model(
    model, cases: EvalCases, item_categories: list[np.ndarray], n_items: int, ks: list[int], policy: ListPolicy,
    user_batch_size: int, list_length: int, cold_items: np.ndarray | None = None, progress: bool = False,
) -> tuple[dict[str, float], Rankings]:
    """Every metric of one model on one split, and the top lists it produced (`progress`: a bar of users ranked).

    With `cold_items`, ranking metrics are also reported as `cold_*` over the users whose next item is cold.
    """
    ranker = Ranker.for_model(model, policy)
    events, local = cases.history_events, cases.rank_local
    rankings = rank_users(
        model, cases.histories, cases.targets, max(max(ks), list_length), ranker, user_batch_size, events, local, progress
    )
    # Per-user facts of every rank's users, in the order the gathered results come in.
    next_items = np.array(gather_rows(cases.next_items, local), dtype=np.int64)
    metrics = ranking_metrics(rankings.target_ranks, ks)
    if cold_items is not None and len(cold_items):
        is_cold = np.isin(next_items, cold_items)
        cold_ranks = [ranks[:1] for ranks, cold in zip(rankings.target_ranks, is_cold) if cold]
        metrics.update({f"cold_{name}": value for name, value in ranking_metrics(cold_ranks, ks).items()})
        metrics["cold_users"] = len(cold_ranks)
    for k in ks:
        metrics[f"coverage@{k}"] = catalog_coverage(rankings.top_items[:, :k], n_items)
    metrics["coverage"] = catalog_coverage(rankings.top_items[:, :list_length], n_items)

    predicted_categories = _in_chunks(
        lambda rows: model.predict_category(_rows(cases.histories, rows), _rows(events, rows)).argmax(dim=1),
        len(cases), user_batch_size, local,
    ).astype(np.int64)
    metrics.update(category_metrics([item_categories[item] for item in next_items], predicted_categories))
    if cases.next_ratings is not None:
        own_next_items = cases.next_items
        predicted_ratings = _in_chunks(
            lambda rows: model.predict_rating(_rows(cases.histories, rows), own_next_items[rows], _rows(events, rows)),
            len(cases), user_batch_size, local,
        )
        metrics.update(rating_metrics(np.array(gather_rows(cases.next_ratings, local)), predicted_ratings))
    metrics["users"] = len(next_items)
    return metrics, Rankings(rankings.target_ranks, rankings.top_items[:, :list_length], rankings.top_scores[:, :list_length])


def _rows(per_user: list | None, rows) -> list | None:
    return None if per_user is None else [per_user[row] for row in rows]


def _in_chunks(predict, n_users: int, chunk_size: int, rank_local: bool = False) -> np.ndarray:
    """`predict(rows)` over chunks of user rows (split across ranks under torchrun), one value per user in order."""

    def predict_rows(rows: list[int]) -> list:
        chunks = [np.array(rows[start : start + chunk_size]) for start in range(0, len(rows), chunk_size)]
        return [value for chunk in chunks for value in predict(chunk).float().cpu().numpy()]

    return np.array(map_sharded(predict_rows, n_users, rank_local))
