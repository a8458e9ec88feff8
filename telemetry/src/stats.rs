//! The arithmetic of edge statistics, kept apart from storage and HTTP so it can be checked
//! against hand-computed figures: per-interval increments ([`Delta`]), their sums over a
//! window ([`Agg`]), Prometheus' `histogram_quantile`, and Kiali's health thresholds.

use std::sync::Arc;

use crate::istio::{BUCKETS, CodeKey, DURATION_BUCKETS, Field, Protocol};

/// One edge's increments over one scrape interval, summed over the proxies that reported
/// them (replicas of a workload report the same edge).
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// Requests per response class.
    pub codes: Vec<(Arc<CodeKey>, f64)>,
    /// Requests (TCP: bytes) that went over mTLS.
    pub mtls: f64,
    /// Increments of the cumulative `le` buckets (index as [`DURATION_BUCKETS`], `+Inf` last).
    pub buckets: [f64; BUCKETS],
    /// TCP bytes sent + received.
    pub tcp_bytes: f64,
}

impl Default for Delta {
    fn default() -> Self {
        Self {
            codes: Vec::new(),
            mtls: 0.0,
            buckets: [0.0; BUCKETS],
            tcp_bytes: 0.0,
        }
    }
}

impl Delta {
    pub fn add(&mut self, field: &Field, d: f64) {
        match field {
            Field::Requests { code, mtls } => {
                add_code(&mut self.codes, code, d);
                if *mtls {
                    self.mtls += d;
                }
            }
            Field::DurationBucket(i) => {
                if let Some(b) = self.buckets.get_mut(usize::from(*i)) {
                    *b += d;
                }
            }
            Field::TcpBytes { mtls } => {
                self.tcp_bytes += d;
                if *mtls {
                    self.mtls += d;
                }
            }
            Field::Unused => {}
        }
    }

    pub fn merge(&mut self, other: &Delta) {
        for (code, n) in &other.codes {
            add_code(&mut self.codes, code, *n);
        }
        self.mtls += other.mtls;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.tcp_bytes += other.tcp_bytes;
    }

    pub fn is_empty(&self) -> bool {
        self.codes.iter().all(|(_, n)| *n <= 0.0)
            && self.tcp_bytes <= 0.0
            && self.buckets.iter().all(|b| *b <= 0.0)
    }

    /// Per-bucket counts (not cumulative), from the cumulative increments; a bucket that
    /// went down (a reset seen on some buckets only) counts as zero.
    pub fn bucket_counts(&self) -> [f64; BUCKETS] {
        let mut out = [0.0; BUCKETS];
        let mut below = 0.0f64;
        for (i, cum) in self.buckets.iter().enumerate() {
            out[i] = (cum - below).max(0.0);
            below = below.max(*cum);
        }
        out
    }
}

fn add_code(codes: &mut Vec<(Arc<CodeKey>, f64)>, code: &Arc<CodeKey>, n: f64) {
    match codes
        .iter_mut()
        .find(|(c, _)| Arc::ptr_eq(c, code) || c == code)
    {
        Some((_, v)) => *v += n,
        None => codes.push((Arc::clone(code), n)),
    }
}

/// Sums over a window (or a set of edges): what the API's figures are computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Agg {
    pub requests: f64,
    /// 5xx for HTTP, non-OK status for gRPC.
    pub errors: f64,
    pub http5xx: f64,
    pub http4xx: f64,
    pub mtls: f64,
    pub tcp_bytes: f64,
    /// Per-bucket request counts (not cumulative).
    pub buckets: [f64; BUCKETS],
    pub codes: Vec<(Arc<CodeKey>, f64)>,
}

impl Default for Agg {
    fn default() -> Self {
        Self {
            requests: 0.0,
            errors: 0.0,
            http5xx: 0.0,
            http4xx: 0.0,
            mtls: 0.0,
            tcp_bytes: 0.0,
            buckets: [0.0; BUCKETS],
            codes: Vec::new(),
        }
    }
}

