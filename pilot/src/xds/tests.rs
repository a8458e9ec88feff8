//! Translation tests on hand-built models, across the four xDS types: names, weights,
//! matches, faults, visibility and defaults as istiod produces them. Tests of one builder in
//! isolation live next to it (`clusters.rs`, `endpoints.rs`, `listeners.rs`, `node.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::core::v3::address::Address as A;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::value::Kind;
use mast_mesh_config::model::*;
use mast_mesh_config::security::MtlsMode;
use mast_proto::TypeUrl;
use prost::Message;

use super::*;
use crate::ads::Snapshot;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const USER: &str = "user.default.svc.cluster.local";

fn user_service() -> Service {
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
        addresses: vec!["10.96.1.1".into()],
        resolution: Resolution::Static,
        mesh_external: false,
        export_to: vec![],
        source: ResourceRef::default(),
    }
}

fn model(http: Vec<HttpRoute>) -> MeshModel {
    let mut m = MeshModel::default();
    m.services.insert(USER.into(), user_service());
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
        section: None,
        gateways: Vec::new(),
        tls: Vec::new(),
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

fn dest(subset: &str, weight: u32) -> WeightedDestination {
    WeightedDestination {
        destination: Destination {
            host: USER.into(),
            subset: Some(subset.into()),
            port: None,
        },
        weight,
        headers: HeaderOperations::default(),
    }
}

fn split(w1: u32, w2: u32) -> HttpRoute {
    HttpRoute {
        action: RouteAction::Forward(vec![dest("v1", w1), dest("v2", w2)]),
        ..Default::default()
    }
}

fn proxy(mode: InterceptionMode) -> ProxyNode {
    ProxyNode {
        id: "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local".into(),
        kind: "sidecar".into(),
        ip: "127.0.0.1".into(),
        pod_name: "client-1".into(),
        namespace: "default".into(),
        labels: labels(&[("app", "client")]),
        service_account: "client".into(),
        interception_mode: mode,
        ..Default::default()
    }
}

fn route_config<'a>(c: &'a ProxyConfig, name: &str) -> &'a RouteConfiguration {
    c.routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route config {name}"))
}

fn user_vhost(c: &ProxyConfig) -> VirtualHost {
    route_config(c, "8081")
        .virtual_hosts
        .iter()
        .find(|v| v.name == format!("{USER}:8081"))
        .cloned()
        .unwrap_or_else(|| panic!("no vhost {USER}:8081"))
}

fn route_action(r: &Route) -> &envoy_types::pb::envoy::config::route::v3::RouteAction {
    match &r.action {
        Some(Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

fn cluster<'a>(c: &'a ProxyConfig, name: &str) -> &'a Cluster {
    c.clusters
        .iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

fn listener<'a>(c: &'a ProxyConfig, name: &str) -> &'a Listener {
    c.listeners
        .iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no listener {name}; have {:?}",
                c.listeners.iter().map(|l| &l.name).collect::<Vec<_>>()
            )
        })
}

fn ports_of(cla: &ClusterLoadAssignment) -> Vec<u32> {
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("not an endpoint")
            };
            let Some(A::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address else {
                panic!("not a socket address")
            };
            let Some(PortSpecifier::PortValue(p)) = sa.port_specifier else {
                panic!("no port")
            };
            p
        })
        .collect()
}

