//! An in-process fake Kubernetes API server, for testing the kube-rs code paths without a
//! cluster.
//!
//! The point is to test what a real API server does to a client, not what a mock is told to
//! say, so responses follow the Kubernetes API conventions (api-concepts: "Efficient detection
//! of changes", "Watch bookmarks", "410 Gone responses"):
//! - lists carry `metadata.resourceVersion` and come in pages (`limit`, `continue`); the
//!   items of a built-in kind's list carry no `kind`/`apiVersion` (only custom resources'
//!   do), as the real server encodes them;
//! - `?watch=true&resourceVersion=N` streams newline-delimited `WatchEvent`s (`ADDED`,
//!   `MODIFIED`, `DELETED`) for every change after N and stays open; with
//!   `allowWatchBookmarks=true` a `BOOKMARK` carrying the current resourceVersion follows the
//!   replay;
//! - [`FakeApiServer::expire_watches`] compacts history: open watches get an `ERROR` event
//!   with a `410 Expired` Status and close, and any watch from an older resourceVersion gets
//!   the same, so a client must relist;
//! - discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`) lists the registered
//!   kinds, with their `status` subresource; a kind never registered is a missing CRD;
//! - `PATCH …/<name>/status` (merge patch) changes only `status`, bumps the resourceVersion,
//!   is seen by watches, and is recorded for assertions;
//! - `POST` on a collection creates (409 AlreadyExists), `PUT` on an object replaces it with
//!   optimistic concurrency on `metadata.resourceVersion` (409 Conflict), as a Lease needs;
//! - `PATCH` on an object: server-side apply (`application/apply-patch+yaml`, `fieldManager`
//!   required, creates the object when missing, answers the stored object unchanged, with the
//!   same resourceVersion, when the apply changes nothing), JSON merge patch, and strategic
//!   merge patch served as a merge patch (lists are replaced whole); `?dryRun=All` answers
//!   without storing. Field ownership is not tracked: applies never conflict, and a field an
//!   earlier apply set and a later one leaves out is kept, not removed;
//! - `DELETE` on an object answers the deleted object (404 NotFound when there is none);
//! - a CustomResourceDefinition, once stored, serves its kind (discovery, lists, watches) and
//!   gets `NamesAccepted` and `Established` conditions, unless
//!   [`FakeApiServer::hold_crds`] delays that; deleting it deletes its objects and stops
//!   serving the kind.
//!
//! - open watch streams are counted per collection ([`FakeApiServer::open_watches`]): a
//!   watcher opens its watch only after handing out its list, so a test that changes how the
//!   server answers waits for the watch first instead of racing it;
//! - `fieldSelector=metadata.name=<name>` narrows lists and watches (the only field selector
//!   served, the one kube-rs' watchers of one object use).
//!
//! It is HTTP/1.1 on `127.0.0.1:0`; a [`kube::Client`] from [`FakeApiServer::client`] talks to
//! it like to any cluster. This crate's own tests on paused time use an in-memory client of
//! the same server instead (`memory_client`), so no socket wake-up races a timer. Other
//! requests can be answered with a canned response ([`FakeApiServer::respond`]; lists only,
//! watches served as usual: [`FakeApiServer::respond_to_lists`]) or by a hook
//! that sees each request first ([`FakeApiServer::hook`]): a TokenReview per token, an
//! injected failure. Objects can be read and written by API path as well as by kind
//! ([`FakeApiServer::get_at`], [`FakeApiServer::put_at`], [`FakeApiServer::delete_at`]).
//!
//! This is the crate's one fake API server: the writing pieces' tests (CA Secret, Lease,
//! TokenReview, trust bundle, webhook caBundle) and the reading ones' share it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// The body every response of the fake server has.
type Body = BoxBody<Bytes, Infallible>;

/// A test's own answer to a request: `(method, path, JSON body or null)` → `Some((code,
/// body))` to answer, `None` to let the server answer.
type Hook = Box<dyn FnMut(&Method, &str, &Value) -> Option<(u16, Value)> + Send>;

/// A kind the fake server serves (a built-in kind, or an installed CRD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindSpec {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The URL segment: `virtualservices`.
    pub plural: String,
    pub namespaced: bool,
}

impl KindSpec {
    /// A namespaced kind.
    pub fn namespaced(group: &str, version: &str, kind: &str, plural: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced: true,
        }
    }

    /// A cluster-scoped kind.
    pub fn cluster(group: &str, version: &str, kind: &str, plural: &str) -> Self {
        Self {
            namespaced: false,
            ..Self::namespaced(group, version, kind, plural)
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn is_core(&self) -> bool {
        self.group.is_empty()
    }
}

/// A PATCH the server received on a status subresource.
#[derive(Clone, Debug)]
pub struct RecordedPatch {
    pub path: String,
    pub content_type: String,
    pub body: Value,
}

/// The fake server; it stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// The cluster-wide resourceVersion (etcd's revision).
    revision: u64,
    kinds: Vec<Kind>,
    requests: Vec<String>,
    patches: Vec<RecordedPatch>,
    canned: BTreeMap<(String, String), (u16, Value)>,
    /// Canned answers to lists (`GET` without `watch`) of a collection path only.
    canned_lists: BTreeMap<String, (u16, Value)>,
    /// Watch streams open now, per kind index.
    open_watches: BTreeMap<usize, usize>,
    /// Asked first about every request (see [`FakeApiServer::hook`]).
    hook: Option<Hook>,
    /// CRDs are stored without the Established condition until `establish_crds`.
    hold_crds: bool,
}

struct Kind {
    spec: KindSpec,
    objects: BTreeMap<(String, String), Value>,
    /// `(revision, type, object)` of every change since `compacted`.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a revision below this get 410 Gone.
    compacted: u64,
    /// Bumped by `expire_watches`: open watches of an older epoch end with 410.
    epoch: u64,
    /// False once its CRD is deleted (kept in place: watches hold its index).
    served: bool,
}

// === impl FakeApiServer ===

