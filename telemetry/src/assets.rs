//! The web view's static files, from one of two places: a directory chosen at run time
//! (`--web-dir`, the container image's `/usr/share/mast/web`), or the bundle that build.rs
//! compiled into the binary from `telemetry/web/dist` when it had been built, so an installed
//! mastd serves the page from any working directory. Both go through one request path:
//! the same path checks, content types (browsers need the right ones for module scripts and
//! stylesheets) and caching headers. Paths stay inside the bundle: `..`, backslashes, NUL and,
//! for a directory, symlinks leading out are refused with 404.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// The files of `telemetry/web/dist` as build.rs found them: `(path inside dist, contents)`,
/// sorted by path; empty when the web view had not been built.
static BUILT_IN: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_bundle.rs"));

/// Where the web view's files come from (see [`crate::router`]).
#[derive(Clone, Debug, Default)]
pub enum WebAssets {
    /// No web view: the API only, `/` is 404.
    #[default]
    None,
    /// The files of a directory, read at each request.
    Dir(PathBuf),
    /// Files compiled into the binary.
    Embedded(EmbeddedBundle),
}

/// Web view files held in the binary, by their path inside the bundle (`app.js`,
/// `assets/logo.svg`).
#[derive(Clone, Copy)]
pub struct EmbeddedBundle {
    files: &'static [(&'static str, &'static [u8])],
}

// === impl WebAssets ===

impl WebAssets {
    /// mastd's order of precedence: the directory given, else the bundle built into the binary,
    /// else none.
    pub fn choose(dir: Option<PathBuf>) -> Self {
        match (dir, EmbeddedBundle::built_in()) {
            (Some(dir), _) => Self::Dir(dir),
            (None, Some(bundle)) => Self::Embedded(bundle),
            (None, None) => Self::None,
        }
    }
}

/// `Some(dir)` serves that directory; `None` serves no web view (not the built-in bundle:
/// [`WebAssets::choose`] says when that one applies).
impl From<Option<PathBuf>> for WebAssets {
    fn from(dir: Option<PathBuf>) -> Self {
        dir.map_or(Self::None, Self::Dir)
    }
}

impl From<PathBuf> for WebAssets {
    fn from(dir: PathBuf) -> Self {
        Self::Dir(dir)
    }
}

impl From<EmbeddedBundle> for WebAssets {
    fn from(bundle: EmbeddedBundle) -> Self {
        Self::Embedded(bundle)
    }
}

impl fmt::Display for WebAssets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Dir(dir) => write!(f, "directory {}", dir.display()),
            Self::Embedded(b) => write!(f, "built-in bundle of {} files", b.files.len()),
        }
    }
}

// === impl EmbeddedBundle ===

impl EmbeddedBundle {
    /// The web view built into this binary, if `telemetry/web/dist` held a built page
    /// (`index.html`) when the crate was compiled.
    pub fn built_in() -> Option<Self> {
        let bundle = Self { files: BUILT_IN };
        bundle.get("index.html").is_some().then_some(bundle)
    }

    /// A bundle of the given files (tests stand in for a built web view this way).
    #[cfg(test)]
    const fn new(files: &'static [(&'static str, &'static [u8])]) -> Self {
        Self { files }
    }

    /// The paths of the files, as served under `/`.
    pub fn paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.files.iter().map(|(path, _)| *path)
    }

    fn get(&self, path: &str) -> Option<&'static [u8]> {
        self.files
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, bytes)| *bytes)
    }
}

impl fmt::Debug for EmbeddedBundle {
    // The names, not a megabyte of script.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.paths()).finish()
    }
}

// === serving ===

/// Serves `uri`'s path from `assets` (`/` and directories → their `index.html`).
pub async fn serve(assets: WebAssets, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
    }
    let Some(rel) = relative_path(uri.path()) else {
        return not_found();
    };
    let found = match &assets {
        WebAssets::None => None,
        WebAssets::Dir(root) => from_dir(root, &rel).await,
        WebAssets::Embedded(bundle) => from_bundle(bundle, &rel),
    };
    let Some((name, body)) = found else {
        return not_found();
    };
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&name)),
    );
    // index.html names the bundles, so it must be revalidated; the bundles themselves can be
    // cached by the browser for a short while.
    let cache = if extension(&name).as_deref() == Some("html") {
        "no-cache"
    } else {
        "max-age=300"
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The components of a request path (percent-decoded), or `None` if it tries to leave the
/// root or names something no plain relative path can (`\`, NUL, roots, drive prefixes).
fn relative_path(path: &str) -> Option<Vec<String>> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    if decoded.contains('\\') || decoded.contains('\0') {
        return None;
    }
    let mut rel = Vec::new();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => {
                // A single normal component only.
                let mut comps = Path::new(p).components();
                match (comps.next(), comps.next()) {
                    (Some(Component::Normal(_)), None) => rel.push(p.to_string()),
                    _ => return None,
                }
            }
        }
    }
    Some(rel)
}

