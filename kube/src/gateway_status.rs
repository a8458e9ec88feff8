//! Gateway API status, computed as istiod's gateway controller reports it, so that
//! `kubectl get gateway` shows `PROGRAMMED True` and `kubectl describe httproute` says whether
//! the route attached — what a user of Istio looks at first when a route does not answer.
//!
//! This module only computes (pure functions over the objects and the mesh model, unit-tested
//! here); [`crate::source`] compares the result with what each object shows and writes the
//! difference. What is written, for Mast's classes only (`istio`, `mast`):
//! - GatewayClass whose `controllerName` is istiod's: `Accepted`.
//! - Gateway: `Accepted`; `Programmed` (True once the Service that fronts the gateway — the
//!   deployed `<name>-<class>` or the Service named in `spec.addresses` — exists and, for a
//!   LoadBalancer, has its external address; else False `AddressNotAssigned` (pending) or
//!   `AddressNotUsable` (no such Service)), with `addresses` as istiod reports them;
//!   per listener `supportedKinds`,
//!   `attachedRoutes`, `Accepted`, `Programmed` and `ResolvedRefs` (False
//!   `InvalidCertificateRef` when a certificate Secret is missing, `InvalidRouteKinds` for a
//!   kind the protocol cannot carry).
//! - HTTPRoute, GRPCRoute, TLSRoute, TCPRoute: one `parents[]` entry per parentRef to such a
//!   Gateway, with `controllerName: istio.io/gateway-controller`, `Accepted` (or why no
//!   listener took it) and `ResolvedRefs` (False `RefNotPermitted` for a backend in another
//!   namespace that no ReferenceGrant permits, `BackendNotFound` for a missing Service).
//!   Entries of other controllers are left as they are.
//!
//! Conditions are built without `lastTransitionTime`: [`stamp`] adds it, keeping the time of
//! a condition that did not change, and [`strip_times`] makes the comparison ignore it, so a
//! status is written only when something in it changed.

use std::collections::BTreeMap;

use mast_mesh_config::model::{MeshModel, ObjectRef};
use serde_json::{Value, json};

/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The controller that owns Mast's classes, istiod's name (routes' `parents[].controllerName`).
pub const CONTROLLER_NAME: &str = "istio.io/gateway-controller";
/// The classes Mast serves.
pub const CLASSES: &[&str] = &["istio", "mast"];
/// The route kinds a listener can carry.
pub const ROUTE_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute"];

/// One Gateway API object as the source tracks it: its pseudo-file JSON (spec, no status).
#[derive(Clone, Copy, Debug)]
pub struct Object<'a> {
    pub kind: &'a str,
    /// Empty for the cluster-scoped GatewayClass.
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub value: &'a Value,
}

/// What the cluster says of a Service that the mesh model does not keep: whether it is a
/// LoadBalancer, and the external addresses its load balancer got. Keyed by the Service's
/// fully qualified name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exposure {
    pub load_balancer: bool,
    pub external: Vec<String>,
}

impl Exposure {
    /// From a Service object as the API server returns it.
    pub fn of_service(service: &Value) -> Self {
        Self {
            load_balancer: service["spec"]["type"].as_str() == Some("LoadBalancer"),
            external: service["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
                .map(String::from)
                .collect(),
        }
    }
}

/// The status an object should show. For a route, `status` holds only Mast's `parents`
/// entries (see [`merge_route_parents`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub status: Value,
}

/// The status every served Gateway API object of Mast's classes should show.
pub fn compute(
    objects: &[Object<'_>],
    model: &MeshModel,
    exposure: &BTreeMap<String, Exposure>,
) -> Vec<Wanted> {
    let gateways: BTreeMap<(&str, &str), &Object<'_>> = objects
        .iter()
        .filter(|o| o.kind == "Gateway" && is_ours(o.value))
        .map(|o| ((o.namespace, o.name), o))
        .collect();
    let routes: Vec<&Object<'_>> = objects
        .iter()
        .filter(|o| ROUTE_KINDS.contains(&o.kind))
        .collect();
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o.kind == "GatewayClass") {
        if CLASSES.contains(&o.name)
            && o.value["spec"]["controllerName"].as_str() == Some(CONTROLLER_NAME)
        {
            out.push(wanted(
                o,
                json!({"conditions": [condition(
                    "Accepted", true, "Accepted", "Handled by Istio controller", o.generation,
                )]}),
            ));
        }
    }
    for gw in gateways.values() {
        out.push(wanted(gw, gateway_status(gw, &routes, model, exposure)));
    }
    for route in &routes {
        let parents = route_parents(route, &gateways, model);
        if !parents.is_empty() {
            out.push(wanted(route, json!({ "parents": parents })));
        }
    }
    out
}

