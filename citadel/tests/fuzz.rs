//! Fuzz targets for what citadel reads from callers (issue 21 §1): the CSR of a
//! `CreateCertificate` call, the caller's credential, and the SPIFFE IDs it compares. Never a
//! panic: a bad CSR is a `CaError`, a bad credential an `AuthError`.
//!
//! Seeds: `testdata/fuzz-seeds/csr/` (ECDSA P-256/P-384, RSA 2048 and Ed25519 CSRs, one with
//! several SANs). They are mutated as DER (re-wrapped in PEM) and as PEM text.
//! `MAST_FUZZ_CASES` runs longer; see `docs/fuzzing.md`.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mast_citadel::{CaOptions, CaPem, CertificateAuthority, SpiffeId, TokenVerifier};
use mast_testdata::fuzz::{self, Rng};

/// DER tags and lengths that make ASN.1 parsers work.
const DER_DICT: &[&[u8]] = &[
    &[0x30, 0x82, 0xff, 0xff],
    &[0x30, 0x80],
    &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
    &[0x06, 0x03, 0x55, 0x1d, 0x11],
    &[0x86, 0x00],
    &[0x82, 0x01, 0x2a],
    &[0x05, 0x00],
    &[0x02, 0x01, 0x00],
    &[0xa0, 0x00],
];

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

fn to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

fn csr_input(rng: &mut Rng, seeds: &[String]) -> String {
    let seed = &seeds[rng.below(seeds.len())];
    match rng.below(4) {
        0 => {
            let bytes = fuzz::mutate_bytes(rng, seed.as_bytes(), &[b"-----", b"\n"]);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        1 => to_pem(&rng.bytes(600)),
        2 => signed_hostile_csr(rng),
        _ => to_pem(&fuzz::mutate_bytes(rng, &pem_der(seed), DER_DICT)),
    }
}

/// A correctly signed CSR with hostile SANs: several, long, empty, of every type — what a
/// compromised workload could send (the signature check does not stop it).
fn signed_hostile_csr(rng: &mut Rng) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    if rng.one_in(3) {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "x".repeat(rng.below(5000)));
    }
    let uris = [
        "spiffe://cluster.local/ns/default/sa/user".to_string(),
        "spiffe://cluster.local/ns/default/sa/user/".to_string(),
        "spiffe://cluster.local/ns/kube-system/sa/admin".to_string(),
        "spiffe://CLUSTER.local/ns/default/sa/user".to_string(),
        "spiffe://cluster.local/ns/default/sa/user\u{0}".to_string(),
        format!(
            "spiffe://cluster.local/ns/default/sa/{}",
            "u".repeat(rng.below(10000))
        ),
        String::new(),
    ];
    for _ in 0..rng.below(4) {
        let san = match rng.below(4) {
            0 => rcgen::SanType::DnsName("user.default.svc".to_string().try_into().unwrap()),
            1 => rcgen::SanType::IpAddress([10, 0, 0, 1].into()),
            _ => match uris[rng.below(uris.len())].clone().try_into() {
                Ok(u) => rcgen::SanType::URI(u),
                Err(_) => continue,
            },
        };
        p.subject_alt_names.push(san);
    }
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn fuzz_csr() {
    let seeds: Vec<String> = fuzz::seeds("csr")
        .into_iter()
        .map(|(_, b)| String::from_utf8(b).unwrap())
        .collect();
    let ca = CertificateAuthority::from_pem(
        &CaPem::self_signed("cluster.local").unwrap(),
        CaOptions::default(),
    )
    .unwrap();
    let user: SpiffeId = "spiffe://cluster.local/ns/default/sa/user".parse().unwrap();
    // Mutations start from CSRs citadel signs.
    let signed = seeds
        .iter()
        .filter(|s| ca.sign_csr(s, &user, None).is_ok())
        .count();
    eprintln!("CSR seeds: {signed} of {} signed", seeds.len());
    assert!(signed >= 2, "{signed} seed CSRs sign");
    fuzz::run(
        "csr",
        6000,
        |rng| {
            let ttl = match rng.below(4) {
                0 => None,
                1 => Some(Duration::ZERO),
                2 => Some(Duration::from_secs(rng.edgy_u64())),
                _ => Some(Duration::MAX),
            };
            (csr_input(rng, &seeds), ttl)
        },
        |(pem, ttl)| {
            let _ = ca.sign_csr(pem, &user, *ttl);
        },
    );
}

#[test]
fn fuzz_spiffe_ids_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let token =
        mast_citadel::token::issue(dir.path(), "default", "user", Duration::from_secs(60)).unwrap();
    let verifier = TokenVerifier::load(dir.path()).unwrap();
    assert!(verifier.verify(&token, SystemTime::now()).is_ok());
    const IDS: &[&[u8]] = &[
        b"spiffe://cluster.local/ns/default/sa/user",
        b"spiffe://a/ns/b/sa/c",
    ];
    fuzz::run(
        "spiffe-id-and-credential",
        20000,
        |rng| {
            let seed = IDS[rng.below(IDS.len())];
            let id = fuzz::mutate_bytes(rng, seed, &[b"/", b"//", b"%", b":"]);
            let cred = fuzz::mutate_bytes(rng, token.as_bytes(), &[b".", b"=", b"-", b"_"]);
            (
                String::from_utf8_lossy(&id).into_owned(),
                String::from_utf8_lossy(&cred).into_owned(),
            )
        },
        |(id, cred)| {
            if let Ok(parsed) = id.parse::<SpiffeId>() {
                // What parses prints back as what was parsed.
                assert_eq!(parsed.to_string().parse::<SpiffeId>().ok(), Some(parsed));
            }
            let _ = verifier.verify(cred, SystemTime::now());
        },
    );
}
