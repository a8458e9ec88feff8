//! The TLS credentials a gateway terminates with: server certificates and client CAs named by
//! SDS over the ADS stream (`kubernetes://<credentialName>`, which pilot reads from
//! Kubernetes Secrets), or written into the listener itself (inline bytes, Istio's file
//! mounts). The same credentials serve TLS origination toward servers outside the mesh (a
//! DestinationRule's SIMPLE/MUTUAL): a client certificate, and the CAs and SANs the server is
//! checked against ([`client_config`]).
//!
//! A sidecar's TLS is the mesh's own: the workload certificate and trust bundle of
//! [`SecretStore`]. A gateway serves clients outside the mesh with certificates the user owns,
//! and those rotate on their own schedule: a new Secret version reaches the gateway over ADS
//! without any listener change. So, as with the workload certificate, nothing is captured when
//! a `ServerConfig` is built — the resolver and the client verifier look the *current* secret
//! up by name in [`SdsSecrets`] at every handshake. A rotation reaches the next connection,
//! established connections keep what they negotiated, and no socket is rebound. A secret that
//! has not arrived resolves to nothing, so the handshake fails instead of presenting a wrong
//! certificate (Envoy keeps such a listener warming).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DistinguishedName, SignatureScheme};

use super::{SanMatch, SecretStore, SpiffeVerifier, TlsError, pki_error, provider};

/// A server certificate chain with its key, ready to present.
pub type ServerCert = Arc<CertifiedKey>;

/// CA certificates a client's certificate must chain to (a validation context's
/// `trusted_ca`).
pub struct TrustBundle {
    anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

/// One SDS secret, compiled from its `Secret` resource.
#[derive(Debug, Clone)]
pub enum Credential {
    /// `tls_certificate`: what a server presents.
    Certificate(ServerCert),
    /// `validation_context`: the CAs client certificates are checked against.
    Trust(Arc<TrustBundle>),
}

/// The SDS secrets received over ADS, by name; swapped whole when a response is applied.
pub struct SdsSecrets {
    current: ArcSwap<HashMap<String, Credential>>,
}

impl Default for SdsSecrets {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

impl fmt::Debug for SdsSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.current.load().keys().cloned().collect();
        f.debug_struct("SdsSecrets").field("names", &names).finish()
    }
}

/// Where a server's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// The workload certificate (Istio's SDS name `default`).
    Workload,
    /// A named SDS secret over ADS.
    Sds(String),
    /// Written into the listener (inline, or a file read when the listener arrived).
    Static(ServerCert),
}

/// What client certificates are checked against.
#[derive(Debug, Clone)]
pub enum TrustSource {
    /// The mesh trust bundle (`ROOTCA`); the client must carry a SPIFFE ID.
    Mesh,
    /// A named SDS validation context over ADS.
    Sds(String),
    /// Written into the listener.
    Static(Arc<TrustBundle>),
}

// === impl SdsSecrets ===

impl SdsSecrets {
    pub fn get(&self, name: &str) -> Option<Credential> {
        self.current.load().get(name).cloned()
    }

    /// The certificate named `name`, if it has arrived and is one.
    pub fn certificate(&self, name: &str) -> Option<ServerCert> {
        match self.current.load().get(name)? {
            Credential::Certificate(c) => Some(Arc::clone(c)),
            Credential::Trust(_) => None,
        }
    }

    /// The validation context named `name`, if it has arrived and is one.
    pub fn trust(&self, name: &str) -> Option<Arc<TrustBundle>> {
        match self.current.load().get(name)? {
            Credential::Trust(t) => Some(Arc::clone(t)),
            Credential::Certificate(_) => None,
        }
    }

    /// Replace the whole set (after an SDS response was applied).
    pub fn replace(&self, secrets: HashMap<String, Credential>) {
        self.current.store(Arc::new(secrets));
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.current.load().keys().cloned().collect();
        v.sort();
        v
    }
}

