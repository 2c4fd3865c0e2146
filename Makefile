# fastflow — the two commands a user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-fast lint bench install bytecode browser docker screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# `make test` needs the developer extras (pytest, moto, playwright, mypy, ...);
# `make run` needs fastflow's runtime dependencies only: two stamps.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

install: $(VENV)/.installed

# fastflow's own bytecode cache, as a regular (not editable) `pip install` writes it:
# without it, every `fastflow` command compiles its sources again wherever
# PYTHONDONTWRITEBYTECODE is set (about 0.3 s of each command's start-up). Only files
# whose source changed are compiled; Python ignores a cache older than its source.
bytecode: install
	$(BIN)/python -m compileall -q src/fastflow

# Browser tests use Debian's Chromium (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Container tests use Debian's Docker daemon: tests/dockerd.py starts its own dockerd
# (private data root and socket) and builds its base image offline.
docker:
	@{ command -v dockerd || test -x /usr/sbin/dockerd; } >/dev/null 2>&1 || { \
	  echo "installing Debian docker.io for the container tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; }

# Every fastflow command reads .env in its working folder: with this one, `fastflow run
# hello` in a second terminal (in this folder) sees the server's pipelines and database.
# An existing .env is never touched.
.env:
	@printf '%s\n' \
	  '# written by `make run`: every fastflow command started in this folder reads it' \
	  'PIPELINES_DIR=examples/pipelines' \
	  'DATA_DIR=./data' \
	  'LOGS_DIR=./logs' > $@
	@echo "wrote .env for the example pipelines (PIPELINES_DIR, DATA_DIR, LOGS_DIR)"

## Start fastflow on http://127.0.0.1:8000 with SQLite and the example pipelines.
run: $(VENV)/.installed-runtime .env
	$(BIN)/python -m compileall -q src/fastflow
	$(BIN)/fastflow serve --host 127.0.0.1 --port 8000

## Run the whole test suite (starts its own S3, SMTP and Teams test servers).
# TEST_WORKERS pytest-xdist processes, one test file each at a time (--dist loadfile: a
# file's module fixtures are built once); every test has its own folders, databases and
# ports, and the session servers (moto, dockerd) are per worker or shared by design.
TEST_WORKERS ?= 2
test: install bytecode browser docker
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

## The pure and unit tests only (no S3, PostgreSQL, browser or subprocess servers): seconds.
FAST_TESTS := tests/test_config.py tests/test_architecture.py tests/lifecycle/test_retention.py \
	tests/lifecycle/test_selection.py tests/lifecycle/test_truncate.py tests/runs/test_logcapture.py \
	tests/runs/test_pipelines.py tests/runs/test_pipeline_config.py \
	tests/notify/test_notify_incidents.py tests/orchestration/test_schedules.py \
	tests/orchestration/test_retries.py
test-fast: install bytecode
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest -q -m "not slow" $(FAST_TESTS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# wrk (Debian) loads the API (a Python load generator saturates first); s3rver, the second
# S3 server, is installed from npm by the benchmark itself on first use.
bench: install bytecode
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python bench/run_all.py

## Refresh the screenshots in docs/img from the browser tests.
screenshots: install browser
	FASTFLOW_SCREENSHOTS=$(CURDIR)/docs/img $(BIN)/pytest -q tests/web/test_ui.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
