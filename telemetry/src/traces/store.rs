//! The bounded trace store: recent spans grouped by trace, in memory, for the trace view.
//! It is a window on the last minutes of traffic, not a database: the oldest traces go first
//! when any bound is reached (trace count, span count, estimated bytes) and when they are
//! older than the age limit, so memory stays under a fixed ceiling however much the proxies
//! send (figures in telemetry/README.md, "Traces").
//!
//! Spans of one trace arrive in several batches (each proxy exports its own, seconds apart);
//! a trace keeps its place in the eviction order from its first span, so a long trace is not
//! kept alive by a late straggler.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::model::{Span, SpanId, TraceId};

/// The store's bounds. Every bound holds at once; the defaults keep the store under about
/// 64 MiB of span data.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Traces kept at most.
    pub max_traces: usize,
    /// Spans kept at most, over all traces.
    pub max_spans: usize,
    /// Estimated bytes of span data kept at most (names, tags, events, fixed parts).
    pub max_bytes: usize,
    /// A trace whose first span arrived longer ago than this is dropped.
    pub max_age: Duration,
    /// Spans kept per trace; later ones are counted as dropped (a runaway trace cannot push
    /// every other trace out).
    pub max_spans_per_trace: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_traces: 10_000,
            max_spans: 100_000,
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(30 * 60),
            max_spans_per_trace: 2_000,
        }
    }
}

/// A stored trace, as a query returns it: its spans in arrival order.
#[derive(Clone, Debug)]
pub struct Trace {
    pub id: TraceId,
    pub spans: Vec<Span>,
}

/// What to look for. Empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct TraceQuery {
    /// A span of this service (its process' `service.name`).
    pub service: Option<String>,
    /// With `service`: that span's operation name.
    pub operation: Option<String>,
    /// A span of the first service whose direct child is a span of the second: one call
    /// along a graph edge (a client span in the caller's sidecar, the server span in the
    /// callee's).
    pub edge: Option<(String, String)>,
    /// The trace's duration (first start to last end), at least / at most.
    pub min_duration: Option<Duration>,
    pub max_duration: Option<Duration>,
    /// The trace started in this window of wall-clock time (Unix nanoseconds).
    pub start_min: Option<u64>,
    pub start_max: Option<u64>,
    /// Only traces with a failed span.
    pub errors_only: bool,
    /// At most this many traces, newest first (0: the default, 20).
    pub limit: usize,
}

/// Counts for the logs and `/api/traces/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    pub traces: usize,
    pub spans: usize,
    pub bytes: usize,
    /// Traces evicted for a bound or their age.
    pub evicted_traces: u64,
    /// Spans refused: over the per-trace cap, or a duplicate id.
    pub dropped_spans: u64,
}

/// The store. Cheap to share (`Arc<TraceStore>`); every method takes `&self`.
#[derive(Debug)]
pub struct TraceStore {
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    traces: HashMap<TraceId, Stored>,
    /// Trace ids by first arrival, oldest first: the eviction order.
    order: VecDeque<TraceId>,
    spans: usize,
    bytes: usize,
    evicted: u64,
    dropped: u64,
}

#[derive(Debug)]
struct Stored {
    first_seen: Instant,
    spans: Vec<Span>,
    bytes: usize,
    start: u64,
    end: u64,
}

/// Default and largest `limit` of a query.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 1_500;

// === impl TraceStore ===

impl TraceStore {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `spans`; returns how many were kept.
    pub fn insert(&self, spans: Vec<Span>) -> usize {
        self.insert_at(spans, Instant::now())
    }

    pub(crate) fn insert_at(&self, spans: Vec<Span>, now: Instant) -> usize {
        let mut inner = self.lock();
        let mut kept = 0;
        for span in spans {
            let bytes = span.approx_bytes();
            let inner = &mut *inner;
            let stored = inner.traces.entry(span.trace_id).or_insert_with(|| {
                inner.order.push_back(span.trace_id);
                Stored {
                    first_seen: now,
                    spans: Vec::new(),
                    bytes: 0,
                    start: u64::MAX,
                    end: 0,
                }
            });
            if stored.spans.len() >= self.limits.max_spans_per_trace
                || stored.spans.iter().any(|s| s.span_id == span.span_id)
            {
                inner.dropped += 1;
                continue;
            }
            stored.start = stored.start.min(span.start_unix_nano);
            stored.end = stored.end.max(span.end_unix_nano);
            stored.bytes += bytes;
            stored.spans.push(span);
            inner.spans += 1;
            inner.bytes += bytes;
            kept += 1;
        }
        self.evict(&mut inner, now);
        kept
    }

