//! mastd's wiring: from a parsed [`Config`] to running servers, and back to an exit code.
//!
//! The order matters and is kept in one place: on a cluster the client and the leader
//! election come first (the CA may need the API server); citadel starts before the injector
//! (whose certificate it issues) and before pilot (whose generated config turns mTLS on when a
//! CA runs); telemetry is bound with the other servers but started from pilot's "bound"
//! callback, since it reads pilot's connections. Every server stops on one [`Shutdown`]:
//! SIGTERM, Ctrl-C, or a replica deciding to restart for a new CA root.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mast_citadel::CertificateAuthority;
use mast_pilot::server::{self, Bound, Handles};
use mast_pilot::xds::{Security, XdsGenerator};
use mast_telemetry::traces::TraceStore;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

use crate::citadel::{Authority, CitadelError, RootSource};
use crate::config::Config;
use crate::kube::{self, KubeError};
use crate::telemetry;

/// Exit code for bad configuration (sysexits EX_USAGE), as every Mast binary uses.
pub const EXIT_CONFIG: u8 = 64;

/// How long a stopping replica waits to hand back the leader Lease.
const RELEASE_LEASE: Duration = Duration::from_secs(5);

/// Why mastd could not start (or stopped early).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pilot(server::Error),
    #[error(transparent)]
    Citadel(#[from] CitadelError),
    #[error("injector: {0}")]
    Injector(String),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// The one stop signal every server follows.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// mastd on a cluster: the API client and this replica's part in the leader election. Every
/// replica serves xDS, certificates and injection; only the leader writes (status, the
/// trust-bundle ConfigMaps, the webhook's caBundle).
struct Cluster {
    client: mast_kube::client::Client,
    leader: watch::Receiver<bool>,
    end_election: oneshot::Sender<()>,
    election: tokio::task::JoinHandle<()>,
}

// === impl StartError ===

impl StartError {
    /// The operator's configuration is at fault (exit 64), not the machine.
    pub fn is_bad_config(&self) -> bool {
        matches!(
            self,
            Self::Pilot(server::Error::NoConfigDir(_) | server::Error::Bind { .. })
                | Self::Citadel(_)
                | Self::Injector(_)
                | Self::Telemetry(_)
                | Self::Kube(KubeError::Client(_))
        )
    }

    /// The process's exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        if self.is_bad_config() {
            ExitCode::from(EXIT_CONFIG)
        } else {
            ExitCode::FAILURE
        }
    }
}

// === impl Shutdown ===

impl Shutdown {
    /// A signal not yet given, and the sender that gives it.
    pub fn new() -> (Arc<watch::Sender<bool>>, Self) {
        let (tx, rx) = watch::channel(false);
        (Arc::new(tx), Self(rx))
    }

