//! The one plain-HTTP GET mastctl makes to local endpoints (mastd's `/debug/*`, the sidecars'
//! admin): short timeouts, because each caller polls or reports and must not hang on a dead
//! process.

use std::time::Duration;

/// One GET with a short timeout; status and body.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    get_as(url, None).await
}

/// One GET naming `host` in its Host header instead of the URL's authority: what a client
/// that resolved `host` to the URL's address sends (a gateway routes by it).
pub async fn get_as(url: &str, host: Option<&str>) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let mut req = hyper::Request::get(url);
    if let Some(host) = host {
        req = req.header(hyper::header::HOST, host);
    }
    let req = req.body(Empty::new()).map_err(|e| format!("{e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e}"))?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| "body timed out".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
