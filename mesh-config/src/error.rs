//! Errors that point at the user's YAML.
//!
//! A mesh is configured by people editing files; when one is wrong the only useful error says
//! exactly where: the file, the document in it, the resource (kind/namespace/name), the field
//! path, and the line when the parser knows it. Every rejection in the crate is a
//! [`ConfigError`], so `mastctl analyze`, mastd's log and `/debug` all print the same text.

use std::fmt;
use std::path::PathBuf;

use crate::model::ResourceRef;

/// One rejected document or resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the document came from (empty for in-memory input).
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// The resource, when the document got far enough to name one.
    pub resource: Option<ResourceRef>,
    /// Kubernetes-style field path (`spec.http[0].route[1].weight`); empty for whole-document
    /// errors such as YAML syntax.
    pub field: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, " (document {})", self.document)?;
        if let Some(r) = &self.resource {
            write!(f, " {r}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// Something accepted that does not do what its author may think: two resources claiming the
/// same thing, one of them set aside. Nothing is rejected; `mastctl analyze` and mastd report
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The resource set aside.
    pub resource: ResourceRef,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.resource, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_everything() {
        let e = ConfigError {
            file: "cfg/user-split.yaml".into(),
            document: 2,
            resource: Some(ResourceRef {
                kind: "VirtualService".into(),
                namespace: "default".into(),
                name: "user".into(),
            }),
            field: "spec.http[0].route[1].weight".into(),
            line: Some(14),
            message: "-10 is negative; weights are relative shares ≥ 0".into(),
        };
        assert_eq!(
            e.to_string(),
            "cfg/user-split.yaml:14 (document 2) VirtualService default/user: \
             spec.http[0].route[1].weight: -10 is negative; weights are relative shares ≥ 0"
        );
    }
}
