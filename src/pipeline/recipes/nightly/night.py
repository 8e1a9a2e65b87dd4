"""`python -m pipeline nightly CONFIG`: the least work that keeps the model fresh, never a worse model, one row of history.

A night, top to bottom:
1. lock (one night at a time); compare the input files and config with the last successful night: unchanged -> done;
2. load and prepare tonight's log, count what is new since the watermark (newest event time of the last night), and
   measure the lists the last night served against those new events (`feedback`);
3. encode item texts through the cache (only new or changed texts are encoded);
4. train the challenger: warm-started from the champion (same encoder and model shape) or from scratch;
5. evaluate challenger and champion on the same events; promote if the challenger is not worse by more than the
   tolerance on the gate window: the validation events of half the users (by a hash of the user id), which neither
   model trained on and the challenger did not select its epoch on (it selects on the other half); the test window is
   reported for both but does not decide, so it stays an unbiased estimate;
6. write the night's run directory (model, metrics, lists, interest profiles, summary), move the champion pointer if
   promoted, update the state and the history table, delete old nights.

Layout under `nightly.root`: `nights/<name>-<time>/` (one run directory per night, `nights/latest`), `champion` (a
pointer to the promoted night), `state.json`, `history.csv`, `lock`.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import faults
from pipeline.api import build, encode, evaluate, preflight, protocol
from pipeline.config import Config, load_config
from pipeline.data import TEST, VALID, EvalCases, PreparedData
from pipeline.encoding import encode_items, encoder_identity
from pipeline.errors import PipelineInputError, StorageError, clip
from pipeline.models import uses_text
from pipeline.models.warm_start import ShapeChanged, transplant
from pipeline.outputs import elapsed, read_run_config, read_weights, utc_now
from pipeline.progress import show_progress
from pipeline.recipes.context import RunContext
from pipeline.recipes.nightly.challenger import train_challenger, vocabulary
from pipeline.recipes.nightly.feedback import served_feedback, served_message
from pipeline.recipes.nightly.lock import NightLock
from pipeline.recipes.nightly.profiles import interest_profiles, profile_summary
from pipeline.recipes.nightly.records import (
    CHAMPION,
    KEPT_CHAMPION,
    PROMOTED,
    append_history,
    history_row,
    read_state,
    remove_old_nights,
    summary_markdown,
)
from pipeline.report import REPORT, write_nightly_report, write_run_report
from pipeline.serving import read_catalog, save_trained, serving_lists
from pipeline.storage import file_fingerprint, follow, point, write_json_atomic, write_table
from pipeline.training import StopRequest

log = logging.getLogger("pipeline")

NOTHING_NEW = "nothing_new"
# The window that decides a promotion, and how the summary names it.
GATE = "gate"
GATE_WINDOW = (
    "validation events of half the users, chosen by a hash of the user id: neither model trained on them and the "
    "challenger did not select its epoch on them (it selects on the other half)"
)
# Exit codes of `python -m pipeline nightly` besides 1 (failure) and 2 (bad input); documented in the README.
EXIT_CODES = {PROMOTED: 0, NOTHING_NEW: 0, KEPT_CHAMPION: 3}
EXIT_LOCK_HELD = 4


@dataclass
class NightResult:
    status: str
    night_dir: Path | None
    summary: dict

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@dataclass
class Champion:
    night_dir: Path
    config: Config
    state: dict
    vocabulary: dict[str, list]  # see `transplant`


def nightly(
    config_or_path: str | Path | dict | Config,
    overrides: list[str] | None = None,
    progress: bool | None = None,
    stop: StopRequest | None = None,
) -> NightResult:
    """Run one night (see the module docstring). Raises `LockHeld` when another night is running."""
    config = load_config(config_or_path, overrides)
    preflight(config, [config.model], "nightly.root")
    root = Path(config.nightly.root)
    with NightLock(root / "lock"):
        started = time.perf_counter()
        try:
            return _night(config, root, progress, stop, started)
        except Exception as err:
            status = "bad_input" if isinstance(err, PipelineInputError) else "failed"
            append_history(root, {"night": None, "date": utc_now(), "status": status, "error": str(err)[:300]})
            raise
        finally:
            _refresh_report(root)  # every night's row, failed and nothing-new ones included


def _night(config: Config, root: Path, progress: bool | None, stop: StopRequest | None, started: float) -> NightResult:
    state = read_state(root)
    inputs = _input_fingerprints(config)
    config_digest = hashlib.sha256(config.to_yaml().encode()).hexdigest()
    champion, champion_problem = _load_champion(root)
    if state and champion and state["inputs"] == inputs and state["config_sha256"] == config_digest:
        message = (
            f"nothing new since night {state['night']}: input files and config unchanged "
            f"(newest event {_iso(state['watermark'])}); the champion stays {champion.night_dir.name}"
        )
        log.info(message)
        append_history(root, {"night": None, "date": utc_now(), "status": NOTHING_NEW, "wall_seconds": elapsed(started)})
        return NightResult(NOTHING_NEW, None, {"status": NOTHING_NEW, "message": message})

    night_config = config.model_copy(update={"output": config.output.model_copy(update={"root": str(root / "nights")})})
    context = RunContext(night_config, config.name)
    with context.publishing() as output:
        data = context.load()
        if data.rank_local:
            raise PipelineInputError("nightly: runs in one process (under torchrun the ranks would read only their own "
                                     "shards of data.engine duckdb's prepared log, and a night compares the whole log)")
        news = _whats_new(data, state, champion, inputs, config_digest)
        log.info("tonight: %s", news["message"])
        served = served_feedback(root / "nights" / state["night"] if state else None, data, state.get("watermark"))
        if served is not None:
            log.info("last night's lists: %s", served_message(served))
        with context.stage("encode"):
            item_embeddings, encoding = encode(data, config, progress=show_progress(progress))
        texts = {"encoded": encoding.encoded if encoding else 0, "from_cache": encoding.from_cache if encoding else 0}
        selection, gate = split_validation(data)
        with context.stage("train"):
            challenger, training, history = train_challenger(
                config, data, item_embeddings, champion, progress, stop, selection, state.get("watermark"),
                context.tracking.epoch)
        with context.stage("evaluate"):
            challenger_metrics = _evaluate_windows(challenger, data, config, gate)
            champion_metrics, champion_model = {}, None
            if champion is not None:
                try:  # NaN weights surface here as NonFiniteScores, itself bad input
                    champion_model = _champion_for_tonight(champion, data, config, item_embeddings)
                    champion_metrics = _evaluate_windows(champion_model, data, config, gate)
                except PipelineInputError as err:
                    champion_problem, champion_metrics = f"champion unusable: {err}", {}
                    log.warning("%s; tonight's challenger will be promoted", champion_problem)
            decision = decide(config, challenger_metrics, champion_metrics or None, champion_problem)
            log.info("decision: %s", decision["message"])
        with context.stage("profiles"):
            previous = _previous_profiles(root, state)
            profiles = interest_profiles(data, config.nightly.profile_half_life_days, config.nightly.profile_top_categories, previous)
        with context.stage("write"):
            # Tomorrow's lists: every user, from the whole log, by the model that serves.
            serving_model = challenger if decision["promote"] else champion_model
            lists, retrieval = serving_lists(serving_model, data, config)
            write_table(lists, output.file("recommendations.parquet"))
            write_table(profiles, output.file("profiles.parquet"))
            save_trained(output, challenger, data, item_embeddings)
            splits = {
                split: {"challenger": challenger_metrics[split], **({"champion": champion_metrics[split]} if champion_metrics else {})}
                for split in (GATE, TEST)
            }
            output.write_json("metrics.json", {
                "protocol": protocol(data, config),
                "splits": splits,
                "decision": decision,
                **({"retrieval": retrieval} if retrieval is not None else {}),
            })
            output.write_jsonl("history.jsonl", history)
            summary = {
                "night": output.final_path.name, "date": utc_now(), "status": PROMOTED if decision["promote"] else KEPT_CHAMPION,
                "data": news, "served": served, "texts": texts, "training": training, "decision": decision,
                "profiles": profile_summary(profiles), "timings_seconds": context.timings,
            }
            output.write_json("summary.json", summary)
            output.write_text("summary.md", summary_markdown(summary))
            write_run_report(output.path)  # the night's own page, before publishing like its other files
        night_dir = context.finish(data, encoding, {"splits": splits}, {"decision": summary["status"], "training": training["mode"]})
    faults.reached("nightly:published")

    # The champion link is the truth about what is promoted: it moves first, in one rename, and state.json follows.
    # A kill between the two leaves the link on a complete night and the old state, which the next night reconciles
    # (`read_state`) and retrains from, as after any night that did not finish.
    if decision["promote"]:
        try:
            point(root / CHAMPION, night_dir)
        except StorageError as err:
            raise StorageError(f"night {night_dir.name} was published but the champion link was not moved: {err}") from None
    faults.reached("nightly:link-swapped")
    promoted = state.get("promoted", []) + ([night_dir.name] if decision["promote"] else [])
    try:
        write_json_atomic(root / "state.json", {
            "night": night_dir.name, "finished_at": utc_now(), "watermark": int(data.events["timestamp"].max()),
            "inputs": inputs, "config_sha256": config_digest, "promoted": promoted,
        })
    except StorageError as err:  # the champion link already tells what is promoted; the next night reconciles
        log.error("%s; the next night retrains from the champion", err)
    faults.reached("nightly:state-written")
    summary["timings_seconds"]["total"] = elapsed(started)
    append_history(root, history_row(summary))
    remove_old_nights(root, config.nightly.keep_nights, set(promoted))
    return NightResult(summary["status"], night_dir, summary)


def _refresh_report(root: Path) -> None:
    """The root's report.html over history.csv and the nights on disk. Like history.csv it reports on the nights,
    it is not state: a failure is logged (with its traceback: a broken report is a bug), never a failed night."""
    if not root.is_dir():
        return
    try:
        write_nightly_report(root)
    except Exception as err:
        log.error("%s: not updated: %s", root / REPORT, clip(str(err)), exc_info=True)


# ---- what is new ---------------------------------------------------------------------------------------------------


def _input_fingerprints(config: Config) -> dict[str, str]:
    sources = [config.data.interactions, config.data.items, config.data.tags]
    return {source.path: file_fingerprint(Path(source.path))["sha256"] for source in sources if source is not None}


def _whats_new(data: PreparedData, state: dict, champion: Champion | None, inputs: dict, config_digest: str) -> dict:
    timestamps = data.events["timestamp"]
    watermark = state.get("watermark")
    new_events = int((timestamps > watermark).sum()) if watermark is not None else len(timestamps)
    first_event = data.events.groupby("user")["timestamp"].min()
    new_users = int((first_event > watermark).sum()) if watermark is not None else data.n_users
    known_items = set(champion.vocabulary["items"][1:]) if champion else set()
    new_items = sum(1 for item in data.item_ids[1:] if item not in known_items)
    changed = [Path(path).name for path, digest in inputs.items() if state.get("inputs", {}).get(path) != digest]
    reasons = []
    if changed:
        reasons.append(f"changed files: {', '.join(changed)}")
    if state and state.get("config_sha256") != config_digest:
        reasons.append("config changed")
    since = f"since {_iso(watermark)}" if watermark is not None else "(first night)"
    return {
        "events": int(len(timestamps)), "new_events": new_events, "users": data.n_users, "new_users": new_users,
        "items": data.n_items, "new_items": new_items, "newest_event": _iso(int(timestamps.max())),
        "message": f"{new_events} new events {since}, {new_users} new users, {new_items} new items; " + ("; ".join(reasons) or "first night"),
    }


# ---- champion and challenger ---------------------------------------------------------------------------------------


def _load_champion(root: Path) -> tuple[Champion | None, str | None]:
    """The champion, or (None, what is wrong with it) when its link dangles or its night is damaged.

    A night without a usable champion promotes its challenger (if it trains and evaluates), so a lost or damaged
    champion costs one night's comparison, never every later night.
    """
    link = root / CHAMPION
    night_dir = follow(link)
    if night_dir is None:
        return None, None
    try:
        if not night_dir.is_dir():
            raise PipelineInputError(f"{link}: points at {night_dir}, which does not exist")
        config = read_run_config(night_dir)
        vocabulary = read_catalog(night_dir).vocabulary
        weights = read_weights(night_dir / "model.safetensors")
    except PipelineInputError as err:
        problem = f"champion unusable: {clip(str(err), 300)}"
        log.warning("%s; tonight's challenger will be promoted if it trains and evaluates", problem)
        return None, problem
    return Champion(night_dir, config, weights, vocabulary), None


def _champion_for_tonight(champion: Champion, data: PreparedData, config: Config, item_embeddings):
    """The champion's weights on tonight's catalog (new items from their text neighbours), with tonight's statistics."""
    embeddings = item_embeddings
    if uses_text(champion.config.model) and (
        embeddings is None or encoder_identity(champion.config.encoder) != encoder_identity(config.encoder)
    ):
        embeddings, _ = encode_items(data.item_texts, champion.config.encoder)
    model = build(champion.config.model, data, embeddings, config.seed)
    model.fit_statistics(data.train_view())
    try:
        transplant(model, champion.state, champion.vocabulary, vocabulary(data), embeddings)
    except ShapeChanged as err:
        raise PipelineInputError(f"{champion.night_dir / 'model.safetensors'}: does not fit its own config: {err}") from None
    model.eval()
    return model


