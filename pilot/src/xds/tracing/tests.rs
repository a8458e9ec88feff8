//! The connection managers' tracing against istiod's shape, and `envoy --mode validate` on
//! configs with each provider.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType as ProviderConfig;
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use mast_mesh_config::model::MeshModel;
use prost::Message;

use super::super::{ProxyConfig, Security, generate_with};
use super::*;

const BASE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  selector: {app: zipkin}
  ports: [{name: http, port: 9411}]
---
apiVersion: v1
kind: Service
metadata: {name: otel, namespace: observability}
spec:
  selector: {app: otel}
  ports: [{name: grpc, port: 4317}, {name: http, port: 4318}]
---
apiVersion: v1
kind: Service
metadata: {name: user, namespace: default}
spec:
  selector: {app: user}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: user-1, namespace: default}
spec: {address: 10.1.0.9, labels: {app: user}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - route:
    - destination: {host: user, port: {number: 8080}}
"#;

const PROVIDERS: &str = r#"
    extensionProviders:
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 64}
    - name: otel
      opentelemetry:
        service: observability/otel.observability.svc.cluster.local
        port: 4317
        grpc: {timeout: 2s, initialMetadata: [{name: x-tenant, value: t1}]}
    - name: otel-http
      opentelemetry:
        service: otel.observability.svc.cluster.local
        port: 4318
        http: {path: /v1/traces, timeout: 3s, headers: [{name: x-tenant, value: t1}]}
    - name: nowhere
      zipkin: {service: zipkin.elsewhere.svc.cluster.local, port: 9411}
"#;

fn model(mesh_extra: &str, extra: &str) -> MeshModel {
    let yaml = format!(
        "{BASE}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |{PROVIDERS}{mesh_extra}\n{extra}"
    );
    let mut store = mast_mesh_config::store::ConfigStore::default();
    let report = store.apply_files([(PathBuf::from("mesh.yaml"), yaml)].into());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    (*store.model()).clone()
}

fn sidecar(version: Option<&str>) -> ProxyNode {
    ProxyNode {
        id: "sidecar~10.1.0.9~user-1.default~default.svc.cluster.local".into(),
        kind: "sidecar".into(),
        ip: "10.1.0.9".into(),
        pod_name: "user-1".into(),
        namespace: "default".into(),
        service_cluster: "user.default".into(),
        labels: [
            ("app".to_string(), "user".to_string()),
            (
                "service.istio.io/canonical-name".to_string(),
                "user".to_string(),
            ),
        ]
        .into(),
        cluster_id: "Kubernetes".into(),
        version: version.map(String::from),
        ..Default::default()
    }
}

fn gateway() -> ProxyNode {
    ProxyNode {
        id: "router~10.1.0.7~gw-1.istio-system~istio-system.svc.cluster.local".into(),
        kind: "router".into(),
        ip: "10.1.0.7".into(),
        pod_name: "gw-1".into(),
        namespace: "istio-system".into(),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..Default::default()
    }
}

fn hcms(listeners: &[Listener]) -> Vec<(String, HttpConnectionManager)> {
    let mut out = Vec::new();
    for l in listeners {
        for chain in l.filter_chains.iter().chain(&l.default_filter_chain) {
            for f in &chain.filters {
                if f.name != "envoy.filters.network.http_connection_manager" {
                    continue;
                }
                let Some(FilterConfig::TypedConfig(a)) = &f.config_type else {
                    continue;
                };
                out.push((
                    l.name.clone(),
                    HttpConnectionManager::decode(a.value.as_slice()).unwrap(),
                ));
            }
        }
    }
    out
}

/// The tracing of the first outbound and the first inbound HTTP connection manager.
fn sides(config: &ProxyConfig) -> (Option<Tracing>, Option<Tracing>) {
    let all = hcms(&config.listeners);
    let pick = |inbound: bool| {
        all.iter()
            .find(|(name, h)| {
                name.starts_with("virtualInbound") == inbound && !h.stat_prefix.is_empty()
            })
            .map(|(_, h)| h.tracing.clone())
            .expect("an HTTP connection manager")
    };
    (pick(false), pick(true))
}

fn zipkin_of(t: &Tracing) -> ZipkinConfig {
    let p = t.provider.as_ref().expect("a provider");
    assert_eq!(p.name, ZIPKIN);
    let Some(ProviderConfig::TypedConfig(a)) = &p.config_type else {
        panic!("typed config");
    };
    ZipkinConfig::decode(a.value.as_slice()).unwrap()
}

