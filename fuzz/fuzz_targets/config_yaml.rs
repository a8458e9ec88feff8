//! libFuzzer target: bytes into the config store, as `mesh-config/tests/fuzz.rs` does with
//! seeded mutations. No panic; every error names a field or is a whole-document error with
//! its line. Seed it with the dialect documents: see docs/fuzzing.md.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use mast_mesh_config::store::ConfigStore;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let mut store = ConfigStore::default();
    let report = store.apply_files(BTreeMap::from([(PathBuf::from("fuzz.yaml"), text)]));
    for e in &report.errors {
        let whole_document =
            e.message.starts_with("invalid YAML") || e.message == "a resource must be a mapping";
        assert!(
            !e.field.is_empty() || (whole_document && e.line.is_some()),
            "an error without a field: {e:?}"
        );
    }
});
