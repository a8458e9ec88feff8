//! mastd's trace store end to end (issue 20 §3): a real Envoy's OpenTelemetry tracer
//! (OTLP over gRPC) and Zipkin tracer (v2 JSON over HTTP) export to mastd's receiver, and
//! the spans come back from mastd's Jaeger-shaped query API (`/api/traces`, `/api/traces/
//! {id}`, `/api/services`) on the telemetry port; mastd's own work (a config edit: change,
//! debounce, read, validate, publish) is a trace of service `mastd` in the same store.
//!
//! Envoy runs on a static bootstrap (no control plane needed for its tracer): one listener
//! per tracer, direct responses (200 on `/`, 503 on `/fail`), 100% sampling.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mast_e2e::{HttpClient, Mastd, Proc, envoy_bin, eventually, free_port};
use serde_json::Value;

const OTEL_SERVICE: &str = "front.default";
const ZIPKIN_SERVICE: &str = "zipkin-front.default";

fn bootstrap(admin: u16, otel: u16, zipkin: u16, grpc: u16, http: u16) -> String {
    let routes = r#"
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/fail"}
                direct_response: {status: 503}
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "ok"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"#;
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.min_flush_spans: 1
      tracing.zipkin.min_flush_spans: 1
static_resources:
  listeners:
  - name: otel
    address: {{socket_address: {{address: 127.0.0.1, port_value: {otel}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: otel
          tracing:
            random_sampling: {{value: 100}}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: {OTEL_SERVICE}
                grpc_service:
                  envoy_grpc: {{cluster_name: mastd-otlp}}
                  timeout: 2s{routes}
  - name: zipkin
    address: {{socket_address: {{address: 127.0.0.1, port_value: {zipkin}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: zipkin
          tracing:
            random_sampling: {{value: 100}}
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: mastd-http
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
                shared_span_context: false{routes}
  clusters:
  - name: mastd-otlp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: mastd-otlp
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {grpc}}}}}}}}}]}}]
  - name: mastd-http
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: mastd-http
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}}}}}]}}]
"#
    )
}

