//! The config store: the set of accepted resources, with last-good semantics.
//!
//! A mesh must never lose config because someone saved a typo. Each apply replaces the whole
//! file set, but a resource whose new version is rejected keeps its last good version in
//! force, a document whose YAML does not even parse keeps whatever its file held before, and
//! only resources that are really gone from the files are removed. The model is rebuilt from
//! the accepted resources after every apply, so mastd and `mastctl analyze` see the same thing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::dialect::{self, MeshResource, Meta};
use crate::error::{ConfigError, ConfigWarning};
use crate::model::MeshModel;
use crate::source::parse_documents;

/// `(kind, namespace, name)`: what makes two documents the same resource.
type Key = (String, String, String);

#[derive(Clone, Debug)]
struct Entry {
    file: PathBuf,
    document: usize,
    line: usize,
    /// The document's text, to point reference errors at their line.
    text: Arc<str>,
    meta: Meta,
    resource: Arc<dyn MeshResource>,
}

/// The outcome of an apply.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Everything rejected in this apply.
    pub errors: Vec<ConfigError>,
    /// What is accepted but set aside (a Knative route a VirtualService overrides).
    pub warnings: Vec<ConfigWarning>,
    /// The model differs from the one before.
    pub changed: bool,
}

/// What one file parsed to. An apply re-parses only the files whose text changed: at 1000
/// services the YAML of the unchanged files was most of a one-line edit's cost.
#[derive(Debug)]
struct ParsedFile {
    text: String,
    yaml_errors: Vec<ConfigError>,
    docs: Vec<ParsedDoc>,
}

#[derive(Debug)]
enum ParsedDoc {
    Accepted(Key, Entry),
    Rejected(Key, Vec<ConfigError>),
}

impl ParsedFile {
    fn parse(path: &std::path::Path, text: &str) -> Self {
        let (docs, yaml_errors) = parse_documents(path, text);
        let docs = docs
            .into_iter()
            .filter_map(|doc| {
                let key = key_of(&doc.meta);
                match dialect::parse(&doc)? {
                    Err(field_errors) => Some(ParsedDoc::Rejected(
                        key,
                        field_errors
                            .into_iter()
                            .map(|e| e.into_config_error(&doc))
                            .collect(),
                    )),
                    Ok(resource) => Some(ParsedDoc::Accepted(
                        key,
                        Entry {
                            file: path.to_path_buf(),
                            document: doc.index,
                            line: doc.start_line,
                            text: Arc::from(doc.text),
                            meta: doc.meta.clone(),
                            resource: Arc::from(resource),
                        },
                    )),
                }
            })
            .collect();
        Self {
            text: text.to_string(),
            yaml_errors,
            docs,
        }
    }
}

#[derive(Debug, Default)]
pub struct ConfigStore {
    accepted: BTreeMap<Key, Entry>,
    parsed: BTreeMap<PathBuf, Arc<ParsedFile>>,
    model: Arc<MeshModel>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

// === impl ConfigStore ===

impl ConfigStore {
    /// Replace the whole file set (path → text): files absent from `files` are deleted.
    pub fn apply_files(&mut self, files: BTreeMap<PathBuf, String>) -> ApplyReport {
        let mut errors = Vec::new();
        let mut next: BTreeMap<Key, Entry> = BTreeMap::new();
        let mut rejected: BTreeSet<Key> = BTreeSet::new();
        let mut broken_files = Vec::new();

        let mut parsed = BTreeMap::new();
        for (path, text) in &files {
            let file = match self.parsed.get(path) {
                Some(p) if p.text == *text => p.clone(),
                _ => Arc::new(ParsedFile::parse(path, text)),
            };
            if !file.yaml_errors.is_empty() {
                broken_files.push(path.clone());
            }
            errors.extend(file.yaml_errors.iter().cloned());
            for doc in &file.docs {
                match doc {
                    ParsedDoc::Rejected(key, field_errors) => {
                        errors.extend(field_errors.iter().cloned());
                        rejected.insert(key.clone());
                    }
                    ParsedDoc::Accepted(key, entry) => {
                        if let Some(first) = next.get(key) {
                            errors.push(ConfigError {
                                file: path.clone(),
                                document: entry.document,
                                resource: Some(entry.meta.resource_ref()),
                                field: "metadata.name".into(),
                                line: Some(entry.line),
                                message: format!(
                                    "duplicate: already defined in {} (document {}, line {})",
                                    first.file.display(),
                                    first.document,
                                    first.line
                                ),
                            });
                            continue;
                        }
                        next.insert(key.clone(), entry.clone());
                    }
                }
            }
            parsed.insert(path.clone(), file);
        }
        self.parsed = parsed;

        // Keep the last good version of what was rejected, and everything a file held before
        // a part of it stopped parsing.
        for (key, old) in &self.accepted {
            if next.contains_key(key) {
                continue;
            }
            if rejected.contains(key) || broken_files.contains(&old.file) {
                next.insert(key.clone(), old.clone());
            }
        }

        let mut warnings = Vec::new();
        let model = self.build(&mut next, &mut errors, &mut warnings);
        let changed = model != *self.model;
        self.accepted = next;
        self.model = Arc::new(model);
        self.errors = errors.clone();
        self.warnings = warnings.clone();
        ApplyReport {
            errors,
            warnings,
            changed,
        }
    }

