//! Istio's configuration — `networking.istio.io` (v1alpha3, v1beta1, v1), `security.istio.io`,
//! `telemetry.istio.io`, `extensions.istio.io` — one file per kind.
//!
//! The kinds Mast ships CRDs for are read into mast-crds' spec types, the very types the CRDs
//! are generated from, so a field is typed once (Istio's API, field for field, camelCase as
//! in users' YAML) and existing Istio files parse unchanged; each kind then enforces on the
//! typed spec the validation istiod does (docs/istio-validation-audit.md compares them rule
//! by rule). EnvoyFilter, ProxyConfig, Telemetry and WasmPlugin, which have no CRD here, are
//! still checked on the untyped document. This file holds the dispatch by kind and what the
//! kinds share: host resolution, durations, regexes, percentages, counts, port and selector
//! shapes. Kinds Mast does not act on yet (WorkloadGroup, EnvoyFilter, ProxyConfig,
//! RequestAuthentication, WasmPlugin; Telemetry's metrics and access logs) are accepted
//! after the checks Istio makes, so a file istiod takes is not refused.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::duration::parse_duration;
use super::{Accepted, Document, FieldError, MeshResource, ParseResult};
use crate::model::*;

mod destination_rule;
mod envoy_filter;
mod gateway;
mod proxy_config;
mod request_authentication;
mod security;
mod service_entry;
mod sidecar;
mod telemetry;
mod virtual_service;
mod wasm_plugin;
mod workload_entry;
mod workload_group;

/// [`super::deserialize`] for the Istio kinds, whose specs are mast-crds' types: serde's
/// unknown-enum-value error is worded as the API server words the same mistake against the
/// CRD (`Unsupported value: "BLAH": supported values: …`), as Istio's own tests expect.
fn deserialize<T: DeserializeOwned>(doc: &Document<'_>) -> Result<T, FieldError> {
    super::deserialize(doc).map_err(|mut e| {
        e.message = unsupported_value(&e.message);
        e
    })
}

/// serde's "unknown variant `X`, expected one of `A`, `B`" (or "expected `A` or `B`") as
/// `Unsupported value: "X": supported values: A, B`; any other message as it is.
fn unsupported_value(message: &str) -> String {
    let parsed = message
        .strip_prefix("unknown variant `")
        .and_then(|rest| rest.split_once("`, expected "));
    let Some((value, expected)) = parsed else {
        return message.to_string();
    };
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    let values = expected.replace(" or ", ", ").replace('`', "");
    format!("Unsupported value: \"{value}\": supported values: {values}")
}

/// The document's `spec` as `T`, read from the untyped document (the policy kinds' specs are
/// optional); an absent or null spec is `T`'s default (an empty policy).
fn typed_spec<T: Default + DeserializeOwned>(doc: &Document<'_>) -> Result<T, Vec<FieldError>> {
    match doc.value.get("spec") {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) if !v.is_object() => Err(vec![FieldError::new("spec", "must be a mapping")]),
        Some(v) => serde_path_to_error::deserialize(v.clone()).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            let message = unsupported_value(&e.into_inner().to_string());
            vec![FieldError::new(field, message)]
        }),
    }
}

