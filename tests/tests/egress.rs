//! Egress: TLS origination toward an HTTPS server outside the mesh, in the shapes of Istio's
//! tasks "Egress TLS Origination" and "Egress Gateways with TLS Origination", with Envoy and
//! with mast-proxy as the sidecar and as the egress gateway.
//!
//! The server outside the mesh is nginx (Debian's, started here with its own prefix and
//! config on free loopback ports), with a certificate from a CA this test makes. It answers
//! with the TLS version and the SNI it saw (`$ssl_protocol`, `$ssl_server_name`) and, on its
//! MUTUAL port, the client certificate's subject: the app sends plain HTTP to its sidecar, and
//! the body proves the sidecar (or the egress gateway) spoke TLS, with the right SNI and
//! certificate. A DestinationRule with another CA gets a 503 whose reason the sidecar states.
//!
//! One mastd and one nginx for the whole test; per proxy kind one sidecar and one egress
//! gateway.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper::StatusCode;
use mast_e2e::{
    CaOptions, HttpClient, Mastd, PodSpec, Proc, Sidecar, SidecarKind, eventually, free_port,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const APP_POD: PodSpec<'static> = PodSpec {
    name: "sleep-1",
    namespace: "default",
    labels: &[("app", "sleep")],
    service_account: "sleep",
};

const EGRESS_POD: PodSpec<'static> = PodSpec {
    name: "istio-egressgateway-1",
    namespace: "istio-system",
    labels: &[("istio", "egressgateway"), ("app", "istio-egressgateway")],
    service_account: "istio-egressgateway-service-account",
};

/// A test CA: its certificate as PEM, and what signs with it.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("egress test CA {name}"));
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate for `names` (the first is the common name): (cert, key) as PEM.
    fn issue(&self, names: &[&str]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Ports of one run.
struct Ports {
    /// nginx: TLS; TLS with client certificates required.
    nginx_simple: u16,
    nginx_mutual: u16,
    /// ServiceEntry ports the app calls in plain HTTP (its sidecar listens on them).
    simple: u16,
    mutual: u16,
    wrong_ca: u16,
    via_gateway: u16,
    via_gateway_mutual: u16,
    /// The ServiceEntries' HTTPS ports the egress gateway originates TLS to.
    external_https: u16,
    external_mutual: u16,
    /// The egress gateway's server port, and its Service's port.
    gateway: u16,
    gateway_service: u16,
}

/// nginx with its own prefix: the body names what TLS it saw.
fn nginx_conf(dir: &Path, p: &Ports) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/nginx-access.log;
  client_body_temp_path {d}/nginx-tmp/body;
  proxy_temp_path {d}/nginx-tmp/proxy;
  fastcgi_temp_path {d}/nginx-tmp/fastcgi;
  uwsgi_temp_path {d}/nginx-tmp/uwsgi;
  scgi_temp_path {d}/nginx-tmp/scgi;
  default_type text/plain;
  ssl_certificate {d}/server.pem;
  ssl_certificate_key {d}/server-key.pem;
  server {{
    listen 127.0.0.1:{simple} ssl;
    location / {{ return 200 "tls=$ssl_protocol sni=$ssl_server_name host=$host\n"; }}
  }}
  server {{
    listen 127.0.0.1:{mutual} ssl;
    ssl_client_certificate {d}/client-ca.pem;
    ssl_verify_client on;
    location / {{ return 200 "tls=$ssl_protocol sni=$ssl_server_name client=$ssl_client_s_dn\n"; }}
  }}
}}
"#,
        simple = p.nginx_simple,
        mutual = p.nginx_mutual,
    )
}

