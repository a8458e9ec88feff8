//! The HTTP face of the collector (telemetry/API.md): the Kiali-style JSON API under `/api`
//! and, when given some, the web view's static files at `/`. Query values are
//! checked here and a bad one is answered 400 with a JSON error naming the parameter and the
//! value, so the UI can show it; graphs are built off the async threads, and from the
//! collector's windows at most once per scrape round and query (see [`crate::cache`]).
//!
//! With a Prometheus source each request first reads Prometheus (its failures are 502s
//! carrying Prometheus' message), then the same builder makes the same JSON.

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::assets::{self, WebAssets};
use crate::graph::{Detail, DetailData, Graph, GraphQuery, GraphType, Period, namespaces};
use crate::istio::EdgeKey;
use crate::prometheus::{PrometheusError, PrometheusSource};
use crate::state::{HealthReport, State as Windows, Telemetry};

/// An API failure, answered as `{"error": "…"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{name} {value:?}: expected one of {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("namespaces: required, a comma-separated list such as namespaces=default,shop")]
    MissingNamespaces,
    #[error("namespaces {0:?}: empty namespace name in the list")]
    EmptyNamespace(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no node or edge {id:?} in namespace {namespace:?} over {duration}")]
    NotFound {
        id: String,
        namespace: String,
        duration: &'static str,
    },
    #[error("no API at {0:?}")]
    NoRoute(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The Prometheus source failed (unreachable, timeout, or Prometheus' own error).
    #[error("Prometheus at {url}: {message}")]
    Prometheus { url: String, message: String },
}

impl ApiError {
    fn prometheus(source: &PrometheusSource, e: PrometheusError) -> Self {
        ApiError::Prometheus {
            url: source.url().to_string(),
            message: e.to_string(),
        }
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadValue { .. }
            | ApiError::MissingNamespaces
            | ApiError::EmptyNamespace(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Prometheus { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (
            self.status(),
            Json(Body {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// The API (and, with `web`, the web view's files) over the collector's state. `web` is a
/// [`WebAssets`], or an `Option<PathBuf>` for a directory or none.
pub fn router(state: Arc<Telemetry>, web: impl Into<WebAssets>) -> Router {
    let api = Router::new()
        .route("/api/namespaces", get(list_namespaces))
        .route("/api/namespaces/graph", get(multi_graph))
        .route("/api/namespaces/{ns}/graph", get(namespace_graph))
        .route("/api/namespaces/{ns}/nodes/{id}", get(node_detail))
        .route("/api/health", get(health))
        .route("/api", any(no_route))
        .route("/api/{*rest}", any(no_route))
        .with_state(state);
    match web.into() {
        WebAssets::None => api.fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") }),
        web => {
            api.fallback(move |method: Method, uri: Uri| assets::serve(web.clone(), method, uri))
        }
    }
}

/// [`router`] plus the trace query API over `traces` (Jaeger's `/api/traces`,
/// `/api/services`; see [`crate::traces::jaeger`]).
pub fn router_with_traces(
    state: Arc<Telemetry>,
    web: impl Into<WebAssets>,
    traces: Arc<crate::traces::TraceStore>,
) -> Router {
    router(state, web).merge(crate::traces::jaeger::router(traces))
}

/// Serves `router` on `listener` until `shutdown` completes (in-flight requests finish).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

type QueryParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

struct Params(Vec<(String, String)>);

impl Params {
    fn from(q: QueryParams) -> Result<Self, ApiError> {
        q.map(|Query(v)| Params(v))
            .map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text())))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn graph_type(&self) -> Result<GraphType, ApiError> {
        match self.get("graphType") {
            None => Ok(GraphType::VersionedApp),
            Some(v) => GraphType::parse(v).ok_or_else(|| ApiError::BadValue {
                name: "graphType",
                value: v.to_string(),
                expected: GraphType::EXPECTED,
            }),
        }
    }

    fn period(&self) -> Result<Period, ApiError> {
        match self.get("duration") {
            None => Ok(Period::M5),
            Some(v) => Period::parse(v).ok_or_else(|| ApiError::BadValue {
                name: "duration",
                value: v.to_string(),
                expected: Period::EXPECTED,
            }),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Serialize)]
struct Namespace {
    name: String,
}

async fn list_namespaces(
    State(t): State<Arc<Telemetry>>,
) -> Result<Json<Vec<Namespace>>, ApiError> {
    let names = match t.prometheus() {
        Some(p) => p
            .namespaces(t.mesh())
            .await
            .map_err(|e| ApiError::prometheus(p, e))?,
        None => namespaces(&t.read()),
    };
    Ok(Json(
        names.into_iter().map(|name| Namespace { name }).collect(),
    ))
}

async fn health(State(t): State<Arc<Telemetry>>) -> Result<Json<HealthReport>, ApiError> {
    match t.prometheus() {
        Some(p) => p
            .health(t.mesh())
            .await
            .map(Json)
            .map_err(|e| ApiError::prometheus(p, e)),
        None => Ok(Json(t.health())),
    }
}

/// With a Prometheus source, the windows of `namespaces` read from it for this request.
async fn prometheus_windows(
    t: &Telemetry,
    namespaces: &[String],
    period: Period,
) -> Result<Option<Windows>, ApiError> {
    match t.prometheus() {
        Some(p) => p
            .snapshot(t.mesh(), namespaces, period)
            .await
            .map(Some)
            .map_err(|e| ApiError::prometheus(p, e)),
        None => Ok(None),
    }
}

async fn namespace_graph(
    State(t): State<Arc<Telemetry>>,
    path: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let Path(ns) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let p = Params::from(query)?;
    graph(
        t,
        GraphQuery {
            namespaces: vec![ns],
            graph_type: p.graph_type()?,
            period: p.period()?,
        },
    )
    .await
}

async fn multi_graph(
    State(t): State<Arc<Telemetry>>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let p = Params::from(query)?;
    let list = p.get("namespaces").ok_or(ApiError::MissingNamespaces)?;
    let namespaces: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
    if namespaces.iter().any(String::is_empty) {
        return Err(if list.trim().is_empty() {
            ApiError::MissingNamespaces
        } else {
            ApiError::EmptyNamespace(list.to_string())
        });
    }
    graph(
        t,
        GraphQuery {
            namespaces,
            graph_type: p.graph_type()?,
            period: p.period()?,
        },
    )
    .await
}

async fn graph(t: Arc<Telemetry>, q: GraphQuery) -> Result<Response, ApiError> {
    let fetched = prometheus_windows(&t, &q.namespaces, q.period).await?;
    let json = tokio::task::spawn_blocking(move || match &fetched {
        // Prometheus is read afresh for every request: nothing to memoise.
        Some(state) => serde_json::to_vec(&Graph::build(state, &q).response(t.mesh(), &q, now()))
            .map_err(|e| e.to_string()),
        // The collector's windows change once per round: memoised until the next one.
        None => t.graph_json(&q, now()),
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::Internal)?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
        json,
    )
        .into_response())
}

/// What axum's `Json` answers with, so a memoised answer looks the same.
const JSON: &str = "application/json";

async fn node_detail(
    State(t): State<Arc<Telemetry>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: QueryParams,
) -> Result<Json<Detail>, ApiError> {
    let Path((ns, id)) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let p = Params::from(query)?;
    let first = p.graph_type()?;
    let period = p.period()?;
    let namespaces = vec![ns.clone()];
    let fetched = prometheus_windows(&t, &namespaces, period).await?;
    let t2 = Arc::clone(&t);
    let found = tokio::task::spawn_blocking(move || {
        // Ids name entities, not graph types; the UI's current type is tried first.
        let order =
            std::iter::once(first).chain(GraphType::ALL.into_iter().filter(|g| *g != first));
        let query = |graph_type| GraphQuery {
            namespaces: vec![ns.clone()],
            graph_type,
            period,
        };
        let found = match &fetched {
            // Prometheus: the data now, the series from a range query below.
            Some(state) => order
                .into_iter()
                .find_map(|g| Graph::build(state, &query(g)).find(&id, t2.mesh()))
                .map(Found::Keys),
            None => {
                let state = t2.read();
                order.into_iter().find_map(|g| {
                    Graph::build(&state, &query(g))
                        .detail(&id, &state.store, t2.mesh())
                        .map(Found::Detail)
                })
            }
        };
        found.ok_or(ApiError::NotFound {
            id,
            namespace: ns,
            duration: period.as_str(),
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    match (found, t.prometheus()) {
        (Found::Detail(d), _) => Ok(Json(d)),
        (Found::Keys((data, keys)), Some(p)) => {
            let series = p
                .series(&keys, &namespaces, period)
                .await
                .map_err(|e| ApiError::prometheus(p, e))?;
            Ok(Json(Detail { data, series }))
        }
        (Found::Keys(_), None) => Err(ApiError::Internal(
            "detail without its series and no Prometheus to read them from".into(),
        )),
    }
}

/// A detail as found: complete (scraping), or its data and the edges whose series are still
/// to be read (Prometheus).
enum Found {
    Detail(Detail),
    Keys((DetailData, Vec<Arc<EdgeKey>>)),
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}
