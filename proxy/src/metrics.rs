//! Istio's standard metrics, so Prometheus queries, Grafana dashboards and Kiali work as
//! they do with Istio's Envoy: the same names, labels and histogram buckets.
//!
//! Both ends of a call report: the client's proxy with `reporter="source"`, the server's
//! with `reporter="destination"`. Each learns the other side's workload from Istio's HTTP
//! metadata exchange headers (`x-envoy-peer-metadata`: a base64 protobuf `Struct` of the
//! peer's node metadata), which mast-proxy reads and writes as Istio's proxies do, so mixed
//! meshes still label both sides.
//!
//! Where no exchange happens (TCP, a server without a sidecar, a request that never reached
//! it) the client names the server from the endpoint it picked: istiod's `istio.workload`
//! endpoint metadata, `<workload>;<namespace>;<canonical service>;<canonical revision>;
//! <cluster>`, read as Istio's stats filter reads it.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dashmap::DashMap;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;

use crate::config::Config;

pub const PEER_METADATA: &str = "x-envoy-peer-metadata";
pub const PEER_METADATA_ID: &str = "x-envoy-peer-metadata-id";
/// The same names as header names, validated once (a `&str` name is parsed per use).
pub static PEER_METADATA_NAME: http::HeaderName = http::HeaderName::from_static(PEER_METADATA);
pub static PEER_METADATA_ID_NAME: http::HeaderName =
    http::HeaderName::from_static(PEER_METADATA_ID);

/// Istio's duration buckets (milliseconds).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets (bytes).
const BYTES_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];

/// A workload as metrics name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    /// Istio's canonical service and revision (`source_canonical_service`, …), which Kiali
    /// groups its graph by and drops series without.
    pub canonical_service: String,
    pub canonical_revision: String,
    pub principal: String,
    pub cluster: String,
}

impl Peer {
    pub fn unknown() -> Self {
        let u = || "unknown".to_string();
        Self {
            workload: u(),
            namespace: u(),
            app: u(),
            version: u(),
            canonical_service: u(),
            canonical_revision: u(),
            principal: u(),
            cluster: u(),
        }
    }
}

/// A workload's canonical service and revision from its labels, as Istio derives them
/// (injector and metadata exchange): `service.istio.io/canonical-name`, else
/// `app.kubernetes.io/name`, else `app`, else the workload name; the revision from
/// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else `version`,
/// else `latest`.
pub fn canonical<'a>(label: impl Fn(&str) -> Option<&'a str>, workload: &str) -> (String, String) {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| label(k).filter(|v| !v.is_empty()))
            .map(str::to_string)
    };
    let service = first(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| workload.to_string());
    let revision = first(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_string());
    (service, revision)
}

/// The service a request was for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceId {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceId {
    pub fn unknown() -> Self {
        Self {
            host: "unknown".into(),
            name: "unknown".into(),
            namespace: "unknown".into(),
        }
    }

    /// From an Istio cluster name (`outbound|80|v1|user.default.svc.cluster.local`), or
    /// the cluster name itself for `PassthroughCluster` and friends.
    pub fn from_cluster(cluster: &str) -> Self {
        let host = cluster.rsplit('|').next().unwrap_or(cluster);
        if cluster.starts_with("outbound|") && !host.is_empty() {
            Self::from_host(host, "unknown")
        } else {
            Self {
                host: cluster.to_string(),
                name: cluster.to_string(),
                namespace: "unknown".into(),
            }
        }
    }

    /// From a host name; short names are expanded in `namespace`.
    pub fn from_host(host: &str, namespace: &str) -> Self {
        let host = crate::resources::route::strip_port(host);
        let labels: Vec<&str> = host.split('.').collect();
        if host.parse::<std::net::IpAddr>().is_ok() || host.is_empty() {
            return Self::unknown();
        }
        match labels.as_slice() {
            [name] => Self {
                host: format!("{name}.{namespace}.svc.cluster.local"),
                name: name.to_string(),
                namespace: namespace.to_string(),
            },
            [name, ns] | [name, ns, "svc"] => Self {
                host: format!("{name}.{ns}.svc.cluster.local"),
                name: name.to_string(),
                namespace: ns.to_string(),
            },
            [name, ns, "svc", ..] => Self {
                host: host.to_string(),
                name: name.to_string(),
                namespace: ns.to_string(),
            },
            _ => Self {
                host: host.to_string(),
                name: host.to_string(),
                namespace: "unknown".into(),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

/// The label set of `istio_requests_total` and the request histograms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source: Arc<Peer>,
    pub destination: Arc<Peer>,
    pub service: Arc<ServiceId>,
    pub protocol: &'static str,
    pub code: u16,
    pub grpc_status: Option<u32>,
    pub mtls: bool,
    pub flags: &'static str,
}

/// The label set of `istio_request_messages_total` and `istio_response_messages_total`:
/// the two workloads and the service only. Istio reports a gRPC stream's messages while it
/// runs, before it has a status, so these counters carry no protocol, code or flags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    pub reporter: Reporter,
    pub source: Arc<Peer>,
    pub destination: Arc<Peer>,
    pub service: Arc<ServiceId>,
}

impl EncodeLabelSet for PeerLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_common(
            e,
            self.reporter,
            &self.source,
            &self.destination,
            &self.service,
        )
    }
}

