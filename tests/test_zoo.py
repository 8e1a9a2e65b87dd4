"""The model zoo: hand-checked neighbourhood scores, content ranking, and `compare` writing one leaderboard."""

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline
from pipeline.api import catalog_of
from pipeline.config import load_config
from pipeline.config_models import model_section
from pipeline.data import load_data, prepare
from pipeline.models import build_model
from pipeline.ranking import ListPolicy, Ranker
from tests.conftest import TINY_USERS, config_for, write_items, write_log


@pytest.fixture
def four_users(tmp_path):
    # Users 1-3 share items 11 and 12; user 4 watches 13 and 14 together. Timestamps make the last two of each
    # user valid/test, so training holds: u1 [11, 12], u2 [11, 12], u3 [12, 11], u4 [13, 14].
    rows = []
    for user, items in {1: [11, 12, 15, 16], 2: [11, 12, 16, 15], 3: [12, 11, 15, 16], 4: [13, 14, 16, 15]}.items():
        rows += [f"{user},{item},{t}" for t, item in enumerate(items)]
    config = config_for(write_log(tmp_path, rows), write_items(tmp_path, [11, 12, 13, 14, 15, 16]))
    return prepare(load_data(config.data), config.data)


def index_of(data, item_id):
    return list(data.item_ids).index(str(item_id))


def test_item_cf_similarity_by_hand(four_users):
    data = four_users
    model = build_model(model_section(name="item_cf", neighbours=2), catalog_of(data, None))
    model.fit_statistics(data.train_view())
    scores = model.score_items([np.array([index_of(data, 11)])])[0]
    # Item 11 and 12 share all three of their users: cosine 3 / (sqrt(3) sqrt(3)) = 1; 13 and 14 never co-occur with 11.
    assert scores[index_of(data, 12)].item() == pytest.approx(1.0, abs=1e-5)
    assert scores[index_of(data, 13)].item() == pytest.approx(0.0, abs=1e-5)


def test_user_cf_scores_a_new_user_by_neighbours(four_users):
    data = four_users
    model = build_model(model_section(name="user_cf", neighbours=1), catalog_of(data, None))
    model.fit_statistics(data.train_view())
    # A newcomer who watched 13 resembles user 4 only (cosine 1 / (1 * sqrt(2))): item 14 gets that vote.
    scores = model.score_items([np.array([index_of(data, 13)])])[0]
    assert scores[index_of(data, 14)].item() == pytest.approx(1 / np.sqrt(2), abs=1e-5)
    assert scores[index_of(data, 11)].item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("keys", [{"name": "popularity"}, {"name": "item_cf", "neighbours": 2}])
def test_seen_items_rank_last_where_nobody_repeats(four_users, keys):
    data = four_users
    model = build_model(model_section(**keys), catalog_of(data, None))
    model.fit_statistics(data.train_view())
    assert model.statistics.repeat_share.item() == 0.0
    seen = [index_of(data, 11), index_of(data, 12)]  # the two most popular items, each other's nearest neighbour
    history = [np.array(seen)]
    raw = model.score_items(history)
    ranked = Ranker.for_model(model, ListPolicy(False)).rank(raw, history, None, data.n_items)[0][1]
    ranked = [int(item) for item in ranked if item]
    assert ranked[-2:] == sorted(seen, key=lambda item: -raw[0, item].item())
    assert len(ranked) == data.n_items  # seen items are still listed (last), not removed


def test_seen_items_keep_their_scores_where_people_repeat(tmp_path):
    # User 1 returns to item 11: 1 repeat among the 4 + 2 + 2 - 3 = 5 training events after each user's first.
    rows = [f"1,{item},{t}" for t, item in enumerate([11, 12, 11, 13, 14, 15])]
    rows += [f"{user},{item},{t}" for user in (2, 3) for t, item in enumerate([12, 13, 14, 15])]
    config = config_for(write_log(tmp_path, rows), write_items(tmp_path, [11, 12, 13, 14, 15]))
    data = prepare(load_data(config.data), config.data)
    model = build_model(model_section(name="item_cf"), catalog_of(data, None))
    model.fit_statistics(data.train_view())
    assert model.statistics.repeat_share.item() == pytest.approx(1 / 5)
    history = [np.array([index_of(data, 11), index_of(data, 12)])]
    raw = model.score_items(history)
    policy = Ranker.for_model(model, ListPolicy(False)).candidate_scores(raw, history)
    assert torch.equal(policy[:, 1:], raw[:, 1:])


def test_content_models_rank_similar_texts_first(tmp_path):
    items = tmp_path / "items.csv"
    pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "title": ["space rocket adventure in orbit", "rocket launch to space station", "romantic comedy in paris", "love story comedy"],
            "cat": ["scifi", "scifi", "romance", "romance"],
        }
    ).to_csv(items, index=False)
    config = config_for(write_log(tmp_path, ["1,1,1", "1,3,2", "1,4,3", "2,3,1", "2,4,2", "2,2,3"]), items)
    data = prepare(load_data(config.data), config.data)
    model = build_model(model_section(name="tfidf_content"), catalog_of(data, None))
    model.fit_statistics(data.train_view())
    scores = model.score_items([np.array([index_of(data, 1)])])[0]
    assert scores[index_of(data, 2)] > scores[index_of(data, 3)]
    assert scores[index_of(data, 2)] > scores[index_of(data, 4)]


