//! The Gateway API status computation on small clusters built from YAML, as the source sees
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mast_mesh_config::store::ConfigStore;
use serde_json::{Value, json};

use super::*;

fn model(docs: &[Value]) -> std::sync::Arc<MeshModel> {
    let files: BTreeMap<PathBuf, String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (PathBuf::from(format!("{i}.yaml")), d.to_string()))
        .collect();
    let mut store = ConfigStore::default();
    let report = store.apply_files(files);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    store.model()
}

fn service(name: &str, ns: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}})
}

fn secret(name: &str, ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
           "stringData": {"tls.crt": "CERT", "tls.key": "KEY"}})
}

fn gateway() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"gatewayClassName": "istio", "listeners": [
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
         "tls": {"certificateRefs": [{"kind": "Secret", "name": "web-cert"}]}},
    ]}})
}

fn route(name: &str, hostnames: Value, backend: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"parentRefs": [{"name": "web"}], "hostnames": hostnames,
                    "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}})
}

fn object(v: &Value) -> Object<'_> {
    Object {
        kind: v["kind"].as_str().unwrap(),
        namespace: v["metadata"]["namespace"].as_str().unwrap_or(""),
        name: v["metadata"]["name"].as_str().unwrap(),
        generation: Some(2),
        value: v,
    }
}

fn find<'a>(w: &'a [Wanted], kind: &str, name: &str) -> &'a Value {
    &w.iter()
        .find(|w| w.kind == kind && w.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {name}: {w:?}"))
        .status
}

fn cond<'a>(conditions: &'a Value, kind: &str) -> &'a Value {
    conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {conditions}"))
}

