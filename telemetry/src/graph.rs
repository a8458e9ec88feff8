//! The topology graph as Kiali builds it, from the windows: which telemetry counts (the
//! destination proxy's, or the source's where no destination proxy reports), what the nodes
//! are for each graph type, the edges between them with their rates, latencies, shares and
//! health, and the per-interval series of one node or edge.
//!
//! One pass over the edges of the store (O(edges)); node and edge ids are hashes of the
//! entity keys, so the same entity keeps its id across refreshes and the UI keeps its layout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::istio::{EdgeKey, Protocol, Reporter, Workload, is_unknown};
use crate::mesh::MeshView;
use crate::state::State;
use crate::stats::{Agg, Health};
use crate::store::{Series, Store, Window};

/// Kiali's graph types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphType {
    VersionedApp,
    App,
    Workload,
    Service,
}

impl GraphType {
    pub const ALL: [GraphType; 4] = [
        GraphType::VersionedApp,
        GraphType::App,
        GraphType::Workload,
        GraphType::Service,
    ];
    pub const EXPECTED: &'static str = "versionedApp, app, workload, service";

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GraphType::VersionedApp => "versionedApp",
            GraphType::App => "app",
            GraphType::Workload => "workload",
            GraphType::Service => "service",
        }
    }
}

/// The windows the API offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    M1,
    M5,
    M15,
    H1,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::M1, Period::M5, Period::M15, Period::H1];
    pub const EXPECTED: &'static str = "1m, 5m, 15m, 1h";

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::M1 => "1m",
            Period::M5 => "5m",
            Period::M15 => "15m",
            Period::H1 => "1h",
        }
    }

    pub fn secs(self) -> u64 {
        match self {
            Period::M1 => 60,
            Period::M5 => 300,
            Period::M15 => 900,
            Period::H1 => 3600,
        }
    }
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct GraphQuery {
    pub namespaces: Vec<String>,
    pub graph_type: GraphType,
    pub period: Period,
}

// === output (telemetry/API.md) ===

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphResponse {
    pub timestamp: u64,
    pub duration: u64,
    pub graph_type: &'static str,
    pub elements: Elements,
}

