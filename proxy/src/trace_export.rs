//! Span export: OpenTelemetry (OTLP over gRPC or HTTP/protobuf) and Zipkin v2 JSON, to the
//! collector cluster a tracing provider names.
//!
//! Tracing must never cost a request anything but the span's own bookkeeping, so a finished
//! span goes into a bounded queue with `try_send` and the request moves on; one task per
//! provider batches the queue and posts it through the proxy's own cluster machinery (so the
//! collector cluster's endpoints, load balancing and TLS apply, as Envoy's tracers use their
//! cluster). A slow or dead collector fills the queue, and then spans are dropped and counted
//! (`tracing.<tracer>.spans_dropped`) — never waited for. The OpenTelemetry queue holds
//! `max_cache_size` spans (Envoy's default 1,024), and its overflow is Envoy's own
//! `tracing.opentelemetry.spans_dropped`; Envoy's Zipkin tracer has no bound, so its queue is
//! [`QUEUE_CAPACITY`] and `tracing.zipkin.spans_dropped` is mast-proxy's.
//!
//! Batching follows Envoy's tracers: a batch goes out when 5 spans are buffered
//! (`min_flush_spans`) or every 5 s (`flush_interval_ms`), with Envoy's stats
//! (`tracing.opentelemetry.spans_sent`/`timer_flushed`, `tracing.zipkin.spans_sent`/
//! `timer_flushed`/`reports_sent`/`reports_dropped`/`reports_failed`/
//! `reports_skipped_no_cluster`; the `reports_*` are kept for OpenTelemetry too, where Envoy
//! has none), and the connection managers' sampling decisions
//! (`http.<stat_prefix>.tracing.*`). While an export is in flight the queue keeps filling,
//! so under load a batch carries up to 512 spans. A Zipkin report counts as sent on any 2xx
//! (Envoy wants 202, which Zipkin and Jaeger answer).
//!
//! The OTLP messages are a few hand-written prost structs with the field numbers of
//! `opentelemetry/proto/{collector/trace,trace,resource,common}/v1`, rather than the
//! OpenTelemetry crates: the sidecar's size and memory matter more than the types' reach;
//! the tests decode what is written here with `opentelemetry-proto`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use prost::Message;
use tokio::sync::mpsc;

use crate::http::trace::{Kind, ProviderKind, ProviderSpec, Reason, SpanData};
use crate::shared::Shared;
use crate::state::Store;
use crate::tls::SecretStore;
use crate::tls::credentials::SdsSecrets;
use crate::upstream::Body;

/// Spans waiting for export per Zipkin provider; beyond this they are dropped
/// (OpenTelemetry providers use their `max_cache_size`).
pub const QUEUE_CAPACITY: usize = 2048;
/// Envoy's `tracing.*.min_flush_spans` default.
const MIN_FLUSH_SPANS: usize = 5;
/// Envoy's `tracing.*.flush_interval_ms` default.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// The most spans one export carries.
const MAX_BATCH: usize = 512;

/// The exporters of every tracing provider in use, and their stats by tracer.
#[derive(Default)]
pub struct Tracers {
    exporters: Mutex<HashMap<ProviderSpec, Arc<Exporter>>>,
    /// Sampling decisions per connection manager `stat_prefix`; kept across config updates,
    /// as Envoy keeps stats by name.
    decisions: Mutex<std::collections::BTreeMap<String, Arc<Decisions>>>,
    pub opentelemetry: Arc<Stats>,
    pub zipkin: Arc<Stats>,
}

/// Envoy's tracer stats, plus `spans_dropped` (the queue was full).
#[derive(Debug, Default)]
pub struct Stats {
    pub spans_sent: AtomicU64,
    pub timer_flushed: AtomicU64,
    pub reports_sent: AtomicU64,
    pub reports_dropped: AtomicU64,
    pub reports_failed: AtomicU64,
    pub reports_skipped_no_cluster: AtomicU64,
    pub spans_dropped: AtomicU64,
}

