//! The rolling windows: one ring of per-interval aggregates per edge, so that a 1m, 5m, 15m
//! or 1h query is a sum over the intervals inside the window — no raw series and no
//! Prometheus needed.
//!
//! Memory is bounded by the retention (the longest window): every scrape round is a tick;
//! an edge stores an entry only for ticks where it moved — a 20-byte header plus one 8-byte
//! cell per histogram bucket and response class that was non-zero, the cells of all of an
//! edge's intervals in one ring — and entries older than the retention, and edges left with
//! none, are dropped on each tick.
//!
//! So that a graph over an hour costs no more than one over a minute, each edge also keeps
//! running sums for the API's windows ([`PERIODS`]): a new interval is added to all of them,
//! and an interval is subtracted from a window's sum on the tick it leaves that window. The
//! values are whole counts in practice, so adding and subtracting them is exact.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::istio::{BUCKETS, CodeKey, EdgeKey};
use crate::stats::{Agg, Delta};

/// Response classes beyond this many distinct (code, gRPC status, flags) are folded into
/// one, so a proxy writing odd labels cannot grow the table without bound.
const MAX_CODES: usize = 4096;

/// The windows (seconds) for which every edge keeps running sums: the API's durations.
pub const PERIODS: [f64; 4] = [60.0, 300.0, 900.0, 3600.0];

/// One scrape round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    pub seq: u32,
    /// Unix time of the round, seconds.
    pub at: f64,
    /// Seconds since the previous round (0 for the first): the time the deltas cover.
    pub span: f64,
}

/// One bucket or response-class count in an interval: `tag < BUCKETS` is a histogram
/// bucket, otherwise a response class id (`tag - BUCKETS`).
#[derive(Debug, Clone, Copy)]
struct Cell {
    tag: u32,
    value: f32,
}

/// One edge's increments in one tick; its cells are `len` cells from absolute index
/// `offset` in the edge's cell ring.
#[derive(Debug, Clone, Copy)]
struct Head {
    seq: u32,
    mtls: f32,
    tcp_bytes: f32,
    offset: u32,
    len: u16,
}

/// Running sums of one edge over one of the [`PERIODS`].
#[derive(Debug, Clone)]
struct Sums {
    mtls: f64,
    tcp_bytes: f64,
    buckets: [f64; BUCKETS],
    codes: Vec<(u32, f64)>,
}

impl Default for Sums {
    fn default() -> Self {
        Self {
            mtls: 0.0,
            tcp_bytes: 0.0,
            buckets: [0.0; BUCKETS],
            codes: Vec::new(),
        }
    }
}

/// The intervals of one edge, oldest first.
#[derive(Debug, Default)]
pub struct EdgeHistory {
    heads: VecDeque<Head>,
    cells: VecDeque<Cell>,
    /// Absolute index of `cells[0]`.
    cells_base: u32,
    sums: [Sums; PERIODS.len()],
}

impl EdgeHistory {
    fn cells_of(&self, h: &Head) -> impl Iterator<Item = &Cell> + '_ {
        let start = h.offset.wrapping_sub(self.cells_base) as usize;
        (start..start + usize::from(h.len)).filter_map(|i| self.cells.get(i))
    }

    fn push(&mut self, seq: u32, mtls: f32, tcp_bytes: f32, cells: &[Cell]) {
        let head = Head {
            seq,
            mtls,
            tcp_bytes,
            offset: self.cells_base.wrapping_add(self.cells.len() as u32),
            len: cells.len() as u16,
        };
        self.cells.extend(cells.iter().copied());
        self.heads.push_back(head);
        for p in 0..PERIODS.len() {
            self.apply(p, &head, 1.0);
        }
    }

    fn pop_front(&mut self) -> Option<Head> {
        let h = self.heads.pop_front()?;
        let n = usize::from(h.len).min(self.cells.len());
        self.cells.drain(..n);
        self.cells_base = self.cells_base.wrapping_add(n as u32);
        Some(h)
    }

    /// Adds (`sign` 1) or removes (-1) an interval to/from window `p`'s sums.
    fn apply(&mut self, p: usize, h: &Head, sign: f64) {
        let start = h.offset.wrapping_sub(self.cells_base) as usize;
        let Some(sums) = self.sums.get_mut(p) else {
            return;
        };
        sums.mtls += sign * f64::from(h.mtls);
        sums.tcp_bytes += sign * f64::from(h.tcp_bytes);
        for i in start..start + usize::from(h.len) {
            let Some(cell) = self.cells.get(i) else {
                continue;
            };
            let n = sign * f64::from(cell.value);
            match (cell.tag as usize).checked_sub(BUCKETS) {
                None => sums.buckets[cell.tag as usize] += n,
                Some(id) => match sums.codes.iter_mut().find(|(c, _)| *c == id as u32) {
                    Some((_, v)) => *v += n,
                    None => sums.codes.push((id as u32, n)),
                },
            }
        }
        if sign < 0.0 {
            sums.codes.retain(|(_, v)| *v > 1e-9);
        }
    }

    /// Index of the first interval at or after `seq`.
    fn index_of(&self, seq: u32) -> usize {
        self.heads.partition_point(|h| h.seq < seq)
    }

    /// Moves window `p`'s start from `old` to `new` (subtracting the intervals in between).
    fn advance(&mut self, p: usize, old: u32, new: u32) {
        if new <= old {
            return;
        }
        let (from, to) = (self.index_of(old), self.index_of(new));
        for i in from..to {
            if let Some(h) = self.heads.get(i).copied() {
                self.apply(p, &h, -1.0);
            }
        }
    }
}

