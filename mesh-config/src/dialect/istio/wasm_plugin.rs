//! WasmPlugin (`extensions.istio.io`): a Wasm filter for the proxies. Mast does not run
//! Wasm; the kind is accepted after Istio's CRD checks (url scheme, sha256, env names,
//! match ports, selector without wildcards) so a file istiod takes is not refused.

use std::collections::BTreeSet;

use serde_json::Value;

use super::array;
use crate::dialect::FieldError;
use crate::dialect::kube::port_number;

pub(super) fn wasm_plugin(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    match spec.get("url") {
        Some(Value::String(url)) if url.is_empty() => {
            errors.push(FieldError::new(
                "spec.url",
                "spec.url in body should be at least 1 chars long",
            ));
        }
        Some(Value::String(url)) => {
            let ok = match url.split_once("://") {
                Some((scheme, rest)) => {
                    matches!(scheme, "http" | "https" | "file" | "oci") && !rest.is_empty()
                }
                // No scheme: an OCI image reference.
                None => url
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"./:-_@".contains(&b)),
            };
            if !ok {
                errors.push(FieldError::new(
                    "spec.url",
                    "url must have schema one of [http, https, file, oci]",
                ));
            }
        }
        Some(other) => errors.push(FieldError::new(
            "spec.url",
            format!("spec.url in body must be of type string: {other}"),
        )),
        None => {}
    }
    if let Some(sha) = spec.get("sha256").and_then(Value::as_str)
        && !(sha.is_empty()
            || (sha.len() == 64
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())))
    {
        errors.push(FieldError::new(
            "spec.sha256",
            "spec.sha256 in body should match '^(|[a-f0-9]{64})$'",
        ));
    }
    for key in ["imagePullSecret", "pluginName"] {
        if spec.get(key).and_then(Value::as_str) == Some("") {
            errors.push(FieldError::new(
                format!("spec.{key}"),
                format!("spec.{key} in body should be at least 1 chars long"),
            ));
        }
    }
    let mut names = BTreeSet::new();
    let env = spec.get("vmConfig").and_then(|v| v.get("env"));
    for (i, e) in array(env).iter().enumerate() {
        let f = format!("spec.vmConfig.env[{i}]");
        let name = e.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.name"),
                "spec.vmConfig.env[].name in body should be at least 1 chars long",
            ));
        } else if !names.insert(name.to_string()) {
            errors.push(FieldError::new(
                format!("{f}.name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        let from = e
            .get("valueFrom")
            .and_then(Value::as_str)
            .unwrap_or("INLINE");
        if from != "INLINE" && e.get("value").is_some() {
            errors.push(FieldError::new(
                format!("{f}.value"),
                "value may only be set when valueFrom is INLINE",
            ));
        }
    }
    for (i, m) in array(spec.get("match")).iter().enumerate() {
        for (j, port) in array(m.get("ports")).iter().enumerate() {
            let f = format!("spec.match[{i}].ports[{j}].number");
            match port.get("number").and_then(Value::as_i64) {
                None => errors.push(FieldError::new(f, "Required value")),
                Some(n) => {
                    port_number(n, &f, errors);
                }
            }
        }
    }
    let labels = spec
        .get("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    for (k, v) in labels.into_iter().flatten() {
        if k.contains('*') {
            errors.push(FieldError::new(
                "spec.selector.matchLabels",
                "wildcard not allowed in label key match",
            ));
        }
        if v.as_str().is_some_and(|v| v.contains('*')) {
            errors.push(FieldError::new(
                format!("spec.selector.matchLabels.{k}"),
                "wildcard not allowed in label value match",
            ));
        }
    }
}
