//! The HTTP connection manager's `tracing` and `request_id_extension`, as istiod writes them
//! (`pilot/pkg/networking/core/tracing.go`).
//!
//! Tracing is decided per proxy and per side (its outbound/gateway connection managers
//! report client spans, its inbound ones server spans) from the model's resolution of
//! MeshConfig and Telemetry ([`mast_mesh_config::telemetry`]). The provider becomes Envoy's
//! `envoy.tracers.zipkin` or `envoy.tracers.opentelemetry`, exporting to the collector's
//! outbound cluster `outbound|<port>||<host>`: the collector is a Service or ServiceEntry of
//! the mesh, and a provider whose service is not in the registry configures no tracing at
//! all (istiod logs a warning and leaves the connection manager alone). Because this is the
//! config a real Envoy sidecar gets from istiod, an Envoy and a mast-proxy under Mast report
//! spans to the same collector in the same shape and join one trace.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, HeaderValue, HeaderValueOption, HttpService, HttpUri, grpc_service, http_uri,
};
use envoy_types::pb::envoy::config::trace::v3::zipkin_config::{
    CollectorEndpointVersion, TraceContextOption,
};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig, tracing as trace};
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    InternalAddressConfig, Tracing,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, RequestIdExtension,
};
use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use envoy_types::pb::envoy::r#type::metadata::v3::{
    MetadataKey, MetadataKind, metadata_key, metadata_kind,
};
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag as EnvoyTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use mast_mesh_config::model::{MeshModel, MeshSettings};
use mast_mesh_config::telemetry::{
    CustomTag, ExtensionProvider, HeaderValue as ProviderHeaderValue, HttpHeader,
    OpenTelemetryProvider, OtlpTransport, ProviderKind, TracingSpec, ZipkinProvider,
};

use super::node::ProxyNode;
use super::{any, duration, outbound_cluster_name};

pub const ZIPKIN: &str = "envoy.tracers.zipkin";
pub const OPENTELEMETRY: &str = "envoy.tracers.opentelemetry";

/// Zipkin's v2 span endpoint, istiod's default `path`.
const ZIPKIN_PATH: &str = "/api/v2/spans";

/// Which connection managers a setting is for (istiod's `ListenerClass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    SidecarInbound,
    SidecarOutbound,
    Gateway,
}

/// What one class of a proxy's connection managers carry: computed once per proxy and class,
/// applied to each connection manager.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HcmTracing {
    pub tracing: Option<Tracing>,
    pub request_id: Option<RequestIdExtension>,
}

impl HcmTracing {
    /// istiod's `configureTracing` for this proxy and class.
    pub fn new(model: &MeshModel, proxy: &ProxyNode, class: Class) -> Self {
        let mesh = &model.mesh.tracing;
        let Some(cfg) = model.tracing_for(&proxy.namespace, &proxy.labels) else {
            // No Telemetry and no default provider: MeshConfig's legacy settings, sampling
            // and tags only (the provider, if any, is in the proxy's bootstrap).
            if !mesh.enable_tracing {
                return Self::with_request_id(None, true);
            }
            let mut t = Tracing::default();
            sampling(&mut t, mesh.default_sampling());
            t.custom_tags = custom_tags(None, true, &mesh.custom_tags, proxy);
            if mesh.max_path_tag_length != 0 {
                t.max_path_tag_length = Some(UInt32Value {
                    value: mesh.max_path_tag_length,
                });
            }
            return Self::with_request_id(Some(t), true);
        };
        let spec = match class {
            Class::SidecarInbound => &cfg.server,
            Class::SidecarOutbound | Class::Gateway => &cfg.client,
        };
        if spec.disabled {
            return Self::with_request_id(None, true);
        }
        let Some(provider) = &spec.provider else {
            return Self::with_request_id(None, true);
        };
        let Some(mut t) = provider_tracing(model, proxy, provider) else {
            return Self::with_request_id(None, true);
        };
        let rate = spec
            .random_sampling_percentage
            .unwrap_or_else(|| mesh.default_sampling());
        sampling(&mut t, rate);
        t.custom_tags = custom_tags(Some(spec), spec.enable_istio_tags, &mesh.custom_tags, proxy);
        if t.max_path_tag_length.is_none() && mesh.max_path_tag_length != 0 {
            t.max_path_tag_length = Some(UInt32Value {
                value: mesh.max_path_tag_length,
            });
        }
        Self::with_request_id(Some(t), spec.use_request_id_for_trace_sampling)
    }

