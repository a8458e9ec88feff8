//! CDS and EDS: clusters and their endpoints, as settings the upstream layer runs with.
//!
//! Defaults are Envoy's where a field is unset (1024 for every circuit-breaker threshold,
//! 5 s connect timeout, 50% panic threshold), so a cluster behaves the same under both
//! proxies whatever pilot chose to leave out.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cv3;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy as EnvoyLbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;

use envoy_types::pb::google::protobuf::value::Kind;
use mast_proto::TypeUrl;

use super::tls::{self, Transport};
use super::{
    FieldError, FieldResult, Rejection, ResourceError, XdsResource, decode_any, opt_duration,
};

/// Endpoint metadata namespace that `transport_socket_matches` read.
const SOCKET_MATCH_KEY: &str = "envoy.transport_socket_match";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Envoy's default for every circuit-breaker threshold.
const DEFAULT_LIMIT: u32 = 1024;

/// A cluster's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub discovery: Discovery,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub limits: Limits,
    pub outlier: Option<OutlierConfig>,
    pub protocol: UpstreamProtocol,
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    /// 0–100: below this share of healthy hosts, balance over all of them.
    pub panic_threshold: f64,
    /// Endpoints given inline (STATIC, STRICT_DNS, or a load_assignment on an EDS cluster).
    pub inline_hosts: Option<Vec<HostSpec>>,
    /// Local address to connect from (`upstream_bind_config`, 127.0.0.6 for inbound).
    pub bind: Option<IpAddr>,
    /// Plaintext, TLS, or per-endpoint (Istio's auto mTLS).
    pub transport: Transport,
    /// `filter_metadata.istio.services`: the services behind this cluster, as istiod lists
    /// them for telemetry (host, name, namespace).
    pub services: Vec<IstioService>,
}

/// One entry of a cluster's `istio.services` metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioService {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static,
    /// Endpoints from EDS under this name.
    Eds(String),
    Dns,
    /// Connect where the downstream connection was going (passthrough).
    OriginalDst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    /// Power of two choices.
    LeastRequest,
    Random,
    RingHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// Whatever the downstream used.
    Downstream,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostSpec {
    pub addr: HostAddr,
    pub weight: u32,
    pub healthy: bool,
    /// The endpoint's `envoy.transport_socket_match` metadata (Istio: `tlsMode: istio`).
    pub socket_match: BTreeMap<String, String>,
    /// istiod's `istio.workload` telemetry metadata: the workload behind the endpoint
    /// (`<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>`).
    pub workload: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostAddr {
    Ip(SocketAddr),
    Dns(String, u16),
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Dns(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_LIMIT,
            max_pending: DEFAULT_LIMIT,
            max_requests: DEFAULT_LIMIT,
            max_retries: 3,
        }
    }
}

// === impl cv3::Cluster ===

impl XdsResource for cv3::Cluster {
    const TYPE: TypeUrl = TypeUrl::Cluster;
    type Compiled = ClusterConfig;

    fn name(&self) -> &str {
        &self.name
    }

    fn compile(&self) -> Result<ClusterConfig, Rejection> {
        Ok(ClusterConfig::from_proto(self)?)
    }
}

// === impl ClusterLoadAssignment ===

impl XdsResource for ClusterLoadAssignment {
    const TYPE: TypeUrl = TypeUrl::Endpoint;
    type Compiled = Vec<HostSpec>;

    fn name(&self) -> &str {
        &self.cluster_name
    }

    fn compile(&self) -> Result<Vec<HostSpec>, Rejection> {
        Ok(assignment_hosts(self)?)
    }
}

// === impl ClusterConfig ===

impl ClusterConfig {
    pub fn from_proto(c: &cv3::Cluster) -> Result<Self, ResourceError> {
        Self::build(c).map_err(|e| e.resource("Cluster", &c.name))
    }

