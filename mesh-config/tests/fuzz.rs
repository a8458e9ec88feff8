//! Fuzz targets for the config dialects (issue 21 §1): bytes and mutated real documents into
//! the store, as mastd and `mastctl analyze` read them. Never a panic; every error names a
//! field, or is a whole-document error (YAML syntax, not a mapping) with its line.
//!
//! Seeds: the real Istio, Gateway API, SMI and Knative documents in `testdata/upstream` (read,
//! never modified) and `testdata/fuzz-seeds/config/`. `MAST_FUZZ_CASES` runs longer; see
//! `docs/fuzzing.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mast_mesh_config::error::ConfigError;
use mast_mesh_config::source::parse_documents;
use mast_mesh_config::store::ConfigStore;
use mast_testdata::fuzz::{self, HOSTILE_YAML_VALUES, Rng};

/// The corpus folders of the dialects mesh-config reads.
const DIALECT_DIRS: &[&str] = &[
    "istio-samples",
    "istio-crds/validation-dataset",
    "gateway-api/examples",
    "gateway-api/conformance-mesh",
    "smi/spec-snippets",
    "smi/linkerd2",
    "smi/osm",
    "knative/docs-code-samples",
    "knative/docs-snippets",
    "knative/serving-test",
];

/// YAML tokens worth splicing into documents.
const YAML_DICT: &[&[u8]] = &[
    b"\n---\n",
    b": ",
    b"- ",
    b"\n  ",
    b"{",
    b"[",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!str ",
    b"? ",
    b"\t",
    b"'",
    b"\"",
    b"#",
    b"%YAML 1.2\n",
    b"\xef\xbb\xbf",
];

fn corpus_documents() -> Vec<(String, String)> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(p) else {
            return;
        };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                walk(&e, out);
            } else if e.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(e);
            }
        }
    }
    let root = mast_testdata::corpus_dir();
    let mut docs = Vec::new();
    for dir in DIALECT_DIRS {
        let mut files = Vec::new();
        walk(&mast_testdata::corpus(dir), &mut files);
        for f in files {
            let relative = f
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&f).unwrap();
            let text = mast_testdata::prepared(&relative, &text);
            // Documents one by one: mutations are then local to one resource.
            for doc in text.split("\n---") {
                if doc.contains("kind:") && doc.len() < 64 * 1024 {
                    docs.push((relative.clone(), doc.to_string()));
                }
            }
        }
    }
    for (path, bytes) in fuzz::seeds("config") {
        docs.push((
            path.display().to_string(),
            String::from_utf8(bytes).unwrap(),
        ));
    }
    assert!(docs.len() > 100, "only {} corpus documents", docs.len());
    docs
}

/// The rule every error keeps: a field, or a whole-document error with its line.
fn check_error(e: &ConfigError, input: &str) {
    if !e.field.is_empty() {
        return;
    }
    let whole_document =
        e.message.starts_with("invalid YAML") || e.message == "a resource must be a mapping";
    assert!(
        whole_document && e.line.is_some(),
        "an error without a field: {e:?}\ninput:\n{input}"
    );
}

fn apply(store: &mut ConfigStore, text: &str) {
    let path = PathBuf::from("fuzz.yaml");
    let report = store.apply_files(BTreeMap::from([(path.clone(), text.to_string())]));
    for e in &report.errors {
        check_error(e, text);
    }
    let (_, errors) = parse_documents(&path, text);
    for e in &errors {
        check_error(e, text);
    }
}

/// Several documents joined, so references between them (a VirtualService naming a
/// Gateway, a DestinationRule's subsets) are exercised too.
fn pick_documents(rng: &mut Rng, docs: &[(String, String)]) -> String {
    let n = 1 + usize::from(rng.one_in(3)) * rng.below(3);
    (0..n)
        .map(|_| rng.pick(docs).1.clone())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[test]
fn fuzz_config_bytes() {
    let docs = corpus_documents();
    fuzz::run(
        "config-bytes",
        8000,
        |rng| {
            let bytes = if rng.one_in(10) {
                rng.bytes(512)
            } else {
                let base = pick_documents(rng, &docs);
                fuzz::mutate_bytes(rng, base.as_bytes(), YAML_DICT)
            };
            String::from_utf8_lossy(&bytes).into_owned()
        },
        |text| apply(&mut ConfigStore::default(), text),
    );
}

#[test]
fn fuzz_config_yaml_structure() {
    let docs = corpus_documents();
    fuzz::run(
        "config-yaml",
        3000,
        |rng| {
            let base = pick_documents(rng, &docs);
            let mutated = fuzz::mutate_lines(rng, &base, HOSTILE_YAML_VALUES);
            (base, mutated)
        },
        |(base, mutated)| {
            // The good version first, so the last-good path runs too.
            let mut store = ConfigStore::default();
            apply(&mut store, base);
            apply(&mut store, mutated);
        },
    );
}
