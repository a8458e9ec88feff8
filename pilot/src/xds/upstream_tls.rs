//! TLS origination: a DestinationRule's `tls.mode` `SIMPLE` or `MUTUAL` as the client side of
//! a cluster, shaped as istiod's `constructUpstreamTLS` shapes it.
//!
//! Key material never travels in pilot's config here either. Files named by the
//! DestinationRule (`caCertificates`, `clientCertificate`/`privateKey`) live on the proxy, so
//! pilot names them as istio-agent's file SDS resources over the `sds-grpc` cluster (when
//! there is no agent — no CA, so no mesh mTLS — as file paths the proxy reads itself):
//! `file-root:<path>` for the CAs, `file-root:system` for the system bundle when no CA is given
//! (current Istio verifies servers by default), `file-cert:<cert>~<key>` for the client
//! certificate. The agent (mast-proxy's `--sds-socket`, or mast-proxy itself as the sidecar)
//! reads the files. A `credentialName` names a Kubernetes Secret that pilot serves over ADS
//! (`kubernetes://<name>`, CAs in `kubernetes://<name>-cacert`), and — as in istiod — only to
//! gateways: on a sidecar such a rule gets no TLS context at all.
//!
//! With no `sni`, Envoy takes the SNI from the request's host (`auto_sni`) and, with no
//! `subjectAltNames` either, checks the server certificate against that host
//! (`auto_san_validation`): both are set in the cluster's `HttpProtocolOptions`.

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, Secret, TlsCertificate,
    TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use mast_mesh_config::model::{ClientTls, MeshModel, TlsMode};

use super::any;
use super::gateway::{CA_SECRET_SUFFIX, KUBERNETES_SECRET_PREFIX};
use super::mtls::sds_secret;

/// istio-agent's SDS name prefix for CA certificates read from a file.
pub const FILE_ROOT_PREFIX: &str = "file-root:";
/// istio-agent's SDS name prefix for a certificate and key read from files.
pub const FILE_CERT_PREFIX: &str = "file-cert:";
/// Separates the certificate and key paths in a `file-cert:` name.
pub const FILE_CERT_SEPARATOR: char = '~';
/// `caCertificates` when none is given: the system's CA bundle.
pub const SYSTEM_ROOTS: &str = "system";

/// What a cluster with TLS origination also needs in its `HttpProtocolOptions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoSni {
    /// SNI from the request's host.
    pub auto_sni: bool,
    /// The server certificate is checked against the request's host.
    pub auto_san_validation: bool,
}

/// Where a proxy's certificate files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Files {
    /// Its agent serves them over SDS (`file-root:`, `file-cert:`), as istio-agent does: a
    /// file that is missing holds only its own cluster back. Mesh mTLS on: every proxy has
    /// an agent (Envoy's is mast-proxy `--sds-socket`).
    Agent,
    /// No agent (no CA, so no mesh mTLS): the proxy reads the paths itself, the system
    /// bundle at Debian's path.
    Direct,
}

/// The system bundle's path when the proxy reads files itself (Debian and Ubuntu, the base
/// of Istio's and Mast's proxy images).
pub const SYSTEM_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The transport socket for a `SIMPLE`/`MUTUAL` rule, or `None` where istiod builds none
/// (another mode, or a `credentialName` on a sidecar). `h2`: the cluster speaks HTTP/2.
pub fn origination(
    tls: &ClientTls,
    h2: bool,
    router: bool,
    files: Files,
) -> Option<(TransportSocket, AutoSni)> {
    let mutual = match tls.mode {
        TlsMode::Simple => false,
        TlsMode::Mutual => true,
        TlsMode::Disable | TlsMode::IstioMutual => return None,
    };
    if tls.credential_name.is_some() && !router {
        tracing::debug!(
            credential = ?tls.credential_name,
            "DestinationRule credentialName is honoured on gateways only (as istiod): no TLS \
             origination on this sidecar"
        );
        return None;
    }
    let mut common = CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let sans = || tls.subject_alt_names.iter().cloned().map(exact).collect();
    if let Some(name) = &tls.credential_name {
        let ads = credential_sds;
        if mutual {
            common.tls_certificate_sds_secret_configs =
                vec![ads(format!("{KUBERNETES_SECRET_PREFIX}{name}"))];
        }
        if !tls.insecure_skip_verify {
            common.validation_context_type = Some(combined(
                #[allow(deprecated)]
                CertificateValidationContext {
                    match_subject_alt_names: sans(),
                    ..Default::default()
                },
                ads(format!(
                    "{KUBERNETES_SECRET_PREFIX}{name}{CA_SECRET_SUFFIX}"
                )),
            ));
        }
    } else {
        if mutual {
            // The parser refuses MUTUAL without both files; istiod logs and builds nothing.
            let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key) else {
                tracing::warn!("MUTUAL TLS without clientCertificate and privateKey: no TLS");
                return None;
            };
            match files {
                Files::Agent => {
                    common.tls_certificate_sds_secret_configs = vec![sds_secret(&format!(
                        "{FILE_CERT_PREFIX}{cert}{FILE_CERT_SEPARATOR}{key}"
                    ))];
                }
                Files::Direct => {
                    common.tls_certificates = vec![TlsCertificate {
                        certificate_chain: Some(file(cert)),
                        private_key: Some(file(key)),
                        ..Default::default()
                    }];
                }
            }
        }
        if tls.insecure_skip_verify {
            common.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext::default(),
            ));
        } else {
            #[allow(deprecated)]
            let mut validation = CertificateValidationContext {
                match_subject_alt_names: sans(),
                crl: tls.ca_crl.as_deref().map(file),
                ..Default::default()
            };
            common.validation_context_type = Some(match files {
                Files::Agent => {
                    let ca = tls.ca_certificates.as_deref().unwrap_or(SYSTEM_ROOTS);
                    combined(validation, sds_secret(&format!("{FILE_ROOT_PREFIX}{ca}")))
                }
                Files::Direct => {
                    let ca = tls.ca_certificates.as_deref().unwrap_or(SYSTEM_BUNDLE_PATH);
                    validation.trusted_ca = Some(file(ca));
                    ValidationContextType::ValidationContext(validation)
                }
            });
        }
    }
    if h2 {
        common.alpn_protocols = vec!["h2".into()];
    }
    let sni = tls.sni.clone().unwrap_or_default();
    let auto = AutoSni {
        auto_sni: sni.is_empty(),
        auto_san_validation: sni.is_empty()
            && tls.subject_alt_names.is_empty()
            && !tls.insecure_skip_verify,
    };
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni,
        ..Default::default()
    };
    let socket = TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    };
    Some((socket, auto))
}

