#!/usr/bin/env bash
# Data-plane benchmark: direct vs Envoy 1.40 vs mast-proxy, in one run, same CPU pinning.
#
#   bench/data-plane/run.sh                     # one run, ~3 minutes; prints a Markdown table
#   RUNS=5 bench/data-plane/run.sh              # five interleaved runs: medians and ranges, ~15 min
#   BIN_DIR=dir MAST_BINS="release=a/mast-proxy sidecar=b/mast-proxy" bench/data-plane/run.sh
#                                               # two builds of mast-proxy in the same runs
#   SYSCALLS=1 PERF=1 bench/data-plane/run.sh   # also system calls per request, and a CPU profile
#
# Pinning (2-core machine): nginx (backend) and every load generator on CPU 0, the proxy
# under test alone on CPU 1 — Envoy with --concurrency 1, mast-proxy with one worker.
# Loads: wrk (closed loop, saturation, HTTP/1.1 keep-alive, 1 KiB body), openloop (this
# repo's open-loop generator: fixed 1000 and 5000 req/s, latency from the scheduled send time,
# so stalls are not hidden), h2load (HTTP/2, h2c prior knowledge). RSS from /proc: idle,
# with 1000 services configured, and the peak under load (VmHWM after the loads, reset after
# start-up). The proxy's CPU
# per request is split into user space and kernel (utime and stime from /proc/PID/stat).
# Every figure of every run goes to bench/data-plane/latest.tsv, the table to latest.md.
# Only processes this script started are stopped (by PID); everything stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/lib.sh"
bench_init dp
DUR=${DUR:-10}
RUNS=${RUNS:-1}
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
    [ -f "$out" ] && { echo "$out"; return; } # written in an earlier run
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
    *) taskset -c 1 "${BINARY[$1]}" -c "$2" --concurrency 1 -l warn --stats-port 0 --status-port 0 --agent-port 0 >"$WORK/$1.log" 2>&1 & ;;
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
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# Every figure goes to one file, a line per run, peer and metric; the table is drawn from it.
RESULTS=$WORK/results.tsv
: >"$RESULTS"
rec() { printf '%s\t%s\t%s\t%s\n' "$RUN" "$1" "$2" "$3" >>"$RESULTS"; }
TICK=$(getconf CLK_TCK)

measure() { # peer http-port h2-port [pid]
    local name=$1 port=$2 h2port=$3 pid=${4:-}
    local u0 s0 u1 s1 out reqs
    [ -n "$pid" ] && read -r u0 s0 < <(cpu_ticks "$pid")
    out=$(taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://127.0.0.1:$port/")
    rec "$name" rps "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")"
    if [ -n "$pid" ]; then
        read -r u1 s1 < <(cpu_ticks "$pid")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rec "$name" cpu_user_us "$(python3 -c "print(($u1-$u0)/$TICK*1e6/$reqs)")"
        rec "$name" cpu_sys_us "$(python3 -c "print(($s1-$s0)/$TICK*1e6/$reqs)")"
    fi
    for rate in 1000 5000; do
        out=$(taskset -c 0 "$OPENLOOP" --url "http://127.0.0.1:$port/" --rate $rate --duration "$DUR" --connections 64)
        if [ "$(json errors <<<"$out")" != 0 ]; then echo "errors at $rate/s for $name: $out" >&2; fi
        for q in p50 p99 p999; do rec "$name" "${q}_$rate" "$(json ${q}_us <<<"$out")"; done
    done
    out=$(taskset -c 0 h2load -c 10 -m 10 -D "$DUR" "http://127.0.0.1:$h2port/" 2>/dev/null || true)
    rec "$name" h2 "$(awk '/^finished in/ {gsub(",", "", $4); printf "%.0f", $4}' <<<"$out")"
    [ -n "$pid" ] && rec "$name" hwm_kb "$(hwm_kb "$pid")"
    [ -n "$pid" ] && [ -n "${SYSCALLS:-}" ] && count_syscalls "$name" "$port" "$pid"
    [ -n "$pid" ] && [ -n "${PERF:-}" ] && profile_cpu "$name" "$port" "$pid"
    return 0
}

# SYSCALLS=1: the system calls the proxy makes per request, counted by strace over a fixed
# number of keep-alive requests (strace slows the proxy; the counts, not the time, are the
# figure). After the timed loads, so it disturbs none of them.
count_syscalls() { # peer http-port pid
    local n=20000 sp out
    need strace strace
    strace -f -c -o "$WORK/strace-$1-$RUN.txt" -p "$3" 2>/dev/null &
    sp=$!
    sleep 1
    out=$(taskset -c 0 h2load --h1 -n $n -c 50 "http://127.0.0.1:$2/" 2>/dev/null)
    kill -INT "$sp"
    wait "$sp" 2>/dev/null || true
    grep -q "$n succeeded" <<<"$out" || echo "warning: not every request under strace succeeded for $1" >&2
    # strace -c: "% time, seconds, usecs/call, calls, [errors,] syscall"; calls is column 4.
    rec "$1" syscalls "$(awk -v n=$n '$NF == "total" {print $4 / n}' "$WORK/strace-$1-$RUN.txt")"
    rec "$1" syscalls_detail "$(awk -v n=$n 'NR > 2 && $NF != "total" && $1 !~ /^-/ && $4 / n >= 0.01 {
        printf "%s%s %.2f", sep, $NF, $4 / n; sep = ", "}' \
        "$WORK/strace-$1-$RUN.txt")"
}

