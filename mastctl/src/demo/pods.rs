//! "Pods" on one machine (root only): each workload gets a network namespace of its own, a
//! veth on a bridge with its own IP, a default route, `/etc/hosts` naming the Services, and
//! iptables capture programmed by the `istio-init` container that Mast's injector writes for
//! it — the same argv the kubelet would run (`istio-iptables -p 15001 -z 15006 …`), handed
//! by mast-proxy to mast-init. Apps inside know nothing of the mesh.
//!
//! Everything made here is recorded and removed on teardown (also on drop, when the demo
//! fails half-way), and [`Lab::leftovers`] checks the kernel and /etc afterwards: no
//! namespace, link or hosts directory of this run may remain. Rules live inside the pods'
//! namespaces, so deleting a namespace deletes its rules; the root namespace's iptables are
//! never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::topology::{Mode, NAMESPACE, Workload};

/// One pod: its network namespace.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
}

/// The bridge, namespaces, veths and `/etc/netns` entries of one demo run.
pub struct Lab {
    pub mode: Mode,
    tag: u32,
    bridge: Option<String>,
    veths: Vec<String>,
    netns: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    made_etc_netns: bool,
    /// Lines this run added to the machine's /etc/hosts.
    hosts_entries: bool,
}

/// The machine's name table, where the demo names the ingress gateway for browsers.
const ETC_HOSTS: &str = "/etc/hosts";

impl Lab {
    /// Picks a free 10.202.S.0/24, starting from one derived from our PID.
    pub fn new() -> Result<Self> {
        let tag = std::process::id();
        let addrs = run("ip", &["-o", "-4", "addr", "show"])?;
        let routes = run("ip", &["-4", "route", "show"])?;
        let third_octet = (0..250u32)
            .map(|i| u8::try_from((tag + i) % 250 + 1).unwrap_or(1))
            .find(|s| {
                let prefix = format!("10.202.{s}.");
                !addrs.contains(&prefix) && !routes.contains(&prefix)
            })
            .context("no free /24 in 10.202.0.0/16 for the pods")?;
        Ok(Self {
            mode: Mode::Pods { third_octet },
            tag,
            bridge: None,
            veths: Vec::new(),
            netns: Vec::new(),
            etc_dirs: Vec::new(),
            made_etc_netns: false,
            hosts_entries: false,
        })
    }

    /// The bridge in the root namespace, holding the address mastd serves pods on.
    pub fn bridge(&mut self) -> Result<()> {
        let br = format!("mastdemo{}", self.tag % 10000);
        run("ip", &["link", "add", "name", &br, "type", "bridge"])?;
        self.bridge = Some(br.clone());
        let gw = format!("{}/24", self.mode.control_plane_ip());
        run("ip", &["addr", "add", &gw, "dev", &br])?;
        run("ip", &["link", "set", &br, "up"])?;
        Ok(())
    }

