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
    /// Pushes in flight at once (istiod's `PILOT_PUSH_THROTTLE`).
    pub push_throttle: usize,
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

/// What the other components hosted with pilot (mastd's telemetry collector) may read of its
/// state: the connected proxies and the current mesh model.
#[derive(Clone)]
pub struct Handles {
    pub connections: Arc<ConnectionRegistry>,
    pub snapshots: watch::Receiver<Snapshot>,
}

/// pilot as its host starts it: `Pilot::new(config, generator)`, then what the host adds —
/// the metrics registry pilot serves beside its own (mastd's citadel), a config source other
/// than the folders (mastd's Kubernetes source), a callback once the listeners are bound —
/// and [`Pilot::run`] until shutdown.
pub struct Pilot<G, M = Folders, B = fn(Bound, Handles)> {
    config: PilotConfig,
    generator: G,
    registry: Registry,
    make_source: M,
    on_bound: B,
}

/// What makes pilot's config source once pilot knows where the source reports.
pub trait MakeSource {
    type Source: ConfigSource;

    /// Fails before anything is bound when the source cannot work (a missing folder).
    fn check(&self) -> Result<(), Error> {
        Ok(())
    }

    fn make(self, ctx: SourceContext) -> Self::Source;
}

/// The default source: `config.config_dirs`, watched.
pub struct Folders {
    dirs: Vec<PathBuf>,
    debounce: Debounce,
}

impl MakeSource for Folders {
    type Source = FolderSource;

    fn check(&self) -> Result<(), Error> {
        match self.dirs.iter().find(|d| !d.is_dir()) {
            Some(dir) => Err(Error::NoConfigDir(dir.clone())),
            None => Ok(()),
        }
    }

    fn make(self, ctx: SourceContext) -> FolderSource {
        FolderSource::new(self.dirs, self.debounce, ctx.status, ctx.metrics)
    }
}

/// A source the host makes ([`Pilot::source`]).
pub struct Custom<F>(F);

impl<F, S> MakeSource for Custom<F>
where
    F: FnOnce(SourceContext) -> S,
    S: ConfigSource,
{
    type Source = S;

    fn make(self, ctx: SourceContext) -> S {
        (self.0)(ctx)
    }
}

impl<G: Generator> Pilot<G> {
    /// pilot on `config`'s folders and addresses, with a registry of its own.
    pub fn new(config: PilotConfig, generator: G) -> Self {
        let make_source = Folders {
            dirs: config.config_dirs.clone(),
            debounce: config.debounce,
        };
        Self {
            config,
            generator,
            registry: Registry::default(),
            make_source,
            on_bound: |_, _| {},
        }
    }
}

impl<G: Generator, M: MakeSource, B: FnOnce(Bound, Handles)> Pilot<G, M, B> {
    /// Serve on `/metrics` the metrics already in `registry` beside pilot's own.
    pub fn registry(self, registry: Registry) -> Self {
        Self { registry, ..self }
    }

    /// Take the config from the source `make` returns instead of the folders
    /// (`config.config_dirs` is then not read); pilot serves its initial snapshot first.
    pub fn source<F, S>(self, make: F) -> Pilot<G, Custom<F>, B>
    where
        F: FnOnce(SourceContext) -> S,
        S: ConfigSource,
    {
        Pilot {
            config: self.config,
            generator: self.generator,
            registry: self.registry,
            make_source: Custom(make),
            on_bound: self.on_bound,
        }
    }

    /// Called once listening, with the bound addresses (port 0 in tests) and the
    /// [`Handles`] other hosted components read.
    pub fn on_bound<C: FnOnce(Bound, Handles)>(self, on_bound: C) -> Pilot<G, M, C> {
        Pilot {
            config: self.config,
            generator: self.generator,
            registry: self.registry,
            make_source: self.make_source,
            on_bound,
        }
    }

    /// Run until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Self {
            config,
            generator,
            mut registry,
            make_source,
            on_bound,
        } = self;
        make_source.check()?;
        let metrics = Arc::new(Metrics::new(&mut registry));
        let status = Arc::new(SourceStatus::default());
        let mut source = make_source.make(SourceContext {
            status: status.clone(),
            metrics: metrics.clone(),
        });
        // The source publishes to `raw`; the JWKS resolver republishes each snapshot with the
        // keys of RequestAuthentication `jwksUri`s written in, and pushes when they change.
        let initial = source.initial_snapshot();
        let (publish, raw) = watch::channel(initial.clone());
        let (resolved, snapshots) = watch::channel(initial);
        tokio::spawn(crate::xds::jwt::run_resolver(
            raw,
            resolved,
            crate::xds::jwt::DEFAULT_REFRESH,
        ));
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
        )
        .with_push_throttle(config.push_throttle);
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
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}
