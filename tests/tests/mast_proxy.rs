//! mast-proxy beyond the shared proofs: retries hide a flaky backend, outlier detection
//! ejects a dead one, gRPC (HTTP/2 with trailers) passes through with a real tonic client and
//! server, and Istio's request metrics count exactly what was sent — on both sides of a call,
//! and for gRPC the messages of each stream.
//!
//! Two "pods" on loopback, each with its own mast-proxy in NONE interception mode: the client
//! at 127.0.0.1 (outbound listener on 127.0.0.1:<service port>), and `user-v1` at 127.0.0.11,
//! whose sidecar binds the inbound port on its instance IP (a Sidecar `ingress`) and forwards
//! to the app on 127.0.0.1. The server's Sidecar resource gives it no egress, so its outbound
//! listeners do not collide with the client's on the shared loopback.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mast_e2e::bootstrap::StaticBootstrap;
use mast_e2e::prometheus::sum_samples;
use mast_e2e::{
    Backend, HttpClient, Mastd, PodSpec, Sidecar, SidecarKind, eventually, free_port, send_requests,
};

const CLIENT: PodSpec<'static> = PodSpec {
    name: "client-1",
    namespace: "default",
    labels: &[("app", "client")],
    service_account: "client",
};

const SERVER: PodSpec<'static> = PodSpec {
    name: "user-v1-1",
    namespace: "default",
    labels: &[("app", "user"), ("version", "v1")],
    service_account: "user",
};
const SERVER_IP: &str = "127.0.0.11";

struct Pods {
    _dir: tempfile::TempDir,
    _mastd: Mastd,
    client: Sidecar,
    server: Sidecar,
    url: String,
    backend: Backend,
}

/// `user` (one workload, behind its own sidecar) and a client pod.
async fn two_pods(fail_every: u64) -> Result<Pods> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let backend = Backend::start_flaky("v1", fail_every).await?;
    let port = free_port();
    let inbound = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: http, port: {port}, targetPort: {inbound}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v1-1, namespace: default}}
spec:
  address: {SERVER_IP}
  labels: {{app: user, version: v1}}
  serviceAccount: user
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: user, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: user}}}}
  ingress:
  - port: {{number: {inbound}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{backend}
  egress:
  - hosts: ["nowhere/*"]
"#,
            backend = backend.port
        ),
    )?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let server = Sidecar::start_kind(
        SidecarKind::Mast,
        &SERVER,
        SERVER_IP,
        mastd.xds_addr,
        dir.path(),
        true,
    )
    .await?;
    let client = Sidecar::start_kind(
        SidecarKind::Mast,
        &CLIENT,
        "127.0.0.1",
        mastd.xds_addr,
        dir.path(),
        true,
    )
    .await?;
    let url = format!("http://127.0.0.1:{port}/");
    let http = HttpClient::new();
    eventually(
        "user answers through both sidecars",
        Duration::from_secs(20),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let (status, body) = http.get(&url, Some("user"), &[]).await?;
                ensure!(status == 200 || status == 503, "{status}: {body}");
                ensure!(body == "v1" || fail_every > 0, "{status}: {body}");
                Ok(())
            }
        },
    )
    .await?;
    Ok(Pods {
        _dir: dir,
        _mastd: mastd,
        client,
        server,
        url,
        backend,
    })
}

