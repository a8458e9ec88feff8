//! The threat model's claims (docs/security.md), proven.
//!
//! 1. citadel refuses abusive certificate requests with a clear gRPC status: a CSR with a
//!    second SAN or a DNS SAN (PERMISSION_DENIED), a lifetime over the maximum and an
//!    oversized CSR (INVALID_ARGUMENT, as Istio's TTL_ERROR / CSRError), a request message
//!    over 64 KiB (OUT_OF_RANGE, tonic's code for a message over the decoding limit), no or a forged credential (UNAUTHENTICATED). (A
//!    TokenReview for another audience is refused by `mast_kube::tokenreview`'s unit tests,
//!    which need an API server; citadel maps it to UNAUTHENTICATED.)
//! 2. STRICT mTLS in pods mode, with real network namespaces and the injected iptables
//!    capture (as tests/tests/capture.rs): a pod without a sidecar connecting straight to
//!    the app port of a meshed pod is captured to :15006 and refused; plaintext to :15006
//!    itself is refused; a port no Service declares (the inbound passthrough chain) is
//!    refused too; the meshed client gets through over mTLS. And what STRICT does not
//!    cover, shown so the docs do not overclaim: the pod's own processes reach the app on
//!    localhost without the sidecar.
//!
//! The pods test needs root, `ip`, iptables, `setpriv`, `curl` and `python3`; otherwise it
//! prints `security_model: SKIPPED: <reason>` (a failure under `MAST_REQUIRE_NETNS=1`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mast_e2e::pods::{Lab, PROXY_UID, Pod, app, injected_init, proxy_binary, skip_reason};
use mast_e2e::{CaOptions, Mastd, Proc, eventually, free_port};
use mast_proxy::identity::{CaClient, IdentityConfig, IdentityError, IstioCa};

const ME: &str = "spiffe://cluster.local/ns/default/sa/user";

fn csr(sans: Vec<rcgen::SanType>) -> Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = sans;
    Ok(p.serialize_request(&key)?.pem()?)
}

fn uri(id: &str) -> Result<rcgen::SanType> {
    Ok(rcgen::SanType::URI(id.to_string().try_into()?))
}

/// The gRPC status citadel answered, or a failure if it signed.
async fn refused(ca: &IstioCa, csr: String) -> Result<tonic::Status> {
    match ca.sign(csr, None).await {
        Ok(_) => bail!("citadel signed it"),
        Err(IdentityError::Refused(status)) => Ok(status),
        Err(e) => bail!("not a refusal but {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citadel_refuses_abusive_requests() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let mastd = Mastd::start_with_ca(
        &config,
        dir.path(),
        CaOptions {
            dir: dir.path().join("ca"),
            addr: None,
            workload_ttl: None,
        },
    )
    .await?;
    let ca = mastd.ca.clone().context("ca")?;
    let token = dir.path().join("token");
    ca.credential("default", "user", &token)?;
    let client = |ttl: Option<Duration>, token: &Path| {
        IstioCa::new(IdentityConfig {
            ca_address: ca.addr.to_string(),
            root_cert: ca.root_cert(),
            token_file: token.to_path_buf(),
            ttl,
        })
    };
    let good = client(None, &token);
    // The baseline: its own identity, one URI SAN, is signed.
    good.sign(csr(vec![uri(ME)?])?, None)
        .await
        .context("a well-formed CSR")?;

    let mut rows = Vec::new();
    let mut expect = |what: &str, status: tonic::Status, code: tonic::Code, says: &str| {
        rows.push(format!(
            "{what}: {:?} {:?}",
            status.code(),
            status.message()
        ));
        ensure!(
            status.code() == code && status.message().contains(says),
            "{what}: want {code:?} containing {says:?}, got {status:?}"
        );
        Ok(())
    };
    let two = csr(vec![
        uri(ME)?,
        uri("spiffe://cluster.local/ns/istio-system/sa/istiod")?,
    ])?;
    expect(
        "two URI SANs",
        refused(&good, two).await?,
        tonic::Code::PermissionDenied,
        "istio-system/sa/istiod",
    )?;
    let dns = csr(vec![
        uri(ME)?,
        rcgen::SanType::DnsName("kubernetes.default.svc".try_into()?),
    ])?;
    expect(
        "a DNS SAN",
        refused(&good, dns).await?,
        tonic::Code::PermissionDenied,
        "DNS:kubernetes.default.svc",
    )?;
    expect(
        "no SAN",
        refused(&good, csr(vec![])?).await?,
        tonic::Code::PermissionDenied,
        "may not have a certificate",
    )?;
    let huge = client(Some(Duration::from_secs(100 * 365 * 86400)), &token);
    expect(
        "a 100-year TTL",
        refused(&huge, csr(vec![uri(ME)?])?).await?,
        tonic::Code::InvalidArgument,
        "is greater than the max allowed TTL",
    )?;
    let mut big = csr(vec![uri(ME)?])?;
    big.push_str(&"X".repeat(40 * 1024));
    expect(
        "a 40 KiB CSR",
        refused(&good, big).await?,
        tonic::Code::InvalidArgument,
        "byte limit",
    )?;
    let mut huge_msg = csr(vec![uri(ME)?])?;
    huge_msg.push_str(&"X".repeat(1024 * 1024));
    expect(
        "a 1 MiB request",
        refused(&good, huge_msg).await?,
        tonic::Code::OutOfRange,
        "the limit is: 65536 bytes",
    )?;
    let forged = dir.path().join("forged");
    let text = std::fs::read_to_string(&token)?;
    // Flip one character in the middle of the token (its signature no longer verifies).
    let mid = text.len() / 2;
    let flipped = if &text[mid..=mid] == "A" { "B" } else { "A" };
    std::fs::write(
        &forged,
        format!("{}{flipped}{}", &text[..mid], &text[mid + 1..]),
    )?;
    expect(
        "a forged credential",
        refused(&client(None, &forged), csr(vec![uri(ME)?])?).await?,
        tonic::Code::Unauthenticated,
        "",
    )?;
    // Still serving after all that.
    good.sign(csr(vec![uri(ME)?])?, None)
        .await
        .context("a well-formed CSR after the abuse")?;
    for r in rows {
        eprintln!("citadel refused {r}");
    }
    Ok(())
}

const VIP: &str = "10.96.0.10";

const MESH: &str = r#"apiVersion: v1
kind: Service
metadata: {name: user, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: user}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: user-1, namespace: default}
spec:
  address: @USER@
  labels: {app: user, security.istio.io/tlsMode: istio}
  serviceAccount: user
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"#;

