"""The library surface: `run()` end to end, each stage callable alone, and `load_run()` / `recommend()` afterwards.

    config = load_config("configs/quickstart.yaml")
    raw = load_data(config.data)
    data = prepare(raw, config.data)
    item_embeddings, _ = encode_items(data.item_texts, config.encoder)
    model = build_model(config.model, data.n_items, data.category_matrix(), item_embeddings)
    history = train(model, data, config)
    metrics, rankings = evaluate(model, data, config, "test")
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import distributed
from pipeline.config import Config, load_config
from pipeline.data import TEST, VALID, PreparedData, load_data, prepare
from pipeline.data.load import load_interactions
from pipeline.encoding import encode_items, encoder_identity, EncodingStats, resolve_model_source
from pipeline.errors import PipelineInputError
from pipeline.evaluation import Rankings, evaluate_model, rank_users, ranking_metrics
from pipeline.models import build_model, uses_text_embeddings
from pipeline.outputs import (
    CHECKPOINT, RunDirectory, catalog, check_output_root, elapsed, find_resumable, load_model_state, manifest,
    read_run_config, resolve_run, save_model, utc_now,
)
from pipeline.storage import file_fingerprint, read_json_file, write_table
from pipeline.training import StopRequest, fit

log = logging.getLogger("pipeline")

BASELINE = "popularity"


@dataclass
class RunResult:
    run_dir: Path | None  # None on ranks other than 0 under torchrun
    config: Config
    metrics: dict
    recommendations: pd.DataFrame
    history: list[dict] = field(default_factory=list)

    @property
    def paths(self) -> dict[str, Path]:
        return {path.name: path for path in sorted(self.run_dir.iterdir())}


# ---- stages ------------------------------------------------------------------------------------------------------


def encode(data: PreparedData, config: Config, progress: bool = False) -> tuple[np.ndarray | None, EncodingStats | None]:
    """Item text embeddings when the configured model reads them; (None, None) otherwise."""
    if not uses_text_embeddings(config.model):
        return None, None
    return encode_items(data.item_texts, config.encoder, progress=progress)


def selection_metric(config: Config) -> str:
    return f"ndcg@{config.eval.select_k}"


def validation_ranking(data: PreparedData, config: Config):
    """The early-stopping check: NDCG@select_k on the validation split, same protocol as the final evaluation."""
    cases = data.eval_cases(VALID)
    k = config.eval.select_k

    def validate(model: torch.nn.Module) -> dict[str, float]:
        rankings = rank_users(model, cases.histories, cases.targets, k, config.eval.exclude_seen, config.eval.user_batch_size)
        return {name: value for name, value in ranking_metrics(rankings.target_ranks, [k]).items() if name.startswith(("ndcg", "hit_rate"))}

    return validate


def train(
    model: torch.nn.Module,
    data: PreparedData,
    config: Config,
    progress: bool | None = None,
    checkpoint: Path | None = None,
    stop: StopRequest | None = None,
) -> list[dict]:
    """Fit the model's statistics, then its parameters (see `training.fit` for checkpoint and stop)."""
    model.fit_statistics(data)
    return fit(
        model, data, config.train, validation_ranking(data, config), selection_metric(config), config.seed, progress,
        checkpoint, stop,
    )


def evaluate(model: torch.nn.Module, data: PreparedData, config: Config, split: str) -> tuple[dict, Rankings]:
    return evaluate_model(
        model, data.eval_cases(split), data.item_categories, data.n_items, config.eval.ks, config.eval.exclude_seen,
        config.eval.user_batch_size, config.output.top_k, data.cold_items,
    )


def recommendation_frame(user_ids: np.ndarray, item_ids: np.ndarray, rankings: Rankings) -> pd.DataFrame:
    """Top lists in original ids: one row per (user, rank). A list stops at the user's last valid candidate, so it
    is shorter than top_k when fewer items are left to offer (a small catalog, most of it already seen)."""
    n_users, length = rankings.top_items.shape
    items = rankings.top_items.reshape(-1)
    valid = items > 0
    return pd.DataFrame(
        {
            "user_id": np.repeat(user_ids, length)[valid],
            "rank": np.tile(np.arange(1, length + 1), n_users)[valid],
            "item_id": item_ids[items[valid]],
            "score": rankings.top_scores.reshape(-1)[valid].astype(np.float32),
        }
    )


# ---- end to end --------------------------------------------------------------------------------------------------