async fn get_json(client: &HttpClient, url: &str) -> Result<Value> {
    let (status, body) = client.get(url, None, &[]).await?;
    ensure!(status.is_success(), "{url}: {status} {body}");
    serde_json::from_str(&body).with_context(|| format!("{url}: not JSON: {body}"))
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The traces of `query`, once at least `want` are there.
async fn traces(client: &HttpClient, base: &str, query: &str, want: usize) -> Result<Vec<Value>> {
    eventually(
        &format!("{want} traces for {query}"),
        Duration::from_secs(20),
        || async {
            let body = get_json(client, &format!("{base}/api/traces?{query}")).await?;
            let data = body["data"].as_array().cloned().unwrap_or_default();
            ensure!(data.len() >= want, "{} traces so far", data.len());
            Ok(data)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_exports_to_mastd_and_the_trace_api_answers() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = work.path().join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(
        config.join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: user, namespace: default}\n\
         spec: {selector: {app: user}, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    )?;
    let (grpc, http) = (free_port(), free_port());
    let mastd = Mastd::launch_with_args(
        &config,
        work.path(),
        ([127, 0, 0, 1], free_port()).into(),
        ([127, 0, 0, 1], free_port()).into(),
        None,
        &[
            "--otlp-grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http-addr",
            &format!("127.0.0.1:{http}"),
        ],
    )
    .await?;
    let base = format!("http://{}", mastd.telemetry_addr);
    let client = HttpClient::new();
    let services_url = format!("{base}/api/services");
    eventually("mastd's telemetry API", Duration::from_secs(15), || {
        get_json(&client, &services_url)
    })
    .await?;

    let (admin, otel, zipkin) = (free_port(), free_port(), free_port());
    let yaml = work.path().join("envoy.yaml");
    std::fs::write(&yaml, bootstrap(admin, otel, zipkin, grpc, http))?;
    let _envoy = Proc::spawn(
        "envoy",
        std::process::Command::new(envoy_bin())
            .arg("-c")
            .arg(&yaml)
            .args([
                "--service-cluster",
                ZIPKIN_SERVICE,
                "--service-node",
                "front-1",
            ])
            .args(["--base-id", &admin.to_string(), "--concurrency", "1"]),
        work.path().join("envoy.log"),
    )?;
    for port in [otel, zipkin] {
        eventually("Envoy's listener", Duration::from_secs(20), || async {
            let (s, _) = client
                .get(&format!("http://127.0.0.1:{port}/"), None, &[])
                .await?;
            ensure!(s == 200, "{s}");
            Ok(())
        })
        .await?;
    }
    for port in [otel, zipkin] {
        for path in ["/ok/1", "/ok/2", "/fail"] {
            client
                .get(&format!("http://127.0.0.1:{port}{path}"), None, &[])
                .await?;
        }
    }

    // OpenTelemetry tracer → OTLP/gRPC. The listener probe above made one more trace.
    let found = traces(
        &client,
        &base,
        &format!("service={OTEL_SERVICE}&limit=50"),
        4,
    )
    .await?;
    for t in &found {
        let span = &t["spans"][0];
        ensure!(t["traceID"].as_str().is_some_and(|s| s.len() == 32), "{t}");
        ensure!(
            span["spanID"].as_str().is_some_and(|s| s.len() == 16),
            "{span}"
        );
        ensure!(
            span["startTime"]
                .as_u64()
                .is_some_and(|us| us > 1_600_000_000_000_000),
            "µs: {span}"
        );
        ensure!(span["duration"].as_u64().is_some(), "{span}");
        let pid = span["processID"].as_str().context("processID")?;
        ensure!(t["processes"][pid]["serviceName"] == OTEL_SERVICE, "{t}");
    }
    eprintln!(
        "{} OpenTelemetry traces from Envoy, e.g. span {:?} of {} µs",
        found.len(),
        found[0]["spans"][0]["operationName"],
        found[0]["spans"][0]["duration"]
    );
    let failed = traces(
        &client,
        &base,
        &format!("service={OTEL_SERVICE}&errors=true"),
        1,
    )
    .await?;
    ensure!(failed.len() == 1, "one failed trace: {failed:?}");
    let span = &failed[0]["spans"][0];
    ensure!(
        tag(span, "http.status_code").is_some_and(|v| v == "503"),
        "Envoy's status tag: {span}"
    );
    ensure!(
        tag(span, "error").is_some_and(|v| v == "true" || v == true),
        "{span}"
    );
    let id = failed[0]["traceID"].as_str().context("traceID")?;
    let one = get_json(&client, &format!("{base}/api/traces/{id}")).await?;
    ensure!(one["data"][0]["traceID"] == id, "{one}");

    // Zipkin tracer → Zipkin v2 JSON on the OTLP/HTTP port.
    let zipkin_traces = traces(&client, &base, &format!("service={ZIPKIN_SERVICE}"), 4).await?;
    let zipkin_failed = zipkin_traces
        .iter()
        .filter(|t| {
            t["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| tag(s, "error").is_some())
        })
        .count();
    ensure!(
        zipkin_failed == 1,
        "one failed Zipkin trace of {}",
        zipkin_traces.len()
    );

    // mastd's own work: a config edit is a trace of service mastd.
    std::fs::write(
        config.join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: user, namespace: default}\n\
         spec: {selector: {app: user}, ports: [{name: http, port: 81, targetPort: 8080}]}\n",
    )?;
    let change = eventually(
        "mastd's config.change trace",
        Duration::from_secs(20),
        || async {
            for t in traces(&client, &base, "service=mastd&operation=config.change", 1).await? {
                let spans = t["spans"].as_array().cloned().unwrap_or_default();
                let root = spans.iter().find(|s| s["operationName"] == "config.change");
                if root.is_some_and(|r| tag(r, "changed") == Some(&Value::Bool(true))) {
                    return Ok(t);
                }
            }
            bail!("no config.change with changed=true yet")
        },
    )
    .await?;
    let spans = change["spans"].as_array().context("spans")?;
    eprintln!(
        "mastd's change trace: {:?}",
        spans
            .iter()
            .map(|s| format!("{} {} µs", s["operationName"], s["duration"]))
            .collect::<Vec<_>>()
    );
    let by = |name: &str| spans.iter().find(|s| s["operationName"] == name);
    let root = by("config.change").context("config.change")?;
    for child in [
        "config.debounce",
        "config.read",
        "config.validate",
        "config.publish",
    ] {
        let s = by(child).with_context(|| format!("no {child} in {change}"))?;
        ensure!(
            s["references"][0]["spanID"] == root["spanID"],
            "{child} is a child of config.change: {s}"
        );
    }
    let services = get_json(&client, &format!("{base}/api/services")).await?;
    for s in [OTEL_SERVICE, ZIPKIN_SERVICE, "mastd"] {
        ensure!(
            services["data"]
                .as_array()
                .is_some_and(|l| l.iter().any(|v| v == s)),
            "/api/services lists {s}: {services}"
        );
    }
    Ok(())
}

// === the xDS push and its ACK in the change's trace ===

const CLIENT: mast_e2e::PodSpec<'static> = mast_e2e::PodSpec {
    name: "client-1",
    namespace: "default",
    labels: &[("app", "client")],
    service_account: "client",
};

/// A Service `name` on `port`: a sidecar in NONE interception mode listens on 127.0.0.1:port.
fn service(name: &str, port: u16, protocol: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{name: {protocol}, port: {port}, targetPort: 8080}}]}}\n"
    )
}

