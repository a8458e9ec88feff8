//! The command line: mast-proxy's own flags, plus the argv of Istio's injected sidecar.
//!
//! Istio's injector starts the `istio-proxy` container as `pilot-agent proxy sidecar --domain
//! $(POD_NAMESPACE).svc.cluster.local --proxyLogLevel=warning …`, and its preStop hook runs
//! `pilot-agent request --debug-port=15020 POST drain`. Mast's injector writes exactly that pod
//! spec with mast-proxy as the binary, so the same words must work here: `proxy sidecar` runs
//! the sidecar, `request` is pilot-agent's local HTTP client. Istio's flags that mean something
//! here are honoured (`--proxyLogLevel`, `--concurrency`, `--statusPort`, `--domain`,
//! `--log_as_json`, …); the others are accepted and ignored so an Istio template never fails on
//! them, and are hidden from `--help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

/// The Mast sidecar proxy.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy, as Istio's `pilot-agent proxy sidecar`.
    ///
    /// The argv of Istio's injected `istio-proxy` container; Istio's flags (`--domain`,
    /// `--proxyLogLevel`, `--statusPort`, …) are accepted beside mast-proxy's own.
    Proxy {
        /// `sidecar`, or `router` for a gateway (Istio's ingress and egress gateways).
        #[arg(value_enum, default_value = "sidecar")]
        kind: ProxyKind,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
    /// Send an HTTP request to a local port and print the answer, as `pilot-agent request`.
    ///
    /// Exits 1 on a non-2xx answer or no connection. Istio's preStop hook runs
    /// `request --debug-port=15020 POST drain`.
    Request(RequestArgs),
    /// Set up traffic capture, as `pilot-agent istio-iptables` in Istio's `istio-init`
    /// container: runs `mast-init` (beside this binary) with the same flags.
    #[command(name = "istio-iptables", disable_help_flag = true)]
    IstioIptables {
        /// istio-iptables flags (`-p 15001 -z 15006 -u 1337 -m REDIRECT …`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Wait until the proxy is ready, as `pilot-agent wait` (the postStart hook that holds
    /// the application until the proxy starts).
    Wait(WaitArgs),
}

#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// The readiness URL polled.
    #[arg(long, default_value = "http://localhost:15021/healthz/ready")]
    pub url: String,
    /// Give up (exit 1) after this many seconds.
    #[arg(long = "timeoutSeconds", default_value_t = 60)]
    pub timeout_seconds: u64,
    /// Poll interval.
    #[arg(long = "periodMillis", default_value_t = 500)]
    pub period_millis: u64,
    /// Timeout of one poll.
    #[arg(long = "requestTimeoutMillis", default_value_t = 500)]
    pub request_timeout_millis: u64,
}

/// The proxy types of `pilot-agent proxy`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Sidecar,
    Router,
}

