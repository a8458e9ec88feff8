//! The load generator: people using the todo list. Each worker loads the page data
//! (`GET /api/page`, which makes myapp call user and todo), now and then the HTML page or
//! myapp's check of its other backends (`GET /api/ping`: gRPC to user, a line through todo's
//! TCP echo, so the mesh carries all three protocols), and once in a while adds a todo and
//! deletes it again, paced so that all workers together make
//! `rps` clicks per second. Every answer is checked: a failure is anything but the expected
//! status, and the page data says which `user` version served it — the split as a user sees it.
//!
//! Results go into [`Stats`]: live per-second buckets for the terminal, and *phases*, one per
//! split in force. When an edit changes the split a new phase starts; its first second is
//! counted (requests and errors) but left out of its split, since proxies take up to that
//! long to get the new routes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::split::Weights;

/// How long after a split change its requests are left out of the new phase's split.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How many seconds of per-second buckets the live view keeps.
const LIVE_SECONDS: usize = 10;
/// A request that takes longer has failed. Longer than myapp's own 5 s limit on its calls,
/// so that a stuck backend shows as myapp's 502 naming it.
const TIMEOUT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What happened to one click.
#[derive(Debug)]
enum Outcome {
    /// Expected answer; for the page data, the user version that served it.
    Ok(Option<String>),
    Failed(String),
}

/// One split in force and what the load saw during it.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Seconds since the load started.
    pub from_s: f64,
    pub to_s: f64,
    /// The split configured (percent per subset).
    pub weights: Weights,
    pub requests: u64,
    pub errors: u64,
    /// Page loads per user version, after the first second of the phase.
    pub served_by: BTreeMap<String, u64>,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    latencies_us: Vec<u32>,
}

impl Phase {
    /// Percent of the page loads each version served.
    pub fn split(&self) -> BTreeMap<String, f64> {
        let total: u64 = self.served_by.values().sum();
        self.served_by
            .iter()
            .map(|(v, n)| (v.clone(), percent(*n, total)))
            .collect()
    }

    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        quantile(&self.latencies_us, q)
    }
}

/// One second of the live view.
#[derive(Debug, Default, Clone)]
struct Second {
    index: u64,
    requests: u64,
    errors: u64,
    served_by: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
}

/// Everything the load has seen.
#[derive(Debug)]
pub struct Stats {
    start: Instant,
    pub requests: u64,
    pub errors: u64,
    /// The first few failures, as they read.
    pub first_errors: Vec<String>,
    pub phases: Vec<Phase>,
    live: VecDeque<Second>,
}

/// The last seconds, summed for the terminal.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub rps: f64,
    pub errors: u64,
    pub split: BTreeMap<String, f64>,
    pub p99_ms: Option<f64>,
}

impl Stats {
    pub fn new(start: Instant, weights: Weights) -> Self {
        Self {
            start,
            requests: 0,
            errors: 0,
            first_errors: Vec::new(),
            phases: vec![Phase {
                from_s: 0.0,
                to_s: 0.0,
                weights,
                requests: 0,
                errors: 0,
                served_by: BTreeMap::new(),
                started: start,
                latencies_us: Vec::new(),
            }],
            live: VecDeque::new(),
        }
    }

    /// A new split is in force from `at`.
    pub fn new_phase(&mut self, at: Instant, weights: Weights) {
        let from_s = at.duration_since(self.start).as_secs_f64();
        if let Some(last) = self.phases.last_mut() {
            last.to_s = from_s;
        }
        self.phases.push(Phase {
            from_s,
            to_s: from_s,
            weights,
            requests: 0,
            errors: 0,
            served_by: BTreeMap::new(),
            started: at,
            latencies_us: Vec::new(),
        });
    }

    /// Closes the last phase at `at`.
    pub fn finish(&mut self, at: Instant) {
        let to_s = at.duration_since(self.start).as_secs_f64();
        if let Some(last) = self.phases.last_mut() {
            last.to_s = to_s;
        }
    }

