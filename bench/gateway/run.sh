#!/usr/bin/env bash
# Ingress-gateway benchmark: Envoy 1.40 vs mast-proxy as Istio's ingress gateway, in one run,
# same CPU pinning, same mastd configuration, HTTP and HTTPS (TLS SIMPLE from a Secret).
#
#   bench/gateway/run.sh            # ~3 minutes; prints a Markdown table
#
# Both gateways get their configuration the way they would in a cluster: from mastd over ADS
# (Envoy bootstrapped by `mastctl bootstrap --proxy-type router`, mast-proxy as Istio's
# `proxy router`), for a Gateway with an HTTP server on 8080 and an HTTPS server on 8443
# (certificate from a Kubernetes Secret, delivered over SDS), and a VirtualService bound to it
# routing `bench.example.com` to a Service whose endpoint is nginx.
#
# Pinning (2-core machine): nginx (backend), mastd and every load generator on CPU 0, the
# gateway under test alone on CPU 1 (Envoy --concurrency 1, mast-proxy one worker).
# Loads: wrk (closed loop, saturation, HTTP/1.1 keep-alive, 1 KiB body) over HTTP and over
# HTTPS (one TLS handshake per connection, then keep-alive), and openloop (this repository's
# open-loop generator: a fixed 2000 req/s over HTTP, latency from the scheduled send time).
# Only processes this script started are stopped (by PID); everything stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
bench_init gw
DUR=${DUR:-10}
need wrk wrk
need nginx nginx-light
need openssl openssl
find_envoy
release_bins mast-proxy mastd mastctl mast-bench

for port in 8080 8443 25010 25014 25020; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is in use; stop what listens there" >&2
        exit 1
    fi
done

# Backend: nginx, one worker, a fixed 1 KiB body.
nginx_body 0 1 127.0.0.1:18191

# The mesh configuration: the backend as a Service with a WorkloadEntry (plain HTTP: nginx
# has no sidecar), the Gateway, its certificate as a Kubernetes TLS Secret, the route.
mkdir -p "$WORK/config"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench.example.com" \
    -addext "subjectAltName=DNS:bench.example.com" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
b64() { base64 -w0 "$1"; }
cat >"$WORK/config/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-1, namespace: default}
spec:
  address: 127.0.0.1
  labels: {app: backend}
  ports: {http: 18191}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: bench-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench, namespace: default}
spec:
  hosts: [bench.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: backend, port: {number: 80}}
---
apiVersion: v1
kind: Secret
metadata: {name: bench-cert, namespace: istio-system}
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$WORK/cert.pem")
  tls.key: $(b64 "$WORK/key.pem")
EOF
taskset -c 0 "$BIN/mastd" --config-dir "$WORK/config" --xds-addr 127.0.0.1:25010 \
    --http-addr 127.0.0.1:25014 --telemetry-addr 127.0.0.1:25020 --no-ca --no-injector \
    >"$WORK/mastd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:25014/ready && break; sleep 0.1; done

POD=(POD_NAME=istio-ingressgateway-bench POD_NAMESPACE=istio-system INSTANCE_IP=127.0.0.1)
start_gateway() { # name → GW_PID (no subshell: it must stay our child)
    case $1 in
    envoy)
        "$BIN/mastctl" bootstrap --proxy-type router --pod istio-ingressgateway-bench \
            --namespace istio-system --labels istio=ingressgateway \
            --service-account istio-ingressgateway-service-account \
            --xds-address 127.0.0.1:25010 --interception-mode NONE --admin-port 25000 \
            --sds-socket "$WORK/sds.sock" >"$WORK/envoy.json"
        taskset -c 1 "$ENVOY" -c "$WORK/envoy.json" --concurrency 1 -l error \
            --use-dynamic-base-id >"$WORK/envoy.log" 2>&1 &
        ;;
    mast)
        env "${POD[@]}" ISTIO_META_INTERCEPTION_MODE=NONE RUST_LOG=warn \
            PROXY_CONFIG='{"discoveryAddress":"127.0.0.1:25010"}' \
            taskset -c 1 "$BIN/mast-proxy" proxy router --labels istio=ingressgateway \
            --concurrency 1 --admin-port 25100 --stats-port 25190 --status-port 25121 \
            --agent-port 0 >"$WORK/mast.log" 2>&1 &
        ;;
    esac
    GW_PID=$!
    PIDS+=("$GW_PID")
    for _ in $(seq 1 200); do
        curl -sf -o /dev/null -H 'Host: bench.example.com' http://127.0.0.1:8080/ &&
            curl -sfk -o /dev/null -H 'Host: bench.example.com' https://127.0.0.1:8443/ && return 0
        sleep 0.1
    done
    echo "$1 as the gateway does not serve bench.example.com (see $WORK/$1.log)" >&2
    exit 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

