//! The spans the trace store keeps, in one shape whatever carried them in (OTLP protobuf or
//! JSON, Zipkin v2 JSON, mastd's own in-process spans). Only what the query API and the
//! waterfall show is kept: ids, names, times, status and tags as strings; resources become a
//! shared [`Process`], as Jaeger's `processes`, so a batch of a thousand spans from one proxy
//! holds its resource attributes once.

use std::fmt;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span, status};

/// The resource attribute naming a span's service (OpenTelemetry's `service.name`).
pub const SERVICE_NAME: &str = "service.name";
/// The service of spans that do not name one (OpenTelemetry SDKs' default is the same).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// A 16-byte trace id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

/// A typed tag value, as Jaeger's tag types.
#[derive(Clone, Debug, PartialEq)]
pub enum TagValue {
    Str(String),
    Bool(bool),
    Int(i64),
    Float(f64),
}

/// One key/value tag of a span or process.
#[derive(Clone, Debug, PartialEq)]
pub struct Tag {
    pub key: String,
    pub value: TagValue,
}

/// The emitter of spans (a proxy, mastd): its service name and resource attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    pub service: String,
    pub tags: Vec<Tag>,
}

/// The span's kind, as OpenTelemetry's (Zipkin's kinds map onto it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// A timestamped note inside a span (OpenTelemetry events, Zipkin annotations).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub time_unix_nano: u64,
    pub name: String,
    pub tags: Vec<Tag>,
}

/// One span as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// OpenTelemetry's status Error, or a tag `error=true` (Envoy's Zipkin spans).
    pub error: bool,
    pub status_message: String,
    pub tags: Vec<Tag>,
    pub events: Vec<Event>,
    pub process: Arc<Process>,
}

