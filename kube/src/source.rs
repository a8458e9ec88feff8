//! The Kubernetes config source: the API server's objects, read into the same model as a
//! folder of YAML.
//!
//! One kube-rs watcher per kind (Services, Pods, Namespaces, EndpointSlices — the endpoints
//! of Services without a selector —, Secrets — the certificates gateways name, reduced to
//! their certificate keys —, the MeshConfig ConfigMap `istio-system/istio`, and every mesh
//! custom resource the dialect parsers read) keeps a
//! local copy of the cluster's objects. Each object becomes
//! a pseudo-file — path `kube:/<group>/<Kind>/<namespace>/<name>`, text the object's JSON
//! (JSON is YAML) — and the whole set goes to the same [`ConfigStore`] the folder source
//! uses. Validation, error messages (file = the kube path, resource, field) and "a rejected
//! edit keeps the last good version in force" are therefore exactly the folder source's, and
//! the xDS is the same whichever the source.
//!
//! Custom resources are found by discovery, so a cluster without, say, Knative or SMI
//! installed is a warning at start-up and not a failure. Watch errors are the watcher's to
//! recover from: an expired resourceVersion (410 Gone) makes it relist, anything else is
//! retried with kube's default backoff; the last good config is served meanwhile. Changes are
//! debounced like the folder source's (100 ms of quiet, at most 10 s), and after every apply
//! the rejected resources get a status written back ([`crate::status`]) when this replica may
//! write. The same replica writes the Gateway API status of Mast's classes
//! ([`crate::gateway_status`]), creates the `istio`/`mast` GatewayClasses when missing, and
//! deploys each managed Gateway's proxy ([`crate::gateway_deploy`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use mast_mesh_config::ConfigError;
use mast_mesh_config::model::MeshModel;
use mast_mesh_config::store::ConfigStore;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::gateway_deploy::{self, ProxyRenderer};
use crate::gateway_status;
use crate::status::{self, WriteGate};

/// Every mesh custom resource a dialect parser reads, by group.
pub const MESH_KINDS: &[(&str, &[&str])] = &[
    (
        "networking.istio.io",
        &[
            "VirtualService",
            "DestinationRule",
            "ServiceEntry",
            "WorkloadEntry",
            "WorkloadGroup",
            "Sidecar",
            "Gateway",
        ],
    ),
    (
        "security.istio.io",
        &[
            "PeerAuthentication",
            "AuthorizationPolicy",
            "RequestAuthentication",
        ],
    ),
    (
        "gateway.networking.k8s.io",
        &[
            "GatewayClass",
            "Gateway",
            "HTTPRoute",
            "GRPCRoute",
            "TLSRoute",
            "TCPRoute",
            "ReferenceGrant",
        ],
    ),
    ("telemetry.istio.io", &["Telemetry"]),
    ("split.smi-spec.io", &["TrafficSplit"]),
    ("serving.knative.dev", &["Route", "Service"]),
];

pub use mast_mesh_config::source::Debounce;

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub debounce: Debounce,
    /// Whether this replica writes status back (the leader, when there is an election). The
    /// same gate decides who deploys gateways.
    pub write_status: WriteGate,
    /// Deploy a proxy for every managed Gateway API Gateway of Mast's classes
    /// ([`gateway_deploy`]), rendering its container with this; `None`: deploy nothing.
    pub deploy_gateways: Option<ProxyRenderer>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API discovery failed (is the API server reachable?): {0}")]
    Discovery(#[source] kube::Error),
    #[error("the watches stopped before the first full list of every kind")]
    Closed,
}

/// How often a slow initial sync says what it waits for.
const SYNC_REPORT: Duration = Duration::from_secs(10);

/// What one apply produced.
#[derive(Clone, Debug)]
pub struct Update {
    pub model: Arc<MeshModel>,
    /// Everything rejected now (its last good version, if any, is in `model`).
    pub errors: Vec<ConfigError>,
    /// The model differs from the previous update's.
    pub changed: bool,
    /// When the first change that led to this update arrived (before debouncing).
    pub first_change: std::time::Instant,
    /// The change's `config.change` span (target `mast::trace`, into mastd's trace store, as
    /// the folder source's): its debounce and validation are children, and the publish and
    /// the pushes it causes join it. Disabled for the initial sync.
    pub trace: tracing::Span,
}

