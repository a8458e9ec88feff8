use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::OrganizationName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A workload certificate for `sa` in `default`, valid from `from` for `ttl`.
fn leaf(ca: &Ca, sa: &str, from: time::OffsetDateTime, ttl: Duration) -> WorkloadCert {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://cluster.local/ns/default/sa/{sa}")
            .try_into()
            .unwrap(),
    )];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = from;
    p.not_after = from + ttl;
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    WorkloadCert::from_pem(&[cert.pem(), ca.pem.clone()], &key.serialize_pem(), "").unwrap()
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - Duration::from_secs(60)
}

fn store(cert: WorkloadCert) -> Arc<SecretStore> {
    let s = Arc::new(SecretStore::default());
    s.publish(cert);
    s
}

/// One mTLS handshake over a pipe; the server's view of the client's identity, or the error.
async fn handshake(
    client: &Arc<SecretStore>,
    server: &Arc<SecretStore>,
    sans: &[SanMatch],
) -> Result<Option<String>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let cc = client_config(client, sans, &["istio".to_string()]).unwrap();
    let sc = server_config(server, &[], true).unwrap();
    let srv = tokio::spawn(async move {
        let mut s = tokio_rustls::TlsAcceptor::from(sc)
            .accept(b)
            .await
            .map_err(|e| e.to_string())?;
        let id = peer_identity(s.get_ref().1);
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(b"pong").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(id)
    });
    let name = ServerName::try_from("outbound_.80_._.user.default.svc.cluster.local").unwrap();
    let client_side = async {
        let mut c = tokio_rustls::TlsConnector::from(cc)
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        c.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        Ok::<_, String>(())
    };
    let client_result = client_side.await;
    let server_result = srv.await.map_err(|e| e.to_string())?;
    client_result?;
    server_result
}

#[tokio::test]
async fn mutual_tls_carries_spiffe_ids() {
    let ca = ca("cluster.local");
    let client = store(leaf(&ca, "sleep", now(), Duration::from_secs(3600)));
    let server = store(leaf(&ca, "user", now(), Duration::from_secs(3600)));
    let id = handshake(
        &client,
        &server,
        &[SanMatch::Exact(
            "spiffe://cluster.local/ns/default/sa/user".into(),
        )],
    )
    .await
    .unwrap();
    assert_eq!(
        id.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/sleep")
    );
}

