"""report.html of a run, a comparison and a nightly root: every expected figure is an embedded PNG, every number in
its tables is the one in the file it names (metrics.json, history.jsonl, leaderboard.csv, history.csv, trials.csv, a
night's summary.json), the popularity deciles match a hand count, and the page needs nothing outside itself."""

from __future__ import annotations

import base64
import json
import logging
import math
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

import pipeline
from pipeline.outputs import COMPARE_FILES, RUN_FILES
from pipeline.report import REPORT, write_nightly_report, write_run_report, write_tune_report
from tests.conftest import NIGHT_USERS, load_benchmark_nightly, tiny_config_dict

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Report(HTMLParser):
    """What a test needs from the page: its figures, its number cells, the rows of each table."""

    def __init__(self, path: Path):
        super().__init__()
        self.folder = path.parent
        self.text = path.read_text(encoding="utf-8")
        self.figures: dict[str, str] = {}  # data-figure -> the img's src
        self.cells: list[dict] = []  # number cells: their data-* attributes and text
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: set[str] = set()
        self._figure = self._table = self._cell = None
        self.feed(self.text)

    def handle_starttag(self, name, attributes):
        attributes = dict(attributes)
        self.tags.add(name)
        if name == "figure":
            self._figure = attributes["data-figure"]
        elif name == "img" and self._figure is not None:
            self.figures[self._figure] = attributes["src"]
        elif name == "table":
            self._table = attributes["data-table"]
            self.tables[self._table] = []
        elif name == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif name == "td":
            self._cell = {**attributes, "text": ""}

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, name):
        if name == "figure":
            self._figure = None
        elif name == "table":
            self._table = None
        elif name == "td" and self._cell is not None:
            self.tables[self._table][-1].append(self._cell["text"])
            if "data-source" in self._cell or "data-derived" in self._cell:
                self.cells.append({**self._cell, "table": self._table})
            self._cell = None

    def rows(self, table: str) -> list[list[str]]:
        return [row for row in self.tables[table] if row]  # the header row holds th cells only


def assert_self_contained(report: Report, expected_figures: set[str]) -> None:
    assert expected_figures <= set(report.figures), sorted(report.figures)
    for name, source in report.figures.items():
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix), name
        png = base64.b64decode(source[len(prefix):], validate=True)
        assert png.startswith(PNG_SIGNATURE), name
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk
        assert width >= 400 and height >= 150, (name, width, height)
    # Nothing to fetch and nothing to run: no script, no stylesheet link, no remote address.
    assert not {"script", "link", "iframe"} & report.tags
    assert "http://" not in report.text and "https://" not in report.text


def stored_value(folder: Path, source: str, path: list, cache: dict):
    if source not in cache:
        file = folder / source
        if source.endswith(".csv"):
            cache[source] = pd.read_csv(file)
        elif source.endswith(".jsonl"):
            cache[source] = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        else:
            cache[source] = json.loads(file.read_text())
    stored = cache[source]
    if isinstance(stored, pd.DataFrame):
        row, column = path
        return stored.iloc[row][column]
    for key in path:
        stored = stored[key]
    return stored


def assert_numbers_match(report: Report) -> int:
    """Every number cell that names a file shows that file's value at the decimals shown; returns how many."""
    cache: dict = {}
    checked = 0
    for cell in report.cells:
        if "data-source" not in cell:
            continue
        value = stored_value(report.folder, cell["data-source"], json.loads(cell["data-path"]), cache)
        text = cell["text"]
        if text == "n/a":
            assert value is None or (isinstance(value, float) and math.isnan(value)), cell
            continue
        decimals = len(text.split(".")[1]) if "." in text else 0
        assert float(value) == pytest.approx(float(text), abs=0.5 * 10 ** -decimals + 1e-9), cell
        checked += 1
    return checked


def cells_of(report: Report, table: str) -> list[dict]:
    return [cell for cell in report.cells if cell["table"] == table]


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("report-run")
    # Ids only (no encoder) and a fifth of the items held out as cold: every section of a run's page appears.
    config = tiny_config_dict(tiny_data, root / "runs", root / "cache", model={"item_representation": "id"},
                              train={"epochs": 3, "patience": 3, "batch_size": 16})
    config["data"]["cold_item_fraction"] = 0.2
    return pipeline.run(config)


