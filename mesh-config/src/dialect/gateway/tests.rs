use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::model::*;
use crate::store::ConfigStore;

/// The model of these YAML documents, which must all be accepted.
fn model(docs: &[&str]) -> std::sync::Arc<MeshModel> {
    let mut store = ConfigStore::default();
    let files: BTreeMap<PathBuf, String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (PathBuf::from(format!("{i}.yaml")), d.to_string()))
        .collect();
    let report = store.apply_files(files);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    store.model()
}

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: backend}\n\
    spec:\n  selector: {app: api}\n  ports: [{name: http, port: 8080}]\n---\n\
    apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: front}\n\
    spec:\n  selector: {app: web}\n  ports: [{name: http, port: 8080}]\n";

/// An HTTPRoute in `front` attached to a Gateway, sending half to `front/web` and half to
/// `backend/api`.
const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
    metadata: {name: split, namespace: front}\nspec:\n  parentRefs: [{name: edge}]\n  rules:\n\
    \x20 - backendRefs:\n    - {name: web, port: 8080, weight: 1}\n\
    \x20   - {name: api, namespace: backend, port: 8080, weight: 1}\n";

fn grant(to_name: Option<&str>, from_ns: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
         metadata: {{name: allow-front, namespace: backend}}\nspec:\n\
         \x20 from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {from_ns}}}]\n\
         \x20 to: [{{group: \"\", kind: Service{}}}]\n",
        to_name.map(|n| format!(", name: {n}")).unwrap_or_default()
    )
}

fn backends(m: &MeshModel) -> Vec<String> {
    let t = m
        .routes
        .iter()
        .find(|t| t.source.name == "split")
        .expect("the route");
    match &t.http[0].action {
        RouteAction::Forward(ds) => ds.iter().map(|d| d.destination.host.clone()).collect(),
        other => vec![format!("{other:?}")],
    }
}

#[test]
fn a_backend_in_another_namespace_needs_a_reference_grant() {
    let web = "web.front.svc.cluster.local";
    let api = "api.backend.svc.cluster.local";
    // No grant: only the same-namespace backend is used.
    assert_eq!(backends(&model(&[SERVICES, ROUTE])), [web]);
    // A grant in `backend` for HTTPRoutes of `front`: both.
    let all = grant(None, "front");
    assert_eq!(backends(&model(&[SERVICES, ROUTE, &all])), [web, api]);
    // A grant naming the Service, or one for another namespace.
    let named = grant(Some("api"), "front");
    assert_eq!(backends(&model(&[SERVICES, ROUTE, &named])).len(), 2);
    let other_name = grant(Some("db"), "front");
    assert_eq!(backends(&model(&[SERVICES, ROUTE, &other_name])), [web]);
    let other_ns = grant(None, "elsewhere");
    assert_eq!(backends(&model(&[SERVICES, ROUTE, &other_ns])), [web]);
}

#[test]
fn a_rule_whose_backends_are_all_refused_answers_500() {
    let only_api = ROUTE.replace("    - {name: web, port: 8080, weight: 1}\n", "");
    let m = model(&[SERVICES, &only_api]);
    assert_eq!(
        backends(&m),
        [format!(
            "{:?}",
            RouteAction::DirectResponse {
                status: 500,
                body: None
            }
        )]
    );
}

#[test]
fn tls_and_tcp_routes_bind_to_their_gateway() {
    let tls = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\n\
        metadata: {name: db-tls, namespace: front}\nspec:\n  parentRefs: [{name: edge, port: 9443}]\n\
        \x20 hostnames: [db.example.com]\n  rules:\n  - backendRefs: [{name: web, port: 8080}]\n";
    let tcp = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\n\
        metadata: {name: db-tcp, namespace: front}\nspec:\n  parentRefs: [{name: edge}]\n\
        \x20 rules:\n  - backendRefs: [{name: web, port: 8080, weight: 3}, {name: api, namespace: backend, port: 8080}]\n";
    let m = model(&[SERVICES, tls, tcp]);
    let t = m
        .routes
        .iter()
        .find(|t| t.source.name == "db-tls")
        .expect("tls");
    assert_eq!(t.gateways, ["front/edge"]);
    assert_eq!(t.hosts, ["db.example.com"]);
    assert_eq!(t.tls[0].sni_hosts, ["db.example.com"]);
    assert_eq!(t.tls[0].port, Some(9443));
    assert_eq!(
        t.tls[0].destinations[0].destination.host,
        "web.front.svc.cluster.local"
    );
    let t = m
        .routes
        .iter()
        .find(|t| t.source.name == "db-tcp")
        .expect("tcp");
    assert_eq!(t.gateways, ["front/edge"]);
    // The backend in `backend` has no ReferenceGrant: only web is left, at its weight.
    let ds = &t.tcp[0].destinations;
    assert_eq!(ds.len(), 1);
    assert_eq!(
        (ds[0].destination.host.as_str(), ds[0].weight),
        ("web.front.svc.cluster.local", 3)
    );
}

#[test]
fn allowed_routes_from_a_namespace_selector() {
    let namespaces = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {shared-gateway-access: \"true\"}}\n---\n\
        apiVersion: v1\nkind: Namespace\nmetadata: {name: b, labels: {team: b}}\n---\n\
        apiVersion: v1\nkind: Namespace\nmetadata: {name: c, labels: {shared-gateway-access: \"true\", env: dev}}\n";
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
        metadata: {name: shared, namespace: infra}\nspec:\n  gatewayClassName: istio\n  listeners:\n\
        \x20 - name: http\n    port: 8080\n    protocol: HTTP\n    hostname: \"*.example.com\"\n\
        \x20   allowedRoutes:\n      namespaces:\n        from: Selector\n        selector:\n\
        \x20         matchLabels: {shared-gateway-access: \"true\"}\n\
        \x20         matchExpressions: [{key: env, operator: NotIn, values: [prod]}]\n";
    let m = model(&[namespaces, gateway]);
    let g = m
        .gateways
        .iter()
        .find(|g| g.name == "shared")
        .expect("gateway");
    let hosts: Vec<(Option<&str>, &str)> = g.servers[0]
        .hosts
        .iter()
        .map(|h| (h.namespace.as_deref(), h.host.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [(Some("a"), "*.example.com"), (Some("c"), "*.example.com")]
    );
}
