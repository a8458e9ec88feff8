//! Mesh mTLS end to end: citadel in mastd issues SPIFFE certificates, sidecars (mast-proxy
//! and a real Envoy fed by SDS) talk mutual TLS, PeerAuthentication and AuthorizationPolicy
//! are enforced, certificates rotate under load, and citadel refuses a CSR for someone
//! else's identity.
//!
//! "Pods" share loopback in NONE interception mode: the client at 127.0.0.1 (its outbound
//! listener on 127.0.0.1:<service port>), a second client at 127.0.0.2 (a Sidecar binds its
//! egress there), and `user-v1` at 127.0.0.11, whose sidecar binds the inbound port on its
//! instance IP (a Sidecar `ingress`) and forwards to the app on 127.0.0.1.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mast_e2e::prometheus::sum_samples;
use mast_e2e::{
    Backend, CaOptions, HttpClient, Load, Mastd, PodSpec, Sidecar, SidecarKind, eventually,
    free_port, send_requests,
};

const CLIENT: PodSpec<'static> = PodSpec {
    name: "client-1",
    namespace: "default",
    labels: &[("app", "client")],
    service_account: "client",
};
const OTHER: PodSpec<'static> = PodSpec {
    name: "other-1",
    namespace: "default",
    labels: &[("app", "other")],
    service_account: "other",
};
const SERVER: PodSpec<'static> = PodSpec {
    name: "user-v1-1",
    namespace: "default",
    labels: &[("app", "user"), ("version", "v1")],
    service_account: "user",
};
const SERVER_IP: &str = "127.0.0.11";
const OTHER_IP: &str = "127.0.0.2";

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/user";

struct Mesh {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    mastd: Mastd,
    client: Sidecar,
    server: Sidecar,
    other: Option<Sidecar>,
    port: u16,
    inbound: u16,
    _backend: Backend,
}

impl Mesh {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    fn other_url(&self, path: &str) -> String {
        format!("http://{OTHER_IP}:{}{path}", self.port)
    }
}

struct Setup<'a> {
    client: SidecarKind,
    server: SidecarKind,
    /// More mesh YAML (policies).
    extra: &'a str,
    with_other: bool,
    workload_ttl: Option<&'static str>,
    /// The Service port's name, which gives its protocol (`http`, or `tcp` for opaque TCP
    /// from the client's sidecar).
    port_name: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            client: SidecarKind::Mast,
            server: SidecarKind::Mast,
            extra: "",
            with_other: false,
            workload_ttl: None,
            port_name: "http",
        }
    }
}

fn mesh_yaml(port: u16, inbound: u16, backend: u16, extra: &str, port_name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: {port_name}, port: {port}, targetPort: {inbound}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v1-1, namespace: default}}
spec:
  address: {SERVER_IP}
  labels: {{app: user, version: v1, security.istio.io/tlsMode: istio}}
  serviceAccount: user
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: user, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: user}}}}
  ingress:
  - port: {{number: {inbound}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{backend}
  egress:
  - hosts: ["nowhere/*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: other, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: other}}}}
  egress:
  - bind: {OTHER_IP}
    hosts: ["./*"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
{extra}"#
    )
}

async fn mesh(setup: Setup<'_>) -> Result<Mesh> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let backend = Backend::start("v1").await?;
    let port = free_port();
    let inbound = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        mesh_yaml(port, inbound, backend.port, setup.extra, setup.port_name),
    )?;
    let mastd = Mastd::start_with_ca(
        &config,
        dir.path(),
        CaOptions {
            dir: dir.path().join("ca"),
            addr: None,
            workload_ttl: setup.workload_ttl,
        },
    )
    .await?;
    let server =
        Sidecar::start_secure(setup.server, &SERVER, SERVER_IP, &mastd, dir.path()).await?;
    let client =
        Sidecar::start_secure(setup.client, &CLIENT, "127.0.0.1", &mastd, dir.path()).await?;
    let other = if setup.with_other {
        Some(Sidecar::start_secure(SidecarKind::Mast, &OTHER, OTHER_IP, &mastd, dir.path()).await?)
    } else {
        None
    };
    let m = Mesh {
        dir,
        config,
        mastd,
        client,
        server,
        other,
        port,
        inbound,
        _backend: backend,
    };
    let http = HttpClient::new();
    let url = m.url("/");
    eventually(
        "user answers through both sidecars over mTLS",
        Duration::from_secs(30),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let (status, body) = http.get(&url, Some("user"), &[]).await?;
                ensure!(status == 200 && body == "v1", "{status}: {body}");
                Ok(())
            }
        },
    )
    .await
    .with_context(|| {
        format!(
            "server log:\n{}\nclient log:\n{}",
            m.server.proc.log_text(),
            m.client.proc.log_text()
        )
    })?;
    Ok(m)
}

