//! `mastctl dashboard`: mastd's topology web view (port 20001, Kiali's) on a local port, as
//! `istioctl dashboard kiali` does.
//!
//! istioctl port-forwards to a pod; kube-rs does that only with its `ws` feature, whose
//! WebSocket crate (tokio-tungstenite) is not among this workspace's dependencies. So this
//! serves a small local HTTP proxy instead that sends every request through the API server's
//! service proxy (`/api/v1/namespaces/mast-system/services/mastd:20001/proxy/…`): the API
//! server picks a ready mastd pod, as the Service does, and responses stream through, so the
//! view's live updates work. The page is served at the local root, so its absolute links
//! resolve. What it cannot carry is a WebSocket upgrade; the view uses none.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;

use super::{KubeArgs, MAST_NAMESPACE};

/// mastd's web view port (ARCHITECTURE.md).
pub const WEB_PORT: u16 = 20001;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    kube: KubeArgs,
    /// The local port to serve on (0: any free port).
    #[arg(long, default_value_t = WEB_PORT)]
    port: u16,
    /// The local address to serve on; anything but loopback shares your cluster access.
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    /// Open the URL in a browser (xdg-open, or open on macOS).
    #[arg(long)]
    browser: bool,
    /// The namespace mastd is installed in.
    #[arg(long, default_value = MAST_NAMESPACE)]
    namespace: String,
}

/// Unsync: kube-rs' response body is not `Sync`, and hyper needs only `Send`.
type Body = UnsyncBoxBody<Bytes, kube::Error>;

pub fn run(args: &Args) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let client = args.kube.client().await?;
        let services: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(client.clone(), &args.namespace);
        if services
            .get_opt("mastd")
            .await
            .with_context(|| format!("reading Service mastd in {}", args.namespace))?
            .is_none()
        {
            anyhow::bail!(
                "no Service mastd in namespace {}: is Mast installed (`mastctl install`)?",
                args.namespace
            );
        }
        let listener = tokio::net::TcpListener::bind((args.address, args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.address, args.port))?;
        let url = format!("http://{}/", listener.local_addr()?);
        println!("Mast dashboard at {url} (through the API server; Ctrl-C stops)");
        if args.browser {
            open_browser(&url);
        }
        tokio::select! {
            r = serve(listener, client, &args.namespace) => r,
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        }
    })
}

/// Serve every connection of `listener` by proxying to mastd's web view.
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: kube::Client,
    namespace: &str,
) -> anyhow::Result<()> {
    let prefix = format!("/api/v1/namespaces/{namespace}/services/mastd:{WEB_PORT}/proxy");
    loop {
        let (stream, _): (_, SocketAddr) = listener.accept().await.context("accepting")?;
        let client = client.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (client, prefix) = (client.clone(), prefix.clone());
                async move { Ok::<_, Infallible>(forward(&client, &prefix, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One request, through the API server's service proxy.
async fn forward(
    client: &kube::Client,
    prefix: &str,
    req: http::Request<Incoming>,
) -> http::Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut builder = http::Request::builder()
        .method(req.method().clone())
        .uri(format!("{prefix}{path}"));
    for name in [
        http::header::ACCEPT,
        http::header::CONTENT_TYPE,
        http::header::ACCEPT_ENCODING,
    ] {
        if let Some(v) = req.headers().get(&name) {
            builder = builder.header(name, v);
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                http::StatusCode::BAD_REQUEST,
                &format!("reading the request: {e}"),
            );
        }
    };
    let request = match builder.body(kube::client::Body::from(body.to_vec())) {
        Ok(r) => r,
        Err(e) => return error(http::StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match client.send(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            // Hop-by-hop: this side frames its own response.
            parts.headers.remove(http::header::CONNECTION);
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            http::Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) => error(
            http::StatusCode::BAD_GATEWAY,
            &format!("mastd's web view is not reachable through the API server: {e}"),
        ),
    }
}

fn error(status: http::StatusCode, message: &str) -> http::Response<Body> {
    let mut response = http::Response::new(
        Full::new(Bytes::from(format!("mastctl dashboard: {message}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener).arg(url).spawn() {
        eprintln!("mastctl: could not open a browser ({opener}: {e}); open {url} yourself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mast_kube::testing::FakeApiServer;
    use serde_json::json;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn requests_go_through_the_service_proxy() {
        let server = FakeApiServer::start().await.unwrap();
        server.respond(
            http::Method::GET,
            "/api/v1/namespaces/mast-system/services/mastd:20001/proxy/api/graph",
            200,
            json!({"nodes": [{"id": "web"}]}),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = server.client();
        tokio::spawn(async move { serve(listener, client, MAST_NAMESPACE).await });

        let (status, body) = get(addr, "/api/graph?window=60").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            json!({"nodes": [{"id": "web"}]})
        );
        // The API server's answer passes through, errors included.
        let (status, body) = get(addr, "/nothing").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("NotFound"), "{body}");
    }
}