    /// Translate every accepted resource; resources whose references do not resolve are
    /// rejected (falling back to their last good version when that resolves).
    fn build(
        &self,
        entries: &mut BTreeMap<Key, Entry>,
        errors: &mut Vec<ConfigError>,
        warnings: &mut Vec<ConfigWarning>,
    ) -> MeshModel {
        let mut fell_back: BTreeSet<Key> = BTreeSet::new();
        loop {
            let mut order: Vec<(&Key, &Entry)> = entries.iter().collect();
            order.sort_by(|(_, a), (_, b)| {
                (kind_rank(&a.meta.kind), &a.file, a.document).cmp(&(
                    kind_rank(&b.meta.kind),
                    &b.file,
                    b.document,
                ))
            });
            let mut model = MeshModel::default();
            for (_, e) in &order {
                e.resource.translate(&e.meta, &mut model);
            }
            *warnings = dialect::knative::finish(&mut model);
            let mut failing = Vec::new();
            for (key, e) in &order {
                let problems = e.resource.check_references(&e.meta, &model);
                if problems.is_empty() {
                    continue;
                }
                for p in problems {
                    let line = p.line.or_else(|| {
                        crate::locate::line_of(&e.text, &p.field).map(|l| e.line + l - 1)
                    });
                    errors.push(ConfigError {
                        file: e.file.clone(),
                        document: e.document,
                        resource: Some(e.meta.resource_ref()),
                        field: p.field,
                        line,
                        message: p.message,
                    });
                }
                failing.push((*key).clone());
            }
            if failing.is_empty() {
                return model;
            }
            for key in failing {
                let old = self
                    .accepted
                    .get(&key)
                    .filter(|_| !fell_back.contains(&key));
                match old {
                    Some(old) if !Arc::ptr_eq(&old.resource, &entries[&key].resource) => {
                        entries.insert(key.clone(), old.clone());
                        fell_back.insert(key);
                    }
                    _ => {
                        entries.remove(&key);
                    }
                }
            }
        }
    }

    pub fn model(&self) -> Arc<MeshModel> {
        self.model.clone()
    }

