# The two commands a newcomer needs are `make demo` and `make test`; the rest are their parts.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STATE_DIR ?= $(or $(PORTAL_STATE_DIR),/var/tmp/infer-portal-$(shell id -u))
ENV_FILE := $(STATE_DIR)/platform.env
export PORTAL_STATE_DIR := $(STATE_DIR)

.PHONY: venv deps binaries platform platform-down platform-status demo test lint migrate

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## Go-built binaries (Kubernetes, KWOK, helm), cached by version outside the repo.
binaries:
	bash deploy/local/build-binaries.sh all

## The local platform: PostgreSQL, Redis, etcd, Kubernetes control plane, KWOK GPU nodes, Gateway API.
platform: venv binaries
	$(PY) deploy/local/platformctl.py up

platform-down: venv
	$(PY) deploy/local/platformctl.py down

platform-status: venv
	$(PY) deploy/local/platformctl.py status

migrate: platform
	set -a && . $(ENV_FILE) && set +a && $(PY) manage.py migrate --noinput

demo: venv binaries
	$(PY) deploy/local/demo.py

lint: venv
	$(VENV)/bin/ruff check .

test: platform
	set -a && . $(ENV_FILE) && set +a && $(VENV)/bin/pytest $(PYTEST_ARGS)
