# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/quickstart.yaml
# A pinned torch first: on a machine with a local CPU wheel this takes seconds; on a GPU machine PyPI serves the
# CUDA build of the same version. Override with e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." for other builds.
TORCH_SPEC ?= torch==2.13.0
# Every optional feature, so the full test suite runs. uv installs them (resolving against the torch above, which it
# keeps) in about a third of pip's time: 34 s against 112 s on 2 cores.
EXTRAS ?= dev,ann,onnx,outofcore,spark,tensorboard,mlflow,tune
BIN := $(VENV)/bin

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[$(EXTRAS)]"
	touch $@

run: setup
	$(BIN)/python -m pipeline run $(CONFIG)

# One test worker per core (pytest-xdist), each on one thread: 2 cores finish the suite in about 0.6x the time of one
# process on both (docs/benchmarks.md). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= auto
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) runs .cache
