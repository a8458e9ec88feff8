//! mastd: the Mast control plane in one binary, as istiod is for Istio. Today it hosts pilot
//! (config folder → xDS over ADS); citadel, the injector and the telemetry collector join it
//! as components that can each be switched off.
//!
//! `main` only parses flags and wires; the logic lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mast_pilot::server::{self, PilotConfig};
use mast_pilot::source::Debounce;
use mast_pilot::xds::XdsGenerator;
use tracing::{error, info};

/// pilot builds and frees large encoded responses (a route configuration of a thousand
/// virtual hosts, copied once per proxy) on every push; mimalloc reuses those pages where the
/// system allocator maps and unmaps them each time. Measured in bench/README.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration (sysexits EX_USAGE), as every Mast binary uses.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "mastd", version, about = "The Mast control plane (pilot)")]
struct Args {
    /// Directory of mesh configuration YAML/JSON, watched for changes (repeatable).
    #[arg(
        long = "config-dir",
        required = true,
        env = "MAST_CONFIG_DIR",
        value_delimiter = ','
    )]
    config_dirs: Vec<PathBuf>,

    /// Address of the plaintext xDS (ADS) gRPC server.
    #[arg(long, default_value = "127.0.0.1:15010", env = "MAST_XDS_ADDR")]
    xds_addr: SocketAddr,

    /// Address of the HTTP server for /metrics and /debug/*.
    #[arg(long, default_value = "127.0.0.1:15014", env = "MAST_HTTP_ADDR")]
    http_addr: SocketAddr,

    /// Quiet time after a config change before pushing (Istio's PILOT_DEBOUNCE_AFTER).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce_after: std::time::Duration,

    /// Longest a push waits for the config to settle (Istio's PILOT_DEBOUNCE_MAX).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    debounce_max: std::time::Duration,

    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    mast_mesh_config::dialect::duration::parse_duration(s)
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = PilotConfig {
        config_dirs: args.config_dirs,
        xds_addr: args.xds_addr,
        http_addr: args.http_addr,
        debounce: Debounce {
            quiet: args.debounce_after,
            max: args.debounce_max,
        },
    };
    let result = runtime.block_on(server::run(
        config,
        XdsGenerator::default(),
        shutdown_signal(),
        |bound| info!(xds = %bound.xds, http = %bound.http, "mastd ready"),
    ));
    match result {
        Ok(()) => {
            info!("mastd stopped");
            ExitCode::SUCCESS
        }
        Err(e @ (server::Error::NoConfigDir(_) | server::Error::Bind { .. })) => {
            error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
    }
}