fn otel_of(t: &Tracing) -> OpenTelemetryConfig {
    let p = t.provider.as_ref().expect("a provider");
    assert_eq!(p.name, OPENTELEMETRY);
    let Some(ProviderConfig::TypedConfig(a)) = &p.config_type else {
        panic!("typed config");
    };
    OpenTelemetryConfig::decode(a.value.as_slice()).unwrap()
}

fn sampling_of(t: &Tracing) -> (f64, f64, f64) {
    (
        t.client_sampling.as_ref().unwrap().value,
        t.random_sampling.as_ref().unwrap().value,
        t.overall_sampling.as_ref().unwrap().value,
    )
}

fn request_id_sampling(h: &HttpConnectionManager) -> bool {
    let a = h
        .request_id_extension
        .as_ref()
        .and_then(|r| r.typed_config.as_ref())
        .expect("a request id extension");
    UuidRequestIdConfig::decode(a.value.as_slice())
        .unwrap()
        .use_request_id_for_trace_sampling
        .unwrap()
        .value
}

#[test]
fn default_zipkin_provider_on_both_sides_as_istiod() {
    let m = model("    defaultProviders: {tracing: [zipkin]}\n", "");
    let config = generate_with(&m, &sidecar(None), &Security::default());
    let (out, inb) = sides(&config);
    let (out, inb) = (out.unwrap(), inb.unwrap());
    for t in [&out, &inb] {
        // PILOT_TRACE_SAMPLING's 1%, clients' and overall 100%.
        assert_eq!(sampling_of(t), (100.0, 1.0, 100.0));
        assert_eq!(t.max_path_tag_length.as_ref().unwrap().value, 64);
        assert_eq!(t.spawn_upstream_span, None);
        let z = zipkin_of(t);
        // A proxy without ISTIO_VERSION is taken for the newest: collector_service.
        let service = z.collector_service.unwrap();
        let uri = service.http_uri.unwrap();
        assert_eq!(
            uri.uri,
            "http://zipkin.istio-system.svc.cluster.local/api/v2/spans"
        );
        assert_eq!(
            uri.http_upstream_type,
            Some(http_uri::HttpUpstreamType::Cluster(
                "outbound|9411||zipkin.istio-system.svc.cluster.local".into()
            ))
        );
        assert_eq!(uri.timeout.unwrap().seconds, 5);
        assert_eq!(
            z.collector_endpoint_version,
            CollectorEndpointVersion::HttpJson as i32
        );
        assert!(z.trace_id_128bit);
        assert_eq!(z.shared_span_context, Some(BoolValue { value: false }));
        let tags: Vec<&str> = t.custom_tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(
            tags,
            [
                "istio.authorization.dry_run.allow_policy.name",
                "istio.authorization.dry_run.allow_policy.result",
                "istio.authorization.dry_run.deny_policy.name",
                "istio.authorization.dry_run.deny_policy.result",
                "istio.canonical_revision",
                "istio.canonical_service",
                "istio.cluster_id",
                "istio.mesh_id",
                "istio.namespace",
            ]
        );
        assert_eq!(
            t.custom_tags[5].r#type,
            Some(custom_tag::Type::Literal(custom_tag::Literal {
                value: "user".into()
            }))
        );
    }
    for (_, h) in hcms(&config.listeners) {
        assert!(request_id_sampling(&h));
    }
}

#[test]
fn older_istio_proxies_get_the_legacy_zipkin_fields() {
    let m = model("    defaultProviders: {tracing: [zipkin]}\n", "");
    let config = generate_with(&m, &sidecar(Some("1.27.3")), &Security::default());
    let z = zipkin_of(&sides(&config).0.unwrap());
    assert_eq!(
        z.collector_cluster,
        "outbound|9411||zipkin.istio-system.svc.cluster.local"
    );
    assert_eq!(z.collector_endpoint, "/api/v2/spans");
    assert_eq!(
        z.collector_hostname,
        "zipkin.istio-system.svc.cluster.local"
    );
    assert_eq!(z.collector_service, None);
    assert_eq!(z.trace_context_option, 0);
}

