#!/usr/bin/env bash
# Sidecar memory: mast-proxy vs Envoy 1.40, both configured by mastd over ADS exactly as a pod's
# sidecar is, measured from /proc (VmRSS, anonymous and file-backed, the executable's own pages
# from /proc/PID/smaps, VmHWM, threads). Needs root (a network namespace) and built binaries:
#
#   cargo build --release -p mast-proxy -p mastd -p mastctl
#   bench/sidecar-mem/run.sh                 # binaries from target/release; ~2 minutes
#   BIN=target/sidecar bench/sidecar-mem/run.sh   # another build of mast-proxy (TOOLS: mastd, mastctl)
#   PEERS=mast MESHES=demo bench/sidecar-mem/run.sh   # mast-proxy only, one mesh
#   STATS=1 KEEP=1 MAST_ENV=MIMALLOC_SHOW_STATS=1 bench/sidecar-mem/run.sh  # keep smaps, status, mimalloc's stats
#   MESHES=load LOAD_RUNS=5 LOAD_SECS=10 bench/sidecar-mem/run.sh  # throughput with pilot's xDS (quiet machine)
#
# Three meshes:
# - demo: the todo-list sample (manifests/samples/todolist) plus what `mastctl demo` adds in pods
#   mode (the workloads' WorkloadEntries, mastd as the tracing provider); the proxy under test is
#   myapp-v1's sidecar (same pod IP, labels, service account, REDIRECT interception, one worker,
#   mTLS certificate from citadel) — the proxy the demo starts, without the demo's traffic;
# - 1000 services: pilot-load's mesh (bench/src/bin/pilot-load.rs: 1000 Services, each with a
#   v1 and a v2 WorkloadEntry, a DestinationRule with two subsets and a 50/50 VirtualService),
#   and the same client sidecar in namespace default, which sees all of it (3000 clusters, 1000
#   virtual hosts with Istio's default retry policy).
# - load: peak under load, pilot-configured too: a client sidecar (INTERCEPTION_MODE=NONE, a
#   Sidecar egress listener on 127.0.0.1:8080) in front of nginx (1 KiB body, a WorkloadEntry,
#   plaintext by a DestinationRule), `wrk -t1 -c50` for $LOAD_SECS s; VmHWM and VmRSS after it.
#   Its throughput too, pinned as bench/data-plane/run.sh pins: the proxy under test alone on
#   CPU 1, nginx, wrk, mastd (and Envoy's SDS agent) on CPU 0; req/s and the proxy's CPU per
#   request (utime+stime over the load), LOAD_RUNS interleaved runs (median and range). This is
#   the issue-22 figure "with pilot's sidecar xDS": Istio's default retry policy on the route,
#   Istio's metrics on, what mastd sends a sidecar — not a hand-written bootstrap.
# Everything runs in a network namespace of its own (lo only), so the fixed Istio ports of
# REDIRECT mode (15001, 15006, 15021, 15090) clash with nothing on the machine. Envoy gets its
# certificate over SDS from `mast-proxy --agent` (istio-agent's role; not counted, as in
# Istio's figures, which count the envoy process). Memory is little disturbed by a busy
# machine, unlike throughput: take the load mesh's req/s only on a quiet machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release}          # mast-proxy under test
TOOLS=${TOOLS:-$BIN}                      # mastd, mastctl (and the SDS agent for Envoy)
ENVOY=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
PEERS=${PEERS:-mast envoy}
SETTLE=${SETTLE:-10}
WORK=$(mktemp -d /tmp/mast-sidecar-mem.XXXXXX)
chmod 755 "$WORK"
NS=mastmem$$
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
POD_IP=10.202.17.10
ip -n "$NS" addr add "$POD_IP/32" dev lo
# A plain command, not a function, where it is started with `&`: $! must be the process itself
# (ip netns exec execs the program).
in_ns() { ip netns exec "$NS" "$@"; }

