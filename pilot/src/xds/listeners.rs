//! LDS: how traffic enters the proxy.
//!
//! With iptables capture (REDIRECT/TPROXY) every outbound connection lands on
//! `virtualOutbound` (0.0.0.0:15001, `use_original_dst`), which hands it by original
//! destination to a non-binding per-port listener: `0.0.0.0_<port>` for HTTP (routed by RDS
//! `"<port>"`), `<vip>_<port>` for TCP and undeclared protocols; inbound connections land on
//! `virtualInbound` (0.0.0.0:15006) and go by destination port to `inbound|<port>||`.
//! Without capture (`INTERCEPTION_MODE=NONE`) the app calls `127.0.0.1:<service port>`
//! directly, so those listeners bind there, as Istio's sidecar does in NONE mode. Undeclared
//! protocols get Istio's sniffing: `http_inspector` picks the HTTP chain, anything else is
//! proxied as TCP. Which listeners exist is decided in [`super::plan`].

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter_chain_match_predicate::{
    MatchSet, Rule,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
    ListenerFilterChainMatchPredicate,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, RouteSpecifier, UpgradeConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use mast_mesh_config::model::{
    MeshModel, MeshSettings, PathNormalization, Protocol, Service, ServicePort,
};
use mast_mesh_config::security::MtlsMode;

use super::authz;
use super::mtls::{self, Security};

use super::clusters::{
    BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH, ads_config_source, inbound_cluster_name,
};
use super::endpoints::socket_address;
use super::node::ProxyNode;
use super::plan::{
    InboundPort, ListenerPlan, OutboundPlan, VIRTUAL_INBOUND_PORT, VIRTUAL_OUTBOUND_PORT, WILDCARD,
};
use super::routes::{inbound_route_config, tcp_destinations};
use super::tracing::{Class, HcmTracing};
use super::{any, duration, outbound_cluster_name};

/// Application protocols `http_inspector` reports for plaintext HTTP.
const HTTP_ALPN: [&str; 2] = ["http/1.1", "h2c"];

/// Outbound listeners as planned, plus `virtualOutbound` when traffic is captured.
pub fn outbound(model: &MeshModel, plan: &OutboundPlan<'_>, proxy: &ProxyNode) -> Vec<Listener> {
    let fallback = if plan.registry_only {
        BLACKHOLE
    } else {
        PASSTHROUGH
    };
    let trace = HcmTracing::new(model, proxy, Class::SidecarOutbound);
    let mut out: Vec<Listener> = plan
        .listeners
        .values()
        .map(|l| outbound_listener(model, l, proxy, fallback, &trace))
        .collect();
    if plan.capture {
        out.push(Listener {
            name: "virtualOutbound".into(),
            address: Some(socket_address(WILDCARD, VIRTUAL_OUTBOUND_PORT)),
            use_original_dst: Some(BoolValue { value: true }),
            traffic_direction: TrafficDirection::Outbound as i32,
            filter_chains: vec![FilterChain {
                // Connections to 15001 itself would loop forever.
                name: "virtualOutbound-blackhole".into(),
                filter_chain_match: Some(port_match(VIRTUAL_OUTBOUND_PORT)),
                filters: vec![tcp_proxy_filter(
                    BLACKHOLE,
                    ClusterSpecifier::Cluster(BLACKHOLE.into()),
                )],
                ..Default::default()
            }],
            default_filter_chain: Some(FilterChain {
                name: "virtualOutbound-catchall-tcp".into(),
                filters: vec![tcp_proxy_filter(
                    fallback,
                    ClusterSpecifier::Cluster(fallback.into()),
                )],
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    out
}

fn outbound_listener(
    model: &MeshModel,
    l: &ListenerPlan<'_>,
    proxy: &ProxyNode,
    fallback: &str,
    trace: &HcmTracing,
) -> Listener {
    let stat = format!("outbound_{}_{}", l.address, l.port);
    let http_chain = l.http_route.as_ref().map(|route| FilterChain {
        filters: vec![hcm_filter({
            let mut hcm = http_connection_manager(
                &stat,
                RouteSpecifier::Rds(Rds {
                    config_source: Some(ads_config_source()),
                    route_config_name: route.clone(),
                }),
                &model.mesh,
            );
            trace.apply(&mut hcm);
            hcm
        })],
        ..Default::default()
    });
    let tcp_chain = l.tcp.map(|(svc, sp)| FilterChain {
        filters: vec![tcp_proxy_filter(&stat, tcp_cluster(model, svc, sp, proxy))],
        ..Default::default()
    });
    let mut listener = Listener {
        name: l.name(),
        address: Some(socket_address(&l.address, l.port)),
        traffic_direction: TrafficDirection::Outbound as i32,
        // Captured listeners only receive connections handed over by virtualOutbound; they
        // must not also try to own the port.
        bind_to_port: (!l.bind_to_port).then_some(BoolValue { value: false }),
        ..Default::default()
    };
    for (svc, sp) in &l.tls {
        listener.filter_chains.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![svc.hostname.clone()],
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(
                &format!("outbound|{}||{}", sp.port, svc.hostname),
                tcp_cluster(model, svc, sp, proxy),
            )],
            ..Default::default()
        });
    }
    if !l.tls.is_empty() {
        listener.listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(ListenerFilterConfig::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
    match (http_chain, tcp_chain) {
        (Some(http), tcp) if l.sniff || tcp.is_some() || !l.bind_to_port => {
            // Sniff: HTTP/1.1 and h2c go to the route table, the rest is proxied as TCP —
            // to the service when one is TCP here, else (captured HTTP port, unknown IP)
            // passed through as Istio does.
            add_sniffing(&mut listener);
            listener.filter_chains.push(FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    application_protocols: HTTP_ALPN.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                ..http
            });
            listener.default_filter_chain = Some(tcp.unwrap_or_else(|| FilterChain {
                filters: vec![tcp_proxy_filter(
                    fallback,
                    ClusterSpecifier::Cluster(fallback.into()),
                )],
                ..Default::default()
            }));
        }
        (Some(http), _) => listener.filter_chains.push(http),
        // Beside SNI chains, plain TCP is whatever matched no server name.
        (None, Some(tcp)) if !l.tls.is_empty() => listener.default_filter_chain = Some(tcp),
        (None, Some(tcp)) => listener.filter_chains.push(tcp),
        (None, None) if !l.tls.is_empty() => {
            listener.default_filter_chain = Some(FilterChain {
                filters: vec![tcp_proxy_filter(
                    fallback,
                    ClusterSpecifier::Cluster(fallback.into()),
                )],
                ..Default::default()
            });
        }
        (None, None) => {}
    }
    listener
}

/// `virtualInbound` (captured ports) and bound listeners for Sidecar ingress ports without
/// capture. Nothing inbound for a NONE-mode proxy without a Sidecar ingress: its app owns its
/// ports, and the peer reaches it directly.
///
/// With mTLS on, each port's chains follow its PeerAuthentication mode (see [`super::mtls`]),
/// and AuthorizationPolicies become RBAC filters in front of every inbound chain.
pub fn inbound(
    model: &MeshModel,
    ports: &[InboundPort],
    proxy: &ProxyNode,
    security: &Security,
) -> Vec<Listener> {
    let policies = model.authz_policies_for(&proxy.namespace, &proxy.labels);
    let rbac = Rbac {
        // jwt_authn first: RBAC reads the payload it verified.
        http: super::jwt::jwt_filters(model, &proxy.namespace, &proxy.labels, false)
            .into_iter()
            .chain(authz::http_rbac_filters(&policies))
            .collect(),
        tcp: authz::network_rbac_filters(&policies),
        mesh: model.mesh.clone(),
        trace: HcmTracing::new(model, proxy, Class::SidecarInbound),
    };
    let mode = |port: u16| {
        if security.mtls {
            model.mtls_mode(&proxy.namespace, &proxy.labels, port)
        } else {
            MtlsMode::Disable
        }
    };
    let mut out = Vec::new();
    let mut chains = Vec::new();
    let mut any_tls = false;
    for p in ports {
        let cluster = inbound_cluster_name(p.port);
        let mode = mode(p.port);
        any_tls |= mode != MtlsMode::Disable;
        match &p.bind {
            Some(addr) => {
                let stat = format!("inbound_{addr}_{}", p.port);
                let mut l = Listener {
                    name: format!("{addr}_{}", p.port),
                    address: Some(socket_address(addr, p.port)),
                    traffic_direction: TrafficDirection::Inbound as i32,
                    ..Default::default()
                };
                if mode == MtlsMode::Disable {
                    let mut new_chains = inbound_chains(&stat, &cluster, p.protocol, None, &rbac);
                    if p.protocol == Protocol::Unknown {
                        add_sniffing(&mut l);
                        l.default_filter_chain = new_chains.pop();
                    }
                    l.filter_chains = new_chains;
                } else {
                    l.filter_chains =
                        secured_chains(&stat, &cluster, p, None, mode, &rbac, security);
                    l.listener_filters.push(tls_inspector());
                }
                out.push(l);
            }
            None if proxy.interception_mode.captures() => {
                let stat = format!("inbound_{WILDCARD}_{}", p.port);
                if mode == MtlsMode::Disable {
                    chains.extend(inbound_chains(
                        &stat,
                        &cluster,
                        p.protocol,
                        Some(p.port),
                        &rbac,
                    ));
                } else {
                    chains.extend(secured_chains(
                        &stat,
                        &cluster,
                        p,
                        Some(p.port),
                        mode,
                        &rbac,
                        security,
                    ));
                }
            }
            None => {}
        }
    }
    if proxy.interception_mode.captures() {
        chains.insert(
            0,
            FilterChain {
                // Connections to 15006 itself would loop forever.
                name: "virtualInbound-blackhole".into(),
                filter_chain_match: Some(port_match(VIRTUAL_INBOUND_PORT)),
                filters: vec![tcp_proxy_filter(
                    BLACKHOLE,
                    ClusterSpecifier::Cluster(BLACKHOLE.into()),
                )],
                ..Default::default()
            },
        );
        let mut l = Listener {
            name: "virtualInbound".into(),
            address: Some(socket_address(WILDCARD, VIRTUAL_INBOUND_PORT)),
            traffic_direction: TrafficDirection::Inbound as i32,
            listener_filters: vec![ListenerFilter {
                name: "envoy.filters.listener.original_dst".into(),
                config_type: Some(ListenerFilterConfig::TypedConfig(any(&OriginalDst {}))),
                ..Default::default()
            }],
            filter_chains: chains,
            // A port no Service declares is passed through in plaintext only when the
            // workload accepts plaintext: under STRICT (as in istiod, whose passthrough chains
            // then all require mTLS) a plaintext connection to it matches no chain and is
            // closed, so STRICT covers every port, not only the declared ones.
            default_filter_chain: (mode(0) != MtlsMode::Strict).then(|| FilterChain {
                name: "virtualInbound-catchall-tcp".into(),
                filters: vec![tcp_proxy_filter(
                    INBOUND_PASSTHROUGH,
                    ClusterSpecifier::Cluster(INBOUND_PASSTHROUGH.into()),
                )],
                ..Default::default()
            }),
            ..Default::default()
        };
        if any_tls {
            l.listener_filters.push(tls_inspector());
        }
        // Detect HTTP only on undeclared ports: on a declared TCP port a server-first
        // protocol (MySQL, SMTP) would wait forever for the client to speak.
        let sniffed: Vec<u16> = ports
            .iter()
            .filter(|p| p.bind.is_none() && p.protocol == Protocol::Unknown)
            .map(|p| p.port)
            .collect();
        if !sniffed.is_empty() {
            add_sniffing(&mut l);
            if let Some(f) = l.listener_filters.last_mut() {
                f.filter_disabled = Some(not_on_ports(&sniffed));
            }
        }
        out.push(l);
    }
    out
}

/// The inbound RBAC filters of a proxy (DENY first, then ALLOW), for HTTP and TCP chains.
struct Rbac {
    http: Vec<HttpFilter>,
    tcp: Vec<Filter>,
    /// The mesh-wide connection manager settings the HTTP chains carry beside the filters.
    mesh: MeshSettings,
    /// The server side's tracing (Telemetry/MeshConfig), the same on every inbound chain.
    trace: HcmTracing,
}

pub(super) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// A port under PeerAuthentication STRICT or PERMISSIVE: an mTLS chain (HTTP for HTTP
/// ports; TCP otherwise, since ALPN inside mTLS says nothing of the app protocol), plus, for
/// PERMISSIVE, the plaintext chains, and for STRICT an explicit plaintext chain to the black
/// hole so plaintext cannot fall through to the passthrough chain.
fn secured_chains(
    stat: &str,
    cluster: &str,
    p: &InboundPort,
    port: Option<u16>,
    mode: MtlsMode,
    rbac: &Rbac,
    security: &Security,
) -> Vec<FilterChain> {
    let tls_protocol = if p.protocol.is_http() {
        p.protocol
    } else {
        Protocol::Tcp
    };
    let mut out = Vec::new();
    for mut c in inbound_chains(stat, cluster, tls_protocol, port, rbac) {
        let m = c.filter_chain_match.get_or_insert_with(Default::default);
        m.transport_protocol = "tls".into();
        if mode == MtlsMode::Permissive {
            m.application_protocols = mtls::INBOUND_MESH_ALPN
                .iter()
                .map(|s| s.to_string())
                .collect();
        }
        c.transport_socket = Some(mtls::downstream_socket(&security.trust_domain));
        out.push(c);
    }
    match mode {
        MtlsMode::Strict => out.push(FilterChain {
            name: format!("{cluster}-plaintext-refused"),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "raw_buffer".into(),
                ..port.map(port_match).unwrap_or_default()
            }),
            filters: vec![tcp_proxy_filter(
                BLACKHOLE,
                ClusterSpecifier::Cluster(BLACKHOLE.into()),
            )],
            ..Default::default()
        }),
        _ => {
            for mut c in inbound_chains(stat, cluster, p.protocol, port, rbac) {
                c.filter_chain_match
                    .get_or_insert_with(Default::default)
                    .transport_protocol = "raw_buffer".into();
                out.push(c);
            }
        }
    }
    out
}

/// A listener-filter predicate true for every port except `ports`.
fn not_on_ports(ports: &[u16]) -> ListenerFilterChainMatchPredicate {
    let rules: Vec<_> = ports
        .iter()
        .map(|p| ListenerFilterChainMatchPredicate {
            rule: Some(Rule::DestinationPortRange(Int32Range {
                start: i32::from(*p),
                // Exclusive end.
                end: i32::from(*p) + 1,
            })),
        })
        .collect();
    // Envoy requires at least two rules in an `or_match`: one port is matched on its own.
    let inner = match <[ListenerFilterChainMatchPredicate; 1]>::try_from(rules) {
        Ok([one]) => one,
        Err(rules) => ListenerFilterChainMatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet { rules })),
        },
    };
    ListenerFilterChainMatchPredicate {
        rule: Some(Rule::NotMatch(Box::new(inner))),
    }
}