#[test]
fn weighted_split_uses_istio_cluster_names() {
    let c = generate(&model(vec![split(50, 50)]), &proxy(InterceptionMode::None));
    let vh = user_vhost(&c);
    let action = route_action(&vh.routes[0]);
    let Some(ClusterSpecifier::WeightedClusters(wc)) = &action.cluster_specifier else {
        panic!("{action:?}")
    };
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
    assert_eq!(
        retry.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(retry.host_selection_retry_max_attempts, 5);
    assert_eq!(
        retry.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );
    // The split covers everything, so no extra default route.
    assert_eq!(vh.routes.len(), 1);
    // Where the route came from, as istiod records it.
    let meta = &vh.routes[0].metadata.as_ref().unwrap().filter_metadata["istio"];
    assert_eq!(
        meta.fields["config"].kind,
        Some(Kind::StringValue(
            "/apis/networking.istio.io/v1/namespaces/default/virtual-service/user".into()
        ))
    );
    for name in [
        format!("outbound|8081||{USER}"),
        format!("outbound|8081|v1|{USER}"),
        format!("outbound|8081|v2|{USER}"),
    ] {
        assert_eq!(cluster(&c, &name).lb_policy, LbPolicy::LeastRequest as i32);
    }
}

#[test]
fn single_destination_is_a_plain_cluster_and_default_route_follows_rules() {
    let jason = HttpRoute {
        matches: vec![mast_mesh_config::model::RouteMatch {
            uri: Some(StringMatch::Prefix("/api".into())),
            headers: vec![
                HeaderMatch {
                    name: "end-user".into(),
                    value: Some(StringMatch::Exact("jason".into())),
                    invert: false,
                },
                HeaderMatch {
                    name: "x-debug".into(),
                    value: None,
                    invert: true,
                },
            ],
            query_params: vec![QueryMatch {
                name: "q".into(),
                value: Some(StringMatch::Regex("a.*".into())),
            }],
            ignore_uri_case: true,
            ..Default::default()
        }],
        action: RouteAction::Forward(vec![dest("v2", 100)]),
        ..Default::default()
    };
    let c = generate(&model(vec![jason]), &proxy(InterceptionMode::None));
    let vh = user_vhost(&c);
    assert_eq!(vh.routes.len(), 2, "{vh:?}");
    let m = vh.routes[0].r#match.as_ref().unwrap();
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/api".into())));
    assert!(!m.case_sensitive.unwrap().value);
    assert_eq!(m.headers[0].name, "end-user");
    let Some(HeaderMatchSpecifier::StringMatch(sm)) = &m.headers[0].header_match_specifier else {
        panic!("{m:?}")
    };
    assert_eq!(sm.match_pattern, Some(MatchPattern::Exact("jason".into())));
    assert!(m.headers[1].invert_match);
    assert_eq!(
        m.headers[1].header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );
    assert_eq!(m.query_parameters[0].name, "q");
    assert_eq!(
        route_action(&vh.routes[0]).cluster_specifier,
        Some(ClusterSpecifier::Cluster(format!(
            "outbound|8081|v2|{USER}"
        )))
    );
    // Unmatched requests still reach the service.
    assert_eq!(vh.routes[1].name, "default");
    assert_eq!(
        route_action(&vh.routes[1]).cluster_specifier,
        Some(ClusterSpecifier::Cluster(format!("outbound|8081||{USER}")))
    );
}

#[test]
fn fault_abort_goes_to_typed_per_filter_config() {
    let faulty = HttpRoute {
        fault: Some(FaultInjection {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_secs(7),
                percentage: 0.5,
            }),
            abort: Some(mast_mesh_config::model::FaultAbort {
                kind: AbortKind::HttpStatus(503),
                percentage: 100.0,
            }),
        }),
        ..split(0, 100)
    };
    let c = generate(&model(vec![faulty]), &proxy(InterceptionMode::None));
    let vh = user_vhost(&c);
    let any = &vh.routes[0].typed_per_filter_config["envoy.filters.http.fault"];
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
    );
    let f = HttpFault::decode(any.value.as_slice()).unwrap();
    let abort = f.abort.unwrap();
    assert_eq!(abort.error_type, Some(ErrorType::HttpStatus(503)));
    let pct = abort.percentage.unwrap();
    assert_eq!((pct.numerator, pct.denominator), (1_000_000, 2)); // MILLION
    let delay = f.delay.unwrap();
    assert_eq!(delay.percentage.unwrap().numerator, 5_000);
    // Weight-0 destinations are dropped, so the single survivor is a plain cluster.
    assert_eq!(
        route_action(&vh.routes[0]).cluster_specifier,
        Some(ClusterSpecifier::Cluster(format!(
            "outbound|8081|v2|{USER}"
        )))
    );
}

#[test]
fn aliases_cover_every_name() {
    let c = generate(&model(vec![split(50, 50)]), &proxy(InterceptionMode::None));
    let d = user_vhost(&c).domains;
    for want in [
        "user",
        "user:8081",
        "user.default",
        "user.default:8081",
        "user.default.svc",
        "user.default.svc:8081",
        USER,
        &format!("{USER}:8081"),
        "10.96.1.1",
        "10.96.1.1:8081",
    ] {
        assert!(d.iter().any(|x| x == want), "{want} missing from {d:?}");
    }
    let mut other = proxy(InterceptionMode::None);
    other.namespace = "other".into();
    let d = user_vhost(&generate(&model(vec![split(50, 50)]), &other)).domains;
    assert!(
        !d.iter().any(|x| x == "user" || x == "user:8081"),
        "short name leaked across namespaces: {d:?}"
    );
    assert!(d.iter().any(|x| x == "user.default"));
    // The catch-all comes last and passes unknown hosts through.
    let rc = route_config(&c, "8081");
    let last = rc.virtual_hosts.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.domains.as_slice()),
        ("allow_any", &["*".to_string()][..])
    );
}

