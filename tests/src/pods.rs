//! Pods for end-to-end tests: network namespaces on a bridge, each with `eth0`, a default
//! route and its own /etc/hosts, set up by `istio-init` exactly as Mast's injector writes it, with
//! python apps inside. Shared by the tests that need real capture (capture.rs,
//! security_model.rs), so that their labs cannot drift apart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::{Proc, bin};

/// The sidecar's UID and GID (Istio's 1337).
pub const PROXY_UID: &str = "1337";

/// Everything a test creates in the kernel and in /etc; removed on drop.
pub struct Lab {
    /// Names the test's objects (`mast-<tag>-<pid>-<pod>`, bridge `m<tag>br<pid>`) and its
    /// log lines, so that two test binaries running at once never share one.
    tag: &'static str,
    /// Second octet of the pods' addresses (10.N.S.0/24), one per test binary.
    second: u8,
    pid: u32,
    /// Third octet of the pods' /24.
    subnet: u32,
    bridge: Option<String>,
    veths: Vec<String>,
    netns: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    made_etc_netns: bool,
}

/// A pod: its namespace and its IP on the bridge.
#[derive(Clone)]
pub struct Pod {
    pub name: &'static str,
    pub ns: String,
    pub ip: String,
}

impl Lab {
    /// A lab for the test binary `tag` with pods in 10.`second`.S.0/24.
    pub fn new(tag: &'static str, second: u8) -> Self {
        let pid = std::process::id();
        Self {
            tag,
            second,
            pid,
            subnet: pid % 250,
            bridge: None,
            veths: Vec::new(),
            netns: Vec::new(),
            etc_dirs: Vec::new(),
            made_etc_netns: false,
        }
    }

    pub fn ip(&self, host: u32) -> String {
        format!("10.{}.{}.{host}", self.second, self.subnet)
    }

    pub fn gateway(&self) -> String {
        self.ip(1)
    }

    /// The bridge in the root namespace, with the gateway address mastd listens on.
    pub fn bridge(&mut self) -> Result<()> {
        let prefix = format!("10.{}.{}.", self.second, self.subnet);
        let addrs = run("ip", &["-o", "-4", "addr", "show"])?;
        ensure!(
            !addrs.contains(&format!("inet {prefix}")),
            "10.{}.{}.0/24 is already in use on this host:\n{addrs}",
            self.second,
            self.subnet
        );
        let br = format!("m{}br{}", self.tag, self.pid % 10000);
        run("ip", &["link", "add", "name", &br, "type", "bridge"])?;
        self.bridge = Some(br.clone());
        run(
            "ip",
            &["addr", "add", &format!("{}/24", self.gateway()), "dev", &br],
        )?;
        run("ip", &["link", "set", &br, "up"])?;
        Ok(())
    }

    /// A namespace `mast-<tag>-<pid>-<name>` with `eth0` on the bridge at 10.N.S.<host> and a
    /// default route via the bridge (so a service VIP is routable before capture, as in a pod).
    pub fn pod(&mut self, name: &'static str, short: &str, host: u32) -> Result<Pod> {
        let ns = format!("mast-{}-{}-{name}", self.tag, self.pid);
        run("ip", &["netns", "add", &ns])?;
        self.netns.push(ns.clone());
        let veth = format!("m{}{}{short}", self.tag, self.pid % 10000);
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
        let ip = self.ip(host);
        let gw = self.gateway();
        for args in [
            vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "route", "add", "default", "via", &gw],
        ] {
            netns_exec(&ns, &args)?;
        }
        Ok(Pod { name, ns, ip })
    }

    /// `/etc/netns/<ns>/hosts`, which `ip netns exec` bind-mounts over /etc/hosts.
    pub fn hosts(&mut self, pod: &Pod, text: &str) -> Result<()> {
        let base = Path::new("/etc/netns");
        if !base.exists() {
            std::fs::create_dir_all(base)?;
            self.made_etc_netns = true;
        }
        let dir = base.join(&pod.ns);
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        self.etc_dirs.push(dir.clone());
        std::fs::write(dir.join("hosts"), text)?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        for v in &self.veths {
            if let Err(e) = run("ip", &["link", "del", v]) {
                errors.push(format!("{e:#}"));
            }
        }
        for ns in &self.netns {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Some(br) = &self.bridge
            && let Err(e) = run("ip", &["link", "del", br])
        {
            errors.push(format!("{e:#}"));
        }
        for d in &self.etc_dirs {
            if let Err(e) = std::fs::remove_dir_all(d) {
                errors.push(format!("remove {}: {e}", d.display()));
            }
        }
        if self.made_etc_netns {
            let _ = std::fs::remove_dir("/etc/netns");
        }
        for e in errors {
            let _ = writeln!(std::io::stderr(), "{}: cleanup: {e}", self.tag);
        }
    }
}

