//! The tonic service: accepts ADS streams, starts a [`Connection`] task for each, and keeps a
//! registry of connected proxies for `/debug/syncz` and `/debug/config_dump`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as TonicResponse, Status, Streaming};

use super::connection::{Connection, Flavor, Request as AdsRequest, Response};
use super::{Generator, Snapshot};
use crate::metrics::Metrics;

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
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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
        }
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// Start the connection task for a stream. The response stream is returned at once; the
    /// task reads the first request (which must carry the node) itself, so a client that
    /// waits for response headers before sending never deadlocks with us.
    fn start<Req>(
        &self,
        flavor: Flavor,
        mut requests: Streaming<Req>,
    ) -> mpsc::Receiver<Result<Response, Status>>
    where
        Req: Into<AdsRequest> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(8);
        let generator = self.generator.clone();
        let snapshots = self.snapshots.clone();
        let registry = self.registry.clone();
        let metrics = self.metrics.clone();
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
                tx,
                first,
                requests,
            )
            .await;
            registry.conns.remove(&conn_id);
            metrics.connected.dec();
        });
        rx
    }
}

#[tonic::async_trait]
impl<G: Generator> AggregatedDiscoveryService for AdsServer<G> {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<TonicResponse<Self::StreamAggregatedResourcesStream>, Status> {
        let rx = self.start(Flavor::StateOfTheWorld, request.into_inner());
        let stream = ReceiverStream::new(rx).filter_map(|r| async move {
            match r {
                Ok(Response::Sotw(r)) => Some(Ok(r)),
                Ok(Response::Delta(_)) => None,
                Err(s) => Some(Err(s)),
            }
        });
        Ok(TonicResponse::new(Box::pin(stream)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<TonicResponse<Self::DeltaAggregatedResourcesStream>, Status> {
        let rx = self.start(Flavor::Delta, request.into_inner());
        let stream = ReceiverStream::new(rx).filter_map(|r| async move {
            match r {
                Ok(Response::Delta(r)) => Some(Ok(r)),
                Ok(Response::Sotw(_)) => None,
                Err(s) => Some(Err(s)),
            }
        });
        Ok(TonicResponse::new(Box::pin(stream)))
    }
}
