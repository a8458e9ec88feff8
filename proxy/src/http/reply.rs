//! Local replies: the answers the proxy gives itself instead of an upstream's.
//!
//! Every stage may end a request early — the connection manager's checks, a filter (RBAC,
//! fault injection), the router (no route, no healthy upstream, timeouts). Operators read
//! those answers by Envoy's status codes, bodies and response flags, so they are built in one
//! place and look the same whichever stage answers: a trailers-only response carrying the gRPC
//! status Envoy maps the HTTP status to when the request is gRPC, otherwise the status with a
//! short text body. Each reply is recorded at once, as nothing more will pass through it.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use super::recorder::Recorder;
use crate::upstream::Body;

/// A reply a stage decided on before it has the request's recorder at hand (a filter's
/// outcome); [`LocalReply::send`] turns it into the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LocalReply {
    pub status: StatusCode,
    pub flags: &'static str,
    pub text: &'static str,
    pub form: Form,
    /// Extra response headers (jwt_authn's `www-authenticate`).
    pub headers: Vec<(http::header::HeaderName, http::HeaderValue)>,
}

/// How a local reply is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// gRPC (trailers-only) when the request is gRPC, plain HTTP otherwise.
    AsRequest,
    /// Plain HTTP whatever the request: the fault filter's HTTP aborts.
    Http,
    /// Trailers-only gRPC with this status and no message: the fault filter's gRPC aborts.
    Grpc(u32),
}

// === impl LocalReply ===

impl LocalReply {
    /// A reply in the request's own protocol.
    pub fn new(status: StatusCode, flags: &'static str, text: &'static str) -> Self {
        Self {
            status,
            flags,
            text,
            form: Form::AsRequest,
            headers: Vec::new(),
        }
    }

    /// Answer the request, and record it.
    pub fn send(self, mut rec: Recorder, grpc: bool) -> Response<Body> {
        let mut resp = match self.form {
            Form::AsRequest => local_reply(rec, grpc, self.status, self.flags, self.text),
            Form::Http => local_reply(rec, false, self.status, self.flags, self.text),
            Form::Grpc(code) => {
                rec.flags = self.flags;
                trailers_only(rec, code, None)
            }
        };
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub(super) fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A reply from the proxy itself, recorded at once.
pub(super) fn local_reply(
    mut rec: Recorder,
    grpc: bool,
    status: StatusCode,
    flags: &'static str,
    text: &'static str,
) -> Response<Body> {
    rec.flags = flags;
    if grpc {
        // Trailers-only gRPC response, as Envoy sends for gRPC requests.
        return trailers_only(rec, grpc_status_for(status), Some(text));
    }
    rec.code = status.as_u16();
    let len = text.len() as u64;
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    if !text.is_empty() {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    rec.finish(None, len, false);
    r
}

/// A gRPC answer with no body: HTTP 200, the status (and message) in the headers.
fn trailers_only(mut rec: Recorder, code: u32, message: Option<&str>) -> Response<Body> {
    let mut r = Response::new(empty());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r.headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    if let Some(v) = message.and_then(|m| HeaderValue::from_str(m).ok()) {
        r.headers_mut().insert("grpc-message", v);
    }
    rec.code = 200;
    rec.finish(Some(code), 0, false);
    r
}

/// Envoy's mapping of a local reply's HTTP status to a gRPC status.
fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    use super::*;
    use crate::metrics::{Metrics, Reporter, ServiceId};

    /// A recorder for a request nobody logs.
    pub(in crate::http) fn recorder() -> Recorder {
        let cfg = crate::config::Config::from_env(
            &std::collections::BTreeMap::new(),
            &crate::config::Overrides::default(),
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new(&cfg));
        Recorder {
            peer: metrics.unknown_peer(),
            metrics,
            reporter: Reporter::Source,
            service: Arc::new(ServiceId::unknown()),
            protocol: "http",
            code: 0,
            flags: "-",
            mtls: false,
            local_principal: false,
            start: Instant::now(),
            request_bytes: Arc::new(AtomicU64::new(0)),
            access_log: false,
            method: http::Method::GET,
            path: "/".into(),
            authority: "example".into(),
            upstream: None,
            cluster: None,
            span: None,
            grpc_messages: None,
        }
    }

    #[test]
    fn http_reply_has_status_and_text() {
        let r = local_reply(
            recorder(),
            false,
            StatusCode::NOT_FOUND,
            "NR",
            "nothing here",
        );
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
        let empty = local_reply(recorder(), false, StatusCode::NOT_FOUND, "NR", "");
        assert!(empty.headers().get(header::CONTENT_TYPE).is_none());
    }

    #[test]
    fn grpc_reply_is_trailers_only_with_mapped_status() {
        let r = local_reply(
            recorder(),
            true,
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            "no healthy upstream",
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no healthy upstream");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
    }

    #[test]
    fn fault_forms_ignore_or_fix_the_protocol() {
        let http = LocalReply {
            form: Form::Http,
            ..LocalReply::new(StatusCode::IM_A_TEAPOT, "FI", "fault filter abort")
        };
        assert_eq!(
            http.send(recorder(), true).status(),
            StatusCode::IM_A_TEAPOT
        );
        let grpc = LocalReply {
            form: Form::Grpc(8),
            ..LocalReply::new(StatusCode::OK, "FI", "")
        };
        let r = grpc.send(recorder(), false);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert!(r.headers().get("grpc-message").is_none());
    }
}
