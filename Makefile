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

DEMO_DIR ?= runs/demo_comparison

# The comparison: DDPM with 1000 steps vs SIDDM with 4 generator steps on the same 25-Gaussians (CPU, under
# 10 minutes on 2 cores); then one table (metrics, NFE, sampling and training time, whether SIDDM reaches
# DDPM-1000's quality and how much faster it samples) and side-by-side scatter plots.
demo: setup
	rm -rf $(DEMO_DIR)
	$(PY) -m siddm_lab.train experiment=demo task_name=DDPM-1000 hydra.run.dir=$(DEMO_DIR)/ddpm_T1000
	$(PY) -m siddm_lab.train experiment=demo_siddm task_name=SIDDM-4 hydra.run.dir=$(DEMO_DIR)/siddm_T4
	$(PY) -m siddm_lab.collect $(DEMO_DIR) --rows task_name --baseline DDPM-1000 --scatter \
		--metric modes_covered,hq_ratio,fd_2d,mmd_poly2,sample_seconds,train_seconds

test: setup
	SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) -m pytest -m "not slow" -q

test-slow: setup
	SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) -m pytest -m slow -q

test-all: setup
	SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) -m pytest -q

bench: setup
	SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) bench/train_step.py
	$(PY) bench/sample_ddim.py
	$(PY) bench/train_siddm.py
	$(PY) bench/threads.py
	test -f $(DEMO_DIR)/siddm_T4/checkpoints/last.ckpt || $(MAKE) demo
	$(PY) bench/sample_quality.py --ddpm $(DEMO_DIR)/ddpm_T1000/checkpoints/last.ckpt \
		--gan $(DEMO_DIR)/siddm_T4/checkpoints/last.ckpt

lint: setup
	$(VENV)/bin/ruff check siddm_lab tests bench

clean:
	rm -rf runs outputs multirun wandb lightning_logs .pytest_cache

# The MNIST classifier behind fd_mnist_classifier (cached in $SIDDM_CACHE_DIR or ~/.cache/siddm_lab).
mnist-classifier: setup
	$(PY) -m siddm_lab.metrics.mnist_classifier --data-dir $(SHARED_DATA)
