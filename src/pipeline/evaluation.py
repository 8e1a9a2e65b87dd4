"""Metrics and the full-ranking evaluation protocol, the same for every model.

Ranking: every catalog item is a candidate; with `exclude_seen` a user's history items are removed first. Ties are
broken by item index (lower first), so a rank is well defined even for models that give many items the same score.
The metric functions are pure and take ranks, so each one is checked against hand-computed values in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.prepare import EvalCases
from pipeline.distributed import map_sharded
from pipeline.errors import PipelineInputError
from pipeline.models.base import history_mask

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
    from sklearn.metrics import (  # ~2 s to import: not at start-up
        accuracy_score,
        precision_recall_fscore_support,
    )

    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def rating_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    errors = np.asarray(predicted, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return {"mae": float(np.mean(np.abs(errors))), "rmse": float(np.sqrt(np.mean(errors**2)))}


def catalog_coverage(top_items: np.ndarray, n_items: int) -> float:
    """Distinct items across all users' lists / catalog size (padding entries, index 0, are not items)."""
    distinct = np.unique(top_items)
    return float(len(distinct[distinct > 0]) / n_items)


# ---- scoring a model over all users ------------------------------------------------------------------------------


class NonFiniteScores(PipelineInputError):
    """A model scored some item NaN: its weights are broken (training diverged), so no ranking is defined."""


@dataclass
class Rankings:
    target_ranks: list[np.ndarray]
    # [users, list_length] item indices, best first; 0 after a user's last valid candidate (the catalog, less the
    # user's seen items when they are excluded, can be shorter than the list).
    top_items: np.ndarray
    top_scores: np.ndarray  # [users, list_length]; -inf where top_items is 0


# Scores held at once (users x catalog) while ranking: bounds memory whatever the catalog size (~12 bytes each with
# the masks, so ~400 MB); with a million items a chunk is 32 users.
SCORE_BUDGET = 32 * 1024 * 1024


@torch.inference_mode()
def rank_users(
    model, histories: list[np.ndarray], targets: list[np.ndarray] | None, list_length: int, exclude_seen: bool,
    user_batch_size: int,
) -> Rankings:
    """Score the full catalog for users in chunks; rank the targets and keep each user's top `list_length` items.

    Under torchrun the users are split across ranks and the results gathered, so every rank returns all of them.
    """
    per_user = map_sharded(
        lambda rows: _rank_rows(model, histories, targets, rows, list_length, exclude_seen, user_batch_size), len(histories)
    )
    if not per_user:
        return Rankings([], np.zeros((0, list_length), dtype=np.int64), np.zeros((0, list_length), dtype=np.float32))
    target_ranks, top_items, top_scores = zip(*per_user)
    return Rankings(list(target_ranks) if targets is not None else [], np.stack(top_items), np.stack(top_scores))


