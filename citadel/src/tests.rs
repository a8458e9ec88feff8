use std::sync::Arc;
use std::time::Duration;

use mast_proto::istio::ca::IstioCertificateRequest;
use mast_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use super::*;

fn csr(id: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn user() -> SpiffeId {
    SpiffeId::new("cluster.local", "default", "user")
}

#[test]
fn spiffe_ids_parse_strictly() {
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/user".parse().unwrap();
    assert_eq!(id, user());
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/user");
    for bad in [
        "spiffe://cluster.local/ns/default",
        "http://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe://cluster.local/ns/a/sa/b/extra",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
    }
}

#[test]
fn root_persists_with_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap();
    let root = std::fs::read(dir.path().join("root-cert.pem")).unwrap();
    let b = CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap();
    assert_eq!(a.trust_bundle_pem(), b.trust_bundle_pem());
    assert_eq!(
        root,
        std::fs::read(dir.path().join("root-cert.pem")).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A certificate issued before the reload chains to the root after it.
    let chain = a
        .sign_csr(&csr(&user().to_string()), &user(), None)
        .unwrap();
    let root_der = der(&b.trust_bundle_pem());
    let (_, root_x) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    let leaf = der(&chain[0]);
    let (_, leaf_x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert!(leaf_x.verify_signature(Some(root_x.public_key())).is_ok());
}

#[test]
fn leaf_has_the_identity_validity_and_usages() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap();
    let chain = ca
        .sign_csr(
            &csr(&user().to_string()),
            &user(),
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    let leaf = der(&chain[0]);
    let (_, x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = x.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[URI(\"spiffe://cluster.local/ns/default/sa/user\")]"
    );
    let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
    assert!((3600..=3660).contains(&life), "{life}");
    assert!(!x.is_ca());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    // Over the maximum: refused, as Istio's CA does (TTL_ERROR, InvalidArgument).
    let err = ca
        .sign_csr(
            &csr(&user().to_string()),
            &user(),
            Some(Duration::from_secs(400 * 86400)),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("requested TTL 34560000s is greater than the max allowed TTL 7776000s"),
        "{err}"
    );
    // Exactly the maximum is granted.
    assert!(
        ca.sign_csr(
            &csr(&user().to_string()),
            &user(),
            Some(Duration::from_secs(90 * 86400)),
        )
        .is_ok()
    );
}

fn csr_with(sans: Vec<rcgen::SanType>) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = sans;
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn abusive_csrs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap();
    let me = || rcgen::SanType::URI(user().to_string().try_into().unwrap());
    // Two SANs: the caller's and someone else's.
    let two = csr_with(vec![
        me(),
        rcgen::SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
    ]);
    let err = ca.sign_csr(&two, &user(), None).unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
    // The caller's ID plus a DNS name (a serving certificate for someone's host name).
    let dns = csr_with(vec![
        me(),
        rcgen::SanType::DnsName("kubernetes.default.svc".try_into().unwrap()),
    ]);
    let err = ca.sign_csr(&dns, &user(), None).unwrap_err();
    assert!(
        err.to_string().contains("DNS:kubernetes.default.svc"),
        "{err}"
    );
    // A DNS name only, and no SAN at all.
    for sans in [
        vec![rcgen::SanType::DnsName(
            "user.default.svc".try_into().unwrap(),
        )],
        vec![],
    ] {
        let err = ca.sign_csr(&csr_with(sans), &user(), None).unwrap_err();
        assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
    }
    // Oversized: refused before it is parsed.
    let mut big = csr(&user().to_string());
    big.push_str(&"A".repeat(MAX_CSR_BYTES));
    let err = ca.sign_csr(&big, &user(), None).unwrap_err();
    assert!(err.to_string().contains("byte limit"), "{err}");
    // A CSR whose signature does not verify (one byte of the signature flipped).
    let good = csr(&user().to_string());
    let mut der_bytes =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
    let last = der_bytes.len() - 1;
    der_bytes[last] ^= 0x01;
    let tampered = pem_csr(&der_bytes);
    let err = ca.sign_csr(&tampered, &user(), None).unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err}");
}

fn pem_csr(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

#[test]
fn csr_for_someone_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap();
    let err = ca
        .sign_csr(
            &csr("spiffe://cluster.local/ns/default/sa/admin"),
            &user(),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
    assert!(matches!(
        ca.sign_csr("not a csr", &user(), None),
        Err(CaError::BadCsr(_))
    ));
}

#[test]
fn plugin_ca_serves_its_intermediate_chain() {
    // An organisation root and an intermediate under it, as Istio's cacerts.
    let dir = tempfile::tempdir().unwrap();
    let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut rp = rcgen::CertificateParams::default();
    rp.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Org Root");
    rp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rp.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root = rp.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(rp, root_key);
    let int_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ip = rcgen::CertificateParams::default();
    ip.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Mesh Intermediate");
    ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ip.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let int = ip.signed_by(&int_key, &root_issuer).unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), int.pem()).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), int_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(
        dir.path().join("cert-chain.pem"),
        format!("{}{}", int.pem(), root.pem()),
    )
    .unwrap();
    let ca = CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap();
    assert!(ca.plugged_in);
    let chain = ca
        .sign_csr(&csr(&user().to_string()), &user(), None)
        .unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[1].trim(), int.pem().trim());
    assert_eq!(chain[2].trim(), root.pem().trim());
    assert!(
        !dir.path().join("root-key.pem").exists(),
        "no self-signed root made"
    );
}

