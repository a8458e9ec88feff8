//! ADS responses written straight from the resources' cached encodings.
//!
//! A generated `DiscoveryResponse` owns its resources' bytes, so pushing one route
//! configuration to 2000 proxies used to copy it 2000 times and then encode each copy again:
//! most of a push's CPU, and a memory high-water mark of proxies × configuration during an
//! initial sync. Here a response is a list of shared [`Resource`]s, and the response body
//! writes the protobuf framing around them itself: small pieces (field headers, small
//! resources) are copied into frames of up to [`FRAME`] bytes, and a large resource goes out
//! as a reference to its [`Bytes`]. hyper asks the body for the next frame only when the
//! HTTP/2 stream has send capacity, so a slow proxy holds references, not copies.
//!
//! The body also carries the push throttle's permit of each response (see
//! [`super::connection`]): it is released when the last frame of the response has been
//! handed to HTTP/2, so "pushes in flight" means what it says.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;
use prost::encoding::{encode_varint, encoded_len_varint};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::Status;

use mast_proto::TypeUrl;

use super::Resource;

/// Frames are cut at this size; resources at least [`SHARE_FROM`] long are sent by reference.
const FRAME: usize = 16 * 1024;
const SHARE_FROM: usize = 1024;

/// Which response message a [`Response`] is written as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `DiscoveryResponse`: `version_info` is the version of the whole set.
    Sotw { version_info: String },
    /// `DeltaDiscoveryResponse`: resources carry their own names and versions.
    Delta {
        system_version_info: String,
        removed: Vec<Arc<str>>,
    },
}

/// One ADS response, as shared resources.
#[derive(Debug)]
pub struct Response {
    pub kind: Kind,
    pub type_url: TypeUrl,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
    /// The push throttle's permit, held until the response is written.
    pub permit: Option<Arc<OwnedSemaphorePermit>>,
}

// Field numbers (envoy/service/discovery/v3/discovery.proto, google/protobuf/any.proto).
const LEN: u64 = 2; // wire type: length-delimited
const fn key(field: u64) -> u64 {
    (field << 3) | LEN
}

fn str_field_len(field: u64, s: &str) -> usize {
    if s.is_empty() {
        return 0;
    }
    encoded_len_varint(key(field)) + encoded_len_varint(s.len() as u64) + s.len()
}

fn put_str_field(buf: &mut BytesMut, field: u64, s: &str) {
    if s.is_empty() {
        return;
    }
    encode_varint(key(field), buf);
    encode_varint(s.len() as u64, buf);
    buf.put_slice(s.as_bytes());
}

/// Length of a resource's `Any` (type_url = 1, value = 2).
fn any_len(r: &Resource) -> usize {
    str_field_len(1, r.type_url.url()) + bytes_field_len(2, r.value.len())
}

fn bytes_field_len(field: u64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    encoded_len_varint(key(field)) + encoded_len_varint(len as u64) + len
}

/// Length of a delta `Resource` message (version = 1, resource = 2, name = 3).
fn delta_resource_len(r: &Resource) -> usize {
    str_field_len(1, &r.version) + message_field_len(2, any_len(r)) + str_field_len(3, &r.name)
}

fn message_field_len(field: u64, len: usize) -> usize {
    encoded_len_varint(key(field)) + encoded_len_varint(len as u64) + len
}

impl Response {
    /// Encoded length of the protobuf message (without the gRPC frame header).
    pub fn encoded_len(&self) -> usize {
        let mut len = str_field_len(4, self.type_url.url()) + str_field_len(5, &self.nonce);
        match &self.kind {
            Kind::Sotw { version_info } => {
                len += str_field_len(1, version_info);
                len += self
                    .resources
                    .iter()
                    .map(|r| message_field_len(2, any_len(r)))
                    .sum::<usize>();
            }
            Kind::Delta {
                system_version_info,
                removed,
            } => {
                len += str_field_len(1, system_version_info);
                len += self
                    .resources
                    .iter()
                    .map(|r| message_field_len(2, delta_resource_len(r)))
                    .sum::<usize>();
                len += removed.iter().map(|n| str_field_len(6, n)).sum::<usize>();
            }
        }
        len
    }
}

/// Writes one response as a sequence of frames.
struct Writer {
    response: Response,
    /// The next resource to write.
    next: usize,
    scratch: BytesMut,
    /// A shared resource encoding to send after `scratch` is flushed.
    shared: Option<Bytes>,
    done: bool,
}

