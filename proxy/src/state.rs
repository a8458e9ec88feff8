//! The proxy's config: the xDS resources received, and the immutable [`Snapshot`] the data
//! plane reads.
//!
//! Resources are converted when they arrive (so a bad one is NACKed with its field), kept per
//! type with their version, and assembled into a snapshot only when the set is complete —
//! every RDS name a listener uses and every EDS name a cluster uses is present. Requests load
//! the current snapshot once (an `ArcSwap` read), so a swap never changes a request midway,
//! and an in-flight request keeps its snapshot alive until it ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as ListenerProto;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as SecretProto;
use envoy_types::pb::google::protobuf::Any;
use mast_proto::TypeUrl;

use crate::resources::cluster::{ClusterConfig, Discovery, HostSpec};
use crate::resources::listener::{ChainKind, ListenerConfig, RouteSource, handoff_index};
use crate::resources::route::RouteTable;
use crate::resources::{Nack, XdsResource};
use crate::tls::credentials::Credential;
use crate::upstream::Cluster;

pub mod digest;

/// One received resource.
#[derive(Debug)]
pub struct Item<T> {
    pub any: Any,
    pub parsed: Arc<T>,
    pub version: String,
    pub updated: SystemTime,
    /// SHA-256 of `any.value` as received, for [`digest`].
    pub hash: digest::Hash,
}

/// All resources of one type.
#[derive(Debug)]
pub struct TypeState<T> {
    pub version: String,
    pub items: BTreeMap<String, Item<T>>,
    /// [`digest::type_digest`] of `items`, computed when first asked after a change.
    digest: OnceLock<digest::Hash>,
}

impl<T> Default for TypeState<T> {
    fn default() -> Self {
        Self {
            version: String::new(),
            items: BTreeMap::new(),
            digest: OnceLock::new(),
        }
    }
}

impl<T> TypeState<T> {
    /// The digest of what is held (names and the hashes of their bytes).
    pub fn digest(&self) -> digest::Hash {
        *self.digest.get_or_init(|| {
            digest::type_digest(self.items.iter().map(|(n, i)| (n.as_str(), &i.hash)))
        })
    }

    /// Apply one response of `R`s (see [`Resources::apply`]).
    fn apply<R: XdsResource<Compiled = T>>(
        &mut self,
        version: &str,
        incoming: Vec<Incoming>,
        removed: &[String],
        replace: bool,
    ) -> Result<(), Nack> {
        let now = SystemTime::now();
        let mut parsed = Vec::with_capacity(incoming.len());
        let mut rejected = Vec::new();
        for inc in incoming {
            let compiled = R::from_any(&inc.any).and_then(|proto| {
                let name = inc.name.unwrap_or_else(|| proto.name().to_string());
                Ok((name, proto.compile()?))
            });
            match compiled {
                Ok((name, value)) => parsed.push((name, inc.version, inc.any, value)),
                Err(r) => rejected.push(r),
            }
        }
        if !rejected.is_empty() {
            return Err(Nack(rejected));
        }
        self.digest = OnceLock::new();
        if replace {
            self.items.clear();
        }
        for name in removed {
            self.items.remove(name);
        }
        for (name, v, any, value) in parsed {
            let item_version = if v.is_empty() { version.to_string() } else { v };
            self.items.insert(
                name,
                Item {
                    hash: digest::resource_hash(&any.value),
                    any,
                    parsed: Arc::new(value),
                    version: item_version,
                    updated: now,
                },
            );
        }
        self.version = version.to_string();
        Ok(())
    }
}

/// A resource as it arrives in a response.
pub struct Incoming {
    pub name: Option<String>,
    pub version: String,
    pub any: Any,
}

/// Everything received, by type.
#[derive(Debug, Default)]
pub struct Resources {
    pub listeners: TypeState<ListenerConfig>,
    pub routes: TypeState<RouteTable>,
    pub clusters: TypeState<ClusterConfig>,
    pub endpoints: TypeState<Vec<HostSpec>>,
    /// SDS secrets over ADS (a gateway's `kubernetes://` credentials).
    pub secrets: TypeState<Credential>,
}

/// Names the current listeners and clusters refer to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub routes: BTreeSet<String>,
    pub endpoints: BTreeSet<String>,
    /// SDS secrets over ADS that the listeners' TLS chains name.
    pub secrets: BTreeSet<String>,
}

// === impl Resources ===

