//! The Prometheus source: the graph and node-detail API answered from a Prometheus server's
//! HTTP API, with the PromQL Kiali sends, instead of from scraping every proxy.
//!
//! Why: a mesh that already runs Prometheus (Istio's addon, a cluster's monitoring stack)
//! has it scrape the proxies anyway and keep days of history; mastd then need not scrape
//! them a second time, the figures survive a mastd restart, and they are Kiali's own.
//!
//! How it stays the same graph: each answer is turned into the internal per-edge statistics
//! the scraping collector produces ([`Delta`]: requests per response class, mTLS count,
//! duration-bucket counts, TCP bytes), through the same label mapping
//! ([`SampleLabels::from_labels`]), and recorded in a throw-away [`Store`] — one tick spanning
//! the window for a graph (the rate × the window = the count), one tick per step for a
//! detail's series. The existing builder ([`Graph`](crate::graph)) then makes the JSON, with
//! its reporter choice, ids, shares, quantiles and health, unchanged. Latency quantiles are
//! computed by the builder from the bucket rates (`sum(rate(…_bucket[d])) by (le, …)`, the
//! inside of Kiali's `histogram_quantile`), with Prometheus' interpolation: quantiles of
//! single series could not be merged into the graph's edges (client → service sums the
//! calls to every version), bucket counts can.
//!
//! The MeshView still names the proxies: they make the idle nodes, and a proxy whose
//! `instance` (the `host:port` of its stats URL) Prometheus reports `up == 0` is greyed out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use http::Uri;

use crate::graph::Period;
use crate::istio::{EdgeKey, Field, Metric, Reporter, SampleLabels, bucket_index, is_unknown};
use crate::mesh::MeshView;
use crate::state::{HealthReport, State, TargetStatus};
use crate::stats::Delta;
use crate::store::{Series, Store};

pub use client::{
    Answer, PrometheusClient, PrometheusError, QueryData, RangeSeries, VectorSample, parse_answer,
};

mod client;

/// Where and how to read Prometheus.
#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    /// `http://host:9090` (a path prefix such as `http://host/prometheus` is kept).
    pub url: String,
    /// Deadline of each query (Prometheus is told the same, and stops evaluating).
    pub timeout: Duration,
    /// How often Prometheus scrapes the proxies (Istio's default 15 s): the finest step of
    /// a detail's series, and a quarter of its `rate()` range at least.
    pub scrape_interval: Duration,
    /// A larger answer fails the query.
    pub max_response_bytes: usize,
}

impl PrometheusConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_secs(10),
            scrape_interval: Duration::from_secs(15),
            max_response_bytes: 64 << 20,
        }
    }
}

/// The labels that make an edge ([`EdgeKey`]), in the `by (…)` of every edge query.
pub const EDGE_LABELS: [&str; 13] = [
    "reporter",
    "source_workload_namespace",
    "source_workload",
    "source_app",
    "source_version",
    "destination_service_namespace",
    "destination_service",
    "destination_service_name",
    "destination_workload_namespace",
    "destination_workload",
    "destination_app",
    "destination_version",
    "request_protocol",
];

/// The labels of a response class and of mTLS, added for `istio_requests_total`.
pub const RESPONSE_LABELS: [&str; 4] = [
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The Istio metric families an edge's statistics come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Requests,
    Duration,
    TcpSent,
    TcpReceived,
}

impl Family {
    const ALL: [Family; 4] = [
        Family::Requests,
        Family::Duration,
        Family::TcpSent,
        Family::TcpReceived,
    ];

    fn metric(self) -> &'static str {
        match self {
            Family::Requests => "istio_requests_total",
            Family::Duration => "istio_request_duration_milliseconds_bucket",
            Family::TcpSent => "istio_tcp_sent_bytes_total",
            Family::TcpReceived => "istio_tcp_received_bytes_total",
        }
    }

    fn by(self) -> String {
        let mut labels: Vec<&str> = Vec::new();
        if self == Family::Duration {
            labels.push("le");
        }
        labels.extend(EDGE_LABELS);
        match self {
            Family::Requests => labels.extend(RESPONSE_LABELS),
            Family::TcpSent | Family::TcpReceived => labels.push("connection_security_policy"),
            Family::Duration => {}
        }
        labels.join(", ")
    }

    fn istio(self) -> Metric {
        match self {
            Family::Requests => Metric::Requests,
            Family::Duration => Metric::DurationBucket,
            Family::TcpSent | Family::TcpReceived => Metric::TcpBytes,
        }
    }
}

