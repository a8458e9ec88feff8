//! LDS: listeners, their filter chains, and which chain a connection takes.
//!
//! A listener is either bound (per-port listeners in NONE mode, `virtualOutbound`,
//! `virtualInbound`) or reached only through `virtualOutbound`'s original-destination
//! hand-off. Chains are picked by Envoy's order of specificity: destination port, then
//! destination IP prefix, then transport protocol, then application protocol.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3 as lv3;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as TcpProxyProto;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;
use mast_proto::TypeUrl;

use super::cluster::socket_addr;
use super::route::{Clusters, RouteTable};
use super::{
    At, FieldError, FieldResult, Rejection, ResourceError, XdsResource, decode_any, opt_duration,
};
use crate::http::{EscapedSlashes, PathNormalization};
use crate::rbac::Rbac;

pub const HCM: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// Network filters that mast-proxy implements natively, so their config is not needed.
/// Envoy's default `listener_filters_timeout`.
const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

/// Envoy's default HTTP connection idle timeout (`common_http_protocol_options.idle_timeout`).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default `stream_idle_timeout`.
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's `max_request_headers_kb` default, and the most it accepts.
const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
const MAX_REQUEST_HEADERS_KB: u32 = 8192;
/// Envoy's `max_headers_count` default.
const DEFAULT_MAX_HEADERS_COUNT: u32 = 100;

const BUILTIN_NETWORK_FILTERS: [&str; 3] = [
    "istio.metadata_exchange",
    "istio.stats",
    "envoy.filters.network.connection_limit",
];
/// HTTP filters whose work mast-proxy does natively (stats, metadata exchange) or that
/// change nothing for mesh traffic it handles.
const BUILTIN_HTTP_FILTERS: [&str; 6] = [
    "istio.metadata_exchange",
    "istio.stats",
    "istio.alpn",
    "envoy.filters.http.cors",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.http.fault",
];

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub bind: bool,
    /// `virtualOutbound`/`virtualInbound`: hand off by original destination.
    pub use_original_dst: bool,
    /// Read `SO_ORIGINAL_DST` (`use_original_dst` or the `original_dst` listener filter).
    pub original_dst: bool,
    pub inbound: bool,
    pub sniff_http: bool,
    pub sniff_tls: bool,
    /// Ports where `http_inspector` runs.
    pub sniff_ports: SniffPorts,
    /// Ports where `tls_inspector` runs.
    pub tls_ports: SniffPorts,
    /// `listener_filters_timeout`: how long the inspectors wait for the client's first
    /// bytes. `None` waits as long as the client does (Envoy's `0s`, which Istio sets); the
    /// default is Envoy's 15 s.
    pub sniff_timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: when the wait runs out, carry on with what
    /// is known (true) or close the connection (false, Envoy's default).
    pub continue_on_sniff_timeout: bool,
    pub chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    matcher: ChainMatch,
    pub kind: ChainKind,
    /// Terminate (m)TLS before the filters (`transport_socket`).
    pub tls: Option<Arc<super::tls::DownstreamTls>>,
}

