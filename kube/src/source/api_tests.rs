//! The Kubernetes source against the fake API server: the todo-list sample as API objects,
//! followed through list, watch events, an invalid edit (status written back), a 410 Gone,
//! API errors and deletions.

use std::path::Path;
use std::time::Duration;

use mast_mesh_config::model::{MeshModel, RouteAction};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::testing::{FakeApiServer, KindSpec};

const VS: (&str, &str) = ("networking.istio.io/v1", "VirtualService");
const VS_PATH: &str = "kube:/networking.istio.io/VirtualService/default/user";

/// A cluster with Istio's CRDs (but not SMI, Knative or the Gateway API) holding the
/// todo-list sample and its pods.
async fn todolist_cluster() -> FakeApiServer {
    let server = FakeApiServer::start().await.unwrap();
    for kind in [
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "WorkloadEntry",
        "WorkloadGroup",
        "Sidecar",
        "Gateway",
    ] {
        let plural = format!("{}s", kind.to_ascii_lowercase());
        server.add_kind(KindSpec::namespaced(
            "networking.istio.io",
            "v1",
            kind,
            &plural,
        ));
    }
    for (kind, plural) in [
        ("PeerAuthentication", "peerauthentications"),
        ("AuthorizationPolicy", "authorizationpolicies"),
        ("RequestAuthentication", "requestauthentications"),
    ] {
        server.add_kind(KindSpec::namespaced(
            "security.istio.io",
            "v1",
            kind,
            plural,
        ));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/todolist");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let (docs, errors) = mast_mesh_config::source::parse_documents(&file, &text);
        assert!(errors.is_empty(), "{errors:?}");
        for doc in docs {
            server.apply(doc.value);
        }
    }
    for (name, app, version, ip) in [
        ("myapp-v1-7d4b9c", "myapp", "v1", "10.244.0.10"),
        ("user-v1-5f6d7b", "user", "v1", "10.244.0.11"),
        ("user-v2-6c8e9a", "user", "v2", "10.244.0.12"),
        ("todo-v1-84f2d1", "todo", "v1", "10.244.0.13"),
    ] {
        server.apply(pod(name, app, version, ip));
    }
    server
}

fn pod(name: &str, app: &str, version: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": app, "version": version, "pod-template-hash": "5f6d7b",
                       "security.istio.io/tlsMode": "istio"},
            "annotations": {"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{version}"),
                                 "uid": "1b2c", "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "serviceAccountName": app,
            "nodeName": "kind-worker",
            "containers": [
                {"name": app, "image": format!("mast/{app}:{version}"), "ports": [{"name": "http", "containerPort": 9080, "protocol": "TCP"}],
                 "resources": {}, "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"},
                {"name": "istio-proxy", "image": "mast/proxy:latest", "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}]},
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "172.18.0.2",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        },
    })
}

fn virtual_service(w1: i64, w2: i64) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "user", "namespace": "default"},
        "spec": {"hosts": ["user"], "http": [{"route": [
            {"destination": {"host": "user", "subset": "v1"}, "weight": w1},
            {"destination": {"host": "user", "subset": "v2"}, "weight": w2},
        ]}]},
    })
}

fn options() -> Options {
    Options {
        debounce: Debounce {
            quiet: Duration::from_millis(20),
            max: Duration::from_secs(1),
        },
        write_status: WriteGate::always(),
        deploy_gateways: None,
    }
}

fn user_weights(model: &MeshModel) -> Vec<u32> {
    let Some(table) = model.routes.iter().find(|r| {
        r.hosts
            .iter()
            .any(|h| h == "user.default.svc.cluster.local")
    }) else {
        return Vec::new();
    };
    match &table.http[0].action {
        RouteAction::Forward(d) => d.iter().map(|d| d.weight).collect(),
        other => panic!("{other:?}"),
    }
}

fn workloads(model: &MeshModel) -> Vec<(String, String)> {
    model
        .workloads
        .iter()
        .map(|w| (w.name.clone(), w.address.clone()))
        .collect()
}

