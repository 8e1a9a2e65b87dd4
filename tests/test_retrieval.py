"""ANN lists (`output.retrieval: ann`): exact re-scoring of the index's candidates under the one ranking policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline
from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.data.prepared import ALL_EVENTS
from pipeline.ranking import ListPolicy, Ranker, history_mask, rank_users
from pipeline.retrieval import AnnLists
from tests import shop_log
from tests.conftest import REPO

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def shop_model(tmp_path_factory):
    """A Transformer with event types and side features (untrained weights: the lists only need to be equal) and
    every user's whole history."""
    folder = tmp_path_factory.mktemp("shop")
    shop_log.write(folder, users=60, items=300, seed=3, formats=("parquet",))
    config = load_config(REPO / "configs" / "shop_example.yaml", [
        f"data.interactions.path={folder / 'events.parquet'}", f"data.items.path={folder / 'items.csv'}",
        "model.item_representation=id", "model.hidden_size=16", "model.num_layers=1",
    ])
    data = prepare(load_data(config.data), config.data, config.eval.target_event_types)
    torch.manual_seed(0)
    model = pipeline.api.build(config.model, data, None, 0)
    model.fit_statistics(data.train_view())
    with torch.no_grad():  # make the history offsets matter
        model.repeat_bias.fill_(0.7)
        model.event_types.repeat_bias.normal_(0, 1)
    model.eval()
    return model, data.eval_cases(ALL_EVENTS)


def test_candidate_scores_equal_the_full_scores_at_those_items(shop_model):
    model, cases = shop_model
    histories, events = cases.histories[:8], cases.history_events[:8]
    full = model.score_items(histories, events)
    candidates = torch.stack([torch.randperm(model.n_items)[:30] + 1 for _ in histories])
    candidates[:, :5] = torch.stack([torch.tensor(history[-5:]) for history in histories])  # history items too
    assert torch.allclose(model.score_candidates(histories, candidates, events), full.gather(1, candidates), atol=1e-5)
    users, items = model.retrieval_vectors(histories, events)
    outside = ~history_mask(histories, full.shape[1], full.device)
    assert torch.allclose((users @ items.T)[outside], full[outside], atol=1e-5)


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_ann_lists_equal_exact_lists_on_a_small_catalog(shop_model, exclude_seen):
    model, cases = shop_model
    allowed = torch.ones(model.n_items + 1, dtype=torch.bool)
    allowed[1::7] = False  # a candidate filter, applied exactly
    ranker = Ranker(model.statistics.item_counts, float(model.statistics.repeat_share), exclude_seen, allowed)
    exact = rank_users(model, cases.histories, None, 10, ranker, 16, cases.history_events)
    # An HNSW search as broad as the catalog visits every item: the lists must be the exact ones, item for item.
    ann = AnnLists(model, ranker, ef_search=model.n_items).rank(cases.histories, 10, cases.history_events)
    assert np.array_equal(ann.top_items, exact.top_items)
    assert np.allclose(ann.top_scores, exact.top_scores, atol=1e-4)
    listed = ann.top_items[ann.top_items > 0]
    assert allowed[listed].all()
    if exclude_seen:
        assert not any(set(items) & set(history) for items, history in zip(ann.top_items, cases.histories))
    else:
        assert any(set(items) & set(history) for items, history in zip(ann.top_items, cases.histories))


def test_the_seen_last_rule_orders_candidates_as_the_full_ranking_does(shop_model):
    model, cases = shop_model
    ranker = Ranker(model.statistics.item_counts, 0.0, False)  # nobody comes back: seen items go last
    assert ranker.seen_last
    histories, events = cases.histories[:4], cases.history_events[:4]
    rows = []
    for history in histories:
        unseen = np.setdiff1d(np.arange(1, model.n_items + 1), history)[:2]
        rows.append(np.r_[np.unique(history)[:3], unseen, [0]])
    candidates = torch.tensor(np.stack(rows))
    with torch.no_grad():
        scores = model.score_candidates(histories, candidates, events)
    for (items, item_scores), row in zip(ranker.rank_candidates(scores, candidates, histories, 7), rows):
        # Unseen first, each part by score; then the padding slots stay empty.
        assert set(items[:2]) == set(row[3:5]) and set(items[2:5]) == set(row[:3]) and (items[5:] == 0).all()
        assert (np.diff(item_scores[:5]) <= 0).all()


@pytest.mark.slow
def test_a_run_with_ann_lists_reports_their_recall(tmp_path):
    shop_log.write(tmp_path, users=80, items=120, seed=5, formats=("parquet",))
    result = pipeline.run(load_config(REPO / "configs" / "shop_example.yaml", [
        f"data.interactions.path={tmp_path / 'events.parquet'}", f"data.items.path={tmp_path / 'items.csv'}",
        "model.item_representation=id", "model.hidden_size=16", "model.num_layers=1", "train.epochs=2",
        f"output.root={tmp_path / 'runs'}", "output.retrieval=ann", "output.embeddings=true",
    ]))
    report = result.metrics["retrieval"]
    assert report["method"] == "ann" and report["users_checked"] == 80
    assert report["recall@10_vs_exact"] >= 0.95
    assert result.recommendations.groupby("user_id").size().max() == 10
    items = pd.read_parquet(result.run_dir / "item_embeddings.parquet")
    users = pd.read_parquet(result.run_dir / "user_embeddings.parquet")
    assert set(users["user_id"]) == set(result.recommendations["user_id"])
    assert {len(vector) for vector in items["vector"]} == {len(vector) for vector in users["vector"]} == {17}  # width + bias
    assert items["item_id"].is_unique  # that the vectors score as the model does: test_candidate_scores_...


def test_embeddings_need_a_model_that_scores_by_inner_products(tiny_config):
    with pytest.raises(pipeline.errors.PipelineInputError, match="output.embeddings: item_cf does not score by inner products"):
        pipeline.run({**tiny_config, "model": {"name": "item_cf"}, "output": {**tiny_config["output"], "embeddings": True}})


def test_ann_without_faiss_is_a_clear_error(monkeypatch, shop_model):
    import builtins

    model, cases = shop_model
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    ranker = Ranker.for_model(model, ListPolicy(True))
    with pytest.raises(pipeline.errors.PipelineInputError, match=r"interest-pipeline\[ann\]"):
        AnnLists(model, ranker)