/// istio_requests_total on each side equals the requests sent, with the workloads named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_count_exactly_on_both_sides() -> Result<()> {
    let pods = two_pods(0).await?;
    // Counters from the readiness probe above are part of the baseline.
    let labels_src = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("source_app", "client"),
        ("destination_workload", "user-v1"),
        ("destination_app", "user"),
        ("destination_version", "v1"),
        ("destination_service", "user.default.svc.cluster.local"),
        ("destination_service_name", "user"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_code", "200"),
    ];
    let labels_dst = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("source_workload_namespace", "default"),
        ("destination_workload", "user-v1"),
        ("destination_app", "user"),
        ("response_code", "200"),
    ];
    let before_src = sum_samples(
        &pods.client.prometheus().await?,
        "istio_requests_total",
        &labels_src,
    );
    let before_dst = sum_samples(
        &pods.server.prometheus().await?,
        "istio_requests_total",
        &labels_dst,
    );
    let n = 500;
    let t = send_requests(&pods.url, "user", &[], n, 4).await;
    assert_eq!(t.failures(), 0, "{:?}", t.errors);
    let client = pods.client.prometheus().await?;
    let server = pods.server.prometheus().await?;
    let src = sum_samples(&client, "istio_requests_total", &labels_src) - before_src;
    let dst = sum_samples(&server, "istio_requests_total", &labels_dst) - before_dst;
    eprintln!("sent {n}; reporter=source counted {src}, reporter=destination counted {dst}");
    assert_eq!(src, n as f64, "client side:\n{client}");
    assert_eq!(dst, n as f64, "server side:\n{server}");
    // The duration histogram saw every request too.
    let hist = sum_samples(
        &client,
        "istio_request_duration_milliseconds_count",
        &labels_src,
    );
    assert!(hist >= n as f64, "duration count {hist}");
    Ok(())
}

/// A backend failing every other request is invisible to the client: Istio's default
/// retry policy (503 is retriable) retries on the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_flaky_backend() -> Result<()> {
    let pods = two_pods(2).await?;
    let before = pods
        .backend
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    // One request at a time, so "every other" is exact: each first attempt that fails is
    // followed by one that succeeds.
    let n = 300;
    let t = send_requests(&pods.url, "user", &[], n, 1).await;
    let served = pods
        .backend
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    eprintln!(
        "client saw {:?}; the backend answered {served} times",
        t.by_status
    );
    assert_eq!(t.failures(), 0, "{:?}", t.errors);
    assert_eq!(t.by_status.get(&200).copied(), Some(n), "{t:?}");
    assert!(
        served >= n + n / 3,
        "too few retries reached the backend: {served}"
    );
    let stats = pods.client.admin("/stats").await?;
    assert!(
        stats
            .lines()
            .any(|l| l.contains("upstream_rq_retry: ") && !l.ends_with(": 0")),
        "no retries counted:\n{stats}"
    );
    Ok(())
}

/// A dead endpoint is ejected by outlier detection, and retries to another host hide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_dead_backend() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let alive = Backend::start("alive").await?;
    let dead_port = free_port();
    let port = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: http, port: {port}, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-alive, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user}}
  ports: {{http: {alive}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-dead, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user}}
  ports: {{http: {dead_port}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: user, namespace: default}}
spec:
  host: user
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
"#,
            alive = alive.port
        ),
    )?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let client = Sidecar::start_kind(
        SidecarKind::Mast,
        &CLIENT,
        "127.0.0.1",
        mastd.xds_addr,
        dir.path(),
        true,
    )
    .await?;
    let url = format!("http://127.0.0.1:{port}/");
    let dead = format!("127.0.0.1:{dead_port}");
    let first = send_requests(&url, "user", &[], 100, 2).await;
    eprintln!("first 100 requests: {:?}", first.by_status);
    assert_eq!(first.by_status.get(&200).copied(), Some(100), "{first:?}");
    let clusters = eventually(
        "the dead host is ejected",
        Duration::from_secs(5),
        || async {
            let clusters = client.admin("/clusters").await?;
            ensure!(
                clusters.contains(&format!("{dead}::health_flags::/failed_outlier_check")),
                "not ejected yet:\n{clusters}"
            );
            Ok(clusters)
        },
    )
    .await?;
    let rq_total = |text: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.contains(&format!(
                    "||user.default.svc.cluster.local::{dead}::rq_total::"
                ))
            })
            .and_then(|l| l.rsplit("::").next()?.parse().ok())
            .unwrap_or(0)
    };
    let tried_before = rq_total(&clusters);
    let second = send_requests(&url, "user", &[], 100, 2).await;
    assert_eq!(second.by_status.get(&200).copied(), Some(100), "{second:?}");
    let tried_after = rq_total(&client.admin("/clusters").await?);
    eprintln!(
        "dead host attempts: {tried_before} before ejection, {tried_after} after 100 more requests"
    );
    assert_eq!(
        tried_before, tried_after,
        "an ejected host still got traffic"
    );
    Ok(())
}

