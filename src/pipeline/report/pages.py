"""The run and comparison pages: the sections built from metrics.json, history.jsonl, leaderboard.csv and, for a
folder with a model, its lists' popularity bias."""

from __future__ import annotations

from pathlib import Path

from pipeline.data import TEST
from pipeline.report import figures
from pipeline.report.html import Derived, Num, Section, details, escaped, figure, heading, note, page, table
from pipeline.report.sources import (
    COLD_PREFIX,
    LINE,
    RANKING_FAMILIES,
    has_cold,
    histories_by_model,
    kept_epoch,
    ks_of,
    popularity_deciles,
    published_name,
    read_history_table,
    read_json,
    read_jsonl,
    selection_metric,
)

METRICS, LEADERBOARD = "metrics.json", "leaderboard.csv"
# The category and rating metrics (one value per model, no K), in the order evaluation.py reports them.
# The name of the popularity-bias section, figure, table and derived cells (a model's name may not be written here).
POPULARITY_BIAS = "popularity-bias"
SCALAR_METRICS = ("accuracy", "precision", "recall", "f1", "mae", "rmse", "users")


def decimals_for(name: str) -> int:
    """Counts are whole, seconds to the hundredth, everything else (metrics, shares) to 4 decimals."""
    if name == "users" or name.endswith("_users"):
        return 0
    return 2 if "seconds" in name else 4


def _metric(splits: dict, split: str, label: str, name: str):
    """The cell of one stored metric, or an empty cell where that model has no such metric."""
    if name not in splits[split].get(label, {}):
        return ""
    return Num(splits[split][label][name], METRICS, ["splits", split, label, name], decimals_for(name))


def _ordered_splits(splits: dict) -> list[str]:
    return [TEST, *[split for split in splits if split != TEST]] if TEST in splits else list(splits)


def run_page(folder: Path) -> str:
    """The page of a run folder (or a night's, which is a run folder with a decision and a summary)."""
    metrics = read_json(folder, METRICS)
    splits, protocol = metrics["splits"], metrics.get("protocol", {})
    models = list(splits[_ordered_splits(splits)[0]])
    selection = selection_metric(protocol)
    night = (folder / "summary.json").is_file()
    title = f"{'Night' if night else 'Run'} {published_name(folder)}"
    compared = (f"Tonight's {models[0]} beside {', '.join(models[1:]) or 'no champion (first night)'}, on the same events."
                if night else f"Model: {models[0]}; floors beside it: {', '.join(models[1:]) or 'none'}.")
    subtitle = [escaped(compared), escaped(_protocol_line(protocol))]
    floor = metrics.get("strongest_floor") or {}
    if floor.get("model"):
        ratio = floor.get("model_over_floor")
        subtitle.append(escaped(f"Strongest floor: {floor['model']} ({floor.get('metric')} {floor.get('value', 0):.4f}); "
                                f"{models[0]} / floor = {'n/a' if ratio is None else f'{ratio:.4f}'}."))
    sections = []
    if "decision" in metrics:
        sections.append(_decision_section(metrics["decision"]))
    histories = histories_by_model(read_jsonl(folder / "history.jsonl"), models[0])
    sections.append(_training_section(histories, selection, models))
    sections.extend(_metric_sections(splits, protocol))
    deciles = popularity_deciles(folder)
    if deciles is not None:
        sections.append(_popularity_section(deciles, night))
    sections.append(_protocol_section(protocol))
    return page(title, subtitle, sections, "run")


def compare_page(folder: Path) -> str:
    """The page of a comparison folder: the leaderboard first."""
    metrics = read_json(folder, METRICS)
    splits, protocol = metrics["splits"], metrics.get("protocol", {})
    board = read_history_table(folder / LEADERBOARD)
    selection = selection_metric(protocol)
    title = f"Comparison {published_name(folder)}"
    subtitle = [escaped(f"{len(board)} models ranked by test {selection}."), escaped(_protocol_line(protocol))]
    sections = [_leaderboard_section(board, selection)]
    histories = histories_by_model(read_jsonl(folder / "history.jsonl"), "model")
    sections.append(_training_section(histories, selection, list(splits[_ordered_splits(splits)[0]])))
    sections.extend(_metric_sections(splits, protocol))
    if metrics.get("fusion_weights"):
        sections.append(_fusion_section(metrics["fusion_weights"]))
    sections.append(_protocol_section(protocol))
    return page(title, subtitle, sections, "compare")


def _protocol_line(protocol: dict) -> str:
    users = protocol.get("users_evaluated", {})
    return (f"Split {protocol.get('split')}, {protocol.get('n_items')} items, users evaluated "
            f"{', '.join(f'{split} {count}' for split, count in users.items())}; seen items excluded: "
            f"{protocol.get('exclude_seen')}; epochs selected by {protocol.get('model_selection')}.")