/// Run the source, forwarding every update.
fn follow(source: KubeSource) -> mpsc::UnboundedReceiver<Update> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(source.run(move |u| tx.send(u).is_ok()));
    rx
}

/// The first update that satisfies `pred` (within 15 s).
async fn until(rx: &mut mpsc::UnboundedReceiver<Update>, pred: impl Fn(&Update) -> bool) -> Update {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let u = rx.recv().await.expect("the source stopped");
            if pred(&u) {
                return u;
            }
        }
    })
    .await
    .expect("no such update within 15 s")
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 6 s: {what}");
}

#[tokio::test]
async fn the_todolist_from_the_api_follows_edits_keeps_the_last_good_split_and_writes_status() {
    let server = todolist_cluster().await;
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();

    // Missing CRD groups are skipped, not fatal.
    let kinds: Vec<String> = source.kinds().map(|k| k.kind.clone()).collect();
    assert!(kinds.contains(&"VirtualService".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"TrafficSplit".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"HTTPRoute".to_string()), "{kinds:?}");

    let first = source.initial_sync().await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let m = &first.model;
    for svc in ["user", "todo", "myapp"] {
        assert!(
            m.services
                .contains_key(&format!("{svc}.default.svc.cluster.local")),
            "{svc}"
        );
    }
    let user_v2 = m
        .workloads
        .iter()
        .find(|w| w.name == "user-v2-6c8e9a")
        .unwrap();
    assert_eq!(user_v2.address, "10.244.0.12");
    assert_eq!(
        user_v2.labels.get("version").map(String::as_str),
        Some("v2")
    );
    assert_eq!(user_v2.service_account, "user");
    assert!(user_v2.has_sidecar);
    assert_eq!(m.workloads.len(), 4);
    assert!(m.namespaces.contains_key("default"));
    assert_eq!(m.peer_authentications.len(), 2);
    assert_eq!(user_weights(m), [50, 50]);
    // Valid resources get no status written.
    assert!(server.status_patches().is_empty());

    let mut updates = follow(source);

    // A watch MODIFIED event: the split becomes 80/20.
    server.apply(virtual_service(80, 20));
    let u = until(&mut updates, |u| u.changed).await;
    assert_eq!(user_weights(&u.model), [80, 20]);

    // An invalid edit: 80/20 stays, the error names the object and the field, and the
    // object's status says why.
    server.apply(virtual_service(80, -10));
    let u = until(&mut updates, |u| !u.errors.is_empty()).await;
    assert!(!u.changed);
    assert_eq!(user_weights(&u.model), [80, 20]);
    let e = &u.errors[0];
    assert_eq!(e.file, Path::new(VS_PATH));
    assert!(e.field.starts_with("spec.http[0]"), "{e}");
    assert!(e.to_string().contains("VirtualService default/user"), "{e}");
    eventually("a status patch", || !server.status_patches().is_empty()).await;
    let patch = &server.status_patches()[0];
    assert_eq!(
        patch.path,
        "/apis/networking.istio.io/v1/namespaces/default/virtualservices/user/status"
    );
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let message = patch.body["status"]["validationMessages"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.starts_with("spec.http[0]"), "{message}");
    assert!(message.contains("negative"), "{message}");
    let stored = server.get(VS.0, VS.1, "default", "user").unwrap();
    assert_eq!(
        stored["status"]["validationMessages"][0]["type"]["code"],
        "IST0106"
    );
    assert_eq!(stored["status"]["conditions"][0]["type"], "PassedAnalysis");
    assert_eq!(stored["status"]["observedGeneration"], 3);
    // The watch echo of our own patch changes nothing and writes nothing more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.status_patches().len(), 1);

    // Someone overwrites the status: it is put back.
    let mut tampered = server.get(VS.0, VS.1, "default", "user").unwrap();
    tampered["status"] = json!({"validationMessages": []});
    server.apply(tampered);
    eventually("the status put back", || server.status_patches().len() == 2).await;
    let stored = server.get(VS.0, VS.1, "default", "user").unwrap();
    assert_eq!(
        stored["status"]["validationMessages"][0]["message"],
        message.as_str()
    );

    // Fixed: the new split, and the status is cleared.
    server.apply(virtual_service(70, 30));
    let u = until(&mut updates, |u| u.changed).await;
    assert_eq!(user_weights(&u.model), [70, 30]);
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    eventually("the status cleared", || {
        server
            .get(VS.0, VS.1, "default", "user")
            .is_some_and(|o| o["status"].get("validationMessages").is_none())
    })
    .await;
    let patches = server.status_patches();
    assert_eq!(patches.len(), 3);
    assert!(patches[2].body["status"]["validationMessages"].is_null());

    // A pod's status churn (a probe, a restart) is not a config change: no update.
    let mut busy = pod("user-v1-5f6d7b", "user", "v1", "10.244.0.11");
    busy["status"]["containerStatuses"] =
        json!([{"name": "user", "restartCount": 1, "ready": true}]);
    busy["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:05:00Z");
    server.apply(busy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        updates.try_recv().is_err(),
        "pod status churn rebuilt the model"
    );

    // DELETED removes: a pod, then the VirtualService.
    server.delete("v1", "Pod", "default", "user-v2-6c8e9a");
    let u = until(&mut updates, |u| u.changed).await;
    assert!(
        !workloads(&u.model)
            .iter()
            .any(|(n, _)| n == "user-v2-6c8e9a")
    );
    server.delete(VS.0, VS.1, "default", "user");
    let u = until(&mut updates, |u| u.changed).await;
    assert!(user_weights(&u.model).is_empty());
}