impl Resources {
    /// Apply one response. `replace`: state-of-the-world (the response is the whole set);
    /// otherwise delta (`removed` names go). Any bad resource rejects the whole response —
    /// the error is the NACK — and nothing changes.
    pub fn apply(
        &mut self,
        type_url: TypeUrl,
        version: &str,
        incoming: Vec<Incoming>,
        removed: &[String],
        replace: bool,
    ) -> Result<(), Nack> {
        match type_url {
            TypeUrl::Listener => self
                .listeners
                .apply::<ListenerProto>(version, incoming, removed, replace),
            TypeUrl::Route => self
                .routes
                .apply::<RouteConfiguration>(version, incoming, removed, replace),
            TypeUrl::Cluster => self
                .clusters
                .apply::<ClusterProto>(version, incoming, removed, replace),
            TypeUrl::Endpoint => self
                .endpoints
                .apply::<ClusterLoadAssignment>(version, incoming, removed, replace),
            TypeUrl::Secret => self
                .secrets
                .apply::<SecretProto>(version, incoming, removed, replace),
        }
    }

    /// The RDS, EDS and SDS names the current listeners and clusters need.
    pub fn wanted(&self) -> Wanted {
        let mut w = Wanted::default();
        for item in self.listeners.items.values() {
            let l = &item.parsed;
            for chain in l.chains.iter().chain(l.default_chain.iter()) {
                if let ChainKind::Http(h) = &chain.kind
                    && let RouteSource::Rds(name) = &h.routes
                {
                    w.routes.insert(name.clone());
                }
                if let Some(tls) = &chain.tls {
                    w.secrets.extend(tls.sds_names().map(str::to_string));
                }
            }
        }
        for item in self.clusters.items.values() {
            if let Discovery::Eds(name) = &item.parsed.discovery {
                w.endpoints.insert(name.clone());
            }
            if let Some(tls) = item.parsed.transport.any_tls() {
                w.secrets.extend(tls.sds_names().map(str::to_string));
            }
        }
        w
    }

    /// The wanted route and endpoint names not present. Secrets are not waited for: a chain
    /// whose secret is missing refuses its connections on its own while the rest of the
    /// config (other chains, other listeners) serves, and pilot sends nothing for a Secret
    /// that does not exist.
    pub fn missing(&self) -> Vec<String> {
        let w = self.wanted();
        w.routes
            .iter()
            .filter(|n| !self.routes.items.contains_key(*n))
            .map(|n| format!("RouteConfiguration {n}"))
            .chain(
                w.endpoints
                    .iter()
                    .filter(|n| !self.endpoints.items.contains_key(*n))
                    .map(|n| format!("ClusterLoadAssignment {n}")),
            )
            .collect()
    }

    /// The digest of every type held, for `/debug/xds_digest`.
    pub fn digest(&self) -> Vec<digest::TypeDigest> {
        macro_rules! typed {
            ($t:expr, $state:expr) => {
                digest::TypeDigest {
                    type_url: $t,
                    count: $state.items.len(),
                    digest: $state.digest(),
                }
            };
        }
        vec![
            typed!(TypeUrl::Cluster, self.clusters),
            typed!(TypeUrl::Endpoint, self.endpoints),
            typed!(TypeUrl::Listener, self.listeners),
            typed!(TypeUrl::Route, self.routes),
            typed!(TypeUrl::Secret, self.secrets),
        ]
    }

    /// The names held of type `t` with the hashes of their bytes, in name order.
    pub fn hashes(&self, t: TypeUrl) -> Vec<(String, digest::Hash)> {
        fn of<T>(s: &TypeState<T>) -> Vec<(String, digest::Hash)> {
            s.items.iter().map(|(n, i)| (n.clone(), i.hash)).collect()
        }
        match t {
            TypeUrl::Cluster => of(&self.clusters),
            TypeUrl::Endpoint => of(&self.endpoints),
            TypeUrl::Listener => of(&self.listeners),
            TypeUrl::Route => of(&self.routes),
            TypeUrl::Secret => of(&self.secrets),
        }
    }

    /// The SDS secrets held, by name, as handshakes read them.
    pub fn credentials(&self) -> HashMap<String, Credential> {
        self.secrets
            .items
            .iter()
            .map(|(n, i)| (n.clone(), Credential::clone(&i.parsed)))
            .collect()
    }