    /// Drop the oldest traces until every bound holds.
    fn evict(&self, inner: &mut Inner, now: Instant) {
        let l = &self.limits;
        while let Some(oldest) = inner.order.front().copied() {
            let too_old = inner
                .traces
                .get(&oldest)
                .is_none_or(|t| now.saturating_duration_since(t.first_seen) > l.max_age);
            let over = inner.traces.len() > l.max_traces
                || inner.spans > l.max_spans
                || inner.bytes > l.max_bytes;
            if !too_old && !over {
                break;
            }
            inner.order.pop_front();
            if let Some(t) = inner.traces.remove(&oldest) {
                inner.spans -= t.spans.len();
                inner.bytes -= t.bytes;
                inner.evicted += 1;
            }
        }
    }

    /// Drop what has aged out (queries do this too; call it when nothing arrives).
    pub fn expire(&self) {
        self.expire_at(Instant::now())
    }

    pub(crate) fn expire_at(&self, now: Instant) {
        let mut inner = self.lock();
        self.evict(&mut inner, now);
    }

    pub fn stats(&self) -> StoreStats {
        let inner = self.lock();
        StoreStats {
            traces: inner.traces.len(),
            spans: inner.spans,
            bytes: inner.bytes,
            evicted_traces: inner.evicted,
            dropped_spans: inner.dropped,
        }
    }

    /// One trace by id.
    pub fn get(&self, id: &TraceId) -> Option<Trace> {
        self.lock().traces.get(id).map(|t| Trace {
            id: *id,
            spans: t.spans.clone(),
        })
    }

    /// The service names of the stored spans, sorted.
    pub fn services(&self) -> Vec<String> {
        let inner = self.lock();
        let names: BTreeSet<&str> = inner
            .traces
            .values()
            .flat_map(|t| t.spans.iter().map(|s| s.service()))
            .collect();
        names.into_iter().map(str::to_string).collect()
    }

    /// The operation names of `service`'s spans, sorted.
    pub fn operations(&self, service: &str) -> Vec<String> {
        let inner = self.lock();
        let names: BTreeSet<&str> = inner
            .traces
            .values()
            .flat_map(|t| t.spans.iter())
            .filter(|s| s.service() == service)
            .map(|s| s.name.as_str())
            .collect();
        names.into_iter().map(str::to_string).collect()
    }

    /// The traces matching `q`, newest start first.
    pub fn find(&self, q: &TraceQuery) -> Vec<Trace> {
        self.find_at(q, Instant::now())
    }

    pub(crate) fn find_at(&self, q: &TraceQuery, now: Instant) -> Vec<Trace> {
        let limit = match q.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let mut inner = self.lock();
        self.evict(&mut inner, now);
        let mut hits: Vec<(u64, TraceId)> = inner
            .traces
            .iter()
            .filter(|(_, t)| matches(t, q))
            .map(|(id, t)| (t.start, *id))
            .collect();
        hits.sort_unstable_by(|a, b| b.cmp(a));
        hits.truncate(limit);
        hits.into_iter()
            .filter_map(|(_, id)| {
                inner.traces.get(&id).map(|t| Trace {
                    id,
                    spans: t.spans.clone(),
                })
            })
            .collect()
    }
}

impl Default for TraceStore {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

fn matches(t: &Stored, q: &TraceQuery) -> bool {
    let duration = Duration::from_nanos(t.end.saturating_sub(t.start));
    if q.min_duration.is_some_and(|d| duration < d)
        || q.max_duration.is_some_and(|d| duration > d)
        || q.start_min.is_some_and(|s| t.start < s)
        || q.start_max.is_some_and(|s| t.start > s)
        || (q.errors_only && !t.spans.iter().any(|s| s.error))
    {
        return false;
    }
    if let Some(service) = &q.service {
        let found = t
            .spans
            .iter()
            .any(|s| s.service() == service && q.operation.as_ref().is_none_or(|op| &s.name == op));
        if !found {
            return false;
        }
    }
    if let Some((from, to)) = &q.edge {
        let callers: Vec<SpanId> = t
            .spans
            .iter()
            .filter(|s| s.service() == from)
            .map(|s| s.span_id)
            .collect();
        let called = t
            .spans
            .iter()
            .any(|s| s.service() == to && s.parent.is_some_and(|p| callers.contains(&p)));
        if !called {
            return false;
        }
    }
    true
}

/// Now as Unix nanoseconds.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::model::{Process, SpanKind, Tag};
    use super::*;

