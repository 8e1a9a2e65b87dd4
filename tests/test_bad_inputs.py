"""The bad-input corpus (tests/bad_inputs/ and the cases built below): each input gets one line naming the file and
row or the key path, `validate` and `run` give the same message, and nothing is written under the output root; or
documented, logged handling."""

import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipeline
from pipeline.config import load_config
from pipeline.data import load_data, prepare
from pipeline.models import Catalog, build_model
from pipeline.outputs import load_model_state, save_model
from tests.conftest import write_yaml

CORPUS = Path(__file__).parent / "bad_inputs"
JSONL = {"path": None, "format": "jsonl"}

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
    ("object_user_id.jsonl", "interactions", r"object_user_id\.jsonl: row 2: 'userId' value \{'id': 1\} is an object, not an id \(text or a number\)$"),
    ("list_item_id.jsonl", "interactions", r"list_item_id\.jsonl: row 1: 'movieId' value \[1, 2\] is a list, not an id"),
    ("boolean_user_id.jsonl", "interactions", r"boolean_user_id\.jsonl: row 1: 'userId' value True is a boolean, not an id"),
    ("boolean_timestamp.jsonl", "interactions", r"boolean_timestamp\.jsonl: row 2: 'timestamp' value True is a boolean, not a time"),
    ("list_timestamp.jsonl", "interactions", r"list_timestamp\.jsonl: row 1: 'timestamp' value \[964982703\] is a list, not a time"),
    ("boolean_rating.jsonl", "interactions", r"boolean_rating\.jsonl: row 1: 'rating' value False is a boolean, not a number"),
    ("year_3000.csv", "interactions", r"year_3000\.csv: row 2: 'timestamp' value '3000-01-01T00:00:00Z' is outside 1970\.\.2100"),
    ("year_1.csv", "interactions", r"year_1\.csv: row 1: 'timestamp' value '0001-01-01' is outside 1970\.\.2100"),
    ("timestamp_overflow.csv", "interactions", r"timestamp_overflow\.csv: row 1: 'timestamp' value '1e400' is outside 1970\.\.2100"),
    ("empty_timestamp.csv", "interactions", r"empty_timestamp\.csv: row 2: empty 'timestamp'$"),
    ("infinite_rating.csv", "interactions", r"infinite_rating\.csv: row 2: 'rating' value 'inf' is not a finite number"),
    ("nan_rating.csv", "interactions", r"nan_rating\.csv: row 2: 'rating' value 'NaN' is not a number"),
    ("empty_rating.csv", "interactions", r"empty_rating\.csv: row 2: empty 'rating'"),
    ("unclosed_quote.csv", "interactions", r"unclosed_quote\.csv: malformed CSV: "),
    ("only_unknown_items.csv", "interactions", r"only_unknown_items\.csv: no interactions left after cleaning and filtering"),
    ("items_empty_id.csv", "items", r"items_empty_id\.csv: row 2: empty 'movieId'"),
    ("items_missing_text_field.csv", "items", r"items_missing_text_field\.csv: missing column 'title'"),
    ("tags_missing_column.csv", "tags", r"tags_missing_column\.csv: missing column 'tag'"),
]


def nothing_written(root: Path) -> bool:
    return not root.exists() or not any(root.rglob("*"))


def refused_alike(config, message: str, root: Path) -> str:
    """`validate` and `run` refuse `config` with the same one-line message matching `message`; nothing is written."""
    with pytest.raises(pipeline.PipelineInputError, match=message) as by_validate:
        pipeline.validate(config)
    assert nothing_written(root)
    with pytest.raises(pipeline.PipelineInputError) as by_run:
        pipeline.run(config)
    assert str(by_run.value) == str(by_validate.value)
    assert "\n" not in str(by_run.value) and len(str(by_run.value)) < 600
    assert nothing_written(root)
    return str(by_run.value)


