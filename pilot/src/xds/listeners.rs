//! LDS: how traffic enters the proxy.
//!
//! With iptables capture (REDIRECT/TPROXY) every outbound connection lands on
//! `virtualOutbound` (0.0.0.0:15001), which hands it by original destination port to a
//! non-binding per-port listener (`0.0.0.0_<port>`: HTTP routed by RDS route config `<port>`,
//! or TCP proxied); inbound connections land on `virtualInbound` (0.0.0.0:15006) and go to
//! `inbound|<port>||`. Without capture (INTERCEPTION_MODE=NONE) the app calls
//! `127.0.0.1:<service port>` directly, so those listeners bind there — as Istio's sidecar
//! does in NONE mode. Ports whose protocol is unknown get Istio's sniffing: an HTTP chain
//! chosen by `http_inspector`, TCP otherwise.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier, UpgradeConfig,
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
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use mast_mesh_config::model::{MeshModel, Protocol, Service, ServicePort, TargetPort};

use super::clusters::ads_config_source;
use super::endpoints::socket_address;
use super::routes::{inbound_route_config, tcp_destinations};
use super::{Interception, ProxyNode, any, outbound_cluster_name};
use crate::ads::{LISTENER_TYPE, ProxyResources, Resource};

pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;

pub fn outbound(model: &MeshModel, services: &[&Service], proxy: &ProxyNode, out: &mut ProxyResources) {
    let none = proxy.interception == Interception::None;
    let bind_ip = if none { "127.0.0.1" } else { "0.0.0.0" };
    // Service ports, grouped: one listener per port (HTTP shares it through RDS; TCP takes
    // the first service on the port, as istiod does when there are no VIPs).
    let mut by_port: BTreeMap<u16, Vec<(&Service, &ServicePort)>> = BTreeMap::new();
    for svc in services {
        for port in &svc.ports {
            by_port.entry(port.port).or_default().push((svc, port));
        }
    }
    for (port, entries) in &by_port {
        if !none && matches!(*port, VIRTUAL_OUTBOUND_PORT | VIRTUAL_INBOUND_PORT) {
            continue;
        }
        let any_http = entries.iter().any(|(_, p)| p.protocol.is_http());
        let unknown = entries.iter().any(|(_, p)| p.protocol == Protocol::Unknown);
        let tcp_target = entries
            .iter()
            .find(|(_, p)| !p.protocol.is_http())
            .copied();
        let name = format!("{bind_ip}_{port}");
        let stat = format!("outbound_{bind_ip}_{port}");
        let http_chain = || FilterChain {
            filters: vec![hcm_filter(http_connection_manager(
                &stat,
                RouteSpecifier::Rds(Rds {
                    config_source: Some(ads_config_source()),
                    route_config_name: port.to_string(),
                }),
            ))],
            ..Default::default()
        };
        let tcp_chain = |svc: &Service, sp: &ServicePort| FilterChain {
            filters: vec![tcp_proxy_filter(&stat, tcp_cluster(model, svc, sp))],
            ..Default::default()
        };
        let mut listener = Listener {
            name,
            address: Some(socket_address(bind_ip, *port)),
            traffic_direction: TrafficDirection::Outbound as i32,
            bind_to_port: if none { None } else { Some(BoolValue { value: false }) },
            ..Default::default()
        };
        if unknown || (any_http && tcp_target.is_some()) {
            // Sniff: HTTP/1.1 and h2c go to the route table, the rest is proxied as TCP.
            listener.listener_filters.push(http_inspector());
            listener.filter_chains.push(FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    application_protocols: vec!["http/1.1".into(), "h2c".into()],
                    ..Default::default()
                }),
                ..http_chain()
            });
            if let Some((svc, sp)) = tcp_target {
                listener.default_filter_chain = Some(tcp_chain(svc, sp));
            }
        } else if any_http {
            listener.filter_chains.push(http_chain());
        } else if let Some((svc, sp)) = tcp_target {
            listener.filter_chains.push(tcp_chain(svc, sp));
        }
        insert(out, listener);
    }
    if !none {
        insert(
            out,
            Listener {
                name: "virtualOutbound".into(),
                address: Some(socket_address("0.0.0.0", VIRTUAL_OUTBOUND_PORT)),
                use_original_dst: Some(BoolValue { value: true }),
                traffic_direction: TrafficDirection::Outbound as i32,
                default_filter_chain: Some(FilterChain {
                    name: "PassthroughFilterChain".into(),
                    filters: vec![tcp_proxy_filter(
                        "PassthroughCluster",
                        ClusterSpecifier::Cluster("PassthroughCluster".into()),
                    )],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
}

/// `virtualInbound`: a filter chain per port the proxy's workload serves.
pub fn inbound(own: &[&Service], proxy: &ProxyNode, out: &mut ProxyResources) {
    if proxy.interception == Interception::None {
        // Without capture nothing is redirected to 15006; inbound traffic reaches the app
        // directly (mTLS termination for NONE mode comes with citadel).
        return;
    }
    let mut chains = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for svc in own {
        for port in &svc.ports {
            let target = match &port.target_port {
                Some(TargetPort::Number(n)) => *n,
                _ => port.port,
            };
            if !seen.insert(target) {
                continue;
            }
            let cluster = format!("inbound|{target}||");
            let stat = format!("inbound_0.0.0.0_{target}");
            let filter = if port.protocol.is_http() || port.protocol == Protocol::Unknown {
                hcm_filter(http_connection_manager(
                    &stat,
                    RouteSpecifier::RouteConfig(inbound_route_config(&cluster)),
                ))
            } else {
                tcp_proxy_filter(&stat, ClusterSpecifier::Cluster(cluster.clone()))
            };
            chains.push(FilterChain {
                name: cluster,
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(target),
                    }),
                    ..Default::default()
                }),
                filters: vec![filter],
                ..Default::default()
            });
        }
    }
    insert(
        out,
        Listener {
            name: "virtualInbound".into(),
            address: Some(socket_address("0.0.0.0", VIRTUAL_INBOUND_PORT)),
            traffic_direction: TrafficDirection::Inbound as i32,
            listener_filters: vec![ListenerFilter {
                name: "envoy.filters.listener.original_dst".into(),
                config_type: Some(ListenerFilterConfig::TypedConfig(any(&OriginalDst {}))),
                ..Default::default()
            }],
            filter_chains: chains,
            default_filter_chain: Some(FilterChain {
                name: "InboundPassthroughFilterChain".into(),
                filters: vec![tcp_proxy_filter(
                    "InboundPassthroughCluster",
                    ClusterSpecifier::Cluster("InboundPassthroughCluster".into()),
                )],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
}

fn insert(out: &mut ProxyResources, listener: Listener) {
    out.insert(
        LISTENER_TYPE,
        Resource::new(listener.name.clone(), LISTENER_TYPE, &listener),
    );
}

fn tcp_cluster(model: &MeshModel, svc: &Service, port: &ServicePort) -> ClusterSpecifier {
    let weighted = tcp_destinations(model, svc, port.port);
    match weighted.as_slice() {
        [] => ClusterSpecifier::Cluster(outbound_cluster_name(port.port, None, &svc.hostname)),
        [(name, _)] => ClusterSpecifier::Cluster(name.clone()),
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        }),
    }
}

fn http_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.http_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(any(&HttpInspector {}))),
        ..Default::default()
    }
}

fn http_connection_manager(stat_prefix: &str, routes: RouteSpecifier) -> HttpConnectionManager {
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
        ..Default::default()
    }
}

fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(FilterConfig::TypedConfig(any(&hcm))),
    }
}

fn tcp_proxy_filter(stat_prefix: &str, cluster: ClusterSpecifier) -> Filter {
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
