//! mastd's trace receiver and its own spans, in one store the topology view reads.
//!
//! The sidecars export spans to mastd like to any collector (OTLP gRPC :4317, OTLP/HTTP and
//! Zipkin v2 JSON :4318, optionally Zipkin on its own port such as :9411), so the trace list
//! and waterfall need no Jaeger. [`Pending`] binds those ports with the other servers; a
//! default port that is taken (another mastd on the machine) only switches the receiver off
//! with a warning, while a port given on the command line is a configuration error, as for
//! every other server.
//!
//! mastd's own work is traced with `tracing` spans of target [`TRACE_TARGET`] (config change,
//! read, validation, publish; the xDS push and ACK spans live in pilot's ADS code, bounded by
//! `--push-traces-per-change`): a
//! `tracing-opentelemetry` layer turns them into OpenTelemetry spans, and [`StoreExporter`]
//! writes those straight into the same store, in process, as service `mastd`. So "why did my
//! change take 2 s" is a trace in the same view as the requests.

use std::net::SocketAddr;
use std::sync::Arc;

use mast_telemetry::traces::{
    Event, Limits, Process, Span, SpanId, SpanKind, Tag, TagValue, TraceId, TraceStore,
};
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::app::{Shutdown, StartError};
use crate::config::Config;

/// The `tracing` target of the spans that go into the trace store (everything else is only
/// logged). pilot uses the same literal.
pub const TRACE_TARGET: &str = "mast::trace";

/// The service name of mastd's own spans.
pub const SERVICE: &str = "mastd";

/// The receiver's default addresses (OpenTelemetry's standard ports).
pub const DEFAULT_OTLP_GRPC: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4317);
pub const DEFAULT_OTLP_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4318);

/// The receiver's sockets, bound and not yet serving.
pub struct Pending {
    store: Arc<TraceStore>,
    grpc: Option<TcpListener>,
    http: Option<TcpListener>,
    zipkin: Option<TcpListener>,
}

/// Writes the SDK's finished spans into the trace store.
#[derive(Debug)]
pub struct StoreExporter {
    store: Arc<TraceStore>,
    process: Arc<Process>,
}

// === impl Pending ===

impl Pending {
    /// Bind the receiver's addresses (none with `--no-trace-receiver`).
    pub async fn bind(config: &Config, store: Arc<TraceStore>) -> Result<Self, StartError> {
        if config.no_trace_receiver {
            return Ok(Self {
                store,
                grpc: None,
                http: None,
                zipkin: None,
            });
        }
        let grpc = bind("OTLP gRPC", config.otlp_grpc_addr, DEFAULT_OTLP_GRPC).await?;
        let http = bind("OTLP/HTTP", config.otlp_http_addr, DEFAULT_OTLP_HTTP).await?;
        let zipkin = match config.zipkin_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                StartError::Telemetry(format!("Zipkin receiver: cannot bind {addr}: {e}"))
            })?),
            None => None,
        };
        Ok(Self {
            store,
            grpc,
            http,
            zipkin,
        })
    }

    /// Serve until shutdown.
    pub fn start(self, shutdown: Shutdown) {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let (grpc_addr, http_addr, zipkin_addr) =
            (addr(&self.grpc), addr(&self.http), addr(&self.zipkin));
        if let Some(l) = self.grpc {
            let store = Arc::clone(&self.store);
            let stop = shutdown.wait();
            tokio::spawn(async move {
                if let Err(e) = mast_telemetry::traces::receiver::serve_grpc(l, store, stop).await {
                    error!("OTLP gRPC receiver stopped: {e}");
                }
            });
        }
        for l in [self.http, self.zipkin].into_iter().flatten() {
            let store = Arc::clone(&self.store);
            let stop = shutdown.wait();
            tokio::spawn(async move {
                if let Err(e) = mast_telemetry::traces::receiver::serve_http(l, store, stop).await {
                    error!("OTLP/HTTP receiver stopped: {e}");
                }
            });
        }
        if grpc_addr.is_some() || http_addr.is_some() || zipkin_addr.is_some() {
            info!(
                otlp_grpc = ?grpc_addr,
                otlp_http = ?http_addr,
                zipkin = ?zipkin_addr,
                "trace receiver serving (OTLP gRPC, OTLP/HTTP /v1/traces, Zipkin /api/v2/spans)"
            );
        }
        // Age limits hold even when nothing arrives.
        let store = Arc::clone(&self.store);
        let stopped = shutdown.wait();
        tokio::spawn(async move {
            let expire = async {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    store.expire();
                }
            };
            tokio::select! {
                _ = expire => {}
                _ = stopped => {}
            }
        });
    }
}

/// Bind `given`, else the default; a taken default port switches that receiver off.
async fn bind(
    what: &str,
    given: Option<SocketAddr>,
    default: SocketAddr,
) -> Result<Option<TcpListener>, StartError> {
    let addr = given.unwrap_or(default);
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if given.is_none() => {
            warn!(
                "{what} trace receiver off: cannot bind its default address {addr}: {e} \
                 (another mastd or collector? give it another address with its flag)"
            );
            Ok(None)
        }
        Err(e) => Err(StartError::Telemetry(format!(
            "{what} receiver: cannot bind {addr}: {e}"
        ))),
    }
}

/// The store's bounds from the command line.
pub fn limits(config: &Config) -> Limits {
    Limits {
        max_spans: config.trace_max_spans,
        max_age: config.trace_max_age,
        ..Limits::default()
    }
}