fn reporter_label(r: Reporter) -> &'static str {
    match r {
        Reporter::Destination => "destination",
        Reporter::Source => "source",
    }
}

/// A PromQL string literal: `"…"` with `\` and `"` escaped.
fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// RE2 metacharacters escaped, so a namespace is matched literally.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `="ns"` for one namespace, `=~"a|b"` for several (names from the URL: escaped).
fn namespace_matcher(namespaces: &[String]) -> String {
    match namespaces {
        [one] => format!("={}", promql_string(one)),
        many => {
            let alternatives: Vec<String> = many.iter().map(|n| regex_escape(n)).collect();
            format!("=~{}", promql_string(&alternatives.join("|")))
        }
    }
}

/// One family's rates per edge over `range_secs`, as one reporter saw them, for the calls
/// into and out of `namespaces`: Kiali's
/// `sum(rate(m{reporter="destination",destination_service_namespace="ns"}[300s])) by (…)`
/// `or` the same for the calls the namespace's workloads make (`source_workload_namespace`);
/// a call inside the namespace matches both, and `or` keeps it once (same label set).
fn edge_query(
    family: Family,
    reporter: Reporter,
    namespaces: &[String],
    range_secs: u64,
) -> String {
    let m = namespace_matcher(namespaces);
    let by = family.by();
    let metric = family.metric();
    let r = reporter_label(reporter);
    let side = |label: &str| {
        format!("sum(rate({metric}{{reporter=\"{r}\",{label}{m}}}[{range_secs}s])) by ({by})")
    };
    format!(
        "{} or {}",
        side("destination_service_namespace"),
        side("source_workload_namespace")
    )
}

/// Namespaces with Istio traffic in the last hour (the scraping collector's retention).
const NAMESPACES_QUERY: &str = "count by (source_workload_namespace, destination_service_namespace, destination_workload_namespace) (count_over_time(istio_requests_total[1h])) or count by (source_workload_namespace, destination_service_namespace, destination_workload_namespace) (count_over_time(istio_tcp_sent_bytes_total[1h]))";

/// The scrape targets Prometheus failed to scrape last time.
const DOWN_QUERY: &str = "up == 0";

/// What one series of an answer feeds: its edge, and which statistic.
fn field_of(
    family: Family,
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<(EdgeKey, Field)> {
    let l = SampleLabels::from_labels(family.istio(), labels);
    let field = match family {
        Family::Requests => Field::Requests {
            code: Arc::new(l.code),
            mtls: l.mtls,
        },
        // Buckets at bounds other than Istio's give no latency, as when scraping.
        Family::Duration => Field::DurationBucket(bucket_index(l.le.as_deref()?)?),
        Family::TcpSent | Family::TcpReceived => Field::TcpBytes { mtls: l.mtls },
    };
    Some((l.edge, field))
}

/// Adds a rate × seconds (a count) to its edge; `NaN`, `±Inf` and negative rates (none
/// from `rate()` of counters, but any from odd answers) count nothing.
fn add(acc: &mut HashMap<EdgeKey, Delta>, key: &EdgeKey, field: &Field, count: f64) {
    if !count.is_finite() || count <= 0.0 {
        return;
    }
    match acc.get_mut(key) {
        Some(d) => d.add(field, count),
        None => {
            let mut d = Delta::default();
            d.add(field, count);
            acc.insert(key.clone(), d);
        }
    }
}

/// The store for a graph: one tick at `now` spanning the window, each edge's rates × the
/// window as its deltas, so the builder's rate (count / covered seconds) is the rate.
fn window_store(answers: Vec<(Family, Vec<VectorSample>)>, now: f64, secs: f64) -> Store {
    let mut acc: HashMap<EdgeKey, Delta> = HashMap::new();
    for (family, samples) in answers {
        for s in samples {
            if let Some((key, field)) = field_of(family, &s.labels) {
                add(&mut acc, &key, &field, s.value * secs);
            }
        }
    }
    let mut store = Store::new(secs + 1.0);
    store.record(
        now,
        secs,
        acc.into_iter().map(|(k, d)| (Arc::new(k), d)).collect(),
    );
    store
}

/// The evaluation times of a range query: `points` times `step` apart from `start`.
struct Grid {
    start: f64,
    step: f64,
    points: usize,
}

/// The store for a detail's series: one tick per step (a step without data is a zero), each
/// `wanted` edge's rates × the step as its deltas.
fn steps_store(
    answers: Vec<(Family, Vec<RangeSeries>)>,
    grid: &Grid,
    wanted: &HashSet<&EdgeKey>,
) -> Store {
    let mut slots: Vec<HashMap<EdgeKey, Delta>> = vec![HashMap::new(); grid.points];
    for (family, matrix) in answers {
        for s in matrix {
            let Some((key, field)) = field_of(family, &s.labels) else {
                continue;
            };
            if !wanted.contains(&key) {
                continue;
            }
            for (t, v) in s.points {
                let k = ((t - grid.start) / grid.step).round();
                if k >= 0.0
                    && let Some(slot) = slots.get_mut(k as usize)
                {
                    add(slot, &key, &field, v * grid.step);
                }
            }
        }
    }
    let mut store = Store::new(grid.points as f64 * grid.step + grid.step);
    for (k, slot) in slots.into_iter().enumerate() {
        store.record(
            grid.start + k as f64 * grid.step,
            grid.step,
            slot.into_iter().map(|(k, d)| (Arc::new(k), d)).collect(),
        );
    }
    store
}

fn unix_now() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    // Millisecond precision, as Prometheus evaluates.
    (now * 1000.0).floor() / 1000.0
}

