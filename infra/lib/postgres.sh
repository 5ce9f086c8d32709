# shellcheck shell=bash
# PostgreSQL from Debian's packages, in its own data folder, on 127.0.0.1:5432.
# Sourced by infra/stack.sh after lib/common.sh.

PG_PORT=5432
PG_USER=reelstream
PG_PASSWORD=reelstream
PG_DATABASE=reelstream
# Postgres refuses to run as root, so the server runs as the `postgres` OS user the package creates.
PG_OS_USER=postgres

# The newest server the postgresql package installed (Debian 12: 15), unless PG_BIN says otherwise.
pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$dir" ]] || die "postgres: no server under /usr/lib/postgresql; run 'make setup'"
    echo "$dir"
}

as_pg_user() {
    setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups --reset-env -- "$@"
}

# Where the cluster lives. Normally .run/postgres; but when the postgres user cannot reach into this
# checkout (it sits under /root, mode 0700), the cluster goes to /var/lib/reelstream/<checkout hash>
# and .run/postgres becomes a link to it, so the server never needs access to the checkout itself.
pg_data_dir() {
    if as_pg_user test -x "$RUN_DIR"; then
        echo "$RUN_DIR/postgres"
    else
        echo "/var/lib/reelstream/$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)/postgres"
    fi
}

pg_marker() { echo "-D $(pg_data_dir)"; }

pg_ready() {
    PGPASSWORD="$PG_PASSWORD" "$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres \
        -XtAqc 'select 1' >/dev/null
}

pg_init_cluster() {
    local data="$1" pwfile
    log "postgres: creating a cluster in $data"
    install -d -m 0755 "$(dirname "$data")"
    install -d -m 0700 -o "$PG_OS_USER" -g "$PG_OS_USER" "$data"
    [[ "$data" == "$RUN_DIR/postgres" ]] || ln -sfn "$data" "$RUN_DIR/postgres"
    # The bootstrap superuser is the application role itself: local only, and migrations and tests
    # can create schemas and extensions without a second set of credentials.
    pwfile="$(mktemp)"
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    chown "$PG_OS_USER" "$pwfile"
    as_pg_user "$(pg_bin)/initdb" -D "$data" -U "$PG_USER" --pwfile="$pwfile" \
        --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
        >>"$LOG_DIR/postgres.log" 2>&1 || {
        rm -f "$pwfile"
        show_log_tail postgres
        die "postgres: initdb failed (log: $LOG_DIR/postgres.log)"
    }
    rm -f "$pwfile"
}

# A cluster outside the checkout whose .run/postgres link is gone belongs to a deleted checkout at the
# same path (a CI clone, say): its schema may be of other code, so it starts over like .run did.
pg_drop_orphan() {
    local data="$1"
    [[ "$data" != "$RUN_DIR/postgres" && ! -L "$RUN_DIR/postgres" && -d "$data" ]] || return 0
    warn "postgres: removing $data, left by an earlier checkout at this path"
    rm -rf "$data"
}

# Removes the cluster and its data (only while stopped).
postgres_clean() {
    local data
    data="$(pg_data_dir)"
    rm -rf "$data"
    rm -rf "$RUN_DIR/postgres"
}

pg_ensure_database() {
    local exists
    exists="$(PGPASSWORD="$PG_PASSWORD" "$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" \
        -d postgres -XtAqc "select 1 from pg_database where datname = '$PG_DATABASE'")"
    if [[ "$exists" != 1 ]]; then
        PGPASSWORD="$PG_PASSWORD" "$(pg_bin)/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" \
            -O "$PG_USER" "$PG_DATABASE"
        log "postgres: created database $PG_DATABASE"
    fi
}

# Starts the server unless it already runs; readiness is checked by postgres_wait.
postgres_start() {
    local data pid
    data="$(pg_data_dir)"
    if pid="$(running_pid postgres "$(pg_marker)")"; then
        log "postgres: already running (pid $pid)"
        return 0
    fi
    require_free_ports postgres "$PG_PORT"
    pg_drop_orphan "$data"
    [[ -f "$data/PG_VERSION" ]] || pg_init_cluster "$data"
    # Settings on the command line rather than in postgresql.conf, so a changed value here applies
    # to an existing cluster too. No Unix socket: everything connects over TCP with a password.
    log "postgres: starting"
    start_detached postgres setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups \
        --reset-env -- "$(pg_bin)/postgres" -D "$data" -c listen_addresses=127.0.0.1 \
        -c port="$PG_PORT" -c unix_socket_directories= -c max_connections=200
}

postgres_wait() {
    local pid
    pid="$(<"$(pid_file postgres)")"
    wait_until postgres "$pid" pg_ready
    pg_ensure_database
    log "postgres: ready on 127.0.0.1:$PG_PORT (database $PG_DATABASE, data $(pg_data_dir))"
}

# SIGINT is Postgres's "fast" shutdown: roll back open transactions, checkpoint, exit.
postgres_down() { stop_part postgres "$(pg_marker)" INT; }

postgres_status() {
    local pid
    if pid="$(running_pid postgres "$(pg_marker)")" && pg_ready; then
        echo "postgres  up    pid $pid  127.0.0.1:$PG_PORT  data $(pg_data_dir)"
    elif [[ -n "${pid:-}" ]]; then
        echo "postgres  starting or unhealthy  pid $pid"
    else
        echo "postgres  down"
    fi
}
