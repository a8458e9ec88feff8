//! North-south: an ingress gateway (node type `router`, labels `istio: ingressgateway`) in
//! front of the mesh, configured by Istio's own Bookinfo sample unchanged and by Gateways with
//! TLS at the edge. What a user sees is checked with curl, as a user would: the page through
//! the gateway, a 404 for what no VirtualService routes, HTTPS with a certificate from a
//! Kubernetes Secret (verified against its CA, by SNI), the 301 of `httpsRedirect`, a MUTUAL
//! server refusing a client without a certificate, a rotated Secret served to new
//! connections without restarting anything (under load: no request fails, and a kept-alive
//! connection stays open across the change), a server whose Secret is missing left out (the
//! others serving), and TLS PASSTHROUGH by SNI to a TLS server in the mesh (openssl s_server),
//! whose own certificate the client verifies. The Gateway API's other kinds run on a Gateway
//! of their own: a TLSRoute (Passthrough by SNI), a TCPRoute, and HTTPRoutes from other
//! namespaces, served when a ReferenceGrant permits their backend and answered 500 when not.
//!
//! Both of Istio's Bookinfo entries are used as written: the Istio API's Gateway (port 8080,
//! `istio: ingressgateway`) and the Gateway API's (port 80, the proxy Istio deploys for it),
//! so the gateway kinds run one after the other in one test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mast_e2e::{Backend, Mastd, PodSpec, Sidecar, SidecarKind, eventually, write_atomic};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const GATEWAY_POD: PodSpec<'static> = PodSpec {
    name: "istio-ingressgateway-1",
    namespace: "istio-system",
    labels: &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")],
    service_account: "istio-ingressgateway-service-account",
};

/// The pod Istio deploys for the Gateway API sample's `bookinfo-gateway`.
const GATEWAY_API_POD: PodSpec<'static> = PodSpec {
    name: "bookinfo-gateway-istio-1",
    namespace: "default",
    labels: &[("gateway.networking.k8s.io/gateway-name", "bookinfo-gateway")],
    service_account: "bookinfo-gateway-istio",
};

/// The proxy of the Gateway API Gateway `edge-api` below.
const EDGE_API_POD: PodSpec<'static> = PodSpec {
    name: "edge-api-istio-1",
    namespace: "default",
    labels: &[("gateway.networking.k8s.io/gateway-name", "edge-api")],
    service_account: "edge-api-istio",
};

/// The Gateway API's other route kinds and its ReferenceGrant on one Gateway: a TLS
/// Passthrough listener with a TLSRoute (by SNI to the TLS server), a TCP listener with a
/// TCPRoute, and an HTTP listener open to routes of every namespace — one from `granted`,
/// whose backend in `default` a ReferenceGrant permits, one from `refused`, which has none.
const EDGE_API: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge-api, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: tls, port: 9444, protocol: TLS, hostname: secure.example.com, tls: {mode: Passthrough}}
  - {name: tcp, port: 9445, protocol: TCP}
  - name: http
    port: 8090
    protocol: HTTP
    allowedRoutes: {namespaces: {from: All}}
  - name: http-other
    port: 8091
    protocol: HTTP
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: default}
spec:
  parentRefs: [{name: edge-api, sectionName: tls}]
  hostnames: [secure.example.com]
  rules:
  - backendRefs: [{name: secure, port: 443}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: productpage-tcp, namespace: default}
