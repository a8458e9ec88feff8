//! Istio's RequestAuthentication end to end, with Envoy and with mast-proxy: mastd fetches the
//! JWKS from `jwksUri` (a small HTTP server in this test) and inlines it into the
//! `jwt_authn` filter of the sidecars' inbound listeners and of the ingress gateways; tokens
//! are ES256, signed here with a key made for the run.
//!
//! On each proxy: a valid token is let through (200), an expired one and one from another
//! issuer are refused with Envoy's 401 body and `www-authenticate`, a request without a token
//! passes jwt_authn but not the AuthorizationPolicy that requires a request principal (403),
//! and a `request.auth.claims[groups]` condition allows `/admin` only to admins. Through the
//! ingress gateway (a RequestAuthentication and AuthorizationPolicy selecting
//! `istio: ingressgateway`): valid 200, expired 401, none 403. And Istio's "JWT claim based
//! routing" task at the gateways: a VirtualService route matching
//! `@request.auth.claims.group: {exact: group1}` takes a token with group1 (a string or in a
//! list) to its own backend; a token without it, and no token, take the default route.
//!
//! One mastd, two backends, two sidecars and two gateways (one of each kind) share the set-up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mast_e2e::{Backend, Mastd, PodSpec, Sidecar, SidecarKind, eventually, free_port};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://issuer.mast.test";

const API_ENVOY: PodSpec<'static> = PodSpec {
    name: "api-envoy-1",
    namespace: "default",
    labels: &[("app", "api-envoy"), ("jwt", "on")],
    service_account: "api",
};

const API_MAST: PodSpec<'static> = PodSpec {
    name: "api-mast-1",
    namespace: "default",
    labels: &[("app", "api-mast"), ("jwt", "on")],
    service_account: "api",
};

const GW_ENVOY: PodSpec<'static> = PodSpec {
    name: "istio-ingressgateway-envoy",
    namespace: "istio-system",
    labels: &[("istio", "ingressgateway"), ("gw", "envoy")],
    service_account: "istio-ingressgateway-service-account",
};

const GW_MAST: PodSpec<'static> = PodSpec {
    name: "istio-ingressgateway-mast",
    namespace: "istio-system",
    labels: &[("istio", "ingressgateway"), ("gw", "mast")],
    service_account: "istio-ingressgateway-service-account",
};

/// The signing key and the JWKS that publishes it.
struct Signer {
    key: EcdsaKeyPair,
    jwks: String,
}

impl Signer {
    fn new() -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let point = key.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "test",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
        .to_string();
        Ok(Self { key, jwks })
    }

    fn token(&self, claims: serde_json::Value) -> Result<String> {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"test","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let sig = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serve `body` at any path until the test ends.
async fn serve_jwks(body: String) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(port)
}

fn mesh_yaml(
    jwks: u16,
    [backend, group1]: [u16; 2],
    envoy_in: u16,
    mast_in: u16,
    gw: [u16; 2],
) -> String {
    let [gw_envoy, gw_mast] = gw;
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: api, namespace: default}}
spec:
  selector: {{app: api}}
  ports:
  - {{name: http, port: 8000, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api-1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: api}}
  ports: {{http: {backend}}}
---
apiVersion: v1
kind: Service
metadata: {{name: group1, namespace: default}}
spec:
  selector: {{app: group1}}
  ports:
  - {{name: http, port: 8000, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: group1-1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: group1}}
  ports: {{http: {group1}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: claims, namespace: default}}
