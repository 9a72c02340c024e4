# linreg-flow: `make run` and `make test` set themselves up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.DEFAULT_GOAL := help
.PHONY: help setup run test bench lint format clean-artifacts clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(STAMP) ## create .venv and install the project (torch pinned, CPU build)

run: $(STAMP) ## run the default job (Advertising); pass options with ARGS="--preset seed"
	$(PY) -m flows.train $(ARGS)

test: $(STAMP) ## run the test suite against a real Prefect server
	$(PY) -m pytest $(ARGS)

bench: $(STAMP) ## cold vs warm (cached) run vs a flow of seven no-op tasks; pass ARGS="--runs 9"
	$(PY) -m bench.cache_bench $(ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-artifacts: ## delete generated artifacts, their manifests, cache and run records (data/artifacts)
	rm -rf data/artifacts

clean: clean-artifacts ## also delete the virtual environment
	rm -rf $(VENV)
