"""`tune`: a hyperparameter search with Optuna over `tune.space`, on one prepared split, selecting on validation.

Each trial trains the configured model with the settings it draws (TPE after `tune.startup_trials` random ones) and
reports its validation NDCG@select_k every epoch, so a trial below the median of earlier trials at that epoch is
stopped (pruned). The trials live in `trials.db` (SQLite) inside the run folder: a search that is interrupted keeps
its folder, and `--resume` continues it, trying again the trial that was cut short. The first trial is the config's
own settings, so the table shows what the search gained over them. The published folder holds `best_config.yaml`,
ready for `python -m pipeline run`, a trials table, the best trial's validation and test metrics, and the report.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.api import build, encode, evaluate, preflight, protocol, train
from pipeline.config import Config, load_config
from pipeline.config_tune import TuneConfig, TuneParameter
from pipeline.data import TEST, VALID, PreparedData
from pipeline.errors import PipelineInputError
from pipeline.outputs import LATEST_TUNE, TRIALS
from pipeline.progress import show_progress
from pipeline.recipes.context import RunContext
from pipeline.report import write_tune_report
from pipeline.storage import write_table

log = logging.getLogger("pipeline")
EXTRA = "pip install 'interest-pipeline[tune]'"


@dataclass
class TuneResult:
    run_dir: Path | None
    config: Config
    best_config: Config
    metrics: dict
    trials: pd.DataFrame


def tune(
    config_or_path: str | Path | dict | Config,
    overrides: list[str] | None = None,
    progress: bool | None = None,
    resume: str | Path | None = None,
) -> TuneResult:
    """Search `tune.space` for the settings with the best validation NDCG@select_k; write `best_config.yaml`."""
    config = load_config(config_or_path, overrides)
    if not config.tune.space:
        raise PipelineInputError("tune.space: empty; name the settings to search, e.g. "
                                 "{train.learning_rate: {low: 0.0005, high: 0.005, log: true}}")
    optuna = _import_optuna()
    preflight(config, [config.model], "output.root")
    context = RunContext(config, f"{config.name}-tune", resume, pointer=LATEST_TUNE)
    selection = f"valid_ndcg@{config.eval.select_k}"
    with context.publishing() as output:
        data = context.load()
        storage = optuna.storages.RDBStorage(f"sqlite:///{output.file(TRIALS)}")
        study = optuna.create_study(
            study_name=config.name, storage=storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.tune.startup_trials),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=config.tune.startup_trials, n_warmup_steps=2)
            if config.tune.pruning else optuna.pruners.NopPruner(),
        )
        _requeue_cut_short(study, storage, optuna)
        if not study.trials:
            study.enqueue_trial(_own_settings(config))
        embeddings: dict = {}  # encoded on the first trial whose model reads item text
        best: dict = {}  # the best trial trained in this process: its model and config
        histories: list[dict] = []
        started = time.perf_counter()
        while _counted(study, optuna) < config.tune.trials:
            if config.tune.timeout is not None and time.perf_counter() - started > config.tune.timeout:
                log.info("tune.timeout: %.0f s passed; no more trials", config.tune.timeout)
                break
            trial = study.ask()
            with context.stage(f"trial:{trial.number}"):
                outcome = _trial(study, trial, config, data, context, embeddings, histories, progress, selection, optuna)
            if outcome is None:
                continue
            trial_config, model, score = outcome
            if not best or score > best["score"]:
                best.update(score=score, number=trial.number, config=trial_config, model=model)
        finished = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
        if not finished:
            raise PipelineInputError(f"tune: no trial finished (see {output.file('trials.csv').name} for why)")
        best_trial = max(finished, key=lambda trial: trial.value)
        if best.get("number") != best_trial.number:  # trained before a resume: train it again, same seed
            best_config = _trial_config(config, best_trial.params)
            model = build(best_config.model, data, _embeddings(data, best_config, embeddings, progress), best_config.seed)
            train(model, data, best_config, progress)
            best.update(config=best_config, model=model)
        metrics = {"protocol": protocol(data, config), "best_trial": best_trial.number, "best_params": best_trial.params,
                   "splits": {VALID: {}, TEST: {}}}
        for split in (VALID, TEST):
            metrics["splits"][split][best["config"].model.name], _ = evaluate(best["model"], data, best["config"], split)
        trials = trials_table(study, optuna, selection)
        write_table(trials, output.file("trials.csv"))
        output.write_text("best_config.yaml", _header(best_trial, selection) + best["config"].to_yaml())
        output.write_json("metrics.json", metrics)
        output.write_jsonl("history.jsonl", histories)
        write_tune_report(output.path)
        storage.engine.dispose()  # the database closed before its folder is published
        run_dir = context.finish(data, embeddings.get("stats"), metrics, {"best_trial": best_trial.number})
    return TuneResult(run_dir, config, best["config"], metrics, trials)


def _trial(study, trial, config: Config, data: PreparedData, context: RunContext, embeddings: dict, histories: list[dict],
           progress: bool | None, selection: str, optuna):
    """Train one trial; (its config, model, best validation score), or None when it was pruned or failed."""
    label = f"trial-{trial.number}"
    try:
        trial_config = _trial_config(config, {key: _draw(trial, key, parameter, config)
                                              for key, parameter in config.tune.space.items()})
        model = build(trial_config.model, data, _embeddings(data, trial_config, embeddings, progress), trial_config.seed)

        def on_epoch(record: dict) -> None:
            histories.append({"trial": trial.number, **record})
            context.tracking.epoch(record, label)
            trial.report(record[selection], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        history = train(model, data, trial_config, progress, on_epoch=on_epoch)
    except optuna.TrialPruned:
        log.info("%s pruned after epoch %d", label, len([row for row in histories if row["trial"] == trial.number]))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return None
    except PipelineInputError as err:  # settings the model refuses, or a diverging learning rate: the next trial
        log.warning("%s failed: %s", label, err)
        trial.set_user_attr("error", str(err)[:500])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    score = max(record[selection] for record in history)
    trial.set_user_attr("epochs", len(history))
    study.tell(trial, score)
    log.info("%s: %s %.4f with %s", label, selection, score, trial.params)
    return trial_config, model, score


def _draw(trial, key: str, parameter: TuneParameter, config: Config):
    if parameter.choices is not None:
        return trial.suggest_categorical(key, parameter.choices)
    if isinstance(_setting(config, key), int):
        step = int(parameter.step or 1)
        return trial.suggest_int(key, int(parameter.low), int(parameter.high), step=step, log=parameter.log)
    return trial.suggest_float(key, parameter.low, parameter.high, step=parameter.step, log=parameter.log)


def _setting(config: Config, key: str):
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _own_settings(config: Config) -> dict:
    """The config's own values of the space's settings that lie inside it: the first trial."""
    own = {}
    for key, parameter in config.tune.space.items():
        value = _setting(config, key)
        inside = value in parameter.choices if parameter.choices is not None else parameter.low <= value <= parameter.high
        if inside:
            own[key] = value
    return own


def _trial_config(config: Config, params: dict) -> Config:
    """The config with `params` set, validated like any config; without a search space (a plain run config)."""
    raw = config.to_dict()
    raw["tune"] = TuneConfig().model_dump(mode="json")
    for key, value in params.items():
        node = raw
        *sections, name = key.split(".")
        for section in sections:
            node = node[section]
        node[name] = value
    return load_config(raw, check_paths=False)


def _embeddings(data: PreparedData, config: Config, cache: dict, progress: bool | None):
    if "vectors" not in cache:
        vectors, stats = encode(data, config, progress=show_progress(progress))
        if vectors is None:
            return None
        cache.update(vectors=vectors, stats=stats)
    return cache["vectors"]


def _requeue_cut_short(study, storage, optuna) -> None:
    """Trials still RUNNING in a resumed study were cut short by the interruption: failed, and queued again."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), trial.number)
        storage.set_trial_user_attr(trial_id, "error", "interrupted; tried again")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
        log.info("trial-%d was interrupted: queued again", trial.number)


