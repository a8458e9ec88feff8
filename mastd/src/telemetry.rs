//! mastd's view of the mesh for the telemetry collector: which proxies to scrape, from pilot's
//! connected proxies (each mast-proxy announces its Istio metrics port in its node metadata),
//! and Kiali's service badges (traffic shifting, faults, timeouts, circuit breakers), from the
//! mesh model pilot serves. With these the topology view needs no Prometheus.
//!
//! [`Pending`] is the collector's server between the two halves of mastd's start: it is bound
//! and checked with the other servers (a taken port or a bad `--prometheus` URL is a
//! configuration error), and started once pilot is up, since the view reads pilot's handles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mast_mesh_config::model::{DEFAULT_DOMAIN_SUFFIX, MeshModel, RouteAction, TrafficPolicy};
use mast_pilot::server::Handles;
use mast_pilot::xds::ProxyNode;
use mast_telemetry::traces::TraceStore;
use mast_telemetry::{
    CollectorConfig, MeshView, PrometheusConfig, ServiceFeatures, Target, WebAssets,
};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::app::{Shutdown, StartError};
use crate::config::Config;

/// The node metadata key holding a proxy's Prometheus port (set by mast-proxy).
const STATS_PORT_KEY: &str = "MAST_STATS_PORT";

/// How long a proxy that disconnected from pilot stays a target: its scrapes then fail, so
/// the view greys it out instead of silently dropping it (the longest window).
const REMEMBER: Duration = Duration::from_secs(3600);

/// The telemetry server, bound but not yet started (it waits for pilot's handles).
pub struct Pending {
    listener: TcpListener,
    web: WebAssets,
    source: Source,
}

/// Where the telemetry API's figures come from.
enum Source {
    /// mastd scrapes every sidecar (the default).
    Scrape(CollectorConfig),
    /// `--prometheus`: read from Prometheus' HTTP API.
    Prometheus(PrometheusConfig),
}

/// Which proxies to scrape and which badges a service has, as pilot knows them.
pub struct PilotView {
    handles: Handles,
    /// Targets seen connected, with when they were last seen.
    seen: Mutex<HashMap<String, (Target, Instant)>>,
}

// === impl Pending ===

impl Pending {
    /// Bind the telemetry address and check the source; `None` with `--no-telemetry`.
    pub async fn bind(config: &Config) -> Result<Option<Self>, StartError> {
        if config.no_telemetry {
            return Ok(None);
        }
        let addr = config.telemetry_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Telemetry(format!("cannot bind {addr}: {e}")))?;
        // --web-dir, else the page built into this binary, whatever the working directory.
        let web = WebAssets::choose(config.web_dir.clone());
        if matches!(web, WebAssets::None) {
            info!(
                "no web view in this build (build it: cd telemetry/web && npm ci && npm run \
                 build, then cargo build mastd again, or pass --web-dir); serving the \
                 telemetry API only"
            );
        }
        let source = match &config.prometheus {
            Some(url) => {
                let prometheus = PrometheusConfig::new(url.clone());
                // Checked now: a bad URL is a configuration error, not a later 502.
                mast_telemetry::prometheus::PrometheusClient::new(
                    &prometheus.url,
                    prometheus.timeout,
                    prometheus.max_response_bytes,
                )
                .map_err(|e| StartError::Telemetry(e.to_string()))?;
                Source::Prometheus(prometheus)
            }
            None => Source::Scrape(CollectorConfig {
                interval: config.scrape_interval,
                ..CollectorConfig::default()
            }),
        };
        Ok(Some(Self {
            listener,
            web,
            source,
        }))
    }

    /// The collector (scraping every sidecar pilot knows), or the link to Prometheus, and
    /// the API + web view, until shutdown. A failure here is logged: pilot keeps serving.
    /// With `traces`, the trace query API (Jaeger's `/api/traces`) is served beside the graph.
    pub fn start(self, handles: Handles, shutdown: Shutdown, traces: Option<Arc<TraceStore>>) {
        let Self {
            listener,
            web,
            source,
        } = self;
        let view = std::sync::Arc::new(PilotView::new(handles));
        let state = match source {
            Source::Scrape(config) => {
                let collector = match mast_telemetry::Collector::new(view, config) {
                    Ok(c) => c,
                    Err(e) => {
                        error!("telemetry collector not started: {e}");
                        return;
                    }
                };
                let state = collector.telemetry();
                tokio::spawn(collector.run(shutdown.wait()));
                state
            }
            Source::Prometheus(config) => {
                match mast_telemetry::Telemetry::from_prometheus(view, config) {
                    Ok(state) => {
                        info!(prometheus = ?state.prometheus_url(), "telemetry read from Prometheus");
                        state
                    }
                    Err(e) => {
                        error!("telemetry API not started: {e}");
                        return;
                    }
                }
            }
        };
        let addr = listener.local_addr().ok();
        let router = match traces {
            Some(traces) => mast_telemetry::router_with_traces(state, web.clone(), traces),
            None => mast_telemetry::router(state, web.clone()),
        };
        let stopped = shutdown.wait();
        tokio::spawn(async move {
            if let Err(e) = mast_telemetry::serve(listener, router, stopped).await {
                error!("telemetry server stopped: {e}");
            }
        });
        info!(
            telemetry = ?addr,
            web = %web,
            "topology view and telemetry API serving"
        );
    }
}