#[derive(Args, Debug, Clone)]
pub struct RequestArgs {
    /// The local port to send to: 15000 is the admin API (pilot-agent's default), 15020 the
    /// agent's status port.
    #[arg(long, default_value_t = 15000)]
    pub debug_port: u16,
    /// HTTP method (GET, POST, …).
    pub method: String,
    /// Path on 127.0.0.1:<debug-port>, with or without the leading `/` (`drain`, `config_dump`).
    pub path: String,
    /// Request body.
    pub body: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Run from an Envoy bootstrap or xDS resource file instead of pilot.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// pilot's ADS address (host:port); default PROXY_CONFIG's discoveryAddress.
    #[arg(long, alias = "discoveryAddress")]
    pub discovery_address: Option<String>,
    /// citadel's address (host:port); default CA_ADDR, or the discovery address on :15012.
    #[arg(long)]
    pub ca_address: Option<String>,
    /// Root certificate(s) to verify the CA with (default Istio's mounted root-cert.pem).
    #[arg(long)]
    pub ca_root_cert: Option<PathBuf>,
    /// The workload credential presented to the CA (default Istio's projected token path).
    #[arg(long)]
    pub ca_token_file: Option<PathBuf>,
    /// Serve the workload certificate over SDS on this Unix socket, as istio-agent does for
    /// an Envoy sidecar.
    #[arg(long)]
    pub sds_socket: Option<PathBuf>,
    /// Agent only: keep the certificate and serve SDS, no xDS and no traffic.
    #[arg(long, requires = "sds_socket")]
    pub agent: bool,
    /// Pod name (default POD_NAME).
    #[arg(long)]
    pub pod_name: Option<String>,
    /// Pod namespace (default POD_NAMESPACE).
    #[arg(long)]
    pub pod_namespace: Option<String>,
    /// Pod IP, also where app probes go (default INSTANCE_IP, else 127.0.0.1).
    #[arg(long)]
    pub instance_ip: Option<String>,
    /// Service account (default SERVICE_ACCOUNT).
    #[arg(long)]
    pub service_account: Option<String>,
    /// Pod labels, k=v,k=v (default: ISTIO_METAJSON_LABELS or the downward-API file).
    #[arg(long)]
    pub labels: Option<String>,
    /// REDIRECT, TPROXY or NONE (default ISTIO_META_INTERCEPTION_MODE).
    #[arg(long)]
    pub interception_mode: Option<String>,
    /// Admin API on 127.0.0.1 (default 15000).
    #[arg(long, alias = "proxyAdminPort")]
    pub admin_port: Option<u16>,
    /// Readiness (`/healthz/ready`) port, Envoy's 15021 in Istio; 0 disables.
    #[arg(long)]
    pub status_port: Option<u16>,
    /// Prometheus port (`/stats/prometheus`), 15090 in Istio; 0 disables.
    #[arg(long)]
    pub stats_port: Option<u16>,
    /// pilot-agent's status port (app probes, merged metrics, drain): default
    /// PROXY_CONFIG statusPort or 15020; 0 disables. Istio's `--statusPort`.
    #[arg(long, alias = "statusPort")]
    pub agent_port: Option<u16>,
    /// Worker threads (Envoy's --concurrency): each runs its own event loop and accepts on
    /// its own SO_REUSEPORT socket per listener; 0 = one per core [default: PROXY_CONFIG
    /// concurrency, else 2 as Istio's sidecar].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// State-of-the-world ADS only (no delta).
    #[arg(long)]
    pub sotw: bool,
    /// How long to drain on SIGTERM (default PROXY_CONFIG terminationDrainDuration, 5s).
    #[arg(long, value_parser = parse_duration)]
    pub drain: Option<Duration>,
    /// JSON access log lines on stdout.
    #[arg(long)]
    pub access_log: bool,
    /// Log level (RUST_LOG syntax) [default: info, or Istio's --proxyLogLevel].
    #[arg(long, short = 'l')]
    pub log_level: Option<String>,
    /// The DNS domain in the node id (Istio's `--domain`, default <namespace>.svc.cluster.local).
    #[arg(long)]
    pub domain: Option<String>,
    #[command(flatten)]
    pub istio: IstioFlags,
}