/// Envoy's `http.<stat_prefix>.tracing.*`: why requests were (not) traced.
#[derive(Debug, Default)]
pub struct Decisions {
    pub client_enabled: AtomicU64,
    pub health_check: AtomicU64,
    pub not_traceable: AtomicU64,
    pub random_sampling: AtomicU64,
    pub service_forced: AtomicU64,
}

impl Decisions {
    pub fn count(&self, reason: Reason) {
        let c = match reason {
            Reason::ClientForced => &self.client_enabled,
            Reason::NotTraceable => &self.not_traceable,
            Reason::Sampling => &self.random_sampling,
            Reason::ServiceForced => &self.service_forced,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn all(&self) -> [(&'static str, u64); 5] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("client_enabled", get(&self.client_enabled)),
            ("health_check", get(&self.health_check)),
            ("not_traceable", get(&self.not_traceable)),
            ("random_sampling", get(&self.random_sampling)),
            ("service_forced", get(&self.service_forced)),
        ]
    }
}

/// One provider's queue.
pub struct Exporter {
    tx: mpsc::Sender<SpanData>,
    stats: Arc<Stats>,
}

/// How a batch is flushed (Envoy's defaults; tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub capacity: usize,
    pub min_flush: usize,
    pub interval: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            capacity: QUEUE_CAPACITY,
            min_flush: MIN_FLUSH_SPANS,
            interval: FLUSH_INTERVAL,
        }
    }
}

/// Who reports the spans: the node's service cluster (`<workload>.<namespace>`) and address.
#[derive(Debug, Clone)]
pub struct Local {
    pub service_cluster: String,
    pub ip: IpAddr,
}

/// Where a batch goes.
struct Sink {
    spec: ProviderSpec,
    local: Local,
    store: Arc<Store>,
    secrets: Arc<SecretStore>,
    sds: Arc<SdsSecrets>,
    stats: Arc<Stats>,
}

/// What became of one export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Sent,
    /// The collector answered, but not with success.
    Dropped,
    /// No answer: connect failure, reset or timeout.
    Failed,
    NoCluster,
}

// === impl Tracers ===

impl Tracers {
    /// The exporter for a provider: shared by every listener with the same settings, and
    /// started on first use (on the caller's runtime).
    pub fn exporter(&self, shared: &Shared, spec: &ProviderSpec) -> Arc<Exporter> {
        let mut map = match self.exporters.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(e) = map.get(spec) {
            return Arc::clone(e);
        }
        let stats = match spec.kind {
            ProviderKind::Zipkin => Arc::clone(&self.zipkin),
            ProviderKind::OtlpGrpc | ProviderKind::OtlpHttp => Arc::clone(&self.opentelemetry),
        };
        let cfg = &shared.config;
        let local = Local {
            service_cluster: format!("{}.{}", cfg.workload_name(), cfg.pod_namespace),
            ip: cfg.instance_ip,
        };
        let e = Arc::new(Exporter::spawn(
            spec.clone(),
            local,
            Arc::clone(&shared.store),
            Arc::clone(&shared.secrets),
            Arc::clone(&shared.sds),
            stats,
            Tuning {
                capacity: spec.capacity,
                ..Tuning::default()
            },
        ));
        map.insert(spec.clone(), Arc::clone(&e));
        e
    }

    /// The decision counters of a connection manager's `stat_prefix`.
    pub fn decisions(&self, stat_prefix: &str) -> Arc<Decisions> {
        let mut map = match self.decisions.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        Arc::clone(map.entry(stat_prefix.to_string()).or_default())
    }

