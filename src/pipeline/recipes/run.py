"""`run`: one model, top to bottom: load and prepare, encode, build, fit, evaluate (next to the popularity floor),
publish one run directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.api import build, encode, evaluate, preflight, protocol, strongest_floor, train
from pipeline.config import Config, load_config
from pipeline.data import TEST, VALID
from pipeline.distributed import gather_rows
from pipeline.errors import PipelineInputError
from pipeline.models.registry import floor_configs
from pipeline.outputs import CHECKPOINT, EMBEDDING_FILES
from pipeline.progress import show_progress
from pipeline.recipes.context import RunContext
from pipeline.report import write_run_report
from pipeline.retrieval import retrieval_vectors_of
from pipeline.serving import embedding_tables, list_maker, recommendation_frame, save_trained, serving_lists
from pipeline.storage import write_table
from pipeline.training import StopRequest

log = logging.getLogger("pipeline")

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
    preflight(config, [config.model], "output.root")
    context = RunContext(config, config.name, resume)
    with context.publishing() as output:
        data = context.load()
        with context.stage("encode"):
            item_embeddings, encoding_stats = encode(data, config, progress=show_progress(progress))
        with context.stage("train"):
            model = build(config.model, data, item_embeddings, config.seed)
            if config.output.embeddings and retrieval_vectors_of(model) is None:
                raise PipelineInputError(f"output.embeddings: {config.model.name} does not score by inner products, so it has no embeddings to export")
            history = train(model, data, config, progress, output.file(CHECKPOINT), stop, on_epoch=context.tracking.epoch)
        with context.stage("evaluate"):
            models = {config.model.name: model}
            metrics = {"protocol": protocol(data, config), "splits": {VALID: {}, TEST: {}}}
            for floor in floor_configs(seen_items_listed=not metrics["protocol"]["exclude_seen"]):
                if floor.name not in models:
                    candidate = build(floor, data, None, config.seed)
                    if data.rank_local and not candidate.fits_on_rank_shards:
                        log.info("floor %s skipped: it learns from the whole log, and this rank holds its own shards", floor.name)
                        continue
                    models[floor.name] = candidate
                    train(candidate, data, config)
            for split in (VALID, TEST):
                for name, candidate in models.items():
                    metrics["splits"][split][name], rankings = evaluate(candidate, data, config, split, progress=progress)
                    if split == TEST and candidate is model and config.output.users == "test":
                        cases = data.eval_cases(TEST)
                        lists = list_maker(model, config, cases.rank_local)
                        if lists.ann is not None:
                            exact, rankings = rankings, lists.rank(cases.histories, config.output.top_k, cases.history_events)
                            metrics["retrieval"] = lists.check(rankings, cases.histories, cases.history_events, exact)
                        users = np.array(gather_rows(cases.users, cases.rank_local), dtype=np.int64)
                        recommendations = recommendation_frame(data.user_ids[users], data.item_ids, rankings)
            metrics["strongest_floor"] = strongest_floor(metrics["splits"][TEST], config, [*models][1:])
            if config.output.users == "all":
                recommendations, retrieval = serving_lists(model, data, config)
                if retrieval is not None:
                    metrics["retrieval"] = retrieval
        with context.stage("write"):
            save_trained(output, model, data, item_embeddings)
            output.write_json("metrics.json", metrics)
            output.write_jsonl("history.jsonl", history)
            write_table(recommendations, output.file("recommendations.parquet"))
            if config.output.embeddings:
                for table, name in zip(embedding_tables(model, data, config), EMBEDDING_FILES):
                    write_table(table, output.file(name))
            if config.output.write_csv:
                write_table(recommendations, output.file("recommendations.csv"))
            write_run_report(output.path)  # from the files above, before publishing: a broken report fails the run
        run_dir = context.finish(data, encoding_stats, metrics)
    return RunResult(run_dir, config, metrics, recommendations, history)