    fn with_request_id(tracing: Option<Tracing>, use_request_id: bool) -> Self {
        Self {
            tracing,
            request_id: Some(RequestIdExtension {
                typed_config: Some(any(&UuidRequestIdConfig {
                    use_request_id_for_trace_sampling: Some(BoolValue {
                        value: use_request_id,
                    }),
                    ..Default::default()
                })),
            }),
        }
    }

    /// The encoded settings: equal keys, equal connection managers (the outbound cache key's
    /// share of what tracing makes per-proxy: span tags, service name, workload Telemetry).
    pub fn cache_key(&self) -> Vec<u8> {
        let mut key = self
            .tracing
            .as_ref()
            .map(prost::Message::encode_to_vec)
            .unwrap_or_default();
        key.extend(
            self.request_id
                .as_ref()
                .map(prost::Message::encode_to_vec)
                .unwrap_or_default(),
        );
        key
    }

    /// Set the connection manager's `tracing` and `request_id_extension`.
    pub fn apply(&self, hcm: &mut HttpConnectionManager) {
        hcm.tracing = self.tracing.clone();
        hcm.request_id_extension = self.request_id.clone();
    }
}

/// istiod's `MeshNetworksToEnvoyInternalAddressConfig`: meshNetworks' `fromCidr` ranges
/// (`None` without any). Internal requests keep Envoy's internal headers, among them
/// `x-envoy-force-trace`.
pub fn internal_address_config(mesh: &MeshSettings) -> Option<InternalAddressConfig> {
    (!mesh.internal_networks.is_empty()).then(|| InternalAddressConfig {
        unix_sockets: false,
        cidr_ranges: mesh
            .internal_networks
            .iter()
            .map(|(ip, len)| CidrRange {
                address_prefix: ip.to_string(),
                prefix_len: Some(UInt32Value {
                    value: u32::from(*len),
                }),
            })
            .collect(),
    })
}

/// istiod's `configureSampling`: every client-forced and overall request traced, a random
/// share of the others.
fn sampling(t: &mut Tracing, random: f64) {
    t.client_sampling = Some(Percent { value: 100.0 });
    t.overall_sampling = Some(Percent { value: 100.0 });
    t.random_sampling = Some(Percent { value: random });
}

/// istiod's `LookupCluster`: `<namespace>/<host>` or a host defined in one namespace only.
fn lookup_cluster(model: &MeshModel, service: &str, port: u16) -> Option<(String, String)> {
    let svc = match service.split_once('/') {
        Some((ns, host)) => model.services.get(host).filter(|s| s.namespace == ns)?,
        None => model.services.get(service)?,
    };
    Some((
        svc.hostname.clone(),
        outbound_cluster_name(port, None, &svc.hostname),
    ))
}

/// istiod's `configureFromProviderConfig`; `None` when the provider cannot trace here (its
/// collector is not in the registry, or it is not a tracing provider).
fn provider_tracing(
    model: &MeshModel,
    proxy: &ProxyNode,
    provider: &ExtensionProvider,
) -> Option<Tracing> {
    let (name, max_tag, config) = match &provider.kind {
        ProviderKind::Zipkin(z) => {
            let Some((host, cluster)) = lookup_cluster(model, &z.service, z.port) else {
                ::tracing::warn!(
                    provider = %provider.name,
                    service = %z.service,
                    "could not find cluster for tracing provider: not in the service registry"
                );
                return None;
            };
            (ZIPKIN, z.max_tag_length, zipkin(z, &host, cluster, proxy))
        }
        ProviderKind::OpenTelemetry(o) => {
            let Some((host, cluster)) = lookup_cluster(model, &o.service, o.port) else {
                ::tracing::warn!(
                    provider = %provider.name,
                    service = %o.service,
                    "could not find cluster for tracing provider: not in the service registry"
                );
                return None;
            };
            (
                OPENTELEMETRY,
                o.max_tag_length,
                otel(o, &host, cluster, proxy),
            )
        }
        ProviderKind::Other(kind) => {
            ::tracing::warn!(provider = %provider.name, %kind, "provider does not support tracing");
            return None;
        }
    };
    Some(Tracing {
        // A gateway starts the client span of the request it forwards, as istiod has it.
        spawn_upstream_span: proxy.is_gateway().then_some(BoolValue { value: true }),
        provider: Some(trace::Http {
            name: name.into(),
            config_type: Some(trace::http::ConfigType::TypedConfig(config)),
        }),
        max_path_tag_length: (max_tag != 0).then_some(UInt32Value { value: max_tag }),
        ..Default::default()
    })
}

