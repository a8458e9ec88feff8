//! Envoy's TLS transport sockets, as Istio writes them for mesh mTLS and for gateways.
//!
//! Istio's sidecar config never carries key material: certificates are named SDS secrets,
//! `default` (the workload certificate) and `ROOTCA` (the trust bundle), that the local agent
//! serves. mast-proxy is its own agent, so those two names resolve to its
//! [`SecretStore`](crate::tls::SecretStore). A gateway's server side also takes what istiod
//! writes for a Gateway's `tls`: SDS secrets under any name over the ADS stream
//! (`kubernetes://<credentialName>`, followed like RDS names), and inline or file
//! certificates and CAs (see [`crate::tls::credentials`]). A cluster's client side is mesh
//! mTLS (validation by `ROOTCA`) or TLS origination toward a server outside the mesh: files
//! named as istio-agent names them (`file-root:<path>`, `file-root:system`,
//! `file-cert:<cert>~<key>`), inline material, or SDS secrets over ADS. Anything else —
//! another SDS config source, a CRL — is refused with a NACK naming the field, rather than
//! silently connecting in plaintext or without the check asked for.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::secret::{tls_certificate, trusted_ca};
use super::{At, FieldError, FieldResult, decode_any};
use crate::tls::credentials::{
    self, CertSource, ClientSpec, SdsSecrets, ServerSpec, ServerTrust, TrustSource,
};
use crate::tls::{SDS_DEFAULT, SDS_ROOTCA, SanMatch, SecretStore};

/// istio-agent's SDS name prefixes for files on the proxy (what istiod writes for a
/// DestinationRule's `caCertificates`, `clientCertificate` and `privateKey`); mast-proxy is
/// its own agent and reads them itself.
pub const FILE_ROOT_PREFIX: &str = "file-root:";
pub const FILE_CERT_PREFIX: &str = "file-cert:";
pub const FILE_CERT_SEPARATOR: char = '~';
/// `file-root:system`: the system's CA bundle.
pub const SYSTEM_ROOTS: &str = "system";

const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";
const TLS: &str = "envoy.transport_sockets.tls";

/// Client side of TLS for a cluster: mesh mTLS, or TLS origination toward a server outside
/// the mesh (a DestinationRule's SIMPLE/MUTUAL).
#[derive(Debug)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub sans: Vec<SanMatch>,
    /// Present the workload certificate (`default`).
    pub client_cert: bool,
    /// `None`: mesh mTLS (SPIFFE peers, the mesh bundle).
    pub origination: Option<Origination>,
    /// With no `sni`: the request's host is the SNI (the cluster's `auto_sni`).
    pub auto_sni: bool,
    /// The server certificate must be valid for the name connected to
    /// (`auto_san_validation`).
    pub auto_san_validation: bool,
    config: OnceLock<Arc<rustls::ClientConfig>>,
}

/// TLS toward a server outside the mesh.
#[derive(Debug, PartialEq)]
pub struct Origination {
    /// The client certificate (MUTUAL): files read when the cluster arrived, or an SDS secret
    /// over ADS (a gateway's `credentialName`).
    pub cert: Option<CertSource>,
    pub trust: ServerTrust,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, o: &Self) -> bool {
        self.sni == o.sni
            && self.alpn == o.alpn
            && self.sans == o.sans
            && self.client_cert == o.client_cert
            && self.origination == o.origination
            && self.auto_sni == o.auto_sni
            && self.auto_san_validation == o.auto_san_validation
    }
}

impl UpstreamTls {
    /// The rustls config, built once per cluster config.
    pub fn client_config(
        &self,
        store: &Arc<SecretStore>,
        sds: &Arc<SdsSecrets>,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        if let Some(c) = self.config.get() {
            return Ok(Arc::clone(c));
        }
        let c = match &self.origination {
            None => crate::tls::client_config(store, &self.sans, &self.alpn)?,
            Some(o) => {
                let spec = ClientSpec {
                    cert: o.cert.as_ref(),
                    trust: &o.trust,
                    sans: &self.sans,
                    check_server_name: self.auto_san_validation,
                    alpn: &self.alpn,
                };
                credentials::client_config(spec, store, sds)?
            }
        };
        Ok(Arc::clone(self.config.get_or_init(|| c)))
    }

