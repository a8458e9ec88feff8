#!/usr/bin/env bash
# mTLS benchmark: two hops (client sidecar -> server sidecar -> nginx) with certificates from
# citadel, mast-proxy pair vs Envoy pair, in one run, same pinning; plus citadel's signing rate.
#
#   bench/mtls/run.sh            # ~3 minutes; prints Markdown tables, writes bench/mtls/latest.md
#   PAIRS= bench/mtls/run.sh     # citadel's signing rate only
#
# Pinning (2-core machine): nginx and the load generators on CPU 0; both sidecars of the pair
# under test (concurrency 1 each) on CPU 1; mastd (pilot + citadel) on CPU 0 (idle during
# the traffic runs). For the signing rate, mastd alone on CPU 1 and csr-load on CPU 0.
# The Envoy pair gets its certificates over SDS from mast-proxy in agent mode (istio-agent's
# role), so both pairs hold certificates from the same CA and do the same handshakes.
# Loads: wrk keep-alive (sidecar-to-sidecar connections are pooled: steady-state mTLS),
# then the same with a DestinationRule `maxRequestsPerConnection: 1`, so every request opens a
# new mTLS connection between the sidecars (handshakes/s).
# Only processes this script started are stopped (by PID); everything stays on loopback.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
bench_init mtls
DUR=${DUR:-10}
need wrk wrk
need nginx nginx-light
find_envoy
release_bins mast-proxy mastd mastctl mast-bench

# Backend: nginx, one worker, a fixed 1 KiB body.
nginx_body 0 1 127.0.0.1:18181

