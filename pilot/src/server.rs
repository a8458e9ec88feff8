//! Wiring: the config source (the folder source, or one the host hands in), the ADS gRPC
//! server and the debug HTTP server, run together until shutdown. Listeners are bound before
//! anything is served so that a busy port is a clear start-up error, not a log line later.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use crate::ads::{AdsServer, ConnectionRegistry, Generator, Snapshot};
use crate::debug::{self, DebugState};
use crate::metrics::Metrics;
use crate::source::{ConfigSource, Debounce, FolderSource, SourceContext, SourceStatus};

#[derive(Clone, Debug)]
pub struct PilotConfig {
    pub config_dirs: Vec<PathBuf>,
    pub xds_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub debounce: Debounce,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("config directory {0} does not exist or is not a directory")]
    NoConfigDir(PathBuf),
    #[error(transparent)]
    Source(#[from] crate::source::Error),
    #[error("xDS server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("debug HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Addresses actually bound (useful with port 0 in tests).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub xds: SocketAddr,
    pub http: SocketAddr,
}

/// Run pilot until `shutdown` completes. `on_bound` is told the bound addresses once
/// listening.
pub async fn run<G: Generator>(
    config: PilotConfig,
    generator: G,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<(), Error> {
    run_with_registry(config, generator, Registry::default(), shutdown, on_bound).await
}

/// [`run`], serving on `/metrics` the other components' metrics already in `registry`
/// (mastd's citadel) beside pilot's own.
pub async fn run_with_registry<G: Generator>(
    config: PilotConfig,
    generator: G,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<(), Error> {
    run_hosted(config, generator, registry, shutdown, |bound, _| {
        on_bound(bound)
    })
    .await
}

/// What the other components hosted with pilot (mastd's telemetry collector) may read of its
/// state: the connected proxies and the current mesh model.
#[derive(Clone)]
pub struct Handles {
    pub connections: Arc<ConnectionRegistry>,
    pub snapshots: watch::Receiver<Snapshot>,
}

/// [`run_with_registry`], also handing pilot's [`Handles`] to `on_bound`.
pub async fn run_hosted<G: Generator>(
    config: PilotConfig,
    generator: G,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound, Handles),
) -> Result<(), Error> {
    for dir in &config.config_dirs {
        if !dir.is_dir() {
            return Err(Error::NoConfigDir(dir.clone()));
        }
    }
    let (dirs, debounce) = (config.config_dirs.clone(), config.debounce);
    run_with_source(
        config,
        move |ctx| FolderSource::new(dirs, debounce, ctx.status, ctx.metrics),
        generator,
        registry,
        shutdown,
        on_bound,
    )
    .await
}

/// [`run_hosted`] with config from another source than the folders (`config.config_dirs` is
/// not read): `make_source` is given where to report, and pilot serves its initial snapshot.
pub async fn run_with_source<G: Generator, S: ConfigSource>(
    config: PilotConfig,
    make_source: impl FnOnce(SourceContext) -> S,
    generator: G,
    mut registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound, Handles),
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new(&mut registry));
    let status = Arc::new(SourceStatus::default());
    let mut source = make_source(SourceContext {
        status: status.clone(),
        metrics: metrics.clone(),
    });
    let (publish, snapshots) = watch::channel(source.initial_snapshot());
    let generator = Arc::new(generator);
    let connections = Arc::new(ConnectionRegistry::default());

    let xds_listener = bind("xDS", config.xds_addr).await?;
    let http_listener = bind("debug HTTP", config.http_addr).await?;
    let bound = Bound {
        xds: xds_listener.local_addr().map_err(|source| Error::Bind {
            what: "xDS",
            addr: config.xds_addr,
            source,
        })?,
        http: http_listener.local_addr().map_err(|source| Error::Bind {
            what: "debug HTTP",
            addr: config.http_addr,
            source,
        })?,
    };
    info!(xds = %bound.xds, http = %bound.http, "pilot listening");
    on_bound(
        bound,
        Handles {
            connections: connections.clone(),
            snapshots: snapshots.clone(),
        },
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let ads = AdsServer::new(
        generator.clone(),
        snapshots.clone(),
        connections.clone(),
        metrics,
    );
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(xds_listener),
            stopped(stop_rx.clone()),
        );
    let http = axum::serve(
        http_listener,
        debug::router(Arc::new(DebugState {
            registry: Arc::new(registry),
            connections,
            snapshots,
            source: status,
            generator,
        })),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let watch_task = source.run(publish);

    tokio::select! {
        r = grpc => r?,
        r = http => r.map_err(Error::Http)?,
        r = watch_task => r?,
    }
    Ok(())
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}