# PERF=1: where the proxy's CPU goes at saturation, from `perf record -g` (cpu-clock, 5 s of
# a wrk -c50 load): the share of samples in user space, and in the kernel those that wake
# the process at the other end (the socket's wakeup: a cross-CPU wakeup, an IPI — in a VM an
# exit to the hypervisor), page faults, and the rest (the TCP work itself). Shares, not time.
profile_cpu() { # peer http-port pid
    local wp
    need perf linux-perf
    taskset -c 0 wrk -t1 -c50 -d8s "http://127.0.0.1:$2/" >/dev/null &
    wp=$!
    sleep 2
    perf record -q -F 2000 -g -p "$3" -o "$WORK/perf-$1-$RUN.data" -- sleep 5 >/dev/null 2>&1 || true
    wait "$wp" || true
    local shares
    shares=$(perf script -i "$WORK/perf-$1-$RUN.data" 2>/dev/null | awk '
        function tally() { total++; if (first ~ /kernel\.kallsyms/) { if (wake) w++; else if (fault) f++; else k++ } else u++ }
        /^[^ \t]/ { if (n) tally(); n = 1; first = ""; wake = 0; fault = 0; next }
        /^[ \t]/ {
            if (first == "") first = $0
            if ($0 ~ / (sock_def_readable|try_to_wake_up|ep_poll_callback|__wake_up_sync_key)\+/) wake = 1
            if ($0 ~ / exc_page_fault\+/) fault = 1
        }
        END { if (n) tally(); if (total) printf "%.1f %.1f %.1f %.1f", 100 * u / total, 100 * w / total, 100 * f / total, 100 * k / total }')
    read -r u w f k <<<"$shares"
    rec "$1" perf_user "$u"; rec "$1" perf_wake "$w"; rec "$1" perf_fault "$f"; rec "$1" perf_kernel "$k"
}

# The proxies under test: Envoy, then mast-proxy, or every `label=path` of MAST_BINS (e.g. two
# build profiles of the same commit) — each gets its own ports.
PROXIES=(envoy)
declare -A BINARY=([envoy]=$ENVOY)
if [ -n "${MAST_BINS:-}" ]; then
    for kv in $MAST_BINS; do PROXIES+=("${kv%%=*}"); BINARY[${kv%%=*}]=${kv#*=}; done
else
    PROXIES+=(mast)
    BINARY[mast]=$MAST
fi

proxy_run() { # peer base-port
    local name=$1 base=$2 small big pid
    small=$(bootstrap ${base}080 ${base}082 ${base}000 0)
    start_proxy "$name" "$small" ${base}000
    pid=$PROXY_PID
    sleep 2
    rec "$name" idle_kb "$(rss_kb "$pid")"
    # The peak so far is start-up's (a YAML bootstrap is read through the protobuf
    # descriptors, which mast-proxy then drops): reset it, so VmHWM is the peak under load.
    echo 5 >"/proc/$pid/clear_refs"
    measure "$name" ${base}080 ${base}082 "$pid"
    stop "$pid"
    big=$(bootstrap ${base}180 ${base}182 ${base}100 1000)
    start_proxy "$name" "$big" ${base}100
    pid=$PROXY_PID
    sleep 3
    curl -sf -o /dev/null "http://127.0.0.1:${base}180/" || echo "warning: $name with 1000 services did not answer" >&2
    rec "$name" big_kb "$(rss_kb "$pid")"
    stop "$pid"
}

# RUNS interleaved runs: direct, then the proxies, their order rotated each run so neither
# always follows the other.
for RUN in $(seq 1 "$RUNS"); do
    echo "== run $RUN/$RUNS: direct"
    measure direct 18181 18182
    n=${#PROXIES[@]}
    for k in $(seq 0 $((n - 1))); do
        i=$(((k + RUN - 1) % n))
        echo "== run $RUN/$RUNS: ${PROXIES[$i]}"
        proxy_run "${PROXIES[$i]}" $((20 + 10 * i))
    done
done

{
echo "### Data plane, $(date -u +%F) ($(cd "$ROOT" && git rev-parse --short HEAD)), ${DUR}s per measurement, median of $RUNS interleaved run(s)"
echo
python3 - "$RESULTS" "${PROXIES[@]}" <<'PY'
import statistics, sys
from collections import defaultdict

path, proxies = sys.argv[1], sys.argv[2:]
v = defaultdict(dict)  # (peer, metric) -> {run: value}
detail = {}  # peer -> the last run's system calls per request, by name
for line in open(path):
    run, peer, metric, value = line.rstrip("\n").split("\t")
    if metric == "syscalls_detail":
        detail[peer] = value
    elif value:
        v[(peer, metric)][int(run)] = float(value)
for peer in proxies:  # derived per run: total CPU, and p99 added over direct in the same run
    for run, u in v[(peer, "cpu_user_us")].items():
        v[(peer, "cpu_us")][run] = u + v[(peer, "cpu_sys_us")].get(run, 0)
    for rate in (1000, 5000):
        for run, p in v[(peer, f"p99_{rate}")].items():
            d = v[("direct", f"p99_{rate}")].get(run)
            if d is not None:
                v[(peer, f"added_p99_{rate}")][run] = p - d
runs = sorted({r for d in v.values() for r in d})
many = len(runs) > 1

def cell(peer, metric, fmt):
    d = v.get((peer, metric))
    if not d:
        return "–"
    xs = list(d.values())
    out = fmt(statistics.median(xs))
    return f"{out} ({fmt(min(xs))}–{fmt(max(xs))})" if many else out

def ratio(peer, metric):
    a, b = v.get((peer, metric)), v.get(("envoy", metric))
    if not a or not b or not statistics.median(b.values()):
        return ""
    out = f"{statistics.median(a.values()) / statistics.median(b.values()):.2f}×"
    per_run = [a[r] / b[r] for r in runs if r in a and r in b and b[r]]
    if many and per_run:
        out += f" ({min(per_run):.2f}–{max(per_run):.2f})"
    return out

n = lambda x: f"{x:.0f}"
us1 = lambda x: f"{x:.1f}"
mb = lambda x: f"{x / 1024:.1f}"
rows = [("HTTP/1.1 req/s at saturation (wrk -c50)", "rps", n, True),
        ("proxy CPU per request (µs)", "cpu_us", us1, False),
        ("of it user space (µs)", "cpu_user_us", us1, False),
        ("of it kernel (µs)", "cpu_sys_us", us1, False)]
if v.get((proxies[0], "perf_user")):
    pct = lambda x: f"{x:.1f}%"
    rows += [("CPU samples in user space (perf)", "perf_user", pct, False),
             ("in the kernel waking the peer (perf)", "perf_wake", pct, False),
             ("in the kernel on page faults (perf)", "perf_fault", pct, False),
             ("in the kernel, the rest: TCP, syscalls (perf)", "perf_kernel", pct, False)]
if detail:
    rows.append(("system calls per request (strace -c)", "syscalls", lambda x: f"{x:.2f}", False))
for rate in (1000, 5000):
    rows += [(f"{rate} req/s open loop: p50 (µs)", f"p50_{rate}", n, True),
             (f"{rate} req/s: p99 (µs)", f"p99_{rate}", n, True),
             (f"{rate} req/s: p99.9 (µs)", f"p999_{rate}", n, True),
             (f"{rate} req/s: **added p99** over direct (µs)", f"added_p99_{rate}", n, False)]
rows += [("HTTP/2 req/s (h2load -c10 -m10)", "h2", n, True),
         ("RSS idle (MB)", "idle_kb", mb, False),
         ("RSS with 1000 services (MB)", "big_kb", mb, False),
         ("RSS peak under load (MB)", "hwm_kb", mb, False)]
names = {"envoy": "Envoy 1.40", "mast": "mast-proxy"}
masts = [p for p in proxies if p != "envoy"]
print("| | direct | " + " | ".join(names.get(p, f"mast-proxy ({p})") for p in proxies)
      + " | " + " | ".join(f"{names.get(p, p)} / Envoy" for p in masts) + " |")
print("|---" * (2 + len(proxies) + len(masts)) + "|")
for label, metric, fmt, direct in rows:
    print(f"| {label} | {cell('direct', metric, fmt) if direct else '–'} | "
          + " | ".join(cell(p, metric, fmt) for p in proxies) + " | "
          + " | ".join(ratio(p, metric) for p in masts) + " |")
if detail:
    print()
for peer, d in detail.items():
    print(f"- system calls per request, {names.get(peer, peer)}: {d}")
if many:
    print()
    print("Each cell: the median over the runs (min–max); a ratio is of the medians (the range of"
          " the runs' own ratios). Added p99 is taken within each run, against that run's direct p99.")
PY
} | tee "$WORK/table.md"
cp "$WORK/table.md" "$ROOT/bench/data-plane/latest.md"
cp "$RESULTS" "$ROOT/bench/data-plane/latest.tsv"
