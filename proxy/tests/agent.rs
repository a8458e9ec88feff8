//! End to end: the built `mast-proxy` started with Istio's injected argv and environment, as
//! the `istio-proxy` container runs it, next to a tiny app. Checks the agent's status port as
//! kubelet, Prometheus and the preStop hook use it: rewritten HTTP and TCP probes, merged
//! metrics, and `mast-proxy request … POST drain` ending the proxy cleanly.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_mast-proxy");

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The proxy process, killed on drop; its log printed if the test failed.
struct Proxy {
    child: Child,
    log: PathBuf,
}

impl Proxy {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "mast-proxy still running after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- mast-proxy log ----\n{}", self.log_text());
        }
    }
}

/// The app: `/healthz` answers `status`, `/metrics` a Prometheus text exposition.
async fn app(status: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let status = Arc::clone(&status);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let code = status.load(Ordering::Relaxed);
                    async move {
                        let mut r = match req.uri().path() {
                            "/healthz" => {
                                let seen = req
                                    .headers()
                                    .get("x-probe")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("none")
                                    .to_string();
                                let mut r = Response::new(Full::new(Bytes::from(format!(
                                    "app says {code}, x-probe {seen}"
                                ))));
                                *r.status_mut() =
                                    hyper::StatusCode::from_u16(code).expect("status");
                                r
                            }
                            "/metrics" => {
                                let mut r = Response::new(Full::new(Bytes::from_static(
                                    b"# TYPE app_hits_total counter\napp_hits_total 7\n",
                                )));
                                r.headers_mut().insert(
                                    "content-type",
                                    "text/plain; version=0.0.4".parse().expect("header"),
                                );
                                r
                            }
                            _ => {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"app")));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        r.headers_mut()
                            .insert("x-app", "1".parse().expect("header"));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

/// One HTTP/1.1 exchange: status, content type, body.
async fn get(port: u16, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

async fn eventually_status(port: u16, path: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = get(port, path).await;
        match &got {
            Ok((status, _, body)) if *status == want => return body.clone(),
            _ if Instant::now() > deadline => panic!("{path}: want {want}, last {got:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// An Envoy bootstrap: one HTTP listener routing to the app.
fn bootstrap(dir: &Path, listen: u16, app: u16) -> PathBuf {
    let path = dir.join("bootstrap.yaml");
    std::fs::write(
        &path,
        format!(
            r#"static_resources:
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
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}
"#
        ),
    )
    .expect("write bootstrap");
    path
}

fn request(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("request")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mast-proxy request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_sidecar_agent_probes_metrics_and_prestop_drain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Arc::new(AtomicU16::new(200));
    let app_port = app(Arc::clone(&status)).await;
    // The app's TCP port for the tcpSocket probe; closed later.
    let tcp_app = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let tcp_port = tcp_app.local_addr().expect("addr").port();
    let closed_port = free_port();
    let probers = format!(
        r#"{{"/app-health/app/livez":{{"httpGet":{{"port":{app_port},"path":"healthz","scheme":"HTTP","httpHeaders":[{{"name":"X-Probe","value":"kubelet"}}]}},"timeoutSeconds":2}},
            "/app-health/app/readyz":{{"tcpSocket":{{"port":{tcp_port}}}}},
            "/app-health/gone/livez":{{"httpGet":{{"port":{closed_port},"path":"/"}}}}}}"#
    );
    let (listen, admin, status_port, stats, agent) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let boot = bootstrap(dir.path(), listen, app_port);
    let log = dir.path().join("proxy.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(BIN)
        // Istio's injected args, then the ports this test needs.
        .args([
            "proxy",
            "sidecar",
            "--domain",
            "default.svc.cluster.local",
            "--proxyLogLevel=info",
            "--proxyComponentLogLevel=misc:error",
            "--log_output_level=default:info",
            "--concurrency",
            "1",
        ])
        .arg("--config")
        .arg(&boot)
        .args(["--admin-port", &admin.to_string()])
        .args(["--status-port", &status_port.to_string()])
        .args(["--stats-port", &stats.to_string()])
        .args(["--statusPort", &agent.to_string()])
        .args(["--drain", "2s"])
        .env_clear()
        .env("POD_NAME", "app-5d8f7c9b4-x2x9z")
        .env("POD_NAMESPACE", "default")
        .env("ISTIO_KUBE_APP_PROBERS", probers)
        .env(
            "ISTIO_PROMETHEUS_ANNOTATIONS",
            format!(r#"{{"scrape":"true","path":"/metrics","port":"{app_port}"}}"#),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start mast-proxy");
    let mut proxy = Proxy { child, log };

    // Ready on the agent port as on Envoy's 15021.
    eventually_status(agent, "/healthz/ready", 200).await;
    assert_eq!(
        get(status_port, "/healthz/ready").await.expect("15021").0,
        200
    );

    // httpGet: the app's answer, status and body, with the probe's headers.
    let body = eventually_status(agent, "/app-health/app/livez", 200).await;
    assert_eq!(body, "app says 200, x-probe kubelet");
    status.store(503, Ordering::Relaxed);
    let (code, _, body) = get(agent, "/app-health/app/livez").await.expect("livez");
    assert_eq!(
        (code, body.as_str()),
        (503, "app says 503, x-probe kubelet")
    );
    status.store(302, Ordering::Relaxed);
    assert_eq!(
        get(agent, "/app-health/app/livez").await.expect("livez").0,
        302
    );
    // Nothing listening: 500.
    assert_eq!(
        get(agent, "/app-health/gone/livez").await.expect("gone").0,
        500
    );
    // Not a probe the injector wrote: 404.
    assert_eq!(
        get(agent, "/app-health/other/livez")
            .await
            .expect("other")
            .0,
        404
    );

    // tcpSocket: 200 while the app listens, 500 once it has closed.
    assert_eq!(
        get(agent, "/app-health/app/readyz")
            .await
            .expect("readyz")
            .0,
        200
    );
    drop(tcp_app);
    assert_eq!(
        get(agent, "/app-health/app/readyz")
            .await
            .expect("readyz")
            .0,
        500
    );

    // Prometheus: the proxy's exposition (as on 15090) with the app's appended.
    let (code, content_type, merged) = get(agent, "/stats/prometheus").await.expect("stats");
    assert_eq!(code, 200, "{merged}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        merged.contains("envoy_control_plane_connected_state"),
        "{merged}"
    );
    assert!(merged.ends_with("app_hits_total 7\n"), "{merged}");
    assert!(!merged.contains("# EOF"), "{merged}");
    let (code, _, own) = get(stats, "/stats/prometheus").await.expect("15090");
    assert_eq!(code, 200);
    assert!(own.contains("envoy_control_plane_connected_state") && own.ends_with("# EOF\n"));

    // `request`: a non-2xx answer fails, naming the status.
    let out = request(&[&format!("--debug-port={agent}"), "GET", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("/nowhere"), "{err}");
    // Draining is POST only.
    let out = request(&[&format!("--debug-port={agent}"), "GET", "drain"]);
    assert_eq!(out.status.code(), Some(1));
    if let Some(s) = proxy.child.try_wait().expect("try_wait") {
        panic!("mast-proxy exited after GET /drain: {s}");
    }

    // The preStop hook: `pilot-agent request --debug-port=15020 POST drain`.
    let out = request(&[&format!("--debug-port={agent}"), "POST", "drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    // Draining: no longer ready, traffic ports closed, then a clean exit.
    let (code, _, body) = get(agent, "/healthz/ready").await.expect("ready");
    assert_eq!((code, body.as_str()), (503, "DRAINING\n"));
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));

    // The agent is gone with the proxy: `request` says it could not connect.
    let out = request(&[&format!("--debug-port={agent}"), "POST", "drain"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn router_mode_reads_its_config_and_bad_values_stop_it_and_help_stays_readable() {
    // Istio's gateway argv runs the proxy (as a gateway): its configuration is checked as a
    // sidecar's, so a bad value stops it with 64 naming the variable.
    let out = Command::new(BIN)
        .args([
            "proxy",
            "router",
            "--domain",
            "istio-system.svc.cluster.local",
            "--agent-port",
            "0",
        ])
        .env("INSTANCE_IP", "not-an-ip")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INSTANCE_IP") && !err.contains("not supported"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["proxy", "sidecar", "--agent-port", "0"])
        .env(
            "ISTIO_KUBE_APP_PROBERS",
            r#"{"/app-health/a/livez":{"httpGet":"#,
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ISTIO_KUBE_APP_PROBERS") && err.contains("EOF while parsing"),
        "{err}"
    );

    // An agent port that was asked for and is taken stops the proxy, naming it.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = Command::new(BIN)
        .args([
            "--admin-port",
            "0",
            "--status-port",
            "0",
            "--stats-port",
            "0",
        ])
        .args(["--agent-port", &port, "--discovery-address", "127.0.0.1:1"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent status") && err.contains(&port), "{err}");

    let out = Command::new(BIN).arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "proxy",
        "request",
        "--agent-port",
        "--config",
        "--log-level",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
    assert!(!help.contains("binaryPath"), "{help}");
    let out = Command::new(BIN)
        .args(["request", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--debug-port") && help.contains("METHOD"),
        "{help}"
    );
}

/// `mast-proxy wait` (the hold-application postStart hook): returns once the URL answers 200,
/// fails after its timeout while it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_holds_until_ready_and_gives_up_after_its_timeout() {
    let status = Arc::new(AtomicU16::new(503));
    let port = app(Arc::clone(&status)).await;
    let url = format!("http://localhost:{port}/healthz");
    let waiter = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let out = Command::new(BIN)
                .args(["wait", "--url", &url, "--periodMillis", "50"])
                .output()
                .expect("run wait");
            (out, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    status.store(200, Ordering::Relaxed);
    let (out, took) = waiter.await.expect("join");
    assert!(out.status.success(), "{out:?}");
    assert!(
        took >= std::time::Duration::from_millis(500),
        "returned before ready: {took:?}"
    );

    status.store(503, Ordering::Relaxed);
    let out = Command::new(BIN)
        .args([
            "wait",
            "--url",
            &url,
            "--timeoutSeconds",
            "1",
            "--periodMillis",
            "100",
        ])
        .output()
        .expect("run wait");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not ready after 1s"));
}
