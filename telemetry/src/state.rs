//! The state the collector writes and the API reads: the windows, the targets' scrape status
//! and the host's [`MeshView`]. One lock guards windows and target status together, so a
//! graph never mixes two scrape rounds. With a Prometheus source the windows stay empty: each
//! request reads Prometheus into a state of its own (see [`crate::prometheus`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde::Serialize;

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