/// The chains for one inbound port: HTTP, TCP, or both behind ALPN detection (HTTP first, the
/// TCP chain last so a caller without a port match can use it as the default chain).
fn inbound_chains(
    stat: &str,
    cluster: &str,
    protocol: Protocol,
    port: Option<u16>,
    rbac: &Rbac,
) -> Vec<FilterChain> {
    let http = |alpn: bool| FilterChain {
        name: cluster.to_string(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: port.map(|p| UInt32Value {
                value: u32::from(p),
            }),
            application_protocols: if alpn {
                HTTP_ALPN.iter().map(|s| s.to_string()).collect()
            } else {
                Vec::new()
            },
            ..Default::default()
        }),
        filters: vec![hcm_filter({
            let mut hcm = http_connection_manager(
                stat,
                RouteSpecifier::RouteConfig(inbound_route_config(cluster)),
                &rbac.mesh,
            );
            hcm.http_filters.splice(0..0, rbac.http.iter().cloned());
            rbac.trace.apply(&mut hcm);
            hcm
        })],
        ..Default::default()
    };
    let tcp = || FilterChain {
        name: cluster.to_string(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: port.map(|p| UInt32Value {
                value: u32::from(p),
            }),
            ..Default::default()
        }),
        filters: rbac
            .tcp
            .iter()
            .cloned()
            .chain([tcp_proxy_filter(
                stat,
                ClusterSpecifier::Cluster(cluster.to_string()),
            )])
            .collect(),
        ..Default::default()
    };
    if protocol.is_http() {
        vec![http(false)]
    } else if protocol == Protocol::Unknown {
        vec![http(true), tcp()]
    } else {
        vec![tcp()]
    }
}

