//! Delta xDS: only changes travel, in both directions.
//!
//! Pilot names every resource it sends and every one it removes, so a response is applied
//! as a change to what is held. Following a new route or endpoint name is a subscribe (and
//! dropping one an unsubscribe) of just that difference, and a reconnecting client lists
//! the versions it holds so pilot re-sends only what changed meanwhile. Nothing has to be
//! remembered per stream: an ACK is the nonce alone.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use mast_proto::TypeUrl;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::protocol::{Client, FOLLOWED, Held, Protocol, Received, followed, names};
use crate::state::{Incoming, Wanted};

/// The delta protocol; it keeps no state of its own.
#[derive(Debug, Default)]
pub(super) struct Delta;

// === impl Delta ===

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    const MODE: &'static str = "delta";
    const REPLACE: bool = false;

    async fn open(
        client: &mut Client,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> Result<Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        Ok(client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }

    fn subscribe(
        &mut self,
        node: Node,
        wanted: &Wanted,
        held: &Held,
    ) -> Vec<DeltaDiscoveryRequest> {
        // Wildcard CDS and LDS, and the EDS/RDS/SDS names already known (reconnect), each
        // with the versions held so pilot sends only what changed.
        let mut first = Some(node);
        let mut out = Vec::new();
        for type_url in TypeUrl::ADS_ORDER {
            let names = names(wanted, type_url);
            if names.is_empty() && !type_url.is_wildcard() {
                continue;
            }
            out.push(DeltaDiscoveryRequest {
                node: first.take(),
                type_url: type_url.url().into(),
                resource_names_subscribe: names,
                initial_resource_versions: held
                    .get(&type_url)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                ..Default::default()
            });
        }
        out
    }

    fn split(resp: DeltaDiscoveryResponse) -> (Received, Vec<Incoming>) {
        let incoming = resp
            .resources
            .into_iter()
            .filter_map(|r| {
                Some(Incoming {
                    name: Some(r.name),
                    version: r.version,
                    any: r.resource?,
                })
            })
            .collect();
        let received = Received {
            type_url: resp.type_url,
            version: resp.system_version_info,
            nonce: resp.nonce,
            removed: resp.removed_resources,
        };
        (received, incoming)
    }

    fn ack(
        &mut self,
        received: &Received,
        error_detail: Option<Status>,
        _wanted: &Wanted,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: received.type_url.clone(),
            response_nonce: received.nonce.clone(),
            error_detail,
            ..Default::default()
        }
    }

    fn follow(
        &mut self,
        _received: &Received,
        now: &Wanted,
        before: &Wanted,
    ) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for type_url in FOLLOWED {
            let (Some(now), Some(before)) = (followed(now, type_url), followed(before, type_url))
            else {
                continue;
            };
            let add: Vec<String> = now.difference(before).cloned().collect();
            let remove: Vec<String> = before.difference(now).cloned().collect();
            if !add.is_empty() || !remove.is_empty() {
                out.push(DeltaDiscoveryRequest {
                    type_url: type_url.url().into(),
                    resource_names_subscribe: add,
                    resource_names_unsubscribe: remove,
                    ..Default::default()
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    use super::super::protocol::testing::{nack, node, wanted};
    use super::*;

    #[test]
    fn first_connect_subscribes_to_the_wildcard_types_with_the_node_once() {
        let reqs = Delta.subscribe(node(), &Wanted::default(), &Held::new());
        let types: Vec<&str> = reqs.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(types, [TypeUrl::Cluster.url(), TypeUrl::Listener.url()]);
        assert_eq!(reqs[0].node, Some(node()));
        assert_eq!(reqs[1].node, None);
        assert!(reqs.iter().all(|r| r.resource_names_subscribe.is_empty()));
    }

    #[test]
    fn reconnect_follows_known_names_and_says_the_versions_held() {
        let held: Held = [(
            TypeUrl::Endpoint,
            BTreeMap::from([("outbound|80||a".to_string(), "7".to_string())]),
        )]
        .into();
        let reqs = Delta.subscribe(node(), &wanted(&["outbound|80||a"], &["80"]), &held);
        let types: Vec<&str> = reqs.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(
            types,
            TypeUrl::PUSH_ORDER.map(TypeUrl::url),
            "in push order"
        );
        assert_eq!(reqs[1].resource_names_subscribe, ["outbound|80||a"]);
        assert_eq!(
            reqs[1].initial_resource_versions,
            HashMap::from([("outbound|80||a".to_string(), "7".to_string())])
        );
        assert_eq!(reqs[3].resource_names_subscribe, ["80"]);
        assert!(reqs[3].initial_resource_versions.is_empty());
    }

    #[test]
    fn a_response_is_a_change_and_its_ack_is_the_nonce() {
        let any = Any {
            type_url: TypeUrl::Route.url().into(),
            value: Vec::new(),
        };
        let (received, incoming) = Delta::split(DeltaDiscoveryResponse {
            type_url: TypeUrl::Route.url().into(),
            system_version_info: "v2".into(),
            nonce: "n2".into(),
            removed_resources: vec!["8080".into()],
            resources: vec![
                Resource {
                    name: "80".into(),
                    version: "r1".into(),
                    resource: Some(any.clone()),
                    ..Default::default()
                },
                // A name without a resource carries nothing to apply.
                Resource {
                    name: "81".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert_eq!(
            received,
            Received {
                type_url: TypeUrl::Route.url().into(),
                version: "v2".into(),
                nonce: "n2".into(),
                removed: vec!["8080".into()],
            }
        );
        assert_eq!(incoming.len(), 1);
        assert_eq!(incoming[0].name.as_deref(), Some("80"));
        assert_eq!(incoming[0].version, "r1");
        assert_eq!(incoming[0].any, any);

        let w = Wanted::default();
        let ack = Delta.ack(&received, None, &w);
        assert_eq!(
            (ack.type_url.as_str(), ack.response_nonce.as_str()),
            (TypeUrl::Route.url(), "n2")
        );
        assert!(ack.error_detail.is_none() && ack.resource_names_subscribe.is_empty());
        let nacked = Delta.ack(&received, nack(), &w);
        assert_eq!(nacked.error_detail, nack());
        assert_eq!(nacked.response_nonce, "n2");
    }

    #[test]
    fn following_sends_only_the_difference() {
        let before = wanted(&["a", "b"], &["80"]);
        let now = wanted(&["b", "c"], &["80"]);
        let reqs = Delta.follow(&Received::default(), &now, &before);
        assert_eq!(reqs.len(), 1, "routes did not change");
        assert_eq!(reqs[0].type_url, TypeUrl::Endpoint.url());
        assert_eq!(reqs[0].resource_names_subscribe, ["c"]);
        assert_eq!(reqs[0].resource_names_unsubscribe, ["a"]);
        assert!(Delta.follow(&Received::default(), &now, &now).is_empty());
    }
}
