//! The trace query API, shaped like Jaeger's query service (`/api/traces`,
//! `/api/traces/{id}`, `/api/services`, `/api/services/{service}/operations`), so the web
//! view and tools written for Jaeger's JSON read mastd's store unchanged. Spans carry
//! Jaeger's fields (`traceID`, `spanID`, `operationName`, `references`, `startTime` and
//! `duration` in µs, typed `tags`, `logs`, `processID`) and each trace its `processes`; the
//! OpenTelemetry extras become tags as Jaeger's OTLP translator writes them (`span.kind`,
//! `otel.status_code`, `error=true`).
//!
//! One addition: `source` and `target` select the traces with a call along one graph edge
//! (a span of `source` whose direct child is a span of `target`), for the edge side panel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::model::{Span, SpanKind, Tag, TagValue, TraceId};
use super::store::{MAX_LIMIT, Trace, TraceQuery, TraceStore, unix_nanos};

/// A failed query, answered as Jaeger does: `{"data": null, "errors": [{"code", "msg"}]}`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{name} {value:?}: {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("trace not found: {0}")]
    NotFound(String),
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let code = match self {
            QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": code.as_u16(), "msg": self.to_string()}],
        });
        (code, Json(body)).into_response()
    }
}

/// The query routes over `store`, to merge into the telemetry router.
pub fn router(store: Arc<TraceStore>) -> Router {
    Router::new()
        .route("/api/traces", get(find_traces))
        .route("/api/traces/{id}", get(get_trace))
        .route("/api/services", get(services))
        .route("/api/services/{service}/operations", get(operations))
        .with_state(store)
}

/// Jaeger's envelope around `data`.
fn envelope(data: Value, total: usize) -> Json<Value> {
    Json(json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": null}))
}

async fn services(State(store): State<Arc<TraceStore>>) -> Json<Value> {
    let list = store.services();
    let n = list.len();
    envelope(json!(list), n)
}

async fn operations(
    State(store): State<Arc<TraceStore>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, QueryError> {
    let Path(service) = path.map_err(|e| QueryError::BadRequest(e.body_text()))?;
    let list = store.operations(&service);
    let n = list.len();
    Ok(envelope(json!(list), n))
}

async fn get_trace(
    State(store): State<Arc<TraceStore>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, QueryError> {
    let Path(id) = path.map_err(|e| QueryError::BadRequest(e.body_text()))?;
    let trace_id = TraceId::parse_hex(&id).ok_or(QueryError::BadValue {
        name: "trace id",
        value: id.clone(),
        expected: "expected up to 32 hex digits, not all zero",
    })?;
    let trace = store.get(&trace_id).ok_or(QueryError::NotFound(id))?;
    Ok(envelope(json!([trace_json(&trace)]), 1))
}

async fn find_traces(
    State(store): State<Arc<TraceStore>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, QueryError> {
    let Query(params) =
        query.map_err(|e| QueryError::BadRequest(format!("query string: {}", e.body_text())))?;
    let q = parse_query(&params, unix_nanos(std::time::SystemTime::now()))?;
    let store2 = Arc::clone(&store);
    // A scan of up to the whole store and the JSON of its hits: off the async threads.
    let data = tokio::task::spawn_blocking(move || {
        let found = store2.find(&q);
        found.iter().map(trace_json).collect::<Vec<_>>()
    })
    .await
    .map_err(|e| QueryError::BadRequest(format!("internal error: {e}")))?;
    let n = data.len();
    Ok(envelope(Value::Array(data), n))
}

/// Jaeger's query parameters (and `source`/`target`, `errors`) → a store query.
pub fn parse_query(params: &[(String, String)], now_nanos: u64) -> Result<TraceQuery, QueryError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let mut q = TraceQuery {
        service: get("service").map(str::to_string),
        operation: get("operation").map(str::to_string),
        ..TraceQuery::default()
    };
    match (get("source"), get("target")) {
        (Some(s), Some(t)) => q.edge = Some((s.to_string(), t.to_string())),
        (None, None) => {}
        _ => {
            return Err(QueryError::BadRequest(
                "source and target: give both (an edge's caller and callee services)".into(),
            ));
        }
    }
    if let Some(v) = get("limit") {
        q.limit = v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or(QueryError::BadValue {
                name: "limit",
                value: v.to_string(),
                expected: "expected a whole number from 1 to 1500",
            })?;
    }
    const DURATION: &str = "expected a duration such as 500us, 100ms, 1.5s, 2m, 1h or 2d";
    let duration = |name: &'static str| -> Result<Option<Duration>, QueryError> {
        get(name)
            .map(|v| {
                parse_duration(v).ok_or(QueryError::BadValue {
                    name,
                    value: v.to_string(),
                    expected: DURATION,
                })
            })
            .transpose()
    };
    q.min_duration = duration("minDuration")?;
    q.max_duration = duration("maxDuration")?;
    let micros = |name: &'static str| -> Result<Option<u64>, QueryError> {
        get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map(|us| us.saturating_mul(1_000))
                    .map_err(|_| QueryError::BadValue {
                        name,
                        value: v.to_string(),
                        expected: "expected Unix microseconds",
                    })
            })
            .transpose()
    };
    q.start_min = micros("start")?;
    q.start_max = micros("end")?;
    match get("lookback") {
        None | Some("custom") => {}
        Some(v) => {
            let back = parse_duration(v).ok_or(QueryError::BadValue {
                name: "lookback",
                value: v.to_string(),
                expected: DURATION,
            })?;
            let since = now_nanos.saturating_sub(back.as_nanos().min(u64::MAX as u128) as u64);
            q.start_min = Some(q.start_min.map_or(since, |s| s.max(since)));
        }
    }
    q.errors_only = match get("errors") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(QueryError::BadValue {
                name: "errors",
                value: v.to_string(),
                expected: "expected true or false",
            });
        }
    };
    // Jaeger's `tags={"error":"true"}` is the one tag filter the store answers.
    if let Some(v) = get("tags") {
        let tags: HashMap<String, String> =
            serde_json::from_str(v).map_err(|_| QueryError::BadValue {
                name: "tags",
                value: v.to_string(),
                expected: "expected a JSON object of strings, such as {\"error\":\"true\"}",
            })?;
        for (k, v) in tags {
            if k == "error" && v == "true" {
                q.errors_only = true;
            } else {
                return Err(QueryError::BadRequest(format!(
                    "tags: only {{\"error\":\"true\"}} is supported, not {k:?}={v:?}"
                )));
            }
        }
    }
    Ok(q)
}

