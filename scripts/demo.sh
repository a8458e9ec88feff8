#!/usr/bin/env bash
# The todo-list mesh on this machine, in one command: builds what the demo needs (release
# binaries; the topology view if npm is there), then runs `mastctl demo` with your arguments.
#
#   scripts/demo.sh                          # until Ctrl-C
#   scripts/demo.sh --duration 60s --json    # a timed run with a JSON summary at the end
#
# As root every workload is a pod (network namespace + iptables capture; needs iproute2,
# util-linux's setpriv and iptables); otherwise the workloads share loopback without capture
# (Istio's INTERCEPTION_MODE=NONE) and the demo says so. As root on Debian the script installs
# what is missing with apt first. Build once, then run as root with `sudo target/release/mastctl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

# As root on Debian, fetch what the pods mode needs (as scripts/test.sh does), so a fresh
# machine gets the demo the README shows; without root the loopback fallback explains itself.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    command -v iptables-restore >/dev/null || missing+=(iptables)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v setpriv >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} (apt) for the pods mode…" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
            || echo "could not install ${missing[*]}: the demo will run on loopback" >&2
    fi
fi

echo "building mastd, mast-proxy, mast-init, mastctl and the sample apps (release)…" >&2
cargo build --release -q -p mastd -p mast-proxy -p mast-injector -p mastctl -p mast-samples --bins

if [ ! -f telemetry/web/dist/index.html ]; then
    if command -v npm >/dev/null; then
        echo "building the topology view (npm ci && npm run build)…" >&2
        (cd telemetry/web && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run -s build >/dev/null)
    else
        echo "npm not found: the topology view's page is not built (its API still answers)" >&2
    fi
fi

exec target/release/mastctl demo "$@"
