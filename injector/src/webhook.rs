//! The mutating admission webhook: Kubernetes POSTs an `AdmissionReview` (admission.k8s.io/v1)
//! for every pod created in a selected namespace; we answer with a JSON Patch that adds the
//! sidecar, on `/inject` as Istio's istiod does (so Istio's MutatingWebhookConfiguration works
//! against mastd unchanged).
//!
//! The webhook sits in the path of every pod creation in the cluster, so it must never be the
//! reason a pod cannot start: a pod we decide not to inject is allowed untouched, a request we
//! cannot read gets an HTTP 400 with a message (the API server then applies the configuration's
//! `failurePolicy`), and a pod whose annotations are wrong is denied with a message naming the
//! annotation — the one case where refusing is the help the user needs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::inject::{self, Decision, Settings, Workload};

/// The largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 4 << 20;

/// The outcome of one review, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected { patch_ops: usize },
    Skipped(String),
    Denied(String),
}

/// Istio's injector metrics (`sidecar_injection_*_total`), for mastd's `/metrics`; the
/// Control Plane dashboard plots the success and failure rates.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every AdmissionReview received.
    pub requests: Counter,
    /// Pods given a sidecar.
    pub success: Counter,
    /// Pods left alone (annotation, namespace label, host network…).
    pub skip: Counter,
    /// Reviews that could not be answered or were denied.
    pub failure: Counter,
}

impl Counters {
    /// Register under Istio's exact names (mastd's `/metrics` adds no `_total` of its own).
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, c) in [
            (
                "sidecar_injection_requests_total",
                "Total number of sidecar injection requests.",
                &self.requests,
            ),
            (
                "sidecar_injection_success_total",
                "Total number of successful sidecar injection requests.",
                &self.success,
            ),
            (
                "sidecar_injection_skip_total",
                "Total number of skipped sidecar injection requests.",
                &self.skip,
            ),
            (
                "sidecar_injection_failure_total",
                "Total number of failed sidecar injection requests.",
                &self.failure,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
    }

    fn record(&self, outcome: Option<&Outcome>) {
        self.requests.inc();
        match outcome {
            Some(Outcome::Injected { .. }) => self.success.inc(),
            Some(Outcome::Skipped(_)) => self.skip.inc(),
            Some(Outcome::Denied(_)) | None => self.failure.inc(),
        };
    }
}

/// A review we cannot answer with an AdmissionReview (the HTTP status says why).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not an AdmissionReview: {0}")]
    Decode(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview apiVersion {0:?} is not admission.k8s.io/v1 or v1beta1")]
    Version(String),
}

/// Answers one AdmissionReview (the request body) with the response review.
pub fn review(body: &[u8], settings: &Settings) -> Result<(Value, Outcome), ReviewError> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::Decode(e.to_string()))?;
    let api_version = review["apiVersion"].as_str().unwrap_or("").to_string();
    if !matches!(
        api_version.as_str(),
        "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
    ) {
        return Err(ReviewError::Version(api_version));
    }
    let request = review.get("request").ok_or(ReviewError::NoRequest)?;
    let uid = request["uid"].as_str().unwrap_or("").to_string();
    let respond = |response: Value| {
        json!({
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "response": response,
        })
    };

    let pod = &request["object"];
    let kind = request["kind"]["kind"].as_str().unwrap_or("");
    if kind != "Pod" || !pod.is_object() {
        let why = format!("not a Pod ({kind:?})");
        return Ok((
            respond(json!({"uid": uid, "allowed": true})),
            Outcome::Skipped(why),
        ));
    }
    // The pod's namespace is often only in the request (pods created by controllers).
    let namespace = request["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| pod["metadata"]["namespace"].as_str())
        .unwrap_or("default")
        .to_string();
    if let Decision::Skip(why) = inject::decide(pod, &namespace, settings) {
        return Ok((
            respond(json!({"uid": uid, "allowed": true})),
            Outcome::Skipped(why),
        ));
    }
    let workload = Workload::of_pod(pod, &namespace);
    match inject::inject_pod(pod, &namespace, &workload, settings) {
        Ok(injected) => {
            let patch = json_patch::diff(pod, &injected);
            let ops = patch.0.len();
            let patch_json = serde_json::to_vec(&patch).unwrap_or_default();
            let response = json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": BASE64.encode(&patch_json),
            });
            Ok((respond(response), Outcome::Injected { patch_ops: ops }))
        }
        Err(e) => {
            let message = format!("sidecar injection refused for pod in {namespace}: {e}");
            let response = json!({
                "uid": uid,
                "allowed": false,
                "status": {"code": 400, "message": message, "reason": "BadRequest"},
            });
            Ok((respond(response), Outcome::Denied(message)))
        }
    }
}

/// A self-signed serving certificate for when no CA is configured (local runs, tests).
pub fn self_signed_tls(names: &[String]) -> Result<rustls::ServerConfig, TlsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError(e.to_string()))?;
    let params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| TlsError(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError(e.to_string()))?;
    server_tls(&cert.pem(), &key.serialize_pem())
}

/// TLS for the webhook from PEM (certificate chain and key).
pub fn server_tls(chain_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError(format!("key: {e}")))?;
    // One crypto provider for the whole process: ring, chosen explicitly.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug, thiserror::Error)]
#[error("webhook TLS: {0}")]
pub struct TlsError(String);

/// Serves `/inject` (and `/inject/…`, Istio's revision paths) over HTTPS until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    settings: Arc<Settings>,
    counters: Arc<Counters>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let settings = Arc::clone(&settings);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, "webhook TLS handshake failed: {e}");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let (settings, counters) = (Arc::clone(&settings), Arc::clone(&counters));
                async move { Ok::<_, Infallible>(handle(req, &settings, &counters).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service)
                .await
            {
                debug!(%peer, "webhook connection: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    settings: &Settings,
    counters: &Counters,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/ready" || path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if !(path == "/inject" || path.starts_with("/inject/")) {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the webhook serves /inject\n",
        );
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("content-type {content_type:?}: expected application/json\n"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}\n")),
    };
    let started = Instant::now();
    match review(&body, settings) {
        Ok((response, outcome)) => {
            counters.record(Some(&outcome));
            let took = started.elapsed();
            match &outcome {
                Outcome::Injected { patch_ops } => {
                    info!(?took, patch_ops, "injected sidecar")
                }
                Outcome::Skipped(why) => debug!(?took, "not injected: {why}"),
                Outcome::Denied(why) => warn!("{why}"),
            }
            let bytes = serde_json::to_vec(&response).unwrap_or_default();
            let mut resp = Response::new(Full::new(Bytes::from(bytes)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            counters.record(None);
            warn!("webhook: {e}");
            text(StatusCode::BAD_REQUEST, &format!("{e}\n"))
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests;
