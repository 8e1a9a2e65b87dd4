"""The stages, each callable alone; the recipes (`pipeline.recipes`) compose them, and so can a notebook.

    config = load_config("configs/quickstart.yaml")
    data = prepare(load_data(config.data), config.data, config.eval.target_event_types)
    item_embeddings, _ = encode(data, config)
    model = build(config.model, data, item_embeddings, config.seed)
    history = train(model, data, config)
    metrics, rankings = evaluate(model, data, config, "test")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config, load_config
from pipeline.data import TEST, VALID, EvalCases, PreparedData
from pipeline.data.shards import load_prepared
from pipeline.distributed import gather_rows
from pipeline.encoding import EncodingStats, encode_items, encoder_identity, resolve_model_source
from pipeline.errors import PipelineInputError
from pipeline.evaluation import Validator, evaluate_model
from pipeline.models import Catalog, Recommender, build_model, uses_text
from pipeline.models.base import repeat_share_of
from pipeline.outputs import check_output_root
from pipeline.progress import show_progress
from pipeline.ranking import ListPolicy, Rankings
from pipeline.schema import ModelSection
from pipeline.tracking import check_backends
from pipeline.training import Fitter, StopRequest


def encode(
    data: PreparedData, config: Config, models: list[ModelSection] | None = None, progress: bool = False
) -> tuple[np.ndarray | None, EncodingStats | None]:
    """Item text embeddings when one of `models` (default: the configured model) reads them; (None, None) otherwise."""
    if not any(uses_text(model) for model in models or [config.model]):
        return None, None
    return encode_items(data.item_texts, config.encoder, progress=progress)


def catalog_of(data: PreparedData, item_embeddings: np.ndarray | None) -> Catalog:
    return Catalog(
        data.n_items, data.category_matrix(), item_embeddings, data.n_users, data.item_features, tuple(data.event_names),
        tuple(data.target_event_types or ()),
    )


def build(model_config: ModelSection, data: PreparedData, item_embeddings: np.ndarray | None, seed: int) -> Recommender:
    """A fresh model of `model_config` for the prepared catalog (text embeddings given only to models reading them)."""
    embeddings = item_embeddings if uses_text(model_config) else None
    return build_model(model_config, catalog_of(data, embeddings), seed)


def validator(data: PreparedData, config: Config, cases: EvalCases | None = None) -> Validator:
    """Early stopping and model selection: NDCG@select_k on the validation split (or `cases` of it), same protocol
    as the final evaluation."""
    cases = data.eval_cases(VALID) if cases is None else cases
    return Validator(cases, config.eval.select_k, list_policy(config), config.eval.user_batch_size)


def list_policy(config: Config) -> ListPolicy:
    """What a list may hold (seen items, untrained items), the same in evaluation, `recommend` and nightly lists."""
    return ListPolicy(config.eval.exclude_seen, config.output.exclude_untrained)


def train(
    model: Recommender,
    data: PreparedData,
    config: Config,
    progress: bool | None = None,
    checkpoint: Path | None = None,
    stop: StopRequest | None = None,
    before_loop: list[Callable[[torch.nn.Module], None]] | None = None,
    validation: EvalCases | None = None,
    epoch_windows: Callable | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fit the model on the training view (statistics, then the gradient loop; see `training.fit` for checkpoint,
    stop, `epoch_windows` and `on_epoch`); `before_loop` hooks run between the two; `validation` (default: the
    validation split) selects the epoch."""
    if data.rank_local and not model.fits_on_rank_shards:
        raise PipelineInputError(
            f"{type(model).__name__} learns from the whole log at once, so it cannot train under torchrun on rank shards "
            "(data.engine: duckdb); train it in one process"
        )
    fitter = Fitter(
        config.train, validator(data, config, validation), config.seed, progress, checkpoint, stop, list(before_loop or []),
        epoch_windows, on_epoch,
    )
    return model.fit(data.train_view(), fitter)


