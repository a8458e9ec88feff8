//! `--real-proxies N`: real mast-proxy processes beside the simulated streams, so that the
//! simulation's figures are checked against the thing they stand for.
//!
//! Each real proxy has the identity of one simulated proxy, its twin (same node id, namespace,
//! labels, IP): the twin sends exactly the `Node` mast-proxy builds from the same environment
//! (mast-proxy's own code, checked to carry every field the simulated node has), and hashes the
//! bytes of every resource it receives with mast-proxy's own digest functions
//! (`mast_proxy::state::digest`). The real proxy serves the same digest on its admin's
//! `/debug/xds_digest`, polled every 20 ms, so pilot-load can say when each real proxy held
//! exactly what its twin held — by the bytes, not by a count of pushes.
//!
//! mast-proxy binds the listeners pilot sends (15001, 15006, …) and its admin ports, so each
//! runs in a network namespace of its own, on a bridge whose address mastd listens on (as the
//! e2e tests' pods do, tests/src/pods.rs). Its loopback admin is reached from a thread that
//! enters the namespace just to open the connection. Everything created (processes,
//! namespaces, veths, the bridge) goes when the [`Lab`] is dropped, also on an error or ctrl-c.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mast_proto::TypeUrl;
use mast_proxy::state::digest::{self, Hash, TypeDigest};

/// How often a real proxy's digest is read.
pub const POLL: Duration = Duration::from_millis(20);

/// What a twin (a simulated proxy standing beside a real one) has received: per type, each
/// name with the hash of its bytes.
pub struct Twin {
    /// The node mast-proxy sends for this identity.
    pub node: Node,
    held: Mutex<TwinState>,
}

#[derive(Default)]
struct TwinState {
    types: BTreeMap<TypeUrl, BTreeMap<String, Hash>>,
    /// When what is held last changed.
    changed: Option<Instant>,
}

// === impl Twin ===

impl Twin {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            held: Mutex::new(TwinState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TwinState> {
        match self.held.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Apply a response of type `t` as mast-proxy does: `replace` (state of the world) or a
    /// change (delta: `removed` go); `resources` are (name, the resource's bytes).
    pub fn apply<'a>(
        &self,
        t: TypeUrl,
        replace: bool,
        resources: impl Iterator<Item = (&'a str, &'a [u8])>,
        removed: &[String],
        now: Instant,
    ) {
        let mut s = self.state();
        let before = s.types.get(&t).cloned();
        let held = s.types.entry(t).or_default();
        if replace {
            held.clear();
        }
        for name in removed {
            held.remove(name);
        }
        for (name, bytes) in resources {
            held.insert(name.to_string(), digest::resource_hash(bytes));
        }
        if s.types.get(&t) != before.as_ref() {
            s.changed = Some(now);
        }
    }

    /// The overall digest, as `/debug/xds_digest` prints it.
    pub fn digest(&self) -> String {
        let s = self.state();
        let types: Vec<TypeDigest> = s
            .types
            .iter()
            .map(|(t, held)| TypeDigest {
                type_url: *t,
                count: held.len(),
                digest: digest::type_digest(held.iter().map(|(n, h)| (n.as_str(), h))),
            })
            .collect();
        digest::hex(&digest::overall(&types))
    }

    /// How many resources of each type it holds, for the report.
    pub fn counts(&self) -> String {
        let s = self.state();
        let counts: Vec<String> = s
            .types
            .iter()
            .map(|(t, held)| format!("{} {t:?}", held.len()))
            .collect();
        counts.join(", ")
    }

    pub fn changed(&self) -> Option<Instant> {
        self.state().changed
    }

    /// The first resource where `real` (a `/debug/xds_digest?resources=1` answer) differs.
    fn first_difference(&self, real: &serde_json::Value) -> String {
        let s = self.state();
        let mut urls: Vec<String> = real["types"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        urls.extend(
            s.types
                .iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(t, _)| t.url().to_string()),
        );
        urls.sort();
        urls.dedup();
        for url in urls {
            let theirs = real["types"][&url]["resources"].as_object();
            let ours = TypeUrl::from_url(&url).and_then(|t| s.types.get(&t));
            let mut names: Vec<&str> = theirs
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            names.extend(ours.into_iter().flat_map(|o| o.keys().map(String::as_str)));
            names.sort();
            names.dedup();
            for name in names {
                let r = theirs.and_then(|o| o.get(name)).and_then(|v| v.as_str());
                let o = ours.and_then(|o| o.get(name)).map(digest::hex);
                if r != o.as_deref() {
                    return format!(
                        "{url} {name:?}: real {}, simulated twin {}",
                        r.unwrap_or("absent"),
                        o.as_deref().unwrap_or("absent")
                    );
                }
            }
        }
        "no resource differs (the proxy changed meanwhile?)".into()
    }
}

/// One real mast-proxy: its process, namespace, twin and what its digest was when.
pub struct Real {
    pub k: usize,
    /// The index of its twin among the simulated proxies.
    pub twin_of: usize,
    pub twin: Arc<Twin>,
    ns: String,
    log: PathBuf,
    /// (when read, digest) each time the digest read changed.
    history: Arc<Mutex<Vec<(Instant, String)>>>,
}

// === impl Real ===

impl Real {
    fn history(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, String)>> {
        match self.history.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        }
    }