impl FakeApiServer {
    /// Start serving, with Namespaces, Services, Pods, Secrets, ConfigMaps (core v1) and
    /// EndpointSlices (discovery.k8s.io/v1) registered, as every cluster serves them.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            revision: 100,
            ..State::default()
        }));
        let (changed, _) = broadcast::channel(1024);
        let server = Self {
            addr,
            state: state.clone(),
            changed: changed.clone(),
            task: tokio::spawn(serve(listener, state, changed)),
        };
        server.add_kind(KindSpec::cluster("", "v1", "Namespace", "namespaces"));
        server.add_kind(KindSpec::namespaced("", "v1", "Service", "services"));
        server.add_kind(KindSpec::namespaced("", "v1", "Pod", "pods"));
        server.add_kind(KindSpec::namespaced("", "v1", "Secret", "secrets"));
        server.add_kind(KindSpec::namespaced("", "v1", "ConfigMap", "configmaps"));
        server.add_kind(KindSpec::namespaced(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
        ));
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of this server (namespace `default`).
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().unwrap_or_default());
        config.default_namespace = "default".into();
        // A plain-HTTP config cannot fail to build a client.
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("fake API client: {e}"))
    }

    /// Serve `spec` (install its CRD). Serving a kind twice is a no-op.
    pub fn add_kind(&self, spec: KindSpec) {
        self.lock().add_kind(spec);
    }

    /// The kinds a real cluster serves that Mast writes: ServiceAccounts, ConfigMaps,
    /// Secrets, RBAC, Deployments, Leases, PodDisruptionBudgets, webhook configurations and
    /// CustomResourceDefinitions (Namespaces, Services and Pods are always served).
    pub fn add_builtin_kinds(&self) {
        for spec in [
            KindSpec::namespaced("", "v1", "ServiceAccount", "serviceaccounts"),
            KindSpec::namespaced("", "v1", "ConfigMap", "configmaps"),
            KindSpec::namespaced("", "v1", "Secret", "secrets"),
            KindSpec::cluster(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
            ),
            KindSpec::cluster(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
            ),
            KindSpec::namespaced("rbac.authorization.k8s.io", "v1", "Role", "roles"),
            KindSpec::namespaced(
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
            ),
            KindSpec::namespaced("apps", "v1", "Deployment", "deployments"),
            KindSpec::namespaced("coordination.k8s.io", "v1", "Lease", "leases"),
            KindSpec::namespaced(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
            ),
            KindSpec::cluster(
                "admissionregistration.k8s.io",
                "v1",
                "MutatingWebhookConfiguration",
                "mutatingwebhookconfigurations",
            ),
            KindSpec::cluster(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
            ),
        ] {
            self.add_kind(spec);
        }
    }

    /// Store CRDs without the `Established` condition (as a busy API server takes a while to
    /// serve a new kind), until [`establish_crds`](Self::establish_crds).
    pub fn hold_crds(&self) {
        self.lock().hold_crds = true;
    }

    /// Give every stored CRD its `Established` condition now (watches see `MODIFIED`), and
    /// establish the ones stored later at once again.
    pub fn establish_crds(&self) {
        let mut state = self.lock();
        state.hold_crds = false;
        let crds: Vec<Value> = state
            .kind_mut("apiextensions.k8s.io/v1", "CustomResourceDefinition")
            .map(|k| k.objects.values().cloned().collect())
            .unwrap_or_default();
        for mut crd in crds {
            crd["status"] = crd_status(&crd, true);
            put(&mut state, crd, true);
        }
        drop(state);
        let _ = self.changed.send(());
    }

    /// Create or replace an object (its `apiVersion`/`kind` must be served): watches see
    /// `ADDED` or `MODIFIED`. Returns its new resourceVersion. Server-owned metadata
    /// (resourceVersion, uid, generation, creationTimestamp, managedFields) is filled in; an
    /// object given without `status` keeps the one it had, as through a status subresource.
    pub fn apply(&self, object: Value) -> u64 {
        self.store(object, true)
    }

    /// [`apply`](Self::apply) without telling any watch: the change is only seen by a list,
    /// as when a client missed events whose history was compacted.
    pub fn apply_unwatched(&self, object: Value) -> u64 {
        self.store(object, false)
    }

    /// Delete an object; watches see `DELETED`. False when there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let mut state = self.lock();
        let Some(index) = state.kind_index(api_version, kind) else {
            return false;
        };
        let removed = remove(&mut state, index, namespace, name).is_some();
        drop(state);
        if removed {
            let _ = self.changed.send(());
        }
        removed
    }

    /// Compact history: every open watch gets a `410 Expired` ERROR event and is closed, and
    /// a new watch from any resourceVersion seen so far gets the same. Clients must relist.
    pub fn expire_watches(&self) {
        let mut state = self.lock();
        state.revision += 1;
        let revision = state.revision;
        for k in &mut state.kinds {
            k.history.clear();
            k.compacted = revision;
            k.epoch += 1;
        }
        drop(state);
        let _ = self.changed.send(());
    }

    /// Answer `method path` (path without query) with `status` and `body` from now on. This
    /// answers every such request, watches of a collection included: to fail only the lists
    /// a watcher makes (its relist), use [`respond_to_lists`](Self::respond_to_lists).
    pub fn respond(&self, method: Method, path: &str, status: u16, body: Value) {
        self.lock()
            .canned
            .insert((method.to_string(), path.to_string()), (status, body));
    }

    /// Answer the lists of the collection at `path` (a `GET` without `watch=true`) with
    /// `status` and `body` from now on; watches of it are served as before. A watcher that is
    /// made to relist (see [`expire_watches`](Self::expire_watches)) then fails its list and
    /// retries it, while a watch it opens meanwhile is not turned into an error of another
    /// kind.
    pub fn respond_to_lists(&self, path: &str, status: u16, body: Value) {
        self.lock()
            .canned_lists
            .insert(path.to_string(), (status, body));
    }

    /// How many watch streams of the collection `plural` (any group, any namespace) are open
    /// now. A client's watcher issues its watch only after its list is handed out, so a test
    /// that must not race the watch being opened waits for this first.
    pub fn open_watches(&self, plural: &str) -> usize {
        let st = self.lock();
        st.kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| k.spec.plural == plural)
            .map(|(i, _)| st.open_watches.get(&i).copied().unwrap_or(0))
            .sum()
    }

    /// Answer requests with `hook` first (`Some((code, body))`), else as before: for answers
    /// that depend on the request (a TokenReview) or count (an injected failure, then
    /// success). Replaces an earlier hook.
    pub fn hook(
        &self,
        hook: impl FnMut(&Method, &str, &Value) -> Option<(u16, Value)> + Send + 'static,
    ) {
        self.lock().hook = Some(Box::new(hook));
    }

    /// The object at an API path (`/api/v1/namespaces/ns/configmaps/name`).
    pub fn get_at(&self, path: &str) -> Option<Value> {
        let st = self.lock();
        match route(&st, path)? {
            Target::Object {
                kind,
                namespace,
                name,
                ..
            } => st.kinds[kind].objects.get(&(namespace, name)).cloned(),
            Target::Collection { .. } => None,
        }
    }

    /// Create or replace the object at an API path, as another client would (its
    /// apiVersion, kind, name and namespace are the path's).
    pub fn put_at(&self, path: &str, mut object: Value) {
        let st = self.lock();
        let Some(Target::Object {
            kind,
            namespace,
            name,
            ..
        }) = route(&st, path)
        else {
            panic!("fake API server: {path} names no object of a served kind");
        };
        let spec = st.kinds[kind].spec.clone();
        drop(st);
        object["apiVersion"] = json!(spec.api_version());
        object["kind"] = json!(spec.kind);
        set_meta(&mut object, "name", json!(name));
        if spec.namespaced {
            set_meta(&mut object, "namespace", json!(namespace));
        }
        self.apply(object);
    }

    /// Delete the object at an API path, as another client would. False when there was none.
    pub fn delete_at(&self, path: &str) -> bool {
        let mut st = self.lock();
        let Some(Target::Object {
            kind,
            namespace,
            name,
            ..
        }) = route(&st, path)
        else {
            return false;
        };
        let removed = remove(&mut st, kind, &namespace, &name).is_some();
        drop(st);
        if removed {
            let _ = self.changed.send(());
        }
        removed
    }

    /// A server with [`add_builtin_kinds`](Self::add_builtin_kinds), and a
    /// [`memory_client`](Self::memory_client) of it: what the writing pieces' tests use.
    #[cfg(test)]
    pub(crate) async fn start_in_memory() -> (kube::Client, Self) {
        let server = match Self::start().await {
            Ok(server) => server,
            Err(e) => panic!("fake API server: {e}"),
        };
        server.add_builtin_kinds();
        (server.memory_client(), server)
    }

    /// A client that reaches this server in memory, not over TCP (namespace `mast-system`):
    /// for tests on paused time, where a socket's wake-up could come after a timer's.
    #[cfg(test)]
    pub(crate) fn memory_client(&self) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let (state, changed) = (self.state.clone(), self.changed.clone());
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                send.send_response(answer(&parts, &body, state.clone(), changed.clone()));
            }
        });
        kube::Client::new(service, "mast-system")
    }

    /// Forget every canned response.
    pub fn clear_responses(&self) {
        let mut st = self.lock();
        st.canned.clear();
        st.canned_lists.clear();
    }

    /// The object as the server holds it now.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut state = self.lock();
        let k = state.kind_mut(api_version, kind)?;
        let ns = if k.spec.namespaced { namespace } else { "" };
        k.objects.get(&(ns.to_string(), name.to_string())).cloned()
    }

    /// Every status PATCH received so far.
    pub fn status_patches(&self) -> Vec<RecordedPatch> {
        self.lock().patches.clone()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// How many list (not watch) requests reached `plural`'s collection.
    pub fn list_count(&self, plural: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| {
                r.starts_with("GET ")
                    && !r.contains("watch=")
                    && r.split('?')
                        .next()
                        .is_some_and(|p| p.ends_with(&format!("/{plural}")))
            })
            .count()
    }

    fn store(&self, object: Value, notify: bool) -> u64 {
        let mut state = self.lock();
        let Some(stored) = put(&mut state, object, notify) else {
            panic!("fake API server: the object's apiVersion/kind is not served (add_kind first)");
        };
        drop(state);
        if notify {
            let _ = self.changed.send(());
        }
        resource_version(&stored)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn resource_version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Store an object as the server does (bookkeeping metadata filled in); `None` when its kind
/// is not served.
fn put(state: &mut State, object: Value, notify: bool) -> Option<Value> {
    put_as(state, object, notify, "kubectl-client-side-apply", "Update")
}

/// [`put`], recording `manager` and `operation` in `managedFields`.
fn put_as(
    state: &mut State,
    mut object: Value,
    notify: bool,
    manager: &str,
    operation: &str,
) -> Option<Value> {
    {
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        state.revision += 1;
        let revision = state.revision;
        let k = state.kind_mut(&api_version, &kind)?;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = if k.spec.namespaced {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            set_meta(&mut object, "namespace", json!(ns));
            ns
        } else {
            String::new()
        };
        let key = (ns, name.clone());
        let old = k.objects.get(&key);
        let generation = match old {
            None => 1,
            Some(old) => {
                let g = old["metadata"]["generation"].as_u64().unwrap_or(1);
                if old.get("spec") == object.get("spec") {
                    g
                } else {
                    g + 1
                }
            }
        };
        let uid = old
            .and_then(|o| o["metadata"]["uid"].as_str())
            .map(String::from)
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{revision:012}"));
        // As with a status subresource, writing the object does not reset its status (an
        // object given with a `status` sets it: fixtures stand in for the kubelet too).
        if object.get("status").is_none()
            && let Some(status) = old.and_then(|o| o.get("status"))
        {
            object["status"] = status.clone();
        }
        let is_crd =
            k.spec.group == "apiextensions.k8s.io" && k.spec.kind == "CustomResourceDefinition";
        let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        set_meta(&mut object, "resourceVersion", json!(revision.to_string()));
        set_meta(&mut object, "uid", json!(uid));
        set_meta(&mut object, "generation", json!(generation));
        set_meta(
            &mut object,
            "creationTimestamp",
            json!("2026-01-01T00:00:00Z"),
        );
        set_meta(
            &mut object,
            "managedFields",
            json!([{
                "manager": manager,
                "operation": operation,
                "apiVersion": api_version,
                "time": "2026-01-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {}},
            }]),
        );
        if is_crd && object.get("status").is_none() {
            object["status"] = crd_status(&object, !state.hold_crds);
        }
        let k = state.kind_mut(&api_version, &kind)?;
        k.objects.insert(key, object.clone());
        if notify {
            k.history.push((revision, event, object.clone()));
        }
        if is_crd {
            for spec in crd_kinds(&object) {
                state.add_kind(spec);
            }
        }
        Some(object)
    }
}

/// The kinds a CRD serves: one per served version.
fn crd_kinds(crd: &Value) -> Vec<KindSpec> {
    let spec = &crd["spec"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .map(|v| KindSpec {
            group: text(&spec["group"]),
            version: text(&v["name"]),
            kind: text(&spec["names"]["kind"]),
            plural: text(&spec["names"]["plural"]),
            namespaced: spec["scope"] != "Cluster",
        })
        .collect()
}

/// A CRD's status as the apiextensions controller writes it.
fn crd_status(crd: &Value, established: bool) -> Value {
    let condition = |kind: &str, status: bool, reason: &str| {
        json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "reason": reason,
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        })
    };
    json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["storage"].as_bool().unwrap_or(false))
            .map(|v| v["name"].clone())
            .collect::<Vec<_>>(),
        "conditions": [
            condition("NamesAccepted", true, "NoConflicts"),
            if established {
                condition("Established", true, "InitialNamesAccepted")
            } else {
                condition("Established", false, "Installing")
            },
        ],
    })
}

