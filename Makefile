# Every target creates .venv and installs the package with its extras if needed (DESIGN.md §2).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The exact environment: `make lock` compiles pyproject.toml into it, `make venv` installs it (depthg/lockfile.py).
LOCK := requirements.lock
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
# Tests and notebooks must not depend on a GPU or on the network.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MPLBACKEND ?= Agg
export PYTHONHASHSEED ?= 0
# uv installs without bytecode (compiling all 16k files would add a minute); let the first import of each module write
# it, as Python does by default, so later runs import torch & co. twice as fast.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv lock test test-fast test-golden test-integration reproduce lab bench lint format help clean

# uv reads no pip configuration: pass on the package indexes and constraints this machine's pip is configured with
# (e.g. local mirrors), so that uv resolves and installs from the same places pip would. Like pip, trust every index,
# preferring the first that has a matching version (a mirror may lack e.g. the old cython pydensecrf2 builds with).
pip_setting = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^global\.$(1)='\(.*\)'$$/\1/p")
UV_INDEXES = --index-strategy unsafe-first-match \
	$(foreach u,$(or $(PIP_INDEX_URL),$(call pip_setting,index-url)),--index-url $(u)) \
	$(foreach u,$(PIP_EXTRA_INDEX_URL) $(call pip_setting,extra-index-url),--extra-index-url $(u))
UV_CONSTRAINTS = $(foreach c,$(or $(PIP_CONSTRAINT),$(call pip_setting,constraint)),--constraint $(c))

$(UV):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq --disable-pip-version-check uv==$(UV_VERSION)

# Install exactly requirements.lock (uv pip sync: extra packages go), then depthg itself, editable, without deps.
$(STAMP): pyproject.toml $(LOCK) | $(UV)
	@$(PY) -m depthg.lockfile check
	@echo "uv $(UV_VERSION): installing $(LOCK) into $(VENV)"
	@set -o pipefail; $(UV) pip sync --python $(PY) --require-hashes $(UV_INDEXES) $(LOCK) 2>&1 \
		| { grep -v '^ [-+~] ' || true; }  # uv's summary lines, not one line per package
	@$(UV) pip install --quiet --python $(PY) --no-deps $(UV_INDEXES) -e .
	@$(PY) -m ipykernel install --sys-prefix --name depthg --display-name "depthg (.venv)" >/dev/null
	@touch $(STAMP)
	@echo "installed depthg (editable) and the Jupyter kernel 'depthg (.venv)'"

## Create .venv with exactly requirements.lock, then depthg itself, editable (every target does this first).
venv: $(STAMP)

## Re-resolve pyproject.toml (with the dev extra) into requirements.lock: Python 3.11 on Linux, with hashes.
lock: | $(UV)
	$(UV) pip compile --quiet pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
		--generate-hashes --no-strip-extras --custom-compile-command "make lock" $(UV_INDEXES) $(UV_CONSTRAINTS) -o $(LOCK)
	$(PY) -m depthg.lockfile stamp
	@echo "$(LOCK): $$(grep -c '^[a-z0-9].*==' $(LOCK)) packages"

## The whole test suite: unit, golden parity, integration and the notebooks under nbval.
test: $(STAMP)
	DEPTHG_RESULTS_DIR=$$(mktemp -d) $(PY) -m pytest tests notebooks --nbval-lax --nbval-kernel-name depthg \
		-p no:cacheprovider

## The fast tier only (under a minute).
test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -p no:cacheprovider

## The main job: the four notebooks on the synthetic default, tables and figures under results/.
reproduce: $(STAMP)
	$(PY) -m depthg reproduce

## JupyterLab with the project's kernel, depthg (.venv).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

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
	DEPTHG_RESULTS_DIR=$$(mktemp -d) $(PY) -m pytest tests notebooks --nbval-lax --nbval-kernel-name depthg \
		-m integration -p no:cacheprovider

## This list.
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z-]*:/{if(doc){split($$1,a,":"); printf "  make %-18s %s\n", a[1], doc}; doc=""}' $(MAKEFILE_LIST)

## Remove build and cache files.
clean:
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +

## The prepared GPU check (issue 12): writes results/bench/<device>.json + .md; reduced sizes without CUDA.
bench-gpu: $(STAMP)
	$(PY) -m depthg.bench gpu
