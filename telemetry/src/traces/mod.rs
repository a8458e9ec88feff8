//! Traces, as Kiali shows them from Jaeger, without needing Jaeger: mastd receives the spans
//! the sidecars export (OTLP gRPC :4317 and HTTP :4318, Zipkin v2 JSON), keeps the recent
//! ones in a bounded in-memory [`TraceStore`], and answers Jaeger's query API
//! ([`jaeger::router`]) for the trace list and waterfall of the topology view's side panel.
//! mastd's own work (config change → validation → push) goes into the same store through
//! [`TraceStore::insert`], so it is one more service in the same view.
//!
//! The store is a window of the last minutes (bounds in [`Limits`] and the README), not a
//! tracing back end: pointing the providers at Jaeger, Tempo or a collector instead is one
//! MeshConfig `extensionProviders` entry.

pub mod jaeger;
mod model;
pub mod receiver;
mod store;
mod zipkin;

pub use model::{
    Event, Process, SERVICE_NAME, Span, SpanError, SpanId, SpanKind, Tag, TagValue, TraceId,
    UNKNOWN_SERVICE, from_otlp,
};
pub use store::{DEFAULT_LIMIT, Limits, MAX_LIMIT, StoreStats, Trace, TraceQuery, TraceStore};
pub use zipkin::{ZipkinError, from_zipkin_json};