impl Writer {
    fn new(response: Response) -> Result<Self, Status> {
        let len = response.encoded_len();
        let framed = u32::try_from(len)
            .map_err(|_| Status::resource_exhausted("response larger than 4 GiB"))?;
        let mut scratch = BytesMut::with_capacity(FRAME.min(len + 5));
        // gRPC message header: not compressed, big-endian length.
        scratch.put_u8(0);
        scratch.put_u32(framed);
        put_str_field(&mut scratch, 4, response.type_url.url());
        put_str_field(&mut scratch, 5, &response.nonce);
        match &response.kind {
            Kind::Sotw { version_info } => put_str_field(&mut scratch, 1, version_info),
            Kind::Delta {
                system_version_info,
                removed,
            } => {
                put_str_field(&mut scratch, 1, system_version_info);
                for name in removed {
                    put_str_field(&mut scratch, 6, name);
                }
            }
        }
        Ok(Self {
            response,
            next: 0,
            scratch,
            shared: None,
            done: false,
        })
    }

    /// Header of resource `r` up to its value, into `scratch`.
    fn put_resource_header(&mut self, r: &Resource) {
        let buf = &mut self.scratch;
        let any = any_len(r);
        encode_varint(key(2), buf);
        if let Kind::Delta { .. } = self.response.kind {
            encode_varint(delta_resource_len(r) as u64, buf);
            put_str_field(buf, 1, &r.version);
            put_str_field(buf, 3, &r.name);
            encode_varint(key(2), buf);
        }
        encode_varint(any as u64, buf);
        put_str_field(buf, 1, r.type_url.url());
        if !r.value.is_empty() {
            encode_varint(key(2), buf);
            encode_varint(r.value.len() as u64, buf);
        }
    }

    /// The next frame, or `None` when the response is written.
    fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(shared) = self.shared.take() {
            return Some(shared);
        }
        if self.done {
            return None;
        }
        while let Some(r) = self.response.resources.get(self.next).cloned() {
            self.next += 1;
            self.put_resource_header(&r);
            if r.value.len() >= SHARE_FROM {
                self.shared = Some(r.value.clone());
                return Some(self.scratch.split().freeze());
            }
            self.scratch.put_slice(&r.value);
            if self.scratch.len() >= FRAME {
                return Some(self.scratch.split().freeze());
            }
        }
        self.done = true;
        // The permit goes with the last frame handed out.
        self.response.permit = None;
        (!self.scratch.is_empty()).then(|| self.scratch.split().freeze())
    }
}

/// The body of an ADS response stream: the connection task's responses, then the gRPC
/// status as trailers.
pub struct ResponseBody {
    rx: mpsc::Receiver<Result<Response, Status>>,
    current: Option<Writer>,
    /// The trailers have been sent.
    ended: bool,
}

impl ResponseBody {
    pub fn new(rx: mpsc::Receiver<Result<Response, Status>>) -> Self {
        Self {
            rx,
            current: None,
            ended: false,
        }
    }

    fn trailers(&mut self, status: &Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.ended = true;
        self.current = None;
        let mut trailers = HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(writer) = &mut this.current {
                if let Some(frame) = writer.next_frame() {
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
                }
                this.current = None;
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(response))) => match Writer::new(response) {
                    Ok(w) => this.current = Some(w),
                    Err(status) => return this.trailers(&status),
                },
                Poll::Ready(Some(Err(status))) => return this.trailers(&status),
                // The connection task ended: the proxy closed its side.
                Poll::Ready(None) => return this.trailers(&Status::ok("")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };
    use http_body_util::BodyExt;
    use prost::Message;

    use super::*;

    fn cluster(name: &str, pad: usize) -> Arc<Resource> {
        let c = Cluster {
            name: name.into(),
            alt_stat_name: "x".repeat(pad),
            ..Default::default()
        };
        Arc::new(Resource::new(name, TypeUrl::Cluster, &c))
    }

