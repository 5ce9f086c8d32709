#!/usr/bin/env bash
# Validates everything reelstream deploys with, offline, with the real tools (`make lint-deploy`):
#
#   1. every overlay of k8s/overlays (and every component of k8s/components on top of h100x8) builds
#      with kustomize;
#   2. every built resource validates strictly against the Kubernetes JSON schemas of the oldest and
#      newest Kubernetes we support, custom resources get a structural check, every pod is hardened
#      (infra/validate_manifests.py);
#   3. checkov finds nothing unwaived in the built manifests and the Dockerfiles, hadolint nothing in the
#      Dockerfiles (waivers: checkov.io/skipN annotations in k8s/, .hadolint.yaml);
#   4. the alert rules of k8s/components/monitoring pass `promtool check rules` and its unit tests
#      (`promtool test rules`), on the PrometheusRule as kustomize built it;
#   5. docker-compose.yml loads with compose-go, the loader behind `docker compose config`
#      (interpolation, Compose Specification schema, consistency), for each profile, and refuses to
#      render without its required variables; `docker compose config` runs too where it is installed.
#
# Every step runs; the exit status is 1 if any failed. Tools come from infra/install-deploy-tools.sh.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${REELSTREAM_TOOLS_DIR:-$REPO_ROOT/.cache/tools}"
BIN="$TOOLS_DIR/bin"
OUT="$REPO_ROOT/.cache/deploy-validate"
# The oldest and the newest Kubernetes minor the manifests are meant for.
K8S_VERSIONS=(1.31.0 1.35.0)

cd "$REPO_ROOT" || exit 1
"$REPO_ROOT/infra/install-deploy-tools.sh" || { echo "validate-deploy: tools could not be installed" >&2; exit 1; }

failed=()
step() { printf '\n=== %s\n' "$*"; }
fail() { failed+=("$1"); printf 'FAILED: %s\n' "$1"; }

build_overlays() {
    rm -rf "$OUT" && mkdir -p "$OUT/manifests"
    local dir name
    for dir in k8s/overlays/*/; do
        name=$(basename "$dir")
        if "$BIN/kustomize" build "$dir" >"$OUT/manifests/$name.yaml"; then
            echo "built $dir -> $(grep -c '^kind:' "$OUT/manifests/$name.yaml") resources"
        else
            fail "kustomize build $dir"
        fi
    done
    # A component is only ever used inside an overlay: build each on top of h100x8, as its docs say.
    for dir in k8s/components/*/; do
        name=$(basename "$dir")
        local tmp="$OUT/with-$name" rel
        mkdir -p "$tmp"
        rel=$(realpath --relative-to="$tmp" "$REPO_ROOT/k8s")
        printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: video\nresources: [%s]\ncomponents: [%s]\n' \
            "$rel/overlays/h100x8" "$rel/components/$name" >"$tmp/kustomization.yaml"
        if "$BIN/kustomize" build --load-restrictor LoadRestrictionsNone "$tmp" >"$OUT/manifests/h100x8+$name.yaml"; then
            echo "built h100x8 + $dir -> $(grep -c '^kind:' "$OUT/manifests/h100x8+$name.yaml") resources"
        else
            fail "kustomize build h100x8 + $dir"
        fi
    done
}

