#!/usr/bin/env bash
# reelstream's own services as local processes, on the stack that `make up` started.
#
#   infra/services.sh start    api, scheduler, projector, notifier and REELSTREAM_GPU_SLOTS workers (tiny-mochi, CPU)
#   infra/services.sh stop     SIGTERM each (workers stop their job at a checkpoint), then wait
#   infra/services.sh status   one line per service
#
# Logs go to .run/logs/<service>.log, pid files to .run/<service>.pid. See docs/running.md.
set -euo pipefail

# shellcheck source=infra/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SLOTS="${REELSTREAM_GPU_SLOTS:-2}"
API_PORT="${REELSTREAM_PORT:-8000}"
PY="$REPO_ROOT/.venv/bin/python"

# Local development defaults; anything already exported wins.
export REELSTREAM_GPU_SLOTS="$SLOTS"
export REELSTREAM_MODEL="${REELSTREAM_MODEL:-tiny-mochi}"
export REELSTREAM_DEVICE="${REELSTREAM_DEVICE:-cpu}"
export REELSTREAM_TORCH_THREADS="${REELSTREAM_TORCH_THREADS:-1}"
export REELSTREAM_CHECKPOINT_EVERY="${REELSTREAM_CHECKPOINT_EVERY:-2}"
export REELSTREAM_TINY_CACHE_DIR="${REELSTREAM_TINY_CACHE_DIR:-$CACHE_DIR/tiny-models}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

services() {
    echo api scheduler projector notifier
    for ((slot = 0; slot < SLOTS; slot++)); do echo "worker-$slot"; done
}

# The command line of a service, also the marker that finds its process (workers carry their name).
marker() {
    case "$1" in
    worker-*) echo "$PY -m services.worker.main $1" ;;
    *) echo "$PY -m services.$1.main" ;;
    esac
}

start_one() {
    local name="$1" pid
    if pid="$(running_pid "$name" "$(marker "$name")")"; then
        log "$name: already running (pid $pid)"
        return 0
    fi
    case "$name" in
    api) require_free_ports api "$API_PORT" ;;
    worker-*)
        export REELSTREAM_SLOT="${name#worker-}" REELSTREAM_SCRATCH_DIR="$RUN_DIR/scratch/$name"
        export REELSTREAM_METRICS_PORT="$((9110 + ${name#worker-}))" ;;
    scheduler) export REELSTREAM_METRICS_PORT=9101 ;;
    projector) export REELSTREAM_METRICS_PORT=9102 ;;
    # Local receivers listen on http://127.0.0.1: allowed here only (never in production).
    notifier)
        export REELSTREAM_METRICS_PORT=9103 REELSTREAM_ALLOW_HTTP="${REELSTREAM_ALLOW_HTTP:-true}"
        export REELSTREAM_ALLOW_PRIVATE_TARGETS="${REELSTREAM_ALLOW_PRIVATE_TARGETS:-true}" ;;
    esac
    (cd "$REPO_ROOT" && start_detached "$name" $(marker "$name"))
    unset REELSTREAM_SLOT REELSTREAM_METRICS_PORT REELSTREAM_ALLOW_HTTP REELSTREAM_ALLOW_PRIVATE_TARGETS
}

# A service is ready when it logged its ready line since its last start (api: /healthz answers 200).
logged_since_start() {
    awk -v pat="$2" '/^===== .* start .* =====$/ { hit = 0 } index($0, pat) { hit = 1 } END { exit !hit }' \
        "$LOG_DIR/$1.log"
}

api_ready() { "$PY" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$API_PORT/healthz', timeout=2).status_code != 200)"; }

wait_ready() {
    local name="$1" pid
    pid="$(running_pid "$name" "$(marker "$name")")" || die "$name: not running (log: $LOG_DIR/$name.log)"
    case "$name" in
    api) wait_until api "$pid" api_ready ;;
    scheduler) wait_until scheduler "$pid" logged_since_start scheduler "rebuilt state" ;;
    projector) wait_until projector "$pid" logged_since_start projector "assigned partitions" ;;
    notifier) wait_until notifier "$pid" logged_since_start notifier "assigned partitions" ;;
    worker-*) wait_until "$name" "$pid" logged_since_start "$name" "ready with model" ;;
    esac
    log "$name: ready"
}

cmd_start() {
    local started=$SECONDS name
    ensure_run_dirs
    [[ -x "$PY" ]] || die "no Python environment at .venv: run 'make setup'"
    for name in $(services); do start_one "$name"; done
    for name in $(services); do wait_ready "$name"; done
    log "services ready in $((SECONDS - started))s: api http://127.0.0.1:$API_PORT (docs at /docs)"
}

cmd_stop() {
    local name
    # Workers first: they stop their job at a checkpoint while the scheduler still listens.
    for name in $(services | tac); do stop_part "$name" "$(marker "$name")" TERM; done
}

cmd_status() {
    local name pid
    for name in $(services); do
        if pid="$(running_pid "$name" "$(marker "$name")")"; then
            printf '%-10s up    pid %s\n' "$name" "$pid"
        else
            printf '%-10s down\n' "$name"
        fi
    done
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) die "usage: infra/services.sh start|stop|status" ;;
esac
