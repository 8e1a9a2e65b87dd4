"""`compare`: every model of `compare.models` trained and evaluated on one prepared split, fused blends, a leaderboard."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.api import BASELINE, Stages, evaluate, preflight, protocol, selection_metric, train
from pipeline.config import Config, load_config
from pipeline.data import TEST, VALID, PreparedData
from pipeline.encoding import encode_items
from pipeline.errors import PipelineInputError
from pipeline.models import build_model, uses_text_embeddings
from pipeline.models.fusion import ScoreFusion
from pipeline.outputs import elapsed, markdown_table
from pipeline.storage import write_table

log = logging.getLogger("pipeline")


@dataclass
class CompareResult:
    run_dir: Path | None  # None on ranks other than 0 under torchrun
    config: Config
    metrics: dict
    leaderboard: pd.DataFrame


def compare(config_or_path: str | Path | dict | Config, overrides: list[str] | None = None, progress: bool | None = None) -> CompareResult:
    """Train and evaluate every model of `compare.models` on the same prepared data; write a leaderboard."""
    config = load_config(config_or_path, overrides)
    model_configs = config.compared_models()
    if not model_configs:
        raise PipelineInputError("compare.models: empty; list the models to compare, e.g. [{name: popularity}, {name: item_cf}]")
    if not any(model_config.name == BASELINE for model_config in model_configs.values()):
        model_configs = {BASELINE: config.model.model_copy(update={"name": BASELINE}), **model_configs}
    preflight(config, list(model_configs.values()))
    stages = Stages(config, f"{config.name}-compare")
    with stages.publishing() as output:
        data = stages.load()
        with stages.stage("encode"):
            item_embeddings, encoding_stats = None, None
            if any(uses_text_embeddings(model_config) for model_config in model_configs.values()):
                item_embeddings, encoding_stats = encode_items(data.item_texts, config.encoder, progress=bool(progress))
        metrics = {"protocol": protocol(data, config), "splits": {VALID: {}, TEST: {}}}
        rows, histories, trained = [], [], {}
        for label, model_config in model_configs.items():
            with stages.stage(f"train:{label}"):
                model = build_model(model_config, data.n_items, data.category_matrix(), item_embeddings, config.seed, data.n_users)
                history = train(model, data, config, progress)
            histories.extend({"model": label, **record} for record in history)
            trained[label] = model
            rows.append(_leaderboard_row(label, model, data, config, metrics, stages.timings[f"train:{label}"]))
        metrics["fusion_weights"] = {}
        for blend in config.compare.fusion:
            label = "fusion(" + "+".join(blend) + ")"
            with stages.stage(f"train:{label}"):
                fusion = ScoreFusion({member: trained[member] for member in blend})
                weights = fusion.fit_weights(data.eval_cases(VALID), config.eval.select_k, config.eval.exclude_seen, config.eval.user_batch_size)
            log.info("%s weights fitted on validation: %s", label, weights)
            metrics["fusion_weights"][label] = weights
            rows.append(_leaderboard_row(label, fusion, data, config, metrics, stages.timings[f"train:{label}"]))
        leaderboard = pd.DataFrame(rows).sort_values(f"test_{selection_metric(config)}", ascending=False, kind="stable")
        output.write_json("metrics.json", metrics)
        output.write_jsonl("history.jsonl", histories)
        write_table(leaderboard, output.file("leaderboard.csv"))
        output.write_text("leaderboard.md", leaderboard_markdown(leaderboard, metrics["protocol"]))
        run_dir = stages.finish(data, encoding_stats)
    return CompareResult(run_dir, config, metrics, leaderboard)


def _leaderboard_row(label: str, model, data: PreparedData, config: Config, metrics: dict, train_seconds: float) -> dict:
    row = {"model": label}
    for split in (VALID, TEST):
        started = time.perf_counter()
        metrics["splits"][split][label], _ = evaluate(model, data, config, split)
        if split == VALID:
            row[f"valid_{selection_metric(config)}"] = metrics["splits"][VALID][label][selection_metric(config)]
    row.update({f"test_{name}": value for name, value in metrics["splits"][TEST][label].items()})
    row["train_seconds"] = train_seconds
    row["test_eval_seconds"] = elapsed(started)
    # The other protocol's headline numbers too: RecBole keeps a user's earlier items among the candidates of
    # sequential models, the product removes them; one training, both comparisons.
    flipped = not config.eval.exclude_seen
    other = config.model_copy(update={"eval": config.eval.model_copy(update={"exclude_seen": flipped})})
    other_metrics, _ = evaluate(model, data, other, TEST)
    suffix = "seen_excluded" if flipped else "seen_kept"
    for name in (f"hit_rate@{config.eval.select_k}", f"ndcg@{config.eval.select_k}"):
        row[f"test_{name}_{suffix}"] = other_metrics[name]
    return row


def leaderboard_markdown(leaderboard: pd.DataFrame, protocol_info: dict) -> str:
    shown = leaderboard.drop(columns=[c for c in leaderboard.columns if c.startswith("test_coverage@")])
    notes = [
        f"Protocol: split {protocol_info['split']}, candidates: {protocol_info['candidates']} ({protocol_info['n_items']}), "
        f"seen items excluded: {protocol_info['exclude_seen']}, users evaluated: {protocol_info['users_evaluated']}, "
        f"model selection: {protocol_info['model_selection']}.",
    ]
    return "# Leaderboard\n\n" + markdown_table(shown) + "\n\n" + "\n".join(notes) + "\n"
