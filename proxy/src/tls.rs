//! Mutual TLS between sidecars with SPIFFE identities.
//!
//! Istio's sidecars do not check host names: a workload certificate carries one URI SAN,
//! `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, and a peer is accepted when its chain leads to a
//! root of the mesh's trust bundle and, outbound, when that URI is one of the service accounts
//! pilot expects behind the destination (`match_subject_alt_names`). rustls' stock verifiers
//! check DNS names, so the two verifiers here do the chain walk with `webpki` and then compare
//! the URI SAN.
//!
//! Certificates rotate under live traffic: the [`SecretStore`] holds the current workload
//! certificate and trust bundle, and the resolvers and verifiers read it on every handshake.
//! A rotation therefore needs no new `ServerConfig`/`ClientConfig`, restarts nothing, and
//! leaves established connections alone.
//!
//! The one crypto provider of mast-proxy is *ring*, named here and passed to every config
//! explicitly rather than relying on a process-wide default.
//!
//! A gateway's TLS towards clients outside the mesh (certificates from Kubernetes Secrets
//! over SDS, inline or file certificates, client CAs) is in [`credentials`].

/// The handshake-signature checks of a rustls certificate verifier, delegated to the crypto
/// provider held in field `$provider`: every verifier of the proxy (SPIFFE peers, gateway
/// client CAs, the agent's CA client) checks signatures the same way and differs only in
/// how it verifies the chain.
macro_rules! provider_signature_checks {
    ($provider:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use provider_signature_checks;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DistinguishedName, SignatureScheme};
use tokio::sync::watch;

pub mod credentials;
mod tickets;

/// SDS name of the workload certificate in Istio's config.
pub const SDS_DEFAULT: &str = "default";
/// SDS name of the trust bundle in Istio's config.
pub const SDS_ROOTCA: &str = "ROOTCA";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("bad PEM: {0}")]
    Pem(String),
    #[error("bad certificate: {0}")]
    Certificate(String),
    #[error("bad private key: {0}")]
    Key(String),
    #[error("the certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
}

/// mast-proxy's crypto provider (ring), with AES-128-GCM preferred to AES-256-GCM.
///
/// ring's default order puts `TLS13_AES_256_GCM_SHA384` first, so two mast-proxies settled
/// on it: 14 AES rounds per block instead of 10 on every record, and a SHA-384 key schedule
/// (SHA-512 blocks) on every handshake. Envoy's BoringSSL prefers AES-128-GCM, and so does
/// this order now; the set of suites is ring's default, unchanged.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        let mut p = rustls::crypto::ring::default_provider();
        prefer_aes128(&mut p.cipher_suites);
        Arc::new(p)
    }))
}

/// Move each AES-128-GCM suite ahead of the AES-256-GCM suite just before it (same TLS
/// version and key exchange), keeping every other position.
fn prefer_aes128(suites: &mut [rustls::SupportedCipherSuite]) {
    use rustls::CipherSuite as C;
    let pair = |a: C, b: C| {
        matches!(
            (a, b),
            (C::TLS13_AES_256_GCM_SHA384, C::TLS13_AES_128_GCM_SHA256)
                | (
                    C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                )
                | (
                    C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                    C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                )
        )
    };
    for i in 1..suites.len() {
        if pair(suites[i - 1].suite(), suites[i].suite()) {
            suites.swap(i - 1, i);
        }
    }
}