def _rank_rows(model, histories, targets, rows: list[int], list_length: int, exclude_seen: bool, user_batch_size: int) -> list:
    """(target ranks or None, top items, top scores) for each of `rows`."""
    results = []
    start, chunk_size = 0, 1  # the first user shows the catalog size, which sets the chunk size
    while start < len(rows):
        chunk_rows = rows[start : start + chunk_size]
        chunk = [histories[row] for row in chunk_rows]
        scores = model.score_items(chunk).float().clone()
        if torch.isnan(scores).any():
            raise NonFiniteScores(f"{type(model).__name__} scored items NaN: its weights are not finite numbers")
        scores[:, 0] = float("-inf")
        if exclude_seen:
            scores[history_mask(chunk, scores.shape[1], scores.device)] = float("-inf")
        ranks = _target_ranks(scores, [targets[row] for row in chunk_rows]) if targets is not None else [None] * len(chunk)
        order = top_indices(scores, list_length)
        # Copies, not views: rows viewing the chunk's tensors kept ~17 MB per chunk alive (measured at 1M items).
        top_items, top_scores = order.cpu().numpy().copy(), scores.gather(1, order).cpu().numpy().copy()
        top_items[top_scores == float("-inf")] = 0  # padding and removed items are not candidates
        results.extend(zip(ranks, top_items, top_scores))
        start += len(chunk)
        chunk_size = max(1, min(user_batch_size, SCORE_BUDGET // scores.shape[1]))
    return results


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[users, k] indices of the highest scores, best first, ties broken by lower index (the rank definition above).

    `topk` alone is linear in the catalog but breaks ties arbitrarily; so take everything strictly above the k-th
    score plus the lowest-index items equal to it, then order those k by score with a stable sort.
    """
    k = min(k, scores.shape[1])
    threshold = scores.topk(k, dim=1).values[:, -1:]
    above = scores > threshold
    tied = scores == threshold
    still_needed = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
    selected = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= still_needed))
    candidates = selected.nonzero()[:, 1].view(len(scores), k)  # ascending index within each row
    order = torch.sort(-scores.gather(1, candidates), dim=1, stable=True).indices
    return candidates.gather(1, order)


def _target_ranks(scores: torch.Tensor, targets: list[np.ndarray]) -> list[np.ndarray]:
    """1-based rank of each target in its row (score descending, lower index first on ties); inf when removed.

    Computed for blocks of (row, target) pairs at once, each block no larger than `scores`, so memory stays within
    the scoring chunk's bound however many targets a user has.
    """
    counts = np.array([len(items) for items in targets])
    pair_rows = torch.from_numpy(np.repeat(np.arange(len(targets)), counts)).to(scores.device)
    pair_items = torch.as_tensor(np.concatenate(targets).astype(np.int64), device=scores.device)
    item_index = torch.arange(scores.shape[1], device=scores.device)
    ranks = []
    for start in range(0, len(pair_rows), len(scores)):
        rows, items = pair_rows[start : start + len(scores)], pair_items[start : start + len(scores)]
        target_scores = scores[rows, items].unsqueeze(1)
        row_scores = scores.index_select(0, rows)
        ahead = (row_scores > target_scores) | ((row_scores == target_scores) & (item_index < items.unsqueeze(1)))
        rank = ahead.sum(dim=1).double() + 1.0
        rank[torch.isinf(target_scores.squeeze(1))] = float("inf")
        ranks.append(rank.cpu().numpy())
    return np.split(np.concatenate(ranks), np.cumsum(counts)[:-1])


@torch.inference_mode()
def evaluate_model(
    model, cases: EvalCases, item_categories: list[np.ndarray], n_items: int, ks: list[int], exclude_seen: bool,
    user_batch_size: int, list_length: int, cold_items: np.ndarray | None = None,
) -> tuple[dict[str, float], Rankings]:
    """Every metric of one model on one split, and the top lists it produced.

    With `cold_items`, ranking metrics are also reported as `cold_*` over the users whose next item is cold.
    """
    rankings = rank_users(model, cases.histories, cases.targets, max(max(ks), list_length), exclude_seen, user_batch_size)
    metrics = ranking_metrics(rankings.target_ranks, ks)
    if cold_items is not None and len(cold_items):
        is_cold = np.isin(cases.next_items, cold_items)
        cold_ranks = [ranks[:1] for ranks, cold in zip(rankings.target_ranks, is_cold) if cold]
        metrics.update({f"cold_{name}": value for name, value in ranking_metrics(cold_ranks, ks).items()})
        metrics["cold_users"] = len(cold_ranks)
    for k in ks:
        metrics[f"coverage@{k}"] = catalog_coverage(rankings.top_items[:, :k], n_items)
    metrics["coverage"] = catalog_coverage(rankings.top_items[:, :list_length], n_items)

    next_items = cases.next_items
    predicted_categories = _in_chunks(
        lambda rows: model.predict_category([cases.histories[row] for row in rows]).argmax(dim=1), len(cases), user_batch_size
    ).astype(np.int64)
    metrics.update(category_metrics([item_categories[item] for item in next_items], predicted_categories))
    if cases.next_ratings is not None:
        predicted_ratings = _in_chunks(
            lambda rows: model.predict_rating([cases.histories[row] for row in rows], next_items[rows]), len(cases), user_batch_size
        )
        metrics.update(rating_metrics(cases.next_ratings, predicted_ratings))
    metrics["users"] = len(cases)
    return metrics, Rankings(rankings.target_ranks, rankings.top_items[:, :list_length], rankings.top_scores[:, :list_length])


def _in_chunks(predict, n_users: int, chunk_size: int) -> np.ndarray:
    """`predict(rows)` over chunks of user rows (split across ranks under torchrun), one value per user in order."""

    def predict_rows(rows: list[int]) -> list:
        chunks = [np.array(rows[start : start + chunk_size]) for start in range(0, len(rows), chunk_size)]
        return [value for chunk in chunks for value in predict(chunk).float().cpu().numpy()]

    return np.array(map_sharded(predict_rows, n_users))