    /// The SDS secrets over ADS this cluster needs (a gateway's `credentialName`).
    pub fn sds_names(&self) -> impl Iterator<Item = &str> {
        let o = self.origination.as_ref();
        o.and_then(|o| o.cert.as_ref().and_then(CertSource::sds_name))
            .into_iter()
            .chain(o.and_then(|o| o.trust.sds_name()))
    }

    /// The server name to connect with: the configured SNI, else (`auto_sni`) the request's
    /// host, else none (the address).
    pub fn server_name<'a>(&'a self, request_host: Option<&'a str>) -> Option<&'a str> {
        self.sni
            .as_deref()
            .or(request_host.filter(|_| self.auto_sni))
    }

    /// Set the cluster's `auto_sni`/`auto_san_validation` (from its `HttpProtocolOptions`).
    fn with_auto(mut self: Arc<Self>, auto_sni: bool, auto_san_validation: bool) -> Arc<Self> {
        if let Some(t) = Arc::get_mut(&mut self) {
            t.auto_sni = auto_sni;
            t.auto_san_validation = auto_san_validation;
        }
        self
    }
}

/// Server side of TLS for a filter chain: mesh mTLS, or a gateway's TLS.
#[derive(Debug)]
pub struct DownstreamTls {
    pub require_client_cert: bool,
    pub sans: Vec<SanMatch>,
    /// What the server presents.
    pub cert: CertSource,
    /// What client certificates are checked against; `None`: none are asked for.
    pub trust: Option<TrustSource>,
    /// `common_tls_context.alpn_protocols` (gateways; the mesh chains offer none, see
    /// [`crate::tls::server_config`]).
    pub alpn: Vec<String>,
    config: OnceLock<Arc<rustls::ServerConfig>>,
}

impl PartialEq for DownstreamTls {
    fn eq(&self, o: &Self) -> bool {
        self.require_client_cert == o.require_client_cert
            && self.sans == o.sans
            && self.cert == o.cert
            && self.trust == o.trust
            && self.alpn == o.alpn
    }
}

impl DownstreamTls {
    /// The rustls config, built once per chain config; certificates and CAs that rotate are
    /// read from `workload` and `sds` at each handshake.
    pub fn server_config(
        &self,
        workload: &Arc<SecretStore>,
        sds: &Arc<SdsSecrets>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        if let Some(c) = self.config.get() {
            return Ok(Arc::clone(c));
        }
        let c = if self.is_mesh() {
            crate::tls::server_config(workload, &self.sans, self.require_client_cert)?
        } else {
            let spec = ServerSpec {
                cert: &self.cert,
                trust: self.trust.as_ref(),
                sans: &self.sans,
                require_client_cert: self.require_client_cert,
                alpn: &self.alpn,
            };
            credentials::server_config(spec, workload, sds)?
        };
        Ok(Arc::clone(self.config.get_or_init(|| c)))
    }

    /// Sidecar mTLS: the workload certificate, peers checked against the mesh bundle.
    fn is_mesh(&self) -> bool {
        self.cert == CertSource::Workload && self.trust == Some(TrustSource::Mesh)
    }

    /// The SDS secrets over ADS this chain needs.
    pub fn sds_names(&self) -> impl Iterator<Item = &str> {
        self.cert
            .sds_name()
            .into_iter()
            .chain(self.trust.as_ref().and_then(TrustSource::sds_name))
    }