/// A `credentialName` secret over ADS. As istiod's `SDSAdsConfig`, Envoy's default initial
/// fetch timeout is kept (not the 0s of every other resource): the Secret may not exist, and
/// waiting for it forever would hold back the cluster — and with it every CDS update.
fn credential_sds(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

fn combined(default: CertificateValidationContext, sds: SdsSecretConfig) -> ValidationContextType {
    ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
        default_validation_context: Some(default),
        validation_context_sds_secret_config: Some(sds),
        ..Default::default()
    })
}

fn exact(s: String) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(s)),
        ..Default::default()
    }
}

/// The SDS secrets a gateway's DestinationRule `credentialName`s need, from the Secrets in the
/// gateway's namespace: the client certificate (`kubernetes://<name>`, MUTUAL) and the CAs
/// (`kubernetes://<name>-cacert`: `ca.crt` of the Secret, or of a `<name>-cacert` Secret).
pub fn credential_secrets(model: &MeshModel, namespace: &str) -> Vec<Secret> {
    let mut out = Vec::new();
    let lookup = |n: &str| {
        model
            .tls_secrets
            .get(&(namespace.to_string(), n.to_string()))
    };
    let policies = model.destination_policies.values();
    let mut rules: Vec<&ClientTls> = Vec::new();
    for p in policies {
        let base = &p.traffic_policy;
        let subsets = p.subsets.iter().filter_map(|s| s.traffic_policy.as_ref());
        for tp in std::iter::once(base).chain(subsets) {
            rules.extend(tp.tls.as_ref());
            rules.extend(tp.port_level.values().filter_map(|pl| pl.tls.as_ref()));
        }
    }
    for tls in rules {
        let Some(name) = &tls.credential_name else {
            continue;
        };
        if !matches!(tls.mode, TlsMode::Simple | TlsMode::Mutual) {
            continue;
        }
        if tls.mode == TlsMode::Mutual
            && let Some((cert, key)) =
                lookup(name).and_then(|s| Some((s.cert.as_ref()?, s.key.as_ref()?)))
        {
            out.push(Secret {
                name: format!("{KUBERNETES_SECRET_PREFIX}{name}"),
                r#type: Some(SecretType::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(cert)),
                    private_key: Some(inline(key)),
                    ..Default::default()
                })),
            });
        }
        let ca = lookup(name).and_then(|s| s.ca.clone()).or_else(|| {
            lookup(&format!("{name}{CA_SECRET_SUFFIX}"))
                .and_then(|s| s.ca.clone().or_else(|| s.cert.clone()))
        });
        if let Some(ca) = ca {
            out.push(Secret {
                name: format!("{KUBERNETES_SECRET_PREFIX}{name}{CA_SECRET_SUFFIX}"),
                r#type: Some(SecretType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(inline(&ca)),
                        ..Default::default()
                    },
                )),
            });
        } else if !tls.insecure_skip_verify {
            tracing::warn!(
                secret = %format!("{namespace}/{name}"),
                "DestinationRule credentialName: no ca.crt in the Secret (or a <name>-cacert \
                 Secret) in the gateway's namespace; connections wait for it"
            );
        }
    }
    out
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(DataSpecifier::Filename(path.to_string())),
        ..Default::default()
    }
}