/// A GatewayClass Mast creates when missing (as istiod creates its built-in `istio`).
pub fn builtin_class(api_version: &str, name: &str) -> Value {
    let description = if name == "istio" {
        "The default Istio GatewayClass"
    } else {
        "Mast's GatewayClass (Istio's gateway controller)"
    };
    json!({
        "apiVersion": api_version,
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": CONTROLLER_NAME, "description": description},
    })
}

/// A Gateway of one of Mast's classes.
pub fn is_ours(gateway: &Value) -> bool {
    gateway["spec"]["gatewayClassName"]
        .as_str()
        .is_some_and(|c| CLASSES.contains(&c))
}

/// The Service that fronts a Gateway: `<name>-<class>`, as Istio's automated deployment
/// names it, or the Service a `spec.addresses` entry of type Hostname names
/// (`<svc>.<ns>.svc.cluster.local`); its fully qualified name.
pub fn fronting_service(gateway: &Object<'_>) -> String {
    let named = gateway.value["spec"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"].as_str().is_none_or(|t| t == "Hostname"))
        .and_then(|a| a["value"].as_str());
    match named {
        Some(host) => host.to_string(),
        None => format!(
            "{}.{}.svc.cluster.local",
            deployment_name(gateway.name, gateway.value),
            gateway.namespace
        ),
    }
}

/// `<gateway>-<class>`: the name of what is deployed for a Gateway (Istio: `<name>-istio`).
pub fn deployment_name(name: &str, gateway: &Value) -> String {
    let class = gateway["spec"]["gatewayClassName"]
        .as_str()
        .unwrap_or("istio");
    format!("{name}-{class}")
}

fn wanted(o: &Object<'_>, status: Value) -> Wanted {
    Wanted {
        kind: o.kind.to_string(),
        namespace: o.namespace.to_string(),
        name: o.name.to_string(),
        status,
    }
}

/// A condition as the Gateway API shapes it (`lastTransitionTime` is added when written).
fn condition(kind: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Value {
    json!({
        "type": kind,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    })
}

/// `a`, `a and b`, `a, b, and c`: lists in messages, as istiod writes them.
fn human_join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}

fn gateway_status(
    gw: &Object<'_>,
    routes: &[&Object<'_>],
    model: &MeshModel,
    exposure: &BTreeMap<String, Exposure>,
) -> Value {
    let g = gw.generation;
    let host = fronting_service(gw);
    let listeners: Vec<Value> = gw.value["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| listener_status(gw, l, routes, model))
        .collect();
    let mut internal: Vec<String> = gw.value["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["port"].as_u64())
        .map(|p| format!("{host}:{p}"))
        .collect();
    internal.sort();
    internal.dedup();
    let (programmed, addresses) = if model.services.contains_key(&host) {
        let seen = exposure.get(&host).cloned().unwrap_or_default();
        let pending = seen.load_balancer && seen.external.is_empty();
        // Reported as istiod does: the external addresses, else the Service's hostname; none
        // while a LoadBalancer's address is pending.
        let addresses: Vec<Value> = if !seen.external.is_empty() {
            seen.external
                .iter()
                .map(|a| {
                    let kind = if a.parse::<std::net::IpAddr>().is_ok() {
                        "IPAddress"
                    } else {
                        "Hostname"
                    };
                    json!({"type": kind, "value": a})
                })
                .collect()
        } else if pending {
            Vec::new()
        } else {
            vec![json!({"type": "Hostname", "value": host})]
        };
        let programmed = if pending {
            condition(
                "Programmed",
                false,
                "AddressNotAssigned",
                &format!(
                    "Assigned to service(s) {}, but failed to assign to all requested addresses: address pending for hostname {host:?}",
                    human_join(&internal)
                ),
                g,
            )
        } else {
            condition(
                "Programmed",
                true,
                "Programmed",
                &format!(
                    "Resource programmed, assigned to service(s) {}",
                    human_join(&internal)
                ),
                g,
            )
        };
        (programmed, addresses)
    } else {
        (
            condition(
                "Programmed",
                false,
                "AddressNotUsable",
                &format!(
                    "Failed to assign to any requested addresses: hostname {host:?} not found"
                ),
                g,
            ),
            Vec::new(),
        )
    };
    let mut status = json!({
        "conditions": [
            condition("Accepted", true, "Accepted", "Resource accepted", g),
            programmed,
        ],
        "listeners": listeners,
    });
    if !addresses.is_empty() {
        status["addresses"] = Value::Array(addresses);
    }
    status
}

/// The route kinds a listener protocol carries.
fn protocol_kinds(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        _ => &[],
    }
}

fn listener_status(gw: &Object<'_>, l: &Value, routes: &[&Object<'_>], model: &MeshModel) -> Value {
    let g = gw.generation;
    let name = l["name"].as_str().unwrap_or_default();
    let protocol = l["protocol"].as_str().unwrap_or_default();
    let carried = protocol_kinds(protocol);
    // `allowedRoutes.kinds` narrows what the protocol carries; a kind it cannot carry is
    // InvalidRouteKinds.
    let asked: Vec<&str> = l["allowedRoutes"]["kinds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["group"].as_str().is_none_or(|g| g == GROUP))
        .filter_map(|k| k["kind"].as_str())
        .collect();
    let (supported, bad_kinds): (Vec<&str>, Vec<&str>) = if asked.is_empty() {
        (carried.to_vec(), Vec::new())
    } else {
        asked.iter().partition(|k| carried.contains(k))
    };
    let mut resolved = condition("ResolvedRefs", true, "ResolvedRefs", "No errors found", g);
    let mut programmed = condition("Programmed", true, "Programmed", "No errors found", g);
    let accepted = if carried.is_empty() {
        condition(
            "Accepted",
            false,
            "UnsupportedProtocol",
            &format!("protocol {protocol:?} is unsupported"),
            g,
        )
    } else {
        condition("Accepted", true, "Accepted", "No errors found", g)
    };
    if !bad_kinds.is_empty() {
        resolved = condition(
            "ResolvedRefs",
            false,
            "InvalidRouteKinds",
            &format!("invalid route kinds: {}", bad_kinds.join(", ")),
            g,
        );
    }
    let terminate = matches!(protocol, "HTTPS" | "TLS")
        && l["tls"]["mode"].as_str().is_none_or(|m| m == "Terminate");
    if terminate && let Some(message) = certificate_problem(gw, l, model) {
        resolved = condition("ResolvedRefs", false, "InvalidCertificateRef", &message, g);
        programmed = condition("Programmed", false, "Invalid", "Bad TLS configuration", g);
    }
    let attached = routes
        .iter()
        .filter(|r| {
            supported.contains(&r.kind)
                && parent_refs(r)
                    .any(|p| refers_to(r, p, gw) && listener_takes(gw, l, r, p, model).is_ok())
        })
        .count();
    json!({
        "name": name,
        "supportedKinds": supported.iter().map(|k| json!({"group": GROUP, "kind": k})).collect::<Vec<_>>(),
        "attachedRoutes": attached,
        "conditions": [accepted, programmed, resolved],
    })
}

/// Why a terminating listener's certificate references do not resolve, if they do not.
fn certificate_problem(gw: &Object<'_>, l: &Value, model: &MeshModel) -> Option<String> {
    let refs: Vec<&Value> = l["tls"]["certificateRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if refs.is_empty() {
        return Some("no certificateRefs for a listener that terminates TLS".into());
    }
    for r in refs {
        let name = r["name"].as_str().unwrap_or_default();
        let ns = r["namespace"].as_str().unwrap_or(gw.namespace);
        let group = r["group"].as_str().unwrap_or("");
        let kind = r["kind"].as_str().unwrap_or("Secret");
        // istiod's rendering of the reference: `<group>/<kind>/<name>.<namespace as given>`.
        let shown = format!(
            "{group}/{kind}/{name}.{}",
            r["namespace"].as_str().unwrap_or("")
        );
        if !group.is_empty() || kind != "Secret" {
            return Some(format!(
                "invalid certificate reference {shown}: only core Secrets are supported"
            ));
        }
        let found = model
            .tls_secrets
            .get(&(ns.to_string(), name.to_string()))
            .is_some_and(|s| s.cert.is_some() && s.key.is_some());
        if !found {
            return Some(format!(
                "invalid certificate reference {shown}, secret {ns}/{name} not found"
            ));
        }
    }
    None
}

/// A route's `parentRefs`.
fn parent_refs<'a>(route: &'a Object<'_>) -> impl Iterator<Item = &'a Value> + 'a {
    route.value["spec"]["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
}

/// Whether `parent` (a route's parentRef) names the Gateway `gw`.
fn refers_to(route: &Object<'_>, parent: &Value, gw: &Object<'_>) -> bool {
    parent["group"].as_str().unwrap_or(GROUP) == GROUP
        && parent["kind"].as_str().unwrap_or("Gateway") == "Gateway"
        && parent["name"].as_str() == Some(gw.name)
        && parent["namespace"].as_str().unwrap_or(route.namespace) == gw.namespace
}

/// Whether listener `l` of `gw` takes `route` through `parent`; if not, the Gateway API
/// reason and a message.
fn listener_takes(
    gw: &Object<'_>,
    l: &Value,
    route: &Object<'_>,
    parent: &Value,
    model: &MeshModel,
) -> Result<(), (&'static str, String)> {
    if let Some(section) = parent["sectionName"].as_str()
        && l["name"].as_str() != Some(section)
    {
        return Err(("NoMatchingParent", format!("no listener named {section:?}")));
    }
    if let Some(port) = parent["port"].as_u64()
        && l["port"].as_u64() != Some(port)
    {
        return Err(("NoMatchingParent", format!("no listener on port {port}")));
    }
    let protocol = l["protocol"].as_str().unwrap_or_default();
    let kinds: Vec<&str> = match l["allowedRoutes"]["kinds"].as_array() {
        Some(k) if !k.is_empty() => k.iter().filter_map(|k| k["kind"].as_str()).collect(),
        _ => protocol_kinds(protocol).to_vec(),
    };
    if !kinds.contains(&route.kind) || !protocol_kinds(protocol).contains(&route.kind) {
        return Err((
            "NotAllowedByListeners",
            format!("{} is not allowed by listener {:?}", route.kind, l["name"]),
        ));
    }
    let from = &l["allowedRoutes"]["namespaces"];
    let allowed_ns = match from["from"].as_str().unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            let labels = model.namespaces.get(route.namespace).map(|n| &n.labels);
            from["selector"]["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| labels.and_then(|l| l.get(k)).map(String::as_str) == v.as_str())
                && from["selector"]["matchExpressions"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
        }
        _ => route.namespace == gw.namespace,
    };
    if !allowed_ns {
        return Err((
            "NotAllowedByListeners",
            format!(
                "namespace {:?} is not allowed by listener {:?}",
                route.namespace, l["name"]
            ),
        ));
    }
    if let Some(listener_host) = l["hostname"].as_str() {
        let hosts: Vec<&str> = route.value["spec"]["hostnames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !hosts.is_empty() && !hosts.iter().any(|h| hostnames_intersect(h, listener_host)) {
            return Err((
                "NoMatchingListenerHostname",
                "no hostnames matched parent hostname".into(),
            ));
        }
    }
    Ok(())
}

/// Gateway API hostname matching: equal, or one a `*.` wildcard covering the other.
fn hostnames_intersect(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    let covers = |wild: &str, other: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| other.ends_with(suffix) && other.len() > suffix.len())
    };
    a == b || covers(&a, &b) || covers(&b, &a)
}

/// Mast's `parents[]` entries for a route: one per parentRef to a Gateway of Mast's classes.
fn route_parents(
    route: &Object<'_>,
    gateways: &BTreeMap<(&str, &str), &Object<'_>>,
    model: &MeshModel,
) -> Vec<Value> {
    let g = route.generation;
    let backends = unresolved_backends(route, model);
    parent_refs(route)
        .filter_map(|p| {
            let ns = p["namespace"].as_str().unwrap_or(route.namespace);
            let gw = gateways.get(&(ns, p["name"].as_str()?))?;
            if !refers_to(route, p, gw) {
                return None;
            }
            let mut why = None;
            let mut accepted = false;
            for l in gw.value["spec"]["listeners"]
                .as_array()
                .into_iter()
                .flatten()
            {
                match listener_takes(gw, l, route, p, model) {
                    Ok(()) => accepted = true,
                    Err(e) => {
                        why.get_or_insert(e);
                    }
                }
            }
            let accepted = if accepted {
                condition("Accepted", true, "Accepted", "Route was valid", g)
            } else {
                let (reason, message) =
                    why.unwrap_or(("NoMatchingParent", "the Gateway has no listeners".into()));
                condition("Accepted", false, reason, &message, g)
            };
            let resolved = match backends.first() {
                None => condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "All references resolved",
                    g,
                ),
                Some((reason, message)) => condition("ResolvedRefs", false, reason, message, g),
            };
            let mut parent_ref = json!({
                "group": GROUP,
                "kind": "Gateway",
                "name": gw.name,
            });
            if p["namespace"].is_string() {
                parent_ref["namespace"] = json!(ns);
            }
            for key in ["sectionName", "port"] {
                if !p[key].is_null() {
                    parent_ref[key] = p[key].clone();
                }
            }
            Some(json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": [accepted, resolved],
            }))
        })
        .collect()
}

