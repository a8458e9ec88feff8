//! Does a real Envoy accept what we generate? Unit tests compare fields with what istiod
//! writes, but only Envoy knows every cross-field rule (oneofs, enum ranges, extension
//! configs, duplicate domains). This test puts a whole generated config into a binary
//! bootstrap (`.pb`) — route configurations inline on extra listeners, assignments as STATIC
//! clusters, since neither can be static otherwise — and runs `envoy --mode validate` on it.
//!
//! Ignored by default: it needs Envoy (`ENVOY_BIN`, as the e2e tests; scripts/test.sh
//! installs it). Run with `ENVOY_BIN=… cargo test -p mast-pilot --lib xds -- --ignored`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{DynamicResources, StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, GrpcService, Http2ProtocolOptions, Node,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::BoolValue;
use mast_mesh_config::model::*;
use mast_mesh_config::security::{MtlsMode, PeerAuthn};
use prost::Message;

use super::endpoints::socket_address;
use super::*;

fn envoy_bin() -> Option<PathBuf> {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy");
            venv.exists().then_some(venv)
        })
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn svc(name: &str, ns: &str, ports: Vec<(u16, Protocol)>, vip: Option<&str>) -> Service {
    Service {
        hostname: service_fqdn(name, ns),
        name: name.into(),
        namespace: ns.into(),
        ports: ports
            .into_iter()
            .map(|(port, protocol)| ServicePort {
                name: format!("p{port}"),
                port,
                target_port: Some(TargetPort::Number(port + 1000)),
                protocol,
            })
            .collect(),
        selector: Some(labels(&[("app", name)])),
        endpoints: vec![],
        addresses: vip.into_iter().map(String::from).collect(),
        resolution: Resolution::Static,
        mesh_external: false,
        export_to: vec![],
        source: ResourceRef::default(),
    }
}