/// The SDK provider whose spans go into `store` (synchronously at span end: the store is
/// memory, an insert is a lock and a push).
pub fn provider(store: Arc<TraceStore>) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(StoreExporter::new(store))
        .build()
}

/// The `tracing` layer that records [`TRACE_TARGET`] spans (and the events inside them) into
/// `store`; every other span is left to the log.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        // Events of the trace target at any level: pilot writes a push's sends and ACKs at
        // debug so that the log does not repeat them for every proxy.
        meta.target() == TRACE_TARGET || (!meta.is_span() && *meta.level() <= tracing::Level::INFO)
    });
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE))
        .with_threads(false)
        // Where in mastd's source a span is written says nothing to the user; busy/idle do.
        .with_location(false)
        .with_target(false)
        .with_filter(filter)
}

// === impl StoreExporter ===

impl StoreExporter {
    pub fn new(store: Arc<TraceStore>) -> Self {
        Self {
            store,
            process: Arc::new(Process {
                service: SERVICE.to_string(),
                tags: vec![Tag::str("service.version", env!("CARGO_PKG_VERSION"))],
            }),
        }
    }

    fn convert(&self, s: SpanData) -> Span {
        let ctx = &s.span_context;
        let parent = SpanId::from_bytes(&s.parent_span_id.to_bytes());
        let (error, status_message) = match &s.status {
            Status::Error { description } => (true, description.to_string()),
            _ => (false, String::new()),
        };
        let kind = match s.span_kind {
            opentelemetry::trace::SpanKind::Client => SpanKind::Client,
            opentelemetry::trace::SpanKind::Server => SpanKind::Server,
            opentelemetry::trace::SpanKind::Producer => SpanKind::Producer,
            opentelemetry::trace::SpanKind::Consumer => SpanKind::Consumer,
            opentelemetry::trace::SpanKind::Internal => SpanKind::Internal,
        };
        Span {
            trace_id: TraceId(ctx.trace_id().to_bytes()),
            span_id: SpanId(ctx.span_id().to_bytes()),
            parent,
            name: s.name.to_string(),
            kind,
            start_unix_nano: nanos(s.start_time),
            end_unix_nano: nanos(s.end_time),
            error,
            status_message,
            tags: s.attributes.iter().map(tag).collect(),
            events: s
                .events
                .events
                .iter()
                .map(|e| Event {
                    time_unix_nano: nanos(e.timestamp),
                    name: e.name.to_string(),
                    tags: e.attributes.iter().map(tag).collect(),
                })
                .collect(),
            process: Arc::clone(&self.process),
        }
    }
}

impl SpanExporter for StoreExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans: Vec<Span> = batch.into_iter().map(|s| self.convert(s)).collect();
        self.store.insert(spans);
        std::future::ready(Ok(()))
    }
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

fn tag(kv: &opentelemetry::KeyValue) -> Tag {
    let value = match &kv.value {
        opentelemetry::Value::Bool(b) => TagValue::Bool(*b),
        opentelemetry::Value::I64(i) => TagValue::Int(*i),
        opentelemetry::Value::F64(f) => TagValue::Float(*f),
        other => TagValue::Str(other.as_str().into_owned()),
    };
    Tag::new(kv.key.as_str(), value)
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use mast_telemetry::traces::TraceQuery;

    #[test]
    fn trace_target_spans_reach_the_store_with_parents_tags_and_errors() {
        let store = Arc::new(TraceStore::default());
        let provider = provider(Arc::clone(&store));
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let change =
                tracing::info_span!(target: "mast::trace", "config.change", version = 7u64);
            let _c = change.enter();
            {
                let _v =
                    tracing::info_span!(target: "mast::trace", "config.validate", rejected = 1u64)
                        .entered();
                tracing::warn!("config rejected, last good version kept: bad.yaml");
            }
            // Not a trace span: only logged, never stored.
            let _other = tracing::info_span!("xds.connection").entered();
            let _push = tracing::info_span!(
                target: "mast::trace",
                "xds.push",
                proxy = "sleep-1.default",
                otel.status_code = "ERROR",
                otel.status_description = "NACK: bad cluster"
            )
            .entered();
        });
        let found = store.find(&TraceQuery {
            service: Some(SERVICE.into()),
            ..TraceQuery::default()
        });
        assert_eq!(found.len(), 1, "one trace: {found:?}");
        let spans = &found[0].spans;
        let by = |n: &str| {
            spans
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(spans.len(), 3, "{spans:?}");
        let (change, validate, push) = (by("config.change"), by("config.validate"), by("xds.push"));
        assert_eq!(change.parent, None);
        assert_eq!(validate.parent, Some(change.span_id));
        // The log span between them is skipped: xds.push hangs under config.change.
        assert_eq!(push.parent, Some(change.span_id));
        // A u64 may not fit OpenTelemetry's i64: tracing-opentelemetry writes it as text.
        assert!(
            change.tags.contains(&Tag::str("version", "7")),
            "{:?}",
            change.tags
        );
        assert!(
            !change.tags.iter().any(|t| t.key.starts_with("code.")),
            "{:?}",
            change.tags
        );
        assert!(
            validate
                .events
                .iter()
                .any(|e| e.name.contains("config rejected"))
        );
        assert!(
            push.error && push.status_message == "NACK: bad cluster",
            "{push:?}"
        );
        assert_eq!(change.service(), "mastd");
    }
}