class Stages:
    """Shared bookkeeping of `run` and `compare`: stage timings and the run directory's publish-or-abort."""

    def __init__(self, config: Config, name: str, resume: str | Path | None = None):
        self.config = config
        self.timings: dict[str, float] = {}
        self.inputs: list[dict] = []  # fingerprints of the input files, taken by `load`
        self.started_at, self._started = utc_now(), time.perf_counter()
        if resume is not None and distributed.world_size() > 1:
            raise PipelineInputError("--resume: not supported under torchrun; resume with a single process")
        if resume is None:
            # Only rank 0 publishes; the other ranks write the same files into a private folder deleted at the end.
            self.output = RunDirectory(config.output.root, name) if distributed.is_main() else RunDirectory.scratch_space()
            self.output.write_text("config.resolved.yaml", config.to_yaml())
        else:
            stopped = find_resumable(config.output.root, name, resume)
            _check_same_config(stopped / "config.resolved.yaml", config)
            self.output = RunDirectory(config.output.root, name, stopped)
            log.info("resuming %s", stopped)

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        yield
        self.timings[name] = elapsed(started)

    @contextmanager
    def publishing(self):
        """Everything inside writes into the temporary folder; it is published only if the block succeeds."""
        run_log = _log_to_file(self.output.file("run.log"))
        try:
            yield self.output
        except BaseException:
            self.output.abort()
            raise
        finally:
            log.removeHandler(run_log)
            run_log.close()

    def load(self) -> PreparedData:
        with self.stage("load_prepare"):
            raw = load_data(self.config.data)
            data = prepare(raw, self.config.data)
        self.inputs = [file_fingerprint(path) for path in raw.source_files]
        if self.output.resumed:
            _check_same_inputs(self.output.file("inputs.json"), self.inputs)
        else:
            self.output.write_json("inputs.json", self.inputs)
        return data

    def finish(self, data: PreparedData, encoding: EncodingStats | None) -> Path:
        self.timings["total"] = elapsed(self._started)
        self.output.write_json("manifest.json", manifest(
            self.config, self.output.file("config.resolved.yaml"), self.inputs, data, encoding, self.timings, self.started_at,
        ))
        run_dir = self.output.commit()
        if run_dir is not None:
            log.info("finished in %.1fs: %s", self.timings["total"], run_dir)
        return run_dir


def run(
    config_or_path: str | Path | dict | Config,
    overrides: list[str] | None = None,
    progress: bool | None = None,
    resume: str | Path | None = None,
    stop: StopRequest | None = None,
) -> RunResult:
    """Load, prepare, encode, train, evaluate and write one run directory; return its metrics and lists.

    Every finished epoch is checkpointed in the partial run folder; `resume` (that folder, or "auto" for the newest
    stopped run of this config's name) continues a stopped or killed run. Requesting `stop` ends training at the next
    batch boundary (`TrainingStopped`), keeping the folder for resuming.
    """
    config = load_config(config_or_path, overrides)
    preflight(config, [config.model])
    stages = Stages(config, config.name, resume)
    with stages.publishing() as output:
        data = stages.load()
        with stages.stage("encode"):
            item_embeddings, encoding_stats = encode(data, config, progress=bool(progress))
        with stages.stage("train"):
            model = build_model(config.model, data.n_items, data.category_matrix(), item_embeddings, config.seed, data.n_users)
            history = train(model, data, config, progress, output.file(CHECKPOINT), stop)
        with stages.stage("evaluate"):
            models = {config.model.name: model}
            if config.model.name != BASELINE:
                baseline = build_model(config.model.model_copy(update={"name": BASELINE}), data.n_items, data.category_matrix(), None)
                baseline.fit_statistics(data)
                models[BASELINE] = baseline
            metrics = {"protocol": protocol(data, config), "splits": {VALID: {}, TEST: {}}}
            for split in (VALID, TEST):
                for name, candidate in models.items():
                    metrics["splits"][split][name], rankings = evaluate(candidate, data, config, split)
                    if split == TEST and name == config.model.name:
                        test_users = data.user_ids[data.eval_cases(TEST).users]
                        recommendations = recommendation_frame(test_users, data.item_ids, rankings)
        with stages.stage("write"):
            save_model(model, output.file("model.safetensors"))
            output.write_json("catalog.json", catalog(data, item_embeddings))
            output.write_json("metrics.json", metrics)
            output.write_jsonl("history.jsonl", history)
            write_table(recommendations, output.file("recommendations.parquet"))
            if config.output.write_csv:
                write_table(recommendations, output.file("recommendations.csv"))
        run_dir = stages.finish(data, encoding_stats)
    return RunResult(run_dir, config, metrics, recommendations, history)




def _check_same_config(path: Path, config: Config) -> None:
    stopped = load_config(path, check_paths=False).to_dict()
    differences = _differing_keys(stopped, config.to_dict())
    if differences:
        raise PipelineInputError(
            f"--resume: the config differs from the stopped run's ({path}) at {', '.join(differences[:5])}; "
            "a resumed run must use the same config"
        )