    fn latest(&self) -> Option<String> {
        self.history().last().map(|(_, d)| d.clone())
    }

    /// From `t0`, how long until the digest first read `target` (zero if it already did).
    fn reached(&self, target: &str, t0: Instant) -> Option<Duration> {
        let h = self.history();
        let at_t0 = h.iter().rev().find(|(at, _)| *at < t0);
        if at_t0.is_some_and(|(_, d)| d == target) {
            return Some(Duration::ZERO);
        }
        h.iter()
            .find(|(at, d)| *at >= t0 && d == target)
            .map(|(at, _)| *at - t0)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Everything the real proxies need in the kernel, removed on drop.
pub struct Lab {
    pid: u32,
    /// Third octet of 10.249.S.0/24, the bridge's subnet.
    subnet: u32,
    bridge: Option<String>,
    veths: Vec<String>,
    netns: Vec<String>,
    children: Vec<Child>,
    pub reals: Vec<Real>,
}

// === impl Lab ===

impl Lab {
    /// A bridge at 10.249.S.1/24; mastd listens on that address.
    pub fn new() -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "--real-proxies needs root (a network namespace per proxy)"
        );
        let pid = std::process::id();
        let mut lab = Self {
            pid,
            subnet: pid % 250,
            bridge: None,
            veths: Vec::new(),
            netns: Vec::new(),
            children: Vec::new(),
            reals: Vec::new(),
        };
        let prefix = format!("10.249.{}.", lab.subnet);
        let addrs = run("ip", &["-o", "-4", "addr", "show"])?;
        ensure!(
            !addrs.contains(&format!("inet {prefix}")),
            "{prefix}0/24 is already in use on this host"
        );
        let br = format!("mplbr{}", pid % 10000);
        run("ip", &["link", "add", "name", &br, "type", "bridge"])?;
        lab.bridge = Some(br.clone());
        run(
            "ip",
            &["addr", "add", &format!("{}/24", lab.gateway()), "dev", &br],
        )?;
        run("ip", &["link", "set", &br, "up"])?;
        Ok(lab)
    }

    /// Where mastd listens, reachable from every namespace.
    pub fn gateway(&self) -> String {
        format!("10.249.{}.1", self.subnet)
    }

    /// The address of real proxy `k`.
    pub fn ip(&self, k: usize) -> String {
        format!("10.249.{}.{}", self.subnet, k + 2)
    }

    /// A namespace for real proxy `k`, with `eth0` on the bridge at [`Self::ip`].
    fn namespace(&mut self, k: usize) -> Result<String> {
        let ns = format!("mast-pl-{}-{k}", self.pid);
        run("ip", &["netns", "add", &ns])?;
        self.netns.push(ns.clone());
        let veth = format!("mpl{}v{k}", self.pid % 10000);
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        self.veths.push(veth.clone());
        let br = self.bridge.clone().context("no bridge")?;
        run("ip", &["link", "set", &veth, "master", &br])?;
        run("ip", &["link", "set", &veth, "up"])?;
        let ip = self.ip(k);
        for args in [
            vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", &ns];
            full.extend_from_slice(&args);
            run("ip", &full)?;
        }
        Ok(ns)
    }

