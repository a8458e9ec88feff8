//! Zipkin v2 JSON spans (`POST /api/v2/spans`, Istio's `zipkin` provider and Envoy's Zipkin
//! tracer with `HTTP_JSON`), turned into the store's spans. Zipkin's `shared` server span
//! reuses its client's id; it gets an id of its own here, a child of the shared one, so the
//! two stay distinct in the waterfall (as Jaeger's Zipkin translator keeps them apart).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::model::UNKNOWN_SERVICE;
use super::model::{Event, Process, Span, SpanError, SpanId, SpanKind, Tag, TagValue, TraceId};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    trace_id: String,
    id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    /// Microseconds since the epoch.
    #[serde(default)]
    timestamp: Option<u64>,
    /// Microseconds.
    #[serde(default)]
    duration: Option<u64>,
    #[serde(default)]
    shared: Option<bool>,
    #[serde(default)]
    local_endpoint: Option<Endpoint>,
    #[serde(default)]
    remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    ipv4: Option<String>,
    #[serde(default)]
    ipv6: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct Annotation {
    timestamp: u64,
    value: String,
}

/// Why a Zipkin body was refused as a whole.
#[derive(Debug, thiserror::Error)]
#[error("Zipkin v2 JSON: {0}")]
pub struct ZipkinError(#[from] serde_json::Error);

/// The spans of a Zipkin v2 JSON list; spans with bad ids are refused one by one.
pub fn from_zipkin_json(body: &[u8]) -> Result<(Vec<Span>, Vec<SpanError>), ZipkinError> {
    let list: Vec<ZipkinSpan> = serde_json::from_slice(body)?;
    let mut processes: HashMap<String, Arc<Process>> = HashMap::new();
    let mut spans = Vec::with_capacity(list.len());
    let mut errors = Vec::new();
    for (index, z) in list.into_iter().enumerate() {
        let Some(trace_id) = TraceId::parse_hex(&z.trace_id) else {
            errors.push(SpanError::Field {
                index,
                field: "traceId",
                value: z.trace_id,
                reason: "expected 16 or 32 hex digits, not all zero",
            });
            continue;
        };
        let Some(id) = SpanId::parse_hex(&z.id) else {
            errors.push(SpanError::Field {
                index,
                field: "id",
                value: z.id,
                reason: "expected 16 hex digits, not all zero",
            });
            continue;
        };
        let parent = match z.parent_id.as_deref() {
            None | Some("") => None,
            Some(p) => match SpanId::parse_hex(p) {
                Some(p) => Some(p),
                None => {
                    errors.push(SpanError::Field {
                        index,
                        field: "parentId",
                        value: p.to_string(),
                        reason: "expected 16 hex digits",
                    });
                    continue;
                }
            },
        };
        let (span_id, parent) = if z.shared == Some(true) {
            (shared_id(id), Some(id))
        } else {
            (id, parent)
        };
        let service = z
            .local_endpoint
            .as_ref()
            .and_then(|e| e.service_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
        let process = processes
            .entry(service.clone())
            .or_insert_with(|| {
                let mut tags = Vec::new();
                if let Some(ip) = z
                    .local_endpoint
                    .as_ref()
                    .and_then(|e| e.ipv4.clone().or_else(|| e.ipv6.clone()))
                {
                    tags.push(Tag::str("ip", ip));
                }
                Arc::new(Process { service, tags })
            })
            .clone();
        let kind = match z.kind.as_deref() {
            Some("CLIENT") => SpanKind::Client,
            Some("SERVER") => SpanKind::Server,
            Some("PRODUCER") => SpanKind::Producer,
            Some("CONSUMER") => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        };
        let start = z.timestamp.unwrap_or(0).saturating_mul(1_000);
        let end = start.saturating_add(z.duration.unwrap_or(0).saturating_mul(1_000));
        let mut tags: Vec<Tag> = z
            .tags
            .into_iter()
            .map(|(k, v)| Tag::new(k, TagValue::Str(v)))
            .collect();
        if let Some(remote) = &z.remote_endpoint {
            if let Some(name) = remote.service_name.as_ref().filter(|s| !s.is_empty()) {
                tags.push(Tag::str("peer.service", name.clone()));
            }
            if let Some(ip) = remote.ipv4.as_ref().or(remote.ipv6.as_ref()) {
                tags.push(Tag::str("peer.address", ip.clone()));
            }
            if let Some(port) = remote.port {
                tags.push(Tag::new("peer.port", TagValue::Int(port.into())));
            }
        }
        // Zipkin's convention (and Envoy's): a tag `error` marks a failed span.
        let error = tags.iter().any(|t| t.key == "error");
        spans.push(Span {
            trace_id,
            span_id,
            parent,
            name: z.name.unwrap_or_default(),
            kind,
            start_unix_nano: start,
            end_unix_nano: end,
            error,
            status_message: String::new(),
            tags,
            events: z
                .annotations
                .into_iter()
                .map(|a| Event {
                    time_unix_nano: a.timestamp.saturating_mul(1_000),
                    name: a.value,
                    tags: vec![],
                })
                .collect(),
            process,
        });
    }
    Ok((spans, errors))
}

/// A stable id for the server half of a shared Zipkin span.
fn shared_id(id: SpanId) -> SpanId {
    let mut b = id.0;
    b[0] ^= 0x80;
    b[7] ^= 0x01;
    SpanId(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_style_zipkin_spans_are_read() {
        let body = br#"[
          {"traceId":"463ac35c9f6413ad48485a3953bb6124","id":"a2fb4a1d1a96d312","name":"user.default.svc.cluster.local:80/*",
           "kind":"CLIENT","timestamp":1700000000000000,"duration":12000,
           "localEndpoint":{"serviceName":"myapp.default","ipv4":"10.0.0.1"},
           "remoteEndpoint":{"ipv4":"10.0.0.2","port":8080},
           "tags":{"http.status_code":"503","error":"true","upstream_cluster":"outbound|80||user.default.svc.cluster.local"}},
          {"traceId":"463ac35c9f6413ad48485a3953bb6124","id":"a2fb4a1d1a96d312","shared":true,"kind":"SERVER",
           "timestamp":1700000000001000,"duration":10000,"localEndpoint":{"serviceName":"user.default"}},
          {"traceId":"0000","id":"1"}
        ]"#;
        let (spans, errors) = from_zipkin_json(body).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("traceId"), "{}", errors[0]);
        let client = &spans[0];
        assert_eq!(
            client.trace_id.to_string(),
            "463ac35c9f6413ad48485a3953bb6124"
        );
        assert_eq!(client.service(), "myapp.default");
        assert_eq!(client.kind, SpanKind::Client);
        assert!(client.error);
        assert_eq!(client.duration_nanos(), 12_000_000);
        assert_eq!(client.process.tags, [Tag::str("ip", "10.0.0.1")]);
        let server = &spans[1];
        assert_ne!(server.span_id, client.span_id);
        assert_eq!(server.parent, Some(client.span_id));
        assert!(from_zipkin_json(b"{").is_err());
    }
}