/// Remove an object (watches see `DELETED`); removing a CRD removes its objects and stops
/// serving its kinds. The removed object, `None` when there was none.
fn remove(state: &mut State, kind: usize, namespace: &str, name: &str) -> Option<Value> {
    state.revision += 1;
    let revision = state.revision;
    let k = &mut state.kinds[kind];
    let ns = if k.spec.namespaced { namespace } else { "" };
    let mut object = k.objects.remove(&(ns.to_string(), name.to_string()))?;
    set_meta(&mut object, "resourceVersion", json!(revision.to_string()));
    k.history.push((revision, "DELETED", object.clone()));
    let is_crd =
        k.spec.group == "apiextensions.k8s.io" && k.spec.kind == "CustomResourceDefinition";
    if is_crd {
        let served = crd_kinds(&object);
        for k in state
            .kinds
            .iter_mut()
            .filter(|k| k.served && served.contains(&k.spec))
        {
            k.served = false;
            let objects = std::mem::take(&mut k.objects);
            for (_, mut o) in objects {
                set_meta(&mut o, "resourceVersion", json!(revision.to_string()));
                k.history.push((revision, "DELETED", o));
            }
        }
    }
    Some(object)
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_meta(object: &mut Value, key: &str, value: Value) {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"][key] = value;
}

// === the HTTP side ===

impl State {
    fn kind_index(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.served && k.spec.api_version() == api_version && k.spec.kind == kind)
    }

    fn kind_mut(&mut self, api_version: &str, kind: &str) -> Option<&mut Kind> {
        let index = self.kind_index(api_version, kind)?;
        Some(&mut self.kinds[index])
    }

    /// Serve `spec`; serving a kind twice is a no-op, serving a deleted CRD's kind again
    /// revives it.
    fn add_kind(&mut self, spec: KindSpec) {
        if let Some(k) = self.kinds.iter_mut().find(|k| k.spec == spec) {
            k.served = true;
            return;
        }
        self.kinds.push(Kind {
            spec,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted: 0,
            epoch: 0,
            served: true,
        });
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<()>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let changed = changed.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let changed = changed.clone();
                async move { Ok::<_, Infallible>(handle(req, state, changed).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What a request path names.
enum Target {
    Collection {
        kind: usize,
        namespace: Option<String>,
    },
    Object {
        kind: usize,
        namespace: String,
        name: String,
        status: bool,
    },
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<()>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    answer(&parts, &body, state, changed)
}

/// The answer to one request, whichever transport brought it.
fn answer(
    parts: &http::request::Parts,
    body: &Bytes,
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<()>,
) -> Response<Body> {
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut st = lock(&state);
    st.requests.push(match req_query(&query) {
        q if q.is_empty() => format!("{method} {path}"),
        q => format!("{method} {path}?{q}"),
    });
    if let Some(hook) = st.hook.as_mut() {
        let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        if let Some((code, answer)) = hook(&method, &path, &value) {
            return json_response(code, &answer);
        }
    }
    if let Some((code, body)) = st.canned.get(&(method.to_string(), path.clone())) {
        return json_response(*code, body);
    }
    let is_watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if method == Method::GET
        && !is_watch
        && let Some((code, body)) = st.canned_lists.get(&path)
    {
        return json_response(*code, body);
    }
    if method == Method::GET
        && let Some(doc) = discovery(&st, &path)
    {
        return json_response(200, &doc);
    }
    let Some(target) = route(&st, &path) else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    match (method, target) {
        (Method::GET, Target::Collection { kind, namespace }) => {
            if is_watch {
                *st.open_watches.entry(kind).or_default() += 1;
                drop(st);
                watch(state, changed, kind, namespace, &query)
            } else {
                json_response(200, &list(&st, kind, namespace.as_deref(), &query))
            }
        }
        (
            Method::GET,
            Target::Object {
                kind,
                namespace,
                name,
                ..
            },
        ) => match st.kinds[kind].objects.get(&(namespace, name.clone())) {
            Some(o) => json_response(200, o),
            None => not_found(&st.kinds[kind].spec, &name),
        },
        (Method::POST, Target::Collection { kind, namespace }) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the object is not JSON");
            };
            if let Some(ns) = namespace {
                set_meta(&mut object, "namespace", json!(ns));
            }
            let spec = st.kinds[kind].spec.clone();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            let key = (
                if spec.namespaced {
                    ns.to_string()
                } else {
                    String::new()
                },
                name.clone(),
            );
            if st.kinds[kind].objects.contains_key(&key) {
                return status_response(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", spec.plural),
                );
            }
            object["apiVersion"] = json!(spec.api_version());
            object["kind"] = json!(spec.kind);
            match put(&mut st, object, true) {
                Some(stored) => {
                    drop(st);
                    let _ = changed.send(());
                    json_response(201, &stored)
                }
                None => not_found(&spec, &name),
            }
        }
        (
            Method::PUT,
            Target::Object {
                kind,
                namespace,
                name,
                status: false,
            },
        ) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the object is not JSON");
            };
            let spec = st.kinds[kind].spec.clone();
            let Some(current) = st.kinds[kind]
                .objects
                .get(&(namespace.clone(), name.clone()))
            else {
                return not_found(&spec, &name);
            };
            // Optimistic concurrency: a replace names the version it read.
            let asked = object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            if !asked.is_empty()
                && asked
                    != current["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
            {
                return status_response(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        spec.plural
                    ),
                );
            }
            if spec.namespaced {
                set_meta(&mut object, "namespace", json!(namespace));
            }
            object["apiVersion"] = json!(spec.api_version());
            object["kind"] = json!(spec.kind);
            match put(&mut st, object, true) {
                Some(stored) => {
                    drop(st);
                    let _ = changed.send(());
                    json_response(200, &stored)
                }
                None => not_found(&spec, &name),
            }
        }
        (
            Method::PATCH,
            Target::Object {
                kind,
                namespace,
                name,
                status: true,
            },
        ) => {
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return status_response(400, "BadRequest", "the patch is not JSON");
            };
            st.patches.push(RecordedPatch {
                path: path.clone(),
                content_type: content_type.clone(),
                body: patch.clone(),
            });
            if !content_type.starts_with("application/merge-patch+json") {
                return status_response(
                    415,
                    "UnsupportedMediaType",
                    "only merge patches are served",
                );
            }
            st.revision += 1;
            let revision = st.revision;
            let k = &mut st.kinds[kind];
            let Some(object) = k.objects.get_mut(&(namespace, name.clone())) else {
                let spec = k.spec.clone();
                return not_found(&spec, &name);
            };
            // The status subresource ignores everything but status.
            if let Some(s) = patch.get("status") {
                let mut status = object.get("status").cloned().unwrap_or(Value::Null);
                merge_patch(&mut status, s);
                object["status"] = status;
            }
            set_meta(object, "resourceVersion", json!(revision.to_string()));
            let object = object.clone();
            k.history.push((revision, "MODIFIED", object.clone()));
            drop(st);
            let _ = changed.send(());
            json_response(200, &object)
        }
        (
            Method::PATCH,
            Target::Object {
                kind,
                namespace,
                name,
                status: false,
            },
        ) => {
            let dry_run = query.get("dryRun").map(String::as_str) == Some("All");
            let spec = st.kinds[kind].spec.clone();
            let Ok(mut patch) = serde_json::from_slice::<Value>(body) else {
                return status_response(
                    400,
                    "BadRequest",
                    "the patch is not JSON (the fake parses only JSON, YAML's subset)",
                );
            };
            let current = st.kinds[kind]
                .objects
                .get(&(namespace.clone(), name.clone()))
                .cloned();
            let (manager, operation) = match content_type.split(';').next().unwrap_or("") {
                "application/apply-patch+yaml" => {
                    let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                        return status_response(
                            400,
                            "BadRequest",
                            "PATCH, fieldManager: Required value: is required for apply patch",
                        );
                    };
                    if patch["apiVersion"] != json!(spec.api_version())
                        || patch["kind"] != json!(spec.kind)
                        || patch["metadata"]["name"] != json!(name)
                    {
                        return status_response(
                            400,
                            "BadRequest",
                            &format!(
                                "the applied object's apiVersion, kind and name must be {}, {} and {name}",
                                spec.api_version(),
                                spec.kind
                            ),
                        );
                    }
                    (manager.clone(), "Apply")
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    if current.is_none() {
                        return not_found(&spec, &name);
                    }
                    (
                        query
                            .get("fieldManager")
                            .cloned()
                            .unwrap_or_else(|| "unknown".into()),
                        "Update",
                    )
                }
                other => {
                    return status_response(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
                        ),
                    );
                }
            };
            // The main resource ignores status when the kind has a status subresource (all
            // kinds here have one).
            if let Some(map) = patch.as_object_mut() {
                map.remove("status");
            }
            let created = current.is_none();
            let mut object = current.clone().unwrap_or_else(|| json!({}));
            if content_type.starts_with("application/strategic-merge-patch+json") {
                strategic_merge_patch(&mut object, &patch);
            } else {
                merge_patch(&mut object, &patch);
            }
            if spec.namespaced {
                set_meta(&mut object, "namespace", json!(namespace));
            }
            object["apiVersion"] = json!(spec.api_version());
            object["kind"] = json!(spec.kind);
            if let Some(current) = current.filter(|c| *c == object) {
                // A no-op write is not written: same resourceVersion, no event.
                return json_response(200, &current);
            }
            let code = if created { 201 } else { 200 };
            if dry_run {
                return json_response(code, &object);
            }
            match put_as(&mut st, object, true, &manager, operation) {
                Some(stored) => {
                    drop(st);
                    let _ = changed.send(());
                    json_response(code, &stored)
                }
                None => not_found(&spec, &name),
            }
        }
        (
            Method::DELETE,
            Target::Object {
                kind,
                namespace,
                name,
                status: false,
            },
        ) => {
            let spec = st.kinds[kind].spec.clone();
            if query.get("dryRun").map(String::as_str) == Some("All") {
                return match st.kinds[kind].objects.get(&(namespace, name.clone())) {
                    Some(o) => json_response(200, o),
                    None => not_found(&spec, &name),
                };
            }
            match remove(&mut st, kind, &namespace, &name) {
                Some(object) => {
                    drop(st);
                    let _ = changed.send(());
                    json_response(200, &object)
                }
                None => not_found(&spec, &name),
            }
        }
        _ => status_response(
            405,
            "MethodNotAllowed",
            "the fake API server does not serve this",
        ),
    }
}

