//! The mesh model: what every input dialect is translated into, and the only thing xDS is
//! generated from.
//!
//! Istio VirtualServices, Gateway API HTTPRoutes, SMI TrafficSplits and Knative Routes all say
//! "send this share of the traffic for host H to these backends". Keeping one model means pilot's
//! translation to Envoy config is written (and tested against a real Envoy) once, and the CLI, the
//! injector and the telemetry view read the same facts the data plane gets.
//!
//! Everything here is plain data: no I/O, no validation. Dialect parsers (`crate::dialect`)
//! validate while they translate, so a value in the model is already known to be well formed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Labels, ordered so that anything derived from them (xDS, hashes, debug output) is stable.
pub type Labels = BTreeMap<String, String>;

/// The DNS suffix of in-cluster service hostnames (`<svc>.<ns>.svc.<domain>`).
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";

/// The whole mesh at one instant. Built from the accepted resources of every source; pilot
/// holds it behind an `Arc` and swaps it atomically on change.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MeshModel {
    /// Namespaces by name (only their labels matter to the mesh).
    pub namespaces: BTreeMap<String, Namespace>,
    /// Services by fully qualified hostname (`user.default.svc.cluster.local`, or a
    /// ServiceEntry host such as `api.example.com`).
    pub services: BTreeMap<String, Service>,
    /// Workload instances (WorkloadEntries, Pods, Knative revision pods), in source order.
    pub workloads: Vec<Workload>,
    /// Routing rules, in the order Istio would merge them: oldest/first-read first.
    pub routes: Vec<RouteTable>,
    /// Per-destination traffic policy (DestinationRule), by fully qualified hostname.
    pub destination_policies: BTreeMap<String, DestinationPolicy>,
    /// Sidecar resources, which scope what a proxy sees and how it captures traffic.
    pub sidecars: Vec<SidecarScope>,
    /// PeerAuthentications (mTLS mode per workload port), in source order.
    pub peer_authentications: Vec<crate::security::PeerAuthn>,
    /// AuthorizationPolicies, in source order.
    pub authorization_policies: Vec<crate::security::AuthzPolicy>,
    /// MeshConfig: the `mesh` key of the `istio` ConfigMap in `istio-system`, as istiod
    /// reads it (only the settings Mast acts on).
    pub mesh: MeshSettings,
    /// Istio Gateways (and Gateway API Gateways translated to them), in source order: what
    /// gateway proxies (node type `router`) listen on.
    pub gateways: Vec<Gateway>,
    /// TLS Secrets a Gateway's `credentialName` may name, by `(namespace, name)`.
    pub tls_secrets: BTreeMap<(String, String), TlsSecret>,
    /// RequestAuthentications (JWT rules), in source order.
    pub request_authentications: Vec<crate::authn::RequestAuthn>,
    /// Knative routes waiting for their external hosts, and `config-domain`
    /// (`crate::dialect::knative::finish` completes them once everything is translated).
    pub knative: crate::dialect::knative::KnativeState,
    /// Gateway API ReferenceGrants: which cross-namespace references are permitted.
    pub reference_grants: Vec<ReferenceGrant>,
    /// Telemetry resources' tracing rules, in source order.
    pub telemetries: Vec<crate::telemetry::Telemetry>,
    /// `workloads` by namespace and label, built on first use (see [`WorkloadIndex`]).
    #[serde(skip)]
    pub workload_index: WorkloadIndex,
}

/// Workloads by `(namespace, label, value)`, so that finding the workloads a service selects
/// looks at the few that carry its selector's first label instead of every workload of the
/// mesh: at 1000 services × 2000 workloads, scanning was most of generating the endpoints.
///
/// Built lazily, once the model is complete; an index built for another number of workloads
/// (a model still being filled) is not used. It is derived data: it never makes two models
/// differ, and a clone starts without it.
#[derive(Debug, Default)]
pub struct WorkloadIndex {
    /// The number of workloads it was built for, and the index.
    built: std::sync::OnceLock<(usize, IndexMap)>,
}

/// `(namespace, label, value)` → indexes into `MeshModel::workloads`.
type IndexMap = std::collections::HashMap<(String, String, String), Vec<usize>>;