    /// Start real proxy `k` in a namespace of its own with `env` (its identity and pilot's
    /// address), the twin of simulated proxy `twin_of`, and poll its digest from now on.
    pub fn start(
        &mut self,
        k: usize,
        twin_of: usize,
        twin: Arc<Twin>,
        binary: &Path,
        env: &BTreeMap<String, String>,
        logs: &Path,
    ) -> Result<()> {
        let ns = self.namespace(k)?;
        let log = logs.join(format!("mast-proxy-{k}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(binary)
            .args(["--concurrency", "1", "--log-level", "warn"])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        self.children.push(child);
        let history = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(poll(ns.clone(), Arc::clone(&history)));
        self.reals.push(Real {
            k,
            twin_of,
            twin,
            ns,
            log,
            history,
        });
        Ok(())
    }

    /// Wait until every real proxy's digest equals its twin's (twins keep receiving while
    /// this waits, so the target is read again each round) and stays so for a moment. For
    /// each real proxy: the time from `t0` to the first poll that read the final digest.
    pub async fn converged(&mut self, t0: Instant, timeout: Duration) -> Result<Vec<Duration>> {
        let deadline = t0 + timeout;
        let mut equal_since: Option<Instant> = None;
        loop {
            self.check_alive()?;
            let all = self
                .reals
                .iter()
                .all(|r| r.latest().as_deref() == Some(r.twin.digest().as_str()));
            let now = Instant::now();
            match (all, equal_since) {
                (true, Some(since)) if now - since >= Duration::from_millis(200) => break,
                (true, None) => equal_since = Some(now),
                (true, Some(_)) => {}
                (false, _) => equal_since = None,
            }
            if now > deadline {
                return Err(self.difference().await);
            }
            tokio::time::sleep(POLL).await;
        }
        let mut times = Vec::with_capacity(self.reals.len());
        for r in &self.reals {
            let target = r.twin.digest();
            times.push(
                r.reached(&target, t0)
                    .context("digest reached but not recorded")?,
            );
        }
        Ok(times)
    }

    /// The latest time a twin's state changed, from `t0`.
    pub fn twins_settled(&self, t0: Instant) -> Duration {
        self.reals
            .iter()
            .filter_map(|r| r.twin.changed())
            .map(|c| c.saturating_duration_since(t0))
            .max()
            .unwrap_or_default()
    }

    fn check_alive(&mut self) -> Result<()> {
        for (child, r) in self.children.iter_mut().zip(&self.reals) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "real proxy {} ({}) exited: {status}\n{}",
                    r.k,
                    r.ns,
                    r.log_tail()
                );
            }
        }
        Ok(())
    }

    /// The error for a real proxy that did not reach its twin's digest: the first resource
    /// that differs.
    async fn difference(&self) -> anyhow::Error {
        for r in &self.reals {
            let twin = r.twin.digest();
            if r.latest().as_deref() == Some(twin.as_str()) {
                continue;
            }
            let detail = match get(&r.ns, "/debug/xds_digest?resources=1").await {
                Ok(full) => r.twin.first_difference(&full),
                Err(e) => format!("(could not read its digest: {e:#})"),
            };
            return anyhow::anyhow!(
                "real proxy {} ({}) does not hold what its simulated twin (proxy {}) holds: {detail}\nits log:\n{}",
                r.k,
                r.ns,
                r.twin_of,
                r.log_tail()
            );
        }
        anyhow::anyhow!("every real proxy equals its twin, but not long enough in a row")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut errors = Vec::new();
        for v in &self.veths {
            if let Err(e) = run("ip", &["link", "del", v]) {
                errors.push(e);
            }
        }
        for ns in &self.netns {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                errors.push(e);
            }
        }
        if let Some(br) = &self.bridge
            && let Err(e) = run("ip", &["link", "del", br])
        {
            errors.push(e);
        }
        for e in errors {
            eprintln!("pilot-load: cleanup: {e:#}");
        }
    }
}

