//! The topology view against a real local mesh: mastd (pilot, citadel, collector, web view),
//! mast-proxy sidecars with mTLS for `myapp`, `user` v1 and v2 (50/50 by a VirtualService) and
//! `todo`, and traffic. What a user sees is checked in a real browser (Debian's chromium driven
//! by playwright-core, telemetry/web/tests/graph.spec.mjs): the app box with both versions at
//! about 50% each, the mTLS lock, non-zero rates, the side panel of a clicked node; a screenshot
//! is saved to target/webview/graph.png. The API's figures are checked against the sidecars'
//! own counters, and a sidecar that disappears greys out while the view keeps working. And
//! the page is built into mastd: started elsewhere than the repository, without `--web-dir`, it
//! still serves it.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mast_e2e::{
    Backend, CaOptions, HttpClient, Mastd, PodSpec, Proc, Sidecar, SidecarKind, bin, eventually,
    free_port, workspace_root,
};
use serde_json::Value;

const MYAPP: PodSpec<'static> = PodSpec {
    name: "myapp-v1-1",
    namespace: "default",
    labels: &[("app", "myapp"), ("version", "v1")],
    service_account: "myapp",
};
const USER_V1: PodSpec<'static> = PodSpec {
    name: "user-v1-1",
    namespace: "default",
    labels: &[("app", "user"), ("version", "v1")],
    service_account: "user",
};
const USER_V2: PodSpec<'static> = PodSpec {
    name: "user-v2-1",
    namespace: "default",
    labels: &[("app", "user"), ("version", "v2")],
    service_account: "user",
};
const TODO_V1: PodSpec<'static> = PodSpec {
    name: "todo-v1-1",
    namespace: "default",
    labels: &[("app", "todo"), ("version", "v1")],
    service_account: "todo",
};
/// The collector's scrape interval in this test.
const SCRAPE: Duration = Duration::from_secs(1);

fn workload(name: &str, ip: &str, app: &str, version: &str, sa: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  address: {ip}\n  labels: {{app: {app}, version: {version}, security.istio.io/tlsMode: istio}}\n  serviceAccount: {sa}\n---\n"
    )
}

fn ingress(app: &str, version: &str, inbound: u16, backend: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {app}-{version}, namespace: default}}\n\
         spec:\n  workloadSelector: {{labels: {{app: {app}, version: {version}}}}}\n  ingress:\n\
         \x20 - port: {{number: {inbound}, protocol: HTTP, name: http}}\n    defaultEndpoint: 127.0.0.1:{backend}\n\
         \x20 egress:\n  - hosts: [\"nowhere/*\"]\n---\n"
    )
}

fn mesh_yaml(user_port: u16, todo_port: u16, inbound: u16, backends: [u16; 3]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: user, namespace: default}}\n\
         spec:\n  selector: {{app: user}}\n  ports:\n  - {{name: http, port: {user_port}, targetPort: {inbound}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: todo, namespace: default}}\n\
         spec:\n  selector: {{app: todo}}\n  ports:\n  - {{name: http, port: {todo_port}, targetPort: {inbound}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: user, namespace: default}}\n\
         spec:\n  host: user\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: user-split, namespace: default}}\n\
         spec:\n  hosts: [user]\n  http:\n  - route:\n    - {{destination: {{host: user, subset: v1}}, weight: 50}}\n\
         \x20   - {{destination: {{host: user, subset: v2}}, weight: 50}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\n\
         spec:\n  mtls: {{mode: STRICT}}\n---\n"
    );
    y.push_str(&workload("user-v1-1", "127.0.0.11", "user", "v1", "user"));
    y.push_str(&workload("user-v2-1", "127.0.0.12", "user", "v2", "user"));
    y.push_str(&workload("todo-v1-1", "127.0.0.13", "todo", "v1", "todo"));
    y.push_str(&ingress("user", "v1", inbound, backends[0]));
    y.push_str(&ingress("user", "v2", inbound, backends[1]));
    y.push_str(&ingress("todo", "v1", inbound, backends[2]));
    y
}