fn port_match(port: u16) -> FilterChainMatch {
    FilterChainMatch {
        destination_port: Some(UInt32Value {
            value: u32::from(port),
        }),
        ..Default::default()
    }
}

/// Turn on HTTP detection. Istio's settings: no detection timeout and carry on when it
/// fires, so server-first protocols must be declared rather than stall.
fn add_sniffing(l: &mut Listener) {
    l.listener_filters.push(ListenerFilter {
        name: "envoy.filters.listener.http_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(any(&HttpInspector {}))),
        ..Default::default()
    });
    l.listener_filters_timeout = Some(duration(std::time::Duration::ZERO));
    l.continue_on_listener_filters_timeout = true;
}

/// Where a TCP listener sends a service's traffic: the route table's `tcp` split when there
/// is one, else the service's cluster.
fn tcp_cluster(
    model: &MeshModel,
    svc: &Service,
    port: &ServicePort,
    proxy: &ProxyNode,
) -> ClusterSpecifier {
    tcp_split(&tcp_destinations(model, svc, port.port, proxy)).unwrap_or_else(|| {
        ClusterSpecifier::Cluster(outbound_cluster_name(port.port, None, &svc.hostname))
    })
}

/// `tcp_proxy`'s cluster for weighted clusters: the one cluster, or the weighted split;
/// `None` when there is none.
pub(super) fn tcp_split(weighted: &[(String, u32)]) -> Option<ClusterSpecifier> {
    match weighted {
        [] => None,
        [(name, _)] => Some(ClusterSpecifier::Cluster(name.clone())),
        many => Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        })),
    }
}