#[test]
fn subset_endpoints_are_filtered_by_labels() {
    let c = generate(&model(vec![split(50, 50)]), &proxy(InterceptionMode::None));
    let cla = |name: String| {
        c.endpoints
            .iter()
            .find(|e| e.cluster_name == name)
            .unwrap_or_else(|| panic!("no CLA {name}"))
    };
    assert_eq!(
        ports_of(cla(format!("outbound|8081||{USER}"))),
        [9181, 9281]
    );
    assert_eq!(ports_of(cla(format!("outbound|8081|v1|{USER}"))), [9181]);
    assert_eq!(ports_of(cla(format!("outbound|8081|v2|{USER}"))), [9281]);
    // Every EDS cluster has its assignment, and nothing else does.
    let eds: Vec<&str> = c
        .clusters
        .iter()
        .filter(|c| c.eds_cluster_config.is_some())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(eds, c.eds_cluster_names());
}

#[test]
fn none_mode_binds_loopback_and_redirect_mode_has_virtual_listeners() {
    let m = model(vec![split(50, 50)]);
    let none = generate(&m, &proxy(InterceptionMode::None));
    let l = listener(&none, "127.0.0.1_8081");
    assert!(l.bind_to_port.is_none(), "binds (default true)");
    assert!(
        none.listeners
            .iter()
            .all(|l| !l.name.starts_with("virtual"))
    );
    // Nothing captures inbound, and the app owns its ports.
    assert!(
        none.clusters
            .iter()
            .all(|c| !c.name.starts_with("inbound|"))
    );

    let mut p = proxy(InterceptionMode::Redirect);
    p.labels = labels(&[("app", "user"), ("version", "v1")]);
    p.pod_name = "user-v1".into();
    let redirect = generate(&m, &p);
    for name in ["virtualOutbound", "virtualInbound", "0.0.0.0_8081"] {
        listener(&redirect, name);
    }
    // The named target port resolves through this proxy's own workload.
    let inbound = cluster(&redirect, "inbound|9181||");
    assert_eq!(ports_of(inbound.load_assignment.as_ref().unwrap()), [9181]);
}

#[test]
fn rules_for_other_sources_are_skipped() {
    let only_for_admin = HttpRoute {
        matches: vec![mast_mesh_config::model::RouteMatch {
            source_labels: labels(&[("app", "admin")]),
            ..Default::default()
        }],
        action: RouteAction::DirectResponse {
            status: 418,
            body: Some("teapot".into()),
        },
        ..Default::default()
    };
    let m = model(vec![only_for_admin, split(100, 0)]);
    let vh = user_vhost(&generate(&m, &proxy(InterceptionMode::None)));
    assert_eq!(vh.routes.len(), 1);
    assert!(matches!(vh.routes[0].action, Some(Action::Route(_))));

    let mut admin = proxy(InterceptionMode::None);
    admin.labels = labels(&[("app", "admin")]);
    let vh = user_vhost(&generate(&m, &admin));
    let Some(Action::DirectResponse(dr)) = &vh.routes[0].action else {
        panic!("{vh:?}")
    };
    assert_eq!(dr.status, 418);
    // The cache must tell the two proxies apart too.
    let g = XdsGenerator::default();
    let snap = Snapshot::new(1, Arc::new(m), std::time::Instant::now());
    let node = |labels: &str| envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~127.0.0.1~c.default~default.svc.cluster.local".into(),
        metadata: Some(envoy_types::pb::google::protobuf::Struct {
            fields: [(
                "LABELS".to_string(),
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(Kind::StructValue(
                        envoy_types::pb::google::protobuf::Struct {
                            fields: [("app".to_string(), string_value(labels))].into(),
                        },
                    )),
                },
            )]
            .into(),
        }),
        ..Default::default()
    };
    let a = g.generate(&snap, &node("client")).unwrap().flatten();
    let b = g.generate(&snap, &node("admin")).unwrap().flatten();
    assert_ne!(
        a.of_type(TypeUrl::Route).unwrap()["8081"].version,
        b.of_type(TypeUrl::Route).unwrap()["8081"].version
    );
}

