"""The model contract: a model defined here joins every recipe through one registry line; the registry refuses what
breaks the contract; each model's schema holds only its own keys; models see training events only."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import Field

import pipeline
from pipeline.config import load_config
from pipeline.config_models import model_section
from pipeline.data import TEST, VALID, load_data, prepare
from pipeline.models import Catalog, Recommender, register
from pipeline.models.registry import MODELS
from pipeline.schema import ModelSection

SOURCE = Path(pipeline.__file__).parent


class LastCategoryConfig(ModelSection):
    name: Literal["last_category"] = "last_category"
    boost: float = Field(1.0, gt=0)
    """Score added to the items that share a category with the user's newest item."""


class LastCategory(Recommender):
    """Items of the newest item's categories first, by popularity: written against the contract alone."""

    config_class = LastCategoryConfig

    def __init__(self, config: LastCategoryConfig, catalog: Catalog, seed: int = 0):
        super().__init__(config, catalog)
        self.boost = config.boost

    def score_items(self, histories, events=None):
        newest = torch.as_tensor([int(history[-1]) for history in histories])
        shared = (self.item_category_weights[newest] @ self.item_category_weights.T) > 0
        counts = self.statistics.item_counts
        return self.boost * shared.float() + 0.5 * counts / counts.max().clamp(min=1)

    def predict_category(self, histories, events=None):
        newest = torch.as_tensor([int(history[-1]) for history in histories])
        return self.item_category_weights[newest]

    def predict_rating(self, histories, items, events=None):
        return self.statistics.item_rating_means[torch.as_tensor(items, dtype=torch.long)]


@pytest.fixture
def last_category():
    register(LastCategory)  # the one registry line
    yield LastCategory
    MODELS.pop("last_category")


def test_a_model_defined_outside_the_package_runs_through_run_compare_and_serving(last_category, tiny_config):
    tiny_config["model"] = {"name": "last_category", "boost": 2.0}
    result = pipeline.run(tiny_config)
    metrics = result.metrics["splits"][TEST]
    # The floors that apply where seen items are excluded (MovieLens: nobody rates twice): recent_items does not.
    assert set(metrics) == {"last_category", "popularity", "covisitation"}
    assert result.metrics["strongest_floor"]["model"] in {"popularity", "covisitation"}
    config = load_config(tiny_config)
    data = prepare(load_data(config.data), config.data)
    cases = data.eval_cases(TEST)
    # The predicted category is the newest item's first category (argmax of equal shares): right when the next
    # item has it too. Computed here by hand from the data.
    hand_accuracy = np.mean([
        min(data.item_categories[history[-1]]) in data.item_categories[item]
        for history, item in zip(cases.histories, cases.next_items)
    ])
    assert 0 < hand_accuracy < 1
    assert metrics["last_category"]["accuracy"] == pytest.approx(hand_accuracy)
    # Every list leads with items sharing a category with the user's newest item (the boost dominates popularity).
    loaded = pipeline.load_run(result.run_dir)
    first = result.recommendations[result.recommendations["rank"] == 1].set_index("user_id")["item_id"]
    index = {item: position for position, item in enumerate(loaded.item_ids) if position}
    for user, history in zip(data.user_ids[cases.users], cases.histories):
        assert set(data.item_categories[index[first[user]]]) & set(data.item_categories[history[-1]])
    events = pipeline.data.load_interactions(result.config.data.interactions)
    served = loaded.recommend(events)
    assert served["user_id"].nunique() == data.n_users

    tiny_config["compare"] = {"models": [{"name": "last_category"}, {"name": "item_cf"}], "fusion": ["last_category", "item_cf"]}
    board = pipeline.compare(tiny_config).leaderboard
    assert set(board["model"]) == {"popularity", "covisitation", "last_category", "item_cf", "fusion(last_category+item_cf)"}
    valid = board.set_index("model")["valid_ndcg@10"]
    assert valid["fusion(last_category+item_cf)"] >= max(valid["last_category"], valid["item_cf"]) - 1e-9