/// Istio's `pilot-agent proxy` flags without a `mast-proxy` spelling of their own.
#[derive(Args, Debug, Clone, Default)]
pub struct IstioFlags {
    /// Envoy's log level (trace, debug, info, warning, error, critical, off), optionally
    /// followed by `,component:level` pairs: the proxy's log level unless `--log-level` or
    /// RUST_LOG is set.
    #[arg(long = "proxyLogLevel", hide = true)]
    pub proxy_log_level: Option<String>,
    /// Envoy's per-component levels (`misc:error`): Envoy's components have no counterpart.
    #[arg(long = "proxyComponentLogLevel", hide = true)]
    pub proxy_component_log_level: Option<String>,
    /// pilot-agent's own scopes (`default:info`): one logger here, set by `--proxyLogLevel`.
    #[arg(long = "log_output_level", hide = true)]
    pub log_output_level: Option<String>,
    /// JSON log lines on stderr.
    #[arg(long = "log_as_json", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_bool)]
    pub log_as_json: Option<bool>,
    /// Accepted and ignored: Istio's flags for features mast-proxy runs differently or not at
    /// all (hot-restart drain, Envoy's binary and template, STS, outlier log, …).
    #[arg(long = "serviceCluster", hide = true)]
    pub service_cluster: Option<String>,
    #[arg(long = "drainDuration", hide = true)]
    pub drain_duration: Option<String>,
    #[arg(long = "parentShutdownDuration", hide = true)]
    pub parent_shutdown_duration: Option<String>,
    #[arg(long = "controlPlaneAuthPolicy", hide = true)]
    pub control_plane_auth_policy: Option<String>,
    #[arg(long = "configPath", hide = true)]
    pub config_path: Option<String>,
    #[arg(long = "binaryPath", hide = true)]
    pub binary_path: Option<String>,
    #[arg(long = "templateFile", hide = true)]
    pub template_file: Option<String>,
    #[arg(long = "customConfigFile", hide = true)]
    pub custom_config_file: Option<String>,
    #[arg(long = "outlierLogPath", hide = true)]
    pub outlier_log_path: Option<String>,
    #[arg(long = "stsPort", hide = true)]
    pub sts_port: Option<String>,
    #[arg(long = "tokenManagerPlugin", hide = true)]
    pub token_manager_plugin: Option<String>,
    #[arg(long = "meshConfig", hide = true)]
    pub mesh_config: Option<String>,
    #[arg(long = "dnsRefreshRate", hide = true)]
    pub dns_refresh_rate: Option<String>,
    #[arg(long = "connectTimeout", hide = true)]
    pub connect_timeout: Option<String>,
    #[arg(long = "zipkinAddress", hide = true)]
    pub zipkin_address: Option<String>,
    #[arg(long = "trust-domain", hide = true)]
    pub trust_domain: Option<String>,
    #[arg(long = "mixerIdentity", hide = true)]
    pub mixer_identity: Option<String>,
    #[arg(long = "log_target", hide = true)]
    pub log_target: Option<String>,
    #[arg(long = "log_caller", hide = true)]
    pub log_caller: Option<String>,
    #[arg(long = "log_stacktrace_level", hide = true)]
    pub log_stacktrace_level: Option<String>,
    #[arg(long = "log_rotate", hide = true)]
    pub log_rotate: Option<String>,
    #[arg(long = "log_rotate_max_age", hide = true)]
    pub log_rotate_max_age: Option<String>,
    #[arg(long = "log_rotate_max_backups", hide = true)]
    pub log_rotate_max_backups: Option<String>,
    #[arg(long = "log_rotate_max_size", hide = true)]
    pub log_rotate_max_size: Option<String>,
    #[arg(long = "vklog", hide = true)]
    pub vklog: Option<String>,
    #[arg(long = "controlPlaneBootstrap", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_bool)]
    pub control_plane_bootstrap: Option<bool>,
    #[arg(long = "disableInternalTelemetry", hide = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub disable_internal_telemetry: Option<bool>,
}

/// A flag that cannot be honoured.
#[derive(Debug, thiserror::Error)]
#[error("{flag}={value:?}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

impl RunArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            pod_name: self.pod_name.clone(),
            pod_namespace: self.pod_namespace.clone(),
            instance_ip: self.instance_ip.clone(),
            service_account: self.service_account.clone(),
            discovery_address: self.discovery_address.clone(),
            ca_address: self.ca_address.clone(),
            ca_root_cert: self.ca_root_cert.clone(),
            ca_token_file: self.ca_token_file.clone(),
            sds_socket: self.sds_socket.clone(),
            agent: self.agent,
            labels: self.labels.clone(),
            interception_mode: self.interception_mode.clone(),
            static_config: self.config.clone(),
            admin_port: self.admin_port,
            status_port: self.status_port,
            stats_port: self.stats_port,
            agent_port: self.agent_port,
            concurrency: self.concurrency,
            sotw: self.sotw,
            drain: self.drain,
            domain: self.domain.clone(),
            node_type: crate::config::NodeType::Sidecar,
        }
    }

    /// The log filter: RUST_LOG (`rust_log`), else `--log-level`, else Istio's
    /// `--proxyLogLevel` in tracing's words, else `info`.
    pub fn log_filter(&self, rust_log: Option<String>) -> Result<String, FlagError> {
        if let Some(f) = rust_log.or_else(|| self.log_level.clone()) {
            return Ok(f);
        }
        match &self.istio.proxy_log_level {
            Some(level) => envoy_log_level(level)
                .map(str::to_string)
                .map_err(|reason| FlagError {
                    flag: "--proxyLogLevel",
                    value: level.clone(),
                    reason,
                }),
            None => Ok("info".into()),
        }
    }

    pub fn log_as_json(&self) -> bool {
        self.istio.log_as_json.unwrap_or(false)
    }
}