/// Go-style durations as Jaeger takes them (`100ms`, `1.5s`, `1h`), plus days (`2d`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let nanos_per = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        _ => return None,
    };
    let nanos = n * nanos_per;
    (nanos < u64::MAX as f64).then(|| Duration::from_nanos(nanos as u64))
}

fn tag_json(t: &Tag) -> Value {
    let value = match &t.value {
        TagValue::Str(s) => json!(s),
        TagValue::Bool(b) => json!(b),
        TagValue::Int(i) => json!(i),
        TagValue::Float(f) => json!(f),
    };
    json!({"key": t.key, "type": t.value.jaeger_type(), "value": value})
}

/// One trace in Jaeger's JSON: spans sorted by start, processes `p1`, `p2`… in order of
/// first appearance.
pub fn trace_json(trace: &Trace) -> Value {
    let mut spans: Vec<&Span> = trace.spans.iter().collect();
    spans.sort_by_key(|s| (s.start_unix_nano, s.span_id));
    let mut processes: Vec<&super::model::Process> = Vec::new();
    let trace_id = trace.id.to_string();
    let spans_json: Vec<Value> = spans
        .iter()
        .map(|s| {
            let pid = match processes.iter().position(|p| **p == *s.process) {
                Some(i) => i,
                None => {
                    processes.push(&s.process);
                    processes.len() - 1
                }
            };
            span_json(s, &trace_id, &format!("p{}", pid + 1))
        })
        .collect();
    let processes: serde_json::Map<String, Value> = processes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("p{}", i + 1),
                json!({
                    "serviceName": p.service,
                    "tags": p.tags.iter().map(tag_json).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    json!({"traceID": trace_id, "spans": spans_json, "processes": processes, "warnings": null})
}

fn span_json(s: &Span, trace_id: &str, process_id: &str) -> Value {
    let mut tags: Vec<Value> = s.tags.iter().map(tag_json).collect();
    let kind = match s.kind {
        SpanKind::Client => Some("client"),
        SpanKind::Server => Some("server"),
        SpanKind::Producer => Some("producer"),
        SpanKind::Consumer => Some("consumer"),
        SpanKind::Internal => Some("internal"),
        SpanKind::Unspecified => None,
    };
    let has = |k: &str| s.tags.iter().any(|t| t.key == k);
    if let Some(kind) = kind.filter(|_| !has("span.kind")) {
        tags.push(tag_json(&Tag::str("span.kind", kind)));
    }
    if s.error {
        tags.push(tag_json(&Tag::str("otel.status_code", "ERROR")));
        if !s.status_message.is_empty() {
            tags.push(tag_json(&Tag::str(
                "otel.status_description",
                s.status_message.clone(),
            )));
        }
        if !has("error") {
            tags.push(tag_json(&Tag::new("error", TagValue::Bool(true))));
        }
    }
    let references: Vec<Value> = s
        .parent
        .iter()
        .map(|p| json!({"refType": "CHILD_OF", "traceID": trace_id, "spanID": p.to_string()}))
        .collect();
    let logs: Vec<Value> = s
        .events
        .iter()
        .map(|e| {
            let mut fields = vec![tag_json(&Tag::str("event", e.name.clone()))];
            fields.extend(e.tags.iter().map(tag_json));
            json!({"timestamp": e.time_unix_nano / 1_000, "fields": fields})
        })
        .collect();
    json!({
        "traceID": trace_id,
        "spanID": s.span_id.to_string(),
        "operationName": s.name,
        "references": references,
        "startTime": s.start_unix_nano / 1_000,
        "duration": s.duration_nanos() / 1_000,
        "tags": tags,
        "logs": logs,
        "processID": process_id,
        "warnings": null,
        "flags": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::super::model::{Process, SpanId};
    use super::*;

    fn params(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_parameters_are_jaegers() {
        let now = 10_000_000_000_000;
        let q = parse_query(
            &params(&[
                ("service", "user.default"),
                ("limit", "5"),
                ("lookback", "1h"),
                ("minDuration", "1.5ms"),
                ("tags", r#"{"error":"true"}"#),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(q.service.as_deref(), Some("user.default"));
        assert_eq!(q.limit, 5);
        assert_eq!(q.start_min, Some(now - 3_600_000_000_000));
        assert_eq!(q.min_duration, Some(Duration::from_micros(1_500)));
        assert!(q.errors_only);
        let edge = parse_query(&params(&[("source", "a"), ("target", "b")]), now).unwrap();
        assert_eq!(edge.edge, Some(("a".into(), "b".into())));

        for (bad, names) in [
            (params(&[("limit", "0")]), "limit"),
            (params(&[("limit", "x")]), "limit"),
            (params(&[("lookback", "7x")]), "lookback"),
            (params(&[("minDuration", "fast")]), "minDuration"),
            (params(&[("source", "a")]), "source and target"),
            (params(&[("tags", "{")]), "tags"),
            (params(&[("start", "-1")]), "start"),
        ] {
            let e = parse_query(&bad, now).unwrap_err().to_string();
            assert!(e.starts_with(names), "{e}");
        }
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("ms"), None);
    }

    #[test]
    fn a_trace_has_jaegers_json_shape() {
        let process = |svc: &str| {
            Arc::new(Process {
                service: svc.into(),
                tags: vec![Tag::str("istio.namespace", "default")],
            })
        };
        let span = |id: u8, parent: Option<u8>, p: &Arc<Process>, start: u64| Span {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([id; 8]),
            parent: parent.map(|p| SpanId([p; 8])),
            name: format!("op{id}"),
            kind: SpanKind::Client,
            start_unix_nano: start,
            end_unix_nano: start + 2_500_000,
            error: id == 2,
            status_message: if id == 2 {
                "upstream reset".into()
            } else {
                String::new()
            },
            tags: vec![Tag::new("http.status_code", TagValue::Int(200))],
            events: vec![],
            process: Arc::clone(p),
        };
        let (a, b) = (process("myapp.default"), process("user.default"));
        let trace = Trace {
            id: TraceId([7; 16]),
            spans: vec![
                span(2, Some(1), &b, 2_000_000_000),
                span(1, None, &a, 1_000_000_000),
            ],
        };
        let j = trace_json(&trace);
        assert_eq!(j["traceID"], "07070707070707070707070707070707");
        let spans = j["spans"].as_array().unwrap();
        // Sorted by start: the root first, in process p1.
        assert_eq!(spans[0]["spanID"], "0101010101010101");
        assert_eq!(spans[0]["operationName"], "op1");
        assert_eq!(spans[0]["startTime"], 1_000_000);
        assert_eq!(spans[0]["duration"], 2_500);
        assert_eq!(spans[0]["processID"], "p1");
        assert_eq!(spans[0]["references"], json!([]));
        assert_eq!(
            spans[1]["references"],
            json!([{"refType": "CHILD_OF", "traceID": "07070707070707070707070707070707", "spanID": "0101010101010101"}])
        );
        assert_eq!(spans[1]["processID"], "p2");
        let tags = spans[1]["tags"].as_array().unwrap();
        assert!(tags.contains(&json!({"key": "http.status_code", "type": "int64", "value": 200})));
        assert!(tags.contains(&json!({"key": "span.kind", "type": "string", "value": "client"})));
        assert!(tags.contains(&json!({"key": "error", "type": "bool", "value": true})));
        assert!(tags.contains(
            &json!({"key": "otel.status_description", "type": "string", "value": "upstream reset"})
        ));
        assert_eq!(j["processes"]["p1"]["serviceName"], "myapp.default");
        assert_eq!(
            j["processes"]["p2"]["tags"],
            json!([{"key": "istio.namespace", "type": "string", "value": "default"}])
        );
    }
}
