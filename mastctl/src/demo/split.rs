//! Watching the config folders as mastd does, to tell the person at the terminal what their
//! edit did: the `user` split's new weights, or why the edit was rejected. The demo reads the
//! files through the same store as mastd (`mast_mesh_config`), so a rejected edit keeps the
//! last good split here exactly as it does in pilot, and the message is the one mastd logs
//! (file, resource, field).
//!
//! Polling (every 200 ms, comparing file contents) rather than inotify: editors replace files
//! in several ways (rename over, truncate and write, vim's swap dance) and a content compare
//! sees them all; the folders are small.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mast_mesh_config::model::{MeshModel, RouteAction};
use mast_mesh_config::source::read_config_dirs;
use mast_mesh_config::store::ConfigStore;

/// Percent of the `user` traffic per subset (`v1` → 50).
pub type Weights = BTreeMap<String, u32>;

/// The config folders, as last read.
pub struct SplitWatcher {
    dirs: Vec<PathBuf>,
    host: String,
    files: BTreeMap<PathBuf, String>,
    store: ConfigStore,
}

/// What one read of the folders found, when anything changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Files added, removed or edited since the last read.
    pub files: Vec<PathBuf>,
    /// The split in force after this read (the last good one when the edit was rejected).
    pub weights: Weights,
    /// Why resources were rejected, one message per resource (empty: all applied).
    pub errors: Vec<String>,
}

impl SplitWatcher {
    /// Reads the folders once. `host` is the split service's FQDN.
    pub fn new(dirs: Vec<PathBuf>, host: &str) -> std::io::Result<(Self, Change)> {
        let mut w = Self {
            dirs,
            host: host.to_string(),
            files: BTreeMap::new(),
            store: ConfigStore::default(),
        };
        let files = read_config_dirs(&w.dirs)?;
        let change = w.apply(files);
        Ok((w, change))
    }

    /// The mesh as mastd sees it now.
    pub fn model(&self) -> std::sync::Arc<MeshModel> {
        self.store.model()
    }

    /// Reads the folders again; `None` when no file changed. A folder that cannot be read is
    /// reported as an error and changes nothing.
    pub fn poll(&mut self) -> Option<Change> {
        match read_config_dirs(&self.dirs) {
            Ok(files) if files == self.files => None,
            Ok(files) => Some(self.apply(files)),
            Err(e) => Some(Change {
                files: Vec::new(),
                weights: self.weights(),
                errors: vec![format!("reading the config folders: {e}")],
            }),
        }
    }

    fn apply(&mut self, files: BTreeMap<PathBuf, String>) -> Change {
        let mut changed: Vec<PathBuf> = files
            .iter()
            .filter(|(path, text)| self.files.get(*path) != Some(text))
            .map(|(path, _)| path.clone())
            .collect();
        changed.extend(
            self.files
                .keys()
                .filter(|path| !files.contains_key(*path))
                .cloned(),
        );
        self.files = files.clone();
        let report = self.store.apply_files(files);
        Change {
            files: changed,
            weights: self.weights(),
            errors: report.errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// The split of the catch-all HTTP route for the host: subset → weight.
    pub fn weights(&self) -> Weights {
        split_of(&self.store.model(), &self.host)
    }
}

/// The weights of `host`'s routes: the first HTTP route without matches (the catch-all), or the
/// first route. Empty when no VirtualService routes the host (the service's own load
/// balancing then spreads it evenly).
pub fn split_of(model: &MeshModel, host: &str) -> Weights {
    let Some(table) = model
        .routes
        .iter()
        .find(|t| t.hosts.iter().any(|h| h == host))
    else {
        return Weights::new();
    };
    let route = table
        .http
        .iter()
        .find(|r| r.matches.is_empty())
        .or_else(|| table.http.first());
    let Some(RouteAction::Forward(dests)) = route.map(|r| &r.action) else {
        return Weights::new();
    };
    let total: u32 = dests.iter().map(|d| d.weight).sum();
    dests
        .iter()
        .map(|d| {
            let name = d
                .destination
                .subset
                .clone()
                .unwrap_or_else(|| d.destination.host.clone());
            // Weights are relative shares (60 and 30 split 2:1); a single destination may omit it.
            let pct = (d.weight * 100)
                .checked_div(total)
                .unwrap_or(100 / u32::try_from(dests.len()).unwrap_or(1).max(1));
            (name, pct)
        })
        .collect()
}

/// `v1 50% / v2 50%`.
pub fn describe(weights: &Weights) -> String {
    if weights.is_empty() {
        return "no split (even spread)".into();
    }
    weights
        .iter()
        .map(|(subset, w)| format!("{subset} {w}%"))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "user.default.svc.cluster.local";

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let sample =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/todolist");
        for entry in std::fs::read_dir(sample).expect("sample") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
        dir
    }

    fn set_split(dir: &std::path::Path, v1: i64, v2: i64) {
        let path = dir.join("user-split.yaml");
        let text = std::fs::read_to_string(&path).expect("read");
        let mut weights = [v1, v2].into_iter();
        let edited: Vec<String> = text
            .lines()
            .map(|l| match l.trim_start().strip_prefix("weight:") {
                Some(_) => format!(
                    "      weight: {}",
                    weights.next().expect("two weights in the sample")
                ),
                None => l.to_string(),
            })
            .collect();
        std::fs::write(path, edited.join("\n")).expect("write");
    }

    #[test]
    fn the_sample_splits_fifty_fifty() {
        let dir = folder();
        let (_, first) = SplitWatcher::new(vec![dir.path().into()], HOST).expect("read");
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(describe(&first.weights), "v1 50% / v2 50%");
    }

    #[test]
    fn an_edit_changes_the_split_and_a_bad_one_keeps_it() {
        let dir = folder();
        let (mut w, _) = SplitWatcher::new(vec![dir.path().into()], HOST).expect("read");
        assert_eq!(w.poll(), None, "nothing changed");

        set_split(dir.path(), 80, 20);
        let change = w.poll().expect("a change");
        assert!(change.errors.is_empty(), "{:?}", change.errors);
        assert_eq!(describe(&change.weights), "v1 80% / v2 20%");
        assert_eq!(change.files, vec![dir.path().join("user-split.yaml")]);

        // Weights are relative, as in current Istio: 60 and 30 split 2:1.
        set_split(dir.path(), 60, 30);
        let change = w.poll().expect("a change");
        assert!(change.errors.is_empty(), "{:?}", change.errors);
        assert_eq!(describe(&change.weights), "v1 66% / v2 33%");

        set_split(dir.path(), -10, 20);
        let change = w.poll().expect("a change");
        assert_eq!(
            describe(&change.weights),
            "v1 66% / v2 33%",
            "last good split stays"
        );
        let error = change.errors.join("\n");
        assert!(
            error.contains("user-split.yaml") && error.contains("-10 is negative"),
            "{error}"
        );

        set_split(dir.path(), 100, 0);
        let change = w.poll().expect("a change");
        assert!(change.errors.is_empty(), "{:?}", change.errors);
        assert_eq!(describe(&change.weights), "v1 100% / v2 0%");
    }
}