/// gRPC through the sidecar: a real tonic client and server (HTTP/2, trailers, streaming).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_through_with_trailers() -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("user.Users", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_port = listener.local_addr()?.port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let port = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: grpc, port: {port}, targetPort: grpc}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user}}
  ports: {{grpc: {grpc_port}}}
"#
        ),
    )?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let sidecar = Sidecar::start_kind(
        SidecarKind::Mast,
        &CLIENT,
        "127.0.0.1",
        mastd.xds_addr,
        dir.path(),
        false,
    )
    .await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .origin(format!("http://user:{port}").parse()?)
        .connect()
        .await
        .context("connect to the sidecar")?;
    let mut client = HealthClient::new(channel);
    let ok = client
        .check(HealthCheckRequest {
            service: "user.Users".into(),
        })
        .await?
        .into_inner();
    assert_eq!(ok.status, ServingStatus::Serving as i32);
    // An error status travels in trailers (grpc-status 5, NOT_FOUND).
    let err = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("unknown service must fail");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // Server streaming over the same HTTP/2 connection.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "user.Users".into(),
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .context("no streamed message")??
        .context("stream ended")?;
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("user.Users", tonic_health::ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .context("no second streamed message")??
        .context("stream ended")?;
    assert_eq!(second.status, ServingStatus::NotServing as i32);
    drop(stream);
    // 100 unary calls, then the metrics: protocol grpc, grpc status 0 and 5.
    for _ in 0..100 {
        client
            .check(HealthCheckRequest {
                service: "user.Users".into(),
            })
            .await?;
    }
    let metrics = eventually("grpc metrics recorded", Duration::from_secs(3), || async {
        let m = sidecar.prometheus().await?;
        let ok = sum_samples(
            &m,
            "istio_requests_total",
            &[("request_protocol", "grpc"), ("grpc_response_status", "0")],
        );
        ensure!(ok >= 101.0, "grpc OK count {ok}");
        Ok(m)
    })
    .await?;
    let not_found = sum_samples(
        &metrics,
        "istio_requests_total",
        &[("request_protocol", "grpc"), ("grpc_response_status", "5")],
    );
    assert_eq!(not_found, 1.0, "{metrics}");
    // Istio's message counters (Envoy's grpc_stats counting): one request message per call;
    // a response message per OK check, none for the error (trailers only), two for the
    // watch stream (cancelled above, so counted when the sidecar saw it end).
    let want = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_service", "user.default.svc.cluster.local"),
    ];
    let messages = eventually("grpc messages counted", Duration::from_secs(5), || async {
        let m = sidecar.prometheus().await?;
        let req = sum_samples(&m, "istio_request_messages_total", &want);
        let resp = sum_samples(&m, "istio_response_messages_total", &want);
        ensure!((req, resp) == (103.0, 103.0), "messages {req} / {resp}");
        Ok(m)
    })
    .await?;
    // Labelled as Istio labels them: the workloads, no status.
    assert!(
        !messages
            .lines()
            .any(|l| l.starts_with("istio_request_messages_total{") && l.contains("response_code")),
        "{messages}"
    );
    Ok(())
}

/// The static bootstrap of these tests: [`StaticBootstrap`] with a 10 s route timeout.
fn static_bootstrap(listen: u16, admin: u16, backend: u16) -> StaticBootstrap<'static> {
    StaticBootstrap::new(listen, admin, backend).route_timeout(Duration::from_secs(10))
}

/// An HTTP backend that answers "slow" after `delay`.
async fn slow_backend(delay: Duration) -> Result<u16> {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"slow")),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(port)
}

fn spawn_static(dir: &std::path::Path, bootstrap: &std::path::Path) -> Result<mast_e2e::Proc> {
    mast_e2e::Proc::spawn(
        "mast-proxy",
        std::process::Command::new(mast_e2e::bin("mast-proxy"))
            .arg("--config")
            .arg(bootstrap)
            .args(["--stats-port", &free_port().to_string()])
            .args([
                "--status-port",
                &free_port().to_string(),
                "--agent-port",
                "0",
            ])
            .args(["--drain", "3s", "--concurrency", "1"]),
        dir.join("static.log"),
    )
}