/// The workload's certificate, key and trust bundle at one point in time.
pub struct WorkloadCert {
    /// The SPIFFE ID in the leaf.
    pub spiffe: String,
    pub certified: Arc<CertifiedKey>,
    pub roots: Vec<CertificateDer<'static>>,
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// PEM forms, for SDS (Envoy wants the same material) and the admin config dump.
    pub chain_pem: String,
    pub key_pem: String,
    pub roots_pem: String,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("spiffe", &self.spiffe)
            .field("not_after", &self.not_after)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Build from a CA response: `chain` is the PEM list Istio's CA returns (leaf first);
    /// every self-signed certificate in it is a trust anchor, the others are intermediates.
    /// `extra_roots_pem` (the mounted root certificate) is trusted as well.
    pub fn from_pem(
        chain: &[String],
        key_pem: &str,
        extra_roots_pem: &str,
    ) -> Result<Self, TlsError> {
        let mut certs = Vec::new();
        for pem in chain {
            certs.extend(parse_certs(pem)?);
        }
        let leaf = certs.first().cloned().ok_or(TlsError::EmptyChain)?;
        let mut presented = vec![leaf.clone()];
        let mut roots = Vec::new();
        for c in certs.into_iter().skip(1) {
            if is_self_signed(&c)? {
                roots.push(c);
            } else {
                presented.push(c);
            }
        }
        for c in parse_certs(extra_roots_pem)? {
            if !roots.contains(&c) {
                roots.push(c);
            }
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let (spiffe, not_before, not_after) = {
            let (_, x) = x509_parser::parse_x509_certificate(&leaf)
                .map_err(|e| TlsError::Certificate(e.to_string()))?;
            let spiffe = spiffe_of(&x).ok_or(TlsError::NoSpiffeId)?;
            let nb = x.validity().not_before.timestamp();
            let na = x.validity().not_after.timestamp();
            (spiffe, unix(nb), unix(na))
        };
        let anchors = roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| TlsError::Certificate(format!("trust anchor: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            spiffe,
            certified: Arc::new(CertifiedKey::new(presented.clone(), signing)),
            anchors,
            not_before,
            not_after,
            chain_pem: to_pem(&presented),
            key_pem: key_pem.to_string(),
            roots_pem: to_pem(&roots),
            roots,
        })
    }

    /// Time left before the certificate expires (zero when it has).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

fn unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))
}

fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn is_self_signed(c: &CertificateDer<'_>) -> Result<bool, TlsError> {
    let (_, x) =
        x509_parser::parse_x509_certificate(c).map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(x.subject() == x.issuer())
}

fn spiffe_of(x: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let san = x.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some((*u).to_string())
        }
        _ => None,
    })
}

/// The SPIFFE ID in a DER certificate. Read with webpki, the parser that verified the
/// chain: a shallow walk to the SAN extension, where x509-parser decodes every field.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    spiffe_in(&ee).map(str::to_string)
}

/// The first `spiffe://` URI SAN of a certificate webpki has parsed.
fn spiffe_in<'a>(ee: &webpki::EndEntityCert<'a>) -> Option<&'a str> {
    ee.valid_uri_names().find(|u| u.starts_with("spiffe://"))
}

/// The current workload certificate, swapped on rotation.
#[derive(Debug)]
pub struct SecretStore {
    cert: ArcSwapOption<WorkloadCert>,
    version: watch::Sender<u64>,
}

impl Default for SecretStore {
    fn default() -> Self {
        Self {
            cert: ArcSwapOption::empty(),
            version: watch::channel(0).0,
        }
    }
}

impl SecretStore {
    pub fn current(&self) -> Option<Arc<WorkloadCert>> {
        self.cert.load_full()
    }

    pub fn publish(&self, cert: WorkloadCert) {
        self.cert.store(Some(Arc::new(cert)));
        self.version.send_modify(|v| *v += 1);
    }

    /// Changes when a new certificate is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// How a peer's SPIFFE ID must look (Envoy's `match_subject_alt_names`). Empty: any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

impl SanMatch {
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Self::Exact(s) => id == s,
            Self::Prefix(s) => id.starts_with(s.as_str()),
            Self::Suffix(s) => id.ends_with(s.as_str()),
            Self::Contains(s) => id.contains(s.as_str()),
        }
    }
}

/// Presents the current workload certificate, client and server side.
#[derive(Debug)]
struct StoreResolver(Arc<SecretStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| Arc::clone(&c.certified))
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| Arc::clone(&c.certified))
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}

/// Verifies a peer's chain against the current trust bundle and its SPIFFE ID against `sans`.
#[derive(Debug)]
struct SpiffeVerifier {
    store: Arc<SecretStore>,
    sans: Vec<SanMatch>,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl SpiffeVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let current = self.store.current().ok_or_else(|| {
            rustls::Error::General("no workload certificate (trust bundle) yet".into())
        })?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &current.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        // The URI SAN of the certificate just verified, not a second parse of it.
        let id = spiffe_in(&ee).ok_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(TlsError::NoSpiffeId),
            )))
        })?;
        if !self.sans.is_empty() && !self.sans.iter().any(|m| m.matches(id)) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(())
    }
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    crate::tls::provider_signature_checks!(provider);
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    crate::tls::provider_signature_checks!(provider);
}

