"""The one ranking policy, for every model and every path (evaluation, validation, `recommend`, nightly lists).

Models return raw scores over the catalog; the ranker decides what a list may hold and in which order:
- padding (item 0) is never a candidate, nor an item `data.items.recommendable` rules out, nor (with
  `output.exclude_untrained`) an item without training events that the model cannot score from its text;
- seen items: with `eval.exclude_seen` a user's history items are removed (`auto`: when the training log's repeat
  share is below `AUTO_EXCLUDE_BELOW`); otherwise, where the training log shows
  that people do not come back (repeat share below `REPEAT_SHARE_FLOOR`), they are moved below every unseen item
  (order among them kept), so a user's own items, which score highest by similarity in most models, cannot fill the
  list; where people do repeat, the model's own scores (e.g. a learned repeat bias) decide;
- ties: the item with more training events first, then the lower item index, so a rank is well defined even for
  models that give many items the same score (a user with no signal gets the popularity list).
The policy reads only the training statistics saved with every model, so a loaded run ranks as its evaluation did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.distributed import map_sharded
from pipeline.errors import PipelineInputError
from pipeline.progress import bar

# Below this share of training events that return to an item already in the user's history, people are taken not to
# come back (MovieLens: 0, nobody rates a movie twice).
REPEAT_SHARE_FLOOR = 0.01
# `eval.exclude_seen: auto` removes seen items below this repeat share: a list without them then misses at most about
# that share of next events, while models that do not learn repeats are spared a list full of the user's own items.
AUTO_EXCLUDE_BELOW = 0.10

# Scores held at once (users x catalog) while ranking: bounds memory whatever the catalog size (~12 bytes each with
# the masks, so ~400 MB); with a million items a chunk is 32 users.
SCORE_BUDGET = 32 * 1024 * 1024


class NonFiniteScores(PipelineInputError):
    """A model scored some item NaN: its weights are broken (training diverged), so no ranking is defined."""


def history_mask(histories: list[np.ndarray], n_columns: int, device: torch.device) -> torch.Tensor:
    """[users, n_columns] bool, True at every item of each user's history."""
    rows = np.repeat(np.arange(len(histories)), [len(history) for history in histories])
    columns = np.concatenate(histories).astype(np.int64) if histories else np.zeros(0, dtype=np.int64)
    mask = torch.zeros(len(histories), n_columns, dtype=torch.bool, device=device)
    mask[torch.from_numpy(rows).to(device), torch.from_numpy(columns).to(device)] = True
    return mask


def popularity_order(item_counts: torch.Tensor) -> torch.Tensor:
    """Item indices in tie-break order: more training events first, then lower index."""
    return torch.sort(-item_counts.float(), stable=True).indices


@dataclass
class Rankings:
    target_ranks: list[np.ndarray]
    # [users, list_length] item indices, best first; 0 after a user's last valid candidate (the catalog, less the
    # user's seen items when they are excluded, can be shorter than the list).
    top_items: np.ndarray
    top_scores: np.ndarray  # [users, list_length]; -inf where top_items is 0


@dataclass(frozen=True)
class ListPolicy:
    """What a list may hold, as configured: `eval.exclude_seen` and `output.exclude_untrained`."""

    exclude_seen: bool | str = "auto"
    exclude_untrained: bool = False

    def resolved_exclude_seen(self, repeat_share: float) -> bool:
        if self.exclude_seen == "auto":
            return float(repeat_share) < AUTO_EXCLUDE_BELOW
        return bool(self.exclude_seen)