    fn span(trace: u8, id: u8, parent: Option<u8>, service: &str, start: u64, dur: u64) -> Span {
        Span {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent: parent.map(|p| SpanId([p; 8])),
            name: format!("op{id}"),
            kind: SpanKind::Server,
            start_unix_nano: start,
            end_unix_nano: start + dur,
            error: false,
            status_message: String::new(),
            tags: vec![Tag::str("http.method", "GET")],
            events: vec![],
            process: Arc::new(Process {
                service: service.into(),
                tags: vec![],
            }),
        }
    }

    #[test]
    fn spans_group_by_trace_and_duplicates_are_dropped() {
        let store = TraceStore::default();
        let kept = store.insert(vec![
            span(1, 1, None, "a", 100, 50),
            span(1, 2, Some(1), "b", 110, 20),
            span(2, 1, None, "a", 300, 10),
        ]);
        assert_eq!(kept, 3);
        // A retried batch: the same span again is not a second span.
        assert_eq!(store.insert(vec![span(1, 2, Some(1), "b", 110, 20)]), 0);
        let s = store.stats();
        assert_eq!((s.traces, s.spans, s.dropped_spans), (2, 3, 1));
        assert_eq!(store.get(&TraceId([1; 16])).unwrap().spans.len(), 2);
        assert_eq!(store.services(), ["a", "b"]);
        assert_eq!(store.operations("b"), ["op2"]);
    }

    #[test]
    fn the_oldest_trace_goes_first_at_each_bound() {
        let by_traces = TraceStore::new(Limits {
            max_traces: 2,
            ..Limits::default()
        });
        for t in 1..=3 {
            by_traces.insert(vec![span(t, 1, None, "a", t as u64, 1)]);
        }
        assert!(by_traces.get(&TraceId([1; 16])).is_none());
        assert!(by_traces.get(&TraceId([3; 16])).is_some());
        assert_eq!(by_traces.stats().evicted_traces, 1);

        let by_spans = TraceStore::new(Limits {
            max_spans: 3,
            ..Limits::default()
        });
        by_spans.insert(vec![
            span(1, 1, None, "a", 1, 1),
            span(1, 2, None, "a", 1, 1),
        ]);
        by_spans.insert(vec![
            span(2, 1, None, "a", 2, 1),
            span(2, 2, None, "a", 2, 1),
        ]);
        let s = by_spans.stats();
        assert_eq!((s.traces, s.spans), (1, 2));
        assert!(by_spans.get(&TraceId([2; 16])).is_some());

        let one = span(1, 1, None, "a", 1, 1).approx_bytes();
        let by_bytes = TraceStore::new(Limits {
            max_bytes: one * 2 + one / 2,
            ..Limits::default()
        });
        for t in 1..=3 {
            by_bytes.insert(vec![span(t, 1, None, "a", t as u64, 1)]);
        }
        let s = by_bytes.stats();
        assert_eq!(s.traces, 2);
        assert!(s.bytes <= by_bytes.limits().max_bytes);

        // A late span of the oldest trace does not save it: order is by first arrival.
        let late = TraceStore::new(Limits {
            max_traces: 2,
            ..Limits::default()
        });
        late.insert(vec![span(1, 1, None, "a", 1, 1)]);
        late.insert(vec![span(2, 1, None, "a", 2, 1)]);
        late.insert(vec![span(1, 2, Some(1), "b", 1, 1)]);
        late.insert(vec![span(3, 1, None, "a", 3, 1)]);
        assert!(late.get(&TraceId([1; 16])).is_none());
        assert_eq!(late.stats().spans, 2);
    }

    #[test]
    fn traces_age_out_and_a_trace_has_a_span_cap() {
        let store = TraceStore::new(Limits {
            max_age: Duration::from_secs(60),
            max_spans_per_trace: 2,
            ..Limits::default()
        });
        let t0 = Instant::now();
        store.insert_at(vec![span(1, 1, None, "a", 1, 1)], t0);
        store.insert_at(
            vec![
                span(2, 1, None, "a", 2, 1),
                span(2, 2, None, "a", 2, 1),
                span(2, 3, None, "a", 2, 1),
            ],
            t0 + Duration::from_secs(30),
        );
        assert_eq!(store.stats().dropped_spans, 1);
        store.expire_at(t0 + Duration::from_secs(61));
        assert!(store.get(&TraceId([1; 16])).is_none());
        assert_eq!(store.get(&TraceId([2; 16])).unwrap().spans.len(), 2);
        let q = TraceQuery::default();
        assert!(store.find_at(&q, t0 + Duration::from_secs(91)).is_empty());
        assert_eq!(store.stats().traces, 0);
    }

