//! What differs between the two ADS protocols, behind one trait, so the stream loop in
//! [`super`] is written once.
//!
//! Delta and state-of-the-world xDS carry the same resources and need the same handling:
//! decode, apply all-or-nothing, ACK or NACK, follow the route and endpoint names the
//! listeners and clusters refer to, publish. They differ only in their messages — how the
//! first requests subscribe, how a response splits into resources and removals, what an ACK
//! carries, and how a change of the followed names is told to pilot — and in the bookkeeping
//! that needs (state-of-the-world repeats the last accepted version and nonce). A
//! [`Protocol`] holds exactly that, so a fix to the shared handling cannot reach one protocol
//! and miss the other.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use mast_proto::TypeUrl;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::state::{Incoming, Wanted};

pub(super) type Client = AggregatedDiscoveryServiceClient<Channel>;

/// The versions held per resource name, per type: what a reconnecting client tells pilot it
/// already has.
pub(super) type Held = BTreeMap<TypeUrl, BTreeMap<String, String>>;

/// The types whose names are followed rather than subscribed to as a whole: endpoints for the
/// EDS clusters, routes for the RDS listeners, secrets for the TLS chains that name SDS
/// secrets over ADS (a gateway's).
pub(super) const FOLLOWED: [TypeUrl; 3] = [TypeUrl::Endpoint, TypeUrl::Route, TypeUrl::Secret];

/// A response without its resources: what the ACK and the store need to know of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Received {
    /// As it came on the wire: an unknown type is NACKed, not dropped.
    pub type_url: String,
    pub version: String,
    pub nonce: String,
    /// Names the response removes (delta only).
    pub removed: Vec<String>,
}

/// One ADS protocol: its messages and the per-stream state they need.
///
/// A value lives for one stream; a reconnect starts from `Default`.
pub(super) trait Protocol: Default + Send {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// The mode as `/debug` and the logs name it.
    const MODE: &'static str;
    /// Whether a response is the whole set of its type (state-of-the-world) or a change to
    /// it (delta).
    const REPLACE: bool;

    /// Open the stream; `requests` carries this side.
    fn open(
        client: &mut Client,
        requests: ReceiverStream<Self::Request>,
    ) -> impl Future<Output = Result<Streaming<Self::Response>, tonic::Status>> + Send;

    /// The requests that start a stream: the node (on the first), CDS and LDS, and the names
    /// of `wanted` already known (on a reconnect), with the versions `held` where the
    /// protocol can say them.
    fn subscribe(&mut self, node: Node, wanted: &Wanted, held: &Held) -> Vec<Self::Request>;

    /// Split a response into what the ACK needs and its resources.
    fn split(response: Self::Response) -> (Received, Vec<Incoming>);

    /// The answer to `received`: an ACK, or a NACK when `error_detail` is set. `wanted` is
    /// what is followed after applying it.
    fn ack(
        &mut self,
        received: &Received,
        error_detail: Option<Status>,
        wanted: &Wanted,
    ) -> Self::Request;

    /// The requests that change what is followed from `before` to `now`, sent after the ACK
    /// of `received`.
    fn follow(&mut self, received: &Received, now: &Wanted, before: &Wanted) -> Vec<Self::Request>;
}

/// The names of type `t` that `wanted` follows; `None` for the wildcard types.
pub(super) fn followed(wanted: &Wanted, t: TypeUrl) -> Option<&BTreeSet<String>> {
    match t {
        TypeUrl::Endpoint => Some(&wanted.endpoints),
        TypeUrl::Route => Some(&wanted.routes),
        TypeUrl::Secret => Some(&wanted.secrets),
        _ => None,
    }
}

/// [`followed`] as a request's name list (empty for the wildcard types).
pub(super) fn names(wanted: &Wanted, t: TypeUrl) -> Vec<String> {
    followed(wanted, t)
        .map(|n| n.iter().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;

    pub fn wanted(endpoints: &[&str], routes: &[&str]) -> Wanted {
        Wanted {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            routes: routes.iter().map(|s| s.to_string()).collect(),
            secrets: Default::default(),
        }
    }

    pub fn nack() -> Option<Status> {
        Some(Status {
            code: tonic::Code::InvalidArgument as i32,
            message: "bad".into(),
            details: Vec::new(),
        })
    }

    pub fn node() -> Node {
        Node {
            id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::wanted;
    use super::*;

    #[test]
    fn only_endpoints_routes_and_secrets_are_followed() {
        let mut w = wanted(&["e"], &["r1", "r2"]);
        w.secrets.insert("kubernetes://cred".into());
        assert_eq!(names(&w, TypeUrl::Endpoint), ["e"]);
        assert_eq!(names(&w, TypeUrl::Route), ["r1", "r2"]);
        assert_eq!(names(&w, TypeUrl::Secret), ["kubernetes://cred"]);
        assert!(followed(&w, TypeUrl::Cluster).is_none());
        assert!(names(&w, TypeUrl::Listener).is_empty());
        assert!(FOLLOWED.iter().all(|t| !t.is_wildcard()));
    }
}