def _counted(study, optuna) -> int:
    """Trials that used up one of `tune.trials`: finished, pruned, or failed on their settings (not interrupted)."""
    states = optuna.trial.TrialState
    return sum(trial.state in (states.COMPLETE, states.PRUNED) or (
        trial.state == states.FAIL and not str(trial.user_attrs.get("error", "")).startswith("interrupted"))
        for trial in study.get_trials(deepcopy=False))


def trials_table(study, optuna, selection: str) -> pd.DataFrame:
    """One row per trial: number, state, best validation score, epochs, seconds, its settings, why it failed."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            continue
        reported = list(trial.intermediate_values.values())
        value = trial.value if trial.value is not None else (max(reported) if reported else math.nan)
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else math.nan
        rows.append({
            "trial": trial.number, "state": trial.state.name.lower(), selection: value,
            "epochs": trial.user_attrs.get("epochs", len(reported)), "seconds": round(seconds, 2),
            **{f"param:{key}": value for key, value in trial.params.items()}, "error": trial.user_attrs.get("error", ""),
        })
    return pd.DataFrame(rows)


def _header(best_trial, selection: str) -> str:
    return (f"# The best of a `pipeline tune` search: trial {best_trial.number}, {selection} {best_trial.value:.4f}, "
            f"with {best_trial.params}.\n# Run it with: python -m pipeline run best_config.yaml\n")


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise PipelineInputError(f"tune: needs Optuna, which is not installed ({EXTRA})") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the pipeline logs each trial itself
    return optuna
