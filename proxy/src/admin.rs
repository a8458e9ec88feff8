//! Admin, health and stats servers, on Envoy's and Istio's ports and paths.
//!
//! `127.0.0.1:15000` is Envoy's admin (`/config_dump`, `/clusters`, `/listeners`, `/stats`,
//! `/ready`, `/quitquitquit`, `/logging`, `/server_info`), loopback-only because it can stop
//! the proxy; `:15021/healthz/ready` is what Kubernetes probes; `:15090/stats/prometheus` is
//! what Prometheus scrapes. Same shapes as Envoy's so `istioctl proxy-config`-style tooling
//! and dashboards read them unchanged. pilot-agent's `:15020` is [`crate::agent`].
//!
//! One path is Mast's own: `GET /debug/xds_digest` says what xDS config the proxy holds in a
//! few bytes, so that a benchmark (pilot-load's `--real-proxies`) or an operator can check that
//! two proxies with the same view hold the same config, and poll it cheaply:
//!
//! ```json
//! {"digest": "<hex>", "types": {"<type URL>": {"count": 3, "digest": "<hex>"}, …}}
//! ```
//!
//! `digest` covers every type that holds something; each type's covers its sorted
//! `(name, SHA-256 of the resource's bytes as received)` pairs (see [`crate::state::digest`]
//! for the exact formula). `?resources=1` adds `"resources": {"<name>": "<hex>", …}` per type,
//! to find which resource differs.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mast_proto::config_dump::ConfigDumpBuilder;
use tokio::net::TcpListener;

use crate::listen::Listeners;
use crate::shared::Shared;

/// Which of the three servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Status,
    Stats,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr).await?;
    crate::upstream::loop_guard::listening(l.local_addr()?);
    Ok(l)
}