/// The field `key` of a span log (an OpenTelemetry event) as text.
fn field(log: &Value, key: &str) -> Option<String> {
    let v = log["fields"]
        .as_array()?
        .iter()
        .find(|f| f["key"] == key)
        .map(|f| &f["value"])?;
    Some(
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
    )
}

/// The events named `name` of a span.
fn events<'a>(span: &'a Value, name: &str) -> Vec<&'a Value> {
    span["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| field(l, "event").as_deref() == Some(name))
        .collect()
}

/// The trace of the config change whose push to the client sidecar ended with `outcome`,
/// and that push's span.
async fn push_trace(client: &HttpClient, base: &str, outcome: &str) -> Result<(Value, Value)> {
    eventually(
        &format!("a config.change trace with an xds.push {outcome}"),
        Duration::from_secs(30),
        || async {
            let url = format!("{base}/api/traces?service=mastd&operation=xds.push&limit=100");
            let body = get_json(client, &url).await?;
            for t in body["data"].as_array().into_iter().flatten() {
                let spans = t["spans"].as_array().cloned().unwrap_or_default();
                let push = spans.iter().find(|s| {
                    s["operationName"] == "xds.push"
                        && tag(s, "outcome").is_some_and(|v| v == outcome)
                        && tag(s, "proxy")
                            .and_then(Value::as_str)
                            .is_some_and(|p| p.contains("client-1.default"))
                });
                if let Some(push) = push {
                    return Ok((t.clone(), push.clone()));
                }
            }
            let all = get_json(
                client,
                &format!("{base}/api/traces?service=mastd&limit=100"),
            )
            .await?;
            let seen: Vec<String> = all["data"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|t| t["spans"].as_array().cloned().unwrap_or_default())
                .map(|s| format!("{} {}", s["operationName"], s["tags"]))
                .collect();
            bail!("none yet; mastd's spans: {seen:?}")
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_push_ack_and_nack_are_in_the_change_trace() -> Result<()> {
    push_ack_and_nack_are_in_the_change_trace(mast_e2e::SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mast_proxy_push_ack_and_nack_are_in_the_change_trace() -> Result<()> {
    push_ack_and_nack_are_in_the_change_trace(mast_e2e::SidecarKind::Mast).await
}

/// A config change made while a real sidecar is connected is one trace: config.change, its
/// debounce/read/validate/publish, and under it the push to the sidecar (`xds.push`) with
/// the responses sent and the sidecar's ACKs as events. A change the sidecar rejects (an
/// outbound listener on a port something else holds: Envoy and mast-proxy both NACK it)
/// shows the NACK with its detail, as an error.
async fn push_ack_and_nack_are_in_the_change_trace(kind: mast_e2e::SidecarKind) -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = work.path().join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(
        config.join("user.yaml"),
        service("user", free_port(), "http"),
    )?;
    let mastd = Mastd::launch_with_args(
        &config,
        work.path(),
        ([127, 0, 0, 1], free_port()).into(),
        ([127, 0, 0, 1], free_port()).into(),
        None,
        &[
            "--otlp-grpc-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--otlp-http-addr",
            &format!("127.0.0.1:{}", free_port()),
        ],
    )
    .await?;
    let base = format!("http://{}", mastd.telemetry_addr);
    let client = HttpClient::new();
    let _sidecar = mast_e2e::Sidecar::start_kind(
        kind,
        &CLIENT,
        "127.0.0.1",
        mastd.xds_addr,
        work.path(),
        false,
    )
    .await?;
    // The sidecar has its first config (not traced: no change caused it).
    eventually(
        "the sidecar ACKs its first config",
        Duration::from_secs(30),
        || async {
            let syncz = mastd.debug_json("/debug/syncz").await?;
            let types = &syncz[0]["types"];
            for t in ["cds", "lds"] {
                ensure!(
                    !types[t]["acked_version"].is_null(),
                    "{t} not ACKed: {syncz}"
                );
            }
            Ok(())
        },
    )
    .await?;

    // A good change: pushed, ACKed, in the change's trace.
    std::fs::write(
        config.join("todo.yaml"),
        service("todo", free_port(), "http"),
    )?;
    let (trace, push) = push_trace(&client, &base, "acked").await?;
    let spans = trace["spans"].as_array().context("spans")?;
    let root = spans
        .iter()
        .find(|s| s["operationName"] == "config.change")
        .with_context(|| format!("no config.change in {trace}"))?;
    ensure!(
        push["references"][0]["spanID"] == root["spanID"],
        "xds.push is a child of config.change: {push}"
    );
    ensure!(tag(&push, "error").is_none(), "{push}");
    let sent = events(&push, "xds.send");
    let acked = events(&push, "xds.ack");
    ensure!(
        !events(&push, "xds.generate").is_empty(),
        "no xds.generate: {push}"
    );
    let types = |events: &[&Value]| -> std::collections::BTreeSet<String> {
        events.iter().filter_map(|e| field(e, "type_url")).collect()
    };
    ensure!(
        !sent.is_empty() && types(&sent) == types(&acked),
        "every type sent is ACKed: {push}"
    );
    ensure!(
        sent.iter()
            .any(|e| field(e, "type_url").is_some_and(|t| t.ends_with("Listener"))),
        "the new listener was sent: {push}"
    );
    for e in &sent {
        ensure!(
            field(e, "bytes")
                .and_then(|b| b.parse::<u64>().ok())
                .is_some_and(|b| b > 0),
            "bytes of {e}"
        );
    }
    ensure!(
        tag(&push, "bytes").is_some()
            && tag(&push, "resources").is_some()
            && tag(&push, "types").is_some(),
        "{push}"
    );
    eprintln!(
        "{kind}: push of {} µs, {} responses, tags {}",
        push["duration"],
        sent.len(),
        push["tags"]
    );

    // A change the sidecar NACKs: a TCP service on a port this test holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    std::fs::write(config.join("db.yaml"), service("db", port, "tcp"))?;
    let (_, push) = push_trace(&client, &base, "nacked").await?;
    let nacks = events(&push, "xds.nack");
    ensure!(!nacks.is_empty(), "no xds.nack event: {push}");
    let detail = field(nacks[0], "error").context("NACK without its error")?;
    ensure!(
        detail.contains(&port.to_string()) || detail.contains("in use"),
        "{detail}"
    );
    ensure!(
        tag(&push, "error").is_some_and(|v| v == true || v == "true"),
        "a NACKed push is an error: {push}"
    );
    eprintln!("{kind}: NACK in the trace: {detail}");
    drop(taken);
    Ok(())
}