impl Agg {
    /// Adds `n` requests of one response class on an edge of `protocol`.
    pub fn add_code(&mut self, protocol: Protocol, code: &Arc<CodeKey>, n: f64, keep_codes: bool) {
        self.requests += n;
        if code.is_5xx() {
            self.http5xx += n;
        }
        if code.is_4xx() {
            self.http4xx += n;
        }
        let error = match protocol {
            Protocol::Grpc => code.is_grpc_error(),
            Protocol::Http | Protocol::Tcp => code.is_5xx(),
        };
        if error {
            self.errors += n;
        }
        if keep_codes {
            add_code(&mut self.codes, code, n);
        }
    }

    pub fn merge(&mut self, other: &Agg) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.http5xx += other.http5xx;
        self.http4xx += other.http4xx;
        self.mtls += other.mtls;
        self.tcp_bytes += other.tcp_bytes;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        for (code, n) in &other.codes {
            add_code(&mut self.codes, code, *n);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.requests <= 0.0 && self.tcp_bytes <= 0.0
    }

    /// The latency quantile `q` in milliseconds, as Prometheus' `histogram_quantile`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        histogram_quantile(q, &self.buckets)
    }

    /// mTLS share in percent of the edge's requests (TCP: bytes).
    pub fn mtls_percent(&self, protocol: Protocol) -> f64 {
        let total = match protocol {
            Protocol::Tcp => self.tcp_bytes,
            _ => self.requests,
        };
        if total > 0.0 {
            (100.0 * self.mtls / total).min(100.0)
        } else {
            0.0
        }
    }
}

/// Prometheus' `histogram_quantile` over per-bucket counts at Istio's bounds (`+Inf` last):
/// linear interpolation inside the bucket holding the rank, the first bucket starting at 0,
/// and the highest finite bound when the rank falls in `+Inf`. `None` without observations.
pub fn histogram_quantile(q: f64, counts: &[f64; BUCKETS]) -> Option<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || !total.is_finite() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut below = 0.0;
    for (i, &count) in counts.iter().enumerate().take(DURATION_BUCKETS.len()) {
        let cum = below + count;
        if cum >= rank && count > 0.0 {
            let start = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
            let end = DURATION_BUCKETS[i];
            return Some(start + (end - start) * ((rank - below) / count));
        }
        below = cum;
    }
    Some(DURATION_BUCKETS[DURATION_BUCKETS.len() - 1])
}

