#!/usr/bin/env python3
"""The soak's restart gap, reproduced without the demo (issue 21 §5).

One mast-proxy with a static listener in front of a local HTTP backend; a client opens a new
connection every 5 ms and sends a GET; the proxy gets SIGTERM and is started again, three ways:

  old-script  the way bench/soak/run.sh did it before 1401699: wait (up to 5 s) for
              /proc/PID to vanish, here with a parent that does not reap it, as
              `mastctl demo` does not with MAST_DEMO_SIDECARS_RESTARTED: the exited proxy stays
              a zombie, /proc/PID stays, the wait runs its full 5 s;
  kubelet     start the new proxy as soon as the old one has exited (the fixed script);
  no-drain    the same with --drain 0s, to show what the drain period itself costs.

For each: how long requests failed and how many. Usage:
  bench/soak/restart-gap.py [--proxy target/debug/mast-proxy] [--drain 1s]
"""
import argparse
import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def bootstrap(path, listen, admin, backend):
    path.write_text(f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend, timeout: 5s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}
""")


def get(port):
    """One GET on a new connection: True when it answers 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def spawn(args, boot, drain, log):
    return subprocess.Popen(
        [args.proxy, "--config", str(boot), "--drain", drain, "--concurrency", "1",
         "--stats-port", str(free_port()), "--status-port", str(free_port()), "--agent-port", "0"],
        stdout=log, stderr=subprocess.STDOUT)


def ready(port, until):
    while time.monotonic() < until:
        if get(port):
            return True
        time.sleep(0.02)
    return False


def case(name, args, boot, listen, drain, reap, log):
    proc = spawn(args, boot, drain, log)
    if not ready(listen, time.monotonic() + 20):
        sys.exit(f"{name}: mast-proxy did not come up")
    results = []  # (t, ok)
    stop = threading.Event()

    def client():
        while not stop.is_set():
            results.append((time.monotonic(), get(listen)))
            time.sleep(0.005)

    t = threading.Thread(target=client)
    t.start()
    time.sleep(1)
    t_term = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    if reap:
        proc.wait()
    else:
        # run.sh before 1401699: `for _ in $(seq 1 50); do [ -d /proc/$p ] || break; sleep 0.1; done`
        for _ in range(50):
            if not os.path.isdir(f"/proc/{proc.pid}"):
                break
            time.sleep(0.1)
    t_start = time.monotonic()
    new = spawn(args, boot, drain, log)
    ready(listen, time.monotonic() + 20)
    time.sleep(1)
    stop.set()
    t.join()
    proc.wait()  # the zombie, now
    new.send_signal(signal.SIGTERM)
    new.wait()
    failed = [at for at, ok in results if not ok]
    if failed:
        window = f"{(failed[0] - t_term) * 1000:+.0f} ms → {(failed[-1] - t_term) * 1000:+.0f} ms after SIGTERM"
    else:
        window = "none"
    print(f"| {name} | {drain} | {(t_start - t_term) * 1000:.0f} | {len(failed)} of {len(results)} | {window} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", default="target/debug/mast-proxy")
    p.add_argument("--drain", default="1s")
    args = p.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as d:
        boot = __import__("pathlib").Path(d) / "bootstrap.yaml"
        listen, admin = free_port(), free_port()
        bootstrap(boot, listen, admin, server.server_address[1])
        with open(os.path.join(d, "proxy.log"), "w") as log:
            print("| case | drain | SIGTERM → new proxy started (ms) | failed GETs (one every ~5 ms) | failing |")
            print("|---|---|---|---|---|")
            case("old-script", args, boot, listen, args.drain, False, log)
            case("kubelet", args, boot, listen, args.drain, True, log)
            case("no-drain", args, boot, listen, "0s", True, log)


if __name__ == "__main__":
    main()
