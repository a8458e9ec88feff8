//! Dialect parsers: from a YAML/JSON document to a validated resource that knows how to add
//! itself to the [`MeshModel`].
//!
//! Each dialect module (`kube`, `istio`, `gateway`, `smi`, `knative`) exposes one function,
//! `parse(&Document) -> Option<Result<Box<dyn MeshResource>, Vec<FieldError>>>`, answering
//! `None` for a kind it does not own. Validation happens in `parse`, per resource, so one bad
//! resource is rejected alone; references between resources (a VirtualService naming a subset
//! of a DestinationRule) are checked once the model holds everything, by
//! [`MeshResource::check_references`].

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::ConfigError;
use crate::model::{Labels, MeshModel, ResourceRef};

pub mod duration;
pub mod gateway;
pub mod istio;
pub mod knative;
pub mod kube;
pub mod mesh_config;
pub mod smi;

/// One YAML document of a file, with what every Kubernetes-style resource carries.
#[derive(Clone, Debug)]
pub struct Document<'a> {
    pub file: &'a Path,
    /// 1-based index of the document in its file.
    pub index: usize,
    /// 1-based line of the file where this document's text starts.
    pub start_line: usize,
    /// The document's own text (without the `---` separator).
    pub text: &'a str,
    /// The document parsed untyped, for dispatch and for dialects that need it.
    pub value: serde_json::Value,
    pub meta: Meta,
}

/// `apiVersion`, `kind` and `metadata`, read before any typed parsing so errors can name the
/// resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// `networking.istio.io/v1`
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `default` when the document does not say.
    pub namespace: String,
    pub labels: Labels,
    pub annotations: Labels,
}

impl Meta {
    /// The API group (`networking.istio.io`; empty for the core group `v1`).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }

    /// The API version without the group (`v1beta1`).
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(_, v)| v)
            .unwrap_or(&self.api_version)
    }

    pub fn resource_ref(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// A problem with one field of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Kubernetes-style path: `spec.http[0].route[1].weight`.
    pub field: String,
    pub message: String,
    /// 1-based line in the file, when the parser knows it.
    pub line: Option<usize>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            line: None,
        }
    }

    /// The full error for a resource of `doc`.
    pub fn into_config_error(self, doc: &Document<'_>) -> ConfigError {
        let line = self.line.or_else(|| {
            crate::locate::line_of(doc.text, &self.field).map(|l| doc.start_line + l - 1)
        });
        ConfigError {
            file: doc.file.to_path_buf(),
            document: doc.index,
            resource: Some(doc.meta.resource_ref()),
            field: self.field,
            line,
            message: self.message,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A parsed, validated resource of any dialect.
pub trait MeshResource: fmt::Debug + Send + Sync {
    /// Add what this resource declares to the model. Runs after `parse` accepted it, so it
    /// cannot fail; resources are translated in a fixed kind order (namespaces, services,
    /// workloads, destination policies, then routes and sidecars), so a route may look up the
    /// services and subsets already in `model`.
    fn translate(&self, meta: &Meta, model: &mut MeshModel);

    /// References to other resources that do not resolve in the complete model (an unknown
    /// subset, a backend service that does not exist). A resource with errors here is
    /// rejected and its last good version is used instead.
    fn check_references(&self, _meta: &Meta, _model: &MeshModel) -> Vec<FieldError> {
        Vec::new()
    }
}

/// A kind the mesh accepts and validates but does not act on (ingress Gateways, policies that
/// take effect in later components): it is checked, and adds nothing to the model.
#[derive(Debug)]
pub struct Accepted;

impl MeshResource for Accepted {
    fn translate(&self, _meta: &Meta, _model: &mut MeshModel) {}
}

/// The outcome of one dialect's `parse`.
pub type ParseResult = Option<Result<Box<dyn MeshResource>, Vec<FieldError>>>;

/// Parse a document with whichever dialect owns its kind. `None`: no dialect knows the kind,
/// and the document is ignored (as Istio ignores kinds it does not watch).
pub fn parse(doc: &Document<'_>) -> ParseResult {
    kube::parse(doc)
        .or_else(|| istio::parse(doc))
        .or_else(|| gateway::parse(doc))
        .or_else(|| smi::parse(doc))
        .or_else(|| knative::parse(doc))
}

/// Deserialize the whole document as `T`, turning serde's first error into a [`FieldError`]
/// with the field path and the file line.
pub fn deserialize<T: DeserializeOwned>(doc: &Document<'_>) -> Result<T, FieldError> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(doc.text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let line = e.location().map(|l| doc.start_line + l.line() as usize - 1);
        let message = short_message(&e.to_string());
        // serde names a missing field only in its message, at its parent's path: at the
        // document's root that path is empty, so the error would name no field at all.
        let field = match (path.as_str(), missing_field(&message)) {
            (".", Some(missing)) => missing.to_string(),
            (".", None) => String::new(),
            _ => path,
        };
        FieldError {
            field,
            message,
            line,
        }
    })
}

/// The field serde's "missing field `x`" names.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(field, _)| field)
}

/// serde-saphyr renders errors with a source snippet; keep just the first line's message, since
/// [`ConfigError`] prints the place itself.
pub(crate) fn short_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "line 5 column 13: invalid u32" → "invalid u32"
    match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest.to_string(),
        _ => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_message_drops_position() {
        assert_eq!(
            short_message("error: line 5 column 13: invalid u32\n --> <input>:5:13"),
            "invalid u32"
        );
        assert_eq!(short_message("plain"), "plain");
    }

    /// Found by the fuzz target `config-yaml` (mesh-config/tests/fuzz.rs): a document
    /// whose `spec:` line was lost was rejected with no field named.
    #[test]
    fn fuzz_regression_missing_spec_names_the_field() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\n  host: d\n";
        let (docs, errors) = crate::source::parse_documents(std::path::Path::new("f.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        let Some(Err(errors)) = parse(&docs[0]) else {
            panic!("a DestinationRule without spec must be rejected");
        };
        assert_eq!(errors[0].field, "spec", "{errors:?}");
        assert_eq!(missing_field("missing field `spec`"), Some("spec"));
        assert_eq!(missing_field("invalid type"), None);
    }

    #[test]
    fn meta_group_and_version() {
        let m = Meta {
            api_version: "networking.istio.io/v1beta1".into(),
            ..Meta::default()
        };
        assert_eq!(m.group(), "networking.istio.io");
        assert_eq!(m.version(), "v1beta1");
        let core = Meta {
            api_version: "v1".into(),
            ..Meta::default()
        };
        assert_eq!(core.group(), "");
        assert_eq!(core.version(), "v1");
    }
}
