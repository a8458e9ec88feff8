//! mastd's view of the mesh for the telemetry collector: which proxies to scrape, from pilot's
//! connected proxies (each mast-proxy announces its Istio metrics port in its node metadata),
//! and Kiali's service badges (traffic shifting, faults, timeouts, circuit breakers), from the
//! mesh model pilot serves. With these the topology view needs no Prometheus.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mast_mesh_config::model::{DEFAULT_DOMAIN_SUFFIX, MeshModel, RouteAction, TrafficPolicy};
use mast_pilot::server::Handles;
use mast_pilot::xds::ProxyNode;
use mast_telemetry::{MeshView, ServiceFeatures, Target};

/// The node metadata key holding a proxy's Prometheus port (set by mast-proxy).
const STATS_PORT_KEY: &str = "MAST_STATS_PORT";

/// How long a proxy that disconnected from pilot stays a target: its scrapes then fail, so
/// the view greys it out instead of silently dropping it (the longest window).
const REMEMBER: Duration = Duration::from_secs(3600);

pub struct PilotView {
    handles: Handles,
    /// Targets seen connected, with when they were last seen.
    seen: Mutex<HashMap<String, (Target, Instant)>>,
}

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