// === impl CertSource ===

impl CertSource {
    /// The SDS name it waits for, if any.
    pub fn sds_name(&self) -> Option<&str> {
        match self {
            Self::Sds(n) => Some(n),
            Self::Workload | Self::Static(_) => None,
        }
    }

    /// Whether the certificate can be presented now.
    pub fn available(&self, workload: &SecretStore, sds: &SdsSecrets) -> bool {
        match self {
            Self::Workload => workload.current().is_some(),
            Self::Sds(n) => sds.certificate(n).is_some(),
            Self::Static(_) => true,
        }
    }
}

impl PartialEq for CertSource {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Self::Workload, Self::Workload) => true,
            (Self::Sds(a), Self::Sds(b)) => a == b,
            (Self::Static(a), Self::Static(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

// === impl TrustSource ===

impl TrustSource {
    pub fn sds_name(&self) -> Option<&str> {
        match self {
            Self::Sds(n) => Some(n),
            Self::Mesh | Self::Static(_) => None,
        }
    }

    /// Whether client certificates can be checked now.
    pub fn available(&self, sds: &SdsSecrets) -> bool {
        match self {
            Self::Sds(n) => sds.trust(n).is_some(),
            Self::Mesh | Self::Static(_) => true,
        }
    }
}

impl PartialEq for TrustSource {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Self::Mesh, Self::Mesh) => true,
            (Self::Sds(a), Self::Sds(b)) => a == b,
            (Self::Static(a), Self::Static(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A certificate chain (leaf first) and its private key, both PEM.
pub fn server_cert(chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerCert, TlsError> {
    let chain = certs(chain_pem)?;
    if chain.is_empty() {
        return Err(TlsError::EmptyChain);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Key(format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// CA certificates (PEM) as trust anchors. A bundle (the system's, say) may hold a
/// certificate webpki cannot use as an anchor: it is skipped as long as one is usable.
pub fn trust_bundle(pem: &[u8]) -> Result<TrustBundle, TlsError> {
    let cas = certs(pem)?;
    if cas.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block".into()));
    }
    let mut anchors = Vec::new();
    let mut last_error = None;
    for c in &cas {
        match webpki::anchor_from_trusted_cert(c) {
            Ok(a) => anchors.push(a.to_owned()),
            Err(e) => last_error = Some(e),
        }
    }
    match (anchors.is_empty(), last_error) {
        (true, Some(e)) => Err(TlsError::Certificate(format!("trust anchor: {e}"))),
        _ => Ok(TrustBundle { anchors }),
    }
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))
}

/// Presents the certificate of a [`CertSource`] as it is at the handshake.
#[derive(Debug)]
struct CurrentCert {
    source: CertSource,
    workload: Arc<SecretStore>,
    sds: Arc<SdsSecrets>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match &self.source {
            CertSource::Workload => self.workload.current().map(|c| Arc::clone(&c.certified)),
            CertSource::Sds(name) => self.sds.certificate(name),
            CertSource::Static(c) => Some(Arc::clone(c)),
        }
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        match &self.source {
            CertSource::Workload => self.workload.current().map(|c| Arc::clone(&c.certified)),
            CertSource::Sds(name) => self.sds.certificate(name),
            CertSource::Static(c) => Some(Arc::clone(c)),
        }
    }

    fn has_certs(&self) -> bool {
        self.source.available(&self.workload, &self.sds)
    }
}

/// What the server of an originated TLS connection is checked against (a cluster's
/// validation context).
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// No validation context, or one without CAs (`insecureSkipVerify`): any certificate.
    Insecure,
    /// CAs from the config or from files (`caCertificates`, the system bundle).
    Static(Arc<TrustBundle>),
    /// A named SDS validation context over ADS (`kubernetes://<credentialName>-cacert`).
    Sds(String),
}

impl PartialEq for ServerTrust {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (Self::Insecure, Self::Insecure) => true,
            (Self::Sds(a), Self::Sds(b)) => a == b,
            (Self::Static(a), Self::Static(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl ServerTrust {
    pub fn sds_name(&self) -> Option<&str> {
        match self {
            Self::Sds(n) => Some(n),
            Self::Insecure | Self::Static(_) => None,
        }
    }
}

/// The CAs a [`CaVerifier`] checks against.
#[derive(Debug)]
enum Anchors {
    Sds(String),
    Static(Arc<TrustBundle>),
    /// Nothing is checked (a client's `insecureSkipVerify`).
    None,
}

/// Verifies a peer's chain against the current CAs of a validation context and, when
/// `sans` are set, one of its DNS, URI or email SANs against them: a gateway's client
/// certificates, and the servers a cluster originates TLS to, where `server_name` also asks
/// for the name the client connected with (`auto_san_validation`).
#[derive(Debug)]
struct CaVerifier {
    anchors: Anchors,
    sds: Arc<SdsSecrets>,
    sans: Vec<SanMatch>,
    mandatory: bool,
    server_name: bool,
    provider: Arc<CryptoProvider>,
}

impl CaVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let bundle = match &self.anchors {
            Anchors::None => return Ok(()),
            Anchors::Static(b) => Arc::clone(b),
            Anchors::Sds(name) => self.sds.trust(name).ok_or_else(|| {
                rustls::Error::General(format!("CA secret {name:?} not received yet"))
            })?,
        };
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &bundle.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        if !self.sans.is_empty() {
            let names = subject_alt_names(end_entity);
            if !names.iter().any(|n| self.sans.iter().any(|m| m.matches(n))) {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(())
    }
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if self.server_name && !matches!(self.anchors, Anchors::None) {
            webpki::EndEntityCert::try_from(end_entity)
                .map_err(pki_error)?
                .verify_is_valid_for_subject_name(server_name)
                .map_err(pki_error)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::tls::provider_signature_checks!(provider);
}

impl ClientCertVerifier for CaVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CAs change under the config; clients send their certificate without hints.
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

/// The DNS, URI and email SANs of a certificate.
fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, x)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                Some((*s).to_string())
            }
            _ => None,
        })
        .collect()
}

/// What a TLS server chain is made of, as a transport socket describes it.
#[derive(Debug, Clone, Copy)]
pub struct ServerSpec<'a> {
    pub cert: &'a CertSource,
    /// `None`: client certificates are not asked for.
    pub trust: Option<&'a TrustSource>,
    pub sans: &'a [SanMatch],
    pub require_client_cert: bool,
    pub alpn: &'a [String],
}

/// A server config whose certificate and client CAs are read at each handshake.
pub fn server_config(
    spec: ServerSpec<'_>,
    workload: &Arc<SecretStore>,
    sds: &Arc<SdsSecrets>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let resolver = Arc::new(CurrentCert {
        source: spec.cert.clone(),
        workload: Arc::clone(workload),
        sds: Arc::clone(sds),
    });
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match spec.trust {
        None => None,
        Some(TrustSource::Mesh) => Some(Arc::new(SpiffeVerifier {
            store: Arc::clone(workload),
            sans: spec.sans.to_vec(),
            provider: Arc::clone(&provider),
            mandatory: spec.require_client_cert,
        })),
        Some(TrustSource::Sds(name)) => Some(Arc::new(CaVerifier {
            anchors: Anchors::Sds(name.clone()),
            sds: Arc::clone(sds),
            sans: spec.sans.to_vec(),
            mandatory: spec.require_client_cert,
            server_name: false,
            provider: Arc::clone(&provider),
        })),
        Some(TrustSource::Static(bundle)) => Some(Arc::new(CaVerifier {
            anchors: Anchors::Static(Arc::clone(bundle)),
            sds: Arc::clone(sds),
            sans: spec.sans.to_vec(),
            mandatory: spec.require_client_cert,
            server_name: false,
            provider: Arc::clone(&provider),
        })),
    };
    let mut cfg = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = spec.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

/// What the client side of an originated TLS connection is made of, as a cluster's transport
/// socket describes it.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpec<'a> {
    /// `None`: no client certificate (SIMPLE).
    pub cert: Option<&'a CertSource>,
    pub trust: &'a ServerTrust,
    pub sans: &'a [SanMatch],
    /// Check the server's certificate against the name connected to (`auto_san_validation`).
    pub check_server_name: bool,
    pub alpn: &'a [String],
}

/// A client config for TLS origination; the client certificate and the CAs of SDS secrets
/// are read at each handshake, as on the server side.
pub fn client_config(
    spec: ClientSpec<'_>,
    workload: &Arc<SecretStore>,
    sds: &Arc<SdsSecrets>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = provider();
    let anchors = match spec.trust {
        ServerTrust::Insecure => Anchors::None,
        ServerTrust::Static(b) => Anchors::Static(Arc::clone(b)),
        ServerTrust::Sds(n) => Anchors::Sds(n.clone()),
    };
    let verifier = Arc::new(CaVerifier {
        anchors,
        sds: Arc::clone(sds),
        sans: spec.sans.to_vec(),
        mandatory: true,
        server_name: spec.check_server_name,
        provider: Arc::clone(&provider),
    });
    let resolver = spec.cert.map(|c| {
        Arc::new(CurrentCert {
            source: c.clone(),
            workload: Arc::clone(workload),
            sds: Arc::clone(sds),
        }) as Arc<dyn ResolvesClientCert>
    });
    super::finish_client_config(provider, verifier, resolver, spec.alpn)
}

/// Where Debian, Fedora/RHEL, openSUSE and Alpine keep the system's CA bundle (where
/// istio-agent looks for it for `file-root:system`).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The first system CA bundle file present on this host.
pub fn system_bundle_path() -> Option<&'static str> {
    SYSTEM_BUNDLES
        .iter()
        .copied()
        .find(|p| std::path::Path::new(p).is_file())
}