    /// The first secret this chain still waits for: until it arrives the chain cannot
    /// serve (Envoy keeps such a listener warming), and its connections are closed.
    pub fn waiting_for(&self, workload: &SecretStore, sds: &SdsSecrets) -> Option<&str> {
        if !self.cert.available(workload, sds) {
            return Some(self.cert.sds_name().unwrap_or(SDS_DEFAULT));
        }
        self.trust
            .as_ref()
            .filter(|t| !t.available(sds))
            .and_then(TrustSource::sds_name)
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

/// A cluster's `transport_socket` (`None`: plaintext). `auto`: the cluster's `auto_sni` and
/// `auto_san_validation`.
pub fn upstream_socket(
    ts: &TransportSocket,
    auto: (bool, bool),
) -> FieldResult<Option<Arc<UpstreamTls>>> {
    match ts.name.as_str() {
        RAW_BUFFER => Ok(None),
        TLS => {
            let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
                return Err(FieldError::new("typed_config", "required for TLS"));
            };
            let ctx: UpstreamTlsContext = decode_any(any, "typed_config")?;
            upstream(&ctx)
                .map(|t| Some(t.with_auto(auto.0, auto.1)))
                .map_err(|e| e.at("typed_config"))
        }
        other => Err(FieldError::new(
            "name",
            format!("transport socket {other:?} is not supported"),
        )),
    }
}

fn upstream(ctx: &UpstreamTlsContext) -> FieldResult<Arc<UpstreamTls>> {
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let (client_cert, sans, origination) = if is_mesh(&common) {
        let (cert, sans) = common_parts(&common).map_err(|e| e.at("common_tls_context"))?;
        (cert, sans, None)
    } else {
        let (o, sans) = origination(&common).at("common_tls_context")?;
        (false, sans, Some(o))
    };
    Ok(Arc::new(UpstreamTls {
        sni: (!ctx.sni.is_empty()).then(|| ctx.sni.clone()),
        alpn: common.alpn_protocols.clone(),
        sans,
        client_cert,
        origination,
        auto_sni: false,
        auto_san_validation: false,
        config: OnceLock::new(),
    }))
}

/// Mesh mTLS: peers are checked against the mesh bundle (`ROOTCA`).
fn is_mesh(c: &CommonTlsContext) -> bool {
    match &c.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => s.name == SDS_ROOTCA,
        Some(ValidationContextType::CombinedValidationContext(cv)) => cv
            .validation_context_sds_secret_config
            .as_ref()
            .is_some_and(|s| s.name == SDS_ROOTCA),
        _ => false,
    }
}

/// TLS origination as istiod writes it: the client certificate from files
/// (`file-cert:<cert>~<key>`), inline, or an SDS secret over ADS; the server checked against
/// CA files (`file-root:<path>`, `file-root:system`), inline CAs, an SDS secret over ADS, or
/// nothing (`insecureSkipVerify`: a validation context without CAs).
#[allow(deprecated)]
fn origination(c: &CommonTlsContext) -> FieldResult<(Origination, Vec<SanMatch>)> {
    let cert = match (
        c.tls_certificate_sds_secret_configs.as_slice(),
        c.tls_certificates.as_slice(),
    ) {
        ([], []) => None,
        ([s], []) => {
            let at = "tls_certificate_sds_secret_configs[0]";
            match s.name.strip_prefix(FILE_CERT_PREFIX) {
                Some(files) => Some(CertSource::Static(file_cert(files).at(at)?)),
                None if s.name == SDS_DEFAULT => {
                    return Err(FieldError::new(
                        at,
                        "the workload certificate is for mesh mTLS (validation by \"ROOTCA\")",
                    ));
                }
                None => Some(CertSource::Sds(ads_secret(s).at(at)?)),
            }
        }
        ([], [t]) => Some(CertSource::Static(
            tls_certificate(t).at("tls_certificates[0]")?,
        )),
        _ => {
            return Err(FieldError::new(
                "tls_certificates",
                "one client certificate is supported",
            ));
        }
    };
    let no_crl = |v: &CertificateValidationContext, at: &str| {
        if v.crl.is_some() {
            Err(FieldError::new(
                format!("{at}.crl"),
                "certificate revocation lists (caCrl) are not supported by mast-proxy",
            ))
        } else {
            Ok(())
        }
    };
    let (trust, sans) = match &c.validation_context_type {
        None => (ServerTrust::Insecure, Vec::new()),
        Some(ValidationContextType::ValidationContext(v)) => {
            let at = "validation_context";
            no_crl(v, at)?;
            let sans = validation_sans(v).at(at)?;
            if v.trusted_ca.is_none() {
                if !sans.is_empty() {
                    return Err(FieldError::new(
                        format!("{at}.trusted_ca"),
                        "required to check subject alt names",
                    ));
                }
                (ServerTrust::Insecure, sans)
            } else {
                (ServerTrust::Static(trusted_ca(v).at(at)?), sans)
            }
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => (
            server_trust(s).at("validation_context_sds_secret_config")?,
            Vec::new(),
        ),
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let at = "combined_validation_context";
            let trust = match &cv.validation_context_sds_secret_config {
                Some(s) => {
                    server_trust(s).at(format!("{at}.validation_context_sds_secret_config"))?
                }
                None => {
                    return Err(FieldError::new(
                        format!("{at}.validation_context_sds_secret_config"),
                        "required",
                    ));
                }
            };
            let sans = match &cv.default_validation_context {
                Some(d) => {
                    let at = format!("{at}.default_validation_context");
                    no_crl(d, &at)?;
                    if d.trusted_ca.is_some() {
                        return Err(FieldError::new(
                            format!("{at}.trusted_ca"),
                            "trust anchors come from the SDS secret alone",
                        ));
                    }
                    validation_sans(d).at(at)?
                }
                None => Vec::new(),
            };
            (trust, sans)
        }
        Some(_) => {
            return Err(FieldError::new(
                "validation_context_type",
                "not supported; use an SDS secret or an inline validation context",
            ));
        }
    };
    Ok((Origination { cert, trust }, sans))
}

