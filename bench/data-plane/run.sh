#!/usr/bin/env bash
# Data-plane benchmark: direct vs Envoy 1.40 vs mast-proxy, in one run, same CPU pinning.
#
#   bench/data-plane/run.sh            # ~4 minutes; prints a Markdown table
#
# Pinning (2-core machine): nginx (backend) and every load generator on CPU 0, the proxy
# under test alone on CPU 1 — Envoy with --concurrency 1, mast-proxy with one worker.
# Loads: wrk (closed loop, saturation, HTTP/1.1 keep-alive, 1 KiB body), openloop (this
# repo's open-loop generator: fixed 1000 and 5000 req/s, latency from the scheduled send time,
# so stalls are not hidden), h2load (HTTP/2, h2c prior knowledge). RSS from /proc: idle,
# with 1000 services configured, and the peak (VmHWM) after the load runs.
# Only processes this script started are stopped (by PID); everything stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
bench_init dp
DUR=${DUR:-10}
need wrk wrk
need nginx nginx-light
need h2load nghttp2-client

find_envoy
release_bins mast-proxy mast-bench
MAST="$BIN/mast-proxy"
OPENLOOP="$BIN/openloop"

# Backend: nginx, one worker, a fixed 1 KiB body, HTTP/1.1 and h2c.
nginx_body 0 1 127.0.0.1:18181 "127.0.0.1:18182 http2"

# One bootstrap for both proxies: an HTTP/1.1 listener and an h2c listener (codec AUTO) to the
# same cluster. $1 listener port, $2 h2 listener port, $3 admin port, $4 extra services.
bootstrap() {
    local out=$WORK/boot-$1.yaml
    cat >"$out" <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $3}}
static_resources:
  listeners:
EOF
    for p in "$1" "$2"; do
        cat >>"$out" <<EOF
  - name: listener_$p
    address: {socket_address: {address: 127.0.0.1, port_value: $p}}
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
EOF
        for i in $(seq 1 "$4"); do
            cat >>"$out" <<EOF
            - name: svc-$i
              domains: ["svc-$i.bench.svc.cluster.local", "svc-$i.bench.svc.cluster.local:80"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: "outbound|80||svc-$i.bench.svc.cluster.local", retry_policy: {retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", num_retries: 2, retriable_status_codes: [503]}}
EOF
        done
        cat >>"$out" <<EOF
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
EOF
    done
    cat >>"$out" <<EOF
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18181}}}}]}]
EOF
    for i in $(seq 1 "$4"); do
        cat >>"$out" <<EOF
  - name: "outbound|80||svc-$i.bench.svc.cluster.local"
    type: STATIC
    connect_timeout: 10s
    lb_policy: LEAST_REQUEST
    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s}
    load_assignment:
      cluster_name: "outbound|80||svc-$i.bench.svc.cluster.local"
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 10.$((i / 250)).$((i % 250)).1, port_value: 8080}}}}, {endpoint: {address: {socket_address: {address: 10.$((i / 250)).$((i % 250)).2, port_value: 8080}}}}]}]
EOF
    done
    echo "$out"
}

start_proxy() { # name bootstrap admin → PROXY_PID (no subshell: it must stay our child)
    case $1 in
    envoy) taskset -c 1 "$ENVOY" -c "$2" --concurrency 1 -l error --use-dynamic-base-id >"$WORK/$1.log" 2>&1 & ;;
    mast) taskset -c 1 "$MAST" -c "$2" --concurrency 1 -l warn --stats-port 0 --status-port 0 --agent-port 0 >"$WORK/$1.log" 2>&1 & ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$3/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

declare -A RPS CPU_US P50_1K P99_1K P999_1K P50_5K P99_5K P999_5K H2 IDLE BIG HWM
TICK=$(getconf CLK_TCK)

