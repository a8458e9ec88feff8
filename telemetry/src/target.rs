//! Per-proxy scrape state: the last value of each raw series, so that each scrape yields
//! increments (deltas) rather than totals, with counter resets handled.
//!
//! Raw series are keyed by a hash of their `name{labels}` text and remember which edge and
//! which statistic they feed, so labels are read only when a series first appears; a series
//! that vanishes from the page is forgotten. Only the deltas, summed per edge, leave this
//! module.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::exposition::{ParseError, parse_line};
use crate::istio::{CodeKey, EdgeKey, Field, Metric, SampleLabels, bucket_index, classify};
use crate::stats::Delta;

#[derive(Debug)]
struct SeriesState {
    prev: f64,
    seen: u64,
    edge: Arc<EdgeKey>,
    field: Field,
}

/// One proxy's series and the last values seen.
#[derive(Debug)]
pub struct TargetState {
    series: HashMap<u64, SeriesState>,
    edges: HashSet<Arc<EdgeKey>>,
    codes: HashSet<Arc<CodeKey>>,
    hasher: RandomState,
    generation: u64,
    /// Whether a page was read before: a series first seen after that started since the
    /// previous scrape, so its whole value is this interval's increment. On the very first
    /// page the totals have no baseline and yield nothing.
    has_baseline: bool,
}

impl Default for TargetState {
    fn default() -> Self {
        Self {
            series: HashMap::new(),
            edges: HashSet::new(),
            codes: HashSet::new(),
            hasher: RandomState::new(),
            generation: 0,
            has_baseline: false,
        }
    }
}

/// What one page yielded.
#[derive(Debug, Default)]
pub struct Ingested {
    pub deltas: Vec<(Arc<EdgeKey>, Delta)>,
    /// Istio samples read.
    pub samples: usize,
    /// Lines that were not valid samples (skipped), and the first of them.
    pub errors: usize,
    pub first_error: Option<ParseError>,
}

impl TargetState {
    /// Reads one page and returns the increments since the previous one, per edge.
    pub fn ingest(&mut self, page: &str) -> Ingested {
        self.generation += 1;
        let generation = self.generation;
        let mut out = Ingested::default();
        // Keyed by the edge's address: each edge is interned once per target.
        let mut acc: HashMap<*const EdgeKey, (Arc<EdgeKey>, Delta)> = HashMap::new();
        for (n, line) in page.lines().enumerate() {
            // Envoy's pages hold thousands of `envoy_*` lines: skip them before parsing.
            if !line.starts_with("istio_") {
                continue;
            }
            let sample = match parse_line(line) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(reason) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(ParseError {
                        line: n + 1,
                        reason,
                    });
                    continue;
                }
            };
            let Some(metric) = classify(sample.name) else {
                continue;
            };
            if metric == Metric::Other || !sample.value.is_finite() {
                continue;
            }
            out.samples += 1;
            let hash = self.hasher.hash_one(sample.series);
            let value = sample.value;
            let delta = match self.series.get_mut(&hash) {
                Some(s) => {
                    let d = if value < s.prev {
                        value
                    } else {
                        value - s.prev
                    };
                    s.prev = value;
                    s.seen = generation;
                    Some((d, Arc::clone(&s.edge), s.field.clone()))
                }
                None => {
                    let labels = SampleLabels::read(metric, &sample);
                    let field = match metric {
                        Metric::Requests => Field::Requests {
                            code: intern(&mut self.codes, labels.code),
                            mtls: labels.mtls,
                        },
                        Metric::DurationBucket => labels
                            .le
                            .as_deref()
                            .and_then(bucket_index)
                            .map(Field::DurationBucket)
                            .unwrap_or(Field::Unused),
                        Metric::TcpBytes => Field::TcpBytes { mtls: labels.mtls },
                        Metric::Other => Field::Unused,
                    };
                    let edge = intern(&mut self.edges, labels.edge);
                    self.series.insert(
                        hash,
                        SeriesState {
                            prev: value,
                            seen: generation,
                            edge: Arc::clone(&edge),
                            field: field.clone(),
                        },
                    );
                    self.has_baseline.then_some((value, edge, field))
                }
            };
            if let Some((d, edge, field)) = delta
                && d > 0.0
                && field != Field::Unused
            {
                acc.entry(Arc::as_ptr(&edge))
                    .or_insert_with(|| (edge, Delta::default()))
                    .1
                    .add(&field, d);
            }
        }
        if out.samples == 0 && out.errors > 0 {
            // Not a metrics page (an error page from a proxy in trouble): keep the baseline,
            // or the next good page would count whole totals as new.
            return out;
        }
        self.series.retain(|_, s| s.seen == generation);
        self.edges.retain(|e| Arc::strong_count(e) > 1);
        self.codes.retain(|c| Arc::strong_count(c) > 1);
        self.has_baseline = true;
        out.deltas = acc.into_values().collect();
        out
    }

    #[cfg(test)]
    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

