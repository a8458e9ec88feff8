//! State every part of the proxy shares: config, metrics, readiness and the drain signal.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::config::Config;
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
    /// `true` once draining (SIGTERM, `/quitquitquit`).
    pub drain: watch::Sender<bool>,
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
