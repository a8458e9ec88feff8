//! Distributed tracing end to end (issue 20), with Envoy and with mast-proxy as the sidecars:
//! mastd reads the tracing providers from MeshConfig (the `istio` ConfigMap in the config
//! folder) and the sampling from Telemetry resources, and writes the connection managers'
//! `tracing` as istiod does; the sidecars report to collectors that run in this test.
//!
//! One "pod" pair per sidecar kind on loopback (NONE interception): a client whose sidecar
//! binds its egress on its own address and a server (`api-<kind>`) whose sidecar binds the
//! inbound port and forwards to an app that records the headers it gets, and an ingress
//! gateway in front of the same api. Checked:
//! - Zipkin provider (a Zipkin v2 JSON receiver, `POST /api/v2/spans`): every request gives a
//!   CLIENT span on the caller's sidecar and a SERVER span on the callee's, one trace id, the
//!   server's parent is the client's span; the B3 headers reach the app; Istio's span tags
//!   and the Telemetry's literal and header tags are on the spans.
//! - OpenTelemetry provider (an OTLP/gRPC receiver decoding `ExportTraceServiceRequest`): the
//!   Telemetry edited to name it, spans arrive there, same parent/child shape.
//! - Sampling: the Telemetry edited to 1%, 10,000 requests give 100 ± 30 traces;
//!   `x-envoy-force-trace` requests through the ingress gateway (loopback internal by
//!   meshNetworks) are all traced; every edit takes effect without a restart of anything.
//!
//! - Both kinds in one trace: an Envoy client sidecar calling through a mast-proxy server
//!   sidecar gives the Zipkin checks above (one trace, parent/child, tags, B3 to the app).
//!
//! mast-proxy's tracing is proxy/src/http/trace.rs (and trace_export.rs); the all-mast-proxy
//! case is `#[ignore]`d until the gap its doc comment names is closed.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mast_e2e::{
    HttpClient, Mastd, PodSpec, Sidecar, SidecarKind, eventually, free_port, send_requests,
    write_atomic,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtelValue;
use serde_json::Value;

// === collectors and the app ===

/// Zipkin v2 spans as received (each a JSON object).
#[derive(Clone, Default)]
struct ZipkinReceiver {
    spans: Arc<Mutex<Vec<Value>>>,
    /// Posts whose body was not a JSON array of spans.
    bad: Arc<Mutex<Vec<String>>>,
}

