//! CDS: one cluster per service port (`outbound|<port>||<fqdn>`) and per DestinationRule
//! subset (`outbound|<port>|<subset>|<fqdn>`), with the DestinationRule's load balancing,
//! connection pool and outlier detection mapped as istiod maps them; Istio's fixed
//! `PassthroughCluster`, `BlackHoleCluster` and `InboundPassthroughCluster`; and
//! `inbound|<port>||` for the ports the proxy's own workload serves.
//!
//! Inbound clusters are STATIC to `127.0.0.1:<port>` (Istio before 1.10) rather than
//! ORIGINAL_DST via 127.0.0.6 (Istio 1.10+): an original destination exists only when iptables
//! redirected the connection, and `INTERCEPTION_MODE=NONE` proxies (the e2e tests' real Envoy)
//! have none. The cost is that the app must listen on loopback or the wildcard address.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
    LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, UpstreamConnectionOptions,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttpOptions, TcpKeepalive,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;
use mast_mesh_config::model::{
    Labels, LoadBalancer, MeshModel, Protocol, Resolution, Service, ServicePort, Subset,
    TlsMode, TrafficPolicy,
};

use super::endpoints;
use super::mtls::{self, Security};
use super::plan::{InboundPort, ServiceRef};
use super::upstream_tls::{self, AutoSni};
use super::{any, duration, merged_policy, outbound_cluster_name, string_value};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{BindConfig, SocketAddress};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

/// Istio's default connect timeout.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Istio leaves circuit breakers open unless a DestinationRule closes them.
const UNLIMITED: u32 = u32::MAX;
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";
/// Istio's `InboundPassthroughBindIpv4`.
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";

/// Clusters for every port (and subset) of `services`, plus Istio's fixed clusters, for a
/// sidecar.
pub fn outbound(model: &MeshModel, services: &[&Service], security: &Security) -> Vec<Cluster> {
    outbound_for(model, services, security, false)
}

/// [`outbound`] for a sidecar or (`router`) a gateway: a DestinationRule's `credentialName`
/// is honoured on gateways only, as istiod does.
pub fn outbound_for(
    model: &MeshModel,
    services: &[&Service],
    security: &Security,
    router: bool,
) -> Vec<Cluster> {
    let mut out = Vec::new();
    let files = if security.mtls {
        upstream_tls::Files::Agent
    } else {
        upstream_tls::Files::Direct
    };
    for svc in services {
        let dr = model.destination_policies.get(&svc.hostname);
        let base = dr.map(|d| &d.traffic_policy);
        let identities = security
            .mtls
            .then(|| mtls::service_identities(model, svc, &security.trust_domain));
        let build = |subset: Option<&Subset>, port: &ServicePort| {
            let name =
                outbound_cluster_name(port.port, subset.map(|s| s.name.as_str()), &svc.hostname);
            let over = subset.and_then(|s| s.traffic_policy.as_ref());
            let policy = merged_policy(base, over, port.port);
            let labels = subset.map(|s| s.labels.clone()).unwrap_or_default();
            let mut c = service_cluster(name, svc, port, &policy, &labels);
            let mut options = http_options(port.protocol, &policy);
            let h2 = is_h2(port.protocol, &policy);
            let subset_name = subset.map(|s| s.name.as_str());
            let origination = policy
                .tls
                .as_ref()
                .and_then(|t| upstream_tls::origination(t, h2, router, files));
            if let Some((socket, auto)) = origination {
                c.transport_socket = Some(socket);
                if auto != AutoSni::default() {
                    let o = options.get_or_insert_with(explicit_http1);
                    let up = o.upstream_http_protocol_options.get_or_insert_default();
                    up.auto_sni = auto.auto_sni;
                    up.auto_san_validation = auto.auto_san_validation;
                }
            } else if let Some(ids) = &identities {
                apply_mtls(&mut c, svc, port.port, subset_name, &policy, ids);
            }
            if let Some(options) = options {
                c.typed_extension_protocol_options
                    .insert(HTTP_OPTIONS_KEY.into(), any(&options));
            }
            c
        };
        for port in &svc.ports {
            out.push(build(None, port));
            for subset in dr.map(|d| d.subsets.as_slice()).unwrap_or_default() {
                out.push(build(Some(subset), port));
            }
        }
    }
    out.push(original_dst(PASSTHROUGH));
    out.push(Cluster {
        name: BLACKHOLE.into(),
        cluster_discovery_type: Some(discovery(DiscoveryType::Static)),
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        ..Default::default()
    });
    out
}

