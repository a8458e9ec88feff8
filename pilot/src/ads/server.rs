//! The ADS gRPC service: accepts ADS streams, starts a [`Connection`] task for each, and keeps a
//! registry of connected proxies for `/debug/syncz` and `/debug/config_dump`.
//!
//! The service is written against tonic's routing and request decoding, but not its response
//! encoding: responses are written from the resources' shared encodings by
//! [`super::wire::ResponseBody`], which a generated service's codec cannot do.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::StreamExt;
use http::header::CONTENT_TYPE;
use prost::Message;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Streaming};
use tonic::server::NamedService;
use tonic_prost::ProstDecoder;

use super::connection::{Connection, Flavor, Request as AdsRequest};
use super::wire::{Response, ResponseBody};
use super::{Generator, Snapshot};
use crate::metrics::Metrics;

/// How many pushes may be in flight at once, as istiod's `PILOT_PUSH_THROTTLE`: a push holds
/// a permit from generation until its last byte is handed to HTTP/2. It bounds the memory and
/// CPU a change or a reconnect storm takes at once; the default is istiod's.
pub const DEFAULT_PUSH_THROTTLE: usize = 100;

/// The largest request a proxy may send (a delta reconnect lists every resource it has).
const MAX_REQUEST: usize = 64 << 20;

/// What `/debug/syncz` shows for one type on one proxy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    /// The model version the last response was generated from.
    pub sent_snapshot: Option<u64>,
    pub acked_version: Option<String>,
    pub acked_snapshot: Option<u64>,
    /// When the proxy acknowledged `acked_version` (Unix milliseconds): when that config
    /// came into force there (`mastctl demo` reports a split edit's delay from it).
    pub acked_at_ms: Option<u64>,
    pub resources: usize,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

/// A connected proxy.
#[derive(Debug)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub node: Node,
    pub delta: bool,
    pub connected_at: u64,
    status: Mutex<BTreeMap<&'static str, TypeStatus>>,
}

impl ConnInfo {
    /// The status map; a poisoned lock only means a panicking reader, the data is still fine.
    pub fn lock_status(&self) -> MutexGuard<'_, BTreeMap<&'static str, TypeStatus>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Connected proxies by connection id.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    conns: DashMap<u64, Arc<ConnInfo>>,
    next_id: AtomicU64,
}

impl ConnectionRegistry {
    pub fn list(&self) -> Vec<Arc<ConnInfo>> {
        let mut v: Vec<_> = self.conns.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|c| c.conn_id);
        v
    }

    /// The newest connection of the proxy with this node id (or `<pod>.<namespace>`).
    pub fn find(&self, proxy_id: &str) -> Option<Arc<ConnInfo>> {
        self.list()
            .into_iter()
            .rev()
            .find(|c| c.node.id == proxy_id || c.node.id.split('~').nth(2) == Some(proxy_id))
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// The ADS gRPC service.
pub struct AdsServer<G> {
    generator: Arc<G>,
    snapshots: watch::Receiver<Snapshot>,
    registry: Arc<ConnectionRegistry>,
    metrics: Arc<Metrics>,
    throttle: Arc<Semaphore>,
}

impl<G: Generator> AdsServer<G> {
    pub fn new(
        generator: Arc<G>,
        snapshots: watch::Receiver<Snapshot>,
        registry: Arc<ConnectionRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            generator,
            snapshots,
            registry,
            metrics,
            throttle: Arc::new(Semaphore::new(DEFAULT_PUSH_THROTTLE)),
        }
    }

    /// At most `pushes` pushes in flight (at least one).
    pub fn with_push_throttle(mut self, pushes: usize) -> Self {
        self.throttle = Arc::new(Semaphore::new(pushes.max(1)));
        self
    }

    pub fn into_service(self) -> AdsService<G> {
        AdsService {
            server: Arc::new(self),
        }
    }

    /// Start the connection task for a stream. The response body is returned at once; the
    /// task reads the first request (which must carry the node) itself, so a client that
    /// waits for response headers before sending never deadlocks with us.
    fn start<Req>(&self, flavor: Flavor, mut requests: Streaming<Req>) -> ResponseBody
    where
        Req: Into<AdsRequest> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Result<Response, Status>>(8);
        let generator = self.generator.clone();
        let snapshots = self.snapshots.clone();
        let registry = self.registry.clone();
        let metrics = self.metrics.clone();
        let throttle = self.throttle.clone();
        tokio::spawn(async move {
            let first: AdsRequest = match requests.message().await {
                Ok(Some(r)) => r.into(),
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let Some(node) = first.node.clone() else {
                let status = Status::invalid_argument(
                    "the first request on an ADS stream must carry the node",
                );
                let _ = tx.send(Err(status)).await;
                return;
            };
            if let Err(e) = generator.validate_node(&node) {
                let _ = tx.send(Err(e.to_status())).await;
                return;
            }
            let conn_id = registry.next_id.fetch_add(1, Ordering::Relaxed);
            let info = Arc::new(ConnInfo {
                conn_id,
                node,
                delta: flavor == Flavor::Delta,
                connected_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default(),
                status: Mutex::default(),
            });
            registry.conns.insert(conn_id, info.clone());
            metrics.connected.inc();
            let requests = requests.map(|r| r.map(Into::into));
            Connection::serve(
                flavor,
                generator,
                snapshots,
                info,
                metrics.clone(),
                throttle,
                tx,
                first,
                requests,
            )
            .await;
            registry.conns.remove(&conn_id);
            metrics.connected.dec();
        });
        ResponseBody::new(rx)
    }

    fn stream<Req>(&self, flavor: Flavor, request: http::Request<Body>) -> http::Response<Body>
    where
        Req: Message + Default + Into<AdsRequest> + Send + 'static,
    {
        // Envoy does not compress xDS; a compressed stream is refused rather than misread.
        if let Some(enc) = request.headers().get("grpc-encoding")
            && enc != "identity"
        {
            return Status::unimplemented(format!("grpc-encoding {enc:?} is not supported on ADS"))
                .into_http();
        }
        let decoder = ProstDecoder::<Req>::new(BufferSettings::default());
        let requests =
            Streaming::new_request(decoder, request.into_body(), None, Some(MAX_REQUEST));
        let body = self.start(flavor, requests);
        let mut response = http::Response::new(Body::new(body));
        response.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

/// The ADS server as a tower service for tonic's router.
pub struct AdsService<G> {
    server: Arc<AdsServer<G>>,
}

impl<G> Clone for AdsService<G> {
    fn clone(&self) -> Self {
        Self {
            server: self.server.clone(),
        }
    }
}

impl<G> NamedService for AdsService<G> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<G: Generator> tower::Service<http::Request<Body>> for AdsService<G> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .strip_prefix(concat!(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService",
                "/"
            ))
            .unwrap_or_default();
        let response = match method {
            "StreamAggregatedResources" => self
                .server
                .stream::<DiscoveryRequest>(Flavor::StateOfTheWorld, request),
            "DeltaAggregatedResources" => self
                .server
                .stream::<DeltaDiscoveryRequest>(Flavor::Delta, request),
            _ => Status::unimplemented(format!("no method {method:?}")).into_http(),
        };
        ready(Ok(response))
    }
}
