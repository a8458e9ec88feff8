#!/usr/bin/env bash
# How mastd's cost grows: pilot-load over services × proxies, one row per run, into a CSV,
# then the chart (bench/pilot/growth.svg). A benchmark, not a test: run it on a quiet machine.
#
#   bench/pilot/grid.sh                     # 250..2000 services × 500..4000 proxies
#   SERVICES="250 1000" PROXIES="500 2000" bench/pilot/grid.sh
#
# Uses release binaries from $CARGO_TARGET_DIR (default target/); builds them first.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p mastd -p mast-bench >/dev/null
services=${SERVICES:-"250 500 1000 2000"}
proxies=${PROXIES:-"500 1000 2000 4000"}
changes=${CHANGES:-3}
out=${OUT:-bench/pilot/growth.csv}
echo "services,proxies,idle_rss_mb,synced_rss_mb,hwm_mb,sync_s,sync_cpu_s,p50_ms,p99_ms,cpu_per_change_s" >"$out"
for s in $services; do
  for p in $proxies; do
    log=$(mktemp)
    "$target/release/pilot-load" --mastd "$target/release/mastd" --services "$s" --proxies "$p" \
      --changes "$changes" >"$log" 2>&1 || { cat "$log"; exit 1; }
    python3 - "$s" "$p" "$log" >>"$out" <<'PY'
import re, sys
s, p, log = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
idle = re.search(r"no proxies: (\d+) MB", log).group(1)
m = re.search(r"initial sync of \d+ proxies: ([\d.]+)s .*mastd CPU ([\d.]+)s, RSS (\d+) MB, high-water (\d+) MB", log)
c = re.search(r"convergence over .*: p50 (\d+) ms, p99 (\d+) ms", log)
cpus = [float(x) for x in re.findall(r"mastd CPU ([\d.]+)s, \d+ proxies updated", log)]
print(f"{s},{p},{idle},{m.group(3)},{m.group(4)},{m.group(1)},{m.group(2)},{c.group(1)},{c.group(2)},{sum(cpus)/len(cpus):.2f}")
PY
    tail -1 "$out"
    rm -f "$log"
  done
done
python3 bench/pilot/chart.py "$out" bench/pilot/growth.svg
