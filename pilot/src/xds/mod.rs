//! Translation of the mesh model into Envoy xDS for one proxy, shaped as istiod shapes it:
//! the same cluster, listener and route names, the same defaults, so a real Envoy (or
//! mast-proxy) behaves as it would under Istio.
//!
//! A proxy's config splits in two: the outbound part (every service it can call) depends only
//! on its namespace, interception mode and Sidecar scope, and is identical for most proxies;
//! the inbound part depends on which services select its labels. [`XdsGenerator`] caches both
//! per model version, so a push to thousands of proxies generates each distinct part once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, Value, value::Kind};
use mast_mesh_config::model::{Labels, MeshModel, Service, SidecarScope, labels_match};
use prost::Message;

use crate::ads::{Generator, ProxyResources, Snapshot};

pub mod clusters;
pub mod endpoints;
pub mod listeners;
pub mod routes;

/// How the proxy's traffic reaches it (node metadata `INTERCEPTION_MODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Interception {
    #[default]
    Redirect,
    Tproxy,
    /// No iptables: outbound listeners bind 127.0.0.1:<service port>.
    None,
}

/// What pilot knows about a proxy, from its node id and metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyNode {
    pub id: String,
    pub ip: String,
    pub pod: String,
    pub namespace: String,
    pub labels: Labels,
    pub service_account: String,
    pub interception: Interception,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NodeError {
    #[error("node id {0:?} is not <type>~<ip>~<pod>.<namespace>~<domain>")]
    BadId(String),
    #[error("node metadata INTERCEPTION_MODE {0:?} is not REDIRECT, TPROXY or NONE")]
    BadInterception(String),
}

