//! The Prometheus source against a real Prometheus: the fake mesh of e2e.rs (client → user,
//! split 50/50 over v1 and v2, all mTLS, some 503s, raw TCP out of the mesh), scraped every
//! second both by the scraping `Collector` and by a Prometheus this test launches; the graph
//! read from Prometheus' HTTP API must be the collector's: the same nodes and edges (same
//! ids), the split, mTLS, rates and latencies within a tolerance — and its p95 must be what
//! Prometheus' own `histogram_quantile` says. Then a proxy dies: `up == 0` greys it out.
//!
//! The Prometheus binary comes from the `prometheus` package (`apt-get install -y
//! prometheus`), or `MAST_PROMETHEUS_BIN`. Without it the test prints SKIPPED, unless
//! `MAST_REQUIRE_PROMETHEUS` is set (CI): then it fails. The whole check takes about 70 s:
//! Prometheus' `rate()` over the smallest window (1m) needs a minute of samples to stop
//! under-counting a young series.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::mesh::{Mesh, RPS, client_page, data, edge, one, target, user_page};
use common::{FakeProxy, eventually, get};
use mast_telemetry::prometheus::{PrometheusClient, PrometheusError};
use mast_telemetry::{Collector, CollectorConfig, PrometheusConfig, Telemetry, router, serve};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A Prometheus server this test started; killed (by its PID) when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// `MAST_PROMETHEUS_BIN`, else `prometheus` on the PATH, else /usr/bin/prometheus.
    fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("MAST_PROMETHEUS_BIN") {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        });
        on_path.or_else(|| Some(PathBuf::from("/usr/bin/prometheus")).filter(|p| p.is_file()))
    }

    /// Starts Prometheus scraping `targets` every second, on a free local port, with its
    /// config, data and log in a temporary folder.
    async fn start(bin: &Path, targets: &[SocketAddr]) -> Prometheus {
        let list: Vec<String> = targets.iter().map(|a| format!("'{a}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: mast-fake-proxies\n    metrics_path: /stats/prometheus\n    \
             static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let mut last_log = String::new();
        // A free port may be taken between our probe and Prometheus' bind: retry.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("prometheus.yml"), &config).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let child = Command::new(bin)
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let mut p = Prometheus { child, port, dir };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = p.child.try_wait() {
                    last_log = p.log();
                    eprintln!("prometheus exited ({status}) on port {port}: {last_log}");
                    break;
                }
                if let Ok(r) = get(&format!("{}/-/ready", p.url())).await
                    && r.status == 200
                {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if p.child.try_wait().ok().flatten().is_none() {
                panic!("prometheus not ready in 30 s: {}", p.log());
            }
        }
        panic!("prometheus did not start: {last_log}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query straight to Prometheus' API (not through the code under test).
    async fn query(&self, promql: &str) -> Vec<Value> {
        let q: String = utf8_percent_encode(promql, NON_ALPHANUMERIC).collect();
        let r = get(&format!("{}/api/v1/query?query={q}", self.url()))
            .await
            .unwrap();
        let v = r.json();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Our child, by its PID; then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Prometheus binary, or `None` after printing SKIPPED (a panic under
/// `MAST_REQUIRE_PROMETHEUS`).
fn prometheus_or_skip(test: &str) -> Option<PathBuf> {
    let bin = Prometheus::binary();
    if bin.is_none() {
        let required = std::env::var_os("MAST_REQUIRE_PROMETHEUS").is_some_and(|v| !v.is_empty());
        if required {
            panic!(
                "{test}: no prometheus binary (looked at $MAST_PROMETHEUS_BIN if set, else the PATH and \
                 /usr/bin/prometheus) and MAST_REQUIRE_PROMETHEUS is set: install it with \
                 `apt-get install -y prometheus`"
            );
        }
        eprintln!(
            "SKIPPED {test}: no prometheus binary; install it with `apt-get install -y prometheus` \
             (set MAST_REQUIRE_PROMETHEUS=1 to fail instead of skipping)"
        );
    }
    bin
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An API on :0 over `state`, stopped by `stop`.
async fn serve_api(
    state: Arc<Telemetry>,
    stop: watch::Receiver<bool>,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut stop = stop;
    let task = tokio::spawn(serve(listener, router(state, None), async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    (base, task)
}

fn sorted_ids(g: &Value, kind: &str) -> Vec<String> {
    let mut ids: Vec<String> = data(&g["elements"][kind])
        .iter()
        .map(|d| d["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn within(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= tolerance * want.abs().max(1e-9)
}

/// Both graphs have the same nodes and edges, and the Prometheus one the mesh's split and mTLS.
fn same_topology(scraped: &Value, fetched: &Value) -> Result<(), String> {
    for kind in ["nodes", "edges"] {
        let (a, b) = (sorted_ids(scraped, kind), sorted_ids(fetched, kind));
        if a != b {
            return Err(format!("{kind} differ:\n scraped {a:?}\n prometheus {b:?}"));
        }
    }
    let nodes = data(&fetched["elements"]["nodes"]);
    let edges = data(&fetched["elements"]["edges"]);
    let svc = one(&nodes, "user service", |n| n["service"] == "user")?;
    for version in ["v1", "v2"] {
        let n = one(&nodes, version, |n| {
            n["nodeType"] == "app" && n["version"] == version
        })?;
        let e = edge(&edges, &svc, &n)?;
        if !within(f(&e["percent"]), 50.0, 0.1) {
            return Err(format!("split to {version}: {}", e["percent"]));
        }
        if e["isMTLS"] != "100" || n["mtlsPercent"] != 100.0 {
            return Err(format!(
                "mTLS to {version}: {} {}",
                e["isMTLS"], n["mtlsPercent"]
            ));
        }
    }
    Ok(())
}

/// Every edge's figures in the Prometheus graph are the collector's, within a tolerance.
fn same_figures(scraped: &Value, fetched: &Value) -> Result<(), String> {
    let theirs = data(&fetched["elements"]["edges"]);
    for a in data(&scraped["elements"]["edges"]) {
        let b = one(&theirs, "edge", |e| e["id"] == a["id"])?;
        let id = (&a["source"], &a["target"], &a["traffic"]["protocol"]);
        for (field, tolerance) in [
            ("rps", 0.1),
            ("tcpBytesPerSecond", 0.1),
            ("percent", 0.05),
            ("p50", 0.15),
            ("p95", 0.15),
        ] {
            if !within(f(&b[field]), f(&a[field]), tolerance) {
                return Err(format!(
                    "{id:?} {field}: prometheus {} vs scraped {}",
                    b[field], a[field]
                ));
            }
        }
        if (f(&a["errorRate"]) - f(&b["errorRate"])).abs() > 0.03 {
            return Err(format!(
                "{id:?} errorRate: prometheus {} vs scraped {}",
                b["errorRate"], a["errorRate"]
            ));
        }
        for field in ["isMTLS", "health"] {
            if a[field] != b[field] {
                return Err(format!("{id:?} {field}: {} vs {}", b[field], a[field]));
            }
        }
        let codes = |e: &Value| -> Vec<String> {
            e["traffic"]["responses"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        if codes(&a) != codes(&b) {
            return Err(format!(
                "{id:?} response codes: {:?} vs {:?}",
                codes(&b),
                codes(&a)
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_from_a_real_prometheus_is_the_scraped_graph() {
    let Some(bin) = prometheus_or_skip("graph_from_a_real_prometheus_is_the_scraped_graph") else {
        return;
    };
    let client = FakeProxy::start(client_page).await;
    let v1 = FakeProxy::start(user_page("v1", 50)).await;
    let v2 = FakeProxy::start(user_page("v2", 150)).await;
    let prometheus = Prometheus::start(&bin, &[client.addr, v1.addr, v2.addr]).await;
    let mesh = Arc::new(Mesh {
        targets: Mutex::new(vec![
            target("client-1", "client", "client", None, &client),
            target("user-v1-1", "user-v1", "user", Some("v1"), &v1),
            target("user-v2-1", "user-v2", "user", Some("v2"), &v2),
        ]),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // The scraping collector, every second as Prometheus.
    let collector = Collector::new(
        mesh.clone(),
        CollectorConfig {
            interval: Duration::from_secs(1),
            timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    )
    .unwrap();
    let scraped_state = collector.telemetry();
    let mut rx = stop_rx.clone();
    let collector_task = tokio::spawn(collector.run(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let (scraped_base, scraped_task) = serve_api(scraped_state, stop_rx.clone()).await;

    // The Prometheus source over the same mesh.
    let mut config = PrometheusConfig::new(prometheus.url());
    config.scrape_interval = Duration::from_secs(1);
    let fetched_state = Telemetry::from_prometheus(mesh.clone(), config).unwrap();
    let (prom_base, prom_task) = serve_api(fetched_state, stop_rx.clone()).await;

    // Prometheus scrapes all three fakes.
    eventually(
        "prometheus scrapes the fakes",
        Duration::from_secs(30),
        || async {
            let up = prometheus.query("up == 1").await;
            (up.len() == 3).then_some(()).ok_or(format!("up: {up:?}"))
        },
    )
    .await;
    let first_scrapes = Instant::now();

    // After a few scrapes: the same nodes and edges, the split and mTLS.
    let graph = |base: &str| format!("{base}/api/namespaces/default/graph?duration=1m");
    let early = Instant::now();
    eventually("same topology", Duration::from_secs(30), || async {
        let a = get(&graph(&scraped_base))
            .await
            .map_err(|e| e.to_string())?;
        let b = get(&graph(&prom_base)).await.map_err(|e| e.to_string())?;
        if b.status != 200 {
            return Err(format!("prometheus graph: {} {}", b.status, b.json()));
        }
        same_topology(&a.json(), &b.json())
    })
    .await;
    eprintln!(
        "same nodes, edges, split and mTLS {:.1} s after Prometheus' first scrapes",
        first_scrapes
            .elapsed()
            .as_secs_f64()
            .max(early.elapsed().as_secs_f64())
    );

    // rate() over [60s] counts a series fully once it has a minute of samples.
    let full = Duration::from_secs(63);
    if let Some(rest) = full.checked_sub(first_scrapes.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let (scraped, fetched) = eventually("same figures", Duration::from_secs(20), || async {
        let a = get(&graph(&scraped_base))
            .await
            .map_err(|e| e.to_string())?
            .json();
        let b = get(&graph(&prom_base))
            .await
            .map_err(|e| e.to_string())?
            .json();
        same_topology(&a, &b)?;
        same_figures(&a, &b)?;
        Ok((a, b))
    })
    .await;
    let timed = Instant::now();
    let r = get(&graph(&prom_base)).await.unwrap();
    assert_eq!(r.status, 200);
    eprintln!(
        "graph from Prometheus (9 queries): {:.1} ms",
        timed.elapsed().as_secs_f64() * 1000.0
    );
    let nodes = data(&fetched["elements"]["nodes"]);
    let edges = data(&fetched["elements"]["edges"]);
    let svc = one(&nodes, "svc", |n| n["service"] == "user").unwrap();
    let c = one(&nodes, "client", |n| {
        n["nodeType"] == "app" && n["app"] == "client"
    })
    .unwrap();
    let n1 = one(&nodes, "v1", |n| n["version"] == "v1").unwrap();
    let n2 = one(&nodes, "v2", |n| n["version"] == "v2").unwrap();
    let in_edge = edge(&edges, &c, &svc).unwrap();
    let to2 = edge(&edges, &svc, &n2).unwrap();
    let passthrough = one(&nodes, "passthrough", |n| {
        n["service"] == "PassthroughCluster"
    })
    .unwrap();
    let tcp = edge(&edges, &c, &passthrough).unwrap();
    let scraped_edges = data(&scraped["elements"]["edges"]);
    let scraped_in = one(&scraped_edges, "in", |e| e["id"] == in_edge["id"]).unwrap();
    eprintln!(
        "client → user: prometheus {} rps, scraped {} rps (fakes: {}); p95 {} vs {} ms; \
         v2 errorRate {}; TCP {} vs {} B/s",
        in_edge["rps"],
        scraped_in["rps"],
        2.0 * RPS,
        in_edge["p95"],
        scraped_in["p95"],
        to2["errorRate"],
        tcp["tcpBytesPerSecond"],
        one(&scraped_edges, "tcp", |e| e["id"] == tcp["id"]).unwrap()["tcpBytesPerSecond"],
    );
    assert!(within(f(&in_edge["rps"]), 2.0 * RPS, 0.1), "{in_edge}");
    assert!(within(f(&tcp["tcpBytesPerSecond"]), 1000.0, 0.1), "{tcp}");
    assert_eq!(to2["health"], "failure");
    assert_eq!(svc["hasTrafficShifting"], true);
    assert_eq!(edges.len(), 4);

    // The p95 is what Prometheus' own histogram_quantile gives for the same edge.
    let kiali = prometheus
        .query(
            "histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket\
             {reporter=\"destination\",destination_workload=\"user-v2\"}[60s])) by (le))",
        )
        .await;
    let theirs: f64 = kiali[0]["value"][1].as_str().unwrap().parse().unwrap();
    eprintln!(
        "svc → v2 p95: graph {} ms, histogram_quantile {theirs:.3} ms",
        to2["p95"]
    );
    assert!(
        within(f(&to2["p95"]), theirs, 0.05),
        "{} vs {theirs}",
        to2["p95"]
    );

    // Node and edge detail: the graph's data, series from query_range (1 s steps over 1m).
    let id = n1["id"].as_str().unwrap();
    let timed = Instant::now();
    let d = get(&format!(
        "{prom_base}/api/namespaces/default/nodes/{id}?duration=1m"
    ))
    .await
    .unwrap();
    eprintln!(
        "node detail from Prometheus (9 queries + 2 range queries): {:.1} ms",
        timed.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(d.status, 200);
    let d = d.json();
    assert_eq!(d["data"]["id"], id);
    assert_eq!(d["data"]["version"], "v1");
    let rps = d["series"]["rps"].as_array().unwrap();
    assert_eq!(rps.len(), 60, "{} points", rps.len());
    assert_eq!(d["series"]["p95"].as_array().unwrap().len(), 60);
    let tail: Vec<f64> = rps.iter().skip(10).map(|p| f(&p[1])).collect();
    let avg = tail.iter().sum::<f64>() / tail.len() as f64;
    eprintln!("v1 detail: {} points, average {avg:.2} rps", rps.len());
    assert!(within(avg, RPS, 0.15), "average {avg}");
    let errors: Vec<f64> = d["series"]["errorRate"]
        .as_array()
        .unwrap()
        .iter()
        .skip(10)
        .map(|p| f(&p[1]))
        .collect();
    assert!(errors.iter().all(|e| *e < 0.2), "{errors:?}");
    let edge_id = to2["id"].as_str().unwrap();
    let d = get(&format!(
        "{prom_base}/api/namespaces/default/nodes/{edge_id}?duration=1m"
    ))
    .await
    .unwrap();
    assert_eq!(d.status, 200);
    let d = d.json();
    assert_eq!(d["data"]["target"], n2["id"]);
    let p95: Vec<f64> = d["series"]["p95"]
        .as_array()
        .unwrap()
        .iter()
        .skip(10)
        .map(|p| f(&p[1]))
        .collect();
    assert!(p95.iter().all(|p| *p > 5.0 && *p <= 50.0), "{p95:?}");
    let missing = get(&format!(
        "{prom_base}/api/namespaces/default/nodes/n0000000000000000"
    ))
    .await
    .unwrap();
    assert_eq!(missing.status, 404);

    let ns = get(&format!("{prom_base}/api/namespaces"))
        .await
        .unwrap()
        .json();
    assert_eq!(ns, serde_json::json!([{"name": "default"}]));
    let h = get(&format!("{prom_base}/api/health"))
        .await
        .unwrap()
        .json();
    assert_eq!(
        (h["targets"].as_u64(), h["reachable"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(f(&h["lastScrape"]) > unix_now() - 30.0);

    // Prometheus' own errors come back as 502s with its message.
    let bad = PrometheusClient::new(&prometheus.url(), Duration::from_secs(10), 1 << 20)
        .unwrap()
        .query("sum(rate(istio_requests_total[1m]", unix_now())
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, PrometheusError::Api { error_type, .. } if error_type == "bad_data"),
        "{bad}"
    );
    let wrong = Telemetry::from_prometheus(
        mesh.clone(),
        PrometheusConfig::new(format!("{}/not-prometheus", prometheus.url())),
    )
    .unwrap();
    let (wrong_base, wrong_task) = serve_api(wrong, stop_rx.clone()).await;
    let r = get(&graph(&wrong_base)).await.unwrap();
    assert_eq!(r.status, 502);
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("not-prometheus") && msg.contains("404"),
        "{msg}"
    );

    // user-v2's proxy dies: Prometheus' up == 0 greys its node out.
    v2.kill();
    let v2_id = n2["id"].clone();
    eventually("v2 unreachable", Duration::from_secs(20), || async {
        let g = get(&graph(&prom_base))
            .await
            .map_err(|e| e.to_string())?
            .json();
        let nodes = data(&g["elements"]["nodes"]);
        let n = one(&nodes, "v2", |n| n["id"] == v2_id)?;
        let v1 = one(&nodes, "v1", |n| n["version"] == "v1")?;
        match (&n["isUnreachable"], &v1["isUnreachable"]) {
            (Value::Bool(true), Value::Bool(false)) => Ok(()),
            other => Err(format!("isUnreachable {other:?}")),
        }
    })
    .await;
    let h = get(&format!("{prom_base}/api/health"))
        .await
        .unwrap()
        .json();
    assert_eq!(
        (h["targets"].as_u64(), h["reachable"].as_u64()),
        (Some(3), Some(2))
    );

    let _ = stop_tx.send(true);
    collector_task.await.unwrap();
    for task in [scraped_task, prom_task, wrong_task] {
        task.await.unwrap().unwrap();
    }
    drop(prometheus);
}

/// Without a Prometheus: an address nobody listens on, and one that never answers, are 502s
/// naming the problem, within the timeout.
#[tokio::test]
async fn unreachable_and_silent_prometheus_are_502s() {
    struct NoTargets;
    impl mast_telemetry::MeshView for NoTargets {
        fn targets(&self) -> Vec<mast_telemetry::Target> {
            Vec::new()
        }
        fn service_features(&self, _: &str, _: &str) -> mast_telemetry::ServiceFeatures {
            mast_telemetry::ServiceFeatures::default()
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let state = Telemetry::from_prometheus(
        Arc::new(NoTargets),
        PrometheusConfig::new(format!("http://{closed_addr}")),
    )
    .unwrap();
    let (base, t1) = serve_api(state, stop_rx.clone()).await;
    for path in [
        "/api/namespaces/default/graph",
        "/api/namespaces",
        "/api/health",
        "/api/namespaces/default/nodes/n1",
    ] {
        let r = get(&format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status, 502, "{path}");
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains("cannot reach Prometheus"), "{path}: {msg}");
        assert!(msg.contains(&closed_addr.to_string()), "{msg}");
    }

    // Accepts, reads, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let mut config = PrometheusConfig::new(format!("http://{silent_addr}"));
    config.timeout = Duration::from_millis(500);
    let state = Telemetry::from_prometheus(Arc::new(NoTargets), config).unwrap();
    let (base, t2) = serve_api(state, stop_rx.clone()).await;
    let started = Instant::now();
    let r = get(&format!("{base}/api/namespaces/default/graph"))
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("no answer within 500ms"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let _ = stop_tx.send(true);
    t1.await.unwrap().unwrap();
    t2.await.unwrap().unwrap();
    hold.abort();
}
