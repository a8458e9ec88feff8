//! The ADS client: one gRPC stream to pilot carrying CDS, EDS, LDS and RDS, and for a
//! gateway the SDS secrets its TLS listeners name.
//!
//! Delta xDS first (only changes travel), state-of-the-world when pilot answers
//! `UNIMPLEMENTED` or `--sotw` asks for it. Each response is converted as a whole and ACKed,
//! or NACKed with the converter's error naming resource and field — and then nothing of it
//! is applied. A new snapshot is published only once every route configuration and endpoint
//! set the listeners and clusters name has arrived, so the data plane never sees half an
//! update. When pilot goes away the proxy keeps serving its last config and reconnects with
//! capped exponential backoff (10 ms → 15 s, jittered); on reconnect it tells pilot which
//! versions it holds so nothing is re-sent needlessly.
//!
//! Both protocols run through one loop (`stream`), so decoding, applying, the ACK/NACK
//! decision and publishing are written once; what differs between them (the requests, the
//! split of a response, what an ACK carries) is a `Protocol` (`xds/protocol.rs`),
//! implemented in `xds/delta.rs` and `xds/sotw.rs`.

mod delta;
mod protocol;
mod sotw;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use mast_proto::TypeUrl;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use self::delta::Delta;
use self::protocol::{Client, Held, Protocol};
use self::sotw::Sotw;
use crate::listen::Listeners;
use crate::resources::{Nack, Rejection};
use crate::shared::Shared;
use crate::state::{Incoming, Resources, Wanted};

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Envoy's `initial_fetch_timeout`: give up waiting for a missing resource and go on.
const INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("bad discovery address {0:?}")]
    Address(String),
    #[error("request channel closed")]
    Closed,
}

/// Run the client until the process exits — through the drain too. Istio's pilot-agent
/// leaves Envoy's xDS running while it drains: a sidecar's outbound side still serves the
/// calls an app makes while it shuts down, and those must follow config changes (a route
/// moved, an endpoint gone) like any other call.
pub async fn run(shared: Arc<Shared>, listeners: Arc<Listeners>, address: String) {
    let mut backoff = BACKOFF_MIN;
    let mut delta = !shared.config.sotw_only;
    let mut publisher = Publisher::new(Arc::clone(&shared), listeners);
    loop {
        let started = Instant::now();
        let result = connect_and_stream(&shared, &mut publisher, &address, delta).await;
        shared.update_xds(|s| s.connected = false);
        match result {
            Err(Error::Stream(status)) if delta && status.code() == tonic::Code::Unimplemented => {
                tracing::info!("pilot has no delta xDS; using state-of-the-world");
                delta = false;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "xDS stream ended")
            }
            Ok(()) => tracing::warn!(
                retry_in_ms = backoff.as_millis() as u64,
                "xDS stream closed by pilot"
            ),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_MIN;
        }
        let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect_and_stream(
    shared: &Arc<Shared>,
    publisher: &mut Publisher,
    address: &str,
    delta: bool,
) -> Result<(), Error> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|_| Error::Address(address.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|source| Error::Connect { addr: uri, source })?;
    let mut client = Client::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let node = node(shared);
    let mode = if delta { Delta::MODE } else { Sotw::MODE };
    shared.update_xds(|s| {
        s.connected = true;
        s.mode = mode;
    });
    tracing::info!(pilot = %address, mode, "xDS connected");
    if delta {
        stream::<Delta>(&mut client, publisher, node).await
    } else {
        stream::<Sotw>(&mut client, publisher, node).await
    }
}

/// This proxy as pilot sees it.
pub fn node(shared: &Shared) -> Node {
    let cfg = &shared.config;
    Node {
        id: cfg.node_id(),
        cluster: format!("{}.{}", cfg.workload_name(), cfg.pod_namespace),
        metadata: Some(Struct {
            fields: cfg
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        }),
        user_agent_name: "mast-proxy".into(),
        user_agent_version_type: Some(
            envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            ),
        ),
        ..Default::default()
    }
}

fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The `error_detail` of a NACK.
fn nack(rejected: &Nack) -> Status {
    Status {
        code: tonic::Code::InvalidArgument as i32,
        message: rejected.to_string(),
        details: Vec::new(),
    }
}

/// One stream in protocol `P`, until pilot or the connection ends it.
async fn stream<P: Protocol>(
    client: &mut Client,
    publisher: &mut Publisher,
    node: Node,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel::<P::Request>(64);
    let mut protocol = P::default();
    let wanted = publisher.wanted();
    for req in protocol.subscribe(node, &wanted, &publisher.held_versions()) {
        tx.send(req).await.map_err(|_| Error::Closed)?;
    }
    let mut stream = P::open(client, ReceiverStream::new(rx)).await?;
    let mut subscribed = wanted;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let resp = tokio::select! {
            m = stream.message() => match m? {
                Some(r) => r,
                None => return Ok(()),
            },
            _ = tick.tick() => {
                publisher.try_publish();
                continue;
            }
        };
        let (received, incoming) = P::split(resp);
        let result = publisher.apply_response(
            &received.type_url,
            &received.version,
            incoming,
            &received.removed,
            P::REPLACE,
        );
        let wanted = publisher.wanted();
        let ack = protocol.ack(&received, result.err().as_ref().map(nack), &wanted);
        tx.send(ack).await.map_err(|_| Error::Closed)?;
        // New names to follow: ask for them before publishing so the missing pieces come.
        for req in protocol.follow(&received, &wanted, &subscribed) {
            tx.send(req).await.map_err(|_| Error::Closed)?;
        }
        subscribed = wanted;
        publisher.try_publish();
    }
}

