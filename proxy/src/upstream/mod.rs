//! Upstream clusters at run time: hosts, load balancing, outlier ejection, circuit breakers
//! and pooled connections.
//!
//! A [`Cluster`] outlives config updates: when CDS or EDS changes, the new snapshot reuses the
//! cluster of the same name and the hosts of the same address, so request counts, ejections
//! and pooled keep-alive connections carry over. A changed cluster *config* gets a fresh
//! `Cluster` (its pool settings may differ), while the old one finishes its requests.

mod connect;
mod lb;
pub mod loop_guard;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use connect::{
    ConnRequests, ConnectError, Connector, Upstream, UpstreamIdentity, UpstreamTlsFor, connect_tcp,
    tls_handshake,
};

use crate::metrics::ServiceId;
use crate::resources::cluster::{
    ClusterConfig, Discovery, HostAddr, HostSpec, LbPolicy, UpstreamProtocol,
};
use crate::resources::tls::Transport;
use crate::tls::SecretStore;
use crate::tls::credentials::SdsSecrets;

/// Per-host clients kept for a cluster whose SNI follows the request's host (`auto_sni`);
/// beyond this many hosts the set starts over.
const MAX_SNI_CLIENTS: usize = 256;

/// Body type of every proxied request and response.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type HttpClient = Client<Connector, Body>;

/// An upstream cluster.
pub struct Cluster {
    pub config: Arc<ClusterConfig>,
    /// The service this cluster is for, as metrics label it.
    pub service: Arc<ServiceId>,
    /// The services of an inbound cluster (its `istio.services` metadata).
    pub inbound_services: Vec<Arc<ServiceId>>,
    hosts: ArcSwap<Vec<Arc<Host>>>,
    rr: AtomicUsize,
    pub active_requests: AtomicU32,
    pub active_retries: AtomicU32,
    pub connections: Arc<AtomicU32>,
    pub stats: ClusterStats,
    h1: OnceLock<Arc<HttpClient>>,
    h2: OnceLock<Arc<HttpClient>>,
    /// `auto_sni` clusters: one pool per (HTTP/2, request host), so a connection is never
    /// reused for a host its handshake did not name.
    by_sni: Mutex<HashMap<(bool, String), Arc<HttpClient>>>,
}

#[derive(Default)]
pub struct ClusterStats {
    pub upstream_rq_total: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    pub upstream_rq_pending_overflow: AtomicU64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_rq_timeout: AtomicU64,
    pub outlier_ejections: AtomicU64,
}

/// One endpoint of a cluster.
pub struct Host {
    pub addr: HostAddr,
    pub weight: u32,
    pub healthy: bool,
    socket_match: std::collections::BTreeMap<String, String>,
    workload: Option<String>,
    /// The workload behind this endpoint (its `istio.workload` metadata), which names the
    /// server in this side's metrics when no metadata exchange does.
    pub peer: Option<Arc<crate::metrics::Peer>>,
    /// mTLS to this endpoint (it has a sidecar, or the cluster always uses TLS).
    pub tls: bool,
    /// `addr` as a URI authority, formatted and parsed once rather than per request.
    uri_authority: Option<http::uri::Authority>,
    pub active: AtomicU32,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    outlier: Mutex<OutlierState>,
}

#[derive(Default)]
struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// How an upstream attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx from the upstream.
    Server5xx(u16),
    /// Connect failure, reset, or timeout: a gateway failure.
    Gateway,
}

/// Why no host could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    NoHealthyUpstream,
}

// === impl Cluster ===

impl Cluster {
    /// The service an inbound request for `named` (the service its Host names) is labelled
    /// with: that one when the cluster serves it, else the cluster's first, as Istio's
    /// stats do — a request through a gateway names the public host, not the service.
    pub fn inbound_service(&self, named: &Arc<ServiceId>) -> Option<Arc<ServiceId>> {
        if self.inbound_services.iter().any(|s| s.host == named.host) {
            return None;
        }
        self.inbound_services.first().cloned()
    }

