//! The proxy's configuration: Istio's sidecar environment, read once at start.
//!
//! An injected pod hands the sidecar its identity through the downward API (`POD_NAME`,
//! `POD_NAMESPACE`, `INSTANCE_IP`, `SERVICE_ACCOUNT`), node metadata as `ISTIO_META_*` (strings)
//! and `ISTIO_METAJSON_*` (JSON) variables, and mesh settings in `PROXY_CONFIG` (JSON). The same
//! names keep mast-proxy a drop-in for Istio's injection templates. The same holds for what the
//! injector hands pilot-agent: the rewritten app probes (`ISTIO_KUBE_APP_PROBERS`) and the
//! app's scrape settings (`ISTIO_PROMETHEUS_ANNOTATIONS`), checked here so a bad one stops the
//! sidecar at start. The environment is read through [`Env`] so tests pass a map instead of
//! mutating the process environment.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mast_proto::DurationError;
use serde_json::Value;

use crate::agent::merge::{self, AppMetrics};
use crate::agent::probe::{self, AppProbe};

// The one environment abstraction every Mast binary shares; re-exported so the proxy's
// callers keep naming it `config::Env`.
pub use mast_env::{Env, ProcessEnv};

pub const POD_NAME: &str = "POD_NAME";
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const INSTANCE_IP: &str = "INSTANCE_IP";
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
pub const PROXY_CONFIG: &str = "PROXY_CONFIG";
pub const CA_ADDR: &str = "CA_ADDR";
pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
/// Requested workload certificate lifetime (Istio's agent variable).
pub const SECRET_TTL: &str = "SECRET_TTL";
/// Istio's mount of the mesh root certificate (ConfigMap `istio-ca-root-cert`).
pub const DEFAULT_ROOT_CERT: &str = "./var/run/secrets/istio/root-cert.pem";
/// Istio's mount of the projected service-account token (audience `istio-ca`).
pub const DEFAULT_TOKEN_FILE: &str = "./var/run/secrets/tokens/istio-token";
pub const META_PREFIX: &str = "ISTIO_META_";
pub const META_JSON_PREFIX: &str = "ISTIO_METAJSON_";
/// Istio's downward-API file with the pod's labels (`key="value"` lines).
pub const POD_LABELS_FILE: &str = "/etc/istio/pod/labels";

/// pilot-agent's: end the drain as soon as no downstream connection is left (after
/// [`MINIMUM_DRAIN_DURATION`]) rather than at the end of `terminationDrainDuration`.
pub const EXIT_ON_ZERO_ACTIVE_CONNECTIONS: &str = "EXIT_ON_ZERO_ACTIVE_CONNECTIONS";
/// pilot-agent's: how long the drain lasts at least with [`EXIT_ON_ZERO_ACTIVE_CONNECTIONS`].
pub const MINIMUM_DRAIN_DURATION: &str = "MINIMUM_DRAIN_DURATION";

const DEFAULT_DISCOVERY: &str = "istiod.istio-system.svc:15012";
const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
const DEFAULT_MINIMUM_DRAIN: Duration = Duration::from_secs(5);

/// A bad setting: the variable (or flag), the value and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    fn new(name: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Overrides from the command line; `None` means "from the environment".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub instance_ip: Option<String>,
    pub service_account: Option<String>,
    pub discovery_address: Option<String>,
    pub ca_address: Option<String>,
    pub ca_root_cert: Option<PathBuf>,
    pub ca_token_file: Option<PathBuf>,
    pub sds_socket: Option<PathBuf>,
    pub agent: bool,
    pub labels: Option<String>,
    pub interception_mode: Option<String>,
    pub static_config: Option<PathBuf>,
    pub admin_port: Option<u16>,
    pub status_port: Option<u16>,
    pub stats_port: Option<u16>,
    /// pilot-agent's status port (Istio's `--statusPort`).
    pub agent_port: Option<u16>,
    pub concurrency: Option<usize>,
    pub sotw: bool,
    pub drain: Option<Duration>,
    /// The DNS domain in the node id (Istio's `--domain`).
    pub domain: Option<String>,
    /// `proxy router` (a gateway) rather than `proxy sidecar`.
    pub node_type: NodeType,
}