def split_validation(data: PreparedData) -> tuple[EvalCases, EvalCases]:
    """(epoch selection, gate) halves of the validation cases, by a hash of the original user id, so a user stays on
    their side from night to night. With fewer than two users on a side, both use every validation case."""
    cases = data.eval_cases(VALID)
    in_gate = np.array([zlib.crc32(str(user).encode("utf-8")) % 2 == 1 for user in data.user_ids[cases.users]], dtype=bool)
    if min(int(in_gate.sum()), int((~in_gate).sum())) < 2:
        return cases, cases
    return cases.subset(np.flatnonzero(~in_gate)), cases.subset(np.flatnonzero(in_gate))


def _evaluate_windows(model, data: PreparedData, config: Config, gate: EvalCases) -> dict:
    """{window: metrics} on the gate and test windows."""
    gate_metrics, _ = evaluate(model, data, config, VALID, cases=gate)
    test_metrics, _ = evaluate(model, data, config, TEST)
    return {GATE: gate_metrics, TEST: test_metrics}


def decide(config: Config, challenger: dict, champion: dict | None, champion_problem: str | None = None) -> dict:
    """Promote or keep, on the gate window only (`GATE`): {window: metrics} of each model; test numbers are reported
    beside the decision, never part of it."""
    metric, tolerance = config.nightly.metric, config.nightly.tolerance
    challenger_value = float(challenger[GATE][metric])
    reported = {"window": GATE, "window_description": GATE_WINDOW, "metric": metric, "tolerance": tolerance,
                "challenger": challenger_value, "challenger_test": float(challenger[TEST][metric])}
    if champion is None:
        why = champion_problem or "first night, no champion yet"
        return {"promote": True, **reported, "champion": None, "champion_test": None,
                "message": f"promoted: {why} (challenger {GATE} {metric} {challenger_value:.4f})"}
    champion_value = float(champion[GATE][metric])
    bar = champion_value * (1.0 - tolerance)
    promote = challenger_value >= bar
    verdict = "promoted" if promote else "kept the champion"
    return {
        "promote": promote, **reported, "champion": champion_value, "champion_test": float(champion[TEST][metric]),
        "message": f"{verdict} on the {GATE} window: challenger {metric} {challenger_value:.4f} vs champion "
        f"{champion_value:.4f} (bar {bar:.4f} = champion x (1 - {tolerance:g})); test {metric}, reported not "
        f"decisive: challenger {float(challenger[TEST][metric]):.4f}, champion {float(champion[TEST][metric]):.4f}",
    }


# ---- profiles ----------------------------------------------------------------------------------------------------


def _previous_profiles(root: Path, state: dict) -> pd.DataFrame | None:
    path = root / "nights" / state.get("night", "") / "profiles.parquet"
    if not state.get("night") or not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow's own error types for a damaged file
        log.warning("%s: unreadable (%s); tonight's profiles report no drift", path, clip(str(err)))
        return None


def _iso(timestamp: int | None) -> str | None:
    return None if timestamp is None else pd.Timestamp(int(timestamp), unit="s", tz="UTC").isoformat()
