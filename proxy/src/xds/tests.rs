//! The stream loop against an in-process fake pilot, once per protocol: what goes out
//! (subscriptions, ACKs, NACKs with their text, follow-up subscriptions) for scripted
//! responses, and a clean end when pilot closes the stream.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Mutex;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CustomClusterType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use prost::Message;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Streaming};

use super::*;

type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// One scripted stream: requests come out of `requests`, responses go in through `replies`.
struct Script<Req, Resp> {
    requests: UnboundedSender<Req>,
    replies: UnboundedReceiver<Result<Resp, tonic::Status>>,
}

/// A pilot that answers one stream of each protocol from a script.
#[derive(Default)]
struct FakePilot {
    sotw: Mutex<Option<Script<DiscoveryRequest, DiscoveryResponse>>>,
    delta: Mutex<Option<Script<DeltaDiscoveryRequest, DeltaDiscoveryResponse>>>,
}

fn play<Req: Send + 'static, Resp: Send + 'static>(
    script: &Mutex<Option<Script<Req, Resp>>>,
    mut incoming: Streaming<Req>,
) -> Result<Response<Replies<Resp>>, tonic::Status> {
    let script = script
        .lock()
        .unwrap()
        .take()
        .ok_or_else(|| tonic::Status::unavailable("one stream only"))?;
    let requests = script.requests;
    tokio::spawn(async move {
        while let Some(Ok(req)) = incoming.next().await {
            let _ = requests.send(req);
        }
    });
    Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
        script.replies,
    ))))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakePilot {
    type StreamAggregatedResourcesStream = Replies<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Replies<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        play(&self.sotw, request.into_inner())
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        play(&self.delta, request.into_inner())
    }
}

/// The test's ends of a scripted stream.
struct Pilot<Req, Resp> {
    requests: UnboundedReceiver<Req>,
    replies: UnboundedSender<Result<Resp, tonic::Status>>,
}

impl<Req, Resp> Pilot<Req, Resp> {
    async fn next(&mut self) -> Req {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("a request within 10 s")
            .expect("the stream is open")
    }

    fn reply(&self, resp: Resp) {
        self.replies.send(Ok(resp)).unwrap();
    }
}

fn script<Req, Resp>() -> (Script<Req, Resp>, Pilot<Req, Resp>) {
    let (req_tx, req_rx) = unbounded_channel();
    let (resp_tx, resp_rx) = unbounded_channel();
    (
        Script {
            requests: req_tx,
            replies: resp_rx,
        },
        Pilot {
            requests: req_rx,
            replies: resp_tx,
        },
    )
}

/// Serve `pilot` on loopback and run one stream of `P` against it with a fresh publisher.
async fn run_stream<P: Protocol + 'static>(
    pilot: FakePilot,
) -> (Arc<Shared>, tokio::task::JoinHandle<Result<(), Error>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(pilot))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let env: BTreeMap<String, String> = BTreeMap::new();
    let config = crate::config::Config::from_env(&env, &Default::default()).unwrap();
    let shared = Arc::new(Shared::new(config, false, None));
    let listeners = Arc::new(Listeners::new(Arc::clone(&shared)));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let node = node(&shared);
    let mut publisher = Publisher::new(Arc::clone(&shared), listeners);
    let task = tokio::spawn(async move {
        let mut client = Client::new(channel);
        stream::<P>(&mut client, &mut publisher, node).await
    });
    (shared, task)
}

fn any<M: Message>(t: TypeUrl, m: &M) -> Any {
    Any {
        type_url: t.url().into(),
        value: m.encode_to_vec(),
    }
}

fn eds_cluster(name: &str, service: &str) -> Any {
    any(
        TypeUrl::Cluster,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: service.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// A cluster mast-proxy cannot run: a custom cluster type.
fn custom_cluster(name: &str) -> Any {
    any(
        TypeUrl::Cluster,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(
                CustomClusterType::default(),
            )),
            ..Default::default()
        },
    )
}

