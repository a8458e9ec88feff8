//! Helpers shared by the integration tests: a tiny HTTP client, an `eventually` loop instead
//! of fixed sleeps, and in-process fake proxies serving `/stats/prometheus`.

#![allow(dead_code)]

pub mod mesh;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn get(url: &str) -> anyhow::Result<Reply> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse()?)).await??;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Retries `f` until it returns `Ok` or `timeout` passes (then panics with the last error).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not reached in {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A fake proxy: serves `page(elapsed)` at `/stats/prometheus` until killed.
pub struct FakeProxy {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl FakeProxy {
    pub async fn start(page: impl Fn(Duration) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let page = Arc::new(page);
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let conns2 = Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let page = Arc::clone(&page);
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let page = Arc::clone(&page);
                    async move {
                        let resp = if req.uri().path() == "/stats/prometheus" {
                            http::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(page(started.elapsed()))))
                        } else {
                            http::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new()))
                        };
                        Ok::<_, Infallible>(resp.unwrap())
                    }
                });
                conns2.lock().unwrap().spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            accept,
            conns,
        }
    }

    pub fn stats_url(&self) -> String {
        format!("http://{}/stats/prometheus", self.addr)
    }

    /// Stops accepting and drops every open connection, as a dead proxy would.
    pub fn kill(&self) {
        self.accept.abort();
        self.conns.lock().unwrap().abort_all();
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.kill();
    }
}
