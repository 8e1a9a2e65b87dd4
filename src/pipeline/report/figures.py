"""The report's charts as PNG bytes, drawn with matplotlib's Agg canvas.

Figures are built as `matplotlib.figure.Figure` on a `FigureCanvasAgg`, never through pyplot: nothing global
changes (a notebook keeps its own backend and open figures), and no display is needed. Style settings apply inside
`_style()` only.
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PALETTE = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#718096", "#b7791f", "#319795", "#c53030", "#2c5282"]
PROMOTED, KEPT = "#2f855a", "#c05621"
RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.color": "#e2e8f0", "grid.linewidth": 0.8, "axes.axisbelow": True, "figure.dpi": 100, "savefig.dpi": 100,
}
WIDTH = 10.6  # inches at 100 dpi: the page's content width


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


@contextmanager
def _style():
    with matplotlib.rc_context(RC):
        yield


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _figure_legend(figure: Figure, axis) -> None:
    """One legend for every panel, above them (in the top margin `_axes` leaves), so no curve hides behind it."""
    handles, labels = axis.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(handles), 6), frameon=False)


def _axes(columns: int, height: float = 3.0, *, left: float = 0.6, right: float = 0.2, bottom: float = 0.5,
          top: float = 0.35, gap: float = 0.65, width: float = WIDTH):
    """A row of `columns` panels with margins and gaps in inches. Fixed margins, not a layout engine: constrained or
    tight layout (and a tight bounding box) measure every text before drawing, which tripled the cost of a chart,
    and every run pays for its report."""
    figure = Figure(figsize=(width, height))
    axes = list(figure.subplots(1, columns, squeeze=False)[0])
    panel = (width - left - right - gap * (columns - 1)) / columns
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                           wspace=gap / panel)
    return figure, axes


def training_curves(histories: dict[str, list[dict]], loss_keys: list[str], metric_keys: list[str],
                    kept: dict[str, int | None], colors: dict[str, str] | None = None) -> bytes:
    """One panel per loss part, then one for the validation metrics, per epoch; the kept epoch of each model is a
    dashed line (one model) or a star on its validation curve (several). `colors`: each model's, as elsewhere on
    the page."""
    single = len(histories) == 1
    shade = {label: (colors or {}).get(label, color(index)) for index, label in enumerate(histories)}
    panels = [*loss_keys, "valid"]
    with _style():
        figure, axes = _axes(len(panels), 3.1 if not single else 2.8, top=0.35 if single else 0.65)
        for label, records in histories.items():
            epochs = [record["epoch"] for record in records]
            for axis, key in zip(axes, loss_keys):
                axis.plot(epochs, [record.get(key, math.nan) for record in records], marker="o", ms=3, color=shade[label], label=label)
            valid_axis = axes[-1]
            for position, key in enumerate(metric_keys if single else metric_keys[:1]):
                values = [record.get(key, math.nan) for record in records]
                valid_axis.plot(epochs, values, marker="o", ms=3, color=color(position) if single else shade[label],
                                label=key.removeprefix("valid_") if single else label)
                if kept.get(label) is not None and not single and position == 0:
                    best = epochs.index(kept[label])
                    valid_axis.plot([kept[label]], [values[best]], marker="*", ms=12, color=shade[label], zorder=5)
            if single and kept.get(label) is not None:
                for axis in axes:
                    axis.axvline(kept[label], color="#c53030", linestyle="--", linewidth=1, label=f"kept epoch {kept[label]}")
        for axis, key in zip(axes, panels):
            axis.set_xlabel("epoch")
            axis.set_title(key.removeprefix("loss_") + " loss" if key != "valid" else
                           ("validation " + metric_keys[0].removeprefix("valid_") if not single else "validation metrics"))
            axis.xaxis.get_major_locator().set_params(integer=True)
        axes[-1].set_ylim(bottom=0)  # a validation metric is a share: its floor is 0, not the lowest epoch's
        if single:
            axes[-1].legend(loc="lower right")  # validation metrics mostly rise: the lower right stays free
        else:
            _figure_legend(figure, axes[0])
        return _png(figure)


def metrics_at_k(metrics: dict[str, dict], families: list[str], ks: list[int]) -> bytes:
    """Small multiples: each ranking metric against K, one line per model."""
    with _style():
        figure, axes = _axes(len(families), 2.9, top=0.65)
        for index, (label, values) in enumerate(metrics.items()):
            for axis, family in zip(axes, families):
                axis.plot(ks, [values.get(f"{family}@{k}", math.nan) for k in ks], marker="o", ms=4, color=color(index), label=label)
        for axis, family in zip(axes, families):
            axis.set_ylim(bottom=0)
            axis.set_title(family)
            axis.set_xlabel("K")
            axis.set_xticks(ks)
        _figure_legend(figure, axes[0])
        return _png(figure)


def grouped_bars(labels: list[str], groups: dict[str, list[float]], title: str, ylabel: str = "",
                 horizontal: bool = False) -> bytes:
    """Bars for each of `labels` (models), one bar per group (K, split, ...), values written on the bars."""
    with _style():
        longest = max(map(len, labels), default=0)
        if horizontal:
            height = max(2.6, 0.3 * len(labels) * max(len(groups), 1) + 0.9)
            figure, (axis,) = _axes(1, height, left=0.3 + 0.065 * longest, bottom=0.5)
        else:
            figure, (axis,) = _axes(1, 3.0, bottom=0.75 if longest > 14 else 0.4)
        width = 0.8 / max(len(groups), 1)
        positions = np.arange(len(labels))
        for index, (group, values) in enumerate(groups.items()):
            offset = positions - 0.4 + width * (index + 0.5)
            values = np.asarray(values, dtype=float)
            bars = (axis.barh(offset, values, height=width, color=color(index), label=group) if horizontal
                    else axis.bar(offset, values, width=width, color=color(index), label=group))
            if len(labels) * len(groups) <= 18:  # beyond, labels collide; the table beside the chart has the numbers
                axis.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.4f}" for v in values], fontsize=7, padding=2)
        if horizontal:
            axis.set_yticks(positions, labels)
            axis.invert_yaxis()  # the leaderboard's first row on top
            axis.set_xlabel(ylabel)
            axis.margins(x=0.15)
            axis.set_xlim(left=0)
        else:
            axis.set_xticks(positions, labels, rotation=15 if longest > 14 else 0)
            axis.set_ylabel(ylabel)
            axis.margins(y=0.15)
            axis.set_ylim(bottom=0)
        axis.set_title(title)
        if len(groups) > 1:
            axis.legend(loc="best")
        return _png(figure)


def popularity_bias(log_share: np.ndarray, slot_share: np.ndarray) -> bytes:
    """Share of the recommended slots per item-popularity decile, against the share of training events."""
    with _style():
        figure, (axis,) = _axes(1, 3.0)
        positions = np.arange(1, len(log_share) + 1)
        axis.bar(positions - 0.2, log_share, width=0.4, color=color(5), label="training events (the log)")
        axis.bar(positions + 0.2, slot_share, width=0.4, color=color(0), label="recommended slots (the lists)")
        axis.set_xticks(positions, [f"D{int(p)}" for p in positions])
        axis.set_xlabel("item popularity decile (D1: the 10% of items with the most training events)")
        axis.set_ylabel("share")
        axis.set_title("popularity bias")
        axis.legend(loc="best")
        return _png(figure)


def _night_axis(axis, dates: list[str]) -> None:
    """Nights at positions 0..n-1, labelled by date and time, at most about 14 labels."""
    step = max(1, math.ceil(len(dates) / 14))
    ticks = list(range(0, len(dates), step))
    axis.set_xticks(ticks, [dates[i] for i in ticks], rotation=30, ha="right")
    axis.set_xlim(-0.5, max(len(dates) - 0.5, 0.5))


def nightly_trend(dates: list[str], champion: list[float], challenger: list[float], status: list[str], metric: str) -> bytes:
    """Gate metric of champion and challenger per night; the decision as the challenger's marker; failed nights shaded."""
    with _style():
        figure, (axis,) = _axes(1, 3.4, bottom=0.85)
        x = np.arange(len(dates))
        axis.plot(x, champion, color=color(5), marker="s", ms=4, label="champion")
        axis.plot(x, challenger, color=color(0), marker="o", ms=3, label="challenger")
        for wanted, marker, shade, label in (("promoted", "^", PROMOTED, "promoted"), ("kept_champion", "v", KEPT, "champion kept")):
            picked = [i for i, value in enumerate(status) if value == wanted]
            if picked:
                axis.scatter(x[picked], np.asarray(challenger, dtype=float)[picked], marker=marker, s=60, color=shade, zorder=5, label=label)
        failed = [i for i, value in enumerate(status) if value in ("failed", "bad_input")]
        for i in failed:
            axis.axvspan(i - 0.4, i + 0.4, color="#fed7d7", zorder=0)
        if failed:
            axis.plot([], [], color="#fed7d7", linewidth=8, label="failed night")
        _night_axis(axis, dates)
        axis.set_ylabel(f"gate {metric}")
        axis.set_title(f"champion vs challenger on the gate window ({metric})")
        axis.legend(loc="best")
        return _png(figure)


