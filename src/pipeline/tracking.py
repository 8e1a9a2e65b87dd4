"""Experiment tracking: one small interface (`Tracker`), with TensorBoard and MLflow behind it.

The run directory's `history.jsonl` is always written (the disk backend); `logging.backends` adds trackers that see
the same lifecycle: `start` (the resolved config as parameters), `epoch` (each finished epoch's losses and
validation metrics), `finish` (the final metrics, the run directory as artifacts, tags such as a night's decision)
or `abort` (a failed or stopped run). A backend whose package is missing is bad input naming the extra to install.
"""

from __future__ import annotations

import importlib.util
import logging
import numbers
from pathlib import Path

from pipeline.config import Config
from pipeline.errors import PipelineInputError, clip

log = logging.getLogger("pipeline")

# backend -> (the module it imports, the extra that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def check_backends(backends: list[str]) -> None:
    """Bad input, before anything is written, for a backend whose package is not installed."""
    for backend in backends:
        module, extra = PACKAGES[backend]
        if importlib.util.find_spec(module) is None:
            raise PipelineInputError(
                f"logging.backends: {backend} needs the {module} package: pip install 'interest-pipeline[{extra}]'"
            )


def flatten(values: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become strings (MLflow parameters are strings anyway)."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def numeric(values: dict) -> dict[str, float]:
    return {key: float(value) for key, value in flatten(values).items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value}


class Tracker:
    """The interface; each method does nothing unless a backend overrides it. `epoch` takes the `model` a record
    belongs to where a run trains several (`compare`): each model gets its own child run."""

    def epoch(self, record: dict, model: str | None = None) -> None: ...

    def finish(self, metrics: dict, run_dir: Path | None, tags: dict) -> None: ...

    def abort(self) -> None: ...


class TensorBoardTracker(Tracker):
    """Event files under `<logging.tensorboard_dir>/<run name>/`: each epoch's numbers as scalars at step = epoch,
    the final metrics as scalars, the resolved config as text."""

    def __init__(self, folder: Path, config: Config):
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.writer_class = folder, SummaryWriter
        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("config", "```\n" + config.to_yaml() + "\n```")
        self.children: dict[str, object] = {}  # model -> its writer, in a subfolder TensorBoard shows as a run

    def epoch(self, record: dict, model: str | None = None) -> None:
        if model is None:
            writer = self.writer
        else:
            writer = self.children.setdefault(model, self.writer_class(log_dir=str(self.folder / model)))
        for name, value in numeric(record).items():
            if name != "epoch":
                writer.add_scalar(name, value, int(record["epoch"]))
        writer.flush()

    def finish(self, metrics: dict, run_dir: Path | None, tags: dict) -> None:
        for name, value in numeric(metrics.get("splits", {})).items():
            self.writer.add_scalar(name.replace(".", "/"), value, 0)
        for name, value in tags.items():
            self.writer.add_text(name, str(value))
        self.abort()

    def abort(self) -> None:
        for writer in [self.writer, *self.children.values()]:
            writer.close()


class MlflowTracker(Tracker):
    """One MLflow run in experiment `logging.experiment` (default: the config's name) at `logging.mlflow_uri`
    (default: a SQLite store under the output root): parameters, per-epoch metrics at step = epoch, the final
    metrics, tags, and the run directory as artifacts."""

    def __init__(self, uri: str, experiment: str, run_name: str, config: Config, artifacts: Path | None = None):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        # A local store keeps its artifacts beside it (MLflow's default is ./mlruns of whatever folder the job runs in).
        if artifacts is not None and mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri())
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)
        self.client = mlflow.MlflowClient()
        self.children: dict[str, str] = {}  # model -> its child run's id
        parameters = {key: str(value)[:500] for key, value in flatten(config.to_dict()).items()}
        for start in range(0, len(parameters), 100):  # MLflow takes at most 100 parameters per call
            mlflow.log_params(dict(list(parameters.items())[start : start + 100]))

    @staticmethod
    def _named(values: dict) -> dict[str, float]:
        """MLflow's metric names take no "@": ndcg@10 -> ndcg_at_10."""
        return {name.replace("@", "_at_"): value for name, value in numeric(values).items() if name != "epoch"}

    def _child(self, model: str) -> str:
        if model not in self.children:
            child = self.client.create_run(
                self.run.info.experiment_id, run_name=model, tags={"mlflow.parentRunId": self.run.info.run_id})
            self.children[model] = child.info.run_id
        return self.children[model]

    def epoch(self, record: dict, model: str | None = None) -> None:
        step = int(record["epoch"])
        if model is None:
            self.mlflow.log_metrics(self._named(record), step=step)
            return
        run_id = self._child(model)
        for name, value in self._named(record).items():
            self.client.log_metric(run_id, name, value, step=step)

    def finish(self, metrics: dict, run_dir: Path | None, tags: dict) -> None:
        splits = metrics.get("splits", {})
        self.mlflow.log_metrics(self._named(splits))
        if self.children:  # a run of several models: every model of the metrics gets a child, trained by epochs or not
            for model in sorted({model for by_model in splits.values() for model in by_model}):
                self._child(model)
        for model, run_id in self.children.items():  # each child: its own final metrics, under the split's name
            for name, value in self._named({split: by_model.get(model, {}) for split, by_model in splits.items()}).items():
                self.client.log_metric(run_id, name, value)
            self.client.set_terminated(run_id)
        self.mlflow.set_tags({key: str(value) for key, value in tags.items()})
        if run_dir is not None:
            self.mlflow.log_artifacts(str(run_dir))
        self.mlflow.end_run()

    def abort(self) -> None:
        for run_id in self.children.values():
            self.client.set_terminated(run_id, status="FAILED")
        self.mlflow.end_run(status="FAILED")


class Trackers(Tracker):
    """The configured trackers as one: a tracker that fails is logged and dropped, never a failed run."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # a tracking server down or a full disk must not lose the run
                log.error("%s: %s failed (%s); tracking to it stops", type(tracker).__name__, method, err)
                self.trackers.remove(tracker)

    def epoch(self, record: dict, model: str | None = None) -> None:
        self._each("epoch", record, model)

    def finish(self, metrics: dict, run_dir: Path | None, tags: dict) -> None:
        self._each("finish", metrics, run_dir, tags)

    def abort(self) -> None:
        self._each("abort")


def open_trackers(config: Config, run_name: str) -> Trackers:
    """The trackers of `logging.backends` for the run named `run_name`."""
    settings, root = config.logging, Path(config.output.root)
    trackers: list[Tracker] = []
    try:
        for backend in settings.backends:
            if backend == "tensorboard":
                trackers.append(TensorBoardTracker(Path(settings.tensorboard_dir or root / "tensorboard") / run_name, config))
            else:
                local = settings.mlflow_uri is None
                uri = settings.mlflow_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}"
                trackers.append(MlflowTracker(
                    uri, settings.experiment or config.name, run_name, config, root / "mlflow-artifacts" if local else None))
    except Exception as err:  # an unreachable tracking server, an unwritable folder: named, before the run starts
        Trackers(trackers).abort()
        raise PipelineInputError(f"logging.backends: {backend} cannot start: {clip(str(err))}") from None
    return Trackers(trackers)
