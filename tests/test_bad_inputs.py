"""The bad-input corpus (tests/bad_inputs/): each input gets one line naming the file and row or the key, and
nothing under the output root; or documented, logged handling."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipeline
from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.models import build_model
from pipeline.outputs import load_model_state, save_model
from tests.conftest import REPO, write_yaml

CORPUS = Path(__file__).parent / "bad_inputs"

# (corpus file, the data file it stands in for, the error it must give)
BAD_DATA = [
    ("empty.csv", "interactions", r"empty\.csv: file is empty$"),
    ("header_only.csv", "interactions", r"header_only\.csv: no data rows$"),
    ("missing_column.csv", "interactions", r"missing_column\.csv: missing column 'timestamp'; columns are"),
    ("misnamed_column.csv", "interactions", r"misnamed_column\.csv: missing column 'userId' \(did you mean 'userid'\?\)"),
    ("rating_not_a_number.csv", "interactions", r"rating_not_a_number\.csv: row 2: 'rating' value 'five' is not a number"),
    ("empty_user_id.csv", "interactions", r"empty_user_id\.csv: row 2: empty 'userId'"),
    ("empty_item_id.csv", "interactions", r"empty_item_id\.csv: row 2: empty 'movieId'"),
    ("unparseable_timestamp.csv", "interactions", r"unparseable_timestamp\.csv: row 3: cannot parse 'timestamp' value 'yesterday'"),
    ("timestamp_in_milliseconds.csv", "interactions", r"timestamp_in_milliseconds\.csv: row 2: 'timestamp' value '964981247000' is outside 1970\.\.2100"),
    ("negative_timestamp.csv", "interactions", r"negative_timestamp\.csv: row 1: 'timestamp' value '-5' is outside 1970\.\.2100"),
    ("not_utf8.csv", "interactions", r"not_utf8\.csv: not UTF-8 text \(invalid continuation byte at byte \d+\)"),
    ("ragged_row.csv", "interactions", r"ragged_row\.csv: malformed CSV: .*Expected 4 fields in line 4, saw 5"),
    ("rating_out_of_range.csv", "interactions", r"rating_out_of_range\.csv: row 2: 'rating' value 7\.5 is outside data\.rating_range \[0\.5, 5\.0\]"),
    ("truncated.jsonl", "interactions", r"truncated\.jsonl: cannot read as jsonl"),
    ("items_duplicate_id.csv", "items", r"items_duplicate_id\.csv: row 3: item id '1' repeats row 1"),
    ("does_not_exist.csv", "interactions", r"data\.interactions\.path: file not found: .*does_not_exist\.csv$"),
]


def nothing_written(root: Path) -> bool:
    return not root.exists() or not any(root.rglob("*"))


@pytest.mark.parametrize("name, role, message", BAD_DATA, ids=[case[0] for case in BAD_DATA])
def test_bad_data_file(tiny_config, tmp_path, name, role, message):
    tiny_config["data"][role]["path"] = str(CORPUS / name)
    with pytest.raises(pipeline.PipelineInputError, match=message) as error:
        pipeline.run(tiny_config)
    assert "\n" not in str(error.value)
    assert nothing_written(tmp_path / "runs")


def set_key(config: dict, dotted: str, value) -> dict:
    *sections, key = dotted.split(".")
    node = config
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = value
    return config


# (key path, bad value, the error it must give); the file-system cases make their own paths.
BAD_CONFIG = [
    ("train.epoch", 3, r"unknown key train\.epoch \(did you mean train\.epochs\?\)"),
    ("model.hidden_sise", 32, r"unknown key model\.hidden_sise \(did you mean model\.hidden_size\?\)"),
    ("train.epochs", "ten", r"train\.epochs: Input should be a valid integer.*\(got 'ten'\)"),
    ("train.batch_size", 0, r"train\.batch_size: Input should be greater than or equal to 1 \(got 0\)"),
    ("model.hidden_size", -8, r"model\.hidden_size: Input should be greater than or equal to 4 \(got -8\)"),
    ("eval.ks", [0, 10], r"eval\.ks: .*every K must be >= 1"),
    ("data.rating_range", "high", r"data\.rating_range: .*\(got 'high'\)"),
    ("encoder.model", "./no/such/encoder", r"encoder\.model: model folder not found: .*no/such/encoder$"),
]


@pytest.mark.parametrize("key, value, message", BAD_CONFIG, ids=[case[0] + "=" + str(case[1]) for case in BAD_CONFIG])
def test_bad_config_value(tiny_config, tmp_path, key, value, message):
    with pytest.raises(pipeline.PipelineInputError, match=message) as error:
        pipeline.run(set_key(tiny_config, key, value))
    assert "\n" not in str(error.value)
    assert nothing_written(tmp_path / "runs")


def test_yaml_syntax_error_names_file_and_line():
    with pytest.raises(pipeline.PipelineInputError, match=r"yaml_syntax_error\.yaml: .*line 4") as error:
        load_config(CORPUS / "yaml_syntax_error.yaml")
    assert "\n" not in str(error.value)


def test_output_root_that_is_a_file(tiny_config, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    tiny_config["output"]["root"] = str(tmp_path / "a_file")
    with pytest.raises(pipeline.PipelineInputError, match=r"output\.root: exists and is not a folder: .*a_file$"):
        pipeline.run(tiny_config)
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_output_root_that_cannot_be_created(tiny_config, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    tiny_config["output"]["root"] = str(tmp_path / "a_file" / "runs")
    with pytest.raises(pipeline.PipelineInputError, match=r"output\.root: cannot write to .*a_file/runs: Not a directory"):
        pipeline.run(tiny_config)


def test_checkpoint_of_another_shape(tiny_config, tmp_path):
    matrix = np.zeros((11, 3), dtype=np.float32)
    config = load_config(tiny_config)
    saved = build_model(config.model, 10, matrix, None)
    save_model(saved, tmp_path / "model.safetensors")
    wider = build_model(config.model.model_copy(update={"hidden_size": 32}), 10, matrix, None)
    with pytest.raises(pipeline.PipelineInputError, match=r"model\.safetensors: checkpoint does not fit this model: "):
        load_model_state(wider, tmp_path / "model.safetensors")


# ---- documented handling: logged, and the run goes on -----------------------------------------------------------------


def prepared_with(tiny_config, role, path, caplog):
    tiny_config["data"][role]["path"] = str(path)
    config = load_config(tiny_config)
    with caplog.at_level("INFO", logger="pipeline"):
        return prepare(load_data(config.data), config.data)


def test_duplicate_rows_are_dropped_and_logged(tiny_config, caplog):
    data = prepared_with(tiny_config, "interactions", CORPUS / "duplicate_rows.csv", caplog)
    assert "dropped 1 duplicate interactions (same user, item and timestamp)" in caplog.text
    assert len(data.events) == 4


def test_interactions_on_unknown_items_are_dropped_and_logged(tiny_config, caplog):
    data = prepared_with(tiny_config, "interactions", CORPUS / "unknown_item.csv", caplog)
    assert "dropped 1 interactions whose item is not in the items table (1 distinct ids, e.g. '999999')" in caplog.text
    assert len(data.events) == 4


def test_a_one_megabyte_text_field_is_cut_and_logged(tiny_config, tmp_path, caplog):
    movies = pd.read_csv(tiny_config["data"]["items"]["path"])
    movies.loc[1, "title"] = "very long title " * 65_536  # 1 MiB
    movies.to_csv(tmp_path / "movies.csv", index=False)
    data = prepared_with(tiny_config, "items", tmp_path / "movies.csv", caplog)
    assert "movies.csv: cut 1 item texts to 5000 characters (first: row 2, " in caplog.text
    assert max(len(text) for text in data.item_texts) == 5000


def test_cli_bad_input_is_exit_2_one_line_nothing_written(tiny_config, tmp_path):
    tiny_config["data"]["interactions"]["path"] = str(CORPUS / "ragged_row.csv")
    config_path = write_yaml(tmp_path / "bad.yaml", tiny_config)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(config_path)], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "ragged_row.csv: malformed CSV" in result.stderr
    assert nothing_written(tmp_path / "runs")
