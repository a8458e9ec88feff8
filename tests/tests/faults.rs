//! Faults (issue 21 §4): what the mesh does when a part of it dies or its storage goes away.
//! Each test injects one fault under live traffic through real mast-proxy sidecars configured
//! by a real mastd, counts failed requests, and prints its figures (`--nocapture`).
//!
//! - mastd SIGKILLed in the middle of a push to 20 sidecars: the sidecars keep serving the
//!   last config they accepted, reconnect when mastd returns on the same port, and converge.
//! - citadel unreachable across a renewal: the old certificate serves until the CA returns,
//!   then renewal resumes before it expires.
//! - the callee's sidecar SIGKILLed and restarted: Istio's default retry policy and outlier
//!   detection on the caller hide it (two callee replicas).
//! - the CA directory full or read-only: a clear error at start; a running CA keeps signing.
//! - the config folder gone (renamed away, its file system unmounted): last good kept, and
//!   changes are picked up when it returns.
//!
//! Mount faults need root (CI runs as root); without `mount` they are skipped unless
//! `MAST_REQUIRE_NETNS=1`, as the capture tests are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mast_e2e::prometheus::sum_samples;
use mast_e2e::{
    Backend, CaOptions, HttpClient, Load, Mastd, PodSpec, Seen, Sidecar, SidecarKind, eventually,
    free_port, send_requests, write_atomic,
};

fn failures(seen: &Seen) -> Vec<String> {
    seen.iter()
        .filter_map(|(_, r)| match r {
            Ok((s, _)) if s.as_u16() == 200 => None,
            Ok((s, body)) => Some(format!("{s} {body}")),
            Err(e) => Some(format!("{e:#}")),
        })
        .collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Can this process mount file systems (root with CAP_SYS_ADMIN)? Otherwise skip, unless the
/// run demands it.
fn can_mount(scratch: &Path) -> Result<bool> {
    let probe = scratch.join("mount-probe");
    std::fs::create_dir_all(&probe)?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&probe)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("umount").arg(&probe).status();
        return Ok(true);
    }
    if std::env::var_os("MAST_REQUIRE_NETNS").is_some() {
        bail!("cannot mount a tmpfs (need root with CAP_SYS_ADMIN), and MAST_REQUIRE_NETNS is set");
    }
    eprintln!("SKIP: cannot mount a tmpfs here");
    Ok(false)
}

/// A mount made by a test, lazily unmounted on drop (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path(at)?,
            ],
        )?;
        Ok(Self(at.to_path_buf()))
    }

    fn bind_read_only(at: &Path) -> Result<Self> {
        run("mount", &["--bind", path(at)?, path(at)?])?;
        let m = Self(at.to_path_buf());
        run("mount", &["-o", "remount,bind,ro", path(at)?])?;
        Ok(m)
    }

    /// Unmount now (lazily: open files keep the file system alive until closed).
    fn unmount(self) -> Result<()> {
        run("umount", &["-l", path(&self.0)?])?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd).args(args).output()?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (a) mastd SIGKILLed mid-push to 20 sidecars.

const FLEET: usize = 20;
/// Services added by the big change, so the push to each sidecar is large.
const BIG: usize = 150;

fn fleet_ip(i: usize) -> String {
    format!("127.0.1.{}", i + 1)
}

fn route(subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: user, namespace: default}}
spec:
  hosts: [user]
  http:
  - route:
    - destination: {{host: user, subset: {subset}}}
"#
    )
}

fn user_config(port: u16, v1: u16, v2: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: http, port: {port}, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user, version: v1}}
  ports: {{http: {v1}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v2, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user, version: v2}}
  ports: {{http: {v2}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: user, namespace: default}}
spec:
  host: user
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#
    )
}

/// One Sidecar resource per fleet pod: its outbound listeners bind the pod's own loopback
/// address, so 20 sidecars share the host's network without port clashes.
fn fleet_sidecars() -> String {
    (0..FLEET)
        .map(|i| {
            format!(
                r#"---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: fleet-{i}, namespace: default}}
spec:
  workloadSelector: {{labels: {{pod: fleet-{i}}}}}
  egress:
  - bind: {ip}
    hosts: ["./*"]
"#,
                ip = fleet_ip(i)
            )
        })
        .collect()
}