/// The HTTP connection manager of every HTTP chain, with Istio's settings: fault before
/// router (so per-route faults from RDS take effect), websocket upgrades, path
/// normalisation, no idle stream timeout, no trust in client-supplied addresses.
pub(super) fn http_connection_manager(
    stat_prefix: &str,
    routes: RouteSpecifier,
    mesh: &MeshSettings,
) -> HttpConnectionManager {
    // meshConfig.pathNormalization, as istiod writes it.
    let (normalize, merge_slashes, escaped_slashes) = match mesh.path_normalization {
        PathNormalization::None => (false, false, PathWithEscapedSlashesAction::KeepUnchanged),
        PathNormalization::Base => (true, false, PathWithEscapedSlashesAction::KeepUnchanged),
        PathNormalization::MergeSlashes => {
            (true, true, PathWithEscapedSlashesAction::KeepUnchanged)
        }
        PathNormalization::DecodeAndMergeSlashes => {
            (true, true, PathWithEscapedSlashesAction::UnescapeAndForward)
        }
    };
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(routes),
        http_filters: vec![
            HttpFilter {
                name: "envoy.filters.http.fault".into(),
                config_type: Some(HttpFilterConfig::TypedConfig(any(&HttpFault::default()))),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(HttpFilterConfig::TypedConfig(any(&Router::default()))),
                ..Default::default()
            },
        ],
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        use_remote_address: Some(BoolValue { value: false }),
        normalize_path: Some(BoolValue { value: normalize }),
        merge_slashes,
        path_with_escaped_slashes_action: escaped_slashes as i32,
        stream_idle_timeout: Some(duration(std::time::Duration::ZERO)),
        ..Default::default()
    }
}

