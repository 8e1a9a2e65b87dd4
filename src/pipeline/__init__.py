"""pipeline: learn what users are interested in from behavior logs and recommend what they will want next.

End to end: `pipeline.run("configs/quickstart.yaml")`, `pipeline.compare(...)`, `pipeline.tune(...)`, every night `pipeline.nightly(...)`.
Stage by stage: load_config -> load_data -> prepare -> encode -> build -> train -> evaluate; afterwards load_run /
recommend.

Names are imported on first use, so `python -m pipeline --help` answers without loading torch.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(["build", "encode", "evaluate", "train", "validate"], "pipeline.api"),
    **dict.fromkeys(["RunResult", "run"], "pipeline.recipes.run"),
    **dict.fromkeys(["CompareResult", "compare"], "pipeline.recipes.compare"),
    **dict.fromkeys(["NightResult", "nightly"], "pipeline.recipes.nightly"),
    **dict.fromkeys(["TuneResult", "tune"], "pipeline.recipes.tune"),
    **dict.fromkeys(["RunContext"], "pipeline.recipes.context"),
    **dict.fromkeys(["LoadedRun", "load_run", "recommend"], "pipeline.serving"),
    **dict.fromkeys(["Config", "load_config"], "pipeline.config"),
    **dict.fromkeys(["PreparedData", "TrainView", "load_data", "prepare"], "pipeline.data"),
    **dict.fromkeys(["load_prepared"], "pipeline.data.shards"),
    **dict.fromkeys(["TextEncoder", "encode_behavior", "encode_items", "encode_texts"], "pipeline.encoding"),
    **dict.fromkeys(["PipelineInputError", "StorageError"], "pipeline.errors"),
    **dict.fromkeys(["Recommender", "build_model", "register"], "pipeline.models"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:  # a submodule, as `pipeline.config.load_config` reads
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'pipeline' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
