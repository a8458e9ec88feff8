//! mastctl: the Mast command line, in the spirit of istioctl. `main` only parses and
//! dispatches; each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod analyze;
mod bootstrap;
mod cluster;
mod credential;
mod demo;
mod http;
mod kube_inject;
mod manifest;

#[derive(Debug, Parser)]
#[command(
    name = "mastctl",
    version,
    about = "The Mast service mesh command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate mesh configuration files offline; prints every error, exits 1 on any.
    Analyze(analyze::Args),
    /// Print an Envoy bootstrap (JSON) that connects a sidecar to mastd over ADS.
    Bootstrap(bootstrap::Args),
    /// Issue a local-mode workload credential that citadel accepts for one service account.
    Credential(credential::Args),
    /// Rotate citadel's self-signed root, keeping the old one trusted until it expires.
    RotateRoot(credential::RotateArgs),
    /// Run the whole mesh locally: mastd, the todo-list sample with sidecars, traffic, and a
    /// live view (the README's first command).
    Demo(demo::Args),
    /// Inject the sidecar into Kubernetes manifests offline (as the webhook would).
    KubeInject(kube_inject::Args),
    /// Print the Kubernetes manifests that install Mast (CRDs, control plane, webhook).
    Manifest(manifest::Args),
    /// Install Mast on the cluster: server-side apply of what `manifest generate` prints, CRDs
    /// first (waiting until they are Established), then the control plane and the webhook.
    Install(cluster::install::InstallArgs),
    /// Delete what `install` applied, in reverse order. CRDs are kept unless --purge, which
    /// also deletes every resource of those kinds (users' VirtualServices included).
    Uninstall(cluster::install::UninstallArgs),
    /// Show a sidecar's clusters, listeners, routes, endpoints or secrets from its Envoy
    /// config dump (the sidecar's, through the API server's pod proxy; else what mastd sent it).
    ProxyConfig(cluster::proxy_config::Args),
    /// Each proxy connected to mastd and, per xDS type, whether it runs what mastd last sent
    /// it (SYNCED, NOT SENT, STALE), as `istioctl proxy-status`; `--mastd URL` for a local
    /// mastd, else every mastd pod of the cluster.
    ProxyStatus(cluster::proxy_status::Args),
    /// Serve mastd's topology web view on a local port, through the API server.
    Dashboard(cluster::dashboard::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Analyze(args) => analyze::run(&args),
        Command::Bootstrap(args) => bootstrap::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Credential(args) => credential::run(&args).map(|()| ExitCode::SUCCESS),
        Command::RotateRoot(args) => credential::rotate(&args).map(|()| ExitCode::SUCCESS),
        Command::Demo(args) => demo::run(&args),
        Command::KubeInject(args) => kube_inject::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Manifest(args) => manifest::run(&args),
        Command::Install(args) => cluster::install::run_install(&args).map(|()| ExitCode::SUCCESS),
        Command::Uninstall(args) => {
            cluster::install::run_uninstall(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::ProxyConfig(args) => cluster::proxy_config::run(&args).map(|()| ExitCode::SUCCESS),
        Command::ProxyStatus(args) => cluster::proxy_status::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Dashboard(args) => cluster::dashboard::run(&args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mastctl: {e:#}");
            ExitCode::from(64)
        }
    }
}
