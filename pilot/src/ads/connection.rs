//! One ADS stream: the protocol state machine for a single proxy.
//!
//! The task owns everything about its stream (subscriptions, nonces, what the proxy has
//! acknowledged), so there is no locking on the push path; the only shared state is the
//! status record that `/debug/syncz` reads. A stream serves either state-of-the-world or delta
//! requests; both share subscription tracking and differ only in what a response carries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::Status;
use tracing::{debug, info, warn};

use mast_proto::TypeUrl;

use super::server::ConnInfo;
use super::wire::{Kind, Response};
use super::{
    ChangeTrace, Generator, ProxyView, Resource, Snapshot, TRACE_TARGET, TypeSet, set_changes,
    set_version,
};
use crate::metrics::Metrics;

/// Protocol state of one resource type on one stream.
#[derive(Debug, Default)]
struct TypeState {
    /// Every resource of the type (CDS and LDS are wildcard by default).
    wildcard: bool,
    /// Explicitly subscribed names (EDS clusters, RDS route configs), shared with the
    /// resources of the same name: 2000 proxies × 3000 clusters is one copy of each name.
    names: BTreeSet<Arc<str>>,
    /// The subscription changed since the last response.
    dirty: bool,
    /// Nonce of the last response, awaiting ACK/NACK.
    pending_nonce: Option<String>,
    /// The shared sets the last response was computed from: when the view still holds the same
    /// sets (by pointer, or by version), there is nothing to send, whatever the model did.
    sent_sets: Vec<Arc<TypeSet>>,
    /// State of the world: version of the last set sent.
    sent_version: Option<String>,
    /// Delta: what the proxy said it had when it (re)connected, until the first response.
    initial: Option<HashMap<String, String>>,
    /// Delta: names to send even if the proxy should have them (newly subscribed, or whose
    /// cluster changed and is being warmed again).
    fresh: BTreeSet<Arc<str>>,
}

impl TypeState {
    /// The version of `name` the proxy has, as far as this stream knows.
    fn has(&self, name: &str) -> Option<&str> {
        if let Some(initial) = &self.initial {
            return initial.get(name).map(String::as_str);
        }
        if !self.wildcard && !self.names.contains(name) {
            return None;
        }
        self.sent_sets
            .iter()
            .find_map(|s| s.resources.get(name))
            .map(|r| &*r.version)
    }

    /// Names the proxy has (wanted and sent) that are not in `view` any more.
    fn gone(&self, view: &ProxyView, type_url: TypeUrl) -> Vec<Arc<str>> {
        let held: Vec<Arc<str>> = match &self.initial {
            Some(initial) => initial.keys().map(|n| Arc::from(n.as_str())).collect(),
            None => self
                .sent_sets
                .iter()
                .flat_map(|s| s.resources.keys())
                .filter(|n| self.wildcard || self.names.contains(*n))
                .cloned()
                .collect(),
        };
        let mut gone: Vec<Arc<str>> = held
            .into_iter()
            .filter(|n| view.get(type_url, n).is_none())
            .collect();
        gone.sort();
        gone.dedup();
        gone
    }
}

/// Same sets: the same `Arc`s, or sets with the same content.
fn same_sets(a: &[Arc<TypeSet>], b: &[Arc<TypeSet>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| Arc::ptr_eq(x, y) || x.version() == y.version())
}

/// The trace of one push to this proxy: an `xds.push` span in the trace of the config change
/// that caused it, from the first response sent to the last ACK or NACK of what was sent.
/// Generation, each response and each answer are events on it (not spans): 2000 proxies make
/// 2000 spans per change, not 2000 × (1 + 2 × types).
struct PushTrace {
    span: tracing::Span,
    /// Types sent in this push and not answered yet.
    waiting: BTreeSet<TypeUrl>,
    types: Vec<&'static str>,
    resources: usize,
    bytes: usize,
    nacks: Vec<String>,
}

/// How a push's trace ends.
#[derive(Clone, Copy, Debug)]
enum PushEnd {
    /// Every response answered (ACK or NACK).
    Answered,
    /// A newer change reached this proxy before every answer came.
    Superseded,
    Disconnected,
}

