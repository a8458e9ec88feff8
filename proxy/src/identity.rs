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
//!
//! The loop talks to the CA through [`CaClient`]: [`IstioCa`] is Istio's CA API over tonic,
//! and the tests script a CA to prove the timing (renewal at half life, backoff, the old
//! certificate kept through failures) with paused time.

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

/// Where and as whom to ask Istio's CA for a certificate.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `host:port` of the CA (citadel in mastd, :15012).
    pub ca_address: String,
    /// PEM root(s) to verify the CA's serving certificate, also trusted for peers.
    pub root_cert: PathBuf,
    /// The workload credential, re-read on every request (it may be rotated on disk).
    pub token_file: PathBuf,
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

/// What a CA answered to a CSR: the chain (leaf first) and the roots to trust.
#[derive(Debug, Clone)]
pub struct Signed {
    pub cert_chain: Vec<String>,
    pub roots_pem: String,
}

/// A certificate authority the renewal loop asks for certificates.
pub trait CaClient: Send + Sync + 'static {
    /// Sign `csr_pem`. `current` is the certificate in service, if any: a CA may accept it
    /// as the caller's credential (Istio's does, over mutual TLS).
    fn sign(
        &self,
        csr_pem: String,
        current: Option<&WorkloadCert>,
    ) -> impl Future<Output = Result<Signed, IdentityError>> + Send;
}

/// Istio's CA API (`IstioCertificateService/CreateCertificate`) over TLS, as istio-agent
/// calls istiod's CA: the workload credential as a bearer token, the current certificate as
/// the TLS client certificate once there is one.
#[derive(Debug, Clone)]
pub struct IstioCa {
    cfg: IdentityConfig,
}

impl IstioCa {
    pub fn new(cfg: IdentityConfig) -> Self {
        Self { cfg }
    }
}

impl CaClient for IstioCa {
    async fn sign(
        &self,
        csr_pem: String,
        current: Option<&WorkloadCert>,
    ) -> Result<Signed, IdentityError> {
        let cfg = &self.cfg;
        let root = read(&cfg.root_cert)?;
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
        Ok(Signed {
            cert_chain: resp.cert_chain,
            roots_pem: String::from_utf8_lossy(&root).into_owned(),
        })
    }
}