class Ranker:
    def __init__(
        self, item_counts: torch.Tensor, repeat_share: float, exclude_seen: bool, allowed: torch.Tensor | None = None
    ):
        self.order = popularity_order(item_counts)
        self.position = torch.empty_like(self.order)
        self.position[self.order] = torch.arange(len(self.order))
        self.exclude_seen = exclude_seen
        self.seen_last = float(repeat_share) < REPEAT_SHARE_FLOOR
        self.allowed = allowed  # [n_items + 1] bool, or None: every item

    @classmethod
    def for_model(cls, model, policy: ListPolicy) -> Ranker:
        statistics = model.statistics
        repeat_share = float(statistics.repeat_share)
        allowed = statistics.recommendable.cpu().bool()
        if policy.exclude_untrained and not model.scores_untrained:
            allowed = allowed & (statistics.item_counts.cpu() > 0)
        return cls(
            statistics.item_counts.cpu(), repeat_share, policy.resolved_exclude_seen(repeat_share),
            None if bool(allowed[1:].all()) else allowed,
        )

    def candidate_scores(self, scores: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        """The scores with the seen-items policy applied: -inf for what may not be listed."""
        scores = scores.float().clone()
        if self.exclude_seen or self.seen_last:
            seen = history_mask(histories, scores.shape[1], scores.device)
            seen[:, 0] = False
            real = scores[:, 1:]
            scores = self._seen_policy(scores, seen, real.amax(dim=1, keepdim=True) - real.amin(dim=1, keepdim=True))
        if self.allowed is not None:
            scores[:, ~self.allowed.to(scores.device)] = float("-inf")
        scores[:, 0] = float("-inf")
        return scores

    def _seen_policy(self, scores: torch.Tensor, seen: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        """Seen items removed, or moved below every unseen one (the best a full score `span` below the worst)."""
        if self.exclude_seen:
            return scores.masked_fill(seen, float("-inf"))
        return torch.where(seen, scores - 2 * span.clamp(min=1e-6), scores)

    def rank_candidates(self, scores: torch.Tensor, candidates: torch.Tensor, histories: list[np.ndarray], list_length: int) -> list:
        """(top items, top scores) per user from the scores of each user's own candidates ([users, M] item indices,
        0 = none) under the same policy as `rank` (`retrieval.AnnLists`)."""
        scores = scores.float().clone()
        invalid = candidates == 0
        if self.allowed is not None:
            invalid |= ~self.allowed.to(candidates.device)[candidates]
        if self.exclude_seen or self.seen_last:
            stride = len(self.position)
            rows = np.repeat(np.arange(len(histories)), [len(history) for history in histories])
            keys = torch.from_numpy(rows * stride + (np.concatenate(histories).astype(np.int64) if histories else np.zeros(0, dtype=np.int64)))
            seen = torch.isin(torch.arange(len(candidates))[:, None] * stride + candidates, keys) & ~invalid
            span = scores.masked_fill(invalid, float("-inf")).amax(dim=1, keepdim=True) - scores.masked_fill(invalid, float("inf")).amin(dim=1, keepdim=True)
            scores = self._seen_policy(scores, seen, span.nan_to_num(0.0))
        scores[invalid] = float("-inf")
        # Tie-break as in `rank`: more training events first, then the lower index; sorts are stable.
        by_position = torch.sort(self.position[candidates], dim=1, stable=True).indices
        by_score = torch.sort(-scores.gather(1, by_position), dim=1, stable=True).indices
        order = by_position.gather(1, by_score)[:, :list_length]
        top_items, top_scores = candidates.gather(1, order).numpy().copy(), scores.gather(1, order).numpy().copy()
        top_items[top_scores == float("-inf")] = 0
        if top_items.shape[1] < list_length:
            missing = list_length - top_items.shape[1]
            top_items = np.pad(top_items, ((0, 0), (0, missing)))
            top_scores = np.pad(top_scores, ((0, 0), (0, missing)), constant_values=float("-inf"))
        return list(zip(top_items, top_scores))

    def rank(self, scores: torch.Tensor, histories: list[np.ndarray], targets: list[np.ndarray] | None, list_length: int):
        """(target ranks or None per user, top items, top scores) for one chunk of users' raw scores."""
        scores = self.candidate_scores(scores, histories)
        order = self.order.to(scores.device)
        # Columns in tie-break order, so that "lower column first" on equal scores is the policy's tie-break.
        ordered = scores[:, order]
        if targets is None:
            ranks = [None] * len(histories)
        else:
            position = self.position.to(scores.device)
            ranks = _target_ranks(ordered, [position[torch.as_tensor(t, dtype=torch.long)].cpu().numpy() for t in targets])
        best = top_indices(ordered, list_length)
        # Copies, not views: rows viewing the chunk's tensors kept ~17 MB per chunk alive (measured at 1M items).
        top_items = order[best].cpu().numpy().copy()
        top_scores = ordered.gather(1, best).cpu().numpy().copy()
        top_items[top_scores == float("-inf")] = 0  # padding and removed items are not candidates
        return list(zip(ranks, top_items, top_scores))


@torch.inference_mode()
def rank_users(
    model, histories: list[np.ndarray], targets: list[np.ndarray] | None, list_length: int, ranker: Ranker,
    user_batch_size: int, events: list[np.ndarray] | None = None, rank_local: bool = False, progress: bool = False,
) -> Rankings:
    """Score the full catalog for users in chunks; rank the targets and keep each user's top `list_length` items.

    Under torchrun the users are split across ranks and the results gathered, so every rank returns all of them
    (with `rank_local`, the users are already this rank's own: see `map_sharded`). `progress` shows a bar of users.
    """

    def rank_rows(rows: list[int]) -> list:
        results = []
        start, chunk_size = 0, 1  # the first user shows the catalog size, which sets the chunk size
        users = bar(None, progress, f"rank {type(model).__name__}", total=len(rows), unit="user")
        while start < len(rows):
            chunk_rows = rows[start : start + chunk_size]
            chunk = [histories[row] for row in chunk_rows]
            chunk_targets = None if targets is None else [targets[row] for row in chunk_rows]
            scores = model.score_items(chunk, None if events is None else [events[row] for row in chunk_rows])
            if torch.isnan(scores).any():
                raise NonFiniteScores(f"{type(model).__name__} scored items NaN: its weights are not finite numbers")
            results.extend(ranker.rank(scores, chunk, chunk_targets, list_length))
            start += len(chunk)
            users.update(len(chunk))
            chunk_size = max(1, min(user_batch_size, SCORE_BUDGET // scores.shape[1]))
        users.close()
        return results

    per_user = map_sharded(rank_rows, len(histories), rank_local)
    if not per_user:
        return Rankings([], np.zeros((0, list_length), dtype=np.int64), np.zeros((0, list_length), dtype=np.float32))
    target_ranks, top_items, top_scores = zip(*per_user)
    return Rankings(list(target_ranks) if targets is not None else [], np.stack(top_items), np.stack(top_scores))


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[users, k] indices of the highest scores, best first, ties broken by lower index.

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