@pytest.mark.parametrize("name, role, message", BAD_DATA, ids=[case[0] for case in BAD_DATA])
def test_bad_data_file(tiny_config, tmp_path, name, role, message):
    tiny_config["data"][role]["path"] = str(CORPUS / name)
    if name.endswith(".jsonl"):
        tiny_config["data"][role]["format"] = "jsonl"
    if name == "infinite_rating.csv":
        tiny_config["data"]["rating_range"] = None  # no range to be outside of: the value itself is refused
    refused_alike(tiny_config, message, tmp_path / "runs")


def parquet_interactions(folder: Path, **columns) -> Path:
    frame = pd.DataFrame({"userId": [1, 1], "movieId": [1, 3], "rating": [4.0, 4.0], "timestamp": [964982703, 964981247]})
    for name, values in columns.items():
        frame[name] = values
    path = folder / "interactions.parquet"
    frame.to_parquet(path, index=False)
    return path


BAD_PARQUET = [
    ("list_ids", {"movieId": [[1], [3]]}, r"interactions\.parquet: row 1: 'movieId' value array\(\[1\]\) is a list, not an id"),
    ("boolean_ratings", {"rating": [True, False]}, r"interactions\.parquet: row 1: 'rating' value True is a boolean, not a number$"),
    ("native_time_year_2200", {"timestamp": pd.to_datetime(["2000-01-01", "2200-01-01"]).as_unit("s")},
     r"interactions\.parquet: row 2: 'timestamp' value '2200-01-01 00:00:00' is outside 1970\.\.2100"),
    ("native_time_missing", {"timestamp": pd.to_datetime(["2000-01-01", None])}, r"interactions\.parquet: row 2: empty 'timestamp'"),
]


@pytest.mark.parametrize("columns, message", [case[1:] for case in BAD_PARQUET], ids=[case[0] for case in BAD_PARQUET])
def test_bad_parquet_file(tiny_config, tmp_path, columns, message):
    tiny_config["data"]["interactions"]["path"] = str(parquet_interactions(tmp_path, **columns))
    refused_alike(tiny_config, message, tmp_path / "runs")


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
    ("model.hidden_sise", 32, r"model\.hidden_sise is not a key of model transformer \(did you mean model\.hidden_size\?\)"),
    ("model.negatives", 5, r"model\.negatives is not a key of model transformer"),
    ("train.future_loss_weight", 1.0, r"train\.future_loss_weight has moved to model\.loss\.future_weight"),
    ("train.epochs", "ten", r"train\.epochs: Input should be a valid integer.*\(got 'ten'\)"),
    ("train.batch_size", 0, r"train\.batch_size: Input should be greater than or equal to 1 \(got 0\)"),
    ("model.hidden_size", -8, r"model\.hidden_size: Input should be greater than or equal to 4 \(got -8\)"),
    ("eval.ks", [0, 10], r"eval\.ks: .*every K must be >= 1"),
    ("data.rating_range", "high", r"data\.rating_range: .*\(got 'high'\)"),
    ("encoder.model", "./no/such/encoder", r"encoder\.model: model folder not found: .*no/such/encoder$"),
    ("seed", -1, r"seed: Input should be greater than or equal to 0 \(got -1\)"),
    ("seed", 2**32, r"seed: Input should be less than or equal to 4294967295 \(got 4294967296\)"),
    ("data.cold_item_seed", 2**40, r"data\.cold_item_seed: Input should be less than or equal to 4294967295"),
    ("data.items.category_separator", "", r"data\.items\.category_separator: String should have at least 1 character"),
    ("data.rating_range", [math.nan, 5.0], r"data\.rating_range\.0: Input should be a finite number"),
    ("train.epochs", True, r"train\.epochs: expected a number or text, not a boolean \(got True\)"),
    ("eval.ks", [True, 10], r"eval\.ks: expected a number or text, not a boolean"),
    ("train.learning_rate", math.inf, r"train\.learning_rate: Input should be a finite number"),
    ("train.learning_rate", 0, r"train\.learning_rate: Input should be greater than 0"),
    ("data.items.text_template", "{title.upper}", r"data\.items\.text_template: \{title\.upper\}: only plain field names"),
    ("data.items.text_template", "{title[0]}", r"data\.items\.text_template: \{title\[0\]\}: only plain field names"),
    ("data.items.text_template", "{} and {0}", r"data\.items\.text_template: \{\}: only plain field names"),
    ("data.items.text_template", "{title", r"data\.items\.text_template: not a valid template"),
    ("data.items.text_template", "{plot}", r"data\.items\.text_template: '\{plot\}' uses 'plot' but the fields are"),
    ("data.interactions.columns.item", "userId", r"data\.interactions\.columns: user and item both map to column 'userId'; each role needs its own column$"),
    ("data.interactions.columns.rating", "timestamp", r"data\.interactions\.columns: timestamp and rating both map to column 'timestamp'"),
    ("train.epochs", "9" * 100_000, r"train\.epochs: .*\(got '9{60,}… \(100,002 characters\)\)"),
    ("model.name", "transfomer", r"model: unknown model 'transfomer'; did you mean transformer\? models: popularity, "),
    ("output.top_k", 0, r"output\.top_k: Input should be greater than or equal to 1"),
    ("nightly.metric", "ndcg@7", r"nightly\.metric: 'ndcg@7' is not reported"),
    ("train.weight_average_decay", 1.0, r"train\.weight_average_decay: Input should be less than 1"),
    ("model.dropout", 1.5, r"model\.dropout: Input should be less than 1"),
    ("data.split.method", "random", r"data\.split\.method: Input should be 'leave_last_out' or 'time_cut'"),
    ("encoder.pooling", "max", r"encoder\.pooling: Input should be 'mean' or 'cls'"),
    ("model.num_heads", 3, r"hidden_size \(16\) must be divisible by num_heads \(3\)"),
    ("name", "../escape", r"name: String should match pattern"),
    ("compare.fusion", [["a", "b"]], r"compare: .*fusion members \['a', 'b'\] are not among the compared models"),
    ("data.min_user_interactions", 1, r"data\.min_user_interactions: Input should be greater than or equal to 3"),
    ("encoder.max_length", 4, r"encoder\.max_length: Input should be greater than or equal to 8"),
    ("data.interactions.event_types", ["click"], r"data\.interactions: event_types needs columns\.event"),
]