#[test]
fn telemetry_rules_choose_provider_rate_and_tags_per_side() {
    let m = model(
        "    defaultProviders: {tracing: [zipkin]}\n    defaultConfig: {tracing: {sampling: 5}}\n",
        r#"---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 20
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: user, namespace: default}
spec:
  selector: {matchLabels: {app: user}}
  tracing:
  - match: {mode: CLIENT}
    providers: [{name: otel}]
    useRequestIdForTraceSampling: false
    customTags:
      team: {literal: {value: payments}}
      user: {header: {name: x-user, defaultValue: anon}}
  - match: {mode: SERVER}
    providers: [{name: otel-http}]
    randomSamplingPercentage: 50
"#,
    );
    let config = generate_with(&m, &sidecar(None), &Security::default());
    let (out, inb) = sides(&config);
    let (out, inb) = (out.unwrap(), inb.unwrap());
    assert_eq!(sampling_of(&out), (100.0, 20.0, 100.0));
    assert_eq!(sampling_of(&inb), (100.0, 50.0, 100.0));
    let grpc = otel_of(&out);
    assert_eq!(grpc.service_name, "user.default");
    let g = grpc.grpc_service.unwrap();
    assert_eq!(
        g.target_specifier,
        Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: "outbound|4317||otel.observability.svc.cluster.local".into(),
                authority: "otel.observability.svc.cluster.local".into(),
                ..Default::default()
            }
        ))
    );
    assert_eq!(g.timeout.unwrap().seconds, 2);
    assert_eq!(g.initial_metadata[0].key, "x-tenant");
    let http = otel_of(&inb).http_service.unwrap();
    let uri = http.http_uri.unwrap();
    assert_eq!(uri.uri, "otel.observability.svc.cluster.local/v1/traces");
    assert_eq!(
        uri.http_upstream_type,
        Some(http_uri::HttpUpstreamType::Cluster(
            "outbound|4318||otel.observability.svc.cluster.local".into()
        ))
    );
    assert_eq!(
        http.request_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .value,
        "t1"
    );
    // Client tags: Istio's and the Telemetry's, sorted.
    let tags: Vec<&str> = out.custom_tags.iter().map(|t| t.tag.as_str()).collect();
    assert!(
        tags.contains(&"team") && tags.contains(&"istio.namespace"),
        "{tags:?}"
    );
    assert!(tags.windows(2).all(|w| w[0] <= w[1]), "{tags:?}");
    let user = out.custom_tags.iter().find(|t| t.tag == "user").unwrap();
    assert_eq!(
        user.r#type,
        Some(custom_tag::Type::RequestHeader(custom_tag::Header {
            name: "x-user".into(),
            default_value: "anon".into()
        }))
    );
    for (name, h) in hcms(&config.listeners) {
        let inbound = name.starts_with("virtualInbound");
        assert_eq!(request_id_sampling(&h), inbound, "{name}");
    }
    // Another workload of the namespace: only the mesh-wide rate over the default provider.
    let mut other = sidecar(None);
    other.labels = [("app".to_string(), "other".to_string())].into();
    let t = HcmTracing::new(&m, &other, Class::SidecarOutbound)
        .tracing
        .unwrap();
    assert_eq!(sampling_of(&t), (100.0, 20.0, 100.0));
    zipkin_of(&t);
}

#[test]
fn legacy_mesh_config_and_missing_collectors() {
    // No Telemetry, no default provider: enableTracing's sampling and tags, no provider.
    let m = model("    defaultConfig: {tracing: {sampling: 7}}\n", "");
    let t = HcmTracing::new(&m, &sidecar(None), Class::SidecarInbound)
        .tracing
        .unwrap();
    assert_eq!(sampling_of(&t), (100.0, 7.0, 100.0));
    assert!(t.provider.is_none());
    let m = model("    enableTracing: false\n", "");
    assert_eq!(
        HcmTracing::new(&m, &sidecar(None), Class::SidecarInbound).tracing,
        None
    );
    // A provider whose collector is not in the registry: no tracing, as istiod.
    let m = model("    defaultProviders: {tracing: [nowhere]}\n", "");
    assert_eq!(
        HcmTracing::new(&m, &sidecar(None), Class::SidecarOutbound).tracing,
        None
    );
    // A provider name MeshConfig does not define, and disabled reporting.
    let m = model(
        "",
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\nspec:\n  tracing:\n  - providers: [{name: missing}]\n",
    );
    assert_eq!(
        HcmTracing::new(&m, &sidecar(None), Class::SidecarOutbound).tracing,
        None
    );
    let m = model(
        "    defaultProviders: {tracing: [zipkin]}\n",
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\nspec:\n  tracing:\n  - disableSpanReporting: true\n",
    );
    assert_eq!(
        HcmTracing::new(&m, &sidecar(None), Class::SidecarOutbound).tracing,
        None
    );
}