    // The deprecated `http2_protocol_options`/`max_requests_per_connection` still arrive
    // from older control planes, so they are honoured alongside the typed options.
    #[allow(deprecated)]
    fn build(c: &cv3::Cluster) -> FieldResult<Self> {
        if c.name.is_empty() {
            return Err(FieldError::new("name", "required"));
        }
        let kind = match &c.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
                .map_err(|_| FieldError::new("type", format!("unknown type {t}")))?,
            Some(ClusterDiscoveryType::ClusterType(_)) => {
                return Err(FieldError::new(
                    "cluster_type",
                    "custom cluster types are not supported",
                ));
            }
            None => DiscoveryType::Static,
        };
        let discovery = match kind {
            DiscoveryType::Static => Discovery::Static,
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns => Discovery::Dns,
            DiscoveryType::Eds => {
                let service = c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| c.name.clone());
                Discovery::Eds(service)
            }
            DiscoveryType::OriginalDst => Discovery::OriginalDst,
        };
        let lb = match EnvoyLbPolicy::try_from(c.lb_policy) {
            Ok(EnvoyLbPolicy::RoundRobin) => LbPolicy::RoundRobin,
            Ok(EnvoyLbPolicy::LeastRequest) => LbPolicy::LeastRequest,
            Ok(EnvoyLbPolicy::Random) => LbPolicy::Random,
            Ok(EnvoyLbPolicy::RingHash) | Ok(EnvoyLbPolicy::Maglev) => LbPolicy::RingHash,
            Ok(EnvoyLbPolicy::ClusterProvided) if discovery == Discovery::OriginalDst => {
                LbPolicy::Random
            }
            _ => {
                return Err(FieldError::new(
                    "lb_policy",
                    format!("unsupported load balancing policy {}", c.lb_policy),
                ));
            }
        };
        let auto = auto_sni(c)?;
        let transport = transport_of(c, auto)?;
        let mut limits = Limits::default();
        if let Some(t) = c
            .circuit_breakers
            .as_ref()
            .and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0))
        {
            let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d| {
                x.as_ref().map_or(d, |v| v.value)
            };
            limits = Limits {
                max_connections: v(&t.max_connections, DEFAULT_LIMIT),
                max_pending: v(&t.max_pending_requests, DEFAULT_LIMIT),
                max_requests: v(&t.max_requests, DEFAULT_LIMIT),
                max_retries: v(&t.max_retries, 3),
            };
        }
        let outlier = match &c.outlier_detection {
            Some(o) => Some(OutlierConfig {
                // Envoy: consecutive_5xx defaults to 5 and enforcement to 100%.
                consecutive_5xx: match (
                    o.consecutive_5xx.as_ref().map_or(5, |v| v.value),
                    o.enforcing_consecutive_5xx
                        .as_ref()
                        .map_or(100, |v| v.value),
                ) {
                    (0, _) | (_, 0) => None,
                    (n, _) => Some(n),
                },
                consecutive_gateway: match (
                    o.consecutive_gateway_failure
                        .as_ref()
                        .map_or(5, |v| v.value),
                    o.enforcing_consecutive_gateway_failure
                        .as_ref()
                        .map_or(0, |v| v.value),
                ) {
                    (0, _) | (_, 0) => None,
                    (n, _) => Some(n),
                },
                interval: opt_duration(&o.interval, "outlier_detection.interval")?
                    .unwrap_or(Duration::from_secs(10)),
                base_ejection: opt_duration(
                    &o.base_ejection_time,
                    "outlier_detection.base_ejection_time",
                )?
                .unwrap_or(Duration::from_secs(30)),
                max_ejection: opt_duration(
                    &o.max_ejection_time,
                    "outlier_detection.max_ejection_time",
                )?
                .unwrap_or(Duration::from_secs(300)),
                max_ejection_percent: o.max_ejection_percent.as_ref().map_or(10, |v| v.value),
            }),
            None => None,
        };
        let mut protocol = if c.http2_protocol_options.is_some() {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        };
        let mut idle_timeout = None;
        let mut max_requests_per_connection =
            c.max_requests_per_connection.as_ref().map(|v| v.value);
        if let Some(any) = c
            .typed_extension_protocol_options
            .get(HTTP_PROTOCOL_OPTIONS)
        {
            let at = format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS:?}]");
            let opts: HttpProtocolOptions = decode_any(any, &at)?;
            protocol = match &opts.upstream_protocol_options {
                Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                    Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                    Some(ProtocolConfig::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                    Some(_) => {
                        return Err(FieldError::new(
                            format!("{at}.explicit_http_config"),
                            "HTTP/3 upstreams are not supported",
                        ));
                    }
                },
                Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
                    UpstreamProtocol::Downstream
                }
                Some(UpstreamProtocolOptions::AutoConfig(_)) => UpstreamProtocol::Http1,
                None => protocol,
            };
            if let Some(common) = &opts.common_http_protocol_options {
                idle_timeout = opt_duration(&common.idle_timeout, &format!("{at}.idle_timeout"))?;
                if let Some(m) = &common.max_requests_per_connection {
                    max_requests_per_connection = Some(m.value);
                }
            }
        }
        let panic_threshold = c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold.as_ref())
            .map_or(50.0, |p| p.value);
        let inline_hosts = match &c.load_assignment {
            Some(la) => Some(hosts_of(la).map_err(|e| e.at("load_assignment"))?),
            None => None,
        };
        let bind = match c
            .upstream_bind_config
            .as_ref()
            .and_then(|b| b.source_address.as_ref())
        {
            Some(sa) => Some(sa.address.parse().map_err(|_| {
                FieldError::new(
                    "upstream_bind_config.source_address.address",
                    format!("{:?} is not an IP address", sa.address),
                )
            })?),
            None => None,
        };
        Ok(Self {
            name: c.name.clone(),
            discovery,
            lb,
            connect_timeout: opt_duration(&c.connect_timeout, "connect_timeout")?
                .unwrap_or(Duration::from_secs(5)),
            limits,
            outlier,
            protocol,
            idle_timeout,
            max_requests_per_connection,
            panic_threshold,
            inline_hosts,
            bind,
            transport,
            services: istio_services(c),
        })
    }
}