/// `inbound|<port>||` for each served port, and the passthrough for ports it doesn't know.
pub fn inbound(ports: &[InboundPort], capture: bool) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = ports
        .iter()
        .map(|p| {
            let name = inbound_cluster_name(p.port);
            let (host, port) = &p.endpoint;
            let mut c = Cluster {
                cluster_discovery_type: Some(discovery(DiscoveryType::Static)),
                connect_timeout: Some(duration(CONNECT_TIMEOUT)),
                circuit_breakers: Some(circuit_breakers(&TrafficPolicy::default())),
                load_assignment: Some(endpoints::static_assignment(&name, host, *port)),
                metadata: services_metadata(&p.services),
                name,
                ..Default::default()
            };
            // A gRPC or HTTP/2 port reaches the app over HTTP/2, as istiod's inbound
            // clusters do (a gRPC server speaks nothing else).
            let policy = TrafficPolicy::default();
            if is_h2(p.protocol, &policy)
                && let Some(options) = http_options(p.protocol, &policy)
            {
                c.typed_extension_protocol_options
                    .insert(HTTP_OPTIONS_KEY.into(), any(&options));
            }
            c
        })
        .collect();
    if capture {
        // Istio's InboundPassthroughCluster dials from 127.0.0.6, which the capture rules
        // let out (`-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN`): from the proxy's own
        // UID to the pod's own IP it would otherwise be redirected to 15006 again, a loop
        // that ends when the proxy runs out of file descriptors.
        let mut c = original_dst(INBOUND_PASSTHROUGH);
        c.upstream_bind_config = Some(BindConfig {
            source_address: Some(SocketAddress {
                address: INBOUND_PASSTHROUGH_BIND.into(),
                port_specifier: Some(PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        });
        out.push(c);
    }
    out
}

/// `filter_metadata.istio.services`: the services a cluster serves, as istiod records them
/// for telemetry (the receiving proxy labels `destination_service` from them, whatever Host
/// the request names — a gateway forwards the public one).
fn services_metadata(services: &[ServiceRef]) -> Option<Metadata> {
    if services.is_empty() {
        return None;
    }
    let list = services
        .iter()
        .map(|s| Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [
                    ("host".to_string(), string_value(&s.host)),
                    ("name".to_string(), string_value(&s.name)),
                    ("namespace".to_string(), string_value(&s.namespace)),
                ]
                .into_iter()
                .collect(),
            })),
        })
        .collect();
    let services = Value {
        kind: Some(Kind::ListValue(ListValue { values: list })),
    };
    Some(Metadata {
        filter_metadata: [(
            "istio".to_string(),
            Struct {
                fields: [("services".to_string(), services)].into_iter().collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    })
}

/// `inbound|<port>||`, Istio's name for the cluster to the local app.
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Whether a service's clusters get their endpoints over EDS (vs. DNS or original destination).
pub fn is_eds(svc: &Service) -> bool {
    svc.resolution == Resolution::Static
}

/// The config source of every dynamic resource: the ADS stream the proxy is already on.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        // Istio: never give up waiting for a resource (0s), so a slow push can't leave a
        // listener serving with a missing route table.
        initial_fetch_timeout: Some(duration(std::time::Duration::ZERO)),
        ..Default::default()
    }
}

fn discovery(t: DiscoveryType) -> ClusterDiscoveryType {
    ClusterDiscoveryType::Type(t as i32)
}

fn service_cluster(
    name: String,
    svc: &Service,
    port: &ServicePort,
    policy: &TrafficPolicy,
    subset: &Labels,
) -> Cluster {
    let pool = policy.connection_pool.as_ref();
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(
            pool.and_then(|p| p.connect_timeout)
                .unwrap_or(CONNECT_TIMEOUT),
        )),
        lb_policy: lb_policy(policy.load_balancer.as_ref()) as i32,
        circuit_breakers: Some(circuit_breakers(policy)),
        outlier_detection: policy.outlier_detection.as_ref().map(outlier_detection),
        ..Default::default()
    };
    if let Some(o) = &policy.outlier_detection {
        // Istio: with outlier detection, panic mode is off unless minHealthPercent says
        // otherwise, so ejected hosts really stop getting traffic.
        c.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: f64::from(o.min_health_percent.unwrap_or(0)),
            }),
            ..Default::default()
        });
    }
    if pool.is_some_and(|p| p.tcp_keepalive) {
        c.upstream_connection_options = Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(TcpKeepalive::default()),
            ..Default::default()
        });
    }
    match svc.resolution {
        Resolution::Static => {
            c.cluster_discovery_type = Some(discovery(DiscoveryType::Eds));
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: name,
            });
        }
        Resolution::Dns => {
            c.cluster_discovery_type = Some(discovery(DiscoveryType::StrictDns));
            c.dns_lookup_family = DnsLookupFamily::V4Only as i32;
            c.load_assignment = Some(endpoints::dns_assignment(&name, svc, port, subset));
        }
        Resolution::None => {
            c.cluster_discovery_type = Some(discovery(DiscoveryType::OriginalDst));
            c.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    // A PASSTHROUGH load balancer (Knative's `direct` subsets) makes the cluster
    // ORIGINAL_DST, as istiod does: Envoy refuses CLUSTER_PROVIDED on an EDS or DNS cluster.
    if c.lb_policy == LbPolicy::ClusterProvided as i32 {
        c.cluster_discovery_type = Some(discovery(DiscoveryType::OriginalDst));
        c.eds_cluster_config = None;
        c.load_assignment = None;
    }
    c
}

