# Every target creates .venv and installs the package with its extras if needed (DESIGN.md §2).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Tests and notebooks must not depend on a GPU or on the network.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MPLBACKEND ?= Agg
export PYTHONHASHSEED ?= 0

.PHONY: venv test test-fast reproduce lab bench lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name depthg --display-name "depthg (.venv)" >/dev/null
	@touch $(STAMP)

venv: $(STAMP)

## The whole test suite: unit, golden parity, integration and the notebooks under nbval.
test: $(STAMP)
	DEPTHG_RESULTS_DIR=$$(mktemp -d) $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

## The fast tier only (under a minute).
test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -p no:cacheprovider

## The main job: the four notebooks on the synthetic default, tables and figures under results/.
reproduce: $(STAMP)
	$(PY) -m depthg reproduce

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: $(STAMP)
	$(PY) -m depthg.bench fps
	$(PY) -m depthg.bench loss
	$(PY) -m depthg.bench knn
	$(PY) -m depthg.bench train
	$(PY) -m depthg.bench crf

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check depthg tests

clean:
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +

## The prepared GPU check (issue 12): writes results/bench/<device>.json + .md; reduced sizes without CUDA.
bench-gpu: $(STAMP)
	$(PY) -m depthg.bench gpu