/// The `istio.services` metadata; entries missing a field are skipped (it labels metrics,
/// nothing depends on it for routing).
fn istio_services(c: &cv3::Cluster) -> Vec<IstioService> {
    let Some(list) = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("services"))
        .and_then(|v| match &v.kind {
            Some(Kind::ListValue(l)) => Some(&l.values),
            _ => None,
        })
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|v| match &v.kind {
            Some(Kind::StructValue(s)) => {
                let field = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
                    Some(Kind::StringValue(v)) => Some(v.clone()),
                    _ => None,
                };
                Some(IstioService {
                    host: field("host")?,
                    name: field("name")?,
                    namespace: field("namespace")?,
                })
            }
            _ => None,
        })
        .collect()
}

/// `auto_sni` and `auto_san_validation` of the cluster's `HttpProtocolOptions` (what istiod
/// sets for TLS origination without an `sni`).
fn auto_sni(c: &cv3::Cluster) -> FieldResult<(bool, bool)> {
    let Some(any) = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    else {
        return Ok((false, false));
    };
    let at = format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS:?}]");
    let opts: HttpProtocolOptions = decode_any(any, &at)?;
    Ok(opts
        .upstream_http_protocol_options
        .map_or((false, false), |u| (u.auto_sni, u.auto_san_validation)))
}

/// `transport_socket`, or Istio's auto-mTLS `transport_socket_matches`.
fn transport_of(c: &cv3::Cluster, auto: (bool, bool)) -> FieldResult<Transport> {
    let single = match &c.transport_socket {
        Some(ts) => tls::upstream_socket(ts, auto).map_err(|e| e.at("transport_socket"))?,
        None => None,
    };
    if c.transport_socket_matches.is_empty() {
        return Ok(single.map_or(Transport::Plain, Transport::Tls));
    }
    let mut matches = Vec::new();
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let at = format!("transport_socket_matches[{i}]");
        let criteria = match &m.r#match {
            Some(s) => tls::match_criteria(s).map_err(|e| e.at(&at))?,
            None => Default::default(),
        };
        let socket = match &m.transport_socket {
            Some(ts) => tls::upstream_socket(ts, auto)
                .map_err(|e| e.at(format!("{at}.transport_socket")))?,
            None => None,
        };
        matches.push((criteria, socket));
    }
    Ok(Transport::Matches {
        matches,
        default: single,
    })
}

