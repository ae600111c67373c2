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

.PHONY: setup demo demo-train demo-clean lint test test-slow bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	touch $@

# The daemon on the tiny model: the example drops go into its inbox once (a marker file
# keeps a second `make demo` from dropping them again), then it trains them and waits
# for more. Ctrl-C checkpoints and stops it.
demo: setup
	mkdir -p demo/data_inbox
	test -e demo/.examples-dropped || { cp examples/drops/*.jsonl demo/data_inbox/ && touch demo/.examples-dropped; }
	$(BIN)/traind serve --config examples/demo.toml

# The same training without the daemon: traind train on the example drops.
demo-train: setup
	$(BIN)/traind train examples/drops/*.jsonl --config examples/demo.toml

demo-clean:
	rm -rf demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# --durations: the slowest tests, so a CI log shows where the suite's time goes.
test: setup lint
	$(BIN)/pytest -m "not slow" --durations=25

test-slow: setup
	$(BIN)/pytest -m slow

bench: setup
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/step_cost.py --threads 1
	$(BIN)/python bench/vs_hf_trainer.py --threads 1
	$(BIN)/python bench/optimizer.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/checkpoint_memory.py
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/group_checkpoint.py
	$(BIN)/python bench/forgetting.py
	$(BIN)/python bench/history.py
	$(BIN)/python bench/history.py --log-interval 1
