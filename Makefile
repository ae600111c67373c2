# traind developer tasks. `make demo` and `make test` work on a fresh clone: both set up
# .venv first (python3 -m venv, then torch, then this project with its dev extras).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip
# Pinned so a CPU box gets the CPU wheel (found through the local wheel folder of pip's
# config) instead of PyPI's default CUDA build. On a CPU box without that folder:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make setup TORCH_SPEC=torch==2.13.0+cpu
TORCH_SPEC ?= torch==2.13.0
# Setup re-runs only when this stamp is older than pyproject.toml, so `make` is fast.
STAMP := $(VENV)/.traind-setup.stamp

.PHONY: setup demo demo-clean lint test test-slow bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/traind train examples/drops/*.jsonl --config examples/demo.toml

demo-clean:
	rm -rf demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: setup lint
	$(BIN)/pytest -m "not slow"

test-slow: setup
	$(BIN)/pytest -m slow

bench: setup
	$(BIN)/python bench/throughput.py