/// Why a route's Service backends do not resolve, as `(reason, message)`: a backend in
/// another namespace that no ReferenceGrant there permits (`RefNotPermitted`, checked first:
/// such a backend is not used even when it exists), or one that is not in the model
/// (`BackendNotFound`).
fn unresolved_backends(route: &Object<'_>, model: &MeshModel) -> Vec<(&'static str, String)> {
    let mut missing = Vec::new();
    for rule in route.value["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for b in rule["backendRefs"].as_array().into_iter().flatten() {
            if !b["group"].as_str().unwrap_or("").is_empty()
                || b["kind"].as_str().unwrap_or("Service") != "Service"
            {
                continue;
            }
            let Some(name) = b["name"].as_str() else {
                continue;
            };
            let ns = b["namespace"].as_str().unwrap_or(route.namespace);
            let from = ObjectRef {
                group: GROUP,
                kind: route.kind,
                namespace: route.namespace,
                name: route.name,
            };
            let to = ObjectRef {
                group: "",
                kind: "Service",
                namespace: ns,
                name,
            };
            let host = format!("{name}.{ns}.svc.cluster.local");
            let problem = if !model.reference_permitted(from, to) {
                (
                    "RefNotPermitted",
                    format!(
                        "backendRef {name}/{ns} not accessible to a {} in namespace {:?} \
                         (missing a ReferenceGrant?)",
                        route.kind, route.namespace
                    ),
                )
            } else if !model.services.contains_key(&host) {
                ("BackendNotFound", format!("backend({host}) not found"))
            } else {
                continue;
            };
            if !missing.contains(&problem) {
                missing.push(problem);
            }
        }
    }
    missing.sort_by_key(|(reason, _)| *reason != "RefNotPermitted");
    missing
}