async fn wait_ready(admin: u16) -> Result<()> {
    eventually("mast-proxy ready", Duration::from_secs(10), || async move {
        let (status, body) = HttpClient::new()
            .get(&format!("http://127.0.0.1:{admin}/ready"), None, &[])
            .await?;
        ensure!(status == 200, "{status} {body}");
        Ok(())
    })
    .await
}

/// Raw bytes in, the first response line out.
async fn raw_exchange(port: u16, bytes: &[u8]) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(bytes).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .context("no answer")??;
    Ok(String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

/// A kept-alive client connection stays open until the connection manager's idle timeout
/// (Envoy's `common_http_protocol_options.idle_timeout`), counted from the end of the last
/// request — never in the middle of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_close_at_the_idle_timeout_only() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let backend = slow_backend(Duration::from_millis(1500)).await?;
    let (listen, admin) = (free_port(), free_port());
    let boot = static_bootstrap(listen, admin, backend)
        .hcm("common_http_protocol_options: {idle_timeout: 1s}")
        .write(dir.path())?;
    let mut proxy = spawn_static(dir.path(), &boot)?;
    wait_ready(admin).await?;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", listen)).await?;
    let request = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    // Two requests, each slower than the idle timeout and 0.5 s apart: neither is cut.
    for _ in 0..2 {
        conn.write_all(request).await?;
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .context("no answer")??;
        let text = String::from_utf8_lossy(&buf[..n]);
        ensure!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then idle: closed about 1 s after the last answer.
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .context("the idle connection was not closed")??;
    ensure!(
        n == 0,
        "expected a close, got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let waited = started.elapsed();
    ensure!(
        waited < Duration::from_millis(1200),
        "closed {waited:?} after the idle wait began (0.5 s had already passed)"
    );
    proxy.check_running()?;
    Ok(())
}

/// Malformed and hostile traffic gets the right status or a clean close, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_traffic_gets_clean_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backend = Backend::start("ok").await?;
    let (listen, admin) = (free_port(), free_port());
    let boot = static_bootstrap(listen, admin, backend.port).write(dir.path())?;
    let mut proxy = spawn_static(dir.path(), &boot)?;
    wait_ready(admin).await?;
    let bad_line = raw_exchange(listen, b"GARBAGE\r\n\r\n").await?;
    assert!(bad_line.starts_with("HTTP/1.1 400"), "{bad_line:?}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let too_big = raw_exchange(listen, huge.as_bytes()).await?;
    assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big:?}");
    // HTTP/1.0 is refused unless the connection manager accepts it (Envoy's default).
    let http_10 = raw_exchange(listen, b"GET / HTTP/1.0\r\n\r\n").await?;
    assert!(
        http_10.starts_with("HTTP/1.1 426") || http_10.starts_with("HTTP/1.0 426"),
        "{http_10:?}"
    );
    // A client that half-closes after its request still gets its answer.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", listen)).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        s.shutdown().await?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "{out:?}"
        );
    }
    // Idle connections that never send anything, and ones that hang up mid-request.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", listen)).await?);
    }
    for _ in 0..50 {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", listen)).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Le")
            .await?;
    }
    drop(idle);
    let t = send_requests(&format!("http://127.0.0.1:{listen}/"), "x", &[], 200, 4).await;
    assert_eq!(t.failures(), 0, "{:?}", t.errors);
    proxy.check_running()?;
    assert!(
        !proxy.log_text().contains("panicked"),
        "{}",
        proxy.log_text()
    );
    Ok(())
}

