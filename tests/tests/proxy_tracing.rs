//! mast-proxy's tracing on a static bootstrap (Envoy's config, no control plane): one
//! mast-proxy holds a client sidecar's outbound listener and a server sidecar's inbound one,
//! chained (app → outbound → inbound → backend), each connection manager with the `tracing`
//! istiod writes, exporting to a collector the test runs.
//!
//! What it proves, per provider (Zipkin v2 JSON, OTLP over HTTP, OTLP over gRPC): the
//! outbound span is a child of the incoming context, the inbound span a child of the outbound
//! one, and the backend receives a context whose parent is the inbound span; names come from
//! the route decorators (the inbound span from the caller's `x-envoy-decorator-operation`),
//! tags are Envoy's and istiod's, and a 503 is marked as an error. A dead collector (nothing
//! listening) and a hung one (accepts, never answers) cost the requests nothing: every one
//! is answered at once, and the spans that could not go are counted in the tracer stats.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mast_e2e::{HttpClient, eventually, free_port, send_requests};
use prost::Message;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const OUT_OP: &str = "server.default.svc.cluster.local:80/*";

/// What the collector received: (path, body).
type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

#[derive(Clone, Copy, PartialEq)]
enum Collector {
    Answers,
    /// Accepts and reads, never answers.
    Hangs,
}

/// A collector on loopback: Zipkin and OTLP/HTTP over HTTP/1.1, OTLP/gRPC over h2c.
async fn collector(mode: Collector) -> Result<(u16, Received)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let received: Received = Arc::default();
    let seen = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        if mode == Collector::Hangs {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let grpc = path.ends_with("/Export");
                        seen.lock().unwrap().push((path, body));
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        if grpc {
                            resp.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            resp.headers_mut()
                                .insert("grpc-status", "0".parse().unwrap());
                        } else {
                            *resp.status_mut() = hyper::StatusCode::ACCEPTED;
                        }
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((port, received))
}

/// The app behind the inbound sidecar: answers with the request headers it got as JSON;
/// `/fail` answers 503.
async fn echo_backend() -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let headers: BTreeMap<String, String> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(
                        serde_json::to_vec(&headers).unwrap(),
                    )));
                    if req.uri().path() == "/fail" {
                        *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(port)
}

enum Provider {
    Zipkin,
    OtlpHttp,
    OtlpGrpc,
}

/// The HCM `tracing` block as istiod writes it (sampling, istio tags, provider).
fn tracing_block(provider: &Provider, timeout: &str) -> String {
    let provider = match provider {
        Provider::Zipkin => format!(
            r#"name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_endpoint_version: HTTP_JSON
                trace_id_128bit: true
                shared_span_context: false
                collector_service:
                  http_uri: {{uri: "http://zipkin.istio-system.svc.cluster.local/api/v2/spans", cluster: collector, timeout: {timeout}}}"#
        ),
        Provider::OtlpHttp => format!(
            r#"name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: client.default
                http_service:
                  http_uri: {{uri: "otel-collector.observability.svc.cluster.local/v1/traces", cluster: collector, timeout: {timeout}}}"#
        ),
        Provider::OtlpGrpc => format!(
            r#"name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: client.default
                grpc_service:
                  envoy_grpc: {{cluster_name: collector, authority: otel-collector.observability.svc.cluster.local}}
                  timeout: {timeout}"#
        ),
    };
    format!(
        r#"tracing:
            client_sampling: {{value: 100}}
            random_sampling: {{value: 100}}
            overall_sampling: {{value: 100}}
            custom_tags:
            - {{tag: istio.canonical_revision, literal: {{value: latest}}}}
            - {{tag: istio.canonical_service, literal: {{value: client}}}}
            - {{tag: istio.mesh_id, literal: {{value: cluster.local}}}}
            - {{tag: istio.namespace, literal: {{value: default}}}}
            provider:
              {provider}"#
    )
}

