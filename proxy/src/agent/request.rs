//! `mast-proxy request METHOD PATH [BODY]`: pilot-agent's `request` command.
//!
//! Istio's preStop hook is `pilot-agent request --debug-port=15020 POST drain`, and operators
//! use `pilot-agent request GET config_dump` against the admin port, from inside the
//! container where only loopback reaches those ports. The request goes to
//! `127.0.0.1:<port>/<path>`; a 2xx answer's body is the result, anything else is an error
//! that says which (the status and body, or why no connection was made).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;

use super::client::{self, ClientError, Scheme};

/// How long a request may take in all (a config dump of a big mesh is slow, a drain is not).
const TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read (config dumps are large, nothing is larger).
const BODY_LIMIT: usize = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    #[error("{0:?} is not a request path")]
    Path(String),
    #[error("{method} {url}: {source}")]
    Failed {
        method: Method,
        url: String,
        source: ClientError,
    },
    #[error("{method} {url}: no answer within {TIMEOUT:?}")]
    Timeout { method: Method, url: String },
    #[error("{method} {url}: {status}: {}", String::from_utf8_lossy(.body).trim_end())]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: Bytes,
    },
}

impl RequestError {
    /// A usage error (bad method or path) rather than a failed request.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Method(_) | Self::Path(_))
    }
}

/// Send `method /path` with `body` to `127.0.0.1:port`; the body of a 2xx answer.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Bytes, RequestError> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| RequestError::Method(method.to_string()))?;
    let path_and_query = format!("/{}", path.trim_start_matches('/'));
    let uri: http::Uri = path_and_query
        .parse()
        .map_err(|_| RequestError::Path(path.to_string()))?;
    let url = format!("http://127.0.0.1:{port}{path_and_query}");
    let body = Bytes::from(body.unwrap_or_default().to_string());
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.insert(
        header::HOST,
        http::HeaderValue::from_str(&format!("127.0.0.1:{port}"))
            .unwrap_or(http::HeaderValue::from_static("localhost")),
    );
    h.insert(
        header::USER_AGENT,
        http::HeaderValue::from_static(concat!("mast-proxy/", env!("CARGO_PKG_VERSION"))),
    );
    if !body.is_empty() || method == Method::POST || method == Method::PUT {
        h.insert(header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    }
    let sent = client::send(Scheme::Http, "127.0.0.1", port, req, BODY_LIMIT);
    let answer = match tokio::time::timeout(TIMEOUT, sent).await {
        Err(_) => return Err(RequestError::Timeout { method, url }),
        Ok(Err(source)) => {
            return Err(RequestError::Failed {
                method,
                url,
                source,
            });
        }
        Ok(Ok(a)) => a,
    };
    if answer.status.is_success() {
        Ok(answer.body)
    } else {
        Err(RequestError::Status {
            method,
            url,
            status: answer.status,
            body: answer.body,
        })
    }
}

/// GET an `http(s)://host:port/path` URL (the `wait` command's readiness check); its status.
pub async fn get_status(url: &str) -> Result<u16, RequestError> {
    let failed = |source| RequestError::Failed {
        method: Method::GET,
        url: url.to_string(),
        source,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| RequestError::Path(url.to_string()))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") | None => Scheme::Http,
        Some(_) => return Err(RequestError::Path(url.to_string())),
    };
    let host = uri.host().unwrap_or("localhost").to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == Scheme::Https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = path
        .parse()
        .map_err(|_| RequestError::Path(url.to_string()))?;
    if let Ok(v) = http::HeaderValue::from_str(&client::join_host_port(&host, port)) {
        req.headers_mut().insert(header::HOST, v);
    }
    // `localhost` resolves to loopback; connect by address so no resolver is involved.
    let connect_host = if host == "localhost" {
        "127.0.0.1"
    } else {
        &host
    };
    let answer = client::send(scheme, connect_host, port, req, 64 * 1024)
        .await
        .map_err(failed)?;
    Ok(answer.status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_say_what_failed() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = request(closed, "post", "drain", None).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("POST http://127.0.0.1:") && text.contains("cannot connect"),
            "{text}"
        );
        assert!(!err.is_usage());
        let err = request(closed, "GE T", "x", None).await.unwrap_err();
        assert!(err.is_usage(), "{err}");
        let err = request(closed, "GET", "a b", None).await.unwrap_err();
        assert!(err.is_usage(), "{err}");
    }
}
