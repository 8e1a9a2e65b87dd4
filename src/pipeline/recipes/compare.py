"""`compare`: every model of `compare.models` trained and evaluated on one prepared split, fused blends, a leaderboard."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.api import build, catalog_of, encode, evaluate, list_policy, preflight, protocol, train
from pipeline.config import Config, load_config
from pipeline.data import TEST, VALID, PreparedData
from pipeline.errors import PipelineInputError
from pipeline.models.fusion import ScoreFusion
from pipeline.models.registry import floor_configs
from pipeline.outputs import LATEST_COMPARE, elapsed, markdown_table
from pipeline.progress import show_progress
from pipeline.recipes.context import RunContext
from pipeline.report import write_compare_report
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
    preflight(config, list(model_configs.values()), "output.root")
    context = RunContext(config, f"{config.name}-compare", pointer=LATEST_COMPARE)
    selection = f"ndcg@{config.eval.select_k}"
    with context.publishing() as output:
        data = context.load()
        metrics = {"protocol": protocol(data, config), "splits": {VALID: {}, TEST: {}}, "fusion_weights": {}}
        compared = {model_config.name for model_config in model_configs.values()}
        floors = floor_configs(seen_items_listed=not metrics["protocol"]["exclude_seen"])
        model_configs = {**{floor.name: floor for floor in floors if floor.name not in compared}, **model_configs}
        with context.stage("encode"):
            item_embeddings, encoding_stats = encode(data, config, list(model_configs.values()), progress=show_progress(progress))
        rows, histories, trained = [], [], {}
        blends = {"fusion(" + "+".join(blend) + ")": blend for blend in config.compare.fusion}
        for label, model_config in [*model_configs.items(), *blends.items()]:
            with context.stage(f"train:{label}"):
                if label in blends:  # fitted through the same contract: its weights on the validation split
                    model = ScoreFusion({member: trained[member] for member in blends[label]}, catalog_of(data, None))
                else:
                    model = build(model_config, data, item_embeddings, config.seed)
                history = train(model, data, config, progress,
                                on_epoch=lambda record, label=label: context.tracking.epoch(record, label))
            if label in blends:
                metrics["fusion_weights"][label] = model.member_weights()
                log.info("%s weights fitted on validation: %s", label, metrics["fusion_weights"][label])
            histories.extend({"model": label, **record} for record in history)
            trained[label] = model
            rows.append(_leaderboard_row(label, model, data, config, metrics, context.timings[f"train:{label}"], progress))
        leaderboard = pd.DataFrame(rows).sort_values(f"test_{selection}", ascending=False, kind="stable")
        output.write_json("metrics.json", metrics)
        output.write_jsonl("history.jsonl", histories)
        write_table(leaderboard, output.file("leaderboard.csv"))
        output.write_text("leaderboard.md", leaderboard_markdown(leaderboard, metrics["protocol"]))
        write_compare_report(output.path)  # from the files above, before publishing
        run_dir = context.finish(data, encoding_stats, metrics)
    return CompareResult(run_dir, config, metrics, leaderboard)


def _leaderboard_row(
    label: str, model, data: PreparedData, config: Config, metrics: dict, train_seconds: float, progress: bool | None
) -> dict:
    row = {"model": label}
    selection = f"ndcg@{config.eval.select_k}"
    for split in (VALID, TEST):
        started = time.perf_counter()
        metrics["splits"][split][label], _ = evaluate(model, data, config, split, progress=progress)
        if split == VALID:
            row[f"valid_{selection}"] = metrics["splits"][VALID][label][selection]
    row.update({f"test_{name}": value for name, value in metrics["splits"][TEST][label].items()})
    row["train_seconds"] = train_seconds
    row["test_eval_seconds"] = elapsed(started)
    # The other protocol's headline numbers too: RecBole keeps a user's earlier items among the candidates of
    # sequential models, the product removes them; one training, both comparisons.
    flipped = not list_policy(config).resolved_exclude_seen(float(model.statistics.repeat_share))
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