/// A new key, a CSR for `spiffe_id`, and the certificate `ca` signs for it.
pub async fn fetch(
    ca: &impl CaClient,
    spiffe_id: &str,
    current: Option<&WorkloadCert>,
) -> Result<WorkloadCert, IdentityError> {
    let (csr_pem, key_pem) = make_csr(spiffe_id)?;
    let signed = ca.sign(csr_pem, current).await?;
    Ok(WorkloadCert::from_pem(
        &signed.cert_chain,
        &key_pem,
        &signed.roots_pem,
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

/// The first retry's delay after a failed request; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long to wait before retrying a failed request: the backoff, but while a certificate
/// is still in service never more than a quarter of its remaining life (at least
/// [`FIRST_BACKOFF`]). Without that cap a short-lived certificate (minutes, as in a soak or a
/// cluster with a short `workload-cert-ttl`) whose CA came back after a long outage could
/// expire while its proxy sleeps out a 30 s backoff.
fn retry_delay(backoff: Duration, left: Option<Duration>) -> Duration {
    match left {
        Some(left) if !left.is_zero() => backoff.min((left / 4).max(FIRST_BACKOFF)),
        _ => backoff,
    }
}

/// Keep a valid certificate for `spiffe_id` in `store` for as long as the proxy runs.
pub async fn run(ca: impl CaClient, spiffe_id: String, store: Arc<SecretStore>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let current = store.current();
        match fetch(&ca, &spiffe_id, current.as_deref()).await {
            Ok(cert) => {
                tracing::info!(
                    identity = %cert.spiffe,
                    valid_for_secs = cert.remaining().as_secs(),
                    "workload certificate issued"
                );
                let wait = renew_delay(&cert);
                store.publish(cert);
                backoff = FIRST_BACKOFF;
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let left = current.as_ref().map(|c| c.remaining());
                tracing::warn!(
                    error = %e,
                    retry_in_ms = retry_delay(backoff, left).as_millis() as u64,
                    current_valid_for_secs = left.map(|l| l.as_secs()),
                    "certificate request failed; keeping the current certificate"
                );
                let jitter = rand::rng().random_range(0.8..1.2);
                tokio::time::sleep(retry_delay(backoff.mul_f64(jitter), left)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
        IsCa, KeyPair,
    };
    use tokio::time::Instant;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/user";

    /// A CA in memory: signs every CSR for `lifetime`, except that it refuses the calls whose
    /// index (0-based) is in `fail`. Records when each call came and which certificate was
    /// in service then.
    struct ScriptedCa {
        issuer: CertifiedIssuer<'static, KeyPair>,
        lifetime: Duration,
        fail: std::ops::Range<usize>,
        calls: AtomicUsize,
        log: Mutex<Vec<(Instant, Option<String>, bool)>>,
    }

    impl ScriptedCa {
        fn new(lifetime: Duration, fail: std::ops::Range<usize>) -> Arc<Self> {
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            Arc::new(Self {
                issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
                lifetime,
                fail,
                calls: AtomicUsize::new(0),
                log: Mutex::new(Vec::new()),
            })
        }

        /// (when, certificate in service, answered) for every call so far.
        fn log(&self) -> Vec<(Instant, Option<String>, bool)> {
            self.log.lock().unwrap().clone()
        }
    }

    impl CaClient for Arc<ScriptedCa> {
        async fn sign(
            &self,
            csr_pem: String,
            current: Option<&WorkloadCert>,
        ) -> Result<Signed, IdentityError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let ok = !self.fail.contains(&n);
            self.log.lock().unwrap().push((
                Instant::now(),
                current.map(|c| c.chain_pem.clone()),
                ok,
            ));
            if !ok {
                return Err(IdentityError::Connect {
                    addr: "scripted".into(),
                    message: format!("call {n} refused by the script"),
                });
            }
            let mut csr = CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
            let now = time::OffsetDateTime::now_utc();
            csr.params.not_before = now - time::Duration::seconds(1);
            csr.params.not_after = now + self.lifetime;
            Ok(Signed {
                cert_chain: vec![csr.signed_by(&*self.issuer).unwrap().pem()],
                roots_pem: self.issuer.pem(),
            })
        }
    }

    fn gaps(log: &[(Instant, Option<String>, bool)]) -> Vec<Duration> {
        log.windows(2).map(|w| w[1].0 - w[0].0).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_half_life() {
        let ca = ScriptedCa::new(Duration::from_secs(100), 0..0);
        let store = Arc::new(SecretStore::default());
        let task = tokio::spawn(run(Arc::clone(&ca), ID.into(), Arc::clone(&store)));
        tokio::time::sleep(Duration::from_secs(170)).await;
        task.abort();
        let log = ca.log();
        assert_eq!(
            log.len(),
            4,
            "a 100 s certificate is renewed about every 50 s"
        );
        for gap in gaps(&log) {
            // Half of what is left (≈100 s) ± 5%, a little less for the second it took.
            assert!(
                (Duration::from_secs(44)..=Duration::from_secs(55)).contains(&gap),
                "{gap:?}"
            );
        }
        let cert = store.current().expect("a certificate in service");
        assert_eq!(cert.spiffe, ID);
        // Each renewal presented the certificate it replaces.
        assert!(log[1..].iter().all(|(_, current, _)| current.is_some()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_ca_is_retried_with_backoff_and_the_old_certificate_stays() {
        // The first certificate, then ten refusals when it is due for renewal, then success.
        let ca = ScriptedCa::new(Duration::from_secs(600), 1..11);
        let store = Arc::new(SecretStore::default());
        let task = tokio::spawn(run(Arc::clone(&ca), ID.into(), Arc::clone(&store)));
        tokio::time::sleep(Duration::from_secs(700)).await;
        task.abort();
        let log = ca.log();
        assert!(log.len() >= 12, "{} calls", log.len());
        let first = log[1]
            .1
            .clone()
            .expect("the first certificate is in service");
        // Every refused call ran with the first certificate still in service.
        for (i, (_, current, ok)) in log[1..11].iter().enumerate() {
            assert!(!ok);
            assert_eq!(current.as_ref(), Some(&first), "call {}", i + 1);
        }
        assert!(log[11].2, "the 12th call succeeds");
        // 200 ms doubling up to 30 s, each ±20%.
        let expected = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0];
        for (gap, want) in gaps(&log)[1..11].iter().zip(expected) {
            let secs = gap.as_secs_f64();
            assert!(
                secs >= want * 0.8 - 1e-3 && secs <= want * 1.2 + 1e-3,
                "{secs} s, expected {want} s ±20%"
            );
        }
        let now = store.current().expect("a certificate in service");
        assert_ne!(
            now.chain_pem, first,
            "the renewed certificate replaced the first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_never_sleep_past_a_quarter_of_the_certificate_left() {
        // A 20 s certificate: renewal at ~10 s of test time, then ten refusals. The backoff
        // would reach 25.6 s; with 20 s of (wall-clock, so here constant) life left, every
        // retry comes within 5 s.
        let ca = ScriptedCa::new(Duration::from_secs(20), 1..11);
        let store = Arc::new(SecretStore::default());
        let task = tokio::spawn(run(Arc::clone(&ca), ID.into(), Arc::clone(&store)));
        tokio::time::sleep(Duration::from_secs(120)).await;
        task.abort();
        let log = ca.log();
        assert!(log.len() >= 12, "{} calls", log.len());
        for gap in &gaps(&log)[1..11] {
            assert!(*gap <= Duration::from_millis(5_001), "{gap:?}");
        }
        assert!(log[11].2, "the 12th call succeeds");
        assert_eq!(
            retry_delay(Duration::from_secs(30), None),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(30), Some(Duration::ZERO)),
            Duration::from_secs(30),
            "an expired certificate: plain backoff, no storm"
        );
        assert_eq!(
            retry_delay(Duration::from_secs(30), Some(Duration::from_millis(100))),
            FIRST_BACKOFF
        );
    }

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