measure() { # name http-port h2-port pid
    local name=$1 port=$2 h2port=$3 pid=${4:-}
    local t0 c0 out
    [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
    out=$(taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://127.0.0.1:$port/")
    RPS[$name]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    if [ -n "$pid" ]; then
        local c1 reqs
        c1=$(cpu_ticks "$pid")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        CPU_US[$name]=$(python3 -c "print(round(($c1-$c0)/$TICK*1e6/$reqs, 1))")
    fi
    for rate in 1000 5000; do
        out=$(taskset -c 0 "$OPENLOOP" --url "http://127.0.0.1:$port/" --rate $rate --duration "$DUR" --connections 64)
        if [ "$(json errors <<<"$out")" != 0 ]; then echo "errors at $rate/s for $name: $out" >&2; fi
        local k=${rate/000/K}
        eval "P50_$k[\$name]=$(json p50_us <<<"$out")"
        eval "P99_$k[\$name]=$(json p99_us <<<"$out")"
        eval "P999_$k[\$name]=$(json p999_us <<<"$out")"
    done
    out=$(taskset -c 0 h2load -c 10 -m 10 -D "$DUR" "http://127.0.0.1:$h2port/" 2>/dev/null || true)
    H2[$name]=$(awk '/^finished in/ {gsub(",", "", $4); printf "%.0f", $4}' <<<"$out")
    [ -n "$pid" ] && HWM[$name]=$(hwm_kb "$pid")
    return 0
}

echo "== direct"
measure direct 18181 18182
for name in envoy mast; do
    echo "== $name"
    if [ $name = envoy ]; then base=20; else base=30; fi
    small=$(bootstrap ${base}080 ${base}082 ${base}000 0)
    start_proxy $name "$small" ${base}000
    pid=$PROXY_PID
    sleep 2
    IDLE[$name]=$(rss_kb "$pid")
    measure $name ${base}080 ${base}082 "$pid"
    stop "$pid"
    big=$(bootstrap ${base}180 ${base}182 ${base}100 1000)
    start_proxy $name "$big" ${base}100
    pid=$PROXY_PID
    sleep 3
    curl -sf -o /dev/null "http://127.0.0.1:${base}180/" || echo "warning: $name with 1000 services did not answer" >&2
    BIG[$name]=$(rss_kb "$pid")
    stop "$pid"
done

ratio() { python3 -c "a,b=$1,$2; print(f'{a/b:.2f}×' if b else '-')"; }
added() { python3 -c "print(f'{$1-$2:.0f}')"; }
us() { python3 -c "print(f'{$1:.0f}')"; }
mb() { python3 -c "print(f'{$1/1024:.1f}')"; }
{
echo "### Data plane, $(date -u +%F) ($(cd "$ROOT" && git rev-parse --short HEAD)), ${DUR}s per measurement"
echo
echo "| | direct | Envoy 1.40 | mast-proxy | mast / Envoy |"
echo "|---|---|---|---|---|"
echo "| HTTP/1.1 req/s at saturation (wrk -c50) | ${RPS[direct]} | ${RPS[envoy]} | ${RPS[mast]} | $(ratio "${RPS[mast]}" "${RPS[envoy]}") |"
echo "| proxy CPU per request (µs) | – | ${CPU_US[envoy]} | ${CPU_US[mast]} | $(ratio "${CPU_US[mast]}" "${CPU_US[envoy]}") |"
for k in 1K 5K; do
    eval "p50=(\${P50_$k[direct]} \${P50_$k[envoy]} \${P50_$k[mast]})"
    eval "p99=(\${P99_$k[direct]} \${P99_$k[envoy]} \${P99_$k[mast]})"
    eval "p999=(\${P999_$k[direct]} \${P999_$k[envoy]} \${P999_$k[mast]})"
    echo "| ${k/K/000} req/s open loop: p50 (µs) | $(us "${p50[0]}") | $(us "${p50[1]}") | $(us "${p50[2]}") | |"
    echo "| ${k/K/000} req/s: p99 (µs) | $(us "${p99[0]}") | $(us "${p99[1]}") | $(us "${p99[2]}") | |"
    echo "| ${k/K/000} req/s: p99.9 (µs) | $(us "${p999[0]}") | $(us "${p999[1]}") | $(us "${p999[2]}") | |"
    echo "| ${k/K/000} req/s: **added p99** over direct (µs) | – | $(added "${p99[1]}" "${p99[0]}") | $(added "${p99[2]}" "${p99[0]}") | $(ratio "$(added "${p99[2]}" "${p99[0]}")" "$(added "${p99[1]}" "${p99[0]}")") |"
done
echo "| HTTP/2 req/s (h2load -c10 -m10) | ${H2[direct]} | ${H2[envoy]} | ${H2[mast]} | $(ratio "${H2[mast]}" "${H2[envoy]}") |"
echo "| RSS idle (MB) | – | $(mb "${IDLE[envoy]}") | $(mb "${IDLE[mast]}") | $(ratio "${IDLE[mast]}" "${IDLE[envoy]}") |"
echo "| RSS with 1000 services (MB) | – | $(mb "${BIG[envoy]}") | $(mb "${BIG[mast]}") | $(ratio "${BIG[mast]}" "${BIG[envoy]}") |"
echo "| RSS peak under load (MB) | – | $(mb "${HWM[envoy]}") | $(mb "${HWM[mast]}") | $(ratio "${HWM[mast]}" "${HWM[envoy]}") |"
} | tee "$WORK/table.md"
cp "$WORK/table.md" "$ROOT/bench/data-plane/latest.md"