/// `(major, minor)` of the proxy's `ISTIO_VERSION`, when it sent one. istiod takes a proxy
/// that sends none for the newest version, and so does [`at_least`].
fn istio_version(proxy: &ProxyNode) -> Option<(u32, u32)> {
    let v = proxy.version.as_deref()?;
    if v.ends_with('*') {
        // A user agent's version, not Istio's.
        return None;
    }
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn at_least(proxy: &ProxyNode, want: (u32, u32)) -> bool {
    istio_version(proxy).is_none_or(|v| v >= want)
}

/// istiod's `zipkinConfig`: v2 JSON, 128-bit trace ids unless asked otherwise, no shared span
/// context; the collector as `collector_service` for Istio 1.29+ proxies (and those that send
/// no version), else the legacy cluster/endpoint/hostname fields.
fn zipkin(z: &ZipkinProvider, host: &str, cluster: String, proxy: &ProxyNode) -> Any {
    let path = if z.path.is_empty() {
        ZIPKIN_PATH
    } else {
        &z.path
    };
    let mut zc = ZipkinConfig {
        collector_endpoint_version: CollectorEndpointVersion::HttpJson as i32,
        trace_id_128bit: !z.enable_64bit_trace_id,
        shared_span_context: Some(BoolValue { value: false }),
        ..Default::default()
    };
    if at_least(proxy, (1, 29)) {
        zc.collector_service = Some(HttpService {
            http_uri: Some(HttpUri {
                uri: format!("http://{host}{path}"),
                timeout: Some(duration(
                    z.timeout.unwrap_or(std::time::Duration::from_secs(5)),
                )),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
            }),
            request_headers_to_add: header_options(&z.headers),
            ..Default::default()
        });
    } else {
        zc.collector_cluster = cluster;
        zc.collector_endpoint = path.to_string();
        zc.collector_hostname = host.to_string();
    }
    if at_least(proxy, (1, 28)) {
        zc.trace_context_option = if z.w3c_propagation {
            TraceContextOption::UseB3WithW3cPropagation as i32
        } else {
            TraceContextOption::UseB3 as i32
        };
    }
    any(&zc)
}

/// istiod's `otelConfig`: OTLP/HTTP when `http` is set, else OTLP/gRPC over Envoy's own gRPC
/// client; the service name is the proxy's node cluster.
fn otel(o: &OpenTelemetryProvider, host: &str, cluster: String, proxy: &ProxyNode) -> Any {
    let mut oc = OpenTelemetryConfig {
        service_name: proxy.service_cluster.clone(),
        ..Default::default()
    };
    match &o.transport {
        OtlpTransport::Http {
            path,
            timeout,
            headers,
        } => {
            oc.http_service = Some(HttpService {
                http_uri: Some(HttpUri {
                    uri: join_path(host, path),
                    timeout: timeout.map(duration),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
                }),
                request_headers_to_add: header_options(headers),
                ..Default::default()
            });
        }
        OtlpTransport::Grpc {
            timeout,
            initial_metadata,
        } => {
            oc.grpc_service = Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: cluster,
                        authority: host.to_string(),
                        ..Default::default()
                    },
                )),
                timeout: timeout.map(duration),
                initial_metadata: initial_metadata
                    .iter()
                    .map(|h| HeaderValue {
                        key: h.name.clone(),
                        value: header_value(h),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
    }
    any(&oc)
}

/// Go's `url.JoinPath(host, path)` for a host without scheme: one slash between them.
fn join_path(host: &str, path: &str) -> String {
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{path}")
    }
}

fn header_value(h: &HttpHeader) -> String {
    match &h.value {
        ProviderHeaderValue::Value(v) => v.clone(),
        // istiod reads `envName` from its own environment.
        ProviderHeaderValue::Env(name) => std::env::var(name).unwrap_or_default(),
    }
}

fn header_options(headers: &[HttpHeader]) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|h| HeaderValueOption {
            header: Some(HeaderValue {
                key: h.name.clone(),
                value: header_value(h),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect()
}

fn literal(tag: &str, value: &str) -> EnvoyTag {
    EnvoyTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.into(),
        })),
    }
}

