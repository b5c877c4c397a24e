# The few commands people need. Tools run from .venv, so nothing has to be activated;
# .venv/bin also goes first on PATH so that workflow rules find the `myoflow` command.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo lint test

## setup: create .venv with the pinned runtime and development dependencies
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements-dev.txt
	$(BIN)/pip install -e . --no-deps
	touch $@

## demo: make a small synthetic cohort and run the workflow on it
demo: setup
	$(BIN)/myoflow synth --out data/demo --participants 6 --protocol ukbb --seed 1 --size small
	$(BIN)/snakemake --profile config/profiles/local

## lint: ruff, snakefmt and snakemake --lint (on the example participant sheet)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint --config participants=config/participants.example.tsv

## test: lint, then every test, including a real workflow run
test: setup lint
	$(BIN)/python -m pytest