impl ProxyNode {
    /// Parse `sidecar~10.1.2.3~app-1.default~default.svc.cluster.local` and the metadata keys
    /// istiod reads (`NAMESPACE`, `LABELS`, `SERVICE_ACCOUNT`, `INTERCEPTION_MODE`).
    pub fn from_envoy_node(node: &Node) -> Result<Self, NodeError> {
        let parts: Vec<&str> = node.id.split('~').collect();
        let [_kind, ip, pod_ns, _domain] = parts[..] else {
            return Err(NodeError::BadId(node.id.clone()));
        };
        let (pod, id_ns) = pod_ns.split_once('.').unwrap_or((pod_ns, ""));
        let fields = node.metadata.as_ref().map(|m| &m.fields);
        let string = |key: &str| {
            fields
                .and_then(|f| f.get(key))
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
        };
        let labels = fields
            .and_then(|f| f.get("LABELS"))
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => Some(
                    s.fields
                        .iter()
                        .filter_map(|(k, v)| match &v.kind {
                            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default();
        let interception = match string("INTERCEPTION_MODE").as_deref() {
            None | Some("") | Some("REDIRECT") => Interception::Redirect,
            Some("TPROXY") => Interception::Tproxy,
            Some("NONE") => Interception::None,
            Some(other) => return Err(NodeError::BadInterception(other.to_string())),
        };
        let namespace = string("NAMESPACE")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id_ns.to_string());
        if namespace.is_empty() {
            return Err(NodeError::BadId(node.id.clone()));
        }
        Ok(Self {
            id: node.id.clone(),
            ip: ip.to_string(),
            pod: pod.to_string(),
            namespace,
            labels,
            service_account: string("SERVICE_ACCOUNT").unwrap_or_else(|| "default".into()),
            interception,
        })
    }
}

/// The outbound view a proxy gets: its namespace, how it captures traffic, and the Sidecar
/// resource that scopes it (by index in the model).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OutboundKey {
    namespace: String,
    interception: Interception,
    sidecar: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InboundKey {
    namespace: String,
    labels: Labels,
    interception: Interception,
}

type Cell = Arc<OnceLock<Arc<ProxyResources>>>;

#[derive(Debug, Default)]
struct Cache {
    version: u64,
    outbound: HashMap<OutboundKey, Cell>,
    inbound: HashMap<InboundKey, Cell>,
}

/// The real [`Generator`]: model → xDS, cached per model version.
#[derive(Debug, Default)]
pub struct XdsGenerator {
    cache: Mutex<Cache>,
}

impl XdsGenerator {
    fn cells(&self, version: u64, out: OutboundKey, inb: InboundKey) -> (Cell, Cell) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.version != version {
            *cache = Cache {
                version,
                ..Cache::default()
            };
        }
        let o = cache.outbound.entry(out).or_default().clone();
        let i = cache.inbound.entry(inb).or_default().clone();
        (o, i)
    }
}

impl Generator for XdsGenerator {
    fn validate_node(&self, node: &Node) -> Result<(), String> {
        ProxyNode::from_envoy_node(node)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn generate(&self, snapshot: &Snapshot, node: &Node) -> Result<ProxyResources, String> {
        let proxy = ProxyNode::from_envoy_node(node).map_err(|e| e.to_string())?;
        let model = &snapshot.model;
        let sidecar = sidecar_scope(model, &proxy);
        let (out, inb) = self.cells(
            snapshot.version,
            OutboundKey {
                namespace: proxy.namespace.clone(),
                interception: proxy.interception,
                sidecar,
            },
            InboundKey {
                namespace: proxy.namespace.clone(),
                labels: proxy.labels.clone(),
                interception: proxy.interception,
            },
        );
        let outbound = out.get_or_init(|| Arc::new(generate_outbound(model, &proxy))).clone();
        let inbound = inb.get_or_init(|| Arc::new(generate_inbound(model, &proxy))).clone();
        let mut all = (*outbound).clone();
        for (type_url, resources) in &inbound.by_type {
            all.by_type
                .entry(type_url)
                .or_default()
                .extend(resources.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(all)
    }
}

/// Everything a proxy can call: outbound clusters, endpoints, listeners and routes.
pub fn generate_outbound(model: &MeshModel, proxy: &ProxyNode) -> ProxyResources {
    let services = visible_services(model, proxy);
    let mut out = ProxyResources::default();
    clusters::outbound(model, &services, &mut out);
    endpoints::outbound(model, &services, &mut out);
    listeners::outbound(model, &services, proxy, &mut out);
    routes::outbound(model, &services, proxy, &mut out);
    out
}

/// What reaches the proxy's own workload: inbound clusters and the inbound listener.
pub fn generate_inbound(model: &MeshModel, proxy: &ProxyNode) -> ProxyResources {
    let mut out = ProxyResources::default();
    let own = own_services(model, proxy);
    clusters::inbound(&own, &mut out);
    listeners::inbound(&own, proxy, &mut out);
    out
}

/// Everything for one proxy, uncached (tests and `/debug`).
pub fn generate(model: &MeshModel, proxy: &ProxyNode) -> ProxyResources {
    let mut all = generate_outbound(model, proxy);
    for (t, r) in generate_inbound(model, proxy).by_type {
        all.by_type.entry(t).or_default().extend(r);
    }
    all
}

/// The Sidecar resource that applies to a proxy: one in its namespace selecting its labels,
/// else its namespace's selector-less one (istiod's precedence, without the root namespace).
fn sidecar_scope(model: &MeshModel, proxy: &ProxyNode) -> Option<usize> {
    let in_ns = || model.sidecars.iter().enumerate().filter(|(_, s)| s.namespace == proxy.namespace);
    in_ns()
        .find(|(_, s)| s.workload_selector.as_ref().is_some_and(|sel| labels_match(sel, &proxy.labels)))
        .or_else(|| in_ns().find(|(_, s)| s.workload_selector.is_none()))
        .map(|(i, _)| i)
}

/// Services the proxy may call: exported to its namespace, and allowed by its Sidecar's
/// egress hosts when it has one.
pub fn visible_services<'a>(model: &'a MeshModel, proxy: &ProxyNode) -> Vec<&'a Service> {
    let scope: Option<&SidecarScope> = sidecar_scope(model, proxy).and_then(|i| model.sidecars.get(i));
    model
        .services
        .values()
        .filter(|s| exported_to(&s.export_to, &s.namespace, &proxy.namespace))
        .filter(|s| match scope {
            Some(sc) if !sc.egress.is_empty() => sc.egress.iter().any(|e| {
                e.hosts
                    .iter()
                    .any(|h| egress_host_matches(h, &proxy.namespace, s))
            }),
            _ => true,
        })
        .collect()
}

/// `exportTo`: empty or `*` is everywhere, `.` the owner's namespace, else namespace names.
pub fn exported_to(export_to: &[String], owner_ns: &str, proxy_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == proxy_ns || (e == "." && owner_ns == proxy_ns))
}

fn egress_host_matches(entry: &str, proxy_ns: &str, svc: &Service) -> bool {
    let (ns, host) = entry.split_once('/').unwrap_or(("*", entry));
    let ns_ok = ns == "*" || ns == svc.namespace || (ns == "." && svc.namespace == proxy_ns);
    let host_ok = host == "*"
        || host == svc.hostname
        || host
            .strip_prefix('*')
            .is_some_and(|suffix| svc.hostname.ends_with(suffix));
    ns_ok && host_ok
}

/// Services whose selector picks this proxy (same namespace): it serves them.
fn own_services<'a>(model: &'a MeshModel, proxy: &ProxyNode) -> Vec<&'a Service> {
    model
        .services
        .values()
        .filter(|s| {
            s.namespace == proxy.namespace
                && s.selector
                    .as_ref()
                    .is_some_and(|sel| !sel.is_empty() && labels_match(sel, &proxy.labels))
        })
        .collect()
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
    base: Option<&mast_mesh_config::model::TrafficPolicy>,
    over: Option<&mast_mesh_config::model::TrafficPolicy>,
    port: u16,
) -> mast_mesh_config::model::TrafficPolicy {
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

fn overlay(p: &mut mast_mesh_config::model::TrafficPolicy, o: &mast_mesh_config::model::TrafficPolicy) {
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
mod tests;
