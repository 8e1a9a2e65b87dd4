"""pipeline: learn what users are interested in from behavior logs and recommend what they will want next.

End to end: `pipeline.run("configs/quickstart.yaml")`. Stage by stage: load_config -> load_data -> prepare ->
encode -> build_model -> train -> evaluate; afterwards load_run / recommend; every night: `pipeline.nightly(config)`.

Names are imported on first use, so `python -m pipeline --help` answers without loading torch.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(
        ["LoadedRun", "RunResult", "encode", "evaluate", "load_run", "recommend", "run", "train", "validate"], "pipeline.api",
    ),
    **dict.fromkeys(["CompareResult", "compare"], "pipeline.comparison"),
    **dict.fromkeys(["Config", "load_config"], "pipeline.config"),
    **dict.fromkeys(["PreparedData", "load_data", "prepare"], "pipeline.data"),
    **dict.fromkeys(["TextEncoder", "encode_behavior", "encode_items", "encode_texts"], "pipeline.encoding"),
    **dict.fromkeys(["PipelineInputError", "StorageError"], "pipeline.errors"),
    "build_model": "pipeline.models",
    **dict.fromkeys(["NightResult", "nightly"], "pipeline.nightly"),
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


class _Package(types.ModuleType):
    """`pipeline.nightly` is the function; importing the `pipeline.nightly` subpackage must not rebind the name to it."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _EXPORTS:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