/// A paced load (about 100 requests/s per URL) so the browser has CPU too.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(targets: &[(String, &'static str)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let client = HttpClient::new();
        let tasks = targets
            .iter()
            .flat_map(|(url, host)| std::iter::repeat_n((url.clone(), *host), 2))
            .map(|(url, host)| {
                let (client, stop, sent, failed) =
                    (client.clone(), stop.clone(), sent.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let ok = matches!(client.get(&url, Some(host), &[]).await, Ok((s, _)) if s == 200);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

async fn graph(mastd: &Mastd, query: &str) -> Result<Value> {
    let url = format!(
        "http://{}/api/namespaces/default/graph?{query}",
        mastd.telemetry_addr
    );
    let (status, body) = HttpClient::new().get(&url, None, &[]).await?;
    ensure!(status == 200, "{url}: {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

fn nodes(g: &Value) -> Vec<&Value> {
    g["elements"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| &n["data"])
        .collect()
}

fn edges(g: &Value) -> Vec<&Value> {
    g["elements"]["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["data"])
        .collect()
}

fn node_id(g: &Value, pred: impl Fn(&Value) -> bool) -> Option<&str> {
    nodes(g).into_iter().find(|d| pred(d))?["id"].as_str()
}

fn edge<'a>(g: &'a Value, from: &str, to: &str) -> Option<&'a Value> {
    edges(g)
        .into_iter()
        .find(|e| e["source"] == from && e["target"] == to)
}

/// The user version nodes' ids and their inbound edges from the `user` service node.
fn version_edges(g: &Value) -> Option<[(String, Value); 2]> {
    let svc = node_id(g, |d| d["nodeType"] == "service" && d["service"] == "user")?;
    let mut out = Vec::new();
    for v in ["v1", "v2"] {
        let id = node_id(g, |d| {
            d["nodeType"] == "app" && d["app"] == "user" && d["version"] == v
        })?;
        out.push((id.to_string(), edge(g, svc, id)?.clone()));
    }
    out.try_into().ok()
}

fn counter(exposition: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_view_in_a_real_browser() -> Result<()> {
    let web = workspace_root().join("telemetry/web");
    let spec = web.join("tests/graph.spec.mjs");
    if !web.join("dist/index.html").exists() || !web.join("node_modules/playwright-core").exists() {
        bail!(
            "the web view is not built: cd telemetry/web && npm ci && npm run build \
             (scripts/test.sh does it)"
        );
    }
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let config = work.join("config");
    std::fs::create_dir(&config)?;
    let (b1, b2, bt) = (
        Backend::start("v1").await?,
        Backend::start("v2").await?,
        Backend::start("todo").await?,
    );
    let (user_port, todo_port, inbound) = (free_port(), free_port(), free_port());
    std::fs::write(
        config.join("mesh.yaml"),
        mesh_yaml(user_port, todo_port, inbound, [b1.port, b2.port, bt.port]),
    )?;
    let web_dir = web.join("dist");
    let scrape = format!("{}ms", SCRAPE.as_millis());
    let otlp_http = format!("127.0.0.1:{}", free_port());
    let otlp_grpc = format!("127.0.0.1:{}", free_port());
    let mastd = Mastd::launch_with_args(
        &config,
        work,
        ([127, 0, 0, 1], free_port()).into(),
        ([127, 0, 0, 1], free_port()).into(),
        Some(CaOptions {
            dir: work.join("ca"),
            addr: None,
            workload_ttl: None,
        }),
        &[
            "--scrape-interval",
            &scrape,
            "--web-dir",
            web_dir.to_str().context("web dir")?,
            "--otlp-http-addr",
            &otlp_http,
            "--otlp-grpc-addr",
            &otlp_grpc,
        ],
    )
    .await?;
    let v1 = Sidecar::start_secure(SidecarKind::Mast, &USER_V1, "127.0.0.11", &mastd, work).await?;
    let v2 = Sidecar::start_secure(SidecarKind::Mast, &USER_V2, "127.0.0.12", &mastd, work).await?;
    let todo =
        Sidecar::start_secure(SidecarKind::Mast, &TODO_V1, "127.0.0.13", &mastd, work).await?;
    let myapp = Sidecar::start_secure(SidecarKind::Mast, &MYAPP, "127.0.0.1", &mastd, work).await?;
    let user_url = format!("http://127.0.0.1:{user_port}/");
    let todo_url = format!("http://127.0.0.1:{todo_port}/");
    let http = HttpClient::new();
    eventually(
        "user and todo answer through the sidecars",
        Duration::from_secs(30),
        || {
            let (http, u, t) = (http.clone(), user_url.clone(), todo_url.clone());
            async move {
                ensure!(http.get(&u, Some("user"), &[]).await?.0 == 200);
                ensure!(http.get(&t, Some("todo"), &[]).await?.0 == 200);
                Ok(())
            }
        },
    )
    .await?;

    let traffic = Traffic::start(&[(user_url.clone(), "user"), (todo_url.clone(), "todo")]);
    let g = eventually(
        "the graph shows both user versions with traffic",
        Duration::from_secs(30),
        || {
            let mastd = &mastd;
            async move {
                let g = graph(mastd, "graphType=versionedApp&duration=1m").await?;
                let [(_, e1), (_, e2)] = version_edges(&g).context("no user v1/v2 edges yet")?;
                ensure!(
                    e1["rps"].as_f64() > Some(0.0) && e2["rps"].as_f64() > Some(0.0),
                    "{g}"
                );
                Ok(g)
            }
        },
    )
    .await?;
    let svc = node_id(&g, |d| d["nodeType"] == "service" && d["service"] == "user")
        .context("user service node")?;
    let svc_node = nodes(&g)
        .into_iter()
        .find(|d| d["id"] == svc)
        .context("svc")?;
    ensure!(svc_node["hasTrafficShifting"] == true, "{svc_node}");
    for (_, e) in version_edges(&g).context("edges")? {
        ensure!(e["isMTLS"] == "100", "mTLS on {e}");
    }
    ensure!(
        node_id(&g, |d| d["nodeType"] == "box" && d["app"] == "user").is_some(),
        "user app box"
    );

    // Spans as the sidecars export them (OTLP/HTTP JSON to mastd's receiver), so the side
    // panel has traces to list and the browser test checks them against mastd (EXPECT_TRACES).
    post_traces(&otlp_http).await?;

    // What a user sees, in chromium.
    let shots = workspace_root().join("target/webview");
    std::fs::create_dir_all(&shots)?;
    let out = tokio::task::spawn_blocking({
        let (spec, shots, base) = (spec.clone(), shots.clone(), mastd.telemetry_addr);
        move || {
            Command::new("node")
                .arg(&spec)
                .env("BASE_URL", format!("http://{base}"))
                .env("EXPECT_SPLIT", "50")
                .env("SPLIT_TOLERANCE", "10")
                .env("SCREENSHOT", shots.join("graph.png"))
                .env("EXPECT_TRACES", "1")
                .output()
        }
    })
    .await??;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    ensure!(out.status.success(), "browser test failed:\n{report}");

    // The API's figures against the sidecars' own counters: stop the traffic, let the collector
    // see the last of it, then add up the edge's per-scrape rates over the 1 m window (the whole
    // run fits in it) and compare with what each destination sidecar counted. They must agree
    // within one scrape interval's worth of requests.
    let (sent, failed) = traffic.stop().await;
    ensure!(failed == 0, "{failed} of {sent} requests failed");
    tokio::time::sleep(SCRAPE * 3).await;
    let g = graph(&mastd, "graphType=versionedApp&duration=1m").await?;
    let mut api_total = 0.0;
    let mut proxy_total = 0.0;
    for ((_, e), sidecar) in version_edges(&g).context("edges")?.iter().zip([&v1, &v2]) {
        let counted = counter(
            &sidecar.prometheus().await?,
            "istio_requests_total",
            &[("reporter", "destination"), ("source_app", "myapp")],
        );
        let id = e["id"].as_str().context("edge id")?;
        let url = format!(
            "http://{}/api/namespaces/default/nodes/{id}?duration=1m",
            mastd.telemetry_addr
        );
        let (status, body) = HttpClient::new().get(&url, None, &[]).await?;
        ensure!(status == 200, "{url}: {status}: {body}");
        let detail: Value = serde_json::from_str(&body)?;
        let points: Vec<(f64, f64)> = detail["series"]["rps"]
            .as_array()
            .context("rps series")?
            .iter()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
            .collect();
        let mut from_api = 0.0;
        let mut peak: f64 = 0.0;
        for (i, (t, v)) in points.iter().enumerate() {
            let dt = if i == 0 {
                SCRAPE.as_secs_f64()
            } else {
                t - points[i - 1].0
            };
            from_api += v * dt;
            peak = peak.max(*v);
        }
        let slack = peak * SCRAPE.as_secs_f64() + 2.0;
        println!(
            "webview: {} api {from_api:.1} requests, sidecar counted {counted} (allowed ±{slack:.0})",
            e["target"]
        );
        ensure!(
            (from_api - counted).abs() <= slack,
            "API {from_api:.1} vs counted {counted}"
        );
        api_total += from_api;
        proxy_total += counted;
    }
    println!("webview: {sent} sent, api {api_total:.0}, sidecars {proxy_total}");

    // A sidecar that goes away greys out; the view keeps answering.
    drop(v2);
    let g = eventually("user v2 shown unreachable", Duration::from_secs(20), || {
        let mastd = &mastd;
        async move {
            let g = graph(mastd, "graphType=versionedApp&duration=5m").await?;
            let v2 = nodes(&g)
                .into_iter()
                .find(|d| d["app"] == "user" && d["version"] == "v2" && d["nodeType"] == "app")
                .cloned()
                .context("v2 node kept")?;
            ensure!(v2["isUnreachable"] == true, "{v2}");
            Ok(g)
        }
    })
    .await?;
    ensure!(node_id(&g, |d| d["app"] == "myapp").is_some());
    drop((myapp, todo, v1));
    Ok(())
}

/// mastd built after `npm run build` carries the page: started in an empty directory, with no
/// `--web-dir` nor `MAST_WEB_DIR`, it serves the same index.html and app.js as `dist/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_built_into_mastd() -> Result<()> {
    let dist = workspace_root().join("telemetry/web/dist");
    let (Ok(index), Ok(app)) = (
        std::fs::read_to_string(dist.join("index.html")),
        std::fs::read(dist.join("app.js")),
    ) else {
        bail!(
            "the web view is not built: cd telemetry/web && npm ci && npm run build, then \
             cargo build -p mastd (scripts/test.sh does both)"
        );
    };
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let config = work.join("config");
    std::fs::create_dir(&config)?;
    let (http, telemetry) = (free_port(), free_port());
    let mut cmd = Command::new(bin("mastd"));
    cmd.current_dir(work)
        .env_remove("MAST_WEB_DIR")
        .env("HOME", work)
        .env("RUST_LOG", "info")
        .arg("--config-dir")
        .arg(&config)
        .arg("--ca-dir")
        .arg(work.join("ca"))
        .args(["--ca-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--xds-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--telemetry-addr", &format!("127.0.0.1:{telemetry}")])
        .arg("--no-injector");
    let mut mastd = Proc::spawn("mastd", &mut cmd, work.join("mastd.log"))?;
    let client = HttpClient::new();
    let page = eventually("mastd serves /", Duration::from_secs(20), || {
        let alive = mastd.check_running();
        let client = client.clone();
        async move {
            alive?;
            let (status, body) = client
                .get(&format!("http://127.0.0.1:{telemetry}/"), None, &[])
                .await?;
            ensure!(status == 200, "{status}: {body}");
            Ok(body)
        }
    })
    .await
    .with_context(|| format!("mastd log:\n{}", mastd.log_text()))?;
    ensure!(
        page == index,
        "mastd serves another index.html than dist/ (built before the last npm run build? \
         cargo build -p mastd):\n{page}\nlog:\n{}",
        mastd.log_text()
    );
    let (status, body) = client
        .get(&format!("http://127.0.0.1:{telemetry}/app.js"), None, &[])
        .await?;
    ensure!(
        status == 200 && body.len() == String::from_utf8_lossy(&app).len(),
        "/app.js: {status}, {} bytes, dist/app.js has {}",
        body.len(),
        app.len()
    );
    ensure!(
        !mastd.log_text().contains("serving the telemetry API only"),
        "{}",
        mastd.log_text()
    );
    Ok(())
}

/// Three myapp → user requests as Istio's sidecars trace them (a client span in myapp's
/// sidecar, the server span in user's), one slow and one failed, POSTed as OTLP/JSON.
async fn post_traces(addr: &str) -> Result<()> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let span = |trace: usize, id: usize, parent: Option<usize>, start: u64, ms: u64, code: u16| {
        let status = if code >= 500 { 2 } else { 0 };
        serde_json::json!({
            "traceId": format!("{:032x}", 0x5eed_0000 + trace),
            "spanId": format!("{:016x}", 0x100 * trace + id),
            "parentSpanId": parent.map(|p| format!("{:016x}", 0x100 * trace + p)).unwrap_or_default(),
            "name": "user.default.svc.cluster.local:80/*",
            "kind": if parent.is_some() { 2 } else { 3 },
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": (start + ms * 1_000_000).to_string(),
            "attributes": [{"key": "http.status_code", "value": {"stringValue": code.to_string()}}],
            "status": {"code": status},
        })
    };
    let resource = |service: &str, spans: Vec<Value>| {
        serde_json::json!({
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeSpans": [{"spans": spans}],
        })
    };
    let (mut client, mut server) = (Vec::new(), Vec::new());
    for (i, (ms, code)) in [(12, 200), (1_800, 200), (9, 503)].into_iter().enumerate() {
        let start = now - (10 - i as u64) * 1_000_000_000;
        client.push(span(i, 1, None, start, ms + 2, code));
        server.push(span(i, 2, Some(1), start + 500_000, ms, code));
    }
    let body = serde_json::json!({"resourceSpans": [
        resource("myapp.default", client),
        resource("user.default", server),
    ]});
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = hyper::Request::post(format!("http://{addr}/v1/traces"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let res = http.request(req).await?;
    let status = res.status();
    let answer = res.into_body().collect().await?.to_bytes();
    ensure!(
        status.is_success(),
        "OTLP/HTTP to mastd: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}
