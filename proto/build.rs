//! Build script for `mast-proto`.
//!
//! Two outputs, both from `.proto` sources compiled in pure Rust with `protox` (no `protoc` on
//! the build machine):
//!
//! 1. `envoy_descriptors.bin`: a `FileDescriptorSet` of Envoy's API (the copy of
//!    data-plane-api, xds, googleapis … that the `envoy-types` crate ships in its package) plus
//!    the few Istio extension configs Istio puts in Envoy config. The library loads it into a
//!    `prost_reflect::DescriptorPool` to render and parse Envoy's proto3 JSON, because
//!    `envoy-types` has Rust types but no serde support.
//! 2. Rust types, client and server for Istio's CA API (`istio/ca.proto`), via
//!    `tonic-prost-build`.
//!
//! `envoy-types` is found through `cargo metadata` (the dependency edge from this package in
//! the resolve graph), so it works wherever cargo has the dependency sources: a developer's
//! registry cache, CI, or a vendored tree.

use std::cell::RefCell;
use std::collections::HashMap;
use std::env;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::Instant;

use prost::Message;

type BoxError = Box<dyn Error>;

/// Folders under `envoy-types/proto/` that hold import roots.
const ENVOY_TYPES_ROOTS: &[&str] = &[
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
];

/// API folders (import root under `envoy-types/proto/`, folder) whose every `.proto` goes into
/// the pool. All of Envoy's `extensions` is included on purpose: any of them can appear as a
/// `typed_config` Any in a config dump, and an Any whose type is missing from the pool cannot
/// be rendered at all. The xds matchers appear as Anys too (Istio's filter-chain matchers).
const API_DIRS: &[(&str, &str)] = &[
    ("data-plane-api", "envoy/admin/v3"),
    ("data-plane-api", "envoy/config"),
    ("data-plane-api", "envoy/extensions"),
    ("data-plane-api", "envoy/type"),
    ("data-plane-api", "envoy/service/discovery/v3"),
    ("data-plane-api", "envoy/service/secret/v3"),
    ("data-plane-api", "envoy/service/status/v3"),
    ("xds", "xds/type"),
    ("xds", "xds/core/v3"),
];

/// Our own `.proto` files (relative to this crate's folder) that join the Envoy pool: configs
/// Istio puts in `typed_config` Anys that the API tree shipped by envoy-types lacks.
const LOCAL_DESCRIPTOR_FILES: &[&str] = &[
    "typed_struct/udpa.proto",
    "typed_struct/xds.proto",
    "xds/ip_matcher.proto",
    "istio/alpn.proto",
    "istio/metadata_exchange.proto",
    "istio/stats.proto",
];

/// Folders of our own `.proto` files.
const LOCAL_DIRS: &[&str] = &["istio", "typed_struct", "xds"];

fn main() -> Result<(), BoxError> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let local_root = manifest_dir.clone();
    println!("cargo:rerun-if-changed=build.rs");
    for dir in LOCAL_DIRS {
        println!("cargo:rerun-if-changed={dir}");
    }

    let (envoy_types_dir, lock_file) = locate_envoy_types(&manifest_dir)?;
    // A new envoy-types version lives at a new path, so watch the lock file that pins it.
    println!("cargo:rerun-if-changed={}", lock_file.display());

    let started = Instant::now();
    let envoy_fds = compile_envoy(&envoy_types_dir, &local_root)?;
    std::fs::write(
        out_dir.join("envoy_descriptors.bin"),
        envoy_fds.encode_to_vec(),
    )?;
    let envoy_elapsed = started.elapsed();

    let started = Instant::now();
    let ca_fds = protox::Compiler::new([&local_root])?
        .include_imports(true)
        .include_source_info(true)
        .open_file("istio/ca.proto")?
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(ca_fds)?;
    // Plain output (not a cargo warning): kept in the build log, shown with `cargo build -vv`.
    println!(
        "mast-proto: envoy descriptors {} files in {:.1?}, CA codegen in {:.1?}",
        envoy_fds.file.len(),
        envoy_elapsed,
        started.elapsed()
    );
    Ok(())
}

