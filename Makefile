# Two commands for a fresh machine:
#   make run    set up .venv (first use) and run the main job
#   make test   set up .venv (first use) and run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile rl/envs/install_safety.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[safety,distributed,wandb,dev]"
	$(BIN)/python -m rl.envs.install_safety
	$(BIN)/pip check
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m rl.meta_cpo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.trust_region

clean:
	rm -rf $(VENV)
