//! The demo's child processes: mastd, the sample apps and their sidecars.
//!
//! Each child gets its own process group, so the terminal's Ctrl-C reaches only `mastctl`,
//! which then stops everything in order (load, apps, sidecars, mastd) instead of every
//! process racing to exit at once. Children are stopped by PID — SIGTERM, then SIGKILL after a
//! grace period — and reaped, so none outlives the demo; the teardown check then looks for
//! each PID in /proc.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running child; its stdout and stderr go to `log`.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// `Err` with the last lines of the log when the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            anyhow::bail!(
                "{} exited ({status}); the end of its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.tail(15)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of the log.
    pub fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> String {
        let Some(mut child) = self.child.take() else {
            return "already exited".into();
        };
        if let Ok(Some(status)) = child.try_wait() {
            return format!("had exited ({status})");
        }
        if let Ok(pid) = i32::try_from(self.pid) {
            // SAFETY: kill(2) on the PID of our own child, which is not yet reaped (so the
            // PID cannot have been reused).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return format!("stopped ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        match child.wait() {
            Ok(status) => format!("killed after {grace:?} ({status})"),
            Err(e) => format!("kill failed: {e}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a process with this PID exists (used after teardown, when each was reaped).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A sibling binary of this `mastctl` (the workspace's `target/<profile>/`), or from PATH.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating mastctl")?;
    if let Some(dir) = exe.parent() {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    anyhow::bail!(
        "`{name}` is neither next to {} nor in PATH: build the workspace first \
         (`cargo build --release`, or run scripts/demo.sh)",
        exe.display()
    )
}
