//! How `myapp` calls `user` and `todo`: plain HTTP to the URL it was given. Through the mesh
//! the URL names the service (`http://user:8081`) and the sidecar routes the call; in the
//! mesh's NONE interception mode it points at the sidecar's local port instead, and `Host`
//! must still name the service, hence the optional Host override. Every call is bounded in
//! time, so a dead or black-holed backend becomes a prompt 502 rather than a hung page.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::config::{self, Setting};

/// A backend that does not accept the connection by then is reported as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a whole call (connect, request, response body) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The backends answer small documents; a larger answer is treated as a failure.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// Where a backend is: its base URL and, optionally, the Host header to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    url: Uri,
    host: Option<HeaderValue>,
}

/// A backend `myapp` calls, by name (`user`, `todo`) for error reports.
pub struct Backend {
    name: &'static str,
    target: Target,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request URL")]
    Url(#[source] hyper::http::Error),
    /// Connecting (including the connect timeout) or exchanging the request failed.
    #[error(transparent)]
    Request(hyper_util::client::legacy::Error),
    #[error("no answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("reading the answer failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("answered bad JSON")]
    Json(#[source] serde_json::Error),
}

// === impl Target ===

impl Target {
    /// From a URL setting (`http://host:port`, optionally with a path prefix) and an optional
    /// Host setting.
    pub fn parse(url: &Setting, host: Option<&Setting>) -> Result<Self, config::Error> {
        let parsed: Uri = url.value.parse().map_err(|_| url.invalid("not a URL"))?;
        if parsed.scheme_str() != Some("http") {
            return Err(url.invalid("expected http://HOST:PORT (the mesh adds TLS)"));
        }
        if parsed.authority().is_none() || parsed.query().is_some() {
            return Err(url.invalid("expected http://HOST:PORT, without a query"));
        }
        let host = host
            .map(|h| {
                HeaderValue::from_str(&h.value).map_err(|_| h.invalid("not a valid Host header"))
            })
            .transpose()?;
        Ok(Target { url: parsed, host })
    }

    /// The URL of `path` (which starts with `/`) on this backend.
    fn uri(&self, path: &str) -> Result<Uri, hyper::http::Error> {
        let prefix = self.url.path().trim_end_matches('/');
        Uri::builder()
            .scheme("http")
            .authority(self.url.authority().map_or("", |a| a.as_str()))
            .path_and_query(format!("{prefix}{path}"))
            .build()
    }
}

// === impl Backend ===

impl Backend {
    pub fn new(name: &'static str, target: Target) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Backend {
            name,
            target,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sends a request with the propagated `trace` headers and a JSON `body`, if any; any
    /// status is an answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        trace: &HeaderMap,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let has_body = body.is_some();
        let mut req = Request::new(Full::new(body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = self.target.uri(path).map_err(Error::Url)?;
        let headers = req.headers_mut();
        headers.extend(trace.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(host) = &self.target.host {
            headers.insert(HOST, host.clone());
        }
        let exchange = async {
            let resp = self.client.request(req).await.map_err(Error::Request)?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
                .map_err(Error::Body)?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// GETs `path` and decodes its JSON; an answer other than 2xx is a failure.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        trace: &HeaderMap,
    ) -> Result<T, Error> {
        let (status, body) = self.send(Method::GET, path, trace, None).await?;
        if !status.is_success() {
            return Err(Error::Status(status));
        }
        serde_json::from_slice(&body).map_err(Error::Json)
    }
}

// === impl Error ===

impl Error {
    /// The error and its causes on one line (the client's own message is terse: "client error
    /// (Connect)"; the cause says "Connection refused").
    pub fn chain(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            line.push_str(": ");
            line.push_str(&e.to_string());
            cause = e.source();
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(value: &str) -> Setting {
        Setting {
            name: "USER_URL".into(),
            value: value.into(),
        }
    }

    #[test]
    fn paths_join_the_base_url() {
        for (base, want) in [
            ("http://user:8081", "http://user:8081/users/1"),
            ("http://user:8081/", "http://user:8081/users/1"),
            ("http://127.0.0.1:9/api/", "http://127.0.0.1:9/api/users/1"),
        ] {
            let t = Target::parse(&setting(base), None).unwrap();
            assert_eq!(t.uri("/users/1").unwrap().to_string(), want);
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "user:8081",
            "https://user:8081",
            "http://user:8081/?x=1",
            "/users",
        ] {
            let e = Target::parse(&setting(bad), None).unwrap_err().to_string();
            assert!(e.starts_with(&format!("USER_URL=\"{bad}\"")), "{e}");
        }
    }
}
