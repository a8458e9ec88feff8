#!/usr/bin/env bash
# Injection latency: AdmissionReviews through mastd's webhook (HTTPS :15017-style, certificate
# from citadel), replayed by wrk one at a time (latency) and 8 at a time (throughput); the
# floor is nginx answering the same POST with a static body of the webhook's response size over
# TLS (same curve P-256 certificate kind, same keep-alive, same pinning). Plus the webhook's
# in-process cost per review (inject-bench).
#
#   bench/inject/run.sh        # ~1 minute; prints Markdown, writes bench/inject/latest.md
#
# Pinning (2-core machine): the server under test (mastd or nginx) on CPU 1, wrk on CPU 0.
# Only processes this script started are stopped (by PID); everything stays on loopback.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/mast-inject-bench.XXXXXX)
chmod 755 "$WORK"
DUR=${DUR:-10}
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "installing $2"; apt-get install -y -q "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx-light

(cd "$ROOT" && cargo build --release -q -p mastd -p mast-bench)
BIN="$ROOT/target/release"
# The corpus is vendored in the repository; MAST_CORPUS_DIR overrides it (as for the tests).
MANIFEST="${MAST_CORPUS_DIR:-$ROOT/testdata/upstream}/istio-inject/hello-probes.yaml"

echo "== in-process"
IN_PROCESS=$(taskset -c 1 "$BIN/inject-bench" --manifest "$MANIFEST" --write-review "$WORK/review.json" --iterations 20000)
echo "$IN_PROCESS"

cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$WORK/review.json", "rb")
wrk.body = f:read("*all")
f:close()
LUA

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2; return 1
}

# wrk --latency prints "50%  1.23ms" lines; keep p50 and p99 and the request rate.
run_wrk() { # name url conns
    local out
    out=$(taskset -c 0 wrk -t1 -c"$3" -d"${DUR}s" --latency -s "$WORK/post.lua" "$2")
    local p50 p99 rps errors
    p50=$(awk '$1=="50%"{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
    echo "$1 c=$3: p50 $p50 p99 $p99 rps $rps ${errors:+($errors)}" >&2
    printf '%s|%s|%s|%s\n' "$p50" "$p99" "$rps" "${errors:-none}"
}

echo "== mastd webhook (CPU 1)"
mkdir -p "$WORK/config"
taskset -c 1 "$BIN/mastd" --config-dir "$WORK/config" --xds-addr 127.0.0.1:19010 \
    --http-addr 127.0.0.1:19014 --ca-dir "$WORK/ca" --ca-addr 127.0.0.1:19012 \
    --injector-addr 127.0.0.1:19017 >"$WORK/mastd.log" 2>&1 &
PIDS+=($!)
wait_port 19017
# What the webhook answers, to size nginx's static reply the same.
curl -sk -H 'content-type: application/json' --data-binary @"$WORK/review.json" \
    https://127.0.0.1:19017/inject >"$WORK/response.json"
grep -q '"patchType":"JSONPatch"' "$WORK/response.json" || { echo "webhook did not inject"; cat "$WORK/mastd.log"; exit 1; }
M1=$(run_wrk mastd https://127.0.0.1:19017/inject 1)
M8=$(run_wrk mastd https://127.0.0.1:19017/inject 8)
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

echo "== nginx static reply of the same size over TLS (CPU 1)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
mkdir -p "$WORK/www"
cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/www;
    server {
        listen 127.0.0.1:19443 ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        keepalive_requests 1000000;
        location /inject {
            client_body_buffer_size 64k;
            default_type application/json;
            alias $WORK/response.json;
            error_page 405 =200 \$uri;
        }
    }
}
NGINX
taskset -c 1 nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port 19443
N1=$(run_wrk nginx https://127.0.0.1:19443/inject 1)
N8=$(run_wrk nginx https://127.0.0.1:19443/inject 8)

to_us() { # 1.23ms / 456.78us / 1.2s -> microseconds
    awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}
ratio() { awk -v a="$(to_us "$1")" -v b="$(to_us "$2")" 'BEGIN{ printf "%.2f", a/b }'; }
IFS='|' read -r m1p50 m1p99 m1rps m1err <<<"$M1"
IFS='|' read -r n1p50 n1p99 n1rps n1err <<<"$N1"
IFS='|' read -r m8p50 m8p99 m8rps m8err <<<"$M8"
IFS='|' read -r n8p50 n8p99 n8rps n8err <<<"$N8"

REPORT="$ROOT/bench/inject/latest.md"
{
    echo "### Injection webhook, $(date -u +%Y-%m-%d) ($(nproc) cores; server on CPU 1, wrk on CPU 0, ${DUR}s each)"
    echo
    echo "Review: the pod of \`hello-probes.yaml\` (2 containers, probes), $(wc -c <"$WORK/review.json") B in, $(wc -c <"$WORK/response.json") B out."
    echo
    echo "| load | mastd webhook p50 | p99 | req/s | nginx static (floor) p50 | p99 | req/s | p99 ratio |"
    echo "|---|---|---|---|---|---|---|---|"
    echo "| 1 at a time | $m1p50 | $m1p99 | $m1rps | $n1p50 | $n1p99 | $n1rps | $(ratio "$m1p99" "$n1p99")× |"
    echo "| 8 at a time | $m8p50 | $m8p99 | $m8rps | $n8p50 | $n8p99 | $n8rps | $(ratio "$m8p99" "$n8p99")× |"
    echo
    echo "Errors: mastd $m1err / $m8err; nginx $n1err / $n8err."
    echo
    echo "$IN_PROCESS"
} | tee "$REPORT"
