//! State every part of the proxy shares: config, metrics, readiness and the drain signal.
//!
//! The drain is Istio's (`pilot-agent` posting Envoy's `/drain_listeners?inboundonly&graceful`
//! with `--drain-strategy immediate`): listeners keep accepting, and the connections the drain
//! covers are told to go away at once — HTTP/1 responses carry `connection: close`, HTTP/2
//! connections get a GOAWAY — so callers move to new connections (to this pod while the app
//! is still up, to others once it is gone) and fail no request. A sidecar drains its inbound
//! side only: the app may still call out while it shuts down. A gateway has no app behind it
//! that calls out, and drains everything. The process exits at the end of the drain period.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::config::{Config, NodeType};
use crate::metrics::Metrics;
use crate::state::Store;
use crate::tls::SecretStore;
use crate::tls::credentials::SdsSecrets;

/// Changes the log filter at run time (`/logging?level=`).
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the xDS client last did per type, for `/debug` and the admin pages.
#[derive(Debug, Default, Clone)]
pub struct XdsStatus {
    pub connected: bool,
    pub mode: &'static str,
    pub acked: std::collections::BTreeMap<String, String>,
    pub last_nack: Option<String>,
}

pub struct Shared {
    pub config: Config,
    pub store: Arc<Store>,
    /// The workload certificate and trust bundle (from the CA; rotated in place).
    pub secrets: Arc<SecretStore>,
    /// SDS secrets received over ADS (a gateway's certificates and client CAs), read at
    /// each TLS handshake.
    pub sds: Arc<SdsSecrets>,
    pub metrics: Arc<Metrics>,
    /// `true` once draining (SIGTERM, `/quitquitquit`, the agent's `/drain`).
    pub drain: watch::Sender<bool>,
    /// Downstream connections open now, on every listener (Envoy's `downstream_cx_active`),
    /// for `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`.
    pub active_connections: AtomicU64,
    /// `true` once the first complete config is applied.
    pub ready: watch::Sender<bool>,
    pub access_log: bool,
    pub log_reload: Option<LogReload>,
    pub started: Instant,
    pub xds: Mutex<XdsStatus>,
    /// The span exporters of the tracing providers in use.
    pub tracers: crate::trace_export::Tracers,
}

impl Shared {
    pub fn new(config: Config, access_log: bool, log_reload: Option<LogReload>) -> Self {
        let metrics = Arc::new(Metrics::new(&config));
        Self {
            config,
            store: Arc::new(Store::new()),
            secrets: Arc::new(SecretStore::default()),
            sds: Arc::new(SdsSecrets::default()),
            metrics,
            drain: watch::channel(false).0,
            active_connections: AtomicU64::new(0),
            ready: watch::channel(false).0,
            access_log,
            log_reload,
            started: Instant::now(),
            xds: Mutex::new(XdsStatus::default()),
            tracers: Default::default(),
        }
    }

    /// Config applied, not draining, and holding a workload certificate when a CA is set.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
            && !*self.drain.borrow()
            && (self.config.ca_address.is_none() || self.secrets.current().is_some())
    }

    pub fn start_drain(&self) {
        self.drain.send_replace(true);
    }

    /// Wait until draining starts.
    pub async fn drained(&self) {
        let mut rx = self.drain.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Whether the drain closes connections of this side: a sidecar's inbound side, and
    /// everything on a gateway (`inbound` as [`crate::http::ConnCtx`] has it).
    pub fn drain_covers(&self, inbound: bool) -> bool {
        inbound || self.config.node_type != NodeType::Sidecar
    }

    /// Draining, and the drain covers connections of this side.
    pub fn draining(&self, inbound: bool) -> bool {
        self.drain_covers(inbound) && *self.drain.borrow()
    }

    /// Wait until a drain that covers this side starts; forever for a sidecar's outbound
    /// side.
    pub async fn drain_started(&self, inbound: bool) {
        if self.drain_covers(inbound) {
            self.drained().await;
        } else {
            std::future::pending().await
        }
    }

    pub fn xds_status(&self) -> XdsStatus {
        match self.xds.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn update_xds(&self, f: impl FnOnce(&mut XdsStatus)) {
        match self.xds.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(node_type: NodeType) -> Shared {
        let env: std::collections::BTreeMap<String, String> = Default::default();
        let o = crate::config::Overrides {
            node_type,
            ..Default::default()
        };
        Shared::new(Config::from_env(&env, &o).unwrap(), false, None)
    }

    #[tokio::test]
    async fn a_sidecar_drains_its_inbound_side_and_a_gateway_everything() {
        let sidecar = shared(NodeType::Sidecar);
        let gateway = shared(NodeType::Router);
        for s in [&sidecar, &gateway] {
            assert!(!s.draining(true) && !s.draining(false));
            s.start_drain();
        }
        assert!(sidecar.draining(true) && !sidecar.draining(false));
        assert!(gateway.draining(true) && gateway.draining(false));
        sidecar.drain_started(true).await;
        gateway.drain_started(false).await;
        let outbound = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            sidecar.drain_started(false),
        );
        assert!(outbound.await.is_err(), "a sidecar's outbound side drained");
    }
}