/// The endpoints of a load assignment, in order.
pub fn hosts_of(la: &ClusterLoadAssignment) -> FieldResult<Vec<HostSpec>> {
    let mut out = Vec::new();
    for (i, loc) in la.endpoints.iter().enumerate() {
        for (j, lbe) in loc.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}].lb_endpoints[{j}]");
            let endpoint = match &lbe.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e,
                _ => return Err(FieldError::new(at, "endpoint is required")),
            };
            let addr = endpoint
                .address
                .as_ref()
                .ok_or_else(|| FieldError::new(format!("{at}.endpoint.address"), "required"))
                .and_then(|a| host_addr(a).map_err(|e| e.at(format!("{at}.endpoint.address"))))?;
            let healthy = matches!(
                HealthStatus::try_from(lbe.health_status),
                Ok(HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
            );
            let socket_match = lbe
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(SOCKET_MATCH_KEY))
                .map(|s| {
                    s.fields
                        .iter()
                        .filter_map(|(k, v)| match &v.kind {
                            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let workload = lbe
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get("istio"))
                .and_then(|s| s.fields.get("workload"))
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                });
            out.push(HostSpec {
                socket_match,
                workload,
                addr,
                weight: lbe
                    .load_balancing_weight
                    .as_ref()
                    .map_or(1, |w| w.value.max(1)),
                healthy,
            });
        }
    }
    Ok(out)
}

/// EDS: one load assignment, checked.
pub fn assignment_hosts(la: &ClusterLoadAssignment) -> Result<Vec<HostSpec>, ResourceError> {
    hosts_of(la).map_err(|e| e.resource("ClusterLoadAssignment", &la.cluster_name))
}

/// A socket address: an IP literal, or a name for DNS clusters.
pub fn host_addr(a: &Address) -> FieldResult<HostAddr> {
    let sa = match &a.address {
        Some(AddressKind::SocketAddress(sa)) => sa,
        _ => {
            return Err(FieldError::new("", "only socket addresses are supported"));
        }
    };
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) if p <= u16::MAX as u32 => p as u16,
        _ => {
            return Err(FieldError::new(
                "socket_address.port_value",
                "required, 0-65535",
            ));
        }
    };
    Ok(match sa.address.parse::<IpAddr>() {
        Ok(ip) => HostAddr::Ip(SocketAddr::new(ip, port)),
        Err(_) if !sa.address.is_empty() => HostAddr::Dns(sa.address.clone(), port),
        Err(_) => return Err(FieldError::new("socket_address.address", "required")),
    })
}

/// A listener's socket address (IP only).
pub fn socket_addr(a: &Address) -> FieldResult<SocketAddr> {
    match host_addr(a)? {
        HostAddr::Ip(sa) => Ok(sa),
        HostAddr::Dns(h, _) => Err(FieldError::new(
            "socket_address.address",
            format!("{h:?} is not an IP address"),
        )),
    }
}

/// EDS load assignments by name, for lookups while building a snapshot.
pub type Assignments = HashMap<String, Vec<HostSpec>>;

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn unsupported_fields_are_named() {
        let mut c = Cluster {
            name: "outbound|80||x".into(),
            lb_policy: EnvoyLbPolicy::LoadBalancingPolicyConfig as i32,
            ..Default::default()
        };
        let err = ClusterConfig::from_proto(&c).unwrap_err();
        assert_eq!(err.field, "lb_policy");
        assert_eq!(err.name, "outbound|80||x");
        c.lb_policy = EnvoyLbPolicy::LeastRequest as i32;
        let ok = ClusterConfig::from_proto(&c).unwrap();
        assert_eq!(ok.lb, LbPolicy::LeastRequest);
        assert_eq!(ok.limits.max_requests, 1024);
        assert_eq!(ok.connect_timeout, Duration::from_secs(5));
    }
}