    /// Everything the body yields, frames concatenated, and the trailers.
    async fn collect(responses: Vec<Result<Response, Status>>) -> (Vec<Bytes>, HeaderMap) {
        let (tx, rx) = mpsc::channel(responses.len().max(1));
        for r in responses {
            tx.send(r).await.unwrap();
        }
        drop(tx);
        let mut body = ResponseBody::new(rx);
        let mut frames = Vec::new();
        let mut trailers = HeaderMap::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(d) => frames.push(d),
                Err(f) => trailers = f.into_trailers().unwrap(),
            }
        }
        assert!(http_body::Body::is_end_stream(&body));
        (frames, trailers)
    }

    /// Split the concatenated frames into gRPC messages.
    fn messages(frames: &[Bytes]) -> Vec<Bytes> {
        let mut all = BytesMut::new();
        for f in frames {
            all.put_slice(f);
        }
        let mut all = all.freeze();
        let mut out = Vec::new();
        while !all.is_empty() {
            assert_eq!(all[0], 0, "not compressed");
            let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
            out.push(all.slice(5..5 + len));
            all = all.slice(5 + len..);
        }
        out
    }

    #[tokio::test]
    async fn sotw_decodes_as_prost_would_write_it() {
        let resources = vec![cluster("a", 10), cluster("b", 5000), cluster("c", 0)];
        let response = Response {
            kind: Kind::Sotw {
                version_info: "v7".into(),
            },
            type_url: TypeUrl::Cluster,
            nonce: "7-1".into(),
            resources: resources.clone(),
            permit: None,
        };
        let (frames, trailers) = collect(vec![Ok(response)]).await;
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        let msgs = messages(&frames);
        assert_eq!(msgs.len(), 1);
        let got = DiscoveryResponse::decode(msgs[0].clone()).unwrap();
        let want = DiscoveryResponse {
            version_info: "v7".into(),
            resources: resources.iter().map(|r| r.any()).collect(),
            type_url: TypeUrl::Cluster.url().into(),
            nonce: "7-1".into(),
            ..Default::default()
        };
        assert_eq!(got, want);
        assert_eq!(msgs[0].len(), want.encoded_len());
        // The large resource went out as its own shared bytes, not a copy.
        assert!(
            frames
                .iter()
                .any(|f| f.as_ptr() == resources[1].value.as_ptr())
        );
    }

    #[tokio::test]
    async fn delta_with_removals_and_many_frames() {
        let resources: Vec<_> = (0..400)
            .map(|i| {
                cluster(
                    &format!("outbound|80||s{i}.default.svc.cluster.local"),
                    i % 7,
                )
            })
            .collect();
        let response = Response {
            kind: Kind::Delta {
                system_version_info: "12".into(),
                removed: vec!["gone-1".into(), "gone-2".into()],
            },
            type_url: TypeUrl::Cluster,
            nonce: "12-3".into(),
            resources: resources.clone(),
            permit: None,
        };
        let second = Response {
            kind: Kind::Delta {
                system_version_info: "13".into(),
                removed: vec![],
            },
            type_url: TypeUrl::Cluster,
            nonce: "13-4".into(),
            resources: vec![],
            permit: None,
        };
        let (frames, _) = collect(vec![Ok(response), Ok(second)]).await;
        assert!(frames.len() > 1, "cut into frames");
        assert!(frames.iter().all(|f| f.len() <= FRAME + SHARE_FROM + 64));
        let msgs = messages(&frames);
        assert_eq!(msgs.len(), 2);
        let got = DeltaDiscoveryResponse::decode(msgs[0].clone()).unwrap();
        assert_eq!(got.system_version_info, "12");
        assert_eq!(got.nonce, "12-3");
        assert_eq!(got.removed_resources, vec!["gone-1", "gone-2"]);
        assert_eq!(got.resources.len(), 400);
        for (g, r) in got.resources.iter().zip(&resources) {
            assert_eq!(g.name, &*r.name);
            assert_eq!(g.version, &*r.version);
            assert_eq!(g.resource.as_ref(), Some(&r.any()));
        }
        let empty = DeltaDiscoveryResponse::decode(msgs[1].clone()).unwrap();
        assert_eq!(empty.nonce, "13-4");
        assert!(empty.resources.is_empty());
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_with_its_status() {
        let (frames, trailers) = collect(vec![Err(Status::invalid_argument("bad node"))]).await;
        assert!(frames.is_empty());
        assert_eq!(trailers.get("grpc-status").unwrap(), "3");
        assert_eq!(trailers.get("grpc-message").unwrap(), "bad%20node");
    }

    #[tokio::test]
    async fn the_permit_is_released_when_the_response_is_written() {
        let throttle = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = Arc::new(throttle.clone().try_acquire_owned().unwrap());
        let response = Response {
            kind: Kind::Sotw {
                version_info: "1".into(),
            },
            type_url: TypeUrl::Cluster,
            nonce: "1-1".into(),
            resources: vec![cluster("a", 3000), cluster("b", 10)],
            permit: Some(permit),
        };
        let mut w = Writer::new(response).unwrap();
        assert!(w.next_frame().is_some());
        assert_eq!(throttle.available_permits(), 0, "held while writing");
        while w.next_frame().is_some() {}
        assert_eq!(throttle.available_permits(), 1);
    }
}
