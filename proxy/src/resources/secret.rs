//! SDS over ADS: `Secret` resources, and the certificate and CA data sources that listeners
//! may also carry inline.
//!
//! pilot serves a gateway the Kubernetes Secrets its Gateways name (`credentialName`) as SDS
//! secrets on the same ADS stream, `kubernetes://<name>` (a `tls_certificate`) and
//! `kubernetes://<name>-cacert` (a `validation_context`). They are checked here like any
//! other resource — a key that does not parse or match its certificate is a NACK naming the
//! field, and the last good secret stays in force — and compiled to what rustls presents and
//! verifies with, so a handshake only looks a name up.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};
use mast_proto::TypeUrl;

use super::{At, FieldError, FieldResult, Rejection, XdsResource};
use crate::tls::TlsError;
use crate::tls::credentials::{self, Credential, ServerCert, TrustBundle};

// === impl Secret ===

impl XdsResource for Secret {
    const TYPE: TypeUrl = TypeUrl::Secret;
    type Compiled = Credential;

    fn name(&self) -> &str {
        &self.name
    }

    fn compile(&self) -> Result<Credential, Rejection> {
        Ok(credential(self).map_err(|e| e.resource("Secret", &self.name))?)
    }
}

fn credential(s: &Secret) -> FieldResult<Credential> {
    if s.name.is_empty() {
        return Err(FieldError::new("name", "required"));
    }
    match &s.r#type {
        Some(Type::TlsCertificate(t)) => tls_certificate(t)
            .at("tls_certificate")
            .map(Credential::Certificate),
        Some(Type::ValidationContext(v)) => trusted_ca(v)
            .at("validation_context")
            .map(Credential::Trust),
        Some(_) => Err(FieldError::new(
            "type",
            "only tls_certificate and validation_context secrets are supported",
        )),
        None => Err(FieldError::new("type", "required")),
    }
}

/// A certificate chain and its key (`TlsCertificate`).
pub fn tls_certificate(t: &TlsCertificate) -> FieldResult<ServerCert> {
    let chain = data(t.certificate_chain.as_ref()).at("certificate_chain")?;
    let key = data(t.private_key.as_ref()).at("private_key")?;
    credentials::server_cert(&chain, &key).map_err(|e| match e {
        TlsError::Key(_) => FieldError::new("private_key", e.to_string()),
        other => FieldError::new("certificate_chain", other.to_string()),
    })
}

/// The CAs of a validation context (`trusted_ca`, required).
pub fn trusted_ca(v: &CertificateValidationContext) -> FieldResult<Arc<TrustBundle>> {
    let pem = data(v.trusted_ca.as_ref()).at("trusted_ca")?;
    credentials::trust_bundle(&pem)
        .map(Arc::new)
        .map_err(|e| FieldError::new("trusted_ca", e.to_string()))
}

/// The bytes of a data source. A file is read once, when the resource arrives (Istio mounts
/// gateway certificates as files for `serverCertificate`/`privateKey`).
fn data(d: Option<&DataSource>) -> FieldResult<Vec<u8>> {
    match d.and_then(|d| d.specifier.as_ref()) {
        None => Err(FieldError::new("", "required")),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(Specifier::Filename(f)) => std::fs::read(f)
            .map_err(|e| FieldError::new("filename", format!("cannot read {f:?}: {e}"))),
        Some(Specifier::EnvironmentVariable(v)) => std::env::var(v)
            .map(String::into_bytes)
            .map_err(|_| FieldError::new("environment_variable", format!("{v} is not set"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    fn pem_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["bookinfo.example.com".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn inline(s: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(s.as_bytes().to_vec())),
            ..Default::default()
        })
    }

    fn any(s: &Secret) -> Any {
        Any {
            type_url: TypeUrl::Secret.url().into(),
            value: s.encode_to_vec(),
        }
    }

    #[test]
    fn certificates_and_cas_as_pilot_serves_them() {
        let (cert, key) = pem_pair();
        let s = Secret {
            name: "kubernetes://bookinfo-credential".into(),
            r#type: Some(Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&cert),
                private_key: inline(&key),
                ..Default::default()
            })),
        };
        let decoded = Secret::from_any(&any(&s)).unwrap();
        assert_eq!(
            XdsResource::name(&decoded),
            "kubernetes://bookinfo-credential"
        );
        assert!(matches!(
            decoded.compile().unwrap(),
            Credential::Certificate(_)
        ));
        let ca = Secret {
            name: "kubernetes://bookinfo-credential-cacert".into(),
            r#type: Some(Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline(&cert),
                ..Default::default()
            })),
        };
        assert!(matches!(ca.compile().unwrap(), Credential::Trust(_)));
    }

    #[test]
    fn bad_material_is_rejected_with_resource_and_field() {
        let (cert, _) = pem_pair();
        let (_, other_key) = pem_pair();
        let s = Secret {
            name: "kubernetes://c".into(),
            r#type: Some(Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&cert),
                private_key: inline(&other_key),
                ..Default::default()
            })),
        };
        let err = s.compile().unwrap_err().to_string();
        assert!(
            err.starts_with("Secret \"kubernetes://c\": tls_certificate.private_key:"),
            "{err}"
        );
        let no_key = Secret {
            name: "kubernetes://c".into(),
            r#type: Some(Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&cert),
                ..Default::default()
            })),
        };
        let err = no_key.compile().unwrap_err().to_string();
        assert!(
            err.contains("tls_certificate.private_key: required"),
            "{err}"
        );
        let missing_file = TlsCertificate {
            certificate_chain: Some(DataSource {
                specifier: Some(Specifier::Filename("/nonexistent/cert.pem".into())),
                ..Default::default()
            }),
            private_key: inline("x"),
            ..Default::default()
        };
        let err = tls_certificate(&missing_file).unwrap_err();
        assert_eq!(err.field, "certificate_chain.filename");
        let untyped = Secret {
            name: "x".into(),
            r#type: None,
        };
        assert!(untyped.compile().is_err());
    }

    #[test]
    fn file_certificates_are_read_when_the_resource_arrives() {
        let (cert, key) = pem_pair();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let file = |p: &std::path::Path| {
            Some(DataSource {
                specifier: Some(Specifier::Filename(p.display().to_string())),
                ..Default::default()
            })
        };
        let t = TlsCertificate {
            certificate_chain: file(&c),
            private_key: file(&k),
            ..Default::default()
        };
        assert!(tls_certificate(&t).is_ok());
    }
}