/// A push to trace when it sends something: the parent context and what came before the
/// first response.
struct PushStart {
    trace: Arc<ChangeTrace>,
    version: u64,
    throttle_wait: std::time::Duration,
    generate: std::time::Duration,
    resources_generated: usize,
}

/// Which protocol a stream speaks; decided by the RPC the proxy called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    StateOfTheWorld,
    Delta,
}

/// A request of either flavour, reduced to what the state machine needs.
#[derive(Debug)]
pub struct Request {
    pub node: Option<Node>,
    pub type_url: String,
    pub response_nonce: String,
    pub version_info: String,
    pub error: Option<String>,
    /// State of the world: the full list of wanted names.
    pub resource_names: Vec<String>,
    /// Delta: changes to the subscription, and what the proxy already has on reconnect.
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_versions: HashMap<String, String>,
}

impl From<DiscoveryRequest> for Request {
    fn from(r: DiscoveryRequest) -> Self {
        Self {
            node: r.node,
            type_url: r.type_url,
            response_nonce: r.response_nonce,
            version_info: r.version_info,
            error: r.error_detail.map(|s| s.message),
            resource_names: r.resource_names,
            subscribe: Vec::new(),
            unsubscribe: Vec::new(),
            initial_versions: HashMap::new(),
        }
    }
}

impl From<DeltaDiscoveryRequest> for Request {
    fn from(r: DeltaDiscoveryRequest) -> Self {
        Self {
            node: r.node,
            type_url: r.type_url,
            response_nonce: r.response_nonce,
            version_info: String::new(),
            error: r.error_detail.map(|s| s.message),
            resource_names: Vec::new(),
            subscribe: r.resource_names_subscribe,
            unsubscribe: r.resource_names_unsubscribe,
            initial_versions: r.initial_resource_versions,
        }
    }
}

pub struct Connection<G> {
    flavor: Flavor,
    generator: Arc<G>,
    snapshots: watch::Receiver<Snapshot>,
    info: Arc<ConnInfo>,
    metrics: Arc<Metrics>,
    /// The push throttle (see [`super::server::DEFAULT_PUSH_THROTTLE`]).
    throttle: Arc<Semaphore>,
    /// The permit of the push under way, shared by its responses.
    permit: Option<Arc<OwnedSemaphorePermit>>,
    tx: mpsc::Sender<Result<Response, Status>>,
    node: Node,
    snapshot: Snapshot,
    resources: ProxyView,
    types: HashMap<TypeUrl, TypeState>,
    nonce: u64,
    /// The push being traced, until every response it sent is answered.
    push: Option<PushTrace>,
    /// A traced push that has not sent anything yet.
    push_start: Option<PushStart>,
}

// === impl Connection ===