def test_the_registry_refuses_what_breaks_the_contract(last_category):
    class NoScores(Recommender):
        config_class = LastCategoryConfig

    with pytest.raises(TypeError, match="does not implement score_items, predict_category, predict_rating"):
        register(NoScores)

    class OldSignature(LastCategory):
        def score_items(self, histories):
            return super().score_items(histories)

    with pytest.raises(TypeError, match="score_items must take `events`"):
        register(OldSignature)

    class NotARecommender(torch.nn.Module):
        config_class = LastCategoryConfig

    with pytest.raises(TypeError, match="must derive from pipeline.models.base.Recommender"):
        register(NotARecommender)

    class SameName(LastCategory):
        pass

    with pytest.raises(ValueError, match="model name 'last_category' is taken by LastCategory"):
        register(SameName)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_refuses_a_key_it_does_not_read(name, tiny_config):
    schema = MODELS[name].config_class
    foreign = next(
        key for other in MODELS.values() for key in other.config_class.model_fields if key not in schema.model_fields
    )
    tiny_config["model"] = {"name": name, foreign: 1}
    with pytest.raises(pipeline.PipelineInputError, match=rf"model\.{foreign} is not a key of model {name}\b"):
        load_config(tiny_config)
    tiny_config["model"] = {"name": name}
    assert type(load_config(tiny_config).model) is schema


def test_the_issue_example_lstm_with_negatives_is_refused(tiny_config):
    tiny_config["model"] = {"name": "lstm", "negatives": 5}
    with pytest.raises(pipeline.PipelineInputError, match=r"model\.negatives is not a key of model lstm"):
        load_config(tiny_config)
    with pytest.raises(pipeline.PipelineInputError, match=r"model\.loss: future_weight has no effect with future_items 0"):
        model_section(name="lstm", loss={"future_weight": 1.0})


def test_models_learn_from_the_training_view_only(tiny_config):
    config = load_config(tiny_config)
    data = prepare(load_data(config.data), config.data)
    view = data.train_view()
    assert "split" not in view.events.columns
    assert len(view.events) == int((data.events["split"] == "train").sum())
    # Changing every held-out event (another item, another rating) changes nothing a model fits.
    shuffled = data.events.copy()
    held_out = shuffled["split"].isin([VALID, TEST])
    shuffled.loc[held_out, "item"] = (shuffled.loc[held_out, "item"] % data.n_items) + 1
    shuffled.loc[held_out, "rating"] = 0.5
    altered = type(data)(**{**data.__dict__, "events": shuffled, "_derived": {}})
    for keys in ({"name": "item_cf"}, {"name": "popularity_recent"}, {"name": "tfidf_content"}):
        states = []
        for prepared in (data, altered):
            model = pipeline.api.build(model_section(**keys), prepared, None, config.seed)
            model.fit_statistics(prepared.train_view())
            states.append(model.state_dict())
        for key, value in states[0].items():
            assert torch.equal(value, states[1][key]), (keys, key)


def test_no_model_name_is_written_outside_the_registry_and_the_models_own_files():
    names = set(MODELS)
    offenders = []
    for path in SOURCE.rglob("*.py"):
        if path.parent.name == "models":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                offenders.append(f"{path.relative_to(SOURCE)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_popularity_floor_is_the_only_score_of_a_user_without_signal(tiny_config):
    # An item-based model knows nothing of a user whose only item has no neighbours: the ranker's tie-break lists
    # the most popular items, the same list the popularity floor gives.
    config = load_config(tiny_config)
    data = prepare(load_data(config.data), config.data)
    model = pipeline.api.build(model_section(name="item_cf", neighbours=1), data, None, config.seed)
    model.fit_statistics(data.train_view())
    popularity = pipeline.api.build(model_section(name="popularity"), data, None, config.seed)
    popularity.fit_statistics(data.train_view())
    lonely = [np.array([0])]  # padding only: no neighbour, no signal
    from pipeline.ranking import ListPolicy, Ranker

    ranked = Ranker.for_model(model, ListPolicy(True)).rank(model.score_items(lonely), lonely, None, 10)[0][1]
    floor = Ranker.for_model(popularity, ListPolicy(True)).rank(popularity.score_items(lonely), lonely, None, 10)[0][1]
    assert ranked.tolist() == floor.tolist()
    counts = pd.Series(data.train_view().events["item"]).value_counts()
    assert counts[ranked[0]] == counts.max()
