//! mastd's configuration: every flag, its environment variable and its default, parsed once
//! at start into one typed [`Config`].
//!
//! The flags keep istiod's vocabulary where one exists (debounce, certificate lifetimes,
//! ports), and each `MAST_*` variable exists so a Kubernetes manifest can configure the
//! container without rewriting its command line. The pieces the library crates take
//! ([`PilotConfig`], [`CaOptions`], the injector's [`Settings`]) are derived here, so `app`
//! only wires and the mapping from flags to settings has one home.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mast_citadel::CaOptions;
use mast_injector::inject::Settings;
use mast_pilot::server::PilotConfig;
use mast_pilot::source::Debounce;

/// `--config-dir` (comma-separated).
pub const CONFIG_DIR: &str = "MAST_CONFIG_DIR";
/// `--kube`.
pub const KUBE: &str = "MAST_KUBE";
/// `--pod-name`, from the downward API.
pub const POD_NAME: &str = "POD_NAME";
/// `--pod-namespace`, from the downward API.
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// `--xds-addr`.
pub const XDS_ADDR: &str = "MAST_XDS_ADDR";
/// `--http-addr`.
pub const HTTP_ADDR: &str = "MAST_HTTP_ADDR";
/// `--ca-dir`.
pub const CA_DIR: &str = "MAST_CA_DIR";
/// `--ca-addr`.
pub const CA_ADDR: &str = "MAST_CA_ADDR";
/// `--injector-addr`.
pub const INJECTOR_ADDR: &str = "MAST_INJECTOR_ADDR";
/// `--proxy-image`.
pub const PROXY_IMAGE: &str = "MAST_PROXY_IMAGE";
/// `--telemetry-addr`.
pub const TELEMETRY_ADDR: &str = "MAST_TELEMETRY_ADDR";
/// `--prometheus`.
pub const PROMETHEUS_URL: &str = "MAST_PROMETHEUS_URL";
/// `--web-dir`.
pub const WEB_DIR: &str = "MAST_WEB_DIR";
/// `--otlp-grpc-addr`.
pub const OTLP_GRPC_ADDR: &str = "MAST_OTLP_GRPC_ADDR";
/// `--otlp-http-addr`.
pub const OTLP_HTTP_ADDR: &str = "MAST_OTLP_HTTP_ADDR";
/// `--zipkin-addr`.
pub const ZIPKIN_ADDR: &str = "MAST_ZIPKIN_ADDR";
/// Proxies whose push of a config change is traced.
pub const PUSH_TRACES: &str = "MAST_PUSH_TRACES_PER_CHANGE";

