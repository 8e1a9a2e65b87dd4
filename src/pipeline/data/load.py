"""Read behavior logs and the item table from CSV, Parquet or JSONL into canonical columns.

Canonical interactions: `user`, `item`, `timestamp` (int64 unix seconds), optional `rating` (float), `event` (str),
`value` (float), in file order. Canonical items: `item`, `text` (the encoder input), `categories` (list of str),
`recommendable` (bool), and the configured side features (numeric columns as float with NaN for missing,
categorical ones as str or None).
Every problem is raised as a `PipelineInputError` that names the file and the row (1-based data row, header excluded).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config_data import DataConfig, InteractionsConfig, ItemsConfig, TagsConfig, candidate_filter
from pipeline.errors import PipelineInputError, shorten

log = logging.getLogger("pipeline")

# Item texts are cut here: far beyond what any encoder reads (encoder.max_length tokens), and it keeps tokenizing a
# pathological 1 MB description cheap.
MAX_TEXT_CHARACTERS = 5_000
# Earliest and latest plausible event times: anything outside is a unit mix-up (milliseconds) or garbage.
MIN_TIMESTAMP = 0
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01


@dataclass
class RawData:
    interactions: pd.DataFrame
    items: pd.DataFrame
    source_files: list[Path] = field(default_factory=list)


def load_data(config: DataConfig) -> RawData:
    """Read the interactions, items and tags files of `config` (CSV, JSONL or Parquet) into canonical frames, each
    value checked: a bad value is a `PipelineInputError` naming the file, row and column. Prepare them with
    `prepare`."""
    items = load_items(config.items, config.tags)
    interactions = load_interactions(config.interactions, config.rating_range)
    files = [Path(config.interactions.path), Path(config.items.path)]
    if config.tags is not None:
        files.append(Path(config.tags.path))
    return RawData(interactions=interactions, items=items, source_files=files)


def read_table(path: str | Path, file_format: str = "auto", columns: list[str] | None = None) -> pd.DataFrame:
    """Read a table, keeping only `columns`; errors name the file (and the line, where the parser knows it)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(f"{path}: file not found")
    if file_format == "auto":
        file_format = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
            path.suffix.lower(), "csv"
        )
    if path.stat().st_size == 0:
        raise PipelineInputError(f"{path}: file is empty")
    try:
        if file_format == "parquet":
            frame = pd.read_parquet(path)
        elif file_format == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            # Strings stay strings (ids like "007" must not become 7); numbers are parsed per column below.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PipelineInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except pd.errors.ParserError as err:
        raise PipelineInputError(f"{path}: malformed CSV: {str(err).strip()}") from None
    except ValueError as err:
        raise PipelineInputError(f"{path}: cannot read as {file_format}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # pyarrow and json raise their own types for corrupt files
        raise PipelineInputError(f"{path}: cannot read as {file_format}: {type(err).__name__}: {err}") from None
    if columns is not None:
        require_columns([str(c) for c in frame.columns], columns, path)
        frame = frame[columns]
    if frame.empty:
        raise PipelineInputError(f"{path}: no data rows")
    return frame.reset_index(drop=True)


def require_columns(available: list[str], columns: list[str], path: Path) -> None:
    for column in columns:
        if column not in available:
            by_lower = {name.lower(): name for name in available}
            close = difflib.get_close_matches(column.lower(), list(by_lower), n=1, cutoff=0.5)
            hint = f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
            raise PipelineInputError(f"{path}: missing column {column!r}{hint}; columns are {shorten(available, 300)}")


def _row(index: int) -> int:
    return int(index) + 1


def _reject_non_scalars(values: pd.Series, path: Path, column: str, what: str, booleans: bool = False) -> None:
    """JSONL and Parquet cells can hold lists, objects or booleans where a plain value belongs: name the first row."""
    if values.dtype == bool and not booleans:
        raise PipelineInputError(f"{path}: row 1: {column!r} value {bool(values.iloc[0])} is a boolean, not {what}")
    if values.dtype != object:
        return
    kinds = {list: "a list", tuple: "a list", set: "a list", np.ndarray: "a list", dict: "an object"}
    if not booleans:
        kinds.update({bool: "a boolean", np.bool_: "a boolean"})
    bad = values.map(lambda value: isinstance(value, tuple(kinds))).to_numpy(dtype=bool)
    if bad.any():
        index = int(np.argmax(bad))
        value = values.iloc[index]
        kind = next(name for kind, name in kinds.items() if isinstance(value, kind))
        shown = bool(value) if kind == "a boolean" else shorten(value)
        raise PipelineInputError(f"{path}: row {_row(index)}: {column!r} value {shown} is {kind}, not {what}")


def clean_ids(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Ids as strings with surrounding space removed; missing or empty ids are an error naming the row."""
    _reject_non_scalars(values, path, column, "an id (text or a number)")
    text = values.astype("string").str.strip()
    bad = text.isna() | (text == "")
    if bad.any():
        raise PipelineInputError(f"{path}: row {_row(bad.idxmax())}: empty {column!r}")
    return text.astype(object)


def parse_timestamps(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """Unix seconds (int or float), ISO-8601 strings or a native datetime column (naive = UTC) -> int64 unix
    seconds, range-checked."""
    _reject_non_scalars(values, path, column, "a time")
    missing = values.isna().to_numpy()
    if missing.any():
        raise PipelineInputError(f"{path}: row {_row(int(np.argmax(missing)))}: empty {column!r}")
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values.dtype):
        seconds = _epoch_seconds(values if isinstance(values.dtype, pd.DatetimeTZDtype) else values.dt.tz_localize("UTC"))
    else:
        numeric = pd.to_numeric(values, errors="coerce")
        seconds = numeric.to_numpy(dtype=np.float64, copy=True)
        textual = numeric.isna().to_numpy()
        if textual.any():
            parsed = pd.to_datetime(values[textual].astype("string"), utc=True, errors="coerce", format="ISO8601")
            bad = parsed.isna()
            if bad.any():
                index = bad.idxmax()
                raise PipelineInputError(
                    f"{path}: row {_row(index)}: cannot parse {column!r} value {shorten(values.loc[index])} "
                    "as unix seconds or ISO-8601"
                )
            seconds[textual] = _epoch_seconds(parsed)
    out_of_range = (seconds < MIN_TIMESTAMP) | (seconds > MAX_TIMESTAMP) | ~np.isfinite(seconds)
    if out_of_range.any():
        index = int(np.argmax(out_of_range))
        raise PipelineInputError(
            f"{path}: row {_row(index)}: {column!r} value {shorten(str(values.iloc[index]))} is outside 1970..2100 "
            "(timestamps must be unix seconds or ISO-8601)"
        )
    return np.floor(seconds).astype(np.int64)


def _epoch_seconds(times: pd.Series) -> np.ndarray:
    """Seconds since 1970 of timezone-aware times, in whatever unit pandas holds them (year 3000 fits in seconds,
    not in nanoseconds)."""
    naive = times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    return naive.astype("datetime64[s]").astype(np.int64).astype(np.float64)


def load_interactions(config: InteractionsConfig, rating_range: tuple[float, float] | None = None) -> pd.DataFrame:
    path = Path(config.path)
    mapping = config.columns
    wanted = {"user": mapping.user, "item": mapping.item, "timestamp": mapping.timestamp}
    if mapping.rating:
        wanted["rating"] = mapping.rating
    if mapping.event:
        wanted["event"] = mapping.event
    if mapping.value:
        wanted["value"] = mapping.value
    frame = read_table(path, config.format, list(dict.fromkeys(wanted.values())))
    out = pd.DataFrame(
        {
            "user": clean_ids(frame[mapping.user], path, mapping.user),
            "item": clean_ids(frame[mapping.item], path, mapping.item),
            "timestamp": parse_timestamps(frame[mapping.timestamp], path, mapping.timestamp),
        }
    )
    if mapping.rating:
        out["rating"] = _parse_ratings(frame[mapping.rating], path, mapping.rating, rating_range)
    if mapping.value:
        out["value"] = parse_numbers(frame[mapping.value], path, mapping.value, missing_allowed=False)
        negative = out["value"].to_numpy() < 0
        if negative.any():
            index = int(np.argmax(negative))
            raise PipelineInputError(f"{path}: row {_row(index)}: {mapping.value!r} value {out['value'].iloc[index]} is negative")
    if mapping.event:
        out["event"] = clean_ids(frame[mapping.event], path, mapping.event)
        observed = sorted(out["event"].unique())
        for key, named in (("event_types", config.event_types), ("event_weights", config.event_weights)):
            check_event_types(named or [], observed, f"data.interactions.{key}", path)
        if config.event_types is not None:
            keep = out["event"].isin(config.event_types)
            log.info("kept %d of %d interactions with event types %s", int(keep.sum()), len(out), config.event_types)
            out = out[keep].reset_index(drop=True)
            if out.empty:
                raise PipelineInputError(f"{path}: no rows with event types {config.event_types}")
    return out


def check_event_types(named, observed: list[str], key: str, path: Path) -> None:
    """Every event type a config key names must occur in the log: a typo would otherwise select nothing."""
    for name in named:
        if name not in observed:
            close = difflib.get_close_matches(str(name), observed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PipelineInputError(f"{key}: {name!r} is not an event type of {path}{hint}; types are {shorten(observed, 300)}")


def parse_numbers(values: pd.Series, path: Path, column: str, missing_allowed: bool) -> pd.Series:
    """Finite float per row (NaN where missing, when allowed); a value that is not a number names its row."""
    _reject_non_scalars(values, path, column, "a number")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna() & (values.astype("string").str.strip() != "")
    if bad.any():
        index = bad.idxmax()
        raise PipelineInputError(f"{path}: row {_row(index)}: {column!r} value {shorten(values.iloc[index])} is not a number")
    if not missing_allowed and numbers.isna().any():
        raise PipelineInputError(f"{path}: row {_row(numbers.isna().idxmax())}: empty {column!r}")
    numbers = numbers.astype(np.float64)
    infinite = np.isinf(numbers.to_numpy())
    if infinite.any():
        index = int(np.argmax(infinite))
        raise PipelineInputError(f"{path}: row {_row(index)}: {column!r} value {shorten(values.iloc[index])} is not a finite number")
    return numbers


def _parse_ratings(values: pd.Series, path: Path, column: str, rating_range) -> np.ndarray:
    ratings = parse_numbers(values, path, column, missing_allowed=False).to_numpy()
    if rating_range is not None:
        low, high = rating_range
        outside = (ratings < low) | (ratings > high)
        if outside.any():
            index = int(np.argmax(outside))
            raise PipelineInputError(
                f"{path}: row {_row(index)}: {column!r} value {ratings[index]} is outside data.rating_range [{low}, {high}]"
            )
    return ratings


def load_items(config: ItemsConfig, tags: TagsConfig | None = None) -> pd.DataFrame:
    path = Path(config.path)
    mapping = config.columns
    filter_column, operator, literal = candidate_filter(config.recommendable) if config.recommendable else (None, None, None)
    features = [*config.numeric_features, *config.categorical_features]
    wanted = [mapping.id, mapping.category, *config.text_fields, *features, *([filter_column] if filter_column else [])]
    frame = read_table(path, config.format, list(dict.fromkeys(wanted)))
    ids = clean_ids(frame[mapping.id], path, mapping.id)
    repeated = ids.duplicated()
    if repeated.any():
        index = int(np.argmax(repeated.to_numpy()))
        first = int(np.argmax((ids == ids.iloc[index]).to_numpy()))
        raise PipelineInputError(f"{path}: row {_row(index)}: item id {shorten(ids.iloc[index])} repeats row {_row(first)}")
    fields = {name: frame[name].astype("string").fillna("").str.strip().astype(object) for name in config.text_fields}
    if tags is not None:
        fields["tags"] = ids.map(_aggregate_tags(tags)).fillna("").astype(object)
    text = _render_texts(config.text_template, fields, len(frame), path)
    items = pd.DataFrame({"item": ids, "text": text, "categories": _categories(frame[mapping.category], config).astype(object)})
    for name in config.numeric_features:
        items[name] = parse_numbers(frame[name], path, name, missing_allowed=True).to_numpy()
    for name in config.categorical_features:
        _reject_non_scalars(frame[name], path, name, "a label")
        labels = frame[name].astype("string").str.strip()
        items[name] = labels.where(labels.notna() & (labels != ""), None).astype(object).to_numpy()
    items["recommendable"] = (
        _recommendable(frame[filter_column], operator, literal, path, filter_column) if filter_column else True
    )
    return items


def _categories(values: pd.Series, config: ItemsConfig) -> pd.Series:
    """Each item's list of categories, at `category_level` of a path (one entry per part with `all`)."""
    separator = config.category_separator

    def parse(value: str) -> list[str]:
        parts = [part.strip() for part in value.split(separator) if part.strip()]
        if not parts:
            return ["(none)"]
        if config.category_level == "top":
            return parts[:1]
        if config.category_level == "leaf":
            return [separator.join(parts)]
        return parts

    return values.astype("string").fillna("").str.strip().map(parse)


TRUE_TEXT = {"true", "1", "yes", "y", "t"}
FALSE_TEXT = {"false", "0", "no", "n", "f", ""}


def _recommendable(values: pd.Series, operator: str | None, literal: str | None, path: Path, column: str) -> np.ndarray:
    """data.items.recommendable, per item: a boolean column, or one column compared with one value."""
    _reject_non_scalars(values, path, column, "a value", booleans=True)
    if operator is None:
        if values.dtype == bool:
            return values.to_numpy()
        text = values.astype("string").fillna("").str.strip().str.lower()
        unknown = ~text.isin(TRUE_TEXT | FALSE_TEXT)
        if unknown.any():
            index = unknown.idxmax()
            raise PipelineInputError(
                f"{path}: row {_row(index)}: {column!r} value {shorten(values.iloc[index])} is not true/false "
                "(data.items.recommendable names a boolean column; or write a comparison like `stock > 0`)"
            )
        return text.isin(TRUE_TEXT).to_numpy()
    number = pd.to_numeric(pd.Series([literal]), errors="coerce").iloc[0]
    if pd.notna(number):
        left = parse_numbers(values, path, column, missing_allowed=True)
        right = float(number)
    else:
        if operator not in ("==", "!="):
            raise PipelineInputError(f"data.items.recommendable: {operator} needs a number, got {shorten(literal)}")
        left, right = values.astype("string").str.strip(), literal
    compare = {"==": left.eq, "!=": left.ne, ">": left.gt, ">=": left.ge, "<": left.lt, "<=": left.le}[operator]
    allowed = compare(right).fillna(False).to_numpy(dtype=bool)  # a missing value is not allowed
    if not allowed.any():
        raise PipelineInputError(f"{path}: no item passes data.items.recommendable ({column} {operator} {literal})")
    return allowed


class TemplateValue(str):
    """A text field in the template: shown as written, unless a number format asks for a number (`{price:.0f}`)."""

    NUMBER_FORMATS = set("bcdeEfFgGnoxX%")

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in self.NUMBER_FORMATS:
            if not self:
                return ""
            number = float(self)  # ValueError: reported with the row by _render_texts
            return format(int(number) if spec[-1] in "bcdoxXn" and number.is_integer() else number, spec)
        return format(str(self), spec)


def _render_texts(template: str, fields: dict[str, pd.Series], n_rows: int, path: Path) -> list[str]:
    try:
        template.format(**{name: TemplateValue("") for name in fields})
    except (KeyError, IndexError, ValueError) as err:
        raise PipelineInputError(
            f"data.items.text_template: {shorten(template)} uses {err} but the fields are {sorted(fields)}"
        ) from None
    columns = {name: series.tolist() for name, series in fields.items()}
    rendered = []
    for row in range(n_rows):
        try:
            text = template.format(**{name: TemplateValue(values[row]) for name, values in columns.items()}).strip()
        except ValueError as err:
            raise PipelineInputError(f"{path}: row {_row(row)}: data.items.text_template {shorten(template)}: {err}") from None
        rendered.append(text)
    long = [row for row, text in enumerate(rendered) if len(text) > MAX_TEXT_CHARACTERS]
    if long:
        log.warning(
            "%s: cut %d item texts to %d characters (first: row %d, %d characters)",
            path, len(long), MAX_TEXT_CHARACTERS, _row(long[0]), len(rendered[long[0]]),
        )
        rendered = [text[:MAX_TEXT_CHARACTERS] for text in rendered]
    empty = [row for row, text in enumerate(rendered) if not text]
    if empty:
        log.warning("%s: %d items have empty text (first: row %d); they are encoded as empty strings", path, len(empty), _row(empty[0]))
    return rendered


def _aggregate_tags(config: TagsConfig) -> pd.Series:
    """Per item: its most frequent distinct tags (case-folded), joined by ', '."""
    path = Path(config.path)
    frame = read_table(path, config.format, [config.columns.item, config.columns.tag])
    frame = pd.DataFrame(
        {
            "item": clean_ids(frame[config.columns.item], path, config.columns.item),
            "tag": frame[config.columns.tag].astype("string").fillna("").str.strip().str.lower(),
        }
    )
    frame = frame[frame["tag"] != ""]
    counts = frame.groupby(["item", "tag"], sort=False).size().rename("count").reset_index()
    counts = counts.sort_values(["item", "count", "tag"], ascending=[True, False, True], kind="stable")
    top = counts.groupby("item", sort=False).head(config.max_per_item)
    return top.groupby("item", sort=False)["tag"].agg(", ".join)