fn big_change(port: u16, backend: u16) -> String {
    (0..BIG)
        .map(|k| {
            format!(
                r#"---
apiVersion: v1
kind: Service
metadata: {{name: svc-{k}, namespace: default}}
spec:
  selector: {{app: svc-{k}}}
  ports:
  - {{name: http, port: {port}, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: svc-{k}, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: svc-{k}}}
  ports: {{http: {backend}}}
"#
            )
        })
        .collect()
}

/// Every proxy's acked version of each type, by node ID, from `/debug/syncz`.
async fn acked(mastd: &Mastd) -> Result<Vec<(String, String)>> {
    let syncz = mastd.debug_json("/debug/syncz").await?;
    Ok(syncz
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let id = p["proxy"]
                .as_str()
                .or_else(|| p["id"].as_str())
                .unwrap_or_default()
                .to_string();
            let acked: Vec<String> = p["types"]
                .as_object()
                .map(|types| {
                    types
                        .iter()
                        .map(|(t, st)| format!("{t}={}", st["acked_version"]))
                        .collect()
                })
                .unwrap_or_default();
            (id, acked.join(","))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mastd_sigkilled_mid_push_sidecars_keep_serving_and_converge() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let v1 = Backend::start("v1").await?;
    let v2 = Backend::start("v2").await?;
    let port = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        user_config(port, v1.port, v2.port) + &fleet_sidecars(),
    )?;
    std::fs::write(config.join("route.yaml"), route("v1"))?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let (xds, http_addr) = (mastd.xds_addr, mastd.http_addr);

    let started = Instant::now();
    let mut starting = Vec::new();
    for i in 0..FLEET {
        let work = dir.path().to_path_buf();
        starting.push(tokio::spawn(async move {
            let pod = PodSpec {
                name: leak(format!("fleet-{i}")),
                namespace: "default",
                labels: Box::leak(Box::new([
                    ("app", "fleet"),
                    ("pod", leak(format!("fleet-{i}"))),
                ])),
                service_account: "fleet",
            };
            Sidecar::start_kind(SidecarKind::Mast, &pod, &fleet_ip(i), xds, &work, true).await
        }));
    }
    let mut fleet = Vec::new();
    for s in starting {
        fleet.push(s.await??);
    }
    let urls: Vec<String> = (0..FLEET)
        .map(|i| format!("http://{}:{port}/", fleet_ip(i)))
        .collect();
    let all_route_to = |want: &'static str| {
        let urls = urls.clone();
        move || {
            let urls = urls.clone();
            async move {
                let http = HttpClient::new();
                for u in &urls {
                    let (s, body) = http.get(u, Some("user"), &[]).await?;
                    ensure!(s == 200 && body == want, "{u}: {s} {body}");
                }
                Ok(())
            }
        }
    };
    eventually(
        "all 20 sidecars route to v1",
        Duration::from_secs(60),
        all_route_to("v1"),
    )
    .await?;
    eprintln!(
        "fleet: {FLEET} sidecars ready and routing in {:?}",
        started.elapsed()
    );

    // Traffic through three of the sidecars for the whole fault.
    let loads: Vec<Load> = urls[..3]
        .iter()
        .map(|u| Load::start(u, "user", 2))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The big change: 150 services and the route to v2, in one edit.
    let before = acked(&mastd).await?;
    ensure!(
        before.len() == FLEET,
        "syncz lists {} proxies",
        before.len()
    );
    std::fs::write(config.join("big.yaml"), big_change(port, v1.port))?;
    write_atomic(&config.join("route.yaml"), &route("v2"))?;
    let edited = Instant::now();
    // Kill mastd as soon as the first proxy has ACKed the push: the rest are mid-push.
    let mut mastd = mastd;
    let updated_at_kill = loop {
        let now = acked(&mastd).await?;
        let updated = now.iter().filter(|p| !before.contains(p)).count();
        if updated > 0 || edited.elapsed() > Duration::from_secs(10) {
            mastd.proc.signal(libc::SIGKILL)?;
            mastd.proc.wait_exit(Duration::from_secs(5))?;
            break updated;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let killed = Instant::now();
    eprintln!(
        "mastd SIGKILLed {:?} after the edit, with {updated_at_kill}/{FLEET} proxies updated",
        killed - edited
    );

    // Down for 2 s: every sidecar still answers, with v1 or (if it got the push) v2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = HttpClient::new();
    let mut served = (0, 0);
    for u in &urls {
        let (s, body) = http.get(u, Some("user"), &[]).await?;
        ensure!(s == 200, "{u} while mastd is down: {s} {body}");
        if body == "v2" {
            served.1 += 1;
        } else {
            served.0 += 1;
        }
    }
    eprintln!(
        "mastd down: {} sidecars on the old config, {} on the new",
        served.0, served.1
    );

    let restarted = Instant::now();
    let mastd = Mastd::start_on(&config, dir.path(), xds, http_addr).await?;
    let ready = restarted.elapsed();
    eventually("all 20 sidecars reconnect", Duration::from_secs(60), || {
        let mastd = &mastd;
        async move {
            let n = acked(mastd).await?.len();
            ensure!(n == FLEET, "{n} proxies connected");
            Ok(())
        }
    })
    .await?;
    let reconnected = restarted.elapsed();
    eventually(
        "all 20 sidecars route to v2",
        Duration::from_secs(60),
        all_route_to("v2"),
    )
    .await?;
    let converged = restarted.elapsed();
    let mut seen = Vec::new();
    for l in loads {
        seen.extend(l.finish().await);
    }
    let failed = failures(&seen);
    eprintln!(
        "mastd restart: ready in {ready:?}, {FLEET} sidecars reconnected {reconnected:?} and \
         converged {converged:?} after it started; {} requests during the fault, {} failed",
        seen.len(),
        failed.len()
    );
    ensure!(seen.len() > 100, "too little traffic: {}", seen.len());
    ensure!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    drop(fleet);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mesh with citadel: a client and two replicas of `user`, mTLS STRICT.

const CLIENT: PodSpec<'static> = PodSpec {
    name: "client-1",
    namespace: "default",
    labels: &[("app", "client")],
    service_account: "client",
};
const USER_1: PodSpec<'static> = PodSpec {
    name: "user-1",
    namespace: "default",
    labels: &[("app", "user"), ("version", "v1"), ("pod", "user-1")],
    service_account: "user",
};
const USER_2: PodSpec<'static> = PodSpec {
    name: "user-2",
    namespace: "default",
    labels: &[("app", "user"), ("version", "v1"), ("pod", "user-2")],
    service_account: "user",
};
const USER_IPS: [&str; 2] = ["127.0.0.11", "127.0.0.12"];