/// Kiali's edge health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Degraded,
    Failure,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Failure => "failure",
        }
    }

    /// Kiali's default thresholds: errors (5xx, gRPC non-OK) ≥ 10% is a failure; 4xx ≥ 20%
    /// a failure and ≥ 10% degraded. TCP edges carry no status.
    pub fn of(protocol: Protocol, agg: &Agg) -> Health {
        if protocol == Protocol::Tcp || agg.requests <= 0.0 {
            return Health::Healthy;
        }
        let errors = agg.errors / agg.requests;
        let c4xx = agg.http4xx / agg.requests;
        if errors >= 0.10 || c4xx >= 0.20 {
            Health::Failure
        } else if c4xx >= 0.10 {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(usize, f64)]) -> [f64; BUCKETS] {
        let mut c = [0.0; BUCKETS];
        for (i, n) in pairs {
            c[*i] = *n;
        }
        c
    }

    #[test]
    fn quantiles_match_hand_computed_values() {
        // 10 requests in (5,10], 10 in (10,25].
        let c = counts(&[(3, 10.0), (4, 10.0)]);
        // p50: rank 10 is the top of (5,10] → 10.
        assert_eq!(histogram_quantile(0.5, &c), Some(10.0));
        // p95: rank 19 → 9 of 10 into (10,25] → 10 + 15 × 0.9 = 23.5.
        assert!((histogram_quantile(0.95, &c).unwrap() - 23.5).abs() < 1e-9);
        // p99: rank 19.8 → 9.8/10 → 10 + 15 × 0.98 = 24.7.
        assert!((histogram_quantile(0.99, &c).unwrap() - 24.7).abs() < 1e-9);
        // First bucket starts at 0: 4 in (0,0.5], p50 → 0.25.
        assert_eq!(histogram_quantile(0.5, &counts(&[(0, 4.0)])), Some(0.25));
        // Rank in +Inf → the highest finite bound.
        assert_eq!(
            histogram_quantile(0.99, &counts(&[(1, 1.0), (19, 99.0)])),
            Some(3_600_000.0)
        );
        assert_eq!(histogram_quantile(0.5, &[0.0; BUCKETS]), None);
    }

    #[test]
    fn cumulative_increments_become_bucket_counts() {
        let mut d = Delta::default();
        // Cumulative increments: le=5: 2, le=10: 7, le=25: 7, le=50 and above: 8.
        for i in 0..BUCKETS as u8 {
            let v = match i {
                0 | 1 => 0.0,
                2 => 2.0,
                3 | 4 => 7.0,
                _ => 8.0,
            };
            d.add(&Field::DurationBucket(i), v);
        }
        let c = d.bucket_counts();
        assert_eq!(&c[..6], &[0.0, 0.0, 2.0, 5.0, 0.0, 1.0]);
        assert_eq!(c.iter().sum::<f64>(), 8.0);
        // A bucket that went down (reset on some series only) counts as zero.
        let mut d = Delta::default();
        d.add(&Field::DurationBucket(2), 5.0);
        d.add(&Field::DurationBucket(3), 3.0);
        d.add(&Field::DurationBucket(19), 6.0);
        assert_eq!(d.bucket_counts()[3], 0.0);
        assert_eq!(d.bucket_counts()[19], 1.0);
    }

    #[test]
    fn health_thresholds() {
        let ok = Arc::new(CodeKey {
            code: "200".into(),
            grpc: "".into(),
            flags: "-".into(),
        });
        let e5 = Arc::new(CodeKey {
            code: "503".into(),
            grpc: "".into(),
            flags: "UF".into(),
        });
        let e4 = Arc::new(CodeKey {
            code: "404".into(),
            grpc: "".into(),
            flags: "-".into(),
        });
        let agg = |ok_n: f64, e5_n: f64, e4_n: f64| {
            let mut a = Agg::default();
            a.add_code(Protocol::Http, &ok, ok_n, true);
            a.add_code(Protocol::Http, &e5, e5_n, true);
            a.add_code(Protocol::Http, &e4, e4_n, true);
            a
        };
        assert_eq!(
            Health::of(Protocol::Http, &agg(100.0, 0.0, 0.0)),
            Health::Healthy
        );
        assert_eq!(
            Health::of(Protocol::Http, &agg(95.0, 5.0, 0.0)),
            Health::Healthy
        );
        assert_eq!(
            Health::of(Protocol::Http, &agg(90.0, 10.0, 0.0)),
            Health::Failure
        );
        assert_eq!(
            Health::of(Protocol::Http, &agg(90.0, 0.0, 10.0)),
            Health::Degraded
        );
        assert_eq!(
            Health::of(Protocol::Http, &agg(80.0, 0.0, 20.0)),
            Health::Failure
        );
        let grpc_fail = Arc::new(CodeKey {
            code: "200".into(),
            grpc: "14".into(),
            flags: "-".into(),
        });
        let mut g = Agg::default();
        g.add_code(Protocol::Grpc, &grpc_fail, 5.0, true);
        // An empty gRPC status on a gRPC edge (no status came back) is an error too.
        g.add_code(Protocol::Grpc, &ok, 1.0, true);
        assert_eq!(g.errors, 6.0);
        assert_eq!(g.http5xx, 0.0);
        assert_eq!(Health::of(Protocol::Grpc, &g), Health::Failure);
    }
}