/// A plaintext request straight to the server sidecar's inbound port.
async fn plaintext_to_server(m: &Mesh) -> Result<(u16, String)> {
    let (status, body) = HttpClient::new()
        .get(
            &format!("http://{SERVER_IP}:{}/", m.inbound),
            Some("user"),
            &[],
        )
        .await?;
    Ok((status.as_u16(), body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_refuses_plaintext_and_reports_principals() -> Result<()> {
    let m = mesh(Setup::default()).await?;
    let tally = send_requests(&m.url("/"), "user", &[], 200, 4).await;
    ensure!(tally.failures() == 0, "{tally:?}");

    match plaintext_to_server(&m).await {
        Ok((status, body)) => bail!("plaintext got an answer under STRICT: {status} {body}"),
        Err(e) => eprintln!("plaintext refused as expected: {e:#}"),
    }

    let text = m.server.prometheus().await?;
    let mtls = sum_samples(
        &text,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", CLIENT_ID),
            ("destination_principal", SERVER_ID),
            ("response_code", "200"),
        ],
    );
    ensure!(
        mtls >= 200.0,
        "server counted {mtls} mTLS requests:\n{text}"
    );
    let plain = sum_samples(
        &text,
        "istio_requests_total",
        &[("connection_security_policy", "none")],
    );
    ensure!(plain == 0.0, "plaintext requests were served:\n{text}");
    Ok(())
}

/// Opaque TCP over mTLS: the client's sidecar reports `istio_tcp_*` with the server named
/// by its certificate (principal, as Istio's client side reads the upstream's SAN) and by
/// the endpoint's `istio.workload` metadata from EDS (workload, namespace, app, version,
/// canonical names: TCP has no metadata exchange), and its own principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_through_mtls_names_both_principals() -> Result<()> {
    let m = mesh(Setup {
        port_name: "tcp",
        ..Default::default()
    })
    .await?;
    let tally = send_requests(&m.url("/"), "user", &[], 20, 2).await;
    ensure!(tally.failures() == 0, "{tally:?}");
    let want = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("source_principal", CLIENT_ID),
        ("destination_principal", SERVER_ID),
        ("destination_workload_namespace", "default"),
        ("destination_service", "user.default.svc.cluster.local"),
        ("destination_workload", "user-v1-1"),
        ("destination_app", "user"),
        ("destination_version", "v1"),
        ("destination_canonical_service", "user"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "Kubernetes"),
    ];
    let text = eventually(
        "the client's TCP connections counted",
        Duration::from_secs(10),
        || async {
            let text = m.client.prometheus().await?;
            let opened = sum_samples(&text, "istio_tcp_connections_opened_total", &want);
            let sent = sum_samples(&text, "istio_tcp_sent_bytes_total", &want);
            ensure!(
                opened >= 1.0 && sent > 0.0,
                "opened {opened}, sent {sent}:\n{text}"
            );
            Ok(text)
        },
    )
    .await?;
    // No HTTP was seen on the client side: the port is opaque TCP there.
    let http = sum_samples(&text, "istio_requests_total", &[("reporter", "source")]);
    ensure!(http == 0.0, "client counted {http} HTTP requests:\n{text}");
    Ok(())
}

/// HTTP to a workload without a sidecar: no metadata exchange header comes back, so the
/// client's sidecar names the server from the picked endpoint's `istio.workload` metadata
/// (EDS), as Istio's does — workload, app, version and canonical names instead of `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_a_workload_without_sidecar_is_named_from_eds() -> Result<()> {
    let plain = Backend::start("plain").await?;
    let plain_port = free_port();
    let extra = format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: plain, namespace: default}}
spec:
  selector: {{app: plain}}
  ports:
  - {{name: http, port: {plain_port}, targetPort: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: plain-v3, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: plain, version: v3}}
  ports: {{web: {backend}}}