/// `file-cert:<cert>~<key>`, read now (istio-agent serves these files to Envoy).
fn file_cert(files: &str) -> FieldResult<crate::tls::credentials::ServerCert> {
    let Some((cert, key)) = files.split_once(FILE_CERT_SEPARATOR) else {
        return Err(FieldError::new(
            "name",
            format!("{FILE_CERT_PREFIX}{files:?}: expected <certificate>~<key>"),
        ));
    };
    let read = |p: &str| {
        std::fs::read(p).map_err(|e| FieldError::new("name", format!("cannot read {p:?}: {e}")))
    };
    credentials::server_cert(&read(cert)?, &read(key)?)
        .map_err(|e| FieldError::new("name", format!("{cert:?}/{key:?}: {e}")))
}

/// The CAs a server is checked against, named by an SDS secret: files (`file-root:`), the
/// system bundle, or a secret over ADS.
fn server_trust(s: &SdsSecretConfig) -> FieldResult<ServerTrust> {
    let Some(path) = s.name.strip_prefix(FILE_ROOT_PREFIX) else {
        return ads_secret(s).map(ServerTrust::Sds);
    };
    let bundle = if path == SYSTEM_ROOTS {
        credentials::system_roots()
    } else {
        std::fs::read(path)
            .map_err(|e| crate::tls::TlsError::Pem(format!("cannot read {path:?}: {e}")))
            .and_then(|pem| credentials::trust_bundle(&pem))
    };
    bundle
        .map(|b| ServerTrust::Static(Arc::new(b)))
        .map_err(|e| FieldError::new("name", format!("{}: {e}", s.name)))
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
            let at = "typed_config.common_tls_context";
            let cert = server_certificate(&common).at(at)?;
            let (trust, sans) = client_validation(&common).at(at)?;
            let require_client_cert = ctx.require_client_certificate.is_some_and(|b| b.value);
            if require_client_cert && trust.is_none() {
                return Err(FieldError::new(
                    "typed_config.require_client_certificate",
                    "needs a validation context to check client certificates against",
                ));
            }
            Ok(Some(Arc::new(DownstreamTls {
                require_client_cert,
                sans,
                cert,
                trust,
                alpn: common.alpn_protocols.clone(),
                config: OnceLock::new(),
            })))
        }
        other => Err(FieldError::new(
            "name",
            format!("transport socket {other:?} is not supported"),
        )),
    }
}

