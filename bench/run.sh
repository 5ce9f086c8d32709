#!/usr/bin/env bash
# `make bench`: the benchmarks that run on this machine, with the services started if they are not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash infra/services.sh start
echo "== pipeline benchmark (tiny-mochi, CPU, local stack) =="
.venv/bin/python bench/pipeline.py "$@"