#[tokio::test]
async fn a_410_gone_relists_and_converges_on_what_the_watch_missed() {
    let server = todolist_cluster().await;
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();
    source.initial_sync().await.unwrap();
    let mut updates = follow(source);
    let lists = server.list_count("virtualservices");
    assert_eq!(lists, 1);

    // Changes no watch sees (their events compacted away), then the 410.
    server.apply_unwatched(virtual_service(60, 40));
    server.apply_unwatched(pod("user-v3-1a2b3c", "user", "v3", "10.244.0.14"));
    server.delete("v1", "Pod", "default", "todo-v1-84f2d1");
    server.expire_watches();

    let u = until(&mut updates, |u| {
        user_weights(&u.model) == [60, 40]
            && workloads(&u.model)
                .iter()
                .any(|(n, _)| n == "user-v3-1a2b3c")
    })
    .await;
    assert!(
        !workloads(&u.model)
            .iter()
            .any(|(n, _)| n == "todo-v1-84f2d1")
    );
    assert!(
        server.list_count("virtualservices") >= 2,
        "{:?}",
        server.requests()
    );
    assert!(server.list_count("pods") >= 2);
    let gone = server
        .requests()
        .iter()
        .filter(|r| r.contains("/virtualservices?") && r.contains("watch=true"))
        .count();
    assert!(gone >= 2, "a new watch after the relist");
}

#[tokio::test]
async fn api_errors_keep_the_last_good_config_and_are_retried() {
    let server = todolist_cluster().await;
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();
    source.initial_sync().await.unwrap();
    let mut updates = follow(source);
    // The watcher opens its watch after handing out the list, so the first sync can be over
    // before the watch is open: wait for it, or the failure below would meet the watch (an
    // error that is no 410, retried as a watch from the same resourceVersion, never a relist).
    eventually("the VirtualService watch open", || {
        server.open_watches("virtualservices") == 1
    })
    .await;

    // The relist after a 410 fails with a 500 for a while (lists only: a real API server
    // timing out on etcd fails the list; the watch is not what this test is about).
    server.respond_to_lists(
        "/apis/networking.istio.io/v1/virtualservices",
        500,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500}),
    );
    server.apply_unwatched(virtual_service(90, 10));
    server.expire_watches();
    eventually("two failed lists", || {
        server.list_count("virtualservices") >= 3
    })
    .await;
    // Nothing was published meanwhile: the 50/50 stays.
    while let Ok(u) = updates.try_recv() {
        assert_eq!(user_weights(&u.model), [50, 50]);
    }

    server.clear_responses();
    let u = until(&mut updates, |u| u.changed).await;
    assert_eq!(user_weights(&u.model), [90, 10]);
}