fn secure_yaml(port: u16, inbound: u16, backend: u16, extra: &str) -> String {
    let entries: String = USER_IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-{n}, namespace: default}}
spec:
  address: {ip}
  labels: {{app: user, version: v1, security.istio.io/tlsMode: istio}}
  serviceAccount: user
"#,
                n = i + 1
            )
        })
        .collect();
    // One Sidecar per replica, binding its inbound port on the replica's own address
    // explicitly (without `bind` it is the proxy's IP too; pilot's unit test
    // `look_alike_replicas_bind_their_own_address` covers that case).
    let sidecars: String = USER_IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                r#"---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: user-{n}, namespace: default}}
spec:
  workloadSelector: {{labels: {{pod: user-{n}}}}}
  ingress:
  - port: {{number: {inbound}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{backend}
    bind: {ip}
  egress:
  - hosts: ["nowhere/*"]
"#,
                n = i + 1
            )
        })
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {{app: user}}
  ports:
  - {{name: http, port: {port}, targetPort: {inbound}}}
{entries}{sidecars}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
{extra}"#
    )
}

struct SecureMesh {
    dir: tempfile::TempDir,
    mastd: Mastd,
    client: Sidecar,
    users: Vec<Option<Sidecar>>,
    url: String,
    _backend: Backend,
}