impl<G: Generator> Connection<G> {
    /// Serve a stream until the proxy goes away. `first` is the stream's first request,
    /// which must carry the node.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve(
        flavor: Flavor,
        generator: Arc<G>,
        mut snapshots: watch::Receiver<Snapshot>,
        info: Arc<ConnInfo>,
        metrics: Arc<Metrics>,
        throttle: Arc<Semaphore>,
        tx: mpsc::Sender<Result<Response, Status>>,
        first: Request,
        mut requests: impl Stream<Item = Result<Request, Status>> + Unpin,
    ) {
        let node = info.node.clone();
        let snapshot = snapshots.borrow_and_update().clone();
        let resources = match generator.generate(&snapshot, &node) {
            Ok(r) => r,
            Err(e) => {
                warn!(proxy = %node.id, error = %e, "cannot generate config");
                let _ = tx.send(Err(e.to_status())).await;
                return;
            }
        };
        let mut conn = Connection {
            flavor,
            generator,
            snapshots,
            info,
            metrics,
            throttle,
            permit: None,
            tx,
            node,
            snapshot,
            resources,
            types: HashMap::new(),
            nonce: 0,
            push: None,
            push_start: None,
        };
        info!(proxy = %conn.node.id, ?flavor, "proxy connected");
        if conn.handle(first).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                req = requests.next() => match req {
                    Some(Ok(req)) => {
                        if conn.handle(req).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        debug!(proxy = %conn.node.id, %status, "stream error");
                        break;
                    }
                    None => break,
                },
                changed = conn.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Wait for a push slot, then push the newest model: changes that came in
                    // while waiting are merged into one push.
                    let woke = std::time::Instant::now();
                    let Ok(permit) = conn.throttle.clone().acquire_owned().await else {
                        break;
                    };
                    conn.permit = Some(Arc::new(permit));
                    let snapshot = conn.snapshots.borrow_and_update().clone();
                    let pushed = conn.on_snapshot(snapshot, woke.elapsed()).await;
                    conn.permit = None;
                    if pushed.is_err() {
                        break;
                    }
                }
            }
        }
        conn.end_push(PushEnd::Disconnected);
        info!(proxy = %conn.node.id, "proxy disconnected");
    }

    /// A new model: regenerate, and push the types whose content changed. `throttle_wait` is
    /// how long the push waited for a slot.
    async fn on_snapshot(
        &mut self,
        snapshot: Snapshot,
        throttle_wait: std::time::Duration,
    ) -> Result<(), Closed> {
        self.end_push(PushEnd::Superseded);
        let generating = std::time::Instant::now();
        let generated = self.generator.generate(&snapshot, &self.node);
        // Traced when it sends something (most proxies of a big mesh get nothing from a
        // scoped change: they do not spend the change's budget of traced pushes).
        self.push_start = snapshot.trace.clone().map(|trace| PushStart {
            trace,
            version: snapshot.version,
            throttle_wait,
            generate: generating.elapsed(),
            resources_generated: 0,
        });
        match generated {
            Ok(resources) => {
                if let Some(start) = &mut self.push_start {
                    // The layers' sizes: cheap enough for every traced push (listing each
                    // name once, `all`, was a tenth of mastd's CPU through a change at 1000
                    // services); a name in two layers counts twice, as on /debug/syncz.
                    start.resources_generated = TypeUrl::ADS_ORDER
                        .iter()
                        .flat_map(|t| resources.sets(*t))
                        .map(|s| s.resources.len())
                        .sum();
                }
                self.resources = resources
            }
            Err(e) => {
                // Keep serving what the proxy has; this is a pilot bug, not the proxy's.
                warn!(proxy = %self.node.id, error = %e, "cannot generate config; keeping the last one");
                return Ok(());
            }
        }
        let changed_at = snapshot.changed_at;
        self.snapshot = snapshot;
        let mut pushed = false;
        let mut clusters_sent = Vec::new();
        for type_url in TypeUrl::ADS_ORDER {
            if !self.types.contains_key(&type_url) {
                continue;
            }
            // A changed cluster is warmed again by Envoy and waits for its endpoints: resend
            // them even if they did not change.
            let force = type_url == TypeUrl::Endpoint
                && !clusters_sent.is_empty()
                && self.flavor == Flavor::StateOfTheWorld;
            if type_url == TypeUrl::Endpoint
                && self.flavor == Flavor::Delta
                && let Some(state) = self.types.get_mut(&TypeUrl::Endpoint)
            {
                state.fresh.extend(clusters_sent.iter().cloned());
            }
            if let Some(sent) = self.send(type_url, force).await? {
                pushed = true;
                if type_url == TypeUrl::Cluster {
                    clusters_sent = sent;
                }
            }
        }
        if pushed {
            self.metrics
                .convergence
                .observe(changed_at.elapsed().as_secs_f64());
        }
        self.push_start = None;
        Ok(())
    }

    /// The traced push's span, started at its first response.
    fn push_trace(&mut self) -> Option<&mut PushTrace> {
        if self.push.is_none()
            && let Some(start) = self.push_start.take()
            && let Some(parent) = start.trace.admit()
        {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let span = tracing::info_span!(
                target: TRACE_TARGET,
                "xds.push",
                proxy = %self.node.id,
                version = start.version,
                flavor = ?self.flavor,
                types = tracing::field::Empty,
                resources = tracing::field::Empty,
                bytes = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            let _ = span.set_parent(parent);
            tracing::debug!(
                target: TRACE_TARGET,
                parent: &span,
                took_us = start.generate.as_micros() as u64,
                throttle_wait_us = start.throttle_wait.as_micros() as u64,
                resources = start.resources_generated,
                "xds.generate"
            );
            self.push = Some(PushTrace {
                span,
                waiting: BTreeSet::new(),
                types: Vec::new(),
                resources: 0,
                bytes: 0,
                nacks: Vec::new(),
            });
        }
        self.push.as_mut()
    }

    /// End the traced push, if any.
    fn end_push(&mut self, end: PushEnd) {
        self.push_start = None;
        let Some(push) = self.push.take() else {
            return;
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let span = &push.span;
        span.record("types", push.types.join(","));
        span.record("resources", push.resources);
        span.record("bytes", push.bytes);
        let outcome = match end {
            PushEnd::Answered if push.nacks.is_empty() => "acked",
            PushEnd::Answered => "nacked",
            PushEnd::Superseded => "superseded",
            PushEnd::Disconnected => "disconnected",
        };
        span.record("outcome", outcome);
        if !push.nacks.is_empty() {
            span.set_status(opentelemetry::trace::Status::error(format!(
                "NACK {}",
                push.nacks.join("; ")
            )));
        }
    }

    /// An answer to a traced push's response of `type_url`.
    fn push_answered(&mut self, type_url: TypeUrl, version: &str, nack: Option<&str>) {
        let Some(push) = &mut self.push else {
            return;
        };
        if !push.waiting.remove(&type_url) {
            return;
        }
        match nack {
            None => tracing::debug!(
                target: TRACE_TARGET,
                parent: &push.span,
                type_url = type_url.url(),
                version,
                "xds.ack"
            ),
            Some(error) => {
                tracing::debug!(
                    target: TRACE_TARGET,
                    parent: &push.span,
                    type_url = type_url.url(),
                    version,
                    error,
                    "xds.nack"
                );
                push.nacks.push(format!("{}: {error}", type_url.short()));
            }
        }
        if push.waiting.is_empty() {
            self.end_push(PushEnd::Answered);
        }
    }

    async fn handle(&mut self, req: Request) -> Result<(), Closed> {
        let served = TypeUrl::from_url(&req.type_url).filter(|t| TypeUrl::ADS_ORDER.contains(t));
        let Some(type_url) = served else {
            debug!(proxy = %self.node.id, type_url = %req.type_url, "ignoring request for an unserved type");
            return Ok(());
        };
        match self.flavor {
            Flavor::StateOfTheWorld => self.handle_sotw(type_url, req).await,
            Flavor::Delta => self.handle_delta(type_url, req).await,
        }
    }

    async fn handle_sotw(&mut self, type_url: TypeUrl, req: Request) -> Result<(), Closed> {
        let wildcard = type_url.is_wildcard() && req.resource_names.is_empty();
        let names: BTreeSet<Arc<str>> = req
            .resource_names
            .into_iter()
            .map(|n| intern(&self.resources, type_url, n))
            .collect();
        let state = self.types.entry(type_url).or_default();
        if !req.response_nonce.is_empty() {
            if state.pending_nonce.as_deref() != Some(req.response_nonce.as_str()) {
                // An answer to a response that was superseded; the newer one is on its way.
                return Ok(());
            }
            state.pending_nonce = None;
            if let Some(error) = req.error {
                self.on_nack(type_url, &req.version_info, &error);
                return Ok(());
            }
            self.on_ack(type_url, &req.version_info);
            let state = self.types.entry(type_url).or_default();
            if state.wildcard == wildcard && state.names == names {
                return Ok(());
            }
            state.wildcard = wildcard;
            state.names = names;
            state.dirty = true;
            self.send(type_url, false).await.map(drop)
        } else {
            // A new subscription, or the proxy asking again after a reconnect.
            state.wildcard = wildcard;
            state.names = names;
            state.dirty = true;
            self.send(type_url, true).await.map(drop)
        }
    }

    async fn handle_delta(&mut self, type_url: TypeUrl, req: Request) -> Result<(), Closed> {
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url).or_default();
        if first {
            state.wildcard = type_url.is_wildcard()
                && (req.subscribe.is_empty() || req.subscribe.iter().any(|n| n == "*"));
            state.initial = Some(req.initial_versions);
            state.dirty = true;
        }
        for name in req.subscribe {
            if name == "*" {
                state.dirty |= !state.wildcard;
                state.wildcard = true;
            } else {
                let name = intern(&self.resources, type_url, name);
                if state.names.insert(name.clone()) {
                    state.dirty = true;
                    state.fresh.insert(name);
                }
            }
        }
        for name in req.unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name.as_str());
                state.fresh.remove(name.as_str());
                if let Some(initial) = &mut state.initial {
                    initial.remove(&name);
                }
            }
        }
        if !req.response_nonce.is_empty()
            && state.pending_nonce.as_deref() == Some(req.response_nonce.as_str())
        {
            state.pending_nonce = None;
            let version = self.snapshot.version.to_string();
            match req.error {
                Some(error) => self.on_nack(type_url, &version, &error),
                None => self.on_ack(type_url, &version),
            }
        }
        let dirty = self.types.get(&type_url).is_some_and(|s| s.dirty);
        if dirty {
            self.send(type_url, first).await?;
        }
        Ok(())
    }

    fn on_ack(&mut self, type_url: TypeUrl, version: &str) {
        self.push_answered(type_url, version, None);
        let mut status = self.info.lock_status();
        let t = status.entry(type_url.short()).or_default();
        if t.acked_version.as_deref() != Some(version) {
            t.acked_at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok());
        }
        t.acked_version = Some(version.to_string());
        t.acked_snapshot = Some(self.snapshot.version);
    }

    fn on_nack(&mut self, type_url: TypeUrl, version: &str, error: &str) {
        self.push_answered(type_url, version, Some(error));
        warn!(proxy = %self.node.id, type_url = type_url.url(), version, error, "proxy rejected config (NACK)");
        self.metrics.record_nack(type_url.short());
        let mut status = self.info.lock_status();
        let t = status.entry(type_url.short()).or_default();
        t.last_nack = Some(error.to_string());
        t.nacks += 1;
    }

    /// Send what the proxy should have of `type_url` now. Without `force`, nothing is sent
    /// when the proxy is already up to date. Returns the names of the resources sent, or
    /// `None` when no response was sent.
    async fn send(
        &mut self,
        type_url: TypeUrl,
        force: bool,
    ) -> Result<Option<Vec<Arc<str>>>, Closed> {
        let started = std::time::Instant::now();
        let sets = self.resources.sets(type_url);
        let Some(state) = self.types.get_mut(&type_url) else {
            return Ok(None);
        };
        if !force && !state.dirty && state.fresh.is_empty() && same_sets(&sets, &state.sent_sets) {
            return Ok(None);
        }
        let view = &self.resources;
        let wanted = |state: &TypeState| -> Vec<&Arc<Resource>> {
            if state.wildcard {
                view.all(type_url)
            } else {
                state
                    .names
                    .iter()
                    .filter_map(|n| view.get(type_url, n))
                    .collect()
            }
        };
        // For /debug/syncz only: names shadowed between layers are counted twice.
        let total = sets.iter().map(|s| s.resources.len()).sum();
        self.nonce += 1;
        let nonce = format!("{}-{}", self.snapshot.version, self.nonce);
        let (response, sent, version) = match self.flavor {
            Flavor::StateOfTheWorld => {
                let wanted = wanted(state);
                let version = set_version(wanted.iter().copied());
                state.dirty = false;
                state.sent_sets = sets;
                if !force && state.sent_version.as_deref() == Some(version.as_str()) {
                    return Ok(None);
                }
                state.sent_version = Some(version.clone());
                let sent: Vec<Arc<str>> = wanted.iter().map(|r| r.name.clone()).collect();
                let response = (
                    Kind::Sotw {
                        version_info: version.clone(),
                    },
                    wanted.into_iter().cloned().collect(),
                );
                (response, sent, version)
            }
            Flavor::Delta => {
                let incremental = !force
                    && !state.dirty
                    && state.initial.is_none()
                    && state.fresh.is_empty()
                    && state.sent_sets.len() == sets.len();
                let (changed, removed) = if incremental {
                    // Only names that differ between the sets sent and the sets now can have
                    // changed: a pointer walk over unchanged sets, and over the unchanged
                    // (shared) resources of changed ones. This is what keeps endpoint churn
                    // cheap: one changed endpoint is a handful of lookups per proxy, not one
                    // per cluster.
                    let mut candidates = Vec::new();
                    for (old, new) in state.sent_sets.iter().zip(&sets) {
                        if !Arc::ptr_eq(old, new) {
                            set_changes(old, new, &mut candidates);
                        }
                    }
                    candidates.sort();
                    candidates.dedup();
                    let mut changed = Vec::new();
                    let mut removed = Vec::new();
                    for name in candidates {
                        match view.get(type_url, &name) {
                            Some(r) => {
                                if (state.wildcard || state.names.contains(&name))
                                    && state.has(&name) != Some(&*r.version)
                                {
                                    changed.push(r);
                                }
                            }
                            None => {
                                if state.has(&name).is_some() {
                                    removed.push(name);
                                }
                            }
                        }
                    }
                    (changed, removed)
                } else {
                    let changed: Vec<&Arc<Resource>> = wanted(state)
                        .into_iter()
                        .filter(|r| {
                            state.fresh.contains(&r.name) || state.has(&r.name) != Some(&*r.version)
                        })
                        .collect();
                    (changed, state.gone(view, type_url))
                };
                state.dirty = false;
                state.sent_sets = sets;
                state.initial = None;
                state.fresh.clear();
                if !force && changed.is_empty() && removed.is_empty() {
                    return Ok(None);
                }
                let sent: Vec<Arc<str>> = changed.iter().map(|r| r.name.clone()).collect();
                let response = (
                    Kind::Delta {
                        system_version_info: self.snapshot.version.to_string(),
                        removed,
                    },
                    changed.into_iter().cloned().collect(),
                );
                (response, sent, self.snapshot.version.to_string())
            }
        };
        state.pending_nonce = Some(nonce.clone());
        let permit = match &self.permit {
            Some(p) => p.clone(),
            // A response to a request, outside a push: it takes a slot of its own.
            None => Arc::new(
                self.throttle
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Closed)?,
            ),
        };
        let (kind, resources) = response;
        let response = Response {
            kind,
            type_url,
            nonce: nonce.clone(),
            resources,
            permit: Some(permit),
        };
        let size = response.encoded_len();
        self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        if let Some(push) = self.push_trace() {
            tracing::debug!(
                target: TRACE_TARGET,
                parent: &push.span,
                type_url = type_url.url(),
                resources = sent.len(),
                bytes = size,
                nonce = %nonce,
                "xds.send"
            );
            push.waiting.insert(type_url);
            if !push.types.contains(&type_url.short()) {
                push.types.push(type_url.short());
            }
            push.resources += sent.len();
            push.bytes += size;
        }
        self.metrics
            .record_push(type_url.short(), started.elapsed(), size);
        {
            let mut status = self.info.lock_status();
            let t = status.entry(type_url.short()).or_default();
            t.sent_version = Some(version);
            t.sent_nonce = Some(nonce);
            t.sent_snapshot = Some(self.snapshot.version);
            t.resources = total;
        }
        debug!(proxy = %self.node.id, type_url = type_url.url(), resources = sent.len(), "pushed");
        Ok(Some(sent))
    }
}