/// The label set of the `istio_tcp_*` metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source: Arc<Peer>,
    pub destination: Arc<Peer>,
    pub service: Arc<ServiceId>,
    pub mtls: bool,
    pub flags: &'static str,
}

fn encode_common(
    e: &mut LabelSetEncoder,
    reporter: Reporter,
    src: &Peer,
    dst: &Peer,
    svc: &ServiceId,
) -> Result<(), std::fmt::Error> {
    let reporter = match reporter {
        Reporter::Source => "source",
        Reporter::Destination => "destination",
    };
    use prometheus_client::encoding::EncodeLabel;
    let pairs: [(&str, &str); 20] = [
        ("reporter", reporter),
        ("source_workload", &src.workload),
        ("source_workload_namespace", &src.namespace),
        ("source_principal", &src.principal),
        ("source_app", &src.app),
        ("source_version", &src.version),
        ("source_canonical_service", &src.canonical_service),
        ("source_canonical_revision", &src.canonical_revision),
        ("source_cluster", &src.cluster),
        ("destination_workload", &dst.workload),
        ("destination_workload_namespace", &dst.namespace),
        ("destination_principal", &dst.principal),
        ("destination_app", &dst.app),
        ("destination_version", &dst.version),
        ("destination_canonical_service", &dst.canonical_service),
        ("destination_canonical_revision", &dst.canonical_revision),
        ("destination_service", &svc.host),
        ("destination_service_name", &svc.name),
        ("destination_service_namespace", &svc.namespace),
        ("destination_cluster", &dst.cluster),
    ];
    for (k, v) in pairs {
        (k, v).encode(e.encode_label())?;
    }
    Ok(())
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        encode_common(
            e,
            self.reporter,
            &self.source,
            &self.destination,
            &self.service,
        )?;
        let code = self.code.to_string();
        let grpc = self.grpc_status.map(|s| s.to_string());
        let pairs: [(&str, &str); 5] = [
            ("request_protocol", self.protocol),
            ("response_code", &code),
            ("grpc_response_status", grpc.as_deref().unwrap_or("")),
            (
                "connection_security_policy",
                security_policy(self.reporter, self.mtls),
            ),
            ("response_flags", self.flags),
        ];
        for (k, v) in pairs {
            (k, v).encode(e.encode_label())?;
        }
        Ok(())
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, e: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        encode_common(
            e,
            self.reporter,
            &self.source,
            &self.destination,
            &self.service,
        )?;
        (
            "connection_security_policy",
            security_policy(self.reporter, self.mtls),
        )
            .encode(e.encode_label())?;
        ("response_flags", self.flags).encode(e.encode_label())?;
        Ok(())
    }
}

/// Istio's `connection_security_policy`: what the server side saw; a client reports
/// `unknown`, as Istio's sidecars do.
fn security_policy(reporter: Reporter, mtls: bool) -> &'static str {
    match (reporter, mtls) {
        (Reporter::Source, _) => "unknown",
        (Reporter::Destination, true) => "mutual_tls",
        (Reporter::Destination, false) => "none",
    }
}