validate_schemas() {
    local args=() v
    for v in "${K8S_VERSIONS[@]}"; do args+=(-k "$v"); done
    "$TOOLS_DIR/validate/bin/python" infra/validate_manifests.py "${args[@]}" "$OUT"/manifests/*.yaml \
        || fail "manifest validation"
}

# checkov_scan LABEL ARGS...: runs checkov, shows its report, and fails when it finds anything or when
# it scanned nothing (it silently skips a --directory under a hidden folder such as .cache, hence the
# explicit --file arguments).
checkov_scan() {
    local label=$1 out rc
    shift
    # --skip-download: no calls to the vendor's platform (no network here, and none needed offline).
    out=$("$BIN/checkov" "$@" --compact --quiet --skip-download 2>&1)
    rc=$?
    printf '%s\n' "$out" | grep -v '^$'
    if ((rc != 0)); then
        fail "checkov ($label)"
    elif ! grep -Eq 'Passed checks: [1-9]' <<<"$out"; then
        fail "checkov ($label) scanned nothing"
    fi
}

run_checkov() {
    local files=() f
    for f in "$OUT"/manifests/*.yaml; do files+=(--file "$f"); done
    checkov_scan kubernetes --framework kubernetes "${files[@]}"
    checkov_scan dockerfile --framework dockerfile --file docker/Dockerfile.service --file docker/Dockerfile.worker
}

run_hadolint() {
    if "$BIN/hadolint" --no-color --config .hadolint.yaml docker/Dockerfile.service docker/Dockerfile.worker; then
        echo "hadolint: no findings"
    else
        fail "hadolint"
    fi
}

# The rule groups of every PrometheusRule in the built monitoring component, as a Prometheus rule file,
# checked by promtool and tested by the component's rules-test.yaml.
check_rules() {
    local built="$OUT/manifests/h100x8+monitoring.yaml" dir="$OUT/rules"
    if ! command -v promtool >/dev/null; then
        fail "promtool not installed (infra/setup installs it)"
        return
    fi
    mkdir -p "$dir"
    "$TOOLS_DIR/validate/bin/python" - "$built" "$dir/rules.yaml" <<'PY' || { fail "extract the rule groups"; return; }
import sys
import yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
if not docs:
    sys.exit(f"no PrometheusRule in {sys.argv[1]}")
groups = [group for doc in docs for group in doc["spec"]["groups"]]
yaml.safe_dump({"groups": groups}, open(sys.argv[2], "w"), sort_keys=False)
PY
    promtool check rules "$dir/rules.yaml" || fail "promtool check rules"
    cp k8s/components/monitoring/rules-test.yaml "$dir/"
    promtool test rules "$dir/rules-test.yaml" || fail "promtool test rules"
}

check_compose() {
    local check=("$BIN/compose-config") profile out
    for profile in cpu gpu; do
        # env -i: only the example file's values count, not whatever this shell exports.
        env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${check[@]}" -env-file docker/compose.env.example \
            -profile "$profile" docker-compose.yml || fail "compose config --profile $profile"
    done
    if out=$(env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${check[@]}" -env-file /dev/null docker-compose.yml 2>&1); then
        fail "compose config renders without POSTGRES_PASSWORD/S3_*/GPU_SLOTS"
    elif grep -q 'required variable' <<<"$out"; then
        echo "without its variables: refused ($(grep -c 'required variable' <<<"$out") required-variable errors)"
    else
        printf '%s\n' "$out"
        fail "compose config without variables failed for another reason"
    fi
    # Where a Docker Compose CLI is installed (not needed, not on CI), it gets the last word too.
    if docker compose version >/dev/null 2>&1; then
        for profile in cpu gpu; do
            if env -i PATH="$PATH" HOME="${HOME:-/tmp}" docker compose -f docker-compose.yml \
                --env-file docker/compose.env.example --profile "$profile" config --quiet; then
                echo "docker compose config --profile $profile: ok"
            else
                fail "docker compose config --profile $profile"
            fi
        done
    fi
}

step "kustomize build (kustomize $("$BIN/kustomize" version))"
build_overlays
step "Kubernetes schemas ${K8S_VERSIONS[*]} (kubernetes-validate $(cut -d/ -f1 "$TOOLS_DIR/validate.version")) and hardening rules"
validate_schemas
step "checkov $(cat "$TOOLS_DIR/checkov.version"): built manifests and Dockerfiles"
run_checkov
step "$("$BIN/hadolint" --version)"
run_hadolint
step "$(promtool --version 2>/dev/null | head -1): alert rules of k8s/components/monitoring"
check_rules
step "docker-compose.yml: compose-go $(awk '$2 ~ /compose-go/ {print $3; exit}' infra/compose-config/go.mod) (the loader of docker compose config)"
check_compose

if ((${#failed[@]})); then
    printf '\nvalidate-deploy: %d step(s) failed: %s\n' "${#failed[@]}" "$(IFS=';'; echo "${failed[*]}")"
    exit 1
fi
printf '\nvalidate-deploy: all checks passed\n'