pub(super) fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(FilterConfig::TypedConfig(any(&hcm))),
    }
}

pub(super) fn tcp_proxy_filter(stat_prefix: &str, cluster: ClusterSpecifier) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(cluster),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(FilterConfig::TypedConfig(any(&proxy))),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::address::Address as A;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use mast_mesh_config::model::{Resolution, ResourceRef};
    use prost::Message;

    use super::super::node::InterceptionMode;
    use super::super::plan;
    use super::*;

    fn service(name: &str, port: u16, protocol: Protocol, vip: Option<&str>) -> Service {
        Service {
            hostname: format!("{name}.default.svc.cluster.local"),
            name: name.into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: "p".into(),
                port,
                target_port: None,
                protocol,
            }],
            selector: None,
            endpoints: vec![],
            addresses: vip.into_iter().map(String::from).collect(),
            resolution: Resolution::Static,
            mesh_external: false,
            export_to: vec![],
            source: ResourceRef::default(),
        }
    }

    fn model() -> MeshModel {
        let mut m = MeshModel::default();
        for s in [
            service("web", 8080, Protocol::Http, Some("10.96.0.5")),
            service("db", 5432, Protocol::Tcp, Some("10.96.0.6")),
            service("cache", 5432, Protocol::Tcp, Some("10.96.0.7")),
            service("odd", 9000, Protocol::Unknown, Some("10.96.0.8")),
            service("ext-a", 443, Protocol::Tls, None),
            service("ext-b", 443, Protocol::Https, None),
        ] {
            m.services.insert(s.hostname.clone(), s);
        }
        m
    }

    fn proxy(mode: InterceptionMode) -> ProxyNode {
        ProxyNode {
            id: "sidecar~10.1.0.1~c.default~default.svc.cluster.local".into(),
            ip: "10.1.0.1".into(),
            namespace: "default".into(),
            interception_mode: mode,
            ..Default::default()
        }
    }

    fn listeners(mode: InterceptionMode) -> Vec<Listener> {
        let m = model();
        let p = proxy(mode);
        outbound(&m, &plan::outbound(&m, &p), &p)
    }

    fn addr(l: &Listener) -> (String, u32) {
        let Some(A::SocketAddress(sa)) = l.address.as_ref().and_then(|a| a.address.clone()) else {
            panic!("no address")
        };
        let Some(PortSpecifier::PortValue(p)) = sa.port_specifier else {
            panic!("no port")
        };
        (sa.address, p)
    }

    fn rds_name(chain: &FilterChain) -> String {
        let Some(FilterConfig::TypedConfig(a)) = &chain.filters[0].config_type else {
            panic!()
        };
        let hcm = HttpConnectionManager::decode(a.value.as_slice()).unwrap();
        let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!("not RDS")
        };
        rds.route_config_name
    }

    /// Envoy refuses an `or_match` with fewer than two rules
    /// (`MatchSetValidationError.Rules: value must contain at least 2 item(s)`): a pod with a
    /// single sniffed port gets the port range on its own.
    #[test]
    fn one_sniffed_port_is_not_an_or_match_of_one() {
        let one = not_on_ports(&[7100]);
        let Some(Rule::NotMatch(inner)) = one.rule else {
            panic!("{one:?}");
        };
        assert!(
            matches!(inner.rule, Some(Rule::DestinationPortRange(_))),
            "{inner:?}"
        );
        let two = not_on_ports(&[7100, 7200]);
        let Some(Rule::NotMatch(inner)) = two.rule else {
            panic!("{two:?}");
        };
        assert!(matches!(&inner.rule, Some(Rule::OrMatch(set)) if set.rules.len() == 2));
    }

    #[test]
    fn none_mode_binds_loopback_per_port() {
        let ls = listeners(InterceptionMode::None);
        let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "127.0.0.1_443",
                "127.0.0.1_5432",
                "127.0.0.1_8080",
                "127.0.0.1_9000"
            ]
        );
        for l in &ls {
            assert_eq!(addr(l).0, "127.0.0.1");
            assert!(l.bind_to_port.is_none(), "{} must bind", l.name);
        }
        let web = &ls[2];
        assert_eq!(web.filter_chains.len(), 1);
        assert!(
            web.listener_filters.is_empty(),
            "declared HTTP needs no sniffing"
        );
        assert_eq!(rds_name(&web.filter_chains[0]), "8080");
    }

    #[test]
    fn captured_mode_uses_vips_for_tcp_and_virtual_listeners() {
        let ls = listeners(InterceptionMode::Redirect);
        let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "0.0.0.0_443",
                "0.0.0.0_8080",
                "10.96.0.6_5432",
                "10.96.0.7_5432",
                "10.96.0.8_9000",
                "virtualOutbound"
            ]
        );
        let tls = &ls[0];
        let snis: Vec<&str> = tls
            .filter_chains
            .iter()
            .map(|c| c.filter_chain_match.as_ref().unwrap().server_names[0].as_str())
            .collect();
        assert_eq!(
            snis,
            [
                "ext-a.default.svc.cluster.local",
                "ext-b.default.svc.cluster.local"
            ]
        );
        assert_eq!(
            tls.listener_filters[0].name,
            "envoy.filters.listener.tls_inspector"
        );
        let web = &ls[1];
        assert_eq!(web.bind_to_port, Some(BoolValue { value: false }));
        assert_eq!(rds_name(&web.filter_chains[0]), "8080");
        assert!(
            web.default_filter_chain.is_some(),
            "non-HTTP passes through"
        );
        let odd = &ls[4];
        assert_eq!(
            rds_name(&odd.filter_chains[0]),
            "odd.default.svc.cluster.local:9000"
        );
        let vo = ls.last().unwrap();
        assert_eq!(vo.use_original_dst, Some(BoolValue { value: true }));
        assert_eq!(addr(vo), ("0.0.0.0".to_string(), 15001));
    }

    fn hcm_of(chain: &FilterChain) -> HttpConnectionManager {
        let Some(FilterConfig::TypedConfig(a)) = &chain.filters[0].config_type else {
            panic!()
        };
        HttpConnectionManager::decode(a.value.as_slice()).unwrap()
    }

    #[test]
    fn path_normalization_follows_mesh_config() {
        use mast_mesh_config::model::PathNormalization as Level;
        let port = InboundPort {
            port: 9080,
            protocol: Protocol::Http,
            endpoint: ("127.0.0.1".into(), 9080),
            bind: None,
            services: Vec::new(),
        };
        for (level, normalize, merge, escaped) in [
            (
                Level::None,
                false,
                false,
                PathWithEscapedSlashesAction::KeepUnchanged,
            ),
            (
                Level::Base,
                true,
                false,
                PathWithEscapedSlashesAction::KeepUnchanged,
            ),
            (
                Level::MergeSlashes,
                true,
                true,
                PathWithEscapedSlashesAction::KeepUnchanged,
            ),
            (
                Level::DecodeAndMergeSlashes,
                true,
                true,
                PathWithEscapedSlashesAction::UnescapeAndForward,
            ),
        ] {
            let mut m = model();
            m.mesh.path_normalization = level;
            let p = proxy(InterceptionMode::Redirect);
            let out = outbound(&m, &plan::outbound(&m, &p), &p);
            let inb = inbound(&m, std::slice::from_ref(&port), &p, &Security::default());
            let http_out = out
                .iter()
                .find(|l| l.name == "0.0.0.0_8080")
                .and_then(|l| l.filter_chains.first())
                .unwrap();
            let http_in = inb[0]
                .filter_chains
                .iter()
                .find(|c| c.name.contains("9080"))
                .unwrap();
            for hcm in [hcm_of(http_out), hcm_of(http_in)] {
                assert_eq!(
                    hcm.normalize_path.map(|b| b.value),
                    Some(normalize),
                    "{level:?}"
                );
                assert_eq!(hcm.merge_slashes, merge, "{level:?}");
                assert_eq!(
                    hcm.path_with_escaped_slashes_action, escaped as i32,
                    "{level:?}"
                );
            }
        }
    }

    #[test]
    fn inbound_chains_per_port() {
        let ports = [
            InboundPort {
                port: 9080,
                protocol: Protocol::Http,
                endpoint: ("127.0.0.1".into(), 9080),
                bind: None,
                services: Vec::new(),
            },
            InboundPort {
                port: 3306,
                protocol: Protocol::Tcp,
                endpoint: ("127.0.0.1".into(), 3306),
                bind: None,
                services: Vec::new(),
            },
        ];
        let ls = inbound(
            &MeshModel::default(),
            &ports,
            &proxy(InterceptionMode::Redirect),
            &Security::default(),
        );
        assert_eq!(ls.len(), 1);
        let vi = &ls[0];
        assert_eq!(vi.name, "virtualInbound");
        assert_eq!(addr(vi), ("0.0.0.0".to_string(), 15006));
        let ports: Vec<u32> = vi
            .filter_chains
            .iter()
            .map(|c| {
                c.filter_chain_match
                    .as_ref()
                    .unwrap()
                    .destination_port
                    .unwrap()
                    .value
            })
            .collect();
        assert_eq!(ports, [15006, 9080, 3306]);
        // Only original_dst: no HTTP detection without undeclared ports.
        assert_eq!(vi.listener_filters.len(), 1);
        assert!(
            inbound(
                &MeshModel::default(),
                &[],
                &proxy(InterceptionMode::None),
                &Security::default()
            )
            .is_empty()
        );
    }

    /// Under STRICT a plaintext connection to a port no Service declares matches no chain
    /// (istiod's passthrough chains then all require mTLS); under PERMISSIVE it is passed
    /// through, from 127.0.0.6 so the capture rules let it reach the app.
    #[test]
    fn strict_leaves_no_plaintext_passthrough() {
        let mut model = MeshModel::default();
        let strict = |mode| mast_mesh_config::security::PeerAuthn {
            namespace: "istio-system".into(),
            selector: None,
            mode,
            port_modes: Default::default(),
            source: Default::default(),
        };
        let security = Security {
            mtls: true,
            ..Security::default()
        };
        let p = proxy(InterceptionMode::Redirect);
        model.peer_authentications = vec![strict(MtlsMode::Strict)];
        let ls = inbound(&model, &[], &p, &security);
        assert!(ls[0].default_filter_chain.is_none(), "STRICT: no catch-all");
        model.peer_authentications = vec![strict(MtlsMode::Permissive)];
        let ls = inbound(&model, &[], &p, &security);
        assert_eq!(
            ls[0].default_filter_chain.as_ref().map(|c| c.name.as_str()),
            Some("virtualInbound-catchall-tcp")
        );
    }

    #[test]
    fn undeclared_inbound_port_is_sniffed_only_there() {
        let ports = [
            InboundPort {
                port: 7000,
                protocol: Protocol::Unknown,
                endpoint: ("127.0.0.1".into(), 7000),
                bind: None,
                services: Vec::new(),
            },
            InboundPort {
                port: 3306,
                protocol: Protocol::Tcp,
                endpoint: ("127.0.0.1".into(), 3306),
                bind: None,
                services: Vec::new(),
            },
        ];
        let vi = &inbound(
            &MeshModel::default(),
            &ports,
            &proxy(InterceptionMode::Redirect),
            &Security::default(),
        )[0];
        let at_7000: Vec<&FilterChain> = vi
            .filter_chains
            .iter()
            .filter(|c| {
                c.filter_chain_match.as_ref().unwrap().destination_port
                    == Some(UInt32Value { value: 7000 })
            })
            .collect();
        assert_eq!(at_7000.len(), 2, "HTTP and TCP chains");
        assert_eq!(
            at_7000[0]
                .filter_chain_match
                .as_ref()
                .unwrap()
                .application_protocols,
            HTTP_ALPN
        );
        let inspector = vi
            .listener_filters
            .iter()
            .find(|f| f.name == "envoy.filters.listener.http_inspector")
            .expect("sniffing on");
        let Some(Rule::NotMatch(inner)) = &inspector.filter_disabled.as_ref().unwrap().rule else {
            panic!("{inspector:?}")
        };
        // One sniffed port: the range on its own (an `or_match` needs two rules).
        assert_eq!(
            inner.rule,
            Some(Rule::DestinationPortRange(Int32Range {
                start: 7000,
                end: 7001
            }))
        );
    }
}