/// This peer with its SPIFFE ID as principal (from an mTLS handshake).
pub fn with_principal(peer: &Peer, principal: &str) -> Arc<Peer> {
    Arc::new(Peer {
        principal: principal.to_string(),
        ..peer.clone()
    })
}

/// The namespace a SPIFFE ID names (`spiffe://<trust domain>/ns/<namespace>/sa/<account>`),
/// which Istio prefers over the peer's metadata for `*_workload_namespace`.
pub fn spiffe_namespace(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?;
    let mut parts = path.split('/').skip(1);
    match (parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa")) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// A peer known only by the SPIFFE ID of its certificate (a TCP connection has no metadata
/// exchange in mast-proxy): its principal and, from the ID, its namespace.
pub fn peer_of_identity(id: &str) -> Arc<Peer> {
    let mut peer = Peer::unknown();
    if let Some(ns) = spiffe_namespace(id) {
        peer.namespace = ns.to_string();
    }
    peer.principal = id.to_string();
    Arc::new(peer)
}

/// The workload an endpoint's `istio.workload` metadata names (istiod's compact form,
/// `<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>`), as Istio's
/// stats filter reads it: app and version are the canonical service and revision, an empty
/// revision is `latest`, the principal is unknown (a handshake may tell it). `None` unless
/// there are five fields and a workload name.
pub fn peer_of_endpoint(meta: &str) -> Option<Peer> {
    let mut f = meta.split(';');
    let mut next = || f.next();
    let (workload, namespace, service, revision, cluster) =
        (next()?, next()?, next()?, next()?, next()?);
    if next().is_some() || workload.is_empty() {
        return None;
    }
    let or_unknown = |v: &str| {
        if v.is_empty() {
            "unknown".to_string()
        } else {
            v.to_string()
        }
    };
    let service = if service.is_empty() {
        workload
    } else {
        service
    };
    let revision = if revision.is_empty() {
        "latest"
    } else {
        revision
    };
    Some(Peer {
        workload: workload.to_string(),
        namespace: or_unknown(namespace),
        app: service.to_string(),
        version: revision.to_string(),
        canonical_service: service.to_string(),
        canonical_revision: revision.to_string(),
        principal: "unknown".into(),
        cluster: or_unknown(cluster),
    })
}

/// A server known from its endpoint's metadata (if any) and its certificate's SPIFFE ID (if
/// the connection is mTLS): the metadata's names with the certificate's principal; the
/// namespace from the ID when the metadata gave none.
pub fn upstream_peer(endpoint: Option<&Arc<Peer>>, identity: Option<&str>) -> Option<Arc<Peer>> {
    match (endpoint, identity) {
        (Some(p), None) => Some(Arc::clone(p)),
        (Some(p), Some(id)) => {
            let mut peer = with_principal(p, id);
            if peer.namespace == "unknown"
                && let Some(ns) = spiffe_namespace(id)
            {
                Arc::make_mut(&mut peer).namespace = ns.to_string();
            }
            Some(peer)
        }
        (None, Some(id)) => Some(peer_of_identity(id)),
        (None, None) => None,
    }
}

/// The proxy's Istio metrics and its own identity for them.
pub struct Metrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    request_messages: Family<PeerLabels, Counter>,
    response_messages: Family<PeerLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    /// This proxy's workload.
    pub local: Arc<Peer>,
    /// `local` with this workload's SPIFFE ID, for connections that are mTLS.
    pub local_mtls: Arc<Peer>,
    /// This proxy's metadata-exchange headers.
    pub mx_header: http::HeaderValue,
    pub mx_id: http::HeaderValue,
    pub namespace: String,
    peers: DashMap<Vec<u8>, Arc<Peer>>,
    /// Peers named with the principal of their certificate, by peer (its address; one
    /// principal per peer, the last seen): an outbound mTLS response reuses one `Arc`, so its
    /// series handles stay cached.
    with_principals: DashMap<usize, (Arc<Peer>, Arc<Peer>)>,
    services: DashMap<String, Arc<ServiceId>>,
    unknown: Arc<Peer>,
    /// The four request series of a label set, found by identity (see [`SeriesKey`]), so a
    /// request does not hash its ~25 labels once per family.
    series: DashMap<SeriesKey, RequestSeries, BuildHasherDefault<WordHasher>>,
}

/// At most this many label sets keep their series handles cached; past it the cache starts
/// over. It only saves hashing: the families keep every series either way. Kept small
/// because a label set built from per-request `Arc`s (an outbound mTLS peer, named with its
/// principal per request) is a new key each time, and each entry holds its peers alive.
const MAX_CACHED_SERIES: usize = 1024;

/// A request label set compared by the identity of its shared parts: the same peer, peer
/// and service `Arc`s (which the key keeps alive, so their addresses are not reused while
/// it is cached) and the same scalars are the same series. Equal label sets built from
/// other `Arc`s are other keys for the same series: a cache miss, never a wrong series.
struct SeriesKey(RequestLabels);

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        Arc::ptr_eq(&a.source, &b.source)
            && Arc::ptr_eq(&a.destination, &b.destination)
            && Arc::ptr_eq(&a.service, &b.service)
            && a.reporter == b.reporter
            && a.code == b.code
            && a.grpc_status == b.grpc_status
            && a.mtls == b.mtls
            && a.protocol == b.protocol
            && a.flags == b.flags
    }
}

