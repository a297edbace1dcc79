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

.PHONY: venv test test-fast test-golden test-integration reproduce lab bench lint format help clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name depthg --display-name "depthg (.venv)" >/dev/null
	@touch $(STAMP)

## Create .venv and install the package with its extras (every target does this first).
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

## JupyterLab with the project's kernel, depthg (.venv).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

## CPU micro-benchmarks, each against a release-style baseline measured in the same run.
bench: $(STAMP)
	$(PY) -m depthg.bench fps
	$(PY) -m depthg.bench loss
	$(PY) -m depthg.bench knn
	$(PY) -m depthg.bench train
	$(PY) -m depthg.bench crf

## Lint (ruff, configured in pyproject.toml): must be clean on the whole tree.
lint: $(STAMP)
	$(VENV)/bin/ruff check depthg tests
	$(VENV)/bin/ruff format --check depthg tests

## Format the code in place (ruff format) and apply ruff's safe fixes.
format: $(STAMP)
	$(VENV)/bin/ruff format depthg tests
	$(VENV)/bin/ruff check --fix depthg tests

## Only the golden parity tests (numbers computed by the released code).
test-golden: $(STAMP)
	$(PY) -m pytest tests -m golden -p no:cacheprovider

## Only the integration tier (training runs, torchrun, notebooks under nbval).
test-integration: $(STAMP)
	DEPTHG_RESULTS_DIR=$$(mktemp -d) $(PY) -m pytest tests notebooks --nbval-lax -m integration -p no:cacheprovider

## This list.
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z-]*:/{if(doc){split($$1,a,":"); printf "  make %-18s %s\n", a[1], doc}; doc=""}' $(MAKEFILE_LIST)

## Remove build and cache files.
clean:
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
