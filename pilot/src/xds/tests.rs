//! Translation tests on hand-built models: names, weights, matches, faults and defaults as
//! istiod produces them.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use mast_mesh_config::model::*;
use prost::Message;

use super::*;
use crate::ads::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const USER: &str = "user.default.svc.cluster.local";

fn model(http: Vec<HttpRoute>) -> MeshModel {
    let mut m = MeshModel::default();
    m.services.insert(
        USER.into(),
        Service {
            hostname: USER.into(),
            name: "user".into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8081,
                target_port: Some(TargetPort::Name("http".into())),
                protocol: Protocol::Http,
            }],
            selector: Some(labels(&[("app", "user")])),
            endpoints: vec![],
            addresses: vec![],
            resolution: Resolution::Static,
            mesh_external: false,
            export_to: vec![],
            source: ResourceRef::default(),
        },
    );
    for (v, port) in [("v1", 9181), ("v2", 9281)] {
        m.workloads.push(Workload {
            name: format!("user-{v}"),
            namespace: "default".into(),
            address: "127.0.0.1".into(),
            labels: labels(&[("app", "user"), ("version", v)]),
            ports: BTreeMap::from([("http".to_string(), port)]),
            service_account: "user".into(),
            weight: None,
            locality: None,
            network: None,
            has_sidecar: true,
            source: ResourceRef::default(),
        });
    }
    m.destination_policies.insert(
        USER.into(),
        DestinationPolicy {
            host: USER.into(),
            namespace: "default".into(),
            subsets: ["v1", "v2"]
                .iter()
                .map(|v| Subset {
                    name: v.to_string(),
                    labels: labels(&[("version", v)]),
                    traffic_policy: None,
                })
                .collect(),
            ..Default::default()
        },
    );
    m.routes.push(RouteTable {
        hosts: vec![USER.into()],
        namespace: "default".into(),
        export_to: vec![],
        port: None,
        http,
        tcp: vec![],
        source: ResourceRef {
            kind: "VirtualService".into(),
            namespace: "default".into(),
            name: "user".into(),
        },
    });
    m
}

fn split(w1: u32, w2: u32) -> HttpRoute {
    let d = |s: &str, w| WeightedDestination {
        destination: Destination { host: USER.into(), subset: Some(s.into()), port: None },
        weight: w,
        headers: HeaderOperations::default(),
    };
    HttpRoute {
        action: RouteAction::Forward(vec![d("v1", w1), d("v2", w2)]),
        ..Default::default()
    }
}

fn proxy(mode: Interception) -> ProxyNode {
    ProxyNode {
        id: "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local".into(),
        ip: "127.0.0.1".into(),
        pod: "client-1".into(),
        namespace: "default".into(),
        labels: labels(&[("app", "client")]),
        service_account: "client".into(),
        interception: mode,
    }
}

fn decode<M: Message + Default>(r: &ProxyResources, t: &str, name: &str) -> M {
    let res = r.of_type(t).and_then(|m| m.get(name)).unwrap_or_else(|| {
        panic!("no {t} {name}; have {:?}", r.of_type(t).map(|m| m.keys().collect::<Vec<_>>()))
    });
    M::decode(res.any.value.as_slice()).unwrap()
}

fn user_vhost(r: &ProxyResources) -> VirtualHost {
    let rc: RouteConfiguration = decode(r, ROUTE_TYPE, "8081");
    rc.virtual_hosts.into_iter().find(|v| v.name == format!("{USER}:8081")).unwrap()
}

#[test]
fn weighted_split_uses_istio_cluster_names() {
    let r = generate(&model(vec![split(50, 50)]), &proxy(Interception::None));
    let vh = user_vhost(&r);
    let Some(Action::Route(action)) = &vh.routes[0].action else { panic!("{vh:?}") };
    let Some(ClusterSpecifier::WeightedClusters(wc)) = &action.cluster_specifier else { panic!("{action:?}") };
    let got: Vec<(String, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        got,
        [
            (format!("outbound|8081|v1|{USER}"), 50),
            (format!("outbound|8081|v2|{USER}"), 50)
        ]
    );
    // Istio's defaults: no timeout, 2 retries to other hosts.
    assert_eq!(action.timeout.as_ref().map(|d| d.seconds), Some(0));
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries.as_ref().unwrap().value, 2);
    assert!(retry.retry_on.contains("connect-failure"));
    for name in [format!("outbound|8081||{USER}"), format!("outbound|8081|v1|{USER}")] {
        let c: Cluster = decode(&r, CLUSTER_TYPE, &name);
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
    }
}

#[test]
fn aliases_cover_every_name() {
    let r = generate(&model(vec![split(50, 50)]), &proxy(Interception::None));
    let d = user_vhost(&r).domains;
    for want in ["user", "user:8081", "user.default", "user.default.svc", USER, &format!("{USER}:8081")] {
        assert!(d.iter().any(|x| x == want), "{want} missing from {d:?}");
    }
    let mut other = proxy(Interception::None);
    other.namespace = "other".into();
    let d = user_vhost(&generate(&model(vec![split(50, 50)]), &other)).domains;
    assert!(!d.iter().any(|x| x == "user"), "short name leaked across namespaces: {d:?}");
}