#[tokio::test]
async fn only_the_leader_writes_status() {
    let server = todolist_cluster().await;
    server.apply(virtual_service(80, -10));
    let (leader_tx, leader_rx) = watch::channel(false);
    let mut source = KubeSource::start(
        server.client(),
        Options {
            write_status: WriteGate::from_receiver(leader_rx),
            ..options()
        },
    )
    .await
    .unwrap();
    let first = source.initial_sync().await.unwrap();
    assert_eq!(first.errors.len(), 1, "{:?}", first.errors);
    // With no last good version, the invalid VirtualService is not in the model at all.
    assert!(user_weights(&first.model).is_empty());
    let _updates = follow(source);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.status_patches().is_empty());

    leader_tx.send_replace(true);
    eventually("the new leader writes the status", || {
        server.status_patches().len() == 1
    })
    .await;
}

/// Objects as a real API server returns them (defaulted fields, status, finalizers) parse as
/// their YAML does.
#[tokio::test]
async fn real_api_object_shapes_parse() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "istio-injection": "enabled"}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "cart", "namespace": "shop", "labels": {"app": "cart"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\"}\n"}},
        "spec": {
            "clusterIP": "10.96.14.7", "clusterIPs": ["10.96.14.7"], "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None", "type": "ClusterIP",
            "selector": {"app": "cart"},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 9080},
                      {"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": "grpc", "appProtocol": "grpc"}],
        },
        "status": {"loadBalancer": {}},
    }));
    server.apply(pod("cart-7c9d-x2x", "cart", "v1", "10.244.1.5"));
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();
    let first = source.initial_sync().await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let m = &first.model;
    assert_eq!(
        m.namespaces["shop"]
            .labels
            .get("istio-injection")
            .map(String::as_str),
        Some("enabled")
    );
    let cart = &m.services["cart.shop.svc.cluster.local"];
    assert_eq!(cart.addresses, ["10.96.14.7"]);
    assert_eq!(cart.ports.len(), 2);
    assert_eq!(m.workloads[0].address, "10.244.1.5");
    assert!(
        source
            .files()
            .contains_key(Path::new("kube:/core/Service/shop/cart"))
    );
    assert!(!source.files().values().any(|t| t.contains("last-applied")));
}

/// A cluster bigger than a list page (the watcher asks for 500 at a time) is read whole.
#[tokio::test]
async fn lists_are_read_across_pages() {
    let server = FakeApiServer::start().await.unwrap();
    for i in 0..1203 {
        server.apply(pod(
            &format!("load-{i}"),
            "load",
            "v1",
            &format!("10.245.{}.{}", i / 200, i % 200 + 1),
        ));
    }
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();
    let first = source.initial_sync().await.unwrap();
    assert_eq!(first.model.workloads.len(), 1203);
    let pages: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch="))
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages[1].contains("continue="), "{pages:?}");
    // Then the watch, with bookmarks, from the list's resourceVersion.
    eventually("the pods watch", || {
        server.requests().iter().any(|r| {
            r.starts_with("GET /api/v1/pods?")
                && r.contains("watch=true")
                && r.contains("allowWatchBookmarks=true")
                && r.contains("resourceVersion=")
        })
    })
    .await;
}