    fn all_decisions(&self) -> Vec<(String, [(&'static str, u64); 5])> {
        let map = match self.decisions.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.iter().map(|(k, d)| (k.clone(), d.all())).collect()
    }

    fn by_tracer(&self) -> [(&'static str, &Stats); 2] {
        [
            ("opentelemetry", &self.opentelemetry),
            ("zipkin", &self.zipkin),
        ]
    }

    /// `tracing.<tracer>.<stat>: N` lines for `/stats`.
    pub fn envoy_stats(&self) -> String {
        let mut out = String::new();
        for (prefix, stats) in self.all_decisions() {
            for (name, v) in stats {
                out.push_str(&format!("http.{prefix}.tracing.{name}: {v}\n"));
            }
        }
        for (tracer, s) in self.by_tracer() {
            for (name, v) in s.all() {
                out.push_str(&format!("tracing.{tracer}.{name}: {v}\n"));
            }
        }
        out
    }

    /// `envoy_tracing_<tracer>_<stat>` counters for `/stats/prometheus`.
    pub fn envoy_prometheus(&self) -> String {
        let mut out = String::new();
        let decisions = self.all_decisions();
        if let Some((_, first)) = decisions.first() {
            for (i, (name, _)) in first.iter().enumerate() {
                out.push_str(&format!("# TYPE envoy_http_tracing_{name} counter\n"));
                for (prefix, stats) in &decisions {
                    out.push_str(&format!(
                        "envoy_http_tracing_{name}{{envoy_http_conn_manager_prefix=\"{prefix}\"}} {}\n",
                        stats[i].1
                    ));
                }
            }
        }
        for (tracer, s) in self.by_tracer() {
            for (name, v) in s.all() {
                out.push_str(&format!(
                    "# TYPE envoy_tracing_{tracer}_{name} counter\nenvoy_tracing_{tracer}_{name} {v}\n"
                ));
            }
        }
        out
    }
}

// === impl Stats ===

impl Stats {
    fn all(&self) -> [(&'static str, u64); 7] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("spans_sent", get(&self.spans_sent)),
            ("timer_flushed", get(&self.timer_flushed)),
            ("reports_sent", get(&self.reports_sent)),
            ("reports_dropped", get(&self.reports_dropped)),
            ("reports_failed", get(&self.reports_failed)),
            (
                "reports_skipped_no_cluster",
                get(&self.reports_skipped_no_cluster),
            ),
            ("spans_dropped", get(&self.spans_dropped)),
        ]
    }
}

// === impl Exporter ===

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Start a provider's export task.
    pub fn spawn(
        spec: ProviderSpec,
        local: Local,
        store: Arc<Store>,
        secrets: Arc<SecretStore>,
        sds: Arc<SdsSecrets>,
        stats: Arc<Stats>,
        tuning: Tuning,
    ) -> Self {
        let (tx, rx) = mpsc::channel(tuning.capacity.max(1));
        let sink = Sink {
            spec,
            local,
            store,
            secrets,
            sds,
            stats: Arc::clone(&stats),
        };
        tokio::spawn(sink.run(rx, tuning));
        Self { tx, stats }
    }

    /// An exporter whose queue the caller reads (tests).
    #[cfg(test)]
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<SpanData>) {
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(Stats::default());
        (Self { tx, stats }, rx)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Queue a finished span; when the queue is full the span is dropped and counted.
    pub fn push(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// === impl Sink ===

impl Sink {
    async fn run(self, mut rx: mpsc::Receiver<SpanData>, tuning: Tuning) {
        let mut buf: Vec<SpanData> = Vec::new();
        let mut tick = tokio::time::interval(tuning.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                span = rx.recv() => {
                    let Some(span) = span else {
                        if !buf.is_empty() {
                            self.flush(std::mem::take(&mut buf)).await;
                        }
                        return;
                    };
                    buf.push(span);
                    while buf.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(s) => buf.push(s),
                            Err(_) => break,
                        }
                    }
                    if buf.len() >= tuning.min_flush {
                        self.flush(std::mem::take(&mut buf)).await;
                    }
                }
                _ = tick.tick() => {
                    if !buf.is_empty() {
                        self.stats.timer_flushed.fetch_add(1, Ordering::Relaxed);
                        self.flush(std::mem::take(&mut buf)).await;
                    }
                }
            }
        }
    }

    async fn flush(&self, spans: Vec<SpanData>) {
        self.stats
            .spans_sent
            .fetch_add(spans.len() as u64, Ordering::Relaxed);
        let report = self.send(&spans).await;
        let stat = match report {
            Report::Sent => &self.stats.reports_sent,
            Report::Dropped => &self.stats.reports_dropped,
            Report::Failed => &self.stats.reports_failed,
            Report::NoCluster => &self.stats.reports_skipped_no_cluster,
        };
        stat.fetch_add(1, Ordering::Relaxed);
        if report != Report::Sent {
            tracing::debug!(
                cluster = %self.spec.cluster,
                spans = spans.len(),
                ?report,
                "trace export did not succeed"
            );
        }
    }

    async fn send(&self, spans: &[SpanData]) -> Report {
        let spec = &self.spec;
        let (body, content_type, grpc) = match spec.kind {
            ProviderKind::Zipkin => (zipkin_json(spans, &self.local), "application/json", false),
            ProviderKind::OtlpHttp => (
                otlp_request(spans, &spec.service_name)
                    .encode_to_vec()
                    .into(),
                "application/x-protobuf",
                false,
            ),
            ProviderKind::OtlpGrpc => (
                grpc_frame(&otlp_request(spans, &spec.service_name).encode_to_vec()),
                "application/grpc",
                true,
            ),
        };
        let Some(cluster) = self
            .store
            .current
            .load()
            .clusters
            .get(&spec.cluster)
            .cloned()
        else {
            return Report::NoCluster;
        };
        let Ok(host) = cluster.pick(None, &[]) else {
            return Report::Failed;
        };
        let Ok(uri) =
            format!("{}://{}{}", host.scheme(), host.authority(), spec.path).parse::<Uri>()
        else {
            return Report::Failed;
        };
        let h2 = grpc || cluster.uses_http2(false);
        let mut req = Request::post(uri)
            .header(http::header::CONTENT_TYPE, content_type)
            .body::<Body>(
                Full::new(body)
                    .map_err(|never| -> crate::upstream::BoxError { match never {} })
                    .boxed_unsync(),
            );
        if let Ok(r) = &mut req {
            let headers = r.headers_mut();
            if grpc {
                headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
            } else if let Ok(h) = HeaderValue::from_str(&spec.authority) {
                headers.insert(http::header::HOST, h);
            }
            for (k, v) in &spec.headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    headers.insert(k, v);
                }
            }
            if h2 {
                *r.version_mut() = http::Version::HTTP_2;
            }
        }
        let Ok(req) = req else {
            return Report::Failed;
        };
        let client = cluster.client(h2, &self.secrets, &self.sds, None);
        let exchange = async {
            let resp = client.request(req).await.map_err(|_| Report::Failed)?;
            let status = resp.status();
            let head_grpc = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Report::Failed)?;
            if !status.is_success() {
                return Err(Report::Dropped);
            }
            if grpc {
                let trailer = collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if trailer.or(head_grpc).as_deref() != Some("0") {
                    return Err(Report::Dropped);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(spec.timeout, exchange).await {
            Ok(Ok(())) => Report::Sent,
            Ok(Err(r)) => r,
            Err(_) => Report::Failed,
        }
    }
}

/// A gRPC length-prefixed message (uncompressed).
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 5);
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

