//! The span receivers: OTLP over gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/
//! Export`, :4317) and over HTTP (`POST /v1/traces`, protobuf or JSON, :4318), and Zipkin v2
//! JSON (`POST /api/v2/spans`, on the HTTP port and optionally :9411). These are the wire
//! formats Envoy's OpenTelemetry and Zipkin tracers, mast-proxy and every OpenTelemetry SDK
//! export, so the sidecars need nothing but a provider entry pointing at mastd.
//!
//! A batch with some bad spans keeps the good ones and says how many it refused (OTLP's
//! `partial_success`, with the first refusal as its message); a body that does not decode
//! is a 400 (HTTP) or INVALID_ARGUMENT (gRPC) naming the decoding error. Compressed HTTP
//! bodies are refused with 415: the proxies send them plain.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::debug;

use super::model::{SpanError, from_otlp};
use super::store::TraceStore;
use super::zipkin::from_zipkin_json;

/// The largest request body or gRPC message taken (an Envoy batch is far smaller).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The OTLP gRPC service over a store.
#[derive(Clone, Debug)]
pub struct OtlpGrpc {
    store: Arc<TraceStore>,
}

impl OtlpGrpc {
    pub fn new(store: Arc<TraceStore>) -> Self {
        Self { store }
    }

    /// The tonic service, to add to a server.
    pub fn into_service(self) -> TraceServiceServer<Self> {
        TraceServiceServer::new(self).max_decoding_message_size(MAX_BODY_BYTES)
    }
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ingest(&self.store, request.get_ref())))
    }
}

/// Keep the good spans of `req`; the answer reports the refused ones.
fn ingest(store: &TraceStore, req: &ExportTraceServiceRequest) -> ExportTraceServiceResponse {
    let (spans, errors) = from_otlp(req);
    let n = spans.len();
    store.insert(spans);
    debug!(spans = n, refused = errors.len(), "OTLP spans received");
    ExportTraceServiceResponse {
        partial_success: partial(&errors),
    }
}

fn partial(errors: &[SpanError]) -> Option<ExportTracePartialSuccess> {
    errors.first().map(|first| ExportTracePartialSuccess {
        rejected_spans: errors.len() as i64,
        error_message: first.to_string(),
    })
}

/// Serve OTLP/gRPC on `listener` until `shutdown`.
pub async fn serve_grpc(
    listener: TcpListener,
    store: Arc<TraceStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(OtlpGrpc::new(store).into_service())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// `POST /v1/traces` (OTLP/HTTP) and `POST /api/v2/spans` (Zipkin v2 JSON) over `store`.
pub fn http_router(store: Arc<TraceStore>) -> Router {
    Router::new()
        .route("/v1/traces", post(otlp_http))
        .route("/api/v2/spans", post(zipkin_http))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(store)
}

/// Serve [`http_router`] on `listener` until `shutdown`.
pub async fn serve_http(
    listener: TcpListener,
    store: Arc<TraceStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http_router(store))
        .with_graceful_shutdown(shutdown)
        .await
}

/// google.rpc.Status, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// gRPC's INVALID_ARGUMENT, the code of a bad OTLP/HTTP body.
const INVALID_ARGUMENT: i32 = 3;

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn refuse_compressed(headers: &HeaderMap) -> Option<Response> {
    let enc = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    (!enc.eq_ignore_ascii_case("identity")).then(|| {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {enc:?}: not supported; send the body uncompressed\n"),
        )
            .into_response()
    })
}

fn otlp_error(encoding: Encoding, status: StatusCode, message: String) -> Response {
    let body = RpcStatus {
        code: INVALID_ARGUMENT,
        message,
    };
    match encoding {
        Encoding::Protobuf => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))],
            body.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
            serde_json::json!({"code": body.code, "message": body.message}).to_string(),
        )
            .into_response(),
    }
}

async fn otlp_http(
    State(store): State<Arc<TraceStore>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = refuse_compressed(&headers) {
        return r;
    }
    let media = media_type(&headers);
    let encoding = match media.as_str() {
        PROTOBUF => Encoding::Protobuf,
        JSON => Encoding::Json,
        other => {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {other:?}: expected {PROTOBUF} or {JSON} (OTLP/HTTP)\n"),
            )
                .into_response();
        }
    };
    let req = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body)
            .map_err(|e| format!("ExportTraceServiceRequest (protobuf): {e}")),
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|e| format!("ExportTraceServiceRequest (JSON): {e}")),
    };
    let req = match req {
        Ok(r) => r,
        Err(msg) => return otlp_error(encoding, StatusCode::BAD_REQUEST, msg),
    };
    let answer = ingest(&store, &req);
    match encoding {
        Encoding::Protobuf => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))],
            answer.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => match serde_json::to_string(&answer) {
            Ok(s) => ([(header::CONTENT_TYPE, HeaderValue::from_static(JSON))], s).into_response(),
            Err(e) => otlp_error(encoding, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    }
}

async fn zipkin_http(
    State(store): State<Arc<TraceStore>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = refuse_compressed(&headers) {
        return r;
    }
    let media = media_type(&headers);
    if !(media.is_empty() || media == JSON) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {media:?}: expected {JSON} (Zipkin v2 JSON; proto3 is not taken)\n"
            ),
        )
            .into_response();
    }
    match from_zipkin_json(&body) {
        Ok((spans, errors)) => {
            let n = spans.len();
            store.insert(spans);
            debug!(spans = n, refused = errors.len(), "Zipkin spans received");
            match errors.first() {
                // Zipkin has no partial success: the good spans are kept, the answer names
                // the first bad one.
                Some(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
                None => StatusCode::ACCEPTED.into_response(),
            }
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests;