/// Read the digest of the proxy in `ns` every [`POLL`], recording each change.
async fn poll(ns: String, history: Arc<Mutex<Vec<(Instant, String)>>>) {
    let mut conn: Option<Admin> = None;
    loop {
        if conn.is_none() {
            conn = Admin::connect(&ns).await.ok();
        }
        if let Some(c) = &mut conn {
            match c.get("/debug/xds_digest").await {
                Ok(v) => {
                    let d = v["digest"].as_str().unwrap_or_default().to_string();
                    let now = Instant::now();
                    let mut h = match history.lock() {
                        Ok(h) => h,
                        Err(p) => p.into_inner(),
                    };
                    if h.last().is_none_or(|(_, last)| *last != d) {
                        h.push((now, d));
                    }
                }
                Err(_) => conn = None,
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One request to the admin of the proxy in `ns`.
async fn get(ns: &str, path: &str) -> Result<serde_json::Value> {
    Admin::connect(ns).await?.get(path).await
}

/// A kept-alive HTTP/1.1 connection to a proxy's loopback admin (127.0.0.1:15000 in its
/// namespace).
struct Admin {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Admin {
    async fn connect(ns: &str) -> Result<Self> {
        let path = format!("/var/run/netns/{ns}");
        let addr = SocketAddr::from(([127, 0, 0, 1], 15000));
        // A socket belongs to the namespace it was made in: make it on a thread of its own
        // that enters the namespace and ends.
        let stream = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || -> Result<std::net::TcpStream> {
                let f = std::fs::File::open(&path).with_context(|| path.clone())?;
                // SAFETY: setns changes only this thread's namespace, and the thread ends here.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(s)
            })
            .join()
        })
        .await?
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))??;
        let io = TokioIo::new(tokio::net::TcpStream::from_std(stream)?);
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    async fn get(&mut self, path: &str) -> Result<serde_json::Value> {
        let req = http::Request::get(path)
            .header(http::header::HOST, "127.0.0.1:15000")
            .body(Empty::new())?;
        let resp = self.sender.send_request(req).await?;
        ensure!(resp.status().is_success(), "{path}: {}", resp.status());
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawn {program}"))?;
    ensure!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_twin_applies_changes_as_the_proxy_does_and_names_the_first_difference() {
        let twin = Twin::new(Node::default());
        let empty = twin.digest();
        let now = Instant::now();
        let c = TypeUrl::Cluster;
        twin.apply(
            c,
            false,
            [("a", &b"1"[..]), ("b", b"2")].into_iter(),
            &[],
            now,
        );
        let two = twin.digest();
        assert_ne!(two, empty);
        // Delta: a removal and a change; state of the world: the whole set.
        twin.apply(c, false, [("b", &b"3"[..])].into_iter(), &["a".into()], now);
        assert_ne!(twin.digest(), two);
        twin.apply(
            c,
            true,
            [("a", &b"1"[..]), ("b", b"2")].into_iter(),
            &[],
            now,
        );
        assert_eq!(twin.digest(), two, "same names and bytes, same digest");
        assert_eq!(twin.counts(), "2 Cluster");

        // What the proxy's `/debug/xds_digest?resources=1` would say with one byte changed.
        let real = serde_json::json!({"types": {c.url(): {"resources": {
            "a": digest::hex(&digest::resource_hash(b"1")),
            "b": digest::hex(&digest::resource_hash(b"X")),
        }}}});
        let diff = twin.first_difference(&real);
        assert!(
            diff.starts_with(&format!("{} \"b\": real ", c.url())),
            "{diff}"
        );
        let missing = serde_json::json!({"types": {}});
        assert!(
            twin.first_difference(&missing)
                .contains("\"a\": real absent"),
            "{}",
            twin.first_difference(&missing)
        );
    }
}
