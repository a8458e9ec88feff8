//! A stateful in-memory API server behind kube's mock service, for the tests of the pieces that
//! *write* (CA Secret, trust-bundle ConfigMaps, webhook caBundle, leader Lease).
//!
//! Those pieces are about what the API server does to concurrent writers — create-only (409
//! AlreadyExists), optimistic concurrency on `resourceVersion` (409 Conflict), 404 after a
//! delete, watches that see every change — so a script of canned answers would test the
//! script. This keeps objects, bumps one resourceVersion per change, and answers in the shapes
//! the real server uses (`Status` objects with `reason`/`details`/`code`, lists without
//! per-item `kind`, newline-delimited `WatchEvent`s replayed from the asked resourceVersion).
//! A hook can answer any request first (a TokenReview, an injected failure).
//!
//! Test-only: declared as `crate::leader::fake_api` for now, since `lib.rs` is shared.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;
type Hook = Box<dyn FnMut(&Method, &str, &Value) -> Option<(u16, Value)> + Send>;

/// Where an object lives: API prefix (`/api/v1`, `/apis/g/v`), namespace, plural, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    prefix: String,
    namespace: Option<String>,
    plural: String,
    name: String,
}

/// A parsed request path: a collection (`name` empty) or an object.
fn parse(path: &str) -> Option<Key> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, ""),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural, ""),
        ["namespaces", ns, plural, name] => (Some(ns.to_string()), *plural, *name),
        [plural, name] => (None, *plural, *name),
        _ => return None,
    };
    Some(Key {
        prefix,
        namespace,
        plural: plural.into(),
        name: name.into(),
    })
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "configmaps" => "ConfigMap",
        "namespaces" => "Namespace",
        "secrets" => "Secret",
        "leases" => "Lease",
        "mutatingwebhookconfigurations" => "MutatingWebhookConfiguration",
        "tokenreviews" => "TokenReview",
        _ => "Unknown",
    }
}

fn group_of(prefix: &str) -> &str {
    prefix
        .strip_prefix("/apis/")
        .and_then(|g| g.split('/').next())
        .unwrap_or("")
}

/// A `Status` failure as the API server writes it.
pub fn status(code: u16, reason: &str, message: &str, key_plural: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": {"name": name, "kind": key_plural}, "code": code
    })
}

struct Watch {
    collection: Key,
    field_name: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, for watches that start from an older resourceVersion.
    history: Vec<(u64, &'static str, Key, Value)>,
    watches: Vec<Watch>,
    hook: Option<Hook>,
    log: Vec<String>,
}

/// The fake server's state, shared with the test.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn matches(w_collection: &Key, field_name: &Option<String>, key: &Key) -> bool {
    key.prefix == w_collection.prefix
        && key.plural == w_collection.plural
        && (w_collection.namespace.is_none() || w_collection.namespace == key.namespace)
        && field_name.as_ref().is_none_or(|n| *n == key.name)
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect()
}