@pytest.mark.slow
def test_compare_writes_one_leaderboard(tiny_config):
    tiny_config["train"]["epochs"] = 1
    tiny_config["compare"] = {
        "models": [
            {"name": "popularity_recent", "recent_days": 365},
            {"name": "item_cf"},
            {"name": "user_cf", "neighbours": 10},
            {"name": "tfidf_content"},
            {"name": "bert_content"},
            {"name": "gru", "label": "gru_text", "item_representation": "text"},
            {"name": "logistic_regression"},
            {"name": "random_forest"},
            {"name": "target_attention", "negatives": 5},
        ],
        # Two blends; the one-blend form, a flat list of labels, is in test_compare_rejects_unknown_fusion_member.
        "fusion": [["item_cf", "bert_content"], ["item_cf", "user_cf", "bert_content"]],
    }
    result = pipeline.compare(tiny_config)
    board = result.leaderboard
    expected = {
        "popularity", "covisitation", "popularity_recent", "item_cf", "user_cf", "tfidf_content", "bert_content", "gru_text",
        "logistic_regression", "random_forest", "target_attention", "fusion(item_cf+bert_content)",
        "fusion(item_cf+user_cf+bert_content)",
    }
    assert set(board["model"]) == expected
    assert {"test_ndcg@10", "test_hit_rate@10", "test_mrr@10", "test_accuracy", "test_f1", "test_mae", "test_coverage", "train_seconds"} <= set(board.columns)
    assert board["test_ndcg@10"].is_monotonic_decreasing
    # Seen items are excluded by default; the leaderboard also carries RecBole's protocol, where they stay ranked:
    # excluding can only move a held-out (unseen) item up, so it never scores lower.
    assert (board["test_hit_rate@10"] >= board["test_hit_rate@10_seen_kept"]).all()
    assert (board["test_ndcg@10"] >= board["test_ndcg@10_seen_kept"] - 1e-12).all()
    # Nobody repeats an item in this log, so every model ranks seen items last by itself: both protocols agree.
    assert (board["test_ndcg@10"] - board["test_ndcg@10_seen_kept"]).abs().max() < 1e-12
    assert (result.run_dir / "leaderboard.md").read_text().startswith("# Leaderboard")
    assert pd.read_csv(result.run_dir / "leaderboard.csv")["model"].tolist() == board["model"].tolist()
    for weights in result.metrics["fusion_weights"].values():
        assert sum(weights.values()) == pytest.approx(1.0)
    # The weight grid holds each member alone, so the fitted blend is at least as good as its best member on validation,
    # and a blend with one more member at least as good as the blend without it.
    valid = board.set_index("model")["valid_ndcg@10"]
    assert valid["fusion(item_cf+bert_content)"] >= max(valid["item_cf"], valid["bert_content"]) - 1e-9
    assert valid["fusion(item_cf+user_cf+bert_content)"] >= valid["fusion(item_cf+bert_content)"] - 1e-9


def test_compare_rejects_unknown_fusion_member(tiny_config):
    tiny_config["compare"] = {"models": [{"name": "item_cf"}, {"name": "user_cf"}], "fusion": ["item_cf", "sasrec"]}
    with pytest.raises(pipeline.PipelineInputError, match=r"compare: .*fusion members \['sasrec'\]"):
        load_config(tiny_config)
    tiny_config["compare"] = {"models": [{"name": "item_cf", "neighbors": 5}]}
    with pytest.raises(pipeline.PipelineInputError, match=r"compare\.models\.0\.neighbors is not a key of model item_cf \(did you mean compare\.models\.0\.neighbours\?\)"):
        load_config(tiny_config)


@pytest.mark.slow
def test_saved_baselines_reload(tiny_config):
    for name in ("user_cf", "tfidf_content"):
        result = pipeline.run(tiny_config, overrides=[f"model={{name: {name}}}"])
        loaded = pipeline.load_run(result.run_dir)
        events = pipeline.data.load_interactions(result.config.data.interactions)
        assert loaded.recommend(events)["user_id"].nunique() == TINY_USERS


def test_models_saved_before_the_repeat_share_still_load(four_users):
    data = four_users
    model = build_model(model_section(name="item_cf", neighbours=2), catalog_of(data, None))
    model.fit_statistics(data.train_view())
    state = {name: value for name, value in model.state_dict().items() if name != "statistics.repeat_share"}
    older = build_model(model_section(name="item_cf", neighbours=2), catalog_of(data, None))
    older.load_state_dict(state)
    assert older.statistics.repeat_share.item() == 1.0  # seen items ranked as the model always ranked them
    history = [np.array([index_of(data, 11)])]
    raw = model.score_items(history)
    assert torch.equal(Ranker.for_model(older, ListPolicy(False)).candidate_scores(raw, history)[:, 1:], raw[:, 1:])


