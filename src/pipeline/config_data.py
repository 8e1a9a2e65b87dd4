"""The `data` section: where the log and the catalog are, how their columns map, how the log is split.

Re-exported by `pipeline.config`, whose `Config` holds it.
"""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.errors import shorten
from pipeline.schema import MAX_SEED, Section


class InteractionColumns(Section):
    user: str = "user_id"
    """Column of the user id."""
    item: str = "item_id"
    """Column of the item id."""
    timestamp: str = "timestamp"
    """Column of the event time: Unix seconds, ISO 8601 text or a Parquet timestamp."""
    rating: str | None = None
    """Column of an explicit rating (enables the rating metrics and `data.rating_range`)."""
    event: str | None = None
    """Column of the event type (view, add_to_cart, purchase...): see `event_types`, `event_weights` and
    `eval.target_event_types`."""
    value: str | None = None
    """Column of an event-level number (price paid, watch time): with `weight_by_value`, a training weight."""

    @model_validator(mode="after")
    def _distinct_columns(self):
        mapped = {role: column for role, column in self.model_dump().items() if column is not None}
        for role, column in mapped.items():
            others = [other for other, name in mapped.items() if name == column and other != role]
            if others:
                raise ValueError(f"{role} and {others[0]} both map to column {column!r}; each role needs its own column")
        return self


class TableSource(Section):
    path: str
    """The file, relative to the config file's folder or absolute."""
    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"
    """auto: by file suffix (.parquet, .jsonl/.ndjson, otherwise CSV)."""


class InteractionsConfig(TableSource):
    columns: InteractionColumns = InteractionColumns()
    event_types: list[str] | None = None
    """Keep only these event types (None keeps all); needs `columns.event`."""
    event_weights: dict[str, float] | None = None
    """Loss weight of a training target by its event type, e.g. {view: 1, add_to_cart: 2, purchase: 4} (types not
    listed weigh 1); needs `columns.event`. Also weights a user's own items in the recent_items baseline."""
    weight_by_value: bool = False
    """Multiply each training target's weight by its event value (`columns.value`) over the mean value."""
    collapse_repeats: bool = False
    """Collapse a user's consecutive events on the same item into one, keeping the strongest (highest
    `event_weights`, then the latest): a view-view-cart-purchase of one SKU is one purchase."""

    @field_validator("event_weights")
    @classmethod
    def _positive_weights(cls, value):
        for name, weight in (value or {}).items():
            if not weight > 0:
                raise ValueError(f"{name}: weight {weight} must be > 0")
        return value

    @model_validator(mode="after")
    def _needs_columns(self):
        for key in ("event_types", "event_weights"):
            if getattr(self, key) is not None and not self.columns.event:
                raise ValueError(f"{key} needs columns.event (the column of the event type)")
        if self.weight_by_value and not self.columns.value:
            raise ValueError("weight_by_value needs columns.value")
        return self


class ItemColumns(Section):
    id: str = "item_id"
    """Column of the item id (matching the interactions' item column)."""
    category: str = "category"
    """Column of the item's categories, separated by `category_separator`."""


class ItemsConfig(TableSource):
    columns: ItemColumns = ItemColumns()
    text_fields: list[str] = Field(default_factory=lambda: ["title"], min_length=1)
    """Columns available to `text_template`."""
    text_template: str = "{title}"
    """Python format string over the text fields (and `tags` when a tags table is configured): plain field names
    only."""
    category_separator: str = Field("|", min_length=1)
    """Separator between an item's categories, or between the levels of a category path (`Audio > Headphones`)."""
    category_level: Literal["all", "leaf", "top"] = "all"
    """all: every separated part is a category of its own (several genres per movie). For a path: leaf, the whole
    path as one category (so `Audio > Cables` and `Video > Cables` differ); top, its first part."""
    numeric_features: list[str] = Field(default_factory=list)
    """Item columns holding numbers (price, duration): standardised over the catalog, a missing value is the mean
    plus a missing flag; they enter the item representation of the sequence models, and as quantile bands the
    content baselines' item vectors."""
    categorical_features: list[str] = Field(default_factory=list)
    """Item columns holding labels (brand, seller): one learned vector per value shared by at least two items,
    the rest and missing values in one unknown bucket; they enter the item representation of the sequence models
    and the content baselines' item vectors."""
    recommendable: str | None = None
    """Which items may be listed: a column of true/false (or 1/0, yes/no), or a comparison on one column such as
    `stock > 0`, `status == active` or `region != eu` (operators == != > >= < <=). Others are never candidates
    in lists or evaluation. None: every item."""

    @field_validator("text_template")
    @classmethod
    def _plain_field_names(cls, template: str) -> str:
        """`{title.__class__}` or `{title[0]}` would reach into Python objects: only `{name}` is a template field."""
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as err:
            raise ValueError(f"not a valid template: {err}") from None
        for name in fields:
            if not name.isidentifier():
                raise ValueError(f"{{{name}}}: only plain field names like {{title}} are allowed")
        return template

    @field_validator("recommendable")
    @classmethod
    def _filter_syntax(cls, value):
        if value is not None:
            candidate_filter(value)
        return value

    @model_validator(mode="after")
    def _features_are_distinct(self):
        named = [*self.numeric_features, *self.categorical_features]
        repeated = sorted({name for name in named if named.count(name) > 1})
        if repeated:
            raise ValueError(f"feature columns {repeated} are listed twice (numeric and categorical?)")
        return self


