//! pilot's HTTP endpoints on `--http-addr` (15014, as istiod's monitoring port): Prometheus
//! metrics and the `/debug/*` pages operators reach for when a proxy's config looks wrong —
//! what each proxy was sent and acknowledged (`syncz`), the model and current validation
//! errors (`configz`), and the exact xDS a proxy gets (`config_dump`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ads::server::TypeStatus;
use crate::ads::{ConnectionRegistry, Generator, Snapshot};
use crate::dump;
use crate::source::SourceStatus;
use crate::xds::node::ProxyNode;

pub struct DebugState<G> {
    pub registry: Arc<Registry>,
    pub connections: Arc<ConnectionRegistry>,
    pub snapshots: watch::Receiver<Snapshot>,
    pub source: Arc<SourceStatus>,
    pub generator: Arc<G>,
}

pub fn router<G: Generator>(state: Arc<DebugState<G>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<G>))
        .route("/ready", get(|| async { "ready\n" }))
        .route("/debug/syncz", get(syncz::<G>))
        .route("/debug/configz", get(configz::<G>))
        .route("/debug/config_dump", get(config_dump::<G>))
        .with_state(state)
}

async fn metrics<G: Generator>(State(state): State<Arc<DebugState<G>>>) -> Response {
    match crate::metrics::encode_text(&state.registry) {
        Ok(body) => (
            [(header::CONTENT_TYPE, crate::metrics::TEXT_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Serialize)]
struct SyncStatus {
    proxy: String,
    /// The proxy's `CLUSTER_ID` and version (`mastctl proxy-status` shows them); absent when
    /// its node could not be read.
    cluster_id: Option<String>,
    version: Option<String>,
    conn_id: u64,
    delta: bool,
    connected_at: u64,
    types: BTreeMap<&'static str, TypeStatus>,
}

async fn syncz<G: Generator>(State(state): State<Arc<DebugState<G>>>) -> Json<Vec<SyncStatus>> {
    Json(
        state
            .connections
            .list()
            .into_iter()
            .map(|c| {
                let node = ProxyNode::from_envoy_node(&c.node).ok();
                SyncStatus {
                    proxy: c.node.id.clone(),
                    cluster_id: node.as_ref().map(|n| n.cluster_id.clone()),
                    version: node.and_then(|n| n.version),
                    conn_id: c.conn_id,
                    delta: c.delta,
                    connected_at: c.connected_at,
                    types: c.lock_status().clone(),
                }
            })
            .collect(),
    )
}

async fn configz<G: Generator>(State(state): State<Arc<DebugState<G>>>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    let errors: Vec<String> = state
        .source
        .errors()
        .iter()
        .map(|e| e.to_string())
        .collect();
    let warnings: Vec<String> = state
        .source
        .warnings()
        .iter()
        .map(|w| w.to_string())
        .collect();
    Json(serde_json::json!({
        "version": snapshot.version,
        "errors": errors,
        "warnings": warnings,
        "model": &*snapshot.model,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct DumpQuery {
    #[serde(rename = "proxyID")]
    proxy_id: String,
}

/// The config a connected proxy gets now (`proxyID` is its node id or `<pod>.<namespace>`).
async fn config_dump<G: Generator>(
    State(state): State<Arc<DebugState<G>>>,
    Query(q): Query<DumpQuery>,
) -> Response {
    let Some(conn) = state.connections.find(&q.proxy_id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no connected proxy {:?} (see /debug/syncz)\n", q.proxy_id),
        )
            .into_response();
    };
    let snapshot = state.snapshots.borrow().clone();
    let resources = match state.generator.generate(&snapshot, &conn.node) {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match dump::config_dump(&resources.flatten(), snapshot.version) {
        Ok(json) => Json(json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