/// Applies responses to the resource store and publishes complete snapshots.
pub struct Publisher {
    shared: Arc<Shared>,
    listeners: Arc<Listeners>,
    dirty: bool,
    incomplete_since: Option<Instant>,
    bind_error: Option<String>,
    /// Bind failures already NACKed with the LDS response that added the listener, so the
    /// publish that tries again later does not NACK an unrelated response for them.
    reported_binds: Vec<String>,
}

impl Publisher {
    pub fn new(shared: Arc<Shared>, listeners: Arc<Listeners>) -> Self {
        Self {
            shared,
            listeners,
            dirty: false,
            incomplete_since: None,
            bind_error: None,
            reported_binds: Vec::new(),
        }
    }

    fn resources(&self) -> std::sync::MutexGuard<'_, Resources> {
        match self.shared.store.resources.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        }
    }

    pub fn wanted(&self) -> Wanted {
        self.resources().wanted()
    }

    fn held_versions(&self) -> Held {
        let r = self.resources();
        let mut out = BTreeMap::new();
        macro_rules! held {
            ($t:expr, $state:expr) => {
                out.insert(
                    $t,
                    $state
                        .items
                        .iter()
                        .map(|(n, i)| (n.clone(), i.version.clone()))
                        .collect(),
                );
            };
        }
        held!(TypeUrl::Cluster, r.clusters);
        held!(TypeUrl::Endpoint, r.endpoints);
        held!(TypeUrl::Listener, r.listeners);
        held!(TypeUrl::Route, r.routes);
        held!(TypeUrl::Secret, r.secrets);
        out
    }

    /// Apply one response of type `type_url` (as it came on the wire); the error is the NACK
    /// text. For callers that only report it, as the static config does.
    pub fn apply(
        &mut self,
        type_url: &str,
        version: &str,
        incoming: Vec<Incoming>,
        removed: &[String],
        replace: bool,
    ) -> Result<(), String> {
        self.apply_response(type_url, version, incoming, removed, replace)
            .map_err(|nack| nack.to_string())
    }

    /// Apply one response of type `type_url` (as it came on the wire); the error is the
    /// NACK.
    pub fn apply_response(
        &mut self,
        type_url: &str,
        version: &str,
        incoming: Vec<Incoming>,
        removed: &[String],
        replace: bool,
    ) -> Result<(), Nack> {
        let count = incoming.len();
        let typed = TypeUrl::from_url(type_url);
        let result = match typed {
            Some(t) => self
                .resources()
                .apply(t, version, incoming, removed, replace),
            None => Err(Rejection::UnsupportedType(type_url.to_string()).into()),
        };
        match &result {
            Ok(()) => {
                self.dirty = true;
                if typed == Some(TypeUrl::Secret) {
                    // A secret takes effect at once, on the next handshake: it changes no
                    // listener, so it does not wait for a snapshot (nor does a rotation).
                    let credentials = self.resources().credentials();
                    tracing::info!(secrets = ?credentials.keys().collect::<Vec<_>>(), version, "SDS secrets applied");
                    self.shared.sds.replace(credentials);
                }
                tracing::debug!(
                    type_url,
                    version,
                    count,
                    removed = removed.len(),
                    "xDS applied"
                );
                self.shared.update_xds(|s| {
                    s.acked.insert(type_url.to_string(), version.to_string());
                });
            }
            Err(e) => {
                tracing::warn!(type_url, version, error = %e, "xDS rejected (NACK); keeping the last good config");
                self.shared
                    .update_xds(|s| s.last_nack = Some(format!("{type_url}: {e}")));
            }
        }
        let bind = if typed == Some(TypeUrl::Listener) && result.is_ok() {
            // A listener whose address is taken fails this response, as in Envoy, even
            // when it waits for its routes before it is published.
            let wanted: Vec<(String, std::net::SocketAddr)> = self
                .resources()
                .listeners
                .items
                .values()
                .filter(|i| i.parsed.bind)
                .map(|i| (i.parsed.name.clone(), i.parsed.addr))
                .collect();
            self.reported_binds = self
                .listeners
                .probe(wanted.iter().map(|(n, a)| (n.as_str(), *a)));
            self.try_publish();
            let mut failures = self.reported_binds.clone();
            failures.extend(self.bind_error.take());
            failures.dedup();
            (!failures.is_empty())
                .then(|| Nack(failures.into_iter().map(Rejection::Bind).collect()))
        } else {
            None
        };
        match (result, bind) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Publish a snapshot if something changed and the set is complete (or the initial
    /// fetch timeout has passed).
    pub fn try_publish(&mut self) {
        if !self.dirty {
            return;
        }
        let missing = self.resources().missing();
        if !missing.is_empty() {
            let since = *self.incomplete_since.get_or_insert_with(Instant::now);
            if since.elapsed() < INITIAL_FETCH_TIMEOUT {
                return;
            }
            tracing::warn!(?missing, "publishing without resources pilot has not sent");
        }
        let snap = self.resources().snapshot(&self.shared.store.current.load());
        self.incomplete_since = None;
        self.dirty = false;
        if let Err(e) = self.listeners.reconcile(&snap) {
            tracing::warn!(error = %e, "some listeners could not start");
            // What the LDS response that added them was NACKed for is not said again.
            let fresh: Vec<&str> = e
                .split("; ")
                .filter(|f| !self.reported_binds.iter().any(|r| r == f))
                .collect();
            self.bind_error = (!fresh.is_empty()).then(|| fresh.join("; "));
        }
        let counts = (snap.listeners.len(), snap.routes.len(), snap.clusters.len());
        self.shared.store.current.store(Arc::new(snap));
        tracing::info!(
            listeners = counts.0,
            routes = counts.1,
            clusters = counts.2,
            "config applied"
        );
        if !*self.shared.ready.borrow() {
            self.shared.ready.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests;
