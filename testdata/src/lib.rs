//! Where the third-party test data lives: `testdata/upstream/` in this repository (Istio,
//! Envoy config dumps, Gateway API, SMI, Knative and AdmissionReview files, each unmodified, with
//! their provenance in `testdata/upstream/SOURCES.md`).
//!
//! Every test and bench that reads that corpus finds it here, so there is one rule: the
//! `MAST_CORPUS_DIR` environment variable when it is set (a newer copy, or a checkout elsewhere),
//! else the folder inside the repository. Nothing is read from above the repository root.

pub mod fuzz;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Overrides the corpus folder (the same layout as `testdata/upstream`).
pub const CORPUS_DIR_ENV: &str = "MAST_CORPUS_DIR";

/// The repository root: this crate sits in `testdata/` directly under it.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The corpus folder: `MAST_CORPUS_DIR` when set, else `testdata/upstream` in the repository.
pub fn corpus_dir() -> PathBuf {
    corpus_dir_from(std::env::var_os(CORPUS_DIR_ENV))
}

/// A file or folder of the corpus, by its path inside it (`istio-inject/hello.yaml`). Tests
/// depend on the corpus being there, so a missing entry is a panic naming where it was looked
/// for, not a silent skip.
pub fn corpus(relative: &str) -> PathBuf {
    let path = corpus_dir().join(relative);
    assert!(
        path.exists(),
        "corpus entry {} not found (the corpus is testdata/upstream; {CORPUS_DIR_ENV} overrides it)",
        path.display()
    );
    path
}

/// A corpus file's text as a user would apply it, by its path inside the corpus: SMI spec
/// snippets omit `apiVersion` (TrafficSplits are `split.smi-spec.io/v1alpha4`, the route groups
/// they refer to `specs.smi-spec.io/v1alpha4`), and Knative's docs elide with `...` lines. Other
/// files are returned as they are. The files themselves stay unmodified, as vendored.
pub fn prepared(relative: &str, text: &str) -> String {
    if relative.starts_with("smi/spec-snippets") {
        return text
            .split("\n---\n")
            .map(|doc| {
                if doc.contains("apiVersion:") {
                    doc.to_string()
                } else if doc.contains("kind: TrafficSplit") {
                    format!("apiVersion: split.smi-spec.io/v1alpha4\n{doc}")
                } else {
                    format!("apiVersion: specs.smi-spec.io/v1alpha4\n{doc}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n---\n");
    }
    if relative.starts_with("knative") {
        return text
            .lines()
            .filter(|l| l.trim() != "...")
            .map(|l| format!("{l}\n"))
            .collect();
    }
    text.to_string()
}

/// The rule itself, with the environment passed in so it can be tested without mutating the
/// process environment.
fn corpus_dir_from(var: Option<OsString>) -> PathBuf {
    match var {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("testdata").join("upstream"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_inside_the_repository_unless_overridden() {
        let default = corpus_dir_from(None);
        assert!(default.starts_with(workspace_root()));
        assert!(
            default.join("SOURCES.md").is_file(),
            "{}",
            default.display()
        );
        assert_eq!(corpus_dir_from(Some("".into())), default);
        assert_eq!(
            corpus_dir_from(Some("/elsewhere/corpus".into())),
            PathBuf::from("/elsewhere/corpus")
        );
        assert!(workspace_root().join("Cargo.lock").is_file());
    }
}