/// A count that must fit a `u32`: Istio's `int32` fields are checked for being non-negative
/// here; its `uint32` ones are by their type.
fn count<N: Into<i64>>(v: Option<N>, field: &str, errors: &mut Vec<FieldError>) -> Option<u32> {
    v.map(Into::into).and_then(|n: i64| match u32::try_from(n) {
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
            boxed(virtual_service::parse_virtual_service(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "DestinationRule") => {
            boxed(destination_rule::parse_destination_rule(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "ServiceEntry") => {
            boxed(service_entry::parse_service_entry(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "WorkloadEntry") => {
            boxed(workload_entry::parse_workload_entry(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "Gateway") => {
            boxed(gateway::parse_gateway(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "Sidecar") => {
            boxed(sidecar::parse_sidecar(doc).map(|r| Box::new(r) as _))
        }
        ("security.istio.io", "PeerAuthentication") => {
            boxed(security::parse_peer_authentication(doc).map(|r| Box::new(r) as _))
        }
        ("security.istio.io", "AuthorizationPolicy") => {
            boxed(security::parse_authorization_policy(doc).map(|r| Box::new(r) as _))
        }
        ("security.istio.io", "RequestAuthentication") => boxed(
            request_authentication::parse_request_authentication(doc).map(|r| Box::new(r) as _),
        ),
        ("networking.istio.io", "WorkloadGroup") => {
            boxed(workload_group::parse_workload_group(doc).map(|r| Box::new(r) as _))
        }
        ("telemetry.istio.io", "Telemetry") => {
            boxed(telemetry::parse_telemetry(doc).map(|r| Box::new(r) as _))
        }
        ("networking.istio.io", "EnvoyFilter" | "ProxyConfig")
        | ("extensions.istio.io", "WasmPlugin") => {
            boxed(check_shape(doc).map(|()| Box::new(Accepted) as _))
        }
        _ => return None,
    })
}

fn check_shape(doc: &Document<'_>) -> Result<(), Vec<FieldError>> {
    let spec = match doc.value.get("spec") {
        Some(Value::Object(spec)) => spec,
        None => return Ok(()),
        Some(_) => return Err(vec![FieldError::new("spec", "must be a mapping")]),
    };
    let mut errors = Vec::new();
    match doc.meta.kind.as_str() {
        "ProxyConfig" => proxy_config::proxy_config(spec, &mut errors),
        "WasmPlugin" => wasm_plugin::wasm_plugin(spec, &mut errors),
        "EnvoyFilter" => envoy_filter::envoy_filter(spec, &mut errors),
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
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

/// istiod's `ValidateDuration`, used for every timeout and interval it checks: at least 1 ms,
/// and whole milliseconds (Envoy's precision). A parse error is reported as well.
fn ms_duration(s: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<Duration> {
    let d = duration(s, field, errors)?;
    if d < Duration::from_millis(1) {
        errors.push(FieldError::new(
            field,
            format!("{s:?}: duration must be at least 1ms"),
        ));
    } else if d.subsec_nanos() % 1_000_000 != 0 {
        errors.push(FieldError::new(
            field,
            format!("{s:?}: only durations to ms precision are supported"),
        ));
    }
    Some(d)
}

/// A DNS-1123 label as Istio's `labels.IsDNS1123Label` takes it (letters of either case,
/// digits, inner dashes, at most 63 characters).
fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// istiod's `ValidateFQDN`: at most 255 characters of DNS-1123 labels, a top-level label that
/// is not all digits; one trailing dot is allowed.
fn check_fqdn(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    dns1123_labels(name, name)
}

fn dns1123_labels(whole: &str, labels: &str) -> Result<(), String> {
    let parts: Vec<&str> = labels.split('.').collect();
    let tld = parts.last().copied().unwrap_or("");
    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "domain name {whole:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() && i > 0 {
            break;
        }
        if !dns1123_label(label) {
            return Err(format!(
                "domain name {whole:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// istiod's `ValidateWildcardDomain`: an FQDN whose first label may be `*`, `*foo` or
/// `*-foo`.
fn check_wildcard_domain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    let (first, rest) = match name.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    let wild_ok = first == "*"
        || dns1123_label(first)
        || first
            .strip_prefix("*-")
            .or_else(|| first.strip_prefix('*'))
            .is_some_and(dns1123_label);
    if !wild_ok || first.len() > 63 {
        return Err(format!(
            "domain name {name:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => dns1123_labels(name, rest),
        None => Ok(()),
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// istiod's `ValidateUnixAddress` on what follows `unix://`: an abstract socket (`@name`) or an
/// absolute path that is not a directory.
fn check_unix_address(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(format!("{path} is not an absolute path to a file"));
    }
    Ok(())
}

/// istiod's `ValidatePortName`: a port name is a DNS-1123 label.
fn check_port_name(name: &str, field: &str, errors: &mut Vec<FieldError>) {
    if !dns1123_label(name) {
        errors.push(FieldError::new(
            field,
            format!("invalid port name {name:?}: must be a DNS-1123 label"),
        ));
    }
}

/// istiod's `ValidateProtocol`: empty (sniffed) or one of the protocols Istio knows.
fn check_protocol(protocol: Option<&str>, field: &str, errors: &mut Vec<FieldError>) {
    const KNOWN: &[&str] = &[
        "tcp",
        "udp",
        "grpc",
        "grpc-web",
        "http",
        "http_proxy",
        "http2",
        "https",
        "tls",
        "mongo",
        "redis",
        "mysql",
    ];
    if let Some(p) = protocol
        && !p.is_empty()
        && !KNOWN.contains(&p.to_ascii_lowercase().as_str())
    {
        errors.push(FieldError::new(field, format!("unsupported protocol: {p}")));
    }
}

/// Parsing one Istio document in unit tests, without the store.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use crate::dialect::FieldError;

    /// The field errors of the single document in `yaml`; empty when it is accepted.
    pub(super) fn errors(yaml: &str) -> Vec<FieldError> {
        let (docs, errs) = crate::source::parse_documents(Path::new("test.yaml"), yaml);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(docs.len(), 1, "one document expected");
        match super::parse(&docs[0]) {
            Some(Ok(_)) => Vec::new(),
            Some(Err(e)) => e,
            None => panic!("not an Istio kind"),
        }
    }

    /// `errors` as `field: message` lines, for assertions that name the field.
    pub(super) fn error_lines(yaml: &str) -> Vec<String> {
        errors(yaml)
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    /// The model built from `yaml` alone.
    pub(super) fn model(yaml: &str) -> std::sync::Arc<crate::model::MeshModel> {
        let mut store = crate::store::ConfigStore::default();
        let files = std::collections::BTreeMap::from([(
            std::path::PathBuf::from("test.yaml"),
            yaml.to_string(),
        )]);
        let report = store.apply_files(files);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        store.model()
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

    #[test]
    fn domains_follow_istio_validate_wildcard_domain() {
        for ok in [
            "*",
            "*.example.com",
            "*foo.example.com",
            "reviews",
            "Api.Example.com",
            "a.com.",
        ] {
            assert!(check_wildcard_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "foo.*.com",
            "-a.com",
            "a..com",
            "example.123",
            "a_b.com",
        ] {
            assert!(check_wildcard_domain(bad).is_err(), "{bad}");
        }
        assert!(check_fqdn("*.example.com").is_err());
        assert!(check_fqdn("api.example.com").is_ok());
    }

    #[test]
    fn unknown_enum_values_are_worded_as_the_api_server_does() {
        assert_eq!(
            unsupported_value("unknown variant `BLAH`, expected one of `UNSET`, `STRICT`"),
            "Unsupported value: \"BLAH\": supported values: UNSET, STRICT"
        );
        assert_eq!(
            unsupported_value("unknown variant `x`, expected `A` or `B`"),
            "Unsupported value: \"x\": supported values: A, B"
        );
        assert_eq!(unsupported_value("missing field `a`"), "missing field `a`");
    }

    #[test]
    fn durations_follow_istio_validate_duration() {
        let mut errors = Vec::new();
        ms_duration("1ms", "t", &mut errors);
        ms_duration("2.5s", "t", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        ms_duration("0s", "t", &mut errors);
        ms_duration("1.0005s", "t", &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