#[test]
fn gateways_spawn_the_upstream_span() {
    let mut m = model("    defaultProviders: {tracing: [zipkin]}\n", "");
    m.mesh.internal_networks = vec![("127.0.0.0".parse().unwrap(), 8)];
    let config = generate_with(&m, &gateway(), &Security::default());
    let all = hcms(&config.listeners);
    assert!(!all.is_empty());
    for (_, h) in all {
        let internal = h.internal_address_config.unwrap();
        assert_eq!(internal.cidr_ranges[0].address_prefix, "127.0.0.0");
        assert_eq!(
            internal.cidr_ranges[0].prefix_len,
            Some(UInt32Value { value: 8 })
        );
        let t = h.tracing.unwrap();
        assert_eq!(t.spawn_upstream_span, Some(BoolValue { value: true }));
        zipkin_of(&t);
    }
}

#[test]
fn envoy_accepts_every_provider() {
    for (provider, version) in [
        ("zipkin", None),
        ("zipkin", Some("1.27.0")),
        ("otel", None),
        ("otel-http", None),
    ] {
        let mut m = model(
            &format!("    defaultProviders: {{tracing: [{provider}]}}\n"),
            "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\nspec:\n  tracing:\n  - randomSamplingPercentage: 12.5\n    customTags:\n      a: {literal: {value: b}}\n      e: {environment: {name: POD_NAME, defaultValue: x}}\n      h: {header: {name: x-h}}\n",
        );
        m.mesh.internal_networks = vec![("10.0.0.0".parse().unwrap(), 8)];
        for proxy in [sidecar(version), gateway()] {
            let config = generate_with(&m, &proxy, &Security::default());
            assert!(
                hcms(&config.listeners)
                    .iter()
                    .all(|(_, h)| h.tracing.as_ref().is_some_and(|t| t.provider.is_some())),
                "{provider}: every connection manager traces"
            );
            super::super::envoy_validate::validate(
                &config,
                &proxy.id,
                &format!("{provider} tracing ({})", proxy.kind),
            );
        }
    }
}

#[test]
fn the_outbound_cache_tells_apart_what_tracing_tells_apart() {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use mast_proto::TypeUrl;

    use super::super::{XdsGenerator, string_value};
    use crate::ads::{Generator, Snapshot};

    let m = model(
        "    defaultProviders: {tracing: [zipkin]}\n",
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: default}\nspec:\n  selector: {matchLabels: {app: traced}}\n  tracing:\n  - randomSamplingPercentage: 42\n",
    );
    let g = XdsGenerator::default();
    let snap = Snapshot::new(1, Arc::new(m), std::time::Instant::now());
    let node = |app: &str| Node {
        id: format!("sidecar~10.1.0.9~{app}-1.default~default.svc.cluster.local"),
        metadata: Some(Struct {
            fields: [(
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [("app".to_string(), string_value(app))].into(),
                    })),
                },
            )]
            .into(),
        }),
        ..Default::default()
    };
    let listeners = |app: &str| {
        let view = g.generate(&snap, &node(app)).unwrap().flatten();
        let set = view.of_type(TypeUrl::Listener).unwrap();
        set.values()
            .filter_map(|r| Listener::decode(r.value.as_ref()).ok())
            .collect::<Vec<_>>()
    };
    let rate = |ls: &[Listener]| {
        hcms(ls)
            .iter()
            .filter(|(name, _)| !name.starts_with("virtualInbound"))
            .filter_map(|(_, h)| {
                h.tracing
                    .as_ref()?
                    .random_sampling
                    .as_ref()
                    .map(|p| p.value)
            })
            .collect::<Vec<_>>()
    };
    let traced = rate(&listeners("traced"));
    let other = rate(&listeners("other"));
    // Only the listeners are per workload: clusters, endpoints and routes stay one shared set.
    let a = g.generate(&snap, &node("traced")).unwrap();
    let b = g.generate(&snap, &node("other")).unwrap();
    assert!(
        Arc::ptr_eq(&a.layers[1], &b.layers[1]),
        "outbound half not shared"
    );
    assert!(
        !traced.is_empty() && traced.iter().all(|r| *r == 42.0),
        "{traced:?}"
    );
    assert!(
        !other.is_empty() && other.iter().all(|r| *r == 1.0),
        "{other:?}"
    );
}
