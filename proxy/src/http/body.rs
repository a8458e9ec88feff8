//! Body wrappers that count bytes and report a request's metrics when its response ends.
//!
//! Envoy records a request when the stream completes, with the response size and, for gRPC,
//! the `grpc-status` from the trailers. [`Metered`] does the same: it observes frames as they
//! pass (no buffering) and records once — at the end of the body, or when it is dropped early
//! because the client went away.
//!
//! For gRPC both directions also count messages, as Envoy's `grpc_stats` filter does for
//! Istio's `istio_request_messages_total`/`istio_response_messages_total`: each message on
//! the wire starts with a 5-byte prefix (a flag byte and a big-endian length), so
//! [`GrpcFramer`] reads the prefixes as the frames pass and skips the rest, whatever way the
//! messages are cut into frames.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::recorder::Recorder;
use crate::upstream::BoxError;

/// Istio's interval between reports of a long stream's counts (`tcp_reporting_duration`).
const REPORT_INTERVAL: Duration = Duration::from_secs(15);

/// Reads gRPC's length-prefixed messages from a byte stream cut anywhere.
#[derive(Debug, Default)]
pub struct GrpcFramer {
    /// Bytes of the current prefix read so far (0 = between messages, 1..=4 in the prefix).
    prefix_read: u8,
    /// The length being read from the prefix.
    len: u32,
    /// Bytes of the current message still to skip.
    remaining: u64,
}

impl GrpcFramer {
    /// The messages that start in `data` (counted at their first byte, as Envoy's frame
    /// inspector counts them).
    pub fn inspect(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let byte = data[0];
            data = &data[1..];
            if self.prefix_read == 0 {
                // The flag byte: a message begins.
                started += 1;
                self.len = 0;
            } else {
                self.len = (self.len << 8) | u32::from(byte);
            }
            self.prefix_read += 1;
            if self.prefix_read == 5 {
                self.prefix_read = 0;
                self.remaining = u64::from(self.len);
            }
        }
        started
    }
}

/// A gRPC stream's message counts in both directions, and how much of them the metrics
/// already have (a long stream is reported as it goes).
#[derive(Debug, Default)]
pub struct GrpcMessages {
    request: AtomicU64,
    response: AtomicU64,
    reported_request: AtomicU64,
    reported_response: AtomicU64,
}

