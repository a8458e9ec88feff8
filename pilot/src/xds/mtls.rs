//! Mesh mTLS in xDS, shaped as istiod shapes it.
//!
//! Key material never travels in pilot's config: certificates are SDS secrets named
//! `default` (the workload's certificate) and `ROOTCA` (the trust bundle), served by the
//! proxy's agent (istio-agent for Envoy; mast-proxy serves them itself) over the
//! `sds-grpc` cluster of the bootstrap.
//!
//! Outbound, Istio's *auto mTLS*: a cluster carries two `transport_socket_matches`, TLS for
//! endpoints labelled `tlsMode: istio` (they have a sidecar) and plaintext for the rest, so a
//! client never speaks TLS to a workload that cannot answer it. The server's SPIFFE ID must
//! be one of the service accounts behind the service. A DestinationRule's `ISTIO_MUTUAL`
//! forces TLS, `DISABLE` forces plaintext.
//!
//! Inbound, PeerAuthentication decides per port: `STRICT` keeps only the mTLS filter chain
//! (plaintext finds no chain and is closed), `PERMISSIVE` adds a plaintext chain beside it
//! (the listener's TLS inspector tells them apart), `DISABLE` keeps only plaintext.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{BoolValue, Struct};
use mast_mesh_config::model::{MeshModel, Service};

use super::{any, duration, string_value};

/// The bootstrap cluster that reaches the local SDS server.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// ALPN a sidecar client offers to a sidecar server (Istio's `ALPNInMeshWithMxc`).
pub const MESH_ALPN: &[&str] = &["istio-peer-exchange", "istio"];
/// ALPN values that mark a connection from a mesh client on an inbound port.
pub const INBOUND_MESH_ALPN: &[&str] = &[
    "istio-peer-exchange",
    "istio",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// Endpoint metadata that `transport_socket_matches` read.
pub const SOCKET_MATCH_KEY: &str = "envoy.transport_socket_match";

/// Mesh-wide security settings pilot generates with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Security {
    /// A CA issues workload certificates, so mTLS config is generated.
    pub mtls: bool,
    pub trust_domain: String,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            mtls: false,
            trust_domain: "cluster.local".into(),
        }
    }
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// An SDS secret from the proxy's agent (`sds-grpc`).
pub(crate) fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: SDS_CLUSTER.into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    set_node_on_first_message_only: true,
                    ..Default::default()
                },
            )),
            initial_fetch_timeout: Some(duration(std::time::Duration::ZERO)),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

fn common_context(alpn: &[&str], sans: Vec<StringMatcher>) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        tls_certificate_sds_secret_configs: vec![sds_secret("default")],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                #[allow(deprecated)]
                default_validation_context: Some(CertificateValidationContext {
                    match_subject_alt_names: sans,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds_secret("ROOTCA")),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn exact(s: String) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(s)),
        ..Default::default()
    }
}

/// The SPIFFE IDs of the workloads behind a service (what a client accepts from it).
pub fn service_identities(model: &MeshModel, svc: &Service, trust_domain: &str) -> Vec<String> {
    let ids: BTreeSet<String> = model
        .selected_workloads(svc)
        .map(|w| spiffe_id(trust_domain, &w.namespace, &w.service_account))
        .collect();
    ids.into_iter().collect()
}

/// Client-side mTLS to a sidecar of `svc` (SNI as Istio's: `outbound_.<port>_.<subset>_.<host>`).
pub fn upstream_socket(sni: String, identities: Vec<String>) -> TransportSocket {
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common_context(
            MESH_ALPN,
            identities.into_iter().map(exact).collect(),
        )),
        sni,
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Istio's auto mTLS: TLS to endpoints with `tlsMode: istio`, plaintext to the others.
pub fn auto_mtls_matches(tls: TransportSocket) -> Vec<TransportSocketMatch> {
    vec![
        TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(Struct {
                fields: [("tlsMode".to_string(), string_value("istio"))]
                    .into_iter()
                    .collect(),
            }),
            transport_socket: Some(tls),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".into(),
                config_type: Some(ConfigType::TypedConfig(any(&RawBuffer {}))),
            }),
        },
    ]
}

/// Server-side mTLS for an inbound filter chain: the workload certificate, client
/// certificates required and checked against the mesh trust bundle.
pub fn downstream_socket(trust_domain: &str) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common_context(
            &["h2", "http/1.1"],
            vec![StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(format!("spiffe://{trust_domain}/"))),
                ..Default::default()
            }],
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Istio's SNI for a cluster: `outbound_.9080_.v1_.user.default.svc.cluster.local`.
pub fn sni(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}