fn inline(pem: &str) -> DataSource {
    DataSource {
        specifier: Some(DataSpecifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use prost::Message;

    fn rule(mode: TlsMode) -> ClientTls {
        ClientTls {
            mode,
            sni: None,
            subject_alt_names: vec![],
            credential_name: None,
            ca_certificates: None,
            client_certificate: None,
            private_key: None,
            insecure_skip_verify: false,
            ca_crl: None,
        }
    }

    fn ctx(ts: &TransportSocket) -> UpstreamTlsContext {
        let Some(ConfigType::TypedConfig(a)) = &ts.config_type else {
            panic!("no typed config")
        };
        UpstreamTlsContext::decode(a.value.as_slice()).unwrap()
    }

    fn root_name(c: &CommonTlsContext) -> String {
        match &c.validation_context_type {
            Some(ValidationContextType::CombinedValidationContext(cv)) => cv
                .validation_context_sds_secret_config
                .as_ref()
                .unwrap()
                .name
                .clone(),
            other => panic!("not combined: {other:?}"),
        }
    }

    #[test]
    fn simple_verifies_with_the_system_bundle_or_the_given_file() {
        let (ts, auto) = origination(&rule(TlsMode::Simple), false, false, Files::Agent).unwrap();
        let c = ctx(&ts);
        let common = c.common_tls_context.unwrap();
        assert_eq!(root_name(&common), "file-root:system");
        assert!(common.tls_certificate_sds_secret_configs.is_empty());
        assert!(common.alpn_protocols.is_empty());
        assert_eq!(c.sni, "");
        assert_eq!(
            auto,
            AutoSni {
                auto_sni: true,
                auto_san_validation: true
            }
        );
        let mut r = rule(TlsMode::Simple);
        r.ca_certificates = Some("/etc/certs/ca.pem".into());
        r.sni = Some("api.example.com".into());
        r.subject_alt_names = vec!["api.example.com".into()];
        let (ts, auto) = origination(&r, true, false, Files::Agent).unwrap();
        let common = ctx(&ts).common_tls_context.unwrap();
        assert_eq!(root_name(&common), "file-root:/etc/certs/ca.pem");
        assert_eq!(common.alpn_protocols, ["h2"]);
        assert_eq!(auto, AutoSni::default());
    }

    #[test]
    fn mutual_presents_the_files_and_skip_verify_drops_validation() {
        let mut r = rule(TlsMode::Mutual);
        r.client_certificate = Some("/c.pem".into());
        r.private_key = Some("/k.pem".into());
        r.insecure_skip_verify = true;
        let (ts, auto) = origination(&r, false, false, Files::Agent).unwrap();
        let common = ctx(&ts).common_tls_context.unwrap();
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            "file-cert:/c.pem~/k.pem"
        );
        assert_eq!(
            common.validation_context_type,
            Some(ValidationContextType::ValidationContext(
                CertificateValidationContext::default()
            ))
        );
        assert!(auto.auto_sni && !auto.auto_san_validation);
    }

    #[test]
    fn without_an_agent_the_proxy_reads_the_files() {
        let mut r = rule(TlsMode::Mutual);
        r.client_certificate = Some("/c.pem".into());
        r.private_key = Some("/k.pem".into());
        let (ts, _) = origination(&r, false, false, Files::Direct).unwrap();
        let common = ctx(&ts).common_tls_context.unwrap();
        assert!(common.tls_certificate_sds_secret_configs.is_empty());
        assert_eq!(
            common.tls_certificates[0].certificate_chain,
            Some(file("/c.pem"))
        );
        let Some(ValidationContextType::ValidationContext(v)) = &common.validation_context_type
        else {
            panic!("not a validation context")
        };
        assert_eq!(v.trusted_ca, Some(file(SYSTEM_BUNDLE_PATH)));
    }

    #[test]
    fn credential_name_is_for_gateways_only() {
        let mut r = rule(TlsMode::Mutual);
        r.credential_name = Some("client-credential".into());
        assert!(origination(&r, false, false, Files::Agent).is_none());
        let (ts, _) = origination(&r, false, true, Files::Agent).unwrap();
        let common = ctx(&ts).common_tls_context.unwrap();
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            "kubernetes://client-credential"
        );
        assert_eq!(root_name(&common), "kubernetes://client-credential-cacert");
        let source = common.tls_certificate_sds_secret_configs[0]
            .sds_config
            .as_ref()
            .unwrap();
        assert!(
            source.initial_fetch_timeout.is_none(),
            "a missing Secret must not hold the cluster forever"
        );
        assert!(origination(&rule(TlsMode::IstioMutual), false, true, Files::Agent).is_none());
    }
}