spec:
  parentRefs: [{name: edge-api, sectionName: tcp}]
  rules:
  - backendRefs: [{name: productpage, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: granted, namespace: granted}
spec:
  parentRefs: [{name: edge-api, namespace: default, sectionName: http}]
  hostnames: [granted.example.com]
  rules:
  - backendRefs: [{name: productpage, namespace: default, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: productpage-from-granted, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: granted}]
  to: [{group: "", kind: Service, name: productpage}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: refused, namespace: refused}
spec:
  parentRefs: [{name: edge-api, namespace: default}]
  hostnames: [refused.example.com]
  rules:
  - backendRefs: [{name: productpage, namespace: default, port: 9080}]
"#;

/// A test CA: its certificate as PEM, and what signs with it.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Tells two test CAs apart by name (both are in one run).
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl TestCa {
    fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("gateway test CA {}", rand_suffix()),
        );
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate for `name` (a server's host, or a client's name): (cert, key) as PEM.
    fn issue(&self, name: &str) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn indent(pem: &str) -> String {
    pem.lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>()
}

fn tls_secret(name: &str, cert: &str, key: &str, ca: Option<&str>) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    );
    if let Some(ca) = ca {
        y.push_str(&format!("  ca.crt: |\n{}", indent(ca)));
    }
    y
}

/// The edge Gateways beside Bookinfo's: HTTPS (SIMPLE) on 8443, MUTUAL on 8444, and an HTTP
/// server on 8081 that redirects to HTTPS.
const EDGE: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-credential}
  - port: {number: 8444, name: https-mtls, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: MUTUAL, credentialName: bookinfo-mtls}
  - port: {number: 8081, name: http-redirect, protocol: HTTP}
    hosts: [bookinfo.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8445, name: https-missing, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: no-such-secret}
  - port: {number: 9443, name: tls-passthrough, protocol: TLS}
    hosts: [secure.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure.example.com]
  gateways: [edge]
  tls:
  - match: [{port: 9443, sniHosts: [secure.example.com]}]
    route:
    - destination: {host: secure, port: {number: 443}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: [bookinfo.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
"#;

fn services(backend_port: u16, tls_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: productpage, namespace: default}}\n\
         spec:\n  selector: {{app: productpage}}\n  ports:\n  - {{name: http, port: 9080, targetPort: http}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{name: productpage-v1, namespace: default}}\n\
         spec:\n  address: 127.0.0.1\n  labels: {{app: productpage}}\n  ports: {{http: {backend_port}}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: secure, namespace: default}}\n\
         spec:\n  selector: {{app: secure}}\n  ports:\n  - {{name: tls, port: 443, targetPort: tls}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{name: secure-1, namespace: default}}\n\
         spec:\n  address: 127.0.0.1\n  labels: {{app: secure}}\n  ports: {{tls: {tls_port}}}\n"
    )
}

/// `curl` as a user runs it; `Ok((status, body))`, `Err` when the connection or TLS fails.
fn curl(args: &[&str]) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .context("run curl")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

/// [`until_status`] through `gw`, with the gateway's log and config in the error.
async fn expect(gw: &Sidecar, what: &str, args: &[&str], want: u16) -> Result<String> {
    match until_status(what, args, want).await {
        Ok(body) => Ok(body),
        Err(e) => {
            let dump = gw.admin("/config_dump").await.unwrap_or_default();
            bail!(
                "{e:#}\n{} log:\n{}\nconfig:\n{dump}",
                gw.kind,
                gw.proc.log_text()
            )
        }
    }
}

async fn until_status(what: &str, args: &[&str], want: u16) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    eventually(what, Duration::from_secs(20), || {
        let args = args.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            match curl(&refs) {
                Ok((code, body)) if code == want => Ok(body),
                Ok((code, body)) => bail!("status {code}: {body}"),
                Err(e) => Err(e),
            }
        }
    })
    .await
}

