//! Fetching one proxy's `/stats/prometheus` page: a pooled HTTP/1 client (connections are
//! reused across rounds, as Prometheus does), a deadline on the whole exchange and a cap on
//! the page size, so one slow or broken proxy costs at most its timeout.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a scrape failed; shown in logs and makes the target unreachable.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("stats URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("HTTP status {0}")]
    Status(StatusCode),
    #[error("reading the page: {0}")]
    Body(String),
    #[error("page larger than {0} bytes")]
    TooLarge(usize),
    #[error("page is not UTF-8")]
    NotUtf8,
    #[error("page has no valid sample ({0})")]
    NotPrometheus(String),
}

/// The shared scrape client.
#[derive(Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    max_page_bytes: usize,
}

impl Scraper {
    pub fn new(max_page_bytes: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1)
            // A pooled connection otherwise keeps a read buffer as large as its last page:
            // with 2000 sidecars that was 373 MB of the collector's 509 MB heap
            // (bench/README.md, "Topology view at scale"); fixed 16 KiB reads cost ~9% CPU.
            .http1_read_buf_exact_size(16 * 1024)
            .build(connector);
        Self {
            client,
            max_page_bytes,
        }
    }

    /// GETs `url` and returns the page, within `timeout` from start to last byte.
    pub async fn fetch(&self, url: &str, timeout: Duration) -> Result<String, ScrapeError> {
        match tokio::time::timeout(timeout, self.fetch_inner(url)).await {
            Ok(r) => r,
            Err(_) => Err(ScrapeError::Timeout(timeout)),
        }
    }

    async fn fetch_inner(&self, url: &str) -> Result<String, ScrapeError> {
        let bad = |reason: &str| ScrapeError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(bad("expected http://host:port/path"));
        }
        let req = Request::get(uri)
            .header(header::ACCEPT, "text/plain")
            .header(header::USER_AGENT, "mast-telemetry")
            .body(Empty::new())
            .map_err(|e| bad(&e.to_string()))?;
        let resp = self.client.request(req).await?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status(resp.status()));
        }
        let body = Limited::new(resp.into_body(), self.max_page_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    ScrapeError::TooLarge(self.max_page_bytes)
                } else {
                    ScrapeError::Body(e.to_string())
                }
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::NotUtf8)
    }
}
