//! How every Mast binary reads its environment: through [`Env`], so a test hands a map to the
//! code that parses configuration instead of mutating the process environment (which races
//! between tests of one binary and leaks into the child processes they start).
//!
//! It is its own crate, with no dependencies, because both sides of the mesh need it and must
//! not depend on each other: mast-proxy may not pull in a control-plane crate, and mast-init
//! and the sample apps have no use for the protobuf APIs in mast-proto. The binaries pass
//! [`ProcessEnv`]; tests pass a `HashMap<&str, &str>` or a `BTreeMap<String, String>`.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

/// A source of environment variables.
pub trait Env {
    /// The value of `name`; `None` when it is unset (or, in the process environment, not
    /// UTF-8, which no setting of ours can be).
    fn var(&self, name: &str) -> Option<String>;

    /// Every variable, for settings read by prefix (Istio's `ISTIO_META_*`). Variables whose
    /// name or value is not UTF-8 are left out.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

// === impl ProcessEnv ===

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn vars(&self) -> Vec<(String, String)> {
        // Not `std::env::vars()`: it panics on the first variable that is not UTF-8, and a
        // stray one in a pod's environment must not stop the proxy.
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

// === impl Env for maps ===
//
// One impl per map type, each for the form tests already write (`HashMap` of `&str` literals,
// `BTreeMap` of owned strings): a generic impl over the key and value types would make
// `&HashMap::new()` ambiguous and force annotations on every empty environment.

impl<S: BuildHasher> Env for HashMap<&str, &str, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string())
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_of_str_and_string_read_alike() {
        let borrowed = HashMap::from([("A", "1")]);
        let owned = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let envs: [&dyn Env; 2] = [&borrowed, &owned];
        for env in envs {
            assert_eq!(env.var("A").as_deref(), Some("1"));
            assert_eq!(env.var("B"), None);
            assert_eq!(env.vars(), [("A".to_string(), "1".to_string())]);
        }
    }

    #[test]
    fn the_process_environment_is_read_as_std_reads_it() {
        // Read only: tests never set process variables (that is what the trait is for).
        for (name, value) in std::env::vars_os().take(5) {
            let Some(name) = name.to_str() else { continue };
            assert_eq!(ProcessEnv.var(name), value.into_string().ok(), "{name}");
        }
        assert_eq!(ProcessEnv.var("MAST_ENV_SURELY_UNSET_0"), None);
        let all = ProcessEnv.vars();
        assert!(
            all.iter()
                .all(|(k, v)| std::env::var(k).as_deref() == Ok(v.as_str()))
        );
    }

    #[test]
    fn an_empty_map_needs_no_annotation() {
        let env: &dyn Env = &HashMap::new();
        assert_eq!(env.var("A"), None);
        assert!(env.vars().is_empty());
    }
}
