//! `mastd --kube`: pilot's config from the Kubernetes API instead of a folder.
//!
//! mast-kube's source knows nothing of pilot (so tools can read a cluster's mesh without the
//! xDS server); this adapter is the one place that turns its updates into pilot's snapshots
//! and reports its rejections where the folder source reports them (`/debug`, metrics).
//! mastd waits for the first full list of every kind before it serves: a proxy must never be
//! given an empty mesh because the API server answered slowly, which is what Istio does too
//! (its caches sync before the xDS server takes connections).

use std::path::PathBuf;

use mast_kube::client::ClientSource;
use mast_kube::source::{self, KubeSource, Update};
use mast_pilot::ads::Snapshot;
use mast_pilot::source::{ConfigSource, Debounce, Error, SourceContext};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes: {0}")]
    Client(#[from] mast_kube::client::Error),
    #[error("kubernetes: {0}")]
    Source(#[from] source::Error),
}

/// Where the API server is: `--kubeconfig PATH`, else `KUBECONFIG`/in-cluster as kubectl.
pub fn client_source(kubeconfig: Option<PathBuf>) -> ClientSource {
    match kubeconfig {
        Some(path) => ClientSource::Kubeconfig(path),
        None => ClientSource::Infer,
    }
}

/// Connect, discover, and wait for the first full list: the source, ready for pilot.
pub async fn start(
    client: &ClientSource,
    debounce: Debounce,
    write_status: mast_kube::status::WriteGate,
) -> Result<(KubeSource, Update), KubeError> {
    let client = mast_kube::client::client(client).await?;
    let options = source::Options {
        debounce: source::Debounce {
            quiet: debounce.quiet,
            max: debounce.max,
        },
        write_status,
    };
    let mut source = KubeSource::start(client, options).await?;
    let first = source.initial_sync().await?;
    Ok((source, first))
}

/// The Kubernetes source as pilot's [`ConfigSource`].
pub struct PilotSource {
    source: KubeSource,
    first: Option<Update>,
    ctx: SourceContext,
    version: u64,
}

// === impl PilotSource ===

impl PilotSource {
    pub fn new(source: KubeSource, first: Update, ctx: SourceContext) -> Self {
        Self {
            source,
            first: Some(first),
            ctx,
            version: 0,
        }
    }

    fn report(ctx: &SourceContext, update: &Update) {
        ctx.metrics.rejected_configs.set(update.errors.len() as i64);
        ctx.status.set_errors(update.errors.clone());
    }
}

impl ConfigSource for PilotSource {
    fn initial_snapshot(&mut self) -> Snapshot {
        self.version = 1;
        match self.first.take() {
            Some(first) => {
                Self::report(&self.ctx, &first);
                Snapshot::new(self.version, first.model, first.first_change)
            }
            None => Snapshot::new(self.version, Default::default(), std::time::Instant::now()),
        }
    }

    fn run(
        self,
        publish: watch::Sender<Snapshot>,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        let Self {
            source,
            ctx,
            mut version,
            ..
        } = self;
        async move {
            source
                .run(move |update| {
                    Self::report(&ctx, &update);
                    if !update.changed {
                        return !publish.is_closed();
                    }
                    version += 1;
                    ctx.metrics.config_changes.inc();
                    tracing::info!(version, "config changed; pushing");
                    publish
                        .send(Snapshot::new(version, update.model, update.first_change))
                        .is_ok()
                })
                .await;
            Ok(())
        }
    }
}
