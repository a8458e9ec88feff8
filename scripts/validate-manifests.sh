#!/usr/bin/env bash
# Validate every Kubernetes manifest under manifests/ offline against the API schemas of a
# pinned Kubernetes version, strictly (unknown fields are errors, as `kubectl apply` refuses
# them), with PyPI's kubernetes-validate installed into .venv (as scripts/test.sh does for
# Envoy).
#
# Custom resources (Istio, Gateway API, SMI, Knative kinds) have no built-in schema and are
# skipped here: `cargo test -p mast-crds` validates them against Mast's CRDs. A skip is
# accepted only for those API groups, so a built-in kind with a mistyped apiVersion (which
# kubernetes-validate would also just skip) fails.
# Usage: scripts/validate-manifests.sh [FILE…]      (default: every *.yaml under manifests/)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.33.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# API groups whose kinds are custom resources validated by the CRD tests.
CR_GROUPS='networking\.istio\.io|security\.istio\.io|telemetry\.istio\.io|extensions\.istio\.io|gateway\.networking\.k8s\.io|split\.smi-spec\.io|serving\.knative\.dev'

log() { printf '\n==> %s\n' "$*"; }

install_validator() {
    if [ -x .venv/bin/kubernetes-validate ] &&
        .venv/bin/kubernetes-validate --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
        return
    fi
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into .venv"
    if [ ! -x .venv/bin/pip ] && ! python3 -m venv .venv 2>/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv
        python3 -m venv .venv
    fi
    .venv/bin/pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

install_validator

if [ $# -gt 0 ]; then
    files=("$@")
else
    mapfile -t files < <(find manifests -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
fi

failed=()
for f in "${files[@]}"; do
    out=$(.venv/bin/kubernetes-validate --strict --kubernetes-version "$KUBERNETES_VERSION" "$f" 2>&1) || {
        printf '%s\n' "$out" | grep -v '^INFO ' >&2
        failed+=("$f")
        continue
    }
    # Skipped kinds: fine for custom resources, an error for anything else.
    unknown=$(printf '%s\n' "$out" | grep "Couldn't find schema" | grep -Ev "api version ($CR_GROUPS)/" || true)
    if [ -n "$unknown" ]; then
        printf '%s\n' "$unknown" >&2
        failed+=("$f")
        continue
    fi
    other_warnings=$(printf '%s\n' "$out" | grep -E '^(WARN|ERROR)' | grep -v "Couldn't find schema" || true)
    if [ -n "$other_warnings" ]; then
        printf '%s\n' "$other_warnings" >&2
        failed+=("$f")
        continue
    fi
    passed=$(printf '%s\n' "$out" | grep -c '^INFO .* passed' || true)
    skipped=$(printf '%s\n' "$out" | grep -c "Couldn't find schema" || true)
    printf 'ok   %s (%s resources valid, %s custom resources left to the CRD tests)\n' "$f" "$passed" "$skipped"
done

if [ ${#failed[@]} -gt 0 ]; then
    printf '\nFAILED against Kubernetes %s (strict):\n' "$KUBERNETES_VERSION" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
printf '\nall %d manifest files valid against Kubernetes %s (strict)\n' "${#files[@]}" "$KUBERNETES_VERSION"