#[derive(Debug, Clone, Serialize)]
pub struct Elements {
    pub nodes: Vec<Element<NodeData>>,
    pub edges: Vec<Element<EdgeData>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Element<T> {
    pub data: T,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeData {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub node_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_box: Option<&'static str>,
    pub namespace: String,
    pub cluster: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<NodeTraffic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_idle: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_unreachable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_traffic_shifting: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_fault_injection: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_request_timeout: Option<bool>,
    #[serde(rename = "hasCB", skip_serializing_if = "Option::is_none")]
    pub has_cb: Option<bool>,
    #[serde(rename = "hasVS", skip_serializing_if = "Option::is_none")]
    pub has_vs: Option<HasVs>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HasVs {
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeTraffic {
    pub protocol: &'static str,
    pub rates: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeData {
    pub id: String,
    pub source: String,
    pub target: String,
    #[serde(rename = "isMTLS")]
    pub is_mtls: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_time: Option<String>,
    pub traffic: EdgeTraffic,
    pub rps: f64,
    pub error_rate: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub percent: f64,
    pub tcp_bytes_per_second: f64,
    pub health: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct EdgeTraffic {
    pub protocol: &'static str,
    pub rates: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub responses: BTreeMap<String, Responses>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Responses {
    pub flags: BTreeMap<String, String>,
    pub hosts: BTreeMap<String, String>,
}

/// `GET /api/namespaces/{ns}/nodes/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    pub data: DetailData,
    pub series: Series,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DetailData {
    Node(Box<NodeData>),
    Edge(Box<EdgeData>),
}

// === building ===

/// One store edge's sums over the window, after the reporter choice.
#[derive(Debug)]
struct Record {
    key: Arc<EdgeKey>,
    agg: Agg,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum NodeKey {
    Box {
        ns: Arc<str>,
        app: Arc<str>,
    },
    Versioned {
        ns: Arc<str>,
        app: Arc<str>,
        version: Arc<str>,
    },
    App {
        ns: Arc<str>,
        app: Arc<str>,
    },
    Workload {
        ns: Arc<str>,
        name: Arc<str>,
    },
    Service {
        ns: Arc<str>,
        name: Arc<str>,
    },
    Unknown,
}

impl NodeKey {
    fn id(&self) -> String {
        let canonical = match self {
            NodeKey::Box { ns, app } => format!("box\0{ns}\0{app}"),
            NodeKey::Versioned { ns, app, version } => format!("va\0{ns}\0{app}\0{version}"),
            NodeKey::App { ns, app } => format!("app\0{ns}\0{app}"),
            NodeKey::Workload { ns, name } => format!("wl\0{ns}\0{name}"),
            NodeKey::Service { ns, name } => format!("svc\0{ns}\0{name}"),
            NodeKey::Unknown => "unknown".to_string(),
        };
        format!("n{:016x}", fnv1a(canonical.as_bytes()))
    }

    fn namespace(&self) -> &str {
        match self {
            NodeKey::Box { ns, .. }
            | NodeKey::Versioned { ns, .. }
            | NodeKey::App { ns, .. }
            | NodeKey::Workload { ns, .. }
            | NodeKey::Service { ns, .. } => ns,
            NodeKey::Unknown => "unknown",
        }
    }
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Http, Protocol::Grpc, Protocol::Tcp];

fn pidx(p: Protocol) -> usize {
    match p {
        Protocol::Http => 0,
        Protocol::Grpc => 1,
        Protocol::Tcp => 2,
    }
}

#[derive(Debug)]
struct Node {
    key: NodeKey,
    id: String,
    parent: Option<usize>,
    workload: Option<Arc<str>>,
    app: Option<Arc<str>>,
    version: Option<Arc<str>>,
    /// Requests (TCP: bytes) in and out, per protocol.
    inbound: [f64; 3],
    outbound: [f64; 3],
    in_mtls: [f64; 3],
    in_errors: [f64; 3],
    in_4xx: f64,
    in_5xx: f64,
    unreachable: bool,
}

#[derive(Debug)]
struct Edge {
    source: usize,
    target: usize,
    protocol: Protocol,
    agg: Agg,
    records: Vec<u32>,
}

/// Per workload (namespace, name): the services in front of it (service graph).
type Fronting = HashMap<(Arc<str>, Arc<str>), Vec<NodeKey>>;

/// Per response code: request counts by flags and by destination host.
type Breakdown = BTreeMap<String, (BTreeMap<String, f64>, BTreeMap<String, f64>)>;

/// A built graph, kept only for one request.
pub(crate) struct Graph {
    graph_type: GraphType,
    window: Window,
    records: Vec<Record>,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    node_index: HashMap<NodeKey, usize>,
    edge_index: HashMap<(usize, usize, Protocol), usize>,
}

/// Namespaces that have a listed proxy or traffic in the retention.
pub(crate) fn namespaces(state: &State) -> Vec<String> {
    let mut out: HashSet<&str> = HashSet::new();
    for (k, _) in state.store.edges() {
        out.insert(&k.source.namespace);
        out.insert(&k.service.namespace);
        out.insert(&k.dest.namespace);
    }
    for t in state.targets.values().filter(|t| t.listed) {
        out.insert(&t.target.namespace);
    }
    let mut out: Vec<String> = out
        .into_iter()
        .filter(|n| !is_unknown(n))
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

impl Graph {
    pub(crate) fn build(state: &State, q: &GraphQuery) -> Graph {
        let window = state.store.window(q.period.secs() as f64);
        let wanted: HashSet<&str> = q.namespaces.iter().map(String::as_str).collect();
        let records = select_records(state, &wanted, &window);
        let mut g = Graph {
            graph_type: q.graph_type,
            window,
            records: Vec::new(),
            nodes: Vec::new(),
            edges: Vec::new(),
            node_index: HashMap::new(),
            edge_index: HashMap::new(),
        };
        let backs = (q.graph_type == GraphType::Service).then(|| services_behind(&records));
        for (i, r) in records.iter().enumerate() {
            g.add_record(i as u32, r, backs.as_ref());
        }
        g.records = records;
        for i in 0..g.edges.len() {
            let (s, t, p, agg) = {
                let e = &g.edges[i];
                (e.source, e.target, pidx(e.protocol), &e.agg)
            };
            let volume = if p == 2 { agg.tcp_bytes } else { agg.requests };
            let (mtls, errors, c4xx, c5xx) = (agg.mtls, agg.errors, agg.http4xx, agg.http5xx);
            g.nodes[s].outbound[p] += volume;
            let n = &mut g.nodes[t];
            n.inbound[p] += volume;
            n.in_mtls[p] += mtls;
            n.in_errors[p] += errors;
            n.in_4xx += c4xx;
            n.in_5xx += c5xx;
        }
        if q.graph_type != GraphType::Service {
            for t in state.targets.values().filter(|t| t.listed) {
                let w = Workload {
                    namespace: t.target.namespace.as_str().into(),
                    name: t.target.workload.as_str().into(),
                    app: t.target.app.as_deref().unwrap_or("unknown").into(),
                    version: t.target.version.as_deref().unwrap_or("unknown").into(),
                };
                let key = workload_key(q.graph_type, &w);
                if key == NodeKey::Unknown {
                    continue;
                }
                let idx = match g.node_index.get(&key) {
                    Some(i) => *i,
                    None if wanted.contains(&*w.namespace) => g.node(key, Some(&w)),
                    None => continue,
                };
                if !t.reachable {
                    g.nodes[idx].unreachable = true;
                }
            }
        }
        g
    }

    fn add_record(&mut self, i: u32, r: &Record, backs: Option<&Fronting>) {
        let k = &r.key;
        let service = (!is_unknown(&k.service.name)).then(|| NodeKey::Service {
            ns: Arc::clone(&k.service.namespace),
            name: Arc::clone(&k.service.name),
        });
        if let Some(backs) = backs {
            // Service graph: callers are the services in front of the calling workload;
            // a caller no service fronts (a client, an ingress) stays as itself.
            let target = match service {
                Some(s) => self.node(s, None),
                None => self.node(NodeKey::Unknown, None),
            };
            let fronting =
                backs.get(&(Arc::clone(&k.source.namespace), Arc::clone(&k.source.name)));
            match fronting {
                Some(services) if !k.source.is_unknown() => {
                    for s in services {
                        let src = self.node(s.clone(), None);
                        self.edge(src, target, k.protocol, i, &r.agg);
                    }
                }
                _ => {
                    let src = self.node(workload_key(GraphType::App, &k.source), Some(&k.source));
                    self.edge(src, target, k.protocol, i, &r.agg);
                }
            }
            return;
        }
        let src = self.node(workload_key(self.graph_type, &k.source), Some(&k.source));
        let dest = (!k.dest.is_unknown()).then(|| workload_key(self.graph_type, &k.dest));
        match (service, dest) {
            (Some(s), dest) => {
                let svc = self.node(s, None);
                self.edge(src, svc, k.protocol, i, &r.agg);
                if let Some(d) = dest {
                    let d = self.node(d, Some(&k.dest));
                    self.edge(svc, d, k.protocol, i, &r.agg);
                }
            }
            (None, Some(d)) => {
                let d = self.node(d, Some(&k.dest));
                self.edge(src, d, k.protocol, i, &r.agg);
            }
            (None, None) => {
                let d = self.node(NodeKey::Unknown, None);
                self.edge(src, d, k.protocol, i, &r.agg);
            }
        }
    }

    fn node(&mut self, key: NodeKey, w: Option<&Workload>) -> usize {
        if let Some(&i) = self.node_index.get(&key) {
            if let (Some(w), NodeKey::Versioned { .. }) = (w, &key)
                && self.nodes[i].workload.is_none()
            {
                self.nodes[i].workload = Some(Arc::clone(&w.name));
            }
            return i;
        }
        let mut node = Node {
            id: key.id(),
            key: key.clone(),
            parent: None,
            workload: None,
            app: None,
            version: None,
            inbound: [0.0; 3],
            outbound: [0.0; 3],
            in_mtls: [0.0; 3],
            in_errors: [0.0; 3],
            in_4xx: 0.0,
            in_5xx: 0.0,
            unreachable: false,
        };
        match &key {
            NodeKey::Versioned { ns, app, version } => {
                node.parent = Some(self.node(
                    NodeKey::Box {
                        ns: Arc::clone(ns),
                        app: Arc::clone(app),
                    },
                    None,
                ));
                node.app = Some(Arc::clone(app));
                node.version = (!is_unknown(version)).then(|| Arc::clone(version));
                node.workload = w.map(|w| Arc::clone(&w.name));
            }
            NodeKey::Box { app, .. } | NodeKey::App { app, .. } => node.app = Some(Arc::clone(app)),
            NodeKey::Workload { name, .. } => {
                node.workload = Some(Arc::clone(name));
                if let Some(w) = w {
                    node.app = (!is_unknown(&w.app)).then(|| Arc::clone(&w.app));
                    node.version = (!is_unknown(&w.version)).then(|| Arc::clone(&w.version));
                }
            }
            NodeKey::Service { .. } | NodeKey::Unknown => {}
        }
        let i = self.nodes.len();
        self.nodes.push(node);
        self.node_index.insert(key, i);
        i
    }

    fn edge(&mut self, source: usize, target: usize, protocol: Protocol, record: u32, agg: &Agg) {
        let i = *self
            .edge_index
            .entry((source, target, protocol))
            .or_insert_with(|| {
                self.edges.push(Edge {
                    source,
                    target,
                    protocol,
                    agg: Agg::default(),
                    records: Vec::new(),
                });
                self.edges.len() - 1
            });
        let e = &mut self.edges[i];
        e.agg.merge(agg);
        e.records.push(record);
    }

    pub(crate) fn response(&self, mesh: &dyn MeshView, q: &GraphQuery, now: u64) -> GraphResponse {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by(|a, b| {
            let (a, b) = (&self.nodes[*a], &self.nodes[*b]);
            let box_first = |n: &Node| !matches!(n.key, NodeKey::Box { .. });
            (box_first(a), &a.id).cmp(&(box_first(b), &b.id))
        });
        let nodes = order
            .into_iter()
            .map(|i| Element {
                data: self.node_data(i, mesh),
            })
            .collect();
        let mut edges: Vec<Element<EdgeData>> = (0..self.edges.len())
            .map(|i| Element {
                data: self.edge_data(i),
            })
            .collect();
        edges.sort_by(|a, b| a.data.id.cmp(&b.data.id));
        GraphResponse {
            timestamp: now,
            duration: q.period.secs(),
            graph_type: q.graph_type.as_str(),
            elements: Elements { nodes, edges },
        }
    }

    fn node_data(&self, i: usize, mesh: &dyn MeshView) -> NodeData {
        let n = &self.nodes[i];
        let s = |v: &Option<Arc<str>>| v.as_deref().map(str::to_string);
        let mut d = NodeData {
            id: n.id.clone(),
            parent: n.parent.map(|p| self.nodes[p].id.clone()),
            node_type: "app",
            is_box: None,
            namespace: n.key.namespace().to_string(),
            cluster: "Kubernetes",
            workload: s(&n.workload),
            app: s(&n.app),
            version: s(&n.version),
            service: None,
            traffic: Vec::new(),
            is_idle: None,
            is_unreachable: None,
            mtls_percent: None,
            has_traffic_shifting: None,
            has_fault_injection: None,
            has_request_timeout: None,
            has_cb: None,
            has_vs: None,
        };
        match &n.key {
            NodeKey::Box { .. } => {
                d.node_type = "box";
                d.is_box = Some("app");
                return d;
            }
            NodeKey::Versioned { .. } | NodeKey::App { .. } => {}
            NodeKey::Workload { .. } => d.node_type = "workload",
            NodeKey::Service { ns, name } => {
                d.node_type = "service";
                d.service = Some(name.to_string());
                let f = mesh.service_features(ns, name);
                d.has_traffic_shifting = Some(f.traffic_shifting);
                d.has_fault_injection = Some(f.fault_injection);
                d.has_request_timeout = Some(f.request_timeout);
                d.has_cb = Some(f.circuit_breaker);
                if !f.virtual_services.is_empty() {
                    d.has_vs = Some(HasVs {
                        hostnames: f.virtual_services,
                    });
                }
            }
            NodeKey::Unknown => d.node_type = "unknown",
        }
        let w = &self.window;
        for p in PROTOCOLS {
            let pi = pidx(p);
            let (inb, out) = (n.inbound[pi], n.outbound[pi]);
            if inb <= 0.0 && out <= 0.0 {
                continue;
            }
            let mut rates = BTreeMap::new();
            let (in_name, out_name) = match p {
                Protocol::Http => ("httpIn", "httpOut"),
                Protocol::Grpc => ("grpcIn", "grpcOut"),
                Protocol::Tcp => ("tcpIn", "tcpOut"),
            };
            rates.insert(in_name, fmt2(w.rate(inb)));
            rates.insert(out_name, fmt2(w.rate(out)));
            if p == Protocol::Http {
                if n.in_4xx > 0.0 {
                    rates.insert("httpIn4xx", fmt2(w.rate(n.in_4xx)));
                }
                if n.in_5xx > 0.0 {
                    rates.insert("httpIn5xx", fmt2(w.rate(n.in_5xx)));
                }
            }
            if p == Protocol::Grpc && n.in_errors[pi] > 0.0 {
                rates.insert("grpcInErr", fmt2(w.rate(n.in_errors[pi])));
            }
            d.traffic.push(NodeTraffic {
                protocol: p.as_str(),
                rates,
            });
        }
        d.is_idle = Some(d.traffic.is_empty());
        if !matches!(n.key, NodeKey::Service { .. } | NodeKey::Unknown) {
            d.is_unreachable = Some(n.unreachable);
        }
        let requests = n.inbound[0] + n.inbound[1];
        d.mtls_percent = if requests > 0.0 {
            Some(round1(100.0 * (n.in_mtls[0] + n.in_mtls[1]) / requests))
        } else if n.inbound[2] > 0.0 {
            Some(round1(100.0 * n.in_mtls[2] / n.inbound[2]))
        } else {
            None
        };
        d
    }

    fn edge_data(&self, i: usize) -> EdgeData {
        let e = &self.edges[i];
        let (src, dst) = (&self.nodes[e.source], &self.nodes[e.target]);
        let w = &self.window;
        let a = &e.agg;
        let pi = pidx(e.protocol);
        let id = format!(
            "e{:016x}",
            fnv1a(format!("{}\0{}\0{}", src.id, dst.id, e.protocol.as_str()).as_bytes())
        );
        let mut rates = BTreeMap::new();
        let mut responses: BTreeMap<String, Responses> = BTreeMap::new();
        let share = |part: f64, whole: f64| {
            if whole > 0.0 {
                100.0 * part / whole
            } else {
                0.0
            }
        };
        let (percent, rps, error_rate, p50, p95, p99, tcp) = if e.protocol == Protocol::Tcp {
            let percent = share(a.tcp_bytes, src.outbound[pi]);
            rates.insert("tcp", fmt2(w.rate(a.tcp_bytes)));
            (percent, 0.0, 0.0, None, None, None, w.rate(a.tcp_bytes))
        } else {
            let percent = share(a.requests, src.outbound[pi]);
            let rps = w.rate(a.requests);
            if e.protocol == Protocol::Grpc {
                rates.insert("grpc", fmt2(rps));
                rates.insert("grpcPercentReq", fmt1(percent));
                rates.insert("grpcErr", fmt2(w.rate(a.errors)));
            } else {
                rates.insert("http", fmt2(rps));
                rates.insert("httpPercentReq", fmt1(percent));
                rates.insert("http5xx", fmt2(w.rate(a.http5xx)));
                rates.insert("http4xx", fmt2(w.rate(a.http4xx)));
            }
            self.fill_responses(e, &mut responses);
            let error_rate = if a.requests > 0.0 {
                a.errors / a.requests
            } else {
                0.0
            };
            (
                percent,
                rps,
                error_rate,
                a.quantile(0.5),
                a.quantile(0.95),
                a.quantile(0.99),
                0.0,
            )
        };
        EdgeData {
            id,
            source: src.id.clone(),
            target: dst.id.clone(),
            is_mtls: format!("{:.0}", a.mtls_percent(e.protocol)),
            response_time: p95.map(|v| format!("{v:.0}")),
            traffic: EdgeTraffic {
                protocol: e.protocol.as_str(),
                rates,
                responses,
            },
            rps: round3(rps),
            error_rate: round3(error_rate),
            p50: round3(p50.unwrap_or(0.0)),
            p95: round3(p95.unwrap_or(0.0)),
            p99: round3(p99.unwrap_or(0.0)),
            percent: round1(percent),
            tcp_bytes_per_second: round3(tcp),
            health: Health::of(e.protocol, a).as_str(),
        }
    }

    /// Kiali's response breakdown: per code (gRPC: per status), the share of the edge's
    /// requests by response flags and by destination host.
    fn fill_responses(&self, e: &Edge, out: &mut BTreeMap<String, Responses>) {
        let total = e.agg.requests;
        if total <= 0.0 {
            return;
        }
        let mut counts: Breakdown = BTreeMap::new();
        for r in &e.records {
            let Some(rec) = self.records.get(*r as usize) else {
                continue;
            };
            for (code, n) in &rec.agg.codes {
                let label = match e.protocol {
                    Protocol::Grpc if code.grpc.is_empty() => "-".to_string(),
                    Protocol::Grpc => code.grpc.to_string(),
                    _ => code.code.to_string(),
                };
                let entry = counts.entry(label).or_default();
                *entry.0.entry(code.flags.to_string()).or_default() += n;
                *entry.1.entry(rec.key.service.host.to_string()).or_default() += n;
            }
        }
        for (code, (flags, hosts)) in counts {
            let pct = |m: BTreeMap<String, f64>| {
                m.into_iter()
                    .map(|(k, v)| (k, fmt1(100.0 * v / total)))
                    .collect()
            };
            out.insert(
                code,
                Responses {
                    flags: pct(flags),
                    hosts: pct(hosts),
                },
            );
        }
    }

    /// The node or edge with this id, and its series over the window.
    pub(crate) fn detail(&self, id: &str, store: &Store, mesh: &dyn MeshView) -> Option<Detail> {
        let (data, keys) = self.find(id, mesh)?;
        Some(Detail {
            data,
            series: store.series(keys.iter().map(|k| &**k), &self.window),
        })
    }

    /// The node or edge with this id, and the store edges its series are made of (a node's
    /// inbound traffic, outbound for a pure client; a box's over its members). The series
    /// come from wherever the history is: this graph's store when scraping, a range query
    /// when reading Prometheus.
    pub(crate) fn find(
        &self,
        id: &str,
        mesh: &dyn MeshView,
    ) -> Option<(DetailData, Vec<Arc<EdgeKey>>)> {
        if let Some(i) = self.nodes.iter().position(|n| n.id == id) {
            let mut records: Vec<u32> = Vec::new();
            let members: Vec<usize> = match self.nodes[i].key {
                NodeKey::Box { .. } => (0..self.nodes.len())
                    .filter(|c| self.nodes[*c].parent == Some(i))
                    .collect(),
                _ => vec![i],
            };
            for m in &members {
                records.extend(
                    self.edges
                        .iter()
                        .filter(|e| e.target == *m)
                        .flat_map(|e| e.records.iter().copied()),
                );
            }
            if records.is_empty() {
                for m in &members {
                    records.extend(
                        self.edges
                            .iter()
                            .filter(|e| e.source == *m)
                            .flat_map(|e| e.records.iter().copied()),
                    );
                }
            }
            records.sort_unstable();
            records.dedup();
            return Some((
                DetailData::Node(Box::new(self.node_data(i, mesh))),
                self.keys(&records),
            ));
        }
        (0..self.edges.len()).find_map(|i| {
            let data = self.edge_data(i);
            (data.id == id).then(|| {
                (
                    DetailData::Edge(Box::new(data)),
                    self.keys(&self.edges[i].records),
                )
            })
        })
    }

    fn keys(&self, records: &[u32]) -> Vec<Arc<EdgeKey>> {
        records
            .iter()
            .filter_map(|r| self.records.get(*r as usize))
            .map(|r| Arc::clone(&r.key))
            .collect()
    }
}

/// The telemetry to draw: the destination proxy's view of each call, and the source's only
/// where no destination proxy reports (a destination without sidecar, an external service,
/// passthrough), as Kiali does, so no call is counted twice.
fn select_records(state: &State, wanted: &HashSet<&str>, w: &Window) -> Vec<Record> {
    let mut reporting: HashSet<(&str, &str)> = HashSet::new();
    let mut reported_calls: HashSet<(&str, &str, &str)> = HashSet::new();
    for (k, _) in state.store.edges() {
        if k.reporter == Reporter::Destination {
            reporting.insert((&k.dest.namespace, &k.dest.name));
            reported_calls.insert((&k.source.namespace, &k.source.name, &k.service.host));
        }
    }
    for t in state.targets.values().filter(|t| t.listed) {
        reporting.insert((&t.target.namespace, &t.target.workload));
    }
    let mut out = Vec::new();
    for (k, history) in state.store.edges() {
        let relevant = wanted.contains(&*k.source.namespace)
            || wanted.contains(&*k.service.namespace)
            || wanted.contains(&*k.dest.namespace);
        if !relevant {
            continue;
        }
        if k.reporter == Reporter::Source {
            let duplicate = if k.dest.is_unknown() {
                reported_calls.contains(&(&*k.source.namespace, &*k.source.name, &*k.service.host))
            } else {
                reporting.contains(&(&*k.dest.namespace, &*k.dest.name))
            };
            if duplicate {
                continue;
            }
        }
        let agg = state.store.aggregate(k, history, w);
        if !agg.is_idle() {
            out.push(Record {
                key: Arc::clone(k),
                agg,
            });
        }
    }
    out
}

/// For the service graph: the services in front of each workload (from the calls to it).
fn services_behind(records: &[Record]) -> Fronting {
    let mut out = Fronting::new();
    for r in records {
        let k = &r.key;
        if k.dest.is_unknown() || is_unknown(&k.service.name) {
            continue;
        }
        let svc = NodeKey::Service {
            ns: Arc::clone(&k.service.namespace),
            name: Arc::clone(&k.service.name),
        };
        let list = out
            .entry((Arc::clone(&k.dest.namespace), Arc::clone(&k.dest.name)))
            .or_default();
        if !list.contains(&svc) {
            list.push(svc);
        }
    }
    out
}

fn workload_key(graph_type: GraphType, w: &Workload) -> NodeKey {
    if w.is_unknown() {
        return NodeKey::Unknown;
    }
    let app_known = !is_unknown(&w.app);
    match graph_type {
        GraphType::VersionedApp if app_known => NodeKey::Versioned {
            ns: Arc::clone(&w.namespace),
            app: Arc::clone(&w.app),
            version: Arc::clone(&w.version),
        },
        GraphType::App | GraphType::Service if app_known => NodeKey::App {
            ns: Arc::clone(&w.namespace),
            app: Arc::clone(&w.app),
        },
        _ => NodeKey::Workload {
            ns: Arc::clone(&w.namespace),
            name: Arc::clone(&w.name),
        },
    }
}

/// 64-bit FNV-1a: stable across processes and versions (ids must not change on restart).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fmt2(v: f64) -> String {
    format!("{v:.2}")
}

fn fmt1(v: f64) -> String {
    format!("{v:.1}")
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests;