    pub fn new(config: Arc<ClusterConfig>) -> Self {
        let hosts = config
            .inline_hosts
            .as_deref()
            .map(|h| {
                h.iter()
                    .map(|s| Arc::new(Host::new(s, &config.transport)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            service: Arc::new(ServiceId::from_cluster(&config.name)),
            inbound_services: config
                .services
                .iter()
                .map(|s| {
                    Arc::new(ServiceId {
                        host: s.host.clone(),
                        name: s.name.clone(),
                        namespace: s.namespace.clone(),
                    })
                })
                .collect(),
            config,
            hosts: ArcSwap::from_pointee(hosts),
            rr: AtomicUsize::new(0),
            active_requests: AtomicU32::new(0),
            active_retries: AtomicU32::new(0),
            connections: Arc::new(AtomicU32::new(0)),
            stats: ClusterStats::default(),
            h1: OnceLock::new(),
            h2: OnceLock::new(),
            by_sni: Mutex::new(HashMap::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn hosts(&self) -> Arc<Vec<Arc<Host>>> {
        self.hosts.load_full()
    }

    /// Replace the endpoint set, keeping the state of hosts that stay.
    pub fn set_hosts(&self, specs: &[HostSpec]) {
        let old = self.hosts.load();
        let by_addr: HashMap<&HostAddr, &Arc<Host>> = old.iter().map(|h| (&h.addr, h)).collect();
        let new: Vec<Arc<Host>> = specs
            .iter()
            .map(|s| match by_addr.get(&s.addr) {
                Some(h)
                    if h.weight == s.weight
                        && h.healthy == s.healthy
                        && h.socket_match == s.socket_match
                        && h.workload == s.workload =>
                {
                    Arc::clone(h)
                }
                Some(h) => Arc::new(Host::carry(s, h, &self.config.transport)),
                None => Arc::new(Host::new(s, &self.config.transport)),
            })
            .collect();
        self.hosts.store(Arc::new(new));
    }

    pub fn is_original_dst(&self) -> bool {
        self.config.discovery == Discovery::OriginalDst
    }

    /// Pick a host, avoiding `exclude` where another is available.
    pub fn pick(
        &self,
        hash_key: Option<&[u8]>,
        exclude: &[HostAddr],
    ) -> Result<Arc<Host>, PickError> {
        let hosts = self.hosts.load();
        let now = Instant::now();
        let available: Vec<&Arc<Host>> = hosts
            .iter()
            .filter(|h| h.healthy && !h.is_ejected(now))
            .collect();
        let healthy_pct = if hosts.is_empty() {
            0.0
        } else {
            available.len() as f64 * 100.0 / hosts.len() as f64
        };
        // Envoy's panic mode: too few healthy hosts, so balance over all of them.
        let candidates: Vec<&Arc<Host>> = if healthy_pct < self.config.panic_threshold {
            hosts.iter().collect()
        } else {
            available
        };
        let preferred: Vec<&Arc<Host>> = if exclude.is_empty() {
            candidates
        } else {
            let others: Vec<&Arc<Host>> = candidates
                .iter()
                .copied()
                .filter(|h| !exclude.contains(&h.addr))
                .collect();
            if others.is_empty() {
                candidates
            } else {
                others
            }
        };
        if preferred.is_empty() {
            return Err(PickError::NoHealthyUpstream);
        }
        let host = match self.config.lb {
            LbPolicy::RoundRobin => lb::round_robin(&preferred, &self.rr),
            LbPolicy::LeastRequest => lb::least_request(&preferred),
            LbPolicy::Random => lb::random(&preferred),
            LbPolicy::RingHash => match hash_key {
                Some(key) => lb::consistent(&preferred, key),
                None => lb::random(&preferred),
            },
        };
        Ok(Arc::clone(host))
    }

    /// Record an attempt's outcome on its host; ejects it when its consecutive failures
    /// reach the cluster's outlier threshold (and the ejection budget allows).
    pub fn record(&self, host: &Host, outcome: Outcome) {
        host.rq_total.fetch_add(1, Ordering::Relaxed);
        if outcome != Outcome::Success {
            host.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        let Some(cfg) = &self.config.outlier else {
            return;
        };
        let mut st = match host.outlier.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let trip = match outcome {
            Outcome::Success => {
                st.consecutive_5xx = 0;
                st.consecutive_gateway = 0;
                false
            }
            Outcome::Server5xx(code) => {
                st.consecutive_5xx += 1;
                if matches!(code, 502..=504) {
                    st.consecutive_gateway += 1;
                } else {
                    st.consecutive_gateway = 0;
                }
                cfg.consecutive_5xx.is_some_and(|n| st.consecutive_5xx >= n)
                    || cfg
                        .consecutive_gateway
                        .is_some_and(|n| st.consecutive_gateway >= n)
            }
            Outcome::Gateway => {
                st.consecutive_5xx += 1;
                st.consecutive_gateway += 1;
                cfg.consecutive_5xx.is_some_and(|n| st.consecutive_5xx >= n)
                    || cfg
                        .consecutive_gateway
                        .is_some_and(|n| st.consecutive_gateway >= n)
            }
        };
        let now = Instant::now();
        if !trip || st.ejected_until.is_some_and(|t| t > now) {
            return;
        }
        drop(st);
        let hosts = self.hosts.load();
        let ejected = hosts.iter().filter(|h| h.is_ejected(now)).count();
        // Envoy lets at least one host go even when the percentage rounds it to zero.
        let allowed = ((hosts.len() as u64 * cfg.max_ejection_percent as u64) / 100).max(1);
        if ejected as u64 >= allowed {
            return;
        }
        let mut st = match host.outlier.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        st.ejections += 1;
        let time = cfg
            .base_ejection
            .saturating_mul(st.ejections)
            .min(cfg.max_ejection.max(cfg.base_ejection));
        st.ejected_until = Some(now + time);
        st.consecutive_5xx = 0;
        st.consecutive_gateway = 0;
        self.stats.outlier_ejections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %self.name(), host = %host.addr, ejection_secs = time.as_secs_f64(), "outlier ejected");
    }

    /// The pooled HTTP client for this cluster, for an upstream protocol. Requests for
    /// `https://` URIs go over TLS (see [`Host::scheme`]); when the cluster's SNI follows the
    /// request (`auto_sni`), each `request_host` gets its own pool. Shared, not cloned: a
    /// client's clone copies its pool handle, executor, timer and connector.
    pub fn client(
        &self,
        http2: bool,
        secrets: &Arc<SecretStore>,
        sds: &Arc<SdsSecrets>,
        request_host: Option<&str>,
    ) -> Arc<HttpClient> {
        let tls = self.config.transport.any_tls();
        let per_host = tls
            .filter(|t| t.sni.is_none() && t.auto_sni)
            .and(request_host);
        if let Some(host) = per_host
            && let Ok(mut map) = self.by_sni.lock()
        {
            let key = (http2, host.to_string());
            if let Some(c) = map.get(&key) {
                return Arc::clone(c);
            }
            if map.len() >= MAX_SNI_CLIENTS {
                map.clear();
            }
            let c = Arc::new(self.build_client(http2, secrets, sds, Some(host)));
            map.insert(key, Arc::clone(&c));
            return c;
        }
        let cell = if http2 { &self.h2 } else { &self.h1 };
        Arc::clone(cell.get_or_init(|| Arc::new(self.build_client(http2, secrets, sds, None))))
    }

    fn build_client(
        &self,
        http2: bool,
        secrets: &Arc<SecretStore>,
        sds: &Arc<SdsSecrets>,
        request_host: Option<&str>,
    ) -> HttpClient {
        let cfg = &self.config;
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_timeout.unwrap_or(Duration::from_secs(3600)))
            .pool_max_idle_per_host(cfg.limits.max_connections.min(4096) as usize)
            .set_host(false)
            // A pooled connection found closed before the request was written: hyper
            // sends it on another (nothing reached the upstream, so this is safe).
            .retry_canceled_requests(true);
        if http2 {
            b.http2_only(true)
                .timer(TokioTimer::new())
                .http2_adaptive_window(true);
        }
        let tls = cfg.transport.any_tls().map(|t| UpstreamTlsFor {
            tls: Arc::clone(t),
            workload: Arc::clone(secrets),
            sds: Arc::clone(sds),
            request_host: request_host.map(str::to_string),
        });
        b.build(Connector::new(
            cfg.connect_timeout,
            cfg.bind,
            Arc::clone(&self.connections),
            cfg.limits,
            tls,
        ))
    }

    /// Whether requests of this downstream version go upstream as HTTP/2.
    pub fn uses_http2(&self, downstream_h2: bool) -> bool {
        match self.config.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Downstream => downstream_h2,
        }
    }
}

// === impl Host ===

impl Host {
    fn new(s: &HostSpec, transport: &Transport) -> Self {
        Self {
            addr: s.addr.clone(),
            weight: s.weight,
            healthy: s.healthy,
            socket_match: s.socket_match.clone(),
            workload: s.workload.clone(),
            peer: s
                .workload
                .as_deref()
                .and_then(crate::metrics::peer_of_endpoint)
                .map(Arc::new),
            tls: transport.for_endpoint(&s.socket_match).is_some(),
            uri_authority: http::uri::Authority::try_from(s.addr.to_string()).ok(),
            active: AtomicU32::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            outlier: Mutex::new(OutlierState::default()),
        }
    }

    fn carry(s: &HostSpec, old: &Host, transport: &Transport) -> Self {
        let h = Self::new(s, transport);
        h.rq_total
            .store(old.rq_total.load(Ordering::Relaxed), Ordering::Relaxed);
        h.rq_error
            .store(old.rq_error.load(Ordering::Relaxed), Ordering::Relaxed);
        h
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        match self.outlier.lock() {
            Ok(st) => st.ejected_until.is_some_and(|t| t > now),
            Err(_) => false,
        }
    }

    /// The address to dial, for HTTP URIs and TCP.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// [`Self::authority`] parsed, when it parses.
    pub fn uri_authority(&self) -> Option<&http::uri::Authority> {
        self.uri_authority.as_ref()
    }

    /// The scheme the pool keys connections by: `https` for mTLS endpoints.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.addr {
            HostAddr::Ip(a) => Some(*a),
            HostAddr::Dns(..) => None,
        }
    }
}

/// Counts a request as active on a host (for least-request) until dropped.
pub struct ActiveGuard(Arc<Host>);

impl ActiveGuard {
    pub fn new(host: Arc<Host>) -> Self {
        host.active.fetch_add(1, Ordering::Relaxed);
        Self(host)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts against a cluster-wide limit until dropped.
pub struct LimitGuard<'a>(&'a AtomicU32);

impl<'a> LimitGuard<'a> {
    /// `None` when `counter` is already at `max` (circuit open).
    pub fn try_new(counter: &'a AtomicU32, max: u32) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(counter))
    }
}

impl Drop for LimitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