/// Upstream mTLS: a DestinationRule's `ISTIO_MUTUAL` forces it (with its `sni` and
/// `subjectAltNames` when given, as istiod) and `DISABLE` turns it off; otherwise auto mTLS
/// picks TLS per endpoint (`tlsMode: istio`). Services outside the mesh get no mesh TLS;
/// `SIMPLE`/`MUTUAL` are [`upstream_tls::origination`]'s.
fn apply_mtls(
    c: &mut Cluster,
    svc: &Service,
    port: u16,
    subset: Option<&str>,
    policy: &TrafficPolicy,
    identities: &[String],
) {
    if svc.mesh_external || svc.resolution == Resolution::None {
        return;
    }
    let socket =
        || mtls::upstream_socket(mtls::sni(port, subset, &svc.hostname), identities.to_vec());
    match policy.tls.as_ref().map(|t| t.mode) {
        Some(TlsMode::IstioMutual) => {
            let tls = policy.tls.as_ref();
            let sni = tls.and_then(|t| t.sni.clone());
            let sans = tls
                .map(|t| t.subject_alt_names.clone())
                .filter(|s| !s.is_empty());
            c.transport_socket = Some(mtls::upstream_socket(
                sni.unwrap_or_else(|| mtls::sni(port, subset, &svc.hostname)),
                sans.unwrap_or_else(|| identities.to_vec()),
            ));
        }
        Some(TlsMode::Disable | TlsMode::Simple | TlsMode::Mutual) => {}
        None => c.transport_socket_matches = mtls::auto_mtls_matches(socket()),
    }
}

/// Whether the cluster speaks HTTP/2 upstream (istiod's `isHttp2Cluster`).
fn is_h2(protocol: Protocol, policy: &TrafficPolicy) -> bool {
    matches!(protocol, Protocol::Http2 | Protocol::Grpc)
        || (protocol == Protocol::Http
            && policy.connection_pool.as_ref().and_then(|p| p.h2_upgrade) == Some(true))
}

/// istiod's default when a cluster needs `HttpProtocolOptions` for another reason (TLS
/// origination's `auto_sni`): explicit HTTP/1.1.
fn explicit_http1() -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                    Http1ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    }
}

/// HTTP/2 for gRPC and HTTP2 ports (and `h2UpgradePolicy: UPGRADE`); the downstream protocol
/// for undeclared ports, whose traffic was sniffed; per-connection limits when set.
fn http_options(protocol: Protocol, policy: &TrafficPolicy) -> Option<HttpProtocolOptions> {
    let pool = policy.connection_pool.as_ref();
    let h2 = is_h2(protocol, policy);
    let max_requests = pool.and_then(|p| p.max_requests_per_connection);
    let idle = pool.and_then(|p| p.idle_timeout);
    let upstream = if h2 {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                Http2ProtocolOptions::default(),
            )),
        })
    } else if protocol == Protocol::Unknown {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http_protocol_options: Some(Http1ProtocolOptions::default()),
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..Default::default()
        })
    } else if max_requests.is_some() || idle.is_some() {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            )),
        })
    } else {
        return None;
    };
    Some(HttpProtocolOptions {
        common_http_protocol_options: (max_requests.is_some() || idle.is_some()).then(|| {
            CommonHttpOptions {
                max_requests_per_connection: max_requests.map(|value| UInt32Value { value }),
                idle_timeout: idle.map(duration),
                ..Default::default()
            }
        }),
        upstream_protocol_options: Some(upstream),
        ..Default::default()
    })
}