def _training_section(histories: dict[str, list[dict]], selection: str, models: list[str]) -> Section:
    section = Section("training", "Training curves")
    key = f"valid_{selection}"
    trained = {label: records for label, records in histories.items() if records}
    if not trained:
        return section.add(note("No training epochs: the models here have no gradient training (counts, neighbours, "
                                "classifiers), so there are no curves."))
    records = [record for values in trained.values() for record in values]
    losses = sorted({name for record in records for name in record if name.startswith("loss_")},
                    key=lambda name: (name != "loss_item", name))
    metric_keys = [key, *sorted({name for record in records for name in record if name.startswith("valid_") and name != key})]
    single = len(trained) == 1
    if not single:
        losses = losses[:1]  # several models: the item loss each, beside the selection metric each
    kept = {label: kept_epoch(values, key) for label, values in trained.items()}
    colors = {label: figures.color(index) for index, label in enumerate(models)}  # as in the metric charts
    png = figures.training_curves(trained, losses, metric_keys, kept, colors)
    marked = "the dashed line marks the kept epoch" if single else "a star marks each model's kept epoch"
    section.add(figure("training", png, "loss and validation metric per epoch",
                       f"Loss per epoch and validation {selection} per epoch; {marked} (the best validation "
                       f"{selection}, whose weights were restored)."))
    rows = []
    for label, values in trained.items():
        best = next((record for record in values if record.get("epoch") == kept[label] and key in record), None)
        cells = ["", ""] if best is None else [Num(best["epoch"], "history.jsonl", [best[LINE], "epoch"], 0),
                                               Num(best[key], "history.jsonl", [best[LINE], key])]
        rows.append([label, Derived(len(values), {"derived": "epochs-run", "model": label}, 0), *cells])
    return section.add(table("kept-epochs", ["model", "epochs run", "kept epoch", f"valid {selection} at kept epoch"], rows))


def _metric_sections(splits: dict, protocol: dict) -> list[Section]:
    ordered = _ordered_splits(splits)
    first = ordered[0]
    ks = ks_of({name for values in splits[first].values() for name in values})
    families = [family for family in RANKING_FAMILIES if any(f"{family}@{k}" in values for values in splits[first].values() for k in ks)]
    at_k = Section("metrics", "Metrics at every K")
    if families:
        at_k.add(figure("metrics-at-k", figures.metrics_at_k(splits[first], families, ks), "ranking metrics against K",
                        f"{first.capitalize()} split: every ranking metric at each K, one line per model."))
    for split in ordered:
        names = [f"{family}@{k}" for family in families for k in ks]
        block = table(f"at-k-{split}", ["model", *[f"@{k}" for _ in families for k in ks]],
                      [[label, *[_metric(splits, split, label, name) for name in names]] for label in splits[split]],
                      groups=[("", 1), *[(family, len(ks)) for family in families]])
        scalars = [name for name in SCALAR_METRICS if any(name in values for values in splits[split].values())]
        other = table(f"scalar-{split}", ["model", *scalars], [[label, *[_metric(splits, split, label, name) for name in scalars]]
                                                               for label in splits[split]])
        parts = [heading(f"{split} split"), block, heading(f"{split}: interest category and rating (one value per model)"), other]
        if split == first:
            at_k.add(*parts)
        else:  # the other splits folded: the test split is what a reader compares
            at_k.add(details(f"{split} split", *parts[1:]))
    sections = [at_k, _coverage_section(splits, first, ks, protocol)]
    if has_cold(splits[first]):
        sections.append(_cold_section(splits, first, ks, protocol))
    return sections


def _coverage_section(splits: dict, split: str, ks: list[int], protocol: dict) -> Section:
    section = Section("coverage", "Coverage")
    names = [f"coverage@{k}" for k in ks] + ["coverage"]
    labels = list(splits[split])
    groups = {name: [splits[split][label].get(name, float("nan")) for label in labels] for name in names}
    section.add(figure("coverage", figures.grouped_bars(labels, groups, "catalogue coverage", "share of items"),
                       "catalogue coverage per model",
                       f"Distinct items across all {split} users' top-K lists over the catalogue ({protocol.get('n_items')} "
                       "items); `coverage` is at output.top_k, the length of the lists written."))
    return section.add(table(f"coverage-{split}", ["model", *names], [[label, *[_metric(splits, split, label, name) for name in names]]
                                                                      for label in labels]))


def _cold_section(splits: dict, split: str, ks: list[int], protocol: dict) -> Section:
    section = Section("cold-start", "Cold start")
    labels = list(splits[split])
    k = max(ks)
    groups = {}
    for family in ("hit_rate", "ndcg"):
        groups[f"{family}@{k} all users"] = [splits[split][label].get(f"{family}@{k}", float("nan")) for label in labels]
        groups[f"{family}@{k} cold users"] = [splits[split][label].get(f"{COLD_PREFIX}{family}@{k}", float("nan")) for label in labels]
    cold_users = next((values.get("cold_users") for values in splits[split].values() if "cold_users" in values), None)
    section.add(figure("cold-start", figures.grouped_bars(labels, groups, f"all users vs users whose test item is cold (@{k})"),
                       "cold-start metrics per model",
                       f"{protocol.get('cold_items')} items held out of training and validation (data.cold_item_fraction); "
                       f"{cold_users} test users have a cold item as their target."))
    names = [f"{COLD_PREFIX}{family}@{k}" for family in RANKING_FAMILIES for k in ks] + ["cold_users"]
    present = [name for name in names if any(name in values for values in splits[split].values())]
    return section.add(table(f"cold-{split}", ["model", *present], [[label, *[_metric(splits, split, label, name) for name in present]]
                                                                    for label in labels]))