#[test]
fn redirect_rewrite_retries_and_mirror() {
    let redirect = HttpRoute {
        matches: vec![mast_mesh_config::model::RouteMatch {
            uri: Some(StringMatch::Exact("/old".into())),
            ..Default::default()
        }],
        action: RouteAction::Redirect(Redirect {
            scheme: Some("https".into()),
            host: Some("new.example.com".into()),
            port: Some(8443),
            path: Some(PathRewrite::Full("/new".into())),
            status: 308,
        }),
        ..Default::default()
    };
    let rewrite = HttpRoute {
        matches: vec![mast_mesh_config::model::RouteMatch {
            uri: Some(StringMatch::Prefix("/v1/".into())),
            ..Default::default()
        }],
        rewrite: Some(Rewrite {
            path: Some(PathRewrite::Prefix("/".into())),
            authority: Some("internal".into()),
        }),
        timeout: Some(Duration::from_millis(1500)),
        retries: Some(mast_mesh_config::model::RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            retry_on: None,
            retry_remote_localities: false,
        }),
        mirrors: vec![Mirror {
            destination: Destination {
                host: USER.into(),
                subset: Some("v2".into()),
                port: None,
            },
            percentage: 25.0,
        }],
        headers: HeaderOperations {
            request: HeaderOps {
                set: vec![("x-a".into(), "1".into())],
                add: vec![],
                remove: vec!["x-b".into()],
            },
            response: HeaderOps::default(),
        },
        ..split(100, 0)
    };
    let c = generate(
        &model(vec![redirect, rewrite]),
        &proxy(InterceptionMode::None),
    );
    let vh = user_vhost(&c);
    let Some(Action::Redirect(r)) = &vh.routes[0].action else {
        panic!("{vh:?}")
    };
    assert_eq!(r.host_redirect, "new.example.com");
    assert_eq!(r.port_redirect, 8443);
    assert_eq!(r.response_code, 4); // PERMANENT_REDIRECT
    let a = route_action(&vh.routes[1]);
    assert_eq!(a.prefix_rewrite, "/");
    assert_eq!(a.timeout.unwrap().nanos, 500_000_000);
    assert!(a.retry_policy.is_none(), "attempts 0 disables retries");
    assert_eq!(
        a.request_mirror_policies[0].cluster,
        format!("outbound|8081|v2|{USER}")
    );
    assert_eq!(vh.routes[1].request_headers_to_remove, ["x-b"]);
    assert_eq!(
        vh.routes[1].request_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        "x-a"
    );
}

#[test]
fn tcp_split_becomes_weighted_tcp_proxy() {
    let mut m = MeshModel::default();
    let mut db = user_service();
    db.hostname = "db.default.svc.cluster.local".into();
    db.name = "db".into();
    db.ports[0] = ServicePort {
        name: "tcp".into(),
        port: 5432,
        target_port: None,
        protocol: Protocol::Tcp,
    };
    db.addresses = vec!["10.96.2.2".into()];
    m.services.insert(db.hostname.clone(), db);
    let d = |subset: &str, weight| WeightedDestination {
        destination: Destination {
            host: "db.default.svc.cluster.local".into(),
            subset: Some(subset.into()),
            port: None,
        },
        weight,
        headers: HeaderOperations::default(),
    };
    m.routes.push(RouteTable {
        hosts: vec!["db.default.svc.cluster.local".into()],
        namespace: "default".into(),
        export_to: vec![],
        port: None,
        section: None,
        gateways: Vec::new(),
        tls: Vec::new(),
        http: vec![],
        tcp: vec![TcpRoute {
            port: None,
            destinations: vec![d("a", 80), d("b", 20)],
        }],
        source: ResourceRef::default(),
    });
    let c = generate(&m, &proxy(InterceptionMode::Redirect));
    let l = listener(&c, "10.96.2.2_5432");
    let Some(FilterConfig::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else {
        panic!("{l:?}")
    };
    let tp = TcpProxy::decode(any.value.as_slice()).unwrap();
    let Some(TcpSpecifier::WeightedClusters(wc)) = tp.cluster_specifier else {
        panic!("{tp:?}")
    };
    let got: Vec<(&str, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight))
        .collect();
    assert_eq!(
        got,
        [
            ("outbound|5432|a|db.default.svc.cluster.local", 80),
            ("outbound|5432|b|db.default.svc.cluster.local", 20)
        ]
    );
    assert!(c.routes.is_empty(), "no HTTP, no RDS");
}