/// A bootstrap with an INBOUND and an OUTBOUND listener (`traffic_direction`, as istiod
/// writes them), both to the backend on `backend`.
fn two_way_bootstrap(
    dir: &std::path::Path,
    inbound: u16,
    outbound: u16,
    admin: u16,
    backend: u16,
) -> Result<std::path::PathBuf> {
    let one = static_bootstrap(inbound, admin, backend).yaml();
    let start = one.find("  - name: web\n").context("no listener")?;
    let end = one.find("  clusters:\n").context("no clusters")?;
    let listener = |name: &str, port: u16, direction: &str| {
        one[start..end]
            .replacen(
                "  - name: web\n",
                &format!("  - name: {name}\n    traffic_direction: {direction}\n"),
                1,
            )
            .replace(
                &format!("port_value: {inbound}"),
                &format!("port_value: {port}"),
            )
    };
    let path = dir.join("two-way.yaml");
    std::fs::write(
        &path,
        format!(
            "{}{}{}{}",
            &one[..start],
            listener("inbound", inbound, "INBOUND"),
            listener("outbound", outbound, "OUTBOUND"),
            &one[end..]
        ),
    )?;
    Ok(path)
}

/// An HTTP/1 backend: `/slow` answers "slow" after `delay`, anything else "ok" at once.
async fn drain_backend(delay: Duration) -> Result<u16> {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body: &'static [u8] = if req.uri().path() == "/slow" {
                            tokio::time::sleep(delay).await;
                            b"slow"
                        } else {
                            b"ok"
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(port)
}

/// One HTTP/1.1 request on a kept-alive connection: the response head and body as text.
async fn h1_request(conn: &mut tokio::net::TcpStream, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Every answer here has a content-length and a body of 2 or 4 bytes.
    while !(got.ends_with(b"ok") || got.ends_with(b"slow")) {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .context("no answer")??;
        ensure!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).to_ascii_lowercase())
}

