//! Puts the built web view into the crate, so that a mastd built after `npm run build` in
//! telemetry/web serves the topology page from any working directory and when installed
//! (`cargo install --path mastd`). It writes `$OUT_DIR/web_bundle.rs`, a list of
//! `include_bytes!` of the files under `web/dist`; without `web/dist` the list is empty and the
//! crate builds all the same (mastd then serves the API only, or `--web-dir`).
//!
//! Only regular files inside `web/dist` are read: symlinks are skipped, so nothing from outside
//! the repository ends up in the binary.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

fn main() -> io::Result<()> {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env("OUT_DIR")?);
    let dist = manifest.join("web/dist");

    let mut files = Vec::new();
    match fs::symlink_metadata(&dist) {
        Ok(meta) if meta.is_dir() => {
            // Cargo watches a directory's whole tree: a rebuilt page re-embeds.
            println!("cargo:rerun-if-changed=web/dist");
            collect(&dist, "", &mut files)?;
        }
        _ => {
            // No page built: watch its parent, whose listing changes when dist/ appears
            // (watching a missing path would rerun this script on every build).
            println!("cargo:rerun-if-changed=web");
        }
    }
    files.sort();

    let mut code = String::from("&[\n");
    for (path, file) in &files {
        let file = file.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not UTF-8", file.display()),
            )
        })?;
        code.push_str(&format!("    ({path:?}, include_bytes!({file:?})),\n"));
    }
    code.push_str("]\n");
    fs::write(out.join("web_bundle.rs"), code)
}

fn env(name: &str) -> io::Result<String> {
    std::env::var(name).map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("{name}: {e}")))
}

/// The regular files under `dir`, as (`/`-separated path under dist, absolute path). Names
/// that are not UTF-8 or start with a dot (editor and OS litter) are left out.
fn collect(dir: &Path, prefix: &str, files: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // file_type() does not follow symlinks.
        let kind = entry.file_type()?;
        let path = format!("{prefix}{name}");
        if kind.is_dir() {
            collect(&entry.path(), &format!("{path}/"), files)?;
        } else if kind.is_file() {
            files.push((path, entry.path()));
        }
    }
    Ok(())
}