/// Istio's task resources with this run's ports and files.
fn mesh_config(dir: &Path, p: &Ports) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: default}}
spec:
  hosts: [external.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
  ports:
  - {{number: {simple}, name: http-simple, protocol: HTTP, targetPort: {nginx_simple}}}
  - {{number: {mutual}, name: http-mutual, protocol: HTTP, targetPort: {nginx_mutual}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: external, namespace: default}}
spec:
  host: external.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: {simple}}}
      tls: {{mode: SIMPLE, caCertificates: {d}/ca.pem}}
    - port: {{number: {mutual}}}
      tls:
        mode: MUTUAL
        caCertificates: {d}/ca.pem
        clientCertificate: {d}/client.pem
        privateKey: {d}/client-key.pem
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wrong-ca, namespace: default}}
spec:
  hosts: [wrongca.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
  ports:
  - {{number: {wrong_ca}, name: http, protocol: HTTP, targetPort: {nginx_simple}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: wrong-ca, namespace: default}}
spec:
  host: wrongca.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {d}/other-ca.pem}}
---
# Egress gateway with TLS origination (Istio's task, on this run's ports).
apiVersion: v1
kind: Service
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  ports:
  - {{name: http, port: {gateway_service}, targetPort: {gateway}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: istio-egressgateway-1, namespace: istio-system}}
spec:
  address: 127.0.0.1
  labels: {{istio: egressgateway, app: istio-egressgateway}}
  serviceAccount: istio-egressgateway-service-account
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egress, namespace: default}}
spec:
  hosts: [egress.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
  ports:
  - {{number: {via_gateway}, name: http-port, protocol: HTTP}}
  - {{number: {external_https}, name: https-port, protocol: HTTPS, targetPort: {nginx_simple}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {gateway}, name: https-port-for-tls-origination, protocol: HTTPS}}
    hosts: [egress.example.com, mutual-egress.example.com]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-external, namespace: default}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: external
    trafficPolicy:
      portLevelSettings:
      - port: {{number: {gateway_service}}}
        tls: {{mode: ISTIO_MUTUAL, sni: egress.example.com}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-external-through-egress-gateway, namespace: default}}
spec:
  hosts: [egress.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: {via_gateway}
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: external
        port: {{number: {gateway_service}}}
  - match:
    - gateways: [istio-egressgateway]
      port: {gateway}
    route:
    - destination:
        host: egress.example.com
        port: {{number: {external_https}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-egress, namespace: default}}
spec:
  host: egress.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: {external_https}}}
      tls: {{mode: SIMPLE, caCertificates: {d}/ca.pem}}
---
# MUTUAL at the egress gateway with a client certificate from a Secret in its namespace
# (credentialName: honoured on gateways only).
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mutual-egress, namespace: default}}
spec:
  hosts: [mutual-egress.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
  ports:
  - {{number: {via_gateway_mutual}, name: http-port, protocol: HTTP}}
  - {{number: {external_mutual}, name: https-port, protocol: HTTPS, targetPort: {nginx_mutual}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mutual-egress-through-egress-gateway, namespace: default}}
spec:
  hosts: [mutual-egress.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: {via_gateway_mutual}
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: external
        port: {{number: {gateway_service}}}
  - match:
    - gateways: [istio-egressgateway]
      port: {gateway}
    route:
    - destination:
        host: mutual-egress.example.com
        port: {{number: {external_mutual}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls-for-mutual-egress, namespace: default}}
spec:
  host: mutual-egress.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: {external_mutual}}}
      tls: {{mode: MUTUAL, credentialName: client-credential}}
"#,
        simple = p.simple,
        mutual = p.mutual,
        wrong_ca = p.wrong_ca,
        via_gateway = p.via_gateway,
        via_gateway_mutual = p.via_gateway_mutual,
        external_https = p.external_https,
        external_mutual = p.external_mutual,
        gateway = p.gateway,
        gateway_service = p.gateway_service,
        nginx_simple = p.nginx_simple,
        nginx_mutual = p.nginx_mutual,
    )
}

