//! ADS protocol tests: a real tonic client against the server on loopback, with a fake
//! generator whose output is one cluster per model service (plus one fixed listener), so the
//! tests control exactly what changes between snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mast_mesh_config::MeshModel;
use mast_mesh_config::model::{Resolution, ResourceRef, Service};
use mast_proto::TypeUrl;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

use super::*;
use crate::metrics::Metrics;

struct FakeGenerator;

impl Generator for FakeGenerator {
    fn validate_node(&self, node: &Node) -> Result<(), GenerateError> {
        if node.id.is_empty() {
            return Err(GenerateError::Node("node id is empty".into()));
        }
        Ok(())
    }

    fn generate(&self, snapshot: &Snapshot, _node: &Node) -> Result<ProxyView, GenerateError> {
        let mut r = ProxyResources::default();
        for (host, svc) in &snapshot.model.services {
            let cluster = Cluster {
                name: host.clone(),
                alt_stat_name: svc.ports.len().to_string(),
                ..Default::default()
            };
            r.insert(
                TypeUrl::Cluster,
                Resource::new(host.as_str(), TypeUrl::Cluster, &cluster),
            );
        }
        let listener = Listener {
            name: "virtualOutbound".into(),
            ..Default::default()
        };
        r.insert(
            TypeUrl::Listener,
            Resource::new("virtualOutbound", TypeUrl::Listener, &listener),
        );
        Ok(ProxyView::single(r))
    }
}

fn model(hosts: &[&str]) -> Arc<MeshModel> {
    let mut m = MeshModel::default();
    for h in hosts {
        m.services.insert(
            h.to_string(),
            Service {
                hostname: h.to_string(),
                name: h.to_string(),
                namespace: "default".into(),
                ports: Vec::new(),
                selector: None,
                endpoints: Vec::new(),
                addresses: Vec::new(),
                resolution: Resolution::Static,
                mesh_external: false,
                export_to: Vec::new(),
                source: ResourceRef::default(),
            },
        );
    }
    Arc::new(m)
}

struct Harness {
    client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    publish: watch::Sender<Snapshot>,
    registry: Arc<ConnectionRegistry>,
    metrics: Arc<Metrics>,
    version: u64,
}

impl Harness {
    async fn start(hosts: &[&str]) -> Self {
        Self::start_throttled(hosts, crate::ads::server::DEFAULT_PUSH_THROTTLE).await
    }

    async fn start_throttled(hosts: &[&str], pushes: usize) -> Self {
        let (publish, snapshots) = watch::channel(Snapshot::new(1, model(hosts), Instant::now()));
        let registry = Arc::new(ConnectionRegistry::default());
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let server = AdsServer::new(
            Arc::new(FakeGenerator),
            snapshots,
            registry.clone(),
            metrics.clone(),
        )
        .with_push_throttle(pushes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server.into_service())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            client,
            publish,
            registry,
            metrics,
            version: 1,
        }
    }

    fn publish(&mut self, hosts: &[&str]) {
        self.version += 1;
        self.publish
            .send(Snapshot::new(self.version, model(hosts), Instant::now()))
            .unwrap();
    }

    async fn sotw(&mut self) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
        let (tx, rx) = mpsc::channel(8);
        let responses = self
            .client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, responses)
    }

    async fn delta(
        &mut self,
    ) -> (
        mpsc::Sender<DeltaDiscoveryRequest>,
        Streaming<DeltaDiscoveryResponse>,
    ) {
        let (tx, rx) = mpsc::channel(8);
        let responses = self
            .client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, responses)
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: "sidecar~10.0.0.1~app-1.default~default.svc.cluster.local".into(),
        ..Default::default()
    })
}

fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| {
            use prost::Message;
            Cluster::decode(a.value.as_slice()).unwrap().name
        })
        .collect()
}

async fn next<T>(s: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("no response within 5s")
        .unwrap()
        .expect("stream ended")
}

async fn nothing_within<T: std::fmt::Debug>(s: &mut Streaming<T>, wait: Duration) {
    if let Ok(r) = tokio::time::timeout(wait, s.message()).await {
        panic!("unexpected response: {r:?}");
    }
}