#[test]
fn visibility_follows_export_to_and_sidecar_egress() {
    let mut m = model(vec![]);
    let mut hidden = user_service();
    hidden.hostname = "secret.vault.svc.cluster.local".into();
    hidden.namespace = "vault".into();
    hidden.export_to = vec![".".into()];
    m.services.insert(hidden.hostname.clone(), hidden);
    let mut other = user_service();
    other.hostname = "api.prod.svc.cluster.local".into();
    other.namespace = "prod".into();
    other.addresses = vec![];
    m.services.insert(other.hostname.clone(), other);

    let p = proxy(InterceptionMode::None);
    let names =
        |c: &ProxyConfig| -> Vec<String> { c.clusters.iter().map(|c| c.name.clone()).collect() };
    let c = generate(&m, &p);
    assert!(names(&c).iter().all(|n| !n.contains("secret.vault")));
    assert!(names(&c).iter().any(|n| n.contains("api.prod")));

    m.sidecars.push(SidecarScope {
        namespace: "default".into(),
        egress: vec![EgressListener {
            hosts: vec!["./*".into()],
            ..Default::default()
        }],
        registry_only: true,
        ..Default::default()
    });
    let c = generate(&m, &p);
    assert!(
        names(&c).iter().all(|n| !n.contains("api.prod")),
        "{:?}",
        names(&c)
    );
    assert!(names(&c).iter().any(|n| n.contains(USER)));
    let rc = route_config(&c, "8081");
    assert_eq!(rc.virtual_hosts.last().unwrap().name, "block_all");
}

/// Two replicas with the same labels share generated config, except what depends on their
/// own address: a Sidecar `ingress` without `bind` listens on each one's IP.
#[test]
fn look_alike_replicas_bind_their_own_address() {
    let mut m = model(vec![]);
    m.sidecars.push(SidecarScope {
        namespace: "default".into(),
        ingress: vec![mast_mesh_config::model::IngressListener {
            port: ServicePort {
                name: "http".into(),
                port: 9080,
                target_port: None,
                protocol: Protocol::Http,
            },
            bind: None,
            capture_mode: None,
            default_endpoint: Some("127.0.0.1:8080".into()),
        }],
        ..Default::default()
    });
    let g = XdsGenerator::default();
    let snap = Snapshot::new(1, Arc::new(m), std::time::Instant::now());
    let listeners = |ip: &str| {
        let node = envoy_types::pb::envoy::config::core::v3::Node {
            id: format!("sidecar~{ip}~user-1.default~default.svc.cluster.local"),
            metadata: Some(envoy_types::pb::google::protobuf::Struct {
                fields: [("INTERCEPTION_MODE".to_string(), string_value("NONE"))].into(),
            }),
            ..Default::default()
        };
        let view = g.generate(&snap, &node).unwrap().flatten();
        let mut names: Vec<String> = view
            .of_type(TypeUrl::Listener)
            .unwrap()
            .keys()
            .map(|k| k.to_string())
            .collect();
        names.sort();
        names
    };
    let a = listeners("127.0.0.11");
    let b = listeners("127.0.0.12");
    assert!(a.contains(&"127.0.0.11_9080".to_string()), "{a:?}");
    assert!(b.contains(&"127.0.0.12_9080".to_string()), "{b:?}");
}

#[test]
fn sidecar_egress_bind_and_port_override() {
    let mut m = model(vec![]);
    m.sidecars.push(SidecarScope {
        namespace: "default".into(),
        egress: vec![EgressListener {
            port: Some(ServicePort {
                name: "http".into(),
                port: 8081,
                target_port: None,
                protocol: Protocol::Http,
            }),
            bind: Some("127.0.0.2".into()),
            capture_mode: Some(CaptureMode::None),
            hosts: vec!["*/*".into()],
        }],
        ..Default::default()
    });
    let c = generate(&m, &proxy(InterceptionMode::Redirect));
    let l = listener(&c, "127.0.0.2_8081");
    assert!(l.bind_to_port.is_none(), "captureMode NONE binds");
    route_config(&c, "127.0.0.2:8081");
    assert!(c.listeners.iter().all(|l| l.name != "0.0.0.0_8081"));
}