/// mast-proxy as the pod's injected sidecar with a workload identity: in its namespace, as
/// UID/GID 1337, REDIRECT mode, certificates from citadel.
#[allow(clippy::too_many_arguments)]
fn sidecar(
    pod: &Pod,
    labels: &str,
    service_account: &str,
    proxy_bin: &Path,
    xds: SocketAddr,
    ca: SocketAddr,
    root: &Path,
    token: &Path,
    work: &Path,
) -> Result<Proc> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.ns, "setpriv"])
        .args([
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
        ])
        .arg(proxy_bin)
        .current_dir("/")
        .env("POD_NAME", pod.name)
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", &pod.ip)
        .env("SERVICE_ACCOUNT", service_account)
        .env("ISTIO_META_INTERCEPTION_MODE", "REDIRECT")
        .env("ISTIO_META_WORKLOAD_NAME", pod.name)
        .env(
            "PROXY_CONFIG",
            format!(r#"{{"discoveryAddress":"{xds}","terminationDrainDuration":"1s"}}"#),
        )
        .env("RUST_LOG", "info")
        .args(["--labels", labels, "--concurrency", "1"])
        .args(["--discovery-address", &xds.to_string()])
        .args(["--ca-address", &ca.to_string()])
        .arg("--ca-root-cert")
        .arg(root)
        .arg("--ca-token-file")
        .arg(token);
    Proc::spawn(
        &format!("mast-proxy {}", pod.name),
        &mut cmd,
        work.join(format!("mast-proxy-{}.log", pod.name)),
    )
}

