#!/usr/bin/env bash
# Tracing cost: proxy CPU per request with tracing off, at 1% and at 100% sampling,
# Envoy 1.40 vs mast-proxy configured the same, in one run (issue 20 §6).
#
#   bench/tracing/run.sh              # release builds; DUR=10 s per point (~2 minutes)
#   DUR=3 PROFILE=debug bench/tracing/run.sh   # functional check with the debug binaries
#
# Both proxies get one static bootstrap (no control plane): an HTTP/1.1 listener routing to
# an nginx backend, and for 1% and 100% the HCM `tracing` istiod writes for an
# `opentelemetry` provider (random_sampling, OTLP over gRPC to a `STATIC` h2 cluster);
# "off" has no `tracing` block at all. The spans go to mastd's OTLP/gRPC receiver (the
# embedded trace store), the same collector for both. Pinning as bench/data-plane/run.sh:
# the proxy under test alone on CPU 1 (Envoy --concurrency 1, mast-proxy one worker);
# nginx, wrk and mastd on CPU 0. Load: wrk -t1 -c50 for DUR seconds (saturation); CPU per
# request is the proxy's utime+stime from /proc over the wrk run divided by requests. The
# number of spans mastd holds for each run is printed as a check that the sampling happened
# (counted over the trace API's 1500 most recent traces).
# Only processes this script started are stopped (by PID); everything stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
bench_init tracing
DUR=${DUR:-10}
PROFILE=${PROFILE:-release}
need wrk wrk
need nginx nginx-light

find_envoy
if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build --release -q -p mast-proxy -p mastd)
fi
MAST="$ROOT/target/$PROFILE/mast-proxy"
MASTD="$ROOT/target/$PROFILE/mastd"

# Backend: nginx, one worker, a fixed 1 KiB body.
nginx_body 0 1 127.0.0.1:18281

# The collector: mastd's OTLP/gRPC receiver (and its trace API, to count what arrived).
OTLP=18317
API=18315
mkdir -p "$WORK/config"
taskset -c 0 "$MASTD" --config-dir "$WORK/config" --no-ca \
    --xds-addr 127.0.0.1:18310 --http-addr 127.0.0.1:18314 --injector-addr 127.0.0.1:18316 \
    --telemetry-addr 127.0.0.1:$API --otlp-grpc-addr 127.0.0.1:$OTLP --otlp-http-addr 127.0.0.1:18318 \
    >"$WORK/mastd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    curl -sf -o /dev/null http://127.0.0.1:18281/ && curl -sf -o /dev/null "http://127.0.0.1:$API/api/services" && break
    sleep 0.1
done
curl -sf -o /dev/null http://127.0.0.1:18281/ || { echo "nginx does not serve the body" >&2; exit 1; }
curl -sf -o /dev/null "http://127.0.0.1:$API/api/services" || { echo "mastd's trace API does not answer" >&2; cat "$WORK/mastd.log" >&2; exit 1; }

# $1 listener port, $2 admin port, $3 sampling percent or "off", $4 service name.
bootstrap() {
    local out=$WORK/boot-$1.yaml tracing=""
    if [ "$3" != off ]; then
        tracing="
          tracing:
            random_sampling: {value: $3}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: $4
                grpc_service:
                  envoy_grpc: {cluster_name: otlp}
                  timeout: 1s"
    fi
    cat >"$out" <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $2}}
static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: $1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench$tracing
          route_config:
            name: bench
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: backend}
                decorator: {operation: "backend:80/*"}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18281}}}}]}]
  - name: otlp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: otlp
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $OTLP}}}}]}]
EOF
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
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
TICK=$(getconf CLK_TCK)
# Spans of `service` in mastd's store, over the API's most recent 1500 traces at most
# ("≥" when that cap is reached).
spans_of() {
    { curl -s "http://127.0.0.1:$API/api/traces?service=$1&limit=1500" || true; } |
        python3 -c "
import json, sys
try:
    data = json.load(sys.stdin).get('data') or []
except ValueError:
    data = []
print(('≥' if len(data) >= 1500 else '') + str(sum(len(t['spans']) for t in data)))"
}

declare -A RPS CPU_US SPANS
port=18400
for name in envoy mast; do
    for s in off 1 100; do
        port=$((port + 2))
        service="bench-$name-$s"
        boot=$(bootstrap $port $((port + 1)) $s "$service")
        start_proxy $name "$boot" $((port + 1))
        pid=$PROXY_PID
        curl -sf -o /dev/null "http://127.0.0.1:$port/" || { echo "$name ($s) does not answer" >&2; cat "$WORK/$name.log" >&2; exit 1; }
        c0=$(cpu_ticks "$pid")
        out=$(taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://127.0.0.1:$port/")
        c1=$(cpu_ticks "$pid")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        RPS[$name-$s]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
        CPU_US[$name-$s]=$(python3 -c "print(round(($c1-$c0)/$TICK*1e6/$reqs, 1))")
        sleep 2 # the last batch of spans
        SPANS[$name-$s]="$(spans_of "$service") / $reqs"
        stop "$pid"
        echo "== $name, sampling $s: ${RPS[$name-$s]} req/s, ${CPU_US[$name-$s]} µs CPU/request, spans ${SPANS[$name-$s]}"
    done
done

ratio() { python3 -c "a,b=$1,$2; print(f'{a/b:.2f}×' if b else '-')"; }
{
echo "### Tracing cost, $(date -u +%F) ($(cd "$ROOT" && git rev-parse --short HEAD)), $PROFILE build, ${DUR}s per point"
echo
echo "| | Envoy 1.40 | mast-proxy | mast / Envoy |"
echo "|---|---|---|---|"
for s in off 1 100; do
    label=$([ $s = off ] && echo "tracing off" || echo "$s% sampled")
    echo "| $label: proxy CPU per request (µs) | ${CPU_US[envoy-$s]} | ${CPU_US[mast-$s]} | $(ratio "${CPU_US[mast-$s]}" "${CPU_US[envoy-$s]}") |"
    echo "| $label: req/s (wrk -c50) | ${RPS[envoy-$s]} | ${RPS[mast-$s]} | $(ratio "${RPS[mast-$s]}" "${RPS[envoy-$s]}") |"
    echo "| $label: spans received / requests | ${SPANS[envoy-$s]} | ${SPANS[mast-$s]} | |"
done
} | tee "$WORK/table.md"
