//! Envoy's TLS transport sockets, as Istio writes them for mesh mTLS.
//!
//! Istio's sidecar config never carries key material: certificates are named SDS secrets,
//! `default` (the workload certificate) and `ROOTCA` (the trust bundle), that the local agent
//! serves. mast-proxy is its own agent, so those two names resolve to its
//! [`SecretStore`](crate::tls::SecretStore); any other secret source (files, inline keys,
//! `kubernetes://` credentials for gateways) is refused with a NACK naming the field, rather
//! than silently connecting in plaintext.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::{FieldError, FieldResult, decode_any};
use crate::tls::{SDS_DEFAULT, SDS_ROOTCA, SanMatch, SecretStore};

const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";
const TLS: &str = "envoy.transport_sockets.tls";

/// Client side of mesh mTLS for a cluster.
#[derive(Debug)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub sans: Vec<SanMatch>,
    /// Present the workload certificate (`default`).
    pub client_cert: bool,
    config: OnceLock<Arc<rustls::ClientConfig>>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, o: &Self) -> bool {
        self.sni == o.sni
            && self.alpn == o.alpn
            && self.sans == o.sans
            && self.client_cert == o.client_cert
    }
}

impl UpstreamTls {
    /// The rustls config, built once per cluster config.
    pub fn client_config(
        &self,
        store: &Arc<SecretStore>,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        if let Some(c) = self.config.get() {
            return Ok(Arc::clone(c));
        }
        let c = crate::tls::client_config(store, &self.sans, &self.alpn)?;
        Ok(Arc::clone(self.config.get_or_init(|| c)))
    }
}

/// Server side of mesh mTLS for a filter chain.
#[derive(Debug)]
pub struct DownstreamTls {
    pub require_client_cert: bool,
    pub sans: Vec<SanMatch>,
    config: OnceLock<Arc<rustls::ServerConfig>>,
}

impl PartialEq for DownstreamTls {
    fn eq(&self, o: &Self) -> bool {
        self.require_client_cert == o.require_client_cert && self.sans == o.sans
    }
}

impl DownstreamTls {
    pub fn server_config(
        &self,
        store: &Arc<SecretStore>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        if let Some(c) = self.config.get() {
            return Ok(Arc::clone(c));
        }
        let c = crate::tls::server_config(store, &self.sans, self.require_client_cert)?;
        Ok(Arc::clone(self.config.get_or_init(|| c)))
    }
}

/// One `transport_socket_matches` entry: criteria on endpoint metadata, and TLS or plaintext.
pub type SocketMatch = (BTreeMap<String, String>, Option<Arc<UpstreamTls>>);

/// A cluster's transport: plaintext, TLS, or chosen per endpoint by metadata
/// (`transport_socket_matches`, Istio's auto mTLS).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(Arc<UpstreamTls>),
    Matches {
        /// In order: the first whose criteria all hold in the endpoint's
        /// `envoy.transport_socket_match` metadata wins.
        matches: Vec<SocketMatch>,
        default: Option<Arc<UpstreamTls>>,
    },
}

impl Transport {
    /// The TLS settings for an endpoint with this `envoy.transport_socket_match` metadata.
    pub fn for_endpoint(&self, meta: &BTreeMap<String, String>) -> Option<&Arc<UpstreamTls>> {
        match self {
            Self::Plain => None,
            Self::Tls(t) => Some(t),
            Self::Matches { matches, default } => matches
                .iter()
                .find(|(crit, _)| crit.iter().all(|(k, v)| meta.get(k) == Some(v)))
                .map_or(default.as_ref(), |(_, t)| t.as_ref()),
        }
    }

    /// Any TLS setting of the cluster (the connector's, for `https` pool keys).
    pub fn any_tls(&self) -> Option<&Arc<UpstreamTls>> {
        match self {
            Self::Plain => None,
            Self::Tls(t) => Some(t),
            Self::Matches { matches, default } => matches
                .iter()
                .find_map(|(_, t)| t.as_ref())
                .or(default.as_ref()),
        }
    }
}

/// A cluster's `transport_socket` (`None`: plaintext).
pub fn upstream_socket(ts: &TransportSocket) -> FieldResult<Option<Arc<UpstreamTls>>> {
    match ts.name.as_str() {
        RAW_BUFFER => Ok(None),
        TLS => {
            let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
                return Err(FieldError::new("typed_config", "required for TLS"));
            };
            let ctx: UpstreamTlsContext = decode_any(any, "typed_config")?;
            upstream(&ctx).map(Some).map_err(|e| e.at("typed_config"))
        }
        other => Err(FieldError::new(
            "name",
            format!("transport socket {other:?} is not supported"),
        )),
    }
}

fn upstream(ctx: &UpstreamTlsContext) -> FieldResult<Arc<UpstreamTls>> {
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let (client_cert, sans) = common_parts(&common).map_err(|e| e.at("common_tls_context"))?;
    Ok(Arc::new(UpstreamTls {
        sni: (!ctx.sni.is_empty()).then(|| ctx.sni.clone()),
        alpn: common.alpn_protocols.clone(),
        sans,
        client_cert,
        config: OnceLock::new(),
    }))
}