/// What a server presents: Istio's workload certificate (`default`), a named SDS secret
/// over ADS, or a certificate in the config (inline or a file).
fn server_certificate(c: &CommonTlsContext) -> FieldResult<CertSource> {
    match (
        c.tls_certificate_sds_secret_configs.as_slice(),
        c.tls_certificates.as_slice(),
    ) {
        ([], []) => Err(FieldError::new(
            "tls_certificate_sds_secret_configs",
            "a server needs a certificate (SDS secret \"default\")",
        )),
        ([s], []) => {
            let at = "tls_certificate_sds_secret_configs[0]";
            if s.name == SDS_DEFAULT {
                Ok(CertSource::Workload)
            } else {
                ads_secret(s).at(at).map(CertSource::Sds)
            }
        }
        ([], [t]) => tls_certificate(t)
            .at("tls_certificates[0]")
            .map(CertSource::Static),
        _ => Err(FieldError::new(
            "tls_certificates",
            "one server certificate is supported (SDS or inline, not several)",
        )),
    }
}

/// The name of an SDS secret served over the ADS stream (what pilot writes for a gateway's
/// `credentialName`).
fn ads_secret(s: &SdsSecretConfig) -> FieldResult<String> {
    let over_ads = matches!(
        s.sds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_))
    );
    if s.name.is_empty() {
        return Err(FieldError::new("name", "required"));
    }
    if !over_ads {
        return Err(FieldError::new(
            "sds_config",
            format!(
                "SDS secret {:?} is not available: mast-proxy takes SDS secrets over ADS \
                 (sds_config: {{ads: {{}}}}) and serves Istio's workload secrets \"default\" \
                 and \"ROOTCA\"",
                s.name
            ),
        ));
    }
    Ok(s.name.clone())
}

/// A named validation context: the mesh bundle (`ROOTCA`) or an SDS secret over ADS.
fn trust_secret(s: &SdsSecretConfig) -> FieldResult<TrustSource> {
    if s.name == SDS_ROOTCA {
        Ok(TrustSource::Mesh)
    } else {
        ads_secret(s).map(TrustSource::Sds)
    }
}

/// How a server checks client certificates, and the SAN matchers for them. No validation
/// context: client certificates are not asked for (a gateway's SIMPLE TLS).
// Istio still writes the deprecated `match_subject_alt_names`.
#[allow(deprecated)]
fn client_validation(c: &CommonTlsContext) -> FieldResult<(Option<TrustSource>, Vec<SanMatch>)> {
    match &c.validation_context_type {
        None => Ok((None, Vec::new())),
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            let trust = trust_secret(s).at("validation_context_sds_secret_config")?;
            Ok((Some(trust), Vec::new()))
        }
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let at = "combined_validation_context";
            let trust = match &cv.validation_context_sds_secret_config {
                Some(s) => {
                    trust_secret(s).at(format!("{at}.validation_context_sds_secret_config"))?
                }
                None => {
                    return Err(FieldError::new(
                        format!("{at}.validation_context_sds_secret_config"),
                        "required (SDS secret \"ROOTCA\")",
                    ));
                }
            };
            let sans = match &cv.default_validation_context {
                Some(d) => {
                    let at = format!("{at}.default_validation_context");
                    if d.trusted_ca.is_some() {
                        return Err(FieldError::new(
                            format!("{at}.trusted_ca"),
                            "trust anchors come from the SDS secret alone",
                        ));
                    }
                    validation_sans(d).at(at)?
                }
                None => Vec::new(),
            };
            Ok((Some(trust), sans))
        }
        Some(ValidationContextType::ValidationContext(v)) => {
            let at = "validation_context";
            let bundle = trusted_ca(v).at(at)?;
            let sans = validation_sans(v).at(at)?;
            Ok((Some(TrustSource::Static(bundle)), sans))
        }
        Some(_) => Err(FieldError::new(
            "validation_context_type",
            "not supported; use an SDS secret or an inline validation context",
        )),
    }
}

