# reelstream's task runner. `make help` lists the targets.
# The local stack (Kafka, Postgres, S3) is described in docs/infra.md.

SHELL := /bin/bash
.DEFAULT_GOAL := help
# uv from PATH, else the module pip installed (a fresh pyenv may not have its shim yet).
UV ?= $(shell command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv)

.PHONY: help setup up down status logs clean lint lint-deploy test run services stop demo replay bench bench-fleet bench-fleet-clocks soak fuzz-api test-unit

help: ## list the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# --- environment and local stack --------------------------------------------------------------------

setup: ## install everything: system packages, uv, the Python env, the Kafka and S3 jars
	bash infra/setup.sh

up: ## start Postgres, Kafka and S3, create topics and bucket, run migrations (idempotent)
	bash infra/stack.sh up

down: ## stop the services and every part of the local stack
	bash infra/services.sh stop
	bash infra/stack.sh down

status: ## one line per part of the local stack
	bash infra/stack.sh status

logs: ## the end of each log in .run/logs (FOLLOW=1 to follow)
	bash infra/stack.sh logs $(if $(FOLLOW),-f)

clean: ## stop the services and the stack, delete their data and logs (.run/); downloads in .cache/ stay
	bash infra/services.sh stop
	bash infra/stack.sh clean

# --- checks -----------------------------------------------------------------------------------------

lint: ## ruff, ruff format --check, mypy --strict (the deployment checks are `make lint-deploy`)
	$(UV) run --no-sync ruff check . && $(UV) run --no-sync ruff format --check . && $(UV) run --no-sync mypy schemas services

lint-deploy: ## build every k8s overlay, validate it offline, scan manifests and Dockerfiles, check compose
	bash infra/validate-deploy.sh

fuzz-api: ## schemathesis against the running api, every check, many examples (`make services` first)
	$(UV) run --no-sync python -m schemathesis.cli run http://127.0.0.1:8000/openapi.json --checks all \
		--header "Authorization: Bearer $$(cat .run/api-key)" \
		--max-examples $(or $(EXAMPLES),100) --no-color

test-unit: ## the unit tests only: no stack, no services (seconds to a minute)
	$(UV) run --no-sync pytest tests/unit

test: up ## the whole test suite: unit, integration and e2e (brings the stack up first)
	$(UV) run --no-sync pytest tests

# --- services ---------------------------------------------------------------------------------------

run: setup up services demo ## from nothing: install, start everything, generate one video into out/

services: ## start api, scheduler, projector and the workers (tiny-mochi on the CPU)
	bash infra/services.sh start

stop: ## stop the services (the stack stays up)
	bash infra/services.sh stop

demo: ## submit one prompt, follow its progress, save the MP4 into out/
	$(UV) run --no-sync python infra/demo.py

replay: ## rebuild the read model from offset 0 into schema `replay` and compare it with the live one
	$(UV) run --no-sync reelstream-projector replay --schema replay
	$(UV) run --no-sync reelstream-projector compare --schema replay

bench: up ## the benchmarks of bench/ (numbers printed, see docs/benchmarks.md)
	bash bench/run.sh

FLEET_RUNS ?= 3
bench-fleet: up ## the fleet benchmark, reelstream beside Kafka and Celery baselines, FLEET_RUNS (3) runs: docs/benchmarks.md's table (~40 min)
	$(UV) run --no-sync python -m bench.fleet --runs $(FLEET_RUNS)

FLEET_CLOCKS ?= 50 25 10
bench-fleet-clocks: up ## the fleet burst on slower GPU clocks (H100 times / FLEET_CLOCKS), beside Celery priority: docs/benchmarks.md's clocks table (~35 min)
	@stamp=$$(date -u +%Y-%m-%dT%H%M%SZ); \
	for s in $(FLEET_CLOCKS); do \
	  $(UV) run --no-sync python -m bench.fleet --only burst --scale $$s --baselines celery-priority \
	    --json bench/results/fleet-$$stamp-burst-scale$$s.json || exit 1; \
	done; \
	$(UV) run --no-sync python -m bench.fleet_report bench/results/fleet-$$stamp-burst-scale*.json

SOAK_SECONDS ?= 600
SOAK_SEED ?= 1
soak: ## jobs, SSE watchers and random faults for SOAK_SECONDS (600), then every guarantee checked
	$(UV) run --no-sync python bench/soak.py --seconds $(SOAK_SECONDS) --seed $(SOAK_SEED)