/// Everything mastd is told at start: its command line, each flag falling back to its
/// environment variable (the constants above), then to its default.
#[derive(Debug, Parser)]
#[command(name = "mastd", version, about = "The Mast control plane (pilot)")]
pub struct Config {
    /// Directory of mesh configuration YAML/JSON, watched for changes (repeatable). Either
    /// this or `--kube`.
    #[arg(
        long = "config-dir",
        required_unless_present_any = ["kube", "kubeconfig"],
        conflicts_with_all = ["kube", "kubeconfig"],
        env = CONFIG_DIR,
        value_delimiter = ','
    )]
    pub config_dirs: Vec<PathBuf>,

    /// Read the mesh configuration from the Kubernetes API (Services, Pods, Namespaces and
    /// the mesh CRDs) instead of a folder: in-cluster in a pod, else the kubeconfig.
    #[arg(long, env = KUBE)]
    pub kube: bool,

    /// The kubeconfig for `--kube` (implies it; default: in-cluster, else KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// With `--kube`: this replica's name in the leader-election Lease (default: the host
    /// name, which is the pod's name).
    #[arg(long, env = POD_NAME)]
    pub pod_name: Option<String>,

    /// With `--kube`: mastd's namespace — the leader-election Lease and the CA's Secrets
    /// (`cacerts`, else `istio-ca-secret`) live there.
    #[arg(long, env = POD_NAMESPACE, default_value = "mast-system")]
    pub pod_namespace: String,

    /// With `--kube`: how often the CA's Secrets are read again. When they hold a new CA (an
    /// operator plugged in `cacerts`, or replaced the root), mastd shuts down cleanly at a
    /// random moment within one more interval — so replicas don't go together — and
    /// Kubernetes starts it again with the new root.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ca_poll_interval: Duration,

    /// With `--kube`: the MutatingWebhookConfiguration whose caBundle mastd keeps equal to
    /// the root that signs the injector's certificate.
    #[arg(long, default_value = mast_kube::webhook_ca::DEFAULT_WEBHOOK_CONFIG)]
    pub webhook_config: String,

    /// Address of the plaintext xDS (ADS) gRPC server.
    #[arg(long, default_value = "127.0.0.1:15010", env = XDS_ADDR)]
    pub xds_addr: SocketAddr,

    /// Address of the HTTP server for /metrics and /debug/*.
    #[arg(long, default_value = "127.0.0.1:15014", env = HTTP_ADDR)]
    pub http_addr: SocketAddr,

    /// Quiet time after a config change before pushing (Istio's PILOT_DEBOUNCE_AFTER).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub debounce_after: Duration,

    /// Longest a push waits for the config to settle (Istio's PILOT_DEBOUNCE_MAX).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub debounce_max: Duration,

    /// Pushes in flight at once: a push holds a slot from generating a proxy's config until
    /// its last byte is sent (Istio's PILOT_PUSH_THROTTLE).
    #[arg(long, default_value_t = mast_pilot::ads::server::DEFAULT_PUSH_THROTTLE, env = "PILOT_PUSH_THROTTLE")]
    pub push_throttle: usize,

    /// citadel's directory: the self-signed root (made on first start) or Istio's plug-in
    /// `cacerts` files, and the key of local workload credentials. Default: `mast/ca` in the
    /// user's state directory ($XDG_STATE_HOME, else ~/.local/state); with `--kube`, the
    /// cluster's Secret instead.
    #[arg(long, env = CA_DIR, conflicts_with = "no_ca")]
    pub ca_dir: Option<PathBuf>,

    /// Run without citadel: no workload certificates and no mesh mTLS.
    #[arg(long)]
    pub no_ca: bool,

    /// Address of citadel's gRPC server (TLS), Istio's :15012.
    #[arg(long, default_value = "127.0.0.1:15012", env = CA_ADDR)]
    pub ca_addr: SocketAddr,

    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,

    /// Workload certificate lifetime when a CSR asks for none (Istio: 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub workload_cert_ttl: Duration,

    /// The longest workload certificate lifetime granted (Istio: 90 days).
    #[arg(long, default_value = "2160h", value_parser = parse_duration)]
    pub max_workload_cert_ttl: Duration,

    /// Address of the sidecar injection webhook (HTTPS, `/inject`), Istio's :15017.
    #[arg(long, default_value = "127.0.0.1:15017", env = INJECTOR_ADDR)]
    pub injector_addr: SocketAddr,

    /// Do not serve the injection webhook.
    #[arg(long)]
    pub no_injector: bool,

    /// The sidecar image injected pods run (mast-proxy, with mast-init).
    #[arg(long, env = PROXY_IMAGE)]
    pub proxy_image: Option<String>,

    /// Inject the sidecar as a classic container instead of a native sidecar
    /// (init container with restartPolicy: Always, Kubernetes ≥ 1.29).
    #[arg(long)]
    pub classic_sidecar: bool,

    /// Hold the application's containers until the proxy is ready (Istio's
    /// holdApplicationUntilProxyStarts; native sidecars always do).
    #[arg(long)]
    pub hold_application_until_proxy_starts: bool,

    /// Address of the telemetry API and topology web view (Kiali's :20001).
    #[arg(long, default_value = "127.0.0.1:20001", env = TELEMETRY_ADDR)]
    pub telemetry_addr: SocketAddr,

    /// Do not run the telemetry collector and web view.
    #[arg(long)]
    pub no_telemetry: bool,

    /// How often every sidecar's Istio metrics are scraped.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub scrape_interval: Duration,

    /// Read the topology graph from this Prometheus (`http://host:9090`, its HTTP API with
    /// Kiali's queries) instead of scraping every sidecar.
    #[arg(long = "prometheus", env = PROMETHEUS_URL, value_name = "URL")]
    pub prometheus: Option<String>,

    /// A built web view to serve (the container image's /usr/share/mast/web). Default: the
    /// one built into mastd, when `npm ci && npm run build` ran in telemetry/web before
    /// `cargo build`; without either, the telemetry API only.
    #[arg(long, env = WEB_DIR)]
    pub web_dir: Option<PathBuf>,

    /// Address of the OTLP gRPC trace receiver (`TraceService/Export`). Default
    /// 127.0.0.1:4317; when that default is taken the receiver is off (a warning), when an
    /// address given here is taken mastd exits 64.
    #[arg(long, env = OTLP_GRPC_ADDR, value_name = "ADDR")]
    pub otlp_grpc_addr: Option<SocketAddr>,

    /// Address of the OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf or JSON; also
    /// Zipkin v2 JSON at `/api/v2/spans`). Default 127.0.0.1:4318, as for --otlp-grpc-addr.
    #[arg(long, env = OTLP_HTTP_ADDR, value_name = "ADDR")]
    pub otlp_http_addr: Option<SocketAddr>,

    /// Also take Zipkin v2 JSON (`POST /api/v2/spans`) on this address, such as :9411, the
    /// port Istio's `zipkin` provider sends to. Off by default (the OTLP/HTTP port takes it).
    #[arg(long, env = ZIPKIN_ADDR, value_name = "ADDR")]
    pub zipkin_addr: Option<SocketAddr>,

    /// Receive no spans (mastd's own spans are still kept and shown).
    #[arg(long)]
    pub no_trace_receiver: bool,

    /// Spans the trace store keeps at most (about 64 MiB at the default; the oldest trace
    /// goes first).
    #[arg(long, default_value_t = 100_000)]
    pub trace_max_spans: usize,

    /// How long the trace store keeps a trace.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub trace_max_age: Duration,

    /// Proxies whose push of a config change is traced (an `xds.push` span each, with its
    /// responses and ACK/NACK as events, in the change's trace); 0 traces no push.
    #[arg(long, default_value_t = mast_pilot::ads::DEFAULT_PUSH_TRACES, env = PUSH_TRACES)]
    pub push_traces_per_change: usize,

    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

