//! Rewriting the application's probes through the sidecar.
//!
//! With STRICT mTLS, the kubelet's plaintext HTTP probe to the app's port would be refused by the
//! sidecar's inbound listener. Istio therefore points each HTTP, TCP and gRPC probe (and HTTP/TCP
//! lifecycle hooks) at the agent's status port, `/app-health/<container>/{livez,readyz,startupz}`,
//! and hands the original probe to the agent in `ISTIO_KUBE_APP_PROBERS`; the agent (mast-proxy
//! on :15020) performs it against the app from inside the pod. Same paths, same JSON, so a pod
//! injected by Istio keeps working under Mast.

use serde_json::{Map, Value, json};

/// The probers gathered from the app containers: path → original handler (sorted, as Go's
/// `json.Marshal` of a map).
pub type Probers = std::collections::BTreeMap<String, Value>;

/// Rewrites the probes of `containers` (app containers only) to `status_port`, returning the
/// original handlers.
pub fn rewrite(containers: &mut [Value], status_port: u16) -> Probers {
    let mut probers = Probers::new();
    for container in containers.iter_mut() {
        let Some(name) = container
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            continue;
        };
        if name.starts_with("istio-") {
            continue;
        }
        let ports = named_ports(container);
        for (field, suffix) in [
            ("livenessProbe", "livez"),
            ("readinessProbe", "readyz"),
            ("startupProbe", "startupz"),
        ] {
            let path = format!("/app-health/{name}/{suffix}");
            if let Some(probe) = container.get_mut(field)
                && let Some(original) = rewrite_handler(probe, &path, status_port, &ports)
            {
                probers.insert(path, original);
            }
        }
        for (hook, suffix) in [("preStop", "prestopz"), ("postStart", "poststartz")] {
            let path = format!("/app-lifecycle/{name}/{suffix}");
            if let Some(handler) = container.pointer_mut(&format!("/lifecycle/{hook}"))
                && let Some(original) = rewrite_handler(handler, &path, status_port, &ports)
            {
                probers.insert(path, original);
            }
        }
    }
    probers
}

fn named_ports(container: &Value) -> Vec<(String, Value)> {
    container
        .get("ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    Some((
                        p.get("name")?.as_str()?.to_string(),
                        p.get("containerPort")?.clone(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn resolve_port(port: &Value, named: &[(String, Value)]) -> Value {
    match port {
        Value::String(name) => named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .or_else(|| name.parse::<u64>().ok().map(Value::from))
            .unwrap_or_else(|| port.clone()),
        other => other.clone(),
    }
}

/// Rewrites one probe or lifecycle handler in place; returns what the agent must run instead.
fn rewrite_handler(
    handler: &mut Value,
    path: &str,
    status_port: u16,
    named: &[(String, Value)],
) -> Option<Value> {
    let obj = handler.as_object_mut()?;
    if already_rewritten(obj, status_port) {
        return None;
    }
    let mut original = Map::new();
    if let Some(get) = obj.get("httpGet").and_then(Value::as_object) {
        // Istio's HTTPGetAction in Go field order: path, port, host, scheme, httpHeaders.
        let mut action = Map::new();
        if let Some(p) = get.get("path") {
            action.insert("path".into(), p.clone());
        }
        action.insert(
            "port".into(),
            resolve_port(get.get("port").unwrap_or(&Value::Null), named),
        );
        for key in ["host", "scheme", "httpHeaders"] {
            if let Some(v) = get.get(key) {
                action.insert(key.into(), v.clone());
            }
        }
        original.insert("httpGet".into(), Value::Object(action));
    } else if let Some(tcp) = obj.get("tcpSocket").and_then(Value::as_object) {
        let mut action = Map::new();
        action.insert(
            "port".into(),
            resolve_port(tcp.get("port").unwrap_or(&Value::Null), named),
        );
        if let Some(h) = tcp.get("host") {
            action.insert("host".into(), h.clone());
        }
        original.insert("tcpSocket".into(), Value::Object(action));
    } else if let Some(grpc) = obj.get("grpc") {
        original.insert("grpc".into(), grpc.clone());
    } else {
        return None;
    }
    if let Some(t) = obj.get("timeoutSeconds") {
        original.insert("timeoutSeconds".into(), t.clone());
    }
    let mut new_get = match obj.remove("httpGet") {
        Some(Value::Object(mut get)) => {
            get.remove("host");
            get.remove("httpHeaders");
            if get.contains_key("scheme") {
                get.insert("scheme".into(), json!("HTTP"));
            }
            get
        }
        _ => Map::new(),
    };
    obj.remove("tcpSocket");
    obj.remove("grpc");
    new_get.insert("path".into(), json!(path));
    new_get.insert("port".into(), json!(status_port));
    obj.insert("httpGet".into(), Value::Object(new_get));
    Some(Value::Object(original))
}

/// A handler an earlier injection pointed at the agent (re-injection keeps it as it is).
fn already_rewritten(obj: &Map<String, Value>, status_port: u16) -> bool {
    let Some(get) = obj.get("httpGet") else {
        return false;
    };
    let on_status_port = get.get("port").and_then(Value::as_u64) == Some(u64::from(status_port));
    let path = get.get("path").and_then(Value::as_str).unwrap_or("");
    on_status_port && (path.starts_with("/app-health/") || path.starts_with("/app-lifecycle/"))
}

/// Folds probers an earlier injection recorded (re-injection) under the new ones.
pub fn merge_previous(probers: &mut Probers, previous: Option<&str>) {
    let Some(text) = previous else { return };
    let Ok(Value::Object(old)) = serde_json::from_str::<Value>(text) else {
        return;
    };
    for (path, handler) in old {
        probers.entry(path).or_insert(handler);
    }
}
