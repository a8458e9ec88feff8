//! Reading configuration text: folders of files, files of YAML documents.
//!
//! Users keep mesh config as folders of multi-document YAML (and the odd JSON file). This
//! module turns them into [`Document`]s that remember where they came from — file, document
//! index and first line — so every later error can point back at the text.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::dialect::{Document, Meta, short_message};
use crate::error::ConfigError;

/// Kinds that live outside namespaces; everything else defaults to `default`.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "GatewayClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// The text of one document and where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDocument<'a> {
    /// 1-based index of the document in its file.
    pub index: usize,
    /// 1-based line where the document's text starts.
    pub start_line: usize,
    pub text: &'a str,
}

/// Split a YAML stream into documents at `---` lines (a `---` may carry a comment or, rarely,
/// content after it). Empty documents are kept here and skipped by [`parse_documents`], so
/// document numbers match what a person counts in the file.
pub fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    let mut leading = true;
    for (line_no, line) in (1usize..).zip(text.split_inclusive('\n')) {
        let trimmed = line.trim_end_matches(['\n', '\r']);
        let is_separator =
            trimmed == "---" || trimmed.starts_with("--- ") || trimmed.starts_with("---\t");
        if is_separator {
            // A `---` before any content opens the first document rather than ending one.
            if !(leading && text[start..offset].trim().is_empty()) {
                docs.push(RawDocument {
                    index: docs.len() + 1,
                    start_line,
                    text: &text[start..offset],
                });
            }
            leading = false;
            // Content after `--- ` on the same line belongs to the next document.
            let after = trimmed.len().min(4);
            start = offset + after;
            start_line = line_no;
            if trimmed.len() <= 4 {
                start = offset + line.len();
                start_line = line_no + 1;
            }
        }
        offset += line.len();
    }
    if !text[start..].trim().is_empty() || docs.is_empty() {
        docs.push(RawDocument {
            index: docs.len() + 1,
            start_line,
            text: &text[start..],
        });
    }
    docs
}

/// Parse every non-empty document of a file. Documents that are not YAML, or whose
/// `apiVersion`/`kind`/`metadata` are malformed, come back as errors; the others are ready
/// for [`crate::dialect::parse`].
pub fn parse_documents<'a>(file: &'a Path, text: &'a str) -> (Vec<Document<'a>>, Vec<ConfigError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for raw in split_documents(text) {
        let error = |line: Option<usize>, message: String| ConfigError {
            file: file.to_path_buf(),
            document: raw.index,
            resource: None,
            field: String::new(),
            line,
            message,
        };
        let value: Value = match serde_saphyr::from_str::<Option<Value>>(raw.text) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                let line = e.location().map(|l| raw.start_line + l.line() as usize - 1);
                errors.push(error(
                    line,
                    format!("invalid YAML: {}", short_message(&e.to_string())),
                ));
                continue;
            }
        };
        if value.is_null() || value.as_object().is_some_and(|o| o.is_empty()) {
            continue;
        }
        match read_meta(&value) {
            Ok(meta) => docs.push(Document {
                file,
                index: raw.index,
                start_line: raw.start_line,
                text: raw.text,
                value,
                meta,
            }),
            Err((field, message)) => {
                let mut e = error(Some(raw.start_line), message);
                e.field = field;
                errors.push(e);
            }
        }
    }
    (docs, errors)
}

