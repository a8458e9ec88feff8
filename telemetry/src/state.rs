//! The state the collector writes and the API reads: the windows, the targets' scrape status
//! and the host's [`MeshView`]. One lock guards windows and target status together, so a
//! graph never mixes two scrape rounds; each round that lands moves a round number on, which
//! keys the graph answers memoised in [`crate::cache`]. With a Prometheus source the windows
//! stay empty: each request reads Prometheus into a state of its own (see
//! [`crate::prometheus`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde::Serialize;

use crate::cache::{Built, GraphCache, Key};
use crate::graph::{Graph, GraphQuery};
use crate::mesh::{MeshView, Target};
use crate::prometheus::{PrometheusConfig, PrometheusError, PrometheusSource};
use crate::store::Store;

/// A proxy the collector knows, and how its last scrape went.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub target: Target,
    /// Listed by [`MeshView::targets`] in the latest round.
    pub listed: bool,
    /// The latest scrape succeeded.
    pub reachable: bool,
    /// Unix time of the latest round that listed it.
    pub last_listed: f64,
    pub last_error: Option<String>,
}

/// `GET /api/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub targets: usize,
    pub reachable: usize,
    /// Unix seconds of the latest scrape round (0 before the first).
    pub last_scrape: u64,
    pub interval_seconds: f64,
}

#[derive(Debug)]
pub(crate) struct State {
    pub store: Store,
    pub targets: HashMap<String, TargetStatus>,
}

/// Shared between the [`Collector`](crate::Collector) and the [`router`](crate::router); or,
/// made by [`Telemetry::from_prometheus`], the router's link to Prometheus.
pub struct Telemetry {
    state: RwLock<State>,
    /// Rounds landed so far; moved on only while `state` is write-locked, so a reader holding
    /// the lock sees the round its data belong to.
    round: AtomicU64,
    graphs: GraphCache,
    mesh: Arc<dyn MeshView>,
    interval: Duration,
    prometheus: Option<PrometheusSource>,
}

impl Telemetry {
    pub(crate) fn new(mesh: Arc<dyn MeshView>, interval: Duration, retention: Duration) -> Self {
        Self {
            state: RwLock::new(State {
                store: Store::new(retention.as_secs_f64()),
                targets: HashMap::new(),
            }),
            round: AtomicU64::new(0),
            graphs: GraphCache::default(),
            mesh,
            interval,
            prometheus: None,
        }
    }

    /// The API's state when the graph is read from Prometheus (no collector runs): `mesh`
    /// still lists the proxies (idle and unreachable nodes) and gives the service badges.
    pub fn from_prometheus(
        mesh: Arc<dyn MeshView>,
        config: PrometheusConfig,
    ) -> Result<Arc<Self>, PrometheusError> {
        let source = PrometheusSource::new(&config)?;
        Ok(Arc::new(Self {
            state: RwLock::new(State {
                store: Store::new(0.0),
                targets: HashMap::new(),
            }),
            round: AtomicU64::new(0),
            graphs: GraphCache::default(),
            mesh,
            interval: config.scrape_interval,
            prometheus: Some(source),
        }))
    }

    pub(crate) fn prometheus(&self) -> Option<&PrometheusSource> {
        self.prometheus.as_ref()
    }

    /// Prometheus' base URL when the graph is read from it.
    pub fn prometheus_url(&self) -> Option<&str> {
        self.prometheus.as_ref().map(PrometheusSource::url)
    }