    /// Assemble a snapshot, reusing the runtime clusters of `prev` that did not change.
    pub fn snapshot(&self, prev: &Snapshot) -> Snapshot {
        let mut clusters = HashMap::with_capacity(self.clusters.items.len());
        for (name, item) in &self.clusters.items {
            let cfg = &item.parsed;
            let cluster = match prev.clusters.get(name) {
                Some(c) if *c.config == **cfg => Arc::clone(c),
                _ => Arc::new(Cluster::new(Arc::clone(cfg))),
            };
            if let Discovery::Eds(service) = &cfg.discovery {
                match self.endpoints.items.get(service) {
                    Some(eps) => cluster.set_hosts(&eps.parsed),
                    None => {
                        if let Some(inline) = &cfg.inline_hosts {
                            cluster.set_hosts(inline);
                        }
                    }
                }
            }
            clusters.insert(name.clone(), cluster);
        }
        let listeners: Vec<Arc<ListenerConfig>> = self
            .listeners
            .items
            .values()
            .map(|i| Arc::clone(&i.parsed))
            .collect();
        Snapshot {
            by_name: listeners
                .iter()
                .enumerate()
                .map(|(i, l)| (l.name.clone(), i))
                .collect(),
            handoff: handoff_index(&listeners),
            listeners,
            routes: self
                .routes
                .items
                .iter()
                .map(|(n, i)| (n.clone(), Arc::clone(&i.parsed)))
                .collect(),
            clusters,
        }
    }
}

/// What the data plane runs on: immutable, swapped whole.
#[derive(Default)]
pub struct Snapshot {
    pub listeners: Vec<Arc<ListenerConfig>>,
    pub by_name: HashMap<String, usize>,
    /// Non-binding listeners by address, for `virtualOutbound`'s hand-off.
    pub handoff: HashMap<SocketAddr, usize>,
    pub routes: HashMap<String, Arc<RouteTable>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerConfig>> {
        self.by_name.get(name).map(|i| &self.listeners[*i])
    }

    /// The listener an original destination is handed to: `ip:port`, then `0.0.0.0:port`.
    pub fn handoff(&self, dst: SocketAddr) -> Option<&Arc<ListenerConfig>> {
        let any = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), dst.port());
        self.handoff
            .get(&dst)
            .or_else(|| self.handoff.get(&any))
            .map(|i| &self.listeners[*i])
    }
}

/// The shared, swappable config plus the resources it came from (for `/config_dump`).
pub struct Store {
    pub current: ArcSwap<Snapshot>,
    pub resources: std::sync::Mutex<Resources>,
}

impl Store {
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            resources: std::sync::Mutex::new(Resources::default()),
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteMatch, VirtualHost};
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
    use prost::Message;

    fn rc(name: &str, regex: &str) -> Incoming {
        let path = if regex.is_empty() {
            PathSpecifier::Prefix("/".into())
        } else {
            PathSpecifier::SafeRegex(RegexMatcher {
                regex: regex.into(),
                ..Default::default()
            })
        };
        let rc = RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                name: "user".into(),
                domains: vec!["user".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(path),
                        ..Default::default()
                    }),
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        Incoming {
            name: Some(name.into()),
            version: String::new(),
            any: Any {
                type_url: TypeUrl::Route.url().into(),
                value: rc.encode_to_vec(),
            },
        }
    }

    #[test]
    fn a_bad_resource_rejects_the_whole_response_and_keeps_the_last_good() {
        let mut r = Resources::default();
        r.apply(
            TypeUrl::Route,
            "1",
            vec![rc("80", ""), rc("8080", "")],
            &[],
            false,
        )
        .unwrap();
        let err = r
            .apply(
                TypeUrl::Route,
                "2",
                vec![rc("80", ""), rc("8080", "(")],
                &[],
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RouteConfiguration \"8080\"")
                && err.contains("virtual_hosts[0].routes[0].match.safe_regex"),
            "{err}"
        );
        assert_eq!(r.routes.version, "1");
        assert!(r.routes.items.values().all(|i| i.version == "1"));
        // Delta removal and state-of-the-world replacement.
        r.apply(TypeUrl::Route, "3", vec![], &["8080".to_string()], false)
            .unwrap();
        assert_eq!(r.routes.items.keys().collect::<Vec<_>>(), ["80"]);
        r.apply(TypeUrl::Route, "4", vec![rc("9090", "")], &[], true)
            .unwrap();
        assert_eq!(r.routes.items.keys().collect::<Vec<_>>(), ["9090"]);
        let wrong = Incoming {
            name: None,
            version: String::new(),
            any: Any {
                type_url: TypeUrl::Cluster.url().into(),
                value: Vec::new(),
            },
        };
        assert!(
            r.apply(TypeUrl::Route, "5", vec![wrong], &[], false)
                .is_err()
        );
    }
}
