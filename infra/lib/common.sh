# shellcheck shell=bash
# Shared helpers for infra/*.sh: paths, messages, pid files, ports and readiness waits.
# Sourced, never run; the caller sets `set -euo pipefail`.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
RUN_DIR="$REPO_ROOT/.run"
LOG_DIR="$RUN_DIR/logs"
CACHE_DIR="$REPO_ROOT/.cache"
INFRA_DIR="$REPO_ROOT/infra"

# How long each part may take to become ready before `up` gives up on it (seconds).
READY_TIMEOUT="${REELSTREAM_READY_TIMEOUT:-90}"
# How long a part may take to exit after SIGTERM before `down` kills it.
STOP_TIMEOUT="${REELSTREAM_STOP_TIMEOUT:-30}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

ensure_run_dirs() {
    # 0755 so the unprivileged postgres user can traverse .run when the repo path allows it.
    install -d -m 0755 "$RUN_DIR" "$LOG_DIR"
}

pid_file() { echo "$RUN_DIR/$1.pid"; }

# The command line of pid $1, arguments joined by spaces; fails if the process is gone.
# Read with builtins only, so no helper process of ours ever shows up with the marker in its arguments.
cmdline_of() {
    local -a args
    [[ -r "/proc/$1/cmdline" ]] || return 1
    mapfile -d '' args <"/proc/$1/cmdline" 2>/dev/null || return 1
    ((${#args[@]})) || return 1
    echo "${args[*]}"
}

# The pid recorded for part $1 if that process is alive and its command line still contains $2.
# Matching the command line guards against a stale pid file whose pid was reused by another program.
running_pid() {
    local name="$1" marker="$2" file pid cmd
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    cmd="$(cmdline_of "$pid")" || return 1
    [[ "$cmd" == *"$marker"* ]] || return 1
    echo "$pid"
}

# Pids of processes whose command line contains $1 (a path inside this repository), for parts whose
# pid file was lost. Only processes started from this checkout can match.
pids_matching() {
    local marker="$1" dir pid cmd
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        cmd="$(cmdline_of "$pid")" || continue
        [[ "$cmd" == *"$marker"* ]] && echo "$pid"
    done
    return 0
}

port_open() {
    # bash's /dev/tcp: no extra tool needed, and it fails fast on a refused connection.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Who listens on 127.0.0.1:$1 (or any address), as ss prints it; empty if nobody.
port_owner() {
    ss -Hltnp "sport = :$1" 2>/dev/null | awk 'NR == 1 {print $4, $6}' || true
}

# Fails with a message naming $1 (the part) when one of the ports is taken by anything.
require_free_ports() {
    local part="$1" port owner
    shift
    for port in "$@"; do
        if port_open "$port"; then
            owner="$(port_owner "$port")"
            die "$part: port $port is already in use by another program (${owner:-owner unknown}); stop it or free the port"
        fi
    done
}

# Starts "$@" detached in its own session (so a Ctrl-C of make or the end of a CI step does not reach
# it), stdout and stderr appended to .run/logs/$1.log, and records its pid in .run/$1.pid.
start_detached() {
    local name="$1"
    shift
    local logfile="$LOG_DIR/$name.log"
    # Logs are appended across restarts; past 20 MB the old one moves aside to .log.1.
    if [[ -f "$logfile" ]] && (($(stat -c %s "$logfile") > 20 * 1024 * 1024)); then
        mv -f "$logfile" "$logfile.1"
    fi
    printf '\n===== %s start %s =====\n' "$name" "$(date -Is)" >>"$logfile"
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
    echo "$!" >"$(pid_file "$name")"
}

# Polls `$3...` (a command) until it succeeds. Fails naming part $1 if its pid $2 exits first or the
# deadline passes, and shows the end of the part's log so the reason is on screen.
wait_until() {
    local name="$1" pid="$2" deadline=$((SECONDS + READY_TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail "$name"
            die "$name: the process exited before it became ready (log: $LOG_DIR/$name.log)"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$name"
            die "$name: not ready after ${READY_TIMEOUT}s (log: $LOG_DIR/$name.log)"
        fi
        sleep 0.25
    done
}

show_log_tail() {
    local logfile="$LOG_DIR/$1.log"
    [[ -f "$logfile" ]] || return 0
    echo "----- last lines of $logfile since its last start -----" >&2
    awk '/^===== .* start .* =====$/ { n = 0 } { line[n++] = $0 }
         END { for (i = (n > 25 ? n - 25 : 0); i < n; i++) print line[i] }' "$logfile" >&2
    echo "-----" >&2
}

# Sends signal $3 to part $1's pid $2, waits up to STOP_TIMEOUT, then SIGKILLs it.
stop_pid() {
    local name="$1" pid="$2" signal="$3" deadline=$((SECONDS + STOP_TIMEOUT))
    kill "-$signal" "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            warn "$name: pid $pid still running ${STOP_TIMEOUT}s after SIG$signal; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            return 0
        fi
        sleep 0.2
    done
}

# Stops part $1 (pid file first, then any process of this checkout whose command line contains $2).
stop_part() {
    local name="$1" marker="$2" signal="$3" pid stopped=0
    if pid="$(running_pid "$name" "$marker")"; then
        stop_pid "$name" "$pid" "$signal"
        stopped=1
    fi
    for pid in $(pids_matching "$marker"); do
        warn "$name: stopping pid $pid that had no pid file"
        stop_pid "$name" "$pid" "$signal"
        stopped=1
    done
    rm -f "$(pid_file "$name")"
    if ((stopped)); then log "$name: stopped"; else log "$name: not running"; fi
}

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    else
        command -v java || die "java not found: run 'make setup'"
    fi
}

# The uv command: the `uv` on PATH, else the module pip installed (pyenv shims may lag behind).
uv_cmd() {
    if command -v uv >/dev/null 2>&1; then
        echo uv
    else
        echo "python3 -m uv"
    fi
}

# Fetches the runtime classpath that infra/$1/pom.xml names into .cache/$1-libs, once per pom version.
# Downloaded into a scratch folder first, so an interrupted fetch never leaves a half classpath.
ensure_maven_libs() {
    local name="$1" pom="$INFRA_DIR/$1/pom.xml" dest="$CACHE_DIR/$1-libs" want tmp
    want="$(sha256sum "$pom" | cut -d' ' -f1)"
    [[ -f "$dest/.pom.sha256" && "$(<"$dest/.pom.sha256")" == "$want" ]] && return 0
    if [[ -d "$dest" && -n "$(pids_matching "$dest/")" ]]; then
        warn "$name: infra/$name/pom.xml changed but the running server uses $dest; 'make down' first"
        return 0
    fi
    command -v mvn >/dev/null || die "$name: Maven (mvn) not found; run 'make setup'"
    log "$name: fetching jars from Maven Central into $dest"
    install -d -m 0755 "$CACHE_DIR"
    tmp="$(mktemp -d "$CACHE_DIR/.$name-libs.XXXXXX")"
    if ! mvn -B -q -f "$pom" dependency:copy-dependencies -DoutputDirectory="$tmp" >"$LOG_DIR/mvn-$name.log" 2>&1; then
        rm -rf "$tmp"
        tail -n 30 "$LOG_DIR/mvn-$name.log" >&2
        die "$name: Maven could not fetch the jars (log: $LOG_DIR/mvn-$name.log)"
    fi
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$dest"
    mv "$tmp" "$dest"
}

# Fetches the Kafka and S3Proxy jars side by side: on a cold machine that halves the wait, since
# both are mostly waiting on the network.
ensure_all_maven_libs() {
    local kafka_pid s3_pid
    ensure_maven_libs kafka &
    kafka_pid=$!
    ensure_maven_libs s3proxy &
    s3_pid=$!
    wait "$kafka_pid" || die "kafka: jars missing (see above)"
    wait "$s3_pid" || die "s3proxy: jars missing (see above)"
}

# Runs a Python file of this repository in the project environment that `make setup` built.
# --no-sync: bringing the stack up must never add or remove packages behind the developer's back.
run_python() {
    (cd "$REPO_ROOT" && $(uv_cmd) run --no-sync python "$@")
}