/// RFC 7386 merge patch; with `by_name`, arrays of named objects merge element-wise by
/// `name` (strategic merge patch's `patchMergeKey: name`, enough for webhooks).
fn merge(target: &mut Value, patch: &Value, by_name: bool) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v, by_name);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if by_name => {
            for item in p {
                let name = item.get("name");
                match t.iter_mut().find(|e| e.get("name") == name) {
                    Some(e) => merge(e, item, by_name),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl FakeApi {
    /// A kube client talking to a new fake server.
    pub fn start() -> (kube::Client, Self) {
        let (svc, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let api = Self::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                send.send_response(server.handle(&parts.method, &parts.uri, body));
            }
        });
        (kube::Client::new(svc, "mast-system"), api)
    }

    /// Answer requests with `hook` first (`Some((code, body))`), else normally.
    pub fn hook(
        &self,
        hook: impl FnMut(&Method, &str, &Value) -> Option<(u16, Value)> + Send + 'static,
    ) {
        self.lock().hook = Some(Box::new(hook));
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// The stored object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        let key = parse(path)?;
        self.lock().objects.get(&key).cloned()
    }

    /// Store (create or replace) an object at `path`, as another client would.
    pub fn put(&self, path: &str, object: Value) {
        if let Some(key) = parse(path) {
            let mut st = self.lock();
            st.store(key, object);
        }
    }

    /// Delete the object at `path`, as another client would.
    pub fn delete(&self, path: &str) -> bool {
        let Some(key) = parse(path) else { return false };
        self.lock().remove(&key).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, method: &Method, uri: &http::Uri, body: Value) -> Response<Body> {
        let path = uri.path().to_string();
        let q = query(uri);
        let mut st = self.lock();
        st.log.push(format!("{method} {uri}"));
        if let Some(hook) = st.hook.as_mut()
            && let Some((code, v)) = hook(method, &path, &body)
        {
            return respond(code, &v);
        }
        let Some(key) = parse(&path) else {
            return respond(404, &status(404, "NotFound", "no such path", "", ""));
        };
        let not_found = |k: &Key| {
            let msg = format!("{} \"{}\" not found", k.plural, k.name);
            respond(404, &status(404, "NotFound", &msg, &k.plural, &k.name))
        };
        match (method.clone(), key.name.is_empty()) {
            (Method::GET, true) if q.get("watch").is_some_and(|w| w == "true") => {
                let field_name = q
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .map(String::from);
                let from: u64 = q
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(st.rv);
                let (tx, rx) = mpsc::unbounded_channel();
                for (rv, ty, k, obj) in &st.history {
                    if *rv > from && matches(&key, &field_name, k) {
                        let _ = tx.send(event(ty, obj));
                    }
                }
                st.watches.push(Watch {
                    collection: key,
                    field_name,
                    tx,
                });
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                Response::builder()
                    .status(200)
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap_or_default()
            }
            (Method::GET, true) => {
                let field_name = q
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .map(String::from);
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(k, _)| matches(&key, &field_name, k))
                    .map(|(_, v)| {
                        let mut v = v.clone();
                        if let Some(o) = v.as_object_mut() {
                            // Built-in kinds' list items carry no type fields.
                            o.remove("kind");
                            o.remove("apiVersion");
                        }
                        v
                    })
                    .collect();
                let list = json!({
                    "kind": format!("{}List", kind_of(&key.plural)),
                    "apiVersion": key.prefix.trim_start_matches("/api/").trim_start_matches("/apis/"),
                    "metadata": {"resourceVersion": st.rv.to_string()},
                    "items": items,
                });
                respond(200, &list)
            }
            (Method::GET, false) => match st.objects.get(&key) {
                Some(v) => respond(200, v),
                None => not_found(&key),
            },
            (Method::POST, true) => {
                let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                let key = Key { name, ..key };
                if st.objects.contains_key(&key) {
                    let msg = format!("{} \"{}\" already exists", key.plural, key.name);
                    return respond(
                        409,
                        &status(409, "AlreadyExists", &msg, &key.plural, &key.name),
                    );
                }
                let stored = st.store(key, body);
                respond(201, &stored)
            }
            (Method::PUT, false) => {
                let Some(current) = st.objects.get(&key) else {
                    return not_found(&key);
                };
                let asked = body["metadata"]["resourceVersion"].as_str();
                if asked
                    .is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str())
                {
                    let group = group_of(&key.prefix);
                    let what = if group.is_empty() {
                        key.plural.clone()
                    } else {
                        format!("{}.{group}", key.plural)
                    };
                    let msg = format!(
                        "Operation cannot be fulfilled on {what} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                        key.name
                    );
                    return respond(409, &status(409, "Conflict", &msg, &key.plural, &key.name));
                }
                let stored = st.store(key, body);
                respond(200, &stored)
            }
            (Method::PATCH, false) => {
                let Some(mut current) = st.objects.get(&key).cloned() else {
                    return not_found(&key);
                };
                merge(&mut current, &body, true);
                let stored = st.store(key, current);
                respond(200, &stored)
            }
            (Method::DELETE, false) => match st.remove(&key) {
                Some(_) => respond(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                            "details": {"name": key.name, "kind": key.plural}}),
                ),
                None => not_found(&key),
            },
            _ => respond(
                405,
                &status(405, "MethodNotAllowed", "method not allowed", "", ""),
            ),
        }
    }
}

impl State {
    fn store(&mut self, key: Key, mut object: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let created = !self.objects.contains_key(&key);
        if let Some(o) = object.as_object_mut() {
            let api_version = key
                .prefix
                .trim_start_matches("/api/")
                .trim_start_matches("/apis/")
                .to_string();
            o.insert("apiVersion".into(), json!(api_version));
            o.insert("kind".into(), json!(kind_of(&key.plural)));
            let meta = o.entry("metadata").or_insert_with(|| json!({}));
            meta["name"] = json!(key.name);
            if let Some(ns) = &key.namespace {
                meta["namespace"] = json!(ns);
            }
            meta["resourceVersion"] = json!(rv.to_string());
            if created {
                meta["uid"] = json!(format!("00000000-0000-0000-0000-{rv:012}"));
                meta["creationTimestamp"] = json!("2026-11-30T02:00:00Z");
            }
        }
        let ty = if created { "ADDED" } else { "MODIFIED" };
        self.objects.insert(key.clone(), object.clone());
        self.notify(rv, ty, key, object.clone());
        object
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.notify(self.rv, "DELETED", key.clone(), object.clone());
        Some(object)
    }

    fn notify(&mut self, rv: u64, ty: &'static str, key: Key, object: Value) {
        let line = event(ty, &object);
        self.watches.retain(|w| {
            !matches(&w.collection, &w.field_name, &key) || w.tx.send(line.clone()).is_ok()
        });
        self.history.push((rv, ty, key, object));
    }
}

fn event(ty: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": ty, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap_or_default()
}