    fn record(&mut self, done: Instant, latency: Duration, outcome: &Outcome) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.requests += 1;
        let index = done.duration_since(self.start).as_secs();
        if self.live.back().is_none_or(|s| s.index < index) {
            self.live.push_back(Second {
                index,
                ..Second::default()
            });
            while self.live.len() > LIVE_SECONDS + 1 {
                self.live.pop_front();
            }
        }
        let second = self.live.iter_mut().rev().find(|s| s.index <= index);
        let phase = self.phases.iter_mut().rev().find(|p| p.started <= done);
        let (second, phase) = match (second, phase) {
            (Some(s), Some(p)) => (s, p),
            _ => return,
        };
        second.requests += 1;
        second.latencies_us.push(us);
        phase.requests += 1;
        phase.latencies_us.push(us);
        match outcome {
            Outcome::Ok(version) => {
                if let Some(v) = version {
                    *second.served_by.entry(v.clone()).or_default() += 1;
                    if done.duration_since(phase.started) >= SETTLE || phase.from_s == 0.0 {
                        *phase.served_by.entry(v.clone()).or_default() += 1;
                    }
                }
            }
            Outcome::Failed(e) => {
                self.errors += 1;
                second.errors += 1;
                phase.errors += 1;
                if self.first_errors.len() < 5 {
                    let at = done.duration_since(self.start).as_secs_f64();
                    self.first_errors.push(format!("{at:.1} s: {e}"));
                }
            }
        }
    }

    /// The last complete seconds (up to ten).
    pub fn live(&self, now: Instant) -> Live {
        let current = now.duration_since(self.start).as_secs();
        let done: Vec<&Second> = self.live.iter().filter(|s| s.index < current).collect();
        if done.is_empty() {
            return Live::default();
        }
        let span = current - done.first().map_or(current, |s| s.index);
        let mut served: BTreeMap<String, u64> = BTreeMap::new();
        let mut lat = Vec::new();
        for s in &done {
            for (v, n) in &s.served_by {
                *served.entry(v.clone()).or_default() += n;
            }
            lat.extend_from_slice(&s.latencies_us);
        }
        let total: u64 = served.values().sum();
        Live {
            rps: done.iter().map(|s| s.requests).sum::<u64>() as f64 / span.max(1) as f64,
            errors: done.iter().map(|s| s.errors).sum(),
            split: served
                .iter()
                .map(|(v, n)| (v.clone(), percent(*n, total)))
                .collect(),
            p99_ms: quantile(&lat, 0.99),
        }
    }

    /// Latency quantile over the whole run, in ms.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        let all: Vec<u32> = self
            .phases
            .iter()
            .flat_map(|p| p.latencies_us.iter().copied())
            .collect();
        quantile(&all, q)
    }
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * part as f64 / total as f64
    }
}