/// `status` without any condition's `lastTransitionTime`: what decides whether to write.
pub fn strip_times(status: &Value) -> Value {
    let mut s = status.clone();
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("lastTransitionTime");
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut s);
    s
}

/// Mast's entries of a route's current `parents` (those with its controllerName).
pub fn our_parents(status: &Value) -> Value {
    Value::Array(
        status["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["controllerName"].as_str() == Some(CONTROLLER_NAME))
            .cloned()
            .collect(),
    )
}

/// A route's whole `parents` list: other controllers' entries as they are, then ours.
pub fn merge_route_parents(current: &Value, ours: &Value) -> Value {
    let mut parents: Vec<Value> = current["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"].as_str() != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    parents.extend(ours["parents"].as_array().into_iter().flatten().cloned());
    json!({ "parents": parents })
}

/// Give every condition in `wanted` a `lastTransitionTime`: the one the same condition has in
/// `current` when its status did not change, else `now`.
pub fn stamp(wanted: &mut Value, current: &Value, now: &str) {
    fn conditions_at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
        path.iter().fold(v, |v, k| &v[*k])
    }
    fn stamp_list(list: &mut Value, old: &Value, now: &str) {
        for c in list.as_array_mut().into_iter().flatten() {
            let previous = old
                .as_array()
                .into_iter()
                .flatten()
                .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                .and_then(|o| o.get("lastTransitionTime").cloned());
            c["lastTransitionTime"] = previous.unwrap_or_else(|| json!(now));
        }
    }
    let old_top = conditions_at(current, &["conditions"]).clone();
    if let Some(list) = wanted.get_mut("conditions") {
        stamp_list(list, &old_top, now);
    }
    for key in ["listeners", "parents"] {
        let old_items = current[key].clone();
        let items = wanted.get_mut(key).and_then(Value::as_array_mut);
        for item in items.into_iter().flatten() {
            let same = old_items.as_array().into_iter().flatten().find(|o| {
                (key == "listeners" && o["name"] == item["name"])
                    || (key == "parents" && o["parentRef"] == item["parentRef"])
            });
            let old = same.map(|o| o["conditions"].clone()).unwrap_or(Value::Null);
            if let Some(list) = item.get_mut("conditions") {
                stamp_list(list, &old, now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