impl Eq for SeriesKey {}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let l = &self.0;
        h.write_usize(Arc::as_ptr(&l.source) as usize);
        h.write_usize(Arc::as_ptr(&l.destination) as usize);
        h.write_usize(Arc::as_ptr(&l.service) as usize);
        let scalars = u64::from(l.code)
            | u64::from(l.reporter == Reporter::Source) << 16
            | u64::from(l.mtls) << 17
            | u64::from(l.grpc_status.is_some()) << 18;
        h.write_u64(scalars);
        h.write_u32(l.grpc_status.unwrap_or(0));
        h.write(l.protocol.as_bytes());
        h.write(l.flags.as_bytes());
    }
}

/// A multiply-rotate hasher for [`SeriesKey`]: its words are addresses and small numbers
/// the proxy chose, not bytes a client sends, so SipHash's flooding resistance buys nothing.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let mut w = [0u8; 8];
        w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.add(u64::from_le_bytes(w) ^ (bytes.len() as u64) << 56);
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn finish(&self) -> u64 {
        // Fold the well-mixed high bits into the low ones the tables index by.
        self.0 ^ (self.0 >> 32)
    }
}

/// The handles of one label set's series in the four request families (clones share the
/// family's series).
struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestSeries {
    fn record(&self, millis: f64, req_bytes: u64, resp_bytes: u64) {
        self.requests.inc();
        self.duration.observe(millis);
        self.request_bytes.observe(req_bytes as f64);
        self.response_bytes.observe(resp_bytes as f64);
    }
}