/// istiod's `buildServiceTags`: who reported the span.
fn service_tags(proxy: &ProxyNode) -> Vec<EnvoyTag> {
    let label = |k: &str| proxy.labels.get(k).filter(|v| !v.is_empty()).cloned();
    let or = |v: &str, d: &str| {
        if v.is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        literal(
            "istio.canonical_revision",
            &label("service.istio.io/canonical-revision").unwrap_or_else(|| "latest".into()),
        ),
        literal(
            "istio.canonical_service",
            &label("service.istio.io/canonical-name").unwrap_or_else(|| "unknown".into()),
        ),
        literal(
            "istio.mesh_id",
            &or(proxy.mesh_id.as_deref().unwrap_or(""), "unknown"),
        ),
        literal("istio.namespace", &or(&proxy.namespace, "default")),
        literal("istio.cluster_id", &or(&proxy.cluster_id, "unknown")),
    ]
}

/// istiod's `optionalPolicyTags`: the dry-run AuthorizationPolicy results the RBAC filter
/// leaves in the request's metadata.
fn dry_run_tags() -> Vec<EnvoyTag> {
    let tag = |name: &str, key: &str| EnvoyTag {
        tag: name.into(),
        r#type: Some(custom_tag::Type::Metadata(custom_tag::Metadata {
            kind: Some(MetadataKind {
                kind: Some(metadata_kind::Kind::Request(metadata_kind::Request {})),
            }),
            metadata_key: Some(MetadataKey {
                key: "envoy.filters.http.rbac".into(),
                path: vec![metadata_key::PathSegment {
                    segment: Some(metadata_key::path_segment::Segment::Key(key.into())),
                }],
            }),
            default_value: String::new(),
        })),
    };
    vec![
        tag(
            "istio.authorization.dry_run.allow_policy.name",
            "istio_dry_run_allow_shadow_effective_policy_id",
        ),
        tag(
            "istio.authorization.dry_run.allow_policy.result",
            "istio_dry_run_allow_shadow_engine_result",
        ),
        tag(
            "istio.authorization.dry_run.deny_policy.name",
            "istio_dry_run_deny_shadow_effective_policy_id",
        ),
        tag(
            "istio.authorization.dry_run.deny_policy.result",
            "istio_dry_run_deny_shadow_engine_result",
        ),
    ]
}

fn envoy_tag(name: &str, tag: &CustomTag) -> EnvoyTag {
    let r#type = match tag {
        CustomTag::Literal { value } => custom_tag::Type::Literal(custom_tag::Literal {
            value: value.clone(),
        }),
        CustomTag::Header {
            name,
            default_value,
        } => custom_tag::Type::RequestHeader(custom_tag::Header {
            name: name.clone(),
            default_value: default_value.clone(),
        }),
        CustomTag::Environment {
            name,
            default_value,
        } => custom_tag::Type::Environment(custom_tag::Environment {
            name: name.clone(),
            default_value: default_value.clone(),
        }),
        CustomTag::Formatter { value } => custom_tag::Type::Value(value.clone()),
    };
    EnvoyTag {
        tag: name.into(),
        r#type: Some(r#type),
    }
}

/// istiod's `configureCustomTags`: Istio's own tags (unless turned off), then the Telemetry's
/// tags, or MeshConfig's `defaultConfig.tracing.customTags` when the Telemetry has none;
/// sorted by tag name.
fn custom_tags(
    spec: Option<&TracingSpec>,
    istio_tags: bool,
    mesh_tags: &std::collections::BTreeMap<String, CustomTag>,
    proxy: &ProxyNode,
) -> Vec<EnvoyTag> {
    let mut tags = Vec::new();
    if istio_tags {
        tags.extend(service_tags(proxy));
        tags.extend(dry_run_tags());
    }
    let own = spec
        .and_then(|s| s.custom_tags.as_ref())
        .filter(|t| !t.is_empty());
    let chosen = own.unwrap_or(mesh_tags);
    tags.extend(chosen.iter().filter_map(|(name, tag)| {
        // Formatter tags need an Istio 1.29+ proxy (or one that sends no version).
        if matches!(tag, CustomTag::Formatter { .. })
            && istio_version(proxy).is_some_and(|v| v < (1, 29))
        {
            return None;
        }
        Some(envoy_tag(name, tag))
    }));
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    tags
}

#[cfg(test)]
mod tests;
