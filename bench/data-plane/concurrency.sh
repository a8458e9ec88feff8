#!/usr/bin/env bash
# Multi-core scaling: mast-proxy --concurrency 1 vs 2 (and Envoy 1.40 the same way, as the
# yardstick), HTTP/1.1 keep-alive at saturation through one listener to nginx.
#
#   bench/data-plane/concurrency.sh                 # RUNS=5 DUR=10: ~4 minutes, a quiet machine
#   RUNS=1 DUR=2 bench/data-plane/concurrency.sh    # functional check only (figures mean nothing)
#
# Method, and what it cannot hide: the machine has 2 cores, so the load generator (wrk, two
# threads), the backend (nginx, two workers) and the proxy cannot each have cores of their
# own. Every process is pinned to CPUs 0-1 and they compete; with one worker the proxy can use
# at most one core, with two it can use both but takes them from wrk and nginx. So two figures
# are reported per configuration, the median of RUNS interleaved runs (mast 1, mast 2, Envoy
# 1, Envoy 2, then again):
#   - req/s at saturation (wrk -t2 -c64): what a client sees. On 2 cores the 2-worker figure
#     is bounded by what wrk and nginx leave over, so 2/1 here understates the scaling a
#     machine with spare cores would show;
#   - proxy CPU per request (µs of user+system time from /proc/<pid>/stat over the run) and
#     the proxy's cores in use (CPU seconds / wall seconds): whether the second worker costs
#     extra CPU per request (locks, cache lines moving between cores) — the part of scaling
#     that does not depend on having idle cores.
# Envoy run the same way gives the ratio a mature multi-worker proxy reaches on this box.
# mast-proxy's per-worker accepted connections (/stats listener.*.worker_N.downstream_cx_total)
# are printed to show the kernel spread connections over both workers.
# MAST_BIN=path runs another mast-proxy build (e.g. an older commit) the same way.
# Only processes this script started are stopped (by PID); everything stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
bench_init conc
DUR=${DUR:-10}
RUNS=${RUNS:-5}
CPUS=${CPUS:-0,1}
WITH_ENVOY=${WITH_ENVOY:-1}
need wrk wrk
need nginx nginx-light

[ "$WITH_ENVOY" = 1 ] && find_envoy
if [ -z "${MAST_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p mast-proxy)
    MAST_BIN="$ROOT/target/release/mast-proxy"
fi

# Backend: nginx, two workers, a fixed 1 KiB body.
nginx_body "$CPUS" 2 127.0.0.1:18191

# $1 listener port, $2 admin port.
bootstrap() {
    local out=$WORK/boot-$1.yaml
    cat >"$out" <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $2}}
static_resources:
  listeners:
  - name: listener_$1
    address: {socket_address: {address: 127.0.0.1, port_value: $1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            name: bench
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: backend}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18191}}}}]}]
EOF
    echo "$out"
}

start_proxy() { # kind workers port admin → PROXY_PID (no subshell: it must stay our child)
    local boot
    boot=$(bootstrap "$3" "$4")
    case $1 in
    envoy) taskset -c "$CPUS" "$ENVOY" -c "$boot" --concurrency "$2" -l error --use-dynamic-base-id >"$WORK/$1-$2.log" 2>&1 & ;;
    mast) taskset -c "$CPUS" "$MAST_BIN" -c "$boot" --concurrency "$2" -l warn --stats-port 0 --status-port 0 --agent-port 0 >"$WORK/$1-$2.log" 2>&1 & ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$4/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf -o /dev/null "http://127.0.0.1:$3/" || { echo "$1 --concurrency $2 does not proxy" >&2; cat "$WORK/$1-$2.log" >&2; exit 1; }
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
TICK=$(getconf CLK_TCK)

declare -A RPS_RUNS CPU_RUNS CORES_RUNS SPREAD
CONFIGS=("mast 1" "mast 2")
[ "$WITH_ENVOY" = 1 ] && CONFIGS+=("envoy 1" "envoy 2")

for run in $(seq 1 "$RUNS"); do
    for cfg in "${CONFIGS[@]}"; do
        read -r kind n <<<"$cfg"
        port=$((31080 + n)) admin=$((31000 + n))
        [ "$kind" = envoy ] && port=$((32080 + n)) admin=$((32000 + n))
        start_proxy "$kind" "$n" "$port" "$admin"
        pid=$PROXY_PID
        sleep 1
        c0=$(cpu_ticks "$pid")
        t0=$(date +%s.%N)
        out=$(taskset -c "$CPUS" wrk -t2 -c64 -d"${DUR}s" "http://127.0.0.1:$port/")
        t1=$(date +%s.%N)
        c1=$(cpu_ticks "$pid")
        rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "errors for $cfg: $(grep 'Non-2xx\|Socket errors' <<<"$out")" >&2; fi
        key="$kind-$n"
        RPS_RUNS[$key]+="$rps "
        CPU_RUNS[$key]+="$(python3 -c "print(round(($c1-$c0)/$TICK*1e6/$reqs, 1))") "
        CORES_RUNS[$key]+="$(python3 -c "print(round(($c1-$c0)/$TICK/($t1-$t0), 2))") "
        if [ "$kind" = mast ]; then
            SPREAD[$key]=$(curl -sf "http://127.0.0.1:$admin/stats" | awk -F': ' '/^listener\..*downstream_cx_total/ {printf "%s%s", sep, $2; sep="/"}')
        fi
        stop "$pid"
        echo "run $run: $kind --concurrency $n: $rps req/s" >&2
    done
done

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
ratio() { python3 -c "a,b=$1,$2; print(f'{a/b:.2f}×' if b else '-')"; }
{
echo "### Concurrency 1 → 2, $(date -u +%F) ($(cd "$ROOT" && git rev-parse --short HEAD)), ${DUR}s × $RUNS runs, all on CPUs $CPUS"
echo
echo "| | req/s (median) | proxy cores in use | proxy CPU µs/request | accepted per worker (last run) |"
echo "|---|---|---|---|---|"
for cfg in "${CONFIGS[@]}"; do
    read -r kind n <<<"$cfg"
    key="$kind-$n"
    echo "| $kind --concurrency $n | $(median "${RPS_RUNS[$key]}") | $(median "${CORES_RUNS[$key]}") | $(median "${CPU_RUNS[$key]}") | ${SPREAD[$key]:-–} |"
done
for kind in mast envoy; do
    [ -n "${RPS_RUNS[$kind-1]:-}" ] || continue
    echo "| **$kind 2/1** | $(ratio "$(median "${RPS_RUNS[$kind-2]}")" "$(median "${RPS_RUNS[$kind-1]}")") | | $(ratio "$(median "${CPU_RUNS[$kind-2]}")" "$(median "${CPU_RUNS[$kind-1]}")") | |"
done
echo
echo "wrk, nginx and the proxy share the 2 cores: the 2/1 req/s ratio is a lower bound on scaling."
} | tee "$WORK/table.md"