/// One sidecar's bootstrap: a listener (`outbound` or `inbound`) whose route goes to
/// `upstream`, traced with `provider` to the `collector` cluster.
fn bootstrap(path: &std::path::Path, side: Side, provider: &Provider, timeout: &str) -> Result<()> {
    let tracing = tracing_block(provider, timeout);
    let (name, direction, op) = match side.inbound {
        false => ("outbound", "OUTBOUND", OUT_OP),
        true => ("inbound", "INBOUND", "inbound|80||"),
    };
    let Side {
        admin,
        listen,
        upstream,
        collector,
        ..
    } = side;
    let cluster = |name: &str, port: u16| {
        format!(
            r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
        )
    };
    let yaml = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          {tracing}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 10s}}
                decorator: {{operation: "{op}"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{}{}"#,
        cluster("upstream", upstream),
        cluster("collector", collector),
    );
    std::fs::write(path, yaml)?;
    Ok(())
}

#[derive(Clone, Copy)]
struct Side {
    inbound: bool,
    admin: u16,
    listen: u16,
    upstream: u16,
    collector: u16,
}

/// The client's sidecar and the server's, each its own mast-proxy.
struct Proxy {
    _dir: tempfile::TempDir,
    procs: Vec<mast_e2e::Proc>,
    sides: [Side; 2],
}

async fn start(provider: Provider, collector: u16, timeout: &str) -> Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let backend = echo_backend().await?;
    let inbound = Side {
        inbound: true,
        admin: free_port(),
        listen: free_port(),
        upstream: backend,
        collector,
    };
    let outbound = Side {
        inbound: false,
        admin: free_port(),
        listen: free_port(),
        upstream: inbound.listen,
        collector,
    };
    let mut procs = Vec::new();
    for side in [outbound, inbound] {
        let name = if side.inbound { "server" } else { "client" };
        let path = dir.path().join(format!("{name}.yaml"));
        bootstrap(&path, side, &provider, timeout)?;
        procs.push(mast_e2e::Proc::spawn(
            name,
            std::process::Command::new(mast_e2e::bin("mast-proxy"))
                .arg("--config")
                .arg(&path)
                .args(["--stats-port", &free_port().to_string()])
                .args([
                    "--status-port",
                    &free_port().to_string(),
                    "--agent-port",
                    "0",
                ])
                .args(["--drain", "1s", "--concurrency", "1"]),
            dir.path().join(format!("{name}.log")),
        )?);
        let admin = side.admin;
        eventually("mast-proxy ready", Duration::from_secs(10), || async move {
            let (status, body) = HttpClient::new()
                .get(&format!("http://127.0.0.1:{admin}/ready"), None, &[])
                .await?;
            ensure!(status == 200, "{status} {body}");
            Ok(())
        })
        .await?;
    }
    Ok(Proxy {
        _dir: dir,
        procs,
        sides: [outbound, inbound],
    })
}