impl Clone for WorkloadIndex {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for WorkloadIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A Gateway API ReferenceGrant, in the namespace whose objects it opens to references from
/// other namespaces. Without one, a route's `backendRefs` to a Service of another namespace
/// are refused (Gateway API's rule, which keeps one namespace from sending a gateway's
/// traffic into another that did not agree to it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReferenceGrant {
    pub namespace: String,
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

/// Who may refer: objects of this group and kind in this namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantFrom {
    /// `""` is the core group.
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

/// What they may refer to: objects of this group and kind (of this name, when given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

/// One side of a reference: an object's group, kind, namespace and name.
#[derive(Clone, Copy, Debug)]
pub struct ObjectRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl MeshModel {
    /// The workloads that differ between `self` and `new` (added, removed or changed), when
    /// nothing else does; `None` when anything else changed. A pod coming or going is the
    /// common change of a big mesh, and only endpoints, and the inbound config of workloads
    /// like it, depend on it: pilot pushes such a change without waiting for the config to
    /// settle and keeps every other proxy's inbound config.
    ///
    /// With `ignore_routes`, routing rules may differ too (what a proxy's inbound half does
    /// not depend on).
    ///
    /// Destructured field by field, so that a field added to the model must be placed here.
    pub fn workload_changes<'a>(
        &'a self,
        new: &'a MeshModel,
        ignore_routes: bool,
    ) -> Option<Vec<&'a Workload>> {
        let MeshModel {
            namespaces,
            services,
            workloads,
            routes,
            destination_policies,
            sidecars,
            peer_authentications,
            authorization_policies,
            mesh,
            gateways,
            tls_secrets,
            request_authentications,
            knative,
            reference_grants,
            telemetries,
            workload_index: _,
        } = self;
        let same = *namespaces == new.namespaces
            && (ignore_routes || *routes == new.routes)
            && *destination_policies == new.destination_policies
            && *sidecars == new.sidecars
            && *peer_authentications == new.peer_authentications
            && *authorization_policies == new.authorization_policies
            && *mesh == new.mesh
            && *gateways == new.gateways
            && *tls_secrets == new.tls_secrets
            && *request_authentications == new.request_authentications
            && *knative == new.knative
            && *reference_grants == new.reference_grants
            && *telemetries == new.telemetries
            && services.len() == new.services.len()
            && services
                .iter()
                .zip(&new.services)
                .all(|((ka, a), (kb, b))| ka == kb && a.same_but_endpoints(b));
        if !same {
            return None;
        }
        let key = |w: &'a Workload| ((w.namespace.as_str(), w.name.as_str()), w);
        let old: BTreeMap<_, _> = workloads.iter().map(key).collect();
        let now: BTreeMap<_, _> = new.workloads.iter().map(key).collect();
        let mut changed: Vec<&Workload> = now
            .iter()
            .filter(|(k, w)| old.get(*k) != Some(*w))
            .map(|(_, w)| *w)
            .collect();
        changed.extend(
            old.iter()
                .filter(|(k, w)| now.get(*k) != Some(*w))
                .map(|(_, w)| *w),
        );
        Some(changed)
    }

    /// Whether `from` may refer to `to`: always within a namespace, across namespaces only
    /// when a ReferenceGrant in `to`'s namespace allows it.
    pub fn reference_permitted(&self, from: ObjectRef<'_>, to: ObjectRef<'_>) -> bool {
        from.namespace == to.namespace
            || self.reference_grants.iter().any(|g| {
                g.namespace == to.namespace
                    && g.from.iter().any(|f| {
                        f.group == from.group
                            && f.kind == from.kind
                            && f.namespace == from.namespace
                    })
                    && g.to.iter().any(|t| {
                        t.group == to.group
                            && t.kind == to.kind
                            && t.name.as_deref().is_none_or(|n| n == to.name)
                    })
            })
    }
}

/// The MeshConfig settings Mast acts on.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MeshSettings {
    /// `pathNormalization.normalization`.
    pub path_normalization: PathNormalization,
    /// `enableTracing`, `extensionProviders`, `defaultProviders.tracing` and
    /// `defaultConfig.tracing`.
    pub tracing: crate::telemetry::MeshTracing,
    /// `meshNetworks`' `fromCidr` endpoints (the ConfigMap's `meshNetworks` key), sorted:
    /// the addresses gateways take for internal (`internal_address_config`), as istiod's
    /// `MeshNetworksToEnvoyInternalAddressConfig`.
    pub internal_networks: Vec<(std::net::IpAddr, u8)>,
}

