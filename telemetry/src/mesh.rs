//! What the collector needs to know about the mesh, and nothing more: which proxies to scrape
//! and the badges Kiali draws on service nodes. The host (mastd) implements [`MeshView`] from
//! its own state (pilot's connected proxies and mesh model), so this crate depends on neither
//! pilot nor the config model, and tests pass a fixed list.

/// The host's view of the mesh, asked once per scrape round (targets) and once per service
/// node per graph request (features): implementations should answer from memory.
pub trait MeshView: Send + Sync + 'static {
    /// Proxies to scrape now (changes over time as proxies come and go).
    fn targets(&self) -> Vec<Target>;
    /// Kiali's service badges from the mesh config.
    fn service_features(&self, namespace: &str, service: &str) -> ServiceFeatures;
}

/// One proxy to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Proxy id, e.g. `sidecar~10.0.0.1~user-v1-abc.default~default.svc.cluster.local`;
    /// the key under which its scrape state is kept.
    pub id: String,
    pub namespace: String,
    /// The workload name as the metrics label it (`destination_workload`).
    pub workload: String,
    pub app: Option<String>,
    pub version: Option<String>,
    /// `http://ip:port/stats/prometheus`.
    pub stats_url: String,
}

/// Kiali's service-node badges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFeatures {
    pub traffic_shifting: bool,
    pub fault_injection: bool,
    pub request_timeout: bool,
    pub circuit_breaker: bool,
    /// Hostnames of the VirtualServices (or equivalent routes) that apply to the service.
    pub virtual_services: Vec<String>,
}
