"""Lists from an approximate nearest-neighbour index (`output.retrieval: ann`) instead of scoring the whole catalog.

A model that can say its scores as inner products (`Recommender.retrieval_vectors`: a vector per user, one per item,
exact for every item outside the user's history) gets an HNSW index over the items a list may hold (faiss,
`pip install interest-pipeline[ann]`). HNSW rather than IVF: it needs no training pass, and its recall is set at
query time (`ann_ef_search`), without a clustering that must be refitted as the catalog changes.

Inner products become Euclidean distances by one extra coordinate per item, sqrt(R^2 - |item|^2) with R the
largest item norm (and 0 for queries), so the nearest items are exactly the highest-scoring ones and HNSW's L2
graph applies. Per user the index is asked for the list length plus the user's history length (so removing seen
items still leaves a full list); those candidates, plus the history items where seen items may be listed, are
re-scored exactly by the model (`score_candidates`: repeat and event-type offsets included) and ordered by the one
ranking policy (`ranking.Ranker`): the same seen-items rule, the same candidate filter, the same tie-break.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from pipeline.config import OutputConfig
from pipeline.distributed import gather_rows, map_sharded
from pipeline.errors import PipelineInputError
from pipeline.ranking import NonFiniteScores, Ranker, Rankings, rank_users

log = logging.getLogger("pipeline")

QUERY_CHUNK = 2048  # users searched and re-scored at once


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise PipelineInputError(
            "output.retrieval: ann needs faiss: pip install 'interest-pipeline[ann]' (or faiss-cpu)"
        ) from None
    return faiss


@torch.inference_mode()
def retrieval_vectors_of(model) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The model's (one probe user's vector, item vectors), or None where it does not score by inner products."""
    return model.retrieval_vectors([np.zeros(1, dtype=np.int64)])


class AnnIndex:
    """HNSW over the allowed items' vectors, searched by maximum inner product."""

    def __init__(self, item_vectors: np.ndarray, allowed: np.ndarray, neighbours: int = 32, ef_construction: int = 100, ef_search: int = 512):
        faiss = require_faiss()
        self.items = np.flatnonzero(allowed).astype(np.int64)
        vectors = np.ascontiguousarray(item_vectors[self.items], dtype=np.float32)
        norms = np.square(vectors).sum(axis=1)
        lift = np.sqrt(np.maximum(norms.max(initial=0.0) - norms, 0.0)).astype(np.float32)
        self.index = faiss.IndexHNSWFlat(vectors.shape[1] + 1, neighbours)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.index.add(np.hstack([vectors, lift[:, None]]))

    def __len__(self) -> int:
        return len(self.items)

    def search(self, user_vectors: np.ndarray, k: int) -> np.ndarray:
        """[users, k] item indices, nearest first (0 where the index holds fewer)."""
        k = min(k, len(self.items))
        queries = np.hstack([user_vectors.astype(np.float32), np.zeros((len(user_vectors), 1), dtype=np.float32)])
        self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, k)
        _, found = self.index.search(np.ascontiguousarray(queries), k)
        return np.where(found >= 0, self.items[np.maximum(found, 0)], 0)


class AnnLists:
    """Top-`length` lists of a model through an `AnnIndex`, ranked by the model's exact scores."""

    def __init__(self, model, ranker: Ranker, ef_search: int = 512):
        probe = retrieval_vectors_of(model)
        if probe is None:
            raise PipelineInputError(f"output.retrieval: ann: {type(model).__name__} does not score by inner products")
        allowed = np.ones(model.n_items + 1, dtype=bool) if ranker.allowed is None else ranker.allowed.numpy().copy()
        allowed[0] = False
        self.model, self.ranker = model, ranker
        self.index = AnnIndex(probe[1].cpu().numpy(), allowed, ef_search=ef_search)

    @torch.inference_mode()
    def rank(
        self, histories: list[np.ndarray], length: int, events: list[np.ndarray] | None = None, rank_local: bool = False
    ) -> Rankings:
        def rank_rows(rows: list[int]) -> list:
            results = []
            for start in range(0, len(rows), QUERY_CHUNK):
                chunk_rows = rows[start : start + QUERY_CHUNK]
                chunk = [histories[row] for row in chunk_rows]
                chunk_events = None if events is None else [events[row] for row in chunk_rows]
                results.extend(self._rank_chunk(chunk, chunk_events, length))
            return results

        per_user = map_sharded(rank_rows, len(histories), rank_local)
        if not per_user:
            return Rankings([], np.zeros((0, length), dtype=np.int64), np.zeros((0, length), dtype=np.float32))
        top_items, top_scores = zip(*per_user)
        return Rankings([], np.stack(top_items), np.stack(top_scores))

    def _rank_chunk(self, histories: list[np.ndarray], events: list[np.ndarray] | None, length: int) -> list:
        users, _ = self.model.retrieval_vectors(histories, events)
        longest = max((len(history) for history in histories), default=0)
        found = self.index.search(users.cpu().numpy(), length + longest)
        listed_seen = not self.ranker.exclude_seen
        allowed = None if self.ranker.allowed is None else self.ranker.allowed.numpy()
        rows = []
        for row, history in enumerate(histories):
            candidates = found[row][found[row] > 0]
            if listed_seen:
                own = np.unique(history)
                own = own[(own > 0) & (True if allowed is None else allowed[own])]
                candidates = np.union1d(candidates, own)
            rows.append(candidates)
        width = max(max((len(candidates) for candidates in rows), default=0), 1)
        padded = np.zeros((len(rows), width), dtype=np.int64)
        for row, candidates in enumerate(rows):
            padded[row, : len(candidates)] = candidates
        candidates = torch.from_numpy(padded)
        scores = self.model.score_candidates(histories, candidates, events, users).float()
        if torch.isnan(scores).any():
            raise NonFiniteScores(f"{type(self.model).__name__} scored items NaN: its weights are not finite numbers")
        return self.ranker.rank_candidates(scores, candidates, histories, length)