/// `meshConfig.pathNormalization.normalization`: how sidecars normalise request paths
/// before authorization and routing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// No normalisation (`normalize_path: false`).
    None,
    /// RFC 3986 normalisation and backslashes as slashes (`DEFAULT` is this).
    #[default]
    Base,
    /// BASE, and runs of slashes merged.
    MergeSlashes,
    /// MERGE_SLASHES, and `%2F`/`%5C` decoded first.
    DecodeAndMergeSlashes,
}

/// Where a model element came from, so that xDS metadata, debug pages and errors can point
/// back at the user's YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceRef {
    /// `VirtualService`, `HTTPRoute`, `TrafficSplit`, …
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A service: a hostname with ports, backed by the workloads its selector picks or by the
/// endpoints listed with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Service {
    /// Fully qualified hostname; the key in [`MeshModel::services`].
    pub hostname: String,
    /// Short name (`user`) for Kubernetes services; the host itself for ServiceEntries.
    pub name: String,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    /// Label selector over [`MeshModel::workloads`] in the same namespace. `None` means the
    /// service selects nothing by labels (its endpoints are listed explicitly, or it has none).
    pub selector: Option<Labels>,
    /// Explicit endpoints (ServiceEntry `endpoints`).
    pub endpoints: Vec<Endpoint>,
    /// Virtual IPs (Kubernetes clusterIP, ServiceEntry `addresses`).
    pub addresses: Vec<String>,
    pub resolution: Resolution,
    /// True for ServiceEntry `MESH_EXTERNAL`: no sidecar on the other side.
    pub mesh_external: bool,
    /// Namespaces this service is visible from (`exportTo`); empty means everywhere.
    pub export_to: Vec<String>,
    pub source: ResourceRef,
}

impl Service {
    /// Equal in everything but `endpoints` (see [`MeshModel::workload_changes`]).
    pub fn same_but_endpoints(&self, other: &Service) -> bool {
        let Service {
            hostname,
            name,
            namespace,
            ports,
            selector,
            endpoints: _,
            addresses,
            resolution,
            mesh_external,
            export_to,
            source,
        } = self;
        *hostname == other.hostname
            && *name == other.name
            && *namespace == other.namespace
            && *ports == other.ports
            && *selector == other.selector
            && *addresses == other.addresses
            && *resolution == other.resolution
            && *mesh_external == other.mesh_external
            && *export_to == other.export_to
            && *source == other.source
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// Port on the workload; a number, or a name resolved through the workload's named ports.
    pub target_port: Option<TargetPort>,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// Application protocol of a port, as Istio infers it from `appProtocol`, the port name prefix
/// (`http-`, `grpc-`, …) or the ServiceEntry `protocol` field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    /// Not declared: the proxy sniffs HTTP vs. anything else.
    #[default]
    Unknown,
}

impl Protocol {
    /// Traffic on this port is routed at L7 by HTTP route tables.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Resolution {
    /// Endpoints are known addresses (selected workloads or listed endpoints).
    #[default]
    Static,
    /// Endpoints are DNS names resolved by the proxy.
    Dns,
    /// Forward to the original destination address.
    None,
}

/// A ServiceEntry endpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: String,
    /// Port name → port number overrides.
    pub ports: BTreeMap<String, u16>,
    pub labels: Labels,
    pub weight: Option<u32>,
    /// A sidecar answers at this address: auto mTLS applies (`tlsMode: istio`).
    pub has_sidecar: bool,
}

/// gRPC status names as Istio writes them (`fault.abort.grpcStatus`, `retryOn`), indexed by
/// their code: `UNAVAILABLE` is 14.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio's label saying whether a workload runs a sidecar (`istio`) or not (`disabled`).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Whether a WorkloadEntry, or a ServiceEntry's inline endpoint (the same message), is backed
/// by a sidecar, as istiod decides its endpoints' `tlsMode`: the `security.istio.io/tlsMode`
/// label when there is one (`istio` means a sidecar), otherwise a sidecar exactly when a
/// service account is named. A plain server registered without either is reached in plaintext.
pub fn workload_entry_has_sidecar(labels: &Labels, service_account: Option<&str>) -> bool {
    match labels.get(TLS_MODE_LABEL) {
        Some(mode) => mode == "istio",
        None => service_account.is_some_and(|sa| !sa.is_empty()),
    }
}