// === commands ===

pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawn {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn netns_exec(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

pub fn in_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The system's python3 (a pyenv shim also works, but is slower to start).
pub fn python() -> Option<PathBuf> {
    let system = PathBuf::from("/usr/bin/python3");
    if system.is_file() {
        Some(system)
    } else {
        in_path("python3")
    }
}

/// Why this test cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces and iptables)".into());
    }
    if in_path("iptables-nft-restore").is_none() && in_path("iptables-restore").is_none() {
        return Some("neither `iptables-nft-restore` nor `iptables-restore` in PATH".into());
    }
    for tool in ["ip", "setpriv", "curl"] {
        if in_path(tool).is_none() {
            return Some(format!("`{tool}` not found in PATH"));
        }
    }
    if python().is_none() {
        return Some("`python3` not found (the pods' app servers)".into());
    }
    None
}

/// The pod's `istio-init` container, as Mast's injector writes it: `mastctl kube-inject` on a
/// Deployment of `app` carrying `annotations`, then the init container's argv
/// (`istio-iptables -p 15001 …`) run in the pod by the sidecar image's entrypoint, mast-proxy,
/// which hands it to mast-init — exactly what the kubelet would run.
pub fn injected_init(
    pod: &Pod,
    app: &str,
    annotations: &[(&str, &str)],
    work: &Path,
) -> Result<()> {
    let manifest = work.join(format!("deploy-{}.yaml", pod.name));
    let annotations: String = annotations
        .iter()
        .map(|(k, v)| format!("        {k}: \"{v}\"\n"))
        .collect();
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  template:\n    metadata:\n\
             \x20     labels: {{app: {app}}}\n      annotations:\n{annotations}        x: \"y\"\n\
             \x20   spec:\n      containers:\n      - {{name: {app}, image: {app}:1, ports: [{{containerPort: 8080}}]}}\n",
            name = pod.name,
        ),
    )?;
    let out = Command::new(bin("mastctl"))
        .args(["kube-inject", "-f"])
        .arg(&manifest)
        .output()?;
    ensure!(
        out.status.success(),
        "kube-inject: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_str_multiple(&String::from_utf8(out.stdout)?)?;
    let init = docs
        .first()
        .and_then(|d| d["spec"]["template"]["spec"]["initContainers"].as_array())
        .and_then(|c| c.iter().find(|c| c["name"] == "istio-init"))
        .context("no istio-init in the injected pod")?;
    let argv: Vec<String> = init["args"]
        .as_array()
        .context("istio-init args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    ensure!(
        argv.first().map(String::as_str) == Some("istio-iptables"),
        "{argv:?}"
    );
    let proxy = bin("mast-proxy");
    let mut args = vec![proxy.to_str().context("mast-proxy path")?.to_string()];
    args.extend(argv);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    writeln!(
        std::io::stderr(),
        "{} istio-init: {}",
        pod.name,
        args[1..].join(" ")
    )?;
    netns_exec(&pod.ns, &args)
        .with_context(|| format!("istio-init in {}", pod.name))
        .map(|_| ())
}

/// A `python3 -m http.server` in the pod serving `body` on `port` (as root: the app).
pub fn app(pod: &Pod, port: u16, body: &str, work: &Path) -> Result<Proc> {
    let www = work.join(format!("www-{}-{port}", pod.name));
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), body)?;
    let python = python().context("python3")?;
    Proc::spawn(
        &format!("app {} :{port}", pod.name),
        Command::new("ip")
            .args(["netns", "exec", &pod.ns])
            .arg(python)
            .args(["-u", "-m", "http.server", &port.to_string()])
            .args(["--bind", "0.0.0.0", "--directory"])
            .arg(&www),
        work.join(format!("app-{}-{port}.log", pod.name)),
    )
}

/// The mast-proxy binary as UID 1337 can run it: the build's, or a copy in `work` when the
/// build tree is not reachable by that user.
pub fn proxy_binary(work: &Path) -> Result<PathBuf> {
    let built = bin("mast-proxy");
    let probe = |path: &Path| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
            ])
            .arg(path)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if probe(&built) {
        return Ok(built);
    }
    // The build tree is not reachable by UID 1337: copy the binary out.
    use std::os::unix::fs::PermissionsExt;
    let dir = work.join("bin");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let copy = dir.join("mast-proxy");
    std::fs::copy(&built, &copy)?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    ensure!(
        probe(&copy),
        "UID {PROXY_UID} cannot run {} (nor a copy at {})",
        built.display(),
        copy.display()
    );
    Ok(copy)
}
