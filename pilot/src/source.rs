//! The folder config source: watch directories of YAML, keep the last good config, publish
//! model snapshots.
//!
//! Edits arrive as bursts of file-system events (an editor writes a temp file, renames it,
//! touches the directory), so events are debounced the way istiod debounces pushes: wait for
//! 100 ms of quiet, but never longer than 10 s after the first event. Every reload re-reads the
//! whole folder; the [`ConfigStore`] decides what changed and keeps the last good version of
//! any resource that is now invalid, so a bad edit never takes config away from proxies.
//!
//! A folder can also go away underneath the watcher: deleted and recreated (a ConfigMap
//! volume), renamed away and back, or its file system unmounted (a network or tmpfs mount
//! that drops out). An inotify watch follows an inode and dies with it, so every second the
//! source compares each folder's (device, inode) with the one it watches and re-arms the watch
//! when they differ. While a folder is missing, or a folder that was a mount point at start is
//! not one any more (its file system is gone and the empty directory beneath shows through),
//! the last good config is kept rather than read as "everything was deleted".

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Hand an accepted change to the connections, as every source does: count it, log it and
/// publish its snapshot inside the change's trace (a `config.publish` child of `change`; the
/// pushes it causes join `change` too). False when nothing listens any more.
pub fn publish_change(
    publish: &watch::Sender<Snapshot>,
    metrics: &Metrics,
    change: &tracing::Span,
    version: u64,
    model: Arc<mast_mesh_config::MeshModel>,
    first_change: std::time::Instant,
) -> bool {
    let _in_change = change.enter();
    let _publish = tracing::info_span!(target: "mast::trace", "config.publish").entered();
    change.record("version", version);
    metrics.record_config_change(model.services.len());
    info!(version, "config changed; pushing");
    publish
        .send(Snapshot::new(version, model, first_change).traced(change))
        .is_ok()
}

/// Watches config directories and publishes a [`Snapshot`] on every accepted change.
pub struct FolderSource {
    dirs: Vec<PathBuf>,
    store: ConfigStore,
    debounce: Debounce,
    status: Arc<SourceStatus>,
    metrics: Arc<Metrics>,
    version: u64,
    /// For each folder: was it a mount point when first read.
    mounted: Vec<bool>,
    /// The model last published.
    published: Arc<mast_mesh_config::MeshModel>,
}

/// How often the watched folders' identities are checked (see the module docs).
const REARM_EVERY: Duration = Duration::from_secs(1);

/// A folder's identity: (device, inode).
type DirId = (u64, u64);