/// What pilot is asked to configure: the first field of the node id, as Istio's
/// `pilot-agent proxy <type>` writes it. A `router` (an ingress or egress gateway) gets the
/// listeners of the Gateways that select it instead of a sidecar's inbound and outbound.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    #[default]
    Sidecar,
    Router,
}

impl NodeType {
    /// The node id's first field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sidecar => "sidecar",
            Self::Router => "router",
        }
    }
}

/// Everything the proxy needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub pod_name: String,
    pub pod_namespace: String,
    pub instance_ip: IpAddr,
    pub service_account: String,
    /// pilot's address (`host:port`); `None` in `--config FILE` mode.
    pub discovery_address: Option<String>,
    /// citadel (`host:port`); `None`: no workload certificate, so no mTLS.
    pub ca_address: Option<String>,
    pub ca_root_cert: PathBuf,
    pub ca_token_file: PathBuf,
    pub trust_domain: String,
    pub secret_ttl: Option<Duration>,
    /// Serve SDS here (istio-agent's role for an Envoy sidecar).
    pub sds_socket: Option<PathBuf>,
    /// Agent only: no xDS, no listeners.
    pub agent: bool,
    /// Node metadata sent to pilot (`NAMESPACE`, `LABELS`, `INTERCEPTION_MODE`, …).
    pub metadata: BTreeMap<String, Value>,
    pub labels: BTreeMap<String, String>,
    pub static_config: Option<PathBuf>,
    pub admin_addr: SocketAddr,
    pub status_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    /// pilot-agent's status server (Istio's 15020): app probes, merged metrics, drain.
    /// Port 0: not served.
    pub agent_addr: SocketAddr,
    /// The agent port was asked for (flag, `MAST_AGENT_PORT`, `PROXY_CONFIG.statusPort`), so
    /// failing to bind it is fatal; Istio's default 15020 is served when it can be bound,
    /// so that several proxies on one host (tests, benchmarks) do not stop each other.
    pub agent_addr_required: bool,
    /// `ISTIO_KUBE_APP_PROBERS`: the app's probes by the agent path kubelet now asks.
    pub app_probers: BTreeMap<String, AppProbe>,
    /// `ISTIO_PROMETHEUS_ANNOTATIONS`: the app's metrics, merged into the agent's.
    pub app_metrics: Option<AppMetrics>,
    /// The node id's DNS domain, `<namespace>.svc.cluster.local` unless `--domain` says.
    pub dns_domain: String,
    pub concurrency: usize,
    /// Use state-of-the-world ADS rather than trying delta first.
    pub sotw_only: bool,
    pub termination_drain: Duration,
    /// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`: the drain may end once no connection is left.
    pub exit_on_zero_active_connections: bool,
    /// `MINIMUM_DRAIN_DURATION`: with the above, the drain lasts at least this long.
    pub minimum_drain: Duration,
    /// Sidecar or gateway (`router`).
    pub node_type: NodeType,
}

impl Config {
    /// Node id as Istio's agent writes it: `<type>~<ip>~<pod>.<ns>~<domain>`.
    pub fn node_id(&self) -> String {
        format!(
            "{}~{}~{}.{}~{}",
            self.node_type.as_str(),
            self.instance_ip,
            self.pod_name,
            self.pod_namespace,
            self.dns_domain
        )
    }

