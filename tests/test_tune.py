"""`tune`: an Optuna search on a tiny slice, its published folder, resuming an interrupted search, failing trials."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

import pipeline.recipes.tune as tune_recipe
from pipeline.config import load_config
from pipeline.errors import PipelineInputError
from pipeline.outputs import LATEST_TUNE, TUNE_FILES
from pipeline.recipes.tune import tune
from tests.conftest import write_successor_log

SPACE = {"train.learning_rate": {"low": 0.002, "high": 0.05, "log": True}, "model.dropout": {"low": 0.0, "high": 0.5}}


@pytest.fixture(scope="module")
def successor_log(tmp_path_factory):
    return write_successor_log(tmp_path_factory.mktemp("successor"))


@pytest.fixture
def tiny_config(successor_log, tmp_path):
    """A planted signal the Transformer learns within a few epochs, on id rows (nothing to encode)."""
    return {
        "name": "tiny", "seed": 3,
        "data": {
            "interactions": {"path": str(successor_log / "events.csv"),
                             "columns": {"user": "user", "item": "item", "timestamp": "time"}},
            "items": {"path": str(successor_log / "items.csv"), "columns": {"id": "item", "category": "kind"}},
        },
        "model": {"name": "transformer", "item_representation": "id", "hidden_size": 16, "num_layers": 1,
                  "num_heads": 2, "max_length": 16, "dropout": 0.1},
        "train": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "patience": 4},
        "eval": {"ks": [10], "select_k": 10},
        "output": {"root": str(tmp_path / "runs")},
    }


def _config(tiny_config, trials=3, space=SPACE):
    return {**tiny_config, "tune": {"space": space, "trials": trials}}


def test_three_trials_publish_the_best_config(tiny_config):
    result = tune(_config(tiny_config))
    folder = result.run_dir
    assert {path.name for path in folder.iterdir()} == TUNE_FILES
    assert (folder.parent / LATEST_TUNE).resolve() == folder
    trials = pd.read_csv(folder / "trials.csv")
    assert list(trials["trial"]) == [0, 1, 2] and set(trials["state"]) == {"complete"}
    # trial 0 is the config's own settings
    own = load_config(tiny_config)  # the settings trial 0 must take
    assert trials.loc[0, "param:train.learning_rate"] == pytest.approx(own.train.learning_rate)
    assert trials.loc[0, "param:model.dropout"] == pytest.approx(own.model.dropout)
    drawn = trials[["param:train.learning_rate", "param:model.dropout"]].iloc[1:]
    assert drawn["param:train.learning_rate"].between(0.002, 0.05).all() and drawn["param:model.dropout"].between(0, 0.5).all()
    assert trials["valid_ndcg@10"].max() > 0 and trials["valid_ndcg@10"].nunique() > 1
    best = trials.loc[trials["valid_ndcg@10"].idxmax()]
    assert result.metrics["best_trial"] == best["trial"]
    # the best trial's model, evaluated again on validation, scores what the trial reported
    assert result.metrics["splits"]["valid"]["transformer"]["ndcg@10"] == pytest.approx(best["valid_ndcg@10"], abs=1e-9)
    best_config = load_config(folder / "best_config.yaml")
    assert best_config.train.learning_rate == pytest.approx(best["param:train.learning_rate"])
    assert best_config.model.dropout == pytest.approx(best["param:model.dropout"])
    assert best_config.tune.space == {}  # a plain run config
    assert yaml.safe_load((folder / "config.resolved.yaml").read_text())["tune"]["trials"] == 3
    history = pd.read_json(folder / "history.jsonl", lines=True)
    assert sorted(history["trial"].unique()) == [0, 1, 2]


def test_an_interrupted_search_resumes_and_tries_the_cut_trial_again(tiny_config, monkeypatch):
    config = _config(tiny_config, trials=2)
    trained = []
    real_train = tune_recipe.train

    def interrupted_second(model, data, trial_config, *args, **kwargs):
        trained.append(trial_config.train.learning_rate)
        if len(trained) == 2:
            raise KeyboardInterrupt
        return real_train(model, data, trial_config, *args, **kwargs)

    monkeypatch.setattr(tune_recipe, "train", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        tune(config)
    root = load_config(config).output.root
    partial = [folder for folder in Path(root).iterdir() if folder.name.startswith(".tiny-tune-")]
    assert len(partial) == 1 and (partial[0] / "trials.db").is_file()
    monkeypatch.setattr(tune_recipe, "train", real_train)
    result = tune(config, resume="auto")
    trials = pd.read_csv(result.run_dir / "trials.csv")
    assert list(trials["state"]) == ["complete", "fail", "complete"]
    assert trials.loc[1, "error"].startswith("interrupted")
    assert trials.loc[2, "param:train.learning_rate"] == pytest.approx(trained[1])  # the cut trial, tried again
    assert not partial[0].exists()


def test_trials_the_model_refuses_fail_and_the_search_says_none_finished(tiny_config):
    config = _config(tiny_config, trials=2, space={"model.num_heads": {"choices": [3, 5]}})  # hidden_size 16
    with pytest.raises(PipelineInputError, match="no trial finished"):
        tune(config)


def test_a_search_needs_a_space(tiny_config):
    with pytest.raises(PipelineInputError, match="tune.space: empty"):
        tune(tiny_config)