/// Compiles the Envoy API and our extension configs into one descriptor set (with imports, so
/// the set is self-contained, and without source info, which would triple its size).
fn compile_envoy(
    envoy_types_dir: &Path,
    local_root: &Path,
) -> Result<prost_types::FileDescriptorSet, BoxError> {
    let proto_dir = envoy_types_dir.join("proto");
    let mut includes: Vec<PathBuf> = ENVOY_TYPES_ROOTS
        .iter()
        .map(|r| proto_dir.join(r))
        .collect();
    includes.push(local_root.to_path_buf());

    let mut files = Vec::new();
    for (root, dir) in API_DIRS {
        let root = proto_dir.join(root);
        collect_protos(&root, &root.join(dir), &mut files)?;
    }
    if files.is_empty() {
        return Err(format!("no .proto files under {}", proto_dir.display()).into());
    }
    files.sort();
    files.extend(LOCAL_DESCRIPTOR_FILES.iter().map(|f| f.to_string()));

    let patches: Patches = Rc::default();
    let mut resolver = protox::file::ChainFileResolver::new();
    for include in &includes {
        resolver.add(protox::file::IncludeFileResolver::new(include.clone()));
    }
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(PatchingResolver {
        inner: resolver,
        patches: Rc::clone(&patches),
    });
    compiler.include_imports(true).include_source_info(false);
    for file in &files {
        // Each retry fixes one reference (a handful exist in the whole API); a reference
        // is rewritten at most once, so this ends.
        while let Err(e) = compiler.open_file(file) {
            if !patch_misresolved(&patches, &e) {
                return Err(e.into());
            }
        }
    }
    Ok(compiler.file_descriptor_set())
}

/// Source rewrites per file: (relative name as written, fully-qualified name to use instead).
type Patches = Rc<RefCell<HashMap<String, Vec<(String, String)>>>>;

/// protox resolves a relative type name against every file loaded so far, where protoc looks
/// only at the file's direct imports. So in package
/// `envoy.extensions.clusters.dynamic_forward_proxy.v3` the name
/// `common.dynamic_forward_proxy.v3.DnsCacheConfig` wrongly binds to the package
/// `envoy.extensions.clusters.common` (loaded through an indirect import) instead of
/// `envoy.extensions.common`, and compilation fails. This resolver serves such files with the
/// reference rewritten to the fully-qualified name protoc would pick.
struct PatchingResolver {
    inner: protox::file::ChainFileResolver,
    patches: Patches,
}

impl protox::file::FileResolver for PatchingResolver {
    fn resolve_path(&self, path: &Path) -> Option<String> {
        self.inner.resolve_path(path)
    }

    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        let file = self.inner.open_file(name)?;
        let patches = self.patches.borrow();
        let (Some(list), Some(source)) = (patches.get(name), file.source()) else {
            return Ok(file);
        };
        let mut source = source.to_string();
        for (relative, absolute) in list {
            source = replace_type_ref(&source, relative, absolute);
        }
        protox::file::File::from_source(name, &source)
    }
}

/// Records a rewrite for a "'X' resolves to 'Y', which is not defined" error; false when the
/// error is anything else. protoc, not finding `X`'s first component in its direct imports at
/// the scope where protox found it, goes on to the next scope out: that is the rewrite.
fn patch_misresolved(patches: &Patches, error: &protox::Error) -> bool {
    let message = error.to_string();
    let (Some(file), Some((relative, wrong))) = (error.file(), parse_misresolved(&message)) else {
        return false;
    };
    let Some(scope) = wrong.strip_suffix(&format!(".{relative}")) else {
        return false;
    };
    let Some((outer, _)) = scope.rsplit_once('.') else {
        return false;
    };
    let absolute = format!(".{outer}.{relative}");
    let mut patches = patches.borrow_mut();
    let list = patches.entry(file.to_string()).or_default();
    if list.iter().any(|(rel, _)| *rel == relative) {
        // Already rewritten and still failing: give up rather than loop.
        return false;
    }
    list.push((relative, absolute));
    true
}