/// `host:port` of a stats URL: the `instance` Prometheus gives the target by default.
fn instance_of(stats_url: &str) -> Option<String> {
    let uri: Uri = stats_url.parse().ok()?;
    Some(uri.authority()?.as_str().to_string())
}

/// The latest health and targets, for [`Telemetry::health`](crate::Telemetry::health).
#[derive(Debug, Default)]
struct Last {
    health: Option<HealthReport>,
    targets: Vec<TargetStatus>,
}

/// Reads the graph's statistics from Prometheus.
pub(crate) struct PrometheusSource {
    client: PrometheusClient,
    scrape_interval: Duration,
    last: Mutex<Last>,
}

impl PrometheusSource {
    pub(crate) fn new(config: &PrometheusConfig) -> Result<Self, PrometheusError> {
        if config.scrape_interval.is_zero() {
            return Err(PrometheusError::BadUrl {
                url: config.url.clone(),
                reason: "the scrape interval must be more than zero".into(),
            });
        }
        Ok(Self {
            client: PrometheusClient::new(&config.url, config.timeout, config.max_response_bytes)?,
            scrape_interval: config.scrape_interval,
            last: Mutex::new(Last::default()),
        })
    }

    pub(crate) fn url(&self) -> &str {
        self.client.base_url()
    }

    /// The windows' state for a graph of `namespaces` over `period`: one tick at now whose
    /// deltas are each edge's rates × the window, and the host's proxies (idle nodes; those
    /// Prometheus cannot scrape are unreachable).
    pub(crate) async fn snapshot(
        &self,
        mesh: &dyn MeshView,
        namespaces: &[String],
        period: Period,
    ) -> Result<State, PrometheusError> {
        let now = unix_now();
        let secs = period.secs();
        let mut queries = Vec::new();
        for family in Family::ALL {
            for reporter in [Reporter::Destination, Reporter::Source] {
                queries.push((family, edge_query(family, reporter, namespaces, secs)));
            }
        }
        let answers = try_join_all(queries.iter().map(|(family, q)| async move {
            self.client.query(q, now).await.map(|v| (*family, v))
        }));
        let (answers, down) = futures::try_join!(answers, self.down_instances(now))?;
        let store = window_store(answers, now, secs as f64);
        let targets = self.targets(mesh, &down, now);
        Ok(State { store, targets })
    }

    /// The series of a detail: `edges` (from the graph) over `period`, one point per step,
    /// from range queries of the request and bucket rates.
    pub(crate) async fn series(
        &self,
        edges: &[Arc<EdgeKey>],
        namespaces: &[String],
        period: Period,
    ) -> Result<Series, PrometheusError> {
        let secs = period.secs() as f64;
        let (step, range) = self.steps(period);
        let step_secs = step.as_secs_f64();
        let points = ((secs / step_secs).round() as usize).max(1);
        let end = unix_now();
        let start = end - (points - 1) as f64 * step_secs;
        let wanted: HashSet<&EdgeKey> = edges.iter().map(|k| &**k).collect();
        let mut reporters: Vec<Reporter> = edges.iter().map(|k| k.reporter).collect();
        reporters.sort();
        reporters.dedup();
        let mut queries = Vec::new();
        for family in [Family::Requests, Family::Duration] {
            for r in &reporters {
                queries.push((family, edge_query(family, *r, namespaces, range.as_secs())));
            }
        }
        let answers = try_join_all(queries.iter().map(|(family, q)| async move {
            self.client
                .query_range(q, start, end, step)
                .await
                .map(|m| (*family, m))
        }))
        .await?;
        let grid = Grid {
            start,
            step: step_secs,
            points,
        };
        let store = steps_store(answers, &grid, &wanted);
        Ok(store.series(edges.iter().map(|k| &**k), &store.window(secs)))
    }