#[test]
fn output_is_deterministic_and_cached_per_version() {
    let m = Arc::new(model(vec![split(50, 50)]));
    let mut reordered = (*m).clone();
    reordered.workloads.reverse();
    let p = proxy(InterceptionMode::Redirect);
    let a = generate(&m, &p);
    assert_eq!(a.encode(), generate(&m, &p).encode());
    for (_, encoded) in a.encode() {
        let names: Vec<&String> = encoded.iter().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
    // Same clusters and routes whatever the workload order (endpoint order follows the model).
    let b = generate(&reordered, &p);
    assert_eq!(a.encode_clusters(), b.encode_clusters());
    assert_eq!(a.encode_routes(), b.encode_routes());

    let g = XdsGenerator::default();
    let node = envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local".into(),
        ..Default::default()
    };
    let snap = Snapshot::new(1, m.clone(), std::time::Instant::now());
    let x = g.generate(&snap, &node).unwrap().flatten();
    let y = g.generate(&snap, &node).unwrap().flatten();
    for t in TypeUrl::PUSH_ORDER {
        let vx: Vec<_> = x.of_type(t).unwrap().values().map(|r| &r.version).collect();
        let vy: Vec<_> = y.of_type(t).unwrap().values().map(|r| &r.version).collect();
        assert_eq!(vx, vy, "{t}");
    }
    let fresh = generate(&m, &ProxyNode::from_envoy_node(&node).unwrap()).resources();
    assert_eq!(
        fresh.of_type(TypeUrl::Route).unwrap()["8081"].version,
        x.of_type(TypeUrl::Route).unwrap()["8081"].version
    );
    assert_eq!(
        fresh
            .of_type(TypeUrl::Cluster)
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        x.of_type(TypeUrl::Cluster)
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );
}

#[test]
fn encoded_resources_carry_type_urls() {
    let c = generate(&model(vec![]), &proxy(InterceptionMode::Redirect));
    for (t, encoded) in c.encode() {
        assert!(!encoded.is_empty(), "{t}");
        for (name, any) in encoded {
            assert_eq!(any.type_url, t, "{name}");
        }
    }
    let l = Listener::decode(
        c.encode_listeners()
            .into_iter()
            .find(|(n, _)| n == "virtualOutbound")
            .unwrap()
            .1
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(l.name, "virtualOutbound");
}

#[test]
fn consistent_hash_sets_ring_hash_and_route_hash_policy() {
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    let mut m = model(vec![split(50, 50)]);
    if let Some(dr) = m.destination_policies.get_mut(USER) {
        dr.subsets[1].traffic_policy = Some(TrafficPolicy {
            load_balancer: Some(LoadBalancer::ConsistentHash(HashKey::Header(
                "x-user".into(),
            ))),
            ..Default::default()
        });
    }
    let c = generate(&m, &proxy(InterceptionMode::None));
    assert_eq!(
        cluster(&c, &format!("outbound|8081|v2|{USER}")).lb_policy,
        LbPolicy::RingHash as i32
    );
    assert_eq!(
        cluster(&c, &format!("outbound|8081|v1|{USER}")).lb_policy,
        LbPolicy::LeastRequest as i32
    );
    // The split's first destination is v1 (no hashing); a v2-only route hashes.
    let vh = user_vhost(&c);
    assert!(route_action(&vh.routes[0]).hash_policy.is_empty());
    m.routes[0].http = vec![split(0, 100)];
    let c = generate(&m, &proxy(InterceptionMode::None));
    let vh = user_vhost(&c);
    let hp = &route_action(&vh.routes[0]).hash_policy;
    let Some(PolicySpecifier::Header(h)) = &hp[0].policy_specifier else {
        panic!("{hp:?}")
    };
    assert_eq!(h.header_name, "x-user");
}

// === mTLS ===

fn secure() -> Security {
    Security {
        mtls: true,
        ..Security::default()
    }
}

fn upstream_tls(
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        panic!("no typed config in {ts:?}")
    };
    prost::Message::decode(any.value.as_slice()).unwrap()
}