/// `name` as the view's own `Arc` when it holds a resource of that name.
fn intern(view: &ProxyView, type_url: TypeUrl, name: String) -> Arc<str> {
    view.get(type_url, &name)
        .map(|r| r.name.clone())
        .unwrap_or_else(|| name.into())
}

/// The response channel is gone: the proxy disconnected.
#[derive(Debug)]
pub struct Closed;

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use super::*;
    use crate::ads::{ProxyResources, diff_sets};

    fn set(names: &[(&str, &str)], previous: Option<&ProxyResources>) -> ProxyResources {
        let mut r = ProxyResources::default();
        for (name, stat) in names {
            let c = Cluster {
                name: name.to_string(),
                alt_stat_name: stat.to_string(),
                ..Default::default()
            };
            r.insert_stable(TypeUrl::Cluster, name, &c, previous);
        }
        r
    }

    #[test]
    fn diff_sets_finds_added_removed_and_changed_only() {
        let old = set(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")], None);
        let new = set(
            &[("a", "1"), ("c", "2"), ("d", "1"), ("e", "1")],
            Some(&old),
        );
        let mut out = Vec::new();
        diff_sets(
            &old.by_type[&TypeUrl::Cluster],
            &new.by_type[&TypeUrl::Cluster],
            &mut out,
        );
        let out: Vec<&str> = out.iter().map(|n| &**n).collect();
        assert_eq!(out, ["b", "c", "e"]);
    }
}
