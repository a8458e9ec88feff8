//! The Aggregated Discovery Service: pilot's gRPC server that Envoy and mast-proxy connect to.
//!
//! Both ADS flavours are served: state-of-the-world (every response carries the whole set of a
//! type) and delta (only what changed). Each stream is driven by one task ([`connection`]) that
//! owns that proxy's protocol state; the mesh model arrives through a `watch` channel so a
//! config change wakes every connection at once, and each connection regenerates its own
//! resources and sends only the types whose content changed — a proxy whose config did not
//! change is not pushed to.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use mast_mesh_config::MeshModel;
use mast_proto::TypeUrl;
use prost::Message;

pub mod connection;
pub mod server;
pub mod wire;

pub use server::{AdsServer, ConnectionRegistry};

/// The `tracing` target of spans that go into mastd's trace store (mastd's `TRACE_TARGET`).
pub const TRACE_TARGET: &str = "mast::trace";

/// Proxies whose push is traced per config change, by default: each is one `xds.push` span
/// (with its sends and ACKs as events), so a change stays under the trace store's 2000 spans
/// per trace and costs a bounded amount whatever the mesh's size.
pub const DEFAULT_PUSH_TRACES: usize = 500;

static PUSH_TRACES: AtomicUsize = AtomicUsize::new(DEFAULT_PUSH_TRACES);

/// Trace at most `n` proxies' pushes per config change (0: none). Process-wide, like the
/// `tracing` subscriber that records them.
pub fn set_push_traces_per_change(n: usize) {
    PUSH_TRACES.store(n, Ordering::Relaxed);
}

/// A model version as distributed to connections.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Increases by one on every accepted change.
    pub version: u64,
    pub model: Arc<MeshModel>,
    /// When the change that produced this snapshot was first seen (before debouncing): the
    /// start of the convergence time Istio reports as `pilot_proxy_convergence_time`.
    pub changed_at: Instant,
    /// The trace of the change, which the pushes it causes join; `None` when the change was
    /// not traced (no trace store in the process, or push tracing off).
    pub trace: Option<Arc<ChangeTrace>>,
}

/// The trace context of a config change, shared by every connection that pushes it.
#[derive(Debug)]
pub struct ChangeTrace {
    context: opentelemetry::Context,
    /// Pushes of this change that asked to be traced so far.
    admitted: AtomicUsize,
}

impl Snapshot {
    pub fn new(version: u64, model: Arc<MeshModel>, changed_at: Instant) -> Self {
        Self {
            version,
            model,
            changed_at,
            trace: None,
        }
    }

    /// Pushes of this snapshot join `change`'s trace (as children of it) when `change` is
    /// recorded by an OpenTelemetry layer and push tracing is on.
    pub fn traced(mut self, change: &tracing::Span) -> Self {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        if PUSH_TRACES.load(Ordering::Relaxed) == 0 {
            return self;
        }
        let context = change.context();
        if context.span().span_context().is_valid() {
            self.trace = Some(Arc::new(ChangeTrace {
                context,
                admitted: AtomicUsize::new(0),
            }));
        }
        self
    }
}

// === impl ChangeTrace ===

impl ChangeTrace {
    /// The parent of a push span, if this push is within the change's budget.
    pub fn admit(&self) -> Option<opentelemetry::Context> {
        let n = self.admitted.fetch_add(1, Ordering::Relaxed);
        (n < PUSH_TRACES.load(Ordering::Relaxed)).then(|| self.context.clone())
    }
}

/// One xDS resource, encoded once and versioned by the hash of its bytes, so unchanged
/// resources are recognised without comparing protos. The encoding is a [`Bytes`] that every
/// response carrying the resource shares (see [`wire`]): a push to 2000 proxies references
/// it 2000 times and copies it never.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// Shared with every stream's subscription to it (see [`connection`]).
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub type_url: TypeUrl,
    /// The message's encoding: what an `Any` of `type_url` carries as `value`.
    pub value: Bytes,
}

impl Resource {
    pub fn new(name: impl Into<Arc<str>>, type_url: TypeUrl, message: &impl Message) -> Self {
        let value = Bytes::from(message.encode_to_vec());
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut hasher);
        Self {
            name: name.into(),
            version: format!("{:016x}", hasher.finish()).into(),
            type_url,
            value,
        }
    }

    /// The resource as an owned `Any` (debug pages and tests; the push path never copies).
    pub fn any(&self) -> Any {
        Any {
            type_url: self.type_url.url().to_string(),
            value: self.value.to_vec(),
        }
    }
}