/// One watched kind.
#[derive(Clone, Debug)]
struct Watched {
    ar: ApiResource,
    namespaced: bool,
    writes_status: bool,
    /// A Gateway API kind with a status subresource: gets Istio's Gateway API status
    /// ([`gateway_status`]).
    gateway_status: bool,
    /// Watch one object only, `(namespace, name)`: the MeshConfig ConfigMap, where every
    /// other ConfigMap is none of the mesh's business.
    only: Option<(&'static str, &'static str)>,
}

/// One object, as the store sees it and as status needs it.
#[derive(Clone, Debug)]
struct Tracked {
    kind: usize,
    namespace: Option<String>,
    name: String,
    generation: Option<i64>,
    /// The pseudo-file text (without `status` and `managedFields`).
    text: String,
    /// The `status.validationMessages` the object shows now.
    messages: Vec<Value>,
    /// The whole `status` it shows now, for Gateway API kinds (else null).
    status: Value,
    /// `metadata.uid`: what owner references name.
    uid: Option<String>,
    /// A Service's type and load-balancer addresses (Gateway API status reports them; kept
    /// out of `text`, so an address arriving rebuilds no model).
    exposure: Option<gateway_status::Exposure>,
}

type WatchItem = (usize, Result<Event<DynamicObject>, watcher::Error>);

/// Watches the cluster and publishes an [`Update`] after every debounced change.
pub struct KubeSource {
    client: kube::Client,
    options: Options,
    kinds: Vec<Watched>,
    events: mpsc::Receiver<WatchItem>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Kinds whose first full list has arrived.
    synced: BTreeSet<usize>,
    /// The list in progress of a kind (between `Init` and `InitDone`).
    relisting: BTreeMap<usize, BTreeMap<PathBuf, Tracked>>,
    objects: BTreeMap<PathBuf, Tracked>,
    store: ConfigStore,
    /// What was last applied for each Gateway (its path → the objects), so an unchanged
    /// Gateway costs no requests.
    deployed: BTreeMap<PathBuf, Vec<Value>>,
}

// === impl KubeSource ===

impl KubeSource {
    /// Discover which mesh kinds the cluster serves and start watching them and the core
    /// kinds. Fails only when discovery itself fails (API server unreachable, forbidden).
    pub async fn start(client: kube::Client, options: Options) -> Result<Self, Error> {
        let kinds = discover(&client).await?;
        let (tx, events) = mpsc::channel(1024);
        let tasks = kinds
            .iter()
            .enumerate()
            .map(|(i, w)| spawn_watch(&client, i, w, tx.clone()))
            .collect();
        info!(
            kinds = %kinds.iter().map(|w| w.ar.kind.as_str()).collect::<Vec<_>>().join(","),
            "watching the Kubernetes API"
        );
        Ok(Self {
            client,
            options,
            kinds,
            events,
            tasks,
            synced: BTreeSet::new(),
            relisting: BTreeMap::new(),
            objects: BTreeMap::new(),
            store: ConfigStore::default(),
            deployed: BTreeMap::new(),
        })
    }

    /// Wait for the first full list of every kind and apply it: what mastd serves first.
    pub async fn initial_sync(&mut self) -> Result<Update, Error> {
        let started = std::time::Instant::now();
        while self.synced.len() < self.kinds.len() {
            match tokio::time::timeout(SYNC_REPORT, self.events.recv()).await {
                Ok(item) => {
                    self.handle(item.ok_or(Error::Closed)?);
                }
                // Keep waiting (serving a partial mesh could move traffic), but say on what.
                Err(_) => warn!(
                    waiting_for = %self
                        .kinds
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !self.synced.contains(i))
                        .map(|(_, w)| w.ar.kind.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    "still waiting for the first list of every kind (RBAC? API server load?); not serving yet"
                ),
            }
        }
        let update = self.apply(started, true);
        self.write_status().await;
        Ok(update)
    }