/// `%XX` escapes decoded (selectors arrive as `metadata.name%3Dx`).
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name a `fieldSelector=metadata.name=<name>` asks for (the only field selector served).
fn selected_name(query: &BTreeMap<String, String>) -> Option<String> {
    query
        .get("fieldSelector")?
        .split(',')
        .find_map(|f| f.strip_prefix("metadata.name="))
        .map(String::from)
}

/// A `Status` failure as the API server writes it, for hooks' answers.
pub fn status(code: u16, reason: &str, message: &str, plural: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": {"name": name, "kind": plural}, "code": code
    })
}

fn req_query(query: &BTreeMap<String, String>) -> String {
    query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn discovery(st: &State, path: &str) -> Option<Value> {
    let resources = |group: &str, version: &str| -> Vec<Value> {
        st.kinds
            .iter()
            .filter(|k| k.served && k.spec.group == group && k.spec.version == version)
            .flat_map(|k| {
                let s = &k.spec;
                [
                    json!({
                        "name": s.plural,
                        "singularName": s.kind.to_ascii_lowercase(),
                        "namespaced": s.namespaced,
                        "kind": s.kind,
                        "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
                    }),
                    json!({
                        "name": format!("{}/status", s.plural),
                        "singularName": "",
                        "namespaced": s.namespaced,
                        "kind": s.kind,
                        "verbs": ["get", "patch", "update"],
                    }),
                ]
            })
            .collect()
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
        })),
        ["api", "v1"] => Some(json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": resources("", "v1"),
        })),
        ["apis"] => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for k in st.kinds.iter().filter(|k| k.served && !k.spec.is_core()) {
                let versions = groups.entry(&k.spec.group).or_default();
                if !versions.contains(&k.spec.version.as_str()) {
                    versions.push(&k.spec.version);
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(group, versions)| {
                    let gv =
                        |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
                    json!({
                        "name": group,
                        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
                        "preferredVersion": gv(versions[0]),
                    })
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", group, version] => {
            let resources = resources(group, version);
            (!resources.is_empty()).then(|| {
                json!({
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": format!("{group}/{version}"),
                    "resources": resources,
                })
            })
        }
        _ => None,
    }
}