/// One xDS type's resources, as a set many proxies share: built once per model version and
/// configuration key, compared by pointer when nothing changed, versioned as a whole.
#[derive(Clone, Debug, Default)]
pub struct TypeSet {
    pub resources: BTreeMap<Arc<str>, Arc<Resource>>,
    version: OnceLock<String>,
    /// The set this one was built from and the names that differ from it, computed once
    /// when the set is built: every connection holding `base` learns what changed without
    /// walking the set (2000 proxies × 3000 endpoint sets on every pod change otherwise).
    pub delta: Option<(std::sync::Weak<TypeSet>, Vec<Arc<str>>)>,
}

impl TypeSet {
    /// Hash over names and versions, computed once.
    pub fn version(&self) -> &str {
        self.version
            .get_or_init(|| set_version(self.resources.values()))
    }
}

impl PartialEq for TypeSet {
    fn eq(&self, other: &Self) -> bool {
        self.version() == other.version()
    }
}

/// Resources by type and name: one layer of what a proxy gets.
#[derive(Clone, Debug, Default)]
pub struct ProxyResources {
    pub by_type: BTreeMap<TypeUrl, Arc<TypeSet>>,
}

impl ProxyResources {
    pub fn insert(&mut self, type_url: TypeUrl, resource: Resource) {
        self.insert_shared(type_url, Arc::new(resource));
    }

    fn insert_shared(&mut self, type_url: TypeUrl, resource: Arc<Resource>) {
        let set = Arc::make_mut(self.by_type.entry(type_url).or_default());
        set.version = OnceLock::new();
        set.delta = None;
        set.resources.insert(resource.name.clone(), resource);
    }

    /// Insert `message`, or `previous`'s resource of the same name when it holds the same
    /// message. Bytes alone cannot tell: prost writes a protobuf map (a `Struct`'s fields,
    /// `filter_metadata`, `typed_per_filter_config`) in `HashMap` order, which differs between
    /// two builds of the same config, so equal bytes mean equal, but different bytes are
    /// decoded and compared. Without this, every model change re-pushed every resource with
    /// a two-entry map to every proxy (and Envoy re-warms a re-pushed cluster).
    pub fn insert_stable<M: Message + Default + PartialEq>(
        &mut self,
        type_url: TypeUrl,
        name: &str,
        message: &M,
        previous: Option<&ProxyResources>,
    ) {
        let fresh = Resource::new(name, type_url, message);
        let kept = previous
            .and_then(|p| p.by_type.get(&type_url)?.resources.get(name))
            .filter(|old| {
                old.version == fresh.version
                    || M::decode(old.value.clone()).is_ok_and(|m| m == *message)
            })
            .cloned();
        self.insert_shared(type_url, kept.unwrap_or_else(|| Arc::new(fresh)));
    }

    pub fn of_type(&self, type_url: TypeUrl) -> Option<&BTreeMap<Arc<str>, Arc<Resource>>> {
        self.by_type.get(&type_url).map(|s| &s.resources)
    }

    /// Take `previous`'s set wherever the content is the same, so connections that hold the
    /// previous set see, by pointer, that nothing changed for them.
    pub fn reuse_unchanged(&mut self, previous: &ProxyResources) {
        for (t, set) in self.by_type.iter_mut() {
            if let Some(old) = previous.by_type.get(t) {
                if **old == **set {
                    *set = old.clone();
                } else {
                    let mut changed = Vec::new();
                    diff_sets(old, set, &mut changed);
                    Arc::make_mut(set).delta = Some((Arc::downgrade(old), changed));
                }
            }
        }
    }
}

/// What one proxy gets: layers of shared resources — the outbound half shared by every proxy
/// with the same view of the mesh, then the proxy's own inbound half. Nothing is copied per
/// proxy; a name in an earlier layer wins.
#[derive(Clone, Debug, Default)]
pub struct ProxyView {
    pub layers: Vec<Arc<ProxyResources>>,
}

impl ProxyView {
    pub fn single(resources: ProxyResources) -> Self {
        Self {
            layers: vec![Arc::new(resources)],
        }
    }

    /// The sets of `type_url`, layer by layer.
    pub fn sets(&self, type_url: TypeUrl) -> Vec<Arc<TypeSet>> {
        self.layers
            .iter()
            .filter_map(|l| l.by_type.get(&type_url).cloned())
            .collect()
    }