    /// What is rejected right now.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// What is accepted but set aside right now.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }
}

/// A resource's identity: API group and kind, namespace, name. The group matters: Knative
/// makes a core `Service` with the name of each Knative `Service`, and both are legitimate.
fn key_of(meta: &Meta) -> Key {
    (
        format!("{}/{}", meta.group(), meta.kind),
        meta.namespace.clone(),
        meta.name.clone(),
    )
}

/// Translation order: what routes refer to goes first.
fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "Service" => 1,
        "ServiceEntry" => 2,
        "WorkloadEntry" | "Pod" => 3,
        // After its Service, and after the Pods whose labels its endpoints carry.
        "EndpointSlice" => 4,
        "DestinationRule" => 4,
        // Before the routes and Gateways whose cross-namespace references it permits.
        "ReferenceGrant" => 4,
        "Sidecar" => 6,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: user}\nspec:\n  selector: {app: user}\n  ports:\n  - {name: http, port: 8080}\n";
    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: user}\nspec:\n  host: user\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

    fn vs(w1: i64, w2: i64) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: user}}\nspec:\n  hosts: [user]\n  http:\n  - route:\n    - destination: {{host: user, subset: v1}}\n      weight: {w1}\n    - destination: {{host: user, subset: v2}}\n      weight: {w2}\n"
        )
    }

    fn files(entries: &[(&str, &str)]) -> BTreeMap<PathBuf, String> {
        entries
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect()
    }

    fn weights(store: &ConfigStore) -> Vec<u32> {
        use crate::model::RouteAction;
        let m = store.model();
        let route = m.routes.first().expect("a route table");
        match &route.http[0].action {
            RouteAction::Forward(d) => d.iter().map(|d| d.weight).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_edit_keeps_last_good_version() {
        let mut store = ConfigStore::default();
        let good = vs(50, 50);
        let r = store.apply_files(files(&[
            ("svc.yaml", SVC),
            ("dr.yaml", DR),
            ("vs.yaml", &good),
        ]));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.changed);
        assert_eq!(weights(&store), [50, 50]);

        let bad = vs(80, -30);
        let r = store.apply_files(files(&[
            ("svc.yaml", SVC),
            ("dr.yaml", DR),
            ("vs.yaml", &bad),
        ]));
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        let e = r.errors[0].to_string();
        assert!(
            e.contains("vs.yaml") && e.contains("VirtualService default/user"),
            "{e}"
        );
        assert!(e.contains("weight"), "{e}");
        // The second weight is on line 11 of vs(): the error points there.
        assert_eq!(r.errors[0].line, Some(11), "{e}");
        assert!(!r.changed);
        assert_eq!(weights(&store), [50, 50]);

        let r = store.apply_files(files(&[
            ("svc.yaml", SVC),
            ("dr.yaml", DR),
            ("vs.yaml", &vs(80, 20)),
        ]));
        assert!(r.errors.is_empty() && r.changed);
        assert_eq!(weights(&store), [80, 20]);
        assert!(store.errors().is_empty());
    }

    #[test]
    fn weights_are_relative_shares_as_in_current_istio() {
        let apply = |w1, w2| {
            let mut store = ConfigStore::default();
            let r = store.apply_files(files(&[
                ("svc.yaml", SVC),
                ("dr.yaml", DR),
                ("vs.yaml", &vs(w1, w2)),
            ]));
            (store, r)
        };
        // 60 and 30 are valid: a 2:1 split, kept as written (pilot writes them as Envoy
        // weighted clusters, which split in proportion).
        let (store, r) = apply(60, 30);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(weights(&store), [60, 30]);
        let (store, r) = apply(500, 1500);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(weights(&store), [500, 1500]);
        // A zero share is allowed; all zero is not.
        let (_, r) = apply(100, 0);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let (_, r) = apply(0, 0);
        let e = r.errors[0].to_string();
        assert!(
            e.contains("route[1].weight") && e.contains("sum to 0"),
            "{e}"
        );
        let (_, r) = apply(-1, 10);
        let e = r.errors[0].to_string();
        assert!(
            e.contains("route[0].weight") && e.contains("-1 is negative"),
            "{e}"
        );
        // One destination gets everything, whatever its weight says.
        let mut store = ConfigStore::default();
        let one = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: user}\nspec:\n  hosts: [user]\n  http:\n  - route:\n    - destination: {host: user, subset: v2}\n      weight: 0\n";
        let r = store.apply_files(files(&[
            ("svc.yaml", SVC),
            ("dr.yaml", DR),
            ("vs.yaml", one),
        ]));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(weights(&store), [100]);
    }

    #[test]
    fn workload_entries_are_sidecar_backed_as_istiod_decides() {
        // istiod's rule for WorkloadEntries and ServiceEntry endpoints: the tlsMode label when
        // present, else a named service account means a sidecar; neither means plaintext.
        let we = |name: &str, extra: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}}}\nspec:\n  address: 10.0.0.1\n{extra}"
            )
        };
        let yaml = [
            we("plain", "  labels: {app: user}\n"),
            we("with-sa", "  labels: {app: user}\n  serviceAccount: user\n"),
            we("labelled", "  labels: {app: user, security.istio.io/tlsMode: istio}\n"),
            we(
                "disabled",
                "  labels: {app: user, security.istio.io/tlsMode: disabled}\n  serviceAccount: user\n",
            ),
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [ext.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints:\n  - {address: 10.0.0.2}\n  - {address: 10.0.0.3, serviceAccount: ext}\n  - {address: 10.0.0.4, labels: {security.istio.io/tlsMode: istio}}\n".to_string(),
        ]
        .concat();
        let mut store = ConfigStore::default();
        let r = store.apply_files(files(&[("we.yaml", &yaml)]));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let m = store.model();
        let sidecar: BTreeMap<&str, bool> = m
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.has_sidecar))
            .collect();
        assert_eq!(
            sidecar,
            BTreeMap::from([
                ("disabled", false),
                ("labelled", true),
                ("plain", false),
                ("with-sa", true),
            ])
        );
        let ext = &m.services["ext.example.com"].endpoints;
        let ext: Vec<bool> = ext.iter().map(|e| e.has_sidecar).collect();
        assert_eq!(ext, [false, true, true]);
    }

    #[test]
    fn yaml_syntax_error_keeps_the_file() {
        let mut store = ConfigStore::default();
        store.apply_files(files(&[
            ("svc.yaml", SVC),
            ("dr.yaml", DR),
            ("vs.yaml", &vs(50, 50)),
        ]));
        let r = store.apply_files(files(&[
            ("svc.yaml", SVC),
            ("dr.yaml", DR),
            ("vs.yaml", "spec: [\n"),
        ]));
        assert_eq!(r.errors.len(), 1);
        assert!(!r.changed);
        assert_eq!(weights(&store), [50, 50]);
    }

    #[test]
    fn deleted_file_removes_its_resources() {
        let mut store = ConfigStore::default();
        store.apply_files(files(&[
            ("svc.yaml", SVC),
            ("dr.yaml", DR),
            ("vs.yaml", &vs(50, 50)),
        ]));
        let r = store.apply_files(files(&[("svc.yaml", SVC), ("dr.yaml", DR)]));
        assert!(r.changed);
        assert!(store.model().routes.is_empty());
    }

    #[test]
    fn same_kind_name_in_another_group_is_not_a_duplicate() {
        let mut store = ConfigStore::default();
        let report = store.apply_files(BTreeMap::from([(
            PathBuf::from("knative.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: hello, namespace: default}\n\
             spec: {ports: [{port: 80}]}\n---\n\
             apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: hello, namespace: default}\n\
             spec: {template: {spec: {containers: [{image: hello}]}}}\n"
                .to_string(),
        )]));
        assert!(
            report
                .errors
                .iter()
                .all(|e| !e.to_string().contains("duplicate")),
            "{:?}",
            report.errors
        );
    }

    #[test]
    fn duplicates_are_rejected_naming_both_places() {
        let mut store = ConfigStore::default();
        let r = store.apply_files(files(&[("a.yaml", SVC), ("b.yaml", SVC)]));
        assert_eq!(r.errors.len(), 1);
        let e = r.errors[0].to_string();
        assert!(
            e.starts_with("b.yaml") && e.contains("already defined in a.yaml"),
            "{e}"
        );
        assert_eq!(store.model().services.len(), 1);
    }

    #[test]
    fn subset_without_any_destination_rule_is_accepted_as_istio_does() {
        let mut store = ConfigStore::default();
        let r = store.apply_files(files(&[("svc.yaml", SVC), ("vs.yaml", &vs(50, 50))]));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(weights(&store), [50, 50]);
    }

    #[test]
    fn unknown_subset_is_rejected() {
        let mut store = ConfigStore::default();
        let bad = vs(50, 50).replace("subset: v2", "subset: v3");
        let r = store.apply_files(files(&[
            ("svc.yaml", SVC),
            ("dr.yaml", DR),
            ("vs.yaml", &bad),
        ]));
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].field.contains("subset"), "{}", r.errors[0]);
        assert!(store.model().routes.is_empty());
    }
}