SVC_PORT=19080
IN_PORT=19443
SERVER_IP=127.0.0.11
mkdir -p "$WORK/config"
write_config() { # $1: maxRequestsPerConnection (0 = unset)
    local pool=""
    [ "$1" != 0 ] && pool="    connectionPool: {http: {maxRequestsPerConnection: $1}}"
    cat >"$WORK/config/mesh.yaml.tmp" <<EOF
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: $SVC_PORT, targetPort: $IN_PORT}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: default}
spec:
  address: $SERVER_IP
  labels: {app: echo, security.istio.io/tlsMode: istio}
  serviceAccount: echo
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: echo, namespace: default}
spec:
  workloadSelector: {labels: {app: echo}}
  ingress: [{port: {number: $IN_PORT, protocol: HTTP, name: http}, defaultEndpoint: "127.0.0.1:18181"}]
  egress: [{hosts: ["nowhere/*"]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo.default.svc.cluster.local
  trafficPolicy:
$( [ -n "$pool" ] && echo "$pool" || echo "    loadBalancer: {simple: LEAST_REQUEST}" )
EOF
    mv "$WORK/config/mesh.yaml.tmp" "$WORK/config/mesh.yaml"
}
write_config 0

CA_ADDR=127.0.0.1:19012
taskset -c 0 "$BIN/mastd" --config-dir "$WORK/config" --xds-addr 127.0.0.1:19010 \
    --http-addr 127.0.0.1:19014 --no-injector --ca-dir "$WORK/ca" --ca-addr "$CA_ADDR" >"$WORK/mastd.log" 2>&1 &
MASTD=$!
PIDS+=("$MASTD")
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19014/ready >/dev/null 2>&1 && break; sleep 0.1; done
for sa in client echo; do
    "$BIN/mastctl" credential --ca-dir "$WORK/ca" --namespace default --service-account $sa -o "$WORK/token-$sa"
done

wait_ready() { for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not ready on $1" >&2; return 1; }

start_mast() { # name sa ip labels admin
    POD_NAME=$1 POD_NAMESPACE=default SERVICE_ACCOUNT=$2 INSTANCE_IP=$3 ISTIO_META_INTERCEPTION_MODE=NONE \
        PROXY_CONFIG='{"discoveryAddress":"127.0.0.1:19010"}' \
        taskset -c 1 "$BIN/mast-proxy" --labels "$4" --admin-port "$5" --stats-port 0 --status-port 0 --agent-port 0 \
        --concurrency 1 -l warn --ca-address "$CA_ADDR" --ca-root-cert "$WORK/ca/root-cert.pem" \
        --ca-token-file "$WORK/token-$2" >"$WORK/mast-$1.log" 2>&1 &
    PIDS+=($!)
    LAST=$!
    wait_ready "$5"
}

start_envoy() { # name sa ip labels admin
    POD_NAME=$1 POD_NAMESPACE=default SERVICE_ACCOUNT=$2 \
        taskset -c 0 "$BIN/mast-proxy" --agent --sds-socket "$WORK/sds-$1.sock" --ca-address "$CA_ADDR" \
        --ca-root-cert "$WORK/ca/root-cert.pem" --ca-token-file "$WORK/token-$2" \
        --admin-port $(( $5 + 1 )) --stats-port 0 --status-port 0 --agent-port 0 -l warn >"$WORK/agent-$1.log" 2>&1 &
    PIDS+=($!)
    AGENT=$!
    "$BIN/mastctl" bootstrap --pod "$1" --namespace default --ip "$3" --labels "$4" \
        --service-account "$2" --xds-address 127.0.0.1:19010 --interception-mode NONE \
        --admin-port "$5" --sds-socket "$WORK/sds-$1.sock" --delta >"$WORK/envoy-$1.json"
    taskset -c 1 "$ENVOY" -c "$WORK/envoy-$1.json" --concurrency 1 -l error --use-dynamic-base-id \
        >"$WORK/envoy-$1.log" 2>&1 &
    PIDS+=($!)
    LAST=$!
    wait_ready "$5"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
URL="http://127.0.0.1:$SVC_PORT/"

declare -A RPS P50 P99 CPU NEWCONN NEWP99
run_wrk() { # name key -> sets globals
    local out
    out=$(taskset -c 0 wrk -t1 -c32 -d"${DUR}s" --latency -H "Host: echo.default.svc.cluster.local" "$URL")
    WRK_RPS=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    WRK_REQS=$(awk '/requests in/ {print $1}' <<<"$out")
    WRK_P50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    WRK_P99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    local errs
    errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    [ -z "$errs" ] || echo "warning: $1: $errs" >&2
}

PAIRS=${PAIRS-mast envoy}   # PAIRS= (empty) measures citadel only
for name in $PAIRS; do
    echo "== $name pair"
    write_config 0
    sleep 1
    if [ $name = mast ]; then
        start_mast echo-1 echo $SERVER_IP app=echo 19100; server=$LAST
        start_mast client-1 client 127.0.0.1 app=client 19200; client=$LAST
    else
        start_envoy echo-1 echo $SERVER_IP app=echo 19300; server=$LAST; sagent=$AGENT
        start_envoy client-1 client 127.0.0.1 app=client 19400; client=$LAST; cagent=$AGENT
    fi
    for _ in $(seq 1 100); do curl -sf -o /dev/null -H "Host: echo.default.svc.cluster.local" "$URL" && break; sleep 0.1; done
    curl -sf -o /dev/null -H "Host: echo.default.svc.cluster.local" "$URL" || { echo "$name pair does not answer" >&2; tail -20 "$WORK"/*.log >&2; exit 1; }
    taskset -c 0 wrk -t1 -c32 -d2s -H "Host: echo.default.svc.cluster.local" "$URL" >/dev/null
    c0=$(( $(cpu_ticks "$server") + $(cpu_ticks "$client") ))
    run_wrk $name
    c1=$(( $(cpu_ticks "$server") + $(cpu_ticks "$client") ))
    RPS[$name]=$WRK_RPS; P50[$name]=$WRK_P50; P99[$name]=$WRK_P99
    CPU[$name]=$(python3 -c "print(round(($c1-$c0)/$TICK*1e6/$WRK_REQS, 1))")
    # Every request a new sidecar-to-sidecar mTLS connection.
    write_config 1
    sleep 2
    run_wrk $name
    NEWCONN[$name]=$WRK_RPS; NEWP99[$name]=$WRK_P99
    for p in $client $server ${cagent:-} ${sagent:-}; do stop "$p"; done
    unset cagent sagent
done

echo "== citadel signing rate (mastd alone on CPU 1)"
stop "$MASTD"
taskset -c 1 "$BIN/mastd" --config-dir "$WORK/config" --xds-addr 127.0.0.1:19010 \
    --http-addr 127.0.0.1:19014 --no-injector --ca-dir "$WORK/ca" --ca-addr "$CA_ADDR" >"$WORK/mastd2.log" 2>&1 &
MASTD=$!
PIDS+=("$MASTD")
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19014/ready >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/mastctl" credential --ca-dir "$WORK/ca" --namespace default --service-account bench -o "$WORK/token-bench"
CSR=$(taskset -c 0 "$BIN/csr-load" --ca "$CA_ADDR" --root "$WORK/ca/root-cert.pem" --token "$WORK/token-bench" \
    --spiffe spiffe://cluster.local/ns/default/sa/bench --concurrency 32 --connections 4 --duration "$DUR")
echo "$CSR"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])" <<<"$CSR"; }

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
[ -n "$PAIRS" ] && {
    echo "### mTLS two hops (client sidecar -> server sidecar -> nginx), $(date -u +%F), DUR=${DUR}s"
    echo
    echo "| | mast-proxy pair | Envoy pair | ratio |"
    echo "|---|---|---|---|"
    echo "| req/s, pooled mTLS (wrk -c32) | ${RPS[mast]} | ${RPS[envoy]} | $(ratio "${RPS[mast]}" "${RPS[envoy]}") |"
    echo "| p50 / p99 (wrk) | ${P50[mast]} / ${P99[mast]} | ${P50[envoy]} / ${P99[envoy]} | |"
    echo "| CPU µs per request, both sidecars | ${CPU[mast]} | ${CPU[envoy]} | $(ratio "${CPU[mast]}" "${CPU[envoy]}") |"
    echo "| req/s, new mTLS connection per request | ${NEWCONN[mast]} | ${NEWCONN[envoy]} | $(ratio "${NEWCONN[mast]}" "${NEWCONN[envoy]}") |"
    echo "| p99, new connection per request | ${NEWP99[mast]} | ${NEWP99[envoy]} | |"
    echo
} | tee "$ROOT/bench/mtls/latest.md"
{
    echo "### citadel signing (mastd on one core, 32 concurrent calls over 4 TLS connections)"
    echo
    echo "| CSRs/s | p50 | p99 | errors |"
    echo "|---|---|---|---|"
    echo "| $(python3 -c "print(round($(json rate)))") | $(json p50_us) µs | $(json p99_us) µs | $(json errors) |"
} | tee -a "$ROOT/bench/mtls/latest.md"