fn intern<T: Eq + std::hash::Hash>(set: &mut HashSet<Arc<T>>, value: T) -> Arc<T> {
    if let Some(v) = set.get(&value) {
        return Arc::clone(v);
    }
    let v = Arc::new(value);
    set.insert(Arc::clone(&v));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ok: u64, fail: u64, fast: u64) -> String {
        let common = r#"reporter="destination",source_workload="client",source_workload_namespace="default",source_app="client",source_version="v1",destination_workload="user-v1",destination_workload_namespace="default",destination_app="user",destination_version="v1",destination_service="user.default.svc.cluster.local",destination_service_name="user",destination_service_namespace="default",request_protocol="http",grpc_response_status="",connection_security_policy="mutual_tls",response_flags="-""#;
        let total = ok + fail;
        format!(
            "# TYPE istio_requests counter\n\
             istio_requests_total{{{common},response_code=\"200\"}} {ok}\n\
             istio_requests_total{{{common},response_code=\"503\"}} {fail}\n\
             envoy_cluster_upstream_rq_total{{cluster=\"x\"}} 99\n\
             istio_request_duration_milliseconds_bucket{{le=\"1.0\",{common},response_code=\"200\"}} {fast}\n\
             istio_request_duration_milliseconds_bucket{{le=\"5.0\",{common},response_code=\"200\"}} {total}\n\
             istio_request_duration_milliseconds_bucket{{le=\"+Inf\",{common},response_code=\"200\"}} {total}\n\
             istio_request_duration_milliseconds_sum{{{common},response_code=\"200\"}} 1.5\n\
             # EOF\n"
        )
    }

    fn requests(d: &Delta) -> f64 {
        d.codes.iter().map(|(_, n)| n).sum()
    }

    #[test]
    fn first_page_is_the_baseline_then_deltas() {
        let mut t = TargetState::default();
        let first = t.ingest(&page(100, 0, 50));
        assert!(first.deltas.is_empty());
        assert_eq!(first.samples, 5);
        let second = t.ingest(&page(130, 10, 60));
        assert_eq!(second.deltas.len(), 1);
        let (edge, d) = &second.deltas[0];
        assert_eq!(&*edge.dest.name, "user-v1");
        assert_eq!(requests(d), 40.0);
        assert_eq!(d.mtls, 40.0);
        assert_eq!(d.buckets[1], 10.0);
        assert_eq!(d.buckets[2], 40.0);
        assert_eq!(t.series_count(), 5);
    }

    #[test]
    fn counter_reset_counts_the_new_value() {
        let mut t = TargetState::default();
        t.ingest(&page(1000, 0, 0));
        // The proxy restarted: 7 requests since.
        let after = t.ingest(&page(7, 0, 0));
        assert_eq!(requests(&after.deltas[0].1), 7.0);
        let next = t.ingest(&page(10, 0, 0));
        assert_eq!(requests(&next.deltas[0].1), 3.0);
    }

    #[test]
    fn new_series_after_baseline_count_whole_and_vanished_ones_are_forgotten() {
        let mut t = TargetState::default();
        t.ingest("# nothing yet\n");
        let d = t.ingest(&page(5, 1, 5));
        assert_eq!(requests(&d.deltas[0].1), 6.0);
        drop(d);
        t.ingest("");
        assert_eq!(t.series_count(), 0);
        assert!(t.edges.is_empty());
        assert!(t.codes.is_empty());
    }

    #[test]
    fn broken_lines_are_skipped_and_counted() {
        let mut t = TargetState::default();
        let r = t.ingest("istio_requests_total{reporter=\"source\" 1\nistio_requests_total{reporter=\"source\"} 1\n");
        assert_eq!(r.errors, 1);
        assert_eq!(r.samples, 1);
        assert_eq!(r.first_error.map(|e| e.line), Some(1));
    }
}
