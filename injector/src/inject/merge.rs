//! Putting the rendered sidecar into the user's pod.
//!
//! A user may declare a container named `istio-proxy` or `istio-init` to customise it (Istio's
//! documented way to set, say, a liveness probe or extra mounts on the sidecar). Those
//! declarations are merged over the template the way Kubernetes' strategic merge patch merges
//! containers: maps field by field, `env` by name, `volumeMounts` by path, `ports` by number,
//! other lists replaced; `image: auto` means "the injector's image". What the user declared is
//! recorded in `proxy.istio.io/overrides` so that re-injection reproduces it.

use serde_json::{Map, Value, json};

use super::annotations as ann;
use super::template::{Params, Rendered};
use super::{InjectError, quantity};

/// Merges `rendered` into `pod`; `previous` are the istio-* containers of an earlier injection.
pub fn apply(
    pod: &mut Value,
    rendered: Rendered,
    params: &Params,
    previous: Vec<Value>,
) -> Result<(), InjectError> {
    let injected_names: Vec<String> = rendered
        .init_containers
        .iter()
        .chain(&rendered.containers)
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();

    // The user's own declarations of injected containers, from the spec or (re-injection)
    // from the annotation an earlier injection wrote.
    let mut user_overrides: Vec<(String, Value)> = Vec::new();
    for list in ["initContainers", "containers"] {
        if let Some(items) = pod
            .get_mut("spec")
            .and_then(|s| s.get_mut(list))
            .and_then(Value::as_array_mut)
        {
            items.retain(|c| {
                let name = c["name"].as_str().unwrap_or("");
                if injected_names.iter().any(|n| n == name) {
                    user_overrides.push((list.to_string(), c.clone()));
                    false
                } else {
                    true
                }
            });
        }
    }
    let recorded = pod["metadata"]["annotations"][ann::OVERRIDES]
        .as_str()
        .map(str::to_string);
    if user_overrides.is_empty()
        && let Some(text) = &recorded
    {
        let parsed: Value = serde_json::from_str(text).map_err(|e| InjectError::Annotation {
            annotation: ann::OVERRIDES.into(),
            value: text.clone(),
            reason: format!("not JSON: {e}"),
        })?;
        for list in ["initContainers", "containers"] {
            for c in parsed[list].as_array().into_iter().flatten() {
                user_overrides.push((list.to_string(), c.clone()));
            }
        }
    }

    let finish = |mut c: Value| -> Value {
        let name = c["name"].as_str().unwrap_or("").to_string();
        for p in previous.iter().filter(|p| p["name"] == name.as_str()) {
            c = merge_container(c, p);
        }
        for (_, o) in user_overrides
            .iter()
            .filter(|(_, o)| o["name"] == name.as_str())
        {
            c = merge_container(c, o);
        }
        canonical_resources(&mut c);
        c
    };
    let injected_init: Vec<Value> = rendered.init_containers.into_iter().map(finish).collect();
    let injected: Vec<Value> = rendered.containers.into_iter().map(&finish).collect();

    let spec = pod
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| InjectError::Malformed {
            field: "spec".into(),
            reason: "not an object".into(),
        })?;

    // initContainers: with native sidecars ours go first, so the proxy is up before any other
    // init container makes network calls; otherwise istio-init runs after the user's.
    let existing_init = take_array(spec, "initContainers");
    let init: Vec<Value> = if params.native_sidecar {
        injected_init.iter().cloned().chain(existing_init).collect()
    } else {
        existing_init
            .into_iter()
            .chain(injected_init.iter().cloned())
            .collect()
    };
    let existing = take_array(spec, "containers");
    let containers: Vec<Value> = if params.hold {
        injected.iter().cloned().chain(existing).collect()
    } else {
        existing
            .into_iter()
            .chain(injected.iter().cloned())
            .collect()
    };
    let status_init: Vec<String> = injected_init
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let status_containers: Vec<String> = injected
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    if !init.is_empty() {
        spec.insert("initContainers".into(), Value::Array(init));
    }
    spec.insert("containers".into(), Value::Array(containers));

    let rendered_volume_names: Vec<String> = rendered
        .volumes
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let existing_volumes = take_array(spec, "volumes");
    let volumes: Vec<Value> = rendered
        .volumes
        .iter()
        .cloned()
        .chain(existing_volumes.into_iter().filter(|v| {
            !rendered_volume_names
                .iter()
                .any(|n| v["name"].as_str() == Some(n))
        }))
        .collect();
    if !volumes.is_empty() {
        spec.insert("volumes".into(), Value::Array(volumes));
    }

    if let Some(ctx) = rendered.pod_security_context {
        let merged = match spec.remove("securityContext") {
            Some(existing) => merge_value(existing, &ctx),
            None => ctx,
        };
        spec.insert("securityContext".into(), merged);
    }

    // Metadata.
    let app_containers: Vec<String> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| !status_containers.iter().any(|s| s == n))
        .map(str::to_string)
        .collect();
    let meta = object_field(pod, "metadata")?;
    {
        let labels = object_entry(meta, "labels");
        for (k, v) in rendered.labels {
            labels.insert(k, v);
        }
    }
    let annotations = object_entry(meta, "annotations");
    for (k, v) in rendered.annotations {
        annotations.insert(k, v);
    }
    if let Some(first) = app_containers.first() {
        for key in [ann::DEFAULT_CONTAINER, ann::DEFAULT_LOGS_CONTAINER] {
            annotations
                .entry(key.to_string())
                .or_insert_with(|| json!(first));
        }
    }
    let scrape_off = annotations
        .get(ann::PROMETHEUS_SCRAPE)
        .and_then(Value::as_str)
        .and_then(ann::parse_bool)
        == Some(false);
    if !scrape_off {
        // The agent serves merged metrics on 15020 whatever the probe port is (Istio does
        // the same: its goldens with status port 123 or 0 still scrape 15020).
        annotations.insert(ann::PROMETHEUS_PATH.into(), json!("/stats/prometheus"));
        annotations.insert(ann::PROMETHEUS_PORT.into(), json!("15020"));
        annotations.insert(ann::PROMETHEUS_SCRAPE.into(), json!("true"));
    }
    if !user_overrides.is_empty() && recorded.is_none() {
        annotations.insert(
            ann::OVERRIDES.into(),
            json!(overrides_text(&user_overrides, &status_init)),
        );
    }
    let list = |names: &[String]| {
        if names.is_empty() {
            "null".to_string()
        } else {
            serde_json::to_string(names).unwrap_or_else(|_| "null".into())
        }
    };
    let status = format!(
        r#"{{"initContainers":{},"containers":{},"volumes":{},"imagePullSecrets":null,"revision":{}}}"#,
        list(&status_init),
        list(&status_containers),
        list(&rendered_volume_names),
        serde_json::to_string(&params.settings.revision).unwrap_or_default(),
    );
    annotations.insert(ann::STATUS.into(), json!(status));
    Ok(())
}

