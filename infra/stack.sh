#!/usr/bin/env bash
# The local stack of reelstream: PostgreSQL, Apache Kafka (KRaft) and an S3 API, as plain processes.
#
#   infra/stack.sh up       start what is not running, wait until every part is ready, run migrations
#   infra/stack.sh down     stop every part this checkout started
#   infra/stack.sh status   one line per part
#   infra/stack.sh clean    down, then delete every part's data and logs (.run/)
#   infra/stack.sh logs [-f] the end of every log (-f: follow them)
#
# State lives in .run/ (data, pid files, logs in .run/logs/), downloads in .cache/. See docs/infra.md.
set -euo pipefail

# shellcheck source=infra/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=infra/lib/postgres.sh
source "$INFRA_DIR/lib/postgres.sh"
# shellcheck source=infra/lib/kafka.sh
source "$INFRA_DIR/lib/kafka.sh"
# shellcheck source=infra/lib/s3.sh
source "$INFRA_DIR/lib/s3.sh"

# Root is needed to run Postgres as its own OS user and to own its data folder.
require_root() {
    [[ "$(id -u)" == 0 ]] || die "run as root: the stack starts PostgreSQL as the '$PG_OS_USER' user"
}

migrate() {
    if [[ ! -f "$REPO_ROOT/alembic.ini" ]]; then
        warn "migrations: no alembic.ini yet, skipped"
        return 0
    fi
    log "migrations: alembic upgrade head"
    (cd "$REPO_ROOT" && $(uv_cmd) run --no-sync alembic upgrade head) \
        || die "migrations: 'alembic upgrade head' failed (see above)"
    # The local admin key of tenant `default`, kept in .run/api-key (made once; clients read it there).
    (cd "$REPO_ROOT" && $(uv_cmd) run --no-sync reelstream keys local --file "$RUN_DIR/api-key" >/dev/null) \
        || die "api key: 'reelstream keys local' failed (see above)"
    log "api key: local admin key of tenant 'default' in .run/api-key"
}

# Checks every port before starting anything, so a conflict leaves nothing half started.
preflight_ports() {
    running_pid postgres "$(pg_marker)" >/dev/null || require_free_ports postgres "$PG_PORT"
    running_pid kafka "$(kafka_marker)" >/dev/null || require_free_ports kafka "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
    running_pid s3 "$(s3_marker)" >/dev/null || require_free_ports s3 "$S3_PORT"
}

# Waits for the three parts side by side (each also runs its setup step: migrations, topics, bucket),
# then fails naming every part that did not come up.
wait_all_ready() {
    local -a failed=()
    (postgres_wait && migrate) &
    local postgres_job=$!
    kafka_wait &
    local kafka_job=$!
    s3_wait &
    local s3_job=$!
    wait "$postgres_job" || failed+=(postgres)
    wait "$kafka_job" || failed+=(kafka)
    wait "$s3_job" || failed+=(s3)
    ((${#failed[@]} == 0)) || die "not ready: ${failed[*]} (logs in $LOG_DIR; 'make down' stops the rest)"
}

cmd_up() {
    local started=$SECONDS
    require_root
    ensure_run_dirs
    preflight_ports
    ensure_all_maven_libs
    # Start all three first and wait afterwards: the JVMs boot while Postgres is being checked.
    postgres_start
    kafka_start
    s3_start
    wait_all_ready
    log "stack ready in $((SECONDS - started))s: postgres 127.0.0.1:$PG_PORT, kafka 127.0.0.1:$KAFKA_PORT, s3 http://127.0.0.1:$S3_PORT"
}

cmd_down() {
    require_root
    ensure_run_dirs
    s3_down
    kafka_down
    postgres_down
}

cmd_clean() {
    cmd_down
    postgres_clean
    rm -rf "$RUN_DIR"
    log "removed $RUN_DIR"
}

cmd_status() {
    postgres_status
    kafka_status
    s3_status
}

cmd_logs() {
    local -a files=()
    local name
    for name in postgres kafka s3; do
        [[ -f "$LOG_DIR/$name.log" ]] && files+=("$LOG_DIR/$name.log")
    done
    ((${#files[@]})) || die "no logs yet in $LOG_DIR"
    if [[ "${1:-}" == "-f" ]]; then
        tail -n 20 -F "${files[@]}"
    else
        tail -n 30 "${files[@]}"
    fi
}

main() {
    case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    clean) cmd_clean ;;
    logs) cmd_logs "${2:-}" ;;
    *) die "usage: $0 up|down|status|clean|logs [-f]" ;;
    esac
}

main "$@"