/// A running instance: a WorkloadEntry, a Pod, or a Knative revision pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// IP address (or DNS name) where the workload listens.
    pub address: String,
    pub labels: Labels,
    /// Named ports (`http` → 9080); a service's named target port resolves through these.
    pub ports: BTreeMap<String, u16>,
    pub service_account: String,
    pub weight: Option<u32>,
    pub locality: Option<String>,
    pub network: Option<String>,
    /// The workload runs a sidecar (so mTLS can be used towards it): for a WorkloadEntry, see
    /// [`workload_entry_has_sidecar`].
    pub has_sidecar: bool,
    pub source: ResourceRef,
}

/// The routing rules one resource declares for a set of hosts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteTable {
    /// Fully qualified hosts these rules apply to (may contain a leading `*.` wildcard).
    pub hosts: Vec<String>,
    pub namespace: String,
    /// Namespaces this route table is visible from (`exportTo`); empty means everywhere.
    pub export_to: Vec<String>,
    /// Only apply to traffic on this service port (Gateway API parentRef `port`; at a
    /// gateway, the listener's port).
    pub port: Option<u16>,
    /// Gateway API parentRef `sectionName`: only the gateway listener (server) of this name.
    pub section: Option<String>,
    /// Where the rules apply: gateways as `<namespace>/<name>`, and [`MESH_GATEWAY`] for the
    /// sidecars. Empty means the sidecars only (a VirtualService without `gateways`).
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    /// TLS rules (routed by SNI without terminating), used by gateways' PASSTHROUGH servers.
    pub tls: Vec<TlsRoute>,
    pub source: ResourceRef,
}

/// One HTTP rule: the first rule (of a table) whose matches accept a request handles it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Any one of these must match; empty matches everything.
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    /// `None`: Istio's default retry policy applies.
    pub retries: Option<RetryPolicy>,
    pub fault: Option<FaultInjection>,
    pub mirrors: Vec<Mirror>,
    pub headers: HeaderOperations,
    pub cors: Option<CorsPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum RouteAction {
    /// Forward to weighted destinations; weights are relative shares (60 and 30 split 2:1).
    Forward(Vec<WeightedDestination>),
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        body: Option<String>,
    },
}

