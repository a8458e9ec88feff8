#!/usr/bin/env bash
# Soak (issue 21 §5): the pods demo under load for a long time while the mesh churns, sampling
# the resources of mastd and every sidecar. A benchmark you run, not a CI test.
#
#   bench/soak/run.sh [--duration 1h] [--rps 200] [--out DIR] [--bin-dir target/release]
#
# For the whole run:
#   - `mastctl demo --mode pods --rps 200` (root: network namespaces and iptables capture);
#   - every 10 s the split in user-split.yaml is rewritten (v1/v2 weights alternate);
#   - 5-minute workload certificates (SECRET_TTL=5m, Istio's agent knob; mast-proxy asks
#     citadel for that lifetime and renews at half of it);
#   - every 30 s one sidecar is restarted (SIGTERM; once it has exited, the same command line,
#     environment, network namespace and user started again), round robin by pod name over the
#     workloads (not the ingress gateway);
#   - every 15 s an endpoint is added to or removed from a `churn` service (EDS churn to every
#     proxy without touching the traffic's path);
#   - every 10 s the RSS, open file descriptors and threads (tasks) of mastd and of each
#     sidecar are appended to samples.csv;
#   - events.log: each restart (SIGTERM, exit and start times) and split save, so report.py can
#     set the demo's failed requests against the restarts.
# At the end: the demo's JSON summary (requests, errors), and report.py turns samples.csv into
# slopes per hour (least squares, per process) and chart.svg.
set -euo pipefail

DURATION=1h
RPS=200
OUT=""
BIN_DIR=""
EDIT_EVERY=10
RESTART_EVERY=30
CHURN_EVERY=15
SAMPLE_EVERY=10
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rps) RPS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "$BIN_DIR" ]; then
  BIN_DIR=$ROOT/target/release
  if [ ! -x "$BIN_DIR/mastctl" ]; then
    (cd "$ROOT" && cargo build --release -p mastctl -p mastd -p mast-proxy -p mast-injector -p mast-samples)
  fi
fi
[ "$(id -u)" = 0 ] || { echo "the pods demo needs root" >&2; exit 1; }
OUT=${OUT:-$ROOT/bench/soak/run-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
CONFIG=$OUT/config
rm -rf "$CONFIG"
cp -r "$ROOT/manifests/samples/todolist" "$CONFIG"

secs() { # 1h / 90s / 5m -> seconds
  local v=$1
  case "$v" in
    *h) echo $(( ${v%h} * 3600 )) ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}
TOTAL=$(secs "$DURATION")

# The topology view's port: a free one, so a soak can run beside another demo.
VIEW_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "soak: $DURATION at $RPS req/s, output in $OUT"
SECRET_TTL=5m MAST_DEMO_SIDECARS_RESTARTED=1 "$BIN_DIR/mastctl" demo --mode pods --rps "$RPS" --duration "$DURATION" --port "$VIEW_PORT" \
  --config "$CONFIG" --keep "$OUT/demo" --json >"$OUT/summary.json" 2>"$OUT/demo.log" &
DEMO=$!
cleanup() { kill "$DEMO" 2>/dev/null || true; }
trap cleanup INT TERM

# Processes below this script (the demo's tree and the sidecars this script restarted; never
# the host's), by name.
descendants() { # one ps for the whole tree (a ps per process made a pass of the loop slow)
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { n = split(kids[root], q, " "); for (i = 1; i <= n; i++) { print q[i]; m = split(kids[q[i]], more, " "); for (j = 1; j <= m; j++) q[++n] = more[j] } }'
}
procs_named() { # name -> pids under the demo
  for p in $(descendants "$$"); do
    [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$1" ] && echo "$p"
  done
  return 0
}
pod_of() { # a sidecar's POD_NAME (empty for a process that is gone or not a sidecar)
  { tr '\0' '\n' </proc/"$1"/environ; } 2>/dev/null | sed -n 's/^POD_NAME=//p' || true
}

# Wait for the mesh: the demo prints its commentary on stderr once traffic runs.
for _ in $(seq 1 120); do
  kill -0 "$DEMO" 2>/dev/null || { echo "the demo exited:" >&2; tail -5 "$OUT/demo.log" >&2; exit 1; }
  [ -n "$(procs_named mastd)" ] && [ "$(procs_named mast-proxy | wc -l)" -ge 3 ] && break
  sleep 1
done
sleep 5
START=$(date +%s)
echo "t_s,process,pid,rss_kb,fds,threads" >"$OUT/samples.csv"
# From here on a process that vanishes between listing and reading /proc is normal: no -e.
set +e

sample() {
  local t=$(( $(date +%s) - START ))
  for p in $(procs_named mastd); do
    echo "$t,mastd,$p,$(awk '/VmRSS/{print $2}' /proc/"$p"/status),$(ls /proc/"$p"/fd | wc -l),$(awk '/Threads/{print $2}' /proc/"$p"/status)"
  done
  for p in $(procs_named mast-proxy); do
    local pod; pod=$(pod_of "$p")
    [ -n "$pod" ] || continue
    echo "$t,$pod,$p,$(awk '/VmRSS/{print $2}' /proc/"$p"/status),$(ls /proc/"$p"/fd | wc -l),$(awk '/Threads/{print $2}' /proc/"$p"/status)"
  done 2>/dev/null
}

weights=(80 20)
edit_split() {
  weights=("${weights[1]}" "${weights[0]}")
  cat >"$CONFIG/.user-split.tmp" <<YAML
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: user, namespace: default}
spec:
  hosts: [user]
  http:
  - route:
    - destination: {host: user, subset: v1}
      weight: ${weights[0]}
    - destination: {host: user, subset: v2}
      weight: ${weights[1]}
YAML
  mv "$CONFIG/.user-split.tmp" "$CONFIG/user-split.yaml"
  # report.py aligns the demo's clock (its "applied" lines) with this one through these.
  echo "$(( $(date +%s) - START )) split ${weights[0]}/${weights[1]} saved_epoch=$(date +%s.%N)" >>"$OUT/events.log"
}