// === impl Config ===

impl Config {
    /// Whether pilot reads the mesh from Kubernetes (`--kube`, or implied by `--kubeconfig`).
    pub fn kube_mode(&self) -> bool {
        self.kube || self.kubeconfig.is_some()
    }

    /// pilot's part: where the mesh comes from, where it serves, how it debounces.
    pub fn pilot(&self) -> PilotConfig {
        PilotConfig {
            config_dirs: self.config_dirs.clone(),
            xds_addr: self.xds_addr,
            http_addr: self.http_addr,
            debounce: Debounce {
                quiet: self.debounce_after,
                max: self.debounce_max,
            },
            push_throttle: self.push_throttle,
        }
    }

    /// citadel's signing policy.
    pub fn ca_options(&self) -> CaOptions {
        CaOptions {
            trust_domain: self.trust_domain.clone(),
            default_ttl: self.workload_cert_ttl,
            max_ttl: self.max_workload_cert_ttl,
        }
    }

    /// What the injection webhook puts into a pod.
    pub fn inject_settings(&self) -> Settings {
        let mut settings = Settings {
            native_sidecar: !self.classic_sidecar,
            hold_application_until_proxy_starts: self.hold_application_until_proxy_starts,
            trust_domain: self.trust_domain.clone(),
            ..Settings::default()
        };
        if let Some(image) = &self.proxy_image {
            settings.image = image.clone();
        }
        settings
    }
}

/// Durations as Istio writes them (`100ms`, `30s`, `24h`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    mast_mesh_config::dialect::duration::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from([&["mastd"], args].concat())
    }

    #[test]
    fn kube_and_config_dir_are_exclusive_and_one_is_required() {
        let kube = parse(&["--kube"]).unwrap();
        assert!(kube.kube && kube.config_dirs.is_empty() && kube.kube_mode());
        let with = parse(&["--kube", "--kubeconfig", "/k"]).unwrap();
        assert_eq!(with.kubeconfig, Some(PathBuf::from("/k")));
        assert!(parse(&["--config-dir", "x"]).is_ok_and(|a| !a.kube && !a.kube_mode()));
        let both = parse(&["--kube", "--config-dir", "x"]).unwrap_err();
        assert!(both.to_string().contains("cannot be used with"), "{both}");
        assert!(parse(&[]).is_err());
        assert!(parse(&["--config-dir", "x", "--kubeconfig", "/k"]).is_err());
        // --kubeconfig alone means Kubernetes mode.
        let implied = parse(&["--kubeconfig", "/k"]).unwrap();
        assert!(implied.config_dirs.is_empty() && implied.kube_mode());
    }

    #[test]
    fn defaults_are_istiods() {
        let c = parse(&["--config-dir", "a,b"]).unwrap();
        assert_eq!(c.config_dirs, [PathBuf::from("a"), PathBuf::from("b")]);
        let pilot = c.pilot();
        assert_eq!(pilot.xds_addr.port(), 15010);
        assert_eq!(pilot.http_addr.port(), 15014);
        assert_eq!(pilot.debounce.quiet, Duration::from_millis(100));
        assert_eq!(pilot.debounce.max, Duration::from_secs(10));
        assert_eq!(c.ca_addr.port(), 15012);
        assert_eq!(c.injector_addr.port(), 15017);
        assert_eq!(c.telemetry_addr.port(), 20001);
        let ca = c.ca_options();
        assert_eq!(ca.trust_domain, "cluster.local");
        assert_eq!(ca.default_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(ca.max_ttl, Duration::from_secs(90 * 24 * 3600));
        assert!(c.inject_settings().native_sidecar);
        assert_eq!(c.pod_namespace, "mast-system");
    }

    #[test]
    fn injector_flags_reach_the_settings() {
        let c = parse(&[
            "--config-dir",
            "x",
            "--classic-sidecar",
            "--hold-application-until-proxy-starts",
            "--proxy-image",
            "example/proxy:1",
            "--trust-domain",
            "example.org",
        ])
        .unwrap();
        let s = c.inject_settings();
        assert!(!s.native_sidecar && s.hold_application_until_proxy_starts);
        assert_eq!(s.image, "example/proxy:1");
        assert_eq!(s.trust_domain, "example.org");
    }

    #[test]
    fn a_bad_duration_names_the_flag() {
        let err = parse(&["--config-dir", "x", "--debounce-after", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--debounce-after"), "{err}");
    }
}
