"""Every metric against values computed by hand on tiny examples."""

import math

import numpy as np
import pytest
import torch

from pipeline.evaluation import (
    catalog_coverage,
    category_metrics,
    ranking_metrics,
    rating_metrics,
)
from pipeline.ranking import Ranker, rank_users


def ranker(exclude_seen: bool, counts=(0, 0, 0, 0, 0, 0), repeat_share: float = 1.0) -> Ranker:
    return Ranker(torch.tensor(counts, dtype=torch.float32), repeat_share, exclude_seen)


def test_ranking_metrics_single_target_by_hand():
    # user A: target at rank 1; user B: rank 3; user C: rank 12 (outside both K); user D: not rankable.
    ranks = [np.array([1.0]), np.array([3.0]), np.array([12.0]), np.array([np.inf])]
    metrics = ranking_metrics(ranks, [2, 5])
    assert metrics["hit_rate@2"] == pytest.approx(1 / 4)
    assert metrics["hit_rate@5"] == pytest.approx(2 / 4)
    assert metrics["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(4)) / 4)
    assert metrics["mrr@5"] == pytest.approx((1.0 + 1 / 3) / 4)
    assert metrics["precision@5"] == pytest.approx((1 / 5 + 1 / 5) / 4)
    assert metrics["recall@5"] == pytest.approx(2 / 4)


def test_ranking_metrics_several_targets_by_hand():
    # Two relevant items at ranks 2 and 4, K = 3: one hit.
    metrics = ranking_metrics([np.array([2.0, 4.0])], [3])
    ideal = 1.0 + 1 / math.log2(3)
    assert metrics["ndcg@3"] == pytest.approx((1 / math.log2(3)) / ideal)
    assert metrics["recall@3"] == pytest.approx(0.5)
    assert metrics["precision@3"] == pytest.approx(1 / 3)
    assert metrics["mrr@3"] == pytest.approx(0.5)


def test_category_metrics_multi_valued_truth():
    # Item categories: {0, 1}, {2}, {1}, {0}. Predictions: 1 (right), 0 (wrong, counts against 2), 1, 1 (wrong vs 0).
    truth = [np.array([0, 1]), np.array([2]), np.array([1]), np.array([0])]
    metrics = category_metrics(truth, np.array([1, 0, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(0.5)
    # Resolved truth: [1, 2, 1, 0]. Class 0: P 0/1, R 0/1. Class 1: P 2/3, R 2/2. Class 2: P 0 (never predicted), R 0/1.
    assert metrics["precision"] == pytest.approx((0 + 2 / 3 + 0) / 3)
    assert metrics["recall"] == pytest.approx((0 + 1 + 0) / 3)
    assert metrics["f1"] == pytest.approx((0 + 0.8 + 0) / 3)


def test_rating_metrics_by_hand():
    metrics = rating_metrics(np.array([4.0, 2.0, 5.0]), np.array([3.5, 3.0, 5.0]))
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["rmse"] == pytest.approx(math.sqrt((0.25 + 1.0) / 3))


def test_coverage_ignores_padding_and_repeats():
    lists = np.array([[1, 2, 3], [2, 3, 4], [0, 0, 0]])
    assert catalog_coverage(lists, n_items=8) == pytest.approx(4 / 8)


class FixedScores(torch.nn.Module):
    max_length = 10

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def score_items(self, histories, events=None):
        return self.scores[: len(histories)]


def test_rank_users_excludes_seen_and_breaks_ties_by_index():
    # Items 1..5 (column 0 is padding). Items 2 and 4 tie at 0.9; item 5 is seen by the user.
    model = FixedScores([[9.0, 0.1, 0.9, 0.5, 0.9, 0.99]])
    rankings = rank_users(model, [np.array([5])], [np.array([4])], 3, ranker(exclude_seen=True), user_batch_size=8)
    assert rankings.top_items.tolist() == [[2, 4, 3]]
    assert rankings.target_ranks[0].tolist() == [2.0]
    kept = rank_users(model, [np.array([5])], [np.array([4])], 3, ranker(exclude_seen=False), user_batch_size=8)
    assert kept.top_items.tolist() == [[5, 2, 4]]
    assert kept.target_ranks[0].tolist() == [3.0]


def test_ties_go_to_the_more_popular_item_then_the_lower_index():
    # Items 2, 3 and 4 tie at 0.9; item 4 has more training events than 2 and 3, which have as many as each other.
    model = FixedScores([[0.0, 0.1, 0.9, 0.9, 0.9, 0.2]])
    popular_four = ranker(exclude_seen=True, counts=(0, 1, 2, 2, 7, 1))
    rankings = rank_users(model, [np.array([1])], [np.array([3])], 4, popular_four, user_batch_size=8)
    assert rankings.top_items.tolist() == [[4, 2, 3, 5]]
    assert rankings.target_ranks[0].tolist() == [3.0]


def test_seen_items_move_below_unseen_ones_only_where_people_do_not_repeat():
    # Item 5 is seen and scores highest; items 1-4 are unseen.
    model = FixedScores([[0.0, 0.4, 0.3, 0.2, 0.1, 0.9]])
    history, target = [np.array([5])], [np.array([5])]
    rare = rank_users(model, history, target, 5, ranker(exclude_seen=False, repeat_share=0.0), user_batch_size=8)
    assert rare.top_items.tolist() == [[1, 2, 3, 4, 5]]
    assert rare.target_ranks[0].tolist() == [5.0]
    common = rank_users(model, history, target, 5, ranker(exclude_seen=False, repeat_share=0.3), user_batch_size=8)
    assert common.top_items.tolist() == [[5, 1, 2, 3, 4]]
    assert common.target_ranks[0].tolist() == [1.0]


def test_rank_users_seen_target_is_a_miss_and_chunks_agree():
    model = FixedScores([[0.0, 0.3, 0.2, 0.1]] * 3)
    histories = [np.array([1]), np.array([2]), np.array([3])]
    targets = [np.array([1]), np.array([1]), np.array([2])]
    whole = rank_users(model, histories, targets, 2, ranker(True, (0, 0, 0, 0)), user_batch_size=8)
    chunked = rank_users(model, histories, targets, 2, ranker(True, (0, 0, 0, 0)), user_batch_size=1)
    assert [r.tolist() for r in whole.target_ranks] == [[np.inf], [1.0], [2.0]]
    assert [r.tolist() for r in chunked.target_ranks] == [r.tolist() for r in whole.target_ranks]
    np.testing.assert_array_equal(whole.top_items, chunked.top_items)


def test_top_indices_match_a_stable_full_sort_with_ties():
    import torch

    from pipeline.ranking import top_indices

    generator = torch.Generator().manual_seed(0)
    for trial in range(100):
        n_columns = int(torch.randint(5, 60, (), generator=generator))
        scores = torch.randint(0, 4, (7, n_columns), generator=generator).float()  # many ties
        scores[:, 0] = float("-inf")
        if trial % 3 == 0:
            scores[:, 1:4] = float("-inf")
        k = int(torch.randint(1, n_columns + 3, (), generator=generator))
        expected = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
        assert torch.equal(top_indices(scores, k), expected)
