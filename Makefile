# Fashion-MNIST pipeline. `make help` lists the targets; `make run` and `make test` set up everything they need.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(BIN):$(PATH)

.PHONY: help setup system run test test-system test-fast test-drills lint format bench reliability ui clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e ".[dev]"
	touch $@

setup: $(VENV)/.installed system ## create .venv with the pinned packages and install the data package

system: ## Debian's dataset-fashion-mnist (the download stage tries the official mirrors first)
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

run: setup ## set up, then run the whole pipeline (dvc repro) on the real data
	$(BIN)/fmnist run

test-system: ## PostgreSQL, Prometheus and Alertmanager, real servers the tests start on 127.0.0.1 (the stack, the shared store, scraping fmnist serve)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql prometheus prometheus-alertmanager; }

test: setup test-system ## set up, then run the test suite but the long fault drills (three pytest-xdist workers, one file at a time each)
	$(BIN)/python -m pytest -q -rs --durations=15 -m "not drill" -n 3 --dist loadfile --no-loadscope-reorder

test-drills: setup test-system ## the long fault drills on a team stack of their own: workers, servers and the stack killed or restarted (CI runs them after make test)
	$(BIN)/python -m pytest -q -rs --durations=5 -m drill

test-fast: setup ## the tests without the slow (training, end-to-end) ones, on three workers like make test
	$(BIN)/python -m pytest -q -m "not slow" -n 3 --dist loadfile --no-loadscope-reorder

lint: setup ## ruff lint and format check, and the architecture contracts (lint-imports)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: setup ## ruff format and autofix
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: setup ## the benchmark suite on a quiet machine (over an hour on 2 cores): reports/benchmarks.{json,md}
	$(BIN)/fmnist bench

reliability: setup ## fault, bad-input and concurrency tests with long repetitions, then a 10-min server soak (about 40 min): reports/reliability.md
	$(BIN)/python tests/reliability.py

ui: setup ## the MLflow UI on http://127.0.0.1:5000
	$(BIN)/fmnist ui

clean: ## remove the virtual environment and caches (keeps data, models and the MLflow store)
	rm -rf $(VENV) .pytest_cache .ruff_cache