async fn check_gateway(kind: SidecarKind, mastd: &Mastd, work: &Path, dir: &Path) -> Result<()> {
    let gw = Sidecar::start_gateway(kind, &GATEWAY_POD, mastd.xds_addr, work).await?;
    // Bookinfo's gateway: /productpage is routed, anything else is a 404.
    let body = expect(
        &gw,
        "GET /productpage through the gateway",
        &["http://127.0.0.1:8080/productpage"],
        200,
    )
    .await?;
    assert_eq!(body, "productpage", "{kind}");
    let (code, _) = curl(&["http://127.0.0.1:8080/not-routed"])?;
    assert_eq!(code, 404, "{kind}: a path no VirtualService routes");

    // HTTPS SIMPLE with the Secret's certificate, verified against its CA by SNI.
    let ca1 = dir.join("ca1.pem");
    let https = [
        "--cacert",
        ca1.to_str().context("path")?,
        "--resolve",
        "bookinfo.example.com:8443:127.0.0.1",
        "https://bookinfo.example.com:8443/productpage",
    ];
    let body = expect(&gw, "HTTPS through the gateway", &https, 200).await?;
    assert_eq!(body, "productpage", "{kind}");
    // A server whose Secret is missing serves nothing, the others serve, and mastd says
    // which Gateway, server and Secret.
    let log = mastd.proc.log_text();
    assert!(
        log.lines().any(|l| l.contains("Gateway default/edge")
            && l.contains("https-missing")
            && l.contains("istio-system/no-such-secret")),
        "{kind}: no error naming the Gateway, server and Secret in mastd's log:\n{log}"
    );

    // PASSTHROUGH: the gateway routes by SNI without terminating; the certificate the client
    // verifies is the server's own (openssl s_server behind the gateway).
    let passthrough = [
        "--cacert",
        ca1.to_str().context("path")?,
        "--resolve",
        "secure.example.com:9443:127.0.0.1",
        "https://secure.example.com:9443/",
    ];
    let body = expect(&gw, "TLS PASSTHROUGH by SNI", &passthrough, 200).await?;
    assert!(
        body.contains("s_server"),
        "{kind}: not the TLS server's page: {body}"
    );

    // httpsRedirect: a 301 to https.
    let (code, _) = curl(&[
        "-H",
        "Host: bookinfo.example.com",
        "http://127.0.0.1:8081/productpage",
    ])?;
    assert_eq!(code, 301, "{kind}: httpsRedirect");

    // MUTUAL: no client certificate, no connection; with one, the page.
    let mtls_url = "https://bookinfo.example.com:8444/productpage";
    let resolve = "bookinfo.example.com:8444:127.0.0.1";
    let client_cert = dir.join("client.pem");
    let client_key = dir.join("client-key.pem");
    let with_cert = [
        "--cacert",
        ca1.to_str().context("path")?,
        "--resolve",
        resolve,
        "--cert",
        client_cert.to_str().context("path")?,
        "--key",
        client_key.to_str().context("path")?,
        mtls_url,
    ];
    let body = expect(&gw, "MUTUAL with a client certificate", &with_cert, 200).await?;
    assert_eq!(body, "productpage", "{kind}");
    let without = curl(&[
        "--cacert",
        ca1.to_str().context("path")?,
        "--resolve",
        resolve,
        mtls_url,
    ]);
    assert!(
        without.is_err(),
        "{kind}: MUTUAL accepted a client without a certificate: {without:?}"
    );

    // Rotation: a new certificate (from a new CA) in the Secret reaches new connections.
    let ca2 = TestCa::new()?;
    let (cert2, key2) = ca2.issue("bookinfo.example.com")?;
    let ca2_path = dir.join("ca2.pem");
    std::fs::write(&ca2_path, &ca2.pem)?;
    let secret_file = dir.join("config/secret.yaml");
    let original = std::fs::read_to_string(&secret_file)?;
    // Under load: clients that trust both CAs keep requesting while the Secret changes —
    // one on a kept-alive connection, one opening a new connection per request. None of
    // their requests may fail.
    let both = dir.join("ca-both.pem");
    std::fs::write(
        &both,
        format!("{}{}", std::fs::read_to_string(&ca1)?, ca2.pem),
    )?;
    let url = "https://bookinfo.example.com:8443/productpage";
    let base: Vec<String> = [
        "--cacert",
        both.to_str().context("path")?,
        "--resolve",
        "bookinfo.example.com:8443:127.0.0.1",
        "-w",
        "%{http_code}\n",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let kept_alive = {
        let mut args = base.clone();
        // With the number of connections each transfer opened: one in all, the first.
        args.extend(["-w".into(), "%{http_code} %{num_connects}\n".into()]);
        args.extend(["--rate".into(), "50/s".into()]);
        for _ in 0..150 {
            args.extend(["-o".into(), "/dev/null".into(), url.to_string()]);
        }
        std::thread::spawn(move || Command::new("curl").arg("-sS").args(&args).output())
    };
    let fresh = {
        let base = base.clone();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(3);
            let mut codes = Vec::new();
            while std::time::Instant::now() < until {
                let out = Command::new("curl")
                    .arg("-sS")
                    .args(&base)
                    .args(["-o", "/dev/null", url])
                    .output();
                codes.push(out.map_or_else(
                    |e| e.to_string(),
                    |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
                ));
            }
            codes
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    write_atomic(
        &secret_file,
        &tls_secret("bookinfo-credential", &cert2, &key2, None),
    )?;
    let kept = kept_alive
        .join()
        .map_err(|_| anyhow::anyhow!("curl thread"))??;
    let kept: Vec<String> = String::from_utf8_lossy(&kept.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let fresh = fresh.join().map_err(|_| anyhow::anyhow!("curl thread"))?;
    let failed = |codes: &[String]| codes.iter().filter(|c| *c != "200").count();
    let connects: u32 = kept
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
        .sum();
    let kept: Vec<String> = kept
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    assert!(
        kept.len() == 150 && failed(&kept) == 0,
        "{kind}: requests on one connection across the rotation: {} of {} failed",
        failed(&kept),
        kept.len()
    );
    assert_eq!(
        connects, 1,
        "{kind}: the rotation closed the client's kept-alive connection"
    );
    assert!(
        fresh.len() > 10 && failed(&fresh) == 0,
        "{kind}: new connections across the rotation: {} of {} failed: {fresh:?}",
        failed(&fresh),
        fresh.len()
    );
    println!(
        "{kind}: Secret rotated under load: {} requests on a kept-alive connection and {} on new connections, none failed",
        kept.len(),
        fresh.len()
    );
    let rotated = [
        "--cacert",
        ca2_path.to_str().context("path")?,
        "--resolve",
        "bookinfo.example.com:8443:127.0.0.1",
        "https://bookinfo.example.com:8443/productpage",
    ];
    expect(&gw, "HTTPS with the rotated certificate", &rotated, 200).await?;
    write_atomic(&secret_file, &original)?;
    expect(
        &gw,
        "HTTPS with the original certificate again",
        &https,
        200,
    )
    .await?;
    drop(gw);

    // The same Bookinfo entry written with the Gateway API: the proxy Istio deploys for a
    // Gateway (label gateway.networking.k8s.io/gateway-name) listens on the listener's port.
    let gw_api = Sidecar::start_gateway(kind, &GATEWAY_API_POD, mastd.xds_addr, work).await?;
    let body = expect(
        &gw_api,
        "GET /productpage through the Gateway API gateway",
        &["http://127.0.0.1:80/productpage"],
        200,
    )
    .await?;
    assert_eq!(body, "productpage", "{kind}");
    let (code, _) = curl(&["http://127.0.0.1:80/not-routed"])?;
    assert_eq!(code, 404, "{kind}: Gateway API, a path no HTTPRoute routes");
    drop(gw_api);

    // TLSRoute, TCPRoute and a ReferenceGrant on the Gateway API's `edge-api`.
    let edge = Sidecar::start_gateway(kind, &EDGE_API_POD, mastd.xds_addr, work).await?;
    let tls_route = [
        "--cacert",
        ca1.to_str().context("path")?,
        "--resolve",
        "secure.example.com:9444:127.0.0.1",
        "https://secure.example.com:9444/",
    ];
    let body = expect(&edge, "a TLSRoute by SNI (Passthrough)", &tls_route, 200).await?;
    assert!(body.contains("s_server"), "{kind}: TLSRoute: {body}");
    let body = expect(
        &edge,
        "HTTP carried by a TCPRoute",
        &["http://127.0.0.1:9445/productpage"],
        200,
    )
    .await?;
    assert_eq!(body, "productpage", "{kind}: TCPRoute");
    let body = expect(
        &edge,
        "a route of another namespace whose backend a ReferenceGrant permits",
        &[
            "-H",
            "Host: granted.example.com",
            "http://127.0.0.1:8090/productpage",
        ],
        200,
    )
    .await?;
    assert_eq!(body, "productpage", "{kind}: granted");
    // Attached by `sectionName` to the `http` listener only: the other one does not route it.
    let (code, _) = curl(&[
        "-H",
        "Host: granted.example.com",
        "http://127.0.0.1:8091/productpage",
    ])?;
    assert_eq!(
        code, 404,
        "{kind}: a route attached to another listener (sectionName)"
    );
    let (code, _) = curl(&[
        "-H",
        "Host: refused.example.com",
        "http://127.0.0.1:8090/productpage",
    ])?;
    assert_eq!(
        code, 500,
        "{kind}: a backend in another namespace without a ReferenceGrant (RefNotPermitted)"
    );
    drop(edge);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_and_tls_at_the_edge_through_an_ingress_gateway() -> Result<()> {
    for port in [8080, 80] {
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_err() {
            bail!(
                "cannot listen on port {port} (taken, or not root): Bookinfo's Gateways \
                 listen there as written"
            );
        }
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config)?;
    let backend = Backend::start("productpage").await?;
    // Istio's sample, byte for byte.
    std::fs::copy(
        mast_testdata::corpus("istio-samples/bookinfo/networking/bookinfo-gateway.yaml"),
        config.join("bookinfo-gateway.yaml"),
    )?;
    std::fs::copy(
        mast_testdata::corpus("istio-samples/bookinfo/gateway-api/bookinfo-gateway.yaml"),
        config.join("bookinfo-gateway-api.yaml"),
    )?;
    std::fs::write(config.join("edge.yaml"), EDGE)?;
    std::fs::write(config.join("edge-api.yaml"), EDGE_API)?;
    let ca1 = TestCa::new()?;
    let (cert1, key1) = ca1.issue("bookinfo.example.com")?;
    std::fs::write(dir.path().join("ca1.pem"), &ca1.pem)?;
    // A TLS server in the mesh for PASSTHROUGH, with its own certificate.
    let tls_port = mast_e2e::free_port();
    let (secure_cert, secure_key) = ca1.issue("secure.example.com")?;
    std::fs::write(dir.path().join("secure.pem"), secure_cert)?;
    std::fs::write(dir.path().join("secure-key.pem"), secure_key)?;
    let _tls_server = mast_e2e::Proc::spawn(
        "openssl s_server",
        Command::new("openssl")
            .arg("s_server")
            .args(["-accept", &tls_port.to_string(), "-www", "-quiet"])
            .arg("-cert")
            .arg(dir.path().join("secure.pem"))
            .arg("-key")
            .arg(dir.path().join("secure-key.pem")),
        dir.path().join("s_server.log"),
    )?;
    std::fs::write(
        config.join("services.yaml"),
        services(backend.port, tls_port),
    )?;
    std::fs::write(
        config.join("secret.yaml"),
        tls_secret("bookinfo-credential", &cert1, &key1, None),
    )?;
    // MUTUAL: the server's certificate and the CA that signs client certificates.
    std::fs::write(
        config.join("secret-mtls.yaml"),
        tls_secret("bookinfo-mtls", &cert1, &key1, Some(&ca1.pem)),
    )?;
    let (client_cert, client_key) = ca1.issue("client.example.com")?;
    std::fs::write(dir.path().join("client.pem"), client_cert)?;
    std::fs::write(dir.path().join("client-key.pem"), client_key)?;

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let mastd = Mastd::start(&config, &work).await?;
    check_gateway(SidecarKind::Envoy, &mastd, &work, dir.path()).await?;
    check_gateway(SidecarKind::Mast, &mastd, &work, dir.path()).await?;
    Ok(())
}