/// Whether the proxy closes `conn` within `within` (reads return 0).
async fn closes_within(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, conn.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// An HTTP/2 (prior knowledge) connection to `port`; its driver runs in a task whose result
/// says how the connection ended.
async fn h2_connect(
    port: u16,
) -> Result<(
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await?;
    Ok((send, tokio::spawn(conn)))
}

async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    port: u16,
    path: &str,
) -> Result<(u16, String)> {
    use http_body_util::BodyExt;
    let req =
        hyper::Request::get(format!("http://x:{port}{path}")).body(http_body_util::Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .context("no answer")??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// SIGTERM drains as Istio's sidecar does (Envoy's `drain_listeners?inboundonly&graceful`,
/// `--drain-strategy immediate`): the inbound listener keeps accepting, so a caller that
/// connects during the drain is answered — its HTTP/1 response says `connection: close` —
/// and kept-alive callers are moved off (an idle HTTP/1 connection is closed, HTTP/2 gets
/// a GOAWAY once its stream is done); requests in flight finish; the outbound listener
/// works as before (the app may call out while it shuts down); the process exits when the
/// drain period (3 s here) is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backend = drain_backend(Duration::from_millis(1500)).await?;
    let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
    let boot = two_way_bootstrap(dir.path(), inbound, outbound, admin, backend)?;
    let mut proxy = spawn_static(dir.path(), &boot)?;
    wait_ready(admin).await?;
    let connect = |port: u16| tokio::net::TcpStream::connect(("127.0.0.1", port));

    // Kept-alive connections, each used once before the drain.
    let mut idle_in = connect(inbound).await?;
    let mut kept_out = connect(outbound).await?;
    for conn in [&mut idle_in, &mut kept_out] {
        let answer = h1_request(conn, "/").await?;
        ensure!(
            answer.starts_with("http/1.1 200") && !answer.contains("connection: close"),
            "{answer:?}"
        );
    }
    let (mut h2, h2_conn) = h2_connect(inbound).await?;
    ensure!(h2_get(&mut h2, inbound, "/").await? == (200, "ok".into()));
    // In flight across the SIGTERM: one HTTP/1 request, one HTTP/2 stream.
    let mut busy_in = connect(inbound).await?;
    let h1_in_flight = tokio::spawn(async move { h1_request(&mut busy_in, "/slow").await });
    let mut h2_stream = h2.clone();
    let h2_in_flight = tokio::spawn(async move { h2_get(&mut h2_stream, inbound, "/slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.signal(15)?;
    let term = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = HttpClient::new()
        .get(&format!("http://127.0.0.1:{admin}/ready"), None, &[])
        .await?;
    ensure!(
        status == 503 && body.contains("DRAINING"),
        "{status} {body}"
    );

    // A new inbound connection is answered, told to close, and closed.
    let mut fresh = connect(inbound).await?;
    let answer = h1_request(&mut fresh, "/").await?;
    ensure!(
        answer.starts_with("http/1.1 200") && answer.contains("connection: close"),
        "{answer:?}"
    );
    ensure!(
        closes_within(&mut fresh, Duration::from_secs(1)).await,
        "not closed"
    );
    // The idle kept-alive inbound connection was closed when the drain began.
    ensure!(
        closes_within(&mut idle_in, Duration::from_secs(1)).await,
        "idle one kept"
    );
    // A new HTTP/2 connection is answered too, then sent away.
    let (mut h2_fresh, h2_fresh_conn) = h2_connect(inbound).await?;
    ensure!(h2_get(&mut h2_fresh, inbound, "/").await? == (200, "ok".into()));
    let ended = tokio::time::timeout(Duration::from_secs(1), h2_fresh_conn).await;
    ensure!(
        matches!(ended, Ok(Ok(Ok(())))),
        "new HTTP/2 connection not closed gracefully: {ended:?}"
    );
    // Outbound: the kept-alive connection and new ones work as before the drain.
    for _ in 0..2 {
        let answer = h1_request(&mut kept_out, "/").await?;
        ensure!(
            answer.starts_with("http/1.1 200") && !answer.contains("connection: close"),
            "outbound during the drain: {answer:?}"
        );
    }
    let t = send_requests(&format!("http://127.0.0.1:{outbound}/"), "x", &[], 20, 2).await;
    ensure!(
        t.failures() == 0,
        "outbound during the drain: {:?}",
        t.errors
    );

    // What was in flight finishes; HTTP/1 is told to close, HTTP/2 ends with its GOAWAY.
    let answer = h1_in_flight.await??;
    ensure!(
        answer.starts_with("http/1.1 200")
            && answer.contains("connection: close")
            && answer.ends_with("slow"),
        "{answer:?}"
    );
    ensure!(h2_in_flight.await?? == (200, "slow".into()));
    let ended = tokio::time::timeout(Duration::from_secs(1), h2_conn).await;
    ensure!(
        matches!(ended, Ok(Ok(Ok(())))),
        "HTTP/2 connection not closed gracefully after its stream: {ended:?}"
    );
    ensure!(
        term.elapsed() < Duration::from_millis(2500),
        "the checks ran past the drain period ({:?}); the machine is too slow for them",
        term.elapsed()
    );

    // The drain period, then exit.
    let code = proxy.wait_exit(Duration::from_secs(8))?;
    let lasted = term.elapsed();
    assert_eq!(code, Some(0), "{}", proxy.log_text());
    ensure!(
        lasted >= Duration::from_millis(2900),
        "exited {lasted:?} after SIGTERM, before the 3 s drain period"
    );
    Ok(())
}

/// `/quitquitquit` drains and exits too (Jobs need it); bad environment exits 64 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_and_bad_environment() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backend = Backend::start("ok").await?;
    let (listen, admin) = (free_port(), free_port());
    let boot = static_bootstrap(listen, admin, backend.port).write(dir.path())?;
    let mut proxy = spawn_static(dir.path(), &boot)?;
    wait_ready(admin).await?;
    let answer = raw_exchange(
        admin,
        b"POST /quitquitquit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(proxy.wait_exit(Duration::from_secs(6))?, Some(0));

    let out = std::process::Command::new(mast_e2e::bin("mast-proxy"))
        .env("INSTANCE_IP", "10.0.0")
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INSTANCE_IP") && err.contains("10.0.0"),
        "{err}"
    );

    // A config mast-proxy cannot honour is refused naming the resource and field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&boot)?
            .replace("envoy.filters.http.router", "envoy.filters.http.lua"),
    )?;
    let out = std::process::Command::new(mast_e2e::bin("mast-proxy"))
        .arg("--config")
        .arg(&bad)
        .args([
            "--admin-port",
            &free_port().to_string(),
            "--stats-port",
            "0",
            "--status-port",
            "0",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Listener \"web\"") && err.contains("http_filters[0]") && err.contains("lua"),
        "{err}"
    );
    Ok(())
}

/// A VirtualService sending all of `user` to `subset`.
fn user_route(subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: user, namespace: default}}
spec:
  hosts: [user]
  http:
  - route:
    - destination: {{host: user, subset: {subset}}}
"#
    )
}