# --- the meshes -------------------------------------------------------------------------
mkdir -p "$WORK/demo" "$WORK/big" "$WORK/load"
cp "$ROOT"/manifests/samples/todolist/*.yaml "$WORK/demo/"
{
    # mastctl demo's overlay in pods mode (mastctl/src/demo/topology.rs, overlay_yaml).
    cat <<'EOF'
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mastd-traces, namespace: istio-system}
spec:
  hosts: [mastd.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 4317, name: grpc-otlp, protocol: GRPC}
  endpoints:
  - address: 10.202.17.1
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    defaultProviders:
      tracing: [mastd]
    extensionProviders:
    - name: mastd
      opentelemetry:
        service: mastd.istio-system.svc.cluster.local
        port: 4317
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 100.0
EOF
    i=10
    for w in myapp-v1:myapp:v1:myapp:9080 user-v1:user:v1:user:9181 user-v2:user:v2:user:9281 todo-v1:todo:v1:todo:9182; do
        IFS=: read -r name app version sa port <<<"$w"
        cat <<EOF
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: $name, namespace: default}
spec:
  address: 10.202.17.$i
  labels: {app: $app, version: $version, security.istio.io/tlsMode: istio}
  ports: {http: $port}
  serviceAccount: $sa
EOF
        i=$((i + 1))
    done
} >"$WORK/demo/workloads.yaml"

python3 - "$WORK/big/mesh.yaml" <<'EOF'
import sys
out = []
for s in range(1000):
    out.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: default}}\n"
               f"spec:\n  selector: {{app: svc-{s}}}\n  ports:\n  - {{name: http, port: 8080, targetPort: 9080}}\n")
    for n, v in ((1, "v1"), (2, "v2")):
        out.append(f"apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
                   f"metadata: {{name: svc-{s}-{v}, namespace: default}}\n"
                   f"spec:\n  address: 10.{100 + n}.{s // 250}.{s % 250 + 1}\n"
                   f"  labels: {{app: svc-{s}, version: {v}}}\n  serviceAccount: svc-{s}\n")
    out.append(f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
               f"metadata: {{name: svc-{s}, namespace: default}}\n"
               f"spec:\n  host: svc-{s}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n"
               f"  - {{name: v2, labels: {{version: v2}}}}\n")
    out.append(f"apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
               f"metadata: {{name: svc-{s}, namespace: default}}\n"
               f"spec:\n  hosts: [svc-{s}]\n  http:\n  - route:\n"
               f"    - {{destination: {{host: svc-{s}, subset: v1}}, weight: 50}}\n"
               f"    - {{destination: {{host: svc-{s}, subset: v2}}, weight: 50}}\n")
open(sys.argv[1], "w").write("---\n".join(out))
EOF

cat >"$WORK/load/mesh.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080, targetPort: 18181}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-1, namespace: default}
spec:
  address: 127.0.0.1
  labels: {app: echo}
  serviceAccount: echo
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  egress:
  - port: {number: 8080, protocol: HTTP, name: http}
    bind: 127.0.0.1
    hosts: ["./echo.default.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo.default.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
EOF
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/body"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $WORK/nginx-error.log warn;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server { listen 127.0.0.1:18181; location / { root $WORK; try_files /body =404; } }
}
EOF

# --- helpers --------------------------------------------------------------------------------
wait_url() { for _ in $(seq 1 300); do in_ns curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
field_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/${3:-status}"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# One line of figures for a process: RSS, its parts, peak, threads.
measure() { # pid label
    local p=$1 rss anon file shmem hwm threads text
    rss=$(field_kb "$p" VmRSS); anon=$(field_kb "$p" RssAnon); file=$(field_kb "$p" RssFile)
    hwm=$(field_kb "$p" VmHWM); threads=$(field_kb "$p" Threads)
    # Resident pages of the executable's own mappings (text, rodata, relro, data).
    local exe
    exe=$(readlink "/proc/$p/exe")
    text=$(awk -v exe="$exe" '
        /^[0-9a-f]+-[0-9a-f]+ / {cur = ($6 == exe)}
        cur && $1 == "Rss:" {sum += $2}
        END {print sum + 0}' "/proc/$p/smaps")
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$2" "$(mb "$rss")" "$(mb "$anon")" \
        "$(mb "$file")" "$(mb "$text")" "$(mb "$hwm")" "$threads"
}

start_mastd() { # config dir
    ip netns exec "$NS" $PIN_REST "$TOOLS/mastd" --config-dir "$1" --xds-addr 127.0.0.1:15010 --ca-addr 127.0.0.1:15012 \
        --ca-dir "$WORK/ca" --http-addr 127.0.0.1:15014 --telemetry-addr 127.0.0.1:20001 \
        --no-trace-receiver --no-injector >"$WORK/mastd.log" 2>&1 &
    MASTD=$!
    PIDS+=("$MASTD")
    wait_url http://127.0.0.1:15014/ready
}

# The sidecar of myapp-v1 (demo) or of a client in namespace default (1000 services).
LABELS=app=myapp,version=v1,service.istio.io/canonical-name=myapp,service.istio.io/canonical-revision=v1
SA=myapp
POD=myapp-v1

start_mast() {
    POD_NAME=$POD POD_NAMESPACE=default INSTANCE_IP=$POD_IP SERVICE_ACCOUNT=$SA \
        ISTIO_META_INTERCEPTION_MODE=$MODE ISTIO_META_WORKLOAD_NAME=$POD \
        PROXY_CONFIG='{"discoveryAddress":"127.0.0.1:15010","terminationDrainDuration":"1s"}' \
        RUST_LOG=info ip netns exec "$NS" env ${MAST_ENV:-} $PIN "$BIN/mast-proxy" --labels "$LABELS" --concurrency 1 \
        --discovery-address 127.0.0.1:15010 --ca-address 127.0.0.1:15012 \
        --ca-root-cert "$WORK/ca/root-cert.pem" --ca-token-file "$WORK/token" \
        >"$WORK/mast-proxy.log" 2>&1 &
    LAST=$!
    PIDS+=("$LAST")
    wait_url http://127.0.0.1:15021/healthz/ready
}

start_envoy() {
    POD_NAME=$POD POD_NAMESPACE=default SERVICE_ACCOUNT=$SA ip netns exec "$NS" $PIN_REST "$TOOLS/mast-proxy" --agent \
        --sds-socket "$WORK/sds.sock" --ca-address 127.0.0.1:15012 \
        --ca-root-cert "$WORK/ca/root-cert.pem" --ca-token-file "$WORK/token" \
        --admin-port 15100 --stats-port 0 --status-port 0 --agent-port 0 -l warn \
        >"$WORK/agent.log" 2>&1 &
    AGENT=$!
    PIDS+=("$AGENT")
    "$TOOLS/mastctl" bootstrap --pod "$POD" --namespace default --ip "$POD_IP" --labels "$LABELS" \
        --service-account "$SA" --xds-address 127.0.0.1:15010 --interception-mode "$MODE" \
        --admin-port 15000 --sds-socket "$WORK/sds.sock" --delta >"$WORK/envoy.json"
    ip netns exec "$NS" $PIN "$ENVOY" -c "$WORK/envoy.json" --concurrency 1 -l error --use-dynamic-base-id \
        >"$WORK/envoy.log" 2>&1 &
    LAST=$!
    PIDS+=("$LAST")
    wait_url http://127.0.0.1:15000/ready
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
LOAD_SECS=${LOAD_SECS:-5}
LOAD_RUNS=${LOAD_RUNS:-1}
THROUGHPUT=$WORK/throughput.tsv
: >"$THROUGHPUT"
TICK=$(getconf CLK_TCK)
PIN= PIN_REST= # taskset prefixes, set for the load mesh
LOAD_URL=http://127.0.0.1:8080/

ip netns exec "$NS" taskset -c 0 nginx -c "$WORK/nginx.conf" &
PIDS+=($!)
wait_url http://127.0.0.1:18181/

echo "mast-proxy: $BIN/mast-proxy ($(stat -c %s "$BIN/mast-proxy") bytes); $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' || echo envoy)"
echo
echo "| mesh, proxy | VmRSS (MB) | anon | file-backed | of it the binary | VmHWM | threads |"
echo "|---|---|---|---|---|---|---|"
for mesh in ${MESHES:-demo big load}; do
    if [ "$mesh" = load ]; then PIN="taskset -c 1"; PIN_REST="taskset -c 0"; RUNS=$LOAD_RUNS; else RUNS=1; fi
    start_mastd "$WORK/$mesh"
    if [ "$mesh" != demo ]; then LABELS=app=client; SA=client; POD=client-1; fi
    if [ "$mesh" = load ]; then MODE=NONE; POD_IP=127.0.0.1; else MODE=REDIRECT; fi
    "$TOOLS/mastctl" credential --ca-dir "$WORK/ca" --namespace default --service-account "$SA" -o "$WORK/token"
    read -ra peers <<<"$PEERS"
    for run in $(seq 1 "$RUNS"); do
    for k in $(seq 0 $((${#peers[@]} - 1))); do
        peer=${peers[$(((k + run - 1) % ${#peers[@]}))]} # the order rotates from run to run
        if [ "$peer" = mast ]; then start_mast; else start_envoy; fi
        sleep "$SETTLE"
        if [ "$mesh" = load ]; then
            for _ in $(seq 1 100); do in_ns curl -sf -o /dev/null -H "Host: echo.default.svc.cluster.local" "$LOAD_URL" && break; sleep 0.1; done
            in_ns curl -sf -o /dev/null -H "Host: echo.default.svc.cluster.local" "$LOAD_URL" || { echo "$peer does not answer" >&2; exit 1; }
            read -r c0 < <(awk '{print $14 + $15}' "/proc/$LAST/stat")
            out=$(in_ns taskset -c 0 wrk -t1 -c50 -d"${LOAD_SECS}s" -H "Host: echo.default.svc.cluster.local" "$LOAD_URL")
            read -r c1 < <(awk '{print $14 + $15}' "/proc/$LAST/stat")
            awk '/Non-2xx|Socket errors/ {print "  (" $0 ")"}' <<<"$out" >&2
            reqs=$(awk '/requests in/ {print $1}' <<<"$out")
            printf '%s\t%s\t%s\t%s\n' "$run" "$peer" "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")" \
                "$(awk -v c=$((c1 - c0)) -v t="$TICK" -v n="$reqs" 'BEGIN {printf "%.1f", c / t * 1e6 / n}')" >>"$THROUGHPUT"
            sleep 1
        fi
        measure "$LAST" "$mesh, $peer"
        if [ "$peer" = mast ] && [ -n "${STATS:-}" ]; then
            cp "/proc/$LAST/smaps" "$WORK/smaps-$mesh"
            cp "/proc/$LAST/status" "$WORK/status-$mesh"
        fi
        stop "$LAST"
        [ "$peer" = envoy ] && stop "$AGENT"
        if [ "$peer" = mast ] && [ -n "${STATS:-}" ]; then cp "$WORK/mast-proxy.log" "$WORK/log-$mesh"; fi
    done
    done
    stop "$MASTD"
done

if [ -s "$THROUGHPUT" ]; then
    echo
    echo "Load mesh, HTTP/1.1 through the pilot-configured client sidecar (wrk -t1 -c50, ${LOAD_SECS} s;"
    echo "proxy alone on CPU 1), median (min–max) of $LOAD_RUNS interleaved run(s):"
    echo
    python3 - "$THROUGHPUT" <<'PY'
import statistics, sys
from collections import defaultdict
rps, cpu = defaultdict(dict), defaultdict(dict)
for line in open(sys.argv[1]):
    run, peer, r, c = line.split()
    rps[peer][run], cpu[peer][run] = float(r), float(c)
def cell(d, fmt):
    xs = list(d.values())
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"
def ratio(m):
    if "mast" not in m or "envoy" not in m:
        return "–"
    per = [m["mast"][r] / m["envoy"][r] for r in m["mast"] if r in m["envoy"]]
    return (f"{statistics.median(m['mast'].values()) / statistics.median(m['envoy'].values()):.2f}× "
            f"({min(per):.2f}–{max(per):.2f})")
print("| | " + " | ".join(rps) + " | mast / envoy |")
print("|---" * (len(rps) + 2) + "|")
print("| req/s | " + " | ".join(cell(rps[p], lambda x: f"{x:.0f}") for p in rps) + f" | {ratio(rps)} |")
print("| proxy CPU per request (µs) | " + " | ".join(cell(cpu[p], lambda x: f"{x:.1f}") for p in cpu) + f" | {ratio(cpu)} |")
PY
fi
