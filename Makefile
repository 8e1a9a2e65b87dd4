# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/quickstart.yaml
# A pinned torch first: where pip is pointed at local wheels (PIP_FIND_LINKS, e.g. a CPU build) uv looks there too;
# on a GPU machine PyPI serves the CUDA build of the same version. Override with e.g.
# TORCH_SPEC="torch==2.13.0 --index-url ..." for other builds.
TORCH_SPEC ?= torch==2.13.0
# Every optional feature, so the full test suite runs. uv installs torch and them (resolving against that torch,
# which it keeps): 5 s for torch against pip's 30 s, 40 s for the rest against 112 s, on 2 cores.
EXTRAS ?= dev,ann,onnx,outofcore,spark,tensorboard,mlflow,tune
BIN := $(VENV)/bin
FIND_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV = $(BIN)/uv pip install --quiet --python $(BIN)/python $(foreach links,$(FIND_LINKS),--find-links $(links))

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(UV) $(TORCH_SPEC)
	$(UV) -e ".[$(EXTRAS)]"
	touch $@

run: setup
	$(BIN)/python -m pipeline run $(CONFIG)

# One test worker per core (pytest-xdist), each torch on one thread; the longest tests start first and idle workers
# take queued tests from busy ones (--dist worksteal). TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= auto
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

clean:
	rm -rf $(VENV) runs .cache