def nightly_work(dates: list[str], encoded: list[float], cached: list[float], train_seconds: list[float]) -> bytes:
    """Texts encoded and taken from the cache (bars), training seconds (line, right axis), per night."""
    with _style():
        figure, (axis,) = _axes(1, 3.2, bottom=0.85, right=0.7)
        x = np.arange(len(dates))
        encoded, cached = np.nan_to_num(np.asarray(encoded, float)), np.nan_to_num(np.asarray(cached, float))
        axis.bar(x, encoded, color=color(1), label="texts encoded")
        axis.bar(x, cached, bottom=encoded, color="#cbd5e0", label="texts from the cache")
        axis.set_ylabel("item texts")
        axis.set_ylim(0, max(float((encoded + cached).max(initial=0)) * 1.35, 1.0))  # headroom for the legend
        seconds = axis.twinx()
        seconds.plot(x, train_seconds, color=color(0), marker="o", ms=3, label="train seconds")
        seconds.set_ylabel("train seconds")
        seconds.grid(False)
        seconds.spines["right"].set_visible(True)
        seconds.set_ylim(0, max(np.nanmax(np.asarray(train_seconds, float), initial=0) * 1.35, 1.0) if len(dates) else 1.0)
        _night_axis(axis, dates)
        handles = axis.get_legend_handles_labels()
        extra = seconds.get_legend_handles_labels()
        axis.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper left")
        axis.set_title("work per night")
        return _png(figure)