/// `user` on `port`: two WorkloadEntries (`v1`, `v2`) and a DestinationRule with a subset
/// for each, written to `config/mesh.yaml`.
fn user_mesh(config: &std::path::Path, port: u16, v1: &Backend, v2: &Backend) -> Result<()> {
    std::fs::write(
        config.join("mesh.yaml"),
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: http, port: {port}, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user, version: v1}}
  ports: {{http: {v1}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v2, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user, version: v2}}
  ports: {{http: {v2}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: user, namespace: default}}
spec:
  host: user
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#,
            v1 = v1.port,
            v2 = v2.port
        ),
    )?;
    Ok(())
}

/// The xDS stream outlives the start of the drain, as Envoy's does under pilot-agent: a
/// sidecar told to stop (SIGTERM, an 8 s drain) still follows a route change for the
/// outbound calls its app makes while it shuts down, and exits when the drain is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_apply_during_the_drain() -> Result<()> {
    const DRAIN: Duration = Duration::from_secs(8);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let port = free_port();
    user_mesh(&config, port, &v1, &v2)?;
    std::fs::write(config.join("route.yaml"), user_route("v1"))?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let admin = free_port();
    let mut proxy = mast_e2e::Proc::spawn(
        "mast-proxy",
        std::process::Command::new(mast_e2e::bin("mast-proxy"))
            .env("POD_NAME", CLIENT.name)
            .env("POD_NAMESPACE", CLIENT.namespace)
            .env("INSTANCE_IP", "127.0.0.1")
            .env("SERVICE_ACCOUNT", CLIENT.service_account)
            .env("ISTIO_META_INTERCEPTION_MODE", "NONE")
            .env(
                "PROXY_CONFIG",
                format!(r#"{{"discoveryAddress":"{}"}}"#, mastd.xds_addr),
            )
            .env("RUST_LOG", "info")
            .args(["--labels", "app=client"])
            .args(["--admin-port", &admin.to_string()])
            .args(["--stats-port", &free_port().to_string()])
            .args(["--status-port", &free_port().to_string()])
            .args(["--agent-port", "0", "--concurrency", "1"])
            .args(["--drain", &format!("{}s", DRAIN.as_secs())]),
        dir.path().join("proxy.log"),
    )?;
    let url = format!("http://127.0.0.1:{port}/");
    let all_go_to = |version: &'static str| {
        let url = url.clone();
        async move {
            let t = send_requests(&url, "user", &[], 20, 1).await;
            ensure!(t.by_body.get(version).copied() == Some(20), "{t:?}");
            Ok(())
        }
    };
    eventually(
        "the sidecar routes user to v1",
        Duration::from_secs(20),
        || all_go_to("v1"),
    )
    .await?;

    proxy.signal(15)?;
    let term = std::time::Instant::now();
    eventually(
        "the sidecar drains",
        Duration::from_secs(3),
        || async move {
            let (status, body) = HttpClient::new()
                .get(&format!("http://127.0.0.1:{admin}/ready"), None, &[])
                .await?;
            ensure!(
                status == 503 && body.contains("DRAINING"),
                "{status} {body}"
            );
            Ok(())
        },
    )
    .await?;
    std::fs::write(config.join("route.yaml"), user_route("v2"))?;
    eventually(
        "the draining sidecar routes user to v2",
        Duration::from_secs(5),
        || all_go_to("v2"),
    )
    .await?;
    let moved = term.elapsed();
    eprintln!(
        "route change applied {} ms into the drain",
        moved.as_millis()
    );
    ensure!(moved < DRAIN, "applied only after the drain: {moved:?}");
    let status = proxy.wait_exit(DRAIN + Duration::from_secs(5))?;
    ensure!(status == Some(0), "exit status {status:?}");
    ensure!(term.elapsed() >= DRAIN, "exited after {:?}", term.elapsed());
    Ok(())
}