/// A client config for mTLS to sidecars: presents the workload certificate, accepts servers
/// whose SPIFFE ID matches `sans`, offers `alpn`.
pub fn client_config(
    store: &Arc<SecretStore>,
    sans: &[SanMatch],
    alpn: &[String],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = SpiffeVerifier {
        store: Arc::clone(store),
        sans: sans.to_vec(),
        provider: Arc::clone(&provider),
        mandatory: true,
    };
    let resolver = Arc::new(StoreResolver(Arc::clone(store)));
    finish_client_config(provider, Arc::new(verifier), Some(resolver), alpn)
}

/// Every client config of the proxy (mesh mTLS, TLS origination): a verifier, a client
/// certificate when there is one, ALPN, and session resumption.
fn finish_client_config(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    resolver: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[String],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match resolver {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg.resumption = rustls::client::Resumption::store(Arc::new(tickets::TicketBank::new()));
    Ok(Arc::new(cfg))
}

/// A server config for inbound mTLS: presents the workload certificate and verifies client
/// certificates (required unless `require_client_cert` is false) against the trust bundle.
///
/// No ALPN is configured on purpose: Istio clients offer `istio-peer-exchange`/`istio`,
/// which Envoy's server ignores when nothing overlaps, where rustls would fail the
/// handshake. The HTTP codec is detected from the first decrypted bytes instead.
pub fn server_config(
    store: &Arc<SecretStore>,
    sans: &[SanMatch],
    require_client_cert: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier = SpiffeVerifier {
        store: Arc::clone(store),
        sans: sans.to_vec(),
        provider: Arc::clone(&provider),
        mandatory: require_client_cert,
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(StoreResolver(Arc::clone(store))));
    // Stateless resumption, as Envoy's server does by default: a sidecar that reconnects
    // (pool churn, maxRequestsPerConnection) skips the certificate exchange. A resumed
    // session keeps the identity verified by its full handshake.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

/// The SPIFFE ID a peer presented on a finished handshake.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<String> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(spiffe_id)
}

/// What a TLS ClientHello says, read without consuming it (Envoy's `tls_inspector`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

/// Parse the SNI and ALPN of a ClientHello from the first bytes of a connection. `None`
/// when the bytes do not hold a complete ClientHello (yet).
pub fn parse_client_hello(bytes: &[u8]) -> Option<HelloInfo> {
    let (_, record) = tls_parser::parse_tls_plaintext(bytes).ok()?;
    client_hello_info(record.msg.iter())
}

/// SNI and ALPN of a ClientHello handshake message (its 4-byte header included) put
/// together from several records; unlike one record, it may be longer than 16 KiB.
pub fn parse_client_hello_message(message: &[u8]) -> Option<HelloInfo> {
    let (_, msg) = tls_parser::parse_tls_message_handshake(message).ok()?;
    client_hello_info(std::iter::once(&msg))
}

fn client_hello_info<'a>(
    mut msgs: impl Iterator<Item = &'a tls_parser::TlsMessage<'a>>,
) -> Option<HelloInfo> {
    use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_extensions};
    let hello = msgs.find_map(|m| match m {
        TlsMessage::Handshake(TlsMessageHandshake::ClientHello(h)) => Some(h),
        _ => None,
    })?;
    let mut info = HelloInfo::default();
    let (_, exts) = parse_tls_extensions(hello.ext.unwrap_or_default()).ok()?;
    for e in exts {
        match e {
            TlsExtension::SNI(names) => {
                info.sni = names
                    .first()
                    .and_then(|(_, n)| std::str::from_utf8(n).ok())
                    .map(str::to_string);
            }
            TlsExtension::ALPN(protos) => {
                info.alpn = protos
                    .iter()
                    .filter_map(|p| std::str::from_utf8(p).ok())
                    .map(str::to_string)
                    .collect();
            }
            _ => {}
        }
    }
    Some(info)
}

#[cfg(test)]
mod tests;