/// The ticks a query covers.
#[derive(Debug, Clone)]
pub struct Window {
    pub first_seq: u32,
    pub ticks: Vec<Tick>,
    /// Seconds the window's deltas cover (the rate divisor).
    pub covered: f64,
    /// Index in [`PERIODS`] when the window is one of them (running sums apply).
    period: Option<usize>,
}

impl Window {
    pub fn rate(&self, total: f64) -> f64 {
        if self.covered > 0.0 {
            total / self.covered
        } else {
            0.0
        }
    }
}

/// Per-tick figures for a node or edge (one point per tick in the window).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    pub rps: Vec<[f64; 2]>,
    pub error_rate: Vec<[f64; 2]>,
    pub p95: Vec<[f64; 2]>,
}

/// Every edge's history and the ticks.
#[derive(Debug)]
pub struct Store {
    ticks: VecDeque<Tick>,
    next_seq: u32,
    edges: HashMap<Arc<EdgeKey>, EdgeHistory>,
    codes: Vec<Arc<CodeKey>>,
    code_ids: HashMap<Arc<CodeKey>, u32>,
    retention: f64,
    /// First tick of each of the [`PERIODS`] as of the latest tick.
    period_first: [u32; PERIODS.len()],
}

impl Store {
    pub fn new(retention_secs: f64) -> Self {
        Self {
            ticks: VecDeque::new(),
            next_seq: 0,
            edges: HashMap::new(),
            codes: Vec::new(),
            code_ids: HashMap::new(),
            retention: retention_secs,
            period_first: [0; PERIODS.len()],
        }
    }