/// The SAN matchers of a validation context.
#[allow(deprecated)]
fn validation_sans(d: &CertificateValidationContext) -> FieldResult<Vec<SanMatch>> {
    let mut sans = Vec::new();
    for (i, m) in d.match_subject_alt_names.iter().enumerate() {
        sans.push(san_match(m).at(format!("match_subject_alt_names[{i}]"))?);
    }
    for (i, m) in d.match_typed_subject_alt_names.iter().enumerate() {
        let f = format!("match_typed_subject_alt_names[{i}]");
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
        sans.push(san_match(m).at(format!("{f}.matcher"))?);
    }
    Ok(sans)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A filter chain's transport socket from the YAML of its `common_tls_context` and what
    /// follows it in the `DownstreamTlsContext`.
    fn downstream(ctx: &str) -> FieldResult<Option<Arc<DownstreamTls>>> {
        let yaml = format!(
            "name: envoy.transport_sockets.tls\ntyped_config:\n  \"@type\": \
             type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n{ctx}"
        );
        let ts: TransportSocket = mast_proto::json::yaml_to_message(&yaml).unwrap();
        downstream_socket(&ts)
    }

    /// A cluster's transport socket from the YAML of its `UpstreamTlsContext` body.
    fn upstream_yaml(ctx: &str) -> FieldResult<Option<Arc<UpstreamTls>>> {
        let yaml = format!(
            "name: envoy.transport_sockets.tls\ntyped_config:\n  \"@type\": \
             type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{ctx}"
        );
        let ts: TransportSocket = mast_proto::json::yaml_to_message(&yaml).unwrap();
        upstream_socket(&ts, (true, true))
    }

    #[test]
    fn origination_as_istiod_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (ca, c, k) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
        );
        std::fs::write(&ca, cert.pem()).unwrap();
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let (ca, c, k) = (ca.display(), c.display(), k.display());
        let simple = upstream_yaml(&format!(
            r#"  common_tls_context:
    tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}}
    combined_validation_context:
      default_validation_context: {{match_subject_alt_names: [{{exact: external.example.com}}]}}
      validation_context_sds_secret_config: {{name: "file-root:{ca}", sds_config: {{api_config_source: {{api_type: GRPC}}}}}}"#
        ))
        .unwrap()
        .unwrap();
        let o = simple.origination.as_ref().unwrap();
        assert!(matches!(o.trust, ServerTrust::Static(_)));
        assert!(o.cert.is_none());
        assert_eq!(
            simple.sans,
            [SanMatch::Exact("external.example.com".into())]
        );
        assert!(simple.auto_sni && simple.auto_san_validation);
        assert_eq!(
            simple.server_name(Some("external.example.com")),
            Some("external.example.com")
        );
        assert_eq!(simple.sds_names().count(), 0);

        let mutual = upstream_yaml(&format!(
            r#"  sni: external.example.com
  common_tls_context:
    alpn_protocols: [h2]
    tls_certificate_sds_secret_configs: [{{name: "file-cert:{c}~{k}"}}]
    combined_validation_context:
      default_validation_context: {{}}
      validation_context_sds_secret_config: {{name: "file-root:system"}}"#
        ))
        .unwrap()
        .unwrap();
        let o = mutual.origination.as_ref().unwrap();
        assert!(matches!(o.cert, Some(CertSource::Static(_))));
        assert_eq!(
            mutual.server_name(Some("other")),
            Some("external.example.com")
        );

        let skip = upstream_yaml("  common_tls_context:\n    validation_context: {}")
            .unwrap()
            .unwrap();
        assert_eq!(
            skip.origination.as_ref().unwrap().trust,
            ServerTrust::Insecure
        );

        let gateway = upstream_yaml(
            r#"  common_tls_context:
    tls_certificate_sds_secret_configs: [{name: "kubernetes://cred", sds_config: {ads: {}}}]
    combined_validation_context:
      validation_context_sds_secret_config: {name: "kubernetes://cred-cacert", sds_config: {ads: {}}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            gateway.sds_names().collect::<Vec<_>>(),
            ["kubernetes://cred", "kubernetes://cred-cacert"]
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_field() {
        let err = upstream_yaml(
            r#"  common_tls_context:
    combined_validation_context:
      default_validation_context: {crl: {filename: /crl.pem}}
      validation_context_sds_secret_config: {name: "file-root:system"}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.field,
            "typed_config.common_tls_context.combined_validation_context.default_validation_context.crl"
        );
        let err = upstream_yaml(
            r#"  common_tls_context:
    combined_validation_context:
      validation_context_sds_secret_config: {name: "file-root:/nonexistent/ca.pem"}"#,
        )
        .unwrap_err();
        assert!(err.message.contains("/nonexistent/ca.pem"), "{err:?}");
    }

    #[test]
    fn sidecar_mtls_stays_the_mesh_s() {
        let tls = downstream(
            r#"  common_tls_context:
    tls_certificate_sds_secret_configs: [{name: default}]
    validation_context_sds_secret_config: {name: ROOTCA}
  require_client_certificate: true"#,
        )
        .unwrap()
        .unwrap();
        assert!(tls.is_mesh());
        assert_eq!(tls.sds_names().count(), 0);
    }

    #[test]
    fn gateway_simple_and_mutual_from_sds_over_ads() {
        let simple = downstream(
            r#"  common_tls_context:
    alpn_protocols: [h2, http/1.1]
    tls_certificate_sds_secret_configs:
    - {name: "kubernetes://cred", sds_config: {ads: {}, resource_api_version: V3}}
  require_client_certificate: false"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(simple.cert, CertSource::Sds("kubernetes://cred".into()));
        assert_eq!(simple.trust, None);
        assert_eq!(simple.alpn, ["h2", "http/1.1"]);
        assert_eq!(
            simple.sds_names().collect::<Vec<_>>(),
            ["kubernetes://cred"]
        );
        let workload = SecretStore::default();
        let sds = SdsSecrets::default();
        assert_eq!(
            simple.waiting_for(&workload, &sds),
            Some("kubernetes://cred")
        );

        let mutual = downstream(
            r#"  common_tls_context:
    tls_certificate_sds_secret_configs:
    - {name: "kubernetes://m", sds_config: {ads: {}}}
    validation_context_sds_secret_config: {name: "kubernetes://m-cacert", sds_config: {ads: {}}}
  require_client_certificate: true"#,
        )
        .unwrap()
        .unwrap();
        assert!(mutual.require_client_cert);
        assert_eq!(
            mutual.trust,
            Some(TrustSource::Sds("kubernetes://m-cacert".into()))
        );
        assert_eq!(
            mutual.sds_names().collect::<Vec<_>>(),
            ["kubernetes://m", "kubernetes://m-cacert"]
        );
    }

    #[test]
    fn other_sds_sources_and_clientless_mutual_are_refused_with_the_field() {
        let err = downstream(
            r#"  common_tls_context:
    tls_certificate_sds_secret_configs:
    - name: "kubernetes://cred"
      sds_config: {api_config_source: {api_type: GRPC}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.field,
            "typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config"
        );
        let err = downstream(
            r#"  common_tls_context:
    tls_certificate_sds_secret_configs: [{name: "kubernetes://c", sds_config: {ads: {}}}]
  require_client_certificate: true"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "typed_config.require_client_certificate");
    }

    #[test]
    fn inline_certificates_and_cas_are_taken() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let indent = |pem: &str| {
            pem.lines()
                .map(|l| format!("          {l}\n"))
                .collect::<String>()
        };
        let ctx = format!(
            "  common_tls_context:\n    tls_certificates:\n    - certificate_chain:\n        \
             inline_string: |\n{}      private_key:\n        inline_string: |\n{}    \
             validation_context:\n      trusted_ca:\n        inline_string: |\n{}  \
             require_client_certificate: true\n",
            indent(&cert.pem()),
            indent(&key.serialize_pem()),
            indent(&cert.pem()),
        );
        let tls = downstream(&ctx).unwrap().unwrap();
        assert!(matches!(tls.cert, CertSource::Static(_)));
        assert!(matches!(tls.trust, Some(TrustSource::Static(_))));
        assert_eq!(tls.sds_names().count(), 0);
        let workload = Arc::new(SecretStore::default());
        let sds = Arc::new(SdsSecrets::default());
        assert_eq!(tls.waiting_for(&workload, &sds), None);
        assert!(tls.server_config(&workload, &sds).is_ok());
    }
}
