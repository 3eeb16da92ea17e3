# Two commands for a fresh machine:  `make run`  and  `make test`  (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The delivery workers' environment: MLflow's tracing SDK (mlflow-tracing) instead of the full
# package, ~60 MB per process instead of ~210 MB. The full package stays in $(VENV) for the
# tracking server, the tests and commands such as export_eval_dataset (mlflow.genai.datasets).
SDK_VENV := .venv-sdk
SDK_INSTALLED := $(SDK_VENV)/.installed

.PHONY: install install-sdk run test test-fast lint format bench clean

$(INSTALLED): pyproject.toml constraints.txt
	@echo "==> creating $(VENV) and installing dependencies (first time: ~1-2 min)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	@$(BIN)/pip install --quiet -c constraints.txt ".[dev]"
	@touch $(INSTALLED)

install: $(INSTALLED)

$(SDK_INSTALLED): requirements-sdk.txt constraints.txt
	@echo "==> creating $(SDK_VENV) for the delivery workers (MLflow tracing SDK; first time: ~1-2 min)"
	@test -x $(SDK_VENV)/bin/python || $(PYTHON) -m venv $(SDK_VENV)
	@$(SDK_VENV)/bin/pip install --quiet --upgrade pip
	@$(SDK_VENV)/bin/pip install --quiet -c constraints.txt -r requirements-sdk.txt
	@touch $(SDK_INSTALLED)

install-sdk: $(SDK_INSTALLED)

var/secret_key:
	@mkdir -p var
	@$(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))' > var/secret_key
	@chmod 600 var/secret_key

## Set up and run the app on http://127.0.0.1:8000 with the MLflow UI on http://127.0.0.1:5000
run: install install-sdk var/secret_key
	@bin/serve

## Set up and run every test (the slow fault/load tests too), then the suite again on a
## throwaway PostgreSQL when Debian's postgresql is installed; CI runs exactly this
test: install install-sdk
	@$(BIN)/pytest
	@if ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then \
	  echo "==> the suite again on PostgreSQL (production's database)"; \
	  bin/with-postgres $(BIN)/pytest -q -m "not e2e and not slow"; \
	else \
	  echo "(PostgreSQL not installed: its run is skipped; .ci/run installs it)"; \
	fi

## The everyday loop: skips tests marked slow
test-fast: install
	@$(BIN)/pytest -m "not slow"

lint: install
	@$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	@$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: install
	@$(BIN)/python bench/turn_latency.py

clean:
	rm -rf $(VENV) $(SDK_VENV) var