    /// This workload's SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.pod_namespace, self.service_account
        )
    }

    pub fn cluster_id(&self) -> String {
        self.metadata
            .get("CLUSTER_ID")
            .and_then(Value::as_str)
            .unwrap_or("Kubernetes")
            .to_string()
    }

    /// The workload name: metadata `WORKLOAD_NAME`, else the pod name without its
    /// ReplicaSet and pod hashes (as Istio guesses it).
    pub fn workload_name(&self) -> String {
        if let Some(w) = self.metadata.get("WORKLOAD_NAME").and_then(Value::as_str) {
            return w.to_string();
        }
        let parts: Vec<&str> = self.pod_name.split('-').collect();
        if parts.len() > 2 {
            parts[..parts.len() - 2].join("-")
        } else {
            self.pod_name.clone()
        }
    }

    pub fn from_env(env: &dyn Env, o: &Overrides) -> Result<Self, ConfigError> {
        let get = |name: &str, flag: &Option<String>| flag.clone().or_else(|| env.var(name));
        let pod_name = get(POD_NAME, &o.pod_name)
            .or_else(|| env.var("HOSTNAME"))
            .unwrap_or_else(|| "mast-proxy".into());
        let pod_namespace =
            get(POD_NAMESPACE, &o.pod_namespace).unwrap_or_else(|| "default".into());
        if !is_dns_label(&pod_namespace) {
            return Err(ConfigError::new(
                POD_NAMESPACE,
                &pod_namespace,
                "not a Kubernetes namespace name (RFC 1123 label)",
            ));
        }
        let ip_text = get(INSTANCE_IP, &o.instance_ip).unwrap_or_else(|| "127.0.0.1".into());
        let instance_ip: IpAddr = ip_text
            .parse()
            .map_err(|_| ConfigError::new(INSTANCE_IP, &ip_text, "not an IP address"))?;
        let service_account =
            get(SERVICE_ACCOUNT, &o.service_account).unwrap_or_else(|| "default".into());

        let proxy_config = match env.var(PROXY_CONFIG) {
            None => Value::Object(Default::default()),
            Some(text) if text.trim().is_empty() => Value::Object(Default::default()),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| ConfigError::new(PROXY_CONFIG, &text, format!("not JSON: {e}")))?,
        };
        let discovery_address = match &o.discovery_address {
            Some(a) => Some(a.clone()),
            None => proxy_config
                .get("discoveryAddress")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        if let Some(addr) = &discovery_address {
            check_host_port(addr).map_err(|reason| {
                ConfigError::new("PROXY_CONFIG.discoveryAddress", addr, reason)
            })?;
        }
        let discovery_address = match (&o.static_config, discovery_address) {
            (Some(_), _) => None,
            (None, _) if o.agent => None,
            (None, addr) => Some(addr.unwrap_or_else(|| DEFAULT_DISCOVERY.into())),
        };
        let termination_drain = match (o.drain, proxy_config.get("terminationDrainDuration")) {
            (Some(d), _) => d,
            (None, Some(v)) => {
                let text = v.as_str().unwrap_or_default();
                parse_duration(text).map_err(|reason| {
                    ConfigError::new(
                        "PROXY_CONFIG.terminationDrainDuration",
                        &v.to_string(),
                        reason,
                    )
                })?
            }
            (None, None) => DEFAULT_DRAIN,
        };
        let exit_on_zero_active_connections = match env.var(EXIT_ON_ZERO_ACTIVE_CONNECTIONS) {
            None => false,
            // Go's strconv.ParseBool, as pilot-agent reads it.
            Some(v) => match v.as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => false,
                _ => {
                    return Err(ConfigError::new(
                        EXIT_ON_ZERO_ACTIVE_CONNECTIONS,
                        &v,
                        "not true or false",
                    ));
                }
            },
        };
        let minimum_drain = match env.var(MINIMUM_DRAIN_DURATION) {
            None => DEFAULT_MINIMUM_DRAIN,
            Some(v) => parse_duration(&v)
                .map_err(|reason| ConfigError::new(MINIMUM_DRAIN_DURATION, &v, reason))?,
        };
        let concurrency = match o.concurrency {
            Some(n) => n,
            None => match proxy_config.get("concurrency") {
                Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    ConfigError::new("PROXY_CONFIG.concurrency", &v.to_string(), "not a number")
                })?,
                None => 2,
            },
        };
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            concurrency
        };

        let mut metadata = BTreeMap::new();
        for (k, v) in env.vars() {
            if let Some(key) = k.strip_prefix(META_JSON_PREFIX) {
                let value: Value = serde_json::from_str(&v)
                    .map_err(|e| ConfigError::new(&k, &v, format!("not JSON: {e}")))?;
                metadata.insert(key.to_string(), value);
            } else if let Some(key) = k.strip_prefix(META_PREFIX) {
                metadata.insert(key.to_string(), Value::String(v));
            }
        }
        let mut labels: BTreeMap<String, String> = match metadata.get("LABELS") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            Some(other) => {
                return Err(ConfigError::new(
                    "ISTIO_METAJSON_LABELS",
                    &other.to_string(),
                    "labels must be a JSON object of strings",
                ));
            }
            None => read_labels_file(POD_LABELS_FILE),
        };
        if let Some(text) = &o.labels {
            labels = parse_labels(text)
                .ok_or_else(|| ConfigError::new("--labels", text, "expected k=v[,k=v...]"))?;
        }
        if let Some(mode) = &o.interception_mode {
            metadata.insert("INTERCEPTION_MODE".into(), Value::String(mode.clone()));
        }
        if let Some(mode) = metadata.get("INTERCEPTION_MODE") {
            let m = mode.as_str().unwrap_or_default();
            if !matches!(m, "REDIRECT" | "TPROXY" | "NONE") {
                return Err(ConfigError::new(
                    "ISTIO_META_INTERCEPTION_MODE",
                    m,
                    "must be REDIRECT, TPROXY or NONE",
                ));
            }
        }
        metadata.insert("NAMESPACE".into(), Value::String(pod_namespace.clone()));
        metadata.insert(
            "SERVICE_ACCOUNT".into(),
            Value::String(service_account.clone()),
        );
        metadata.insert(
            "INSTANCE_IPS".into(),
            Value::String(instance_ip.to_string()),
        );
        metadata.insert("NAME".into(), Value::String(pod_name.clone()));
        metadata.insert(
            "LABELS".into(),
            Value::Object(
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );

        let port = |name: &str, flag: Option<u16>, default: u16| -> Result<u16, ConfigError> {
            match (flag, env.var(name)) {
                (Some(p), _) => Ok(p),
                (None, Some(text)) => text
                    .parse()
                    .map_err(|_| ConfigError::new(name, &text, "not a port number")),
                (None, None) => Ok(default),
            }
        };
        let localhost = IpAddr::from([127, 0, 0, 1]);
        let any = IpAddr::from([0, 0, 0, 0]);
        // Istio's CA_ADDR defaults to the discovery address (istiod serves both on :15012);
        // a plaintext pilot (:15010) means no CA unless one is named.
        let ca_address = get(CA_ADDR, &o.ca_address).or_else(|| {
            discovery_address
                .as_ref()
                .filter(|a| a.ends_with(":15012"))
                .cloned()
        });
        if let Some(addr) = &ca_address {
            check_host_port(addr).map_err(|reason| ConfigError::new(CA_ADDR, addr, reason))?;
        }
        let secret_ttl = match env.var(SECRET_TTL) {
            Some(text) => match parse_duration(&text) {
                Ok(d) if d.is_zero() => {
                    return Err(ConfigError::new(
                        SECRET_TTL,
                        &text,
                        "must be more than zero",
                    ));
                }
                Ok(d) => Some(d),
                Err(reason) => return Err(ConfigError::new(SECRET_TTL, &text, reason)),
            },
            None => None,
        };
        let trust_domain = env
            .var(TRUST_DOMAIN)
            .unwrap_or_else(|| "cluster.local".into());
        let stats_port = port("MAST_STATS_PORT", o.stats_port, 15090)?;
        if stats_port != 0 {
            // Where Istio's metrics are scraped (INSTANCE_IPS + this port): mastd's telemetry
            // collector finds every sidecar's :15090 through pilot, with no Prometheus needed.
            metadata.insert(
                "MAST_STATS_PORT".into(),
                Value::String(stats_port.to_string()),
            );
        }
        let dns_domain = match &o.domain {
            Some(d) if is_dns_name(d) => d.clone(),
            Some(d) => {
                return Err(ConfigError::new(
                    "--domain",
                    d,
                    "not a DNS domain (was $(POD_NAMESPACE) left unexpanded?)",
                ));
            }
            None => format!("{pod_namespace}.svc.cluster.local"),
        };
        // Istio's ProxyConfig.statusPort is the agent's port; the flag wins over it.
        let agent_default = match proxy_config.get("statusPort") {
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        "PROXY_CONFIG.statusPort",
                        &v.to_string(),
                        "not a port number",
                    )
                })?,
            None => 15020,
        };
        let agent_port = port("MAST_AGENT_PORT", o.agent_port, agent_default)?;
        let agent_addr_required = o.agent_port.is_some()
            || env.var("MAST_AGENT_PORT").is_some()
            || proxy_config.get("statusPort").is_some();
        let app_probers = match env.var(probe::KUBE_APP_PROBERS) {
            Some(text) => probe::parse_probers(&text)
                .map_err(|e| ConfigError::new(probe::KUBE_APP_PROBERS, &text, e.to_string()))?,
            None => BTreeMap::new(),
        };
        let app_metrics = match env.var(merge::PROMETHEUS_ANNOTATIONS) {
            Some(text) => merge::parse_annotations(&text, agent_port).map_err(|e| {
                ConfigError::new(merge::PROMETHEUS_ANNOTATIONS, &text, e.to_string())
            })?,
            None => None,
        };
        Ok(Self {
            ca_address,
            ca_root_cert: o
                .ca_root_cert
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT_CERT)),
            ca_token_file: o
                .ca_token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE)),
            trust_domain,
            secret_ttl,
            sds_socket: o.sds_socket.clone(),
            agent: o.agent,
            pod_name,
            pod_namespace,
            instance_ip,
            service_account,
            discovery_address,
            metadata,
            labels,
            static_config: o.static_config.clone(),
            admin_addr: (localhost, port("MAST_ADMIN_PORT", o.admin_port, 15000)?).into(),
            status_addr: (any, port("STATUS_PORT", o.status_port, 15021)?).into(),
            stats_addr: (any, stats_port).into(),
            agent_addr: (any, agent_port).into(),
            agent_addr_required,
            app_probers,
            app_metrics,
            dns_domain,
            concurrency,
            sotw_only: o.sotw,
            termination_drain,
            exit_on_zero_active_connections,
            minimum_drain,
            node_type: o.node_type,
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Dot-separated DNS labels (`shop.svc.cluster.local`).
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn check_host_port(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err("expected host:port".into()),
    }
}