/// `proxy.istio.io/overrides`: the user's declarations, filed under the list the injected
/// container lives in.
fn overrides_text(overrides: &[(String, Value)], injected_init: &[String]) -> String {
    let mut by_list = Map::new();
    for (_, c) in overrides {
        let in_init = injected_init
            .iter()
            .any(|n| c["name"].as_str() == Some(n.as_str()));
        let list = if in_init {
            "initContainers"
        } else {
            "containers"
        };
        let entry = by_list
            .entry(list.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = entry {
            let mut c = c.clone();
            if let Some(obj) = c.as_object_mut()
                && obj.get("image").and_then(Value::as_str) == Some("auto")
            {
                obj.remove("image");
            }
            canonical_resources(&mut c);
            items.push(c);
        }
    }
    serde_json::to_string(&by_list).unwrap_or_default()
}

fn take_array(spec: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match spec.remove(key) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

fn object_field<'a>(
    pod: &'a mut Value,
    key: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let obj = pod.as_object_mut().ok_or_else(|| InjectError::Malformed {
        field: key.into(),
        reason: "not an object".into(),
    })?;
    let entry = obj.entry(key.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().ok_or_else(|| InjectError::Malformed {
        field: key.into(),
        reason: "not an object".into(),
    })
}

fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// `over` merged onto the template container `base`.
fn merge_container(base: Value, over: &Value) -> Value {
    let mut over = over.clone();
    if let Some(obj) = over.as_object_mut()
        && obj.get("image").and_then(Value::as_str) == Some("auto")
    {
        obj.remove("image");
    }
    merge_value(base, &over)
}

/// The merge key of a list field, as Kubernetes' strategic merge patch defines it.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "env" | "containers" | "initContainers" | "volumes" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

fn merge_value(base: Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(mut b), Value::Object(o)) => {
            for (k, ov) in o {
                let merged = match (b.remove(k), merge_key(k)) {
                    (Some(Value::Array(items)), Some(key)) => {
                        Value::Array(merge_list(items, ov, key))
                    }
                    (Some(bv), _) => merge_value(bv, ov),
                    (None, _) => ov.clone(),
                };
                b.insert(k.clone(), merged);
            }
            Value::Object(b)
        }
        (_, over) => over.clone(),
    }
}

fn merge_list(mut base: Vec<Value>, over: &Value, key: &str) -> Vec<Value> {
    let Some(over) = over.as_array() else {
        return base;
    };
    for (i, item) in over.iter().enumerate() {
        match base.iter_mut().find(|b| b.get(key) == item.get(key)) {
            Some(slot) => {
                let current = std::mem::take(slot);
                *slot = merge_value(current, item);
            }
            None => {
                // As strategic merge orders it: before the next item the patch shares with
                // the base, else at the end.
                let next_shared = over[i + 1..]
                    .iter()
                    .find_map(|o| base.iter().position(|b| b.get(key) == o.get(key)));
                match next_shared {
                    Some(at) => base.insert(at, item.clone()),
                    None => base.push(item.clone()),
                }
            }
        }
    }
    base
}

fn canonical_resources(c: &mut Value) {
    for kind in ["limits", "requests"] {
        if let Some(map) = c
            .pointer_mut(&format!("/resources/{kind}"))
            .and_then(Value::as_object_mut)
        {
            for v in map.values_mut() {
                if let Some(text) = v.as_str()
                    && let Some(canon) = quantity::canonical(text)
                {
                    *v = json!(canon);
                }
            }
        }
    }
}
