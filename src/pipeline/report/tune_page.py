"""The page of a search folder (`pipeline tune`): the best trial beside trial 0 (the config's own settings), the
selection metric per trial, the validation curves of every trial, each searched setting against the score, the
trials table, and the best trial's metrics at every K (the run page's sections).

It reads trials.csv (one row per trial), metrics.json (the best trial's splits), history.jsonl (one line per epoch
of each trial run in the last process: trials run before a `--resume` have a row but no curve) and
config.resolved.yaml (the search space: which settings were drawn on a log scale).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from pipeline.config_files import read_yaml
from pipeline.report import figures
from pipeline.report.html import Derived, Num, Raw, Section, escaped, figure, link, note, page, table
from pipeline.report.pages import METRICS, _metric_sections, _protocol_line, _protocol_section
from pipeline.report.sources import published_name, read_history_table, read_json, read_jsonl

TRIALS, HISTORY, RESOLVED, BEST_CONFIG = "trials.csv", "history.jsonl", "config.resolved.yaml", "best_config.yaml"
COMPLETE, PRUNED, FAIL = "complete", "pruned", "fail"
PARAM = "param:"
TEXT_COLUMNS = ("state", "error")
PANELS_PER_ROW = 3
FAILED = "#c53030"


def tune_page(folder: Path) -> str:
    """The page of a search folder, from the files it holds."""
    metrics = read_json(folder, METRICS)
    splits, protocol = metrics["splits"], metrics.get("protocol", {})
    trials = read_history_table(folder / TRIALS)
    score = next(column for column in trials.columns if column.startswith("valid_"))
    tune = (read_yaml(folder / RESOLVED) or {}).get("tune", {}) if (folder / RESOLVED).is_file() else {}
    space = tune.get("space") or {}
    history = read_jsonl(folder / HISTORY)
    best = int(metrics["best_trial"])
    numbers = trials["trial"].astype(int).to_numpy()
    states = trials["state"].astype(str).to_numpy()
    shown = _shown_scores(trials, score, history)
    counts = ", ".join(f"{int((states == state).sum())} {state}" for state in (COMPLETE, PRUNED, FAIL))
    subtitle = [escaped(f"{len(trials)} trials ({counts}) of tune.trials {tune.get('trials', 'n/a')}, searching "
                        f"{len(space) or len(_params(trials))} settings; trials selected by {score.replace('_', ' ', 1)}, "
                        f"the best trial's model evaluated on validation and test."), escaped(_protocol_line(protocol))]
    sections = [_headline_section(trials, score, best),
                _search_section(numbers, states, shown, best, score),
                _curves_section(history, dict(zip(numbers.tolist(), states.tolist())), best, score),
                _parameters_section(trials, space, states, shown, numbers == best, score),
                _trials_section(trials, numbers == best)]
    at_k = _metric_sections(splits, protocol)
    at_k[0].parts.insert(0, note(f"Trial {best}'s settings ({BEST_CONFIG}), trained once more where the search was "
                                 "resumed after it, evaluated on every split (metrics.json)."))
    sections.extend([*at_k, _protocol_section(protocol)])
    return page(f"Search {published_name(folder)}", subtitle, sections, "tune")


def _params(trials: pd.DataFrame) -> list[str]:
    return [column for column in trials.columns if column.startswith(PARAM)]


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _decimals(trials: pd.DataFrame, column: str, value) -> int:
    """Counts whole, seconds to the hundredth, metrics to 4; a setting as many as it needs (3 significant digits)."""
    if column in ("trial", "epochs"):
        return 0
    if column == "seconds":
        return 2
    if column.startswith(PARAM):
        values = trials[column].dropna()
        if len(values) and (values % 1 == 0).all():
            return 0
        if isinstance(value, (int, float, np.number)) and math.isfinite(value) and value != 0:
            return max(4, 2 - math.floor(math.log10(abs(value))))
    return 4


def _cell(trials: pd.DataFrame, row: int, column: str):
    """A trials.csv value: a number cell naming its row and column, or text (state, error, a choice of words)."""
    value = trials[column].iloc[row]
    if column in TEXT_COLUMNS or not _numeric(trials[column]):
        return "" if pd.isna(value) else (Raw(f'<span style="white-space: normal">{escaped(value)}</span>')
                                          if column == "error" else str(value))
    return Num(value, TRIALS, [row, column], _decimals(trials, column, value))


def _shown_scores(trials: pd.DataFrame, score: str, history: list[dict]) -> np.ndarray:
    """The score drawn for each row: trials.csv's for a complete trial (its best epoch), the last value reported
    (history.jsonl) for a pruned one where it is there, none for a failed one."""
    last = {int(record["trial"]): record[score] for record in history if score in record}
    values = pd.to_numeric(trials[score], errors="coerce").to_numpy(dtype=float).copy()
    for index, (number, state) in enumerate(zip(trials["trial"], trials["state"])):
        if state == PRUNED and int(number) in last:
            values[index] = last[int(number)]
        elif state == FAIL:
            values[index] = math.nan
    return values


def _headline_section(trials: pd.DataFrame, score: str, best: int) -> Section:
    section = Section("best", "Best trial")
    rows = {int(number): index for index, number in enumerate(trials["trial"])}
    own, top = rows.get(0), rows.get(best)
    value = (lambda row: float(trials[score].iloc[row]) if row is not None else math.nan)
    metric = score.replace("_", " ", 1)
    if top is None:
        return section.add(note(f"metrics.json names trial {best} as the best, but {TRIALS} has no row for it."))
    if best == 0:
        text = f"Trial 0, the config's own settings, scored best: {metric} {value(top):.4f}; no drawn setting beat it."
    elif own is None or math.isnan(value(own)):
        text = f"Trial {best} scored {metric} {value(top):.4f}; trial 0 (the config's own settings) has no score to compare."
    else:
        gain = value(top) - value(own)
        share = f", {gain / value(own):+.1%}" if value(own) else ""
        text = (f"Trial {best} scored {metric} {value(top):.4f}, against {value(own):.4f} for trial 0, the config's own "
                f"settings ({gain:+.4f}{share}).")
    section.add(note(text))
    columns = [top] if own is None or own == top else [own, top]
    header = ["", *[f"trial {int(trials['trial'].iloc[row])} ("
                    + ", ".join(["the config's own"] * (row == own) + ["best"] * (row == top)) + ")" for row in columns]]
    names = ["state", score, "epochs", "seconds", *_params(trials)]
    body = [[name.removeprefix(PARAM), *[_cell(trials, row, name) for row in columns]] for name in names if name in trials]
    if len(columns) == 2:
        header.append("best - trial 0")
        gain = value(top) - value(own)
        for line, name in zip(body, [name for name in names if name in trials]):
            line.append(Derived(gain, {"derived": "gain-over-trial-0"}) if name == score and not math.isnan(gain) else "")
    section.add(table("headline", header, body))
    return section.add(f'<p class="note">Run the best settings with python -m pipeline run {BEST_CONFIG} '
                       f"({link(BEST_CONFIG, 'in this folder')}).</p>")


def _points(axis, x: np.ndarray, shown: np.ndarray, states: np.ndarray, best: np.ndarray) -> None:
    """Complete trials as points, pruned ones hollow, the best as a star (the same marks in every chart)."""
    done, pruned = states == COMPLETE, states == PRUNED
    axis.plot(x[done], shown[done], "o", ms=5, color=figures.color(0), label="complete", zorder=3)
    if pruned.any():
        axis.plot(x[pruned], shown[pruned], "o", ms=6, mfc="white", mec=figures.color(1), mew=1.4,
                  label="pruned (last value reported)", zorder=3)
    if best.any():
        axis.plot(x[best], shown[best], "*", ms=14, color=figures.color(2), label="best", zorder=4)


def _search_section(numbers: np.ndarray, states: np.ndarray, shown: np.ndarray, best: int, score: str) -> Section:
    order = np.argsort(numbers, kind="stable")
    numbers, states, shown = numbers[order], states[order], shown[order]
    with figures._style():
        chart, (axis,) = figures._axes(1, 3.0, top=0.55)
        running = np.fmax.accumulate(np.where(states == COMPLETE, shown, math.nan))
        axis.step(numbers, running, where="post", color=figures.color(2), linewidth=1.4, label="best so far", zorder=2)
        _points(axis, numbers, shown, states, numbers == best)
        failed = states == FAIL
        if failed.any():
            axis.plot(numbers[failed], np.full(failed.sum(), 0.04), "x", ms=7, mew=1.6, color=FAILED, clip_on=False,
                      transform=axis.get_xaxis_transform(), label="failed (no score)")
        axis.set_xlabel("trial")
        axis.set_ylabel(score.removeprefix("valid_"))
        axis.set_title(f"validation {score.removeprefix('valid_')} per trial")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.margins(x=0.03, y=0.12)
        figures._figure_legend(chart, axis)
        png = figures._png(chart)
    return Section("search", "Score per trial").add(figure(
        "trials", png, f"validation {score} per trial",
        f"Each trial's best validation {score.removeprefix('valid_')} (trials.csv); pruned trials, hollow, at the last "
        "value they reported before they were stopped (history.jsonl; the table shows their best); failed trials, a "
        "cross at the bottom; the line is the best complete trial so far."))


def _curves_section(history: list[dict], states: dict[int, str], best: int, score: str) -> Section:
    section = Section("curves", "Validation curves")
    per_trial: dict[int, list[dict]] = {}
    for record in history:
        per_trial.setdefault(int(record["trial"]), []).append(record)
    if not per_trial:
        return section.add(note(f"{HISTORY} holds no epochs (trials run before a resume are not in it)."))
    with figures._style():
        chart, (axis,) = figures._axes(1, 3.2, top=0.55)
        for number, records in sorted(per_trial.items()):
            epochs = [record["epoch"] for record in records]
            values = [record.get(score, math.nan) for record in records]
            state = states.get(number, COMPLETE)
            if number == best:
                style = {"color": figures.color(2), "linewidth": 2.4, "zorder": 4, "label": f"best (trial {number})"}
            elif state == PRUNED:
                style = {"color": figures.color(1), "linestyle": "--", "linewidth": 1.2, "label": "pruned"}
            elif state == FAIL:
                style = {"color": FAILED, "linestyle": ":", "linewidth": 1.2, "label": "failed"}
            elif number == 0:
                style = {"color": figures.color(5), "linewidth": 1.8, "zorder": 3, "label": "trial 0 (the config's own)"}
            else:
                style = {"color": figures.color(0), "linewidth": 1.0, "alpha": 0.6, "label": "complete"}
            axis.plot(epochs, values, marker="o", ms=2.5, **style)
            if state == PRUNED:
                axis.plot(epochs[-1:], values[-1:], "o", ms=6, mfc="white", mec=figures.color(1), mew=1.4, zorder=5)
            if len(per_trial) <= 12:
                axis.annotate(str(number), (epochs[-1], values[-1]), xytext=(5, 0), textcoords="offset points",
                              fontsize=7, va="center", color=style["color"])
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        chart.legend(list(unique.values()), list(unique), loc="upper center", ncols=len(unique), frameon=False)
        axis.set_xlabel("epoch")
        axis.set_title(f"validation {score.removeprefix('valid_')} per epoch, one line per trial (its number at the end)")
        axis.xaxis.get_major_locator().set_params(integer=True)
        png = figures._png(chart)
    unrun = sorted(number for number, state in states.items() if number not in per_trial and state == FAIL)
    missing = sorted(number for number, state in states.items() if number not in per_trial and state != FAIL)
    section.add(figure("curves", png, f"validation {score} per epoch of every trial",
                       "Every trial's validation score per epoch (history.jsonl); a pruned trial stops at the epoch it "
                       "fell below the median of earlier trials (hollow end)."))
    if unrun:
        section.add(note(f"No curve for failed trial{'s' * (len(unrun) > 1)} {', '.join(map(str, unrun))}: "
                         "no epoch reported (see the error in the trials table)."))
    if missing:
        section.add(note(f"No curve for trial{'s' * (len(missing) > 1)} {', '.join(map(str, missing))}: "
                         "run before the search was resumed."))
    return section


def _space_text(key: str, space: dict) -> str:
    spec = space.get(key) or {}
    if spec.get("choices") is not None:
        return f"{key}: one of {', '.join(map(str, spec['choices']))}"
    scale = "log scale" if spec.get("log") else (f"step {spec['step']}" if spec.get("step") else "linear")
    return f"{key}: {spec.get('low')} to {spec.get('high')} ({scale})" if spec else key


def _parameters_section(trials: pd.DataFrame, space: dict, states: np.ndarray, shown: np.ndarray, best: np.ndarray,
                        score: str) -> Section:
    section = Section("parameters", "Settings against the score")
    columns = _params(trials)
    numeric = [column for column in columns if _numeric(trials[column])]
    keys = [column.removeprefix(PARAM) for column in columns]
    section.add(note("Searched: " + "; ".join(_space_text(key, space) for key in (space or keys)) + "."))
    if not numeric:
        return section.add(note("No numeric setting was searched: the trials table has every choice."))
    across = min(len(numeric), PANELS_PER_ROW)
    down = math.ceil(len(numeric) / across)
    width, panel_height, gap, top, bottom = figures.WIDTH, 2.3, 0.8, 0.55, 0.5
    height = down * panel_height + (down - 1) * gap + top + bottom
    with figures._style():
        chart = Figure(figsize=(width, height))
        axes = chart.subplots(down, across, squeeze=False).ravel()
        panel = (width - 0.6 - 0.2 - 0.65 * (across - 1)) / across
        chart.subplots_adjust(left=0.6 / width, right=1 - 0.2 / width, bottom=bottom / height, top=1 - top / height,
                              wspace=0.65 / panel, hspace=gap / panel_height)
        for axis, column in zip(axes, numeric):
            key = column.removeprefix(PARAM)
            spec = space.get(key) or {}
            _points(axis, trials[column].to_numpy(dtype=float), shown, states, best)
            if spec.get("log"):
                axis.set_xscale("log")
                # 1, 2, 5 per decade written plainly (0.002, 0.005, 0.01): matplotlib's 2x10^-3 labels collide
                axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
                axis.xaxis.set_minor_formatter(NullFormatter())
            if spec.get("choices") is not None:
                axis.set_xticks([float(choice) for choice in spec["choices"]], [str(choice) for choice in spec["choices"]])
            axis.set_title(key + (" (log scale)" if spec.get("log") else ""))
            axis.set_ylabel(score.removeprefix("valid_"))
            axis.margins(x=0.08, y=0.15)
        for axis in axes[len(numeric):]:
            axis.set_visible(False)
        figures._figure_legend(chart, axes[0])
        png = figures._png(chart)
    skipped = [column.removeprefix(PARAM) for column in columns if column not in numeric]
    section.add(figure("parameters", png, "each searched setting against the validation score",
                       f"One panel per numeric setting: its value in each trial against the trial's validation "
                       f"{score.removeprefix('valid_')} (as in the chart above; failed trials have no score)."))
    if skipped:
        section.add(note(f"Not drawn (choices of words): {', '.join(skipped)}; see the trials table."))
    return section


def _trials_section(trials: pd.DataFrame, best: np.ndarray) -> Section:
    rows = [[_cell(trials, row, column) for column in trials.columns] for row in range(len(trials))]
    return Section("trials-table", "Trials").add(
        note(f"Every row and column of {TRIALS}; the best trial highlighted. A pruned trial's score is its best epoch "
             "before it was stopped."),
        table("trials", list(trials.columns), rows, ["best" if flag else "" for flag in best]))
