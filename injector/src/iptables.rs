//! Applying and removing the planned capture rules with the iptables tools.
//!
//! Why this shape: `iptables-restore --noflush` installs a whole table's worth of rules in one
//! kernel transaction, so a pod never runs with half its capture in place, and it leaves other
//! people's rules alone. Re-running must not stack duplicate jumps (init containers restart),
//! so [`apply`] first runs [`cleanup`], which removes exactly what mast-init adds: the jumps
//! from the kernel chains into `ISTIO_*` chains, the few non-jump rules it puts in kernel chains
//! (excluded interfaces, TPROXY marks), and the `ISTIO_*` chains themselves. The nf_tables
//! backend (`iptables-nft-*`) is preferred, as current Istio does, falling back on whatever
//! `iptables-*` is installed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::capture::{self, CaptureConfig, Family, ISTIO_CHAINS, InterceptionMode, Rules, Table};

// === errors ===

/// Failure running the iptables (or ip) tools.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

// === types ===

/// The three iptables programs for one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub iptables: String,
    pub save: String,
    pub restore: String,
}

// === impl Backend ===

impl Backend {
    /// The nf_tables variants when installed, else the plain names.
    pub fn detect(family: Family) -> Self {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let pick = |nft: String, plain: String| if in_path(&nft) { nft } else { plain };
        Self {
            iptables: pick(format!("{base}-nft"), base.to_string()),
            save: pick(format!("{base}-nft-save"), format!("{base}-save")),
            restore: pick(format!("{base}-nft-restore"), format!("{base}-restore")),
        }
    }

    /// `iptables-save -t <table>` output.
    pub fn save_table(&self, table: Table) -> Result<String, Error> {
        run(&self.save, &["-t", table.as_str()], None)
    }

    fn iptables(&self, table: Table, args: &[&str]) -> Result<String, Error> {
        let mut full = vec!["-t", table.as_str()];
        full.extend_from_slice(args);
        run(&self.iptables, &full, None)
    }
}

// === operations ===

/// The `iptables-restore` input for `cfg`, with a comment line per family (dry run).
pub fn render(cfg: &CaptureConfig) -> String {
    let rules = capture::plan(cfg);
    let mut out = String::from("# iptables-restore --noflush (IPv4)\n");
    out.push_str(&rules.to_restore(Family::V4));
    if cfg.ipv6 {
        out.push_str("# ip6tables-restore --noflush (IPv6)\n");
        out.push_str(&rules.to_restore(Family::V6));
    }
    out
}

/// Installs the capture rules, replacing any that mast-init installed before.
pub fn apply(cfg: &CaptureConfig) -> Result<(), Error> {
    let rules = capture::plan(cfg);
    for family in families(cfg) {
        let backend = Backend::detect(family);
        cleanup_family(&backend, &rules, family)?;
        let input = rules.to_restore(family);
        if !input.is_empty() {
            run(&backend.restore, &["--noflush"], Some(&input))?;
        }
    }
    if cfg.ipv6 {
        // The proxy's inbound passthrough binds ::6 (IPv4 has all of 127/8 on lo already).
        ignore_exists(run(
            "ip",
            &["-6", "addr", "add", "::6/128", "dev", "lo"],
            None,
        ))?;
    }
    if cfg.mode == InterceptionMode::Tproxy {
        remove_tproxy_routes(cfg);
        add_tproxy_routes(cfg)?;
    }
    Ok(())
}

/// Removes what [`apply`] installed and nothing else.
pub fn cleanup(cfg: &CaptureConfig) -> Result<(), Error> {
    let rules = capture::plan(cfg);
    for family in families(cfg) {
        cleanup_family(&Backend::detect(family), &rules, family)?;
    }
    if cfg.mode == InterceptionMode::Tproxy {
        remove_tproxy_routes(cfg);
    }
    Ok(())
}