@pytest.mark.parametrize("key, value, message", BAD_CONFIG, ids=[f"{case[0]}={str(case[1])[:20]}" for case in BAD_CONFIG])
def test_bad_config_value(tiny_config, tmp_path, key, value, message):
    refused_alike(set_key(tiny_config, key, value), message, tmp_path / "runs")


# (corpus YAML file, the error it must give)
BAD_YAML = [
    ("yaml_syntax_error.yaml", r"yaml_syntax_error\.yaml: line 4, column \d+: YAML syntax error"),
    ("duplicate_key.yaml", r"duplicate_key\.yaml: line 4, column 3: duplicate key 'epochs'$"),
    ("alias_bomb.yaml", r"alias_bomb\.yaml: expands to 4,412,961,516 values through aliases \(at most 100,000\)$"),
    ("recursive_alias.yaml", r"recursive_alias\.yaml: .*(refers to its own parent|alias)"),
    ("top_level_list.yaml", r"top_level_list\.yaml: expected a mapping of sections at the top level$"),
    ("not_utf8.csv", r"not_utf8\.csv: not UTF-8 text"),
    ("no_such_config.yaml", r"no_such_config\.yaml: config file not found$"),
]


@pytest.mark.parametrize("name, message", BAD_YAML, ids=[case[0] for case in BAD_YAML])
def test_bad_config_file(tmp_path, name, message):
    started = time.perf_counter()
    for check in (pipeline.validate, pipeline.run):
        with pytest.raises(pipeline.PipelineInputError, match=message) as error:
            check(CORPUS / name)
        assert "\n" not in str(error.value)
    assert time.perf_counter() - started < 5  # the alias bomb is refused before it expands


