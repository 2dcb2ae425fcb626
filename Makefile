# make demo  : set up the virtualenv (if needed) and run the main job on CPU
# make test  : set up the virtualenv (if needed) and run the fast test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The offline data that tests and benchmarks read (MNIST in torchvision's layout).
SHARED_DATA ?= $(abspath ../shared/data)

.PHONY: setup demo test test-slow test-all bench lint clean mnist-classifier

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m siddm_lab.train experiment=demo trainer.enable_progress_bar=false

test: setup
	SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) -m pytest -m "not slow" -q

test-slow: setup
	SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) -m pytest -m slow -q

test-all: setup
	SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) -m pytest -q

bench: setup
	SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) bench/train_step.py
	$(PY) bench/sample_ddim.py

lint: setup
	$(VENV)/bin/ruff check siddm_lab tests bench

clean:
	rm -rf runs outputs multirun wandb lightning_logs .pytest_cache

# The MNIST classifier behind fd_mnist_classifier (cached in $SIDDM_CACHE_DIR or ~/.cache/siddm_lab).
mnist-classifier: setup
	$(PY) -m siddm_lab.metrics.mnist_classifier --data-dir $(SHARED_DATA)