/// A duration in Go's syntax (`5s`, `250ms`, `1m30s`, `250us`), as Istio's agent reads its
/// flags, environment and `PROXY_CONFIG`; the error is a [`ConfigError`] reason.
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    mast_proto::parse_go_duration(text).map_err(|e| match e {
        DurationError::Negative(_) => "must not be negative",
        DurationError::Syntax(_) => "not a duration like \"5s\", \"250ms\" or \"1m30s\"",
    })
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Kubernetes' downward-API labels file: `app="user"` lines.
fn read_labels_file(path: &str) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_istio_sidecar_environment() {
        let e = env(&[
            (POD_NAME, "user-v1-5d8f7c9b4-x2x9z"),
            (POD_NAMESPACE, "shop"),
            (INSTANCE_IP, "10.1.2.3"),
            (SERVICE_ACCOUNT, "user"),
            (
                PROXY_CONFIG,
                r#"{"discoveryAddress":"mastd.mast-system.svc:15012","terminationDrainDuration":"2s"}"#,
            ),
            ("ISTIO_META_INTERCEPTION_MODE", "NONE"),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"user","version":"v1"}"#),
        ]);
        let c = Config::from_env(&e, &Overrides::default()).unwrap();
        assert_eq!(
            c.node_id(),
            "sidecar~10.1.2.3~user-v1-5d8f7c9b4-x2x9z.shop~shop.svc.cluster.local"
        );
        assert_eq!(
            c.discovery_address.as_deref(),
            Some("mastd.mast-system.svc:15012")
        );
        assert_eq!(c.termination_drain, Duration::from_secs(2));
        assert!(!c.exit_on_zero_active_connections);
        assert_eq!(c.minimum_drain, Duration::from_secs(5));
        assert_eq!(c.labels["version"], "v1");
        assert_eq!(c.metadata["INTERCEPTION_MODE"], "NONE");
        assert_eq!(c.metadata["LABELS"]["app"], "user");
        assert_eq!(c.workload_name(), "user-v1");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            (INSTANCE_IP, "10.1.2", "INSTANCE_IP"),
            (PROXY_CONFIG, "{nope", "PROXY_CONFIG"),
            (
                PROXY_CONFIG,
                r#"{"discoveryAddress":"nohost"}"#,
                "PROXY_CONFIG.discoveryAddress",
            ),
            ("ISTIO_META_INTERCEPTION_MODE", "MAGIC", "INTERCEPTION_MODE"),
            ("ISTIO_METAJSON_LABELS", "[1]", "ISTIO_METAJSON_LABELS"),
            (POD_NAMESPACE, "Bad_NS", "POD_NAMESPACE"),
            ("STATUS_PORT", "99999", "STATUS_PORT"),
            (
                EXIT_ON_ZERO_ACTIVE_CONNECTIONS,
                "yes",
                EXIT_ON_ZERO_ACTIVE_CONNECTIONS,
            ),
            (MINIMUM_DRAIN_DURATION, "5", MINIMUM_DRAIN_DURATION),
            (
                PROXY_CONFIG,
                r#"{"statusPort":"x"}"#,
                "PROXY_CONFIG.statusPort",
            ),
            (
                probe::KUBE_APP_PROBERS,
                r#"{"/app-health/a/livez":{"httpGet":{"port":"#,
                "ISTIO_KUBE_APP_PROBERS",
            ),
            (
                probe::KUBE_APP_PROBERS,
                r#"{"/app-health/a/livez":{"tcpSocket":{"port":0}}}"#,
                "/app-health/a/livez",
            ),
            (
                merge::PROMETHEUS_ANNOTATIONS,
                r#"{"port":"15020"}"#,
                "ISTIO_PROMETHEUS_ANNOTATIONS",
            ),
        ];
        for (var, value, named) in cases {
            let err = Config::from_env(&env(&[(var, value)]), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(named), "{var}: {err}");
        }
    }

    #[test]
    fn flags_override_environment() {
        let e = env(&[(POD_NAME, "a"), (INSTANCE_IP, "10.0.0.1")]);
        let o = Overrides {
            pod_name: Some("b".into()),
            labels: Some("app=x,version=v2".into()),
            ..Default::default()
        };
        let c = Config::from_env(&e, &o).unwrap();
        assert_eq!(c.pod_name, "b");
        assert_eq!(c.labels["version"], "v2");
        assert_eq!(c.instance_ip.to_string(), "10.0.0.1");
    }

    #[test]
    fn agent_port_probers_and_domain() {
        let c = Config::from_env(&env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.agent_addr, "0.0.0.0:15020".parse().unwrap());
        assert!(!c.agent_addr_required);
        assert!(c.app_probers.is_empty() && c.app_metrics.is_none());
        assert_eq!(
            c.node_id(),
            "sidecar~127.0.0.1~mast-proxy.default~default.svc.cluster.local"
        );

        let e = env(&[
            (PROXY_CONFIG, r#"{"statusPort":15999}"#),
            (POD_NAMESPACE, "shop"),
            (
                probe::KUBE_APP_PROBERS,
                r#"{"/app-health/hello/livez":{"httpGet":{"port":80,"path":"/foo"}}}"#,
            ),
            (
                merge::PROMETHEUS_ANNOTATIONS,
                r#"{"scrape":"true","path":"/metrics","port":"8080"}"#,
            ),
        ]);
        let c = Config::from_env(&e, &Overrides::default()).unwrap();
        assert_eq!(c.agent_addr.port(), 15999);
        assert!(c.agent_addr_required);
        assert!(c.app_probers.contains_key("/app-health/hello/livez"));
        assert_eq!(c.app_metrics.as_ref().map(|m| m.port), Some(8080));

        let o = Overrides {
            agent_port: Some(0),
            domain: Some("shop.svc.corp.example".into()),
            ..Default::default()
        };
        let c = Config::from_env(&e, &o).unwrap();
        assert_eq!(c.agent_addr.port(), 0);
        assert!(
            c.node_id().ends_with("~shop.svc.corp.example"),
            "{}",
            c.node_id()
        );
        let o = Overrides {
            domain: Some("$(POD_NAMESPACE).svc.cluster.local".into()),
            ..Default::default()
        };
        let err = Config::from_env(&e, &o).unwrap_err().to_string();
        assert!(err.contains("--domain"), "{err}");
    }

    #[test]
    fn a_router_says_so_in_its_node_id() {
        let e = env(&[
            (POD_NAME, "istio-ingressgateway-1"),
            (POD_NAMESPACE, "istio-system"),
            (INSTANCE_IP, "10.0.0.9"),
        ]);
        let o = Overrides {
            node_type: NodeType::Router,
            ..Default::default()
        };
        let c = Config::from_env(&e, &o).unwrap();
        assert_eq!(
            c.node_id(),
            "router~10.0.0.9~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        // What Istio's agent takes and the old grammar did not.
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("5").unwrap_err().contains("like \"5s\""));
        assert_eq!(parse_duration("-1s"), Err("must not be negative"));
    }
}
