//! Tokens signed here (ES256 with a key made by ring, RS256/PS256 with a key made by the
//! openssl CLI when present) against configs shaped as istiod writes them.

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::route::v3::RouteMatch;
use envoy_types::pb::google::protobuf::Empty;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

use super::*;

const ISS: &str = "https://issuer.test";
const NOW: u64 = 1_800_000_000;

struct Signer {
    key: EcdsaKeyPair,
    jwks: String,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

impl Signer {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
        .to_string();
        Self { key, jwks }
    }

    fn token(&self, kid: &str, claims: Value) -> String {
        let header = b64(serde_json::json!({"alg": "ES256", "kid": kid})
            .to_string()
            .as_bytes());
        let payload = b64(claims.to_string().as_bytes());
        let signed = format!("{header}.{payload}");
        let sig = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", b64(sig.as_ref()))
    }
}

fn provider(jwks: &str) -> pb::JwtProvider {
    pb::JwtProvider {
        issuer: ISS.into(),
        payload_in_metadata: "payload".into(),
        normalize_payload_in_metadata: Some(pb::jwt_provider::NormalizePayload {
            space_delimited_claims: vec!["scope".into()],
        }),
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(Specifier::InlineString(jwks.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// istiod's single-rule shape: the provider, or no token at all.
fn config(p: pb::JwtProvider) -> JwtAuthn {
    let req = |t| pb::JwtRequirement {
        requires_type: Some(t),
    };
    let proto = pb::JwtAuthentication {
        providers: [("origins-0".to_string(), p)].into(),
        rules: vec![pb::RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(req(RequiresType::RequiresAny(
                pb::JwtRequirementOrList {
                    requirements: vec![
                        req(RequiresType::ProviderName("origins-0".into())),
                        req(RequiresType::AllowMissing(Empty::default())),
                    ],
                },
            )))),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    JwtAuthn::from_proto(&proto).unwrap()
}

fn request(token: Option<&str>) -> Parts {
    let mut b = http::Request::get("/api?x=1").header("host", "svc.test");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(()).unwrap().into_parts().0
}

fn run(f: &JwtAuthn, parts: &mut Parts) -> (Outcome, DynamicMetadata) {
    let mut md = DynamicMetadata::new();
    let out = f.on_request_at(parts, &mut md, NOW);
    (out, md)
}

fn rejected(o: &Outcome) -> (u16, &'static str) {
    match o {
        Outcome::Reject { status, body, .. } => (status.as_u16(), body),
        Outcome::Continue | Outcome::ClearRouteCache => (200, ""),
    }
}

fn claims(extra: Value) -> Value {
    let mut c = serde_json::json!({"iss": ISS, "sub": "alice", "exp": NOW + 600});
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

#[test]
fn valid_token_writes_the_payload_and_is_removed() {
    let s = Signer::new("k1");
    let f = config(provider(&s.jwks));
    let tok = s.token(
        "k1",
        claims(serde_json::json!({"scope": "read write", "groups": ["dev"]})),
    );
    let mut parts = request(Some(&tok));
    let (out, md) = run(&f, &mut parts);
    assert_eq!(out, Outcome::Continue);
    let payload = &md[FILTER]["payload"];
    assert_eq!(payload["sub"], "alice");
    assert_eq!(payload["scope"], serde_json::json!(["read", "write"]));
    assert!(
        parts.headers.get("authorization").is_none(),
        "not forwarded"
    );
}

#[test]
fn missing_token_passes_and_writes_nothing() {
    let s = Signer::new("k1");
    let f = config(provider(&s.jwks));
    let (out, md) = run(&f, &mut request(None));
    assert_eq!(out, Outcome::Continue);
    assert!(md.is_empty());
}

#[test]
fn failures_are_envoys_statuses_and_bodies() {
    let s = Signer::new("k1");
    let other = Signer::new("k1");
    let f = config(provider(&s.jwks));
    let cases = [
        (
            s.token("k1", claims(serde_json::json!({"exp": NOW - 61}))),
            401,
            "Jwt is expired",
        ),
        (
            s.token("k1", claims(serde_json::json!({"nbf": NOW + 61}))),
            401,
            "Jwt not yet valid",
        ),
        (
            s.token("k1", claims(serde_json::json!({"iss": "https://evil"}))),
            401,
            "Jwt issuer is not configured",
        ),
        (
            other.token("k1", claims(Value::Null)),
            401,
            "Jwt verification fails",
        ),
        (
            s.token("k2", claims(Value::Null)),
            401,
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        (
            "abc.def".to_string(),
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
    ];
    for (tok, status, body) in cases {
        let mut parts = request(Some(&tok));
        let (out, md) = run(&f, &mut parts);
        assert_eq!(rejected(&out), (status, body), "{tok}");
        assert!(md.is_empty());
    }
    // Within the 60 s skew an expired token still passes.
    let tok = s.token("k1", claims(serde_json::json!({"exp": NOW - 59})));
    assert_eq!(run(&f, &mut request(Some(&tok))).0, Outcome::Continue);
    let mut parts = request(Some(&s.token("k1", claims(serde_json::json!({"exp": 1})))));
    let (out, _) = run(&f, &mut parts);
    assert_eq!(
        out,
        Outcome::Reject {
            status: StatusCode::UNAUTHORIZED,
            body: "Jwt is expired",
            www_authenticate: "Bearer realm=\"http://svc.test/api?x=1\", error=\"invalid_token\""
                .into(),
        }
    );
}

#[test]
fn audiences_forward_payload_and_claim_headers() {
    let s = Signer::new("k1");
    let mut p = provider(&s.jwks);
    p.audiences = vec!["shop".into()];
    p.forward = true;
    p.forward_payload_header = "x-jwt-payload".into();
    p.claim_to_headers = vec![pb::JwtClaimToHeader {
        header_name: "x-jwt-sub".into(),
        claim_name: "sub".into(),
        ..Default::default()
    }];
    let f = config(p);
    let bad = s.token("k1", claims(serde_json::json!({"aud": ["other"]})));
    assert_eq!(
        rejected(&run(&f, &mut request(Some(&bad))).0),
        (403, "Audiences in Jwt are not allowed")
    );
    let good = s.token("k1", claims(serde_json::json!({"aud": ["other", "shop"]})));
    let mut parts = request(Some(&good));
    assert_eq!(run(&f, &mut parts).0, Outcome::Continue);
    assert!(parts.headers.get("authorization").is_some(), "forwarded");
    assert_eq!(parts.headers["x-jwt-sub"], "alice");
    assert_eq!(
        parts.headers["x-jwt-payload"].to_str().unwrap(),
        good.split('.').nth(1).unwrap()
    );
}

#[test]
fn header_prefix_and_query_param_locations() {
    let s = Signer::new("k1");
    let mut p = provider(&s.jwks);
    p.from_headers = vec![pb::JwtHeader {
        name: "x-jwt".into(),
        value_prefix: "Token ".into(),
    }];
    p.from_params = vec!["tok".into()];
    let f = config(p);
    let tok = s.token("k1", claims(Value::Null));
    let mut parts = http::Request::get("/")
        .header("x-jwt", format!("Token {tok}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let (out, md) = run(&f, &mut parts);
    assert_eq!(out, Outcome::Continue);
    assert!(!md.is_empty());
    let mut parts = http::Request::get(format!("/?tok={tok}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert!(!run(&f, &mut parts).1.is_empty());
    // Authorization is not a configured location here: a bad token there is ignored.
    let mut parts = request(Some("garbage"));
    assert_eq!(
        run(&f, &mut parts),
        (Outcome::Continue, DynamicMetadata::new())
    );
}

#[test]
fn remote_jwks_is_refused_by_name() {
    let mut p = provider("{}");
    p.jwks_source_specifier = Some(JwksSourceSpecifier::RemoteJwks(Default::default()));
    let proto = pb::JwtAuthentication {
        providers: [("origins-0".to_string(), p)].into(),
        ..Default::default()
    };
    let e = JwtAuthn::from_proto(&proto).unwrap_err();
    assert!(format!("{e:?}").contains("remote_jwks"), "{e:?}");
}

/// RS256 and PS256 with an RSA key from the openssl CLI (ring cannot generate one).
#[test]
fn rsa_tokens_verify() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.der");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "DER",
            "-out",
        ])
        .arg(&key)
        .output();
    if !made.is_ok_and(|o| o.status.success()) {
        eprintln!("no openssl: skipping RSA");
        return;
    }
    let der = std::fs::read(&key).unwrap();
    // openssl 3 writes the DER key as PKCS#1 RSAPrivateKey; older ones as PKCS#8.
    let pair = ring::signature::RsaKeyPair::from_der(&der)
        .or_else(|_| ring::signature::RsaKeyPair::from_pkcs8(&der))
        .unwrap();
    let comps: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
    let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "r", "n": b64(&comps.n), "e": b64(&comps.e)}]})
        .to_string();
    let f = config(provider(&jwks));
    for (alg, enc) in [
        (
            "RS256",
            &ring::signature::RSA_PKCS1_SHA256 as &dyn ring::signature::RsaEncoding,
        ),
        ("PS256", &ring::signature::RSA_PSS_SHA256),
    ] {
        let header = b64(serde_json::json!({"alg": alg, "kid": "r"})
            .to_string()
            .as_bytes());
        let payload = b64(claims(Value::Null).to_string().as_bytes());
        let signed = format!("{header}.{payload}");
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(enc, &SystemRandom::new(), signed.as_bytes(), &mut sig)
            .unwrap();
        let tok = format!("{signed}.{}", b64(&sig));
        let (out, md) = run(&f, &mut request(Some(&tok)));
        assert_eq!(out, Outcome::Continue, "{alg}");
        assert_eq!(md[FILTER]["payload"]["iss"], ISS);
        let mut bad = tok.clone();
        bad.replace_range(bad.len() - 4.., "AAAA");
        assert_eq!(
            rejected(&run(&f, &mut request(Some(&bad))).0),
            (401, "Jwt verification fails"),
            "{alg}"
        );
    }
}

/// `clear_route_cache` (istiod's gateways): a verified token has the route chosen again (the
/// payload is in the metadata); no token, or a provider without it, keeps the route; a
/// provider without `payload_in_metadata` or claim headers has nothing to route on.
#[test]
fn clear_route_cache_only_after_a_verified_token() {
    let s = Signer::new("k1");
    let tok = s.token("k1", claims(serde_json::json!({"group": "group1"})));
    let clearing = config(pb::JwtProvider {
        clear_route_cache: true,
        ..provider(&s.jwks)
    });
    assert_eq!(
        run(&clearing, &mut request(Some(&tok))).0,
        Outcome::ClearRouteCache
    );
    assert_eq!(run(&clearing, &mut request(None)).0, Outcome::Continue);
    let plain = config(provider(&s.jwks));
    assert_eq!(run(&plain, &mut request(Some(&tok))).0, Outcome::Continue);
    let nothing_written = config(pb::JwtProvider {
        clear_route_cache: true,
        payload_in_metadata: String::new(),
        ..provider(&s.jwks)
    });
    assert_eq!(
        run(&nothing_written, &mut request(Some(&tok))).0,
        Outcome::Continue
    );
}
