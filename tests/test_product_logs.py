"""A shop's log: event types with meaning, side features, category paths, candidate control, honest floors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline
from pipeline.config import load_config
from pipeline.data import TEST, VALID, load_data, prepare
from pipeline.data.prepared import CONTEXT, TRAIN
from pipeline.errors import PipelineInputError
from tests import shop_log
from tests.conftest import REPO

# One user, hand-written: view 1, cart 1, purchase 1 (valid target), view 2 (context), purchase 2 (test target),
# view 3 (after the test target: never read). A second user only views (trains, not evaluated).
SHOP_ROWS = [
    "a,1,view,100,0", "a,1,add_to_cart,110,0", "a,1,purchase,120,9.5", "a,2,view,130,0", "a,2,purchase,140,20",
    "a,3,view,150,0", "b,1,view,100,0", "b,2,view,110,0", "b,3,view,120,0",
]


def shop_files(tmp_path, rows=SHOP_ROWS, items=None):
    events = tmp_path / "events.csv"
    events.write_text("u,i,kind,t,paid\n" + "\n".join(rows) + "\n", encoding="utf-8")
    items = items if items is not None else pd.DataFrame({
        "id": [1, 2, 3, 4],
        "title": ["Kettle", "Pan", "Knife", "Hose"],
        "path": ["Home > Kitchen > Kettles", "Home > Kitchen > Pans", "Home > Kitchen > Knives", "Home > Garden > Hoses"],
        "price": [30.0, None, 12.25, 8.0],
        "brand": ["Acme", "Acme", "Zeta", None],
        "stock": [3, 0, 5, 1],
    })
    items_path = tmp_path / "items.csv"
    items.to_csv(items_path, index=False)
    return events, items_path


def shop_config(events, items_path, interactions=None, items=None, **sections):
    return load_config({
        "data": {
            "interactions": {
                "path": str(events), "columns": {"user": "u", "item": "i", "timestamp": "t", "event": "kind", "value": "paid"},
                **(interactions or {}),
            },
            "items": {
                "path": str(items_path), "columns": {"id": "id", "category": "path"}, "category_separator": " > ",
                **(items or {}),
            },
        },
        **sections,
    })


def prepared(config):
    return prepare(load_data(config.data), config.data, config.eval.target_event_types)


def test_purchases_as_targets_train_on_every_earlier_event(tmp_path):
    events, items = shop_files(tmp_path)
    data = prepared(shop_config(events, items, eval={"target_event_types": ["purchase"]}))
    a, b = (list(data.user_ids).index(user) for user in ("a", "b"))
    splits = data.events.groupby("user")["split"].apply(list)
    assert splits[a] == [TRAIN, TRAIN, VALID, CONTEXT, TEST]  # the view after the test purchase is dropped
    assert splits[b] == [TRAIN, TRAIN, TRAIN]  # no purchase: trains, is not evaluated
    item = {original: index for index, original in enumerate(data.item_ids) if index}
    valid, test = data.eval_cases(VALID), data.eval_cases(TEST)
    assert list(valid.users) == [a] and list(test.users) == [a]
    assert valid.next_items.tolist() == [item["1"]] and test.next_items.tolist() == [item["2"]]
    assert test.histories[0].tolist() == [item["1"], item["1"], item["1"], item["2"]]
    code = {name: position + 1 for position, name in enumerate(data.event_names)}
    assert test.history_events[0].tolist() == [code["view"], code["add_to_cart"], code["purchase"], code["view"]]
    assert data.train_view().events["event"].tolist() == [code["view"], code["add_to_cart"]] + [code["view"]] * 3


def test_event_weights_and_values_weigh_each_training_target(tmp_path):
    events, items = shop_files(tmp_path)
    config = shop_config(events, items, interactions={"event_weights": {"view": 1, "add_to_cart": 2, "purchase": 4}, "weight_by_value": True})
    view = prepared(config).train_view().events
    # Weights: type weight x value / mean training value. Training (leave-last-out per user, all types as targets):
    # a: view, cart, purchase(9.5), view; b: view. Mean value = 9.5 / 5.
    mean = 9.5 / 5
    assert view["weight"].tolist() == pytest.approx([0.0, 0.0, 4 * 9.5 / mean, 0.0, 0.0])


@pytest.mark.parametrize("key, value, message", [
    ("event_weights", {"purchse": 4}, r"data\.interactions\.event_weights: 'purchse' is not an event type of .*events\.csv \(did you mean 'purchase'\?\)"),
    ("event_types", ["clik"], r"data\.interactions\.event_types: 'clik' is not an event type"),
])
def test_an_event_type_not_in_the_log_is_an_error_naming_it(tmp_path, key, value, message):
    events, items = shop_files(tmp_path)
    with pytest.raises(PipelineInputError, match=message):
        prepared(shop_config(events, items, interactions={key: value}))
    with pytest.raises(PipelineInputError, match=r"eval\.target_event_types: 'buy' is not an event type"):
        prepared(shop_config(events, items, eval={"target_event_types": ["buy"]}))


def test_collapse_repeats_keeps_the_strongest_event_of_a_run(tmp_path):
    events, items = shop_files(tmp_path)
    config = shop_config(events, items, interactions={"collapse_repeats": True, "event_weights": {"purchase": 4, "add_to_cart": 2}})
    raw = load_data(config.data)
    data = prepare(raw, config.data)
    a = list(data.user_ids).index("a")
    kept = data.events[data.events["user"] == a]
    names = [data.event_names[code - 1] for code in kept["event"]]
    # a's runs: (1 view, 1 cart, 1 purchase) -> purchase at 120; (2 view, 2 purchase) -> purchase at 140; (3 view).
    assert names == ["purchase", "purchase", "view"] and kept["timestamp"].tolist() == [120, 140, 150]


def test_category_paths_numbers_in_templates_and_side_features(tmp_path):
    events, items = shop_files(tmp_path)
    config = shop_config(events, items, items={
        "text_fields": ["title", "price"], "text_template": "{title} {price:.0f} EUR", "category_level": "leaf",
        "numeric_features": ["price"], "categorical_features": ["brand"],
    })
    raw = load_data(config.data)
    assert raw.items["text"].tolist() == ["Kettle 30 EUR", "Pan  EUR", "Knife 12 EUR", "Hose 8 EUR"]
    data = prepare(raw, config.data)
    assert data.category_names == sorted(raw.items["categories"].str[0])  # one category per distinct path
    features = data.item_features
    # price: mean of 30, 12.25, 8 fills the missing one; standardised; a missing flag column follows.
    present = np.array([30.0, 12.25, 8.0])
    expected = (np.array([30.0, present.mean(), 12.25, 8.0]) - present.mean()) / present.std()
    assert features.numeric_names == ["price", "price missing"]
    assert features.numeric[1:, 0] == pytest.approx(expected, abs=1e-6)
    assert features.numeric[1:, 1].tolist() == [0, 1, 0, 0]
    # brand: Acme is shared by two items, Zeta by one (unknown bucket), one missing (unknown bucket).
    assert features.categorical_sizes == [2] and features.categorical[1:, 0].tolist() == [1, 1, 0, 0]
    top = shop_config(events, items, items={"category_level": "top"})
    assert prepare(load_data(top.data), top.data).category_names == ["Home"]


def test_content_baselines_rank_by_cosine_over_text_and_side_feature_labels(tmp_path):
    events, items = shop_files(tmp_path)
    config = shop_config(events, items, items={"numeric_features": ["price"], "categorical_features": ["brand"]})
    data = prepared(config)
    labels = data.item_features.label_matrix().toarray()
    # Columns: brand Acme, then price bands 1..5 (quantiles of 30, 12.25, 8). Acme + a band share a row's unit norm;
    # the missing price and the one-item brand Zeta are no label.
    half = 1 / np.sqrt(2)
    assert labels == pytest.approx(np.array([
        [0, 0, 0, 0, 0, 0], [half, 0, 0, 0, 0, half], [1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0],
    ]))
    embeddings = np.random.default_rng(0).normal(size=(data.n_items + 1, 8)).astype(np.float32)
    weight = 0.7
    model = pipeline.api.build(load_config({**config.to_dict(), "model": {"name": "bert_content", "feature_weight": weight}}).model, data, embeddings, 0)
    history = [np.array([1, 3, 2])]
    scores = model.score_items(history)[0].numpy()
    # By hand: each item's vector is [unit text vector, weight x labels]; the profile is the recency-weighted sum
    # (newest 1, halving every 10 items); the score is the cosine.
    text = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    text[0] = 0
    vectors = np.hstack([text, weight * labels])
    profile = (0.5 ** (np.array([2, 1, 0]) / 10)) @ vectors[history[0]]
    expected = vectors[1:] @ profile / np.linalg.norm(vectors[1:], axis=1) / np.linalg.norm(profile)
    assert scores[1:] == pytest.approx(expected, abs=1e-5)
    text_only = pipeline.api.build(load_config({**config.to_dict(), "model": {"name": "bert_content", "feature_weight": 0}}).model, data, embeddings, 0)
    assert text_only.score_items(history)[0].numpy()[1:] == pytest.approx(text[1:] @ (profile[:8] / np.linalg.norm(profile[:8])), abs=1e-5)


def test_a_number_format_on_text_is_an_error_naming_the_row(tmp_path):
    events, items = shop_files(tmp_path)
    config = shop_config(events, items, items={"text_fields": ["title", "brand"], "text_template": "{brand:.0f}"})
    with pytest.raises(PipelineInputError, match=r"items\.csv: row 1: data\.items\.text_template .*could not convert string to float: 'Acme'"):
        load_data(config.data)


@pytest.mark.parametrize("expression, allowed", [("stock > 0", ["1", "3", "4"]), ("brand == Acme", ["1", "2"]), ("in_stock", ["1", "3"])])
def test_only_recommendable_items_are_listed_or_evaluated(tmp_path, expression, allowed):
    events, _ = shop_files(tmp_path)
    frame = pd.DataFrame({
        "id": [1, 2, 3, 4], "title": list("abcd"), "path": ["X"] * 4, "stock": [3, 0, 5, 1],
        "brand": ["Acme", "Acme", "Zeta", "Zeta"], "in_stock": ["true", "no", "yes", "0"],
    })
    _, items = shop_files(tmp_path, items=frame)
    config = shop_config(events, items, items={"recommendable": expression}, model={"name": "popularity"}, output={"exclude_untrained": False})
    data = prepared(config)
    model = pipeline.api.build(config.model, data, None, 0)
    pipeline.api.train(model, data, config)
    _, rankings = pipeline.api.evaluate(model, data, config, TEST)
    listed = {data.item_ids[item] for item in rankings.top_items.reshape(-1) if item}
    assert listed and listed <= set(allowed)
    assert not (data.recommendable is None)


def test_bad_recommendable_filters_are_refused(tmp_path):
    events, items = shop_files(tmp_path)
    with pytest.raises(PipelineInputError, match=r"data\.items\.recommendable"):
        shop_config(events, items, items={"recommendable": "stock >> 0"})
    with pytest.raises(PipelineInputError, match=r"items\.csv: row 1: 'stock' value '3' is not true/false"):
        load_data(shop_config(events, items, items={"recommendable": "stock"}).data)


def test_exclude_seen_auto_follows_the_logs_repeat_share(tmp_path, tiny_config):
    movielens = load_config(tiny_config)
    assert movielens.eval.exclude_seen == "auto"
    assert pipeline.api.candidate_policy(prepared(movielens), movielens)["exclude_seen"] is True
    events, items = shop_files(tmp_path)
    shop = shop_config(events, items)
    policy = pipeline.api.candidate_policy(prepared(shop), shop)
    # a's training events revisit item 1 twice after the first of 4 events; b never revisits: 2 of (4 - 1 + 1 - 1).
    assert policy["repeat_share"] == pytest.approx(2 / 3) and policy["exclude_seen"] is False


def test_untrained_items_leave_the_lists_of_models_that_cannot_score_them(tmp_path):
    events, items = shop_files(tmp_path)
    for exclude, expected in ((True, False), (False, True)):
        config = shop_config(events, items, model={"name": "popularity"}, output={"exclude_untrained": exclude})
        data = prepared(config)
        model = pipeline.api.build(config.model, data, None, 0)
        pipeline.api.train(model, data, config)
        _, rankings = pipeline.api.evaluate(model, data, config, TEST)
        listed = {data.item_ids[item] for item in rankings.top_items.reshape(-1) if item}
        assert ("4" in listed) is expected  # item 4 has no event at all


def test_recent_items_and_covisitation_score_as_computed_by_hand(tmp_path):
    events, items = shop_files(tmp_path)
    config = shop_config(
        events, items, interactions={"event_weights": {"view": 1, "add_to_cart": 2, "purchase": 4}},
        model={"name": "recent_items", "decay_half_life": 1.0},
    )
    data = prepared(config)
    item = {original: index for index, original in enumerate(data.item_ids) if index}
    code = {name: position + 1 for position, name in enumerate(data.event_names)}
    recent = pipeline.api.build(config.model, data, None, 0)
    recent.fit_statistics(data.train_view())
    history = [np.array([item["1"], item["1"], item["2"]])]
    kinds = [np.array([code["view"], code["add_to_cart"], code["view"]])]
    scores = recent.score_items(history, kinds)[0]
    # Newest weighs 1, halving per newer event: item 2 viewed now = 1; item 1 carted 1 ago (2 x 0.5) + viewed 2 ago (1 x 0.25).
    assert scores[item["2"]].item() == pytest.approx(1.0) and scores[item["1"]].item() == pytest.approx(1.25)
    assert scores[item["3"]].item() == 0

    covisit = pipeline.api.build(load_config({**config.to_dict(), "model": {"name": "covisitation", "window": 1}}).model, data, None, 0)
    covisit.fit_statistics(data.train_view())
    # Training events (every type a target: each user's last two are valid/test): a: view 1, cart 1, purchase 1,
    # view 2; b: view 1. Pairs one step apart: 1->1 (cart, weight 2), 1->1 (purchase, 4), 1->2 (view, 1).
    after_one = dict(zip(covisit.neighbour_items[item["1"]].tolist(), covisit.neighbour_weights[item["1"]].tolist()))
    assert after_one[item["1"]] == pytest.approx(6 / 7) and after_one[item["2"]] == pytest.approx(1 / 7)


def test_the_shop_generator_writes_parquet_and_iso_jsonl_that_load_to_the_same_log(tmp_path):
    shop_log.write(tmp_path, users=40, items=60, seed=3)
    configs = [
        load_config(REPO / "configs" / "shop_example.yaml", [
            f"data.interactions.path={tmp_path / name}", f"data.items.path={tmp_path / 'items.csv'}",
        ])
        for name in ("events.parquet", "events.jsonl")
    ]
    frames = [prepared(config).events for config in configs]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len({line.split('"ts":"')[1][19:25] for line in lines}) > 1  # several UTC offsets in the text


def test_recommend_falls_back_for_users_without_a_known_item(tmp_path, tiny_config):
    result = pipeline.run({**tiny_config, "model": {"name": "popularity"}})
    loaded = pipeline.load_run(result.run_dir)
    events = pd.DataFrame({"userId": ["new", "ghost"], "movieId": [1, "not-an-item"], "timestamp": [100, 100]})
    served = loaded.recommend(events)
    assert set(served.groupby("user_id")["source"].first().items()) == {("new", "model"), ("ghost", "popular")}
    popular = served[served["user_id"] == "ghost"]["item_id"].tolist()
    counts = loaded.model.statistics.item_counts[1:].numpy()
    assert popular[0] == loaded.item_ids[1 + int(np.argmax(counts))]
    loaded.config.output.fallback = "none"
    assert set(loaded.recommend(events)["user_id"]) == {"new"}


def test_output_users_all_lists_every_user_from_the_whole_log(tiny_config):
    result = pipeline.run({**tiny_config, "model": {"name": "popularity"}, "output": {**tiny_config["output"], "users": "all"}})
    data = prepared(result.config)
    assert result.recommendations["user_id"].nunique() == data.n_users
    # Ranked from the whole log: a user's test item is seen by then, so (seen items excluded) never listed.
    test = data.eval_cases(TEST)
    listed = result.recommendations.groupby("user_id")["item_id"].apply(set)
    for user, item in zip(data.user_ids[test.users], test.next_items):
        assert data.item_ids[item] not in listed[user]


def test_sequence_models_read_event_types_and_features_and_save_them(tmp_path):
    shop_log.write(tmp_path, users=30, items=40, seed=1, formats=("parquet",))
    config = load_config(REPO / "configs" / "shop_example.yaml", [
        f"data.interactions.path={tmp_path / 'events.parquet'}", f"data.items.path={tmp_path / 'items.csv'}",
        "model.item_representation=id", "model.hidden_size=8", "model.num_layers=1", "train.epochs=1",
    ])
    data = prepared(config)
    model = pipeline.api.build(config.model, data, None, 0)
    names = {name for name, _ in model.named_parameters()}
    assert {"event_types.inputs.weight", "event_types.targets.weight", "items.numeric_projection.weight", "items.label_embeddings.0.weight"} <= names
    assert model.event_types.asked[data.event_names.index("purchase") + 1] == 1
    cases = data.eval_cases(TEST)
    with torch.no_grad():
        as_given = model.score_items(cases.histories[:2], cases.history_events[:2])
        all_views = model.score_items(cases.histories[:2], [np.full_like(e, data.event_names.index("view") + 1) for e in cases.history_events[:2]])
    assert not torch.allclose(as_given, all_views)  # the event types change the scores
    without = pipeline.api.build(load_config({**config.to_dict(), "model": {**config.model.model_dump(), "event_types": False, "item_features": False}}).model, data, None, 0)
    assert not any(name.startswith(("event_types", "items.numeric", "items.label")) for name, _ in without.named_parameters())
