# The developer loop (docs/development.md). After `pip install -e '.[test]'`:
#   make test       unit, in-process and project tests, in parallel (pytest-xdist); no Docker needed
#   make lint       ruff check, ruff format --check and mypy (scripts/lint.sh)
#   make docs       the documentation site, built with --strict (make docs-serve: live on :8000)
#   make test-all   every test against a deployed stack, then on Swarm: bash tests/run.sh (Docker)
# PYTHON picks the interpreter (make test PYTHON=.venv/bin/python); its scripts directory goes
# first on PATH, so ruff, mypy and mkdocs are the ones installed beside it, activated or not.

PYTHON ?= python3
BIN := $(shell $(PYTHON) -c 'import os, sys; print(os.path.dirname(sys.executable))')
export PATH := $(BIN):$(PATH)
export NO_MKDOCS_2_WARNING := 1
# pytest-xdist workers: one per core ("auto"); JOBS=0 runs in one process.
JOBS ?= auto
# What `make test` runs: the unit, in-process (service) and project tests, but the linters' test
# (make lint runs them). The fuzzers (tests/fuzz, ~100 s of CPU), the linters' test and the stack's
# integration tests (skipped without one) run in make test-all.
TESTS ?= tests/unit tests/service tests/project --ignore=tests/project/test_lint.py
# Passed on to pytest: make test ARGS="-k chain -x"
ARGS ?=

.PHONY: help test test-all lint format docs docs-serve settings-table configs

help:
	@sed -n '2,5p' Makefile | sed 's/^# *//'

test:
	$(PYTHON) -m pytest -n $(JOBS) --dist worksteal -p no:cacheprovider $(TESTS) $(ARGS)

test-all:
	bash tests/run.sh $(ARGS)

lint:
	bash scripts/lint.sh

format:
	ruff check --fix .
	ruff format .

docs:
	$(PYTHON) -m mkdocs build --strict

docs-serve:
	$(PYTHON) -m mkdocs serve --strict

settings-table:
	$(PYTHON) scripts/settings_table.py

# The generated files: the dashboard JSON from grafana/dashboard.py, then the config copies
# Kubernetes reads (deploy/k8s/base/config/), the dashboard among them.
configs:
	$(PYTHON) grafana/dashboard.py --write
	$(PYTHON) scripts/k8s_configs.py --write
