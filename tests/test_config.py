"""Config: typed validation, key paths in errors, suggestions for typos, overrides, path resolution."""

import copy
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import PipelineInputError
from tests.conftest import REPO, write_yaml


def test_shipped_configs_validate():
    for name in ("quickstart", "movielens_transformer", "movielens_lstm"):
        config = load_config(REPO / "configs" / f"{name}.yaml")
        assert Path(config.data.interactions.path).is_file()
        assert Path(config.output.root).is_absolute()


def test_unknown_key_names_path_and_suggests(tiny_config):
    tiny_config["train"]["learnig_rate"] = 0.1
    with pytest.raises(PipelineInputError, match=r"unknown key train\.learnig_rate \(did you mean train\.learning_rate\?\)"):
        load_config(tiny_config)


def test_unknown_nested_key_suggests(tiny_config):
    tiny_config["data"]["interactions"]["columns"]["usr"] = "x"
    with pytest.raises(PipelineInputError, match=r"data\.interactions\.columns\.usr \(did you mean data\.interactions\.columns\.user\?\)"):
        load_config(tiny_config)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "epochs", "many", r"train\.epochs: .*integer"),
        ("train", "epochs", 0, r"train\.epochs: .*greater than or equal to 1"),
        ("train", "batch_size", -4, r"train\.batch_size"),
        ("model", "name", "xgboost", r"model: unknown model 'xgboost'; models: .*transformer"),
        ("eval", "ks", [0, 5], r"eval\.ks: .*>= 1"),
        ("model", "dropout", 1.5, r"model\.dropout"),
    ],
)
def test_wrong_type_or_range_names_key(tiny_config, section, key, value, message):
    tiny_config[section][key] = value
    with pytest.raises(PipelineInputError, match=message):
        load_config(tiny_config)


def test_overrides_are_typed(tiny_config):
    config = load_config(tiny_config, ["train.epochs=9", "model={name: lstm}", "eval.ks=[1,3]", "data.split.method=time_cut"])
    assert config.train.epochs == 9 and config.model.name == "lstm"
    assert config.eval.ks == [1, 3]
    assert config.data.split.method == "time_cut"
    with pytest.raises(PipelineInputError, match=r"--set 'train\.epochs': expected section\.key=value"):
        load_config(tiny_config, ["train.epochs"])


def test_relative_paths_resolve_against_config_file(tiny_data, tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (tmp_path / "data").symlink_to(tiny_data)
    path = write_yaml(
        folder / "c.yaml",
        {
            "data": {
                "interactions": {"path": "../data/ratings.csv", "columns": {"user": "userId", "item": "movieId"}},
                "items": {"path": "../data/movies.csv", "columns": {"id": "movieId", "category": "genres"}},
            },
            "output": {"root": "../out"},
        },
    )
    config = load_config(path)
    assert config.data.interactions.path == str((tmp_path / "data" / "ratings.csv").resolve())
    assert config.output.root == str((tmp_path / "out").resolve())


def test_missing_data_file_names_key(tiny_config):
    tiny_config["data"]["items"]["path"] = "/nonexistent/movies.csv"
    with pytest.raises(PipelineInputError, match=r"data\.items\.path: file not found: /nonexistent/movies\.csv"):
        load_config(tiny_config)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  interactions: [unclosed\n", encoding="utf-8")
    with pytest.raises(PipelineInputError, match=r"broken\.yaml: line \d+, column \d+: YAML syntax error"):
        load_config(path)


def test_output_root_that_is_a_file(tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    tiny_config["output"]["root"] = str(blocker)
    with pytest.raises(PipelineInputError, match=r"output\.root: exists and is not a folder"):
        load_config(tiny_config)


def test_resolved_config_round_trips(tiny_config, tmp_path):
    config = load_config(tiny_config)
    again = load_config(write_yaml(tmp_path / "resolved.yaml", config.to_dict()))
    assert again.to_dict() == config.to_dict()  # data.shards (unused by the pandas engine) is not written


def test_yaml_merge_keys_still_work(tmp_path):
    from pipeline.config_files import parse_yaml

    assert parse_yaml("base: &b {a: 1, b: 2}\nm:\n  <<: *b\n  b: 3\n") == {"base": {"a": 1, "b": 2}, "m": {"a": 1, "b": 3}}


@pytest.mark.slow
def test_submodules_are_reachable_from_the_package():
    import subprocess
    import sys

    code = "import pipeline; print(pipeline.config.load_config.__name__, pipeline.nightly.__name__, callable(pipeline.nightly))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["load_config", "nightly", "True"], result.stderr


def test_a_config_stored_in_the_flat_layout_still_loads(tiny_config):
    # What config.resolved.yaml held before each model had its own schema: every model's keys in one section, the
    # loss weights under train, a key nothing read.
    old = copy.deepcopy(tiny_config)
    old["model"] = {
        "name": "lstm", "item_representation": "id", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.2,
        "norm_first": True, "id_dropout": 0.0, "max_length": 20, "future_items": 2, "neighbours": 100,
        "decay_half_life": 10.0, "recent_days": 30.0, "negatives": 20,
    }
    old["train"].update(category_loss_weight=0.25, rating_loss_weight=0.5, future_loss_weight=0.75)
    old["encoder"]["behavior_recent_items"] = 10
    old["compare"] = {"models": [{"name": "target_attention", "num_layers": 1}], "fusion": []}
    with pytest.raises(PipelineInputError, match=r"train\.category_loss_weight has moved to model\.loss\.category_weight"):
        load_config(old)  # a hand-written config is told where the key went
    config = load_config(old, check_paths=False, stored=True)
    assert config.model.name == "lstm" and config.model.hidden_size == 16 and config.model.num_layers == 1
    assert config.model.loss.model_dump() == {"category_weight": 0.25, "rating_weight": 0.5, "future_items": 2, "future_weight": 0.75}
    assert config.compare.models[0].name == "target_attention"
    # Today's layout is left as it is.
    current = load_config(tiny_config).to_dict()
    assert load_config(current, check_paths=False, stored=True).to_dict() == current


def test_a_stored_future_weight_without_future_items_is_dropped_not_refused(tiny_config):
    old = copy.deepcopy(tiny_config)
    old["model"] = {**old["model"], "future_items": 0}
    old["train"]["future_loss_weight"] = 0.75  # had no effect without future items
    config = load_config(old, check_paths=False, stored=True)
    assert config.model.loss.future_items == 0 and config.model.loss.future_weight == 0.5


@pytest.mark.parametrize("section, message", [
    ({"model": {"name": ["lstm"]}}, r"model: model name: expected text, got list; models: popularity, "),
    ({"compare": {"models": [{"name": "lstm", "future_items": 2}]}},
     r"compare\.models\.0\.future_items has moved to compare\.models\.0\.loss\.future_items"),
    ({"model": {"name": "popularity", "future_items": 3}}, r"model\.future_items is not a key of model popularity$"),
])
def test_model_section_errors_name_the_full_key_path(tiny_config, section, message):
    with pytest.raises(PipelineInputError, match=message):
        load_config({**tiny_config, **section})
