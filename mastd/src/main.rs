//! mastd: the Mast control plane in one binary, as istiod is for Istio. It hosts pilot
//! (config folder → xDS over ADS) and citadel (workload certificates over Istio's CA API on
//! TLS :15012), which also turns on mesh mTLS in the generated config. istiod always runs its
//! CA, so mastd does too: its root lives in `--ca-dir` (by default a state directory of the
//! user's, made on first start); `--no-ca` opts out, and then the mesh runs in plaintext.
//! It serves the sidecar injection webhook on :15017 (`--no-injector` to switch it off) and
//! the telemetry collector with the topology web view on :20001 (`--no-telemetry`; with
//! `--prometheus URL` the graph is read from Prometheus instead of scraped).
//!
//! With `--kube` pilot reads the mesh from the Kubernetes API (mast-kube) instead of
//! `--config-dir`, and citadel (unless `--ca-dir` is given) keeps its root in the Secret
//! `istio-ca-secret` (or Istio's plug-in `cacerts`) and checks callers by TokenReview; the
//! elected leader publishes the trust bundle as ConfigMap `istio-ca-root-cert` in every
//! namespace and keeps the injector webhook's caBundle current.
//!
//! `main` only parses flags and wires; the logic lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mast_citadel::{CaOptions, CertificateAuthority, Citadel, ServerTls, TokenVerifier};
use mast_injector::inject::Settings as InjectSettings;
use mast_injector::webhook;

mod kube;
mod telemetry;
use mast_pilot::server::{self, PilotConfig};
use mast_pilot::source::Debounce;
use mast_pilot::xds::{Security, XdsGenerator};
use tracing::{error, info, warn};