    /// Resolves once shutdown is signalled (or every sender is gone).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Log to stderr at `RUST_LOG` (default `info`), as text or JSON lines.
pub fn init_tracing(json: bool) {
    init_tracing_with(json, None);
}

/// [`init_tracing`], and with `provider` mastd's own trace spans go to the trace store too
/// ([`crate::traces::layer`]; `RUST_LOG` filters the log only).
pub fn init_tracing_with(
    json: bool,
    provider: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let registry = tracing_subscriber::registry().with(log.with_filter(filter));
    match provider {
        Some(p) => registry.with(crate::traces::layer(p)).init(),
        None => registry.init(),
    }
}

/// Run mastd until shutdown: the whole process after flag parsing.
pub fn main(config: Config) -> ExitCode {
    let traces = Arc::new(TraceStore::new(crate::traces::limits(&config)));
    // Kept to the end of main: dropping the provider ends the export of mastd's spans.
    let provider = crate::traces::provider(Arc::clone(&traces));
    init_tracing_with(config.log_json, Some(&provider));
    mast_pilot::ads::set_push_traces_per_change(config.push_traces_per_change);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_with_traces(config, traces)) {
        Ok(()) => {
            info!("mastd stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            e.exit_code()
        }
    }
}

/// Start every server `config` asks for and serve until SIGTERM/Ctrl-C (or a new CA root).
pub async fn run(config: Config) -> Result<(), StartError> {
    let traces = Arc::new(TraceStore::new(crate::traces::limits(&config)));
    run_with_traces(config, traces).await
}

/// [`run`], keeping received spans in `traces` (where mastd's own spans go too).
pub async fn run_with_traces(config: Config, traces: Arc<TraceStore>) -> Result<(), StartError> {
    let (stop, shutdown) = Shutdown::new();
    let stop_on_signal = Arc::clone(&stop);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_on_signal.send_replace(true);
    });
    let mut registry = Registry::default();
    let cluster = if config.kube_mode() {
        Some(Cluster::join(&config).await?)
    } else {
        None
    };

    // citadel: the root from a directory (local credentials), or on a cluster from the
    // Secrets `cacerts`/`istio-ca-secret` with callers checked by TokenReview.
    let root = RootSource::choose(
        config.no_ca,
        config.ca_dir.as_deref(),
        cluster.as_ref().map(|c| &c.client),
    )?;
    let authority = match root {
        RootSource::None => None,
        RootSource::Dir(dir) => Some(Authority::from_dir(&dir, config.ca_options())?),
        RootSource::Cluster(client) => Some(
            Authority::from_cluster(
                client,
                &config.pod_namespace,
                config.ca_options(),
                config.ca_poll_interval,
                Arc::clone(&stop),
            )
            .await?,
        ),
    };
    let ca = match authority {
        None => None,
        Some(authority) => {
            let counters = authority.serve(config.ca_addr, shutdown.clone()).await?;
            counters.register(&mut registry);
            Some(authority.ca)
        }
    };
    let security = Security {
        mtls: ca.is_some(),
        trust_domain: config.trust_domain.clone(),
    };
    if let (Some(c), Some(ca)) = (&cluster, &ca) {
        c.publish_roots(ca, &config);
    }

    // Registered even without the webhook, so the Control Plane dashboard shows 0.
    let injections = Arc::new(mast_injector::webhook::Counters::default());
    injections.register(&mut registry);
    if !config.no_injector {
        crate::injector::start(
            config.injector_addr,
            ca.as_deref(),
            config.inject_settings(),
            injections,
            shutdown.clone(),
        )
        .await?;
    }
    let telemetry = telemetry::Pending::bind(&config).await?;
    let receiver = crate::traces::Pending::bind(&config, Arc::clone(&traces)).await?;
    receiver.start(shutdown.clone());
    let stop_telemetry = shutdown.clone();
    let on_bound = move |bound: Bound, handles: Handles| {
        info!(xds = %bound.xds, http = %bound.http, "mastd ready");
        if let Some(telemetry) = telemetry {
            telemetry.start(handles, stop_telemetry, Some(traces));
        }
    };

    let pilot_config = config.pilot();
    let debounce = pilot_config.debounce;
    let pilot = server::Pilot::new(pilot_config, XdsGenerator::new(security)).registry(registry);
    match cluster {
        Some(Cluster {
            client,
            leader,
            end_election,
            election,
        }) => {
            let gate = mast_kube::status::WriteGate::from_receiver(leader);
            let renderer = kube::gateway_renderer(config.inject_settings());
            let (source, first) = kube::start(client, debounce, gate, Some(renderer)).await?;
            let result = pilot
                .source(move |ctx| kube::PilotSource::new(source, first, ctx))
                .on_bound(on_bound)
                .run(shutdown.wait())
                .await
                .map_err(StartError::Pilot);
            // Step down and release the Lease, so a peer takes over without waiting it out.
            let _ = end_election.send(());
            let _ = tokio::time::timeout(RELEASE_LEASE, election).await;
            result
        }
        None => pilot
            .on_bound(on_bound)
            .run(shutdown.wait())
            .await
            .map_err(StartError::Pilot),
    }
}

// === impl Cluster ===

impl Cluster {
    /// Connect to the API server and join the leader election.
    async fn join(config: &Config) -> Result<Self, KubeError> {
        let client = kube::connect(&kube::client_source(config.kubeconfig.clone())).await?;
        let identity = config
            .pod_name
            .clone()
            .unwrap_or_else(kube::default_identity);
        let (end_election, election_ends) = oneshot::channel::<()>();
        let (leader, election) = kube::elect(
            client.clone(),
            &config.pod_namespace,
            &identity,
            async move {
                let _ = election_ends.await;
            },
        );
        Ok(Self {
            client,
            leader,
            end_election,
            election,
        })
    }

    /// The trust bundle in every namespace, and the webhook's caBundle (the leader writes).
    fn publish_roots(&self, ca: &CertificateAuthority, config: &Config) {
        let (bundle_tx, bundle) = watch::channel(ca.trust_bundle_pem());
        // The root does not change while mastd runs; the sender may go.
        drop(bundle_tx);
        tokio::spawn(mast_kube::trust_bundle::run(
            self.client.clone(),
            bundle.clone(),
            self.leader.clone(),
        ));
        if !config.no_injector {
            tokio::spawn(mast_kube::webhook_ca::run(
                self.client.clone(),
                config.webhook_config.clone(),
                bundle,
                self.leader.clone(),
            ));
        }
    }
}

/// SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_reaches_every_waiter() {
        let (stop, shutdown) = Shutdown::new();
        let a = tokio::spawn(shutdown.wait());
        let b = tokio::spawn(shutdown.clone().wait());
        stop.send_replace(true);
        for waiter in [a, b] {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap();
        }
        // A waiter that comes late sees the signal already given.
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .unwrap();
    }

    #[test]
    fn bad_configuration_exits_64() {
        let e = StartError::Citadel(CitadelError::NoStateDir);
        assert!(e.is_bad_config());
        assert_eq!(e.exit_code(), ExitCode::from(EXIT_CONFIG));
        let e = StartError::Injector("cannot bind".into());
        assert!(e.is_bad_config());
    }
}