def test_a_run_report_shows_every_figure_and_the_stored_numbers(finished_run):
    run_dir = finished_run.run_dir
    assert {path.name for path in run_dir.iterdir()} == RUN_FILES | {"recommendations.csv"}
    report = Report(run_dir / REPORT)
    assert_self_contained(report, {"training", "metrics-at-k", "coverage", "popularity-bias", "cold-start"})
    assert assert_numbers_match(report) > 100
    # Every stored test metric of every model is on the page, in some table.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    shown = {tuple(json.loads(cell["data-path"])) for cell in report.cells if cell.get("data-source") == "metrics.json"}
    for model, values in metrics["splits"]["test"].items():
        for name in values:
            assert ("splits", "test", model, name) in shown, (model, name)
    # The kept epoch: the first with the best validation NDCG@10.
    history = finished_run.history
    best = max(record["valid_ndcg@10"] for record in history)
    kept = next(record["epoch"] for record in history if record["valid_ndcg@10"] == best)
    assert report.rows("kept-epochs")[0][:3] == [finished_run.config.model.name, str(len(history)), str(kept)]


def test_the_popularity_deciles_are_a_hand_count_of_the_lists(finished_run):
    run_dir = finished_run.run_dir
    counts = load_file(run_dir / "model.safetensors")["statistics.item_counts"][1:].astype(float)
    item_ids = [str(item) for item in json.loads((run_dir / "catalog.json").read_text())["item_ids"]]
    # Most training events first, ties by catalog position; ten groups, the first n % 10 one item larger.
    order = sorted(range(len(counts)), key=lambda index: (-counts[index], index))
    sizes = [len(counts) // 10 + (group < len(counts) % 10) for group in range(10)]
    decile = {}
    for group, (start, size) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), sizes)):
        decile.update({item_ids[index]: group for index in order[start:start + size]})
    lists = pd.read_parquet(run_dir / "recommendations.parquet")
    slots = lists["item_id"].astype(str).map(decile).value_counts().reindex(range(10), fill_value=0)
    events = pd.Series({group: sum(counts[index] for index in order[start:start + size])
                        for group, (start, size) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), sizes))})
    expected = {"items": pd.Series(sizes), "log_share": events / counts.sum(), "slot_share": slots / len(lists)}
    cells = cells_of(Report(run_dir / REPORT), "popularity-bias")
    assert len(cells) == 30
    for cell in cells:
        value = expected[cell["data-quantity"]][int(cell["data-decile"]) - 1]
        assert float(cell["text"]) == pytest.approx(value, abs=5e-5), cell
    assert expected["slot_share"][0] > expected["log_share"][0]  # a tiny log's lists lean to its most popular items


def test_a_report_is_rebuilt_from_the_folder_alone(finished_run, tmp_path):
    copy = tmp_path / finished_run.run_dir.name
    copy.mkdir()
    for path in finished_run.run_dir.iterdir():
        if path.name != REPORT:
            copy.joinpath(path.name).write_bytes(path.read_bytes())
    had_pyplot = "matplotlib.pyplot" in sys.modules
    write_run_report(copy)
    assert (copy / REPORT).read_bytes() == (finished_run.run_dir / REPORT).read_bytes()
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules  # no global backend switched, no pyplot state


def test_a_compare_report_shows_the_leaderboard_and_the_stored_numbers(tiny_data, tmp_path):
    config = tiny_config_dict(
        tiny_data, tmp_path / "runs", tmp_path / "cache", train={"epochs": 2, "patience": 2},
        compare={"models": [{"name": "item_cf"}, {"name": "lstm", "item_representation": "id"}], "fusion": [["item_cf", "lstm"]]},
    )
    result = pipeline.compare(config)
    assert {path.name for path in result.run_dir.iterdir()} == COMPARE_FILES
    report = Report(result.run_dir / REPORT)
    assert_self_contained(report, {"leaderboard", "training", "metrics-at-k", "coverage"})
    assert assert_numbers_match(report) > 100
    board = pd.read_csv(result.run_dir / "leaderboard.csv")
    # The full leaderboard table: the models in the file's order, a cell for every other column of every row.
    assert [row[0] for row in report.rows("leaderboard-full")] == board["model"].tolist()
    full = {tuple(json.loads(cell["data-path"])) for cell in cells_of(report, "leaderboard-full")}
    assert full == {(row, column) for row in range(len(board)) for column in board.columns if column != "model"}
    # Curves for the models that train by epochs only, each with its kept epoch.
    assert {row[0] for row in report.rows("kept-epochs")} == {"lstm"}
    assert len(cells_of(report, "fusion")) == 2