/// pilot builds and frees large encoded responses (a route configuration of a thousand
/// virtual hosts, copied once per proxy) on every push; mimalloc reuses those pages where the
/// system allocator maps and unmaps them each time. Measured in bench/README.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration (sysexits EX_USAGE), as every Mast binary uses.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "mastd", version, about = "The Mast control plane (pilot)")]
struct Args {
    /// Directory of mesh configuration YAML/JSON, watched for changes (repeatable). Either
    /// this or `--kube`.
    #[arg(
        long = "config-dir",
        required_unless_present_any = ["kube", "kubeconfig"],
        conflicts_with_all = ["kube", "kubeconfig"],
        env = "MAST_CONFIG_DIR",
        value_delimiter = ','
    )]
    config_dirs: Vec<PathBuf>,

    /// Read the mesh configuration from the Kubernetes API (Services, Pods, Namespaces and
    /// the mesh CRDs) instead of a folder: in-cluster in a pod, else the kubeconfig.
    #[arg(long, env = "MAST_KUBE")]
    kube: bool,

    /// The kubeconfig for `--kube` (implies it; default: in-cluster, else KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,

    /// With `--kube`: this replica's name in the leader-election Lease (default: the host
    /// name, which is the pod's name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,

    /// With `--kube`: mastd's namespace — the leader-election Lease and the CA's Secrets
    /// (`cacerts`, else `istio-ca-secret`) live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "mast-system")]
    pod_namespace: String,

    /// With `--kube`: how often the CA's Secrets are read again. When they hold a new CA (an
    /// operator plugged in `cacerts`, or replaced the root), mastd shuts down cleanly at a
    /// random moment within one more interval — so replicas don't go together — and
    /// Kubernetes starts it again with the new root.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ca_poll_interval: std::time::Duration,

    /// With `--kube`: the MutatingWebhookConfiguration whose caBundle mastd keeps equal to
    /// the root that signs the injector's certificate.
    #[arg(long, default_value = mast_kube::webhook_ca::DEFAULT_WEBHOOK_CONFIG)]
    webhook_config: String,

    /// Address of the plaintext xDS (ADS) gRPC server.
    #[arg(long, default_value = "127.0.0.1:15010", env = "MAST_XDS_ADDR")]
    xds_addr: SocketAddr,

    /// Address of the HTTP server for /metrics and /debug/*.
    #[arg(long, default_value = "127.0.0.1:15014", env = "MAST_HTTP_ADDR")]
    http_addr: SocketAddr,

    /// Quiet time after a config change before pushing (Istio's PILOT_DEBOUNCE_AFTER).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce_after: std::time::Duration,

    /// Longest a push waits for the config to settle (Istio's PILOT_DEBOUNCE_MAX).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    debounce_max: std::time::Duration,

    /// citadel's directory: the self-signed root (made on first start) or Istio's plug-in
    /// `cacerts` files, and the key of local workload credentials. Default: `mast/ca` in the
    /// user's state directory ($XDG_STATE_HOME, else ~/.local/state); with `--kube`, the
    /// cluster's Secret instead.
    #[arg(long, env = "MAST_CA_DIR", conflicts_with = "no_ca")]
    ca_dir: Option<PathBuf>,

    /// Run without citadel: no workload certificates and no mesh mTLS.
    #[arg(long)]
    no_ca: bool,

    /// Address of citadel's gRPC server (TLS), Istio's :15012.
    #[arg(long, default_value = "127.0.0.1:15012", env = "MAST_CA_ADDR")]
    ca_addr: SocketAddr,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,

    /// Workload certificate lifetime when a CSR asks for none (Istio: 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: std::time::Duration,

    /// The longest workload certificate lifetime granted (Istio: 90 days).
    #[arg(long, default_value = "2160h", value_parser = parse_duration)]
    max_workload_cert_ttl: std::time::Duration,

    /// Address of the sidecar injection webhook (HTTPS, `/inject`), Istio's :15017.
    #[arg(long, default_value = "127.0.0.1:15017", env = "MAST_INJECTOR_ADDR")]
    injector_addr: SocketAddr,

    /// Do not serve the injection webhook.
    #[arg(long)]
    no_injector: bool,

    /// The sidecar image injected pods run (mast-proxy, with mast-init).
    #[arg(long, env = "MAST_PROXY_IMAGE")]
    proxy_image: Option<String>,

    /// Inject the sidecar as a classic container instead of a native sidecar
    /// (init container with restartPolicy: Always, Kubernetes ≥ 1.29).
    #[arg(long)]
    classic_sidecar: bool,

    /// Hold the application's containers until the proxy is ready (Istio's
    /// holdApplicationUntilProxyStarts; native sidecars always do).
    #[arg(long)]
    hold_application_until_proxy_starts: bool,

    /// Address of the telemetry API and topology web view (Kiali's :20001).
    #[arg(long, default_value = "127.0.0.1:20001", env = "MAST_TELEMETRY_ADDR")]
    telemetry_addr: SocketAddr,

    /// Do not run the telemetry collector and web view.
    #[arg(long)]
    no_telemetry: bool,

    /// How often every sidecar's Istio metrics are scraped.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    scrape_interval: std::time::Duration,

    /// Read the topology graph from this Prometheus (`http://host:9090`, its HTTP API with
    /// Kiali's queries) instead of scraping every sidecar.
    #[arg(long = "prometheus", env = "MAST_PROMETHEUS_URL", value_name = "URL")]
    prometheus: Option<String>,

    /// A built web view to serve (the container image's /usr/share/mast/web). Default: the
    /// one built into mastd, when `npm ci && npm run build` ran in telemetry/web before
    /// `cargo build`; without either, the telemetry API only.
    #[arg(long, env = "MAST_WEB_DIR")]
    web_dir: Option<PathBuf>,

    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    mast_mesh_config::dialect::duration::parse_duration(s)
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_json);
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
    let config = PilotConfig {
        config_dirs: args.config_dirs.clone(),
        xds_addr: args.xds_addr,
        http_addr: args.http_addr,
        debounce: Debounce {
            quiet: args.debounce_after,
            max: args.debounce_max,
        },
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let stop_on_signal = std::sync::Arc::clone(&stop_tx);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let result = runtime.block_on(async {
        tokio::spawn(async move {
            shutdown_signal().await;
            stop_on_signal.send_replace(true);
        });
        let mut registry = prometheus_client::registry::Registry::default();
        // On Kubernetes: the client, and the leader election that decides which replica
        // writes (status, trust-bundle ConfigMaps, the webhook's caBundle). Every replica
        // serves xDS, certificates and injection.
        let cluster = if args.kube || args.kubeconfig.is_some() {
            let client = kube::connect(&kube::client_source(args.kubeconfig.clone())).await?;
            let identity = args.pod_name.clone().unwrap_or_else(kube::default_identity);
            let (end_election, election_ends) = tokio::sync::oneshot::channel::<()>();
            let (leader, election) =
                kube::elect(client.clone(), &args.pod_namespace, &identity, async move {
                    let _ = election_ends.await;
                });
            Some(Cluster {
                client,
                leader,
                end_election,
                election,
            })
        } else {
            None
        };
        let ca_opts = CaOptions {
            trust_domain: args.trust_domain.clone(),
            default_ttl: args.workload_cert_ttl,
            max_ttl: args.max_workload_cert_ttl,
        };
        // citadel: the root from --ca-dir (local credentials), or on a cluster from the
        // Secrets `cacerts`/`istio-ca-secret` with callers checked by TokenReview.
        let ca_dir = match (&args.ca_dir, &cluster) {
            _ if args.no_ca => None,
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(mast_citadel::default_ca_dir().ok_or(CitadelError::NoStateDir)?),
        };
        let authority = match (&ca_dir, &cluster) {
            _ if args.no_ca => None,
            (Some(dir), _) => Some((
                std::sync::Arc::new(
                    CertificateAuthority::load_or_create(dir, ca_opts).map_err(CitadelError::Ca)?,
                ),
                std::sync::Arc::new(TokenVerifier::load(dir).map_err(CitadelError::Ca)?)
                    as std::sync::Arc<dyn mast_citadel::Authenticator>,
                dir.display().to_string(),
            )),
            (None, Some(c)) => {
                let (authority, loaded) =
                    mast_kube::ca_secret::load_ca(c.client.clone(), &args.pod_namespace, ca_opts)
                        .await
                        .map_err(|e| StartError::Kube(kube::KubeError::Ca(e)))?;
                let root = loaded.source;
                tokio::spawn(restart_on_new_ca(
                    c.client.clone(),
                    args.pod_namespace.clone(),
                    loaded.pem,
                    args.ca_poll_interval,
                    std::sync::Arc::clone(&stop_tx),
                ));
                Some((
                    std::sync::Arc::new(authority),
                    std::sync::Arc::new(mast_kube::tokenreview::TokenReviewer::new(
                        c.client.clone(),
                    )) as std::sync::Arc<dyn mast_citadel::Authenticator>,
                    format!("secret {}/{root:?}", args.pod_namespace),
                ))
            }
            (None, None) => None,
        };
        let mut ca = None;
        let security = match authority {
            None => Security {
                mtls: false,
                trust_domain: args.trust_domain.clone(),
            },
            Some((authority, authenticator, from)) => {
                let counters = start_citadel(
                    std::sync::Arc::clone(&authority),
                    authenticator,
                    &from,
                    args.ca_addr,
                    stopped(),
                )
                .await?;
                counters.register(&mut registry);
                ca = Some(authority);
                Security {
                    mtls: true,
                    trust_domain: args.trust_domain.clone(),
                }
            }
        };
        // The trust bundle in every namespace, and the webhook's caBundle (leader only).
        if let (Some(c), Some(authority)) = (&cluster, &ca) {
            let (bundle_tx, bundle) = tokio::sync::watch::channel(authority.trust_bundle_pem());
            // The root does not change while mastd runs; the sender may go.
            drop(bundle_tx);
            tokio::spawn(mast_kube::trust_bundle::run(
                c.client.clone(),
                bundle.clone(),
                c.leader.clone(),
            ));
            if !args.no_injector {
                tokio::spawn(mast_kube::webhook_ca::run(
                    c.client.clone(),
                    args.webhook_config.clone(),
                    bundle,
                    c.leader.clone(),
                ));
            }
        }
        if !args.no_injector {
            let mut settings = InjectSettings {
                native_sidecar: !args.classic_sidecar,
                hold_application_until_proxy_starts: args.hold_application_until_proxy_starts,
                trust_domain: args.trust_domain.clone(),
                ..InjectSettings::default()
            };
            if let Some(image) = &args.proxy_image {
                settings.image = image.clone();
            }
            start_injector(args.injector_addr, ca.as_deref(), settings, stopped()).await?;
        }
        let telemetry = if args.no_telemetry {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(args.telemetry_addr)
                .await
                .map_err(|e| {
                    StartError::Telemetry(format!("cannot bind {}: {e}", args.telemetry_addr))
                })?;
            // --web-dir, else the page built into this binary, whatever the working directory.
            let web_dir = mast_telemetry::WebAssets::choose(args.web_dir.clone());
            if matches!(web_dir, mast_telemetry::WebAssets::None) {
                info!(
                    "no web view in this build (build it: cd telemetry/web && npm ci && npm run \
                     build, then cargo build mastd again, or pass --web-dir); serving the \
                     telemetry API only"
                );
            }
            let source = match &args.prometheus {
                Some(url) => {
                    let config = mast_telemetry::PrometheusConfig::new(url.clone());
                    // Checked now: a bad URL is a configuration error, not a later 502.
                    mast_telemetry::prometheus::PrometheusClient::new(
                        &config.url,
                        config.timeout,
                        config.max_response_bytes,
                    )
                    .map_err(|e| StartError::Telemetry(e.to_string()))?;
                    TelemetrySource::Prometheus(config)
                }
                None => TelemetrySource::Scrape(mast_telemetry::CollectorConfig {
                    interval: args.scrape_interval,
                    ..mast_telemetry::CollectorConfig::default()
                }),
            };
            Some((listener, web_dir, source))
        };
        let stop_for_telemetry = stopped.clone();
        let on_bound = move |bound: server::Bound, handles| {
            info!(xds = %bound.xds, http = %bound.http, "mastd ready");
            if let Some((listener, web_dir, source)) = telemetry {
                start_telemetry(listener, web_dir, source, handles, stop_for_telemetry);
            }
        };
        let generator = XdsGenerator::new(security);
        if let Some(Cluster {
            client,
            leader,
            end_election,
            election,
        }) = cluster
        {
            let gate = mast_kube::status::WriteGate::from_receiver(leader);
            let (source, first) = kube::start(client, config.debounce, gate).await?;
            let result = server::Pilot::new(config, generator)
                .registry(registry)
                .source(move |ctx| kube::PilotSource::new(source, first, ctx))
                .on_bound(on_bound)
                .run(stopped())
                .await
                .map_err(StartError::Pilot);
            // Step down and release the Lease, so a peer takes over without waiting it out.
            let _ = end_election.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), election).await;
            result
        } else {
            server::Pilot::new(config, generator)
                .registry(registry)
                .on_bound(on_bound)
                .run(stopped())
                .await
                .map_err(StartError::Pilot)
        }
    });
    match result {
        Ok(()) => {
            info!("mastd stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            if e.is_bad_config() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Pilot(server::Error),
    #[error(transparent)]
    Citadel(#[from] CitadelError),
    #[error("injector: {0}")]
    Injector(String),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
}

impl StartError {
    /// The operator's configuration is at fault (exit 64), not the machine.
    fn is_bad_config(&self) -> bool {
        matches!(
            self,
            Self::Pilot(server::Error::NoConfigDir(_) | server::Error::Bind { .. })
                | Self::Citadel(_)
                | Self::Injector(_)
                | Self::Telemetry(_)
                | Self::Kube(kube::KubeError::Client(_))
        )
    }
}

#[derive(Debug, thiserror::Error)]
enum CitadelError {
    #[error("citadel: {0}")]
    Ca(#[from] mast_citadel::CaError),
    #[error("citadel: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "citadel: no state directory for its root (neither XDG_STATE_HOME nor HOME is set): \
         pass --ca-dir DIR, or --no-ca to run without mTLS"
    )]
    NoStateDir,
}

/// mastd on a cluster: the API client and this replica's part in the leader election.
struct Cluster {
    client: mast_kube::client::Client,
    leader: tokio::sync::watch::Receiver<bool>,
    end_election: tokio::sync::oneshot::Sender<()>,
    election: tokio::task::JoinHandle<()>,
}

/// Serve Istio's CA API on `addr` over TLS until shutdown, signing with `ca` for callers
/// `authenticator` accepts (`from` says where the root came from, for the log).
async fn start_citadel(
    ca: std::sync::Arc<CertificateAuthority>,
    authenticator: std::sync::Arc<dyn mast_citadel::Authenticator>,
    from: &str,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<std::sync::Arc<mast_citadel::service::Counters>, CitadelError> {
    let tls = ServerTls::from_ca(&ca, addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CitadelError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(
        ca = %bound,
        root = %from,
        plug_in = ca.plugged_in,
        trust_domain = %ca.opts.trust_domain,
        "citadel serving (mesh mTLS on)"
    );
    let citadel = Citadel::with_authenticator(std::sync::Arc::clone(&ca), authenticator);
    let counters = std::sync::Arc::clone(&citadel.counters);
    tokio::spawn(async move {
        if let Err(e) = mast_citadel::serve(listener, citadel, tls, shutdown).await {
            error!("citadel stopped: {e}");
        }
    });
    Ok(counters)
}

/// Serve the injection webhook on `addr`: with a CA its certificate comes from citadel (so
/// the MutatingWebhookConfiguration's caBundle is the mesh root), else it is self-signed.
async fn start_injector(
    addr: SocketAddr,
    ca: Option<&CertificateAuthority>,
    settings: InjectSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let names = [
        "mastd.mast-system.svc",
        "mastd.mast-system.svc.cluster.local",
    ]
    .map(String::from);
    let tls = match ca {
        Some(ca) => {
            let ips = [addr.ip(), std::net::IpAddr::from([127, 0, 0, 1])];
            let (chain, key) = ca
                .issue_server_cert(
                    &names,
                    &ips,
                    std::time::Duration::from_secs(365 * 24 * 3600),
                )
                .map_err(|e| StartError::Injector(e.to_string()))?;
            webhook::server_tls(&chain, &key)
        }
        None => {
            let mut all = names.to_vec();
            all.extend(["localhost".to_string(), addr.ip().to_string()]);
            webhook::self_signed_tls(&all)
        }
    }
    .map_err(|e| StartError::Injector(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Injector(format!("cannot bind {addr}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(injector = %bound, image = %settings.image, native_sidecar = settings.native_sidecar, "injection webhook serving /inject");
    let settings = std::sync::Arc::new(settings);
    tokio::spawn(async move {
        if let Err(e) = webhook::serve(listener, tls, settings, shutdown).await {
            error!("injection webhook stopped: {e}");
        }
    });
    Ok(())
}

/// Where the telemetry API's figures come from.
enum TelemetrySource {
    /// mastd scrapes every sidecar (the default).
    Scrape(mast_telemetry::CollectorConfig),
    /// `--prometheus`: read from Prometheus' HTTP API.
    Prometheus(mast_telemetry::PrometheusConfig),
}

/// The collector (scraping every sidecar pilot knows), or the link to Prometheus, and the
/// API + web view on `listener`.
fn start_telemetry<F, Fut>(
    listener: tokio::net::TcpListener,
    web_dir: mast_telemetry::WebAssets,
    source: TelemetrySource,
    handles: server::Handles,
    stopped: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let view = std::sync::Arc::new(telemetry::PilotView::new(handles));
    let state = match source {
        TelemetrySource::Scrape(config) => {
            let collector = match mast_telemetry::Collector::new(view, config) {
                Ok(c) => c,
                Err(e) => {
                    error!("telemetry collector not started: {e}");
                    return;
                }
            };
            let state = collector.telemetry();
            tokio::spawn(collector.run(stopped()));
            state
        }
        TelemetrySource::Prometheus(config) => {
            match mast_telemetry::Telemetry::from_prometheus(view, config) {
                Ok(state) => {
                    info!(prometheus = ?state.prometheus_url(), "telemetry read from Prometheus");
                    state
                }
                Err(e) => {
                    error!("telemetry API not started: {e}");
                    return;
                }
            }
        }
    };
    let addr = listener.local_addr().ok();
    let router = mast_telemetry::router(state, web_dir.clone());
    let shutdown = stopped();
    tokio::spawn(async move {
        if let Err(e) = mast_telemetry::serve(listener, router, shutdown).await {
            error!("telemetry server stopped: {e}");
        }
    });
    info!(
        telemetry = ?addr,
        web = %web_dir,
        "topology view and telemetry API serving"
    );
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// On a cluster: once the CA's Secrets hold a new CA, shut down cleanly (as on SIGTERM) at a
/// random moment within `every`, so Kubernetes restarts this replica with the new root while
/// the others keep serving.
async fn restart_on_new_ca(
    client: mast_kube::client::Client,
    namespace: String,
    loaded: mast_citadel::CaPem,
    every: std::time::Duration,
    stop: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
) {
    let why = mast_kube::ca_secret::wait_for_change(client, &namespace, &loaded, every).await;
    let delay = every.mul_f64(rand::random::<f64>());
    warn!(
        "{why}: restarting in {:.1} s to load it (Kubernetes starts this replica again)",
        delay.as_secs_f64()
    );
    tokio::time::sleep(delay).await;
    stop.send_replace(true);
}

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

    #[test]
    fn kube_and_config_dir_are_exclusive_and_one_is_required() {
        let parse = |args: &[&str]| Args::try_parse_from([&["mastd"], args].concat());
        let kube = parse(&["--kube"]).unwrap();
        assert!(kube.kube && kube.config_dirs.is_empty());
        let with = parse(&["--kube", "--kubeconfig", "/k"]).unwrap();
        assert_eq!(with.kubeconfig, Some(PathBuf::from("/k")));
        assert!(parse(&["--config-dir", "x"]).is_ok_and(|a| !a.kube));
        let both = parse(&["--kube", "--config-dir", "x"]).unwrap_err();
        assert!(both.to_string().contains("cannot be used with"), "{both}");
        assert!(parse(&[]).is_err());
        assert!(parse(&["--config-dir", "x", "--kubeconfig", "/k"]).is_err());
        // --kubeconfig alone means Kubernetes mode.
        assert!(parse(&["--kubeconfig", "/k"]).is_ok_and(|a| a.config_dirs.is_empty()));
    }
}