    /// Follow changes: after each debounced burst, apply and hand the [`Update`] to
    /// `on_update`; stop when it returns false or the watches end.
    pub async fn run(mut self, mut on_update: impl FnMut(Update) -> bool) {
        let mut gate = self.options.write_status.clone();
        loop {
            let item = tokio::select! {
                item = self.events.recv() => item,
                () = gate.changed() => {
                    // Became leader: bring every status and deployment up to date.
                    self.deployed.clear();
                    self.write_status().await;
                    continue;
                }
            };
            let Some(item) = item else { return };
            let first = std::time::Instant::now();
            let change = tracing::info_span!(target: "mast::trace", "config.change", changed = tracing::field::Empty, version = tracing::field::Empty);
            let debounce = tracing::info_span!(target: "mast::trace", parent: &change, "config.debounce", events = tracing::field::Empty);
            let mut events = 1u64;
            let mut dirty = self.handle(item);
            let deadline = Instant::now() + self.options.debounce.max;
            let mut quiet_until = (Instant::now() + self.options.debounce.quiet).min(deadline);
            loop {
                tokio::select! {
                    item = self.events.recv() => {
                        let Some(item) = item else { return };
                        events += 1;
                        dirty |= self.handle(item);
                        quiet_until = (Instant::now() + self.options.debounce.quiet).min(deadline);
                    }
                    () = sleep_until(quiet_until) => break,
                }
            }
            debounce.record("events", events);
            drop(debounce);
            let go_on = !dirty || {
                let mut update = change.in_scope(|| self.apply(first, false));
                change.record("changed", update.changed);
                update.trace = change;
                on_update(update)
            };
            // Also after status-only events: a status someone else changed is put back (a
            // no-op, without requests, when every object already shows what it should).
            self.write_status().await;
            if !go_on {
                return;
            }
        }
    }

    /// The kinds watched (core kinds and the mesh kinds the cluster serves).
    pub fn kinds(&self) -> impl Iterator<Item = &ApiResource> {
        self.kinds.iter().map(|w| &w.ar)
    }

    /// The objects as pseudo-files, path → text (what the store was given last).
    pub fn files(&self) -> BTreeMap<PathBuf, String> {
        self.objects
            .iter()
            .map(|(p, t)| (p.clone(), t.text.clone()))
            .collect()
    }

    /// Take one watch event; true when the config text changed.
    fn handle(&mut self, (kind, event): WatchItem) -> bool {
        let what = &self.kinds[kind].ar.kind;
        match event {
            Err(e) => {
                if matches!(&e, watcher::Error::WatchError(s) if s.code == 410) {
                    info!(kind = %what, "watch expired (410 Gone); relisting");
                } else {
                    warn!(kind = %what, error = %e, "watch failed; retrying with backoff, the last good config stays");
                }
                false
            }
            Ok(Event::Init) => {
                self.relisting.insert(kind, BTreeMap::new());
                false
            }
            Ok(Event::InitApply(obj)) => {
                if let Some((path, t)) = self.track(kind, obj) {
                    self.relisting.entry(kind).or_default().insert(path, t);
                }
                false
            }
            Ok(Event::InitDone) => {
                let listed = self.relisting.remove(&kind).unwrap_or_default();
                let (before, others): (BTreeMap<PathBuf, Tracked>, BTreeMap<PathBuf, Tracked>) =
                    std::mem::take(&mut self.objects)
                        .into_iter()
                        .partition(|(_, t)| t.kind == kind);
                self.objects = others;
                let changed = before.len() != listed.len()
                    || before
                        .iter()
                        .zip(&listed)
                        .any(|((p1, t1), (p2, t2))| p1 != p2 || t1.text != t2.text);
                debug!(kind = %self.kinds[kind].ar.kind, objects = listed.len(), "listed");
                self.objects.extend(listed);
                self.synced.insert(kind);
                changed
            }
            Ok(Event::Apply(obj)) => match self.track(kind, obj) {
                Some((path, t)) => {
                    let changed = self.objects.get(&path).is_none_or(|old| old.text != t.text);
                    self.objects.insert(path, t);
                    changed
                }
                None => false,
            },
            Ok(Event::Delete(obj)) => match self.track(kind, obj) {
                Some((path, _)) => self.objects.remove(&path).is_some(),
                None => false,
            },
        }
    }