fn micros(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Zipkin v2 JSON (`POST /api/v2/spans`), as Envoy's Zipkin tracer writes it.
pub fn zipkin_json(spans: &[SpanData], local: &Local) -> Bytes {
    let endpoint = match local.ip {
        IpAddr::V4(ip) => {
            serde_json::json!({"serviceName": local.service_cluster, "ipv4": ip.to_string(), "port": 0})
        }
        IpAddr::V6(ip) => {
            serde_json::json!({"serviceName": local.service_cluster, "ipv6": ip.to_string(), "port": 0})
        }
    };
    let list: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            // Envoy's Zipkin spans keep no empty tag (an unset `zone`).
            let mut tags = serde_json::Map::new();
            for (k, v) in s.tags.iter().filter(|(_, v)| !v.is_empty()) {
                tags.insert((*k).to_string(), v.clone().into());
            }
            for (k, v) in s.custom.iter().filter(|(_, v)| !v.is_empty()) {
                tags.insert(k.clone(), v.clone().into());
            }
            let trace_id = if s.trace_id_128 {
                format!("{:032x}", s.trace_id)
            } else {
                format!("{:016x}", s.trace_id as u64)
            };
            let mut span = serde_json::json!({
                "traceId": trace_id,
                "id": format!("{:016x}", s.span_id),
                "name": s.name,
                "kind": match s.kind { Kind::Server => "SERVER", Kind::Client => "CLIENT" },
                "timestamp": micros(s.start),
                "duration": u64::try_from(s.duration.as_micros()).unwrap_or(u64::MAX).max(1),
                "localEndpoint": endpoint,
                "tags": tags,
            });
            if let Some(p) = s.parent_id {
                span["parentId"] = format!("{p:016x}").into();
            }
            if s.shared {
                span["shared"] = true.into();
            }
            // The v1 annotation that v2's kind and timestamp do not cover: the end (`cr`/`ss`).
            span["annotations"] = serde_json::json!([{
                "timestamp": micros(s.start + s.duration),
                "value": match s.kind { Kind::Server => "ss", Kind::Client => "cr" },
            }]);
            span
        })
        .collect();
    Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
}