/// A Service without a selector takes its endpoints from its EndpointSlices, and follows
/// them: a slice's endpoint that stops being ready leaves the model.
#[tokio::test]
async fn a_selectorless_service_follows_its_endpoint_slices() {
    let server = todolist_cluster().await;
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"ports": [{"name": "tcp-pg", "port": 5432, "targetPort": 6432, "protocol": "TCP"}],
                 "clusterIP": "10.96.0.50", "type": "ClusterIP"},
    }));
    let slice = |ready: bool| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "db-x7k2p", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "db",
                                    "endpointslice.kubernetes.io/managed-by": "staff"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp-pg", "port": 6432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["192.168.10.5"], "conditions": {"ready": true}},
                {"addresses": ["192.168.10.6"], "conditions": {"ready": ready}},
            ],
        })
    };
    server.apply(slice(true));
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();
    let kinds: Vec<String> = source.kinds().map(|k| k.kind.clone()).collect();
    assert!(kinds.contains(&"EndpointSlice".to_string()), "{kinds:?}");
    let endpoints = |m: &MeshModel| -> Vec<(String, Option<u16>)> {
        m.services
            .get("db.default.svc.cluster.local")
            .map(|s| {
                s.endpoints
                    .iter()
                    .map(|e| (e.address.clone(), e.ports.get("tcp-pg").copied()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = source.initial_sync().await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(
        endpoints(&first.model),
        [
            ("192.168.10.5".to_string(), Some(6432)),
            ("192.168.10.6".to_string(), Some(6432))
        ]
    );
    // The todo-list's selector Services keep their pods and get nothing from slices.
    assert!(
        first.model.services["user.default.svc.cluster.local"]
            .endpoints
            .is_empty()
    );
    let mut rx = follow(source);
    server.apply(slice(false));
    let u = until(&mut rx, |u| endpoints(&u.model).len() == 1).await;
    assert_eq!(
        endpoints(&u.model),
        [("192.168.10.5".to_string(), Some(6432))]
    );
    server.delete(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "default",
        "db-x7k2p",
    );
    until(&mut rx, |u| endpoints(&u.model).is_empty()).await;
}

fn tls_secret(name: &str, cert: &str) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "istio-system", "labels": {"team": "edge"}},
        "data": {"tls.crt": b64(cert), "tls.key": b64("KEY-of-{cert}"), "ca.crt": b64("CA")},
    })
}

/// Gateway certificates come from Secrets of any type with certificate keys; a changed Secret
/// is a new model (rotation), and nothing else of any Secret is kept.
#[tokio::test]
async fn tls_secrets_are_watched_rotated_and_reduced_to_certificate_keys() {
    use base64::Engine as _;
    let server = todolist_cluster().await;
    server.apply(tls_secret("myapp-credential", "CERT-1"));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db-password", "namespace": "default"},
        "data": {"password": base64::engine::general_purpose::STANDARD.encode("hunter2")},
    }));
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();
    let first = source.initial_sync().await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let cert = |m: &MeshModel| {
        m.tls_secrets
            .get(&("istio-system".to_string(), "myapp-credential".to_string()))
            .and_then(|s| s.cert.clone())
    };
    assert_eq!(cert(&first.model).as_deref(), Some("CERT-1"));
    assert_eq!(first.model.tls_secrets.len(), 1);
    let files = source.files();
    let opaque = &files[Path::new("kube:/core/Secret/default/db-password")];
    let opaque: Value = serde_json::from_str(opaque).unwrap();
    assert_eq!(opaque["data"], json!({}), "only certificate keys are kept");
    let tls = &files[Path::new("kube:/core/Secret/istio-system/myapp-credential")];
    assert!(!tls.contains("team"), "labels are dropped: {tls}");

    let mut updates = follow(source);
    server.apply(tls_secret("myapp-credential", "CERT-2"));
    let u = until(&mut updates, |u| u.changed).await;
    assert_eq!(cert(&u.model).as_deref(), Some("CERT-2"));

    server.delete("v1", "Secret", "istio-system", "myapp-credential");
    let u = until(&mut updates, |u| u.changed).await;
    assert_eq!(cert(&u.model), None);
}