@pytest.mark.slow  # four nights, each writing two pages: about 8 s
def test_a_nightly_report_shows_the_trend_the_served_lists_and_interest_drift(tmp_path, caplog, monkeypatch):
    benchmark_nightly = load_benchmark_nightly()
    config = tiny_config_dict(
        tmp_path / "data", tmp_path / "runs", tmp_path / "cache", model={"item_representation": "id"},
        train={"epochs": 1, "patience": 1}, nightly={"warm_epochs": 1, "keep_nights": 2},
    )
    nights = []
    for quantile in (0.6, 0.75, 0.9, 0.9):  # the last: nothing new
        benchmark_nightly.write_log_until(tmp_path / "data", quantile, max_user=NIGHT_USERS)
        nights.append(pipeline.nightly(config))
    root = tmp_path / "runs" / "tiny-nightly"
    report = Report(root / REPORT)
    assert_self_contained(report, {"nightly-trend", "nightly-work", "served", "interests"})
    assert assert_numbers_match(report) > 40
    history = pd.read_csv(root / "history.csv")
    assert history["status"].tolist()[-1] == "nothing_new"
    assert len(report.rows("history")) == len(history) == 4
    served = {json.loads(cell["data-path"])[0] for cell in cells_of(report, "served")}
    assert served == set(history.index[history["served_hit_rate"].notna()]) == {1, 2}
    # Interest drift covers the nights on disk: every one of them has its row, from its summary.json.
    on_disk = sorted(path.name for path in (root / "nights").iterdir() if path.name.startswith("tiny-"))
    assert [row[0] for row in report.rows("interests")] == on_disk
    assert {cell["data-source"] for cell in cells_of(report, "interests")} == {f"nights/{night}/summary.json" for night in on_disk}
    # Each night's own folder has its run page, with the decision.
    night_report = Report(nights[-2].night_dir / REPORT)
    assert_self_contained(night_report, {"training", "metrics-at-k", "coverage", "popularity-bias"})
    assert assert_numbers_match(night_report) > 50 and len(cells_of(night_report, "decision")) == 4

    # The root's page is a report like history.csv: failing to write it is logged, the night keeps its outcome.
    def broken(root):
        raise RuntimeError("chart on fire")

    monkeypatch.setattr("pipeline.recipes.nightly.night.write_nightly_report", broken)
    with caplog.at_level(logging.ERROR, logger="pipeline"):
        assert pipeline.nightly(config).status == "nothing_new"
    monkeypatch.undo()
    assert "report.html: not updated: chart on fire" in caplog.text
    write_nightly_report(root)
    assert len(Report(root / REPORT).rows("history")) == 5