/// `/api/v1/…` or `/apis/<group>/<version>/…`, then `[namespaces/<ns>/]<plural>[/<name>[/status]]`.
fn route(st: &State, path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let find = |plural: &str| {
        st.kinds.iter().position(|k| {
            k.served
                && k.spec.group == group
                && k.spec.version == version
                && k.spec.plural == plural
        })
    };
    match rest {
        [plural] => Some(Target::Collection {
            kind: find(plural)?,
            namespace,
        }),
        [plural, name] | [plural, name, "status"] => {
            let kind = find(plural)?;
            Some(Target::Object {
                kind,
                namespace: if st.kinds[kind].spec.namespaced {
                    namespace.unwrap_or_default()
                } else {
                    String::new()
                },
                name: name.to_string(),
                status: rest.len() == 3,
            })
        }
        _ => None,
    }
}

/// A list, in pages of `limit` with a `continue` token as the real server pages (every page
/// carries the first page's resourceVersion).
fn list(
    st: &State,
    kind: usize,
    namespace: Option<&str>,
    query: &BTreeMap<String, String>,
) -> Value {
    let k = &st.kinds[kind];
    let selected = selected_name(query);
    // The token is `<resourceVersion>.<offset>`; opaque to clients, as the real one.
    let (revision, offset) = query
        .get("continue")
        .and_then(|t| t.split_once('.'))
        .and_then(|(rv, off)| Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?)))
        .unwrap_or((st.revision, 0));
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let all: Vec<Value> = k
        .objects
        .iter()
        .filter(|((ns, name), _)| {
            namespace.is_none_or(|n| n == ns) && selected.as_deref().is_none_or(|s| s == name)
        })
        .map(|(_, o)| {
            let mut o = o.clone();
            // The real server leaves TypeMeta out of a built-in kind's list items.
            if k.spec.is_core()
                && let Some(map) = o.as_object_mut()
            {
                map.remove("kind");
                map.remove("apiVersion");
            }
            o
        })
        .collect();
    let items: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let next = offset.saturating_add(items.len());
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if next < all.len() {
        metadata["continue"] = json!(format!("{revision}.{next}"));
        metadata["remainingItemCount"] = json!(all.len() - next);
    }
    json!({
        "kind": format!("{}List", k.spec.kind),
        "apiVersion": k.spec.api_version(),
        "metadata": metadata,
        "items": items,
    })
}