fn dir_id(dir: &Path) -> Option<DirId> {
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Whether `dir` is the root of a file system other than its parent's.
fn is_mount_point(dir: &Path) -> bool {
    let parent = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf));
    match (std::fs::metadata(dir), parent.map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
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
            mounted: Vec::new(),
            published: Arc::default(),
        }
    }

    /// Load the folders once, synchronously: mastd serves nothing before the first load.
    pub fn initial_snapshot(&mut self) -> Snapshot {
        let started = std::time::Instant::now();
        self.mounted = self.dirs.iter().map(|d| is_mount_point(d)).collect();
        self.reload();
        self.version = 1;
        let model = self.store.model();
        self.published = model.clone();
        self.metrics.services.set(model.services.len() as i64);
        Snapshot::new(self.version, model, started)
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
        let mut armed: Vec<Option<DirId>> = self.dirs.iter().map(|d| dir_id(d)).collect();
        let mut rearm = tokio::time::interval(REARM_EVERY);
        rearm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                ev = rx.recv() => if ev.is_none() {
                    return Ok(());
                },
                _ = rearm.tick() => if !self.rearm(&mut watcher, &mut armed) {
                    continue;
                },
            }
            let first = std::time::Instant::now();
            // One trace per change, into mastd's trace store (target mast::trace): the
            // debounce wait, the read, the validation and the publish, from the first event.
            let change = tracing::info_span!(target: "mast::trace", "config.change", changed = tracing::field::Empty, version = tracing::field::Empty);
            let debounce = tracing::info_span!(target: "mast::trace", parent: &change, "config.debounce", events = tracing::field::Empty);
            let mut events = 1u64;
            let deadline = Instant::now() + self.debounce.max;
            let mut quiet_until = Instant::now() + self.debounce.quiet;
            // While changes keep coming, look every `quiet` at what they are: pods coming and
            // going (endpoint churn) are pushed at once rather than after the config settles,
            // which under steady churn would be `max` (10 s) later. Istio's
            // PILOT_ENABLE_EDS_DEBOUNCE=false, decided by content.
            let mut peek_at = Instant::now() + self.debounce.quiet;
            let mut loaded = false;
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
                    _ = sleep_until(peek_at), if peek_at < quiet_until => {
                        peek_at += self.debounce.quiet;
                        change.in_scope(|| self.reload());
                        let model = self.store.model();
                        if self.published.workload_changes(&model, false).is_some_and(|c| !c.is_empty()) {
                            loaded = true;
                            break;
                        }
                    }
                }
            }
            debounce.record("events", events);
            drop(debounce);
            if !loaded {
                change.in_scope(|| self.reload());
            }
            let changed = *self.store.model() != *self.published;
            change.record("changed", changed);
            if changed {
                self.version += 1;
                let model = self.store.model();
                self.published = model.clone();
                if !publish_change(&publish, &self.metrics, &change, self.version, model, first) {
                    return Ok(());
                }
            }
        }
    }

    /// Re-arm the watch of every folder whose identity changed since it was armed (deleted,
    /// recreated, renamed over, remounted); true when one did, so the caller reloads.
    fn rearm(&self, watcher: &mut RecommendedWatcher, armed: &mut [Option<DirId>]) -> bool {
        let mut changed = false;
        for (dir, was) in self.dirs.iter().zip(armed.iter_mut()) {
            let now = dir_id(dir);
            if now == *was {
                continue;
            }
            changed = true;
            let _ = watcher.unwatch(dir);
            match now {
                None => {
                    warn!(dir = %dir.display(), "config folder is gone; keeping the last good config")
                }
                Some(_) => match watch_dir(watcher, dir) {
                    Ok(()) => {
                        info!(dir = %dir.display(), "config folder is back (new inode or file system); watching it again")
                    }
                    Err(e) => {
                        // Try again on the next tick.
                        warn!(error = %e, "cannot watch the config folder again");
                        continue;
                    }
                },
            }
            *was = now;
        }
        changed
    }

    /// A folder that was a mount point and is not one now: its file system is gone.
    fn unmounted(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .zip(&self.mounted)
            .find(|(d, was)| **was && !is_mount_point(d))
            .map(|(d, _)| d.as_path())
    }

    /// Re-read every folder; true when the model changed.
    fn reload(&mut self) -> bool {
        if let Some(dir) = self.unmounted() {
            error!(
                dir = %dir.display(),
                "the config folder's file system is not mounted any more; keeping the current config"
            );
            return false;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: NAME, namespace: default}
spec:
  ports:
  - {name: http, port: 80}
";

    fn service(name: &str) -> String {
        SERVICE.replace("NAME", name)
    }

    async fn next_with(rx: &mut watch::Receiver<Snapshot>, name: &str) -> Snapshot {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                rx.changed().await.expect("the source runs");
                let snap = rx.borrow_and_update().clone();
                if format!("{:?}", snap.model.services).contains(name) {
                    return snap;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no snapshot with {name} within 10 s"))
    }

    /// The folder is deleted (the inotify watch dies with it), then recreated with new
    /// content: the change is picked up; while it is gone the last good config stays.
    #[tokio::test]
    async fn a_deleted_and_recreated_folder_is_watched_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("config");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), service("alpha")).unwrap();
        let mut source = FolderSource::new(
            vec![dir.clone()],
            Debounce {
                quiet: Duration::from_millis(50),
                max: Duration::from_secs(1),
            },
            Arc::default(),
            Arc::new(Metrics::new(
                &mut prometheus_client::registry::Registry::default(),
            )),
        );
        let first = source.initial_snapshot();
        assert!(format!("{:?}", first.model.services).contains("alpha"));
        let (tx, mut rx) = watch::channel(first);
        let task = tokio::spawn(source.run(tx));
        tokio::time::sleep(Duration::from_millis(200)).await;

        std::fs::remove_dir_all(&dir).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "a missing folder must not publish an empty config"
        );
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("b.yaml"), service("bravo")).unwrap();
        let snap = next_with(&mut rx, "bravo").await;
        assert!(!format!("{:?}", snap.model.services).contains("alpha"));
        // And edits after that are seen too (the new inode is watched).
        std::fs::write(dir.join("c.yaml"), service("charlie")).unwrap();
        next_with(&mut rx, "charlie").await;
        task.abort();
    }
}
