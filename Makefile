# The few commands people need. Tools run from .venv, so nothing has to be activated;
# .venv/bin also goes first on PATH so that workflow rules find the `myoflow` command.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo lint test browser

## setup: create .venv with the pinned runtime and development dependencies
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements-dev.txt
	$(BIN)/pip install -e . --no-deps
	touch $@

## demo: make a small synthetic cohort (12 clean participants of both sexes, half
##       resolution) in data/demo and run the workflow on it into results/demo
##       (config/demo.yaml); prints the wall time at the end
DEMO_ARTEFACTS := swap=0,partial_swap=0,missing_station=0,missing_channel=0
demo: setup
	@start=$$(date +%s); \
	$(BIN)/myoflow synth --out data/demo --participants 12 --protocol ukbb --seed 1 --size small \
		--artefacts $(DEMO_ARTEFACTS) && \
	$(BIN)/snakemake --profile config/profiles/local --configfile config/demo.yaml && \
	echo "make demo: done in $$(( $$(date +%s) - start )) s; report: results/demo/cohort/report.html"

## lint: ruff, snakefmt and snakemake --lint (on the example participant sheet)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint --config participants=config/participants.example.tsv

## test: lint, then every test, including real workflow runs, locally and through SLURM.
##       As root it starts a one-node SLURM cluster (ci/slurm/cluster.sh) for the tests and
##       stops it after, also on failure; SLURM=no skips that, and tests/test_slurm.py.
SLURM ?= $(if $(filter 0,$(shell id -u)),yes,no)
test: setup lint browser
	@if [ "$(SLURM)" = yes ]; then \
		ci/slurm/cluster.sh run $(BIN)/python -m pytest; \
	else \
		echo "make test: no SLURM cluster (SLURM=$(SLURM); it needs root): tests/test_slurm.py is skipped"; \
		$(BIN)/python -m pytest; \
	fi

## browser: as root, install Debian's chromium when missing (tests/cohort/test_report.py opens the
##          report in it; without it that test is skipped, saying why)
browser:
	@if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; } || \
		echo "make test: could not install chromium; the browser test will be skipped"; \
	fi