impl GrpcMessages {
    pub fn add_request(&self, n: u64) {
        if n > 0 {
            self.request.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_response(&self, n: u64) {
        if n > 0 {
            self.response.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The messages counted since the last call: (request, response).
    pub fn take_unreported(&self) -> (u64, u64) {
        let delta = |total: &AtomicU64, reported: &AtomicU64| {
            let now = total.load(Ordering::Relaxed);
            now.saturating_sub(reported.swap(now, Ordering::Relaxed))
        };
        (
            delta(&self.request, &self.reported_request),
            delta(&self.response, &self.reported_response),
        )
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the request's metrics when it ends.
    pub struct Metered<B> {
        #[pin]
        inner: B,
        recorder: Option<Recorder>,
        bytes: u64,
        grpc_status: Option<u32>,
        // The response's gRPC messages, for a gRPC request.
        framer: Option<GrpcFramer>,
        next_report: Instant,
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
            framer: recorder
                .grpc_messages
                .as_ref()
                .map(|_| GrpcFramer::default()),
            recorder: Some(recorder),
            bytes: 0,
            grpc_status,
            next_report: Instant::now() + REPORT_INTERVAL,
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
                    if let (Some(framer), Some(r)) = (this.framer.as_mut(), this.recorder.as_ref())
                        && let Some(m) = &r.grpc_messages
                    {
                        m.add_response(framer.inspect(data));
                        // A long stream's messages are reported as it goes, as Istio does.
                        let now = Instant::now();
                        if now >= *this.next_report {
                            *this.next_report = now + REPORT_INTERVAL;
                            r.report_messages();
                        }
                    }
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
        grpc: Option<(GrpcFramer, Arc<GrpcMessages>)>,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            bytes,
            grpc: None,
        }
    }

    /// Also count the gRPC messages the body carries.
    pub fn with_grpc(mut self, messages: Option<Arc<GrpcMessages>>) -> Self {
        self.grpc = messages.map(|m| (GrpcFramer::default(), m));
        self
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
                if let Some((framer, messages)) = this.grpc.as_mut() {
                    messages.add_request(framer.inspect(data));
                }
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

    /// gRPC messages on the wire: each with its 5-byte prefix.
    fn grpc_wire(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            out.push(0);
            out.extend_from_slice(&(*len as u32).to_be_bytes());
            out.extend(std::iter::repeat_n(i as u8, *len));
        }
        out
    }

    #[test]
    fn grpc_messages_are_counted_however_the_frames_cut_them() {
        // An empty message, one whose prefix holds a 0x05 (a flag-like byte), a large one.
        let lens = [3, 0, 5, 70_000, 1];
        let wire = grpc_wire(&lens);
        // In one piece.
        assert_eq!(GrpcFramer::default().inspect(&wire), 5);
        // Byte by byte: every prefix cut at every place.
        let mut f = GrpcFramer::default();
        let n: u64 = wire.chunks(1).map(|c| f.inspect(c)).sum();
        assert_eq!(n, 5);
        // Cut at every offset into two pieces; each message counted where it starts.
        for cut in 0..=40 {
            let mut f = GrpcFramer::default();
            let (a, b) = wire.split_at(cut);
            let first = f.inspect(a);
            let starts = [0, 8, 13, 23, 70_028];
            assert_eq!(
                first,
                starts.iter().filter(|s| **s < cut).count() as u64,
                "{cut}"
            );
            assert_eq!(first + f.inspect(b), 5, "cut at {cut}");
        }
        // A prefix split 2 + 3 across chunks, then the body in odd pieces.
        let wire = grpc_wire(&[300, 2]);
        let mut f = GrpcFramer::default();
        let counts: Vec<u64> = [
            &wire[..2],
            &wire[2..5],
            &wire[5..100],
            &wire[100..306],
            &wire[306..],
        ]
        .iter()
        .map(|c| f.inspect(c))
        .collect();
        assert_eq!(counts, [1, 0, 0, 1, 0]);
    }

    #[tokio::test]
    async fn request_and_response_bodies_count_grpc_messages_into_the_metrics() {
        let wire = Bytes::from(grpc_wire(&[10, 20, 30]));
        // Frames cutting through the prefixes.
        let frames = |w: &Bytes| -> Vec<Result<Frame<Bytes>, std::convert::Infallible>> {
            let cut = w.len() - 4;
            vec![
                Ok(Frame::data(w.slice(..3))),
                Ok(Frame::data(w.slice(3..cut))),
                Ok(Frame::data(w.slice(cut..))),
            ]
        };
        let mut rec = super::super::reply::tests::recorder();
        let messages = Arc::new(GrpcMessages::default());
        rec.grpc_messages = Some(Arc::clone(&messages));
        let req = http_body_util::StreamBody::new(tokio_stream::iter(frames(&wire)));
        let bytes = Arc::new(AtomicU64::new(0));
        Counted::new(req, bytes)
            .with_grpc(Some(Arc::clone(&messages)))
            .collect()
            .await
            .unwrap();
        let resp_wire = Bytes::from(grpc_wire(&[1, 1]));
        let resp = http_body_util::StreamBody::new(tokio_stream::iter(frames(&resp_wire)));
        let metrics = Arc::clone(&rec.metrics);
        Metered::new(resp, rec, None).collect().await.unwrap();
        let text = metrics.encode();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .to_string()
        };
        let req_line = line("istio_request_messages_total{");
        assert!(req_line.ends_with("} 3"), "{req_line}");
        assert!(line("istio_response_messages_total{").ends_with("} 2"));
        // Istio's labels: the workloads and service, no code or protocol.
        assert!(req_line.contains("reporter=\"source\""), "{req_line}");
        assert!(
            req_line.contains("destination_canonical_service="),
            "{req_line}"
        );
        assert!(!req_line.contains("response_code"), "{req_line}");
        // Reported once: nothing left over.
        assert_eq!(messages.take_unreported(), (0, 0));
    }

    #[tokio::test]
    async fn a_plain_http_request_counts_no_messages() {
        let rec = super::super::reply::tests::recorder();
        let metrics = Arc::clone(&rec.metrics);
        let body = http_body_util::Full::new(Bytes::from(grpc_wire(&[1])));
        Metered::new(body, rec, None).collect().await.unwrap();
        assert!(!metrics.encode().contains("istio_response_messages_total{"));
    }

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
