use serde_json::json;

use super::*;

#[test]
fn decision_follows_istio() {
    let s = Settings::default();
    let pod = |labels: Value, annotations: Value, host: bool| {
        json!({"metadata": {"name": "p", "labels": labels, "annotations": annotations},
               "spec": {"hostNetwork": host, "containers": [{"name": "app"}]}})
    };
    assert_eq!(
        decide(&pod(json!({}), json!({}), false), "default", &s),
        Decision::Inject
    );
    assert!(matches!(
        decide(&pod(json!({}), json!({}), true), "default", &s),
        Decision::Skip(_)
    ));
    assert!(matches!(
        decide(&pod(json!({}), json!({}), false), "kube-system", &s),
        Decision::Skip(_)
    ));
    let off = pod(json!({}), json!({INJECT_KEY: "false"}), false);
    assert!(matches!(decide(&off, "default", &s), Decision::Skip(_)));
    // The label overrides the annotation.
    let on = pod(
        json!({INJECT_KEY: "true"}),
        json!({INJECT_KEY: "false"}),
        false,
    );
    assert_eq!(decide(&on, "default", &s), Decision::Inject);
}

const INJECT_KEY: &str = ann::INJECT;

#[test]
fn workload_from_owner_references() {
    let pod = json!({"metadata": {"name": "web-5d8f7-abcde", "labels": {"pod-template-hash": "5d8f7"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7", "controller": true}]}});
    let w = Workload::of_pod(&pod, "shop");
    assert_eq!(w.name, "web");
    assert_eq!(
        w.owner,
        "kubernetes://apis/apps/v1/namespaces/shop/deployments/web"
    );
    let job = json!({"metadata": {"name": "x", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "backup-28900000", "controller": true}]}});
    assert_eq!(
        Workload::of_pod(&job, "ns").owner,
        "kubernetes://apis/batch/v1/namespaces/ns/cronjobs/backup"
    );
    let bare = json!({"metadata": {"name": "solo"}});
    assert_eq!(
        Workload::of_pod(&bare, "ns").owner,
        "kubernetes://apis/v1/namespaces/ns/pods/solo"
    );
}

#[test]
fn bad_annotation_is_named() {
    let pod = json!({"metadata": {"name": "p", "annotations": {
        "traffic.sidecar.istio.io/excludeOutboundPorts": "80,http"}},
        "spec": {"containers": [{"name": "app"}]}});
    let w = Workload::controller("v1", "Pod", "default", "p");
    let err = inject_pod(&pod, "default", &w, &Settings::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("traffic.sidecar.istio.io/excludeOutboundPorts"),
        "{text}"
    );
    assert!(text.contains("http"), "{text}");
}

#[test]
fn reinjection_is_idempotent() {
    let pod = json!({"metadata": {"name": "p", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080, "name": "http"}],
                 "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}}}]}});
    let w = Workload::controller("v1", "Pod", "default", "p");
    let s = Settings::default();
    let once = inject_pod(&pod, "default", &w, &s).unwrap();
    let twice = inject_pod(&once, "default", &w, &s).unwrap();
    assert_eq!(once, twice);
}
