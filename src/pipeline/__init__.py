"""pipeline: learn what users are interested in from behavior logs and recommend what they will want next.

End to end: `pipeline.run("configs/quickstart.yaml")`. Stage by stage: load_config -> load_data -> prepare ->
encode -> build_model -> train -> evaluate; afterwards load_run / recommend; every night: `pipeline.nightly(config)`.
"""

from pipeline.api import (
    CompareResult, LoadedRun, RunResult, compare, encode, evaluate, load_run, recommend, run, train, validate,
)
from pipeline.config import Config, load_config
from pipeline.data import PreparedData, load_data, prepare
from pipeline.encoding import TextEncoder, encode_behavior, encode_items, encode_texts
from pipeline.errors import PipelineInputError, StorageError
from pipeline.models import build_model
from pipeline.nightly import NightResult, nightly

__version__ = "0.1.0"

__all__ = [
    "CompareResult", "compare", "Config", "LoadedRun", "NightResult", "PipelineInputError", "PreparedData", "RunResult",
    "TextEncoder", "build_model", "encode", "encode_behavior", "encode_items", "encode_texts", "evaluate", "load_config",
    "load_data", "load_run", "nightly", "prepare", "recommend", "run", "StorageError", "train", "validate",
]
