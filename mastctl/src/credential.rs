//! `mastctl credential`: the local-mode workload credential.
//!
//! On Kubernetes a sidecar proves who it is to citadel with its projected service-account
//! token, which citadel checks by TokenReview. A laptop has no API server, so citadel keeps a
//! signing key in its CA directory and accepts tokens signed with it; whoever can read that
//! directory (the person running the mesh) issues one per workload with this command, and
//! the sidecar presents it exactly where Istio's sidecar presents its token
//! (`./var/run/secrets/tokens/istio-token`, `authorization: Bearer …`). A token names one
//! namespace and service account and expires; citadel signs a certificate only for that
//! identity. See citadel/README.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// citadel's CA directory (mastd `--ca-dir`; default: mastd's, in the user's state
    /// directory).
    #[arg(long, env = "MAST_CA_DIR")]
    ca_dir: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "default")]
    service_account: String,
    /// How long the credential is valid (`24h`, `720h`).
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    ttl: Duration,
    /// Write the token here (mode 0600) instead of printing it.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mast_mesh_config::dialect::duration::parse_duration(s)
}

/// `--ca-dir`, else the directory mastd uses by default.
fn ca_dir(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    given
        .clone()
        .or_else(mast_citadel::default_ca_dir)
        .context("no --ca-dir and no state directory (set HOME or XDG_STATE_HOME)")
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let dir = ca_dir(&args.ca_dir)?;
    let token = mast_citadel::token::issue(&dir, &args.namespace, &args.service_account, args.ttl)
        .with_context(|| format!("issuing a credential from {}", dir.display()))?;
    match &args.output {
        None => println!("{token}"),
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("writing {}", path.display()))?;
            f.write_all(token.as_bytes())?;
        }
    }
    Ok(())
}

/// `mastctl rotate-root`: rotate citadel's root in two steps (stage, then promote).
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// citadel's CA directory (mastd `--ca-dir`; default: mastd's, in the user's state
    /// directory).
    #[arg(long, env = "MAST_CA_DIR")]
    ca_dir: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

/// Stage a new root (trusted, not signing), or promote the staged one (signing; the old root
/// stays trusted until it expires). mastd picks either up when restarted.
pub fn rotate(args: &RotateArgs) -> anyhow::Result<()> {
    let opts = mast_citadel::CaOptions {
        trust_domain: args.trust_domain.clone(),
        ..Default::default()
    };
    let dir = ca_dir(&args.ca_dir)?;
    let step = mast_citadel::rotate_root(&dir, &opts)
        .with_context(|| format!("rotating the root in {}", dir.display()))?;
    match step {
        mast_citadel::RotationStep::Staged => println!(
            "staged a new root ({}). Restart mastd: workloads will trust it as they renew. \
             After one certificate lifetime, run `mastctl rotate-root` again to make it sign.",
            dir.join("next-root-cert.pem").display()
        ),
        mast_citadel::RotationStep::Promoted => println!(
            "the new root signs now; the old one stays trusted until it expires. Restart mastd."
        ),
    }
    Ok(())
}