impl Metrics {
    pub fn new(cfg: &Config) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        let bytes = || {
            Family::<RequestLabels, Histogram>::new_with_constructor(
                (|| Histogram::new(BYTES_BUCKETS)) as fn() -> Histogram,
            )
        };
        let request_bytes = bytes();
        let response_bytes = bytes();
        let request_messages = Family::<PeerLabels, Counter>::default();
        let response_messages = Family::<PeerLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        registry.register("istio_requests", "Requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        registry.register("istio_request_bytes", "Request size", request_bytes.clone());
        registry.register(
            "istio_response_bytes",
            "Response size",
            response_bytes.clone(),
        );
        registry.register(
            "istio_request_messages",
            "gRPC request messages",
            request_messages.clone(),
        );
        registry.register(
            "istio_response_messages",
            "gRPC response messages",
            response_messages.clone(),
        );
        registry.register("istio_tcp_sent_bytes", "Bytes sent", tcp_sent.clone());
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received",
            tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "Connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Connections closed",
            tcp_closed.clone(),
        );
        let workload = cfg.workload_name();
        let (canonical_service, canonical_revision) =
            canonical(|k| cfg.labels.get(k).map(String::as_str), &workload);
        let local = Arc::new(Peer {
            canonical_service,
            canonical_revision,
            workload,
            namespace: cfg.pod_namespace.clone(),
            app: cfg
                .labels
                .get("app")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            version: cfg
                .labels
                .get("version")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            principal: "unknown".into(),
            cluster: cfg.cluster_id(),
        });
        let local_mtls = with_principal(&local, &cfg.spiffe_id());
        let mx = mx_struct(cfg);
        let mx_header = http::HeaderValue::from_str(&B64.encode(mx.encode_to_vec()))
            .unwrap_or_else(|_| http::HeaderValue::from_static(""));
        let mx_id = http::HeaderValue::from_str(&cfg.node_id())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        Self {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            request_messages,
            response_messages,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            local,
            local_mtls,
            mx_header,
            mx_id,
            namespace: cfg.pod_namespace.clone(),
            peers: DashMap::new(),
            with_principals: DashMap::new(),
            services: DashMap::new(),
            unknown: Arc::new(Peer::unknown()),
            series: DashMap::default(),
        }
    }

    pub fn unknown_peer(&self) -> Arc<Peer> {
        Arc::clone(&self.unknown)
    }

    /// The peer described by an `x-envoy-peer-metadata` value (cached by value: a mesh has
    /// few workloads and each sends the same header every time).
    pub fn peer_from_header(&self, value: Option<&http::HeaderValue>) -> Arc<Peer> {
        let Some(v) = value else {
            return self.unknown_peer();
        };
        if let Some(p) = self.peers.get(v.as_bytes()) {
            return Arc::clone(&p);
        }
        let peer = B64
            .decode(v.as_bytes())
            .ok()
            .and_then(|b| Struct::decode(b.as_slice()).ok())
            .map(|s| Arc::new(peer_of(&s)))
            .unwrap_or_else(|| self.unknown_peer());
        if self.peers.len() < 10_000 {
            self.peers.insert(v.as_bytes().to_vec(), Arc::clone(&peer));
        }
        peer
    }

    /// `peer` named with `principal` (see [`with_principal`]), one `Arc` per pair while the
    /// pair is cached. The entry keeps `peer` alive, so its address is not reused while it is
    /// a key.
    pub fn peer_with_principal(&self, peer: &Arc<Peer>, principal: &str) -> Arc<Peer> {
        let key = Arc::as_ptr(peer) as usize;
        if let Some(e) = self.with_principals.get(&key)
            && Arc::ptr_eq(&e.0, peer)
            && e.1.principal == principal
        {
            return Arc::clone(&e.1);
        }
        let named = with_principal(peer, principal);
        if self.with_principals.len() < 10_000 {
            self.with_principals
                .insert(key, (Arc::clone(peer), Arc::clone(&named)));
        }
        named
    }

    /// The service an inbound request's host names (cached by host).
    pub fn service_for_host(&self, host: &str) -> Arc<ServiceId> {
        if let Some(s) = self.services.get(host) {
            return Arc::clone(&s);
        }
        let svc = Arc::new(ServiceId::from_host(host, &self.namespace));
        if self.services.len() < 10_000 {
            self.services.insert(host.to_string(), Arc::clone(&svc));
        }
        svc
    }

    pub fn record_request(
        &self,
        labels: RequestLabels,
        millis: f64,
        req_bytes: u64,
        resp_bytes: u64,
    ) {
        let key = SeriesKey(labels);
        if let Some(series) = self.series.get(&key) {
            series.record(millis, req_bytes, resp_bytes);
            return;
        }
        let labels = &key.0;
        let series = RequestSeries {
            requests: self.requests.get_or_create_owned(labels),
            duration: self.duration.get_or_create_owned(labels),
            request_bytes: self.request_bytes.get_or_create_owned(labels),
            response_bytes: self.response_bytes.get_or_create_owned(labels),
        };
        series.record(millis, req_bytes, resp_bytes);
        if self.series.len() >= MAX_CACHED_SERIES {
            self.series.clear();
        }
        self.series.insert(key, series);
    }

    /// A gRPC stream's messages since its last report.
    pub fn record_messages(&self, labels: &PeerLabels, request: u64, response: u64) {
        self.request_messages.get_or_create(labels).inc_by(request);
        self.response_messages
            .get_or_create(labels)
            .inc_by(response);
    }

    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// This proxy's node metadata as Istio's metadata exchange carries it.