impl Default for RouteAction {
    fn default() -> Self {
        Self::Forward(Vec::new())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WeightedDestination {
    pub destination: Destination,
    pub weight: u32,
    pub headers: HeaderOperations,
}

/// A service (and optionally a subset and a port of it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Destination {
    /// Fully qualified hostname.
    pub host: String,
    pub subset: Option<String>,
    /// Needed when the service has more than one port.
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: Vec<HeaderMatch>,
    /// Verified JWT claims (`@request.auth.claims.*` header keys; gateways only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimMatch>,
    pub query_params: Vec<QueryMatch>,
    /// The service port the request arrived on.
    pub port: Option<u16>,
    /// Only for requests from workloads with these labels.
    pub source_labels: Labels,
    pub source_namespace: Option<String>,
    pub ignore_uri_case: bool,
    /// Where this match applies, as [`RouteTable::gateways`]: empty means the table's own.
    pub gateways: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// RE2 syntax, full match (as Envoy's `safe_regex`). Already checked to compile.
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lower-cased header name.
    pub name: String,
    /// `None`: the header must be present (with any value).
    pub value: Option<StringMatch>,
    /// Match when the header does NOT match (Istio `withoutHeaders`).
    pub invert: bool,
}

/// A match on a claim of the request's verified JWT (Istio's `@request.auth.claims.<a>.<b>`
/// or `@request.auth.claims[a][b]` header keys): the claim at `path` must be a string that
/// matches, or a list with an element that does; without a verified token it is absent
/// (so only an inverted match holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClaimMatch {
    /// Claim names, outermost first, as written (claims are case-sensitive).
    pub path: Vec<String>,
    pub value: StringMatch,
    /// Match when the claim does NOT match (Istio `withoutHeaders`).
    pub invert: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueryMatch {
    pub name: String,
    /// `None`: the parameter must be present.
    pub value: Option<StringMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    /// 301 (Istio's default), 302, 303, 307 or 308.
    pub status: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    pub authority: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathRewrite {
    /// Replace the whole path.
    Full(String),
    /// Replace the part matched by the route's prefix match with this.
    Prefix(String),
    /// Replace matches of `pattern` (RE2) with `substitution` (Istio `uriRegexRewrite`).
    Regex {
        pattern: String,
        substitution: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// 0 disables retries.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Envoy `retry_on` conditions (`5xx,connect-failure,…`); the HTTP status codes in the
    /// list go to `retriable_status_codes`, as Istio does.
    pub retry_on: Option<String>,
    pub retry_remote_localities: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultInjection {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    /// Share of requests, 0.0–100.0.
    pub percentage: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum AbortKind {
    HttpStatus(u16),
    GrpcStatus(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultAbort {
    pub kind: AbortKind,
    /// Share of requests, 0.0–100.0.
    pub percentage: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mirror {
    pub destination: Destination,
    /// Share of requests, 0.0–100.0.
    pub percentage: f64,
}

/// Header additions/removals on requests and responses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderOperations {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl HeaderOperations {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderOps {
    /// Overwrite (or create) these headers.
    pub set: Vec<(String, String)>,
    /// Append these values.
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<Duration>,
    pub allow_credentials: Option<bool>,
}

/// An L4 rule (VirtualService `tcp`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpRoute {
    /// Destination port the rule applies to; `None` for all ports.
    pub port: Option<u16>,
    pub destinations: Vec<WeightedDestination>,
}

/// A VirtualService `tls` rule: connections whose SNI is one of `sni_hosts` go to the
/// destinations, still encrypted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TlsRoute {
    /// SNI names (a `*.` wildcard allowed) of the rule's matches, lower-cased.
    pub sni_hosts: Vec<String>,
    /// Destination (gateway server) port the rule applies to; `None` for all ports.
    pub port: Option<u16>,
    pub destinations: Vec<WeightedDestination>,
}

/// DestinationRule: subsets and the traffic policy for one host.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DestinationPolicy {
    /// Fully qualified hostname (may be a `*.` wildcard).
    pub host: String,
    pub namespace: String,
    pub traffic_policy: TrafficPolicy,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
    pub source: ResourceRef,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Subset {
    pub name: String,
    pub labels: Labels,
    /// Merged over the host's policy by pilot (subset fields win).
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
    /// Per-port overrides, by service port number.
    pub port_level: BTreeMap<u16, TrafficPolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LoadBalancer {
    /// Istio's default.
    LeastRequest,
    RoundRobin,
    Random,
    Passthrough,
    /// Consistent hashing (ring hash).
    ConsistentHash(HashKey),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum HashKey {
    Header(String),
    Cookie { name: String, ttl: Option<Duration> },
    SourceIp,
    QueryParameter(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub tcp_keepalive: bool,
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub h2_upgrade: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OutlierDetection {
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    /// 0–100.
    pub max_ejection_percent: Option<u32>,
    pub min_health_percent: Option<u32>,
    pub split_external_local_origin_errors: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientTls {
    pub mode: TlsMode,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub credential_name: Option<String>,
    /// `caCertificates`: a PEM file on the proxy; `None` with no `credentialName` means the
    /// system's CA bundle (Istio verifies by default).
    pub ca_certificates: Option<String>,
    /// `clientCertificate` and `privateKey` (MUTUAL without `credentialName`): files on the proxy.
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub insecure_skip_verify: bool,
    /// `caCrl`: a PEM CRL file on the proxy.
    pub ca_crl: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TlsMode {
    Disable,
    Simple,
    Mutual,
    /// Istio mTLS with workload certificates (`ISTIO_MUTUAL`).
    IstioMutual,
}

/// A Sidecar resource: which services a proxy sees and how its traffic is captured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SidecarScope {
    pub namespace: String,
    /// `None`: applies to every workload in the namespace (or the mesh, in the root namespace).
    pub workload_selector: Option<Labels>,
    pub egress: Vec<EgressListener>,
    pub ingress: Vec<IngressListener>,
    /// `outboundTrafficPolicy.mode` is REGISTRY_ONLY (default ALLOW_ANY).
    pub registry_only: bool,
    pub source: ResourceRef,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EgressListener {
    pub port: Option<ServicePort>,
    /// Address to bind the listener to (e.g. `127.0.0.1`).
    pub bind: Option<String>,
    pub capture_mode: Option<CaptureMode>,
    /// `namespace/host` entries; `*` and `.` (the sidecar's own namespace) allowed in either part.
    pub hosts: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IngressListener {
    pub port: ServicePort,
    pub bind: Option<String>,
    pub capture_mode: Option<CaptureMode>,
    /// Where inbound traffic goes (`127.0.0.1:8080`).
    pub default_endpoint: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CaptureMode {
    Default,
    Iptables,
    None,
}

/// The reserved gateway name of a VirtualService's `gateways` meaning "every sidecar".
pub const MESH_GATEWAY: &str = "mesh";

/// An Istio `Gateway`: servers that the gateway proxies its selector picks listen on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gateway {
    pub name: String,
    pub namespace: String,
    /// Labels of the gateway pods (across all namespaces, as istiod by default).
    pub selector: Labels,
    /// Selects only gateway proxies in its own namespace (a Gateway API Gateway and the
    /// proxy deployed for it).
    pub namespace_scoped: bool,
    pub servers: Vec<GatewayServer>,
    pub source: ResourceRef,
}

/// One `servers[]` entry of a Gateway.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GatewayServer {
    pub port: u16,
    /// `port.name`; part of an HTTPS server's route name.
    pub port_name: String,
    pub protocol: Protocol,
    /// `bind`: the address to listen on instead of `0.0.0.0`.
    pub bind: Option<String>,
    pub hosts: Vec<GatewayHost>,
    pub tls: Option<ServerTls>,
}

/// A server host: `[namespace/]dnsName`, where `*` (any namespace, the default) and `.`
/// (the Gateway's namespace) are allowed as the namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayHost {
    /// `None`: any namespace (`*/` or no prefix).
    pub namespace: Option<String>,
    /// Lower-cased host, possibly a `*.` wildcard or `*`.
    pub host: String,
}

/// A server's `tls` block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerTls {
    /// `httpsRedirect`: answer 301 to `https://` for every request on this (HTTP) server.
    pub https_redirect: bool,
    pub mode: ServerTlsMode,
    /// `credentialName`: a TLS Secret in the gateway's namespace, fetched as
    /// `kubernetes://<name>` over SDS.
    pub credential_name: Option<String>,
    /// File paths in the gateway pod (`serverCertificate`, `privateKey`, `caCertificates`).
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub cipher_suites: Vec<String>,
}

/// `tls.mode` of a Gateway server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Terminate TLS, no client certificate (the default).
    #[default]
    Simple,
    /// Terminate TLS and require a client certificate signed by the server's CA.
    Mutual,
    /// Terminate TLS and verify a client certificate when one is presented.
    OptionalMutual,
    /// Route by SNI without terminating (`tcp_proxy`).
    Passthrough,
    /// Terminate with the gateway's own workload certificate (Istio mTLS).
    IstioMutual,
    /// Route by SNI to the cluster the SNI names (`outbound_.<port>_.<subset>_.<host>`).
    AutoPassthrough,
}

impl ServerTlsMode {
    /// The gateway terminates TLS for this mode.
    pub fn terminates(self) -> bool {
        !matches!(self, Self::Passthrough | Self::AutoPassthrough)
    }
}

/// A Kubernetes Secret holding a certificate: `tls.crt`/`tls.key`/`ca.crt` (type
/// `kubernetes.io/tls`), or Istio's generic `cert`/`key`/`cacert`; a `<name>-cacert` Secret
/// supplies the CA for MUTUAL on its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TlsSecret {
    /// PEM certificate chain.
    pub cert: Option<String>,
    /// PEM private key; left out of every debug output.
    #[serde(skip)]
    pub key: Option<String>,
    /// PEM CA bundle for verifying clients.
    pub ca: Option<String>,
    pub source: ResourceRef,
}

impl GatewayServer {
    /// Istio's RDS name for this server: `http.<port>` for plain HTTP servers (shared by every
    /// gateway on the port), `https.<port>.<portName>.<gateway>.<namespace>` for HTTPS servers
    /// that terminate TLS; `None` for servers without HTTP routes.
    pub fn route_name(&self, gateway: &Gateway) -> Option<String> {
        let bind = self
            .bind
            .as_ref()
            .map(|b| format!(".{b}"))
            .unwrap_or_default();
        if self.protocol.is_http() {
            return Some(format!("http.{}{bind}", self.port));
        }
        let terminated = self.tls.as_ref().is_some_and(|t| t.mode.terminates());
        (self.protocol == Protocol::Https && terminated).then(|| {
            format!(
                "https.{}.{}.{}.{}{bind}",
                self.port, self.port_name, gateway.name, gateway.namespace
            )
        })
    }
}

impl RouteTable {
    /// The rules apply to the sidecars: no `gateways`, or `mesh` among them.
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == MESH_GATEWAY)
    }

    /// The rules apply to the gateway `<namespace>/<name>`.
    pub fn applies_to_gateway(&self, namespace: &str, name: &str) -> bool {
        self.gateways
            .iter()
            .any(|g| g.split_once('/') == Some((namespace, name)))
    }
}

// === impl MeshModel ===

impl MeshModel {
    /// Workloads a service selects by labels (same namespace), in model order.
    pub fn selected_workloads<'a>(
        &'a self,
        service: &'a Service,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        let selects = move |w: &&Workload| {
            w.namespace == service.namespace
                && service
                    .selector
                    .as_ref()
                    .is_some_and(|sel| labels_match(sel, &w.labels))
        };
        let first = service.selector.as_ref().and_then(|s| s.iter().next());
        let (len, index) = self.workload_index.built.get_or_init(|| {
            let mut index: std::collections::HashMap<_, Vec<usize>> = Default::default();
            for (i, w) in self.workloads.iter().enumerate() {
                for (k, v) in &w.labels {
                    index
                        .entry((w.namespace.clone(), k.clone(), v.clone()))
                        .or_default()
                        .push(i);
                }
            }
            (self.workloads.len(), index)
        });
        // Candidates: those with the selector's first label, when the index is current.
        let candidates: Box<dyn Iterator<Item = &'a Workload> + 'a> = match first {
            Some((k, v)) if *len == self.workloads.len() => Box::new(
                index
                    .get(&(service.namespace.clone(), k.clone(), v.clone()))
                    .into_iter()
                    .flatten()
                    .filter_map(|i| self.workloads.get(*i)),
            ),
            _ => Box::new(self.workloads.iter()),
        };
        candidates.filter(selects)
    }

    /// The subset of `host` called `name`, if a DestinationRule declares it.
    pub fn subset(&self, host: &str, name: &str) -> Option<&Subset> {
        self.destination_policies
            .get(host)
            .and_then(|p| p.subsets.iter().find(|s| s.name == name))
    }
}

/// True when every label of `selector` is present with the same value in `labels`.
/// An empty selector matches everything, as in Kubernetes.
pub fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `user` in `default` → `user.default.svc.cluster.local`.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{DEFAULT_DOMAIN_SUFFIX}")
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_changes_only_when_nothing_else_changed() {
        let w = |name: &str, ip: &str| Workload {
            name: name.into(),
            namespace: "default".into(),
            address: ip.into(),
            labels: [("app".to_string(), "user".to_string())].into(),
            ports: BTreeMap::new(),
            service_account: "user".into(),
            weight: None,
            locality: None,
            network: None,
            has_sidecar: true,
            source: ResourceRef::default(),
        };
        let a = MeshModel {
            workloads: vec![w("u1", "10.0.0.1"), w("u2", "10.0.0.2")],
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(a.workload_changes(&b, false).map(|c| c.len()), Some(0));
        b.workloads[1].address = "10.0.0.3".into();
        b.workloads.push(w("u3", "10.0.0.4"));
        let names: Vec<&str> = a
            .workload_changes(&b, false)
            .unwrap()
            .iter()
            .map(|w| w.address.as_str())
            .collect();
        assert_eq!(names, ["10.0.0.3", "10.0.0.4", "10.0.0.2"]);
        b.namespaces.insert("x".into(), Namespace::default());
        assert!(a.workload_changes(&b, false).is_none());
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_needs_every_label() {
        let sel = labels(&[("app", "user"), ("version", "v1")]);
        assert!(labels_match(
            &sel,
            &labels(&[("app", "user"), ("version", "v1"), ("x", "y")])
        ));
        assert!(!labels_match(&sel, &labels(&[("app", "user")])));
        assert!(labels_match(&Labels::new(), &labels(&[("app", "user")])));
    }

    #[test]
    fn fqdn() {
        assert_eq!(
            service_fqdn("user", "default"),
            "user.default.svc.cluster.local"
        );
    }
}