/// `curl` in the pod: the HTTP code (0: no HTTP answer) and curl's exit code.
async fn probe(pod: &Pod, url: &str) -> Result<(u16, i32, String)> {
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &pod.ns, "curl", "-s", "--noproxy", "*"])
        .args(["--connect-timeout", "3", "--max-time", "5"])
        .args(["-o", "/dev/null", "-w", "%{http_code}", url])
        .kill_on_drop(true)
        .output()
        .await?;
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Ok((
        code,
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_in_pods() -> Result<()> {
    if let Some(reason) = skip_reason() {
        return skipped(reason);
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let work = dir.path().to_path_buf();
    let mut lab = Lab::new("sec", 202);
    if let Err(e) = lab.bridge() {
        return skipped(format!("cannot create a bridge: {e:#}"));
    }
    let client = match lab.pod("client", "c", 10) {
        Ok(p) => p,
        Err(e) => return skipped(format!("cannot create a network namespace: {e:#}")),
    };
    let user = lab.pod("user-1", "u", 11)?;
    let rogue = lab.pod("rogue", "r", 12)?;
    lab.hosts(
        &client,
        &format!("127.0.0.1 localhost\n{VIP} user user.default.svc.cluster.local\n"),
    )?;
    let mut procs = Vec::new();
    let result = pods_scenario(&lab, &client, &user, &rogue, &work, &mut procs, started).await;
    if let Err(e) = &result {
        eprintln!("security_model: FAILED: {e:#}");
        for (name, log) in procs
            .iter()
            .map(|p| (p.name.clone(), p.log.clone()))
            .chain([("mastd".to_string(), work.join("mastd.log"))])
        {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- {name} log ----\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
    drop(procs);
    drop(lab);
    result
}

async fn pods_scenario(
    lab: &Lab,
    client: &Pod,
    user: &Pod,
    rogue: &Pod,
    work: &Path,
    procs: &mut Vec<Proc>,
    started: Instant,
) -> Result<()> {
    // The apps: user's on :8080 (its Service port's target) and :9000 (no Service).
    procs.push(app(user, 8080, "user", work)?);
    procs.push(app(user, 9000, "undeclared", work)?);
    let direct = format!("http://{}:8080/", user.ip);
    eventually(
        "rogue reaches user before capture",
        Duration::from_secs(10),
        || async {
            let (code, _, _) = probe(rogue, &direct).await?;
            ensure!(code == 200, "{code}");
            Ok(())
        },
    )
    .await?;

    injected_init(client, "client", &[], work)?;
    injected_init(user, "user", &[], work)?;

    let config = work.join("config");
    std::fs::create_dir(&config)?;
    std::fs::write(config.join("mesh.yaml"), MESH.replace("@USER@", &user.ip))?;
    let xds: SocketAddr = format!("{}:{}", lab.gateway(), free_port()).parse()?;
    let ca_addr: SocketAddr = format!("{}:{}", lab.gateway(), free_port()).parse()?;
    let http_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mastd = Mastd::launch(
        &config,
        work,
        xds,
        http_addr,
        Some(CaOptions {
            dir: work.join("ca"),
            addr: Some(ca_addr),
            workload_ttl: None,
        }),
    )
    .await?;
    let ca = mastd.ca.clone().context("ca")?;

    // Credentials and the root where UID 1337 can read them.
    let proxy_bin = proxy_binary(work)?;
    let public = work.join("public");
    std::fs::create_dir_all(&public)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755))?;
    let root = public.join("root-cert.pem");
    std::fs::copy(ca.root_cert(), &root)?;
    let mut sidecars = Vec::new();
    for (pod, labels, sa) in [(client, "app=client", "client"), (user, "app=user", "user")] {
        let token = public.join(format!("token-{}", pod.name));
        ca.credential("default", sa, &token)?;
        for f in [&token, &root] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))?;
        }
        procs.push(sidecar(
            pod, labels, sa, &proxy_bin, xds, ca_addr, &root, &token, work,
        )?);
        sidecars.push(pod);
    }
    let http = mast_e2e::HttpClient::new();
    for pod in sidecars {
        let url = format!("http://{}:15021/healthz/ready", pod.ip);
        eventually(
            &format!("{}'s sidecar is ready", pod.name),
            Duration::from_secs(30),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let (status, body) = http.get(&url, None, &[]).await?;
                    ensure!(status == 200, "{status}: {body}");
                    Ok(())
                }
            },
        )
        .await?;
    }

    // The meshed client, by name: captured out, mTLS to user's sidecar, in.
    eventually(
        "client reaches user over mTLS",
        Duration::from_secs(30),
        || async {
            let (code, _, err) = probe(client, "http://user/").await?;
            ensure!(code == 200, "{code} {err}");
            Ok(())
        },
    )
    .await?;
    let mut rows = vec!["client (sidecar) → http://user/: 200 over mTLS".to_string()];

    // Every plaintext way in from a pod without a sidecar is refused.
    for (what, url) in [
        (
            "app port 8080 (captured to 15006)",
            format!("http://{}:8080/", user.ip),
        ),
        ("15006 itself", format!("http://{}:15006/", user.ip)),
        (
            "undeclared port 9000 (inbound passthrough)",
            format!("http://{}:9000/", user.ip),
        ),
    ] {
        let (code, exit, err) = probe(rogue, &url).await?;
        ensure!(
            code == 0,
            "rogue → user {what}: got HTTP {code} under STRICT ({err})"
        );
        rows.push(format!(
            "rogue (no sidecar) → user {what}: refused (curl exit {exit})"
        ));
    }
    // Refused by a closed connection, not by a proxy dialling itself until it runs out of
    // file descriptors (what an inbound passthrough without 127.0.0.6 does).
    let user_log = std::fs::read_to_string(work.join(format!("mast-proxy-{}.log", user.name)))?;
    ensure!(
        !user_log.contains("Too many open files"),
        "user's sidecar looped on a refused connection"
    );
    // The user sidecar counted no plaintext request.
    let stats = http
        .get(
            &format!("http://{}:15090/stats/prometheus", user.ip),
            None,
            &[],
        )
        .await?
        .1;
    let plain: f64 = stats
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("connection_security_policy=\"none\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(plain == 0.0, "user's sidecar served plaintext:\n{stats}");

    // Not covered by STRICT (documented): the pod's own processes reach the app on
    // localhost, without the sidecar.
    let (code, _, err) = probe(user, "http://127.0.0.1:8080/").await?;
    ensure!(code == 200, "user → its own app on localhost: {code} {err}");
    rows.push("user's own process → 127.0.0.1:8080: 200 (not captured; outside STRICT)".into());
    for r in rows {
        eprintln!("security_model: {r}");
    }
    eprintln!("security_model: pods scenario in {:?}", started.elapsed());
    drop(mastd);
    Ok(())
}

fn skipped(reason: String) -> Result<()> {
    if std::env::var_os("MAST_REQUIRE_NETNS").is_some() {
        bail!("security_model cannot run ({reason}) and MAST_REQUIRE_NETNS is set");
    }
    writeln!(std::io::stderr(), "security_model: SKIPPED: {reason}")?;
    Ok(())
}