fn assignment(service: &str) -> Any {
    any(
        TypeUrl::Endpoint,
        &ClusterLoadAssignment {
            cluster_name: service.into(),
            ..Default::default()
        },
    )
}

fn detail(status: &Option<Status>) -> &str {
    status.as_ref().map(|s| s.message.as_str()).unwrap_or("")
}

#[tokio::test]
async fn delta_acks_nacks_and_follows_names() {
    let (script, mut pilot) = script();
    let fake = FakePilot {
        delta: Mutex::new(Some(script)),
        ..Default::default()
    };
    let (shared, task) = run_stream::<Delta>(fake).await;

    let cds = pilot.next().await;
    assert_eq!(cds.type_url, TypeUrl::Cluster.url());
    assert_eq!(
        cds.node.map(|n| n.user_agent_name).as_deref(),
        Some("mast-proxy")
    );
    let lds = pilot.next().await;
    assert_eq!(
        (lds.type_url.as_str(), lds.node),
        (TypeUrl::Listener.url(), None)
    );

    // A cluster that follows an EDS name: ACK, then subscribe to the name.
    pilot.reply(DeltaDiscoveryResponse {
        type_url: TypeUrl::Cluster.url().into(),
        system_version_info: "c1".into(),
        nonce: "n1".into(),
        resources: vec![Resource {
            name: "outbound|80||a".into(),
            version: "1".into(),
            resource: Some(eds_cluster("outbound|80||a", "a")),
            ..Default::default()
        }],
        ..Default::default()
    });
    let ack = pilot.next().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.response_nonce.as_str()),
        (TypeUrl::Cluster.url(), "n1")
    );
    assert_eq!(ack.error_detail, None);
    let sub = pilot.next().await;
    assert_eq!(sub.type_url, TypeUrl::Endpoint.url());
    assert_eq!(sub.resource_names_subscribe, ["a"]);

    // A bad resource: NACK naming it and the field; nothing else is asked.
    pilot.reply(DeltaDiscoveryResponse {
        type_url: TypeUrl::Cluster.url().into(),
        system_version_info: "c2".into(),
        nonce: "n2".into(),
        resources: vec![Resource {
            name: "bad".into(),
            resource: Some(custom_cluster("bad")),
            ..Default::default()
        }],
        ..Default::default()
    });
    let nack = pilot.next().await;
    assert_eq!(nack.response_nonce, "n2");
    assert_eq!(
        nack.error_detail.as_ref().map(|s| s.code),
        Some(tonic::Code::InvalidArgument as i32)
    );
    assert_eq!(
        detail(&nack.error_detail),
        "Cluster \"bad\": cluster_type: custom cluster types are not supported"
    );

    // A type mast-proxy does not take.
    const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
    pilot.reply(DeltaDiscoveryResponse {
        type_url: RUNTIME.into(),
        nonce: "n3".into(),
        ..Default::default()
    });
    let nack = pilot.next().await;
    assert_eq!(
        detail(&nack.error_detail),
        format!("type {RUNTIME} is not supported")
    );

    // Removing the cluster unsubscribes its endpoints.
    pilot.reply(DeltaDiscoveryResponse {
        type_url: TypeUrl::Cluster.url().into(),
        system_version_info: "c4".into(),
        nonce: "n4".into(),
        removed_resources: vec!["outbound|80||a".into()],
        ..Default::default()
    });
    let ack = pilot.next().await;
    assert_eq!(
        (ack.response_nonce.as_str(), ack.error_detail),
        ("n4", None)
    );
    let unsub = pilot.next().await;
    assert_eq!(unsub.type_url, TypeUrl::Endpoint.url());
    assert_eq!(unsub.resource_names_unsubscribe, ["a"]);

    let status = shared.xds_status();
    assert_eq!(
        status.acked.get(TypeUrl::Cluster.url()).map(String::as_str),
        Some("c4")
    );
    assert!(
        status
            .last_nack
            .is_some_and(|n| n.ends_with("is not supported")),
    );

    // Pilot closes the stream: a clean end.
    drop(pilot);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn sotw_acks_with_versions_and_nacks_with_the_last_good_one() {
    let (script, mut pilot) = script();
    let fake = FakePilot {
        sotw: Mutex::new(Some(script)),
        ..Default::default()
    };
    let (_shared, task) = run_stream::<Sotw>(fake).await;

    let cds = pilot.next().await;
    assert!(cds.type_url == TypeUrl::Cluster.url() && cds.node.is_some());
    let lds = pilot.next().await;
    assert!(lds.type_url == TypeUrl::Listener.url() && lds.node.is_none());

    pilot.reply(DiscoveryResponse {
        type_url: TypeUrl::Cluster.url().into(),
        version_info: "v1".into(),
        nonce: "n1".into(),
        resources: vec![eds_cluster("outbound|80||a", "a")],
        ..Default::default()
    });
    let ack = pilot.next().await;
    assert_eq!(
        (
            ack.type_url.as_str(),
            ack.version_info.as_str(),
            ack.response_nonce.as_str()
        ),
        (TypeUrl::Cluster.url(), "v1", "n1")
    );
    assert!(ack.error_detail.is_none() && ack.resource_names.is_empty());
    let eds = pilot.next().await;
    assert_eq!(eds.type_url, TypeUrl::Endpoint.url());
    assert_eq!(eds.resource_names, ["a"]);

    // The whole set again, with one bad cluster: NACK at the version accepted before.
    pilot.reply(DiscoveryResponse {
        type_url: TypeUrl::Cluster.url().into(),
        version_info: "v2".into(),
        nonce: "n2".into(),
        resources: vec![eds_cluster("outbound|80||a", "a"), custom_cluster("bad")],
        ..Default::default()
    });
    let nack = pilot.next().await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n2")
    );
    assert_eq!(
        detail(&nack.error_detail),
        "Cluster \"bad\": cluster_type: custom cluster types are not supported"
    );

    // Two bad resources: both named, in order.
    pilot.reply(DiscoveryResponse {
        type_url: TypeUrl::Endpoint.url().into(),
        version_info: "e1".into(),
        nonce: "e1".into(),
        resources: vec![
            eds_cluster("x", "x"),
            Any {
                type_url: TypeUrl::Endpoint.url().into(),
                value: vec![0xff],
            },
        ],
        ..Default::default()
    });
    let nack = pilot.next().await;
    let text = detail(&nack.error_detail);
    let (first, second) = text.split_once("; ").unwrap_or((text, ""));
    assert_eq!(
        first,
        format!(
            "resource of type {} in a {} response",
            TypeUrl::Cluster.url(),
            TypeUrl::Endpoint.url()
        )
    );
    assert!(
        second.starts_with(&format!("{}: cannot decode: ", TypeUrl::Endpoint.url())),
        "{text}"
    );
    assert_eq!(nack.version_info, "");
    assert_eq!(
        nack.resource_names,
        ["a"],
        "the names go with every request"
    );

    // The endpoints arrive: ACK with the names followed.
    pilot.reply(DiscoveryResponse {
        type_url: TypeUrl::Endpoint.url().into(),
        version_info: "e2".into(),
        nonce: "e2".into(),
        resources: vec![assignment("a")],
        ..Default::default()
    });
    let ack = pilot.next().await;
    assert_eq!(
        (
            ack.version_info.as_str(),
            ack.response_nonce.as_str(),
            ack.error_detail.is_none()
        ),
        ("e2", "e2", true)
    );
    assert_eq!(ack.resource_names, ["a"]);

    drop(pilot);
    task.await.unwrap().unwrap();
}

