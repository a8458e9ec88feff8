use base64::Engine as _;
use serde_json::json;

use super::*;

fn admission(pod: Value, namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b3f1c2d4-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    }))
    .unwrap()
}

fn deployment_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "user-v1-7c9d8f-",
            "labels": {"app": "user", "version": "v1", "pod-template-hash": "7c9d8f"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "user-v1-7c9d8f", "controller": true, "uid": "x"}]
        },
        "spec": {"containers": [{"name": "user", "image": "user:1",
                                  "ports": [{"containerPort": 8080}]}]}
    })
}

#[test]
fn patch_applies_to_the_injected_pod() {
    let pod = deployment_pod();
    let (review, outcome) = review(&admission(pod.clone(), "shop"), &Settings::default()).unwrap();
    assert!(matches!(outcome, Outcome::Injected { .. }), "{outcome:?}");
    let response = &review["response"];
    assert_eq!(response["uid"], "b3f1c2d4-0000-4000-8000-000000000001");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    // What the API server stores is what kube-inject would have produced.
    let w = Workload::of_pod(&pod, "shop");
    assert_eq!(w.name, "user-v1");
    let expected = inject::inject_pod(&pod, "shop", &w, &Settings::default()).unwrap();
    assert_eq!(patched, expected);
    let names: Vec<&str> = patched["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["istio-init", "istio-proxy"]);
}

#[test]
fn skipped_pods_are_allowed_unchanged() {
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"});
    let (review, outcome) = review(&admission(pod, "shop"), &Settings::default()).unwrap();
    assert!(matches!(outcome, Outcome::Skipped(_)));
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"].get("patch").is_none());
}

#[test]
fn bad_annotation_denies_naming_it() {
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"] =
        json!({"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/33"});
    let (review, outcome) = review(&admission(pod, "shop"), &Settings::default()).unwrap();
    assert!(matches!(outcome, Outcome::Denied(_)));
    assert_eq!(review["response"]["allowed"], false);
    let message = review["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("traffic.sidecar.istio.io/includeOutboundIPRanges"),
        "{message}"
    );
}

#[test]
fn undecodable_requests_are_errors_not_panics() {
    for body in [
        &b"not json"[..],
        b"{}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\"}",
        b"[1,2]",
    ] {
        assert!(review(body, &Settings::default()).is_err());
    }
}