def evaluate(
    model: Recommender, data: PreparedData, config: Config, split: str, cases: EvalCases | None = None,
    progress: bool | None = False,
) -> tuple[dict, Rankings]:
    """Every metric of `model` on `split` (or on `cases`, a part of it); `progress`: a bar of the users ranked (None:
    on a terminal, not under CI)."""
    return evaluate_model(
        model, data.eval_cases(split) if cases is None else cases, data.item_categories, data.n_items, config.eval.ks,
        list_policy(config), config.eval.user_batch_size, config.output.top_k, data.cold_items, show_progress(progress),
    )


def protocol(data: PreparedData, config: Config) -> dict:
    return {
        "split": data.split_method,
        "candidates": "all catalog items",
        "n_items": data.n_items,
        **candidate_policy(data, config),
        "ks": config.eval.ks,
        "users_evaluated": {split: len(gather_rows(data.eval_cases(split).users, data.rank_local)) for split in (VALID, TEST)},
        "model_selection": f"valid ndcg@{config.eval.select_k}",
        "category_metrics": "predicted category of the next interaction; correct if it is any of the item's categories; macro averages",
        "rating_metrics": "rating of the next interaction" if data.has_ratings else "not available (no rating column)",
        "cold_items": int(len(data.cold_items)),
    }


def strongest_floor(test_metrics: dict[str, dict], config: Config, floors: list[str]) -> dict:
    """The best of the floors on test NDCG@select_k, and how far the model (the first entry) is above it."""
    metric = f"ndcg@{config.eval.select_k}"
    model = next(iter(test_metrics))
    if not floors:
        return {}
    best = max(floors, key=lambda name: test_metrics[name][metric])
    floor_value, model_value = test_metrics[best][metric], test_metrics[model][metric]
    return {
        "model": best, "metric": f"test {metric}", "value": floor_value,
        "model_over_floor": round(model_value / floor_value, 4) if floor_value else None,
    }


def candidate_policy(data: PreparedData, config: Config) -> dict:
    """The protocol's account of what a list may hold: the seen-items policy as configured and as resolved, the
    repeat share it was resolved by, and the candidate restrictions."""
    repeat_share = repeat_share_of(data.train_view().events)
    policy = list_policy(config)
    return {
        "exclude_seen": policy.resolved_exclude_seen(repeat_share),
        "exclude_seen_setting": config.eval.exclude_seen,
        "repeat_share": round(repeat_share, 6),
        "recommendable_items": data.n_items if data.recommendable is None else int(data.recommendable.sum()),
        "exclude_untrained": config.output.exclude_untrained,
        "targets": "every event" if data.target_event_types is None else f"events of types {data.target_event_types}",
    }


def preflight(config: Config, models: list[ModelSection], root: str) -> None:
    """What `run`, `compare`, `nightly` and `validate` refuse before reading any data: an output root that cannot
    hold runs (`root` names its key), an encoder that cannot be found (when a model reads item text), and a tracking
    backend whose package is not installed."""
    check_output_root(config.nightly.root if root == "nightly.root" else config.output.root, root)
    if any(uses_text(model) for model in models):
        encoder_identity(config.encoder)
    check_backends(config.logging.backends)


def validate(config_or_path: str | Path | dict | Config, overrides: list[str] | None = None) -> dict:
    """Everything `run` would refuse about config and data, checked without encoding, training or writing.

    Returns the summary `python -m pipeline validate` prints; raises `PipelineInputError` as `run` would.
    """
    config = load_config(config_or_path, overrides)
    preflight(config, [config.model], "output.root")
    data, _ = load_prepared(config.data, config.eval.target_event_types, persist=False)
    representation = getattr(config.model, "item_representation", None)
    return {
        "events": len(data.events), "events_per_split": data.events["split"].value_counts().to_dict(),
        "users": data.n_users, "evaluated": {split: len(data.eval_cases(split)) for split in (VALID, TEST)},
        "items": data.n_items, "categories": len(data.category_names), "ratings": data.has_ratings,
        "encoder": resolve_model_source(config.encoder.model),
        "model": config.model.name + (f" ({representation})" if representation else ""),
        "output_root": config.output.root,
    }