    #[test]
    fn queries_filter_by_service_operation_edge_duration_errors_and_limit() {
        let store = TraceStore::default();
        // Trace 1: a → b (b's span is a's child). Trace 2: a alone, slow, failed.
        // Trace 3: b and a unrelated (no a → b call).
        store.insert(vec![
            span(1, 1, None, "a", 1_000, 100),
            span(1, 2, Some(1), "b", 1_010, 50),
        ]);
        let mut failed = span(2, 1, None, "a", 2_000, 5_000);
        failed.error = true;
        store.insert(vec![failed]);
        store.insert(vec![
            span(3, 1, None, "b", 3_000, 10),
            span(3, 2, None, "a", 3_000, 10),
        ]);

        let ids = |q: TraceQuery| -> Vec<u8> { store.find(&q).iter().map(|t| t.id.0[0]).collect() };
        assert_eq!(ids(TraceQuery::default()), [3, 2, 1], "newest first");
        let svc = |s: &str| TraceQuery {
            service: Some(s.into()),
            ..TraceQuery::default()
        };
        assert_eq!(ids(svc("b")), [3, 1]);
        assert_eq!(ids(svc("c")), Vec::<u8>::new());
        assert_eq!(
            ids(TraceQuery {
                operation: Some("op2".into()),
                ..svc("b")
            }),
            [1]
        );
        let edge = |from: &str, to: &str| TraceQuery {
            edge: Some((from.into(), to.into())),
            ..TraceQuery::default()
        };
        assert_eq!(ids(edge("a", "b")), [1]);
        assert_eq!(ids(edge("b", "a")), Vec::<u8>::new());
        assert_eq!(
            ids(TraceQuery {
                min_duration: Some(Duration::from_nanos(1_000)),
                ..TraceQuery::default()
            }),
            [2]
        );
        assert_eq!(
            ids(TraceQuery {
                max_duration: Some(Duration::from_nanos(100)),
                ..TraceQuery::default()
            }),
            [3, 1]
        );
        assert_eq!(
            ids(TraceQuery {
                errors_only: true,
                ..TraceQuery::default()
            }),
            [2]
        );
        assert_eq!(
            ids(TraceQuery {
                start_min: Some(1_500),
                start_max: Some(2_500),
                ..TraceQuery::default()
            }),
            [2]
        );
        assert_eq!(
            ids(TraceQuery {
                limit: 1,
                ..TraceQuery::default()
            }),
            [3]
        );
    }
}

#[cfg(test)]
mod size {
    use std::sync::Arc;

    use super::super::model::{Process, Span, SpanId, SpanKind, Tag, TraceId};

    /// The figure in telemetry/README.md: what a sidecar span with Istio's tags weighs.
    #[test]
    fn a_sidecar_span_with_istios_tags_weighs_1_5_to_3_kib() {
        let tags = [
            ("component", "proxy"),
            (
                "node_id",
                "sidecar~10.0.0.12~user-v1-7d9f8-abcde.default~default.svc.cluster.local",
            ),
            ("zone", ""),
            ("guid:x-request-id", "5f0e2a8e-6f0b-9d4c-a3c1-2b7e1f0a9c3d"),
            (
                "http.url",
                "http://user.default.svc.cluster.local/api/users/42",
            ),
            ("http.method", "GET"),
            ("downstream_cluster", "-"),
            ("user_agent", "curl/8.5.0"),
            ("http.protocol", "HTTP/1.1"),
            ("peer.address", "10.0.0.11"),
            ("request_size", "0"),
            ("response_size", "245"),
            (
                "upstream_cluster",
                "outbound|80||user.default.svc.cluster.local",
            ),
            (
                "upstream_cluster.name",
                "outbound|80||user.default.svc.cluster.local",
            ),
            ("http.status_code", "200"),
            ("response_flags", "-"),
            ("istio.canonical_revision", "v1"),
            ("istio.canonical_service", "user"),
            ("istio.mesh_id", "cluster.local"),
            ("istio.namespace", "default"),
        ];
        let span = Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent: Some(SpanId([3; 8])),
            name: "user.default.svc.cluster.local:80/*".into(),
            kind: SpanKind::Client,
            start_unix_nano: 0,
            end_unix_nano: 1,
            error: false,
            status_message: String::new(),
            tags: tags.iter().map(|(k, v)| Tag::str(*k, *v)).collect(),
            events: vec![],
            process: Arc::new(Process {
                service: "user.default".into(),
                tags: vec![],
            }),
        };
        let bytes = span.approx_bytes();
        println!("a sidecar span: {bytes} bytes");
        assert!((1_500..3_000).contains(&bytes), "{bytes}");
    }
}