def _popularity_section(deciles, night: bool) -> Section:
    section = Section(POPULARITY_BIAS, "Popularity bias")
    lists = "tomorrow's lists (every user, by the model that serves)" if night else "the lists written (recommendations.parquet)"
    section.add(figure(POPULARITY_BIAS, figures.popularity_bias(deciles.log_share, deciles.slot_share),
                       "share of recommended slots per item-popularity decile",
                       f"Items in ten groups of equal size by training events (D1: most). Grey: where the log's training "
                       f"events fall; blue: where the {deciles.slots} slots of {lists} fall, {deciles.listed_items} distinct "
                       f"items of {deciles.n_items}. Blue above grey in D1: the lists lean to popular items more than the "
                       "log does."))
    def derived(index: int, quantity: str, decimals: int = 4) -> Derived:
        value = getattr(deciles, quantity)[index]
        return Derived(value, {"derived": POPULARITY_BIAS, "decile": index + 1, "quantity": quantity}, decimals)

    rows = [[f"D{index + 1}", derived(index, "items", 0), derived(index, "log_share"), derived(index, "slot_share")]
            for index in range(len(deciles.items))]
    section.add(table(POPULARITY_BIAS, ["decile", "items", "share of training events", "share of recommended slots"], rows))
    return section.add(note("Computed for this page from recommendations.parquet, the training counts saved in "
                            "model.safetensors and catalog.json."))


def _decision_section(decision: dict) -> Section:
    section = Section("decision", "Decision")
    section.add(note(decision.get("message", "")))
    metric = decision.get("metric")
    rows = [[f"{decision.get('window', 'gate')} (decides)", Num(decision.get("champion"), METRICS, ["decision", "champion"]),
             Num(decision.get("challenger"), METRICS, ["decision", "challenger"])],
            ["test (reported)", Num(decision.get("champion_test"), METRICS, ["decision", "champion_test"]),
             Num(decision.get("challenger_test"), METRICS, ["decision", "challenger_test"])]]
    section.add(table("decision", ["window", f"champion {metric}", f"challenger {metric}"], rows))
    return section.add(note(f"Tolerance {decision.get('tolerance')}: promoted when challenger >= champion x (1 - tolerance)."))


def _leaderboard_section(board, selection: str) -> Section:
    section = Section("leaderboard", "Leaderboard")
    if board.empty:
        return section.add(note("leaderboard.csv holds no rows."))
    labels = [str(label) for label in board["model"]]
    groups = {f"valid {selection}": list(board.get(f"valid_{selection}", [float("nan")] * len(board))),
              f"test {selection}": list(board[f"test_{selection}"])}
    section.add(figure("leaderboard", figures.grouped_bars(labels, groups, f"{selection} per model (leaderboard order)", selection,
                                                           horizontal=True),
                       f"{selection} per model", f"Validation and test {selection} of every model, in leaderboard order "
                       f"(test {selection}, best first)."))
    headline = ["model", f"valid_{selection}", *[name for name in board.columns if name.startswith(("test_hit_rate@", "test_ndcg@"))
                                                  and not name.endswith(("_seen_kept", "_seen_excluded"))],
                "test_coverage", "train_seconds", *[name for name in board.columns if name.endswith(("_seen_kept", "_seen_excluded"))]]
    headline = [name for name in headline if name in board.columns]
    section.add(_board_table("leaderboard", board, headline, best=0))
    return section.add(details("every column of leaderboard.csv", _board_table("leaderboard-full", board, list(board.columns), best=0)))


def _board_table(name: str, board, columns: list[str], best: int) -> str:
    rows = [[board.iloc[row][column] if column == "model" else Num(board.iloc[row][column], LEADERBOARD, [row, column], decimals_for(column))
             for column in columns] for row in range(len(board))]
    return table(name, columns, rows, ["best" if row == best else "" for row in range(len(board))])


def _fusion_section(weights: dict) -> Section:
    section = Section("fusion", "Fusion weights")
    rows = [[blend, member, Num(value, METRICS, ["fusion_weights", blend, member])]
            for blend, members in weights.items() for member, value in members.items()]
    return section.add(note("Each blend's weights, fitted on the validation split."), table("fusion", ["blend", "member", "weight"], rows))


def _protocol_section(protocol: dict) -> Section:
    section = Section("protocol", "Protocol")
    rows = []
    for key, value in protocol.items():
        if isinstance(value, dict):
            rows.extend([f"{key}.{inner}", _protocol_value(item, [key, inner])] for inner, item in value.items())
        else:
            rows.append([key, _protocol_value(value, [key])])
    return section.add(table("protocol", ["key", "value"], rows))


def _protocol_value(value, path: list):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ", ".join(map(str, value)) if isinstance(value, list) else value
    return Num(value, METRICS, ["protocol", *path], 0 if isinstance(value, int) else 4)
