//! The scrape loop: every interval, ask the host for the proxies, scrape them all
//! concurrently (bounded), turn each page into per-edge deltas, and add the round to the
//! windows. A proxy that fails is marked unreachable and keeps its baseline, so its next good
//! page yields the increments over the gap; the round goes on without it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::istio::EdgeKey;
use crate::mesh::{MeshView, Target};
use crate::scrape::{ScrapeError, Scraper};
use crate::state::{TargetStatus, Telemetry};
use crate::stats::Delta;
use crate::target::{Ingested, TargetState};

/// The longest window the API offers.
pub const LONGEST_WINDOW: Duration = Duration::from_secs(3600);

/// A bad [`CollectorConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("interval must be more than zero")]
    ZeroInterval,
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
}

/// How the collector scrapes.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Time between rounds (default 5 s, Kiali's default refresh).
    pub interval: Duration,
    /// Per-scrape deadline; `None` = the interval.
    pub timeout: Option<Duration>,
    /// Scrapes in flight at once.
    pub concurrency: usize,
    /// A page larger than this fails the scrape.
    pub max_page_bytes: usize,
    /// How long intervals are kept (default: the longest window, 1 h).
    pub retention: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: None,
            concurrency: 64,
            max_page_bytes: 32 << 20,
            retention: LONGEST_WINDOW,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub targets: usize,
    pub reachable: usize,
    /// Edges that moved in this round.
    pub edges: usize,
}

/// Scrapes the proxies the [`MeshView`] lists into the shared [`Telemetry`].
pub struct Collector {
    telemetry: Arc<Telemetry>,
    mesh: Arc<dyn MeshView>,
    scraper: Scraper,
    states: HashMap<String, TargetState>,
    config: CollectorConfig,
    last_round: Option<Instant>,
}

impl Collector {
    pub fn new(mesh: Arc<dyn MeshView>, config: CollectorConfig) -> Result<Self, ConfigError> {
        if config.interval.is_zero() {
            return Err(ConfigError::ZeroInterval);
        }
        if config.concurrency == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        // Keep one interval more than asked so a full window still has its oldest tick.
        let retention = config.retention + config.interval;
        Ok(Self {
            telemetry: Arc::new(Telemetry::new(
                Arc::clone(&mesh),
                config.interval,
                retention,
            )),
            mesh,
            scraper: Scraper::new(config.max_page_bytes),
            states: HashMap::new(),
            config,
            last_round: None,
        })
    }

    /// The state to hand to [`router`](crate::router).
    pub fn telemetry(&self) -> Arc<Telemetry> {
        Arc::clone(&self.telemetry)
    }

    /// Rounds every interval until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        info!(interval = ?self.config.interval, "telemetry collector started");
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                report = self.scrape_once() => {
                    debug!(targets = report.targets, reachable = report.reachable, edges = report.edges, "scrape round");
                }
            }
        }
        info!("telemetry collector stopped");
    }

    /// One round: scrape every listed proxy and record the deltas.
    pub async fn scrape_once(&mut self) -> RoundReport {
        let started = Instant::now();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let span = self
            .last_round
            .map(|l| started.duration_since(l).as_secs_f64())
            .unwrap_or(0.0);
        self.last_round = Some(started);

        let mut seen = HashSet::new();
        let targets: Vec<Target> = self
            .mesh
            .targets()
            .into_iter()
            .filter(|t| seen.insert(t.id.clone()))
            .collect();
        let timeout = self.config.timeout.unwrap_or(self.config.interval);
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let mut tasks = JoinSet::new();
        for target in targets {
            let mut state = self.states.remove(&target.id).unwrap_or_default();
            let scraper = self.scraper.clone();
            let permits = Arc::clone(&permits);
            tasks.spawn(async move {
                let outcome = match permits.acquire_owned().await {
                    Ok(_permit) => scrape(&scraper, &target, &mut state, timeout).await,
                    Err(_) => Err(ScrapeError::Timeout(timeout)),
                };
                (target, state, outcome)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => error!(error = %e, "scrape task failed; its target starts afresh"),
            }
        }
        self.states.retain(|id, _| seen.contains(id));

        let mut deltas: HashMap<Arc<EdgeKey>, Delta> = HashMap::new();
        let mut report = RoundReport {
            targets: results.len(),
            ..Default::default()
        };
        let mut state = self.telemetry.write();
        for t in state.targets.values_mut() {
            t.listed = false;
        }
        for (target, target_state, outcome) in results {
            let status = state
                .targets
                .entry(target.id.clone())
                .or_insert_with(|| TargetStatus {
                    target: target.clone(),
                    listed: true,
                    reachable: true,
                    last_listed: at,
                    last_error: None,
                });
            status.target = target.clone();
            status.listed = true;
            status.last_listed = at;
            match outcome {
                Ok(ingested) => {
                    if !status.reachable {
                        info!(target = %target.id, "proxy reachable again");
                    }
                    if let Some(e) = &ingested.first_error {
                        debug!(target = %target.id, errors = ingested.errors, first = %e, "skipped invalid lines");
                    }
                    status.reachable = true;
                    status.last_error = None;
                    report.reachable += 1;
                    for (edge, d) in ingested.deltas {
                        deltas.entry(edge).or_default().merge(&d);
                    }
                }
                Err(e) => {
                    if status.reachable {
                        warn!(target = %target.id, url = %target.stats_url, error = %e, "proxy unreachable");
                    }
                    status.reachable = false;
                    status.last_error = Some(e.to_string());
                }
            }
            self.states.insert(target.id, target_state);
        }
        report.edges = deltas.len();
        let retention = self.config.retention.as_secs_f64() + self.config.interval.as_secs_f64();
        state
            .targets
            .retain(|_, t| t.listed || at - t.last_listed <= retention);
        state.store.record(at, span, deltas);
        self.telemetry.round_landed(&mut state);
        drop(state);
        // The graphs pages keep asking for, built for this round now rather than by their
        // next request (off the async threads; the round does not wait for it).
        let telemetry = Arc::clone(&self.telemetry);
        tokio::task::spawn_blocking(move || telemetry.rebuild_asked_graphs());
        report
    }
}

async fn scrape(
    scraper: &Scraper,
    target: &Target,
    state: &mut TargetState,
    timeout: Duration,
) -> Result<Ingested, ScrapeError> {
    let page = scraper.fetch(&target.stats_url, timeout).await?;
    let ingested = state.ingest(&page);
    if ingested.samples == 0
        && let Some(e) = &ingested.first_error
    {
        return Err(ScrapeError::NotPrometheus(e.to_string()));
    }
    Ok(ingested)
}
