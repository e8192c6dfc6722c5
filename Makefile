# Quick start: `make demo` and `make test`. Each installs into .venv first when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench gpu-check lint format clean

install: $(STAMP)

# torch==2.13.0 first, on its own: the machines this project is developed on carry a local CPU wheel of exactly
# that version; installing it before anything else keeps pip from resolving a CUDA build from the registry.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python workflows/train_charades.py

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/model.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/interference.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/transcode.py
	$(BIN)/python benchmarks/predict.py

# On a GPU machine: model clips/s (bf16, compile), GPU busy fraction fed by Ray Data, decode CPUs per GPU, Ray Train
# vs a plain loop, DDP over NCCL; at most 8 minutes. Without CUDA: a CPU dry mode of a few seconds (CI runs it).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