    pub fn get(&self, type_url: TypeUrl, name: &str) -> Option<&Arc<Resource>> {
        self.layers
            .iter()
            .find_map(|l| l.by_type.get(&type_url)?.resources.get(name))
    }

    /// Every resource of the type, each name once.
    pub fn all(&self, type_url: TypeUrl) -> Vec<&Arc<Resource>> {
        let mut out: Vec<&Arc<Resource>> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let Some(set) = layer.by_type.get(&type_url) else {
                continue;
            };
            for (name, r) in &set.resources {
                let shadowed = self.layers[..i].iter().any(|l| {
                    l.by_type
                        .get(&type_url)
                        .is_some_and(|s| s.resources.contains_key(name))
                });
                if !shadowed {
                    out.push(r);
                }
            }
        }
        out
    }

    /// All layers merged into one (tests and debug pages).
    pub fn flatten(&self) -> ProxyResources {
        let mut out = ProxyResources::default();
        for t in TypeUrl::ADS_ORDER {
            for r in self.all(t) {
                let set = Arc::make_mut(out.by_type.entry(t).or_default());
                set.resources.insert(r.name.clone(), r.clone());
            }
        }
        out
    }
}

/// Turns the model into one proxy's resources. The real one is [`crate::xds`]; tests use
/// fakes.
pub trait Generator: Send + Sync + 'static {
    /// Check the node a proxy announced; the error is sent back as the stream's status.
    fn validate_node(&self, node: &Node) -> Result<(), GenerateError>;

    /// Everything `node` should have under `snapshot`. Called once per connection per
    /// snapshot, so implementations cache what proxies share.
    fn generate(&self, snapshot: &Snapshot, node: &Node) -> Result<ProxyView, GenerateError>;
}

/// A generator's own error, boxed: this module serves any [`Generator`] and knows none of
/// their error types, only which side is at fault.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a [`Generator`] cannot serve a proxy. The ADS server answers by cause: the proxy's
/// fault ends its stream with `InvalidArgument`, pilot's with `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The node the proxy announced cannot be served (its id or metadata).
    #[error(transparent)]
    Node(BoxError),
    /// pilot could not build the config for a valid node: a bug, not the proxy's.
    #[error("cannot generate config: {0}")]
    Internal(#[source] BoxError),
}

// === impl GenerateError ===

impl GenerateError {
    /// The gRPC status a proxy is answered with.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            Self::Node(_) => tonic::Status::invalid_argument(self.to_string()),
            Self::Internal(_) => tonic::Status::internal(self.to_string()),
        }
    }
}

/// Names whose resource differs between two versions of a set (added, removed or changed),
/// into `out`. Both are sorted by name; unchanged resources are the same `Arc`s with the same
/// name `Arc`s, so walking them costs pointer comparisons.
pub fn diff_sets(old: &TypeSet, new: &TypeSet, out: &mut Vec<Arc<str>>) {
    use std::cmp::Ordering;
    let mut a = old.resources.iter().peekable();
    let mut b = new.resources.iter().peekable();
    loop {
        let ord = match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) if Arc::ptr_eq(ka, kb) => Ordering::Equal,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match ord {
            Ordering::Less => {
                if let Some((k, _)) = a.next() {
                    out.push(k.clone());
                }
            }
            Ordering::Greater => {
                if let Some((k, _)) = b.next() {
                    out.push(k.clone());
                }
            }
            Ordering::Equal => {
                if let (Some((_, ra)), Some((kb, rb))) = (a.next(), b.next())
                    && !Arc::ptr_eq(ra, rb)
                    && ra.version != rb.version
                {
                    out.push(kb.clone());
                }
            }
        }
    }
}

/// What differs between `old` and `new`: the delta recorded when `new` was built from `old`,
/// or a walk of both.
pub fn set_changes(old: &Arc<TypeSet>, new: &TypeSet, out: &mut Vec<Arc<str>>) {
    match &new.delta {
        Some((base, changed)) if std::ptr::eq(base.as_ptr(), Arc::as_ptr(old)) => {
            out.extend(changed.iter().cloned())
        }
        _ => diff_sets(old, new, out),
    }
}

/// The version of a set of resources: a hash over names and versions, stable across runs.
pub fn set_version<'a>(resources: impl Iterator<Item = &'a Arc<Resource>>) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for r in resources {
        r.name.hash(&mut hasher);
        r.version.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests;