/// A watch: replay history after `resourceVersion`, then follow changes; 410 when the
/// requested revision was compacted or the history is compacted while watching.
fn watch(
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<()>,
    kind: usize,
    namespace: Option<String>,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let selected = selected_name(query);
    let mut wake = changed.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        // Counted open from the request (in `answer`) until this task ends, however it ends.
        let _open = OpenWatch {
            state: state.clone(),
            kind,
        };
        let line = |v: Value| Bytes::from(format!("{v}\n"));
        let (epoch, api_version, kind_name) = {
            let st = lock(&state);
            let k = &st.kinds[kind];
            (k.epoch, k.spec.api_version(), k.spec.kind.clone())
        };
        let mut sent = from;
        let mut first = true;
        loop {
            let (events, gone, revision) = {
                let st = lock(&state);
                let k = &st.kinds[kind];
                let gone = k.epoch != epoch || (from != 0 && from < k.compacted);
                let events: Vec<(u64, Value)> = k
                    .history
                    .iter()
                    .filter(|(rv, _, o)| {
                        *rv > sent
                            && namespace
                                .as_deref()
                                .is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n))
                            && selected
                                .as_deref()
                                .is_none_or(|n| o["metadata"]["name"].as_str() == Some(n))
                    })
                    .map(|(rv, t, o)| (*rv, json!({"type": t, "object": o})))
                    .collect();
                (events, gone, st.revision)
            };
            if gone {
                let expired = json!({
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": format!("too old resource version: {from} ({revision})"),
                        "reason": "Expired",
                        "code": 410,
                    },
                });
                let _ = tx.send(line(expired)).await;
                return;
            }
            for (rv, event) in events {
                sent = rv;
                if tx.send(line(event)).await.is_err() {
                    return;
                }
            }
            if first && bookmarks {
                first = false;
                let bookmark = json!({
                    "type": "BOOKMARK",
                    "object": {
                        "kind": kind_name,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": revision.max(sent).to_string()},
                    },
                });
                if tx.send(line(bookmark)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                r = wake.recv() => {
                    if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::TRANSFER_ENCODING, "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(empty()))
}

/// A watch stream counted in [`State::open_watches`] while it lives.
struct OpenWatch {
    state: Arc<Mutex<State>>,
    kind: usize,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        if let Some(n) = st.open_watches.get_mut(&self.kind) {
            *n = n.saturating_sub(1);
        }
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A strategic merge patch as the built-in kinds here use it: a merge patch, except that
/// lists of objects with a `name` (containers, webhooks: `patchMergeKey: name`) merge item by
/// item instead of being replaced.
fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    strategic_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (Value::Array(t), Value::Array(p))
            if p.iter().all(|item| item.get("name").is_some()) && !p.is_empty() =>
        {
            for item in p {
                let name = item.get("name");
                match t.iter_mut().find(|e| e.get("name") == name) {
                    Some(e) => strategic_merge_patch(e, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn empty() -> Body {
    BodyExt::boxed(Full::new(Bytes::new()))
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap_or_else(|_| Response::new(empty()))
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": {},
            "code": code,
        }),
    )
}

fn not_found(spec: &KindSpec, name: &str) -> Response<Body> {
    let resource = if spec.group.is_empty() {
        spec.plural.clone()
    } else {
        format!("{}.{}", spec.plural, spec.group)
    };
    status_response(404, "NotFound", &format!("{resource} \"{name}\" not found"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, ListParams, WatchEvent, WatchParams};

    fn service(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": {"ports": [{"port": 80}]}})
    }

    #[tokio::test]
    async fn list_then_watch_sees_changes_after_the_list() {
        let server = FakeApiServer::start().await.unwrap();
        server.apply(service("a"));
        let api: Api<Service> = Api::all(server.client());
        let list = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let rv = list.metadata.resource_version.unwrap();
        // Built-in list items carry no TypeMeta on the wire; k8s-openapi fills it in.
        let raw = server.requests();
        assert!(
            raw.iter().any(|r| r.starts_with("GET /api/v1/services")),
            "{raw:?}"
        );

        server.apply(service("b"));
        let wp = WatchParams::default();
        let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(s) => assert_eq!(s.metadata.name.as_deref(), Some("b")),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            events.try_next().await.unwrap().unwrap(),
            WatchEvent::Bookmark(_)
        ));
        server.delete("v1", "Service", "default", "a");
        assert!(matches!(
            events.try_next().await.unwrap().unwrap(),
            WatchEvent::Deleted(_)
        ));
        server.expire_watches();
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
            e => panic!("{e:?}"),
        }
        // A watch from before the compaction is refused the same way.
        let mut again = api.watch(&wp, &rv).await.unwrap().boxed();
        assert!(
            matches!(again.try_next().await.unwrap().unwrap(), WatchEvent::Error(e) if e.code == 410)
        );
    }

    #[tokio::test]
    async fn core_list_items_have_no_type_meta_but_watch_objects_do() {
        let server = FakeApiServer::start().await.unwrap();
        server.apply(service("a"));
        let api: Api<kube::api::DynamicObject> = Api::all_with(
            server.client(),
            &kube::api::ApiResource::erase::<Service>(&()),
        );
        let list = api.list(&ListParams::default()).await.unwrap();
        assert!(list.items[0].types.is_none());
        let mut events = api
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => assert_eq!(o.types.unwrap().kind, "Service"),
            e => panic!("{e:?}"),
        }
    }

    #[tokio::test]
    async fn discovery_lists_only_installed_groups() {
        let server = FakeApiServer::start().await.unwrap();
        server.add_kind(KindSpec::namespaced(
            "networking.istio.io",
            "v1",
            "VirtualService",
            "virtualservices",
        ));
        let client = server.client();
        let discovery = kube::discovery::Discovery::new(client)
            .filter(&["networking.istio.io", "split.smi-spec.io"])
            .run()
            .await
            .unwrap();
        assert!(discovery.has_group("networking.istio.io"));
        assert!(!discovery.has_group("split.smi-spec.io"));
        let group = discovery.get("networking.istio.io").unwrap();
        let (ar, caps) = group.recommended_kind("VirtualService").unwrap();
        assert_eq!(ar.plural, "virtualservices");
        assert!(
            caps.subresources.iter().any(|(s, _)| s.plural == "status"),
            "{caps:?}"
        );
    }

    #[tokio::test]
    async fn create_conflicts_and_replace_is_optimistic() {
        use k8s_openapi::api::coordination::v1::Lease;
        use kube::api::PostParams;
        let server = FakeApiServer::start().await.unwrap();
        server.add_kind(KindSpec::namespaced(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
        ));
        let api: Api<Lease> = Api::namespaced(server.client(), "mast-system");
        let mut lease = Lease::default();
        lease.metadata.name = Some("mast-leader".into());
        let created = api.create(&PostParams::default(), &lease).await.unwrap();
        let again = api
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_err();
        assert!(
            matches!(&again, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
            "{again}"
        );
        let replaced = api
            .replace("mast-leader", &PostParams::default(), &created)
            .await
            .unwrap();
        assert_ne!(
            replaced.metadata.resource_version,
            created.metadata.resource_version
        );
        let stale = api
            .replace("mast-leader", &PostParams::default(), &created)
            .await
            .unwrap_err();
        assert!(
            matches!(&stale, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
            "{stale}"
        );
        assert!(api.get_opt("other").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn server_side_apply_creates_merges_and_deletes() {
        use kube::api::{DeleteParams, Patch, PatchParams};
        let server = FakeApiServer::start().await.unwrap();
        let api: Api<Service> = Api::namespaced(server.client(), "default");
        let applied = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}});
        let params = PatchParams::apply("tester").force();
        let created = api
            .patch("a", &params, &Patch::Apply(&applied))
            .await
            .unwrap();
        let rv = created.metadata.resource_version.clone();
        let fields = created.metadata.managed_fields.unwrap();
        assert_eq!(fields[0].manager.as_deref(), Some("tester"));
        // The same apply again writes nothing.
        let again = api
            .patch("a", &params, &Patch::Apply(&applied))
            .await
            .unwrap();
        assert_eq!(again.metadata.resource_version, rv);
        // A merge patch changes one field and keeps the rest.
        let merged = api
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await
            .unwrap();
        assert_ne!(merged.metadata.resource_version, rv);
        assert_eq!(merged.spec.unwrap().ports.unwrap()[0].port, 80);
        // Apply without a field manager, and JSON patches, are refused as the real server does.
        let raw = |content_type: &str, query: &str| {
            http::Request::patch(format!("/api/v1/namespaces/default/services/a{query}"))
                .header(http::header::CONTENT_TYPE, content_type)
                .body(applied.to_string().into_bytes())
                .unwrap()
        };
        let client = server.client();
        let e = client
            .request_text(raw("application/apply-patch+yaml", ""))
            .await
            .unwrap_err();
        assert!(matches!(&e, kube::Error::Api(s) if s.code == 400), "{e}");
        let e = client
            .request_text(raw("application/json-patch+json", "?fieldManager=x"))
            .await
            .unwrap_err();
        assert!(matches!(&e, kube::Error::Api(s) if s.code == 415), "{e}");
        // Dry run stores nothing; delete removes; a second delete is NotFound.
        let mut dry = params.clone();
        dry.dry_run = true;
        let b = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}});
        api.patch("b", &dry, &Patch::Apply(&b)).await.unwrap();
        assert!(server.get("v1", "Service", "default", "b").is_none());
        api.delete("a", &DeleteParams::default()).await.unwrap();
        assert!(server.get("v1", "Service", "default", "a").is_none());
        let e = api.delete("a", &DeleteParams::default()).await.unwrap_err();
        assert!(
            matches!(&e, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_crd_serves_its_kind_until_deleted() {
        let server = FakeApiServer::start().await.unwrap();
        server.add_builtin_kinds();
        server.hold_crds();
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"kind": "Widget", "plural": "widgets"},
                "versions": [{"name": "v1", "served": true, "storage": true}],
            },
        });
        server.apply(crd);
        let established = |server: &FakeApiServer| {
            let crd = server
                .get(
                    "apiextensions.k8s.io/v1",
                    "CustomResourceDefinition",
                    "",
                    "widgets.example.com",
                )
                .unwrap();
            crd["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        };
        assert!(!established(&server));
        server.establish_crds();
        assert!(established(&server));
        server.apply(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "default"}}));
        let gvk = kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget");
        assert!(
            kube::discovery::pinned_kind(&server.client(), &gvk)
                .await
                .is_ok()
        );
        assert!(server.delete(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "widgets.example.com"
        ));
        assert!(
            kube::discovery::pinned_kind(&server.client(), &gvk)
                .await
                .is_err()
        );
        assert!(
            server
                .get("example.com/v1", "Widget", "default", "w")
                .is_none()
        );
    }

    #[test]
    fn strategic_merge_patch_merges_named_lists_by_name() {
        let mut t =
            json!({"webhooks": [{"name": "a", "x": 1}, {"name": "b", "x": 2}], "l": [1, 2]});
        strategic_merge_patch(
            &mut t,
            &json!({"webhooks": [{"name": "b", "x": 3}, {"name": "c"}], "l": [3]}),
        );
        assert_eq!(
            t,
            json!({"webhooks": [{"name": "a", "x": 1}, {"name": "b", "x": 3}, {"name": "c"}], "l": [3]})
        );
    }

    #[tokio::test]
    async fn field_selector_narrows_lists_and_watches() {
        let server = FakeApiServer::start().await.unwrap();
        server.apply(service("a"));
        server.apply(service("b"));
        let api: Api<Service> = Api::namespaced(server.client(), "default");
        let lp = ListParams::default().fields("metadata.name=b");
        let list = api.list(&lp).await.unwrap();
        let names: Vec<_> = list.items.iter().map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names, [Some("b".to_string())]);
        let wp = WatchParams::default().fields("metadata.name=a");
        let mut events = api.watch(&wp, "0").await.unwrap().boxed();
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(s) => assert_eq!(s.metadata.name.as_deref(), Some("a")),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            events.try_next().await.unwrap().unwrap(),
            WatchEvent::Bookmark(_)
        ));
        // A change to another object is not seen; the watched one's is.
        server.apply(service("b"));
        server.delete("v1", "Service", "default", "a");
        assert!(matches!(
            events.try_next().await.unwrap().unwrap(),
            WatchEvent::Deleted(s) if s.metadata.name.as_deref() == Some("a")
        ));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }
}
