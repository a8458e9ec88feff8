#!/usr/bin/env bash
# Topology view at scale: mast-telemetry's collector vs Prometheus on 2000 synthetic sidecars.
#
#   bench/telemetry/run.sh                 # ~3.7 minutes after the build; writes bench/telemetry/latest.md
#   ALL_TIMEOUT=300 bench/telemetry/run.sh # let the all-namespace page finish drawing (longer)
#   SETTLE=300 bench/telemetry/run.sh      # time the graphs with a full 5 m window of data (+10 min)
#
# One run, same pinning for both peers (2-core machine): the 2000 sidecars' stats pages
# (`telemetry-load sidecars`), every client (the timing client, Chromium) on CPU 0; the scraper
# under test alone on CPU 1 — first mast-telemetry's collector (`telemetry-load collector`: the
# real Collector, 5 s rounds, API and web view on 127.0.0.1:$API_PORT), then, after it has
# stopped, Prometheus from Debian's package scraping the same 2000 targets every 5 s (file_sd),
# with its own config and data dir in a temp dir.
#
# Measured, each after the same number of 5 s rounds (≥ 6):
#  - scraper CPU (% of one core, from /proc/PID/stat over $WINDOW s of scraping) and VmRSS;
#    the collector also logs each round's CPU time in-process (getrusage);
#  - Mast: graph API latency (sequential keep-alive GETs, p50/p99) for one namespace and for
#    all 10, each graph type, duration 5m; page render time in headless Chromium, navigation
#    start → graph drawn, median of $LOADS loads (the all-namespace page: $ALL_LOADS load,
#    capped at $ALL_TIMEOUT s);
#  - Prometheus: the PromQL queries Kiali makes to build the same graph (11 per namespace),
#    one after another, per graph: p50/p99 — only the data part of Kiali's work.
# Only processes this script started are stopped (by PID); everything listens on 127.0.0.1;
# the temp dir is removed at exit (KEEP=1 keeps it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/mast-telemetry-bench.XXXXXX)
BASE_PORT=${BASE_PORT:-21000}
API_PORT=${API_PORT:-20101}
PROM_PORT=${PROM_PORT:-19090}
WINDOW=${WINDOW:-20}
LOADS=${LOADS:-5}
ALL_LOADS=${ALL_LOADS:-1}
ALL_TIMEOUT=${ALL_TIMEOUT:-45}
SETTLE=${SETTLE:-0} # extra seconds of scraping before the graphs are timed (both peers)
NSALL=ns0,ns1,ns2,ns3,ns4,ns5,ns6,ns7,ns8,ns9
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
stop() { # stop PID: TERM, wait, and forget it (so cleanup never signals a reused PID)
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

need() { command -v "$1" >/dev/null || { echo "installing $2" >&2; apt-get install -y -q "$2" >/dev/null; }; }
need jq jq
need chromium chromium
need curl curl
# Prometheus from Debian's package, unpacked here rather than installed, so no system
# service is created or started; an installed /usr/bin/prometheus is used as is.
PROM=$(command -v prometheus || true)
if [ -z "$PROM" ]; then
    PROM_DIR="$ROOT/target/bench-telemetry/prometheus"
    if [ ! -x "$PROM_DIR/usr/bin/prometheus" ]; then
        mkdir -p "$PROM_DIR"
        (cd "$WORK" && apt-get download -q prometheus >/dev/null && dpkg-deb -x prometheus_*.deb "$PROM_DIR")
    fi
    PROM="$PROM_DIR/usr/bin/prometheus"
fi
PROM_VERSION=$("$PROM" --version 2>&1 | head -1 | awk '{print $3}')

(cd "$ROOT" && cargo build --release -q -p mast-bench --bin telemetry-load)
BIN="$ROOT/target/release/telemetry-load"
WEB="$ROOT/telemetry/web"
[ -d "$WEB/node_modules" ] || (cd "$WEB" && npm ci --no-audit --no-fund >/dev/null)
(cd "$WEB" && npm run -s build >/dev/null)

TCK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mb() { awk -v k="$2:" '$1 == k {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
now() { date +%s.%N; }
# cpu_pct PID SECONDS: % of one core the process used over the next SECONDS.
cpu_pct() {
    local a b t0 t1
    a=$(ticks "$1"); t0=$(now); sleep "$2"; b=$(ticks "$1"); t1=$(now)
    awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" -v hz="$TCK" 'BEGIN{printf "%.1f", (b - a) / hz / (t1 - t0) * 100}'
}
wait_for() { # wait_for SECONDS what command...
    local deadline=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for $what" >&2; exit 1; }
        sleep 0.5
    done
}

# ---- the sidecars (CPU 0) -----------------------------------------------------------------------
"$BIN" describe >"$WORK/mesh.json"
taskset -c 0 "$BIN" sidecars --base-port "$BASE_PORT" --file-sd "$WORK/targets.json" 2>"$WORK/sidecars.log" &
SIDECARS=$!
PIDS+=("$SIDECARS")
wait_for 20 "the sidecars" curl -sf -o /dev/null "http://127.0.0.1:$((BASE_PORT + 1999))/stats/prometheus"
WORKLOADS=$(jq .workloads "$WORK/mesh.json")

# ---- Mast: the collector alone on CPU 1 ---------------------------------------------------------
taskset -c 1 "$BIN" collector --base-port "$BASE_PORT" --listen "127.0.0.1:$API_PORT" \
    --web-dir "$WEB/dist" >"$WORK/rounds.jsonl" 2>"$WORK/collector.log" &
COLL=$!
PIDS+=("$COLL")
rounds() { wc -l <"$WORK/rounds.jsonl"; }
have_rounds() { [ "$(rounds)" -ge "$1" ]; }
wait_for 30 "two collector rounds" have_rounds 2
F0=$(ticks "$SIDECARS"); FT0=$(now)
M_CPU=$(cpu_pct "$COLL" "$WINDOW")
F1=$(ticks "$SIDECARS"); FT1=$(now)
M_FARM_CPU=$(awk -v a="$F0" -v b="$F1" -v t0="$FT0" -v t1="$FT1" -v hz="$TCK" 'BEGIN{printf "%.1f", (b - a) / hz / (t1 - t0) * 100}')
M_ROUNDS=$(rounds)
M_RSS=$(rss_mb "$COLL" VmRSS)
M_HWM=$(rss_mb "$COLL" VmHWM)
echo "collector: $M_ROUNDS rounds, CPU $M_CPU%, RSS $M_RSS MB" >&2
sleep "$SETTLE"
M_ROUNDS_Q=$(rounds)
M_RSS_Q=$(rss_mb "$COLL" VmRSS)

: >"$WORK/api.jsonl"
for gt in versionedApp app workload service; do
    taskset -c 0 "$BIN" get --name "ns0 $gt" --repeat 200 --max-seconds 3 \
        --url "http://127.0.0.1:$API_PORT/api/namespaces/ns0/graph?graphType=$gt&duration=5m" >>"$WORK/api.jsonl"
    taskset -c 0 "$BIN" get --name "all $gt" --repeat 100 --max-seconds 6 \
        --url "http://127.0.0.1:$API_PORT/api/namespaces/graph?namespaces=$NSALL&graphType=$gt&duration=5m" >>"$WORK/api.jsonl"
done
M_ROUNDS_API=$(rounds)
# Sanity: the requests/s the graph shows over the last minute (edges into workloads; TCP aside).
M_TRAFFIC=$(curl -sf "http://127.0.0.1:$API_PORT/api/namespaces/graph?namespaces=$NSALL&graphType=workload&duration=1m" |
    jq '(.elements.nodes | map({key: .data.id, value: .data.nodeType}) | from_entries) as $t
        | [.elements.edges[].data | select($t[.target] != "service" and .traffic.protocol != "tcp") | .rps] | add')

RENDER=(env BASE_URL="http://127.0.0.1:$API_PORT" NAMESPACES="$NSALL" PLAYWRIGHT="$WEB/node_modules/playwright-core/index.mjs")
taskset -c 0 "${RENDER[@]}" SCENARIOS=ns0 LOADS="$LOADS" TIMEOUT_MS=60000 \
    timeout 400 node "$ROOT/bench/telemetry/render.mjs" >"$WORK/render.jsonl"
taskset -c 0 "${RENDER[@]}" SCENARIOS=all-namespaces LOADS="$ALL_LOADS" TIMEOUT_MS=$((ALL_TIMEOUT * 1000)) \
    timeout $((ALL_TIMEOUT * ALL_LOADS + 60)) node "$ROOT/bench/telemetry/render.mjs" >>"$WORK/render.jsonl"
M_ROUNDS_END=$(rounds)
M_HWM_END=$(rss_mb "$COLL" VmHWM)
# Per-round CPU and wall time in-process, rounds 2.. (round 1 only reads baselines).
ROUND_STATS=$(jq -s --argjson m "$M_ROUNDS" '[.[1:$m][]] | {n: length, cpu: (map(.cpu_ms) | add / length), wall: (map(.wall_ms) | add / length),
    cpumax: (map(.cpu_ms) | max), edges: (map(.edges) | add / length), reach: (map(.reachable) | min)}' "$WORK/rounds.jsonl")
stop "$COLL"

# ---- Prometheus alone on CPU 1 ------------------------------------------------------------------
mkdir -p "$WORK/prom-data"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
  scrape_timeout: 5s
  evaluation_interval: 1m
scrape_configs:
  - job_name: sidecars
    metrics_path: /stats/prometheus
    file_sd_configs:
      - files: [$WORK/targets.json]
EOF
taskset -c 1 "$PROM" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn 2>"$WORK/prometheus.log" &
PROMPID=$!
PIDS+=("$PROMPID")
promq() { curl -sf --data-urlencode "query=$1" "http://127.0.0.1:$PROM_PORT/api/v1/query" | jq -r '.data.result[0].value[1] // "0"'; }
all_up() { [ "$(promq 'count(up == 1)')" = "$WORKLOADS" ]; }
wait_for 60 "Prometheus to scrape every sidecar once" all_up
P_T0=$(now)
sleep 5 # its second round: the first with rates, as the collector's round 2
F0=$(ticks "$SIDECARS"); FT0=$(now)
P_CPU=$(cpu_pct "$PROMPID" "$WINDOW")
F1=$(ticks "$SIDECARS"); FT1=$(now)
P_FARM_CPU=$(awk -v a="$F0" -v b="$F1" -v t0="$FT0" -v t1="$FT1" -v hz="$TCK" 'BEGIN{printf "%.1f", (b - a) / hz / (t1 - t0) * 100}')
P_ROUNDS=$(awk -v t0="$P_T0" -v t1="$(now)" 'BEGIN{printf "%d", (t1 - t0) / 5 + 1}')
P_RSS=$(rss_mb "$PROMPID" VmRSS)
P_HWM=$(rss_mb "$PROMPID" VmHWM)
P_SERIES=$(curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/status/tsdb" | jq .data.headStats.numSeries)
P_SCRAPE=$(promq 'avg(scrape_duration_seconds)')
# (Over 20 s: a range longer than the data so far would be divided by the whole range.)
P_TRAFFIC=$(promq 'sum(rate(istio_requests_total{reporter="destination"}[20s]))')
echo "prometheus: ~$P_ROUNDS rounds, CPU $P_CPU%, RSS $P_RSS MB, $P_SERIES series" >&2
sleep "$SETTLE"
P_ROUNDS_Q=$(awk -v t0="$P_T0" -v t1="$(now)" 'BEGIN{printf "%d", (t1 - t0) / 5 + 1}')
P_RSS_Q=$(rss_mb "$PROMPID" VmRSS)
: >"$WORK/prom.jsonl"
taskset -c 0 "$BIN" promql --prom "http://127.0.0.1:$PROM_PORT" --namespaces ns0 --name ns0 \
    --repeat 30 --max-seconds 12 >>"$WORK/prom.jsonl"
taskset -c 0 "$BIN" promql --prom "http://127.0.0.1:$PROM_PORT" --namespaces "$NSALL" --name all \
    --repeat 10 --max-seconds 25 >>"$WORK/prom.jsonl"
P_HWM_END=$(rss_mb "$PROMPID" VmHWM)
P_RSS_END=$(rss_mb "$PROMPID" VmRSS)
stop "$PROMPID"

# ---- report -------------------------------------------------------------------------------------
api() { jq -r --arg n "$1" "select(.name == \$n) | $2" "$WORK/api.jsonl"; }
prom() { jq -r --arg n "$1" "select(.name == \$n) | $2" "$WORK/prom.jsonl"; }
render() { jq -r --arg s "$1" "select(.scenario == \$s) | $2" "$WORK/render.jsonl"; }
f0() { awk -v v="$1" 'BEGIN{ if (v == "" || v == "null") print "–"; else printf "%.0f", v }'; }
f1() { awk -v v="$1" 'BEGIN{ if (v == "" || v == "null") print "–"; else printf "%.1f", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 == 0 || a == "" || a == "null") print "–"; else if (a / b < 0.1) printf "%.3f×", a / b; else printf "%.2f×", a / b }'; }
RS() { jq -r "$1" <<<"$ROUND_STATS"; }
mesh() { jq -r "$1" "$WORK/mesh.json"; }
ALLR="all 10 namespaces"
all_drawn=$(render "$ALLR" .median_drawn_ms)
if [ "$all_drawn" = "null" ] || [ -z "$all_drawn" ]; then
    all_page="not drawn within ${ALL_TIMEOUT} s (graph JSON in $(render "$ALLR" .median_data_ms) ms; the page was still laying out or drawing)"
else
    all_page="$(render "$ALLR" '.drawn_ms | map(tostring) | join(" · ")') ms (median $all_drawn ms; graph JSON in $(render "$ALLR" .median_data_ms) ms)"
fi

REPORT="$ROOT/bench/telemetry/latest.md"
{
    echo "### Topology view at scale, $(date -u +%Y-%m-%d) ($(nproc) cores; scraper on CPU 1, sidecar pages and clients on CPU 0)"
    echo
    echo "Mesh: $(mesh .namespaces) namespaces, $(mesh .services) services, $(mesh .workloads) workloads (2–8 versions), $(mesh .edges) workload edges" \
        "($(mesh '.edges_by_protocol | to_entries | map("\(.value) \(.key)") | join(", ")'); $(mesh .edges_with_5xx_or_grpc_errors) with 5xx/gRPC errors, $(mesh .edges_mtls) mTLS)," \
        "$(mesh .mesh_requests_per_second) req/s. Pages: $(mesh .series) series in all, $(awk -v b="$(mesh .page_bytes_mean)" 'BEGIN{printf "%.0f", b/1024}') KiB per sidecar on average" \
        "(max $(awk -v b="$(mesh .page_bytes_max)" 'BEGIN{printf "%.0f", b/1024}') KiB), $(awk -v b="$(mesh .round_mb)" 'BEGIN{printf "%.0f", b}') MB per round. Prometheus $PROM_VERSION."
    echo
    echo "| | Mast collector | Prometheus $PROM_VERSION | Mast / Prometheus |"
    echo "|---|---|---|---|"
    echo "| graph data, 1 namespace (ns0): p50 / p99 ms | $(f1 "$(api 'ns0 versionedApp' .p50_ms)") / $(f1 "$(api 'ns0 versionedApp' .p99_ms)") (API, versionedApp) | $(f0 "$(prom ns0 .p50_ms)") / $(f0 "$(prom ns0 .p99_ms)") (Kiali's 11 queries) | $(ratio "$(api 'ns0 versionedApp' .p50_ms)" "$(prom ns0 .p50_ms)") / $(ratio "$(api 'ns0 versionedApp' .p99_ms)" "$(prom ns0 .p99_ms)") |"
    echo "| graph data, all 10 namespaces: p50 / p99 ms | $(f1 "$(api 'all versionedApp' .p50_ms)") / $(f1 "$(api 'all versionedApp' .p99_ms)") | $(f0 "$(prom all .p50_ms)") / $(f0 "$(prom all .p99_ms)") (110 queries) | $(ratio "$(api 'all versionedApp' .p50_ms)" "$(prom all .p50_ms)") / $(ratio "$(api 'all versionedApp' .p99_ms)" "$(prom all .p99_ms)") |"
    echo "| scraper CPU while scraping, % of one core | $M_CPU | $P_CPU | $(ratio "$M_CPU" "$P_CPU") |"
    echo "| VmRSS after $M_ROUNDS / ~$P_ROUNDS rounds, MB | $M_RSS | $P_RSS ($P_SERIES series in the head) | $(ratio "$M_RSS" "$P_RSS") |"
    [ "$SETTLE" = 0 ] || echo "| VmRSS when the graphs were timed ($M_ROUNDS_Q / ~$P_ROUNDS_Q rounds, SETTLE=$SETTLE), MB | $M_RSS_Q | $P_RSS_Q | $(ratio "$M_RSS_Q" "$P_RSS_Q") |"
    echo "| peak RSS (VmHWM) by the end, MB | $M_HWM_END | $P_HWM_END (after the queries) | $(ratio "$M_HWM_END" "$P_HWM_END") |"
    echo "| sidecar pages' own CPU (CPU 0), % of one core | $M_FARM_CPU | $P_FARM_CPU | |"
    echo
    echo "Collector rounds 2–$M_ROUNDS (the CPU window, before any API call) in-process: $(f0 "$(RS .cpu)") ms CPU per round on average (max $(f0 "$(RS .cpumax)")), $(f0 "$(RS .wall)") ms wall," \
        "$(f0 "$(RS .edges)") store edges moved per round, at least $(RS .reach)/$WORKLOADS targets reachable each round." \
        "Prometheus: avg scrape duration $(awk -v s="$P_SCRAPE" 'BEGIN{printf "%.1f", s*1000}') ms per target; its CPU per 5 s round ≈ $(awk -v c="$P_CPU" 'BEGIN{printf "%.0f", c*50}') ms." \
        "Prometheus' query-set time by kind, all namespaces (mean ms per graph): $(prom all '.mean_ms_by_kind | to_entries | map("\(.key) \(.value | floor)") | join(", ")');" \
        "it returned $(prom all .result_series) series ($(awk -v b="$(prom all .bytes)" 'BEGIN{printf "%.1f", b/1e6}') MB of JSON) per all-namespace graph." \
        "Same traffic seen: Mast's graph shows $(f0 "$M_TRAFFIC") req/s over the last minute, Prometheus' \`sum(rate(istio_requests_total{reporter=\"destination\"}[20s]))\` $(f0 "$P_TRAFFIC") req/s (nominal $(mesh .mesh_requests_per_second), ±30% swings per edge)."
    echo
    echo "Mast graph API by graph type (sequential GETs over one keep-alive connection, duration=5m, while the collector keeps scraping):"
    echo
    echo "| graph type | ns0: p50 / p99 ms (n) | JSON KiB | all 10: p50 / p99 ms (n) | JSON KiB |"
    echo "|---|---|---|---|---|"
    for gt in versionedApp app workload service; do
        echo "| $gt | $(f1 "$(api "ns0 $gt" .p50_ms)") / $(f1 "$(api "ns0 $gt" .p99_ms)") ($(api "ns0 $gt" .n)) | $(awk -v b="$(api "ns0 $gt" .bytes)" 'BEGIN{printf "%.0f", b/1024}') |" \
            "$(f1 "$(api "all $gt" .p50_ms)") / $(f1 "$(api "all $gt" .p99_ms)") ($(api "all $gt" .n)) | $(awk -v b="$(api "all $gt" .bytes)" 'BEGIN{printf "%.0f", b/1024}') |"
    done
    echo
    echo "Page render (headless Chromium $(chromium --version 2>/dev/null | awk '{print $2}'), navigation start → graph drawn, versionedApp, 5m):"
    echo
    echo "| page | nodes / edges | loads (ms) | median | graph JSON arrived (median) |"
    echo "|---|---|---|---|---|"
    echo "| ns0 | $(render ns0 .nodes) / $(render ns0 .edges) | $(render ns0 '.drawn_ms | map(tostring) | join(" · ")') | **$(render ns0 .median_drawn_ms) ms** | $(render ns0 .median_data_ms) ms |"
    echo "| all 10 namespaces | $(render "$ALLR" .nodes) / $(render "$ALLR" .edges) | $all_page | | |"
} | tee "$REPORT"
