//! CDS: one cluster per service port (`outbound|<port>||<host>`) and per DestinationRule
//! subset (`outbound|<port>|<subset>|<host>`), with the DestinationRule's load balancing,
//! connection pool and outlier detection mapped as istiod maps them; Istio's fixed
//! `PassthroughCluster`, `BlackHoleCluster` and `InboundPassthroughCluster`; and
//! `inbound|<port>||` for the ports the proxy's own workload serves.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as HttpProtocolOptionsCommon,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use mast_mesh_config::model::{
    LoadBalancer, MeshModel, Protocol, Resolution, Service, ServicePort, TrafficPolicy,
};

use super::{any, duration, endpoints, merged_policy, outbound_cluster_name};
use crate::ads::{CLUSTER_TYPE, ProxyResources, Resource};

/// Istio's default connect timeout.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Istio leaves circuit breakers open unless a DestinationRule closes them.
const UNLIMITED: u32 = u32::MAX;

pub fn outbound(model: &MeshModel, services: &[&Service], out: &mut ProxyResources) {
    for svc in services {
        let dr = model.destination_policies.get(&svc.hostname);
        for port in &svc.ports {
            let policy = merged_policy(dr.map(|d| &d.traffic_policy), None, port.port);
            let name = outbound_cluster_name(port.port, None, &svc.hostname);
            insert(out, service_cluster(name, svc, port, &policy));
            for subset in dr.map(|d| d.subsets.as_slice()).unwrap_or_default() {
                let policy = merged_policy(
                    dr.map(|d| &d.traffic_policy),
                    subset.traffic_policy.as_ref(),
                    port.port,
                );
                let name = outbound_cluster_name(port.port, Some(&subset.name), &svc.hostname);
                insert(out, service_cluster(name, svc, port, &policy));
            }
        }
    }
    insert(out, original_dst("PassthroughCluster"));
    insert(out, original_dst("InboundPassthroughCluster"));
    insert(
        out,
        Cluster {
            name: "BlackHoleCluster".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
            connect_timeout: Some(duration(CONNECT_TIMEOUT)),
            ..Default::default()
        },
    );
}

/// `inbound|<port>||`: to the app on loopback, where the proxy's own workload listens.
pub fn inbound(own: &[&Service], out: &mut ProxyResources) {
    for svc in own {
        for port in &svc.ports {
            let target = match &port.target_port {
                Some(mast_mesh_config::model::TargetPort::Number(n)) => *n,
                _ => port.port,
            };
            let name = format!("inbound|{target}||");
            let cluster = Cluster {
                name: name.clone(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
                connect_timeout: Some(duration(CONNECT_TIMEOUT)),
                load_assignment: Some(ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: vec![endpoints::locality(vec![endpoints::lb_endpoint(
                        "127.0.0.1",
                        target,
                        None,
                    )])],
                    ..Default::default()
                }),
                ..Default::default()
            };
            insert(out, cluster);
        }
    }
}

fn insert(out: &mut ProxyResources, cluster: Cluster) {
    out.insert(
        CLUSTER_TYPE,
        Resource::new(cluster.name.clone(), CLUSTER_TYPE, &cluster),
    );
}

/// Whether a service's cluster gets its endpoints over EDS (vs. DNS or original destination).
pub fn is_eds(svc: &Service) -> bool {
    svc.resolution == Resolution::Static
}

fn service_cluster(name: String, svc: &Service, port: &ServicePort, policy: &TrafficPolicy) -> Cluster {
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(
            policy
                .connection_pool
                .as_ref()
                .and_then(|p| p.connect_timeout)
                .unwrap_or(CONNECT_TIMEOUT),
        )),
        lb_policy: lb_policy(policy.load_balancer.as_ref()) as i32,
        circuit_breakers: Some(circuit_breakers(policy)),
        outlier_detection: policy.outlier_detection.as_ref().map(outlier_detection),
        ..Default::default()
    };
    match svc.resolution {
        Resolution::Static => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: name,
            });
        }
        Resolution::Dns => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
            c.load_assignment = Some(endpoints::dns_assignment(&name, svc, port));
        }
        Resolution::None => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32));
            c.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    let pool = policy.connection_pool.as_ref();
    let h2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc)
        || pool.and_then(|p| p.h2_upgrade) == Some(true);
    let max_requests = pool.and_then(|p| p.max_requests_per_connection);
    let idle = pool.and_then(|p| p.idle_timeout);
    if h2 || max_requests.is_some() || idle.is_some() {
        let protocol_config = if h2 {
            ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
        } else {
            ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
        };
        let options = HttpProtocolOptions {
            common_http_protocol_options: Some(HttpProtocolOptionsCommon {
                max_requests_per_connection: max_requests.map(|value| UInt32Value { value }),
                idle_timeout: idle.map(duration),
                ..Default::default()
            }),
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(protocol_config),
                },
            )),
            ..Default::default()
        };
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            any(&options),
        );
    }
    c
}

pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn original_dst(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        ..Default::default()
    }
}

fn lb_policy(lb: Option<&LoadBalancer>) -> LbPolicy {
    match lb {
        None | Some(LoadBalancer::LeastRequest) => LbPolicy::LeastRequest,
        Some(LoadBalancer::RoundRobin) => LbPolicy::RoundRobin,
        Some(LoadBalancer::Random) => LbPolicy::Random,
        Some(LoadBalancer::ConsistentHash(_)) => LbPolicy::RingHash,
        Some(LoadBalancer::Passthrough) => LbPolicy::ClusterProvided,
    }
}

fn circuit_breakers(policy: &TrafficPolicy) -> CircuitBreakers {
    let pool = policy.connection_pool.clone().unwrap_or_default();
    let v = |n: Option<u32>| Some(UInt32Value { value: n.unwrap_or(UNLIMITED) });
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: v(pool.max_connections),
            max_pending_requests: v(pool.http1_max_pending_requests),
            max_requests: v(pool.http2_max_requests),
            max_retries: v(pool.max_retries),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outlier_detection(o: &mast_mesh_config::model::OutlierDetection) -> OutlierDetection {
    let v = |n: Option<u32>| n.map(|value| UInt32Value { value });
    OutlierDetection {
        consecutive_5xx: v(o.consecutive_5xx_errors),
        consecutive_gateway_failure: v(o.consecutive_gateway_errors),
        // Istio turns the "enforcing" knobs on only for what the user configured.
        enforcing_consecutive_5xx: o
            .consecutive_5xx_errors
            .map(|_| UInt32Value { value: 100 })
            .or(Some(UInt32Value { value: 0 })),
        enforcing_consecutive_gateway_failure: o
            .consecutive_gateway_errors
            .map(|_| UInt32Value { value: 100 })
            .or(Some(UInt32Value { value: 0 })),
        interval: o.interval.map(duration),
        base_ejection_time: o.base_ejection_time.map(duration),
        max_ejection_percent: v(o.max_ejection_percent),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        ..Default::default()
    }
}