def _tune_folder(folder: Path) -> Path:
    """A search folder written by hand (no training): four trials, one pruned and one failed, selected at K=5."""
    folder.mkdir()
    pd.DataFrame({
        "trial": [0, 1, 2, 3], "state": ["complete", "complete", "pruned", "fail"],
        "valid_ndcg@5": [0.1012, 0.13456, 0.0721, math.nan], "epochs": [3, 3, 2, 0],
        "seconds": [4.123, 3.98, 2.5, 0.31], "param:train.learning_rate": [0.01, 0.00234567, 0.04, 0.2],
        "param:model.dropout": [0.1, 0.31, 0.45, 0.02], "param:model.hidden_size": [16, 32, 16, 32],
        "error": ["", "", "", "training diverged at epoch 1: the loss is not finite"],
    }).to_csv(folder / "trials.csv", index=False)
    scores = {0: [0.08, 0.1012, 0.099], 1: [0.11, 0.12, 0.13456], 2: [0.07, 0.0721]}
    lines = [{"trial": trial, "epoch": epoch, "loss_item": 5.0 - epoch, "valid_ndcg@5": value, "valid_hit_rate@5": 2 * value}
             for trial, values in scores.items() for epoch, value in enumerate(values, start=1)]
    (folder / "history.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    at_k = {f"{family}@{k}": round(0.01 * k + 0.001 * index, 6)
            for index, family in enumerate(("hit_rate", "ndcg", "mrr", "precision", "recall")) for k in (5, 10)}
    split = {"transformer": {**at_k, "coverage@5": 0.31, "coverage@10": 0.42, "coverage": 0.5, "users": 40}}
    (folder / "metrics.json").write_text(json.dumps({
        "protocol": {"split": "leave_last_out", "n_items": 60, "users_evaluated": {"valid": 40, "test": 40},
                     "exclude_seen": True, "model_selection": "valid ndcg@5"},
        "best_trial": 1, "best_params": {"train.learning_rate": 0.00234567, "model.dropout": 0.31, "model.hidden_size": 32},
        "splits": {"valid": split, "test": split},
    }))
    (folder / "config.resolved.yaml").write_text(
        "name: tiny\ntune:\n  trials: 4\n  pruning: true\n  startup_trials: 2\n  timeout: null\n  space:\n"
        "    train.learning_rate: {low: 0.001, high: 0.3, log: true}\n    model.dropout: {low: 0.0, high: 0.5}\n"
        "    model.hidden_size: {choices: [16, 32]}\n")
    (folder / "best_config.yaml").write_text("name: tiny\ntrain:\n  learning_rate: 0.00234567\n")
    return folder


def test_a_tune_report_shows_the_search_and_the_stored_numbers(tmp_path):
    folder = _tune_folder(tmp_path / "tiny-tune")
    report = Report(write_tune_report(folder))
    assert 'data-report="tune"' in report.text
    assert_self_contained(report, {"trials", "curves", "parameters", "metrics-at-k", "coverage"})
    assert assert_numbers_match(report) > 60
    trials = pd.read_csv(folder / "trials.csv")
    # The trials table: every row in the file's order, a number cell for every numeric column, the text columns as text.
    rows = report.rows("trials")
    assert [row[:2] for row in rows] == [[str(trial), state] for trial, state in zip(trials["trial"], trials["state"])]
    assert rows[3][-1] == trials.loc[3, "error"] and rows[3][2] == "n/a"
    cells = {tuple(json.loads(cell["data-path"])) for cell in cells_of(report, "trials")}
    assert cells == {(row, column) for row in range(4) for column in trials.columns if column not in ("state", "error")}
    assert {cell["data-source"] for cell in cells_of(report, "trials")} == {"trials.csv"}
    # The headline: the best trial (metrics.json's) beside trial 0, both scores from trials.csv, and the gain.
    headline = cells_of(report, "headline")
    scores = {json.loads(cell["data-path"])[0]: cell["text"] for cell in headline
              if cell.get("data-path") and json.loads(cell["data-path"])[1] == "valid_ndcg@5"}
    assert scores == {0: "0.1012", 1: "0.1346"}
    gain = next(cell for cell in headline if cell.get("data-derived") == "gain-over-trial-0")
    assert float(gain["text"]) == pytest.approx(0.13456 - 0.1012, abs=5e-5)
    assert "Trial 1 scored valid ndcg@5 0.1346, against 0.1012 for trial 0" in report.text
    # A setting keeps the digits it needs: 0.00234567 is not shown as 0.0023.
    learning_rates = [cell["text"] for cell in cells_of(report, "trials")
                      if json.loads(cell["data-path"])[1] == "param:train.learning_rate"]
    assert learning_rates[1] == "0.00235"
    # The best trial's metrics at every K, from metrics.json: each stored test metric on the page.
    metrics = json.loads((folder / "metrics.json").read_text())
    shown = {tuple(json.loads(cell["data-path"])) for cell in report.cells if cell.get("data-source") == "metrics.json"}
    assert {("splits", "test", "transformer", name) for name in metrics["splits"]["test"]["transformer"]} <= shown
    # Where the config's own settings win, the headline shows trial 0 alone, with its settings.
    (folder / "metrics.json").write_text(json.dumps({**metrics, "best_trial": 0}))
    report = Report(write_tune_report(folder))
    assert {json.loads(cell["data-path"])[0] for cell in cells_of(report, "headline")} == {0}
    assert len(cells_of(report, "headline")) == 6 and "own settings, scored best: valid ndcg@5 0.1012" in report.text
