#!/usr/bin/env bash
# `make bench`: the benchmarks that run on this machine, with the services started if they are not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash infra/services.sh start
echo "== pipeline benchmark (tiny-mochi, CPU, local stack) =="
.venv/bin/python bench/pipeline.py "$@"
echo "== scheduling rules on a virtual clock: the fleet burst's bound (bench/fleet_sim.py) =="
.venv/bin/python -m bench.fleet_sim
echo "== the projector's cost per event, by batch size (bench/projector.py) =="
.venv/bin/python bench/projector.py
echo "== the control plane: submits, watchers, reads, per-job overhead, beside Celery+Redis (bench/control_plane.py; restarts the services) =="
.venv/bin/python bench/control_plane.py
echo "== idle cost by the consumers' fetch wait (bench/idle.py; restarts the services) =="
.venv/bin/python bench/idle.py --seconds 30
echo "(the fleet benchmark itself, three runs of about 15 min: make bench-fleet; see docs/benchmarks.md)"