/// A TCP relay in front of citadel that can be switched off: it then refuses new
/// connections and cuts the ones open, as an unreachable CA would look to a proxy.
struct Switch {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Switch {
    async fn start(target: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let up_c = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up_c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                // Only cuts after this connection was accepted end it.
                cut_rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Ok(Self { addr, up, cut })
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

/// Requests a sidecar received as the destination.
async fn served(p: &Sidecar) -> Result<f64> {
    let text = p.prometheus().await?;
    Ok(sum_samples(
        &text,
        "istio_requests_total",
        &[("reporter", "destination")],
    ))
}

fn issued(p: &Sidecar) -> usize {
    p.proc
        .log_text()
        .matches("workload certificate issued")
        .count()
}

fn refused_renewals(p: &Sidecar) -> usize {
    p.proc
        .log_text()
        .matches("certificate request failed; keeping the current certificate")
        .count()
}

// ---------------------------------------------------------------------------------------------
// (b) citadel unreachable across a renewal.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citadel_unreachable_across_a_renewal() -> Result<()> {
    // New connections every 20 requests: handshakes keep using the certificate in service.
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
    // The relay needs citadel's address, which mastd picks at start: start the relay on a
    // placeholder and point it after (a relay to a closed port refuses like a dead CA).
    let ca_port = free_port();
    let ca_addr: SocketAddr = ([127, 0, 0, 1], ca_port).into();
    let switch = Switch::start(ca_addr).await?;
    let m = secure_mesh(extra, Some("30s"), Some((ca_addr, &switch))).await?;
    let proxies: Vec<&Sidecar> = std::iter::once(&m.client)
        .chain(m.users.iter().flatten())
        .collect();
    let load = Load::start(&m.url, "user", 4);
    // All three proxies got their first certificate at start; each renews at ~15 s, half
    // its life. The CA is away from now until every proxy has failed a renewal, and back
    // well before the first certificate expires.
    switch.set(false);
    let down = Instant::now();
    eventually(
        "every proxy has tried to renew and failed",
        Duration::from_secs(20),
        || async {
            for p in &proxies {
                ensure!(
                    refused_renewals(p) >= 1,
                    "{} has not tried yet",
                    p.proc.name
                );
            }
            Ok(())
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outage = down.elapsed();
    let issued_before: Vec<usize> = proxies.iter().map(|p| issued(p)).collect();
    switch.set(true);
    let up = Instant::now();
    eventually("renewal resumes", Duration::from_secs(10), || {
        let (proxies, issued_before) = (&proxies, &issued_before);
        async move {
            for (p, n) in proxies.iter().zip(issued_before.iter()) {
                ensure!(issued(p) > *n, "{} has not renewed", p.proc.name);
            }
            Ok(())
        }
    })
    .await
    .with_context(|| {
        let log = m.client.proc.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("identity")).collect();
        format!(
            "client's identity log:\n{}",
            lines[lines.len().saturating_sub(12)..].join("\n")
        )
    })?;
    let renewed = up.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = load.finish().await;
    let failed = failures(&seen);
    let attempts: Vec<usize> = proxies.iter().map(|p| refused_renewals(p)).collect();
    eprintln!(
        "citadel unreachable {outage:?} across the renewal of 30 s certificates: failed \
         renewal attempts per proxy {attempts:?}; all renewed {renewed:?} after it came back; \
         {} requests, {} failed",
        seen.len(),
        failed.len()
    );
    ensure!(seen.len() > 200, "too little traffic: {}", seen.len());
    ensure!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    drop(m);
    Ok(())
}

/// The mesh with citadel; with a `switch`, mastd's citadel listens on `ca_addr` and the
/// sidecars reach it through the switch.
async fn secure_mesh(
    extra: &str,
    ttl: Option<&'static str>,
    via: Option<(SocketAddr, &Switch)>,
) -> Result<SecureMesh> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let backend = Backend::start("user").await?;
    let port = free_port();
    let inbound = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        secure_yaml(port, inbound, backend.port, extra),
    )?;
    let mut mastd = Mastd::start_with_ca(
        &config,
        dir.path(),
        CaOptions {
            dir: dir.path().join("ca"),
            addr: via.map(|(a, _)| a),
            workload_ttl: ttl,
        },
    )
    .await?;
    if let (Some((_, switch)), Some(ca)) = (via, mastd.ca.as_mut()) {
        ca.addr = switch.addr;
    }
    let mut users = Vec::new();
    for (pod, ip) in [(&USER_1, USER_IPS[0]), (&USER_2, USER_IPS[1])] {
        users.push(Some(
            Sidecar::start_secure(SidecarKind::Mast, pod, ip, &mastd, dir.path()).await?,
        ));
    }
    let client =
        Sidecar::start_secure(SidecarKind::Mast, &CLIENT, "127.0.0.1", &mastd, dir.path()).await?;
    let url = format!("http://127.0.0.1:{port}/");
    let http = HttpClient::new();
    eventually("user answers over mTLS", Duration::from_secs(30), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (s, body) = http.get(&url, Some("user"), &[]).await?;
            ensure!(s == 200 && body == "user", "{s}: {body}");
            Ok(())
        }
    })
    .await?;
    // Both replicas serve (each counts requests it received) before a test starts its fault.
    for u in users.iter().flatten() {
        eventually("both replicas serve", Duration::from_secs(30), || async {
            let _ = http.get(&url, Some("user"), &[]).await?;
            ensure!(served(u).await? > 0.0, "{} has served nothing", u.proc.name);
            Ok(())
        })
        .await?;
    }
    Ok(SecureMesh {
        dir,
        mastd,
        client,
        users,
        url,
        _backend: backend,
    })
}