fn families(cfg: &CaptureConfig) -> Vec<Family> {
    if cfg.ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

fn cleanup_family(backend: &Backend, rules: &Rules, family: Family) -> Result<(), Error> {
    for table in Table::ALL {
        let saved = backend.save_table(table)?;
        // Jumps into our chains, wherever they came from (even an older config).
        for line in saved.lines() {
            if let Some(spec) = jump_into_istio_chain(line) {
                let mut args = vec!["-D"];
                args.extend(spec.split_whitespace());
                backend.iptables(table, &args)?;
            }
        }
        // Our non-jump rules in kernel chains can only be found by their spec.
        for rule in rules.family(family) {
            // Only chains that hold rules are tried: `-D` on an absent nf_tables table
            // would create it.
            let chain_has_rules = saved.lines().any(|l| {
                l.strip_prefix("-A ")
                    .is_some_and(|r| r.starts_with(&format!("{} ", rule.chain)))
            });
            let ours = rule.table == table
                && rule.in_builtin_chain()
                && !rule.target().is_some_and(|t| ISTIO_CHAINS.contains(&t))
                && chain_has_rules;
            if !ours {
                continue;
            }
            let mut args = vec!["-D", rule.chain.as_str()];
            args.extend(rule.args.iter().map(String::as_str));
            // Delete every copy (a crashed earlier run may have left several), but stop at
            // the first miss; bounded in case iptables misreports.
            for _ in 0..64 {
                if backend.iptables(table, &args).is_err() {
                    break;
                }
            }
        }
        let chains: Vec<&str> = saved
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| ISTIO_CHAINS.contains(c))
            .collect();
        // Flush all before deleting any: our chains jump to each other.
        for chain in &chains {
            backend.iptables(table, &["-F", chain])?;
        }
        for chain in &chains {
            backend.iptables(table, &["-X", chain])?;
        }
    }
    Ok(())
}

/// For an `iptables-save` line appending to a kernel chain with a jump to an `ISTIO_*` chain,
/// the rule spec after `-A` (chain included).
fn jump_into_istio_chain(line: &str) -> Option<&str> {
    let spec = line.strip_prefix("-A ")?;
    let chain = spec.split_whitespace().next()?;
    if ISTIO_CHAINS.contains(&chain) {
        return None;
    }
    let mut words = spec.split_whitespace();
    while let Some(w) = words.next() {
        if (w == "-j" || w == "-g") && words.next().is_some_and(|t| ISTIO_CHAINS.contains(&t)) {
            return Some(spec);
        }
    }
    None
}

fn add_tproxy_routes(cfg: &CaptureConfig) -> Result<(), Error> {
    let mark = cfg.tproxy_mark.to_string();
    let table = cfg.tproxy_route_table.to_string();
    for family in families(cfg) {
        let f = family_flag(family);
        run(
            "ip",
            &["-f", f, "rule", "add", "fwmark", &mark, "lookup", &table],
            None,
        )?;
        ignore_exists(run(
            "ip",
            &[
                "-f", f, "route", "add", "local", "default", "dev", "lo", "table", &table,
            ],
            None,
        ))?;
    }
    Ok(())
}

/// Best effort: the routes may not be there.
fn remove_tproxy_routes(cfg: &CaptureConfig) {
    let mark = cfg.tproxy_mark.to_string();
    let table = cfg.tproxy_route_table.to_string();
    for family in families(cfg) {
        let f = family_flag(family);
        for _ in 0..16 {
            let del = ["-f", f, "rule", "del", "fwmark", &mark, "lookup", &table];
            if run("ip", &del, None).is_err() {
                break;
            }
        }
        let _ = run("ip", &["-f", f, "route", "flush", "table", &table], None);
    }
}

fn family_flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

fn ignore_exists(result: Result<String, Error>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(Error::Failed { stderr, .. }) if stderr.contains("File exists") => Ok(()),
        Err(e) => Err(e),
    }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file())
    })
}

/// Runs `program args`, feeding `stdin`; returns stdout.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let spawn_err = |source| Error::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_jumps_into_our_chains_only() {
        assert_eq!(
            jump_into_istio_chain("-A PREROUTING -p tcp -j ISTIO_INBOUND"),
            Some("PREROUTING -p tcp -j ISTIO_INBOUND")
        );
        assert_eq!(
            jump_into_istio_chain("-A OUTPUT -p tcp -j ISTIO_OUTPUT"),
            Some("OUTPUT -p tcp -j ISTIO_OUTPUT")
        );
        assert_eq!(
            jump_into_istio_chain("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
            None
        );
        assert_eq!(jump_into_istio_chain("-A OUTPUT -j KUBE_SERVICES"), None);
        assert_eq!(jump_into_istio_chain("-A OUTPUT -j ISTIO_OUTPUT_DNS"), None);
        assert_eq!(jump_into_istio_chain(":OUTPUT ACCEPT [0:0]"), None);
    }

    #[test]
    fn render_marks_each_family() {
        let cfg = CaptureConfig {
            ipv6: true,
            ..Default::default()
        };
        let out = render(&cfg);
        assert!(out.starts_with("# iptables-restore --noflush (IPv4)\n*nat\n"));
        assert!(out.contains("# ip6tables-restore --noflush (IPv6)\n*nat\n"));
        assert_eq!(out.matches("COMMIT\n").count(), 2);
    }
}