/// A filter chain's `transport_socket` (`None`: plaintext).
pub fn downstream_socket(ts: &TransportSocket) -> FieldResult<Option<Arc<DownstreamTls>>> {
    match ts.name.as_str() {
        RAW_BUFFER => Ok(None),
        TLS => {
            let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
                return Err(FieldError::new("typed_config", "required for TLS"));
            };
            let ctx: DownstreamTlsContext = decode_any(any, "typed_config")?;
            let common = ctx.common_tls_context.clone().unwrap_or_default();
            let (cert, sans) =
                common_parts(&common).map_err(|e| e.at("typed_config.common_tls_context"))?;
            if !cert {
                return Err(FieldError::new(
                    "typed_config.common_tls_context.tls_certificate_sds_secret_configs",
                    "a server needs a certificate (SDS secret \"default\")",
                ));
            }
            Ok(Some(Arc::new(DownstreamTls {
                require_client_cert: ctx.require_client_certificate.is_some_and(|b| b.value),
                sans,
                config: OnceLock::new(),
            })))
        }
        other => Err(FieldError::new(
            "name",
            format!("transport socket {other:?} is not supported"),
        )),
    }
}

/// Whether the workload certificate is presented, and the SAN matchers for the peer.
// Istio still writes the deprecated `match_subject_alt_names`.
#[allow(deprecated)]
fn common_parts(c: &CommonTlsContext) -> FieldResult<(bool, Vec<SanMatch>)> {
    if !c.tls_certificates.is_empty() {
        return Err(FieldError::new(
            "tls_certificates",
            "inline certificates are not supported; use SDS secret \"default\"",
        ));
    }
    let mut cert = false;
    for (i, s) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
        sds_name(s, SDS_DEFAULT)
            .map_err(|e| e.at(format!("tls_certificate_sds_secret_configs[{i}]")))?;
        cert = true;
    }
    let sans = match &c.validation_context_type {
        None => {
            return Err(FieldError::new(
                "validation_context_type",
                "peer validation is required (SDS secret \"ROOTCA\")",
            ));
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            sds_name(s, SDS_ROOTCA).map_err(|e| e.at("validation_context_sds_secret_config"))?;
            Vec::new()
        }
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let at = "combined_validation_context";
            match &cv.validation_context_sds_secret_config {
                Some(s) => sds_name(s, SDS_ROOTCA)
                    .map_err(|e| e.at(format!("{at}.validation_context_sds_secret_config")))?,
                None => {
                    return Err(FieldError::new(
                        format!("{at}.validation_context_sds_secret_config"),
                        "required (SDS secret \"ROOTCA\")",
                    ));
                }
            }
            let mut sans = Vec::new();
            if let Some(d) = &cv.default_validation_context {
                if d.trusted_ca.is_some() {
                    return Err(FieldError::new(
                        format!("{at}.default_validation_context.trusted_ca"),
                        "inline trust anchors are not supported; the mesh bundle is \"ROOTCA\"",
                    ));
                }
                for (i, m) in d.match_subject_alt_names.iter().enumerate() {
                    sans.push(san_match(m).map_err(|e| {
                        e.at(format!(
                            "{at}.default_validation_context.match_subject_alt_names[{i}]"
                        ))
                    })?);
                }
                for (i, m) in d.match_typed_subject_alt_names.iter().enumerate() {
                    let f = format!(
                        "{at}.default_validation_context.match_typed_subject_alt_names[{i}]"
                    );
                    // SanType URI = 3.
                    if m.san_type != 3 {
                        return Err(FieldError::new(
                            format!("{f}.san_type"),
                            "only URI SANs (SPIFFE IDs) are checked",
                        ));
                    }
                    let m = m
                        .matcher
                        .as_ref()
                        .ok_or_else(|| FieldError::new(format!("{f}.matcher"), "required"))?;
                    sans.push(san_match(m).map_err(|e| e.at(format!("{f}.matcher")))?);
                }
            }
            sans
        }
        Some(ValidationContextType::ValidationContext(_)) => {
            return Err(FieldError::new(
                "validation_context",
                "inline validation contexts are not supported; use SDS secret \"ROOTCA\"",
            ));
        }
        Some(_) => {
            return Err(FieldError::new(
                "validation_context_type",
                "not supported; use SDS secret \"ROOTCA\"",
            ));
        }
    };
    Ok((cert, sans))
}

fn sds_name(s: &SdsSecretConfig, want: &str) -> FieldResult<()> {
    if s.name == want {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            format!(
                "SDS secret {:?} is not available: mast-proxy serves Istio's workload secrets \"default\" and \"ROOTCA\"",
                s.name
            ),
        ))
    }
}

fn san_match(m: &StringMatcher) -> FieldResult<SanMatch> {
    if m.ignore_case {
        return Err(FieldError::new("ignore_case", "not supported for SANs"));
    }
    match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => Ok(SanMatch::Exact(s.clone())),
        Some(MatchPattern::Prefix(s)) => Ok(SanMatch::Prefix(s.clone())),
        Some(MatchPattern::Suffix(s)) => Ok(SanMatch::Suffix(s.clone())),
        Some(MatchPattern::Contains(s)) => Ok(SanMatch::Contains(s.clone())),
        _ => Err(FieldError::new(
            "match_pattern",
            "only exact, prefix, suffix and contains are supported for SANs",
        )),
    }
}

/// Criteria of a `transport_socket_matches` entry: string values of its `match` struct.
pub fn match_criteria(
    s: &envoy_types::pb::google::protobuf::Struct,
) -> FieldResult<BTreeMap<String, String>> {
    use envoy_types::pb::google::protobuf::value::Kind;
    s.fields
        .iter()
        .map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Ok((k.clone(), s.clone())),
            _ => Err(FieldError::new(
                format!("match.{k}"),
                "only string values are supported",
            )),
        })
        .collect()
}
