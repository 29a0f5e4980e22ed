# Gantry: the two commands a new user needs are `make up` and `make test` (see README.md).
# Every target installs what it needs itself, so a fresh Debian machine goes from clone to
# green with nothing done by hand.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE_DIR ?= $(CURDIR)/.state
export STATE_DIR
export DATABASE_URL ?= postgres://gantry:gantry@127.0.0.1:5432/gantry
export REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: help venv services sysdeps migrate up test test-cloud test-agent bench clean

help:
	@echo "make up     - the whole cloud on one machine: API on http://127.0.0.1:8000, registry, a local CPU node"
	@echo "              (SIMULATE_GPUS=8xH100, 8xH200 or 4xL40S: and a simulated GPU node)"
	@echo "make test   - install everything and run the test suites"
	@echo "make bench  - run the benchmarks under bench/ and print their figures"

# The venv is rebuilt only when pyproject.toml changes (the stamp records that).
$(VENV)/.stamp: pyproject.toml
	@scripts/ensure-python.sh $(PY)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[agent,dev]'
	touch $@

venv: $(VENV)/.stamp

# Debian packages the project uses (QEMU, busybox, registry, nftables, ...); installs only missing ones.
sysdeps:
	@scripts/ensure-debs.sh

# PostgreSQL and Redis: use DATABASE_URL / REDIS_URL when they answer, else start (and if need be
# install) the local Debian servers and create the gantry role.
services: venv
	@scripts/ensure-services.sh

migrate: services
	$(BIN)/python manage.py migrate --noinput

up: venv services
	@scripts/up.sh

# The import contracts first: a layer broken is a failure before a single test runs.
test: venv sysdeps services
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -p no:cacheprovider --create-db --durations=25

bench: venv sysdeps services
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .state

-include mk/*.mk
