//! The state the collector writes and the API reads: the windows, the targets' scrape status
//! and the host's [`MeshView`]. One lock guards windows and target status together, so a
//! graph never mixes two scrape rounds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde::Serialize;

use crate::mesh::{MeshView, Target};
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

/// Shared between the [`Collector`](crate::Collector) and the [`router`](crate::router).
pub struct Telemetry {
    state: RwLock<State>,
    mesh: Arc<dyn MeshView>,
    interval: Duration,
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
        }
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

    pub fn health(&self) -> HealthReport {
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