spec:
  hosts: [claims.example.com]
  gateways: [istio-system/edge-envoy, istio-system/edge-mast]
  http:
  - match:
    - headers:
        "@request.auth.claims.group": {{exact: group1}}
    route:
    - destination: {{host: group1.default.svc.cluster.local, port: {{number: 8000}}}}
  - route:
    - destination: {{host: api.default.svc.cluster.local, port: {{number: 8000}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: api-envoy, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: api-envoy}}}}
  ingress:
  - port: {{number: {envoy_in}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{backend}
  egress:
  - hosts: ["nowhere/*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: api-mast, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: api-mast}}}}
  ingress:
  - port: {{number: {mast_in}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{backend}
  egress:
  - hosts: ["nowhere/*"]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: api, namespace: default}}
spec:
  selector: {{matchLabels: {{jwt: "on"}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: http://127.0.0.1:{jwks}/jwks.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api, namespace: default}}
spec:
  selector: {{matchLabels: {{jwt: "on"}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{notPaths: ["/admin*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
    to: [{{operation: {{paths: ["/admin*"]}}}}]
    when:
    - {{key: "request.auth.claims[groups]", values: [admin]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge-envoy, namespace: istio-system}}
spec:
  selector: {{gw: envoy}}
  servers:
  - port: {{number: {gw_envoy}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge-mast, namespace: istio-system}}
spec:
  selector: {{gw: mast}}
  servers:
  - port: {{number: {gw_mast}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge-envoy, istio-system/edge-mast]
  http:
  - route:
    - destination: {{host: api.default.svc.cluster.local, port: {{number: 8000}}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: http://127.0.0.1:{jwks}/jwks.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
  - to: [{{operation: {{hosts: [claims.example.com]}}}}]
"#
    )
}

/// One HTTP/1.1 GET for `api.example.com`; `(status, www-authenticate, body)`.
async fn get(port: u16, path: &str, token: Option<&str>) -> Result<(u16, String, String)> {
    get_host(port, "api.example.com", path, token).await
}

async fn get_host(
    port: u16,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .context("no answer")??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    let www = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("www-authenticate")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, www, body.to_string()))
}

struct Tokens {
    valid: String,
    admin: String,
    expired: String,
    other_issuer: String,
    /// `group: group1`.
    group1: String,
    /// `group: [group2, group1]`.
    group1_listed: String,
    /// `group: group2`.
    group2: String,
}

/// The checks both sidecars pass, through `port`.
async fn check_sidecar(kind: SidecarKind, port: u16, t: &Tokens, proxy: &Sidecar) -> Result<()> {
    // The keys arrive after mastd's fetch and a push: until then every token fails.
    eventually(
        &format!("{kind}: a valid token is let through"),
        Duration::from_secs(20),
        || async {
            let (status, _, body) = get(port, "/", Some(&t.valid)).await?;
            ensure!(status == 200 && body.contains("api"), "{status}: {body}");
            Ok(())
        },
    )
    .await
    .with_context(|| format!("{kind} log:\n{}", proxy.proc.log_text()))?;
    let realm = r#"Bearer realm="http://api.example.com/", error="invalid_token""#;
    let (status, www, body) = get(port, "/", Some(&t.expired)).await?;
    ensure!(
        (status, body.as_str(), www.as_str()) == (401, "Jwt is expired", realm),
        "{kind}: expired token: {status} {www:?} {body:?}"
    );
    let (status, _, body) = get(port, "/", Some(&t.other_issuer)).await?;
    ensure!(
        (status, body.as_str()) == (401, "Jwt issuer is not configured"),
        "{kind}: other issuer: {status} {body:?}"
    );
    let (status, _, body) = get(port, "/", None).await?;
    ensure!(
        (status, body.as_str()) == (403, "RBAC: access denied"),
        "{kind}: no token, requestPrincipals required: {status} {body:?}"
    );
    let (status, _, body) = get(port, "/admin", Some(&t.valid)).await?;
    ensure!(
        status == 403,
        "{kind}: /admin without the admin group: {status} {body:?}"
    );
    let (status, _, body) = get(port, "/admin", Some(&t.admin)).await?;
    ensure!(
        status == 200,
        "{kind}: /admin with groups [admin]: {status} {body:?}"
    );
    Ok(())
}

async fn check_gateway(kind: SidecarKind, port: u16, t: &Tokens, gw: &Sidecar) -> Result<()> {
    eventually(
        &format!("{kind} gateway: a valid token is let through"),
        Duration::from_secs(20),
        || async {
            let (status, _, body) = get(port, "/", Some(&t.valid)).await?;
            ensure!(status == 200 && body.contains("api"), "{status}: {body}");
            Ok(())
        },
    )
    .await
    .with_context(|| format!("{kind} gateway log:\n{}", gw.proc.log_text()))?;
    let (status, _, body) = get(port, "/", Some(&t.expired)).await?;
    ensure!(
        (status, body.as_str()) == (401, "Jwt is expired"),
        "{kind} gateway: expired: {status} {body:?}"
    );
    let (status, _, body) = get(port, "/", None).await?;
    ensure!(status == 403, "{kind} gateway: no token: {status} {body:?}");
    check_claim_routes(kind, port, t).await
}

/// Istio's "JWT claim based routing": the route is chosen on the verified claims.
async fn check_claim_routes(kind: SidecarKind, port: u16, t: &Tokens) -> Result<()> {
    for (what, token, backend) in [
        ("group: group1", Some(&t.group1), "group1"),
        ("group: [group2, group1]", Some(&t.group1_listed), "group1"),
        ("group: group2", Some(&t.group2), "api"),
        ("no group claim", Some(&t.valid), "api"),
        ("no token", None, "api"),
    ] {
        let (status, _, body) =
            get_host(port, "claims.example.com", "/", token.map(String::as_str)).await?;
        ensure!(
            (status, body.as_str()) == (200, backend),
            "{kind} gateway, claims routing, {what}: {status} {body:?} (expected {backend})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_authentication_with_envoy_and_mast_proxy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let signer = Signer::new()?;
    let jwks = serve_jwks(signer.jwks.clone()).await?;
    let backend = Backend::start("api").await?;
    let group1 = Backend::start("group1").await?;
    let (envoy_in, mast_in) = (free_port(), free_port());
    let gw = [free_port(), free_port()];
    std::fs::write(
        config.join("mesh.yaml"),
        mesh_yaml(jwks, [backend.port, group1.port], envoy_in, mast_in, gw),
    )?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let base = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "iss": ISSUER, "sub": "alice", "groups": ["dev"], "exp": now() + 600,
        });
        if let (Some(c), serde_json::Value::Object(e)) = (c.as_object_mut(), extra) {
            c.extend(e);
        }
        signer.token(c)
    };
    let tokens = Tokens {
        valid: base(serde_json::Value::Null)?,
        admin: base(serde_json::json!({"groups": ["dev", "admin"]}))?,
        expired: base(serde_json::json!({"exp": now() - 3600}))?,
        other_issuer: base(serde_json::json!({"iss": "https://elsewhere.test"}))?,
        group1: base(serde_json::json!({"group": "group1"}))?,
        group1_listed: base(serde_json::json!({"group": ["group2", "group1"]}))?,
        group2: base(serde_json::json!({"group": "group2"}))?,
    };
    let envoy = Sidecar::start_kind(
        SidecarKind::Envoy,
        &API_ENVOY,
        "127.0.0.1",
        mastd.xds_addr,
        dir.path(),
        true,
    )
    .await?;
    let mast = Sidecar::start_kind(
        SidecarKind::Mast,
        &API_MAST,
        "127.0.0.1",
        mastd.xds_addr,
        dir.path(),
        true,
    )
    .await?;
    let gw_envoy =
        Sidecar::start_gateway(SidecarKind::Envoy, &GW_ENVOY, mastd.xds_addr, dir.path()).await?;
    let gw_mast =
        Sidecar::start_gateway(SidecarKind::Mast, &GW_MAST, mastd.xds_addr, dir.path()).await?;

    let mut failures = Vec::new();
    for (kind, port, proxy) in [
        (SidecarKind::Envoy, envoy_in, &envoy),
        (SidecarKind::Mast, mast_in, &mast),
    ] {
        if let Err(e) = check_sidecar(kind, port, &tokens, proxy).await {
            failures.push(format!("{e:#}"));
        }
    }
    for (kind, port, proxy) in [
        (SidecarKind::Envoy, gw[0], &gw_envoy),
        (SidecarKind::Mast, gw[1], &gw_mast),
    ] {
        if let Err(e) = check_gateway(kind, port, &tokens, proxy).await {
            failures.push(format!("{e:#}"));
        }
    }
    let log = mastd.proc.log_text();
    ensure!(
        log.contains("JWKS fetched"),
        "mastd did not log the JWKS fetch:\n{log}"
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("\n\n"));
    }
    Ok(())
}