FILTER_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")


def candidate_filter(expression: str) -> tuple[str, str | None, str | None]:
    """(column, operator, value) of a `recommendable` expression; operator and value are None for a plain boolean
    column. Parsed, never evaluated."""
    match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*(?:(==|!=|>=|<=|>|<)\s*([^=!<>\s].*?))?\s*", expression)
    if match is None:
        raise ValueError(
            f"{shorten(expression)} is neither a column name nor `column <op> value` with op one of {' '.join(FILTER_OPERATORS)}"
        )
    column, operator, value = match.groups()
    if value is not None:
        value = value.strip().strip("'\"")
    return column, operator, value


class TagColumns(Section):
    item: str = "item_id"
    """Column of the item id."""
    tag: str = "tag"
    """Column of the tag text."""


class TagsConfig(TableSource):
    columns: TagColumns = TagColumns()
    max_per_item: int = Field(10, ge=1)
    """The most frequent tags of an item kept in its text."""


class SplitConfig(Section):
    method: Literal["leave_last_out", "time_cut"] = "leave_last_out"
    """leave_last_out: per user, valid = second to last event, test = last event. time_cut: global cut points on
    event time; valid/test are the events after each cut."""
    valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    """time_cut: share of the events (by time) before the test cut that are validation events."""
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    """time_cut: share of the newest events that are test events."""


class ShardsConfig(Section):
    count: int = Field(16, ge=1, le=4096)
    """Parquet shards of the prepared log, by a hash of the user id (md5): a user's events are in one shard, and a
    torchrun rank reads only its own shards (shard s goes to rank s mod world size)."""
    dir: str = ".cache/prepared"
    """Where prepared logs are kept, one folder per input fingerprint and data config: later runs and every rank
    read them instead of preparing again."""
    memory_limit_gb: float = Field(4.0, gt=0)
    """DuckDB's memory limit; beyond it, sorts, joins and windows spill to a temporary folder beside the shards."""
    threads: int | None = Field(None, ge=1)
    """DuckDB's threads (None: every core)."""


class DataConfig(Section):
    engine: Literal["pandas", "duckdb"] = "pandas"
    """pandas: load and prepare in memory, every run. duckdb: out of core, for logs beyond memory: columns and the
    event-type filter are pushed into the Parquet or CSV scan, sorting and splitting spill to disk, and the result
    is kept as Parquet shards (`data.shards`) that later runs reuse. Both give the same prepared data."""
    shards: ShardsConfig = ShardsConfig()
    """The prepared log's shards (data.engine: duckdb)."""
    interactions: InteractionsConfig
    """The behavior log: one row per event."""
    items: ItemsConfig
    """The catalog: one row per item, with its text fields and categories."""
    tags: TagsConfig | None = None
    """Optional free-text tags per item, added to the item text as `{tags}`."""
    rating_range: tuple[float, float] | None = None
    """[low, high]: ratings outside it are an error naming the row."""
    deduplicate: bool = True
    """Drop rows that repeat (user, item, timestamp); the count is logged."""
    min_user_interactions: int = Field(3, ge=3)
    """Users with fewer events are dropped (three: one each for training, validation, test)."""
    min_item_interactions: int = Field(1, ge=1)
    """Counted on training events only, so the filter sees no future."""
    split: SplitConfig = SplitConfig()
    cold_item_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Cold-start evaluation: this fraction of the interacted items loses every training and validation event, so
    they appear only in the test period; metrics then also report cold_* restricted to test events on them."""
    cold_item_seed: int = Field(0, ge=0, le=MAX_SEED)
    """Seed of the draw of the cold items."""

    @model_validator(mode="after")
    def _shards_need_duckdb(self):
        if self.engine == "pandas" and "shards" in self.model_fields_set:
            raise ValueError("shards is read only with engine: duckdb (the pandas engine keeps nothing on disk)")
        jsonl = self.interactions.format == "jsonl" or (
            self.interactions.format == "auto" and self.interactions.path.lower().endswith((".jsonl", ".ndjson"))
        )
        if self.engine == "duckdb" and jsonl:
            raise ValueError("engine duckdb reads interactions from Parquet or CSV; convert the JSONL log, or use engine: pandas")
        return self

    @field_validator("rating_range")
    @classmethod
    def _ordered_range(cls, value):
        if value is not None and value[0] >= value[1]:
            raise ValueError("rating_range must be [low, high] with low < high")
        return value