#[derive(Debug, Default)]
struct ChainMatch {
    port: Option<u16>,
    prefixes: Vec<(IpAddr, u8)>,
    transport: Option<String>,
    alpn: Vec<String>,
    server_names: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum ChainKind {
    Http(Arc<HttpManager>),
    Tcp(Arc<TcpProxy>),
}

impl ChainKind {
    /// The chain's `envoy.filters.network.rbac` filters, in order, kept with the terminal
    /// filter so they travel with it to where the peer's identity is known.
    pub fn network_rbac(&self) -> &[Arc<Rbac>] {
        match self {
            Self::Http(h) => &h.network_rbac,
            Self::Tcp(t) => &t.network_rbac,
        }
    }
}

/// `http_connection_manager`.
#[derive(Debug)]
pub struct HttpManager {
    pub stat_prefix: String,
    pub routes: RouteSource,
    pub codec: Codec,
    pub websocket: bool,
    pub stream_idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout`: a downstream connection with no request
    /// in flight is closed after this long. Envoy's default is one hour; zero disables it.
    pub idle_timeout: Option<Duration>,
    /// `request_headers_timeout`: how long a client may take to send a request's headers
    /// (off by default, as in Envoy).
    pub request_headers_timeout: Option<Duration>,
    /// `envoy.filters.http.jwt_authn`, which runs before the RBAC filters (it must come
    /// before them in the config: they read what it verified).
    pub jwt: Option<Arc<crate::http::jwt::JwtAuthn>>,
    /// `envoy.filters.http.rbac` filters, in order; any denial stops the request.
    pub rbac: Vec<Arc<Rbac>>,
    /// The chain's network RBAC filters (see [`ChainKind::network_rbac`]).
    pub network_rbac: Vec<Arc<Rbac>>,
    /// `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`.
    pub path: PathNormalization,
    /// `max_request_headers_kb`, in bytes: a larger request head is answered 431.
    pub max_request_headers: usize,
    /// `common_http_protocol_options.max_headers_count`: more headers are answered 431.
    pub max_headers: usize,
    /// `http_protocol_options.accept_http_10`: off (Envoy's and Istio's default), an
    /// HTTP/1.0 request is answered 426.
    pub accept_http_10: bool,
    /// `http_protocol_options.default_host_for_http_10`, for HTTP/1.0 requests without Host.
    pub default_host_for_http_10: Option<String>,
    /// `use_remote_address`: this is the edge (a gateway), so the peer is the client —
    /// `x-forwarded-for` and friends are written as Envoy writes them there.
    pub use_remote_address: bool,
    /// `internal_address_config`: which peers (or `x-forwarded-for` addresses) are inside
    /// the mesh. Unset, no address is internal (Envoy since 1.36).
    pub internal_addresses: Option<crate::http::forwarded::InternalAddresses>,
    /// `tracing` (with the request id extension): spans and their sampling.
    pub tracing: Option<Arc<crate::http::trace::TracingConfig>>,
}

#[derive(Debug)]
pub enum RouteSource {
    Rds(String),
    Inline(Arc<RouteTable>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// `tcp_proxy`.
#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub clusters: Clusters,
    pub idle_timeout: Option<Duration>,
    /// The chain's network RBAC filters (see [`ChainKind::network_rbac`]).
    pub network_rbac: Vec<Arc<Rbac>>,
}

/// What is known about a connection when picking its chain.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo<'a> {
    pub dst: Option<SocketAddr>,
    pub transport: &'a str,
    /// Protocols offered in the TLS ClientHello, or the one HTTP sniffing found.
    pub alpn: Vec<&'a str>,
    pub sni: Option<&'a str>,
}

// === impl lv3::Listener ===

impl XdsResource for lv3::Listener {
    const TYPE: TypeUrl = TypeUrl::Listener;
    type Compiled = ListenerConfig;

    fn name(&self) -> &str {
        &self.name
    }

    fn compile(&self) -> Result<ListenerConfig, Rejection> {
        Ok(ListenerConfig::from_proto(self)?)
    }
}

// === impl ListenerConfig ===

impl ListenerConfig {
    pub fn from_proto(l: &lv3::Listener) -> Result<Self, ResourceError> {
        Self::build(l).map_err(|e| e.resource("Listener", &l.name))
    }

    fn build(l: &lv3::Listener) -> FieldResult<Self> {
        if l.name.is_empty() {
            return Err(FieldError::new("name", "required"));
        }
        let addr = socket_addr(
            l.address
                .as_ref()
                .ok_or_else(|| FieldError::new("address", "required"))?,
        )
        .at("address")?;
        let mut sniff_http = false;
        let mut sniff_tls = false;
        let mut sniff_ports = SniffPorts::All;
        let mut tls_ports = SniffPorts::All;
        let mut original_dst_filter = false;
        for (i, f) in l.listener_filters.iter().enumerate() {
            match f.name.as_str() {
                "envoy.filters.listener.http_inspector" => {
                    sniff_http = true;
                    sniff_ports = sniff_ports_of(f);
                }
                "envoy.filters.listener.tls_inspector" => {
                    sniff_tls = true;
                    tls_ports = sniff_ports_of(f);
                }
                "envoy.filters.listener.original_dst" => original_dst_filter = true,
                other => {
                    return Err(FieldError::new(
                        format!("listener_filters[{i}]"),
                        format!("listener filter {other:?} is not supported"),
                    ));
                }
            }
        }
        let chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| FilterChain::from_proto(c).at(format!("filter_chains[{i}]")))
            .collect::<FieldResult<Vec<_>>>()?;
        let default_chain = l
            .default_filter_chain
            .as_ref()
            .map(|c| FilterChain::from_proto(c).at("default_filter_chain"))
            .transpose()?;
        if chains.is_empty() && default_chain.is_none() {
            return Err(FieldError::new("filter_chains", "no filter chain"));
        }
        // Connections already open on this listener trace with its new config from now on.
        for (i, c) in chains.iter().chain(&default_chain).enumerate() {
            if let ChainKind::Http(h) = &c.kind {
                let chain = if c.name.is_empty() {
                    i.to_string()
                } else {
                    c.name.clone()
                };
                crate::http::trace::TracingConfig::supersede(
                    &format!("{}/{chain}", l.name),
                    h.tracing.as_ref(),
                );
            }
        }
        Ok(Self {
            name: l.name.clone(),
            addr,
            bind: l.bind_to_port.as_ref().is_none_or(|b| b.value),
            use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
            original_dst: original_dst_filter
                || l.use_original_dst.as_ref().is_some_and(|b| b.value),
            inbound: l.traffic_direction == TrafficDirection::Inbound as i32,
            sniff_http,
            sniff_tls,
            sniff_ports,
            tls_ports,
            sniff_timeout: match opt_duration(
                &l.listener_filters_timeout,
                "listener_filters_timeout",
            )? {
                None => Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            },
            continue_on_sniff_timeout: l.continue_on_listener_filters_timeout,
            chains,
            default_chain,
        })
    }

    /// Whether the listener filters would look at the first bytes for this port.
    pub fn sniffs(&self, port: u16) -> bool {
        self.sniffs_tls(port) || self.sniffs_http(port)
    }

    /// `tls_inspector` runs on this port.
    pub fn sniffs_tls(&self, port: u16) -> bool {
        self.sniff_tls && self.tls_ports.covers(port)
    }

    /// `http_inspector` runs on this port.
    pub fn sniffs_http(&self, port: u16) -> bool {
        self.sniff_http && self.sniff_ports.covers(port)
    }

    /// The filter chain for a connection, Envoy's way: among chains whose every set
    /// criterion matches, the most specific at each level in turn.
    pub fn select(&self, info: &ConnInfo<'_>) -> Option<&FilterChain> {
        let mut best: Option<(&FilterChain, [u32; 5])> = None;
        for c in &self.chains {
            if let Some(score) = c.matcher.score(info)
                && best.as_ref().is_none_or(|(_, s)| score > *s)
            {
                best = Some((c, score));
            }
        }
        best.map(|(c, _)| c).or(self.default_chain.as_ref())
    }
}

/// Where listener filters run, from a `filter_disabled` predicate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SniffPorts {
    #[default]
    All,
    /// Disabled on these ports (`destination_port_range` / `or_match` of them).
    Except(Vec<u16>),
    /// Istio's shape: `not_match(or_match(ports))` — disabled everywhere else.
    Only(Vec<u16>),
}

impl SniffPorts {
    fn covers(&self, port: u16) -> bool {
        match self {
            Self::All => true,
            Self::Except(ports) => !ports.contains(&port),
            Self::Only(ports) => ports.contains(&port),
        }
    }
}

fn sniff_ports_of(f: &lv3::ListenerFilter) -> SniffPorts {
    use lv3::listener_filter_chain_match_predicate::Rule;
    fn walk(p: &lv3::ListenerFilterChainMatchPredicate, out: &mut Vec<u16>) {
        match &p.rule {
            Some(Rule::DestinationPortRange(r)) => {
                // Only port numbers can match: walking all of i32 held the xDS task for minutes.
                let ports = r.start.max(0)..r.end.min(i32::from(u16::MAX) + 1);
                out.extend(ports.filter_map(|p| u16::try_from(p).ok()));
            }
            Some(Rule::OrMatch(set)) => set.rules.iter().for_each(|r| walk(r, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match f.filter_disabled.as_ref().map(|p| &p.rule) {
        None => SniffPorts::All,
        Some(Some(Rule::NotMatch(inner))) => {
            walk(inner, &mut out);
            SniffPorts::Only(out)
        }
        Some(_) => {
            if let Some(p) = &f.filter_disabled {
                walk(p, &mut out);
            }
            SniffPorts::Except(out)
        }
    }
}

// === impl FilterChain ===

impl FilterChain {
    fn from_proto(c: &lv3::FilterChain) -> FieldResult<Self> {
        let matcher = match &c.filter_chain_match {
            Some(m) => ChainMatch::from_proto(m).at("filter_chain_match")?,
            None => ChainMatch::default(),
        };
        let tls = match &c.transport_socket {
            Some(ts) => super::tls::downstream_socket(ts).at("transport_socket")?,
            None => None,
        };
        let mut kind = None;
        let mut network_rbac = Vec::new();
        for (i, f) in c.filters.iter().enumerate() {
            let at = format!("filters[{i}]");
            let any = match &f.config_type {
                Some(FilterConfigType::TypedConfig(any)) => Some(any),
                Some(FilterConfigType::ConfigDiscovery(_)) => {
                    return Err(FieldError::new(
                        at,
                        "filter config discovery is not supported",
                    ));
                }
                None => None,
            };
            match f.name.as_str() {
                HCM => {
                    let any = any.ok_or_else(|| FieldError::new(&at, "typed_config required"))?;
                    let hcm: HttpConnectionManager =
                        decode_any(any, &format!("{at}.typed_config"))?;
                    let mut hcm = HttpManager::from_proto(&hcm).at(format!("{at}.typed_config"))?;
                    hcm.network_rbac = std::mem::take(&mut network_rbac);
                    kind = Some(ChainKind::Http(Arc::new(hcm)));
                    break;
                }
                TCP_PROXY => {
                    let any = any.ok_or_else(|| FieldError::new(&at, "typed_config required"))?;
                    let tcp: TcpProxyProto = decode_any(any, &format!("{at}.typed_config"))?;
                    let mut tcp = TcpProxy::from_proto(&tcp).at(format!("{at}.typed_config"))?;
                    tcp.network_rbac = std::mem::take(&mut network_rbac);
                    kind = Some(ChainKind::Tcp(Arc::new(tcp)));
                    break;
                }
                crate::rbac::NETWORK_FILTER => {
                    let at = format!("{at}.typed_config");
                    let any = any.ok_or_else(|| FieldError::new(&at, "required"))?;
                    let proto: envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac =
                        decode_any(any, &at)?;
                    network_rbac.push(Arc::new(Rbac::from_network_proto(&proto).at(at)?));
                }
                name if BUILTIN_NETWORK_FILTERS.contains(&name) => {}
                other => {
                    return Err(FieldError::new(
                        at,
                        format!("network filter {other:?} is not supported"),
                    ));
                }
            }
        }
        let kind = kind.ok_or_else(|| {
            FieldError::new(
                "filters",
                "needs a terminal http_connection_manager or tcp_proxy filter",
            )
        })?;
        Ok(Self {
            name: c.name.clone(),
            matcher,
            kind,
            tls,
        })
    }
}

impl ChainMatch {
    fn from_proto(m: &lv3::FilterChainMatch) -> FieldResult<Self> {
        let port = match &m.destination_port {
            Some(p) => Some(
                u16::try_from(p.value)
                    .map_err(|_| FieldError::new("destination_port", "not a port"))?,
            ),
            None => None,
        };
        let prefixes = m
            .prefix_ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let ip: IpAddr = r.address_prefix.parse().map_err(|_| {
                    FieldError::new(
                        format!("prefix_ranges[{i}].address_prefix"),
                        format!("{:?} is not an IP address", r.address_prefix),
                    )
                })?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = r
                    .prefix_len
                    .as_ref()
                    .map_or(max, |l| l.value.min(max as u32) as u8);
                Ok((ip, len))
            })
            .collect::<FieldResult<_>>()?;
        Ok(Self {
            port,
            prefixes,
            transport: (!m.transport_protocol.is_empty()).then(|| m.transport_protocol.clone()),
            alpn: m.application_protocols.clone(),
            server_names: m.server_names.clone(),
        })
    }

    /// `None` if a criterion fails; else how specific the match is, per level.
    fn score(&self, info: &ConnInfo<'_>) -> Option<[u32; 5]> {
        let mut s = [0u32; 5];
        if let Some(p) = self.port {
            if info.dst.map(|d| d.port()) != Some(p) {
                return None;
            }
            s[0] = 1;
        }
        if !self.prefixes.is_empty() {
            let ip = info.dst?.ip();
            let best = self
                .prefixes
                .iter()
                .filter(|(net, len)| in_prefix(ip, *net, *len))
                .map(|(_, len)| *len as u32 + 1)
                .max()?;
            s[1] = best;
        }
        if !self.server_names.is_empty() {
            let sni = info.sni?;
            let hit = self.server_names.iter().any(|n| {
                n == sni
                    || n.strip_prefix('*')
                        .is_some_and(|suffix| sni.ends_with(suffix))
            });
            if !hit {
                return None;
            }
            s[2] = 1;
        }
        if let Some(t) = &self.transport {
            if t != info.transport {
                return None;
            }
            s[3] = 1;
        }
        if !self.alpn.is_empty() {
            if !self.alpn.iter().any(|a| info.alpn.contains(&a.as_str())) {
                return None;
            }
            s[4] = 1;
        }
        Some(s)
    }
}

fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

// === impl HttpManager ===

impl HttpManager {
    fn from_proto(h: &HttpConnectionManager) -> FieldResult<Self> {
        let routes = match &h.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => RouteSource::Rds(rds.route_config_name.clone()),
            Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(Arc::new(
                RouteTable::build(&rc.name, &rc.virtual_hosts).at("route_config")?,
            )),
            _ => {
                return Err(FieldError::new(
                    "route_specifier",
                    "rds or route_config is required",
                ));
            }
        };
        let mut has_router = false;
        let mut jwt = None;
        let mut rbac = Vec::new();
        for (i, f) in h.http_filters.iter().enumerate() {
            let at = format!("http_filters[{i}]");
            if has_router {
                return Err(FieldError::new(at, "the router filter must be last"));
            }
            match f.name.as_str() {
                "envoy.filters.http.router" => has_router = true,
                crate::http::jwt::FILTER => {
                    if f.disabled || jwt.is_some() || !rbac.is_empty() {
                        return Err(FieldError::new(
                            at,
                            "one enabled jwt_authn filter is supported, before any RBAC filter",
                        ));
                    }
                    let at = format!("{at}.typed_config");
                    let Some(HttpFilterConfigType::TypedConfig(any)) = &f.config_type else {
                        return Err(FieldError::new(at, "required"));
                    };
                    let proto: envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication =
                        decode_any(any, &at)?;
                    jwt = Some(Arc::new(
                        crate::http::jwt::JwtAuthn::from_proto(&proto).at(at)?,
                    ));
                }
                crate::rbac::HTTP_FILTER => {
                    if f.disabled {
                        // Enabled per route only: per-route filter config is not read.
                        return Err(FieldError::new(
                            format!("{at}.disabled"),
                            "RBAC filters enabled per route are not supported",
                        ));
                    }
                    let at = format!("{at}.typed_config");
                    let Some(HttpFilterConfigType::TypedConfig(any)) = &f.config_type else {
                        return Err(FieldError::new(at, "required"));
                    };
                    let proto: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac =
                        decode_any(any, &at)?;
                    rbac.push(Arc::new(Rbac::from_http_proto(&proto).at(at)?));
                }
                name if BUILTIN_HTTP_FILTERS.contains(&name) => {
                    if name == "envoy.filters.http.fault"
                        && let Some(HttpFilterConfigType::TypedConfig(any)) = &f.config_type
                    {
                        // Listener-wide faults would apply to every route; pilot puts
                        // them per route, and an empty filter config is all it writes here.
                        let fault: envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault =
                            decode_any(any, &format!("{at}.typed_config"))?;
                        if fault.delay.is_some() || fault.abort.is_some() {
                            return Err(FieldError::new(
                                format!("{at}.typed_config"),
                                "listener-level faults are not supported; set them per route",
                            ));
                        }
                    }
                }
                _ if f.is_optional => {}
                other => {
                    return Err(FieldError::new(
                        at,
                        format!("HTTP filter {other:?} is not supported"),
                    ));
                }
            }
        }
        if !has_router {
            return Err(FieldError::new(
                "http_filters",
                "envoy.filters.http.router is required",
            ));
        }
        let idle_timeout = match &h.common_http_protocol_options {
            Some(o) => opt_duration(&o.idle_timeout, "common_http_protocol_options.idle_timeout")?
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            None => DEFAULT_IDLE_TIMEOUT,
        };
        let codec = match CodecType::try_from(h.codec_type) {
            Ok(CodecType::Http1) => Codec::Http1,
            Ok(CodecType::Http2) => Codec::Http2,
            Ok(CodecType::Auto) => Codec::Auto,
            _ => {
                return Err(FieldError::new(
                    "codec_type",
                    "only AUTO, HTTP1 and HTTP2 are supported",
                ));
            }
        };
        let escaped_slashes =
            match PathWithEscapedSlashesAction::try_from(h.path_with_escaped_slashes_action) {
                Ok(
                    PathWithEscapedSlashesAction::ImplementationSpecificDefault
                    | PathWithEscapedSlashesAction::KeepUnchanged,
                ) => EscapedSlashes::Keep,
                Ok(PathWithEscapedSlashesAction::RejectRequest) => EscapedSlashes::Reject,
                Ok(PathWithEscapedSlashesAction::UnescapeAndRedirect) => EscapedSlashes::Redirect,
                Ok(PathWithEscapedSlashesAction::UnescapeAndForward) => EscapedSlashes::Forward,
                Err(_) => {
                    return Err(FieldError::new(
                        "path_with_escaped_slashes_action",
                        format!("unknown action {}", h.path_with_escaped_slashes_action),
                    ));
                }
            };
        let headers_kb = h
            .max_request_headers_kb
            .as_ref()
            .map_or(DEFAULT_MAX_REQUEST_HEADERS_KB, |v| v.value);
        if headers_kb == 0 || headers_kb > MAX_REQUEST_HEADERS_KB {
            return Err(FieldError::new(
                "max_request_headers_kb",
                format!("must be between 1 and {MAX_REQUEST_HEADERS_KB}"),
            ));
        }
        let max_headers = h
            .common_http_protocol_options
            .as_ref()
            .and_then(|o| o.max_headers_count.as_ref())
            .map_or(DEFAULT_MAX_HEADERS_COUNT, |v| v.value);
        if max_headers == 0 {
            return Err(FieldError::new(
                "common_http_protocol_options.max_headers_count",
                "must be at least 1",
            ));
        }
        Ok(Self {
            stat_prefix: h.stat_prefix.clone(),
            routes,
            codec,
            path: PathNormalization {
                normalize: h.normalize_path.as_ref().is_some_and(|b| b.value),
                merge_slashes: h.merge_slashes,
                escaped_slashes,
            },
            max_request_headers: headers_kb as usize * 1024,
            max_headers: max_headers as usize,
            accept_http_10: h
                .http_protocol_options
                .as_ref()
                .is_some_and(|o| o.accept_http_10),
            default_host_for_http_10: h
                .http_protocol_options
                .as_ref()
                .map(|o| o.default_host_for_http_10.clone())
                .filter(|h| !h.is_empty()),
            websocket: h.upgrade_configs.iter().any(|u| {
                u.upgrade_type.eq_ignore_ascii_case("websocket")
                    && u.enabled.as_ref().is_none_or(|e| e.value)
            }),
            // Envoy's default is five minutes; zero disables it.
            stream_idle_timeout: opt_duration(&h.stream_idle_timeout, "stream_idle_timeout")?
                .or(Some(DEFAULT_STREAM_IDLE_TIMEOUT))
                .filter(|d| !d.is_zero()),
            idle_timeout: Some(idle_timeout).filter(|d| !d.is_zero()),
            request_headers_timeout: opt_duration(
                &h.request_headers_timeout,
                "request_headers_timeout",
            )?
            .filter(|d| !d.is_zero()),
            jwt,
            rbac,
            network_rbac: Vec::new(),
            use_remote_address: h.use_remote_address.as_ref().is_some_and(|b| b.value),
            internal_addresses: h
                .internal_address_config
                .as_ref()
                .map(crate::http::forwarded::InternalAddresses::from_proto)
                .transpose()
                .at("internal_address_config")?,
            tracing: crate::http::trace::TracingConfig::from_hcm(h)?,
        })
    }
}

// === impl TcpProxy ===

impl TcpProxy {
    fn from_proto(t: &TcpProxyProto) -> FieldResult<Self> {
        let clusters = match &t.cluster_specifier {
            Some(TcpClusterSpecifier::Cluster(c)) if !c.is_empty() => Clusters::One(c.clone()),
            Some(TcpClusterSpecifier::WeightedClusters(w)) => {
                let items: Vec<(String, u32)> = w
                    .clusters
                    .iter()
                    .filter(|c| c.weight > 0)
                    .map(|c| (c.name.clone(), c.weight))
                    .collect();
                let total = items.iter().map(|(_, w)| *w).sum();
                if total == 0 {
                    return Err(FieldError::new("weighted_clusters", "weights sum to 0"));
                }
                Clusters::Weighted { items, total }
            }
            _ => {
                return Err(FieldError::new(
                    "cluster_specifier",
                    "cluster or weighted_clusters is required",
                ));
            }
        };
        Ok(Self {
            stat_prefix: t.stat_prefix.clone(),
            clusters,
            idle_timeout: opt_duration(&t.idle_timeout, "idle_timeout")?
                .or(Some(Duration::from_secs(3600)))
                .filter(|d| !d.is_zero()),
            network_rbac: Vec::new(),
        })
    }

    pub fn pick_cluster(&self) -> &str {
        match &self.clusters {
            Clusters::One(c) => c,
            Clusters::Weighted { items, total } => {
                let mut n = rand::random_range(0..*total);
                for (name, w) in items {
                    if n < *w {
                        return name;
                    }
                    n -= w;
                }
                items.last().map_or("", |(n, _)| n.as_str())
            }
        }
    }
}

/// Listeners by name, for the `virtualOutbound` hand-off by `ip:port` and `0.0.0.0:port`.
pub fn handoff_index(listeners: &[Arc<ListenerConfig>]) -> HashMap<SocketAddr, usize> {
    listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.bind)
        .map(|(i, l)| (l.addr, i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(extra: &str, hcm_extra: &str) -> ListenerConfig {
        let yaml = format!(
            r#"
name: web
address: {{socket_address: {{address: 127.0.0.1, port_value: 8080}}}}
{extra}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: web
      rds: {{route_config_name: web}}
      {hcm_extra}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        );
        ListenerConfig::from_proto(&mast_proto::json::yaml_to_message(&yaml).unwrap()).unwrap()
    }

    fn hcm(l: &ListenerConfig) -> &HttpManager {
        match &l.chains[0].kind {
            ChainKind::Http(h) => h,
            ChainKind::Tcp(_) => panic!("not HTTP"),
        }
    }

    #[test]
    fn listener_filters_timeout_follows_envoy() {
        let unset = listener("", "");
        assert_eq!(unset.sniff_timeout, Some(Duration::from_secs(15)));
        assert!(!unset.continue_on_sniff_timeout);
        // Istio's setting: 0s is no timeout at all, not "use a default".
        let istio = listener(
            "listener_filters_timeout: 0s\ncontinue_on_listener_filters_timeout: true",
            "",
        );
        assert_eq!(istio.sniff_timeout, None);
        assert!(istio.continue_on_sniff_timeout);
        let set = listener("listener_filters_timeout: 2s", "");
        assert_eq!(set.sniff_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn connection_idle_timeout_defaults_to_an_hour_and_zero_disables_it() {
        let unset = listener("", "");
        assert_eq!(hcm(&unset).idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(hcm(&unset).request_headers_timeout, None);
        let set = listener(
            "",
            "common_http_protocol_options: {idle_timeout: 90s}\n      request_headers_timeout: 10s",
        );
        assert_eq!(hcm(&set).idle_timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            hcm(&set).request_headers_timeout,
            Some(Duration::from_secs(10))
        );
        let off = listener("", "common_http_protocol_options: {idle_timeout: 0s}");
        assert_eq!(hcm(&off).idle_timeout, None);
    }

    #[test]
    fn stream_idle_timeout_defaults_to_five_minutes_and_zero_disables_it() {
        let unset = listener("", "");
        assert_eq!(
            hcm(&unset).stream_idle_timeout,
            Some(Duration::from_secs(300))
        );
        let set = listener("", "stream_idle_timeout: 2s");
        assert_eq!(hcm(&set).stream_idle_timeout, Some(Duration::from_secs(2)));
        let off = listener("", "stream_idle_timeout: 0s");
        assert_eq!(hcm(&off).stream_idle_timeout, None);
    }
}