#[test]
#[allow(deprecated)]
fn auto_mtls_to_sidecars_with_service_account_sans() {
    let m = model(vec![split(50, 50)]);
    let plain = generate(&m, &proxy(InterceptionMode::None));
    let c = cluster(&plain, &format!("outbound|8081|v1|{USER}"));
    assert!(c.transport_socket_matches.is_empty() && c.transport_socket.is_none());

    let config = generate_with(&m, &proxy(InterceptionMode::None), &secure());
    let c = cluster(&config, &format!("outbound|8081|v1|{USER}"));
    assert_eq!(c.transport_socket_matches.len(), 2);
    let tls_match = &c.transport_socket_matches[0];
    assert_eq!(tls_match.name, "tlsMode-istio");
    let ctx = upstream_tls(tls_match.transport_socket.as_ref().unwrap());
    assert_eq!(ctx.sni, format!("outbound_.8081_.v1_.{USER}"));
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["istio-peer-exchange", "istio"]);
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    let Some(
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType::CombinedValidationContext(v),
    ) = common.validation_context_type
    else {
        panic!("no combined validation context")
    };
    assert_eq!(
        v.validation_context_sds_secret_config.unwrap().name,
        "ROOTCA"
    );
    let sans: Vec<_> = v
        .default_validation_context
        .unwrap()
        .match_subject_alt_names
        .into_iter()
        .map(|m| m.match_pattern)
        .collect();
    assert_eq!(
        sans,
        [Some(MatchPattern::Exact(
            "spiffe://cluster.local/ns/default/sa/user".into()
        ))]
    );
    assert_eq!(
        c.transport_socket_matches[1]
            .transport_socket
            .as_ref()
            .unwrap()
            .name,
        "envoy.transport_sockets.raw_buffer"
    );
    // Endpoints with sidecars say so, for the match.
    let cla = config
        .endpoints
        .iter()
        .find(|e| e.cluster_name == format!("outbound|8081|v1|{USER}"))
        .unwrap();
    let meta = cla.endpoints[0].lb_endpoints[0].metadata.as_ref().unwrap();
    let tls_mode = &meta.filter_metadata["envoy.transport_socket_match"].fields["tlsMode"];
    assert_eq!(tls_mode.kind, Some(Kind::StringValue("istio".into())));
}

#[test]
fn destination_rule_tls_mode_overrides_auto_mtls() {
    for (mode, forced, none) in [
        (TlsMode::IstioMutual, true, false),
        (TlsMode::Disable, false, true),
    ] {
        let mut m = model(vec![split(50, 50)]);
        m.destination_policies
            .get_mut(USER)
            .expect("the model has a DestinationRule for user")
            .traffic_policy
            .tls = Some(ClientTls {
            mode,
            sni: None,
            subject_alt_names: vec![],
            credential_name: None,
            ca_certificates: None,
            client_certificate: None,
            private_key: None,
            insecure_skip_verify: false,
            ca_crl: None,
        });
        let config = generate_with(&m, &proxy(InterceptionMode::None), &secure());
        let c = cluster(&config, &format!("outbound|8081||{USER}"));
        assert_eq!(c.transport_socket.is_some(), forced, "{mode:?}");
        assert_eq!(
            c.transport_socket_matches.is_empty(),
            none || forced,
            "{mode:?}"
        );
    }
}

fn peer_authn(mode: MtlsMode) -> mast_mesh_config::security::PeerAuthn {
    mast_mesh_config::security::PeerAuthn {
        namespace: "istio-system".into(),
        selector: None,
        mode,
        port_modes: BTreeMap::new(),
        source: ResourceRef::default(),
    }
}

fn user_proxy() -> ProxyNode {
    ProxyNode {
        id: "sidecar~10.1.0.1~user-v1.default~default.svc.cluster.local".into(),
        kind: "sidecar".into(),
        ip: "10.1.0.1".into(),
        pod_name: "user-v1".into(),
        namespace: "default".into(),
        labels: labels(&[("app", "user"), ("version", "v1")]),
        service_account: "user".into(),
        interception_mode: InterceptionMode::Redirect,
        ..Default::default()
    }
}