def test_config_file_over_the_size_limit(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("name: x\n" + "# padding\n" * 120_000)
    with pytest.raises(pipeline.PipelineInputError, match=r"huge\.yaml: 1,200,008 bytes; a config file is at most 1,048,576 bytes"):
        pipeline.validate(path)


def test_output_root_that_is_a_file(tiny_config, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    tiny_config["output"]["root"] = str(tmp_path / "a_file")
    refused_alike(tiny_config, r"output\.root: exists and is not a folder: .*a_file$", tmp_path / "runs")
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_output_root_that_cannot_be_created(tiny_config, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    tiny_config["output"]["root"] = str(tmp_path / "a_file" / "runs")
    refused_alike(tiny_config, r"output\.root: cannot write to .*a_file/runs: Not a directory", tmp_path / "runs")


def test_nightly_root_that_is_a_file(tiny_config, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    tiny_config["nightly"] = {"root": str(tmp_path / "a_file")}
    refused_alike(tiny_config, r"nightly\.root: exists and is not a folder: .*a_file$", tmp_path / "runs")
    with pytest.raises(pipeline.PipelineInputError, match=r"nightly\.root: exists and is not a folder"):
        pipeline.nightly(tiny_config)
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_checkpoint_of_another_shape(tiny_config, tmp_path):
    matrix = np.zeros((11, 3), dtype=np.float32)
    config = load_config(tiny_config)
    saved = build_model(config.model, Catalog(10, matrix))
    save_model(saved, tmp_path / "model.safetensors")
    wider = build_model(config.model.model_copy(update={"hidden_size": 32}), Catalog(10, matrix))
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


@pytest.mark.slow
def test_cli_bad_input_is_exit_2_one_line_nothing_written(tiny_config, tmp_path, pipeline_command):
    tiny_config["data"]["interactions"]["path"] = str(CORPUS / "ragged_row.csv")
    config_path = write_yaml(tmp_path / "bad.yaml", tiny_config)
    result = pipeline_command.run("run", config_path, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "ragged_row.csv: malformed CSV" in result.stderr
    assert nothing_written(tmp_path / "runs")


# ---- damaged run directories: recommend, load_run, --resume --------------------------------------------------------


@pytest.fixture(scope="module")
def finished_id_run(tiny_data, tmp_path_factory):
    from tests.conftest import tiny_config_dict

    root = tmp_path_factory.mktemp("finished")
    config = tiny_config_dict(tiny_data, root / "runs", root / "cache", model={"item_representation": "id"}, train={"epochs": 1})
    return config, pipeline.run(config).run_dir


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGED_RUN = [
    ("model_garbage", lambda run: (run / "model.safetensors").write_bytes(b"\x00" * 64), r"model\.safetensors: damaged model weights"),
    ("model_truncated", lambda run: truncate(run / "model.safetensors"), r"model\.safetensors: damaged model weights"),
    ("catalog_truncated", lambda run: truncate(run / "catalog.json"), r"catalog\.json: damaged run catalog: "),
    ("catalog_wrong_shape", lambda run: (run / "catalog.json").write_text("[1, 2]"), r"catalog\.json: not a run catalog"),
    ("config_truncated", lambda run: (run / "config.resolved.yaml").write_text(
        "\n".join((run / "config.resolved.yaml").read_text().splitlines()[:40]) + "\n"),
     r"config\.resolved\.yaml: damaged \(its sha256 differs from the one recorded in manifest\.json\)$"),
    ("manifest_missing", lambda run: (run / "manifest.json").unlink(), r": not a finished run directory \(no manifest\.json\)$"),
    ("manifest_truncated", lambda run: truncate(run / "manifest.json"), r"manifest\.json: damaged run manifest: "),
    ("config_missing", lambda run: (run / "config.resolved.yaml").unlink(), r": not a finished run directory \(no config\.resolved\.yaml\)$"),
    ("catalog_missing", lambda run: (run / "catalog.json").unlink(), r": not a finished run directory \(no catalog\.json\)$"),
]


@pytest.mark.parametrize("damage, message", [case[1:] for case in DAMAGED_RUN], ids=[case[0] for case in DAMAGED_RUN])
def test_damaged_run_directory(finished_id_run, tmp_path, damage, message, capsys):
    from pipeline import cli

    _, run_dir = finished_id_run
    copy = tmp_path / run_dir.name
    __import__("shutil").copytree(run_dir, copy)
    damage(copy)
    with pytest.raises(pipeline.PipelineInputError, match=message):
        pipeline.load_run(copy)
    events = tmp_path / "events.csv"
    events.write_text("userId,movieId,timestamp\nnew,1,100\n", encoding="utf-8")
    assert cli.main(["recommend", str(copy), "--events", str(events), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and error.count("\n") == 0 and str(copy) in error


DAMAGED_PARTIAL = [
    ("checkpoint_garbage", "checkpoint.pt", b"not a checkpoint", r"checkpoint\.pt: damaged epoch checkpoint \("),
    ("checkpoint_truncated", "checkpoint.pt", None, r"checkpoint\.pt: damaged epoch checkpoint \("),
    ("inputs_missing", "inputs.json", "delete", r"inputs\.json: missing \(input fingerprints\)$"),
    ("inputs_wrong_shape", "inputs.json", b'{"a": 1}', r"inputs\.json: not a list of input fingerprints$"),
    ("config_missing", "config.resolved.yaml", "delete", r"config\.resolved\.yaml: config file not found$"),
    ("config_truncated", "config.resolved.yaml", None, r"config\.resolved\.yaml(\) at |: )"),
]


@pytest.fixture(scope="module")
def stopped_id_run(finished_id_run, tmp_path_factory):
    """The partial folder of a run stopped after its first epoch (the checkpoint the loop writes)."""
    config, run_dir = finished_id_run
    from pipeline.outputs import owner_mark

    folder = Path(config["output"]["root"]) / f".tiny-20200101T000000000000Z.partial-{owner_mark()}"
    folder.mkdir()
    for name in ("config.resolved.yaml", "inputs.json"):
        (folder / name).write_bytes((run_dir / name).read_bytes())
    stopped = {**config, "train": {**config["train"], "epochs": 2}}
    (folder / "config.resolved.yaml").write_text(pipeline.load_config(stopped).to_yaml())
    return stopped, folder


@pytest.mark.parametrize("name, content, message", [case[1:] for case in DAMAGED_PARTIAL], ids=[case[0] for case in DAMAGED_PARTIAL])
@pytest.mark.slow
def test_damaged_stopped_run_is_refused_on_resume(stopped_id_run, tmp_path, name, content, message):
    config, folder = stopped_id_run
    copy = tmp_path / "runs" / folder.name
    __import__("shutil").copytree(folder, copy)
    (copy / "checkpoint.pt").write_bytes(_real_checkpoint(config, tmp_path))
    path = copy / name
    if content == "delete":
        path.unlink()
    elif content is None:
        truncate(path)
    else:
        path.write_bytes(content)
    config = {**config, "output": {**config["output"], "root": str(tmp_path / "runs")}}
    if name != "config.resolved.yaml":
        (copy / "config.resolved.yaml").write_text(pipeline.load_config(config).to_yaml())
    with pytest.raises(pipeline.PipelineInputError, match=message) as error:
        pipeline.run(config, resume=str(copy))
    assert "\n" not in str(error.value)


def _real_checkpoint(config: dict, tmp_path: Path) -> bytes:
    """The checkpoint a one-epoch run leaves when killed before publishing."""
    import torch

    from pipeline import training

    saved = {}
    real = training.save_checkpoint

    def keep(path, *args):
        real(path, *args)
        saved["bytes"] = path.read_bytes()

    training.save_checkpoint = keep
    try:
        pipeline.run({**config, "output": {**config["output"], "root": str(tmp_path / "scratch")}})
    finally:
        training.save_checkpoint = real
    assert torch.load(__import__("io").BytesIO(saved["bytes"]), weights_only=True)["epoch"] >= 1
    return saved["bytes"]


@pytest.mark.parametrize("content, message", [
    (b"{not json", r"state\.json: damaged nightly state: .*; move it away to start over \(the champion is kept\)$"),
    (b'{"night": 3}', r"state\.json: not a nightly state \(missing or mistyped: night, finished_at, watermark, inputs, config_sha256, promoted\)"),
    (b"[]", r"state\.json: not a nightly state \(missing or mistyped: night, "),
], ids=["unparseable", "wrong_types", "a_list"])
def test_damaged_nightly_state(tiny_config, tmp_path, content, message):
    root = tmp_path / "nightly"
    root.mkdir()
    (root / "state.json").write_bytes(content)
    tiny_config["nightly"] = {"root": str(root)}
    with pytest.raises(pipeline.PipelineInputError, match=message):
        pipeline.nightly(tiny_config)
    assert (root / "state.json").read_bytes() == content
    assert not (root / "nights").exists() or not any((root / "nights").iterdir())


# ---- recommend --output --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lists.pq", "lists.PARQUET", "lists.parquet"])
def test_recommend_output_parquet_by_suffix(finished_id_run, tmp_path, name):
    from pipeline import cli

    _, run_dir = finished_id_run
    events = tmp_path / "events.csv"
    events.write_text("userId,movieId,timestamp\nnew,1,100\n", encoding="utf-8")
    assert cli.main(["recommend", str(run_dir), "--events", str(events), "--output", str(tmp_path / name), "--quiet"]) == 0
    assert len(pd.read_parquet(tmp_path / name)) == 5
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["events.csv", name])


def test_recommend_output_that_is_a_folder(finished_id_run, tmp_path, capsys):
    from pipeline import cli

    _, run_dir = finished_id_run
    events = tmp_path / "events.csv"
    events.write_text("userId,movieId,timestamp\nnew,1,100\n", encoding="utf-8")
    (tmp_path / "out").mkdir()
    assert cli.main(["recommend", str(run_dir), "--events", str(events), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --output: {tmp_path / 'out'} is a folder; give a .csv or .parquet file path"
    assert list((tmp_path / "out").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["events.csv", "out"]


# ---- the embedding cache -------------------------------------------------------------------------------------------


class CountingEncoder:
    """Stands in for the text encoder: a vector per text from its hash, and a count of what it was asked."""

    device, dtype, dimension = "cpu", "float32", 8

    def __init__(self):
        self.encoded = 0

    def encode(self, texts, progress=False):
        self.encoded += len(texts)
        return np.stack([np.random.default_rng(abs(hash(text)) % 2**32).normal(size=8).astype(np.float32) for text in texts])


def cache_config(folder: Path):
    from pipeline.config import EncoderConfig

    return EncoderConfig(cache_dir=str(folder))


def cached_once(folder: Path, texts: list[str]):
    from pipeline.encoding import encode_texts, encoder_identity

    config = cache_config(folder)
    encode_texts(texts, config, encoder=CountingEncoder())
    (shard,) = (folder / encoder_identity(config)).glob("shard-*.keys.npy")
    return config, shard


CACHE_DAMAGE = [
    ("truncated", truncate),
    ("empty", lambda shard: shard.write_bytes(b"")),
    ("corrupted", lambda shard: shard.write_bytes(b"PK\x03\x04" + os.urandom(200))),
    ("wrong_arrays", lambda shard: np.save(open(shard, "wb"), np.zeros((2, 2)))),
    ("vectors_truncated", lambda shard: truncate(shard.with_name(shard.name.replace(".keys.", ".vectors.")))),
    ("vectors_missing", lambda shard: shard.with_name(shard.name.replace(".keys.", ".vectors.")).unlink()),
]


@pytest.mark.parametrize("damage", [case[1] for case in CACHE_DAMAGE], ids=[case[0] for case in CACHE_DAMAGE])
def test_damaged_cache_shard_is_ignored_and_re_encoded(tmp_path, damage, caplog):
    from pipeline.encoding import encode_texts

    texts = ["a film", "another film", "a third"]
    config, shard = cached_once(tmp_path, texts)
    damage(shard)
    encoder = CountingEncoder()
    with caplog.at_level("WARNING", logger="pipeline"):
        vectors, stats = encode_texts(texts, config, encoder=encoder)
    assert f"embedding cache: ignoring damaged shard {shard}" in caplog.text
    assert encoder.encoded == stats.encoded == 3 and vectors.shape == (3, 8)
    _, stats = encode_texts(texts, config, encoder=CountingEncoder())
    assert stats.encoded == 0  # the re-encoded vectors were stored


def test_cache_shard_of_another_width_is_rejected(tmp_path, caplog):
    from pipeline.encoding import encode_texts, text_key

    texts = ["a film", "another film"]
    config, shard = cached_once(tmp_path, texts)
    foreign = shard.with_name("shard-zzzz.npz")
    np.savez(open(foreign, "wb"), keys=np.array([text_key("a third")], dtype="S64"), vectors=np.zeros((1, 5), dtype=np.float32))
    with caplog.at_level("WARNING", logger="pipeline"):
        vectors, stats = encode_texts([*texts, "a third"], config, encoder=CountingEncoder())
    assert f"embedding cache: ignoring shard {foreign}: vectors of width 5, the cache's are 8" in caplog.text
    assert stats.encoded == 1 and vectors.shape == (3, 8)


@pytest.mark.parametrize("problem", ["a_file", "disk_full"])
def test_unwritable_cache_keeps_the_computed_vectors(tmp_path, problem, monkeypatch, caplog):
    from pipeline.encoding import encode_texts

    if problem == "a_file":
        (tmp_path / "cache").write_text("not a folder")
    else:
        def full(path, content):
            raise pipeline.StorageError(f"{path}: disk full (no space left on device)")

        monkeypatch.setattr("pipeline.embedding_cache.write_atomic", full)
    config = cache_config(tmp_path / "cache")
    with caplog.at_level("WARNING", logger="pipeline"):
        vectors, stats = encode_texts(["a film", "another film"], config, encoder=CountingEncoder())
    assert "not written" in caplog.text and "continuing without caching: 2 new vectors stay in memory only" in caplog.text
    assert vectors.shape == (2, 8) and stats.encoded == 2
    if problem == "a_file":
        assert (tmp_path / "cache").read_text() == "not a folder"


# ---- accepted as they are ------------------------------------------------------------------------------------------


def test_ids_that_look_like_digits_but_are_not_numbers_are_text_ids(tiny_config, tmp_path):
    ratings = pd.read_csv(tiny_config["data"]["interactions"]["path"], dtype=str)
    ratings.loc[ratings["userId"] == "2", "userId"] = "²"  # str.isdigit() says yes, int() says no
    ratings.to_csv(tmp_path / "ratings.csv", index=False)
    tiny_config["data"]["interactions"]["path"] = str(tmp_path / "ratings.csv")
    data = prepare(load_data(load_config(tiny_config).data), load_config(tiny_config).data)
    assert data.user_ids[-1] == "²" and list(data.user_ids[:3]) == ["1", "3", "4"]


@pytest.mark.parametrize("timezone", [None, "UTC", "Asia/Tokyo"], ids=["naive", "utc", "tokyo"])
def test_native_parquet_timestamps_are_accepted(tiny_config, tmp_path, timezone):
    ratings = pd.read_csv(tiny_config["data"]["interactions"]["path"])
    expected = ratings["timestamp"].to_numpy()
    times = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
    ratings["timestamp"] = times.dt.tz_localize(None) if timezone is None else times.dt.tz_convert(timezone)
    ratings.to_parquet(tmp_path / "ratings.parquet", index=False)
    tiny_config["data"]["interactions"]["path"] = str(tmp_path / "ratings.parquet")
    config = load_config(tiny_config)
    assert (load_data(config.data).interactions["timestamp"].to_numpy() == expected).all()