def test_logistic_regression_learns_the_category_habit(tmp_path):
    # Users alternate strictly between two kinds of items: the next category is the one not seen last.
    rows = []
    for user in range(30):
        for step in range(8):
            item = 10 + (step % 2) * 10 + (user + step) % 5  # kind A: 10-14, kind B: 20-24
            rows.append(f"{user},{item},{step}")
    items = tmp_path / "items.csv"
    pd.DataFrame({"id": list(range(10, 15)) + list(range(20, 25)), "title": ["x"] * 10, "cat": ["A"] * 5 + ["B"] * 5}).to_csv(items, index=False)
    config = config_for(write_log(tmp_path, rows), items)
    data = prepare(load_data(config.data), config.data)
    model = build_model(model_section(name="logistic_regression", decay_half_life=1.0), catalog_of(data, None))
    model.fit_statistics(data.train_view())
    cases = data.eval_cases("test")
    predicted = model.predict_category(cases.histories).argmax(dim=1).numpy()
    truth = [data.item_categories[item][0] for item in cases.next_items]
    assert (predicted == np.array(truth)).mean() > 0.9


def test_classifier_ranks_items_by_category_share_of_popularity(tmp_path):
    # Training events: kind A items 10 (x3) and 11 (x1), kind B item 20 (x2); the last two events per user are held out.
    sequences = {1: [10, 20, 21, 22], 2: [10, 11, 20, 21, 22], 3: [10, 21, 22]}
    rows = [f"{user},{item},{t}" for user, items in sequences.items() for t, item in enumerate(items)]
    items = tmp_path / "items.csv"
    pd.DataFrame({"id": [10, 11, 20, 21, 22], "title": ["x"] * 5, "cat": ["A", "A", "B", "B", "B"]}).to_csv(items, index=False)
    config = config_for(write_log(tmp_path, rows), items)
    data = prepare(load_data(config.data), config.data)
    model = build_model(model_section(name="logistic_regression"), catalog_of(data, None))
    model.fit_statistics(data.train_view())
    counts = {item: model.statistics.item_counts[index_of(data, item)].item() for item in (10, 11, 20)}
    assert counts == {10: 3.0, 11: 1.0, 20: 2.0}
    category_a = list(data.category_names).index("A")
    interests = torch.tensor([[0.0, 0.0]])
    interests[0, category_a], interests[0, 1 - category_a] = 0.6, 0.4
    model.predict_category = lambda histories: interests
    scores = model.score_items([np.array([index_of(data, 10)])])[0]
    # P(item | user) = P(A) * 3/4 for item 10, P(A) * 1/4 for 11, P(B) * 2/2 for 20 (B's only trained item).
    assert scores[index_of(data, 10)].item() == pytest.approx(0.6 * 3 / 4, abs=1e-5)
    assert scores[index_of(data, 11)].item() == pytest.approx(0.6 * 1 / 4, abs=1e-5)
    assert scores[index_of(data, 20)].item() == pytest.approx(0.4, abs=1e-5)


@pytest.mark.slow
def test_cold_items_only_appear_in_test(tiny_config):
    tiny_config["data"]["cold_item_fraction"] = 0.3
    config = load_config(tiny_config)
    data = prepare(load_data(config.data), config.data)
    cold = set(data.cold_items.tolist())
    assert cold
    earlier = data.events[data.events["split"] != "test"]
    assert not cold & set(earlier["item"])
    tiny_config["train"]["epochs"] = 1
    result = pipeline.run(tiny_config)
    test = result.metrics["splits"]["test"]
    for model in ("transformer", "popularity"):
        assert {"cold_ndcg@10", "cold_hit_rate@10", "cold_users"} <= set(test[model])
    assert test["transformer"]["cold_users"] == sum(np.isin(data.eval_cases("test").next_items, data.cold_items))


def test_fusion_weight_search_ranks_each_user_by_their_own_scores():
    from pipeline.models.fusion import _Fixed
    from pipeline.ranking import rank_users

    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 21, generator=generator)
    histories = [np.array([1 + user]) for user in range(5)]
    # The ranking asks for users in chunks (the first alone), so a row lookup by position would shift users.
    ranker = Ranker(torch.zeros(21), repeat_share=1.0, exclude_seen=False)
    rankings = rank_users(_Fixed(scores, histories), histories, None, 3, ranker, 2)
    expected = scores[:, 1:].argsort(dim=1, descending=True)[:, :3] + 1
    assert rankings.top_items.tolist() == expected.tolist()


def test_fusion_standardizes_over_the_items_a_user_has_not_seen():
    from pipeline.models.fusion import standardize

    # Items 1-3 unseen (scores 1, 2, 3: mean 2, sample std 1); item 4 is the user's own, scored 10.
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0, 10.0]])
    assert standardize(scores, [np.array([4])]).tolist() == [[0.0, -1.0, 0.0, 1.0, 8.0]]