/// One OTLP export request for a batch.
pub fn otlp_request(spans: &[SpanData], service_name: &str) -> otlp::ExportTraceServiceRequest {
    use otlp::*;
    let kv = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            string_value: Some(v.to_string()),
        }),
    };
    let spans = spans
        .iter()
        .map(|s| Span {
            trace_id: s.trace_id.to_be_bytes().to_vec(),
            span_id: s.span_id.to_be_bytes().to_vec(),
            trace_state: s.tracestate.clone(),
            parent_span_id: s
                .parent_id
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_default(),
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Server => SPAN_KIND_SERVER,
                Kind::Client => SPAN_KIND_CLIENT,
            },
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.start + s.duration),
            attributes: s
                .tags
                .iter()
                .map(|(k, v)| kv(k, v))
                .chain(s.custom.iter().map(|(k, v)| kv(k, v)))
                .collect(),
            status: s.error.then(|| Status {
                message: String::new(),
                code: STATUS_CODE_ERROR,
            }),
            // Sampled, and whether the parent is remote (always, for a proxy's span), as
            // Envoy sets them.
            flags: FLAG_SAMPLED
                | FLAG_HAS_IS_REMOTE
                | if s.parent_id.is_some() {
                    FLAG_IS_REMOTE
                } else {
                    0
                },
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", service_name),
                    kv("telemetry.sdk.language", "rust"),
                    kv("telemetry.sdk.name", "mast-proxy"),
                    kv("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
                ],
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "envoy".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                }),
                spans,
            }],
        }],
    }
}

/// The OTLP trace messages, with the field numbers of `opentelemetry-proto` (only the
/// fields mast-proxy writes).
pub mod otlp {
    pub const SPAN_KIND_SERVER: i32 = 2;
    pub const SPAN_KIND_CLIENT: i32 = 3;
    pub const STATUS_CODE_ERROR: i32 = 2;
    /// `SpanFlags`: the W3C sampled flag, and the parent's remoteness.
    pub const FLAG_SAMPLED: u32 = 0x01;
    pub const FLAG_HAS_IS_REMOTE: u32 = 0x100;
    pub const FLAG_IS_REMOTE: u32 = 0x200;

    /// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    /// `AnyValue`, whose oneof is only ever its `string_value` (field 1) here.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, optional, tag = "1")]
        pub string_value: Option<String>,
    }
}

#[cfg(test)]
mod tests;