/// pilot goes away: the sidecar keeps serving its last config, reconnects (capped backoff)
/// when pilot is back on its address, and takes the config that changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_without_pilot_and_reconnects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let port = free_port();
    let route = user_route;
    user_mesh(&config, port, &v1, &v2)?;
    std::fs::write(config.join("route.yaml"), route("v1"))?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let (xds, http) = (mastd.xds_addr, mastd.http_addr);
    let sidecar = Sidecar::start_kind(
        SidecarKind::Mast,
        &CLIENT,
        "127.0.0.1",
        xds,
        dir.path(),
        true,
    )
    .await?;
    let url = format!("http://127.0.0.1:{port}/");
    let t = send_requests(&url, "user", &[], 100, 2).await;
    assert_eq!(t.by_body.get("v1").copied(), Some(100), "{t:?}");

    drop(mastd);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = send_requests(&url, "user", &[], 300, 2).await;
    eprintln!("pilot down: {:?}", t.by_body);
    assert_eq!(t.by_body.get("v1").copied(), Some(300), "{t:?}");
    let info = sidecar.admin("/server_info").await?;
    assert!(info.contains("\"connected\": false"), "{info}");

    std::fs::write(config.join("route.yaml"), route("v2"))?;
    let _mastd = Mastd::start_on(&config, dir.path(), xds, http).await?;
    eventually(
        "the sidecar reconnects and routes to v2",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                let t = send_requests(&url, "user", &[], 20, 1).await;
                ensure!(t.by_body.get("v2").copied() == Some(20), "{t:?}");
                Ok(())
            }
        },
    )
    .await?;
    let info = sidecar.admin("/server_info").await?;
    assert!(info.contains("\"connected\": true"), "{info}");
    Ok(())
}

/// WebSocket: the upgrade goes through, then bytes flow both ways on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A minimal upgrade-capable backend: answers 101, then echoes.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend_port = backend.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !text.contains("upgrade: websocket") {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dir = tempfile::tempdir()?;
    let (listen, admin) = (free_port(), free_port());
    let boot = static_bootstrap(listen, admin, backend_port)
        .hcm("upgrade_configs: [{upgrade_type: websocket}]")
        .write(dir.path())?;
    let _proxy = spawn_static(dir.path(), &boot)?;
    wait_ready(admin).await?;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", listen)).await?;
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await??;
        ensure!(
            n > 0,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"hello"[..], b"through the sidecar"] {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await??;
        assert_eq!(got, msg);
    }
    Ok(())
}

/// DestinationRule `maxRequestsPerConnection` (Envoy's `max_requests_per_connection`): the
/// sidecar retires an upstream connection after that many requests. 1 → one connection per
/// request; unset → a handful of pooled connections for the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_recycles_upstream_connections() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let backend = Backend::start("v1").await?;
    let port = free_port();
    let yaml = |per_conn: &str| {
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: http, port: {port}, targetPort: {backend}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: user, namespace: default}}
spec:
  host: user
  trafficPolicy:
    connectionPool:
      http: {{{per_conn}}}
"#,
            backend = backend.port
        )
    };
    std::fs::write(
        config.join("mesh.yaml"),
        yaml("maxRequestsPerConnection: 5"),
    )?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let _client = Sidecar::start_kind(
        SidecarKind::Mast,
        &CLIENT,
        "127.0.0.1",
        mastd.xds_addr,
        dir.path(),
        true,
    )
    .await?;
    let url = format!("http://127.0.0.1:{port}/");
    eventually("the route is up", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let (s, _) = HttpClient::new().get(&url, Some("user"), &[]).await?;
            ensure!(s == 200);
            Ok(())
        }
    })
    .await?;
    let c0 = backend
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    let tally = send_requests(&url, "user", &[], 200, 1).await;
    ensure!(tally.failures() == 0, "{tally:?}");
    let used = backend
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        - c0;
    // 200 requests, 5 per connection: 40 connections (one more if a retired connection's
    // successor was already being dialled).
    ensure!(
        (40..=42).contains(&used),
        "200 requests used {used} connections"
    );
    Ok(())
}