#[tokio::test]
async fn mesh_config_and_telemetry_are_watched() {
    let server = todolist_cluster().await;
    server.add_kind(KindSpec::namespaced(
        "telemetry.istio.io",
        "v1",
        "Telemetry",
        "telemetries",
    ));
    let mesh = |sampling: u32| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": format!(
                "defaultConfig:\n  tracing: {{sampling: {sampling}}}\nextensionProviders:\n- name: zipkin\n  zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: 9411}}\n"
            )},
        })
    };
    server.apply(mesh(5));
    // Same name elsewhere, and another ConfigMap: not MeshConfig, not watched.
    server.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "default"},
        "data": {"mesh": "enableTracing: [not, a, bool]"},
    }));
    server.apply(json!({
        "apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
        "metadata": {"name": "mesh-default", "namespace": "istio-system"},
        "spec": {"tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10.0}]},
    }));
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();
    let first = source.initial_sync().await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.model.mesh.tracing.default_sampling(), 5.0);
    assert_eq!(
        first.model.mesh.tracing.extension_providers[0].name,
        "zipkin"
    );
    assert_eq!(
        first.model.telemetries[0].tracing[0].random_sampling_percentage,
        Some(10.0)
    );
    assert!(
        !source
            .files()
            .contains_key(Path::new("kube:/core/ConfigMap/default/istio"))
    );
    let mut updates = follow(source);
    server.apply(mesh(50));
    let u = until(&mut updates, |u| u.changed).await;
    assert_eq!(u.model.mesh.tracing.default_sampling(), 50.0);
}

const GW: (&str, &str) = ("gateway.networking.k8s.io/v1", "Gateway");

/// The todo-list cluster with the Gateway API's CRDs, the `istio` GatewayClass, a Gateway
/// `web` (HTTP on 8080, HTTPS on 8443 with certificate Secret `web-cert`) and an HTTPRoute to
/// myapp.
async fn gateway_cluster() -> FakeApiServer {
    let server = todolist_cluster().await;
    server.add_kind(KindSpec::cluster(
        "gateway.networking.k8s.io",
        "v1",
        "GatewayClass",
        "gatewayclasses",
    ));
    for (kind, plural) in [("Gateway", "gateways"), ("HTTPRoute", "httproutes")] {
        server.add_kind(KindSpec::namespaced(
            "gateway.networking.k8s.io",
            "v1",
            kind,
            plural,
        ));
    }
    server.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "istio"},
        "spec": {"controllerName": "istio.io/gateway-controller"},
    }));
    server.apply(json!({
        "apiVersion": GW.0, "kind": GW.1,
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"gatewayClassName": "istio", "listeners": [
            {"name": "http", "port": 8080, "protocol": "HTTP"},
            {"name": "https", "port": 8443, "protocol": "HTTPS",
             "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "web-cert"}]}},
        ]},
        // What the Gateway API CRD defaults a new Gateway's status to.
        "status": {"conditions": [
            {"type": "Accepted", "status": "Unknown", "reason": "Pending", "message": "Waiting for controller",
             "lastTransitionTime": "1970-01-01T00:00:00Z"}]},
    }));
    server.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "myapp", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "web"}], "hostnames": ["myapp.default.example.com"],
                 "rules": [{"backendRefs": [{"name": "myapp", "port": 8080}]}]},
    }));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-istio", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.80", "type": "LoadBalancer",
                 "selector": {"gateway.networking.k8s.io/gateway-name": "web"},
                 "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 8443}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
    }));
    server
}

fn condition<'a>(conditions: &'a Value, kind: &str) -> &'a Value {
    conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {conditions}"))
}