impl ZipkinReceiver {
    async fn start() -> Result<(Self, u16)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let me = Self::default();
        let r = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let r = r.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let r = r.clone();
                        async move {
                            let ok = req.method() == hyper::Method::POST
                                && req.uri().path() == "/api/v2/spans";
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let status = match (ok, body) {
                                (true, Ok(b)) => match serde_json::from_slice::<Vec<Value>>(&b) {
                                    Ok(spans) => {
                                        lock(&r.spans).extend(spans);
                                        StatusCode::ACCEPTED
                                    }
                                    Err(e) => {
                                        lock(&r.bad).push(format!("{e}"));
                                        StatusCode::BAD_REQUEST
                                    }
                                },
                                _ => StatusCode::NOT_FOUND,
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok((me, port))
    }

    fn take(&self) -> Vec<Value> {
        std::mem::take(&mut *lock(&self.spans))
    }
}

/// One OTLP span, flattened: `(service.name, span)`.
type OtlpSpan = (String, opentelemetry_proto::tonic::trace::v1::Span);

#[derive(Clone, Default)]
struct OtlpReceiver {
    spans: Arc<Mutex<Vec<OtlpSpan>>>,
}

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> std::result::Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = lock(&self.spans);
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    OtelValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl OtlpReceiver {
    async fn start() -> Result<(Self, u16)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let me = Self::default();
        let svc = TraceServiceServer::new(me.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok((me, port))
    }
}

/// The app behind the server sidecar: answers `api`, keeps the tracing headers it got.
#[derive(Clone, Default)]
struct App {
    seen: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

impl App {
    async fn start() -> Result<(Self, u16)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let me = Self::default();
        let app = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let app = app.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let headers: BTreeMap<String, String> = req
                            .headers()
                            .iter()
                            .filter(|(k, _)| {
                                k.as_str().starts_with("x-b3-")
                                    || matches!(k.as_str(), "b3" | "traceparent" | "x-request-id")
                            })
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        lock(&app.seen).push(headers);
                        async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"api",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok((me, port))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === the mesh ===

/// Addresses of one kind's pods, apart from the other kind's so both tests can run at once.
struct Addrs {
    /// The client's egress bind (its app calls `<client>:<service port>`).
    client: &'static str,
    /// The server's instance address (its inbound listener).
    server: &'static str,
    /// The server sidecar's egress bind (only the collectors are visible there).
    server_egress: &'static str,
    /// The ingress gateway's `gw` label.
    gateway: &'static str,
}

/// Which sidecars one mesh runs: the client's and the server's (the gateway is the
/// client's kind).
#[derive(Clone, Copy)]
struct Pair {
    client: SidecarKind,
    server: SidecarKind,
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.client == self.server {
            write!(f, "{}", self.client)
        } else {
            write!(f, "{} client -> {} server", self.client, self.server)
        }
    }
}

fn addrs(pair: Pair) -> Addrs {
    match (pair.client, pair.server) {
        (SidecarKind::Envoy, SidecarKind::Mast) | (SidecarKind::Mast, SidecarKind::Envoy) => {
            Addrs {
                client: "127.0.0.4",
                server: "127.0.0.14",
                server_egress: "127.0.0.24",
                gateway: "mixed",
            }
        }
        (SidecarKind::Envoy, _) => Addrs {
            client: "127.0.0.2",
            server: "127.0.0.12",
            server_egress: "127.0.0.22",
            gateway: "envoy",
        },
        (SidecarKind::Mast, _) => Addrs {
            client: "127.0.0.3",
            server: "127.0.0.13",
            server_egress: "127.0.0.23",
            gateway: "mast",
        },
    }
}

struct Ports {
    service: u16,
    gateway: u16,
    inbound: u16,
    app: u16,
    zipkin: u16,
    otlp: u16,
}

fn mesh_yaml(a: &Addrs, p: &Ports) -> String {
    let Ports {
        service,
        gateway,
        inbound,
        app,
        zipkin,
        otlp,
    } = p;
    let (client, server, server_egress, gw) = (a.client, a.server, a.server_egress, a.gateway);
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    accessLogFile: /dev/stdout
    enableTracing: true
    extensionProviders:
    - name: zipkin
      zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: 9411}}
    - name: otel
      opentelemetry: {{service: istio-system/otel.istio-system.svc.cluster.local, port: 4317}}
  meshNetworks: |
    networks:
      loopback:
        endpoints: [{{fromCidr: 127.0.0.0/8}}]
---
apiVersion: v1
kind: Service
metadata: {{name: zipkin, namespace: istio-system}}
spec:
  selector: {{app: zipkin}}
  ports: [{{name: http-zipkin, port: 9411, targetPort: http-zipkin}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: zipkin-1, namespace: istio-system}}
spec: {{address: 127.0.0.1, labels: {{app: zipkin}}, ports: {{http-zipkin: {zipkin}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: otel, namespace: istio-system}}
spec:
  selector: {{app: otel}}
  ports: [{{name: grpc-otlp, port: 4317, targetPort: grpc-otlp}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: otel-1, namespace: istio-system}}
spec: {{address: 127.0.0.1, labels: {{app: otel}}, ports: {{grpc-otlp: {otlp}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: api, namespace: default}}
spec:
  selector: {{app: api}}
  ports: [{{name: http, port: {service}, targetPort: {inbound}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api-1, namespace: default}}
spec: {{address: {server}, labels: {{app: api}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - bind: {client}
    hosts: ["./*", "istio-system/*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: api, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: api}}}}
  ingress:
  - port: {{number: {inbound}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{app}
  egress:
  - bind: {server_egress}
    hosts: ["istio-system/*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{gw: {gw}}}
  servers:
  - port: {{number: {gateway}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {{host: api.default.svc.cluster.local, port: {{number: {service}}}}}
"#
    )
}

/// The mesh-wide Telemetry: provider, sampling and two custom tags.
fn telemetry_yaml(provider: &str, percent: f64) -> String {
    format!(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: {percent}
    customTags:
      team: {{literal: {{value: tracing-e2e}}}}
      user: {{header: {{name: x-user, defaultValue: nobody}}}}
"#
    )
}

// === checks ===

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span.get("tags")?.get(key)?.as_str()
}

fn field<'a>(span: &'a Value, key: &str) -> &'a str {
    span.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Zipkin spans by trace id.
fn traces(spans: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut out: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for s in spans {
        out.entry(field(s, "traceId").to_string())
            .or_default()
            .push(s);
    }
    out
}

/// Whether any `random_sampling` (or `randomSampling`) in a config dump has this value: the
/// edit reached the proxy.
fn has_random_sampling(v: &Value, want: f64) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| {
            ((k == "random_sampling" || k == "randomSampling")
                && v.get("value").and_then(Value::as_f64) == Some(want))
                || has_random_sampling(v, want)
        }),
        Value::Array(a) => a.iter().any(|v| has_random_sampling(v, want)),
        _ => false,
    }
}

async fn wait_for_sampling(proxies: &[&Sidecar], percent: f64) -> Result<()> {
    for &p in proxies {
        eventually(
            &format!("{} has random_sampling {percent}", p.kind),
            Duration::from_secs(20),
            || async move {
                let dump: Value = serde_json::from_str(&p.admin("/config_dump").await?)?;
                ensure!(has_random_sampling(&dump, percent), "not yet");
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

struct Mesh {
    kind: Pair,
    config: std::path::PathBuf,
    client: Sidecar,
    server: Sidecar,
    gateway: Sidecar,
    url: String,
    /// The same api through the ingress gateway.
    gateway_url: String,
    zipkin: ZipkinReceiver,
    otlp: OtlpReceiver,
    app: App,
    _mastd: Mastd,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(kind: Pair) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config");
        std::fs::create_dir(&config)?;
        let (zipkin, zipkin_port) = ZipkinReceiver::start().await?;
        let (otlp, otlp_port) = OtlpReceiver::start().await?;
        let (app, app_port) = App::start().await?;
        let a = addrs(kind);
        let ports = Ports {
            service: free_port(),
            gateway: free_port(),
            inbound: free_port(),
            app: app_port,
            zipkin: zipkin_port,
            otlp: otlp_port,
        };
        std::fs::write(config.join("mesh.yaml"), mesh_yaml(&a, &ports))?;
        std::fs::write(
            config.join("telemetry.yaml"),
            telemetry_yaml("zipkin", 100.0),
        )?;
        let mastd = Mastd::start(&config, dir.path()).await?;
        let suffix = a.gateway;
        let client_pod = format!("client-{suffix}-1");
        let server_pod = format!("api-{suffix}-1");
        let client = Sidecar::start_kind(
            kind.client,
            &PodSpec {
                name: &client_pod,
                namespace: "default",
                labels: &[("app", "client")],
                service_account: "client",
            },
            a.client,
            mastd.xds_addr,
            dir.path(),
            true,
        )
        .await?;
        let server = Sidecar::start_kind(
            kind.server,
            &PodSpec {
                name: &server_pod,
                namespace: "default",
                labels: &[
                    ("app", "api"),
                    ("service.istio.io/canonical-name", "api"),
                    ("service.istio.io/canonical-revision", "v1"),
                ],
                service_account: "api",
            },
            a.server,
            mastd.xds_addr,
            dir.path(),
            true,
        )
        .await?;
        let gateway_pod = format!("istio-ingressgateway-{suffix}");
        let gateway = Sidecar::start_gateway(
            kind.client,
            &PodSpec {
                name: &gateway_pod,
                namespace: "istio-system",
                labels: &[("istio", "ingressgateway"), ("gw", a.gateway)],
                service_account: "istio-ingressgateway-service-account",
            },
            mastd.xds_addr,
            dir.path(),
        )
        .await?;
        let url = format!("http://{}:{}/items", a.client, ports.service);
        let gateway_url = format!("http://127.0.0.1:{}/items", ports.gateway);
        let http = HttpClient::new();
        for (what, url) in [("both sidecars", &url), ("the gateway", &gateway_url)] {
            eventually(
                &format!("{kind}: the api answers through {what}"),
                Duration::from_secs(30),
                || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let (status, body) = http.get(&url, Some("api"), &[]).await?;
                        ensure!(status == 200 && body == "api", "{status}: {body}");
                        Ok(())
                    }
                },
            )
            .await
            .with_context(|| {
                format!(
                    "--- gateway log (tail) ---\n{}\n--- server log (tail) ---\n{}",
                    tail(&gateway.proc.log_text()),
                    tail(&server.proc.log_text())
                )
            })?;
        }
        Ok(Self {
            kind,
            config,
            client,
            server,
            gateway,
            url,
            gateway_url,
            zipkin,
            otlp,
            app,
            _mastd: mastd,
            _dir: dir,
        })
    }

    fn set_telemetry(&self, provider: &str, percent: f64) -> Result<()> {
        write_atomic(
            &self.config.join("telemetry.yaml"),
            &telemetry_yaml(provider, percent),
        )
    }

    async fn send(&self, count: u64, headers: &[(&str, &str)]) -> Result<()> {
        self.send_to(&self.url, count, headers).await
    }

    async fn send_to(&self, url: &str, count: u64, headers: &[(&str, &str)]) -> Result<()> {
        let tally = send_requests(url, "api", headers, count, 16).await;
        ensure!(
            tally.failures() == 0,
            "{}: {} of {count} requests failed: {:?}",
            self.kind,
            tally.failures(),
            tally.errors
        );
        Ok(())
    }

    /// Zipkin spans until `want` have arrived and no more come for a flush period.
    async fn zipkin_spans(&self, want: usize) -> Result<Vec<Value>> {
        let z = self.zipkin.clone();
        eventually(
            &format!("{}: {want} Zipkin spans", self.kind),
            Duration::from_secs(20),
            || {
                let z = z.clone();
                async move {
                    let n = lock(&z.spans).len();
                    ensure!(n >= want, "{n} spans so far");
                    Ok(())
                }
            },
        )
        .await?;
        // Anything more is a bug (a span too many); give it the exporters' 5 s flush.
        tokio::time::sleep(Duration::from_millis(5500)).await;
        ensure!(
            lock(&self.zipkin.bad).is_empty(),
            "{:?}",
            lock(&self.zipkin.bad)
        );
        Ok(self.zipkin.take())
    }
}

/// (a): Zipkin spans at 100%: shape, tags, and the B3 headers the app got.
async fn check_zipkin(m: &Mesh) -> Result<()> {
    let kind = m.kind;
    lock(&m.app.seen).clear();
    m.send(4, &[("x-user", "alice")]).await?;
    let spans = m.zipkin_spans(8).await?;
    // The start-up check's request was traced too (as "nobody"): only alice's count here.
    let mut by_trace = traces(&spans);
    by_trace.retain(|_, spans| spans.iter().any(|s| tag(s, "user") == Some("alice")));
    ensure!(
        by_trace.len() == 4,
        "{kind}: 4 requests should be 4 traces, got {}: {spans:#?}",
        by_trace.len()
    );
    let seen = lock(&m.app.seen).clone();
    for (trace, spans) in &by_trace {
        let kinds: BTreeSet<&str> = spans.iter().map(|s| field(s, "kind")).collect();
        ensure!(
            spans.len() == 2 && kinds == BTreeSet::from(["CLIENT", "SERVER"]),
            "{kind}: trace {trace} should be one CLIENT and one SERVER span: {spans:#?}"
        );
        let client = spans.iter().find(|s| field(s, "kind") == "CLIENT").unwrap();
        let server = spans.iter().find(|s| field(s, "kind") == "SERVER").unwrap();
        ensure!(
            field(server, "parentId") == field(client, "id") && !field(client, "id").is_empty(),
            "{kind}: the server span's parent is not the client span: {spans:#?}"
        );
        ensure!(
            trace.len() == 32,
            "{kind}: Istio's 128-bit trace ids expected, got {trace:?}"
        );
        for s in [client, server] {
            for (key, want) in [
                ("team", "tracing-e2e"),
                ("user", "alice"),
                ("istio.namespace", "default"),
                ("http.method", "GET"),
                ("http.status_code", "200"),
            ] {
                ensure!(
                    tag(s, key) == Some(want),
                    "{kind}: {} span tag {key} should be {want:?}: {s:#}",
                    field(s, "kind")
                );
            }
        }
        ensure!(
            tag(server, "istio.canonical_service") == Some("api")
                && tag(server, "istio.canonical_revision") == Some("v1"),
            "{kind}: the server's canonical service tags: {server:#}"
        );
        // B3 reached the app: the server span's context, sampled.
        let app = seen
            .iter()
            .find(|h| h.get("x-b3-traceid") == Some(trace))
            .with_context(|| format!("{kind}: the app got no x-b3-traceid {trace}: {seen:#?}"))?;
        ensure!(
            app.get("x-b3-spanid").map(String::as_str) == Some(field(server, "id"))
                && app.get("x-b3-sampled").map(String::as_str) == Some("1"),
            "{kind}: the app's B3 headers are not the server span's context: {app:?} vs {server:#}"
        );
    }
    Ok(())
}

/// (b): the Telemetry names the OpenTelemetry provider; spans reach the OTLP receiver.
async fn check_otlp(m: &Mesh) -> Result<()> {
    let kind = m.kind;
    m.set_telemetry("otel", 100.0)?;
    let otlp = m.otlp.clone();
    eventually(
        &format!("{kind}: spans at the OTLP receiver after the Telemetry edit"),
        Duration::from_secs(30),
        || {
            let otlp = otlp.clone();
            async move {
                m.send(1, &[]).await?;
                let n = lock(&otlp.spans).len();
                ensure!(n >= 2, "{n} OTLP spans so far");
                Ok(())
            }
        },
    )
    .await?;
    // What was sent before the switch reached Zipkin; drop it.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    m.zipkin.take();
    lock(&m.otlp.spans).clear();
    m.send(2, &[]).await?;
    eventually(
        &format!("{kind}: 4 OTLP spans"),
        Duration::from_secs(20),
        || {
            let otlp = otlp.clone();
            async move {
                let n = lock(&otlp.spans).len();
                ensure!(n >= 4, "{n} OTLP spans so far");
                Ok(())
            }
        },
    )
    .await?;
    let spans = lock(&m.otlp.spans).clone();
    let mut by_trace: BTreeMap<Vec<u8>, Vec<&OtlpSpan>> = BTreeMap::new();
    for s in &spans {
        by_trace.entry(s.1.trace_id.clone()).or_default().push(s);
    }
    for (trace, spans) in &by_trace {
        use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
        let client = spans
            .iter()
            .find(|s| s.1.kind == SpanKind::Client as i32)
            .with_context(|| format!("{kind}: no CLIENT span in trace {trace:02x?}: {spans:#?}"))?;
        let server = spans
            .iter()
            .find(|s| s.1.kind == SpanKind::Server as i32)
            .with_context(|| format!("{kind}: no SERVER span in trace {trace:02x?}: {spans:#?}"))?;
        ensure!(
            server.1.parent_span_id == client.1.span_id && trace.len() == 16,
            "{kind}: the server span's parent is not the client span: {spans:#?}"
        );
        ensure!(
            !client.0.is_empty() && !server.0.is_empty(),
            "{kind}: spans without service.name: {spans:#?}"
        );
    }
    ensure!(
        lock(&m.zipkin.spans).is_empty(),
        "{kind}: spans still went to Zipkin after the switch"
    );
    Ok(())
}

/// (c): 1% of 10,000 requests, then forced traces.
async fn check_sampling(m: &Mesh) -> Result<()> {
    let kind = m.kind;
    m.set_telemetry("zipkin", 1.0)?;
    wait_for_sampling(&[&m.client, &m.server, &m.gateway], 1.0).await?;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    lock(&m.otlp.spans).clear();
    m.zipkin.take();
    let started = std::time::Instant::now();
    m.send(10_000, &[]).await?;
    let took = started.elapsed();
    // Every sampled trace has its two spans; wait for the exporters' last flush.
    tokio::time::sleep(Duration::from_millis(6000)).await;
    let spans = m.zipkin.take();
    let by_trace = traces(&spans);
    let traced = by_trace.len();
    eprintln!(
        "{kind}: 1% of 10,000 requests ({took:?}) -> {traced} traces, {} spans",
        spans.len()
    );
    ensure!(
        (70..=130).contains(&traced),
        "{kind}: 1% of 10,000 requests gave {traced} traces (100 ± 30 expected)"
    );
    let incomplete: Vec<_> = by_trace.iter().filter(|(_, s)| s.len() != 2).collect();
    ensure!(
        incomplete.is_empty(),
        "{kind}: sampled traces without both spans (the server must follow the client's decision): {incomplete:#?}"
    );
    ensure!(
        lock(&m.otlp.spans).is_empty(),
        "{kind}: spans went to the OTLP receiver"
    );

    // Envoy honours x-envoy-force-trace on internal requests only, and since 1.33 no address
    // is internal unless the connection manager says so: istiod sets internal_address_config
    // from meshNetworks where it uses the remote address, at the gateway (a sidecar drops the
    // header from its app). The gateway here takes loopback for internal (meshNetworks
    // fromCidr 127.0.0.0/8): every forced request is traced, the gateway's spans and the
    // api's server span in one trace.
    m.send_to(&m.gateway_url, 50, &[("x-envoy-force-trace", "true")])
        .await?;
    let spans = m.zipkin_spans(150).await?;
    let forced = traces(&spans);
    let complete = forced
        .values()
        .filter(|s| {
            s.iter()
                .any(|s| tag(s, "node_id").is_some_and(|n| n.starts_with("router~")))
                && s.iter().any(|s| {
                    field(s, "kind") == "SERVER" && tag(s, "istio.canonical_service") == Some("api")
                })
        })
        .count();
    ensure!(
        forced.len() == 50 && complete == 50,
        "{kind}: 50 requests with x-envoy-force-trace through the gateway gave {} traces, {complete} with the gateway's and the api's spans",
        forced.len()
    );
    Ok(())
}

async fn tracing_end_to_end(kind: SidecarKind) -> Result<()> {
    let m = Mesh::start(Pair {
        client: kind,
        server: kind,
    })
    .await?;
    let result = async {
        check_zipkin(&m).await.context("zipkin")?;
        check_otlp(&m).await.context("opentelemetry")?;
        check_sampling(&m).await.context("sampling")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        bail!(
            "{e:#}\n--- client {kind} tracer stats ---\n{}\n--- server {kind} tracer stats ---\n{}\n--- client {kind} log (tail) ---\n{}\n--- server {kind} log (tail) ---\n{}",
            tracer_stats(&m.client).await,
            tracer_stats(&m.server).await,
            tail(&m.client.proc.log_text()),
            tail(&m.server.proc.log_text())
        );
    }
    Ok(())
}

async fn tracer_stats(p: &Sidecar) -> String {
    p.prometheus()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("tracing") && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Both kinds in one trace: an Envoy client sidecar's CLIENT span and a mast-proxy server
/// sidecar's SERVER span (its child), B3 between them and to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_mast_proxy_sidecars_share_one_trace() -> Result<()> {
    let m = Mesh::start(Pair {
        client: SidecarKind::Envoy,
        server: SidecarKind::Mast,
    })
    .await?;
    if let Err(e) = check_zipkin(&m).await {
        bail!(
            "{e:#}\n--- server tracer stats ---\n{}\n--- server log (tail) ---\n{}",
            tracer_stats(&m.server).await,
            tail(&m.server.proc.log_text())
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_with_envoy_sidecars() -> Result<()> {
    tracing_end_to_end(SidecarKind::Envoy).await
}

/// Run with `--ignored`. With mast-proxy at ea44dcd everything up to the forced traces
/// passes (Zipkin and OTLP shape, the provider switch, 1% of 10,000 = 105 traces), then the
/// last step fails on a mast-proxy gap (proxy/src/http/forwarded.rs), not on mastd: its
/// gateway does not read the connection manager's `internal_address_config` (istiod's, from
/// meshNetworks), takes every client for external and drops `x-envoy-force-trace`, so none
/// of the 50 forced requests is traced (Envoy's gateway traces all 50).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mast-proxy's gateway ignores internal_address_config and drops x-envoy-force-trace from loopback (see the doc comment)"]
async fn tracing_with_mast_proxy_sidecars() -> Result<()> {
    tracing_end_to_end(SidecarKind::Mast).await
}
