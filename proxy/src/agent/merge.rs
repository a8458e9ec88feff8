//! Istio's metrics merging: the app's Prometheus metrics appended to the proxy's.
//!
//! With `meshConfig.enablePrometheusMerge` (Istio's default) the injector points the pod's
//! `prometheus.io/*` annotations at the agent's `:15020/stats/prometheus` and moves the app's
//! own scrape settings into `ISTIO_PROMETHEUS_ANNOTATIONS`
//! (`{"scrape":"true","path":"/metrics","port":"8080"}`); one scrape of the agent must then
//! return both, or the app's metrics silently disappear from Prometheus.
//!
//! The two expositions are concatenated, the app's last. The proxy's is OpenMetrics, whose
//! `# EOF` is dropped; if the app answers OpenMetrics the whole answer is declared so (and the
//! app's `# EOF` closes it), otherwise it is declared Prometheus text 0.0.4, whose parsers read
//! the proxy's series as well. An app that cannot be scraped costs only its own series: the
//! proxy's are still served, and the failure is logged.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::Full;
use serde::Deserialize;

use super::client::{self, Scheme};

/// Istio's variable with the app's own scrape settings.
pub const PROMETHEUS_ANNOTATIONS: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The longest wait for the app when Prometheus does not say its scrape timeout.
const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Where the app's metrics are: `scheme://127.0.0.1:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMetrics {
    pub scheme: Scheme,
    pub port: u16,
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AnnotationsError(String);

#[derive(Deserialize)]
struct Annotations {
    #[serde(default)]
    scrape: String,
    #[serde(default)]
    scheme: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    port: String,
}

/// Parse `ISTIO_PROMETHEUS_ANNOTATIONS` (Istio's defaults: path `/metrics`, port 80, http);
/// `None` when it is empty or says `scrape: false`. The app's port must not be the agent's
/// own, which would scrape itself forever.
pub fn parse_annotations(
    text: &str,
    agent_port: u16,
) -> Result<Option<AppMetrics>, AnnotationsError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let a: Annotations =
        serde_json::from_str(text).map_err(|e| AnnotationsError(format!("not JSON: {e}")))?;
    if a.scrape.eq_ignore_ascii_case("false") {
        return Ok(None);
    }
    let scheme = match a.scheme.to_ascii_lowercase().as_str() {
        "" | "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            return Err(AnnotationsError(format!(
                "scheme {other:?} is not http or https"
            )));
        }
    };
    let port = if a.port.is_empty() {
        80
    } else {
        a.port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| AnnotationsError(format!("port {:?} is not a port number", a.port)))?
    };
    if port == agent_port {
        return Err(AnnotationsError(format!(
            "port {port} is the agent's own status port: the scrape would loop"
        )));
    }
    let path = match a.path.as_str() {
        "" => "/metrics".to_string(),
        p if p.starts_with('/') => p.to_string(),
        p => format!("/{p}"),
    };
    path.parse::<http::uri::PathAndQuery>()
        .map_err(|e| AnnotationsError(format!("path {path:?}: {e}")))?;
    Ok(Some(AppMetrics { scheme, port, path }))
}

/// The app's exposition and its content type; `None` (logged) when it cannot be had.
/// Prometheus' `Accept` and scrape-timeout headers are passed on.
pub async fn scrape(app: &AppMetrics, incoming: &HeaderMap) -> Option<(String, Bytes)> {
    let timeout = incoming
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok()?.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_SCRAPE_TIMEOUT, |s| {
            Duration::from_secs_f64(s).min(DEFAULT_SCRAPE_TIMEOUT)
        });
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = match app.path.parse() {
        Ok(u) => u,
        Err(_) => return None,
    };
    let h = req.headers_mut();
    for name in [header::ACCEPT, header::USER_AGENT] {
        if let Some(v) = incoming.get(&name) {
            h.insert(name, v.clone());
        }
    }
    if let Some(v) = incoming.get("x-prometheus-scrape-timeout-seconds") {
        h.insert("x-prometheus-scrape-timeout-seconds", v.clone());
    }
    if let Ok(host) = HeaderValue::from_str(&format!("127.0.0.1:{}", app.port)) {
        h.insert(header::HOST, host);
    }
    let sent = client::send(app.scheme, "127.0.0.1", app.port, req, BODY_LIMIT);
    let answer = match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(a)) if a.status.is_success() => a,
        Ok(Ok(a)) => {
            tracing::warn!(port = app.port, path = %app.path, status = %a.status, "app metrics scrape failed");
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(port = app.port, path = %app.path, error = %e, "app metrics scrape failed");
            return None;
        }
        Err(_) => {
            tracing::warn!(port = app.port, path = %app.path, ?timeout, "app metrics scrape timed out");
            return None;
        }
    };
    let content_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some((content_type, answer.body))
}

/// The proxy's OpenMetrics exposition with the app's appended; the merged content type.
pub fn merge(proxy: &str, app_content_type: &str, app: &[u8]) -> (&'static str, Vec<u8>) {
    let proxy = proxy.strip_suffix("# EOF\n").unwrap_or(proxy);
    let mut out = Vec::with_capacity(proxy.len() + app.len() + 8);
    out.extend_from_slice(proxy.as_bytes());
    if app_content_type.starts_with("application/openmetrics-text") {
        out.extend_from_slice(app);
        if !app.ends_with(b"\n") {
            out.push(b'\n');
        }
        if !app.ends_with(b"# EOF\n") && !app.ends_with(b"# EOF") {
            out.extend_from_slice(b"# EOF\n");
        }
        (OPENMETRICS, out)
    } else {
        out.extend_from_slice(app);
        if !app.is_empty() && !app.ends_with(b"\n") {
            out.push(b'\n');
        }
        (PROMETHEUS_TEXT, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_as_istio_writes_them() {
        let a = parse_annotations(
            r#"{"scrape":"true","path":"/metrics","port":"8080"}"#,
            15020,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            a,
            AppMetrics {
                scheme: Scheme::Http,
                port: 8080,
                path: "/metrics".into()
            }
        );
        let a = parse_annotations(
            r#"{"scrape":"true","scheme":"https","path":"stats"}"#,
            15020,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.scheme, a.port, a.path.as_str()),
            (Scheme::Https, 80, "/stats")
        );
        assert_eq!(parse_annotations("", 15020).unwrap(), None);
        assert_eq!(
            parse_annotations(r#"{"scrape":"false"}"#, 15020).unwrap(),
            None
        );
        for (bad, want) in [
            ("{", "JSON"),
            (r#"{"port":"http"}"#, "port"),
            (r#"{"port":"15020"}"#, "loop"),
            (r#"{"scheme":"ftp"}"#, "ftp"),
        ] {
            let err = parse_annotations(bad, 15020).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn merges_text_and_openmetrics() {
        let proxy = "# TYPE a counter\na_total 1\n# EOF\n";
        let (ct, body) = merge(proxy, "text/plain; version=0.0.4", b"app_x 2\n");
        assert_eq!(ct, PROMETHEUS_TEXT);
        assert_eq!(body, b"# TYPE a counter\na_total 1\napp_x 2\n");
        let (ct, body) = merge(
            proxy,
            "application/openmetrics-text; version=1.0.0",
            b"app_x 2\n# EOF\n",
        );
        assert_eq!(ct, OPENMETRICS);
        assert_eq!(body, b"# TYPE a counter\na_total 1\napp_x 2\n# EOF\n");
        let (_, body) = merge(proxy, "application/openmetrics-text", b"app_x 2");
        assert_eq!(body, b"# TYPE a counter\na_total 1\napp_x 2\n# EOF\n");
    }
}