declare -A HTTP HTTPS P99H P99S CPU_US P50_OL P99_OL IDLE HWM
TICK=$(getconf CLK_TCK)

wrk_run() { # url → "rps p99_ms requests"
    local out
    out=$(taskset -c 0 wrk -t1 -c50 -d"${DUR}s" --latency -H 'Host: bench.example.com' "$1")
    if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers from $1: $out" >&2; fi
    awk '/Requests\/sec/ {rps=$2} / 99%/ {p=$2} /requests in/ {n=$1}
        END {
            if (p ~ /us$/) { sub(/us/, "", p); p = p / 1000 }
            else if (p ~ /ms$/) { sub(/ms/, "", p) }
            else if (p ~ /s$/) { sub(/s/, "", p); p = p * 1000 }
            printf "%.0f %.2f %d", rps, p, n
        }' <<<"$out"
}

direct=$(wrk_run http://127.0.0.1:18191/)
for name in envoy mast; do
    echo "== $name as the ingress gateway"
    start_gateway $name
    pid=$GW_PID
    sleep 1
    IDLE[$name]=$(rss_kb "$pid")
    c0=$(cpu_ticks "$pid")
    read -r rps p99 n <<<"$(wrk_run http://127.0.0.1:8080/)"
    c1=$(cpu_ticks "$pid")
    HTTP[$name]=$rps
    P99H[$name]=$p99
    CPU_US[$name]=$(python3 -c "print(round(($c1-$c0)/$TICK*1e6/$n, 1))")
    read -r rps p99 _ <<<"$(wrk_run https://127.0.0.1:8443/)"
    HTTPS[$name]=$rps
    P99S[$name]=$p99
    out=$(taskset -c 0 "$BIN/openloop" --url http://127.0.0.1:8080/ --host bench.example.com \
        --rate 2000 --duration "$DUR" --connections 64)
    if [ "$(json errors <<<"$out")" != 0 ]; then echo "errors at 2000/s for $name: $out" >&2; fi
    P50_OL[$name]=$(json p50_us <<<"$out")
    P99_OL[$name]=$(json p99_us <<<"$out")
    HWM[$name]=$(hwm_kb "$pid")
    stop "$pid"
done

ratio() { python3 -c "print(f'{$1/$2:.2f}×')"; }
cat <<EOF

Ingress gateway, $(date -u +%Y-%m-%d), commit $(cd "$ROOT" && git rev-parse --short HEAD), ${DUR}s per load.
Backend nginx direct: $(cut -d' ' -f1 <<<"$direct") req/s (wrk -c50, no gateway).

| | Envoy 1.40 | mast-proxy | mast / Envoy |
|---|---|---|---|
| HTTP req/s (wrk -c50, keep-alive) | ${HTTP[envoy]} | ${HTTP[mast]} | $(ratio "${HTTP[mast]}" "${HTTP[envoy]}") |
| HTTP p99 at saturation (ms) | ${P99H[envoy]} | ${P99H[mast]} | |
| HTTPS req/s (TLS SIMPLE, wrk -c50) | ${HTTPS[envoy]} | ${HTTPS[mast]} | $(ratio "${HTTPS[mast]}" "${HTTPS[envoy]}") |
| HTTPS p99 at saturation (ms) | ${P99S[envoy]} | ${P99S[mast]} | |
| CPU per HTTP request (µs) | ${CPU_US[envoy]} | ${CPU_US[mast]} | $(ratio "${CPU_US[mast]}" "${CPU_US[envoy]}") |
| p50 / p99 at 2000 req/s open loop (µs) | ${P50_OL[envoy]} / ${P99_OL[envoy]} | ${P50_OL[mast]} / ${P99_OL[mast]} | |
| RSS idle, configured (KiB) | ${IDLE[envoy]} | ${IDLE[mast]} | $(ratio "${IDLE[mast]}" "${IDLE[envoy]}") |
| RSS peak after the loads (KiB) | ${HWM[envoy]} | ${HWM[mast]} | $(ratio "${HWM[mast]}" "${HWM[envoy]}") |
EOF
