//! mast-telemetry: the topology view's back end, as Kiali's, without needing Prometheus.
//! mastd lists its proxies through [`MeshView`]; the [`Collector`] scrapes Istio's standard
//! metrics from each proxy's `/stats/prometheus`, turns them into per-edge deltas and keeps
//! rolling 1m, 5m, 15m and 1h windows; [`router`] serves the graph JSON of telemetry/API.md
//! and the web view's static files on :20001, from a directory or from the bundle compiled in
//! when `telemetry/web/dist` had been built ([`WebAssets`]).
//!
//! Where a Prometheus already scrapes the proxies, [`Telemetry::from_prometheus`] answers the
//! same API from its HTTP API instead (Kiali's PromQL, see [`prometheus`]): the answers feed
//! the same graph builder, so the graph is the same; no collector runs.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn wire(mesh: Arc<dyn mast_telemetry::MeshView>) -> anyhow::Result<()> {
//! use mast_telemetry::{Collector, CollectorConfig, WebAssets, router, serve};
//! let collector = Collector::new(mesh, CollectorConfig::default())?;
//! // `--web-dir` if given, else the built-in page, else the API only.
//! let app = router(collector.telemetry(), WebAssets::choose(None));
//! tokio::spawn(collector.run(std::future::pending()));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:20001").await?;
//! serve(listener, app, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod api;
mod assets;
mod cache;
mod collector;
pub mod exposition;
mod graph;
pub mod istio;
mod mesh;
pub mod prometheus;
mod scrape;
mod state;
mod stats;
mod store;
mod target;
pub mod traces;

pub use api::{ApiError, router, router_with_traces, serve};
pub use assets::{EmbeddedBundle, WebAssets};
pub use collector::{Collector, CollectorConfig, ConfigError, LONGEST_WINDOW, RoundReport};
pub use graph::{GraphType, Period};
pub use mesh::{MeshView, ServiceFeatures, Target};
pub use prometheus::{PrometheusConfig, PrometheusError};
pub use scrape::ScrapeError;
pub use state::{HealthReport, TargetStatus, Telemetry};