    /// Adds one scrape round: `at` its Unix time, `span` the seconds since the previous
    /// round, `deltas` the increments per edge (already summed over proxies).
    pub fn record(&mut self, at: f64, span: f64, deltas: HashMap<Arc<EdgeKey>, Delta>) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.ticks.push_back(Tick { seq, at, span });
        let mut cells = Vec::new();
        for (key, delta) in deltas {
            if delta.is_empty() {
                continue;
            }
            self.cells_of(&delta, &mut cells);
            self.edges.entry(key).or_default().push(
                seq,
                delta.mtls as f32,
                delta.tcp_bytes as f32,
                &cells,
            );
        }
        // Windows move on: subtract what left each of them.
        let old = self.period_first;
        let mut new = old;
        for (p, secs) in PERIODS.iter().enumerate() {
            new[p] = self.first_seq_after(at - secs);
        }
        // Retention: drop old ticks, and the intervals of those still counted in a window
        // longer than the retention are subtracted from it as they go.
        let cutoff = at - self.retention;
        while self.ticks.len() > 1 && self.ticks.front().is_some_and(|t| t.at <= cutoff) {
            self.ticks.pop_front();
        }
        let first_kept = self.ticks.front().map(|t| t.seq).unwrap_or(seq);
        self.edges.retain(|_, h| {
            for p in 0..PERIODS.len() {
                h.advance(p, old[p], new[p]);
            }
            while let Some(front) = h.heads.front().copied()
                && front.seq < first_kept
            {
                for (p, first) in new.iter().enumerate() {
                    if front.seq >= *first {
                        h.apply(p, &front, -1.0);
                    }
                }
                h.pop_front();
            }
            !h.heads.is_empty()
        });
        self.period_first = new;
    }

    fn first_seq_after(&self, from: f64) -> u32 {
        let start = self.ticks.partition_point(|t| t.at <= from);
        self.ticks
            .get(start)
            .or(self.ticks.back())
            .map(|t| t.seq)
            .unwrap_or(0)
    }

    fn cells_of(&mut self, delta: &Delta, cells: &mut Vec<Cell>) {
        cells.clear();
        for (i, n) in delta.bucket_counts().iter().enumerate() {
            if *n > 0.0 {
                cells.push(Cell {
                    tag: i as u32,
                    value: *n as f32,
                });
            }
        }
        for (code, n) in &delta.codes {
            if *n > 0.0 && cells.len() < usize::from(u16::MAX) {
                let id = self.code_id(code);
                cells.push(Cell {
                    tag: BUCKETS as u32 + id,
                    value: *n as f32,
                });
            }
        }
    }
    fn code_id(&mut self, code: &Arc<CodeKey>) -> u32 {
        if let Some(id) = self.code_ids.get(code) {
            return *id;
        }
        if self.codes.len() >= MAX_CODES {
            // Fold into the last class rather than grow.
            return (self.codes.len() - 1) as u32;
        }
        let id = self.codes.len() as u32;
        self.codes.push(Arc::clone(code));
        self.code_ids.insert(Arc::clone(code), id);
        id
    }

    pub fn latest(&self) -> Option<Tick> {
        self.ticks.back().copied()
    }

    #[cfg(test)]
    pub fn tick_count(&self) -> usize {
        self.ticks.len()
    }

    /// The ticks within `secs` of the latest one.
    pub fn window(&self, secs: f64) -> Window {
        let Some(latest) = self.ticks.back() else {
            return Window {
                first_seq: 0,
                ticks: Vec::new(),
                covered: 0.0,
                period: None,
            };
        };
        let from = latest.at - secs;
        let start = self.ticks.partition_point(|t| t.at <= from);
        let ticks: Vec<Tick> = self.ticks.range(start..).copied().collect();
        let first_seq = ticks.first().map(|t| t.seq).unwrap_or(latest.seq);
        let period = PERIODS
            .iter()
            .position(|p| *p == secs)
            .filter(|p| self.period_first.get(*p) == Some(&first_seq));
        Window {
            first_seq,
            covered: ticks.iter().map(|t| t.span).sum(),
            ticks,
            period,
        }
    }

    pub fn edges(&self) -> impl Iterator<Item = (&Arc<EdgeKey>, &EdgeHistory)> {
        self.edges.iter()
    }

    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Stored intervals over all edges (for memory figures).
    pub fn interval_count(&self) -> usize {
        self.edges.values().map(|h| h.heads.len()).sum()
    }

    /// One edge's sums over the window: from its running sums for the API's windows,
    /// otherwise by adding up its intervals.
    pub fn aggregate(&self, key: &EdgeKey, history: &EdgeHistory, w: &Window) -> Agg {
        let mut agg = Agg::default();
        if w.ticks.is_empty() {
            return agg;
        }
        if let Some(sums) = w.period.and_then(|p| history.sums.get(p)) {
            agg.mtls = sums.mtls.max(0.0);
            agg.tcp_bytes = sums.tcp_bytes.max(0.0);
            for (a, s) in agg.buckets.iter_mut().zip(sums.buckets.iter()) {
                *a = s.max(0.0);
            }
            for (id, n) in &sums.codes {
                if let Some(code) = self.codes.get(*id as usize) {
                    agg.add_code(key.protocol, code, *n, true);
                }
            }
            return agg;
        }
        let from = history.index_of(w.first_seq);
        for h in history.heads.range(from..) {
            self.add_interval(&mut agg, key, history, h, true);
        }
        agg
    }

    fn add_interval(
        &self,
        agg: &mut Agg,
        key: &EdgeKey,
        history: &EdgeHistory,
        h: &Head,
        keep_codes: bool,
    ) {
        agg.mtls += f64::from(h.mtls);
        agg.tcp_bytes += f64::from(h.tcp_bytes);
        for cell in history.cells_of(h) {
            let n = f64::from(cell.value);
            match (cell.tag as usize).checked_sub(BUCKETS) {
                None => agg.buckets[cell.tag as usize] += n,
                Some(id) => {
                    if let Some(code) = self.codes.get(id) {
                        agg.add_code(key.protocol, code, n, keep_codes);
                    }
                }
            }
        }
    }

    /// Per-tick rps, error rate and p95 over the union of `keys`.
    pub fn series<'a>(&self, keys: impl IntoIterator<Item = &'a EdgeKey>, w: &Window) -> Series {
        let mut slots = vec![Agg::default(); w.ticks.len()];
        for key in keys {
            let Some(history) = self.edges.get(key) else {
                continue;
            };
            let from = history.index_of(w.first_seq);
            for h in history.heads.range(from..) {
                let idx = h.seq.wrapping_sub(w.first_seq) as usize;
                if let Some(slot) = slots.get_mut(idx) {
                    self.add_interval(slot, key, history, h, false);
                }
            }
        }
        let mut out = Series::default();
        for (tick, agg) in w.ticks.iter().zip(slots.iter()) {
            let t = (tick.at * 1000.0).round() / 1000.0;
            let rps = if tick.span > 0.0 {
                agg.requests / tick.span
            } else {
                0.0
            };
            let err = if agg.requests > 0.0 {
                agg.errors / agg.requests
            } else {
                0.0
            };
            out.rps.push([t, rps]);
            out.error_rate.push([t, err]);
            out.p95.push([t, agg.quantile(0.95).unwrap_or(0.0)]);
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::istio::{Field, Protocol, Reporter, Service, Workload};

    pub fn workload(ns: &str, name: &str, app: &str, version: &str) -> Workload {
        Workload {
            namespace: ns.into(),
            name: name.into(),
            app: app.into(),
            version: version.into(),
        }
    }

    pub fn edge(reporter: Reporter, src: Workload, svc: &str, dst: Workload) -> Arc<EdgeKey> {
        Arc::new(EdgeKey {
            reporter,
            protocol: Protocol::Http,
            source: src,
            service: Service {
                namespace: dst.namespace.clone(),
                name: svc.into(),
                host: format!("{svc}.{}.svc.cluster.local", dst.namespace).into(),
            },
            dest: dst,
        })
    }

    pub fn code(c: &str) -> Arc<CodeKey> {
        Arc::new(CodeKey {
            code: c.into(),
            grpc: "".into(),
            flags: "-".into(),
        })
    }

    /// `n` requests answered `c`, each taking `ms` (bucketed as Istio does), mTLS or not.
    pub fn requests(n: f64, c: &str, ms: f64, mtls: bool) -> Delta {
        let mut d = Delta::default();
        d.add(
            &Field::Requests {
                code: code(c),
                mtls,
            },
            n,
        );
        for (i, b) in crate::istio::DURATION_BUCKETS.iter().enumerate() {
            if ms <= *b {
                d.add(&Field::DurationBucket(i as u8), n);
            }
        }
        d.add(&Field::DurationBucket(19), n);
        d
    }

    fn one(key: &Arc<EdgeKey>, d: Delta) -> HashMap<Arc<EdgeKey>, Delta> {
        HashMap::from([(Arc::clone(key), d)])
    }

    #[test]
    fn rates_over_windows() {
        let key = edge(
            Reporter::Destination,
            workload("default", "client", "client", "v1"),
            "user",
            workload("default", "user-v1", "user", "v1"),
        );
        let mut store = Store::new(3600.0);
        store.record(1000.0, 0.0, HashMap::new());
        // 10 rounds of 5 s: 50 requests each for the last 2, 10 each before.
        for i in 1..=10 {
            let n = if i > 8 { 50.0 } else { 10.0 };
            store.record(
                1000.0 + 5.0 * i as f64,
                5.0,
                one(&key, requests(n, "200", 7.0, true)),
            );
        }
        let (k, h) = store.edges().next().unwrap();
        let w10 = store.window(10.0);
        assert_eq!(w10.ticks.len(), 2);
        let agg = store.aggregate(k, h, &w10);
        assert_eq!(w10.rate(agg.requests), 10.0);
        let w1m = store.window(60.0);
        let agg = store.aggregate(k, h, &w1m);
        // 8×10 + 2×50 over the 50 s covered so far.
        assert_eq!(agg.requests, 180.0);
        assert!((w1m.rate(agg.requests) - 3.6).abs() < 1e-9);
        assert_eq!(agg.mtls_percent(Protocol::Http), 100.0);
        // All in (5,10]: p50 interpolates to the middle.
        assert!((agg.quantile(0.5).unwrap() - 7.5).abs() < 1e-9);
        let series = store.series([&**k], &w1m);
        assert_eq!(series.rps.len(), 11);
        assert_eq!(series.rps[0], [1000.0, 0.0]);
        assert_eq!(series.rps[10], [1050.0, 10.0]);
        assert_eq!(series.rps[1][1], 2.0);
    }

    #[test]
    fn retention_drops_old_intervals_and_idle_edges() {
        let key = edge(
            Reporter::Destination,
            workload("default", "client", "client", "v1"),
            "user",
            workload("default", "user-v1", "user", "v1"),
        );
        let mut store = Store::new(60.0);
        store.record(0.0, 0.0, HashMap::new());
        store.record(5.0, 5.0, one(&key, requests(1.0, "200", 1.0, false)));
        for i in 2..=12 {
            store.record(5.0 * i as f64, 5.0, HashMap::new());
        }
        assert_eq!(store.edge_count(), 1);
        store.record(65.0, 5.0, HashMap::new());
        assert_eq!(store.edge_count(), 0);
        assert_eq!(store.tick_count(), 12);
        // 1h of 5 s ticks on a busy edge stays at 720 intervals.
        let mut store = Store::new(3600.0);
        for i in 0..2000 {
            store.record(
                5.0 * i as f64,
                5.0,
                one(&key, requests(1.0, "200", 1.0, false)),
            );
        }
        assert_eq!(store.interval_count(), 720);
    }

    /// The running sums of the API's windows equal the sums of the intervals inside them,
    /// whatever the pattern of busy and idle rounds, also when retention cuts a window.
    #[test]
    fn running_sums_match_interval_sums() {
        let keys: Vec<Arc<EdgeKey>> = (0..5)
            .map(|i| {
                edge(
                    Reporter::Destination,
                    workload("default", &format!("c{i}"), "c", "v1"),
                    "user",
                    workload("default", "user-v1", "user", "v1"),
                )
            })
            .collect();
        for retention in [3600.0 + 5.0, 400.0] {
            let mut store = Store::new(retention);
            let mut x: u64 = 7;
            for t in 0..1500u32 {
                let mut m = HashMap::new();
                for (i, k) in keys.iter().enumerate() {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    // Edge i is busy in about 1 round out of i + 1.
                    if (x >> 33).is_multiple_of(i as u64 + 1) {
                        let n = ((x >> 40) % 50) as f64;
                        let code = if (x >> 20).is_multiple_of(7) {
                            "503"
                        } else {
                            "200"
                        };
                        m.insert(
                            Arc::clone(k),
                            requests(n, code, ((x >> 8) % 300) as f64, i % 2 == 0),
                        );
                    }
                }
                store.record(5.0 * f64::from(t), 5.0, m);
                if t % 97 != 0 && t < 1499 {
                    continue;
                }
                for secs in PERIODS {
                    let w = store.window(secs);
                    let brute = Window {
                        period: None,
                        ..w.clone()
                    };
                    for (k, h) in store.edges() {
                        let fast = store.aggregate(k, h, &w);
                        let slow = store.aggregate(k, h, &brute);
                        assert_eq!(
                            fast.requests, slow.requests,
                            "t={t} secs={secs} retention={retention}"
                        );
                        assert_eq!(fast.errors, slow.errors);
                        assert_eq!(fast.mtls, slow.mtls);
                        assert_eq!(fast.buckets, slow.buckets);
                    }
                }
            }
            // The full-hour sums were used where retention allows it.
            let w = store.window(3600.0);
            assert_eq!(w.period.is_some(), retention > 3600.0);
        }
    }
}
