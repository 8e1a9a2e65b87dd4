"""`RunContext`: what every recipe shares: the run directory (published only when complete), run.log, stage
timings, the input fingerprints, resume of a stopped run, and the manifest at the end."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline import distributed
from pipeline.config import Config, load_config
from pipeline.data import PreparedData
from pipeline.data.shards import load_prepared, shards_of_rank
from pipeline.encoding import EncodingStats
from pipeline.errors import PipelineInputError
from pipeline.outputs import LATEST, RunDirectory, elapsed, find_resumable, manifest, utc_now
from pipeline.storage import read_json_file
from pipeline.tracking import Trackers, open_trackers

log = logging.getLogger("pipeline")


class RunContext:
    """One run directory's lifecycle: `with context.publishing() as output:` ... `context.finish(...)`.

    Without `resume`, a fresh partial folder; with it (a stopped run's folder, or "auto"), that folder, after checking
    that the config and the input files are the ones it started with. Publishing moves `pointer` (default `latest`,
    which only runs holding a model may move).
    """

    def __init__(self, config: Config, name: str, resume: str | Path | None = None, pointer: str = LATEST):
        self.config = config
        self.timings: dict[str, float] = {}
        self.inputs: list[dict] = []  # fingerprints of the input files, taken by `load`
        self.started_at, self._started = utc_now(), time.perf_counter()
        if resume is not None and distributed.world_size() > 1:
            raise PipelineInputError("--resume: not supported under torchrun; resume with a single process")
        if resume is None:
            # Only rank 0 publishes; the other ranks write the same files into a private folder deleted at the end.
            main = distributed.is_main()
            self.output = RunDirectory(config.output.root, name, pointer=pointer) if main else RunDirectory.scratch_space()
            self.output.write_text("config.resolved.yaml", config.to_yaml())
        else:
            stopped = find_resumable(config.output.root, name, resume)
            _check_same_config(stopped / "config.resolved.yaml", config)
            self.output = RunDirectory(config.output.root, name, stopped, pointer=pointer)
            log.info("resuming %s", stopped)
        # Experiment trackers (logging.backends) on rank 0; each finished epoch goes to `tracking.epoch`.
        try:
            self.tracking = open_trackers(config, self.output.final_path.name) if distributed.is_main() else Trackers([])
        except PipelineInputError:
            self.output.abort()
            raise

    @contextmanager
    def stage(self, name: str):
        """Time the block as stage `name` (the manifest's `timings`)."""
        started = time.perf_counter()
        yield
        self.timings[name] = elapsed(started)

    @contextmanager
    def publishing(self):
        """Everything inside writes into the temporary folder; it is published only if the block succeeds."""
        with _logging_to(self.output.file("run.log")):
            try:
                yield self.output
            except BaseException:
                self.output.abort()
                self.tracking.abort()
                raise

    def load(self) -> PreparedData:
        """The prepared log (prepared here or read from its prepared folder; under torchrun on shards, this rank's
        users only), its input files fingerprinted into `inputs.json` (a resumed run checks they did not change)."""
        data_config, world = self.config.data, distributed.world_size()
        # Under torchrun on the duckdb engine's shards every rank reads only its own users (shard s: rank s mod world).
        shards = shards_of_rank(data_config.shards.count, distributed.rank(), world) if (
            data_config.engine == "duckdb" and world > 1) else None
        with self.stage("load_prepare"):
            data, self.inputs = load_prepared(data_config, self.config.eval.target_event_types, shards)
        if self.output.resumed:
            _check_same_inputs(self.output.file("inputs.json"), self.inputs)
        else:
            self.output.write_json("inputs.json", self.inputs)
        return data

    def finish(
        self, data: PreparedData, encoding: EncodingStats | None, metrics: dict | None = None, tags: dict | None = None
    ) -> Path | None:
        """Write the manifest and publish; hand `metrics` and `tags` with the published folder to the trackers;
        returns the run directory (None on ranks other than 0)."""
        self.timings["total"] = elapsed(self._started)
        self.output.write_json("manifest.json", manifest(
            self.config, self.output.file("config.resolved.yaml"), self.inputs, data, encoding, self.timings, self.started_at,
        ))
        run_dir = self.output.commit()
        if run_dir is not None:
            log.info("finished in %.1fs: %s", self.timings["total"], run_dir)
        self.tracking.finish(metrics or {}, run_dir, tags or {})
        return run_dir


@contextmanager
def _logging_to(path: Path):
    """run.log gets the INFO records whatever the console shows: the console's level lives on its handler (see
    `cli`), and a notebook's logger is raised to INFO only while the run lasts."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


def _check_same_config(path: Path, config: Config) -> None:
    stopped = load_config(path, check_paths=False, stored=True).to_dict()
    differences = _differing_keys(stopped, config.to_dict())
    if differences:
        raise PipelineInputError(
            f"--resume: the config differs from the stopped run's ({path}) at {', '.join(differences[:5])}; "
            "a resumed run must use the same config"
        )


def _differing_keys(left, right, prefix: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        keys = sorted(set(left) | set(right))
        return [key_path for key in keys for key_path in _differing_keys(left.get(key), right.get(key), f"{prefix}{key}.")]
    return [] if left == right else [prefix.rstrip(".")]


def _check_same_inputs(path: Path, inputs: list[dict]) -> None:
    try:
        stopped = {entry["path"]: entry["sha256"] for entry in read_json_file(path, "input fingerprints")}
    except (TypeError, KeyError):
        raise PipelineInputError(f"{path}: not a list of input fingerprints") from None
    for entry in inputs:
        if stopped.get(entry["path"]) != entry["sha256"]:
            raise PipelineInputError(f"--resume: {entry['path']} changed since the stopped run started; start a new run")