fn original_dst(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(discovery(DiscoveryType::OriginalDst)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        circuit_breakers: Some(circuit_breakers(&TrafficPolicy::default())),
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
    let v = |n: Option<u32>| {
        Some(UInt32Value {
            value: n.unwrap_or(UNLIMITED),
        })
    };
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
    // Istio enforces exactly the detectors the user configured, and never success rate.
    let enforcing = |n: Option<u32>| {
        Some(UInt32Value {
            value: if n.is_some() { 100 } else { 0 },
        })
    };
    OutlierDetection {
        consecutive_5xx: v(o.consecutive_5xx_errors),
        enforcing_consecutive_5xx: enforcing(o.consecutive_5xx_errors),
        consecutive_gateway_failure: v(o.consecutive_gateway_errors),
        enforcing_consecutive_gateway_failure: enforcing(o.consecutive_gateway_errors),
        interval: o.interval.map(duration),
        base_ejection_time: o.base_ejection_time.map(duration),
        max_ejection_percent: v(o.max_ejection_percent),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mast_mesh_config::model::{
        ConnectionPool, DestinationPolicy, OutlierDetection as ModelOutlier, ResourceRef,
    };

    use super::*;

    fn svc(resolution: Resolution, protocol: Protocol) -> Service {
        Service {
            hostname: "db.data.svc.cluster.local".into(),
            name: "db".into(),
            namespace: "data".into(),
            ports: vec![ServicePort {
                name: "p".into(),
                port: 5000,
                target_port: None,
                protocol,
            }],
            selector: None,
            endpoints: vec![],
            addresses: vec![],
            resolution,
            mesh_external: false,
            export_to: vec![],
            source: ResourceRef::default(),
        }
    }

    fn find<'a>(cs: &'a [Cluster], name: &str) -> &'a Cluster {
        cs.iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    #[test]
    fn destination_rule_maps_to_cluster_settings() {
        let s = svc(Resolution::Static, Protocol::Grpc);
        let mut model = MeshModel::default();
        model.destination_policies.insert(
            s.hostname.clone(),
            DestinationPolicy {
                host: s.hostname.clone(),
                traffic_policy: TrafficPolicy {
                    load_balancer: Some(LoadBalancer::RoundRobin),
                    connection_pool: Some(ConnectionPool {
                        max_connections: Some(7),
                        connect_timeout: Some(Duration::from_millis(250)),
                        http1_max_pending_requests: Some(3),
                        http2_max_requests: Some(11),
                        max_retries: Some(1),
                        ..Default::default()
                    }),
                    outlier_detection: Some(ModelOutlier {
                        consecutive_5xx_errors: Some(5),
                        interval: Some(Duration::from_secs(10)),
                        base_ejection_time: Some(Duration::from_secs(30)),
                        max_ejection_percent: Some(50),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                subsets: vec![Subset {
                    name: "v2".into(),
                    labels: Labels::new(),
                    traffic_policy: Some(TrafficPolicy {
                        load_balancer: Some(LoadBalancer::Random),
                        ..Default::default()
                    }),
                }],
                ..Default::default()
            },
        );
        let cs = outbound(&model, &[&s], &Security::default());
        let c = find(&cs, "outbound|5000||db.data.svc.cluster.local");
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32);
        assert_eq!(
            c.connect_timeout,
            Some(duration(Duration::from_millis(250)))
        );
        let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
        assert_eq!(t.max_connections.unwrap().value, 7);
        assert_eq!(t.max_pending_requests.unwrap().value, 3);
        assert_eq!(t.max_requests.unwrap().value, 11);
        assert_eq!(t.max_retries.unwrap().value, 1);
        let o = c.outlier_detection.as_ref().unwrap();
        assert_eq!(o.consecutive_5xx.unwrap().value, 5);
        assert_eq!(o.enforcing_consecutive_5xx.unwrap().value, 100);
        assert_eq!(o.enforcing_consecutive_gateway_failure.unwrap().value, 0);
        assert_eq!(o.interval.unwrap().seconds, 10);
        assert_eq!(o.base_ejection_time.unwrap().seconds, 30);
        assert_eq!(o.max_ejection_percent.unwrap().value, 50);
        assert!(
            c.typed_extension_protocol_options
                .contains_key(HTTP_OPTIONS_KEY)
        );
        assert_eq!(
            c.cluster_discovery_type,
            Some(discovery(DiscoveryType::Eds))
        );
        // The subset overrides the load balancer but keeps the host's pool.
        let v2 = find(&cs, "outbound|5000|v2|db.data.svc.cluster.local");
        assert_eq!(v2.lb_policy, LbPolicy::Random as i32);
        assert_eq!(
            v2.circuit_breakers.as_ref().unwrap().thresholds[0]
                .max_connections
                .unwrap()
                .value,
            7
        );
        assert_eq!(
            v2.eds_cluster_config.as_ref().unwrap().service_name,
            "outbound|5000|v2|db.data.svc.cluster.local"
        );
    }

    #[test]
    fn istio_defaults_and_fixed_clusters() {
        let s = svc(Resolution::Static, Protocol::Tcp);
        let cs = outbound(&MeshModel::default(), &[&s], &Security::default());
        let c = find(&cs, "outbound|5000||db.data.svc.cluster.local");
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
        assert_eq!(c.connect_timeout.unwrap().seconds, 10);
        assert_eq!(
            c.circuit_breakers.as_ref().unwrap().thresholds[0]
                .max_connections
                .unwrap()
                .value,
            u32::MAX
        );
        assert!(c.outlier_detection.is_none());
        assert!(c.typed_extension_protocol_options.is_empty());
        assert_eq!(
            find(&cs, PASSTHROUGH).cluster_discovery_type,
            Some(discovery(DiscoveryType::OriginalDst))
        );
        let bh = find(&cs, BLACKHOLE);
        assert!(bh.load_assignment.is_none());
    }

    #[test]
    fn resolution_picks_the_discovery_type() {
        let dns = svc(Resolution::Dns, Protocol::Http);
        let none = svc(Resolution::None, Protocol::Tcp);
        let cs = outbound(&MeshModel::default(), &[&dns], &Security::default());
        let c = find(&cs, "outbound|5000||db.data.svc.cluster.local");
        assert_eq!(
            c.cluster_discovery_type,
            Some(discovery(DiscoveryType::StrictDns))
        );
        assert!(c.load_assignment.is_some());
        let cs = outbound(&MeshModel::default(), &[&none], &Security::default());
        let c = find(&cs, "outbound|5000||db.data.svc.cluster.local");
        assert_eq!(
            c.cluster_discovery_type,
            Some(discovery(DiscoveryType::OriginalDst))
        );
        assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
    }

    #[test]
    fn inbound_passthrough_dials_from_127_0_0_6() {
        let cs = inbound(&[], true);
        let c = find(&cs, INBOUND_PASSTHROUGH);
        let bind = c.upstream_bind_config.as_ref().expect("a bind config");
        assert_eq!(
            bind.source_address.as_ref().map(|a| a.address.as_str()),
            Some("127.0.0.6")
        );
    }

    #[test]
    fn inbound_is_static_to_the_endpoint() {
        let cs = inbound(
            &[InboundPort {
                port: 9080,
                protocol: Protocol::Http,
                endpoint: ("127.0.0.1".into(), 9080),
                bind: None,
                services: vec![ServiceRef {
                    host: "user.default.svc.cluster.local".into(),
                    name: "user".into(),
                    namespace: "default".into(),
                }],
            }],
            false,
        );
        // Plain HTTP to the app: no HTTP/2 options; a gRPC port gets them.
        assert!(cs[0].typed_extension_protocol_options.is_empty());
        let grpc = inbound(
            &[InboundPort {
                port: 9191,
                protocol: Protocol::Grpc,
                endpoint: ("127.0.0.1".into(), 9191),
                bind: None,
                services: vec![],
            }],
            false,
        );
        assert!(
            grpc[0]
                .typed_extension_protocol_options
                .contains_key(HTTP_OPTIONS_KEY)
        );
        // istiod's telemetry metadata: the services this port serves.
        let meta = &cs[0].metadata.as_ref().unwrap().filter_metadata["istio"];
        let Some(Kind::ListValue(list)) = &meta.fields["services"].kind else {
            panic!("services is a list: {meta:?}");
        };
        let Some(Kind::StructValue(svc)) = &list.values[0].kind else {
            panic!("a service is a struct");
        };
        assert_eq!(
            svc.fields["host"],
            string_value("user.default.svc.cluster.local")
        );
        assert_eq!(svc.fields["namespace"], string_value("default"));
        assert_eq!(cs.len(), 1, "no InboundPassthroughCluster without capture");
        assert_eq!(cs[0].name, "inbound|9080||");
        assert_eq!(
            cs[0].cluster_discovery_type,
            Some(discovery(DiscoveryType::Static))
        );
        assert_eq!(
            cs[0].load_assignment.as_ref().unwrap().cluster_name,
            "inbound|9080||"
        );
    }
}