/// A model exercising every feature the translation knows.
fn kitchen_sink() -> MeshModel {
    let mut m = MeshModel::default();
    let mut ext = svc(
        "api.example.com",
        "default",
        vec![(443, Protocol::Tls)],
        None,
    );
    ext.hostname = "api.example.com".into();
    ext.resolution = Resolution::Dns;
    ext.selector = None;
    let mut ext2 = ext.clone();
    ext2.hostname = "other.example.com".into();
    ext2.resolution = Resolution::None;
    for s in [
        svc(
            "user",
            "default",
            vec![(8080, Protocol::Http), (9090, Protocol::Grpc)],
            Some("10.96.0.10"),
        ),
        svc(
            "db",
            "default",
            vec![(5432, Protocol::Tcp)],
            Some("10.96.0.11"),
        ),
        svc(
            "odd",
            "prod",
            vec![(7000, Protocol::Unknown)],
            Some("10.96.0.12"),
        ),
        svc("web", "prod", vec![(8080, Protocol::Http)], None),
        ext,
        ext2,
    ] {
        m.services.insert(s.hostname.clone(), s);
    }
    for (i, v) in ["v1", "v2"].iter().enumerate() {
        m.workloads.push(Workload {
            name: format!("user-{v}"),
            namespace: "default".into(),
            address: format!("10.1.0.{}", i + 1),
            labels: labels(&[("app", "user"), ("version", v)]),
            ports: Default::default(),
            service_account: "user".into(),
            weight: Some(2),
            locality: Some("r1/z1/s1".into()),
            network: None,
            has_sidecar: true,
            source: ResourceRef::default(),
        });
    }
    let user = service_fqdn("user", "default");
    m.destination_policies.insert(
        user.clone(),
        DestinationPolicy {
            host: user.clone(),
            namespace: "default".into(),
            traffic_policy: TrafficPolicy {
                load_balancer: Some(LoadBalancer::ConsistentHash(HashKey::Cookie {
                    name: "session".into(),
                    ttl: Some(Duration::from_secs(60)),
                })),
                connection_pool: Some(ConnectionPool {
                    max_connections: Some(10),
                    connect_timeout: Some(Duration::from_millis(300)),
                    tcp_keepalive: true,
                    max_requests_per_connection: Some(5),
                    idle_timeout: Some(Duration::from_secs(30)),
                    ..Default::default()
                }),
                outlier_detection: Some(OutlierDetection {
                    consecutive_5xx_errors: Some(3),
                    interval: Some(Duration::from_secs(5)),
                    base_ejection_time: Some(Duration::from_secs(30)),
                    max_ejection_percent: Some(50),
                    ..Default::default()
                }),
                ..Default::default()
            },
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
    let dest = |subset: &str, weight| WeightedDestination {
        destination: Destination {
            host: user.clone(),
            subset: Some(subset.into()),
            port: Some(8080),
        },
        weight,
        headers: HeaderOperations {
            request: HeaderOps {
                set: vec![("x-subset".into(), subset.into())],
                ..Default::default()
            },
            ..Default::default()
        },
    };
    let rules = vec![
        HttpRoute {
            name: Some("canary".into()),
            matches: vec![RouteMatch {
                uri: Some(StringMatch::Regex("/api/v[0-9]+/.*".into())),
                method: Some(StringMatch::Exact("GET".into())),
                headers: vec![
                    HeaderMatch {
                        name: "end-user".into(),
                        value: Some(StringMatch::Prefix("ja".into())),
                        invert: false,
                    },
                    HeaderMatch {
                        name: "x-skip".into(),
                        value: None,
                        invert: true,
                    },
                ],
                query_params: vec![QueryMatch {
                    name: "debug".into(),
                    value: None,
                }],
                ignore_uri_case: true,
                ..Default::default()
            }],
            action: RouteAction::Forward(vec![dest("v1", 50), dest("v2", 50)]),
            rewrite: Some(Rewrite {
                path: Some(PathRewrite::Regex {
                    pattern: "^/api/(.*)$".into(),
                    substitution: "/\\1".into(),
                }),
                authority: Some("user.internal".into()),
            }),
            timeout: Some(Duration::from_secs(3)),
            retries: Some(mast_mesh_config::model::RetryPolicy {
                attempts: 3,
                per_try_timeout: Some(Duration::from_secs(1)),
                retry_on: Some("5xx,gateway-error,503".into()),
                retry_remote_localities: true,
            }),
            fault: Some(FaultInjection {
                delay: Some(FaultDelay {
                    fixed_delay: Duration::from_millis(100),
                    percentage: 10.0,
                }),
                abort: Some(FaultAbort {
                    kind: AbortKind::GrpcStatus("UNAVAILABLE".into()),
                    percentage: 0.1,
                }),
            }),
            mirrors: vec![Mirror {
                destination: Destination {
                    host: user.clone(),
                    subset: Some("v2".into()),
                    port: Some(8080),
                },
                percentage: 5.0,
            }],
            headers: HeaderOperations {
                request: HeaderOps {
                    set: vec![("x-a".into(), "1".into())],
                    add: vec![("x-b".into(), "2".into())],
                    remove: vec!["x-c".into()],
                },
                response: HeaderOps {
                    remove: vec!["server".into()],
                    ..Default::default()
                },
            },
            cors: None,
        },
        HttpRoute {
            matches: vec![RouteMatch {
                uri: Some(StringMatch::Exact("/old".into())),
                ..Default::default()
            }],
            action: RouteAction::Redirect(Redirect {
                scheme: Some("https".into()),
                host: Some("new.example.com".into()),
                port: Some(8443),
                path: Some(PathRewrite::Prefix("/new".into())),
                status: 302,
            }),
            ..Default::default()
        },
        HttpRoute {
            matches: vec![RouteMatch {
                uri: Some(StringMatch::Prefix("/teapot".into())),
                ..Default::default()
            }],
            action: RouteAction::DirectResponse {
                status: 418,
                body: Some("short and stout".into()),
            },
            ..Default::default()
        },
    ];
    m.routes.push(RouteTable {
        hosts: vec![user.clone()],
        namespace: "default".into(),
        export_to: vec![],
        port: Some(8080),
        section: None,
        gateways: Vec::new(),
        tls: Vec::new(),
        http: rules,
        tcp: vec![],
        source: ResourceRef {
            kind: "VirtualService".into(),
            namespace: "default".into(),
            name: "user".into(),
        },
    });
    let db = service_fqdn("db", "default");
    m.routes.push(RouteTable {
        hosts: vec![db.clone()],
        namespace: "default".into(),
        export_to: vec![],
        port: None,
        section: None,
        gateways: Vec::new(),
        tls: Vec::new(),
        http: vec![],
        tcp: vec![TcpRoute {
            port: Some(5432),
            destinations: ["a", "b"]
                .iter()
                .map(|s| WeightedDestination {
                    destination: Destination {
                        host: db.clone(),
                        subset: Some(s.to_string()),
                        port: None,
                    },
                    weight: 50,
                    headers: HeaderOperations::default(),
                })
                .collect(),
        }],
        source: ResourceRef::default(),
    });
    m
}

/// AuthorizationPolicies on `user` (HTTP) and `odd` (TCP chains): DENY, ALLOW and AUDIT.
const AUTHZ_FIXTURE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: user}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"], methods: ["POST"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/web"], namespaces: ["prod"]}}]
    when: [{key: "request.headers[x-user]", values: ["jason"]}]
  - from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {ports: ["9080"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-odd, namespace: prod}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {ports: ["7100"]}}]