    fn track(&self, kind: usize, obj: DynamicObject) -> Option<(PathBuf, Tracked)> {
        let w = &self.kinds[kind];
        let name = obj.metadata.name.clone()?;
        let namespace = if w.namespaced {
            Some(
                obj.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            )
        } else {
            None
        };
        let generation = obj.metadata.generation;
        let uid = obj.metadata.uid.clone();
        let is_service = w.ar.group.is_empty() && w.ar.kind == "Service";
        let mut value = serde_json::to_value(&obj).ok()?;
        let messages = status::current_messages(&value);
        let current_status = if w.gateway_status {
            value.get("status").cloned().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let exposure = is_service.then(|| gateway_status::Exposure::of_service(&value));
        prepare(&mut value, &w.ar);
        let text = serde_json::to_string_pretty(&value).ok()?;
        let path = pseudo_path(&w.ar, namespace.as_deref(), &name);
        Some((
            path,
            Tracked {
                kind,
                namespace,
                name,
                generation,
                text,
                messages,
                status: current_status,
                uid,
                exposure,
            },
        ))
    }

    fn apply(&mut self, first_change: std::time::Instant, initial: bool) -> Update {
        let _validate = tracing::info_span!(target: "mast::trace", "config.validate", objects = self.objects.len())
            .entered();
        let report = self.store.apply_files(self.files());
        for e in &report.errors {
            warn!("config rejected, last good version kept: {e}");
        }
        let model = self.store.model();
        if report.changed || initial {
            for w in &report.warnings {
                warn!("config set aside: {w}");
            }
            info!(
                objects = self.objects.len(),
                services = model.services.len(),
                workloads = model.workloads.len(),
                routes = model.routes.len(),
                destination_rules = model.destination_policies.len(),
                rejected = report.errors.len(),
                "config loaded from the Kubernetes API"
            );
        }
        Update {
            model,
            errors: self.store.errors().to_vec(),
            changed: report.changed,
            first_change,
            trace: tracing::Span::none(),
        }
    }

    /// Make every status-bearing object show its current errors (or none).
    async fn write_status(&mut self) {
        if !self.options.write_status.may_write() {
            return;
        }
        let mut by_file: BTreeMap<&PathBuf, Vec<&ConfigError>> = BTreeMap::new();
        for e in self.store.errors() {
            by_file.entry(&e.file).or_default().push(e);
        }
        let mut writes = Vec::new();
        for (path, t) in &self.objects {
            let w = &self.kinds[t.kind];
            if !w.writes_status {
                continue;
            }
            let wanted =
                status::validation_messages(by_file.get(path).map(Vec::as_slice).unwrap_or(&[]));
            if wanted != t.messages {
                writes.push((path.clone(), wanted));
            }
        }
        for (path, wanted) in writes {
            let Some(t) = self.objects.get(&path) else {
                continue;
            };
            let ar = &self.kinds[t.kind].ar;
            match status::write(
                &self.client,
                ar,
                t.namespace.as_deref(),
                &t.name,
                &wanted,
                t.generation,
            )
            .await
            {
                Ok(_) => {
                    info!(resource = %path.display(), errors = wanted.len(), "status written");
                    if let Some(t) = self.objects.get_mut(&path) {
                        // What the object shows now; the watch echo agrees.
                        t.messages = wanted;
                    }
                }
                Err(e) => warn!(resource = %path.display(), error = %e, "cannot write status"),
            }
        }
        self.ensure_gateway_classes().await;
        self.write_gateway_status().await;
        self.deploy_gateways().await;
    }

    /// Create the GatewayClasses Mast serves (`istio`, `mast`) when the cluster serves the
    /// kind and they do not exist, as istiod creates its built-in classes: a user applies a
    /// Gateway of class `istio` without installing a class first. One that exists is never
    /// changed; one deleted is created again.
    async fn ensure_gateway_classes(&mut self) {
        let Some((index, w)) = self
            .kinds
            .iter()
            .enumerate()
            .find(|(_, w)| w.ar.group == gateway_status::GROUP && w.ar.kind == "GatewayClass")
        else {
            return;
        };
        // Only once the classes are listed: before, every class looks missing.
        if !self.synced.contains(&index) {
            return;
        }
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &w.ar);
        for class in gateway_status::CLASSES {
            let path = pseudo_path(&w.ar, None, class);
            if self.objects.contains_key(&path) {
                continue;
            }
            let object: DynamicObject = match serde_json::from_value(gateway_status::builtin_class(
                &w.ar.api_version,
                class,
            )) {
                Ok(o) => o,
                Err(_) => continue,
            };
            match api.create(&kube::api::PostParams::default(), &object).await {
                Ok(_) => info!(class = %class, "GatewayClass created"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => warn!(class = %class, error = %e, "cannot create the GatewayClass"),
            }
        }
    }

    /// Apply each managed Gateway's ServiceAccount, Deployment and Service when they differ
    /// from what was applied last. A deleted Gateway's objects are left to Kubernetes'
    /// garbage collector (they are owned by it).
    async fn deploy_gateways(&mut self) {
        let Some(render) = self.options.deploy_gateways.clone() else {
            return;
        };
        let mut seen = BTreeSet::new();
        let mut applies = Vec::new();
        for (path, t) in &self.objects {
            let ar = &self.kinds[t.kind].ar;
            if ar.group != gateway_status::GROUP || ar.kind != "Gateway" {
                continue;
            }
            let Ok(value) = serde_json::from_str::<Value>(&t.text) else {
                continue;
            };
            if !gateway_deploy::is_managed(&value) {
                continue;
            }
            seen.insert(path.clone());
            let gw = gateway_deploy::GatewayRef {
                namespace: t.namespace.as_deref().unwrap_or("default"),
                name: &t.name,
                uid: t.uid.as_deref(),
                value: &value,
            };
            match gateway_deploy::desired(&gw, &render) {
                Ok(objects) => {
                    if self.deployed.get(path) != Some(&objects) {
                        applies.push((path.clone(), objects));
                    }
                }
                Err(e) => warn!(gateway = %path.display(), error = %e, "cannot deploy the gateway"),
            }
        }
        self.deployed.retain(|p, _| seen.contains(p));
        for (path, objects) in applies {
            let mut ok = true;
            for object in &objects {
                if let Err(e) = apply_owned(&self.client, object).await {
                    warn!(
                        gateway = %path.display(),
                        kind = %object["kind"].as_str().unwrap_or_default(),
                        error = %e,
                        "cannot apply the gateway's deployment; retried after the next change"
                    );
                    ok = false;
                    break;
                }
            }
            if ok {
                info!(gateway = %path.display(), "gateway deployment applied");
                self.deployed.insert(path, objects);
            }
        }
    }

    /// Make every Gateway API object of Mast's classes show Istio's status (see
    /// [`gateway_status`]); only what differs (times aside) is written.
    async fn write_gateway_status(&mut self) {
        let values: Vec<(PathBuf, Value)> = self
            .objects
            .iter()
            .filter(|(_, t)| self.kinds[t.kind].gateway_status)
            .filter_map(|(p, t)| Some((p.clone(), serde_json::from_str(&t.text).ok()?)))
            .collect();
        let objects: Vec<gateway_status::Object<'_>> = values
            .iter()
            .filter_map(|(p, v)| {
                let t = self.objects.get(p)?;
                Some(gateway_status::Object {
                    kind: &self.kinds[t.kind].ar.kind,
                    namespace: t.namespace.as_deref().unwrap_or(""),
                    name: &t.name,
                    generation: t.generation,
                    value: v,
                })
            })
            .collect();
        let exposure: BTreeMap<String, gateway_status::Exposure> = self
            .objects
            .values()
            .filter_map(|t| {
                let ns = t.namespace.as_deref()?;
                Some((
                    format!("{}.{ns}.svc.cluster.local", t.name),
                    t.exposure.clone()?,
                ))
            })
            .collect();
        let model = self.store.model();
        let wanted = gateway_status::compute(&objects, &model, &exposure);
        let paths: BTreeMap<(&str, &str, &str), &PathBuf> = values
            .iter()
            .zip(&objects)
            .map(|((p, _), o)| ((o.kind, o.namespace, o.name), p))
            .collect();
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
        let mut writes: Vec<(PathBuf, Value)> = Vec::new();
        let mut routes_with_ours: BTreeSet<&PathBuf> = BTreeSet::new();
        for w in &wanted {
            let Some(path) = paths.get(&(w.kind.as_str(), w.namespace.as_str(), w.name.as_str()))
            else {
                continue;
            };
            let Some(t) = self.objects.get(*path) else {
                continue;
            };
            let route = gateway_status::ROUTE_KINDS.contains(&w.kind.as_str());
            if route {
                routes_with_ours.insert(path);
                let current = gateway_status::our_parents(&t.status);
                if gateway_status::strip_times(&current) != w.status["parents"] {
                    let mut ours = w.status.clone();
                    gateway_status::stamp(&mut ours, &t.status, &now);
                    let body = gateway_status::merge_route_parents(&t.status, &ours);
                    writes.push(((*path).clone(), body));
                }
            } else {
                let mut current = serde_json::Map::new();
                for key in ["conditions", "listeners", "addresses"] {
                    if let Some(v) = t.status.get(key) {
                        current.insert(key.into(), v.clone());
                    }
                }
                let current = Value::Object(current);
                if gateway_status::strip_times(&current) != w.status {
                    let mut body = w.status.clone();
                    gateway_status::stamp(&mut body, &t.status, &now);
                    if w.kind == "Gateway" && body.get("addresses").is_none() {
                        // A merge patch removes only what it names.
                        body["addresses"] = Value::Null;
                    }
                    writes.push(((*path).clone(), body));
                }
            }
        }
        // A route that no longer names a Gateway of Mast's loses Mast's parents entries.
        for (path, t) in &self.objects {
            let kind = self.kinds[t.kind].ar.kind.as_str();
            if self.kinds[t.kind].gateway_status
                && gateway_status::ROUTE_KINDS.contains(&kind)
                && !routes_with_ours.contains(path)
                && gateway_status::our_parents(&t.status)
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            {
                let body = gateway_status::merge_route_parents(&t.status, &json!({"parents": []}));
                writes.push((path.clone(), body));
            }
        }
        for (path, body) in writes {
            let Some(t) = self.objects.get(&path) else {
                continue;
            };
            let ar = &self.kinds[t.kind].ar;
            match status::write_status(
                &self.client,
                ar,
                t.namespace.as_deref(),
                &t.name,
                &json!({ "status": body }),
            )
            .await
            {
                Ok(object) => {
                    info!(resource = %path.display(), "Gateway API status written");
                    let shown = serde_json::to_value(&object)
                        .ok()
                        .and_then(|v| v.get("status").cloned())
                        .unwrap_or(Value::Null);
                    if let Some(t) = self.objects.get_mut(&path) {
                        // What the object shows now; the watch echo agrees.
                        t.status = shown;
                    }
                }
                Err(e) => {
                    warn!(resource = %path.display(), error = %e, "cannot write Gateway API status")
                }
            }
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Server-side apply one object of a Gateway's deployment (ServiceAccount, Deployment or
/// Service), forcing Mast's ownership of the fields it sets, as a controller does — unless an
/// object of that name exists that this controller did not create (istiod's `canManage`).
async fn apply_owned(client: &kube::Client, object: &Value) -> Result<(), kube::Error> {
    let ar = match object["kind"].as_str() {
        Some("Deployment") => ApiResource::erase::<Deployment>(&()),
        Some("Service") => ApiResource::erase::<Service>(&()),
        _ => ApiResource::erase::<ServiceAccount>(&()),
    };
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let existing = api
        .get_opt(name)
        .await?
        .and_then(|o| serde_json::to_value(o).ok());
    if !gateway_deploy::may_take(existing.as_ref()) {
        warn!(
            namespace = %ns,
            name = %name,
            kind = %ar.kind,
            "an object of that name exists without the gateway.istio.io/managed label: left alone"
        );
        return Ok(());
    }
    api.patch(
        name,
        &PatchParams::apply(gateway_deploy::FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map(|_| ())
}

/// The built-in kinds, always served (discovery.k8s.io/v1 since Kubernetes 1.21), and the mesh kinds this cluster has CRDs for.
async fn discover(client: &kube::Client) -> Result<Vec<Watched>, Error> {
    let mut kinds = vec![
        core(ApiResource::erase::<Namespace>(&()), false),
        core(ApiResource::erase::<Service>(&()), true),
        core(ApiResource::erase::<Pod>(&()), true),
        core(ApiResource::erase::<EndpointSlice>(&()), true),
        core(ApiResource::erase::<Secret>(&()), true),
        // MeshConfig, read as istiod reads it (mesh-config's `dialect::mesh_config`).
        Watched {
            only: Some((
                mast_mesh_config::dialect::kube::ROOT_NAMESPACE,
                mast_mesh_config::dialect::kube::MESH_CONFIGMAP,
            )),
            ..core(ApiResource::erase::<ConfigMap>(&()), true)
        },
    ];
    let groups: Vec<&str> = MESH_KINDS.iter().map(|(g, _)| *g).collect();
    let discovery = Discovery::new(client.clone())
        .filter(&groups)
        .run()
        .await
        .map_err(Error::Discovery)?;
    for (group, wanted) in MESH_KINDS {
        let Some(api_group) = discovery.get(group) else {
            warn!(
                group = %group,
                kinds = %wanted.join(","),
                "API group not served (CRDs not installed); its kinds are skipped"
            );
            continue;
        };
        for kind in *wanted {
            match api_group.recommended_kind(kind) {
                Some((ar, caps)) => {
                    let has_status = caps.subresources.iter().any(|(s, _)| s.plural == "status");
                    kinds.push(Watched {
                        writes_status: has_status && status::writes_status(&ar),
                        gateway_status: has_status && ar.group == gateway_status::GROUP,
                        namespaced: matches!(caps.scope, Scope::Namespaced),
                        ar,
                        only: None,
                    });
                }
                None => {
                    warn!(group = %group, kind = %kind, "kind not served (CRD not installed); skipped")
                }
            }
        }
    }
    Ok(kinds)
}

fn core(ar: ApiResource, namespaced: bool) -> Watched {
    Watched {
        ar,
        namespaced,
        writes_status: false,
        gateway_status: false,
        only: None,
    }
}

fn spawn_watch(
    client: &kube::Client,
    index: usize,
    w: &Watched,
    tx: mpsc::Sender<WatchItem>,
) -> tokio::task::JoinHandle<()> {
    let (api, config) = match w.only {
        Some((namespace, name)) => (
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &w.ar),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        ),
        None => (
            Api::all_with(client.clone(), &w.ar),
            watcher::Config::default(),
        ),
    };
    let stream = watcher::watcher(api, config).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if tx.send((index, event)).await.is_err() {
                return;
            }
        }
    })
}

/// `kube:/<group>/<Kind>/<namespace>/<name>` (group `core` for v1; no namespace segment for
/// cluster-scoped kinds): what errors and logs name as the "file".
pub fn pseudo_path(ar: &ApiResource, namespace: Option<&str>, name: &str) -> PathBuf {
    let group = if ar.group.is_empty() {
        "core"
    } else {
        &ar.group
    };
    match namespace {
        Some(ns) => format!("kube:/{group}/{}/{ns}/{name}", ar.kind),
        None => format!("kube:/{group}/{}/{name}", ar.kind),
    }
    .into()
}

/// Turn an API object into the document the parsers read: TypeMeta filled in (items of a
/// built-in kind's list come without it), server bookkeeping that only adds noise dropped,
/// and `status` dropped except a Pod's (its IP is the workload's address) — a mesh resource's
/// status is ours to write and must not make its text differ.
fn prepare(value: &mut Value, ar: &ApiResource) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    map.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
    map.insert("kind".into(), Value::String(ar.kind.clone()));
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        for noise in [
            "managedFields",
            "resourceVersion",
            "creationTimestamp",
            "uid",
            "generation",
        ] {
            meta.remove(noise);
        }
        if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            // kubectl's copy of the whole object: large, and not the object.
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if ar.group.is_empty() && ar.kind == "Pod" {
        keep_pod_fields(map);
    } else if ar.group.is_empty() && ar.kind == "Secret" {
        keep_certificate_fields(map);
    } else {
        map.remove("status");
    }
}

/// The keys of a Secret the mesh reads: a certificate, its key and a CA bundle, under
/// Kubernetes' `kubernetes.io/tls` names or Istio's generic ones (any Secret type, as istiod).
pub const CERTIFICATE_KEYS: &[&str] = &["tls.crt", "tls.key", "ca.crt", "cert", "key", "cacert"];

/// A Secret reduced to its certificate keys. Every Secret of the cluster is watched (a Gateway
/// may name any of them, and may be created after it), but service-account tokens, Helm
/// releases, passwords and the like are nothing the mesh reads: dropping them here keeps them
/// out of mastd's memory (the store keeps each object's text) and out of every error message.
/// Labels and annotations go too, so that relabelling a Secret changes no text.
fn keep_certificate_fields(map: &mut serde_json::Map<String, Value>) {
    map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "data"));
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace"));
    }
    if let Some(Value::Object(data)) = map.get_mut("data") {
        data.retain(|k, _| CERTIFICATE_KEYS.contains(&k.as_str()));
    }
}