// === impl PilotView ===

impl PilotView {
    pub fn new(handles: Handles) -> Self {
        Self {
            handles,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn connected(&self) -> Vec<Target> {
        self.handles
            .connections
            .list()
            .into_iter()
            .filter_map(|conn| {
                let node = ProxyNode::from_envoy_node(&conn.node).ok()?;
                let port = conn
                    .node
                    .metadata
                    .as_ref()?
                    .fields
                    .get(STATS_PORT_KEY)
                    .and_then(|v| match &v.kind {
                        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                            s.parse::<u16>().ok()
                        }
                        Some(envoy_types::pb::google::protobuf::value::Kind::NumberValue(n)) => {
                            Some(*n as u16)
                        }
                        _ => None,
                    })
                    .filter(|p| *p != 0)?;
                let host = if node.ip.contains(':') {
                    format!("[{}]", node.ip)
                } else {
                    node.ip.clone()
                };
                Some(Target {
                    id: node.id.clone(),
                    namespace: node.namespace.clone(),
                    workload: node.workload_name.clone(),
                    app: node.labels.get("app").cloned(),
                    version: node.labels.get("version").cloned(),
                    stats_url: format!("http://{host}:{port}/stats/prometheus"),
                })
            })
            .collect()
    }
}

impl MeshView for PilotView {
    fn targets(&self) -> Vec<Target> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for t in self.connected() {
            seen.insert(t.id.clone(), (t, now));
        }
        seen.retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
        seen.values().map(|(t, _)| t.clone()).collect()
    }

    fn service_features(&self, namespace: &str, service: &str) -> ServiceFeatures {
        let model = self.handles.snapshots.borrow().model.clone();
        features(&model, namespace, service)
    }
}

/// Kiali's badges for `service` in `namespace`, from the routes and policies that name it.
pub fn features(model: &MeshModel, namespace: &str, service: &str) -> ServiceFeatures {
    let host = format!("{service}.{namespace}.svc.{DEFAULT_DOMAIN_SUFFIX}");
    let mut f = ServiceFeatures::default();
    for table in model.routes.iter().filter(|t| t.hosts.contains(&host)) {
        // Kiali's hasVS lists the hosts the routing rules are written for.
        f.virtual_services.extend(table.hosts.iter().cloned());
        for route in &table.http {
            if let RouteAction::Forward(destinations) = &route.action {
                let weighted = destinations.iter().filter(|d| d.weight > 0).count();
                f.traffic_shifting |= weighted > 1;
            }
            f.fault_injection |= route.fault.is_some();
            f.request_timeout |= route.timeout.is_some();
        }
        for tcp in &table.tcp {
            f.traffic_shifting |= tcp.destinations.iter().filter(|d| d.weight > 0).count() > 1;
        }
    }
    if let Some(policy) = model.destination_policies.get(&host) {
        let breaks = |p: &TrafficPolicy| {
            p.connection_pool.is_some()
                || p.outlier_detection.is_some()
                || p.port_level
                    .values()
                    .any(|l| l.connection_pool.is_some() || l.outlier_detection.is_some())
        };
        f.circuit_breaker = breaks(&policy.traffic_policy)
            || policy
                .subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref())
                .any(breaks);
    }
    f.virtual_services.sort();
    f.virtual_services.dedup();
    f
}