"#;

/// Everything in `c`, made static so `--mode validate` checks it all.
fn bootstrap(c: &ProxyConfig, node_id: &str) -> Bootstrap {
    let hcm_filter = |rc: &RouteConfiguration| Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(FilterConfig::TypedConfig(any(&HttpConnectionManager {
            stat_prefix: "validate".into(),
            route_specifier: Some(RouteSpecifier::RouteConfig(rc.clone())),
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
            ..Default::default()
        }))),
    };
    let mut listeners = c.listeners.clone();
    for (i, rc) in c.routes.iter().enumerate() {
        listeners.push(Listener {
            name: format!("validate-rds-{}", rc.name),
            address: Some(socket_address("127.0.0.1", 30000 + i as u16)),
            bind_to_port: Some(BoolValue { value: false }),
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter(rc)],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let mut clusters = c.clusters.clone();
    for cla in &c.endpoints {
        clusters.push(Cluster {
            name: format!("validate-eds-{}", cla.cluster_name),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
            load_assignment: Some(cla.clone()),
            ..Default::default()
        });
    }
    let h2 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    let mut xds = Cluster {
        name: "xds-grpc".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(endpoints::static_assignment("xds-grpc", "127.0.0.1", 15010)),
        ..Default::default()
    };
    xds.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(&h2),
    );
    clusters.push(xds);
    // The agent's SDS socket, as every Istio bootstrap has it (mTLS secrets come from it).
    let mut sds = Cluster {
        name: mtls::SDS_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(endpoints::static_assignment(
            mtls::SDS_CLUSTER,
            "127.0.0.1",
            15019,
        )),
        ..Default::default()
    };
    sds.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(&h2),
    );
    clusters.push(sds);
    Bootstrap {
        node: Some(Node {
            id: node_id.into(),
            cluster: "validate".into(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: "xds-grpc".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs wherever a real Envoy is available: scripts/test.sh installs it and sets ENVOY_BIN,
/// so CI always runs it; a bare `cargo test` without Envoy says so and skips.
#[test]
fn envoy_accepts_generated_config() {
    let Some(envoy) = envoy_bin() else {
        eprintln!("no Envoy (ENVOY_BIN or .venv/bin/envoy): skipping envoy --mode validate");
        return;
    };
    let mut model = kitchen_sink();
    // A Sidecar for `prod`: an egress listener bound to a loopback alias, and an ingress port
    // with its own socket beside the captured undeclared port of `odd`.
    model.sidecars.push(SidecarScope {
        namespace: "prod".into(),
        egress: vec![
            EgressListener {
                port: Some(ServicePort {
                    name: "http".into(),
                    port: 8080,
                    target_port: None,
                    protocol: Protocol::Http,
                }),
                bind: Some("127.0.0.2".into()),
                capture_mode: Some(CaptureMode::None),
                hosts: vec!["*/*".into()],
            },
            EgressListener {
                hosts: vec!["*/*".into()],
                ..Default::default()
            },
        ],
        ingress: vec![IngressListener {
            port: ServicePort {
                name: "admin".into(),
                port: 7100,
                target_port: None,
                protocol: Protocol::Unknown,
            },
            bind: None,
            capture_mode: Some(CaptureMode::None),
            default_endpoint: Some("127.0.0.1:7200".into()),
        }],
        registry_only: true,
        ..Default::default()
    });
    // mTLS: mesh-wide PERMISSIVE, `prod` STRICT except one port, and authorization
    // policies on `user`, so the TLS chains and RBAC filters are validated too.
    let pa = |ns: &str, selector: Option<Labels>, mode, ports: &[(u16, MtlsMode)]| PeerAuthn {
        namespace: ns.into(),
        selector,
        mode,
        port_modes: ports.iter().copied().collect(),
        source: ResourceRef::default(),
    };
    model.peer_authentications = vec![
        pa("istio-system", None, MtlsMode::Permissive, &[]),
        pa("prod", None, MtlsMode::Strict, &[]),
        pa(
            "prod",
            Some(labels(&[("app", "odd")])),
            MtlsMode::Unset,
            &[(7100, MtlsMode::Disable)],
        ),
    ];
    let mut store = mast_mesh_config::store::ConfigStore::default();
    let report =
        store.apply_files([(PathBuf::from("authz.yaml"), AUTHZ_FIXTURE.to_string())].into());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    model.authorization_policies = store.model().authorization_policies.clone();
    assert_eq!(model.authorization_policies.len(), 3);
    let security = Security {
        mtls: true,
        ..Security::default()
    };
    let dir = tempfile::tempdir().unwrap();
    for (mode, ns, labels) in [
        (
            InterceptionMode::Redirect,
            "default",
            labels(&[("app", "user"), ("version", "v1")]),
        ),
        (InterceptionMode::None, "default", labels(&[("app", "web")])),
        (InterceptionMode::Tproxy, "prod", labels(&[("app", "odd")])),
    ] {
        let proxy = ProxyNode {
            id: format!("sidecar~10.1.0.1~user-v1.{ns}~{ns}.svc.cluster.local"),
            kind: "sidecar".into(),
            ip: "10.1.0.1".into(),
            pod_name: "user-v1".into(),
            namespace: ns.into(),
            labels,
            interception_mode: mode,
            ..Default::default()
        };
        let config = generate_with(&model, &proxy, &security);
        assert!(!config.routes.is_empty() && !config.endpoints.is_empty());
        if ns == "prod" {
            let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
            for want in ["127.0.0.2_8080", "10.1.0.1_7100", "virtualInbound"] {
                assert!(names.contains(&want), "{want} missing from {names:?}");
            }
        }
        let path = dir.path().join(format!("{mode:?}.pb"));
        std::fs::write(&path, bootstrap(&config, &proxy.id).encode_to_vec()).unwrap();
        let out = Command::new(&envoy)
            .arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(&path)
            .args(["--log-level", "warn"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Envoy rejected the {mode:?} config:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The Istio shapes a gateway gets: plain HTTP (shared RDS), HTTPS SIMPLE and MUTUAL from
/// Secrets over SDS, an httpsRedirect server, TLS PASSTHROUGH by SNI and a TCP server.
const GATEWAY_FIXTURE: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: "-----BEGIN CERTIFICATE-----", tls.key: "-----BEGIN PRIVATE KEY-----"}
---
apiVersion: v1
kind: Secret
metadata: {name: admin-cert, namespace: istio-system}
type: kubernetes.io/tls
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----"
  tls.key: "-----BEGIN PRIVATE KEY-----"
  ca.crt: "-----BEGIN CERTIFICATE-----"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8081, name: http-redirect, protocol: HTTP}
    hosts: [shop.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [default/shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 8443, name: https-admin, protocol: HTTPS}
    hosts: [admin.example.com]
    tls: {mode: MUTUAL, credentialName: admin-cert}
  - port: {number: 9443, name: tls-passthrough, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 5432, name: tcp-db, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop.example.com, admin.example.com]
  gateways: [istio-system/edge, mesh]
  http:
  - match: [{uri: {prefix: /api}}]
    route:
    - destination: {host: user, port: {number: 8080}}
      weight: 60
    - destination: {host: user, port: {number: 9090}}
      weight: 30
  - route:
    - destination: {host: user, port: {number: 8080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: [db.example.com], port: 9443}]
    route:
    - destination: {host: db, port: {number: 5432}}
  tcp:
  - match: [{port: 5432}]
    route:
    - destination: {host: db, port: {number: 5432}}
"#;

#[test]
fn envoy_accepts_generated_gateway_config() {
    let mut model = kitchen_sink();
    let mut store = mast_mesh_config::store::ConfigStore::default();
    let report =
        store.apply_files([(PathBuf::from("gw.yaml"), GATEWAY_FIXTURE.to_string())].into());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let parsed = store.model();
    model.gateways = parsed.gateways.clone();
    model.tls_secrets = parsed.tls_secrets.clone();
    model.routes.extend(parsed.routes.iter().cloned());
    let proxy = ProxyNode {
        id: "router~10.1.0.9~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
            .into(),
        kind: "router".into(),
        ip: "10.1.0.9".into(),
        pod_name: "istio-ingressgateway-1".into(),
        namespace: "istio-system".into(),
        labels: labels(&[("istio", "ingressgateway")]),
        ..Default::default()
    };
    let security = Security {
        mtls: true,
        ..Security::default()
    };
    let config = generate_with(&model, &proxy, &security);
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.0.0.0_5432",
            "0.0.0.0_8080",
            "0.0.0.0_8081",
            "0.0.0.0_8443",
            "0.0.0.0_9443"
        ]
    );
    let routes: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        routes,
        [
            "http.8080",
            "http.8081",
            "https.8443.https-admin.edge.istio-system",
            "https.8443.https.edge.istio-system"
        ]
    );
    // The SIMPLE server is scoped to VirtualServices of `default`: `shop` is one.
    let https = config
        .routes
        .iter()
        .find(|r| r.name == "https.8443.https.edge.istio-system")
        .unwrap();
    assert_eq!(https.virtual_hosts[0].domains, ["shop.example.com"]);
    assert!(!https.virtual_hosts[0].routes.is_empty());
    let redirect = config
        .routes
        .iter()
        .find(|r| r.name == "http.8081")
        .unwrap();
    assert_eq!(redirect.virtual_hosts[0].require_tls, 2, "ALL");
    // A sidecar sees the VirtualService bound to `mesh` too, not the gateway-only one.
    let sidecar = ProxyNode {
        id: "sidecar~10.1.0.1~web-1.default~default.svc.cluster.local".into(),
        kind: "sidecar".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    let side = generate_with(&model, &sidecar, &security);
    assert!(!side.listeners.iter().any(|l| l.name == "0.0.0.0_8443"));

    let Some(envoy) = envoy_bin() else {
        eprintln!("no Envoy (ENVOY_BIN or .venv/bin/envoy): skipping envoy --mode validate");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.pb");
    std::fs::write(&path, bootstrap(&config, &proxy.id).encode_to_vec()).unwrap();
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .args(["--log-level", "warn"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Envoy rejected the gateway config:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Istio's egress tasks: TLS origination from a sidecar (SIMPLE with a CA file or the system
/// bundle, MUTUAL with files, `insecureSkipVerify`, an HTTP/2 port with `sni` and SANs) and at
/// an egress gateway (`credentialName`, ISTIO_MUTUAL from the mesh with the task's SNI).
const EGRESS_FIXTURE: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: default}
spec:
  hosts: [external.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 443}
  - {number: 443, name: https, protocol: HTTPS}
  - {number: 8443, name: grpc, protocol: GRPC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mutual, namespace: default}
spec:
  hosts: [mutual.example.com, skip.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: external, namespace: default}
spec:
  host: external.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /etc/certs/external-ca.pem}
    portLevelSettings:
    - port: {number: 8443}
      tls: {mode: SIMPLE, sni: grpc.example.com, subjectAltNames: [grpc.example.com]}
    - port: {number: 443}
      tls: {mode: MUTUAL, credentialName: client-credential, sni: external.example.com}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mutual, namespace: default}
spec:
  host: mutual.example.com
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: /etc/certs/client.pem
      privateKey: /etc/certs/client-key.pem
      caCertificates: /etc/certs/external-ca.pem
      caCrl: /etc/certs/external-crl.pem
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: skip, namespace: default}
spec:
  host: skip.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, insecureSkipVerify: true}
"#;

/// The Secret an egress gateway's `credentialName` names, in the gateway's namespace.
const EGRESS_GATEWAY_FIXTURE: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: client-credential, namespace: istio-system}
type: Opaque
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----"
  tls.key: "-----BEGIN PRIVATE KEY-----"
  ca.crt: "-----BEGIN CERTIFICATE-----"
"#;

pub(super) fn validate(config: &ProxyConfig, node_id: &str, what: &str) {
    let Some(envoy) = envoy_bin() else {
        eprintln!("no Envoy (ENVOY_BIN or .venv/bin/envoy): skipping envoy --mode validate");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.pb");
    std::fs::write(&path, bootstrap(config, node_id).encode_to_vec()).unwrap();
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .args(["--log-level", "warn"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Envoy rejected the {what} config:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn envoy_accepts_tls_origination() {
    let mut store = mast_mesh_config::store::ConfigStore::default();
    let report = store.apply_files(
        [
            (PathBuf::from("egress.yaml"), EGRESS_FIXTURE.to_string()),
            (
                PathBuf::from("egress-gw.yaml"),
                EGRESS_GATEWAY_FIXTURE.to_string(),
            ),
        ]
        .into(),
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let model = store.model();
    let security = Security {
        mtls: true,
        ..Security::default()
    };
    let sidecar = ProxyNode {
        id: "sidecar~10.1.0.1~web-1.default~default.svc.cluster.local".into(),
        kind: "sidecar".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    let side = generate_with(&model, &sidecar, &security);
    let tls_of = |c: &ProxyConfig, name: &str| {
        let cluster = c
            .clusters
            .iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"));
        cluster.transport_socket.clone()
    };
    // credentialName is for gateways: the sidecar's 443 stays as it was.
    assert!(tls_of(&side, "outbound|443||external.example.com").is_none());
    for name in [
        "outbound|80||external.example.com",
        "outbound|8443||external.example.com",
        "outbound|80||mutual.example.com",
        "outbound|80||skip.example.com",
    ] {
        assert!(tls_of(&side, name).is_some(), "{name} originates TLS");
    }
    validate(&side, &sidecar.id, "sidecar TLS origination");

    let gateway = ProxyNode {
        id: "router~10.1.0.9~istio-egressgateway-1.istio-system~istio-system.svc.cluster.local"
            .into(),
        kind: "router".into(),
        ip: "10.1.0.9".into(),
        pod_name: "istio-egressgateway-1".into(),
        namespace: "istio-system".into(),
        labels: labels(&[("istio", "egressgateway")]),
        ..Default::default()
    };
    let gw = generate_with(&model, &gateway, &security);
    assert!(tls_of(&gw, "outbound|443||external.example.com").is_some());
    let secrets = gateway_secrets(&model, &gateway);
    assert_eq!(
        secrets,
        [
            "kubernetes://client-credential",
            "kubernetes://client-credential-cacert"
        ]
    );
    validate(&gw, &gateway.id, "egress gateway TLS origination");
}

fn gateway_secrets(model: &MeshModel, proxy: &ProxyNode) -> Vec<String> {
    super::gateway::generate(model, proxy, &Security::default())
        .secrets
        .into_iter()
        .map(|s| s.name)
        .collect()
}

/// RequestAuthentication (two issuers: inline keys, and a `jwksUri` not yet fetched, which
/// inlines the never-valid key set), AuthorizationPolicies on request principals and
/// claims, for a sidecar and for the ingress gateway, and a gateway VirtualService routing on
/// claims (`clear_route_cache` on the gateway's providers).
const JWT_FIXTURE: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  jwtRules:
  - issuer: https://issuer.example
    audiences: [shop]
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"k","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'
    fromHeaders: [{name: authorization, prefix: 'Bearer '}]
    fromParams: [access_token]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{header: x-jwt-group, claim: group}]
  - issuer: other
    jwksUri: http://127.0.0.1:9/keys
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: need-jwt, namespace: istio-system}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
    when:
    - {key: "request.auth.claims[groups]", values: [admin]}
    - {key: request.auth.audiences, values: [shop]}
    - {key: request.auth.presenter, values: [web]}
    - {key: request.auth.principal, values: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: by-claims, namespace: default}
spec:
  hosts: [claims.example.com]
  gateways: [istio-system/edge]
  http:
  - match:
    - headers:
        "@request.auth.claims.group": {exact: group1}
        "@request.auth.claims[nested][key1]": {regex: "value[AB]"}
      withoutHeaders:
        "@request.auth.claims.sub": {prefix: banned-}
    route:
    - destination: {host: user, port: {number: 9090}}
  - route:
    - destination: {host: user, port: {number: 8080}}
"#;

#[test]
fn envoy_accepts_jwt_authn() {
    let mut model = kitchen_sink();
    let mut store = mast_mesh_config::store::ConfigStore::default();
    let report = store.apply_files(
        [
            (PathBuf::from("gw.yaml"), GATEWAY_FIXTURE.to_string()),
            (PathBuf::from("jwt.yaml"), JWT_FIXTURE.to_string()),
        ]
        .into(),
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let parsed = store.model();
    model.gateways = parsed.gateways.clone();
    model.tls_secrets = parsed.tls_secrets.clone();
    model.routes.extend(parsed.routes.iter().cloned());
    model.request_authentications = parsed.request_authentications.clone();
    model.authorization_policies = parsed.authorization_policies.clone();
    let security = Security {
        mtls: true,
        ..Security::default()
    };
    for (kind, ns, labels) in [
        ("sidecar", "default", labels(&[("app", "user")])),
        (
            "router",
            "istio-system",
            labels(&[("istio", "ingressgateway")]),
        ),
    ] {
        let proxy = ProxyNode {
            id: format!("{kind}~10.1.0.9~p-1.{ns}~{ns}.svc.cluster.local"),
            kind: kind.into(),
            ip: "10.1.0.9".into(),
            pod_name: "p-1".into(),
            namespace: ns.into(),
            labels,
            ..Default::default()
        };
        let config = generate_with(&model, &proxy, &security);
        let bytes: Vec<u8> = config
            .listeners
            .iter()
            .flat_map(|l| l.encode_to_vec())
            .collect();
        let name = b"envoy.filters.http.jwt_authn";
        assert!(
            bytes.windows(name.len()).any(|w| w == name),
            "{kind}: no jwt_authn filter"
        );
        if kind == "router" {
            // Claims-based routing: the claim rule (three metadata matchers) is no catch-all,
            // so the default rule follows it.
            let vhost = config
                .routes
                .iter()
                .flat_map(|r| &r.virtual_hosts)
                .find(|v| v.domains.iter().any(|d| d == "claims.example.com"))
                .expect("a virtual host for claims.example.com");
            let claims: Vec<usize> = vhost
                .routes
                .iter()
                .map(|r| r.r#match.as_ref().map_or(0, |m| m.dynamic_metadata.len()))
                .collect();
            assert_eq!(claims, [3, 0], "{vhost:#?}");
        }
        validate(&config, &proxy.id, &format!("{kind} jwt_authn"));
    }
}
