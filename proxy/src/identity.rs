//! The workload's identity: a key made in memory, a certificate from the CA, renewed on time.
//!
//! This is istio-agent's job folded into the sidecar. The key never leaves the process (SDS
//! hands it to a co-located Envoy when mast-proxy runs as its agent). The CSR goes to
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS, authenticated by the
//! workload credential (Kubernetes: the projected service-account token; local mode: the
//! token `mastctl credential` issues) as `authorization: Bearer …`, and by the current
//! certificate as a TLS client certificate once there is one.
//!
//! Renewal is at half the certificate's lifetime with a little jitter, as Istio's
//! `SECRET_GRACE_PERIOD_RATIO`, so a fleet does not renew in lockstep. A failed renewal keeps
//! the current certificate in service and retries with backoff until it succeeds; traffic
//! only stops if the CA stays unreachable past the certificate's expiry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mast_proto::istio::ca::IstioCertificateRequest;
use mast_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use rand::Rng;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::tls::{SecretStore, WorkloadCert};

/// The server name citadel's certificate carries (as istiod's).
pub const CA_SERVER_NAME: &str = "istiod.istio-system.svc";

/// Where and as whom to ask for a certificate.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `host:port` of the CA (citadel in mastd, :15012).
    pub ca_address: String,
    /// PEM root(s) to verify the CA's serving certificate, also trusted for peers.
    pub root_cert: PathBuf,
    /// The workload credential, re-read on every request (it may be rotated on disk).
    pub token_file: PathBuf,
    pub spiffe_id: String,
    /// Requested lifetime; `None` takes the CA's default.
    pub ttl: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CA {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("CA refused the CSR: {0}")]
    Refused(tonic::Status),
    #[error("making the key or CSR: {0}")]
    Csr(String),
    #[error("the CA's answer: {0}")]
    Answer(#[from] crate::tls::TlsError),
}

/// Fetch a certificate now.
pub async fn fetch(
    cfg: &IdentityConfig,
    current: Option<&WorkloadCert>,
) -> Result<WorkloadCert, IdentityError> {
    let root = read(&cfg.root_cert)?;
    let (csr_pem, key_pem) = make_csr(&cfg.spiffe_id)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root))
        .domain_name(server_name(&cfg.ca_address));
    if let Some(c) = current {
        tls = tls.identity(Identity::from_pem(&c.chain_pem, &c.key_pem));
    }
    let connect_err = |message: String| IdentityError::Connect {
        addr: cfg.ca_address.clone(),
        message,
    };
    let channel = Channel::from_shared(format!("https://{}", cfg.ca_address))
        .map_err(|e| connect_err(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| connect_err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| connect_err(format!("{e}: {}", source_chain(&e))))?;
    let mut client = IstioCertificateServiceClient::new(channel);
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem,
        validity_duration: cfg.ttl.map_or(0, |t| t.as_secs() as i64),
        metadata: None,
    });
    match std::fs::read_to_string(&cfg.token_file) {
        Ok(token) => {
            let value = format!("Bearer {}", token.trim());
            if let Ok(v) = value.parse() {
                req.metadata_mut().insert("authorization", v);
            }
        }
        // Without a token the current certificate may still authenticate a renewal.
        Err(e) if current.is_some() => {
            tracing::debug!(file = %cfg.token_file.display(), error = %e, "no token; renewing with the current certificate")
        }
        Err(source) => {
            return Err(IdentityError::Read {
                path: cfg.token_file.display().to_string(),
                source,
            });
        }
    }
    let resp = client
        .create_certificate(req)
        .await
        .map_err(IdentityError::Refused)?
        .into_inner();
    let root_text = String::from_utf8_lossy(&root);
    Ok(WorkloadCert::from_pem(
        &resp.cert_chain,
        &key_pem,
        &root_text,
    )?)
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The name to verify the CA's certificate against: its host, or istiod's name when the
/// address is an IP (local mode dials 127.0.0.1:15012).
fn server_name(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() {
        CA_SERVER_NAME.to_string()
    } else {
        host.to_string()
    }
}

/// A fresh ECDSA P-256 key and a CSR for `spiffe_id` (URI SAN, empty subject, as Istio's).
pub fn make_csr(spiffe_id: &str) -> Result<(String, String), IdentityError> {
    let err = |e: rcgen::Error| IdentityError::Csr(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        spiffe_id
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| IdentityError::Csr(e.to_string()))?,
    )];
    let csr = params.serialize_request(&key).map_err(err)?;
    Ok((csr.pem().map_err(err)?, key.serialize_pem()))
}

/// When to renew: half-way through what is left of its life when it arrives, ±5%. (Not
/// from `not_before`: CAs backdate certificates for clock skew, which for a short-lived
/// certificate would put "half-way" in the past.)
pub fn renew_delay(cert: &WorkloadCert) -> Duration {
    let ratio = 0.5 + rand::rng().random_range(-0.05..0.05);
    cert.remaining().mul_f64(ratio)
}

/// Keep a valid certificate in `store` for as long as the proxy runs.
pub async fn run(cfg: IdentityConfig, store: Arc<SecretStore>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let current = store.current();
        match fetch(&cfg, current.as_deref()).await {
            Ok(cert) => {
                tracing::info!(
                    identity = %cert.spiffe,
                    valid_for_secs = cert.remaining().as_secs(),
                    "workload certificate issued"
                );
                let wait = renew_delay(&cert);
                store.publish(cert);
                backoff = Duration::from_millis(200);
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let left = current.as_ref().map(|c| c.remaining());
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    current_valid_for_secs = left.map(|l| l.as_secs()),
                    "certificate request failed; keeping the current certificate"
                );
                let jitter = rand::rng().random_range(0.8..1.2);
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_for_ip_is_istiod() {
        assert_eq!(server_name("127.0.0.1:15012"), CA_SERVER_NAME);
        assert_eq!(server_name("[::1]:15012"), CA_SERVER_NAME);
        assert_eq!(
            server_name("istiod.istio-system.svc:15012"),
            "istiod.istio-system.svc"
        );
    }

    #[test]
    fn csr_carries_the_spiffe_id() {
        use x509_parser::prelude::FromDer;
        let (csr, key) = make_csr("spiffe://cluster.local/ns/default/sa/user").unwrap();
        assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
        assert!(key.contains("PRIVATE KEY"));
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(csr.as_bytes())
            .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
            .unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let exts = req.requested_extensions().unwrap().collect::<Vec<_>>();
        let text = format!("{exts:?}");
        assert!(
            text.contains("spiffe://cluster.local/ns/default/sa/user"),
            "{text}"
        );
    }
}