fn mx_struct(cfg: &Config) -> Struct {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let labels = Struct {
        fields: cfg.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect(),
    };
    let mut fields = std::collections::HashMap::new();
    fields.insert("NAME".to_string(), s(&cfg.pod_name));
    fields.insert("NAMESPACE".to_string(), s(&cfg.pod_namespace));
    fields.insert("WORKLOAD_NAME".to_string(), s(&cfg.workload_name()));
    fields.insert("CLUSTER_ID".to_string(), s(&cfg.cluster_id()));
    fields.insert("SERVICE_ACCOUNT".to_string(), s(&cfg.service_account));
    fields.insert(
        "LABELS".to_string(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    Struct { fields }
}

fn peer_of(s: &Struct) -> Peer {
    let get = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) if !v.is_empty() => v.clone(),
        _ => "unknown".to_string(),
    };
    let label = |k: &str| match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => match l.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) if !v.is_empty() => v.clone(),
            _ => "unknown".to_string(),
        },
        _ => "unknown".to_string(),
    };
    let workload = get("WORKLOAD_NAME");
    let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => Some(l),
        _ => None,
    };
    let (canonical_service, canonical_revision) = canonical(
        |k| match labels?.fields.get(k)?.kind.as_ref()? {
            Kind::StringValue(v) => Some(v.as_str()),
            _ => None,
        },
        &workload,
    );
    Peer {
        workload,
        namespace: get("NAMESPACE"),
        app: label("app"),
        version: label("version"),
        canonical_service,
        canonical_revision,
        principal: "unknown".into(),
        cluster: get("CLUSTER_ID"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use std::collections::BTreeMap;

    fn cfg(pod: &str, app: &str, version: &str) -> Config {
        let env: BTreeMap<String, String> = [
            ("POD_NAME", pod),
            ("POD_NAMESPACE", "default"),
            ("ISTIO_META_WORKLOAD_NAME", &format!("{app}-{version}")),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = Overrides {
            labels: Some(format!("app={app},version={version}")),
            ..Default::default()
        };
        Config::from_env(&env, &o).unwrap()
    }

    #[test]
    fn metadata_exchange_round_trips() {
        let client = Metrics::new(&cfg("client-1", "client", "v1"));
        let server = Metrics::new(&cfg("user-v2-1", "user", "v2"));
        let peer = client.peer_from_header(Some(&server.mx_header));
        assert_eq!(peer.workload, "user-v2");
        assert_eq!(peer.app, "user");
        assert_eq!(peer.version, "v2");
        assert_eq!(peer.namespace, "default");
        assert_eq!(client.peer_from_header(None).workload, "unknown");
        let garbage = http::HeaderValue::from_static("!!notbase64");
        assert_eq!(client.peer_from_header(Some(&garbage)).workload, "unknown");
    }

    #[test]
    fn exposition_has_istio_names_and_labels() {
        let m = Metrics::new(&cfg("client-1", "client", "v1"));
        let labels = RequestLabels {
            reporter: Reporter::Source,
            source: Arc::clone(&m.local),
            destination: m.unknown_peer(),
            service: Arc::new(ServiceId::from_cluster(
                "outbound|80|v1|user.default.svc.cluster.local",
            )),
            protocol: "http",
            code: 200,
            grpc_status: None,
            mtls: false,
            flags: "-",
        };
        m.record_request(labels.clone(), 3.0, 10, 20);
        m.record_request(labels, 3.0, 10, 20);
        let text = m.encode();
        assert!(
            text.contains("istio_requests_total{reporter=\"source\",source_workload=\"client-v1\""),
            "{text}"
        );
        assert!(text.contains("destination_service=\"user.default.svc.cluster.local\",destination_service_name=\"user\",destination_service_namespace=\"default\""), "{text}");
        assert!(text.contains("response_code=\"200\""));
        // Kiali drops series without the canonical labels.
        assert!(
            text.contains("source_canonical_service=\"client\",source_canonical_revision=\"v1\""),
            "{text}"
        );
        assert!(text.contains("destination_canonical_service=\"unknown\",destination_canonical_revision=\"unknown\""), "{text}");
        assert!(text.contains("} 2\n"), "{text}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket"));
    }

    #[test]
    fn a_peer_named_with_its_principal_is_one_arc_per_peer_and_principal() {
        let m = Metrics::new(&cfg("client-1", "client", "v1"));
        let server = Arc::new(Peer::unknown());
        let a = "spiffe://cluster.local/ns/default/sa/user";
        let first = m.peer_with_principal(&server, a);
        assert_eq!(first.principal, a);
        assert!(Arc::ptr_eq(&first, &m.peer_with_principal(&server, a)));
        let b = "spiffe://cluster.local/ns/default/sa/other";
        let other = m.peer_with_principal(&server, b);
        assert_eq!(other.principal, b);
        assert!(!Arc::ptr_eq(&first, &other));
        // Another peer with the same contents is another key.
        let twin = Arc::new(Peer::unknown());
        assert!(!Arc::ptr_eq(&m.peer_with_principal(&twin, a), &first));
    }

    #[test]
    fn cached_series_count_by_label_values_not_by_arcs() {
        let m = Metrics::new(&cfg("client-1", "client", "v1"));
        // Fresh `Arc`s each time (cache misses) and shared ones (hits) name the same series.
        let labels = |code| RequestLabels {
            reporter: Reporter::Source,
            source: Arc::clone(&m.local),
            destination: Arc::new(Peer::unknown()),
            service: Arc::new(ServiceId::from_cluster(
                "outbound|80||user.default.svc.cluster.local",
            )),
            protocol: "http",
            code,
            grpc_status: None,
            mtls: false,
            flags: "-",
        };
        for _ in 0..3 {
            m.record_request(labels(200), 1.0, 1, 1);
        }
        let shared = labels(200);
        m.record_request(shared.clone(), 1.0, 1, 1);
        m.record_request(shared, 1.0, 1, 1);
        m.record_request(labels(503), 1.0, 1, 1);
        let totals = |text: &str| -> Vec<String> {
            let mut v: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .map(|l| {
                    let code = l.split("response_code=\"").nth(1).unwrap_or("");
                    format!("{} {}", &code[..3], l.rsplit(' ').next().unwrap_or(""))
                })
                .collect();
            // Series come out in the family's hash order.
            v.sort();
            v
        };
        assert_eq!(totals(&m.encode()), ["200 5", "503 1"]);
        // The cache stays bounded and keeps counting right as it starts over.
        for _ in 0..MAX_CACHED_SERIES + 10 {
            m.record_request(labels(200), 1.0, 1, 1);
        }
        assert!(m.series.len() <= MAX_CACHED_SERIES);
        let text = m.encode();
        assert_eq!(
            totals(&text),
            [format!("200 {}", MAX_CACHED_SERIES + 15), "503 1".into()]
        );
        let count = "istio_request_bytes_count{";
        assert_eq!(text.lines().filter(|l| l.starts_with(count)).count(), 2);
    }

    #[test]
    fn a_gateway_reports_as_its_own_workload() {
        let env: BTreeMap<String, String> = [
            ("POD_NAME", "istio-ingressgateway-5d8f7c9b4-x2x9z"),
            ("POD_NAMESPACE", "istio-system"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = Overrides {
            labels: Some("istio=ingressgateway,app=istio-ingressgateway".into()),
            node_type: crate::config::NodeType::Router,
            ..Default::default()
        };
        let m = Metrics::new(&Config::from_env(&env, &o).unwrap());
        assert_eq!(
            (
                m.local.workload.as_str(),
                m.local.app.as_str(),
                m.local.namespace.as_str()
            ),
            (
                "istio-ingressgateway",
                "istio-ingressgateway",
                "istio-system"
            )
        );
    }

    #[test]
    fn canonical_names_follow_istios_precedence() {
        let labels = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
        };
        assert_eq!(
            canonical(labels(&[("app", "user"), ("version", "v2")]), "user-v2"),
            ("user".into(), "v2".into())
        );
        assert_eq!(
            canonical(
                labels(&[
                    ("app", "user"),
                    ("service.istio.io/canonical-name", "users"),
                    ("app.kubernetes.io/version", "2.1"),
                ]),
                "user-v2"
            ),
            ("users".into(), "2.1".into())
        );
        assert_eq!(
            canonical(labels(&[]), "batch"),
            ("batch".into(), "latest".into())
        );
        // Through the metadata exchange, from the peer's labels.
        let env: BTreeMap<String, String> = [("POD_NAME", "db-0"), ("POD_NAMESPACE", "shop")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let o = Overrides {
            labels: Some(
                "service.istio.io/canonical-name=db,service.istio.io/canonical-revision=r7".into(),
            ),
            ..Default::default()
        };
        let server = Metrics::new(&Config::from_env(&env, &o).unwrap());
        let client = Metrics::new(&cfg("client-1", "client", "v1"));
        let peer = client.peer_from_header(Some(&server.mx_header));
        assert_eq!(
            (
                peer.canonical_service.as_str(),
                peer.canonical_revision.as_str()
            ),
            ("db", "r7")
        );
    }

    #[test]
    fn a_spiffe_id_names_the_peers_namespace() {
        let id = "spiffe://cluster.local/ns/shop/sa/db";
        assert_eq!(spiffe_namespace(id), Some("shop"));
        let p = peer_of_identity(id);
        assert_eq!(
            (
                p.principal.as_str(),
                p.namespace.as_str(),
                p.workload.as_str()
            ),
            (id, "shop", "unknown")
        );
        for bad in [
            "spiffe://cluster.local/sa/db",
            "https://cluster.local/ns/shop/sa/db",
            "spiffe://td/ns//sa/x",
        ] {
            assert_eq!(spiffe_namespace(bad), None, "{bad}");
            assert_eq!(peer_of_identity(bad).namespace, "unknown");
        }
    }

    #[test]
    fn service_ids() {
        let s = ServiceId::from_host("user:8080", "shop");
        assert_eq!(s.host, "user.shop.svc.cluster.local");
        let s = ServiceId::from_host("user.other.svc.cluster.local", "shop");
        assert_eq!((s.name.as_str(), s.namespace.as_str()), ("user", "other"));
        assert_eq!(
            ServiceId::from_cluster("PassthroughCluster").host,
            "PassthroughCluster"
        );
    }

    #[test]
    fn endpoint_metadata_names_the_server() {
        let p = peer_of_endpoint("user-v2;shop;user;v2;Kubernetes").unwrap();
        assert_eq!(
            (
                p.workload.as_str(),
                p.namespace.as_str(),
                p.app.as_str(),
                p.version.as_str(),
                p.canonical_service.as_str(),
                p.canonical_revision.as_str(),
                p.cluster.as_str(),
                p.principal.as_str()
            ),
            (
                "user-v2",
                "shop",
                "user",
                "v2",
                "user",
                "v2",
                "Kubernetes",
                "unknown"
            )
        );
        // istiod leaves `latest` out; an empty canonical service is the workload.
        let p = peer_of_endpoint("batch;jobs;;;east").unwrap();
        assert_eq!(
            (p.canonical_service.as_str(), p.canonical_revision.as_str()),
            ("batch", "latest")
        );
        for bad in ["", "a;b;c;d", "a;b;c;d;e;f", ";ns;svc;rev;c"] {
            assert_eq!(peer_of_endpoint(bad), None, "{bad}");
        }
        // With a certificate: its principal; the namespace from the metadata.
        let ep = Arc::new(peer_of_endpoint("user-v2;shop;user;v2;Kubernetes").unwrap());
        let id = "spiffe://cluster.local/ns/shop/sa/user";
        let both = upstream_peer(Some(&ep), Some(id)).unwrap();
        assert_eq!(
            (both.workload.as_str(), both.principal.as_str()),
            ("user-v2", id)
        );
        assert_eq!(upstream_peer(None, Some(id)).unwrap().namespace, "shop");
        assert_eq!(upstream_peer(Some(&ep), None).unwrap().principal, "unknown");
        assert!(upstream_peer(None, None).is_none());
    }
}