#[tokio::test]
async fn sotw_push_ack_and_no_push_without_change() {
    let mut h = Harness::start(&["a.default.svc.cluster.local"]).await;
    let (tx, mut rx) = h.sotw().await;
    tx.send(DiscoveryRequest {
        node: node(),
        type_url: TypeUrl::Cluster.url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut rx).await;
    assert_eq!(first.type_url, TypeUrl::Cluster);
    assert_eq!(cluster_names(&first), ["a.default.svc.cluster.local"]);
    tx.send(DiscoveryRequest {
        type_url: TypeUrl::Cluster.url().into(),
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // The same content under a new model version: nothing is pushed.
    h.publish(&["a.default.svc.cluster.local"]);
    nothing_within(&mut rx, Duration::from_millis(300)).await;

    // New content: pushed, with a new version.
    h.publish(&["a.default.svc.cluster.local", "b.default.svc.cluster.local"]);
    let second = next(&mut rx).await;
    assert_eq!(
        cluster_names(&second),
        ["a.default.svc.cluster.local", "b.default.svc.cluster.local"]
    );
    assert_ne!(second.version_info, first.version_info);

    let conns = h.registry.list();
    assert_eq!(conns.len(), 1);
    let status = conns[0].lock_status().clone();
    assert_eq!(
        status["cds"].acked_version.as_deref(),
        Some(first.version_info.as_str())
    );
    assert_eq!(
        status["cds"].sent_version.as_deref(),
        Some(second.version_info.as_str())
    );
    // The ACK's time, for "how long did my edit take" (now, give or take the test's run).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let acked_at = status["cds"].acked_at_ms.expect("acked_at_ms");
    assert!(
        acked_at <= now_ms && now_ms - acked_at < 60_000,
        "{acked_at} vs {now_ms}"
    );
}

#[tokio::test]
async fn sotw_nack_is_recorded_and_not_resent() {
    let mut h = Harness::start(&["a.default.svc.cluster.local"]).await;
    let (tx, mut rx) = h.sotw().await;
    tx.send(DiscoveryRequest {
        node: node(),
        type_url: TypeUrl::Cluster.url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut rx).await;
    tx.send(DiscoveryRequest {
        type_url: TypeUrl::Cluster.url().into(),
        version_info: String::new(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "cluster a: bad lb policy".into(),
            details: Vec::new(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    nothing_within(&mut rx, Duration::from_millis(300)).await;
    let status = h.registry.list()[0].lock_status().clone();
    assert_eq!(
        status["cds"].last_nack.as_deref(),
        Some("cluster a: bad lb policy")
    );
    assert_eq!(status["cds"].nacks, 1);
    assert!(status["cds"].acked_version.is_none());
    let rejects = h
        .metrics
        .rejects
        .get_or_create(&crate::metrics::TypeLabel { r#type: "cds" })
        .get();
    assert_eq!(rejects, 1);
}

#[tokio::test]
async fn stream_without_node_is_refused() {
    let mut h = Harness::start(&[]).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        type_url: TypeUrl::Cluster.url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = h
        .client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("an answer within 5s")
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node"), "{}", err.message());
}

#[tokio::test]
async fn delta_sends_only_changes_and_removals() {
    let mut h =
        Harness::start(&["a.default.svc.cluster.local", "b.default.svc.cluster.local"]).await;
    let (tx, mut rx) = h.delta().await;
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: TypeUrl::Cluster.url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut rx).await;
    let names: Vec<_> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["a.default.svc.cluster.local", "b.default.svc.cluster.local"]
    );
    tx.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Cluster.url().into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // b disappears, c appears, a is unchanged.
    h.publish(&["a.default.svc.cluster.local", "c.default.svc.cluster.local"]);
    let second = next(&mut rx).await;
    let names: Vec<_> = second.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["c.default.svc.cluster.local"]);
    assert_eq!(second.removed_resources, ["b.default.svc.cluster.local"]);
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_gets_nothing_new() {
    let mut h = Harness::start(&["a.default.svc.cluster.local"]).await;
    let (tx, mut rx) = h.delta().await;
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: TypeUrl::Cluster.url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut rx).await;
    let versions: std::collections::HashMap<_, _> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(tx);

    let (tx, mut rx) = h.delta().await;
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: TypeUrl::Cluster.url().into(),
        initial_resource_versions: versions,
        ..Default::default()
    })
    .await
    .unwrap();
    // The initial response still comes (the proxy waits for it), but empty.
    let again = next(&mut rx).await;
    assert!(again.resources.is_empty(), "{again:?}");
    assert!(again.removed_resources.is_empty());
}

#[test]
fn resource_version_follows_content() {
    let a = Cluster {
        name: "a".into(),
        ..Default::default()
    };
    let b = Cluster {
        name: "b".into(),
        ..Default::default()
    };
    let ra = Resource::new("a", TypeUrl::Cluster, &a);
    assert_eq!(ra.version, Resource::new("a", TypeUrl::Cluster, &a).version);
    assert_ne!(ra.version, Resource::new("b", TypeUrl::Cluster, &b).version);
    let set: BTreeMap<Arc<str>, Arc<Resource>> = [(Arc::from("a"), Arc::new(ra))].into();
    assert_eq!(set_version(set.values()), set_version(set.values()));
}

/// prost writes maps in `HashMap` order: two builds of one cluster with two metadata entries
/// encode differently about half the time. The second build must still reuse the first's
/// resource (same `Arc`, same version), or every change re-pushes it.
#[test]
fn a_rebuilt_resource_with_maps_is_the_previous_one() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let build = || {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.into())),
        };
        let fields = (0..8).map(|i| (format!("k{i}"), s("v"))).collect();
        Cluster {
            name: "c".into(),
            metadata: Some(Metadata {
                filter_metadata: [
                    ("istio".to_string(), Struct { fields }),
                    ("other".to_string(), Struct::default()),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let mut first = ProxyResources::default();
    first.insert_stable(TypeUrl::Cluster, "c", &build(), None);
    let mut differed = false;
    for _ in 0..20 {
        let again = build();
        differed |= Resource::new("c", TypeUrl::Cluster, &again).version
            != first.of_type(TypeUrl::Cluster).unwrap()["c"].version;
        let mut next = ProxyResources::default();
        next.insert_stable(TypeUrl::Cluster, "c", &again, Some(&first));
        assert!(Arc::ptr_eq(
            &next.of_type(TypeUrl::Cluster).unwrap()["c"],
            &first.of_type(TypeUrl::Cluster).unwrap()["c"]
        ));
    }
    assert!(
        differed,
        "the bytes of equal messages were expected to differ sometimes"
    );
    // A real change is not hidden.
    let mut changed = build();
    changed.alt_stat_name = "new".into();
    let mut next = ProxyResources::default();
    next.insert_stable(TypeUrl::Cluster, "c", &changed, Some(&first));
    assert_ne!(
        next.of_type(TypeUrl::Cluster).unwrap()["c"].version,
        first.of_type(TypeUrl::Cluster).unwrap()["c"].version
    );
}

/// With one push slot, a change still reaches every proxy: slots are released when a
/// response has been written, and queued pushes take the newest model.
#[tokio::test]
async fn a_throttle_of_one_still_converges_every_proxy() {
    let mut h = Harness::start_throttled(&["a.default.svc.cluster.local"], 1).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let (tx, mut rx) = h.delta().await;
        tx.send(DeltaDiscoveryRequest {
            node: node(),
            type_url: TypeUrl::Cluster.url().into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let first = next(&mut rx).await;
        tx.send(DeltaDiscoveryRequest {
            type_url: TypeUrl::Cluster.url().into(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        streams.push((tx, rx));
    }
    h.publish(&["a.default.svc.cluster.local", "b.default.svc.cluster.local"]);
    h.publish(&["a.default.svc.cluster.local", "c.default.svc.cluster.local"]);
    for (_, rx) in &mut streams {
        // Either both changes, or (merged) only the newest; the end state is the same.
        let mut names = std::collections::BTreeSet::new();
        loop {
            let r = next(rx).await;
            for x in &r.resources {
                names.insert(x.name.clone());
            }
            for x in &r.removed_resources {
                names.remove(x);
            }
            if names.contains("c.default.svc.cluster.local") {
                break;
            }
        }
        assert!(!names.contains("b.default.svc.cluster.local"), "{names:?}");
    }
}

#[test]
fn generate_errors_answer_by_cause() {
    let node = GenerateError::Node("node id is empty".into()).to_status();
    assert_eq!(node.code(), tonic::Code::InvalidArgument);
    assert_eq!(node.message(), "node id is empty");
    let bug = GenerateError::Internal("no listener for port 0".into()).to_status();
    assert_eq!(bug.code(), tonic::Code::Internal);
    assert!(bug.message().contains("no listener"), "{}", bug.message());
}