class ListMaker:
    """The lists of one model under `output.retrieval`: exact ranking, or ANN (the index is built once). With
    `rank_local`, the histories given are this rank's own users and the lists come back for every rank's."""

    def __init__(self, model, ranker: Ranker, output: OutputConfig, user_batch_size: int, rank_local: bool = False):
        self.model, self.ranker, self.output, self.user_batch_size = model, ranker, output, user_batch_size
        self.rank_local = rank_local
        self.ann = None
        if output.retrieval == "ann":
            if retrieval_vectors_of(model) is None:
                log.info("output.retrieval: ann: %s does not score by inner products; its lists are exact", type(model).__name__)
            else:
                self.ann = AnnLists(model, ranker, output.ann_ef_search)

    def exact(self, histories: list[np.ndarray], length: int, events: list[np.ndarray] | None = None) -> Rankings:
        return rank_users(self.model, histories, None, length, self.ranker, self.user_batch_size, events, self.rank_local)

    def rank(self, histories: list[np.ndarray], length: int, events: list[np.ndarray] | None = None) -> Rankings:
        if self.ann is None:
            return self.exact(histories, length, events)
        return self.ann.rank(histories, length, events, self.rank_local)

    def check(self, lists: Rankings, histories: list[np.ndarray], events: list[np.ndarray] | None = None,
              exact: Rankings | None = None) -> dict | None:
        """With ANN: recall@length of `lists` against exact lists of the first `output.ann_check_users` users (or
        against `exact`, already ranked for the same users); None for exact lists."""
        if self.ann is None:
            return None
        length = lists.top_items.shape[1]
        # The first users of each rank (its own rows start where the previous ranks' end in the gathered lists).
        counts = gather_rows([len(histories)], self.rank_local)
        users = min(self.output.ann_check_users, len(histories))
        checked_counts = gather_rows([users], self.rank_local)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        rows = np.concatenate([np.arange(start, start + taken) for start, taken in zip(starts, checked_counts)]).astype(np.int64)
        if exact is None:
            exact = self.exact(histories[:users], length, None if events is None else events[:users])
        else:
            exact = Rankings([], exact.top_items[rows], exact.top_scores[rows])
        users = len(rows)
        checked = Rankings([], lists.top_items[rows], lists.top_scores[rows])
        recall = recall_against_exact(checked, Rankings([], exact.top_items[:, :length], exact.top_scores[:, :length]))
        report = {
            "method": "ann", "index": f"HNSW (faiss), {len(self.ann.index)} items, efSearch {self.output.ann_ef_search}",
            f"recall@{length}_vs_exact": round(recall, 4), "users_checked": users,
        }
        log.info("ann lists: recall@%d %.4f against exact lists of %d users", length, recall, users)
        return report


def recall_against_exact(ann: Rankings, exact: Rankings) -> float:
    """Mean share of each user's exact top items that the ANN list holds too (users with an exact list)."""
    shares = []
    for ann_items, exact_items in zip(ann.top_items, exact.top_items):
        wanted = exact_items[exact_items > 0]
        if len(wanted):
            shares.append(len(np.intersect1d(ann_items[ann_items > 0], wanted)) / len(wanted))
    return float(np.mean(shares)) if shares else 1.0
