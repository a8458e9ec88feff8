//! `mast-proxy`: the sidecar binary. Flags override Istio's sidecar environment.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mast_proxy::config::{Config, Overrides, ProcessEnv};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Mast sidecar proxy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Run from an Envoy bootstrap or xDS resource file instead of pilot.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// pilot's ADS address (host:port); default PROXY_CONFIG's discoveryAddress.
    #[arg(long)]
    discovery_address: Option<String>,
    /// citadel's address (host:port); default CA_ADDR, or the discovery address on :15012.
    #[arg(long)]
    ca_address: Option<String>,
    /// Root certificate(s) to verify the CA with (default Istio's mounted root-cert.pem).
    #[arg(long)]
    ca_root_cert: Option<PathBuf>,
    /// The workload credential presented to the CA (default Istio's projected token path).
    #[arg(long)]
    ca_token_file: Option<PathBuf>,
    /// Serve the workload certificate over SDS on this Unix socket, as istio-agent does for
    /// an Envoy sidecar.
    #[arg(long)]
    sds_socket: Option<PathBuf>,
    /// Agent only: keep the certificate and serve SDS, no xDS and no traffic.
    #[arg(long, requires = "sds_socket")]
    agent: bool,
    #[arg(long)]
    pod_name: Option<String>,
    #[arg(long)]
    pod_namespace: Option<String>,
    #[arg(long)]
    instance_ip: Option<String>,
    #[arg(long)]
    service_account: Option<String>,
    /// Pod labels, k=v,k=v (default: ISTIO_METAJSON_LABELS or the downward-API file).
    #[arg(long)]
    labels: Option<String>,
    /// REDIRECT, TPROXY or NONE (default ISTIO_META_INTERCEPTION_MODE).
    #[arg(long)]
    interception_mode: Option<String>,
    #[arg(long)]
    admin_port: Option<u16>,
    #[arg(long)]
    status_port: Option<u16>,
    #[arg(long)]
    stats_port: Option<u16>,
    /// Worker threads (Envoy's --concurrency); 0 = one per core.
    #[arg(long)]
    concurrency: Option<usize>,
    /// State-of-the-world ADS only (no delta).
    #[arg(long)]
    sotw: bool,
    /// How long to drain on SIGTERM (default PROXY_CONFIG terminationDrainDuration, 5s).
    #[arg(long, value_parser = parse_duration)]
    drain: Option<std::time::Duration>,
    /// JSON access log lines on stdout.
    #[arg(long)]
    access_log: bool,
    /// Log level (RUST_LOG syntax).
    #[arg(long, short = 'l', default_value = "info")]
    log_level: String,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    mast_proxy::config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 5s"))
}

/// mimalloc keeps freed memory committed by default (eagerly committed arenas, purged after
/// a delay); a sidecar's footprint is multiplied by every pod, so free pages go back to the
/// OS at once. Measured on the data-plane benchmark: idle RSS 43 → 14 MB, same throughput.
fn tune_allocator() {
    // Indices of mi_option_arena_eager_commit and mi_option_purge_delay in mimalloc.h (v2),
    // which libmimalloc-sys does not name.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option setters, called before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let args = Args::parse();
    let overrides = Overrides {
        pod_name: args.pod_name,
        pod_namespace: args.pod_namespace,
        instance_ip: args.instance_ip,
        service_account: args.service_account,
        discovery_address: args.discovery_address,
        ca_address: args.ca_address,
        ca_root_cert: args.ca_root_cert,
        ca_token_file: args.ca_token_file,
        sds_socket: args.sds_socket,
        agent: args.agent,
        labels: args.labels,
        interception_mode: args.interception_mode,
        static_config: args.config,
        admin_port: args.admin_port,
        status_port: args.status_port,
        stats_port: args.stats_port,
        concurrency: args.concurrency,
        sotw: args.sotw,
        drain: args.drain,
    };
    let config = match Config::from_env(&ProcessEnv, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mast-proxy: bad configuration: {e}");
            return ExitCode::from(64);
        }
    };

    let filter = std::env::var("RUST_LOG").unwrap_or(args.log_level);
    let filter = match EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mast-proxy: bad log level {filter:?}: {e}");
            return ExitCode::from(64);
        }
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let reload: mast_proxy::shared::LogReload = Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    });

    let runtime = if config.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.concurrency)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mast-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(node = %config.node_id(), concurrency = config.concurrency, "mast-proxy starting");
    match runtime.block_on(mast_proxy::app::run(config, args.access_log, Some(reload))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mast-proxy: {e}");
            match e {
                mast_proxy::app::Error::Static(_) | mast_proxy::app::Error::Rejected { .. } => {
                    ExitCode::from(64)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}
