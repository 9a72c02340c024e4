# linreg-flow: `make run` and `make test` set themselves up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PREFECT := $(VENV)/bin/prefect
ARGS ?=
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# The local Prefect server of `make server`, which `make deploy` and `make worker` talk to unless
# PREFECT_API_URL says otherwise. Postgres instead of SQLite: set PREFECT_SERVER_DATABASE_CONNECTION_URL.
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 4200
POOL ?= local-process
GIT_POOL ?= git-process

.DEFAULT_GOAL := help
.PHONY: help setup run stop status test test-fast bench bench-naive bench-scale bench-predict bench-store bench-sweep lint format clean-artifacts clean server deploy deploy-git automations worker \
	serve

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(STAMP) ## create .venv and install the project (torch pinned, CPU build)

# `make run` reports to one kept local server (flows/up.py): $PREFECT_API_URL's when set, else the one at
# SERVER_HOST:SERVER_PORT, started in the background (SQLite in .prefect/) when none answers there.
UP := SERVER_HOST=$(SERVER_HOST) SERVER_PORT=$(SERVER_PORT) $(PY) -m flows.up

run: $(STAMP) ## run the default job (Advertising) on the kept local server; options: ARGS="--preset seed"
	@api="$$($(UP) start)" && PREFECT_API_URL="$$api" $(PY) -m flows.train $(ARGS)

stop: $(STAMP) ## stop the local Prefect server `make run` started
	@$(UP) stop

status: $(STAMP) ## whether the local Prefect server is up, and where
	@$(UP) status

# `make test`'s pytest-xdist workers, each with its own Prefect server and PREFECT_HOME (tests/conftest.py), a
# module whole on one worker. More workers than the 2 cores: most of a test's time is spent waiting on servers
# and child processes. TEST_WORKERS=0 runs the tests in one process, as plain `pytest` does.
TEST_WORKERS ?= 4

test: $(STAMP) ## run the test suite against real Prefect servers, on pytest-xdist workers (TEST_WORKERS=4)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(ARGS)

test-fast: $(STAMP) ## only the tests marked no_server: no Prefect server is started (LINREG_TEST_SERVER=0)
	LINREG_TEST_SERVER=0 $(PY) -m pytest -m no_server $(ARGS)

bench: $(STAMP) ## cold vs warm (cached) run vs a flow of one no-op task per stage; pass ARGS="--runs 9"
	$(PY) -m bench.cache_bench $(ARGS)

bench-naive: $(STAMP) ## the flow cold and cached vs a naive Prefect flow of the same stages, whole processes
	$(PY) -m bench.naive_bench $(ARGS)

bench-scale: $(STAMP) ## flow vs the plain script at 200 and 2M rows; ARGS="--rows 20000000 --repeats 1"
	$(PY) -m bench.scale_bench $(ARGS)

bench-predict: $(STAMP) ## predict rows/s and peak RSS at 2M rows (trains once first); ARGS="--rows 20000000"
	$(PY) -m bench.predict_bench $(ARGS)

bench-sweep: $(STAMP) ## a 12-configuration sweep and --folds 5 vs single runs at 2M rows; ARGS="--rows 500000"
	$(PY) -m bench.sweep_bench $(ARGS)

bench-store: $(STAMP) ## artifacts in a local folder vs on S3 (moto on loopback), cold and cached, at 2M rows
	$(PY) -m bench.store_bench $(ARGS)

server: $(STAMP) ## Prefect server + UI on http://127.0.0.1:4200 (SQLite in ~/.prefect unless configured)
	$(PREFECT) server start --host $(SERVER_HOST) --port $(SERVER_PORT)

deploy deploy-git automations worker serve: export PREFECT_API_URL ?= http://$(SERVER_HOST):$(SERVER_PORT)/api

deploy: $(STAMP) ## one machine: create pool local-process if missing, deploy daily, on-demand, predict, predict-on-promotion, sweep
	$(PREFECT) work-pool inspect $(POOL) >/dev/null 2>&1 || $(PREFECT) work-pool create $(POOL) --type process
	$(PREFECT) --no-prompt deploy --all
	$(PY) -m flows.automations apply

automations: $(STAMP) ## alerts by webhook (LINREG_ALERT_WEBHOOK_URL) and the object store's write limit, from automations.yaml
	$(PY) -m flows.automations apply

deploy-git: $(STAMP) ## workers anywhere: pool git-process, git-* deployments (LINREG_GIT_URL=… LINREG_GIT_BRANCH=…)
	$(PREFECT) work-pool inspect $(GIT_POOL) >/dev/null 2>&1 || $(PREFECT) work-pool create $(GIT_POOL) --type process
	$(PREFECT) --no-prompt deploy --all --prefect-file prefect-git.yaml
	$(PY) -m flows.automations apply

worker: $(STAMP) ## start a process worker that runs the deployments' flow runs (pool local-process; POOL=git-process)
	$(PREFECT) worker start --pool $(POOL) --type process

serve: $(STAMP) ## without a work pool: serve the flow on the daily schedule from this process (flows/serve.py)
	$(PY) -m flows.serve $(ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-artifacts: $(STAMP) ## delete what the store wrote in data/artifacts (or LINREG_ARTIFACTS_DIR), nothing else
	@if [ -e "$${LINREG_ARTIFACTS_DIR:-data/artifacts}" ]; then $(PY) -m flows.train --clean-artifacts; fi

clean: ## also delete the virtual environment
	@if [ -x $(PY) ]; then $(MAKE) --no-print-directory clean-artifacts; fi
	rm -rf $(VENV)