/// Why an incoming batch (or part of one) was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpanError {
    #[error("span {index}: trace_id must be 16 bytes, not all zero (got {len} bytes)")]
    TraceId { index: usize, len: usize },
    #[error("span {index}: span_id must be 8 bytes, not all zero (got {len} bytes)")]
    SpanId { index: usize, len: usize },
    #[error("span {index}: parent_span_id must be empty or 8 bytes (got {len} bytes)")]
    ParentId { index: usize, len: usize },
    #[error("span {index}: {field} {value:?}: {reason}")]
    Field {
        index: usize,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

// === impl TraceId / SpanId ===

impl TraceId {
    /// From OTLP bytes; `None` unless 16 bytes and not all zero.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let id: [u8; 16] = b.try_into().ok()?;
        (id != [0; 16]).then_some(Self(id))
    }

    /// From hex as Jaeger and Zipkin write it: 32 digits, or 16 (a 64-bit id, left-padded).
    pub fn parse_hex(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 32 {
            return None;
        }
        let padded = format!("{s:0>32}");
        let mut id = [0u8; 16];
        decode_hex(&padded, &mut id)?;
        (id != [0; 16]).then_some(Self(id))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl SpanId {
    /// From OTLP bytes; `None` unless 8 bytes and not all zero.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let id: [u8; 8] = b.try_into().ok()?;
        (id != [0; 8]).then_some(Self(id))
    }

    /// From 16 hex digits (fewer are left-padded).
    pub fn parse_hex(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 16 {
            return None;
        }
        let padded = format!("{s:0>16}");
        let mut id = [0u8; 8];
        decode_hex(&padded, &mut id)?;
        (id != [0; 8]).then_some(Self(id))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let bytes = s.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(())
}

// === impl TagValue ===

impl TagValue {
    /// Jaeger's type name.
    pub fn jaeger_type(&self) -> &'static str {
        match self {
            TagValue::Str(_) => "string",
            TagValue::Bool(_) => "bool",
            TagValue::Int(_) => "int64",
            TagValue::Float(_) => "float64",
        }
    }

    fn from_any(v: &AnyValue) -> Self {
        match &v.value {
            Some(any_value::Value::StringValue(s)) => TagValue::Str(s.clone()),
            Some(any_value::Value::BoolValue(b)) => TagValue::Bool(*b),
            Some(any_value::Value::IntValue(i)) => TagValue::Int(*i),
            Some(any_value::Value::DoubleValue(f)) => TagValue::Float(*f),
            // Arrays, maps and bytes are shown as text, as Jaeger's OTLP translator does.
            Some(any_value::Value::ArrayValue(a)) => TagValue::Str(format!(
                "[{}]",
                a.values
                    .iter()
                    .map(|v| TagValue::from_any(v).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Some(any_value::Value::KvlistValue(kv)) => TagValue::Str(format!(
                "{{{}}}",
                kv.values
                    .iter()
                    .map(|kv| format!(
                        "{}:{}",
                        kv.key,
                        kv.value
                            .as_ref()
                            .map(|v| TagValue::from_any(v).to_string())
                            .unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Some(any_value::Value::BytesValue(b)) => {
                TagValue::Str(b.iter().map(|b| format!("{b:02x}")).collect())
            }
            // A string-table index (profiles' dictionary encoding): no table here to read.
            Some(any_value::Value::StringValueStrindex(i)) => TagValue::Int((*i).into()),
            None => TagValue::Str(String::new()),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            TagValue::Str(s) => s.len(),
            _ => 0,
        }
    }
}

impl fmt::Display for TagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagValue::Str(s) => f.write_str(s),
            TagValue::Bool(b) => write!(f, "{b}"),
            TagValue::Int(i) => write!(f, "{i}"),
            TagValue::Float(x) => write!(f, "{x}"),
        }
    }
}

// === impl Tag ===

impl Tag {
    pub fn new(key: impl Into<String>, value: TagValue) -> Self {
        Self {
            key: key.into(),
            value,
        }
    }

    pub fn str(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(key, TagValue::Str(value.into()))
    }

    fn from_kv(kv: &KeyValue) -> Self {
        Self {
            key: kv.key.clone(),
            value: kv
                .value
                .as_ref()
                .map(TagValue::from_any)
                .unwrap_or(TagValue::Str(String::new())),
        }
    }
}

fn tags_bytes(tags: &[Tag]) -> usize {
    tags.iter()
        .map(|t| std::mem::size_of::<Tag>() + t.key.len() + t.value.heap_bytes())
        .sum()
}

// === impl Span ===

impl Span {
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    pub fn service(&self) -> &str {
        &self.process.service
    }

    /// The memory this span holds, for the store's byte budget (its process is shared and
    /// counted once per batch by the caller's estimate, not here).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Span>()
            + self.name.len()
            + self.status_message.len()
            + tags_bytes(&self.tags)
            + self
                .events
                .iter()
                .map(|e| std::mem::size_of::<Event>() + e.name.len() + tags_bytes(&e.tags))
                .sum::<usize>()
    }

    /// The value of tag `key`, if the span has it.
    pub fn tag(&self, key: &str) -> Option<&TagValue> {
        self.tags.iter().find(|t| t.key == key).map(|t| &t.value)
    }
}

/// The spans of an OTLP export request. A span with a bad id is refused (the rest of the
/// batch is kept, and the refusals are reported back as OTLP's partial success).
pub fn from_otlp(req: &ExportTraceServiceRequest) -> (Vec<Span>, Vec<SpanError>) {
    let mut spans = Vec::new();
    let mut errors = Vec::new();
    let mut index = 0usize;
    for rs in &req.resource_spans {
        let attrs = rs
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let mut service = UNKNOWN_SERVICE.to_string();
        let mut tags = Vec::with_capacity(attrs.len());
        for kv in attrs {
            let tag = Tag::from_kv(kv);
            if tag.key == SERVICE_NAME {
                service = tag.value.to_string();
            } else {
                tags.push(tag);
            }
        }
        let process = Arc::new(Process { service, tags });
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let i = index;
                index += 1;
                match span_from_otlp(i, s, &process) {
                    Ok(span) => spans.push(span),
                    Err(e) => errors.push(e),
                }
            }
        }
    }
    (spans, errors)
}

fn span_from_otlp(
    index: usize,
    s: &opentelemetry_proto::tonic::trace::v1::Span,
    process: &Arc<Process>,
) -> Result<Span, SpanError> {
    let trace_id = TraceId::from_bytes(&s.trace_id).ok_or(SpanError::TraceId {
        index,
        len: s.trace_id.len(),
    })?;
    let span_id = SpanId::from_bytes(&s.span_id).ok_or(SpanError::SpanId {
        index,
        len: s.span_id.len(),
    })?;
    let parent = match s.parent_span_id.len() {
        0 => None,
        _ => Some(
            SpanId::from_bytes(&s.parent_span_id).ok_or(SpanError::ParentId {
                index,
                len: s.parent_span_id.len(),
            })?,
        ),
    };
    let kind = match span::SpanKind::try_from(s.kind).unwrap_or(span::SpanKind::Unspecified) {
        span::SpanKind::Unspecified => SpanKind::Unspecified,
        span::SpanKind::Internal => SpanKind::Internal,
        span::SpanKind::Server => SpanKind::Server,
        span::SpanKind::Client => SpanKind::Client,
        span::SpanKind::Producer => SpanKind::Producer,
        span::SpanKind::Consumer => SpanKind::Consumer,
    };
    let (mut error, status_message) = match &s.status {
        Some(st) => (
            st.code == status::StatusCode::Error as i32,
            st.message.clone(),
        ),
        None => (false, String::new()),
    };
    let tags: Vec<Tag> = s.attributes.iter().map(Tag::from_kv).collect();
    // Envoy marks failed requests with the tag error=true (OpenTracing's convention).
    error |= tags.iter().any(|t| {
        t.key == "error" && matches!(&t.value, TagValue::Bool(true))
            || matches!(&t.value, TagValue::Str(v) if t.key == "error" && v == "true")
    });
    Ok(Span {
        trace_id,
        span_id,
        parent,
        name: s.name.clone(),
        kind,
        start_unix_nano: s.start_time_unix_nano,
        end_unix_nano: s.end_time_unix_nano.max(s.start_time_unix_nano),
        error,
        status_message,
        tags,
        events: s
            .events
            .iter()
            .map(|e| Event {
                time_unix_nano: e.time_unix_nano,
                name: e.name.clone(),
                tags: e.attributes.iter().map(Tag::from_kv).collect(),
            })
            .collect(),
        process: Arc::clone(process),
    })
}