/// Serve one of the admin-side servers until the process exits.
pub async fn serve(
    listener: TcpListener,
    role: Role,
    shared: Arc<Shared>,
    listeners: Arc<Listeners>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        let listeners = Arc::clone(&listeners);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                let listeners = Arc::clone(&listeners);
                async move { Ok::<_, Infallible>(route(role, &shared, &listeners, req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Readiness as Kubernetes reads it, on `:15021/healthz/ready`, the agent's
/// `:15020/healthz/ready` and the admin `/ready`.
pub(crate) fn ready(shared: &Shared) -> Response<Full<Bytes>> {
    if *shared.drain.borrow() {
        text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
    } else if shared.is_ready() {
        text(StatusCode::OK, "LIVE\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
    }
}

fn route(
    role: Role,
    shared: &Shared,
    listeners: &Listeners,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (role, path) {
        (Role::Status, "/healthz/ready") | (Role::Admin, "/ready") => ready(shared),
        (Role::Stats, "/stats/prometheus") | (Role::Admin, "/stats/prometheus") => {
            let mut r = text(StatusCode::OK, prometheus_exposition(shared));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (Role::Admin, "/stats") => text(
            StatusCode::OK,
            envoy_stats(shared) + &listeners.worker_stats(),
        ),
        (Role::Admin, "/config_dump") => match config_dump(shared) {
            Ok(v) => json(&v),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (Role::Admin, "/clusters") => {
            if query.contains("format=json") {
                json(&clusters_json(shared))
            } else {
                text(StatusCode::OK, clusters_text(shared))
            }
        }
        (Role::Admin, "/listeners") => {
            let snap = shared.store.current.load();
            let bound = listeners.addresses();
            let mut out = String::new();
            for l in &snap.listeners {
                let _ = writeln!(out, "{}::{}", l.name, l.addr);
            }
            if query.contains("format=json") {
                return json(&serde_json::json!({
                    "listener_statuses": snap.listeners.iter().map(|l| serde_json::json!({
                        "name": l.name,
                        "local_address": {"socket_address": {"address": l.addr.ip().to_string(), "port_value": l.addr.port()}},
                        "bound": bound.iter().any(|(n, _)| n == &l.name),
                    })).collect::<Vec<_>>()
                }));
            }
            text(StatusCode::OK, out)
        }
        (Role::Admin, "/quitquitquit") if req.method() == Method::POST => {
            tracing::info!("/quitquitquit: draining");
            shared.start_drain();
            text(StatusCode::OK, "OK\n")
        }
        (Role::Admin, "/quitquitquit") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (Role::Admin, "/logging") => {
            let level = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("level="))
                .map(str::to_string);
            match (level, &shared.log_reload) {
                (Some(level), Some(reload)) if req.method() == Method::POST => match reload(&level)
                {
                    Ok(()) => text(
                        StatusCode::OK,
                        format!("active loggers:\n  mast: {level}\n"),
                    ),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
                (Some(_), _) if req.method() != Method::POST => {
                    text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
                }
                _ => text(
                    StatusCode::OK,
                    "usage: POST /logging?level=<trace|debug|info|warn|error>\n",
                ),
            }
        }
        (Role::Admin, "/server_info") => {
            let state = if *shared.drain.borrow() {
                "DRAINING"
            } else if shared.is_ready() {
                "LIVE"
            } else {
                "PRE_INITIALIZING"
            };
            let xds = shared.xds_status();
            json(&serde_json::json!({
                "version": concat!("mast-proxy/", env!("CARGO_PKG_VERSION")),
                "state": state,
                "uptime_current_epoch": format!("{}s", shared.started.elapsed().as_secs()),
                "node": {"id": shared.config.node_id()},
                "xds": {"connected": xds.connected, "mode": xds.mode, "acked": xds.acked, "last_nack": xds.last_nack},
            }))
        }
        (Role::Admin, "/certs") => json(&certs(shared)),
        (Role::Admin, "/debug/xds_digest") => json(&xds_digest(
            shared,
            query.split('&').any(|kv| kv == "resources=1"),
        )),
        (Role::Admin, "/" | "/help") => text(
            StatusCode::OK,
            "admin commands are:\n  /certs\n  /clusters\n  /config_dump\n  /debug/xds_digest\n  /listeners\n  /logging\n  /quitquitquit\n  /ready\n  /server_info\n  /stats\n  /stats/prometheus\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The proxy's Prometheus exposition (OpenMetrics), as `:15090` and the agent serve it.
pub(crate) fn prometheus_exposition(shared: &Shared) -> String {
    // OpenMetrics ends with "# EOF"; Envoy's own series go before it.
    let mut body = shared.metrics.encode();
    if body.ends_with("# EOF\n") {
        body.truncate(body.len() - "# EOF\n".len());
    }
    body.push_str(&envoy_prometheus(shared));
    body.push_str("# EOF\n");
    body
}

/// `/debug/xds_digest` (see the module doc); with `resources`, each resource's hash too.
fn xds_digest(shared: &Shared, resources: bool) -> serde_json::Value {
    use crate::state::digest;
    let res = match shared.store.resources.lock() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    let types = res.digest();
    let mut by_type = serde_json::Map::new();
    for t in types.iter().filter(|t| t.count > 0) {
        let mut entry = serde_json::json!({
            "count": t.count,
            "digest": digest::hex(&t.digest),
        });
        if resources {
            entry["resources"] = res
                .hashes(t.type_url)
                .into_iter()
                .map(|(name, hash)| (name, digest::hex(&hash).into()))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        by_type.insert(t.type_url.url().to_string(), entry);
    }
    serde_json::json!({
        "digest": digest::hex(&digest::overall(&types)),
        "types": by_type,
    })
}

/// Envoy's `/certs`: the workload certificate and trust bundle in use, with expiry.
fn certs(shared: &Shared) -> serde_json::Value {
    let Some(c) = shared.secrets.current() else {
        return serde_json::json!({ "certificates": [] });
    };
    let epoch = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let days = c.remaining().as_secs() / 86_400;
    serde_json::json!({
        "certificates": [{
            "ca_cert": [{
                "path": "<inline>",
                "count": c.roots.len(),
            }],
            "cert_chain": [{
                "path": "<inline>",
                "subject_alt_names": [{ "uri": c.spiffe }],
                "days_until_expiration": days.to_string(),
                "seconds_until_expiration": c.remaining().as_secs().to_string(),
                "valid_from": epoch(c.not_before).to_string(),
                "expiration_time": epoch(c.not_after).to_string(),
            }],
        }]
    })
}

/// Envoy's `/config_dump` JSON, from the resources as received.
fn config_dump(shared: &Shared) -> Result<serde_json::Value, String> {
    let res = match shared.store.resources.lock() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    let mut b = ConfigDumpBuilder::new();
    b.clusters_version(res.clusters.version.clone());
    for item in res.clusters.items.values() {
        b.dynamic_cluster(item.version.clone(), item.any.clone(), Some(item.updated));
    }
    b.listeners_version(res.listeners.version.clone());
    for (name, item) in &res.listeners.items {
        b.dynamic_listener(
            name.clone(),
            item.version.clone(),
            item.any.clone(),
            Some(item.updated),
        );
    }
    for item in res.routes.items.values() {
        b.dynamic_route_config(item.version.clone(), item.any.clone(), Some(item.updated));
    }
    for item in res.endpoints.items.values() {
        b.dynamic_endpoint_config(item.version.clone(), item.any.clone(), Some(item.updated));
    }
    for (name, item) in &res.secrets.items {
        b.dynamic_secret(
            name.clone(),
            item.version.clone(),
            redacted_secret(&item.any),
            Some(item.updated),
        );
    }
    drop(res);
    // A private pool, freed after rendering: dumps are rare, the memory is not.
    let pool = mast_proto::json::fresh_pool().map_err(|e| e.to_string())?;
    b.to_json_in(&pool).map_err(|e| e.to_string())
}

/// A secret as Envoy dumps it: the private key replaced by `[redacted]`.
fn redacted_secret(
    any: &envoy_types::pb::google::protobuf::Any,
) -> envoy_types::pb::google::protobuf::Any {
    use envoy_types::pb::envoy::config::core::v3::DataSource;
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    use prost::Message as _;
    let Ok(mut secret) = Secret::decode(any.value.as_slice()) else {
        return any.clone();
    };
    if let Some(Type::TlsCertificate(t)) = &mut secret.r#type
        && t.private_key.is_some()
    {
        t.private_key = Some(DataSource {
            specifier: Some(Specifier::InlineString("[redacted]".into())),
            ..Default::default()
        });
    }
    envoy_types::pb::google::protobuf::Any {
        type_url: any.type_url.clone(),
        value: secret.encode_to_vec(),
    }
}

/// Envoy's `/clusters` text: `cluster::host::stat::value` lines.
fn clusters_text(shared: &Shared) -> String {
    let snap = shared.store.current.load();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    let now = Instant::now();
    for name in names {
        let c = &snap.clusters[name];
        let l = c.config.limits;
        let _ = writeln!(
            out,
            "{name}::default_priority::max_connections::{}",
            l.max_connections
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_pending_requests::{}",
            l.max_pending
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_requests::{}",
            l.max_requests
        );
        let _ = writeln!(
            out,
            "{name}::default_priority::max_retries::{}",
            l.max_retries
        );
        let _ = writeln!(
            out,
            "{name}::outlier::ejections::{}",
            c.stats.outlier_ejections.load(Ordering::Relaxed)
        );
        for h in c.hosts().iter() {
            let a = &h.addr;
            let health = match (h.healthy, h.is_ejected(now)) {
                (_, true) => "/failed_outlier_check",
                (false, _) => "/failed_eds_health",
                (true, false) => "healthy",
            };
            let _ = writeln!(
                out,
                "{name}::{a}::rq_active::{}",
                h.active.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{name}::{a}::rq_total::{}",
                h.rq_total.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{name}::{a}::rq_error::{}",
                h.rq_error.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{name}::{a}::cx_connect_fail::{}",
                h.cx_connect_fail.load(Ordering::Relaxed)
            );
            let _ = writeln!(out, "{name}::{a}::weight::{}", h.weight);
            let _ = writeln!(out, "{name}::{a}::health_flags::{health}");
        }
    }
    out
}

fn clusters_json(shared: &Shared) -> serde_json::Value {
    let snap = shared.store.current.load();
    let now = Instant::now();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let statuses: Vec<serde_json::Value> = names
        .into_iter()
        .map(|name| {
            let c = &snap.clusters[name];
            serde_json::json!({
                "name": name,
                "host_statuses": c.hosts().iter().map(|h| serde_json::json!({
                    "address": h.addr.to_string(),
                    "stats": [
                        {"name": "rq_total", "value": h.rq_total.load(Ordering::Relaxed)},
                        {"name": "rq_error", "value": h.rq_error.load(Ordering::Relaxed)},
                        {"name": "rq_active", "value": h.active.load(Ordering::Relaxed)},
                    ],
                    "health_status": {
                        "eds_health_status": if h.healthy { "HEALTHY" } else { "UNHEALTHY" },
                        "failed_outlier_check": h.is_ejected(now),
                    },
                    "weight": h.weight,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "cluster_statuses": statuses })
}

/// Envoy-style counters (`cluster.<name>.upstream_rq_total: N`).
fn envoy_stats(shared: &Shared) -> String {
    let snap = shared.store.current.load();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let s = &snap.clusters[name].stats;
        for (stat, v) in [
            ("upstream_rq_total", &s.upstream_rq_total),
            ("upstream_rq_retry", &s.upstream_rq_retry),
            (
                "upstream_rq_pending_overflow",
                &s.upstream_rq_pending_overflow,
            ),
            ("upstream_cx_connect_fail", &s.upstream_cx_connect_fail),
            ("upstream_rq_timeout", &s.upstream_rq_timeout),
            (
                "outlier_detection.ejections_enforced_total",
                &s.outlier_ejections,
            ),
        ] {
            let _ = writeln!(out, "cluster.{name}.{stat}: {}", v.load(Ordering::Relaxed));
        }
    }
    let xds = shared.xds_status();
    let _ = writeln!(
        out,
        "control_plane.connected_state: {}",
        u8::from(xds.connected)
    );
    let _ = writeln!(out, "server.live: {}", u8::from(shared.is_ready()));
    out.push_str(&shared.tracers.envoy_stats());
    out
}

/// A few of Envoy's own Prometheus series, for dashboards that read them.
fn envoy_prometheus(shared: &Shared) -> String {
    let snap = shared.store.current.load();
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    // Envoy's names (`cluster.<name>.<stat>` as its Prometheus handler writes them): the ones
    // mast-proxy counts as Envoy does.
    type Stat = fn(&crate::upstream::ClusterStats) -> &AtomicU64;
    let per_cluster: [(&str, Stat); 6] = [
        ("envoy_cluster_upstream_rq_total", |s| &s.upstream_rq_total),
        ("envoy_cluster_upstream_rq_retry", |s| &s.upstream_rq_retry),
        ("envoy_cluster_upstream_rq_pending_overflow", |s| {
            &s.upstream_rq_pending_overflow
        }),
        ("envoy_cluster_upstream_rq_timeout", |s| {
            &s.upstream_rq_timeout
        }),
        ("envoy_cluster_upstream_cx_connect_fail", |s| {
            &s.upstream_cx_connect_fail
        }),
        ("envoy_cluster_outlier_detection_ejections_total", |s| {
            &s.outlier_ejections
        }),
    ];
    let mut out = String::new();
    for (family, stat) in per_cluster {
        let _ = writeln!(out, "# TYPE {family} counter");
        for name in &names {
            let s = &snap.clusters[*name].stats;
            let _ = writeln!(
                out,
                "{family}{{cluster_name=\"{name}\"}} {}",
                stat(s).load(Ordering::Relaxed)
            );
        }
    }
    let xds = shared.xds_status();
    let gauges: [(&str, &str, u64); 6] = [
        (
            "envoy_control_plane_connected_state",
            "",
            u64::from(xds.connected),
        ),
        // The ADS connection, Envoy's `xds-grpc` cluster (the Control Plane dashboard sums it).
        (
            "envoy_cluster_upstream_cx_active",
            "{cluster_name=\"xds-grpc\"}",
            u64::from(xds.connected),
        ),
        ("envoy_server_live", "", u64::from(shared.is_ready())),
        (
            "envoy_server_uptime",
            "",
            shared.started.elapsed().as_secs(),
        ),
        (
            "envoy_cluster_manager_active_clusters",
            "",
            snap.clusters.len() as u64,
        ),
        (
            "envoy_listener_manager_total_listeners_active",
            "",
            snap.listeners.len() as u64,
        ),
    ];
    for (family, labels, value) in gauges {
        let _ = writeln!(out, "# TYPE {family} gauge\n{family}{labels} {value}");
    }
    out.push_str(&shared.tracers.envoy_prometheus());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Any;
    use mast_proto::TypeUrl;
    use prost::Message as _;

    use super::*;
    use crate::state::{Incoming, digest};

    fn shared() -> Shared {
        let config = crate::config::Config::from_env(
            &BTreeMap::<String, String>::new(),
            &Default::default(),
        )
        .unwrap();
        Shared::new(config, false, None)
    }

    fn cluster(name: &str, connect_ms: u32) -> Incoming {
        let c = Cluster {
            name: name.into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: connect_ms as i32 * 1_000_000,
            }),
            ..Default::default()
        };
        Incoming {
            name: None,
            version: String::new(),
            any: Any {
                type_url: TypeUrl::Cluster.url().into(),
                value: c.encode_to_vec(),
            },
        }
    }

    fn apply(shared: &Shared, incoming: Vec<Incoming>, removed: &[&str]) {
        let removed: Vec<String> = removed.iter().map(|s| s.to_string()).collect();
        shared
            .store
            .resources
            .lock()
            .unwrap()
            .apply(TypeUrl::Cluster, "1", incoming, &removed, false)
            .unwrap();
    }

    #[test]
    fn xds_digest_names_each_resource_by_the_hash_of_its_bytes_and_follows_changes() {
        let a = shared();
        let empty = xds_digest(&a, false);
        assert_eq!(empty["types"], serde_json::json!({}));
        assert_eq!(empty["digest"], digest::hex(&digest::overall(&[])));

        apply(&a, vec![cluster("b", 100), cluster("a", 200)], &[]);
        let full = xds_digest(&a, true);
        let cds = &full["types"][TypeUrl::Cluster.url()];
        assert_eq!(cds["count"], 2);
        let bytes = cluster("a", 200).any.value;
        assert_eq!(
            cds["resources"]["a"],
            digest::hex(&digest::resource_hash(&bytes)),
            "the hash of the bytes as received"
        );
        assert_ne!(full["digest"], empty["digest"]);
        assert!(
            xds_digest(&a, false)["types"][TypeUrl::Cluster.url()]
                .get("resources")
                .is_none(),
            "the listing only when asked"
        );

        // Another proxy that received the same resources in another order and in two
        // responses has the same digest; one byte of difference changes it.
        let b = shared();
        apply(&b, vec![cluster("a", 200)], &[]);
        apply(&b, vec![cluster("b", 100)], &[]);
        assert_eq!(xds_digest(&b, false)["digest"], full["digest"]);
        apply(&b, vec![cluster("b", 101)], &[]);
        let changed = xds_digest(&b, true);
        assert_ne!(changed["digest"], full["digest"]);
        assert_ne!(
            changed["types"][TypeUrl::Cluster.url()]["resources"]["b"],
            cds["resources"]["b"]
        );
        // A removal counts too, and removing everything is the empty digest again.
        apply(&b, vec![], &["b"]);
        assert_eq!(
            xds_digest(&b, false)["types"][TypeUrl::Cluster.url()]["count"],
            1
        );
        apply(&b, vec![], &["a"]);
        assert_eq!(xds_digest(&b, false)["digest"], empty["digest"]);
    }
}