/// The system's CA bundle.
pub fn system_roots() -> Result<TrustBundle, TlsError> {
    let path = system_bundle_path().ok_or_else(|| {
        TlsError::Pem(format!(
            "no system CA bundle (looked in {})",
            SYSTEM_BUNDLES.join(", ")
        ))
    })?;
    let pem = std::fs::read(path).map_err(|e| TlsError::Pem(format!("{path}: {e}")))?;
    trust_bundle(&pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// (cert PEM, key PEM) for `name`.
    fn issue(ca: &Ca, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn cert_secret(ca: &Ca, name: &str) -> Credential {
        let (c, k) = issue(ca, name);
        Credential::Certificate(server_cert(c.as_bytes(), k.as_bytes()).unwrap())
    }

    fn client(ca_pem: &str, cert: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca_pem.as_bytes()).unwrap() {
            roots.add(c).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let cfg = match cert {
            Some((c, k)) => b
                .with_client_auth_cert(
                    certs(c.as_bytes()).unwrap(),
                    PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        Arc::new(cfg)
    }

    /// One handshake and a ping over a pipe: `Ok` when both sides agree.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<(), String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut s = tokio_rustls::TlsAcceptor::from(server)
                .accept(b)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            s.write_all(b"pong").await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())
        });
        let name = rustls::pki_types::ServerName::try_from("bookinfo.example.com").unwrap();
        let result = async {
            let mut c = tokio_rustls::TlsConnector::from(client)
                .connect(name, a)
                .await
                .map_err(|e| e.to_string())?;
            c.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
        .await;
        let served = srv.await.unwrap();
        result.and(served)
    }

    #[tokio::test]
    async fn an_sds_certificate_is_read_at_each_handshake() {
        let sds = Arc::new(SdsSecrets::default());
        let workload = Arc::new(SecretStore::default());
        let cert = CertSource::Sds("kubernetes://cred".into());
        let spec = ServerSpec {
            cert: &cert,
            trust: None,
            sans: &[],
            require_client_cert: false,
            alpn: &[],
        };
        let server = server_config(spec, &workload, &sds).unwrap();
        let (ca1, ca2) = (ca("one"), ca("two"));
        // Not arrived yet: no certificate at all, rather than a wrong one.
        assert!(!cert.available(&workload, &sds));
        assert!(
            handshake(Arc::clone(&server), client(&ca1.pem, None))
                .await
                .is_err()
        );
        sds.replace(HashMap::from([(
            "kubernetes://cred".to_string(),
            cert_secret(&ca1, "bookinfo.example.com"),
        )]));
        assert!(cert.available(&workload, &sds));
        handshake(Arc::clone(&server), client(&ca1.pem, None))
            .await
            .unwrap();
        // Rotated under the same server config: the next handshake presents the new one.
        sds.replace(HashMap::from([(
            "kubernetes://cred".to_string(),
            cert_secret(&ca2, "bookinfo.example.com"),
        )]));
        handshake(Arc::clone(&server), client(&ca2.pem, None))
            .await
            .unwrap();
        assert!(
            handshake(server, client(&ca1.pem, None)).await.is_err(),
            "the old certificate is gone"
        );
    }

    #[tokio::test]
    async fn mutual_needs_a_client_certificate_from_the_current_ca() {
        let sds = Arc::new(SdsSecrets::default());
        let workload = Arc::new(SecretStore::default());
        let (server_ca, client_ca, other_ca) = (ca("server"), ca("clients"), ca("other"));
        let cert = CertSource::Sds("kubernetes://m".into());
        let trust = TrustSource::Sds("kubernetes://m-cacert".into());
        let spec = ServerSpec {
            cert: &cert,
            trust: Some(&trust),
            sans: &[],
            require_client_cert: true,
            alpn: &["h2".to_string(), "http/1.1".to_string()],
        };
        let server = server_config(spec, &workload, &sds).unwrap();
        let trusted =
            |ca: &Ca| Credential::Trust(Arc::new(trust_bundle(ca.pem.as_bytes()).unwrap()));
        sds.replace(HashMap::from([
            (
                "kubernetes://m".to_string(),
                cert_secret(&server_ca, "bookinfo.example.com"),
            ),
            ("kubernetes://m-cacert".to_string(), trusted(&client_ca)),
        ]));
        assert!(trust.available(&sds));
        let with = || {
            client(
                &server_ca.pem,
                Some(issue(&client_ca, "client.example.com")),
            )
        };
        handshake(Arc::clone(&server), with()).await.unwrap();
        assert!(
            handshake(Arc::clone(&server), client(&server_ca.pem, None))
                .await
                .is_err(),
            "no client certificate"
        );
        let stranger = client(&server_ca.pem, Some(issue(&other_ca, "x.example.com")));
        assert!(handshake(Arc::clone(&server), stranger).await.is_err());
        // A new client CA applies to the next handshake.
        sds.replace(HashMap::from([
            (
                "kubernetes://m".to_string(),
                cert_secret(&server_ca, "bookinfo.example.com"),
            ),
            ("kubernetes://m-cacert".to_string(), trusted(&other_ca)),
        ]));
        assert!(handshake(Arc::clone(&server), with()).await.is_err());
        let now_trusted = client(&server_ca.pem, Some(issue(&other_ca, "x.example.com")));
        handshake(server, now_trusted).await.unwrap();
    }

    /// A gateway-style server presenting `name` from `ca`, asking for client certificates
    /// from `client_ca` when given.
    fn origin_server(ca: &Ca, name: &str, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
        let (c, k) = issue(ca, name);
        let cert = CertSource::Static(server_cert(c.as_bytes(), k.as_bytes()).unwrap());
        let trust = client_ca
            .map(|ca| TrustSource::Static(Arc::new(trust_bundle(ca.pem.as_bytes()).unwrap())));
        let spec = ServerSpec {
            cert: &cert,
            trust: trust.as_ref(),
            sans: &[],
            require_client_cert: trust.is_some(),
            alpn: &[],
        };
        let none = Arc::new(SdsSecrets::default());
        server_config(spec, &Arc::new(SecretStore::default()), &none).unwrap()
    }

    fn originating(
        trust: ServerTrust,
        cert: Option<CertSource>,
        sans: &[SanMatch],
        check_server_name: bool,
    ) -> Arc<rustls::ClientConfig> {
        let spec = ClientSpec {
            cert: cert.as_ref(),
            trust: &trust,
            sans,
            check_server_name,
            alpn: &[],
        };
        let sds = Arc::new(SdsSecrets::default());
        client_config(spec, &Arc::new(SecretStore::default()), &sds).unwrap()
    }

    #[tokio::test]
    async fn origination_checks_ca_name_and_sans_unless_told_not_to() {
        let (ca1, ca2) = (ca("external"), ca("other"));
        let roots =
            |ca: &Ca| ServerTrust::Static(Arc::new(trust_bundle(ca.pem.as_bytes()).unwrap()));
        let good = origin_server(&ca1, "bookinfo.example.com", None);
        let wrong_name = origin_server(&ca1, "elsewhere.example.com", None);
        handshake(Arc::clone(&good), originating(roots(&ca1), None, &[], true))
            .await
            .unwrap();
        assert!(
            handshake(Arc::clone(&good), originating(roots(&ca2), None, &[], true))
                .await
                .is_err(),
            "a server from another CA"
        );
        assert!(
            handshake(
                Arc::clone(&wrong_name),
                originating(roots(&ca1), None, &[], true)
            )
            .await
            .is_err(),
            "auto_san_validation: the name connected to"
        );
        // Without auto_san_validation and SANs only the chain is checked, as Envoy does.
        handshake(
            Arc::clone(&wrong_name),
            originating(roots(&ca1), None, &[], false),
        )
        .await
        .unwrap();
        let sans = [SanMatch::Exact("bookinfo.example.com".into())];
        handshake(
            Arc::clone(&good),
            originating(roots(&ca1), None, &sans, false),
        )
        .await
        .unwrap();
        assert!(
            handshake(wrong_name, originating(roots(&ca1), None, &sans, false))
                .await
                .is_err()
        );
        handshake(good, originating(ServerTrust::Insecure, None, &[], true))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn mutual_origination_presents_the_client_certificate() {
        let (server_ca, client_ca) = (ca("external"), ca("clients"));
        let roots = ServerTrust::Static(Arc::new(trust_bundle(server_ca.pem.as_bytes()).unwrap()));
        let server = origin_server(&server_ca, "bookinfo.example.com", Some(&client_ca));
        assert!(
            handshake(
                Arc::clone(&server),
                originating(roots.clone(), None, &[], true)
            )
            .await
            .is_err(),
            "no client certificate"
        );
        let (c, k) = issue(&client_ca, "client.example.com");
        let cert = CertSource::Static(server_cert(c.as_bytes(), k.as_bytes()).unwrap());
        handshake(server, originating(roots, Some(cert), &[], true))
            .await
            .unwrap();
    }

    #[test]
    fn bad_material_is_an_error_not_a_panic() {
        let a = ca("a");
        let (c, _) = issue(&a, "h");
        let (_, other_key) = issue(&a, "h");
        assert!(matches!(server_cert(b"", b""), Err(TlsError::EmptyChain)));
        assert!(matches!(
            server_cert(c.as_bytes(), b"not a key"),
            Err(TlsError::Key(_))
        ));
        assert!(matches!(
            server_cert(c.as_bytes(), other_key.as_bytes()),
            Err(TlsError::Key(_))
        ));
        assert!(trust_bundle(b"nothing").is_err());
        assert!(trust_bundle(a.pem.as_bytes()).is_ok());
    }
}