/// Envoy's log level (`--proxyLogLevel`, `-l`) as a tracing filter level. Envoy's level may be
/// followed by `,component:level` pairs (`info,misc:error`); those name Envoy's components
/// and are ignored.
pub fn envoy_log_level(text: &str) -> Result<&'static str, String> {
    let level = text
        .split(',')
        .map(str::trim)
        .find(|part| !part.contains(':'))
        .unwrap_or("info");
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => {
            return Err(
                "not an Envoy log level (trace, debug, info, warning, error, critical, off)".into(),
            );
        }
    })
}

/// Go's duration syntax (`5s`, `1m30s`, `250ms`), as Istio's agent takes its flags.
fn parse_duration(s: &str) -> Result<Duration, String> {
    mast_proto::parse_go_duration(s).map_err(|e| e.to_string())
}

/// Go's `strconv.ParseBool`, as Istio's boolean flags take it.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("mast-proxy").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn istio_injected_sidecar_argv() {
        let cli = parse(&[
            "proxy",
            "sidecar",
            "--domain",
            "shop.svc.cluster.local",
            "--proxyLogLevel=warning",
            "--proxyComponentLogLevel=misc:error",
            "--log_output_level=default:info",
            "--concurrency",
            "2",
        ]);
        let Some(Command::Proxy { kind, run }) = cli.command else {
            panic!("not the proxy command: {:?}", cli.command);
        };
        assert_eq!(kind, ProxyKind::Sidecar);
        assert_eq!(run.domain.as_deref(), Some("shop.svc.cluster.local"));
        assert_eq!(run.concurrency, Some(2));
        assert_eq!(run.log_filter(None).unwrap(), "warn");
        assert_eq!(
            run.istio.proxy_component_log_level.as_deref(),
            Some("misc:error")
        );
        assert_eq!(
            run.overrides().domain.as_deref(),
            Some("shop.svc.cluster.local")
        );
    }

    #[test]
    fn older_istio_templates_and_their_flags() {
        let cli = parse(&[
            "proxy",
            "sidecar",
            "--domain",
            "default.svc.cluster.local",
            "--configPath",
            "/etc/istio/proxy",
            "--binaryPath",
            "/usr/local/bin/envoy",
            "--serviceCluster",
            "reviews.default",
            "--drainDuration",
            "45s",
            "--parentShutdownDuration",
            "1m0s",
            "--discoveryAddress",
            "istiod.istio-system.svc:15012",
            "--proxyLogLevel",
            "critical",
            "--controlPlaneAuthPolicy",
            "NONE",
            "--statusPort",
            "15020",
            "--proxyAdminPort",
            "15000",
            "--trust-domain=cluster.local",
            "--stsPort=15463",
            "--log_as_json",
            "--controlPlaneBootstrap=false",
        ]);
        let Some(Command::Proxy { run, .. }) = cli.command else {
            panic!("not the proxy command");
        };
        let o = run.overrides();
        assert_eq!(o.agent_port, Some(15020));
        assert_eq!(o.admin_port, Some(15000));
        assert_eq!(
            o.discovery_address.as_deref(),
            Some("istiod.istio-system.svc:15012")
        );
        assert_eq!(run.log_filter(None).unwrap(), "error");
        assert!(run.log_as_json());
        assert_eq!(run.istio.control_plane_bootstrap, Some(false));
    }

    #[test]
    fn proxy_kind_defaults_to_sidecar_and_router_parses() {
        let cli = parse(&["proxy", "--concurrency", "1"]);
        assert!(matches!(
            cli.command,
            Some(Command::Proxy {
                kind: ProxyKind::Sidecar,
                ..
            })
        ));
        let cli = parse(&["proxy", "router"]);
        assert!(matches!(
            cli.command,
            Some(Command::Proxy {
                kind: ProxyKind::Router,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["mast-proxy", "proxy", "waypoint"]).is_err());
    }

    #[test]
    fn istio_gateway_argv_with_flags_after_the_type() {
        let cli = parse(&[
            "proxy",
            "router",
            "--labels",
            "istio=ingressgateway,app=istio-ingressgateway",
            "--admin-port",
            "15000",
            "--stats-port",
            "15090",
            "--status-port",
            "15021",
            "--agent-port",
            "0",
            "--concurrency",
            "1",
            "--sotw",
            "--domain",
            "istio-system.svc.cluster.local",
            "--proxyLogLevel=warning",
        ]);
        let Some(Command::Proxy { kind, run }) = cli.command else {
            panic!("not the proxy command: {:?}", cli.command);
        };
        assert_eq!(kind, ProxyKind::Router);
        let o = run.overrides();
        assert!(o.sotw);
        assert_eq!(o.agent_port, Some(0));
        assert_eq!(
            o.labels.as_deref(),
            Some("istio=ingressgateway,app=istio-ingressgateway")
        );
    }

    #[test]
    fn own_flags_keep_working_without_a_subcommand() {
        let cli = parse(&[
            "--config",
            "boot.yaml",
            "--stats-port",
            "0",
            "--status-port",
            "0",
            "--agent-port",
            "0",
            "--drain",
            "3s",
            "--concurrency",
            "1",
            "-l",
            "debug",
            "--access-log",
        ]);
        assert!(cli.command.is_none());
        let o = cli.run.overrides();
        assert_eq!(o.static_config, Some(PathBuf::from("boot.yaml")));
        assert_eq!(o.agent_port, Some(0));
        assert_eq!(o.drain, Some(Duration::from_secs(3)));
        assert!(cli.run.access_log);
        assert_eq!(cli.run.log_filter(None).unwrap(), "debug");
    }

    #[test]
    fn request_subcommand_as_pilot_agent() {
        let cli = parse(&["request", "--debug-port=15020", "POST", "drain"]);
        let Some(Command::Request(r)) = cli.command else {
            panic!("not the request command");
        };
        assert_eq!(
            (r.debug_port, r.method.as_str(), r.path.as_str(), r.body),
            (15020, "POST", "drain", None)
        );
        let cli = parse(&["request", "GET", "config_dump", "{}"]);
        let Some(Command::Request(r)) = cli.command else {
            panic!("not the request command");
        };
        assert_eq!((r.debug_port, r.body.as_deref()), (15000, Some("{}")));
        assert!(Cli::try_parse_from(["mast-proxy", "request", "POST"]).is_err());
    }

    #[test]
    fn log_level_precedence_and_envoy_levels() {
        let mut run = RunArgs::default();
        assert_eq!(run.log_filter(None).unwrap(), "info");
        run.istio.proxy_log_level = Some("info,misc:error".into());
        assert_eq!(run.log_filter(None).unwrap(), "info");
        run.istio.proxy_log_level = Some("verbose".into());
        let err = run.log_filter(None).unwrap_err().to_string();
        assert!(err.contains("--proxyLogLevel"), "{err}");
        run.log_level = Some("debug".into());
        assert_eq!(run.log_filter(None).unwrap(), "debug");
        assert_eq!(run.log_filter(Some("trace".into())).unwrap(), "trace");
        for (envoy, ours) in [
            ("trace", "trace"),
            ("debug", "debug"),
            ("warning", "warn"),
            ("error", "error"),
            ("critical", "error"),
            ("off", "off"),
        ] {
            assert_eq!(envoy_log_level(envoy).unwrap(), ours);
        }
    }

    #[test]
    fn help_hides_istio_only_flags() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--agent-port"), "{help}");
        assert!(help.contains("--config"), "{help}");
        assert!(!help.contains("proxyComponentLogLevel"), "{help}");
        assert!(!help.contains("binaryPath"), "{help}");
    }

    #[test]
    fn istio_init_and_hold_commands() {
        let cli = parse(&[
            "istio-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--log_output_level=default:info",
        ]);
        let Some(Command::IstioIptables { args }) = cli.command else {
            panic!("not istio-iptables: {cli:?}");
        };
        assert_eq!(args[0], "-p");
        assert_eq!(args.len(), 17);
        let cli = parse(&["wait"]);
        let Some(Command::Wait(w)) = cli.command else {
            panic!("not wait");
        };
        assert_eq!(w.url, "http://localhost:15021/healthz/ready");
        assert_eq!(w.timeout_seconds, 60);
    }
}