// ---------------------------------------------------------------------------------------------
// (c) the callee's sidecar SIGKILLed and restarted mid-traffic.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_sidecar_killed_and_restarted_retries_hide_it() -> Result<()> {
    // Istio's defaults give the route 2 retries on connect-failure, refused-stream, unavailable,
    // cancelled and 503; outlier detection (not on by default in Istio) ejects the dead replica.
    let extra = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: user, namespace: default}
spec:
  host: user.default.svc.cluster.local
  trafficPolicy:
    outlierDetection:
      consecutiveGatewayErrors: 1
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 50
"#;
    let mut m = secure_mesh(extra, None, None).await?;
    let concurrency = 4;
    let load = Load::start(&m.url, "user", concurrency);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = m.users[0].take().context("user-1")?;
    let mut victim = victim;
    let killed_at = Instant::now();
    victim.proc.signal(libc::SIGKILL)?;
    victim.proc.wait_exit(Duration::from_secs(5))?;
    drop(victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarting = Instant::now();
    let back = Sidecar::start_secure(
        SidecarKind::Mast,
        &USER_1,
        USER_IPS[0],
        &m.mastd,
        m.dir.path(),
    )
    .await?;
    let restart_ready = restarting.elapsed();
    // The restarted replica takes traffic again.
    eventually(
        "the restarted replica serves again",
        Duration::from_secs(20),
        || async {
            ensure!(served(&back).await? > 0.0, "no requests yet");
            Ok(())
        },
    )
    .await?;
    let serving_again = restarting.elapsed();
    let restarted_at = restarting;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = load.finish().await;
    let failed = failures(&seen);
    let during = seen.iter().filter(|(t, _)| *t >= killed_at).count();
    let failed_at: Vec<f64> = seen
        .iter()
        .filter(|(_, r)| !matches!(r, Ok((s, _)) if s.as_u16() == 200))
        .map(|(t, _)| t.saturating_duration_since(killed_at).as_secs_f64())
        .collect();
    eprintln!(
        "failures from {:.2} s to {:.2} s after the kill (restart at {:.2} s)",
        failed_at.first().copied().unwrap_or(0.0),
        failed_at.last().copied().unwrap_or(0.0),
        (restarted_at - killed_at).as_secs_f64()
    );
    eprintln!(
        "callee sidecar SIGKILLed, restarted 3 s later (ready in {restart_ready:?}, serving \
         again {serving_again:?} after restart): {} requests ({during} after the kill), {} failed \
         {:?}",
        seen.len(),
        failed.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );
    ensure!(seen.len() > 300, "too little traffic: {}", seen.len());
    // Requests in flight on the killed replica's connections when it died cannot be retried
    // under Istio's default retry_on (a reset is not in it): at most one per caller connection.
    ensure!(
        failed.len() <= concurrency,
        "{} failed (more than the {concurrency} that can be in flight), first: {:?}",
        failed.len(),
        failed.first()
    );
    m.users[0] = Some(back);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (d) the CA directory full or read-only.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_directory_full_or_read_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    if !can_mount(dir.path())? {
        return Ok(());
    }
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;

    // A fresh CA on a full file system: mastd refuses to start, naming the file.
    let full = dir.path().join("full-ca");
    let _full = Mount::tmpfs(&full, "16k")?;
    let _ = std::fs::write(full.join("filler"), vec![0u8; 64 * 1024]);
    let start = |ca_dir: PathBuf| {
        let (config, work) = (config.clone(), dir.path().to_path_buf());
        async move {
            Mastd::start_with_ca(
                &config,
                &work,
                CaOptions {
                    dir: ca_dir,
                    addr: None,
                    workload_ttl: None,
                },
            )
            .await
        }
    };
    let err = match start(full.clone()).await {
        Ok(_) => bail!("mastd started with its CA directory full"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("No space left on device") && err.contains(path(&full)?),
        "not a clear error:\n{err}"
    );
    eprintln!(
        "full CA directory: {}",
        err.lines().find(|l| l.contains("No space")).unwrap_or("")
    );

    // The same on a read-only one.
    let ro = dir.path().join("ro-ca");
    std::fs::create_dir(&ro)?;
    let _ro = Mount::bind_read_only(&ro)?;
    let err = match start(ro.clone()).await {
        Ok(_) => bail!("mastd started with its CA directory read-only"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("Read-only file system") && err.contains(path(&ro)?),
        "not a clear error:\n{err}"
    );
    eprintln!(
        "read-only CA directory: {}",
        err.lines().find(|l| l.contains("Read-only")).unwrap_or("")
    );

    // A running CA whose directory becomes read-only, then full: it keeps signing.
    let live = dir.path().join("live-ca");
    let mastd = start(live.clone()).await?;
    let ca = mastd.ca.clone().context("ca")?;
    let root = dir.path().join("root-copy.pem");
    std::fs::copy(ca.root_cert(), &root)?;
    let token = dir.path().join("token");
    ca.credential("default", "user", &token)?;
    let sign = || {
        let (root, token) = (root.clone(), token.clone());
        async move {
            let client = mast_proxy::identity::IstioCa::new(mast_proxy::identity::IdentityConfig {
                ca_address: ca.addr.to_string(),
                root_cert: root,
                token_file: token,
                ttl: None,
            });
            mast_proxy::identity::fetch(&client, "spiffe://cluster.local/ns/default/sa/user", None)
                .await
        }
    };
    sign().await?;
    let ro_live = Mount::bind_read_only(&live)?;
    sign()
        .await
        .context("signing with the CA directory read-only")?;
    ro_live.unmount()?;
    let full_live = Mount::tmpfs(&live, "16k")?;
    let _ = std::fs::write(live.join("filler"), vec![0u8; 64 * 1024]);
    sign().await.context("signing with the CA directory full")?;
    drop(full_live);
    let mut mastd = mastd;
    mastd.proc.check_running()?;
    eprintln!("running CA: signed with its directory read-only and full");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (e) the config folder goes away and comes back.

struct Routed {
    url: String,
    _sidecar: Sidecar,
    _mastd: Mastd,
}

impl Routed {
    /// 10 requests through the sidecar all answered by `want`.
    async fn routes_to(&self, want: &str) -> Result<()> {
        let t = send_requests(&self.url, "user", &[], 10, 1).await;
        ensure!(t.by_body.get(want) == Some(&10), "{t:?}");
        Ok(())
    }

    async fn eventually(&self, want: &str) -> Result<Duration> {
        let from = Instant::now();
        eventually(want, Duration::from_secs(20), || self.routes_to(want)).await?;
        Ok(from.elapsed())
    }
}

/// mastd on `config` (already holding [`user_config`] and a route) and one sidecar.
async fn routed(config: &Path, work: &Path, port: u16) -> Result<Routed> {
    let mastd = Mastd::start(config, work).await?;
    let client = PodSpec {
        name: "client-1",
        namespace: "default",
        labels: &[("app", "client")],
        service_account: "client",
    };
    let sidecar = Sidecar::start_kind(
        SidecarKind::Mast,
        &client,
        "127.0.0.1",
        mastd.xds_addr,
        work,
        true,
    )
    .await?;
    Ok(Routed {
        url: format!("http://127.0.0.1:{port}/"),
        _sidecar: sidecar,
        _mastd: mastd,
    })
}

fn write_config(dir: &Path, port: u16, v1: &Backend, v2: &Backend, subset: &str) -> Result<()> {
    std::fs::write(dir.join("mesh.yaml"), user_config(port, v1.port, v2.port))?;
    write_atomic(&dir.join("route.yaml"), &route(subset))
}

fn no_failures(what: &str, seen: &Seen) -> Result<()> {
    let failed = failures(seen);
    eprintln!("{what}: {} requests, {} failed", seen.len(), failed.len());
    ensure!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_folder_renamed_away_or_deleted_keeps_the_last_good_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let (v1, v2) = (Backend::start("v1").await?, Backend::start("v2").await?);
    let port = free_port();
    write_config(&config, port, &v1, &v2, "v1")?;
    let r = routed(&config, dir.path(), port).await?;
    r.eventually("v1").await?;
    let load = Load::start(&r.url, "user", 2);

    // Renamed away: nothing to read; the last good config stays.
    let away = dir.path().join("config.away");
    std::fs::rename(&config, &away)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.routes_to("v1")
        .await
        .context("while the folder is away")?;
    std::fs::rename(&away, &config)?;
    write_atomic(&config.join("route.yaml"), &route("v2"))?;
    let t = r.eventually("v2").await?;
    eprintln!("config folder renamed away 2 s and back: an edit picked up {t:?} after");

    // Deleted (its inotify watch dies with it), then recreated: a new inode.
    std::fs::remove_dir_all(&config)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.routes_to("v2")
        .await
        .context("while the folder is deleted")?;
    std::fs::create_dir(&config)?;
    write_config(&config, port, &v1, &v2, "v1")?;
    let t = r.eventually("v1").await?;
    eprintln!("config folder deleted 2 s and recreated: picked up {t:?} after");
    write_atomic(&config.join("route.yaml"), &route("v2"))?;
    let t = r.eventually("v2").await?;
    eprintln!("then an edit in the recreated folder: picked up {t:?} after");
    no_failures("config folder renamed and deleted", &load.finish().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_system_unmounted_keeps_the_last_good_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    if !can_mount(dir.path())? {
        return Ok(());
    }
    let config = dir.path().join("config");
    let (v1, v2) = (Backend::start("v1").await?, Backend::start("v2").await?);
    let port = free_port();
    let mount = Mount::tmpfs(&config, "1m")?;
    write_config(&config, port, &v1, &v2, "v1")?;
    let r = routed(&config, dir.path(), port).await?;
    r.eventually("v1").await?;
    let load = Load::start(&r.url, "user", 2);

    // The file system drops out: the empty directory beneath shows through. That is not
    // "all config deleted": the last good config stays.
    mount.unmount()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.routes_to("v1")
        .await
        .context("after the config file system was unmounted")?;
    // It comes back (populated, as a volume is): mounted elsewhere, filled, moved in place.
    let staging = dir.path().join("staging");
    let staged = Mount::tmpfs(&staging, "1m")?;
    write_config(&staging, port, &v1, &v2, "v2")?;
    run("mount", &["--move", path(&staging)?, path(&config)?])?;
    std::mem::forget(staged);
    let _back = Mount(config.clone());
    let t = r.eventually("v2").await?;
    eprintln!(
        "config file system unmounted 3 s (last good kept), remounted: picked up {t:?} after"
    );
    write_atomic(&config.join("route.yaml"), &route("v1"))?;
    let t = r.eventually("v1").await?;
    eprintln!("then an edit on the remounted file system: picked up {t:?} after");
    no_failures("config file system unmounted", &load.finish().await)
}
