//! The xDS resource types Mast speaks, and their type URLs.
//!
//! A type URL is the one string on which pilot, mast-proxy and the load tools must agree
//! byte for byte: it names the resource in every `Any`, every request and every response.
//! Spelling it once here, as a typed [`TypeUrl`], keeps the copies from drifting apart and
//! lets code match on a type instead of comparing strings. The order in which types are pushed
//! and applied ([`TypeUrl::PUSH_ORDER`]) is part of the protocol too, so it lives here as well.

use std::fmt;
use std::str::FromStr;

/// One xDS resource type.
///
/// The derived ordering is [`TypeUrl::PUSH_ORDER`] followed by `Secret`, and matches the
/// alphabetical order of the URLs, so maps keyed by `TypeUrl` list types as maps keyed by the
/// URL string did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`, served by the node agent
    /// rather than over ADS.
    Secret,
}

/// A type URL that is none of [`TypeUrl`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown xDS type URL {0:?}: expected one of Cluster, ClusterLoadAssignment, Listener, RouteConfiguration or Secret under type.googleapis.com/envoy"
)]
pub struct UnknownTypeUrl(pub String);

// === impl TypeUrl ===

impl TypeUrl {
    /// The types every proxy subscribes to over ADS, in the order pushes are sent and applied:
    /// clusters before their endpoints, listeners before their routes (as Istio pushes and
    /// Envoy expects, so Envoy never warms a listener on a cluster it does not have yet). A
    /// sidecar's secrets are not part of it: they come from the node agent's SDS.
    pub const PUSH_ORDER: [TypeUrl; 4] = [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
    ];

    /// What pilot serves over ADS, in push order: [`Self::PUSH_ORDER`], then the secrets a
    /// gateway's `credentialName` names (`kubernetes://<name>`), which only gateway proxies
    /// subscribe to (a sidecar's own certificates come from its agent).
    pub const ADS_ORDER: [TypeUrl; 5] = [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
        TypeUrl::Secret,
    ];

    /// Every type, in [`Ord`] order.
    pub const ALL: [TypeUrl; 5] = [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
        TypeUrl::Secret,
    ];

    /// The full type URL, as it travels in `Any.type_url` and discovery requests.
    pub const fn url(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    /// The discovery service's short name (`cds`, `eds`, `lds`, `rds`, `sds`), as logs,
    /// metrics labels and `/debug/syncz` show it.
    pub const fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::Endpoint => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::Route => "rds",
            TypeUrl::Secret => "sds",
        }
    }

    /// The type whose URL is `url`, if it is one of ours.
    pub fn from_url(url: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.url() == url)
    }

    /// Whether the type is subscribed to as a whole by default: in the xDS protocol, an empty
    /// subscription to clusters or listeners means "all of them", while endpoints, routes and
    /// secrets are asked for by name.
    pub const fn is_wildcard(self) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Listener)
    }
}

impl fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url())
    }
}

impl FromStr for TypeUrl {
    type Err = UnknownTypeUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TypeUrl::from_url(s).ok_or_else(|| UnknownTypeUrl(s.to_string()))
    }
}

impl AsRef<str> for TypeUrl {
    fn as_ref(&self) -> &str {
        self.url()
    }
}

impl PartialEq<str> for TypeUrl {
    fn eq(&self, other: &str) -> bool {
        self.url() == other
    }
}

impl PartialEq<TypeUrl> for str {
    fn eq(&self, other: &TypeUrl) -> bool {
        self == other.url()
    }
}

impl PartialEq<TypeUrl> for String {
    fn eq(&self, other: &TypeUrl) -> bool {
        self == other.url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Name;

    #[test]
    fn round_trip() {
        for t in TypeUrl::ALL {
            assert_eq!(t.url().parse::<TypeUrl>(), Ok(t));
            assert_eq!(TypeUrl::from_url(t.url()), Some(t));
            assert_eq!(t.to_string(), t.url());
        }
        let err = "type.googleapis.com/envoy.config.cluster.v3.Clusters"
            .parse::<TypeUrl>()
            .unwrap_err();
        assert!(err.to_string().contains("Clusters"), "{err}");
        assert_eq!(TypeUrl::from_url("cds"), None);
    }

    #[test]
    fn urls_are_the_messages_type_urls() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
        assert_eq!(TypeUrl::Cluster.url(), Cluster::type_url());
        assert_eq!(TypeUrl::Endpoint.url(), ClusterLoadAssignment::type_url());
        assert_eq!(TypeUrl::Listener.url(), Listener::type_url());
        assert_eq!(TypeUrl::Route.url(), RouteConfiguration::type_url());
        assert_eq!(TypeUrl::Secret.url(), Secret::type_url());
    }

    #[test]
    fn short_names() {
        let short: Vec<_> = TypeUrl::ALL.iter().map(|t| t.short()).collect();
        assert_eq!(short, ["cds", "eds", "lds", "rds", "sds"]);
    }

    #[test]
    fn push_order() {
        let pos = |t| TypeUrl::PUSH_ORDER.iter().position(|p| *p == t);
        assert!(pos(TypeUrl::Cluster) < pos(TypeUrl::Endpoint));
        assert!(pos(TypeUrl::Listener) < pos(TypeUrl::Route));
        assert!(pos(TypeUrl::Cluster) < pos(TypeUrl::Listener));
        assert_eq!(pos(TypeUrl::Secret), None);
        // The derived order agrees with the URLs' order, which string-keyed maps used.
        let mut by_url = TypeUrl::ALL;
        by_url.sort_by_key(|t| t.url());
        assert_eq!(by_url, TypeUrl::ALL);
        assert!(TypeUrl::ALL.is_sorted());
    }

    #[test]
    fn wildcard_types() {
        let wild: Vec<_> = TypeUrl::ALL
            .into_iter()
            .filter(|t| t.is_wildcard())
            .collect();
        assert_eq!(wild, [TypeUrl::Cluster, TypeUrl::Listener]);
    }
}
