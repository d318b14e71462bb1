# Two commands do all set-up on a fresh machine:
#   make demo   - the main job (creates/updates the environment first)
#   make test   - the test suite (creates/updates the environment first)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION ?= 0.13.9
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export DAGSTER_HOME ?= $(abspath dagster_home)
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
# the Dagster processes import this checkout (the run launcher of dagster.yaml is pipelines.run_health)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: env demo test test-fast lint format bench rehearsal ui mlflow-ui serve clean-env help

help:
	@echo "make demo       run the main job on the built-in demo data (SEED=n: seed data and training;"
	@echo "                STRICT=1: exit non-zero when a claim of the verdict fails)"
	@echo "make test       run the whole test suite"
	@echo "make test-fast  skip tests marked slow"
	@echo "make lint       ruff: lint and format check (as CI runs it)"
	@echo "make format     ruff: format the code and fix what lint can"
	@echo "make ui         Dagster UI on 127.0.0.1:3000"
	@echo "make mlflow-ui  MLflow UI on 127.0.0.1:5000"
	@echo "make serve      MLflow scoring server for models:/audioclip@champion on 127.0.0.1:5001 (MODEL=, SERVE_PORT=)"
	@echo "make bench      benchmarks (ORIGINAL=DIR: side by side with a checkout of the original code)"
	@echo "make rehearsal  the paper profile at full model size through Dagster on real media (random weights;"
	@echo "                ~20 min on 2 cores, ~25 GB of disk; WORKDIR=dir keeps its data root)"

# The environment is (re)built whenever pyproject.toml or uv.lock changes.
$(VENV)/.synced: pyproject.toml uv.lock Makefile
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --group dev --extra pipeline --extra k8s --compile-bytecode
	@touch $@

env: $(VENV)/.synced

demo: env
	$(PY) -m pipelines.demo $(if $(SEED),--seed $(SEED)) $(if $(filter-out 0,$(STRICT)),--strict)

test: env
	$(PY) -m pytest -q

test-fast: env
	$(PY) -m pytest -q -m "not slow"

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: env
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: env
	$(PY) bench/run_all.py $(if $(ORIGINAL),--original $(ORIGINAL))

rehearsal: env
	$(PY) bench/rehearsal.py $(if $(WORKDIR),--workdir $(WORKDIR))

ui: env
	$(PY) -m pipelines.instance
	PYTHONWARNINGS='ignore:Function `dev_command` is superseded' \
	    $(VENV)/bin/dagster dev -h 127.0.0.1 -p $${DAGSTER_PORT:-3000} -w workspace.yaml

mlflow-ui: env
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --workers 1 --host 127.0.0.1 \
	    --port $${MLFLOW_PORT:-5000} --backend-store-uri sqlite:///$${AUDIOCLIP_DATA_ROOT:-$(CURDIR)/data}/mlflow/mlflow.db

# The model in use, served by MLflow's scoring server in this environment (no new one is built).
# Requests carry audio and images as base64 bytes: file paths are refused (AUDIOCLIP_SERVE_PATHS=0),
# so a request cannot read the server's files. MODEL=models:/esresnext@champion (or any models:/ URI).
serve: env
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$${AUDIOCLIP_DATA_ROOT:-$(CURDIR)/data}/mlflow/mlflow.db} \
	AUDIOCLIP_SERVE_PATHS=$${AUDIOCLIP_SERVE_PATHS:-0} PATH=$(abspath $(VENV))/bin:$$PATH \
	    $(VENV)/bin/mlflow models serve -m "$${MODEL:-models:/audioclip@champion}" --env-manager local \
	    -h $${SERVE_HOST:-127.0.0.1} -p $${SERVE_PORT:-5001}

clean-env:
	rm -rf $(VENV)