impl Proxy {
    async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, BTreeMap<String, String>)> {
        let (status, body) = HttpClient::new()
            .get(
                &format!("http://127.0.0.1:{}{path}", self.sides[0].listen),
                Some("server.default.svc.cluster.local"),
                headers,
            )
            .await?;
        let seen = serde_json::from_str(&body).unwrap_or_default();
        Ok((status.as_u16(), seen))
    }

    /// A tracer stat from the admin `/stats`, summed over both sidecars.
    async fn stat(&self, name: &str) -> Result<u64> {
        Ok(self.stat_at(0, name).await? + self.stat_at(1, name).await?)
    }

    /// A stat of one sidecar (0: the client's, 1: the server's).
    async fn stat_at(&self, side: usize, name: &str) -> Result<u64> {
        let admin = self.sides[side].admin;
        let (_, body) = HttpClient::new()
            .get(&format!("http://127.0.0.1:{admin}/stats"), None, &[])
            .await?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .with_context(|| format!("{name} not in /stats:\n{body}"))?
            .trim()
            .parse()
            .context("not a number")
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| p.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A span, whatever the wire format.
#[derive(Debug, Clone)]
struct SpanView {
    trace_id: String,
    id: String,
    parent: Option<String>,
    name: String,
    kind: &'static str,
    tags: BTreeMap<String, String>,
    error_status: bool,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode(received: &Received) -> Result<Vec<SpanView>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let mut out = Vec::new();
    for (path, body) in received.lock().unwrap().iter() {
        if path == "/api/v2/spans" {
            let list: Vec<serde_json::Value> = serde_json::from_slice(body)?;
            for s in list {
                out.push(SpanView {
                    trace_id: s["traceId"].as_str().unwrap_or("").into(),
                    id: s["id"].as_str().unwrap_or("").into(),
                    parent: s["parentId"].as_str().map(str::to_string),
                    name: s["name"].as_str().unwrap_or("").into(),
                    kind: if s["kind"] == "SERVER" {
                        "SERVER"
                    } else {
                        "CLIENT"
                    },
                    tags: s["tags"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").into()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    error_status: false,
                });
            }
            continue;
        }
        let msg = if path.ends_with("/Export") {
            ensure!(body.len() >= 5 && body[0] == 0, "not a gRPC frame");
            let len = u32::from_be_bytes(body[1..5].try_into()?) as usize;
            ensure!(
                body.len() == 5 + len,
                "frame length {len} vs {}",
                body.len()
            );
            body.slice(5..)
        } else {
            ensure!(path == "/v1/traces", "unexpected path {path}");
            body.clone()
        };
        let req = ExportTraceServiceRequest::decode(msg)?;
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value);
            ensure!(
                service == Some(Value::StringValue("client.default".into())),
                "service.name {service:?}"
            );
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(SpanView {
                        trace_id: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                        name: s.name.clone(),
                        kind: if s.kind == 2 { "SERVER" } else { "CLIENT" },
                        tags: s
                            .attributes
                            .iter()
                            .map(|a| {
                                let v = match a.value.clone().and_then(|v| v.value) {
                                    Some(Value::StringValue(s)) => s,
                                    other => format!("{other:?}"),
                                };
                                (a.key.clone(), v)
                            })
                            .collect(),
                        error_status: s.status.is_some_and(|st| st.code == 2),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The outbound and inbound spans of one trace, once both have arrived.
async fn pair(received: &Received, trace_id: &str) -> Result<(SpanView, SpanView)> {
    eventually("both spans exported", Duration::from_secs(12), || async {
        let spans = decode(received)?;
        let of_trace: Vec<&SpanView> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        let client = of_trace.iter().find(|s| s.kind == "CLIENT");
        let server = of_trace.iter().find(|s| s.kind == "SERVER");
        match (client, server) {
            (Some(c), Some(s)) => Ok(((*c).clone(), (*s).clone())),
            _ => bail!("trace {trace_id}: {of_trace:?}"),
        }
    })
    .await
}

/// The proofs shared by every provider: the chain of parents, names, tags, errors.
async fn spans_join_the_trace(provider: Provider, w3c: bool) -> Result<()> {
    let (port, received) = collector(Collector::Answers).await?;
    let proxy = start(provider, port, "5s").await?;

    // 1. An incoming sampled context.
    let incoming: Vec<(&str, String)> = if w3c {
        vec![("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))]
    } else {
        vec![
            ("x-b3-traceid", TRACE_ID.to_string()),
            ("x-b3-spanid", CALLER_SPAN.to_string()),
            ("x-b3-sampled", "1".to_string()),
        ]
    };
    let headers: Vec<(&str, &str)> = incoming.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, seen) = proxy.get("/reviews/1", &headers).await?;
    ensure!(status == 200, "{status}: {}", proxy.logs());
    let (client, server) = pair(&received, TRACE_ID).await?;
    ensure!(client.parent.as_deref() == Some(CALLER_SPAN), "{client:?}");
    ensure!(
        server.parent.as_deref() == Some(client.id.as_str()),
        "{server:?} {client:?}"
    );
    ensure!(server.id != client.id);
    // The app's parent is the inbound span.
    if w3c {
        let tp = &seen["traceparent"];
        ensure!(
            tp == &format!("00-{TRACE_ID}-{}-01", server.id),
            "{tp} vs {server:?}"
        );
    } else {
        ensure!(seen["x-b3-traceid"] == TRACE_ID, "{seen:?}");
        ensure!(seen["x-b3-spanid"] == server.id, "{seen:?} {server:?}");
        ensure!(seen["x-b3-parentspanid"] == client.id, "{seen:?}");
        ensure!(seen["x-b3-sampled"] == "1");
    }
    // The caller's decorator names both spans; the header stops at the inbound sidecar.
    ensure!(
        client.name == OUT_OP && server.name == OUT_OP,
        "{client:?} {server:?}"
    );
    ensure!(
        !seen.contains_key("x-envoy-decorator-operation"),
        "{seen:?}"
    );
    // The request id carries the sampling reason (9) and is tagged on both spans.
    let rid = &seen["x-request-id"];
    ensure!(rid.len() == 36 && &rid[14..15] == "9", "{rid}");
    for s in [&client, &server] {
        let t = &s.tags;
        ensure!(t.get("guid:x-request-id") == Some(rid), "{s:?}");
        ensure!(
            t.get("http.status_code").map(String::as_str) == Some("200"),
            "{s:?}"
        );
        ensure!(
            t.get("http.method").map(String::as_str) == Some("GET"),
            "{s:?}"
        );
        ensure!(
            t.get("component").map(String::as_str) == Some("proxy"),
            "{s:?}"
        );
        ensure!(
            t.get("response_flags").map(String::as_str) == Some("-"),
            "{s:?}"
        );
        ensure!(t.get("istio.canonical_service").map(String::as_str) == Some("client"));
        ensure!(t.get("istio.mesh_id").map(String::as_str) == Some("cluster.local"));
        ensure!(t.get("istio.namespace").map(String::as_str) == Some("default"));
        ensure!(
            t.contains_key("node_id") && t.contains_key("peer.address"),
            "{s:?}"
        );
        ensure!(!t.contains_key("error"), "{s:?}");
    }
    ensure!(
        client.tags.get("upstream_cluster").map(String::as_str) == Some("upstream"),
        "{client:?}"
    );
    ensure!(server.tags.get("upstream_cluster").map(String::as_str) == Some("upstream"));
    ensure!(
        client.tags.get("http.url").map(String::as_str)
            == Some("http://server.default.svc.cluster.local/reviews/1"),
        "{client:?}"
    );

    // 2. No incoming context, and a 503: a new trace, both spans errors.
    let (status, seen) = proxy.get("/fail", &[]).await?;
    ensure!(status == 503, "{status}");
    let trace_id = if w3c {
        seen["traceparent"]
            .split('-')
            .nth(1)
            .unwrap_or("")
            .to_string()
    } else {
        seen["x-b3-traceid"].clone()
    };
    ensure!(trace_id.len() == 32 && trace_id != TRACE_ID, "{seen:?}");
    let (client, server) = pair(&received, &trace_id).await?;
    ensure!(client.parent.is_none(), "a root: {client:?}");
    ensure!(server.parent.as_deref() == Some(client.id.as_str()));
    for s in [&client, &server] {
        ensure!(
            s.tags.get("error").map(String::as_str) == Some("true"),
            "{s:?}"
        );
        ensure!(s.tags.get("http.status_code").map(String::as_str) == Some("503"));
        ensure!(w3c == s.error_status, "OTLP status ERROR: {s:?}");
    }

    // 3. The caller said "not sampled": context goes on, no spans.
    let unsampled = "1234567890abcdef1234567890abcdef";
    let headers: Vec<(String, String)> = if w3c {
        vec![(
            "traceparent".into(),
            format!("00-{unsampled}-{CALLER_SPAN}-00"),
        )]
    } else {
        vec![
            ("x-b3-traceid".into(), unsampled.into()),
            ("x-b3-spanid".into(), CALLER_SPAN.into()),
            ("x-b3-sampled".into(), "0".into()),
        ]
    };
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (_, seen) = proxy.get("/x", &h).await?;
    let passed = if w3c {
        &seen["traceparent"]
    } else {
        &seen["x-b3-traceid"]
    };
    ensure!(passed.contains(unsampled), "{seen:?}");
    // Another traced request flushes with it; the unsampled trace never shows up.
    proxy.get("/y", &[]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !decode(&received)?.iter().any(|s| s.trace_id == unsampled),
        "an unsampled trace was exported"
    );
    // Envoy's decision stats: four requests, each sampled by its request id at 100%.
    let out = proxy
        .stat_at(0, "http.outbound.tracing.random_sampling")
        .await?;
    let inb = proxy
        .stat_at(1, "http.inbound.tracing.random_sampling")
        .await?;
    ensure!(out == 4 && inb == 4, "random_sampling {out} / {inb}");
    ensure!(
        proxy
            .stat_at(0, "http.outbound.tracing.not_traceable")
            .await?
            == 0
    );
    let mut proxy = proxy;
    for p in &mut proxy.procs {
        p.check_running()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipkin_spans_join_the_incoming_b3_trace() -> Result<()> {
    spans_join_the_trace(Provider::Zipkin, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_spans_join_the_incoming_w3c_trace() -> Result<()> {
    spans_join_the_trace(Provider::OtlpHttp, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_spans_join_the_incoming_w3c_trace() -> Result<()> {
    spans_join_the_trace(Provider::OtlpGrpc, true).await
}

/// A dead collector (connection refused) and a hung one (never answers): every request is
/// answered at once, and what could not be exported is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_hung_collectors_cost_spans_not_requests() -> Result<()> {
    // Nothing listens on the collector's port.
    let dead = start(Provider::Zipkin, free_port(), "5s").await?;
    let url = format!("http://127.0.0.1:{}/", dead.sides[0].listen);
    let t = Instant::now();
    let tally = send_requests(&url, "server", &[], 200, 8).await;
    ensure!(tally.failures() == 0, "{tally:?}");
    let took = t.elapsed();
    eventually(
        "reports_failed counted",
        Duration::from_secs(10),
        || async {
            let failed = dead.stat("tracing.zipkin.reports_failed").await?;
            ensure!(failed >= 1, "reports_failed {failed}");
            Ok(())
        },
    )
    .await?;
    ensure!(dead.stat("tracing.zipkin.spans_sent").await? >= 5);
    eprintln!("dead collector: 200 requests in {took:?}");

    // A collector that takes the connection and never answers (export timeout 60 s): the
    // exporter's queue fills and further spans are dropped, never waited for.
    let (port, _received) = collector(Collector::Hangs).await?;
    let hung = start(Provider::OtlpHttp, port, "60s").await?;
    let url = format!("http://127.0.0.1:{}/", hung.sides[0].listen);
    let t = Instant::now();
    let tally = send_requests(&url, "server", &[], 3000, 16).await;
    let took = t.elapsed();
    ensure!(tally.failures() == 0, "{tally:?}");
    let dropped = hung.stat("tracing.opentelemetry.spans_dropped").await?;
    // Each sidecar makes 3,000 spans against a queue of 1,024 (`max_cache_size`).
    ensure!(dropped >= 1500, "spans_dropped {dropped}");
    let (_, prom) = HttpClient::new()
        .get(
            &format!("http://127.0.0.1:{}/stats/prometheus", hung.sides[0].admin),
            None,
            &[],
        )
        .await?;
    let series: u64 = prom
        .lines()
        .find_map(|l| l.strip_prefix("envoy_tracing_opentelemetry_spans_dropped "))
        .context("no envoy_tracing_opentelemetry_spans_dropped")?
        .trim()
        .parse()?;
    ensure!(series > 0 && series <= dropped, "{series} of {dropped}");
    // With the queue full and the export hung, a request still takes milliseconds.
    let t1 = Instant::now();
    let (status, _) = hung.get("/", &[]).await?;
    ensure!(status == 200);
    let one = t1.elapsed();
    ensure!(one < Duration::from_secs(1), "a request took {one:?}");
    eprintln!(
        "hung collector: 3000 requests in {took:?}, {dropped} spans dropped, then one request in {one:?}"
    );
    Ok(())
}
