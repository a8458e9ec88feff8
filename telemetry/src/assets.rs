//! The web view's static files (built by the UI into a folder such as `telemetry/web/dist/`),
//! served from a directory chosen at run time, with the content types browsers need for
//! module scripts and stylesheets. Paths are resolved inside that directory only: `..`,
//! backslashes, NUL and symlinks leading out are refused with 404.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// Serves `uri`'s path from `root` (`/` and directories → `index.html`).
pub async fn serve(root: PathBuf, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
    }
    match resolve(&root, uri.path()).await {
        Some(path) => match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let mut resp = Response::new(Body::from(bytes));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type(&path)),
                );
                // index.html names hashed bundles, so it must be revalidated; the bundles
                // themselves can be cached by the browser for a short while.
                let cache = if path.extension().is_some_and(|e| e == "html") {
                    "no-cache"
                } else {
                    "max-age=300"
                };
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
                resp
            }
            Err(_) => not_found(),
        },
        None => not_found(),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The file a request path names inside `root`, if it exists and stays inside.
async fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    if decoded.contains('\\') || decoded.contains('\0') {
        return None;
    }
    let mut rel = PathBuf::new();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => {
                // A single normal component only (no drive prefixes or roots).
                let mut comps = Path::new(p).components();
                match (comps.next(), comps.next()) {
                    (Some(Component::Normal(c)), None) => rel.push(c),
                    _ => return None,
                }
            }
        }
    }
    let root = tokio::fs::canonicalize(root).await.ok()?;
    let mut candidate = tokio::fs::canonicalize(root.join(&rel)).await.ok()?;
    if !candidate.starts_with(&root) {
        return None;
    }
    if tokio::fs::metadata(&candidate).await.ok()?.is_dir() {
        candidate = tokio::fs::canonicalize(candidate.join("index.html"))
            .await
            .ok()?;
        if !candidate.starts_with(&root) {
            return None;
        }
    }
    tokio::fs::metadata(&candidate)
        .await
        .ok()?
        .is_file()
        .then_some(candidate)
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("txt") => "text/plain; charset=utf-8",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}