fn parse_misresolved(message: &str) -> Option<(String, String)> {
    let (head, _) = message.split_once("', which is not defined")?;
    let (before, wrong) = head.rsplit_once("' resolves to '")?;
    let (_, relative) = before.rsplit_once('\'')?;
    Some((relative.to_string(), wrong.to_string()))
}

/// Replaces `relative` where it appears as a whole type reference (not as the tail of a longer
/// dotted name or identifier).
fn replace_type_ref(source: &str, relative: &str, absolute: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find(relative) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + relative.len()..].chars().next();
        let ident =
            |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
        out.push_str(&rest[..at]);
        if ident(before) || ident(after) {
            out.push_str(relative);
        } else {
            out.push_str(absolute);
        }
        rest = &rest[at + relative.len()..];
    }
    out.push_str(rest);
    out
}

/// Appends every `.proto` below `dir`, as a path relative to `root` (the import name).
fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), BoxError> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(root)?;
            // Import names always use `/`, whatever the host's separator.
            let name: Vec<_> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect();
            out.push(name.join("/"));
        }
    }
    Ok(())
}

/// Finds the `envoy-types` package this crate depends on, and the workspace lock file, from
/// `cargo metadata`. Offline first: by the time a build script runs, cargo has already fetched
/// every dependency, and offline never touches the network.
fn locate_envoy_types(manifest_dir: &Path) -> Result<(PathBuf, PathBuf), BoxError> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = manifest_dir.join("Cargo.toml");
    let mut last_err = String::new();
    for offline in [true, false] {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(&manifest);
        if offline {
            cmd.arg("--offline");
        }
        let output = cmd.output()?;
        if !output.status.success() {
            last_err = String::from_utf8_lossy(&output.stderr).into_owned();
            continue;
        }
        let meta: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        return find_in_metadata(&meta, &manifest);
    }
    Err(format!("cargo metadata failed: {last_err}").into())
}

fn find_in_metadata(
    meta: &serde_json::Value,
    own_manifest: &Path,
) -> Result<(PathBuf, PathBuf), BoxError> {
    let packages = meta["packages"].as_array().ok_or("metadata: no packages")?;
    let own_manifest = own_manifest.canonicalize()?;
    let own_id = packages
        .iter()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .and_then(|m| Path::new(m).canonicalize().ok())
                .is_some_and(|m| m == own_manifest)
        })
        .and_then(|p| p["id"].as_str())
        .ok_or("metadata: this package is missing")?;
    let nodes = meta["resolve"]["nodes"]
        .as_array()
        .ok_or("metadata: no resolve graph")?;
    let dep_id = nodes
        .iter()
        .find(|n| n["id"].as_str() == Some(own_id))
        .and_then(|n| n["deps"].as_array())
        .and_then(|deps| {
            deps.iter()
                .find(|d| d["name"].as_str() == Some("envoy_types"))
        })
        .and_then(|d| d["pkg"].as_str())
        .ok_or("metadata: mast-proto does not depend on envoy-types")?;
    let manifest = packages
        .iter()
        .find(|p| p["id"].as_str() == Some(dep_id))
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("metadata: envoy-types package is missing")?;
    let dir = Path::new(manifest)
        .parent()
        .ok_or("metadata: bad envoy-types manifest path")?
        .to_path_buf();
    let workspace_root = meta["workspace_root"]
        .as_str()
        .ok_or("metadata: no workspace_root")?;
    Ok((dir, Path::new(workspace_root).join("Cargo.lock")))
}