#[test]
fn incomplete_plugin_files_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), "x").unwrap();
    let err = CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap_err();
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
}

#[test]
fn rotation_stages_then_promotes_with_both_roots_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = CaOptions::default();
    let old = CertificateAuthority::load_or_create(dir.path(), opts.clone()).unwrap();
    let old_root = old.trust_bundle_pem();
    // Stage: the new root is trusted, the old one still signs.
    assert_eq!(
        rotate_root(dir.path(), &opts).unwrap(),
        RotationStep::Staged
    );
    let staged = CertificateAuthority::load_or_create(dir.path(), opts.clone()).unwrap();
    let bundle = staged.trust_bundle_pem();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(bundle.starts_with(old_root.trim_end()));
    let chain = staged
        .sign_csr(&csr(&user().to_string()), &user(), None)
        .unwrap();
    assert_eq!(chain.len(), 3, "leaf, current root, staged root");
    let leaf = der(&chain[0]);
    let (_, leaf_x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let old_der = der(&old_root);
    let (_, old_x) = x509_parser::parse_x509_certificate(&old_der).unwrap();
    assert!(leaf_x.verify_signature(Some(old_x.public_key())).is_ok());
    // Promote: the new root signs, the old one is still trusted.
    assert_eq!(
        rotate_root(dir.path(), &opts).unwrap(),
        RotationStep::Promoted
    );
    let new = CertificateAuthority::load_or_create(dir.path(), opts).unwrap();
    let bundle = new.trust_bundle_pem();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(bundle.contains(old_root.trim()));
    assert!(
        !bundle.starts_with(old_root.trim_end()),
        "the new root comes first"
    );
    let chain = new
        .sign_csr(&csr(&user().to_string()), &user(), None)
        .unwrap();
    let leaf = der(&chain[0]);
    let (_, leaf_x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert!(leaf_x.verify_signature(Some(old_x.public_key())).is_err());
}

async fn serve_test_ca() -> (std::net::SocketAddr, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        Arc::new(CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTls::from_ca(&ca, addr).unwrap();
    let root = ca.trust_bundle_pem();
    let citadel = Citadel::new(ca, TokenVerifier::load(dir.path()).unwrap());
    tokio::spawn(serve(listener, citadel, tls, std::future::pending()));
    (addr, dir, root)
}

async fn client(addr: std::net::SocketAddr, root: &str) -> IstioCertificateServiceClient<Channel> {
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root))
                .domain_name("istiod.istio-system.svc"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    IstioCertificateServiceClient::new(ch)
}

fn request(csr: String, token: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 600,
        metadata: None,
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test]
async fn grpc_over_tls_signs_only_the_callers_identity() {
    let (addr, dir, root) = serve_test_ca().await;
    let mut c = client(addr, &root).await;
    let token = token::issue(dir.path(), "default", "user", Duration::from_secs(60)).unwrap();
    let ok = c
        .create_certificate(request(csr(&user().to_string()), Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.cert_chain.len(), 2);

    let denied = c
        .create_certificate(request(
            csr("spiffe://cluster.local/ns/default/sa/admin"),
            Some(&token),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    let anon = c
        .create_certificate(request(csr(&user().to_string()), None))
        .await
        .unwrap_err();
    assert_eq!(anon.code(), tonic::Code::Unauthenticated, "{anon:?}");

    let forged = c
        .create_certificate(request(csr(&user().to_string()), Some("mast1.e30.AAAA")))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");
}

/// Not a benchmark (bench/mtls/run.sh measures the service): a guard that signing stays
/// cheap. Prints the per-CSR cost; fails only if it is absurd (> 20 ms in a debug build).
#[test]
fn signing_cost() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap();
    let csrs: Vec<String> = (0..20).map(|_| csr(&user().to_string())).collect();
    let t = std::time::Instant::now();
    for c in &csrs {
        ca.sign_csr(c, &user(), None).unwrap();
    }
    let per = t.elapsed() / csrs.len() as u32;
    eprintln!("sign_csr: {per:?} per CSR");
    assert!(per < Duration::from_millis(20), "{per:?}");
}

#[test]
fn ca_from_secret_data_self_signed_and_plugin() {
    // istio-ca-secret: a self-signed root, cert-chain.pem and root-cert.pem empty.
    let pem = CaPem::self_signed("cluster.local").unwrap();
    let ca = CertificateAuthority::from_pem(&pem, CaOptions::default()).unwrap();
    assert!(!ca.plugged_in);
    assert_eq!(ca.trust_bundle_pem(), pem.ca_cert);
    assert_eq!(pem.trust_anchors_pem(), pem.ca_cert);
    let chain = ca
        .sign_csr(&csr(&user().to_string()), &user(), None)
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    let root_der = der(&pem.ca_cert);
    let (_, root_x) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    let leaf = der(&chain[0]);
    let (_, leaf_x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert!(leaf_x.verify_signature(Some(root_x.public_key())).is_ok());
    assert!(
        !format!("{pem:?}").contains("PRIVATE"),
        "key never in Debug"
    );

    // cacerts: an intermediate under an organisation root.
    let root = CaPem::self_signed("Org Root").unwrap();
    let root_issuer = rcgen::Issuer::from_ca_cert_pem(
        &root.ca_cert,
        rcgen::KeyPair::from_pem(&root.ca_key).unwrap(),
    )
    .unwrap();
    let int_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ip = rcgen::CertificateParams::default();
    ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ip.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let int = ip.signed_by(&int_key, &root_issuer).unwrap();
    let plugin = CaPem {
        ca_cert: int.pem(),
        ca_key: int_key.serialize_pem(),
        cert_chain: format!("{}{}", int.pem(), root.ca_cert),
        root_cert: root.ca_cert.clone(),
    };
    let ca = CertificateAuthority::from_pem(&plugin, CaOptions::default()).unwrap();
    assert!(ca.plugged_in);
    assert_eq!(ca.trust_bundle_pem().trim(), root.ca_cert.trim());
    let chain = ca
        .sign_csr(&csr(&user().to_string()), &user(), None)
        .unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[1].trim(), int.pem().trim());

    // Garbage names the key at fault.
    let broken = CaPem {
        ca_key: "not a key".into(),
        ..pem
    };
    let err = CertificateAuthority::from_pem(&broken, CaOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("ca-key.pem:"), "{err}");
}

/// An authenticator that cannot reach its authority.
#[derive(Debug)]
struct Down;

impl Authenticator for Down {
    fn authenticate<'a>(&'a self, _token: &'a str) -> AuthFuture<'a> {
        Box::pin(std::future::ready(Err(AuthenticationError::Unavailable(
            "API server unreachable".into(),
        ))))
    }
}

#[tokio::test]
async fn pluggable_authenticator_unavailable_is_not_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        Arc::new(CertificateAuthority::load_or_create(dir.path(), CaOptions::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTls::from_ca(&ca, addr).unwrap();
    let root = ca.trust_bundle_pem();
    let citadel = Citadel::with_authenticator(ca, Arc::new(Down));
    tokio::spawn(serve(listener, citadel, tls, std::future::pending()));
    let mut c = client(addr, &root).await;
    let err = c
        .create_certificate(request(csr(&user().to_string()), Some("any")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

#[test]
fn the_default_ca_dir_follows_xdg_state_home_then_home() {
    use std::path::PathBuf;
    let os = |s: &str| Some(std::ffi::OsString::from(s));
    assert_eq!(
        default_ca_dir_from(os("/state"), os("/var/lib/u")),
        Some(PathBuf::from("/state/mast/ca"))
    );
    assert_eq!(
        default_ca_dir_from(None, os("/var/lib/u")),
        Some(PathBuf::from("/var/lib/u/.local/state/mast/ca"))
    );
    // Relative values are ignored, as the XDG specification says.
    assert_eq!(
        default_ca_dir_from(os("state"), os("/var/lib/u")),
        Some(PathBuf::from("/var/lib/u/.local/state/mast/ca"))
    );
    assert_eq!(default_ca_dir_from(None, None), None);
}