def served_feedback(dates: list[str], served: list[float], floor: list[float], coverage: list[float]) -> bytes:
    """The lists served the night before: hit rate against the popularity floor's lists, and their coverage."""
    with _style():
        figure, axes = _axes(2, 3.2, bottom=0.85)
        x = np.arange(len(dates))
        axes[0].plot(x, served, color=color(0), marker="o", ms=4, label="served lists")
        axes[0].plot(x, floor, color=color(5), marker="s", ms=4, linestyle="--", label="popularity floor's lists")
        axes[0].set_title("served hit rate (lists of the night before, on the events since)")
        axes[0].legend(loc="best")
        axes[1].plot(x, coverage, color=color(2), marker="o", ms=4)
        axes[1].set_title("served coverage (share of the catalogue in some list)")
        for axis in axes:
            _night_axis(axis, dates)
            axis.set_ylim(bottom=0)
        return _png(figure)


def interest_drift(nights: list[str], shares: dict[str, list[float]], changed: list[float], drift: list[float]) -> bytes:
    """Mean category shares per night (stacked) and, per night, users whose top category changed and mean drift."""
    with _style():
        # The gap holds the left panel's legend (beside it) and the right panel's axis label.
        figure, axes = _axes(2, 3.4, bottom=0.85, right=0.7, gap=2.0)
        x = np.arange(len(nights))
        if shares:
            stack = np.nan_to_num(np.array(list(shares.values()), dtype=float))
            axes[0].stackplot(x, stack, labels=list(shares), colors=[color(i) for i in range(len(shares))], alpha=0.85)
            axes[0].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
            axes[0].set_ylim(0, 1)
        axes[0].set_title("interest: mean category share over users")
        changed = np.nan_to_num(np.asarray(changed, float))
        axes[1].bar(x, changed, color=color(3), label="users whose top category changed")
        axes[1].set_ylabel("users")
        axes[1].set_ylim(0, max(float(changed.max(initial=0)) * 1.4, 1.0))  # headroom for the legend
        right = axes[1].twinx()
        right.plot(x, drift, color=color(1), marker="o", ms=4, label="mean drift (total variation)")
        right.set_ylabel("mean drift")
        right.grid(False)
        right.spines["right"].set_visible(True)
        top = np.nanmax(np.asarray(drift, float), initial=0) if not np.isnan(np.asarray(drift, float)).all() else 0
        right.set_ylim(0, max(float(top) * 1.4, 0.01))
        handles, extra = axes[1].get_legend_handles_labels(), right.get_legend_handles_labels()
        axes[1].legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper left")
        axes[1].set_title("drift since the night before")
        for axis in axes:
            _night_axis(axis, nights)
        return _png(figure)