    /// A detail's step (about 60 points over the window, not finer than the scrape
    /// interval) and `rate()` range (the step, and at least 4 scrapes, as Prometheus
    /// advises, so every point has samples to compute a rate from).
    fn steps(&self, period: Period) -> (Duration, Duration) {
        let scrape = self.scrape_interval.as_secs_f64().ceil().max(1.0);
        let step = (period.secs() as f64 / 60.0).max(scrape).ceil();
        let range = step.max(4.0 * scrape);
        (
            Duration::from_secs_f64(step),
            Duration::from_secs_f64(range),
        )
    }

    /// Namespaces with Istio traffic in the last hour, and those of the host's proxies.
    pub(crate) async fn namespaces(
        &self,
        mesh: &dyn MeshView,
    ) -> Result<Vec<String>, PrometheusError> {
        let samples = self.client.query(NAMESPACES_QUERY, unix_now()).await?;
        let mut out: HashSet<String> = HashSet::new();
        for s in samples {
            for label in [
                "source_workload_namespace",
                "destination_service_namespace",
                "destination_workload_namespace",
            ] {
                if let Some(ns) = s.labels.get(label) {
                    out.insert(ns.clone());
                }
            }
        }
        out.extend(mesh.targets().into_iter().map(|t| t.namespace));
        let mut out: Vec<String> = out.into_iter().filter(|n| !is_unknown(n)).collect();
        out.sort();
        Ok(out)
    }

    /// `/api/health`: the host's proxies, those Prometheus scrapes fine, and now (the time
    /// of Prometheus' answer) as the latest scrape.
    pub(crate) async fn health(
        &self,
        mesh: &dyn MeshView,
    ) -> Result<HealthReport, PrometheusError> {
        let now = unix_now();
        let down = self.down_instances(now).await?;
        self.targets(mesh, &down, now);
        Ok(self.last_health())
    }

    async fn down_instances(&self, now: f64) -> Result<HashSet<String>, PrometheusError> {
        let samples = self.client.query(DOWN_QUERY, now).await?;
        Ok(samples
            .into_iter()
            .filter_map(|s| s.labels.get("instance").cloned())
            .collect())
    }

    fn targets(
        &self,
        mesh: &dyn MeshView,
        down: &HashSet<String>,
        now: f64,
    ) -> HashMap<String, TargetStatus> {
        let mut out: HashMap<String, TargetStatus> = HashMap::new();
        for target in mesh.targets() {
            if out.contains_key(&target.id) {
                continue;
            }
            let reachable = instance_of(&target.stats_url).is_none_or(|i| !down.contains(&i));
            out.insert(
                target.id.clone(),
                TargetStatus {
                    target,
                    listed: true,
                    reachable,
                    last_listed: now,
                    last_error: (!reachable)
                        .then(|| "Prometheus cannot scrape it (up == 0)".to_string()),
                },
            );
        }
        let mut list: Vec<TargetStatus> = out.values().cloned().collect();
        list.sort_by(|a, b| a.target.id.cmp(&b.target.id));
        let health = HealthReport {
            targets: list.len(),
            reachable: list.iter().filter(|t| t.reachable).count(),
            last_scrape: now.max(0.0) as u64,
            interval_seconds: self.scrape_interval.as_secs_f64(),
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.health = Some(health);
        last.targets = list;
        out
    }

    /// The health as of the latest answer (before any: nothing known, no scrape).
    pub(crate) fn last_health(&self) -> HealthReport {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.health.clone().unwrap_or(HealthReport {
            targets: 0,
            reachable: 0,
            last_scrape: 0,
            interval_seconds: self.scrape_interval.as_secs_f64(),
        })
    }

    pub(crate) fn last_targets(&self) -> Vec<TargetStatus> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.targets.clone()
    }
}

#[cfg(test)]
mod tests;