#[test]
fn a_programmed_gateway_counts_the_routes_each_listener_takes() {
    let m = model(&[
        service("web-istio", "default", "10.96.0.20"),
        service("myapp", "default", "10.96.0.21"),
        secret("web-cert", "default"),
    ]);
    let gw = gateway();
    let any_host = route("all", json!([]), "myapp");
    let other_host = route("other", json!(["shop.other.org"]), "myapp");
    let objects = [object(&gw), object(&any_host), object(&other_host)];
    let w = compute(&objects, &m, &BTreeMap::new());

    let s = find(&w, "Gateway", "web");
    assert_eq!(cond(&s["conditions"], "Accepted")["status"], "True");
    let programmed = cond(&s["conditions"], "Programmed");
    assert_eq!(programmed["status"], "True");
    assert_eq!(programmed["reason"], "Programmed");
    assert_eq!(
        programmed["message"],
        "Resource programmed, assigned to service(s) web-istio.default.svc.cluster.local:443 and web-istio.default.svc.cluster.local:80"
    );
    assert_eq!(programmed["observedGeneration"], 2);
    assert_eq!(
        s["addresses"],
        json!([{"type": "Hostname", "value": "web-istio.default.svc.cluster.local"}])
    );

    // A LoadBalancer: not programmed while its address is pending, then its address.
    let host = "web-istio.default.svc.cluster.local".to_string();
    let mut exposure = BTreeMap::from([(
        host.clone(),
        Exposure {
            load_balancer: true,
            external: vec![],
        },
    )]);
    let pending = compute(&objects, &m, &exposure);
    let p = find(&pending, "Gateway", "web");
    let programmed = cond(&p["conditions"], "Programmed");
    assert_eq!(programmed["reason"], "AddressNotAssigned");
    assert!(
        programmed["message"]
            .as_str()
            .unwrap()
            .ends_with("but failed to assign to all requested addresses: address pending for hostname \"web-istio.default.svc.cluster.local\""),
        "{programmed}"
    );
    assert!(p.get("addresses").is_none());
    exposure.insert(
        host,
        Exposure::of_service(&json!({
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
        })),
    );
    let assigned = compute(&objects, &m, &exposure);
    let a = find(&assigned, "Gateway", "web");
    assert_eq!(cond(&a["conditions"], "Programmed")["status"], "True");
    assert_eq!(
        a["addresses"],
        json!([{"type": "IPAddress", "value": "203.0.113.7"}])
    );
    let http = &s["listeners"][0];
    assert_eq!(http["name"], "http");
    // Both routes attach to the plain listener; only the one without hostnames to *.example.com.
    assert_eq!(http["attachedRoutes"], 2);
    assert_eq!(
        http["supportedKinds"],
        json!([{"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}])
    );
    let https = &s["listeners"][1];
    assert_eq!(https["attachedRoutes"], 1);
    for c in ["Accepted", "Programmed", "ResolvedRefs"] {
        assert_eq!(cond(&https["conditions"], c)["status"], "True", "{c}");
    }

    let r = find(&w, "HTTPRoute", "all");
    assert_eq!(r["parents"].as_array().unwrap().len(), 1);
    let p = &r["parents"][0];
    assert_eq!(p["controllerName"], CONTROLLER_NAME);
    assert_eq!(
        p["parentRef"],
        json!({"group": GROUP, "kind": "Gateway", "name": "web"})
    );
    assert_eq!(cond(&p["conditions"], "Accepted")["reason"], "Accepted");
    assert_eq!(cond(&p["conditions"], "ResolvedRefs")["status"], "True");
}

#[test]
fn missing_secret_service_and_backend_are_reported() {
    let m = model(&[service("other", "default", "10.96.0.5")]);
    let gw = gateway();
    let r = route("r", json!(["a.example.com"]), "nowhere");
    let w = compute(&[object(&gw), object(&r)], &m, &BTreeMap::new());
    let s = find(&w, "Gateway", "web");
    let programmed = cond(&s["conditions"], "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "AddressNotUsable");
    assert_eq!(
        programmed["message"],
        "Failed to assign to any requested addresses: hostname \"web-istio.default.svc.cluster.local\" not found"
    );
    assert!(s.get("addresses").is_none());
    let https = &s["listeners"][1];
    let resolved = cond(&https["conditions"], "ResolvedRefs");
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "InvalidCertificateRef");
    assert_eq!(
        resolved["message"],
        "invalid certificate reference /Secret/web-cert., secret default/web-cert not found"
    );
    assert_eq!(
        cond(&https["conditions"], "Programmed")["reason"],
        "Invalid"
    );
    let rs = find(&w, "HTTPRoute", "r");
    let resolved = cond(&rs["parents"][0]["conditions"], "ResolvedRefs");
    assert_eq!(resolved["reason"], "BackendNotFound");
    assert_eq!(
        resolved["message"],
        "backend(nowhere.default.svc.cluster.local) not found"
    );
}

#[test]
fn routes_not_allowed_are_not_accepted_and_others_classes_are_left_alone() {
    let m = model(&[]);
    let gw = gateway();
    let mut elsewhere = route("elsewhere", json!([]), "myapp");
    elsewhere["metadata"]["namespace"] = json!("shop");
    elsewhere["spec"]["parentRefs"][0]["namespace"] = json!("default");
    let mut wrong_section = route("wrong-section", json!([]), "myapp");
    wrong_section["spec"]["parentRefs"][0]["sectionName"] = json!("grpc");
    let mut foreign = gateway();
    foreign["metadata"]["name"] = json!("cilium-gw");
    foreign["spec"]["gatewayClassName"] = json!("cilium");
    let mut foreign_route = route("foreign", json!([]), "myapp");
    foreign_route["spec"]["parentRefs"][0]["name"] = json!("cilium-gw");
    let objects = [
        object(&gw),
        object(&elsewhere),
        object(&wrong_section),
        object(&foreign),
        object(&foreign_route),
    ];
    let w = compute(&objects, &m, &BTreeMap::new());
    let p = &find(&w, "HTTPRoute", "elsewhere")["parents"][0];
    assert_eq!(p["parentRef"]["namespace"], "default");
    let accepted = cond(&p["conditions"], "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "NotAllowedByListeners");
    let p = &find(&w, "HTTPRoute", "wrong-section")["parents"][0];
    assert_eq!(
        cond(&p["conditions"], "Accepted")["reason"],
        "NoMatchingParent"
    );
    assert_eq!(p["parentRef"]["sectionName"], "grpc");
    assert!(
        !w.iter()
            .any(|w| w.name == "cilium-gw" || w.name == "foreign")
    );
    assert_eq!(
        find(&w, "Gateway", "web")["listeners"][0]["attachedRoutes"],
        0
    );
}

#[test]
fn gateway_classes_of_istios_controller_are_accepted() {
    let class = |name: &str, controller: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": name}, "spec": {"controllerName": controller}})
    };
    let (istio, mast, other) = (
        class("istio", CONTROLLER_NAME),
        class("mast", CONTROLLER_NAME),
        class("cilium", "io.cilium/gateway-controller"),
    );
    let w = compute(
        &[object(&istio), object(&mast), object(&other)],
        &model(&[]),
        &BTreeMap::new(),
    );
    assert_eq!(w.len(), 2);
    let c = cond(&find(&w, "GatewayClass", "istio")["conditions"], "Accepted");
    assert_eq!(c["reason"], "Accepted");
    assert_eq!(c["message"], "Handled by Istio controller");
}

#[test]
fn times_are_kept_for_unchanged_conditions_and_ignored_when_comparing() {
    let mut wanted = json!({"conditions": [
        {"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "True"}],
        "listeners": [{"name": "http", "conditions": [{"type": "Accepted", "status": "True"}]}]});
    let current = json!({"conditions": [
        {"type": "Accepted", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Programmed", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "listeners": [{"name": "http", "conditions": [
            {"type": "Accepted", "status": "True", "lastTransitionTime": "2026-01-02T00:00:00Z"}]}]});
    let before = wanted.clone();
    stamp(&mut wanted, &current, "2026-12-07T12:00:00Z");
    assert_eq!(
        wanted["conditions"][0]["lastTransitionTime"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(
        wanted["conditions"][1]["lastTransitionTime"],
        "2026-12-07T12:00:00Z"
    );
    assert_eq!(
        wanted["listeners"][0]["conditions"][0]["lastTransitionTime"],
        "2026-01-02T00:00:00Z"
    );
    assert_eq!(strip_times(&wanted), before);
}

#[test]
fn other_controllers_parents_are_kept() {
    let current = json!({"parents": [
        {"controllerName": "example.com/other", "parentRef": {"name": "x"}},
        {"controllerName": CONTROLLER_NAME, "parentRef": {"name": "old"}},
    ]});
    let ours =
        json!({"parents": [{"controllerName": CONTROLLER_NAME, "parentRef": {"name": "web"}}]});
    assert_eq!(our_parents(&current).as_array().unwrap().len(), 1);
    let merged = merge_route_parents(&current, &ours);
    assert_eq!(
        merged["parents"],
        json!([
            {"controllerName": "example.com/other", "parentRef": {"name": "x"}},
            {"controllerName": CONTROLLER_NAME, "parentRef": {"name": "web"}},
        ])
    );
}

#[test]
fn a_backend_in_another_namespace_needs_a_reference_grant() {
    let gw = gateway();
    let mut r = route("r", json!(["a.example.com"]), "api");
    r["spec"]["rules"][0]["backendRefs"][0]["namespace"] = json!("backend");
    let grant = json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "from-default", "namespace": "backend"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default"}],
                 "to": [{"group": "", "kind": "Service"}]}});
    let api = service("api", "backend", "10.96.0.7");
    // The Service exists, but nothing in `backend` lets `default`'s routes use it.
    let m = model(std::slice::from_ref(&api));
    let w = compute(&[object(&gw), object(&r)], &m, &BTreeMap::new());
    let resolved = cond(
        &find(&w, "HTTPRoute", "r")["parents"][0]["conditions"],
        "ResolvedRefs",
    );
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "RefNotPermitted");
    assert_eq!(
        resolved["message"],
        "backendRef api/backend not accessible to a HTTPRoute in namespace \"default\" (missing a ReferenceGrant?)"
    );
    // With the grant, it resolves.
    let m = model(&[api, grant]);
    let w = compute(&[object(&gw), object(&r)], &m, &BTreeMap::new());
    let resolved = cond(
        &find(&w, "HTTPRoute", "r")["parents"][0]["conditions"],
        "ResolvedRefs",
    );
    assert_eq!(resolved["status"], "True");
}