#[tokio::test]
async fn wrong_server_identity_is_refused() {
    let ca = ca("cluster.local");
    let client = store(leaf(&ca, "sleep", now(), Duration::from_secs(3600)));
    let server = store(leaf(&ca, "impostor", now(), Duration::from_secs(3600)));
    let err = handshake(
        &client,
        &server,
        &[SanMatch::Exact(
            "spiffe://cluster.local/ns/default/sa/user".into(),
        )],
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("ApplicationVerificationFailure") || err.contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn other_roots_and_expired_certificates_are_refused() {
    let ca1 = ca("cluster.local");
    let ca2 = ca("elsewhere");
    let client = store(leaf(&ca2, "sleep", now(), Duration::from_secs(3600)));
    let server = store(leaf(&ca1, "user", now(), Duration::from_secs(3600)));
    let err = handshake(&client, &server, &[]).await.unwrap_err();
    assert!(
        err.to_lowercase().contains("unknown") || err.contains("issuer"),
        "{err}"
    );

    let expired_from = time::OffsetDateTime::now_utc() - Duration::from_secs(7200);
    let client = store(leaf(&ca1, "sleep", expired_from, Duration::from_secs(3600)));
    let server = store(leaf(&ca1, "user", now(), Duration::from_secs(3600)));
    let err = handshake(&client, &server, &[]).await.unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn rotation_applies_to_new_handshakes_without_new_configs() {
    let ca = ca("cluster.local");
    let client = store(leaf(&ca, "sleep", now(), Duration::from_secs(3600)));
    let server = store(leaf(&ca, "user", now(), Duration::from_secs(3600)));
    let first = server.current().unwrap().certified.cert[0].clone();
    handshake(&client, &server, &[]).await.unwrap();
    server.publish(leaf(&ca, "user", now(), Duration::from_secs(3600)));
    let second = server.current().unwrap().certified.cert[0].clone();
    assert_ne!(first, second);
    handshake(&client, &server, &[]).await.unwrap();
}

#[test]
fn chain_roots_are_the_self_signed_entries() {
    let ca = ca("cluster.local");
    let cert = leaf(&ca, "user", now(), Duration::from_secs(3600));
    assert_eq!(cert.spiffe, "spiffe://cluster.local/ns/default/sa/user");
    assert_eq!(cert.roots.len(), 1);
    assert_eq!(cert.certified.cert.len(), 1, "the root is not presented");
    assert!(cert.roots_pem.contains("BEGIN CERTIFICATE"));
    assert!(cert.remaining() > Duration::from_secs(3000));
}

#[test]
fn client_hello_sni_and_alpn() {
    // A real ClientHello, produced by rustls.
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()];
    let name = ServerName::try_from("outbound_.80_._.user.default.svc.cluster.local").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut bytes = Vec::new();
    conn.write_tls(&mut bytes).unwrap();
    let info = parse_client_hello(&bytes).unwrap();
    assert_eq!(
        info.sni.as_deref(),
        Some("outbound_.80_._.user.default.svc.cluster.local")
    );
    assert_eq!(info.alpn, vec!["istio-peer-exchange", "istio"]);
    assert!(parse_client_hello(&bytes[..20]).is_none());
}

#[tokio::test]
async fn resumed_sessions_keep_the_peer_identity() {
    let ca = ca("cluster.local");
    let client = store(leaf(&ca, "sleep", now(), Duration::from_secs(3600)));
    let server = store(leaf(&ca, "user", now(), Duration::from_secs(3600)));
    let cc = client_config(&client, &[], &[]).unwrap();
    let sc = server_config(&server, &[], true).unwrap();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (kind, _, id) = connect_once(&cc, &sc).await;
        assert_eq!(
            id.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/sleep")
        );
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}

/// One mTLS connection with `cc`/`sc` over a pipe: the server's handshake kind, the
/// negotiated suite and the client's identity as the server reads it, once a ping has crossed
/// (so the client has read its new tickets).
async fn connect_once(
    cc: &Arc<rustls::ClientConfig>,
    sc: &Arc<rustls::ServerConfig>,
) -> (
    Option<rustls::HandshakeKind>,
    Option<rustls::CipherSuite>,
    Option<String>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let sc = Arc::clone(sc);
    let srv = tokio::spawn(async move {
        let mut s = tokio_rustls::TlsAcceptor::from(sc).accept(b).await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap();
        let (_, conn) = s.get_ref();
        (
            conn.handshake_kind(),
            conn.negotiated_cipher_suite().map(|s| s.suite()),
            peer_identity(conn),
        )
    });
    let name = ServerName::try_from("outbound_.80_._.user.default.svc.cluster.local").unwrap();
    let mut c = tokio_rustls::TlsConnector::from(Arc::clone(cc))
        .connect(name, a)
        .await
        .unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    srv.await.unwrap()
}

#[tokio::test]
async fn a_burst_of_new_connections_resumes_past_eight_tickets() {
    let ca = ca("cluster.local");
    let client = store(leaf(&ca, "sleep", now(), Duration::from_secs(3600)));
    let server = store(leaf(&ca, "user", now(), Duration::from_secs(3600)));
    let cc = client_config(&client, &[], &[]).unwrap();
    let sc = server_config(&server, &[], true).unwrap();
    // One at a time: each connection uses a ticket and brings two.
    for _ in 0..20 {
        connect_once(&cc, &sc).await;
    }
    // Then 20 at once (rustls' own cache keeps 8 tickets per server: 12 would be full).
    let burst = futures::future::join_all((0..20).map(|_| connect_once(&cc, &sc))).await;
    let full = burst
        .iter()
        .filter(|(k, _, _)| *k != Some(rustls::HandshakeKind::Resumed))
        .count();
    assert_eq!(full, 0, "{burst:?}");
}

#[tokio::test]
async fn the_ticket_bank_is_bounded_per_server() {
    let ca = ca("cluster.local");
    let client = store(leaf(&ca, "sleep", now(), Duration::from_secs(3600)));
    let server = store(leaf(&ca, "user", now(), Duration::from_secs(3600)));
    let bank = Arc::new(tickets::TicketBank::new());
    let mut cc = (*client_config(&client, &[], &[]).unwrap()).clone();
    cc.resumption = rustls::client::Resumption::store(Arc::clone(&bank) as _);
    let cc = Arc::new(cc);
    let sc = server_config(&server, &[], true).unwrap();
    let name = ServerName::try_from("outbound_.80_._.user.default.svc.cluster.local").unwrap();
    connect_once(&cc, &sc).await;
    assert_eq!(bank.banked(&name), 2, "two tickets per handshake");
    for _ in 0..40 {
        assert_eq!(
            connect_once(&cc, &sc).await.0,
            Some(rustls::HandshakeKind::Resumed)
        );
    }
    assert_eq!(bank.banked(&name), tickets::TICKETS_PER_SERVER);
}

#[tokio::test]
async fn sidecars_settle_on_aes_128_gcm() {
    let ca = ca("cluster.local");
    let client = store(leaf(&ca, "sleep", now(), Duration::from_secs(3600)));
    let server = store(leaf(&ca, "user", now(), Duration::from_secs(3600)));
    let cc = client_config(&client, &[], &[]).unwrap();
    let sc = server_config(&server, &[], true).unwrap();
    let (_, suite, _) = connect_once(&cc, &sc).await;
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    // Same suites as ring's default, only AES-128 ahead of AES-256.
    let mut ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
    let mut ring: Vec<_> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    ours.sort_by_key(|s| u16::from(*s));
    ring.sort_by_key(|s| u16::from(*s));
    assert_eq!(ours, ring);
}
