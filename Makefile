# reelstream's task runner. `make help` lists the targets.
# The local stack (Kafka, Postgres, S3) is described in docs/infra.md.

SHELL := /bin/bash
.DEFAULT_GOAL := help
# uv from PATH, else the module pip installed (a fresh pyenv may not have its shim yet).
UV ?= $(shell command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv)

.PHONY: help setup up down status logs clean lint test

help: ## list the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

# --- environment and local stack --------------------------------------------------------------------

setup: ## install everything: system packages, uv, the Python env, the Kafka and S3 jars
	bash infra/setup.sh

up: ## start Postgres, Kafka and S3, create topics and bucket, run migrations (idempotent)
	bash infra/stack.sh up

down: ## stop every part of the local stack
	bash infra/stack.sh down

status: ## one line per part of the local stack
	bash infra/stack.sh status

logs: ## the end of each log in .run/logs (FOLLOW=1 to follow)
	bash infra/stack.sh logs $(if $(FOLLOW),-f)

clean: ## stop the stack and delete its data and logs (.run/); downloads in .cache/ stay
	bash infra/stack.sh clean

# --- checks -----------------------------------------------------------------------------------------

lint: ## ruff, ruff format and mypy
	$(UV) run ruff check . && $(UV) run ruff format --check . && $(UV) run mypy schemas services

test: ## the test suite (integration tests need `make up` first)
	$(UV) run pytest tests

# --- services ---------------------------------------------------------------------------------------
# (run, bench and the other service targets go here)