#[test]
fn subset_endpoints_are_filtered_by_labels() {
    let r = generate(&model(vec![split(50, 50)]), &proxy(Interception::None));
    let port_of = |cla: &ClusterLoadAssignment| -> Vec<u32> {
        use envoy_types::pb::envoy::config::core::v3::address::Address as A;
        use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
        use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| {
                let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else { panic!() };
                let Some(A::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address else { panic!() };
                let Some(PortSpecifier::PortValue(p)) = sa.port_specifier else { panic!() };
                p
            })
            .collect()
    };
    let all: ClusterLoadAssignment = decode(&r, ENDPOINT_TYPE, &format!("outbound|8081||{USER}"));
    assert_eq!(port_of(&all), [9181, 9281]);
    let v2: ClusterLoadAssignment = decode(&r, ENDPOINT_TYPE, &format!("outbound|8081|v2|{USER}"));
    assert_eq!(port_of(&v2), [9281]);
}

#[test]
fn header_match_and_fault() {
    let jason = HttpRoute {
        matches: vec![mast_mesh_config::model::RouteMatch {
            headers: vec![HeaderMatch {
                name: "end-user".into(),
                value: Some(StringMatch::Exact("jason".into())),
                invert: false,
            }],
            ..Default::default()
        }],
        fault: Some(FaultInjection {
            delay: None,
            abort: Some(FaultAbort { kind: AbortKind::HttpStatus(503), percentage: 100.0 }),
        }),
        ..split(0, 100)
    };
    let r = generate(&model(vec![jason, split(100, 0)]), &proxy(Interception::None));
    let vh = user_vhost(&r);
    assert_eq!(vh.routes.len(), 2, "{vh:?}");
    let m = vh.routes[0].r#match.as_ref().unwrap();
    assert_eq!(m.headers[0].name, "end-user");
    let fault = &vh.routes[0].typed_per_filter_config["envoy.filters.http.fault"];
    let f = envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::decode(
        fault.value.as_slice(),
    )
    .unwrap();
    let abort = f.abort.unwrap();
    assert_eq!(abort.percentage.unwrap().numerator, 1_000_000);
    // Weight-0 destinations are dropped, so the single survivor is a plain cluster.
    let Some(Action::Route(a)) = &vh.routes[1].action else { panic!() };
    assert_eq!(
        a.cluster_specifier,
        Some(ClusterSpecifier::Cluster(format!("outbound|8081|v1|{USER}")))
    );
}

#[test]
fn none_mode_binds_loopback_and_redirect_mode_has_virtual_listeners() {
    let m = model(vec![split(50, 50)]);
    let none = generate(&m, &proxy(Interception::None));
    let l: Listener = decode(&none, LISTENER_TYPE, "127.0.0.1_8081");
    assert!(l.bind_to_port.is_none());
    assert!(none.of_type(LISTENER_TYPE).unwrap().get("virtualOutbound").is_none());

    let mut p = proxy(Interception::Redirect);
    p.labels = labels(&[("app", "user"), ("version", "v1")]);
    let redirect = generate(&m, &p);
    let names: Vec<&String> = redirect.of_type(LISTENER_TYPE).unwrap().keys().collect();
    assert!(names.iter().any(|n| *n == "virtualOutbound"), "{names:?}");
    assert!(names.iter().any(|n| *n == "virtualInbound"), "{names:?}");
    assert!(names.iter().any(|n| *n == "0.0.0.0_8081"), "{names:?}");
    assert!(redirect.of_type(CLUSTER_TYPE).unwrap().contains_key("inbound|8081||")
        || redirect.of_type(CLUSTER_TYPE).unwrap().keys().any(|k| k.starts_with("inbound|")));
}

#[test]
fn output_is_deterministic_and_cached_per_version() {
    let m = Arc::new(model(vec![split(50, 50)]));
    let g = XdsGenerator::default();
    let node = envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local".into(),
        ..Default::default()
    };
    let snap = Snapshot::new(1, m.clone(), std::time::Instant::now());
    let a = g.generate(&snap, &node).unwrap();
    let b = g.generate(&snap, &node).unwrap();
    for t in [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
        let va: Vec<_> = a.of_type(t).unwrap().values().map(|r| r.version.clone()).collect();
        let vb: Vec<_> = b.of_type(t).unwrap().values().map(|r| r.version.clone()).collect();
        assert_eq!(va, vb);
    }
    let fresh = generate(&m, &ProxyNode::from_envoy_node(&node).unwrap());
    assert_eq!(
        fresh.of_type(ROUTE_TYPE).unwrap()["8081"].version,
        a.of_type(ROUTE_TYPE).unwrap()["8081"].version
    );
}

#[test]
fn node_id_and_metadata_are_parsed() {
    use envoy_types::pb::google::protobuf::Struct;
    let node = envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~10.1.2.3~user-v1-abc.prod~prod.svc.cluster.local".into(),
        metadata: Some(Struct {
            fields: [
                ("INTERCEPTION_MODE".to_string(), string_value("NONE")),
                ("SERVICE_ACCOUNT".to_string(), string_value("user")),
            ]
            .into(),
        }),
        ..Default::default()
    };
    let p = ProxyNode::from_envoy_node(&node).unwrap();
    assert_eq!((p.ip.as_str(), p.pod.as_str(), p.namespace.as_str()), ("10.1.2.3", "user-v1-abc", "prod"));
    assert_eq!(p.interception, Interception::None);
    assert_eq!(p.service_account, "user");
    let bad = envoy_types::pb::envoy::config::core::v3::Node { id: "nope".into(), ..Default::default() };
    assert!(ProxyNode::from_envoy_node(&bad).is_err());
}
