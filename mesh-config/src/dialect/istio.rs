//! Istio's configuration: `networking.istio.io` (v1alpha3, v1beta1, v1) and
//! `security.istio.io`.
//!
//! The typed structs mirror Istio's API field for field (camelCase, as in users' YAML) so
//! existing Istio files parse unchanged. Validation follows istiod's: weights within 0–100 and
//! summing to 100, durations, regexes, status codes, subset names. Security kinds are accepted
//! and checked for shape; the mTLS and authorization they configure come with citadel.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::duration::parse_duration;
use super::kube::{infer_protocol, port_number};
use super::{Accepted, Document, FieldError, MeshResource, Meta, ParseResult, deserialize};
use crate::model::*;

pub fn parse(doc: &Document<'_>) -> ParseResult {
    let group = doc.meta.group();
    let version = doc.meta.version();
    let known_version = matches!(version, "v1" | "v1beta1" | "v1alpha3" | "v1alpha1");
    if !known_version {
        return None;
    }
    let boxed = |r: Result<Box<dyn MeshResource>, Vec<FieldError>>| r;
    Some(match (group, doc.meta.kind.as_str()) {
        ("networking.istio.io", "VirtualService") => {
            boxed(parse_virtual_service(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "DestinationRule") => {
            boxed(parse_destination_rule(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "ServiceEntry") => {
            boxed(parse_service_entry(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "WorkloadEntry") => {
            boxed(parse_workload_entry(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "Sidecar") => boxed(parse_sidecar(doc).map(|r| Box::new(r) as _)),
        ("security.istio.io", "PeerAuthentication") => boxed(check_shape(doc).and_then(|()| {
            super::istio_security::parse_peer_authentication(doc).map(|r| Box::new(r) as _)
        })),
        ("security.istio.io", "AuthorizationPolicy") => boxed(check_shape(doc).and_then(|()| {
            super::istio_security::parse_authorization_policy(doc).map(|r| Box::new(r) as _)
        })),
        ("networking.istio.io", "Gateway" | "WorkloadGroup" | "EnvoyFilter" | "ProxyConfig")
        | ("security.istio.io", "RequestAuthentication")
        | ("telemetry.istio.io", "Telemetry")
        | ("extensions.istio.io", "WasmPlugin") => {
            boxed(check_shape(doc).map(|()| Box::new(Accepted) as _))
        }
        _ => return None,
    })
}

fn check_shape(doc: &Document<'_>) -> Result<(), Vec<FieldError>> {
    let spec = match doc.value.get("spec") {
        Some(Value::Object(spec)) => spec,
        None if doc.meta.kind == "WorkloadGroup" => {
            return Err(vec![FieldError::new("spec", "Required value")]);
        }
        None => return Ok(()),
        Some(_) => return Err(vec![FieldError::new("spec", "must be a mapping")]),
    };
    let mut errors = Vec::new();
    match doc.meta.kind.as_str() {
        "PeerAuthentication" => peer_authentication(spec, &mut errors),
        "AuthorizationPolicy" => authorization_policy(spec, &mut errors),
        "WorkloadGroup" => workload_group(spec, &mut errors),
        "ProxyConfig" => proxy_config(spec, &mut errors),
        "RequestAuthentication" => request_authentication(spec, &doc.meta.namespace, &mut errors),
        "WasmPlugin" => wasm_plugin(spec, &mut errors),
        "Telemetry" => telemetry(spec, &mut errors),
        "EnvoyFilter" => envoy_filter(spec, &mut errors),
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

const MTLS_MODES: &[&str] = &["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];

fn mtls_mode(v: Option<&Value>, field: &str, errors: &mut Vec<FieldError>) {
    if let Some(mode) = v.and_then(|m| m.get("mode")) {
        match mode.as_str() {
            Some(m) if MTLS_MODES.contains(&m) => {}
            _ => errors.push(FieldError::new(
                format!("{field}.mode"),
                format!(
                    "Unsupported value: {mode}: supported values: {}",
                    MTLS_MODES.join(", ")
                ),
            )),
        }
    }
}

fn peer_authentication(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    mtls_mode(spec.get("mtls"), "spec.mtls", errors);
    let Some(ports) = spec.get("portLevelMtls") else {
        return;
    };
    let Some(ports) = ports.as_object() else {
        errors.push(FieldError::new(
            "spec.portLevelMtls",
            "must be a map of port to mTLS settings",
        ));
        return;
    };
    if ports.is_empty() {
        errors.push(FieldError::new(
            "spec.portLevelMtls",
            "should have at least 1 properties",
        ));
    }
    if spec.get("selector").is_none() {
        errors.push(FieldError::new(
            "spec.portLevelMtls",
            "portLevelMtls requires selector",
        ));
    }
    for (port, setting) in ports {
        let field = format!("spec.portLevelMtls[{port}]");
        match port.parse::<u64>() {
            Err(_) => errors.push(FieldError::new(
                field.clone(),
                format!("type conversion error from {port:?} to a port number"),
            )),
            Ok(p) if !(1..=65535).contains(&p) => errors.push(FieldError::new(
                field.clone(),
                "port must be between 1-65535",
            )),
            Ok(_) => {}
        }
        mtls_mode(Some(setting), &field, errors);
    }
}

fn authorization_policy(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    let rules = spec
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let from = rule
            .get("from")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (j, f) in from.iter().enumerate() {
            let Some(source) = f.get("source") else {
                continue;
            };
            let has = |k: &str| {
                source
                    .get(k)
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            };
            if (has("serviceAccounts") || has("notServiceAccounts"))
                && (has("namespaces")
                    || has("principals")
                    || has("notNamespaces")
                    || has("notPrincipals"))
            {
                errors.push(FieldError::new(
                    format!("spec.rules[{i}].from[{j}].source"),
                    "Cannot set serviceAccounts with namespaces or principals",
                ));
            }
        }
    }
}

fn workload_group(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    let Some(probe) = spec.get("probe") else {
        return;
    };
    for (kind, field) in [
        ("tcpSocket", "spec.probe.tcpSocket.port"),
        ("httpGet", "spec.probe.httpGet.port"),
    ] {
        if let Some(port) = probe
            .get(kind)
            .and_then(|p| p.get("port"))
            .and_then(Value::as_i64)
        {
            port_number(port, field, errors);
        }
    }
    let headers = probe
        .get("httpGet")
        .and_then(|h| h.get("httpHeaders"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, h) in headers.iter().enumerate() {
        let name = h.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errors.push(FieldError::new(
                format!("spec.probe.httpGet.httpHeaders[{i}].name"),
                format!("{name:?} in body should match '^[-_A-Za-z0-9]+$'"),
            ));
        }
    }
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn non_empty_strings(v: Option<&Value>, field: &str, errors: &mut Vec<FieldError>) {
    for (i, s) in array(v).iter().enumerate() {
        if s.as_str().is_none_or(str::is_empty) {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                "should be at least 1 chars long",
            ));
        }
    }
}

/// `targetRef`/`targetRefs`/`selector` of the security and extension kinds.
fn policy_targets(
    spec: &serde_json::Map<String, Value>,
    namespace: &str,
    errors: &mut Vec<FieldError>,
) {
    let refs: Vec<(String, &Value)> = spec
        .get("targetRef")
        .map(|r| ("spec.targetRef".to_string(), r))
        .into_iter()
        .chain(
            array(spec.get("targetRefs"))
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        )
        .collect();
    let has_selector = spec.get("selector").is_some();
    if (spec.contains_key("targetRef") && spec.contains_key("targetRefs"))
        || (has_selector && !refs.is_empty())
    {
        errors.push(FieldError::new(
            "spec",
            "only one of targetRefs or selector can be set",
        ));
    }
    for (field, r) in refs {
        let get = |k: &str| r.get(k).and_then(Value::as_str);
        if get("name").is_none_or(str::is_empty) {
            errors.push(FieldError::new(format!("{field}.name"), "Required value"));
        }
        if let Some(ns) = get("namespace")
            && !ns.is_empty()
            && ns != namespace
        {
            errors.push(FieldError::new(
                format!("{field}.namespace"),
                "cross namespace referencing is not currently supported",
            ));
        }
        let group = get("group").unwrap_or("");
        let group_ok = group.is_empty()
            || group.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !group_ok {
            errors.push(FieldError::new(
                format!("{field}.group"),
                format!("{group:?} in body should match a DNS subdomain"),
            ));
        }
        let kind = get("kind").unwrap_or("");
        let kind_ok = kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !kind.ends_with('-');
        if !kind_ok {
            errors.push(FieldError::new(
                format!("{field}.kind"),
                format!("{kind:?} in body should match '^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$'"),
            ));
        }
    }
}

fn request_authentication(
    spec: &serde_json::Map<String, Value>,
    namespace: &str,
    errors: &mut Vec<FieldError>,
) {
    policy_targets(spec, namespace, errors);
    for (i, rule) in array(spec.get("jwtRules")).iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        let Some(rule) = rule.as_object() else {
            errors.push(FieldError::new(f, "in body must be of type object"));
            continue;
        };
        non_empty_strings(rule.get("audiences"), &format!("{f}.audiences"), errors);
        non_empty_strings(rule.get("fromParams"), &format!("{f}.fromParams"), errors);
        non_empty_strings(rule.get("fromCookies"), &format!("{f}.fromCookies"), errors);
        non_empty_strings(
            rule.get("spaceDelimitedClaims"),
            &format!("{f}.spaceDelimitedClaims"),
            errors,
        );
        if let Some(uri) = rule.get("jwksUri").and_then(Value::as_str) {
            let scheme_ok = uri.split_once("://").is_some_and(|(scheme, rest)| {
                !rest.is_empty() && matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
            });
            if !scheme_ok {
                errors.push(FieldError::new(
                    format!("{f}.jwksUri"),
                    "url must have scheme http:// or https://",
                ));
            }
        }
        for (j, h) in array(rule.get("fromHeaders")).iter().enumerate() {
            match h.get("name").and_then(Value::as_str) {
                None => errors.push(FieldError::new(
                    format!("{f}.fromHeaders[{j}].name"),
                    "Required value",
                )),
                Some("") => errors.push(FieldError::new(
                    format!("{f}.fromHeaders[{j}].name"),
                    "in body should be at least 1 chars long",
                )),
                Some(_) => {}
            }
        }
        for (j, o) in array(rule.get("outputClaimToHeaders")).iter().enumerate() {
            let of = format!("{f}.outputClaimToHeaders[{j}]");
            if !o.is_object() {
                errors.push(FieldError::new(of, "in body must be of type object"));
                continue;
            }
            if o.get("claim")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errors.push(FieldError::new(
                    format!("{of}.claim"),
                    "in body should be at least 1 chars long",
                ));
            }
            match o.get("header").and_then(Value::as_str) {
                None | Some("") => errors.push(FieldError::new(
                    format!("{of}.header"),
                    "header in body should be at least 1 chars long",
                )),
                Some(h)
                    if !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    errors.push(FieldError::new(
                        format!("{of}.header"),
                        "header in body should match '^[-_A-Za-z0-9]+$'",
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(t) = rule.get("timeout").and_then(Value::as_str) {
            match parse_duration(t) {
                Ok(d) if !d.is_zero() => {}
                _ => errors.push(FieldError::new(
                    format!("{f}.timeout"),
                    format!("{t:?} must be a valid duration greater than 1ms"),
                )),
            }
        }
        if let Some(p) = rule.get("presence")
            && !matches!(p.as_str(), Some("REQUIRED" | "OPTIONAL" | "UNSPECIFIED"))
        {
            errors.push(FieldError::new(
                format!("{f}.presence"),
                format!("Unsupported value: {p}"),
            ));
        }
    }
}

fn wasm_plugin(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
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

/// The CEL rule on EnvoyFilter matches: a `waypoint` match goes with, and only with, the
/// WAYPOINT context; a listener/route/cluster match never does.
fn envoy_filter(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    for (i, patch) in array(spec.get("configPatches")).iter().enumerate() {
        let Some(m) = patch.get("match") else {
            continue;
        };
        let f = format!("spec.configPatches[{i}].match");
        let waypoint_ctx = m.get("context").and_then(Value::as_str) == Some("WAYPOINT");
        let has_waypoint = m.get("waypoint").is_some();
        let has_other = ["listener", "routeConfiguration", "cluster"]
            .iter()
            .any(|k| m.get(k).is_some());
        if has_waypoint != waypoint_ctx || (waypoint_ctx && has_other) {
            errors.push(FieldError::new(
                f.clone(),
                "Invalid value: \"object\": only support waypointMatch when context is WAYPOINT",
            ));
        }
        if let Some(port) = m
            .get("waypoint")
            .and_then(|w| w.get("portNumber"))
            .and_then(Value::as_i64)
        {
            port_number(port, &format!("{f}.waypoint.portNumber"), errors);
        }
    }
}

fn telemetry(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    for (i, m) in array(spec.get("metrics")).iter().enumerate() {
        let f = format!("spec.metrics[{i}]");
        for (j, p) in array(m.get("providers")).iter().enumerate() {
            if p.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errors.push(FieldError::new(
                    format!("{f}.providers[{j}].name"),
                    "name in body should be at least 1 chars long",
                ));
            }
        }
        for (j, o) in array(m.get("overrides")).iter().enumerate() {
            let of = format!("{f}.overrides[{j}]");
            if o.get("match")
                .and_then(|x| x.get("customMetric"))
                .and_then(Value::as_str)
                == Some("")
            {
                errors.push(FieldError::new(
                    format!("{of}.match.customMetric"),
                    "customMetric in body should be at least 1 chars long",
                ));
            }
            let tags = o.get("tagOverrides").and_then(Value::as_object);
            for (tag, t) in tags.into_iter().flatten() {
                let op = t
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("UPSERT");
                let has_value = t.get("value").is_some_and(|v| !v.is_null());
                if op == "UPSERT" && !has_value {
                    errors.push(FieldError::new(
                        format!("{of}.tagOverrides.{tag}"),
                        "value must be set when operation is UPSERT",
                    ));
                }
                if op == "REMOVE" && has_value {
                    errors.push(FieldError::new(
                        format!("{of}.tagOverrides.{tag}"),
                        "value must not be set when operation is REMOVE",
                    ));
                }
            }
        }
    }
}

fn proxy_config(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    if let Some(c) = spec.get("concurrency").and_then(Value::as_i64)
        && c < 0
    {
        errors.push(FieldError::new(
            "spec.concurrency",
            "should be greater than or equal to 0",
        ));
    }
    let labels = spec
        .get("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    for key in labels.into_iter().flat_map(|m| m.keys()) {
        if key.is_empty() {
            errors.push(FieldError::new(
                "spec.selector.matchLabels",
                "key must not be empty",
            ));
        }
    }
}

/// `reviews` in namespace `default` → `reviews.default.svc.cluster.local`; a name with a
/// dot is taken as already qualified enough (`reviews.prod` → `reviews.prod.svc.cluster.local`
/// as Istio does for two labels; longer names are left as they are).
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('*') {
        return host.to_string();
    }
    match host.matches('.').count() {
        0 => service_fqdn(host, namespace),
        1 => {
            let (name, ns) = host.split_once('.').unwrap_or((host, namespace));
            service_fqdn(name, ns)
        }
        _ => host.to_string(),
    }
}

fn duration(s: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<Duration> {
    match parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(FieldError::new(field, e));
            None
        }
    }
}

fn check_regex(re: &str, field: &str, errors: &mut Vec<FieldError>) {
    if let Err(e) = regex::Regex::new(re) {
        let msg = e.to_string();
        let first = msg.lines().last().unwrap_or(&msg).trim().to_string();
        errors.push(FieldError::new(
            field,
            format!("invalid regex {re:?}: {first}"),
        ));
    }
}

fn percentage(v: f64, field: &str, errors: &mut Vec<FieldError>) -> f64 {
    if !(0.0..=100.0).contains(&v) {
        errors.push(FieldError::new(
            field,
            format!("{v} is not a percentage in 0-100"),
        ));
    }
    v
}

// === VirtualService ===

#[derive(Debug, Deserialize)]
struct VsDoc {
    spec: VsSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    gateways: Vec<String>,
    #[serde(default)]
    http: Vec<VsHttp>,
    #[serde(default)]
    tcp: Vec<VsTcp>,
    #[serde(default)]
    tls: Vec<Value>,
    #[serde(default)]
    export_to: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsHttp {
    name: Option<String>,
    #[serde(default, rename = "match")]
    matches: Vec<VsMatch>,
    #[serde(default)]
    route: Vec<VsRouteDest>,
    redirect: Option<VsRedirect>,
    direct_response: Option<VsDirectResponse>,
    delegate: Option<Value>,
    rewrite: Option<VsRewrite>,
    timeout: Option<String>,
    retries: Option<VsRetries>,
    fault: Option<VsFault>,
    mirror: Option<VsDestination>,
    mirror_percentage: Option<VsPercent>,
    mirror_percent: Option<f64>,
    #[serde(default)]
    mirrors: Vec<VsMirror>,
    headers: Option<VsHeaders>,
    cors_policy: Option<VsCors>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsMatch {
    name: Option<String>,
    uri: Option<VsStringMatch>,
    scheme: Option<VsStringMatch>,
    method: Option<VsStringMatch>,
    authority: Option<VsStringMatch>,
    #[serde(default)]
    headers: BTreeMap<String, VsStringMatch>,
    #[serde(default)]
    without_headers: BTreeMap<String, VsStringMatch>,
    #[serde(default)]
    query_params: BTreeMap<String, VsStringMatch>,
    port: Option<i64>,
    #[serde(default)]
    source_labels: Labels,
    source_namespace: Option<String>,
    #[serde(default)]
    ignore_uri_case: bool,
    #[serde(default)]
    gateways: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct VsStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsRouteDest {
    destination: VsDestination,
    weight: Option<i64>,
    headers: Option<VsHeaders>,
}

#[derive(Debug, Deserialize)]
struct VsDestination {
    host: String,
    subset: Option<String>,
    port: Option<VsPort>,
}

#[derive(Debug, Deserialize)]
struct VsPort {
    number: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsRedirect {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<i64>,
    scheme: Option<String>,
    redirect_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct VsDirectResponse {
    status: i64,
    body: Option<VsBody>,
}

#[derive(Debug, Deserialize)]
struct VsBody {
    string: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsRewrite {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<VsRegexRewrite>,
}

#[derive(Debug, Deserialize)]
struct VsRegexRewrite {
    #[serde(rename = "match")]
    pattern: String,
    rewrite: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsRetries {
    #[serde(default)]
    attempts: i64,
    per_try_timeout: Option<String>,
    retry_on: Option<String>,
    #[serde(default)]
    retry_remote_localities: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct VsFault {
    delay: Option<VsDelay>,
    abort: Option<VsAbort>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsDelay {
    fixed_delay: Option<String>,
    percentage: Option<VsPercent>,
    percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsAbort {
    http_status: Option<i64>,
    grpc_status: Option<String>,
    percentage: Option<VsPercent>,
}

#[derive(Debug, Deserialize)]
struct VsPercent {
    #[serde(default)]
    value: f64,
}

#[derive(Debug, Deserialize)]
struct VsMirror {
    destination: VsDestination,
    percentage: Option<VsPercent>,
}

#[derive(Debug, Default, Deserialize)]
struct VsHeaders {
    request: Option<VsHeaderOps>,
    response: Option<VsHeaderOps>,
}

#[derive(Debug, Default, Deserialize)]
struct VsHeaderOps {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsCors {
    #[serde(default)]
    allow_origins: Vec<VsStringMatch>,
    #[serde(default)]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    max_age: Option<String>,
    allow_credentials: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsTcp {
    #[serde(default, rename = "match")]
    matches: Vec<VsL4Match>,
    #[serde(default)]
    route: Vec<VsRouteDest>,
}

#[derive(Debug, Deserialize)]
struct VsL4Match {
    port: Option<i64>,
}

#[derive(Debug)]
struct VirtualServiceResource {
    table: RouteTable,
    /// Field path of every subset reference, for `check_references`.
    subset_refs: Vec<(String, Destination)>,
    /// Only bound to gateways: nothing for sidecars.
    gateway_only: bool,
}

fn string_match(
    m: &VsStringMatch,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<StringMatch> {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        errors.push(FieldError::new(
            field,
            "only one of exact, prefix or regex may be set",
        ));
    }
    if let Some(e) = &m.exact {
        return Some(StringMatch::Exact(e.clone()));
    }
    if let Some(p) = &m.prefix {
        return Some(StringMatch::Prefix(p.clone()));
    }
    if let Some(r) = &m.regex {
        check_regex(r, &format!("{field}.regex"), errors);
        return Some(StringMatch::Regex(r.clone()));
    }
    None
}

fn header_ops(h: Option<&VsHeaderOps>) -> HeaderOps {
    h.map(|h| HeaderOps {
        set: h.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        add: h.add.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        remove: h.remove.clone(),
    })
    .unwrap_or_default()
}

fn headers(h: Option<&VsHeaders>) -> HeaderOperations {
    h.map(|h| HeaderOperations {
        request: header_ops(h.request.as_ref()),
        response: header_ops(h.response.as_ref()),
    })
    .unwrap_or_default()
}

fn destination(
    d: &VsDestination,
    ns: &str,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Destination {
    if d.host.is_empty() {
        errors.push(FieldError::new(format!("{field}.host"), "required"));
    }
    let port = d
        .port
        .as_ref()
        .and_then(|p| port_number(p.number, &format!("{field}.port.number"), errors));
    Destination {
        host: resolve_host(&d.host, ns),
        subset: d.subset.clone().filter(|s| !s.is_empty()),
        port,
    }
}

/// Weighted destinations: a single one without weight gets 100; with several, every weight
/// is within 0-100 and they sum to 100 (istiod's rule).
fn weighted(
    routes: &[VsRouteDest],
    ns: &str,
    field: &str,
    errors: &mut Vec<FieldError>,
    refs: &mut Vec<(String, Destination)>,
) -> Vec<WeightedDestination> {
    let mut out = Vec::new();
    let mut sum = 0i64;
    for (i, r) in routes.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let dest = destination(&r.destination, ns, &format!("{f}.destination"), errors);
        let weight = match r.weight {
            None if routes.len() == 1 => 100,
            None => 0,
            Some(w) if !(0..=100).contains(&w) => {
                errors.push(FieldError::new(
                    format!("{f}.weight"),
                    format!("{w} is not in 0-100"),
                ));
                0
            }
            Some(w) => w,
        };
        sum += weight;
        if dest.subset.is_some() {
            refs.push((format!("{f}.destination.subset"), dest.clone()));
        }
        out.push(WeightedDestination {
            destination: dest,
            weight: weight as u32,
            headers: headers(r.headers.as_ref()),
        });
    }
    if routes.len() > 1 && sum != 100 {
        errors.push(FieldError::new(
            format!("{field}[{}].weight", routes.len() - 1),
            format!("weights sum to {sum}, must be 100"),
        ));
    }
    out
}

fn parse_virtual_service(doc: &Document<'_>) -> Result<VirtualServiceResource, Vec<FieldError>> {
    let vs: VsDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    let mut refs = Vec::new();
    if vs.spec.hosts.is_empty() {
        errors.push(FieldError::new(
            "spec.hosts",
            "at least one host is required",
        ));
    }
    for (i, h) in vs.spec.hosts.iter().enumerate() {
        if h.is_empty() {
            errors.push(FieldError::new(
                format!("spec.hosts[{i}]"),
                "must not be empty",
            ));
        }
    }
    if vs.spec.http.is_empty() && vs.spec.tcp.is_empty() && vs.spec.tls.is_empty() {
        errors.push(FieldError::new(
            "spec",
            "http, tcp or tls must contain at least one route",
        ));
    }
    let mut names = BTreeSet::new();
    let mut http = Vec::new();
    for (i, h) in vs.spec.http.iter().enumerate() {
        let f = format!("spec.http[{i}]");
        if let Some(n) = &h.name
            && !names.insert(n.clone())
        {
            errors.push(FieldError::new(
                format!("{f}.name"),
                format!("duplicate route name {n:?}"),
            ));
        }
        let actions = [
            !h.route.is_empty(),
            h.redirect.is_some(),
            h.direct_response.is_some(),
            h.delegate.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if actions == 0 {
            errors.push(FieldError::new(
                format!("{f}.route"),
                "one of route, redirect, directResponse or delegate is required",
            ));
        } else if actions > 1
            && !(h.redirect.is_some() && h.direct_response.is_none() && h.route.is_empty())
        {
            errors.push(FieldError::new(
                f.clone(),
                "route, redirect and directResponse are mutually exclusive",
            ));
        }
        let mut matches = Vec::new();
        for (j, m) in h.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            let sm = |v: &Option<VsStringMatch>, name: &str, errors: &mut Vec<FieldError>| {
                v.as_ref()
                    .and_then(|m| string_match(m, &format!("{mf}.{name}"), errors))
            };
            let mut hdrs = Vec::new();
            for (k, v) in &m.headers {
                let value = string_match(v, &format!("{mf}.headers.{k}"), &mut errors);
                hdrs.push(HeaderMatch {
                    name: k.to_ascii_lowercase(),
                    value,
                    invert: false,
                });
            }
            for (k, v) in &m.without_headers {
                let value = string_match(v, &format!("{mf}.withoutHeaders.{k}"), &mut errors);
                hdrs.push(HeaderMatch {
                    name: k.to_ascii_lowercase(),
                    value,
                    invert: true,
                });
            }
            let query_params = m
                .query_params
                .iter()
                .map(|(k, v)| QueryMatch {
                    name: k.clone(),
                    value: string_match(v, &format!("{mf}.queryParams.{k}"), &mut errors),
                })
                .collect();
            matches.push(RouteMatch {
                name: m.name.clone(),
                uri: sm(&m.uri, "uri", &mut errors),
                scheme: sm(&m.scheme, "scheme", &mut errors),
                method: sm(&m.method, "method", &mut errors),
                authority: sm(&m.authority, "authority", &mut errors),
                headers: hdrs,
                query_params,
                port: m
                    .port
                    .and_then(|p| port_number(p, &format!("{mf}.port"), &mut errors)),
                source_labels: m.source_labels.clone(),
                source_namespace: m.source_namespace.clone(),
                ignore_uri_case: m.ignore_uri_case,
            });
            let _ = &m.gateways;
        }
        let action = if let Some(r) = &h.redirect {
            let status = match r.redirect_code {
                None => 301,
                Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
                Some(c) => {
                    errors.push(FieldError::new(
                        format!("{f}.redirect.redirectCode"),
                        format!("{c} is not a redirect status (301, 302, 303, 307, 308)"),
                    ));
                    301
                }
            };
            RouteAction::Redirect(Redirect {
                scheme: r.scheme.clone(),
                host: r.authority.clone(),
                port: r
                    .port
                    .and_then(|p| port_number(p, &format!("{f}.redirect.port"), &mut errors)),
                path: r.uri.clone().map(PathRewrite::Full),
                status,
            })
        } else if let Some(d) = &h.direct_response {
            if !(200..=599).contains(&d.status) {
                errors.push(FieldError::new(
                    format!("{f}.directResponse.status"),
                    format!("{} is not an HTTP status", d.status),
                ));
            }
            RouteAction::DirectResponse {
                status: d.status.clamp(200, 599) as u16,
                body: d.body.as_ref().and_then(|b| b.string.clone()),
            }
        } else {
            RouteAction::Forward(weighted(
                &h.route,
                ns,
                &format!("{f}.route"),
                &mut errors,
                &mut refs,
            ))
        };
        let rewrite = h.rewrite.as_ref().map(|r| {
            if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
                errors.push(FieldError::new(
                    format!("{f}.rewrite"),
                    "uri and uriRegexRewrite are mutually exclusive",
                ));
            }
            if let Some(rr) = &r.uri_regex_rewrite {
                check_regex(
                    &rr.pattern,
                    &format!("{f}.rewrite.uriRegexRewrite.match"),
                    &mut errors,
                );
            }
            Rewrite {
                path: match (&r.uri, &r.uri_regex_rewrite) {
                    (Some(u), _) => {
                        let prefix_match = h
                            .matches
                            .iter()
                            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_some()));
                        Some(if prefix_match {
                            PathRewrite::Prefix(u.clone())
                        } else {
                            PathRewrite::Full(u.clone())
                        })
                    }
                    (None, Some(rr)) => Some(PathRewrite::Regex {
                        pattern: rr.pattern.clone(),
                        substitution: rr.rewrite.clone(),
                    }),
                    (None, None) => None,
                },
                authority: r.authority.clone(),
            }
        });
        let timeout = h
            .timeout
            .as_deref()
            .and_then(|t| duration(t, &format!("{f}.timeout"), &mut errors));
        let retries = h.retries.as_ref().map(|r| {
            if r.attempts < 0 {
                errors.push(FieldError::new(
                    format!("{f}.retries.attempts"),
                    "must not be negative",
                ));
            }
            RetryPolicy {
                attempts: r.attempts.max(0) as u32,
                per_try_timeout: r
                    .per_try_timeout
                    .as_deref()
                    .and_then(|t| duration(t, &format!("{f}.retries.perTryTimeout"), &mut errors)),
                retry_on: r.retry_on.clone(),
                retry_remote_localities: r.retry_remote_localities.unwrap_or(false),
            }
        });
        let fault = h.fault.as_ref().map(|fl| {
            let delay = fl.delay.as_ref().and_then(|d| {
                let fixed = d
                    .fixed_delay
                    .as_deref()
                    .and_then(|t| duration(t, &format!("{f}.fault.delay.fixedDelay"), &mut errors));
                if d.fixed_delay.is_none() {
                    errors.push(FieldError::new(
                        format!("{f}.fault.delay.fixedDelay"),
                        "required",
                    ));
                }
                let pct = d
                    .percentage
                    .as_ref()
                    .map(|p| p.value)
                    .or(d.percent)
                    .unwrap_or(100.0);
                let pct = percentage(
                    pct,
                    &format!("{f}.fault.delay.percentage.value"),
                    &mut errors,
                );
                fixed.map(|fixed_delay| FaultDelay {
                    fixed_delay,
                    percentage: pct,
                })
            });
            let abort = fl.abort.as_ref().map(|a| {
                let kind = match (a.http_status, &a.grpc_status) {
                    (Some(s), _) => {
                        if !(200..=599).contains(&s) {
                            errors.push(FieldError::new(
                                format!("{f}.fault.abort.httpStatus"),
                                format!("{s} is not an HTTP status"),
                            ));
                        }
                        AbortKind::HttpStatus(s.clamp(200, 599) as u16)
                    }
                    (None, Some(g)) => AbortKind::GrpcStatus(g.clone()),
                    (None, None) => {
                        errors.push(FieldError::new(
                            format!("{f}.fault.abort.httpStatus"),
                            "httpStatus or grpcStatus is required",
                        ));
                        AbortKind::HttpStatus(500)
                    }
                };
                let pct = a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0);
                FaultAbort {
                    kind,
                    percentage: percentage(
                        pct,
                        &format!("{f}.fault.abort.percentage.value"),
                        &mut errors,
                    ),
                }
            });
            if delay.is_none() && abort.is_none() && fl.delay.is_none() {
                errors.push(FieldError::new(
                    format!("{f}.fault"),
                    "delay or abort is required",
                ));
            }
            FaultInjection { delay, abort }
        });
        let mut mirrors = Vec::new();
        if let Some(m) = &h.mirror {
            let pct = h
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(h.mirror_percent)
                .unwrap_or(100.0);
            mirrors.push(Mirror {
                destination: destination(m, ns, &format!("{f}.mirror"), &mut errors),
                percentage: percentage(pct, &format!("{f}.mirrorPercentage.value"), &mut errors),
            });
        }
        for (j, m) in h.mirrors.iter().enumerate() {
            let pct = m.percentage.as_ref().map(|p| p.value).unwrap_or(100.0);
            mirrors.push(Mirror {
                destination: destination(
                    &m.destination,
                    ns,
                    &format!("{f}.mirrors[{j}].destination"),
                    &mut errors,
                ),
                percentage: percentage(
                    pct,
                    &format!("{f}.mirrors[{j}].percentage.value"),
                    &mut errors,
                ),
            });
        }
        let cors = h.cors_policy.as_ref().map(|c| CorsPolicy {
            allow_origins: c
                .allow_origins
                .iter()
                .enumerate()
                .filter_map(|(j, o)| {
                    string_match(o, &format!("{f}.corsPolicy.allowOrigins[{j}]"), &mut errors)
                })
                .collect(),
            allow_methods: c.allow_methods.clone(),
            allow_headers: c.allow_headers.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age: c
                .max_age
                .as_deref()
                .and_then(|t| duration(t, &format!("{f}.corsPolicy.maxAge"), &mut errors)),
            allow_credentials: c.allow_credentials,
        });
        http.push(HttpRoute {
            name: h.name.clone(),
            matches,
            action,
            rewrite,
            timeout,
            retries,
            fault,
            mirrors,
            headers: headers(h.headers.as_ref()),
            cors,
        });
    }
    let mut tcp = Vec::new();
    for (i, t) in vs.spec.tcp.iter().enumerate() {
        let f = format!("spec.tcp[{i}]");
        if t.route.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.route"),
                "at least one destination is required",
            ));
        }
        let destinations = weighted(&t.route, ns, &format!("{f}.route"), &mut errors, &mut refs);
        let ports: Vec<Option<u16>> = if t.matches.is_empty() {
            vec![None]
        } else {
            t.matches
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    m.port
                        .and_then(|p| port_number(p, &format!("{f}.match[{j}].port"), &mut errors))
                })
                .collect()
        };
        for port in ports {
            tcp.push(TcpRoute {
                port,
                destinations: destinations.clone(),
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let gateway_only =
        !vs.spec.gateways.is_empty() && !vs.spec.gateways.iter().any(|g| g == "mesh");
    Ok(VirtualServiceResource {
        table: RouteTable {
            hosts: vs.spec.hosts.iter().map(|h| resolve_host(h, ns)).collect(),
            namespace: ns.to_string(),
            export_to: vs.spec.export_to,
            port: None,
            http,
            tcp,
            source: doc.meta.resource_ref(),
        },
        subset_refs: refs,
        gateway_only,
    })
}

impl MeshResource for VirtualServiceResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        if !self.gateway_only {
            model.routes.push(self.table.clone());
        }
    }

    fn check_references(&self, _meta: &Meta, model: &MeshModel) -> Vec<FieldError> {
        if self.gateway_only {
            return Vec::new();
        }
        self.subset_refs
            .iter()
            .filter_map(|(field, d)| {
                let subset = d.subset.as_deref()?;
                // With no DestinationRule for the host at all, Istio accepts the route and the
                // subset cluster simply has no endpoints (503 at request time): the rule may be
                // applied later. A DestinationRule that exists but lacks the subset is a mistake.
                let p = model.destination_policies.get(&d.host)?;
                if p.subsets.iter().any(|s| s.name == subset) {
                    return None;
                }
                Some(FieldError::new(
                    field.clone(),
                    format!(
                        "subset {subset:?} is not defined by DestinationRule {}/{} for host {} (it has: {})",
                        p.namespace,
                        p.source.name,
                        d.host,
                        p.subsets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ))
            })
            .collect()
    }
}

// === DestinationRule ===

#[derive(Debug, Deserialize)]
struct DrDoc {
    spec: DrSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrSpec {
    #[serde(default)]
    host: String,
    traffic_policy: Option<DrPolicy>,
    #[serde(default)]
    subsets: Vec<DrSubset>,
    #[serde(default)]
    export_to: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrSubset {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: Labels,
    traffic_policy: Option<DrPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrPolicy {
    load_balancer: Option<DrLb>,
    connection_pool: Option<DrPool>,
    outlier_detection: Option<DrOutlier>,
    tls: Option<DrTls>,
    #[serde(default)]
    port_level_settings: Vec<DrPortPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrPortPolicy {
    port: Option<VsPort>,
    load_balancer: Option<DrLb>,
    connection_pool: Option<DrPool>,
    outlier_detection: Option<DrOutlier>,
    tls: Option<DrTls>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrLb {
    simple: Option<String>,
    consistent_hash: Option<DrHash>,
    warmup: Option<DrWarmup>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrWarmup {
    duration: Option<String>,
    minimum_percent: Option<f64>,
    aggression: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrHash {
    http_header_name: Option<String>,
    http_cookie: Option<DrCookie>,
    use_source_ip: Option<bool>,
    http_query_parameter_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DrCookie {
    name: String,
    ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DrPool {
    tcp: Option<DrTcpPool>,
    http: Option<DrHttpPool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrTcpPool {
    max_connections: Option<i64>,
    connect_timeout: Option<String>,
    tcp_keepalive: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrHttpPool {
    http1_max_pending_requests: Option<i64>,
    http2_max_requests: Option<i64>,
    max_requests_per_connection: Option<i64>,
    max_retries: Option<i64>,
    idle_timeout: Option<String>,
    h2_upgrade_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrOutlier {
    consecutive_errors: Option<i64>,
    consecutive_5xx_errors: Option<i64>,
    consecutive_gateway_errors: Option<i64>,
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_percent: Option<i64>,
    min_health_percent: Option<i64>,
    #[serde(default)]
    split_external_local_origin_errors: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrTls {
    mode: Option<String>,
    sni: Option<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    credential_name: Option<String>,
}

#[derive(Debug)]
struct DestinationRuleResource(DestinationPolicy);

fn count(v: Option<i64>, field: &str, errors: &mut Vec<FieldError>) -> Option<u32> {
    v.and_then(|n| match u32::try_from(n) {
        Ok(n) => Some(n),
        Err(_) => {
            errors.push(FieldError::new(
                field,
                format!("{n} must be a non-negative integer"),
            ));
            None
        }
    })
}

fn policy(p: &DrPolicy, f: &str, errors: &mut Vec<FieldError>) -> TrafficPolicy {
    let mut out = TrafficPolicy {
        load_balancer: p
            .load_balancer
            .as_ref()
            .and_then(|lb| load_balancer(lb, &format!("{f}.loadBalancer"), errors)),
        connection_pool: p
            .connection_pool
            .as_ref()
            .map(|c| pool(c, &format!("{f}.connectionPool"), errors)),
        outlier_detection: p
            .outlier_detection
            .as_ref()
            .map(|o| outlier(o, &format!("{f}.outlierDetection"), errors)),
        tls: p
            .tls
            .as_ref()
            .and_then(|t| tls(t, &format!("{f}.tls"), errors)),
        port_level: BTreeMap::new(),
    };
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        let Some(port) = pl
            .port
            .as_ref()
            .and_then(|p| port_number(p.number, &format!("{pf}.port.number"), errors))
        else {
            if pl.port.is_none() {
                errors.push(FieldError::new(format!("{pf}.port"), "required"));
            }
            continue;
        };
        out.port_level.insert(
            port,
            TrafficPolicy {
                load_balancer: pl
                    .load_balancer
                    .as_ref()
                    .and_then(|lb| load_balancer(lb, &format!("{pf}.loadBalancer"), errors)),
                connection_pool: pl
                    .connection_pool
                    .as_ref()
                    .map(|c| pool(c, &format!("{pf}.connectionPool"), errors)),
                outlier_detection: pl
                    .outlier_detection
                    .as_ref()
                    .map(|o| outlier(o, &format!("{pf}.outlierDetection"), errors)),
                tls: pl
                    .tls
                    .as_ref()
                    .and_then(|t| tls(t, &format!("{pf}.tls"), errors)),
                port_level: BTreeMap::new(),
            },
        );
    }
    out
}

fn load_balancer(lb: &DrLb, f: &str, errors: &mut Vec<FieldError>) -> Option<LoadBalancer> {
    if let Some(w) = &lb.warmup {
        match &w.duration {
            None => errors.push(FieldError::new(
                format!("{f}.warmup.duration"),
                "Required value",
            )),
            Some(d) => {
                duration(d, &format!("{f}.warmup.duration"), errors);
            }
        }
        if let Some(p) = w.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            errors.push(FieldError::new(
                format!("{f}.warmup.minimumPercent"),
                format!("Invalid value: {p}: must be in 0-100"),
            ));
        }
        if let Some(a) = w.aggression
            && a < 1.0
        {
            errors.push(FieldError::new(
                format!("{f}.warmup.aggression"),
                format!("Invalid value: {a}: must be at least 1"),
            ));
        }
    }
    if let Some(h) = &lb.consistent_hash {
        let key = if let Some(name) = &h.http_header_name {
            HashKey::Header(name.to_ascii_lowercase())
        } else if let Some(c) = &h.http_cookie {
            HashKey::Cookie {
                name: c.name.clone(),
                ttl: c.ttl.as_deref().and_then(|t| {
                    duration(t, &format!("{f}.consistentHash.httpCookie.ttl"), errors)
                }),
            }
        } else if h.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else if let Some(q) = &h.http_query_parameter_name {
            HashKey::QueryParameter(q.clone())
        } else {
            return None;
        };
        return Some(LoadBalancer::ConsistentHash(key));
    }
    match lb.simple.as_deref()? {
        "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => Some(LoadBalancer::LeastRequest),
        "ROUND_ROBIN" => Some(LoadBalancer::RoundRobin),
        "RANDOM" => Some(LoadBalancer::Random),
        "PASSTHROUGH" => Some(LoadBalancer::Passthrough),
        other => {
            errors.push(FieldError::new(
                format!("{f}.simple"),
                format!("unknown load balancer {other:?}"),
            ));
            None
        }
    }
}

fn pool(c: &DrPool, f: &str, errors: &mut Vec<FieldError>) -> ConnectionPool {
    let mut p = ConnectionPool::default();
    if let Some(t) = &c.tcp {
        p.max_connections = count(
            t.max_connections,
            &format!("{f}.tcp.maxConnections"),
            errors,
        );
        p.connect_timeout = t
            .connect_timeout
            .as_deref()
            .and_then(|d| duration(d, &format!("{f}.tcp.connectTimeout"), errors));
        p.tcp_keepalive = t.tcp_keepalive.is_some();
    }
    if let Some(h) = &c.http {
        p.http1_max_pending_requests = count(
            h.http1_max_pending_requests,
            &format!("{f}.http.http1MaxPendingRequests"),
            errors,
        );
        p.http2_max_requests = count(
            h.http2_max_requests,
            &format!("{f}.http.http2MaxRequests"),
            errors,
        );
        p.max_requests_per_connection = count(
            h.max_requests_per_connection,
            &format!("{f}.http.maxRequestsPerConnection"),
            errors,
        );
        p.max_retries = count(h.max_retries, &format!("{f}.http.maxRetries"), errors);
        p.idle_timeout = h
            .idle_timeout
            .as_deref()
            .and_then(|d| duration(d, &format!("{f}.http.idleTimeout"), errors));
        p.h2_upgrade = match h.h2_upgrade_policy.as_deref() {
            Some("UPGRADE") => Some(true),
            Some("DO_NOT_UPGRADE") => Some(false),
            _ => None,
        };
    }
    p
}

fn outlier(o: &DrOutlier, f: &str, errors: &mut Vec<FieldError>) -> OutlierDetection {
    let pct = |v: Option<i64>, name: &str, errors: &mut Vec<FieldError>| {
        v.and_then(|n| {
            if (0..=100).contains(&n) {
                Some(n as u32)
            } else {
                errors.push(FieldError::new(
                    format!("{f}.{name}"),
                    format!("{n} is not a percentage in 0-100"),
                ));
                None
            }
        })
    };
    OutlierDetection {
        consecutive_5xx_errors: count(
            o.consecutive_5xx_errors.or(o.consecutive_errors),
            &format!("{f}.consecutive5xxErrors"),
            errors,
        ),
        consecutive_gateway_errors: count(
            o.consecutive_gateway_errors,
            &format!("{f}.consecutiveGatewayErrors"),
            errors,
        ),
        interval: o
            .interval
            .as_deref()
            .and_then(|d| duration(d, &format!("{f}.interval"), errors)),
        base_ejection_time: o
            .base_ejection_time
            .as_deref()
            .and_then(|d| duration(d, &format!("{f}.baseEjectionTime"), errors)),
        max_ejection_percent: pct(o.max_ejection_percent, "maxEjectionPercent", errors),
        min_health_percent: pct(o.min_health_percent, "minHealthPercent", errors),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
    }
}

fn tls(t: &DrTls, f: &str, errors: &mut Vec<FieldError>) -> Option<ClientTls> {
    let mode = match t.mode.as_deref().unwrap_or("DISABLE") {
        "DISABLE" => TlsMode::Disable,
        "SIMPLE" => TlsMode::Simple,
        "MUTUAL" => TlsMode::Mutual,
        "ISTIO_MUTUAL" => TlsMode::IstioMutual,
        other => {
            errors.push(FieldError::new(
                format!("{f}.mode"),
                format!("unknown TLS mode {other:?}"),
            ));
            return None;
        }
    };
    Some(ClientTls {
        mode,
        sni: t.sni.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        credential_name: t.credential_name.clone(),
    })
}

fn parse_destination_rule(doc: &Document<'_>) -> Result<DestinationRuleResource, Vec<FieldError>> {
    let dr: DrDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    if dr.spec.host.is_empty() {
        errors.push(FieldError::new("spec.host", "required"));
    }
    let traffic_policy = dr
        .spec
        .traffic_policy
        .as_ref()
        .map(|p| policy(p, "spec.trafficPolicy", &mut errors))
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut subsets = Vec::new();
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            errors.push(FieldError::new(format!("{f}.name"), "required"));
        } else if !names.insert(s.name.clone()) {
            errors.push(FieldError::new(
                format!("{f}.name"),
                format!("duplicate subset name {:?}", s.name),
            ));
        }
        subsets.push(Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            traffic_policy: s
                .traffic_policy
                .as_ref()
                .map(|p| policy(p, &format!("{f}.trafficPolicy"), &mut errors)),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(DestinationRuleResource(DestinationPolicy {
        host: resolve_host(&dr.spec.host, ns),
        namespace: ns.to_string(),
        traffic_policy,
        subsets,
        export_to: dr.spec.export_to,
        source: doc.meta.resource_ref(),
    }))
}

impl MeshResource for DestinationRuleResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        // As istiod: a rule in the host's own namespace wins over one elsewhere.
        let host_ns = self.0.host.split('.').nth(1).unwrap_or("");
        match model.destination_policies.get(&self.0.host) {
            Some(existing) if existing.namespace == host_ns || self.0.namespace != host_ns => {}
            _ => {
                model
                    .destination_policies
                    .insert(self.0.host.clone(), self.0.clone());
            }
        }
    }
}

// === ServiceEntry ===

#[derive(Debug, Deserialize)]
struct SeDoc {
    spec: SeSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default, deserialize_with = "addresses")]
    addresses: Vec<String>,
    #[serde(default)]
    ports: Vec<SePort>,
    location: Option<String>,
    resolution: Option<String>,
    #[serde(default)]
    endpoints: Vec<WeSpec>,
    workload_selector: Option<Selector>,
    #[serde(default)]
    export_to: Vec<String>,
}

/// IP addresses and CIDRs. An unquoted IPv6 address ending in `::` inside a flow sequence
/// (`[1.2.3.4, 2001:db8::]`) is, to a YAML 1.2 parser, a one-key mapping (`2001:db8:` → null);
/// Kubernetes' YAML 1.1 parser reads it as the string users meant, so we do too.
fn addresses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let values = Vec::<Value>::deserialize(d)?;
    values
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            Value::Object(m) if m.len() == 1 => match m.into_iter().next() {
                Some((k, Value::Null)) => Ok(format!("{k}:")),
                _ => Err(serde::de::Error::custom("expected an address")),
            },
            other => Err(serde::de::Error::custom(format!(
                "expected an address, got {other}"
            ))),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SePort {
    number: i64,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    name: String,
    target_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Selector {
    #[serde(default)]
    labels: Labels,
}

#[derive(Debug)]
struct ServiceEntryResource(Vec<Service>);

fn parse_service_entry(doc: &Document<'_>) -> Result<ServiceEntryResource, Vec<FieldError>> {
    let se: SeDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    if se.spec.hosts.is_empty() {
        errors.push(FieldError::new(
            "spec.hosts",
            "at least one host is required",
        ));
    }
    let resolution = match se.spec.resolution.as_deref().unwrap_or("NONE") {
        "NONE" => Resolution::None,
        "STATIC" => Resolution::Static,
        "DNS" | "DNS_ROUND_ROBIN" => Resolution::Dns,
        other => {
            errors.push(FieldError::new(
                "spec.resolution",
                format!("unknown resolution {other:?}"),
            ));
            Resolution::None
        }
    };
    let mesh_external = match se.spec.location.as_deref().unwrap_or("MESH_EXTERNAL") {
        "MESH_EXTERNAL" => true,
        "MESH_INTERNAL" => false,
        other => {
            errors.push(FieldError::new(
                "spec.location",
                format!("unknown location {other:?}"),
            ));
            true
        }
    };
    for (i, h) in se.spec.hosts.iter().enumerate() {
        if h == "*" {
            errors.push(FieldError::new(
                format!("spec.hosts[{i}]"),
                "hostname cannot be wildcard",
            ));
        }
    }
    if let Some(sel) = &se.spec.workload_selector {
        if !se.spec.endpoints.is_empty() {
            errors.push(FieldError::new(
                "spec",
                "only one of WorkloadSelector or Endpoints can be set",
            ));
        }
        for (k, v) in &sel.labels {
            if k.contains('*') || v.contains('*') {
                errors.push(FieldError::new(
                    format!("spec.workloadSelector.labels.{k}"),
                    "wildcard is not supported in selector",
                ));
            }
        }
    }
    let dns = matches!(
        se.spec.resolution.as_deref(),
        Some("DNS" | "DNS_ROUND_ROBIN")
    );
    for (i, a) in se.spec.addresses.iter().enumerate() {
        if dns && a.contains('/') {
            errors.push(FieldError::new(
                format!("spec.addresses[{i}]"),
                "CIDR addresses are allowed only for NONE/STATIC resolution types",
            ));
        }
    }
    if resolution == Resolution::None && !se.spec.endpoints.is_empty() {
        errors.push(FieldError::new(
            "spec.endpoints",
            "NONE mode cannot set endpoints",
        ));
    }
    if se.spec.resolution.as_deref() == Some("DNS_ROUND_ROBIN") && se.spec.endpoints.len() > 1 {
        errors.push(FieldError::new(
            "spec.endpoints",
            "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
        ));
    }
    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    for (i, p) in se.spec.ports.iter().enumerate() {
        if !port_names.insert(p.name.clone()) {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].name"),
                format!("Duplicate value: {:?}", p.name),
            ));
        }
        if !port_numbers.insert(p.number) {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].number"),
                format!("port number cannot be duplicated: {}", p.number),
            ));
        }
    }
    let mut ports = Vec::new();
    for (i, p) in se.spec.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let Some(port) = port_number(p.number, &format!("{f}.number"), &mut errors) else {
            continue;
        };
        let protocol = p.protocol.as_deref().unwrap_or("");
        ports.push(ServicePort {
            name: p.name.clone(),
            port,
            target_port: p
                .target_port
                .and_then(|t| port_number(t, &format!("{f}.targetPort"), &mut errors))
                .map(TargetPort::Number),
            protocol: infer_protocol(Some(protocol), &p.name, "TCP"),
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in se.spec.endpoints.iter().enumerate() {
        let f = format!("spec.endpoints[{i}]");
        let mut eports = BTreeMap::new();
        for (name, n) in &e.ports {
            if let Some(p) = port_number(*n, &format!("{f}.ports.{name}"), &mut errors) {
                eports.insert(name.clone(), p);
            }
        }
        endpoints.push(Endpoint {
            address: e.address.clone().unwrap_or_default(),
            ports: eports,
            labels: e.labels.clone(),
            weight: count(e.weight, &format!("{f}.weight"), &mut errors),
        });
    }
    if resolution == Resolution::Static
        && endpoints.is_empty()
        && se.spec.workload_selector.is_none()
    {
        errors.push(FieldError::new(
            "spec.endpoints",
            "endpoints or workloadSelector are required with resolution STATIC",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let services = se
        .spec
        .hosts
        .iter()
        .map(|h| Service {
            hostname: h.clone(),
            name: h.clone(),
            namespace: ns.to_string(),
            ports: ports.clone(),
            selector: se.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
            endpoints: endpoints.clone(),
            addresses: se.spec.addresses.clone(),
            resolution,
            mesh_external,
            export_to: se.spec.export_to.clone(),
            source: doc.meta.resource_ref(),
        })
        .collect();
    Ok(ServiceEntryResource(services))
}

impl MeshResource for ServiceEntryResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        for s in &self.0 {
            model
                .services
                .entry(s.hostname.clone())
                .or_insert_with(|| s.clone());
        }
    }
}

// === WorkloadEntry ===

#[derive(Debug, Deserialize)]
struct WeDoc {
    spec: WeSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WeSpec {
    address: Option<String>,
    #[serde(default)]
    ports: BTreeMap<String, i64>,
    #[serde(default)]
    labels: Labels,
    network: Option<String>,
    locality: Option<String>,
    weight: Option<i64>,
    service_account: Option<String>,
}

#[derive(Debug)]
struct WorkloadEntryResource(Workload);

fn parse_workload_entry(doc: &Document<'_>) -> Result<WorkloadEntryResource, Vec<FieldError>> {
    let we: WeDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let address = we.spec.address.unwrap_or_default();
    if address.is_empty() && we.spec.network.is_none() {
        errors.push(FieldError::new(
            "spec.address",
            "Address is required (or a network)",
        ));
    }
    if let Some(path) = address.strip_prefix("unix://") {
        if path.ends_with('/') {
            errors.push(FieldError::new("spec.address", "UDS may not be a dir"));
        } else if !path.starts_with('/') && !path.starts_with('@') {
            errors.push(FieldError::new(
                "spec.address",
                "UDS must be an absolute path or abstract socket",
            ));
        }
        if !we.spec.ports.is_empty() {
            errors.push(FieldError::new("spec.ports", "UDS may not include ports"));
        }
    }
    let mut ports = BTreeMap::new();
    for (name, n) in &we.spec.ports {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid_name {
            errors.push(FieldError::new(
                "spec.ports",
                format!("Invalid value: port name {name:?}"),
            ));
        }
        if let Some(p) = port_number(*n, &format!("spec.ports.{name}"), &mut errors) {
            ports.insert(name.clone(), p);
        }
    }
    let weight = count(we.spec.weight, "spec.weight", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let meta = &doc.meta;
    // Local workloads run mast-proxy unless told otherwise (Istio marks sidecar-backed
    // WorkloadEntries with `security.istio.io/tlsMode: istio`).
    let has_sidecar = we
        .spec
        .labels
        .get("security.istio.io/tlsMode")
        .map(String::as_str)
        != Some("disabled")
        && meta
            .annotations
            .get("sidecar.istio.io/inject")
            .map(String::as_str)
            != Some("false");
    Ok(WorkloadEntryResource(Workload {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        address,
        labels: we.spec.labels,
        ports,
        service_account: we.spec.service_account.unwrap_or_else(|| "default".into()),
        weight,
        locality: we.spec.locality,
        network: we.spec.network,
        has_sidecar,
        source: meta.resource_ref(),
    }))
}

impl MeshResource for WorkloadEntryResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.workloads.push(self.0.clone());
    }
}

// === Sidecar ===

#[derive(Debug, Deserialize)]
struct ScDoc {
    #[serde(default)]
    spec: ScSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScSpec {
    workload_selector: Option<Selector>,
    #[serde(default)]
    ingress: Vec<ScIngress>,
    #[serde(default)]
    egress: Vec<ScEgress>,
    outbound_traffic_policy: Option<ScOutbound>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScIngress {
    port: SePort,
    bind: Option<String>,
    capture_mode: Option<String>,
    default_endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScEgress {
    port: Option<SePort>,
    bind: Option<String>,
    capture_mode: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ScOutbound {
    mode: Option<String>,
}

#[derive(Debug)]
struct SidecarResource(SidecarScope);

fn capture_mode(v: Option<&str>, f: &str, errors: &mut Vec<FieldError>) -> Option<CaptureMode> {
    match v? {
        "DEFAULT" => Some(CaptureMode::Default),
        "IPTABLES" => Some(CaptureMode::Iptables),
        "NONE" => Some(CaptureMode::None),
        other => {
            errors.push(FieldError::new(
                f,
                format!("unknown capture mode {other:?} (DEFAULT, IPTABLES, NONE)"),
            ));
            None
        }
    }
}

fn sidecar_port(p: &SePort, f: &str, errors: &mut Vec<FieldError>) -> Option<ServicePort> {
    let port = port_number(p.number, &format!("{f}.number"), errors)?;
    Some(ServicePort {
        name: p.name.clone(),
        port,
        target_port: p
            .target_port
            .and_then(|t| port_number(t, &format!("{f}.targetPort"), errors))
            .map(TargetPort::Number),
        protocol: infer_protocol(p.protocol.as_deref(), &p.name, "TCP"),
    })
}

fn parse_sidecar(doc: &Document<'_>) -> Result<SidecarResource, Vec<FieldError>> {
    let sc: ScDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut egress = Vec::new();
    for (i, e) in sc.spec.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        if e.hosts.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.hosts"),
                "at least one host is required",
            ));
        }
        for (j, h) in e.hosts.iter().enumerate() {
            if !h.contains('/') {
                errors.push(FieldError::new(
                    format!("{f}.hosts[{j}]"),
                    format!("{h:?} must be namespace/host"),
                ));
            }
        }
        egress.push(EgressListener {
            port: e
                .port
                .as_ref()
                .and_then(|p| sidecar_port(p, &format!("{f}.port"), &mut errors)),
            bind: e.bind.clone(),
            capture_mode: capture_mode(
                e.capture_mode.as_deref(),
                &format!("{f}.captureMode"),
                &mut errors,
            ),
            hosts: e.hosts.clone(),
        });
    }
    let mut ingress = Vec::new();
    for (i, e) in sc.spec.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        if let Some(port) = sidecar_port(&e.port, &format!("{f}.port"), &mut errors) {
            ingress.push(IngressListener {
                port,
                bind: e.bind.clone(),
                capture_mode: capture_mode(
                    e.capture_mode.as_deref(),
                    &format!("{f}.captureMode"),
                    &mut errors,
                ),
                default_endpoint: e.default_endpoint.clone(),
            });
        }
    }
    let registry_only = match sc
        .spec
        .outbound_traffic_policy
        .as_ref()
        .and_then(|o| o.mode.as_deref())
    {
        None | Some("ALLOW_ANY") => false,
        Some("REGISTRY_ONLY") => true,
        Some(other) => {
            errors.push(FieldError::new(
                "spec.outboundTrafficPolicy.mode",
                format!("unknown mode {other:?}"),
            ));
            false
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SidecarResource(SidecarScope {
        namespace: doc.meta.namespace.clone(),
        workload_selector: sc.spec.workload_selector.map(|s| s.labels),
        egress,
        ingress,
        registry_only,
        source: doc.meta.resource_ref(),
    }))
}

impl MeshResource for SidecarResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.sidecars.push(self.0.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_like_istio() {
        assert_eq!(
            resolve_host("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.prod", "default"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("api.example.com", "default"),
            "api.example.com"
        );
        assert_eq!(resolve_host("*.example.com", "default"), "*.example.com");
    }
}