/// The virtualInbound chains for the workload port 9181: (transport, has TLS socket, first
/// filter name).
fn inbound_chains_9181(config: &ProxyConfig) -> Vec<(String, bool, String)> {
    let vi = listener(config, "virtualInbound");
    vi.filter_chains
        .iter()
        .filter(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.as_ref())
                .is_some_and(|p| p.value == 9181)
        })
        .map(|c| {
            let m = c.filter_chain_match.as_ref().unwrap();
            (
                m.transport_protocol.clone(),
                c.transport_socket.is_some(),
                c.filters[0].name.clone(),
            )
        })
        .collect()
}

#[test]
fn peer_authentication_modes_shape_inbound_chains() {
    let hcm = "envoy.filters.network.http_connection_manager".to_string();
    let tcp = "envoy.filters.network.tcp_proxy".to_string();
    let mut m = model(vec![split(50, 50)]);

    // No policy: PERMISSIVE, mTLS and plaintext side by side.
    let c = generate_with(&m, &user_proxy(), &secure());
    assert_eq!(
        inbound_chains_9181(&c),
        [
            ("tls".to_string(), true, hcm.clone()),
            ("raw_buffer".to_string(), false, hcm.clone())
        ]
    );
    let vi = listener(&c, "virtualInbound");
    assert!(
        vi.listener_filters
            .iter()
            .any(|f| f.name == "envoy.filters.listener.tls_inspector")
    );

    m.peer_authentications = vec![peer_authn(MtlsMode::Strict)];
    let c = generate_with(&m, &user_proxy(), &secure());
    assert_eq!(
        inbound_chains_9181(&c),
        [
            ("tls".to_string(), true, hcm.clone()),
            ("raw_buffer".to_string(), false, tcp.clone())
        ],
        "STRICT: plaintext goes to the black hole"
    );

    m.peer_authentications = vec![peer_authn(MtlsMode::Disable)];
    let c = generate_with(&m, &user_proxy(), &secure());
    assert_eq!(
        inbound_chains_9181(&c),
        [(String::new(), false, hcm.clone())]
    );

    // Without a CA nothing is TLS, whatever the policy says.
    m.peer_authentications = vec![peer_authn(MtlsMode::Strict)];
    let c = generate(&m, &user_proxy());
    assert_eq!(inbound_chains_9181(&c), [(String::new(), false, hcm)]);
}

/// Knative's route Service is an ExternalName to the local gateway, and net-istio's mesh
/// VirtualService matches it by authority prefix: a Host the VirtualService does not match
/// is a 404 (no `default` route to the ExternalName's target), as istiod, which treats an
/// ExternalName as an alias.
#[test]
fn external_name_service_gets_no_default_route_after_its_virtual_service() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: hello, namespace: default}\n\
        spec:\n  type: ExternalName\n  externalName: knative-local-gateway.istio-system.svc.cluster.local\n\
        \x20 ports:\n  - {name: http2, port: 80, targetPort: 80}\n---\n\
        apiVersion: v1\nkind: Service\nmetadata: {name: hello-00001, namespace: default}\n\
        spec:\n  selector: {app: hello}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n---\n\
        apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n\
        metadata: {name: hello-mesh, namespace: default}\n\
        spec:\n  gateways: [mesh]\n  hosts: [hello.default, hello.default.svc, hello.default.svc.cluster.local]\n\
        \x20 http:\n  - match:\n    - authority: {prefix: hello.default}\n      gateways: [mesh]\n\
        \x20   retries: {}\n    route:\n\
        \x20   - destination: {host: hello-00001.default.svc.cluster.local, port: {number: 80}}\n\
        \x20     weight: 100\n";
    let mut store = mast_mesh_config::store::ConfigStore::default();
    let report = store.apply_files([(std::path::PathBuf::from("k.yaml"), yaml.to_string())].into());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let c = generate(&store.model(), &proxy(InterceptionMode::None));
    let vh = route_config(&c, "80")
        .virtual_hosts
        .iter()
        .find(|v| v.name == "hello.default.svc.cluster.local:80")
        .cloned()
        .unwrap_or_else(|| panic!("no hello vhost"));
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["hello-mesh.0"], "{vh:?}");
    let action = route_action(&vh.routes[0]);
    assert_eq!(
        action.cluster_specifier,
        Some(ClusterSpecifier::Cluster(
            "outbound|80||hello-00001.default.svc.cluster.local".into()
        ))
    );
    // `retries: {}`: no retry policy at all.
    assert_eq!(action.retry_policy, None);
}
