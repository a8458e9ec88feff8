//! Translation of the mesh model into Envoy xDS for one proxy, shaped as istiod shapes it:
//! the same cluster, listener and route names, the same defaults, so a real Envoy (or
//! mast-proxy) behaves as it would under Istio.
//!
//! [`generate`] is the whole translation for one proxy, as typed Envoy protos
//! ([`ProxyConfig`]); [`ProxyConfig::resources`] encodes it for the ADS server. The work is
//! split by what it depends on: [`plan`] decides what exists (visible services, listener
//! addresses, route names), then [`clusters`], [`endpoints`], [`listeners`] and [`routes`] each
//! build one xDS type from that plan.
//!
//! A proxy's outbound part (every service it can call) depends only on its namespace,
//! interception mode and Sidecar scope (and its labels when a route matches on source
//! labels), so it is identical for most proxies; [`XdsGenerator`] caches it per model
//! version and generates only the small inbound part per proxy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, Value, value::Kind};
use mast_mesh_config::model::{Labels, MeshModel, TrafficPolicy};
use prost::Message;

use mast_proto::TypeUrl;

use crate::ads::{GenerateError, Generator, ProxyResources, ProxyView, Resource, Snapshot};

pub mod authz;
pub mod clusters;
pub mod endpoints;
pub mod gateway;
pub mod jwt;
pub mod listeners;
pub mod mtls;
pub mod node;
pub mod plan;
pub mod routes;
pub mod tracing;
pub mod upstream_tls;

pub use mtls::Security;
pub use node::{InterceptionMode, NodeError, ProxyNode};

/// Everything one proxy gets, as typed protos, each list sorted by resource name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyConfig {
    pub clusters: Vec<Cluster>,
    /// One per EDS cluster, named as the cluster.
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

/// Encoded resources of one type: `(resource name, Any)`, sorted by name.
pub type Encoded = Vec<(String, Any)>;

// === impl ProxyConfig ===

impl ProxyConfig {
    /// Add `other`'s resources; on a name clash the existing resource is kept.
    pub fn merge(&mut self, other: ProxyConfig) {
        self.clusters.extend(other.clusters);
        self.endpoints.extend(other.endpoints);
        self.listeners.extend(other.listeners);
        self.routes.extend(other.routes);
        self.normalize();
    }

    /// Sort every list by name and drop later duplicates, so equal models give equal bytes.
    pub fn normalize(&mut self) {
        sort_dedup(&mut self.clusters, |c| &c.name);
        sort_dedup(&mut self.endpoints, |c| &c.cluster_name);
        sort_dedup(&mut self.listeners, |l| &l.name);
        sort_dedup(&mut self.routes, |r| &r.name);
    }

    /// Names of the clusters whose endpoints come over EDS (the resource names the proxy
    /// will subscribe to for `ClusterLoadAssignment`).
    pub fn eds_cluster_names(&self) -> Vec<&str> {
        self.endpoints
            .iter()
            .map(|e| e.cluster_name.as_str())
            .collect()
    }

    pub fn encode_clusters(&self) -> Encoded {
        encode_all(&self.clusters, TypeUrl::Cluster, |c| &c.name)
    }

    pub fn encode_endpoints(&self) -> Encoded {
        encode_all(&self.endpoints, TypeUrl::Endpoint, |e| &e.cluster_name)
    }

    pub fn encode_listeners(&self) -> Encoded {
        encode_all(&self.listeners, TypeUrl::Listener, |l| &l.name)
    }

    pub fn encode_routes(&self) -> Encoded {
        encode_all(&self.routes, TypeUrl::Route, |r| &r.name)
    }

    /// Every type, in push order (CDS, EDS, LDS, RDS).
    pub fn encode(&self) -> Vec<(TypeUrl, Encoded)> {
        vec![
            (TypeUrl::Cluster, self.encode_clusters()),
            (TypeUrl::Endpoint, self.encode_endpoints()),
            (TypeUrl::Listener, self.encode_listeners()),
            (TypeUrl::Route, self.encode_routes()),
        ]
    }

    /// The ADS server's form: encoded once, versioned by content hash. Every type is present
    /// (possibly empty), so "no listeners" is a state that gets pushed, not a missing type.
    pub fn resources(&self) -> ProxyResources {
        self.resources_reusing(None)
    }

