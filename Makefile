# ablab — `make help` lists the targets. Extra Hydra overrides go in ARGS:
#   make train ARGS="model.act=relu optimizer.lr=0.01"
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The install stamp is keyed on pyproject.toml: editing dependencies triggers a reinstall.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
ARGS ?=
PORT ?= 5000
export MLFLOW_DISABLE_TELEMETRY := true

.DEFAULT_GOAL := help
.PHONY: help install train test lint format ui clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[36m%-9s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP) ## Create .venv and install ablab with its dev extras (seconds when up to date)

train: install ## Train the default experiment (digits, CPU); overrides: ARGS="..."
	$(BIN)/python -m ablab.train $(ARGS)

test: install ## Run the test suite (pytest options: ARGS="-k data")
	$(BIN)/python -m pytest $(ARGS)

lint: install ## ruff lint and format check
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: install ## Apply ruff formatting and safe fixes
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

ui: install ## MLflow UI on the local store at http://127.0.0.1:5000 (PORT=..., ABLAB_ROOT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$${ABLAB_ROOT:-$(CURDIR)}/mlflow.db --host 127.0.0.1 --port $(PORT)

clean: ## Remove run outputs, the local MLflow store and caches (keeps .venv)
	rm -rf outputs mlflow.db mlartifacts .pytest_cache .ruff_cache batch.png
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