fn read_meta(value: &Value) -> Result<Meta, (String, String)> {
    let obj = value
        .as_object()
        .ok_or_else(|| (String::new(), "a resource must be a mapping".to_string()))?;
    let string = |v: Option<&Value>, field: &str| -> Result<String, (String, String)> {
        match v {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err((field.to_string(), "must be a string".to_string())),
        }
    };
    let api_version = string(obj.get("apiVersion"), "apiVersion")?;
    let kind = string(obj.get("kind"), "kind")?;
    if api_version.is_empty() {
        return Err(("apiVersion".into(), "required".into()));
    }
    if kind.is_empty() {
        return Err(("kind".into(), "required".into()));
    }
    let metadata = obj.get("metadata");
    let md = |key: &str| metadata.and_then(|m| m.get(key));
    let name = string(md("name"), "metadata.name")?;
    let mut namespace = string(md("namespace"), "metadata.namespace")?;
    if namespace.is_empty() && !CLUSTER_SCOPED.contains(&kind.as_str()) {
        namespace = "default".to_string();
    }
    let map = |key: &str| -> Result<BTreeMap<String, String>, (String, String)> {
        match md(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Bool(b) => Ok((k.clone(), b.to_string())),
                    Value::Number(n) => Ok((k.clone(), n.to_string())),
                    _ => Err((format!("metadata.{key}.{k}"), "must be a string".into())),
                })
                .collect(),
            Some(_) => Err((format!("metadata.{key}"), "must be a map of strings".into())),
        }
    };
    Ok(Meta {
        labels: map("labels")?,
        annotations: map("annotations")?,
        api_version,
        kind,
        name,
        namespace,
    })
}

/// Every `*.yaml`, `*.yml` and `*.json` under `dirs` (recursively), path → text, in a stable
/// order. Hidden files and editor leftovers (`.#x`, `x~`, `.x.swp`) are skipped. A path may
/// also name a single file.
pub fn read_config_dirs(dirs: &[PathBuf]) -> io::Result<BTreeMap<PathBuf, String>> {
    let mut files = BTreeMap::new();
    for dir in dirs {
        collect(dir, &mut files, true)?;
    }
    Ok(files)
}

fn collect(path: &Path, files: &mut BTreeMap<PathBuf, String>, top: bool) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !top && (name.starts_with('.') || name.ends_with('~')) {
        return Ok(());
    }
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            // A file can vanish between listing and reading (an editor's rename): skip it.
            match collect(&entry, files, false) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
    } else if top || is_config_file(&name) {
        files.insert(path.to_path_buf(), std::fs::read_to_string(path)?);
    }
    Ok(())
}

fn is_config_file(name: &str) -> bool {
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_numbers_documents() {
        let text = "---\na: 1\n---\n\n---  # two\nb: 2\n...\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].text, "a: 1\n");
        assert_eq!(docs[0].start_line, 2);
        assert_eq!(docs[1].text.trim(), "");
        assert_eq!(docs[2].index, 3);
        assert_eq!(docs[2].start_line, 5);
        assert!(docs[2].text.contains("b: 2"));
    }

    #[test]
    fn yaml_error_names_file_document_and_line() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: [\n";
        let (docs, errors) = parse_documents(Path::new("x.yaml"), text);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].meta.namespace, "default");
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(e.starts_with("x.yaml:"), "{e}");
        assert!(e.contains("(document 2)"), "{e}");
        assert!(errors[0].line.is_some_and(|l| l >= 5), "{e}");
    }

    #[test]
    fn missing_kind_is_an_error() {
        let (docs, errors) =
            parse_documents(Path::new("x.yaml"), "apiVersion: v1\nmetadata: {name: a}\n");
        assert!(docs.is_empty());
        assert_eq!(errors[0].field, "kind");
    }

    #[test]
    fn reads_config_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for f in [
            "a.yaml",
            "sub/b.yml",
            "c.json",
            "d.txt",
            ".e.yaml",
            "f.yaml~",
        ] {
            std::fs::write(dir.path().join(f), "x: 1\n").unwrap();
        }
        let files = read_config_dirs(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<String> = files
            .keys()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.yaml", "c.json", "sub/b.yml"]);
    }
}

/// Istio's `PILOT_DEBOUNCE_AFTER` and `PILOT_DEBOUNCE_MAX`: how long a config source waits for
/// edits to settle before publishing (quiet time), and at most after the first one. Shared by
/// the folder source and the Kubernetes source, so both behave alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    pub quiet: std::time::Duration,
    pub max: std::time::Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self {
            quiet: std::time::Duration::from_millis(100),
            max: std::time::Duration::from_secs(10),
        }
    }
}