/// A Pod reduced to what makes it a workload (labels and annotations in `metadata`, service
/// account, named container ports, IP). Pods are most of a cluster's objects and their status
/// changes all the time (probes, restarts, conditions); text that changes only when the
/// workload does keeps every pod update from rebuilding the model, and keeps the store small.
fn keep_pod_fields(map: &mut serde_json::Map<String, Value>) {
    if let Some(Value::Object(spec)) = map.get_mut("spec") {
        spec.retain(|k, _| {
            matches!(
                k.as_str(),
                "serviceAccountName" | "containers" | "hostNetwork"
            )
        });
        if let Some(Value::Array(containers)) = spec.get_mut("containers") {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                c.retain(|k, _| matches!(k.as_str(), "name" | "ports"));
            }
        }
    }
    if let Some(Value::Object(status)) = map.get_mut("status") {
        status.retain(|k, _| matches!(k.as_str(), "podIP" | "podIPs" | "phase"));
        // A finished pod (a Job's) keeps its IP in status after the IP went back to the pool
        // and maybe to another pod: it is no workload any more, as for Istio's endpoints.
        if matches!(
            status.get("phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        ) {
            status.remove("podIP");
            status.remove("podIPs");
        }
    }
}

#[cfg(test)]
mod api_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_fills_type_meta_and_drops_noise() {
        let ar = ApiResource::erase::<Service>(&());
        let mut v = json!({
            "metadata": {"name": "user", "namespace": "default", "resourceVersion": "7",
                         "managedFields": [{}], "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "a": "b"}},
            "spec": {"ports": [{"port": 80}]},
            "status": {"loadBalancer": {}},
        });
        prepare(&mut v, &ar);
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Service");
        assert!(v.get("status").is_none());
        assert_eq!(
            v["metadata"],
            json!({"name": "user", "namespace": "default", "annotations": {"a": "b"}})
        );

        let mut pod = json!({
            "metadata": {"name": "p", "labels": {"app": "a"}},
            "spec": {"serviceAccountName": "a", "nodeName": "n1", "volumes": [{}],
                     "containers": [{"name": "a", "image": "a:1", "env": [{}], "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"podIP": "10.0.0.1", "phase": "Running", "conditions": [{"type": "Ready"}],
                       "containerStatuses": [{"restartCount": 3}]},
        });
        prepare(&mut pod, &ApiResource::erase::<Pod>(&()));
        assert_eq!(
            pod,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "labels": {"app": "a"}},
                "spec": {"serviceAccountName": "a", "containers": [{"name": "a", "ports": [{"name": "http", "containerPort": 80}]}]},
                "status": {"podIP": "10.0.0.1", "phase": "Running"},
            })
        );
    }

    #[test]
    fn a_finished_pod_is_no_workload() {
        let mut pod = json!({"metadata": {"name": "job-x"}, "status": {"phase": "Succeeded", "podIP": "10.0.0.9"}});
        prepare(&mut pod, &ApiResource::erase::<Pod>(&()));
        assert_eq!(pod["status"], json!({"phase": "Succeeded"}));
    }

    #[test]
    fn pseudo_paths_name_group_kind_namespace_and_name() {
        let vs = ApiResource {
            group: "networking.istio.io".into(),
            version: "v1".into(),
            api_version: "networking.istio.io/v1".into(),
            kind: "VirtualService".into(),
            plural: "virtualservices".into(),
        };
        assert_eq!(
            pseudo_path(&vs, Some("default"), "user"),
            PathBuf::from("kube:/networking.istio.io/VirtualService/default/user")
        );
        assert_eq!(
            pseudo_path(&ApiResource::erase::<Namespace>(&()), None, "default"),
            PathBuf::from("kube:/core/Namespace/default")
        );
    }
}