/// A gateway's TLS listener names an SDS secret over ADS: it is followed like an RDS name,
/// and once it arrives the next handshake can use it, without waiting for a snapshot.
#[tokio::test]
async fn delta_follows_the_sds_secrets_a_tls_listener_names() {
    use envoy_types::pb::envoy::config::core::v3::DataSource;
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, TlsCertificate};

    let (script, mut pilot) = script();
    let fake = FakePilot {
        delta: Mutex::new(Some(script)),
        ..Default::default()
    };
    let (shared, task) = run_stream::<Delta>(fake).await;
    let _cds = pilot.next().await;
    let _lds = pilot.next().await;

    let listener: Listener = mast_proto::json::yaml_to_message(
        r#"
name: 0.0.0.0_8443
address: {socket_address: {address: 127.0.0.1, port_value: 0}}
listener_filters: [{name: envoy.filters.listener.tls_inspector}]
filter_chains:
- filter_chain_match: {server_names: [bookinfo.example.com]}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      common_tls_context:
        tls_certificate_sds_secret_configs:
        - {name: "kubernetes://bookinfo-credential", sds_config: {ads: {}}}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: tls
      cluster: outbound|9080||productpage.default.svc.cluster.local
"#,
    )
    .unwrap();
    pilot.reply(DeltaDiscoveryResponse {
        type_url: TypeUrl::Listener.url().into(),
        system_version_info: "l1".into(),
        nonce: "n1".into(),
        resources: vec![Resource {
            name: "0.0.0.0_8443".into(),
            resource: Some(any(TypeUrl::Listener, &listener)),
            ..Default::default()
        }],
        ..Default::default()
    });
    let ack = pilot.next().await;
    assert_eq!(
        (ack.response_nonce.as_str(), ack.error_detail),
        ("n1", None)
    );
    let sub = pilot.next().await;
    assert_eq!(sub.type_url, TypeUrl::Secret.url());
    assert_eq!(
        sub.resource_names_subscribe,
        ["kubernetes://bookinfo-credential"]
    );
    assert!(shared.sds.get("kubernetes://bookinfo-credential").is_none());

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bookinfo.example.com".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let inline = |s: String| {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(s.into_bytes())),
            ..Default::default()
        })
    };
    let secret = Secret {
        name: "kubernetes://bookinfo-credential".into(),
        r#type: Some(Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cert.pem()),
            private_key: inline(key.serialize_pem()),
            ..Default::default()
        })),
    };
    pilot.reply(DeltaDiscoveryResponse {
        type_url: TypeUrl::Secret.url().into(),
        system_version_info: "s1".into(),
        nonce: "n2".into(),
        resources: vec![Resource {
            name: secret.name.clone(),
            resource: Some(any(TypeUrl::Secret, &secret)),
            ..Default::default()
        }],
        ..Default::default()
    });
    let ack = pilot.next().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.response_nonce.as_str()),
        (TypeUrl::Secret.url(), "n2")
    );
    assert_eq!(ack.error_detail, None);
    assert!(
        shared
            .sds
            .certificate("kubernetes://bookinfo-credential")
            .is_some()
    );
    // A Secret that is not a certificate's PEM is NACKed; the last good one stays.
    let broken = Secret {
        name: secret.name.clone(),
        r#type: Some(Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline("nope".into()),
            private_key: inline("nope".into()),
            ..Default::default()
        })),
    };
    pilot.reply(DeltaDiscoveryResponse {
        type_url: TypeUrl::Secret.url().into(),
        system_version_info: "s2".into(),
        nonce: "n3".into(),
        resources: vec![Resource {
            name: secret.name.clone(),
            resource: Some(any(TypeUrl::Secret, &broken)),
            ..Default::default()
        }],
        ..Default::default()
    });
    let nack = pilot.next().await;
    assert!(
        detail(&nack.error_detail)
            .starts_with("Secret \"kubernetes://bookinfo-credential\": tls_certificate."),
        "{:?}",
        nack.error_detail
    );
    assert!(
        shared
            .sds
            .certificate("kubernetes://bookinfo-credential")
            .is_some()
    );
    task.abort();
}
