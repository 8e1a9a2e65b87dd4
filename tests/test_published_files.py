"""A property: whatever valid config a run has, its published folder holds exactly the documented files."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.outputs import COMPARE_FILES, RUN_FILES
from tests.conftest import tiny_config_dict

# Models that train in about a second on the tiny slice (the encoder is exercised elsewhere).
FAST_MODELS = [
    {"name": "popularity"}, {"name": "popularity_recent"}, {"name": "item_cf"}, {"name": "user_cf"},
    {"name": "tfidf_content"}, {"name": "logistic_regression"}, {"name": "transformer", "item_representation": "id"},
    {"name": "lstm", "item_representation": "id"}, {"name": "gru", "item_representation": "id"},
]

configs = st.fixed_dictionaries({
    "model": st.sampled_from(FAST_MODELS),
    "write_csv": st.booleans(),
    "top_k": st.integers(1, 5_000),
    "exclude_seen": st.booleans(),
    "split": st.sampled_from(["leave_last_out", "time_cut"]),
    "epochs": st.integers(1, 2),
})


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=configs)
def test_a_published_run_holds_exactly_the_documented_files(tiny_data, tmp_path_factory, drawn):
    root = tmp_path_factory.mktemp("property")
    config = tiny_config_dict(
        tiny_data, root / "runs", root / "cache", model=drawn["model"],
        train={"epochs": drawn["epochs"], "patience": 1},
        eval={"exclude_seen": drawn["exclude_seen"]},
        output={"write_csv": drawn["write_csv"], "top_k": drawn["top_k"]},
    )
    config["data"]["split"] = {"method": drawn["split"]}
    result = pipeline.run(config)
    expected = RUN_FILES | ({"recommendations.csv"} if drawn["write_csv"] else set())
    assert {path.name for path in result.run_dir.iterdir()} == expected
    assert sorted(path.name for path in (root / "runs").iterdir()) == sorted([result.run_dir.name, "latest"])
    assert result.recommendations["item_id"].notna().all()


def test_a_published_comparison_holds_exactly_the_documented_files(tiny_data, tmp_path):
    config = tiny_config_dict(
        tiny_data, tmp_path / "runs", tmp_path / "cache", train={"epochs": 1},
        compare={"models": [{"name": "item_cf"}, {"name": "lstm", "item_representation": "id"}], "fusion": [["item_cf", "lstm"]]},
    )
    result = pipeline.compare(config)
    assert {path.name for path in result.run_dir.iterdir()} == COMPARE_FILES
    # A comparison holds no model: it moves its own pointer, never the `latest` that load_run and recommend follow.
    runs = tmp_path / "runs"
    assert (runs / "latest-compare").resolve() == result.run_dir and not (runs / "latest").exists()
    served = pipeline.run({**config, "model": {"name": "popularity"}})
    pipeline.compare(config)
    assert pipeline.load_run(runs).run_dir == served.run_dir == (runs / "latest").resolve()
