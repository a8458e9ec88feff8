//! `mastctl kube-inject`: sidecar injection for manifests, offline, as `istioctl kube-inject`.
//!
//! For clusters without the webhook, for review in a pull request, or to see exactly what the
//! webhook would do to a workload. The same injector renders both paths.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use mast_injector::inject::{Decision, Settings};
use mast_injector::kube_inject::inject_yaml;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file to inject (`-` for stdin): Pods, Deployments, StatefulSets, DaemonSets,
    /// ReplicaSets, Jobs, CronJobs, `kind: List`, several documents; other kinds pass through.
    #[arg(long = "filename", short = 'f')]
    filename: PathBuf,
    /// Write the result here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// The sidecar image.
    #[arg(long)]
    proxy_image: Option<String>,
    /// citadel's address as the sidecar dials it.
    #[arg(long)]
    ca_address: Option<String>,
    /// Classic sidecar (a container) instead of a native sidecar.
    #[arg(long)]
    classic_sidecar: bool,
    /// Hold the app until the proxy is ready (classic sidecars only).
    #[arg(long)]
    hold_application_until_proxy_starts: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let text = if args.filename.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.filename)
            .with_context(|| format!("reading {}", args.filename.display()))?
    };
    let mut settings = Settings {
        native_sidecar: !args.classic_sidecar,
        hold_application_until_proxy_starts: args.hold_application_until_proxy_starts,
        ..Settings::default()
    };
    if let Some(image) = &args.proxy_image {
        settings.image = image.clone();
    }
    if let Some(ca) = &args.ca_address {
        settings.ca_address = ca.clone();
    }
    let (out, reports) =
        inject_yaml(&text, &settings).with_context(|| args.filename.display().to_string())?;
    for r in &reports {
        if let Decision::Skip(why) = &r.decision {
            eprintln!(
                "mastctl: not injected: {} {}/{}: {why}",
                r.kind, r.namespace, r.name
            );
        }
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
        }
        None => std::io::stdout()
            .write_all(out.as_bytes())
            .context("writing stdout"),
    }
}
