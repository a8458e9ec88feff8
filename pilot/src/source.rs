//! The folder config source: watch directories of YAML, keep the last good config, publish
//! model snapshots.
//!
//! Edits arrive as bursts of file-system events (an editor writes a temp file, renames it,
//! touches the directory), so events are debounced the way istiod debounces pushes: wait for
//! 100 ms of quiet, but never longer than 10 s after the first event. Every reload re-reads the
//! whole folder; the [`ConfigStore`] decides what changed and keeps the last good version of
//! any resource that is now invalid, so a bad edit never takes config away from proxies.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mast_mesh_config::source::read_config_dirs;
use mast_mesh_config::store::ConfigStore;
use mast_mesh_config::{ConfigError, ConfigWarning};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use crate::ads::Snapshot;
use crate::metrics::Metrics;

pub use mast_mesh_config::source::Debounce;

/// What the folder source reports to the debug endpoints.
#[derive(Debug, Default)]
pub struct SourceStatus {
    errors: Mutex<Vec<ConfigError>>,
    warnings: Mutex<Vec<ConfigWarning>>,
}

impl SourceStatus {
    pub fn errors(&self) -> Vec<ConfigError> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What is accepted but set aside now.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replace what is set aside now.
    pub fn set_warnings(&self, warnings: Vec<ConfigWarning>) {
        *self.warnings.lock().unwrap_or_else(|e| e.into_inner()) = warnings;
    }

    /// Replace what is rejected now (any source reports here).
    pub fn set_errors(&self, errors: Vec<ConfigError>) {
        *self.errors.lock().unwrap_or_else(|e| e.into_inner()) = errors;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// Another source (mastd's Kubernetes source) failed.
    #[error("config source: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where pilot reports what a source rejected and how often the config changed.
#[derive(Clone)]
pub struct SourceContext {
    pub status: Arc<SourceStatus>,
    pub metrics: Arc<Metrics>,
}

/// Where pilot's config comes from: the folder source, or one hosted with pilot (mastd's
/// Kubernetes source). pilot serves the initial snapshot before anything else, then runs the
/// source, which publishes a new snapshot on every accepted change.
pub trait ConfigSource: Send + 'static {
    fn initial_snapshot(&mut self) -> Snapshot;

    /// Publish until `publish` has no receivers left.
    fn run(
        self,
        publish: watch::Sender<Snapshot>,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send;
}

/// Watches config directories and publishes a [`Snapshot`] on every accepted change.
pub struct FolderSource {
    dirs: Vec<PathBuf>,
    store: ConfigStore,
    debounce: Debounce,
    status: Arc<SourceStatus>,
    metrics: Arc<Metrics>,
    version: u64,
}

// === impl FolderSource ===

impl FolderSource {
    pub fn new(
        dirs: Vec<PathBuf>,
        debounce: Debounce,
        status: Arc<SourceStatus>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            dirs,
            store: ConfigStore::default(),
            debounce,
            status,
            metrics,
            version: 0,
        }
    }

    /// Load the folders once, synchronously: mastd serves nothing before the first load.
    pub fn initial_snapshot(&mut self) -> Snapshot {
        let started = std::time::Instant::now();
        self.reload();
        self.version = 1;
        Snapshot::new(self.version, self.store.model(), started)
    }

    /// Watch for changes until `publish` has no receivers left.
    pub async fn run(mut self, publish: watch::Sender<Snapshot>) -> Result<(), Error> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })
            .map_err(|source| Error::Watch {
                path: PathBuf::new(),
                source,
            })?;
        for dir in &self.dirs {
            watch_dir(&mut watcher, dir)?;
        }
        while rx.recv().await.is_some() {
            let first = std::time::Instant::now();
            // One trace per change, into mastd's trace store (target mast::trace): the
            // debounce wait, the read, the validation and the publish, from the first event.
            let change = tracing::info_span!(target: "mast::trace", "config.change", changed = tracing::field::Empty, version = tracing::field::Empty);
            let debounce = tracing::info_span!(target: "mast::trace", parent: &change, "config.debounce", events = tracing::field::Empty);
            let mut events = 1u64;
            let deadline = Instant::now() + self.debounce.max;
            let mut quiet_until = Instant::now() + self.debounce.quiet;
            loop {
                tokio::select! {
                    ev = rx.recv() => {
                        if ev.is_none() {
                            return Ok(());
                        }
                        events += 1;
                        quiet_until = (Instant::now() + self.debounce.quiet).min(deadline);
                    }
                    _ = sleep_until(quiet_until) => break,
                }
            }
            debounce.record("events", events);
            drop(debounce);
            let changed = change.in_scope(|| self.reload());
            change.record("changed", changed);
            if changed {
                let _in_change = change.enter();
                let _publish =
                    tracing::info_span!(target: "mast::trace", "config.publish").entered();
                self.version += 1;
                change.record("version", self.version);
                self.metrics.config_changes.inc();
                info!(version = self.version, "config changed; pushing");
                let snapshot = Snapshot::new(self.version, self.store.model(), first);
                if publish.send(snapshot).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Re-read every folder; true when the model changed.
    fn reload(&mut self) -> bool {
        let read = tracing::info_span!(target: "mast::trace", "config.read").entered();
        let files = match read_config_dirs(&self.dirs) {
            Ok(files) => files,
            Err(e) => {
                // Unreadable folder (mid-rename, permissions): keep everything as it is.
                error!(error = %e, "cannot read config folders; keeping the current config");
                return false;
            }
        };
        let file_count = files.len();
        drop(read);
        let _validate =
            tracing::info_span!(target: "mast::trace", "config.validate", files = file_count)
                .entered();
        let report = self.store.apply_files(files);
        for e in &report.errors {
            warn!("config rejected, last good version kept: {e}");
        }
        if report.changed || self.version == 0 {
            for w in &report.warnings {
                warn!("config set aside: {w}");
            }
            let model = self.store.model();
            info!(
                files = file_count,
                services = model.services.len(),
                workloads = model.workloads.len(),
                routes = model.routes.len(),
                destination_rules = model.destination_policies.len(),
                rejected = report.errors.len(),
                "config loaded"
            );
        }
        let errors = self.store.errors().to_vec();
        self.metrics.rejected_configs.set(errors.len() as i64);
        self.status.set_errors(errors);
        self.status.set_warnings(report.warnings);
        report.changed
    }
}

impl ConfigSource for FolderSource {
    fn initial_snapshot(&mut self) -> Snapshot {
        FolderSource::initial_snapshot(self)
    }

    fn run(
        self,
        publish: watch::Sender<Snapshot>,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        FolderSource::run(self, publish)
    }
}

fn watch_dir(watcher: &mut RecommendedWatcher, dir: &Path) -> Result<(), Error> {
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|source| Error::Watch {
            path: dir.to_path_buf(),
            source,
        })
}