"#,
        backend = plain.port
    );
    let m = mesh(Setup {
        extra: &extra,
        ..Default::default()
    })
    .await?;
    let url = format!("http://127.0.0.1:{plain_port}/");
    let want = [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_service_name", "plain"),
        ("destination_workload", "plain-v3"),
        ("destination_workload_namespace", "default"),
        ("destination_app", "plain"),
        ("destination_version", "v3"),
        ("destination_canonical_service", "plain"),
        ("destination_canonical_revision", "v3"),
        ("response_code", "200"),
    ];
    eventually(
        "the client names the sidecar-less server",
        Duration::from_secs(20),
        || async {
            let tally = send_requests(&url, "plain", &[], 10, 2).await;
            ensure!(tally.failures() == 0, "{tally:?}");
            let text = m.client.prometheus().await?;
            let named = sum_samples(&text, "istio_requests_total", &want);
            ensure!(
                named >= 10.0,
                "{named} requests named:\n{}",
                text.lines()
                    .filter(|l| l.starts_with("istio_requests_total"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_both() -> Result<()> {
    let extra = r#"---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: user, namespace: default}
spec:
  selector: {matchLabels: {app: user}}
  mtls: {mode: PERMISSIVE}
"#;
    let m = mesh(Setup {
        extra,
        ..Setup::default()
    })
    .await?;
    let (status, body) = plaintext_to_server(&m).await?;
    ensure!(
        status == 200 && body == "v1",
        "plaintext under PERMISSIVE: {status} {body}"
    );
    let (status, _) = HttpClient::new()
        .get(&m.url("/"), Some("user"), &[])
        .await?;
    ensure!(status == 200);
    let text = m.server.prometheus().await?;
    let mtls = sum_samples(
        &text,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    let plain = sum_samples(
        &text,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "none"),
        ],
    );
    ensure!(
        mtls >= 1.0 && plain >= 1.0,
        "mtls {mtls}, plaintext {plain}:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_deny_path_and_allow_one_service_account() -> Result<()> {
    let extra = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: user}}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: default}
spec:
  selector: {matchLabels: {app: user}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/client"]}
"#;
    let m = mesh(Setup {
        extra,
        with_other: true,
        ..Setup::default()
    })
    .await?;
    let http = HttpClient::new();
    let (status, body) = http.get(&m.url("/"), Some("user"), &[]).await?;
    ensure!(status == 200 && body == "v1", "client /: {status} {body}");
    let (status, body) = http.get(&m.url("/admin/users"), Some("user"), &[]).await?;
    ensure!(
        status == 403 && body == "RBAC: access denied",
        "client /admin: {status} {body}"
    );
    let (status, body) = http.get(&m.other_url("/"), Some("user"), &[]).await?;
    ensure!(
        status == 403 && body == "RBAC: access denied",
        "other /: {status} {body}"
    );
    ensure!(m.other.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_for_another_identity_is_refused() -> Result<()> {
    let m = mesh(Setup::default()).await?;
    let ca = m.mastd.ca.as_ref().context("ca")?;
    let token = m.dir.path().join("token-client-1");
    let mut cfg = mast_proxy::identity::IdentityConfig {
        ca_address: ca.addr.to_string(),
        root_cert: ca.root_cert(),
        token_file: token.clone(),
        ttl: None,
    };
    let istio_ca = |cfg: &mast_proxy::identity::IdentityConfig| {
        mast_proxy::identity::IstioCa::new(cfg.clone())
    };
    match mast_proxy::identity::fetch(&istio_ca(&cfg), SERVER_ID, None).await {
        Err(mast_proxy::identity::IdentityError::Refused(status)) => {
            ensure!(
                status.code() == tonic::Code::PermissionDenied,
                "refused with {status:?}"
            );
        }
        Ok(c) => bail!("citadel issued {} to the client's credential", c.spiffe),
        Err(e) => bail!("unexpected error: {e}"),
    }
    ensure!(
        m.mastd.proc.log_text().contains(SERVER_ID),
        "the refusal is not logged:\n{}",
        m.mastd.proc.log_text()
    );
    // The same credential gets its own identity.
    let own = mast_proxy::identity::fetch(&istio_ca(&cfg), CLIENT_ID, None).await?;
    ensure!(own.spiffe == CLIENT_ID);
    // No credential at all.
    cfg.token_file = m.dir.path().join("no-such-token");
    ensure!(
        mast_proxy::identity::fetch(&istio_ca(&cfg), CLIENT_ID, None)
            .await
            .is_err()
    );
    // mastd's /metrics counts them under Istio's citadel names.
    let (_, text) = HttpClient::new()
        .get(&format!("http://{}/metrics", m.mastd.http_addr), None, &[])
        .await?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    ensure!(
        value("citadel_server_id_extraction_err_count") == 1.0,
        "refusals:\n{text}"
    );
    // The two sidecars and the client's own identity.
    ensure!(
        value("citadel_server_success_cert_issuance_count") >= 3.0,
        "issued:\n{text}"
    );
    ensure!(
        value("citadel_server_root_cert_expiry_timestamp") > 1.7e9,
        "{text}"
    );
    Ok(())
}

async fn interop(client: SidecarKind, server: SidecarKind) -> Result<()> {
    let m = mesh(Setup {
        client,
        server,
        ..Setup::default()
    })
    .await?;
    let tally = send_requests(&m.url("/"), "user", &[], 100, 2).await;
    ensure!(tally.failures() == 0, "{client} -> {server}: {tally:?}");
    if plaintext_to_server(&m).await.is_ok_and(|(s, _)| s == 200) {
        bail!("{server} served plaintext under STRICT");
    }
    let (side, reporter, principal) = match server {
        SidecarKind::Mast => (&m.server, "destination", CLIENT_ID),
        SidecarKind::Envoy => (&m.client, "source", SERVER_ID),
    };
    if side.kind == SidecarKind::Mast && reporter == "destination" {
        let text = side.prometheus().await?;
        let n = sum_samples(
            &text,
            "istio_requests_total",
            &[
                ("reporter", reporter),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", principal),
            ],
        );
        ensure!(n >= 100.0, "{n} mTLS requests from {client}:\n{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_client_to_mast_proxy_server_over_mtls() -> Result<()> {
    interop(SidecarKind::Envoy, SidecarKind::Mast).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mast_proxy_client_to_envoy_server_over_mtls() -> Result<()> {
    interop(SidecarKind::Mast, SidecarKind::Envoy).await
}

/// Certificates live 60 s; for 3 minutes, every request must succeed while each proxy
/// renews several times. Connections are recycled every 20 requests so new handshakes
/// keep happening with whichever certificate is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_failures() -> Result<()> {
    let extra = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: user, namespace: default}
spec:
  host: user.default.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http: {maxRequestsPerConnection: 20}
"#;
    let m = mesh(Setup {
        extra,
        workload_ttl: Some("60s"),
        ..Setup::default()
    })
    .await?;
    let secs = std::env::var("MAST_ROTATION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180u64);
    let load = Load::start(&m.url("/"), "user", 4);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let seen = load.finish().await;
    let failed: Vec<String> = seen
        .iter()
        .filter_map(|(_, r)| match r {
            Ok((s, _)) if s.as_u16() == 200 => None,
            Ok((s, body)) => Some(format!("{s} {body}")),
            Err(e) => Some(format!("{e:#}")),
        })
        .collect();
    eprintln!(
        "rotation: {} requests, {} failed over {secs}s",
        seen.len(),
        failed.len()
    );
    ensure!(
        seen.len() > 1000,
        "too little traffic: {} requests",
        seen.len()
    );
    ensure!(
        failed.is_empty(),
        "{} failed requests during rotation, first: {:?}",
        failed.len(),
        failed.first()
    );
    let issued = |p: &Sidecar| {
        p.proc
            .log_text()
            .matches("workload certificate issued")
            .count()
    };
    let (c, s) = (issued(&m.client), issued(&m.server));
    let want = (secs / 30).saturating_sub(1).max(2) as usize;
    ensure!(
        c >= want && s >= want,
        "certificates issued: client {c}, server {s}; expected at least {want} each"
    );
    Ok(())
}

/// citadel goes away: proxies keep serving with what they hold. It comes back on the same
/// directory with the same root, and issues again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citadel_restart_keeps_the_root_and_traffic() -> Result<()> {
    let mut m = mesh(Setup::default()).await?;
    let ca = m.mastd.ca.clone().context("ca")?;
    let root_before = std::fs::read(ca.root_cert())?;
    m.mastd.proc.signal(libc::SIGTERM)?;
    m.mastd.proc.wait_exit(Duration::from_secs(10))?;
    let tally = send_requests(&m.url("/"), "user", &[], 100, 2).await;
    ensure!(tally.failures() == 0, "while citadel is down: {tally:?}");

    let restarted = Mastd::launch(
        &m.config,
        m.dir.path(),
        m.mastd.xds_addr,
        m.mastd.http_addr,
        Some(CaOptions {
            dir: ca.dir.clone(),
            addr: Some(ca.addr),
            workload_ttl: None,
        }),
    )
    .await?;
    let root_after = std::fs::read(ca.root_cert())?;
    ensure!(
        root_before == root_after,
        "the root changed across a restart"
    );
    // A workload started after the restart gets a certificate that chains to the same root
    // the running proxies trust.
    let ca = mast_proxy::identity::IstioCa::new(mast_proxy::identity::IdentityConfig {
        ca_address: ca.addr.to_string(),
        root_cert: ca.root_cert(),
        token_file: m.dir.path().join("token-client-1"),
        ttl: None,
    });
    let cert = mast_proxy::identity::fetch(&ca, CLIENT_ID, None).await?;
    ensure!(cert.spiffe == CLIENT_ID);
    let tally = send_requests(&m.url("/"), "user", &[], 100, 2).await;
    ensure!(tally.failures() == 0, "after the restart: {tally:?}");
    m.mastd = restarted;
    Ok(())
}