    // A panic while holding the lock leaves the data consistent enough to show (each
    // round's writes are plain inserts), so a poisoned lock is used as is.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A round was written: call with the write lock held (before dropping `_written`).
    pub(crate) fn round_landed(&self, _written: &mut RwLockWriteGuard<'_, State>) -> u64 {
        self.round.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The graph JSON for `q` at Unix time `now`, from the collector's windows: built once per
    /// round and query (see [`crate::cache`]). Blocking: call it off the async threads.
    pub(crate) fn graph_json(&self, q: &GraphQuery, now: u64) -> Result<Vec<u8>, String> {
        let key = Key::new(q);
        let round = self.round.load(Ordering::Acquire);
        let built = self.graphs.get(&key, round, true, || self.build(&key))?;
        if built.badges_current(self.mesh()) {
            return Ok(built.json(now));
        }
        self.graphs.invalidate(&key, &built);
        let built = self.graphs.get(&key, round, true, || self.build(&key))?;
        Ok(built.json(now))
    }

    /// Builds, for the round that just landed, the graphs that were asked for during the
    /// previous one, so that refreshing pages find them ready. Blocking.
    pub(crate) fn rebuild_asked_graphs(&self) {
        let round = self.round.load(Ordering::Acquire);
        for key in self.graphs.hot(round) {
            if let Err(e) = self.graphs.get(&key, round, false, || self.build(&key)) {
                tracing::warn!(error = %e, "graph answer could not be built");
            }
        }
    }

    fn build(&self, key: &Key) -> Result<Built, String> {
        let q = key.query();
        let response = Graph::build(&self.read(), &q).response(self.mesh(), &q, 0);
        Built::new(response).map_err(|e| format!("graph JSON: {e}"))
    }

    pub fn mesh(&self) -> &dyn MeshView {
        &*self.mesh
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// With Prometheus: as of its latest answer (`/api/health` asks it afresh).
    pub fn health(&self) -> HealthReport {
        if let Some(p) = &self.prometheus {
            return p.last_health();
        }
        let state = self.read();
        let listed = state.targets.values().filter(|t| t.listed);
        let (targets, reachable) =
            listed.fold((0, 0), |(n, r), t| (n + 1, r + usize::from(t.reachable)));
        HealthReport {
            targets,
            reachable,
            last_scrape: state
                .store
                .latest()
                .map(|t| t.at.max(0.0) as u64)
                .unwrap_or(0),
            interval_seconds: self.interval.as_secs_f64(),
        }
    }

    /// Every known proxy and its scrape status, sorted by id (for mastd's debug pages).
    pub fn targets(&self) -> Vec<TargetStatus> {
        if let Some(p) = &self.prometheus {
            return p.last_targets();
        }
        let state = self.read();
        let mut out: Vec<TargetStatus> = state.targets.values().cloned().collect();
        out.sort_by(|a, b| a.target.id.cmp(&b.target.id));
        out
    }

    /// Edges and stored intervals (memory figures for logs and tests).
    pub fn sizes(&self) -> (usize, usize) {
        let state = self.read();
        (state.store.edge_count(), state.store.interval_count())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::Value;

    use super::*;
    use crate::graph::{GraphType, Period};
    use crate::istio::Reporter;
    use crate::mesh::ServiceFeatures;
    use crate::stats::Delta;
    use crate::store::tests::{edge, requests, workload};

    /// A mesh whose `user` service badges a test can change.
    #[derive(Default)]
    struct Mesh {
        shifting: Mutex<bool>,
    }

    impl MeshView for Mesh {
        fn targets(&self) -> Vec<Target> {
            Vec::new()
        }

        fn service_features(&self, _: &str, service: &str) -> ServiceFeatures {
            ServiceFeatures {
                traffic_shifting: service == "user" && *self.shifting.lock().unwrap(),
                ..Default::default()
            }
        }
    }

    fn telemetry() -> (Arc<Mesh>, Telemetry) {
        let mesh = Arc::new(Mesh::default());
        let t = Telemetry::new(
            Arc::clone(&mesh) as Arc<dyn MeshView>,
            Duration::from_secs(5),
            Duration::from_secs(3700),
        );
        (mesh, t)
    }

    /// Writes one 5 s round in which the client sent `n` requests to user v1; with `land`,
    /// as the collector does (the round number moves on).
    fn round(t: &Telemetry, i: u32, n: f64, land: bool) {
        let mut state = t.write();
        let key = edge(
            Reporter::Destination,
            workload("default", "client", "client", "unknown"),
            "user",
            workload("default", "user-v1", "user", "v1"),
        );
        let deltas: HashMap<_, Delta> = [(key, requests(n, "200", 7.0, true))].into();
        state.store.record(1000.0 + 5.0 * f64::from(i), 5.0, deltas);
        if land {
            t.round_landed(&mut state);
        }
    }

    fn query() -> GraphQuery {
        GraphQuery {
            namespaces: vec!["default".into()],
            graph_type: GraphType::VersionedApp,
            period: Period::M1,
        }
    }

    fn graph(t: &Telemetry, now: u64) -> Value {
        serde_json::from_slice(&t.graph_json(&query(), now).unwrap()).unwrap()
    }

    /// The uncached answer: what the API gave before answers were memoised.
    fn uncached(t: &Telemetry, now: u64) -> Vec<u8> {
        let q = query();
        serde_json::to_vec(&Graph::build(&t.read(), &q).response(t.mesh(), &q, now)).unwrap()
    }

    fn service_rps(g: &Value) -> f64 {
        let nodes = g["elements"]["nodes"].as_array().unwrap();
        let svc = nodes
            .iter()
            .find(|n| n["data"]["nodeType"] == "service")
            .unwrap();
        let edges = g["elements"]["edges"].as_array().unwrap();
        edges
            .iter()
            .filter(|e| e["data"]["source"] == svc["data"]["id"])
            .map(|e| e["data"]["rps"].as_f64().unwrap())
            .sum()
    }

    fn shifting(g: &Value) -> bool {
        let nodes = g["elements"]["nodes"].as_array().unwrap();
        nodes
            .iter()
            .find(|n| n["data"]["nodeType"] == "service")
            .map(|n| n["data"]["hasTrafficShifting"] == true)
            .unwrap()
    }

    #[test]
    fn the_answer_is_byte_for_byte_the_uncached_one() {
        let (_, t) = telemetry();
        for i in 0..3 {
            round(&t, i, 50.0, true);
        }
        assert_eq!(t.graph_json(&query(), 1234).unwrap(), uncached(&t, 1234));
        // A hit: same bytes, with the time of this request.
        assert_eq!(t.graph_json(&query(), 5678).unwrap(), uncached(&t, 5678));
        assert_eq!(graph(&t, 5678)["timestamp"], 5678);
    }

    #[test]
    fn a_new_round_gives_new_figures() {
        let (_, t) = telemetry();
        round(&t, 0, 0.0, true);
        round(&t, 1, 50.0, true);
        let first = service_rps(&graph(&t, 1));
        assert!(first > 0.0);
        // Data written without a round landing are not seen: the answer is memoised...
        round(&t, 2, 500.0, false);
        assert_eq!(service_rps(&graph(&t, 2)), first);
        // ...until the round lands, and then the new figures are.
        round(&t, 3, 500.0, true);
        let after = service_rps(&graph(&t, 3));
        assert!(after > first, "{after} after the round, {first} before");
        assert_eq!(t.graph_json(&query(), 3).unwrap(), uncached(&t, 3));
    }

    #[test]
    fn a_badge_change_is_seen_without_waiting_for_a_round() {
        let (mesh, t) = telemetry();
        round(&t, 0, 0.0, true);
        round(&t, 1, 50.0, true);
        assert!(!shifting(&graph(&t, 1)));
        *mesh.shifting.lock().unwrap() = true;
        assert!(shifting(&graph(&t, 2)));
        assert_eq!(t.graph_json(&query(), 2).unwrap(), uncached(&t, 2));
    }

    #[test]
    fn graphs_asked_for_are_rebuilt_when_a_round_lands() {
        let (_, t) = telemetry();
        round(&t, 0, 0.0, true);
        round(&t, 1, 50.0, true);
        graph(&t, 1);
        round(&t, 2, 500.0, true);
        t.rebuild_asked_graphs();
        assert_eq!(
            t.graphs.len(),
            1,
            "the asked graph, built for the new round"
        );
        // And it is the new round's answer (which counts as asking for it in round 2).
        assert_eq!(t.graph_json(&query(), 2).unwrap(), uncached(&t, 2));
        round(&t, 3, 500.0, true);
        t.rebuild_asked_graphs();
        assert_eq!(t.graphs.len(), 1);
        // Not asked during round 3: not rebuilt for round 4, and round 3's answer is dropped.
        round(&t, 4, 500.0, true);
        t.rebuild_asked_graphs();
        assert_eq!(t.graphs.len(), 0);
    }
}