    /// Namespace `mast-demo-<pid>-<name>` with `eth0` on the bridge at the workload's IP.
    pub fn pod(&mut self, index: usize, name: &str, hosts: &str) -> Result<Pod> {
        let ns = format!("mast-demo-{}-{name}", self.tag);
        run("ip", &["netns", "add", &ns])?;
        self.netns.push(ns.clone());
        let veth = format!("mdemo{}p{index}", self.tag % 10000);
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        self.veths.push(veth.clone());
        let br = self.bridge.clone().context("the bridge comes first")?;
        run("ip", &["link", "set", &veth, "master", &br])?;
        run("ip", &["link", "set", &veth, "up"])?;
        let ip = self.mode.workload_ip(index);
        let gw = self.mode.control_plane_ip().to_string();
        for args in [
            vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "route", "add", "default", "via", &gw],
        ] {
            netns_exec(&ns, &args)?;
        }
        // `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts.
        let base = Path::new("/etc/netns");
        if !base.exists() {
            std::fs::create_dir_all(base).context("creating /etc/netns")?;
            self.made_etc_netns = true;
        }
        let dir = base.join(&ns);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.etc_dirs.push(dir.clone());
        std::fs::write(dir.join("hosts"), hosts)
            .with_context(|| format!("writing {}", dir.join("hosts").display()))?;
        Ok(Pod { ns })
    }

    /// The marker on the /etc/hosts lines of this run.
    fn hosts_marker(&self) -> String {
        format!("# mast-demo {}", self.tag)
    }

    /// Names `ip` as `host` in the machine's /etc/hosts (one marked line, removed by
    /// [`Lab::teardown`]). The file is rewritten in place, not renamed over: in a container
    /// /etc/hosts is a bind mount.
    pub fn add_hosts_entry(&mut self, ip: std::net::Ipv4Addr, host: &str) -> Result<()> {
        let text =
            std::fs::read_to_string(ETC_HOSTS).with_context(|| format!("reading {ETC_HOSTS}"))?;
        let mut text = text;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{ip} {host} {}\n", self.hosts_marker()));
        self.hosts_entries = true;
        std::fs::write(ETC_HOSTS, text).with_context(|| format!("writing {ETC_HOSTS}"))
    }

    /// /etc/hosts without this run's lines.
    fn remove_hosts_entries(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.hosts_entries) {
            return Ok(());
        }
        let marker = self.hosts_marker();
        let text =
            std::fs::read_to_string(ETC_HOSTS).with_context(|| format!("reading {ETC_HOSTS}"))?;
        let kept: String = text
            .lines()
            .filter(|l| !l.ends_with(&marker))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(ETC_HOSTS, kept).with_context(|| format!("writing {ETC_HOSTS}"))
    }

    /// Removes everything, in reverse order of creation; the errors, if any.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.remove_hosts_entries() {
            errors.push(format!("{e:#}"));
        }
        for ns in self.netns.drain(..) {
            // Deleting the namespace deletes its end of the veth, the host end with it, and
            // every iptables rule mast-init made in it.
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        for v in self.veths.drain(..) {
            if link_exists(&v) && run("ip", &["link", "del", &v]).is_err() && link_exists(&v) {
                errors.push(format!("could not delete link {v}"));
            }
        }
        if let Some(br) = self.bridge.take()
            && let Err(e) = run("ip", &["link", "del", &br])
        {
            errors.push(format!("{e:#}"));
        }
        for d in self.etc_dirs.drain(..) {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                errors.push(format!("removing {}: {e}", d.display()));
            }
        }
        if std::mem::take(&mut self.made_etc_netns) {
            let _ = std::fs::remove_dir("/etc/netns");
        }
        errors
    }

    /// What of this run is still in the kernel or /etc (empty after a clean teardown).
    pub fn leftovers(&self) -> Vec<String> {
        let prefix = format!("mast-demo-{}-", self.tag);
        let mut left = Vec::new();
        if let Ok(list) = run("ip", &["netns", "list"]) {
            left.extend(
                list.lines()
                    .filter(|l| l.starts_with(&prefix))
                    .map(|l| format!("network namespace {}", l.split(' ').next().unwrap_or(l))),
            );
        }
        let links = [
            format!("mastdemo{}", self.tag % 10000),
            format!("mdemo{}p", self.tag % 10000),
        ];
        if let Ok(list) = run("ip", &["-o", "link", "show"]) {
            for l in list.lines() {
                let name = l.split(':').nth(1).unwrap_or("").trim();
                let name = name.split('@').next().unwrap_or(name);
                if name == links[0] || name.starts_with(&links[1]) {
                    left.push(format!("link {name}"));
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(ETC_HOSTS) {
            let marker = self.hosts_marker();
            left.extend(
                text.lines()
                    .filter(|l| l.ends_with(&marker))
                    .map(|l| format!("{ETC_HOSTS} line `{l}`")),
            );
        }
        if let Ok(dir) = std::fs::read_dir("/etc/netns") {
            left.extend(
                dir.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| format!("{}", e.path().display())),
            );
        }
        left
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("mastctl demo: cleanup: {e}");
        }
    }
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", name]).is_ok()
}

/// The `istio-init` argv Mast's injector writes for this workload's pod.
pub fn istio_init_args(w: &Workload) -> Result<Vec<String>> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": w.name,
            "namespace": NAMESPACE,
            "labels": {"app": w.app_label, "version": w.version},
        },
        "spec": {
            "serviceAccountName": w.service_account,
            "containers": [{
                "name": w.app_label,
                "image": format!("mast-samples/{}:demo", w.app_label),
                "ports": std::iter::once(json!({"name": "http", "containerPort": w.port}))
                    .chain(w.extra.map(|e| json!({"name": e.name, "containerPort": e.port})))
                    .collect::<Vec<_>>(),
            }],
        },
    });
    let settings = mast_injector::inject::Settings::default();
    let mut reports = Vec::new();
    let injected = mast_injector::kube_inject::inject_document(pod, &settings, &mut reports)
        .with_context(|| format!("injecting the sidecar into {}", w.name))?;
    let init = injected["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "istio-init"))
        .with_context(|| format!("the injected {} has no istio-init container", w.name))?;
    let args: Vec<String> = init["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        args.first().map(String::as_str) == Some("istio-iptables"),
        "unexpected istio-init args for {}: {args:?}",
        w.name
    );
    Ok(args)
}

/// Runs `program args…` and returns its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
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

/// Runs a command inside a pod's namespace.
pub fn netns_exec(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Why pods cannot be made here (then the demo falls back to NONE mode on loopback).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in ["ip", "setpriv"] {
        if !in_path(tool) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    if !in_path("iptables-nft-restore") && !in_path("iptables-restore") {
        return Some("iptables is not installed (apt install iptables)".into());
    }
    None
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::topology::WORKLOADS;

    /// The pod is programmed exactly as Istio's injector would program it: REDIRECT to
    /// 15001/15006, the proxy's UID excluded, Istio's status ports excluded inbound.
    #[test]
    fn istio_init_is_the_injectors() {
        let args = istio_init_args(&WORKLOADS[1]).expect("argv");
        let joined = args.join(" ");
        for want in [
            "-p 15001",
            "-z 15006",
            "-u 1337",
            "-m REDIRECT",
            "-i *",
            "-b *",
        ] {
            assert!(joined.contains(want), "{want} in {joined}");
        }
        assert!(joined.contains("-d 15090,15021,15020"), "{joined}");
    }
}