    /// [`Self::resources`], keeping `previous`'s resource wherever the message is the same
    /// (see [`ProxyResources::insert_stable`]).
    pub fn resources_reusing(&self, previous: Option<&ProxyResources>) -> ProxyResources {
        let mut out = ProxyResources::default();
        for t in TypeUrl::ADS_ORDER {
            out.by_type.entry(t).or_default();
        }
        for c in &self.clusters {
            out.insert_stable(TypeUrl::Cluster, &c.name, c, previous);
        }
        for e in &self.endpoints {
            out.insert_stable(TypeUrl::Endpoint, &e.cluster_name, e, previous);
        }
        for l in &self.listeners {
            out.insert_stable(TypeUrl::Listener, &l.name, l, previous);
        }
        for r in &self.routes {
            out.insert_stable(TypeUrl::Route, &r.name, r, previous);
        }
        out
    }
}

fn sort_dedup<T>(v: &mut Vec<T>, name: impl Fn(&T) -> &String) {
    // Stable sort keeps the first of equal names, which dedup then keeps.
    v.sort_by(|a, b| name(a).cmp(name(b)));
    v.dedup_by(|b, a| name(a) == name(b));
}

fn encode_all<T: Message>(v: &[T], type_url: TypeUrl, name: impl Fn(&T) -> &String) -> Encoded {
    let mut out: Encoded = v
        .iter()
        .map(|m| {
            (
                name(m).clone(),
                Any {
                    type_url: type_url.url().to_string(),
                    value: m.encode_to_vec(),
                },
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

// === generation ===

/// Everything for one proxy, uncached (tests, `/debug`, mastctl).
pub fn generate(model: &MeshModel, proxy: &ProxyNode) -> ProxyConfig {
    generate_with(model, proxy, &Security::default())
}

/// Everything for one proxy with the mesh's security settings, uncached.
pub fn generate_with(model: &MeshModel, proxy: &ProxyNode, security: &Security) -> ProxyConfig {
    if proxy.is_gateway() {
        return gateway::generate(model, proxy, security).config;
    }
    let mut out = generate_outbound(model, proxy, security);
    out.merge(generate_inbound(model, proxy, security));
    out
}

/// Everything the proxy can call: outbound clusters, endpoints, listeners and routes.
pub fn generate_outbound(model: &MeshModel, proxy: &ProxyNode, security: &Security) -> ProxyConfig {
    let plan = plan::outbound(model, proxy);
    let mut out = ProxyConfig {
        clusters: clusters::outbound(model, &plan.services, security),
        endpoints: endpoints::outbound(model, &plan.services),
        listeners: listeners::outbound(model, &plan, proxy),
        routes: routes::outbound(model, &plan, proxy),
    };
    out.normalize();
    out
}

/// What reaches the proxy's own workload: inbound clusters and listeners.
pub fn generate_inbound(model: &MeshModel, proxy: &ProxyNode, security: &Security) -> ProxyConfig {
    let ports = plan::inbound_ports(model, proxy);
    let mut out = ProxyConfig {
        clusters: clusters::inbound(&ports, proxy.interception_mode.captures()),
        listeners: listeners::inbound(model, &ports, proxy, security),
        ..ProxyConfig::default()
    };
    out.normalize();
    out
}

/// What the outbound half of a proxy's config depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OutboundKey {
    namespace: String,
    interception: InterceptionMode,
    sidecar: Option<usize>,
    /// Only when some route matches on source labels; otherwise every proxy of a namespace
    /// shares one entry.
    labels: Option<Labels>,
}

/// What a proxy's outbound listeners depend on beyond [`OutboundKey`]: the connection
/// managers' tracing ([`tracing::HcmTracing::cache_key`]), whose span tags name the workload.
/// Only the few listeners are kept per workload; clusters, endpoints and routes stay shared.
type ListenersKey = (OutboundKey, Vec<u8>);

type Cell = Arc<OnceLock<Arc<ProxyResources>>>;

#[derive(Debug, Default)]
struct Cache {
    version: u64,
    /// The model of `version`.
    model: Option<Arc<MeshModel>>,
    outbound: HashMap<OutboundKey, Cell>,
    listeners: HashMap<ListenersKey, Cell>,
    inbound: HashMap<InboundKey, Cell>,
    /// The previous version's parts, whose unchanged sets new parts reuse by pointer.
    previous_outbound: HashMap<OutboundKey, Cell>,
    previous_listeners: HashMap<ListenersKey, Cell>,
    previous_inbound: HashMap<InboundKey, Cell>,
}

/// What the inbound half depends on: which services select the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InboundKey {
    namespace: String,
    labels: Labels,
    interception: InterceptionMode,
    /// The proxy's own address, when its inbound listeners bind it (a Sidecar `ingress`
    /// without `bind` binds the proxy's IP): two replicas with the same labels must not get
    /// one listener on the first replica's address.
    bind_ip: Option<String>,
}

/// The real [`Generator`]: model → xDS. Both halves are cached per model version and key, and
/// a new version's sets that did not change are the previous version's `Arc`s, so a
/// connection learns "nothing to push" from a pointer comparison.
#[derive(Debug, Default)]
pub struct XdsGenerator {
    cache: Mutex<Cache>,
    security: Security,
}

impl XdsGenerator {
    /// A generator for a mesh with these security settings (mTLS when a CA runs).
    pub fn new(security: Security) -> Self {
        Self {
            cache: Mutex::default(),
            security,
        }
    }

    /// The cell for `key` at `version`, and the previous version's part for the same key.
    fn cells(
        &self,
        version: u64,
        model: &Arc<MeshModel>,
        out: OutboundKey,
        lis: ListenersKey,
        inb: InboundKey,
    ) -> [(Cell, Option<Arc<ProxyResources>>); 3] {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.version != version {
            let old = std::mem::take(&mut *cache);
            // When only workloads came or went (or routing rules changed, which the inbound
            // half does not read), a proxy's inbound half is unchanged unless its own
            // workload is one of them (its named ports): keep every other part as it is,
            // generated or not. Endpoint churn and route edits then cost no inbound halves.
            let inbound = match old
                .model
                .as_deref()
                .and_then(|m| m.workload_changes(model, true))
            {
                Some(changed) => old
                    .inbound
                    .iter()
                    .filter(|(k, _)| {
                        !changed
                            .iter()
                            .any(|w| w.namespace == k.namespace && w.labels == k.labels)
                    })
                    .map(|(k, c)| (k.clone(), c.clone()))
                    .collect(),
                None => HashMap::new(),
            };
            *cache = Cache {
                version,
                model: Some(model.clone()),
                inbound,
                previous_outbound: old.outbound,
                previous_listeners: old.listeners,
                previous_inbound: old.inbound,
                ..Cache::default()
            };
        }
        let prev_out = cache
            .previous_outbound
            .get(&out)
            .and_then(|c| c.get().cloned());
        let prev_lis = cache
            .previous_listeners
            .get(&lis)
            .and_then(|c| c.get().cloned());
        let prev_in = cache
            .previous_inbound
            .get(&inb)
            .and_then(|c| c.get().cloned());
        let o = cache.outbound.entry(out).or_default().clone();
        let l = cache.listeners.entry(lis).or_default().clone();
        let i = cache.inbound.entry(inb).or_default().clone();
        [(o, prev_out), (l, prev_lis), (i, prev_in)]
    }
}

/// A node pilot cannot place in the mesh is the proxy's fault.
impl From<NodeError> for GenerateError {
    fn from(e: NodeError) -> Self {
        Self::Node(Box::new(e))
    }
}

impl Generator for XdsGenerator {
    fn validate_node(&self, node: &Node) -> Result<(), GenerateError> {
        ProxyNode::from_envoy_node(node)?;
        Ok(())
    }

    fn generate(&self, snapshot: &Snapshot, node: &Node) -> Result<ProxyView, GenerateError> {
        let proxy = ProxyNode::from_envoy_node(node)?;
        let model = &snapshot.model;
        if proxy.is_gateway() {
            // Few, and each with its own Gateways: generated per connection, uncached.
            let gw = gateway::generate(model, &proxy, &self.security);
            let mut resources = gw.config.resources();
            for secret in &gw.secrets {
                resources.insert(
                    TypeUrl::Secret,
                    Resource::new(secret.name.clone(), TypeUrl::Secret, secret),
                );
            }
            return Ok(ProxyView::single(resources));
        }
        let uses_source_labels = model.routes.iter().any(|t| {
            t.http
                .iter()
                .flat_map(|r| &r.matches)
                .any(|m| !m.source_labels.is_empty())
        });
        let out_key = OutboundKey {
            namespace: proxy.namespace.clone(),
            interception: proxy.interception_mode,
            sidecar: plan::sidecar_for(model, &proxy).map(|(i, _)| i),
            labels: uses_source_labels.then(|| proxy.labels.clone()),
        };
        let trace = tracing::HcmTracing::new(model, &proxy, tracing::Class::SidecarOutbound);
        let lis_key = (out_key.clone(), trace.cache_key());
        let binds_own_ip = plan::sidecar_for(model, &proxy)
            .is_some_and(|(_, s)| s.ingress.iter().any(|i| i.bind.is_none()));
        let in_key = InboundKey {
            namespace: proxy.namespace.clone(),
            labels: proxy.labels.clone(),
            interception: proxy.interception_mode,
            bind_ip: binds_own_ip.then(|| proxy.ip.clone()),
        };
        let [(out, prev_out), (lis, prev_lis), (inb, prev_in)] =
            self.cells(snapshot.version, &snapshot.model, out_key, lis_key, in_key);
        let part = |cell: &Cell,
                    previous: Option<Arc<ProxyResources>>,
                    build: &dyn Fn(Option<&ProxyResources>) -> ProxyResources| {
            cell.get_or_init(|| {
                let mut r = build(previous.as_deref());
                if let Some(prev) = previous {
                    r.reuse_unchanged(&prev);
                }
                Arc::new(r)
            })
            .clone()
        };
        let outbound = part(&out, prev_out, &|prev| {
            generate_outbound(model, &proxy, &self.security).resources_reusing(prev)
        });
        // The shared outbound listeners carry the tracing of whichever proxy built them:
        // this proxy's own copies, with its tracing, come first and shadow them.
        let listeners = part(&lis, prev_lis, &|prev| {
            let mut r = ProxyResources::default();
            r.by_type.entry(TypeUrl::Listener).or_default();
            for res in outbound
                .of_type(TypeUrl::Listener)
                .into_iter()
                .flat_map(|m| m.values())
            {
                match Listener::decode(res.value.clone()) {
                    Ok(mut l) => {
                        retrace(&mut l, &trace);
                        r.insert_stable(TypeUrl::Listener, &res.name, &l, prev);
                    }
                    // Encoded by us a moment ago: cannot happen, and the shared copy is fine.
                    Err(_) => r.insert(TypeUrl::Listener, (**res).clone()),
                }
            }
            r
        });
        let inbound = part(&inb, prev_in, &|prev| {
            generate_inbound(model, &proxy, &self.security).resources_reusing(prev)
        });
        Ok(ProxyView {
            layers: vec![listeners, outbound, inbound],
        })
    }
}

/// Set `trace` on every HTTP connection manager of `listener`.
fn retrace(listener: &mut Listener, trace: &tracing::HcmTracing) {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    let chains = listener
        .filter_chains
        .iter_mut()
        .chain(listener.default_filter_chain.iter_mut());
    for chain in chains {
        for filter in &mut chain.filters {
            if let Some(ConfigType::TypedConfig(any)) = &mut filter.config_type
                && any.type_url == <HttpConnectionManager as prost::Name>::type_url()
                && let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice())
            {
                trace.apply(&mut hcm);
                any.value = hcm.encode_to_vec();
            }
        }
    }
}

/// Pack a message into an `Any` with its canonical type URL.
pub fn any<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// `outbound|<port>|<subset>|<host>`, Istio's cluster name.
pub fn outbound_cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

/// Merge a subset's policy over its host's, field by field (istiod's `MergeTrafficPolicy`).
pub fn merged_policy(
    base: Option<&TrafficPolicy>,
    over: Option<&TrafficPolicy>,
    port: u16,
) -> TrafficPolicy {
    let mut p = base.cloned().unwrap_or_default();
    if let Some(pl) = base.and_then(|b| b.port_level.get(&port)) {
        overlay(&mut p, pl);
    }
    if let Some(o) = over {
        overlay(&mut p, o);
        if let Some(pl) = o.port_level.get(&port) {
            overlay(&mut p, pl);
        }
    }
    p.port_level = BTreeMap::new();
    p
}

fn overlay(p: &mut TrafficPolicy, o: &TrafficPolicy) {
    if o.load_balancer.is_some() {
        p.load_balancer = o.load_balancer.clone();
    }
    if o.connection_pool.is_some() {
        p.connection_pool = o.connection_pool.clone();
    }
    if o.outlier_detection.is_some() {
        p.outlier_detection = o.outlier_detection.clone();
    }
    if o.tls.is_some() {
        p.tls = o.tls.clone();
    }
}

#[cfg(test)]
mod envoy_validate;
#[cfg(test)]
mod tests;