/// GET through the app's sidecar until `want` (config arrives asynchronously).
async fn until(
    what: &str,
    port: u16,
    host: &str,
    want: StatusCode,
    proxies: &[&Sidecar],
) -> Result<String> {
    let client = HttpClient::new();
    let url = format!("http://127.0.0.1:{port}/");
    let got = eventually(what, Duration::from_secs(20), || {
        let (client, url) = (&client, &url);
        async move {
            let (status, body) = client.get(url, Some(host), &[]).await?;
            if status != want {
                bail!("status {status}: {body}");
            }
            Ok(body)
        }
    })
    .await;
    match got {
        Ok(body) => Ok(body),
        Err(e) => {
            let mut logs = String::new();
            for p in proxies {
                let dump = p.admin("/config_dump").await.unwrap_or_default();
                logs.push_str(&format!(
                    "\n---- {} log:\n{}\n---- config:\n{dump}",
                    p.kind,
                    p.proc.log_text()
                ));
            }
            bail!("{e:#}{logs}")
        }
    }
}

async fn check(kind: SidecarKind, mastd: &Mastd, work: &Path, p: &Ports) -> Result<()> {
    let app = Sidecar::start_secure(kind, &APP_POD, "127.0.0.1", mastd, work).await?;

    // (a) SIMPLE: plain HTTP from the app, HTTPS at nginx, SNI from the Host (auto_sni).
    let body = until(
        "TLS origination (SIMPLE)",
        p.simple,
        "external.example.com",
        StatusCode::OK,
        &[&app],
    )
    .await?;
    assert!(body.starts_with("tls=TLSv1."), "{kind}: not TLS: {body}");
    assert!(
        body.contains("sni=external.example.com"),
        "{kind}: SNI: {body}"
    );

    // A CA that did not sign nginx's certificate: 503, and the sidecar says why (Envoy in
    // the body, mast-proxy in its log).
    let client = HttpClient::new();
    let url = format!("http://127.0.0.1:{}/", p.wrong_ca);
    let said = eventually(
        "a 503 naming the TLS failure",
        Duration::from_secs(20),
        || async {
            let (status, body) = client.get(&url, Some("wrongca.example.com"), &[]).await?;
            if status != StatusCode::SERVICE_UNAVAILABLE {
                bail!("status {status}: {body}");
            }
            if !body.contains("connection failure") {
                bail!("not a connection failure (UF): {body}");
            }
            // Envoy counts the certificate it could not verify; mast-proxy logs it.
            let named = match kind {
                SidecarKind::Envoy => {
                    let stat = format!(
                        "cluster.outbound|{}||wrongca.example.com.ssl.fail_verify_error: ",
                        p.wrong_ca
                    );
                    counter(&app.admin("/stats").await?, &stat) > 0
                }
                SidecarKind::Mast => app
                    .proc
                    .log_text()
                    .lines()
                    .any(|l| l.contains("TLS handshake failed") && l.contains("UnknownIssuer")),
            };
            if !named {
                bail!("503 without the reason: {body}");
            }
            Ok(())
        },
    )
    .await;
    if let Err(e) = said {
        bail!("{kind}: {e:#}\n{}", app.proc.log_text());
    }

    // (b) MUTUAL: nginx requires a client certificate; the sidecar presents the DR's files.
    let body = until(
        "TLS origination (MUTUAL)",
        p.mutual,
        "external.example.com",
        StatusCode::OK,
        &[&app],
    )
    .await?;
    assert!(
        body.contains("client=CN=client.example.com"),
        "{kind}: client certificate: {body}"
    );

    // (c) mesh → egress gateway (ISTIO_MUTUAL, SNI egress.example.com) → nginx, TLS
    // originated at the gateway.
    let gateway = Sidecar::start_secure_gateway(kind, &EGRESS_POD, mastd, work).await?;
    let body = until(
        "through the egress gateway",
        p.via_gateway,
        "egress.example.com",
        StatusCode::OK,
        &[&app, &gateway],
    )
    .await?;
    assert!(body.starts_with("tls=TLSv1."), "{kind}: not TLS: {body}");
    assert!(
        body.contains("sni=egress.example.com"),
        "{kind}: SNI: {body}"
    );
    // MUTUAL at the gateway: the client certificate comes from the Secret over SDS.
    let body = until(
        "MUTUAL with credentialName at the egress gateway",
        p.via_gateway_mutual,
        "mutual-egress.example.com",
        StatusCode::OK,
        &[&app, &gateway],
    )
    .await?;
    assert!(
        body.contains("client=CN=egress-gateway.example.com")
            && body.contains("sni=mutual-egress.example.com"),
        "{kind}: the gateway's client certificate from the Secret: {body}"
    );
    let stats = gateway.admin("/stats").await?;
    let sent_stat = format!(
        "cluster.outbound|{}||egress.example.com.upstream_rq_total: ",
        p.external_https
    );
    let sent = counter(&stats, &sent_stat);
    assert!(
        sent >= 1,
        "{kind}: the egress gateway sent nothing to egress.example.com:\n{stats}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origination_and_egress_gateway() -> Result<()> {
    if Command::new("nginx").arg("-v").output().is_err() {
        bail!("no nginx: scripts/test.sh installs it (apt-get install nginx)");
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let config = d.join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::create_dir_all(d.join("nginx-tmp"))?;
    let ca = TestCa::new("external")?;
    let other = TestCa::new("other")?;
    let (cert, key) = ca.issue(&[
        "external.example.com",
        "egress.example.com",
        "mutual-egress.example.com",
        "wrongca.example.com",
    ])?;
    let (client_cert, client_key) = ca.issue(&["client.example.com"])?;
    for (name, text) in [
        ("ca.pem", &ca.pem),
        ("other-ca.pem", &other.pem),
        ("client-ca.pem", &ca.pem),
        ("server.pem", &cert),
        ("server-key.pem", &key),
        ("client.pem", &client_cert),
        ("client-key.pem", &client_key),
    ] {
        std::fs::write(d.join(name), text)?;
    }
    let ports = Ports {
        nginx_simple: free_port(),
        nginx_mutual: free_port(),
        simple: free_port(),
        mutual: free_port(),
        wrong_ca: free_port(),
        via_gateway: free_port(),
        via_gateway_mutual: free_port(),
        external_https: free_port(),
        external_mutual: free_port(),
        gateway: free_port(),
        gateway_service: free_port(),
    };
    std::fs::write(d.join("nginx.conf"), nginx_conf(d, &ports))?;
    let mut nginx = Proc::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("nginx-error.log")),
        d.join("nginx.log"),
    )?;
    eventually("nginx listens", Duration::from_secs(10), || async {
        nginx_ready(ports.nginx_simple)
    })
    .await
    .with_context(|| std::fs::read_to_string(d.join("nginx-error.log")).unwrap_or_default())?;
    nginx.check_running()?;
    std::fs::write(config.join("egress.yaml"), mesh_config(d, &ports))?;
    // The egress gateway's client certificate and the CA it checks nginx with.
    let (gw_cert, gw_key) = ca.issue(&["egress-gateway.example.com"])?;
    std::fs::write(
        config.join("client-credential.yaml"),
        client_credential(&gw_cert, &gw_key, &ca.pem),
    )?;
    let work = d.join("work");
    std::fs::create_dir_all(&work)?;
    let mastd = Mastd::start_with_ca(
        &config,
        &work,
        CaOptions {
            dir: d.join("citadel"),
            addr: None,
            workload_ttl: None,
        },
    )
    .await?;
    check(SidecarKind::Envoy, &mastd, &work, &ports).await?;
    check(SidecarKind::Mast, &mastd, &work, &ports).await?;
    nginx.check_running()?;
    Ok(())
}

fn nginx_ready(port: u16) -> Result<()> {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .map(|_| ())
        .context("connect")
}

/// The value of the `/stats` line starting with `prefix` (`name: `), 0 when absent.
fn counter(stats: &str, prefix: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The Secret a DestinationRule's `credentialName` names, in the egress gateway's namespace.
fn client_credential(cert: &str, key: &str, ca: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: client-credential, namespace: istio-system}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}  ca.crt: |\n{}",
        indent(cert),
        indent(key),
        indent(ca)
    )
}
