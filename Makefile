# make demo  : set up the virtualenv (if needed) and run the main job on CPU
# make test  : set up the virtualenv (if needed) and run the fast test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The offline data that tests and benchmarks read (MNIST in torchvision's layout).
SHARED_DATA ?= $(abspath ../shared/data)

.PHONY: setup demo test test-slow test-all bench lint clean mnist-classifier mnist-compare

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

DEMO_DIR ?= runs/demo_comparison

# The comparison: DDPM with 1000 steps vs SIDDM with 4 generator steps on the same 25-Gaussians (CPU, under
# 10 minutes on 2 cores), beside the committed converged DDPM-1000 (experiments/checkpoints/ddpm_toy_T1000.ckpt,
# the baseline of the quality verdict); then one table (metrics, NFE, sampling and training time, whether SIDDM reaches
# DDPM-1000's quality and how much faster it samples) and side-by-side scatter plots.
demo: setup
	rm -rf $(DEMO_DIR)
	$(PY) -m siddm_lab.train experiment=demo task_name=DDPM-1000 hydra.run.dir=$(DEMO_DIR)/ddpm_T1000
	$(PY) -m siddm_lab.train experiment=demo_siddm task_name=SIDDM-4 hydra.run.dir=$(DEMO_DIR)/siddm_T4
	$(PY) -m siddm_lab.sample ckpt=experiments/checkpoints/ddpm_toy_T1000.ckpt sampler=ddpm num_samples=5000 \
		batch_size=5000 seed=0 progress=false task_name=DDPM-1000-converged hydra.run.dir=$(DEMO_DIR)/ddpm_T1000_converged
	$(PY) -m siddm_lab.collect $(DEMO_DIR) --rows task_name --baseline DDPM-1000-converged --scatter \
		--metric modes_covered,hq_ratio,fd_2d,mmd_poly2,sample_seconds,train_seconds

# The fast suite runs in one pytest-xdist worker per CPU (TEST_WORKERS=0: one process), each worker and the
# runs it starts on one torch thread: workers that each used every core would slow each other down ~10x.
TEST_WORKERS ?= auto
test: setup
	OMP_NUM_THREADS=1 SIDDM_DATA_DIR=$(SHARED_DATA) $(PY) -m pytest -m "not slow" -q -n $(TEST_WORKERS)

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

# fd_mnist_classifier uses the classifier shipped in siddm_lab/metrics/weights/ by default; this target
# retrains one (same recipe) into MNIST_CLASSIFIER and says whether it is bit-identical to the shipped one.
# A run uses it only when told: dataset.metrics.classifier_path=$(MNIST_CLASSIFIER).
MNIST_CLASSIFIER ?= $${SIDDM_CACHE_DIR:-$$HOME/.cache/siddm_lab}/mnist_classifier.pt
mnist-classifier: setup
	$(PY) -m siddm_lab.metrics.mnist_classifier --data-dir $(SHARED_DATA) --out $(MNIST_CLASSIFIER)

# Fast sampling on MNIST: the committed SIDDM-4 and DDGAN-4 checkpoints beside the DDPM's DDIM at 4 and 20
# steps (experiments/checkpoints/), 1000 samples each, scored by fd_mnist_classifier; one table and one
# side-by-side grid in $(MNIST_DIR). A few minutes on 2 CPU cores (the DDIM-20 job is most of it).
MNIST_DIR ?= runs/mnist_compare
CKPTS := experiments/checkpoints
MNIST_SAMPLE = $(PY) -m siddm_lab.sample data_dir=$(SHARED_DATA) num_samples=1000 batch_size=500 seed=0 progress=false
mnist-compare: setup
	rm -rf $(MNIST_DIR)
	$(MNIST_SAMPLE) ckpt=$(CKPTS)/siddm_mnist_T4.ckpt sampler=generator task_name=SIDDM-4 hydra.run.dir=$(MNIST_DIR)/siddm_T4
	$(MNIST_SAMPLE) ckpt=$(CKPTS)/ddgan_mnist_T4.ckpt sampler=generator task_name=DDGAN-4 hydra.run.dir=$(MNIST_DIR)/ddgan_T4
	$(MNIST_SAMPLE) ckpt=$(CKPTS)/ddpm_mnist_cpu_step12500.ckpt sampler=ddim subsequence=trailing sampler.steps=4 \
		sampler.clip_x0=1.0 task_name=DDPM-DDIM-4 hydra.run.dir=$(MNIST_DIR)/ddpm_ddim4
	$(MNIST_SAMPLE) ckpt=$(CKPTS)/ddpm_mnist_cpu_step12500.ckpt sampler=ddim sampler.steps=20 sampler.eta=0.5 \
		sampler.clip_x0=1.0 task_name=DDPM-DDIM-20 hydra.run.dir=$(MNIST_DIR)/ddpm_ddim20
	$(PY) -m siddm_lab.collect $(MNIST_DIR) --rows task_name --scatter --metric fd_mnist_classifier,nfe,sample_seconds