churn_on=0
churn() {
  if [ $churn_on = 0 ]; then
    cat >"$CONFIG/.churn.tmp" <<YAML
apiVersion: v1
kind: Service
metadata: {name: churn, namespace: default}
spec:
  selector: {app: churn}
  ports:
  - {name: http, port: 9999, targetPort: 9999}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: churn-$RANDOM, namespace: default}
spec:
  address: 10.255.255.$(( RANDOM % 250 + 1 ))
  labels: {app: churn}
YAML
    mv "$CONFIG/.churn.tmp" "$CONFIG/churn.yaml"
    churn_on=1
  else
    rm -f "$CONFIG/churn.yaml"
    churn_on=0
  fi
}

restarts=0
alive() { # a process that has not exited (a zombie has: its sockets are closed)
  local st
  st=$(awk '/^State:/{print $2}' /proc/"$1"/status 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ]
}
restart_one() {
  # Round robin by pod name over the live sidecars (not the ingress gateway: its callers are
  # the load generator itself, with no retry policy). The demo does not reap the sidecars it
  # started when told they are restarted elsewhere, so a replaced one stays a zombie under it:
  # skip those, and do not wait for them to vanish.
  local p pod pods=() pids=()
  for p in $(procs_named mast-proxy); do
    alive "$p" || continue
    pod=$(pod_of "$p")
    case "$pod" in ''|istio-ingressgateway*) continue ;; esac
    pods+=("$pod"); pids+=("$p")
  done
  [ "${#pods[@]}" -gt 0 ] || return 0
  local names; mapfile -t names < <(printf '%s\n' "${pods[@]}" | sort -u)
  local want=${names[$(( restarts % ${#names[@]} ))]} i
  p=""
  for i in "${!pods[@]}"; do [ "${pods[$i]}" = "$want" ] && p=${pids[$i]}; done
  [ -n "$p" ] || return 0
  local ns uid gid
  pod=$want
  ns=$(ip netns identify "$p" 2>/dev/null || true)
  uid=$(awk '/^Uid:/{print $2}' /proc/"$p"/status)
  gid=$(awk '/^Gid:/{print $2}' /proc/"$p"/status)
  mapfile -d '' -t argv </proc/"$p"/cmdline
  mapfile -d '' -t envv </proc/"$p"/environ
  [ -n "$ns" ] || return 0
  local t_kill; t_kill=$(date +%s.%N)
  kill -TERM "$p"
  # The old sidecar drains (terminationDrainDuration, 1 s in the demo) and exits; start the new
  # one as soon as it has (a kubelet restarts a container once it has exited).
  for _ in $(seq 1 100); do alive "$p" || break; sleep 0.05; done
  local t_exit; t_exit=$(date +%s.%N)
  ip netns exec "$ns" setpriv --reuid="$uid" --regid="$gid" --clear-groups \
    env -i "${envv[@]}" "${argv[@]}" >>"$OUT/restarted-$pod.log" 2>&1 &
  restarts=$(( restarts + 1 ))
  echo "$(( $(date +%s) - START )) restarted $pod (pid $p -> $!) sigterm_epoch=$t_kill exited_epoch=$t_exit started_epoch=$(date +%s.%N)" >>"$OUT/events.log"
}

# On the wall clock (a pass of the loop takes more than its 1 s sleep: sampling walks /proc).
next_sample=0 next_edit=$EDIT_EVERY next_churn=$CHURN_EVERY next_restart=$RESTART_EVERY
while kill -0 "$DEMO" 2>/dev/null; do
  el=$(( $(date +%s) - START ))
  [ "$el" -lt "$TOTAL" ] || break
  if [ "$el" -ge "$next_sample" ]; then sample >>"$OUT/samples.csv"; next_sample=$(( (el / SAMPLE_EVERY + 1) * SAMPLE_EVERY )); fi
  if [ "$el" -ge "$next_edit" ]; then edit_split; next_edit=$(( (el / EDIT_EVERY + 1) * EDIT_EVERY )); fi
  if [ "$el" -ge "$next_churn" ]; then churn; next_churn=$(( (el / CHURN_EVERY + 1) * CHURN_EVERY )); fi
  if [ "$el" -ge "$next_restart" ]; then restart_one; next_restart=$(( (el / RESTART_EVERY + 1) * RESTART_EVERY )); fi
  sleep 0.5
done
wait "$DEMO" || true
# Sidecars this script restarted are its own children, not the demo's: end them by PID.
for j in $(jobs -p); do kill "$j" 2>/dev/null || true; done
echo "$restarts sidecar restarts" >>"$OUT/events.log"
python3 "$ROOT/bench/soak/report.py" "$OUT" | tee "$OUT/report.md"
