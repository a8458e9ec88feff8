//! pilot-agent's status server (`:15020`), which mast-proxy plays since it replaces both
//! pilot-agent and Envoy in the `istio-proxy` container.
//!
//! Istio's injected pod spec depends on it: kubelet's app probes are rewritten to
//! `/app-health/<container>/…` here ([`probe`]), Prometheus scrapes `/stats/prometheus` here
//! (with the app's metrics merged in, [`merge`]), the preStop hook posts `/drain` here
//! ([`request`] is its client), and `/healthz/ready` answers as Envoy's `:15021` does.
//!
//! `/drain` and `/quitquitquit` stop the proxy, and this port listens on every address (kubelet
//! probes it on the pod IP, and it is excluded from traffic capture), so they are refused
//! unless the request comes from loopback, as in Istio.

pub mod client;
pub mod merge;
pub mod probe;
pub mod request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::admin;
use crate::shared::Shared;

/// Serve the agent's status port until the process exits.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::debug!(error = %e, "agent accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(&shared, peer, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn route(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match path {
        "/healthz/ready" => admin::ready(shared),
        "/stats/prometheus" => prometheus(shared, req.headers()).await,
        "/drain" | "/quitquitquit" => {
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
            }
            if !peer.ip().to_canonical().is_loopback() {
                tracing::warn!(%peer, path, "refused: not from loopback");
                return text(StatusCode::FORBIDDEN, "only from localhost\n");
            }
            tracing::info!(path, "draining");
            shared.start_drain();
            text(StatusCode::OK, "OK\n")
        }
        _ => match shared.config.app_probers.get(path) {
            Some(p) => {
                let (status, body) = probe::run(p, shared.config.instance_ip, req.headers()).await;
                text(status, body)
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

async fn prometheus(shared: &Shared, incoming: &http::HeaderMap) -> Response<Full<Bytes>> {
    let own = admin::prometheus_exposition(shared);
    let app = match &shared.config.app_metrics {
        Some(app) => merge::scrape(app, incoming).await,
        None => None,
    };
    let (content_type, body) = match app {
        Some((ct, body)) => merge::merge(&own, &ct, &body),
        None => (merge::OPENMETRICS, own.into_bytes()),
    };
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}
