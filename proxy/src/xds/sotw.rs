//! State-of-the-world xDS: every response is the whole set of its type.
//!
//! A response replaces what is held of its type, and every request for a type repeats the
//! full list of names followed. Pilot takes a request as the answer to its last response of
//! that type, so each one must carry the last accepted version and the last nonce seen:
//! that is the state kept per stream. A NACK repeats the version accepted before, which
//! tells pilot the last good config is still in force.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use mast_proto::TypeUrl;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::protocol::{Client, FOLLOWED, Held, Protocol, Received, followed, names};
use crate::state::{Incoming, Wanted};

/// The state-of-the-world protocol.
#[derive(Debug, Default)]
pub(super) struct Sotw {
    /// Per type URL (as on the wire): the version last ACKed and the nonce last seen.
    versions: BTreeMap<String, (String, String)>,
}

// === impl Sotw ===

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    const MODE: &'static str = "sotw";
    const REPLACE: bool = true;

    async fn open(
        client: &mut Client,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> Result<Streaming<DiscoveryResponse>, tonic::Status> {
        Ok(client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }

    fn subscribe(&mut self, node: Node, wanted: &Wanted, _held: &Held) -> Vec<DiscoveryRequest> {
        // The protocol has no way to say what is held: pilot sends everything again.
        let mut first = Some(node);
        let mut out: Vec<DiscoveryRequest> = [TypeUrl::Cluster, TypeUrl::Listener]
            .into_iter()
            .map(|type_url| DiscoveryRequest {
                node: first.take(),
                type_url: type_url.url().into(),
                ..Default::default()
            })
            .collect();
        for type_url in FOLLOWED {
            let names = names(wanted, type_url);
            if !names.is_empty() {
                out.push(DiscoveryRequest {
                    type_url: type_url.url().into(),
                    resource_names: names,
                    ..Default::default()
                });
            }
        }
        out
    }

    fn split(resp: DiscoveryResponse) -> (Received, Vec<Incoming>) {
        let incoming = resp
            .resources
            .into_iter()
            .map(|any| Incoming {
                name: None,
                version: String::new(),
                any,
            })
            .collect();
        let received = Received {
            type_url: resp.type_url,
            version: resp.version_info,
            nonce: resp.nonce,
            removed: Vec::new(),
        };
        (received, incoming)
    }

    fn ack(
        &mut self,
        received: &Received,
        error_detail: Option<Status>,
        wanted: &Wanted,
    ) -> DiscoveryRequest {
        let names = TypeUrl::from_url(&received.type_url)
            .map(|t| names(wanted, t))
            .unwrap_or_default();
        let entry = self.versions.entry(received.type_url.clone()).or_default();
        let version = match error_detail {
            None => received.version.clone(),
            Some(_) => entry.0.clone(),
        };
        *entry = (version.clone(), received.nonce.clone());
        DiscoveryRequest {
            version_info: version,
            type_url: received.type_url.clone(),
            response_nonce: received.nonce.clone(),
            resource_names: names,
            error_detail,
            ..Default::default()
        }
    }

    fn follow(
        &mut self,
        received: &Received,
        now: &Wanted,
        before: &Wanted,
    ) -> Vec<DiscoveryRequest> {
        // The received type's new names went with its ACK.
        FOLLOWED
            .into_iter()
            .filter(|t| followed(now, *t) != followed(before, *t) && received.type_url != *t)
            .map(|type_url| {
                let (version, nonce) = self
                    .versions
                    .get(type_url.url())
                    .cloned()
                    .unwrap_or_default();
                DiscoveryRequest {
                    version_info: version,
                    type_url: type_url.url().into(),
                    response_nonce: nonce,
                    resource_names: names(now, type_url),
                    ..Default::default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;

    use super::super::protocol::testing::{nack, node, wanted};
    use super::*;

    fn received(t: TypeUrl, version: &str, nonce: &str) -> Received {
        Received {
            type_url: t.url().into(),
            version: version.into(),
            nonce: nonce.into(),
            removed: Vec::new(),
        }
    }

    #[test]
    fn subscribes_to_everything_and_the_names_known() {
        let mut s = Sotw::default();
        let reqs = s.subscribe(node(), &wanted(&[], &["80"]), &Held::new());
        let types: Vec<&str> = reqs.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(
            types,
            [
                TypeUrl::Cluster.url(),
                TypeUrl::Listener.url(),
                TypeUrl::Route.url()
            ]
        );
        assert_eq!(reqs[0].node, Some(node()));
        assert!(reqs[1..].iter().all(|r| r.node.is_none()));
        assert_eq!(reqs[2].resource_names, ["80"]);
        assert!(reqs.iter().all(|r| r.version_info.is_empty()));
    }

    #[test]
    fn a_response_replaces_and_carries_no_names() {
        let any = Any {
            type_url: TypeUrl::Cluster.url().into(),
            value: Vec::new(),
        };
        let (r, incoming) = Sotw::split(DiscoveryResponse {
            type_url: TypeUrl::Cluster.url().into(),
            version_info: "v1".into(),
            nonce: "n1".into(),
            resources: vec![any.clone()],
            ..Default::default()
        });
        assert_eq!(r, received(TypeUrl::Cluster, "v1", "n1"));
        assert_eq!(incoming.len(), 1);
        assert_eq!(
            (incoming[0].name.as_ref(), incoming[0].version.as_str()),
            (None, "")
        );
        assert_eq!(incoming[0].any, any);
    }

    #[test]
    fn a_nack_repeats_the_version_accepted_before() {
        let mut s = Sotw::default();
        let w = wanted(&["e"], &["80"]);
        let ack = s.ack(&received(TypeUrl::Endpoint, "1", "a"), None, &w);
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("1", "a")
        );
        assert_eq!(
            ack.resource_names,
            ["e"],
            "an ACK repeats the names followed"
        );
        let nack_req = s.ack(&received(TypeUrl::Endpoint, "2", "b"), nack(), &w);
        assert_eq!(
            (
                nack_req.version_info.as_str(),
                nack_req.response_nonce.as_str()
            ),
            ("1", "b")
        );
        assert_eq!(nack_req.error_detail, nack());
        // A wildcard type names nothing.
        let cds = s.ack(&received(TypeUrl::Cluster, "c1", "c"), None, &w);
        assert!(cds.resource_names.is_empty());
        // An unknown type is answered (NACKed by the caller) all the same.
        let odd = Received {
            type_url: "type.googleapis.com/x".into(),
            ..Default::default()
        };
        let odd = s.ack(&odd, nack(), &w);
        assert_eq!(odd.version_info, "");
        assert!(odd.resource_names.is_empty());
    }

    #[test]
    fn following_repeats_the_whole_list_with_the_last_version_and_nonce() {
        let mut s = Sotw::default();
        let before = wanted(&["a"], &["80"]);
        s.ack(&received(TypeUrl::Endpoint, "3", "e3"), None, &before);
        let now = wanted(&["a", "b"], &["80", "81"]);
        // After a CDS response: endpoints and routes both changed.
        let reqs = s.follow(&received(TypeUrl::Cluster, "c", "n"), &now, &before);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].type_url, TypeUrl::Endpoint.url());
        assert_eq!(
            (
                reqs[0].version_info.as_str(),
                reqs[0].response_nonce.as_str()
            ),
            ("3", "e3")
        );
        assert_eq!(reqs[0].resource_names, ["a", "b"]);
        assert_eq!(reqs[1].type_url, TypeUrl::Route.url());
        assert_eq!(
            (
                reqs[1].version_info.as_str(),
                reqs[1].response_nonce.as_str()
            ),
            ("", "")
        );
        assert_eq!(reqs[1].resource_names, ["80", "81"]);
        // The received type's names went with its ACK.
        let reqs = s.follow(&received(TypeUrl::Route, "r", "n"), &now, &before);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].type_url, TypeUrl::Endpoint.url());
        assert!(s.follow(&Received::default(), &now, &now).is_empty());
    }

    #[test]
    fn a_gateway_asks_for_the_secrets_its_listeners_name() {
        let mut s = Sotw::default();
        let before = wanted(&[], &[]);
        let mut now = wanted(&[], &["https.8443.https.edge.default"]);
        now.secrets
            .insert("kubernetes://bookinfo-credential".into());
        let reqs = s.follow(&received(TypeUrl::Listener, "l1", "n1"), &now, &before);
        let types: Vec<&str> = reqs.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(types, [TypeUrl::Route.url(), TypeUrl::Secret.url()]);
        assert_eq!(reqs[1].resource_names, ["kubernetes://bookinfo-credential"]);
        // A Secret response's ACK repeats the names, as for routes and endpoints.
        let ack = s.ack(&received(TypeUrl::Secret, "s1", "n2"), None, &now);
        assert_eq!(ack.resource_names, ["kubernetes://bookinfo-credential"]);
        // A reconnect asks for them again with the rest.
        let reqs = Sotw::default().subscribe(node(), &now, &Held::new());
        assert_eq!(
            reqs.last().map(|r| r.type_url.as_str()),
            Some(TypeUrl::Secret.url())
        );
    }
}