def _differing_keys(left, right, prefix: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        keys = sorted(set(left) | set(right))
        return [key_path for key in keys for key_path in _differing_keys(left.get(key), right.get(key), f"{prefix}{key}.")]
    return [] if left == right else [prefix.rstrip(".")]


def _check_same_inputs(path: Path, inputs: list[dict]) -> None:
    try:
        stopped = {entry["path"]: entry["sha256"] for entry in read_json_file(path, "input fingerprints")}
    except (TypeError, KeyError):
        raise PipelineInputError(f"{path}: not a list of input fingerprints") from None
    for entry in inputs:
        if stopped.get(entry["path"]) != entry["sha256"]:
            raise PipelineInputError(f"--resume: {entry['path']} changed since the stopped run started; start a new run")




def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def protocol(data: PreparedData, config: Config) -> dict:
    return {
        "split": data.split_method,
        "candidates": "all catalog items",
        "n_items": data.n_items,
        "exclude_seen": config.eval.exclude_seen,
        "ks": config.eval.ks,
        "users_evaluated": {split: len(data.eval_cases(split)) for split in (VALID, TEST)},
        "model_selection": f"valid {selection_metric(config)}",
        "category_metrics": "predicted category of the next interaction; correct if it is any of the item's categories; macro averages",
        "rating_metrics": "rating of the next interaction" if data.has_ratings else "not available (no rating column)",
        "cold_items": int(len(data.cold_items)),
    }




def preflight(config: Config, models: list, root_key: str = "output.root") -> None:
    """What `run`, `compare`, `nightly` and `validate` refuse before reading any data: an output root that cannot
    hold runs, and an encoder that cannot be found (when a model reads item text)."""
    check_output_root(config.nightly.root if root_key == "nightly.root" else config.output.root, root_key)
    if any(uses_text_embeddings(model) for model in models):
        encoder_identity(config.encoder)


def validate(config_or_path: str | Path | dict | Config, overrides: list[str] | None = None) -> dict:
    """Everything `run` would refuse about config and data, checked without encoding, training or writing.

    Returns the summary `python -m pipeline validate` prints; raises `PipelineInputError` as `run` would.
    """
    config = load_config(config_or_path, overrides)
    preflight(config, [config.model])
    data = prepare(load_data(config.data), config.data)
    return {
        "events": len(data.events), "events_per_split": data.events["split"].value_counts().to_dict(),
        "users": data.n_users, "evaluated": {split: len(data.eval_cases(split)) for split in (VALID, TEST)},
        "items": data.n_items, "categories": len(data.category_names), "ratings": data.has_ratings,
        "encoder": resolve_model_source(config.encoder.model), "model": f"{config.model.name} ({config.model.item_representation})",
        "output_root": config.output.root,
    }


# ---- after a run -------------------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    run_dir: Path | None  # None on ranks other than 0 under torchrun
    config: Config
    model: torch.nn.Module
    item_ids: np.ndarray  # original id per item index (position 0: padding)

    def recommend(self, events: pd.DataFrame, top_k: int | None = None) -> pd.DataFrame:
        """Top-K lists for the users in `events` (canonical columns user, item, timestamp), new users included.

        Items unknown to the catalog are ignored; a user's own items are excluded when the run excluded seen items.
        """
        index = {item: position for position, item in enumerate(self.item_ids) if position}
        known = events["item"].map(index)
        if known.isna().any():
            log.warning("ignored %d events on items not in the run's catalog", int(known.isna().sum()))
        events = events.assign(item_index=known).dropna(subset=["item_index"])
        events = events.sort_values(["user", "timestamp"], kind="stable")
        users, histories = [], []
        for user, group in events.groupby("user", sort=False):
            users.append(user)
            histories.append(group["item_index"].to_numpy(dtype=np.int64))
        if not users:
            raise PipelineInputError("no events on known items: nothing to recommend from")
        rankings = rank_users(
            self.model, histories, None, top_k or self.config.output.top_k, self.config.eval.exclude_seen,
            self.config.eval.user_batch_size,
        )
        return recommendation_frame(np.array(users, dtype=object), self.item_ids, rankings)


def load_run(run_dir: str | Path) -> LoadedRun:
    run_dir = resolve_run(run_dir)
    config = read_run_config(run_dir)
    catalog_info = read_json_file(run_dir / "catalog.json", "run catalog")
    try:
        item_ids = np.array([None, *catalog_info["item_ids"]], dtype=object)
        n_items, n_categories = len(item_ids) - 1, len(catalog_info["category_names"])
        width = catalog_info["text_embedding_width"]
    except (TypeError, KeyError) as err:
        raise PipelineInputError(f"{run_dir / 'catalog.json'}: not a run catalog (missing or mistyped {err})") from None
    model = build_model(
        config.model, n_items, np.zeros((n_items + 1, n_categories), dtype=np.float32),
        None if width is None else np.zeros((n_items + 1, width), dtype=np.float32),
    )
    load_model_state(model, run_dir / "model.safetensors")
    model.eval()
    return LoadedRun(run_dir, config, model, item_ids)


def recommend(run_dir: str | Path, events_path: str | Path, top_k: int | None = None) -> pd.DataFrame:
    """Load a finished run and recommend for the users in an events file (read with the run's column mapping)."""
    loaded = load_run(run_dir)
    source = loaded.config.data.interactions
    # Only who did what when matters for a list: ratings and event types may be absent from the events file.
    columns = source.columns.model_copy(update={"rating": None, "event": None})
    interactions = source.model_copy(update={"path": str(Path(events_path).resolve()), "columns": columns, "event_types": None})
    events = load_interactions(interactions)
    return loaded.recommend(events, top_k)