/// The `q` quantile (nearest rank) of microsecond samples, in ms.
fn quantile(samples: &[u32], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

/// The running load; stop it with [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Shared, locked stats.
#[derive(Clone)]
pub struct SharedStats(Arc<Mutex<Stats>>);

impl SharedStats {
    pub fn new(stats: Stats) -> Self {
        Self(Arc::new(Mutex::new(stats)))
    }

    pub fn lock(&self) -> MutexGuard<'_, Stats> {
        // A worker that panicked mid-update leaves counters that are still meaningful.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Load {
    /// `workers` users clicking `rps` times per second in total at `base` (the address of
    /// myapp's front door), naming `host` in the Host header when the door routes by it.
    pub fn start(
        base: &str,
        host: Option<&str>,
        rps: u32,
        workers: u32,
        stats: SharedStats,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let period = Duration::from_secs_f64(f64::from(workers) / f64::from(rps.max(1)));
        let tasks = (0..workers)
            .map(|worker| {
                let (client, stop, stats) = (client.clone(), stop.clone(), stats.clone());
                let base = Target {
                    base: base.trim_end_matches('/').to_string(),
                    host: host.map(str::to_string),
                };
                tokio::spawn(async move {
                    // Spread the workers over the period so requests do not come in bursts.
                    tokio::time::sleep(period * worker / workers.max(1)).await;
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut click: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        click += 1;
                        for (method, path, body, want) in script(worker, click) {
                            let started = Instant::now();
                            let outcome =
                                send(&client, method, &base, &path, body, want, worker).await;
                            let done = Instant::now();
                            stats.lock().record(done, done - started, &outcome);
                            if matches!(outcome, Outcome::Failed(_)) {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What click number `click` of `worker` does: mostly the page data, every 10th the HTML
/// page, every 10th (another) myapp's gRPC and TCP check, every 50th adds a todo (then
/// deletes it, in [`send`]).
fn script(worker: u32, click: u64) -> Vec<(Method, String, Option<String>, StatusCode)> {
    if click % 50 == 25 {
        let title = format!("{{\"title\":\"demo click {worker}-{click}\"}}");
        vec![(
            Method::POST,
            "/api/todos".into(),
            Some(title),
            StatusCode::CREATED,
        )]
    } else if click % 10 == 5 {
        vec![(Method::GET, "/".into(), None, StatusCode::OK)]
    } else if click % 10 == 8 {
        vec![(Method::GET, "/api/ping".into(), None, StatusCode::OK)]
    } else {
        vec![(Method::GET, "/api/page".into(), None, StatusCode::OK)]
    }
}

/// Where the clicks go: a base URL, and the Host to name when it is not the URL's.
struct Target {
    base: String,
    host: Option<String>,
}

async fn send(
    client: &HttpClient,
    method: Method,
    base: &Target,
    path: &str,
    body: Option<String>,
    want: StatusCode,
    worker: u32,
) -> Outcome {
    let outcome = request(client, method.clone(), base, path, body).await;
    let (status, bytes) = match outcome {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("{method} {path}: {e}")),
    };
    if status != want {
        let text = String::from_utf8_lossy(&bytes);
        return Outcome::Failed(format!("{method} {path}: {status} {}", text.trim()));
    }
    match (method, path) {
        (Method::GET, "/api/page") => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(page) => Outcome::Ok(page["user"]["version"].as_str().map(str::to_string)),
            Err(e) => Outcome::Failed(format!("GET /api/page: not the page data: {e}")),
        },
        (Method::GET, "/api/ping") => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(p) if p["tcp"] == "ping" && p["grpc"]["version"].is_string() => Outcome::Ok(None),
            _ => Outcome::Failed(format!(
                "GET /api/ping: not the check's answer: {}",
                String::from_utf8_lossy(&bytes).trim()
            )),
        },
        (Method::POST, _) => {
            // Clean up after ourselves: the list stays the same size however long the demo.
            let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|t| t["id"].as_u64());
            let Some(id) = id else {
                return Outcome::Failed(format!(
                    "POST {path}: no id in the answer (worker {worker})"
                ));
            };
            let delete = format!("/api/todos/{id}");
            match request(client, Method::DELETE, base, &delete, None).await {
                Ok((s, _)) if s.is_success() => Outcome::Ok(None),
                Ok((s, b)) => Outcome::Failed(format!(
                    "DELETE {delete}: {s} {}",
                    String::from_utf8_lossy(&b).trim()
                )),
                Err(e) => Outcome::Failed(format!("DELETE {delete}: {e}")),
            }
        }
        _ => Outcome::Ok(None),
    }
}

async fn request(
    client: &HttpClient,
    method: Method,
    target: &Target,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", target.base));
    if let Some(host) = &target.host {
        req = req.header(hyper::header::HOST, host);
    }
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
        .map_err(|e| format!("{e}"))?;
    let status = resp.status();
    let bytes = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| "body not received in time".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> Outcome {
        Outcome::Ok(Some(v.to_string()))
    }

    #[test]
    fn phases_split_after_settling() {
        let start = Instant::now();
        let mut s = Stats::new(start, Weights::from([("v1".into(), 50), ("v2".into(), 50)]));
        let ms = Duration::from_millis;
        s.record(start + ms(100), ms(2), &ok("v1"));
        s.record(start + ms(200), ms(4), &ok("v2"));
        s.new_phase(start + ms(1000), Weights::from([("v1".into(), 100)]));
        // In the first second of the new phase: counted, but not in its split.
        s.record(start + ms(1500), ms(3), &ok("v2"));
        s.record(start + ms(2500), ms(3), &ok("v1"));
        s.record(
            start + ms(2600),
            ms(9),
            &Outcome::Failed("GET /api/page: 503".into()),
        );
        s.finish(start + ms(3000));

        assert_eq!(s.requests, 5);
        assert_eq!(s.errors, 1);
        assert_eq!(s.phases.len(), 2);
        assert_eq!(s.phases[0].split()["v1"], 50.0);
        let later = &s.phases[1];
        assert_eq!((later.requests, later.errors), (3, 1));
        assert_eq!(later.split(), BTreeMap::from([("v1".to_string(), 100.0)]));
        assert_eq!((later.from_s, later.to_s), (1.0, 3.0));
        assert_eq!(later.latency_ms(1.0), Some(9.0));
        assert_eq!(s.first_errors, ["2.6 s: GET /api/page: 503"]);
    }

    #[test]
    fn live_view_sums_complete_seconds() {
        let start = Instant::now();
        let mut s = Stats::new(start, Weights::new());
        let ms = Duration::from_millis;
        for i in 0..30 {
            let v = if i % 3 == 0 { "v2" } else { "v1" };
            s.record(start + ms(100 * i), ms(1 + i), &ok(v));
        }
        let live = s.live(start + ms(3050));
        assert_eq!(live.rps, 10.0);
        assert_eq!(live.errors, 0);
        assert!((live.split["v1"] - 66.666).abs() < 0.1, "{:?}", live.split);
        assert_eq!(live.p99_ms, Some(30.0));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[], 0.99), None);
    }

    /// Every 50 clicks: 4 HTML pages (the 25th adds a todo instead), 5 gRPC/TCP checks, 1
    /// added todo, the rest page data.
    #[test]
    fn the_script_mixes_pages_checks_and_changes() {
        let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
        for click in 1..=50 {
            for (_, path, _, _) in script(0, click) {
                *by_path.entry(path).or_default() += 1;
            }
        }
        let n = |p: &str| by_path.get(p).copied().unwrap_or(0);
        assert_eq!(
            (n("/"), n("/api/ping"), n("/api/todos"), n("/api/page")),
            (4, 5, 1, 40)
        );
    }
}