/// Gateway API status as istiod writes it: on the class, the Gateway (with its listeners) and
/// the route; once, not again on the watch echo; updated when the missing Secret appears.
#[tokio::test]
async fn gateway_api_status_is_written_once_and_follows_the_certificate() {
    let server = gateway_cluster().await;
    let mut source = KubeSource::start(server.client(), options()).await.unwrap();
    let first = source.initial_sync().await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let patched = |suffix: &str| {
        server
            .status_patches()
            .iter()
            .filter(|p| p.path.ends_with(suffix))
            .count()
    };
    assert_eq!(patched("/gatewayclasses/istio/status"), 1);
    assert_eq!(patched("/gateways/web/status"), 1);
    assert_eq!(patched("/httproutes/myapp/status"), 1);

    let class = server
        .get("gateway.networking.k8s.io/v1", "GatewayClass", "", "istio")
        .unwrap();
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted")["status"],
        "True"
    );

    let gw = server.get(GW.0, GW.1, "default", "web").unwrap();
    let s = &gw["status"];
    let accepted = condition(&s["conditions"], "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 1);
    assert!(accepted["lastTransitionTime"].as_str().unwrap() > "2026");
    assert_eq!(condition(&s["conditions"], "Programmed")["status"], "True");
    assert_eq!(
        s["addresses"],
        json!([{"type": "IPAddress", "value": "203.0.113.7"}])
    );
    let http = &s["listeners"][0];
    assert_eq!(http["name"], "http");
    assert_eq!(http["attachedRoutes"], 1);
    assert_eq!(
        condition(&http["conditions"], "ResolvedRefs")["status"],
        "True"
    );
    let https = &s["listeners"][1];
    let refs = condition(&https["conditions"], "ResolvedRefs");
    assert_eq!(refs["status"], "False");
    assert_eq!(refs["reason"], "InvalidCertificateRef");
    assert!(
        refs["message"]
            .as_str()
            .unwrap()
            .contains("default/web-cert not found")
    );

    let route = server
        .get(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            "default",
            "myapp",
        )
        .unwrap();
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "istio.io/gateway-controller");
    assert_eq!(parent["parentRef"]["name"], "web");
    assert_eq!(
        condition(&parent["conditions"], "Accepted")["reason"],
        "Accepted"
    );
    assert_eq!(
        condition(&parent["conditions"], "ResolvedRefs")["status"],
        "True"
    );

    // The missing class `mast` was created, as istiod creates `istio`, and is accepted.
    let mut updates = follow(source);
    eventually("the mast GatewayClass accepted", || {
        server
            .get("gateway.networking.k8s.io/v1", "GatewayClass", "", "mast")
            .is_some_and(|c| {
                c["spec"]["controllerName"] == "istio.io/gateway-controller"
                    && c["status"]["conditions"][0]["reason"] == "Accepted"
            })
    })
    .await;

    // The watch echo of those patches writes nothing more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.status_patches().len(),
        4,
        "{:?}",
        server.status_patches()
    );

    // The Secret appears: the HTTPS listener's references resolve; only the Gateway changes.
    let mut secret = tls_secret("web-cert", "CERT");
    secret["metadata"]["namespace"] = json!("default");
    server.apply(secret);
    until(&mut updates, |u| {
        u.model
            .tls_secrets
            .contains_key(&("default".to_string(), "web-cert".to_string()))
    })
    .await;
    eventually("the listener's refs resolved", || {
        server.get(GW.0, GW.1, "default", "web").is_some_and(|g| {
            condition(&g["status"]["listeners"][1]["conditions"], "ResolvedRefs")["status"]
                == "True"
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(patched("/gateways/web/status"), 2);
    assert_eq!(patched("/httproutes/myapp/status"), 1);
    // A time is kept for a condition that did not change.
    let again = server.get(GW.0, GW.1, "default", "web").unwrap();
    assert_eq!(
        condition(&again["status"]["conditions"], "Accepted")["lastTransitionTime"],
        accepted["lastTransitionTime"]
    );

    // The load balancer's address changes (a status-only change of the Service): reported.
    let mut service = server.get("v1", "Service", "default", "web-istio").unwrap();
    service["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}});
    server.apply(service);
    eventually("the new address reported", || {
        server
            .get(GW.0, GW.1, "default", "web")
            .is_some_and(|g| g["status"]["addresses"][0]["value"] == "203.0.113.9")
    })
    .await;
}

/// The injector's gateway template, as mastd wires it.
fn injector_renderer() -> crate::gateway_deploy::ProxyRenderer {
    use mast_injector::inject::{Settings, Workload, inject_pod};
    let settings = Settings {
        image: "mast/proxy:test".into(),
        ..Settings::default()
    };
    crate::gateway_deploy::ProxyRenderer(std::sync::Arc::new(
        move |pod: &Value, ns: &str, name: &str| {
            let workload = Workload::controller("apps/v1", "Deployment", ns, name);
            inject_pod(pod, ns, &workload, &settings).map_err(|e| e.to_string())
        },
    ))
}

/// A managed Gateway gets its proxy deployed: Deployment (the injector's gateway proxy) and
/// Service named `<gateway>-istio`, owned by the Gateway (a ServiceAccount too, but here one of
/// that name exists that Mast did not make: it is left alone); applied once; the Gateway's
/// deletion is left to the garbage collector.
#[tokio::test]
async fn a_gateway_gets_its_proxy_deployed_and_owned() {
    let server = gateway_cluster().await;
    server.add_builtin_kinds();
    // Not Mast's: the Service the status test stands in, gone; a ServiceAccount of that name
    // that someone made by hand, kept as it is (istiod's canManage).
    server.delete("v1", "Service", "default", "web-istio");
    server.apply(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "web-istio", "namespace": "default", "labels": {"team": "edge"}},
    }));
    // A second Gateway, of class mast, with nothing in its way.
    server.apply(json!({
        "apiVersion": GW.0, "kind": GW.1,
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {"gatewayClassName": "mast", "listeners": [{"name": "grpc", "port": 9090, "protocol": "HTTP"}]},
    }));
    let mut source = KubeSource::start(
        server.client(),
        Options {
            deploy_gateways: Some(injector_renderer()),
            ..options()
        },
    )
    .await
    .unwrap();
    source.initial_sync().await.unwrap();
    let gateway = server.get(GW.0, GW.1, "default", "web").unwrap();
    let uid = gateway["metadata"]["uid"].as_str().unwrap().to_string();
    let owned = |api_version: &str, kind: &str| {
        let o = server
            .get(api_version, kind, "default", "web-istio")
            .unwrap_or_else(|| panic!("no {kind} web-istio"));
        assert_eq!(
            o["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "web"
        );
        assert_eq!(
            o["metadata"]["ownerReferences"],
            json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "name": "web", "uid": uid}]),
            "{kind}"
        );
        o
    };
    let account = server
        .get("v1", "ServiceAccount", "default", "web-istio")
        .unwrap();
    assert_eq!(account["metadata"]["labels"], json!({"team": "edge"}));
    assert!(account["metadata"].get("ownerReferences").is_none());
    let api_uid = server.get(GW.0, GW.1, "default", "api").unwrap()["metadata"]["uid"].clone();
    for kind in ["ServiceAccount", "Service"] {
        let o = server.get("v1", kind, "default", "api-mast").unwrap();
        assert_eq!(
            o["metadata"]["ownerReferences"][0]["uid"], api_uid,
            "{kind}"
        );
        assert_eq!(
            o["metadata"]["labels"]["gateway.istio.io/managed"],
            "istio.io-gateway-controller"
        );
    }
    assert!(
        server
            .get("apps/v1", "Deployment", "default", "api-mast")
            .is_some()
    );
    let deployment = owned("apps/v1", "Deployment");
    let template = &deployment["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "web"
    );
    assert_eq!(template["spec"]["serviceAccountName"], "web-istio");
    let proxy = template["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("the proxy container");
    assert_eq!(proxy["image"], "mast/proxy:test");
    assert!(
        proxy["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "router"),
        "{}",
        proxy["args"]
    );
    assert!(
        template["spec"]["initContainers"]
            .as_array()
            .is_none_or(|c| c.iter().all(|c| c["name"] != "istio-init")),
        "a gateway has no traffic capture"
    );
    let service = owned("v1", "Service");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [15021, 8080, 8443]);
    let applies = || {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("PATCH ") && r.contains("/web-istio?"))
            .count()
    };
    assert_eq!(applies(), 2, "the Deployment and the Service");

    // Another change in the cluster: nothing to apply again.
    let mut updates = follow(source);
    server.apply(virtual_service(70, 30));
    until(&mut updates, |u| u.changed).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(applies(), 2);

    // The Gateway deleted: Mast deletes nothing (the objects are the garbage collector's,
    // through their owner reference) and re-applies nothing.
    server.delete(GW.0, GW.1, "default", "web");
    until(&mut updates, |u| u.changed).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(applies(), 2);
    assert!(!server.requests().iter().any(|r| r.starts_with("DELETE ")));
}
