//! Body wrappers that count bytes and report a request's metrics when its response ends.
//!
//! Envoy records a request when the stream completes, with the response size and, for gRPC,
//! the `grpc-status` from the trailers. [`Metered`] does the same: it observes frames as they
//! pass (no buffering) and records once — at the end of the body, or when it is dropped early
//! because the client went away.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::recorder::Recorder;
use crate::upstream::BoxError;

pin_project_lite::pin_project! {
    /// A response body that records the request's metrics when it ends.
    pub struct Metered<B> {
        #[pin]
        inner: B,
        recorder: Option<Recorder>,
        bytes: u64,
        grpc_status: Option<u32>,
    }

    impl<B> PinnedDrop for Metered<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.recorder.take() {
                r.finish(*this.grpc_status, *this.bytes, true);
            }
        }
    }
}

impl<B> Metered<B> {
    pub fn new(inner: B, recorder: Recorder, grpc_status: Option<u32>) -> Self {
        Self {
            inner,
            recorder: Some(recorder),
            bytes: 0,
            grpc_status,
        }
    }
}

impl<B> HttpBody for Metered<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(s) = trailers.get("grpc-status")
                {
                    *this.grpc_status = s.to_str().ok().and_then(|s| s.parse().ok());
                }
                // hyper stops polling once the body says it has ended.
                if this.inner.is_end_stream()
                    && let Some(r) = this.recorder.take()
                {
                    r.finish(*this.grpc_status, *this.bytes, false);
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = this.recorder.take() {
                    r.finish(*this.grpc_status, *this.bytes, false);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.recorder.take() {
                    r.finish(*this.grpc_status, *this.bytes, true);
                }
            }
            Poll::Pending => {}
        }
        polled.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request trailer that may not be one (RFC 9110 §6.5.1): framing, routing and
/// connection fields. A proxy that passed `content-length` or `host` on in trailers would
/// let a later hop that merges trailers into the head re-read a request it already framed
/// and routed; Envoy resets such a stream.
pub(super) fn forbidden_trailer(t: &http::HeaderMap) -> Option<&str> {
    const FORBIDDEN: [&str; 9] = [
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ];
    t.keys()
        .map(http::HeaderName::as_str)
        .find(|k| FORBIDDEN.contains(k))
}

pin_project_lite::pin_project! {
    /// A request body that counts the bytes it carries into a shared counter.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        bytes: Arc<AtomicU64>,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Self { inner, bytes }
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            if let Some(t) = frame.trailers_ref()
                && let Some(name) = forbidden_trailer(t)
            {
                // The upstream request is reset rather than finished with it.
                return Poll::Ready(Some(Err(format!("trailer {name} refused").into())));
            }
        }
        polled.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn framing_and_routing_trailers_reset_the_request() {
        for (name, refused) in [
            ("x-checksum", false),
            ("grpc-status", false),
            ("content-length", true),
            ("transfer-encoding", true),
            ("host", true),
        ] {
            let mut t = http::HeaderMap::new();
            t.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static("1"),
            );
            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(b"hello"))),
                Ok(Frame::trailers(t)),
            ];
            let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
            let bytes = Arc::new(AtomicU64::new(0));
            let got = Counted::new(body, Arc::clone(&bytes)).collect().await;
            assert_eq!(got.is_err(), refused, "{name}");
            assert_eq!(bytes.load(Ordering::Relaxed), 5);
        }
    }
}
