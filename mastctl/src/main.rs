//! mastctl: the Mast command line, in the spirit of istioctl. `main` only parses and
//! dispatches; each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod analyze;
mod bootstrap;
mod credential;
mod demo;
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mastctl: {e:#}");
            ExitCode::from(64)
        }
    }
}