/// The file `rel` names in the built-in bundle (a directory's `index.html` for a directory),
/// with its name for the content type.
fn from_bundle(bundle: &EmbeddedBundle, rel: &[String]) -> Option<(String, Bytes)> {
    let path = rel.join("/");
    if let Some(bytes) = bundle.get(&path) {
        return Some((path, Bytes::from_static(bytes)));
    }
    let index = if path.is_empty() {
        "index.html".to_string()
    } else {
        format!("{path}/index.html")
    };
    let bytes = bundle.get(&index)?;
    Some((index, Bytes::from_static(bytes)))
}

/// The file `rel` names under `root`, if it exists and stays inside (symlinks resolved), read.
async fn from_dir(root: &Path, rel: &[String]) -> Option<(String, Bytes)> {
    let root = tokio::fs::canonicalize(root).await.ok()?;
    let mut candidate = tokio::fs::canonicalize(root.join(rel.iter().collect::<PathBuf>()))
        .await
        .ok()?;
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
    if !tokio::fs::metadata(&candidate).await.ok()?.is_file() {
        return None;
    }
    let bytes = tokio::fs::read(&candidate).await.ok()?;
    let name = candidate.file_name()?.to_string_lossy().into_owned();
    Some((name, Bytes::from(bytes)))
}

fn extension(name: &str) -> Option<String> {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn content_type(name: &str) -> &'static str {
    match extension(name).as_deref() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    static FAKE: EmbeddedBundle = EmbeddedBundle::new(&[
        ("app.css", b"body{}"),
        ("app.js", b"console.log(1)"),
        ("docs/index.html", b"docs"),
        ("img/logo.svg", b"<svg/>"),
        ("index.html", b"<!doctype html><title>Mast</title>"),
    ]);

    async fn get(
        assets: WebAssets,
        method: Method,
        path: &str,
    ) -> (StatusCode, String, String, Bytes) {
        let resp = serve(assets, method, path.parse().unwrap()).await;
        let header = |name| {
            resp.headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let (ct, cache) = (header(header::CONTENT_TYPE), header(header::CACHE_CONTROL));
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, cache, body)
    }

    #[tokio::test]
    async fn serves_an_embedded_bundle_with_types_and_caching() {
        let assets = WebAssets::Embedded(FAKE);
        let (status, ct, cache, body) = get(assets.clone(), Method::GET, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, "text/html; charset=utf-8");
        assert_eq!(cache, "no-cache");
        assert_eq!(&body[..], b"<!doctype html><title>Mast</title>");
        for (path, want_ct, want_cache, want_body) in [
            (
                "/index.html",
                "text/html; charset=utf-8",
                "no-cache",
                &b"<!doctype html><title>Mast</title>"[..],
            ),
            (
                "/app.js",
                "text/javascript; charset=utf-8",
                "max-age=300",
                b"console.log(1)",
            ),
            (
                "/app.css",
                "text/css; charset=utf-8",
                "max-age=300",
                b"body{}",
            ),
            ("/img/logo.svg", "image/svg+xml", "max-age=300", b"<svg/>"),
            ("/img/./logo.svg", "image/svg+xml", "max-age=300", b"<svg/>"),
            (
                "/%61pp.js",
                "text/javascript; charset=utf-8",
                "max-age=300",
                b"console.log(1)",
            ),
            ("/docs", "text/html; charset=utf-8", "no-cache", b"docs"),
            ("/docs/", "text/html; charset=utf-8", "no-cache", b"docs"),
        ] {
            let (status, ct, cache, body) = get(assets.clone(), Method::GET, path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(
                (ct.as_str(), cache.as_str()),
                (want_ct, want_cache),
                "{path}"
            );
            assert_eq!(&body[..], want_body, "{path}");
        }
        assert_eq!(
            get(assets.clone(), Method::HEAD, "/app.js").await.0,
            StatusCode::OK
        );
        for path in [
            "/missing.js",
            "/img/",
            "/img",
            "/../index.html",
            "/docs/../app.js",
            "/%2e%2e/app.js",
            "/a%5cb",
            "/%00",
        ] {
            assert_eq!(
                get(assets.clone(), Method::GET, path).await.0,
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        assert_eq!(
            get(assets, Method::POST, "/").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn directory_and_bundle_answer_alike() {
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes) in FAKE.files {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, bytes).unwrap();
        }
        for path in [
            "/",
            "/app.js",
            "/app.css",
            "/img/logo.svg",
            "/docs",
            "/img/",
            "/nope",
            "/../x",
        ] {
            let from_dir = get(dir.path().to_path_buf().into(), Method::GET, path).await;
            let from_bundle = get(FAKE.into(), Method::GET, path).await;
            assert_eq!(from_dir, from_bundle, "{path}");
        }
    }

    #[test]
    fn precedence_is_directory_then_built_in_then_none() {
        let dir = PathBuf::from("/usr/share/mast/web");
        assert!(matches!(WebAssets::choose(Some(dir.clone())), WebAssets::Dir(d) if d == dir));
        match (WebAssets::choose(None), EmbeddedBundle::built_in()) {
            (WebAssets::Embedded(b), Some(_)) => assert!(b.paths().any(|p| p == "index.html")),
            (WebAssets::None, None) => {}
            (chosen, built_in) => panic!("chose {chosen:?} with built-in {built_in:?}"),
        }
        // A plain `None` stays API only, whatever was built in.
        assert!(matches!(WebAssets::from(None), WebAssets::None));
    }
}
