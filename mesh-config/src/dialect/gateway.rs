//! Gateway API (`gateway.networking.k8s.io`), in both of its roles:
//! - mesh mode (GAMMA): an HTTPRoute or GRPCRoute whose parentRef is a Service routes the
//!   traffic *to that Service*, from every sidecar;
//! - ingress: a `Gateway` of class `istio` (or Mast's own, `mast`) becomes a [`Gateway`] of
//!   the model, selecting the proxy Istio deploys for it (label
//!   `gateway.networking.k8s.io/gateway-name: <name>`, in the Gateway's namespace), and a
//!   route whose parentRef is that Gateway becomes a route table bound to it.
//!
//! Validation follows the CRDs' OpenAPI and CEL rules (path characters, header names, ports,
//! filter/field agreement, redirect-vs-backend exclusivity) so users get the rejection
//! kubectl would have given them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::duration::parse_duration;
use super::kube::port_number;
use super::{Accepted, Document, FieldError, MeshResource, Meta, ParseResult, deserialize};
use crate::model::*;

pub fn parse(doc: &Document<'_>) -> ParseResult {
    if doc.meta.group() != "gateway.networking.k8s.io" {
        return None;
    }
    Some(match doc.meta.kind.as_str() {
        "HTTPRoute" => parse_route(doc, false).map(|r| Box::new(r) as Box<dyn MeshResource>),
        "GRPCRoute" => parse_route(doc, true).map(|r| Box::new(r) as Box<dyn MeshResource>),
        "Gateway" => parse_gateway(doc).map(|g| Box::new(g) as Box<dyn MeshResource>),
        "GatewayClass" => {
            parse_gateway_class(doc).map(|()| Box::new(Accepted) as Box<dyn MeshResource>)
        }
        "ReferenceGrant" => reference_grant(doc).map(|g| Box::new(g) as Box<dyn MeshResource>),
        "TLSRoute" => parse_l4_route(doc, true).map(|r| Box::new(r) as Box<dyn MeshResource>),
        "TCPRoute" => parse_l4_route(doc, false).map(|r| Box::new(r) as Box<dyn MeshResource>),
        _ => Ok(Box::new(Accepted) as Box<dyn MeshResource>),
    })
}

// === HTTPRoute / GRPCRoute ===

#[derive(Debug, Deserialize)]
struct RouteDoc {
    #[serde(default)]
    spec: RouteSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteSpec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i64>,
    section_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    name: Option<String>,
    #[serde(default)]
    matches: Vec<Match>,
    #[serde(default)]
    filters: Vec<Filter>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    timeouts: Option<Timeouts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Match {
    path: Option<PathMatch>,
    #[serde(default)]
    headers: Vec<ValueMatch>,
    #[serde(default)]
    query_params: Vec<ValueMatch>,
    method: Option<MethodMatch>,
}

/// HTTPRoute's `method` is a string; GRPCRoute's is `{service, method}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MethodMatch {
    Http(String),
    Grpc(GrpcMethod),
}

#[derive(Debug, Deserialize)]
struct GrpcMethod {
    #[serde(rename = "type")]
    kind: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PathMatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ValueMatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<HeaderModifier>,
    response_header_modifier: Option<HeaderModifier>,
    request_redirect: Option<RequestRedirect>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<UrlRewrite>,
    request_mirror: Option<RequestMirror>,
    extension_ref: Option<serde_json::Value>,
    cors: Option<serde_json::Value>,
    external_auth: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct HeaderModifier {
    #[serde(default)]
    set: Vec<NameValue>,
    #[serde(default)]
    add: Vec<NameValue>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestRedirect {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifier>,
    port: Option<i64>,
    status_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathModifier {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UrlRewrite {
    hostname: Option<String>,
    path: Option<PathModifier>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestMirror {
    backend_ref: BackendRef,
    percent: Option<f64>,
    fraction: Option<Fraction>,
}

#[derive(Debug, Deserialize)]
struct Fraction {
    numerator: f64,
    denominator: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackendRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    #[serde(default)]
    filters: Vec<Filter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Timeouts {
    request: Option<String>,
    backend_request: Option<String>,
}

#[derive(Debug)]
struct RouteResource {
    /// `HTTPRoute`, `GRPCRoute`, `TLSRoute` or `TCPRoute`: who refers, for ReferenceGrants.
    kind: &'static str,
    tables: Vec<RouteTable>,
    /// The `backendRefs` (and mirror backends) to Services of other namespaces, as
    /// `(namespace, name)`: each needs a ReferenceGrant.
    cross_namespace: Vec<(String, String)>,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn is_core_service(group: Option<&str>, kind: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core")) && matches!(kind, None | Some("Service"))
}

/// RFC 7230 token characters, which header names must use.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The CRD's path pattern: RFC 3986 path characters, no `[`/`]`, no `//`, `/./` or `/../`.
fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains("//")
        && !p.contains("/./")
        && !p.contains("/../")
        && !p.ends_with("/..")
        && !p.ends_with("/.")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&b))
}

/// A DNS-1123 subdomain hostname, optionally with a leading `*.` wildcard.
fn valid_hostname(h: &str, wildcard: bool) -> bool {
    let h = if wildcard {
        h.strip_prefix("*.").unwrap_or(h)
    } else {
        h
    };
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn duration(s: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<Duration> {
    parse_duration(s)
        .map_err(|e| errors.push(FieldError::new(field, e)))
        .ok()
}

fn header_ops(m: &HeaderModifier, field: &str, errors: &mut Vec<FieldError>) -> HeaderOps {
    let mut seen = BTreeSet::new();
    for (list, entries) in [("set", &m.set), ("add", &m.add)] {
        for (i, nv) in entries.iter().enumerate() {
            if !valid_header_name(&nv.name) {
                errors.push(FieldError::new(
                    format!("{field}.{list}[{i}].name"),
                    format!("{:?} is not a valid header name", nv.name),
                ));
            }
            if !seen.insert((list, nv.name.to_ascii_lowercase())) {
                errors.push(FieldError::new(
                    format!("{field}.{list}[{i}].name"),
                    format!("duplicate header {:?}", nv.name),
                ));
            }
        }
    }
    let mut removed = BTreeSet::new();
    for (i, r) in m.remove.iter().enumerate() {
        if !removed.insert(r.to_ascii_lowercase()) {
            errors.push(FieldError::new(
                format!("{field}.remove[{i}]"),
                format!("duplicate header {r:?}"),
            ));
        }
    }
    HeaderOps {
        set: m
            .set
            .iter()
            .map(|nv| (nv.name.clone(), nv.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|nv| (nv.name.clone(), nv.value.clone()))
            .collect(),
        remove: m.remove.clone(),
    }
}

/// The CRD's patterns for `group` (a DNS subdomain or empty) and `kind`.
fn valid_group(g: &str) -> bool {
    g.is_empty() || valid_hostname(g, false)
}

fn valid_kind(k: &str) -> bool {
    k.len() <= 63
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !k.ends_with('-')
}

/// A backendRef as a destination. Only core Services are routable by the mesh today; other
/// well-formed kinds (multi-cluster ServiceImport, implementation-specific backends) are valid
/// Gateway API and are accepted, but get no destination (Gateway API then answers 500).
fn backend_destination(
    b: &BackendRef,
    ns: &str,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Destination> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !valid_group(group) {
        errors.push(FieldError::new(
            format!("{field}.group"),
            format!("{group:?} is not a valid API group"),
        ));
    }
    if !valid_kind(kind) {
        errors.push(FieldError::new(
            format!("{field}.kind"),
            format!("{kind:?} is not a valid kind"),
        ));
    }
    let service = is_core_service(b.group.as_deref(), Some(kind));
    let port = match b.port {
        None if service => {
            errors.push(FieldError::new(
                format!("{field}.port"),
                "required when referring to a Service",
            ));
            None
        }
        None => None,
        Some(p) => port_number(p, &format!("{field}.port"), errors),
    };
    service.then(|| Destination {
        host: service_fqdn(&b.name, b.namespace.as_deref().unwrap_or(ns)),
        subset: None,
        port,
    })
}

/// Filters common to rules and backends; returns what they add to the route.
#[derive(Default)]
struct Applied {
    headers: HeaderOperations,
    redirect: Option<Redirect>,
    rewrite: Option<Rewrite>,
    mirrors: Vec<Mirror>,
}

fn apply_filters(
    filters: &[Filter],
    ns: &str,
    field: &str,
    prefix_match: bool,
    errors: &mut Vec<FieldError>,
) -> Applied {
    let mut out = Applied::default();
    let mut seen_types = BTreeSet::new();
    for (i, f) in filters.iter().enumerate() {
        let ff = format!("{field}[{i}]");
        let set_fields: Vec<&str> = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "ResponseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("RequestRedirect", f.request_redirect.is_some()),
            ("URLRewrite", f.url_rewrite.is_some()),
            ("RequestMirror", f.request_mirror.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
            ("CORS", f.cors.is_some()),
            ("ExternalAuth", f.external_auth.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(t, _)| *t)
        .collect();
        if set_fields != [f.kind.as_str()] {
            errors.push(FieldError::new(
                format!("{ff}.type"),
                format!("filter type {} must be configured by its own field, and only by it (found: {})", f.kind, if set_fields.is_empty() { "none".to_string() } else { set_fields.join(", ") }),
            ));
            continue;
        }
        if f.kind != "RequestMirror"
            && f.kind != "ExtensionRef"
            && !seen_types.insert(f.kind.clone())
        {
            errors.push(FieldError::new(
                format!("{ff}.type"),
                format!("filter {} may appear only once", f.kind),
            ));
        }
        if let Some(m) = &f.request_header_modifier {
            out.headers.request = header_ops(m, &format!("{ff}.requestHeaderModifier"), errors);
        }
        if let Some(m) = &f.response_header_modifier {
            out.headers.response = header_ops(m, &format!("{ff}.responseHeaderModifier"), errors);
        }
        if let Some(r) = &f.request_redirect {
            let rf = format!("{ff}.requestRedirect");
            if let Some(h) = &r.hostname
                && !valid_hostname(h, false)
            {
                errors.push(FieldError::new(
                    format!("{rf}.hostname"),
                    format!("{h:?} is not a valid hostname (no wildcards)"),
                ));
            }
            if let Some(s) = &r.scheme
                && s != "http"
                && s != "https"
            {
                errors.push(FieldError::new(
                    format!("{rf}.scheme"),
                    format!("{s:?} is not http or https"),
                ));
            }
            let status = match r.status_code.unwrap_or(302) {
                c @ (301 | 302 | 303 | 307 | 308) => c as u16,
                c => {
                    errors.push(FieldError::new(
                        format!("{rf}.statusCode"),
                        format!("{c} is not 301, 302, 303, 307 or 308"),
                    ));
                    302
                }
            };
            out.redirect = Some(Redirect {
                scheme: r.scheme.clone(),
                host: r.hostname.clone(),
                port: r
                    .port
                    .and_then(|p| port_number(p, &format!("{rf}.port"), errors)),
                path: r
                    .path
                    .as_ref()
                    .and_then(|p| path_modifier(p, &format!("{rf}.path"), prefix_match, errors)),
                status,
            });
        }
        if let Some(u) = &f.url_rewrite {
            let uf = format!("{ff}.urlRewrite");
            if let Some(h) = &u.hostname
                && !valid_hostname(h, false)
            {
                errors.push(FieldError::new(
                    format!("{uf}.hostname"),
                    format!("{h:?} is not a valid hostname"),
                ));
            }
            out.rewrite = Some(Rewrite {
                path: u
                    .path
                    .as_ref()
                    .and_then(|p| path_modifier(p, &format!("{uf}.path"), prefix_match, errors)),
                authority: u.hostname.clone(),
            });
        }
        if let Some(m) = &f.request_mirror {
            let mf = format!("{ff}.requestMirror");
            let percentage = match (m.percent, &m.fraction) {
                (Some(p), _) => p,
                (None, Some(fr)) => 100.0 * fr.numerator / fr.denominator.unwrap_or(100.0).max(1.0),
                (None, None) => 100.0,
            };
            if let Some(destination) =
                backend_destination(&m.backend_ref, ns, &format!("{mf}.backendRef"), errors)
            {
                out.mirrors.push(Mirror {
                    destination,
                    percentage,
                });
            }
        }
    }
    out
}

fn path_modifier(
    p: &PathModifier,
    field: &str,
    prefix_match: bool,
    errors: &mut Vec<FieldError>,
) -> Option<PathRewrite> {
    match (
        p.kind.as_str(),
        &p.replace_full_path,
        &p.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(full), None) => Some(PathRewrite::Full(full.clone())),
        ("ReplacePrefixMatch", None, Some(prefix)) => {
            if !prefix_match {
                errors.push(FieldError::new(
                    format!("{field}.type"),
                    "ReplacePrefixMatch needs a PathPrefix match",
                ));
            }
            Some(PathRewrite::Prefix(prefix.clone()))
        }
        (kind, _, _) => {
            errors.push(FieldError::new(format!("{field}.type"), format!("type {kind} needs exactly its own field (replaceFullPath or replacePrefixMatch)")));
            None
        }
    }
}

fn parse_route(doc: &Document<'_>, grpc: bool) -> Result<RouteResource, Vec<FieldError>> {
    let route: RouteDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    for (i, h) in route.spec.hostnames.iter().enumerate() {
        if !valid_hostname(h, true) {
            errors.push(FieldError::new(
                format!("spec.hostnames[{i}]"),
                format!("{h:?} is not a valid hostname"),
            ));
        }
    }
    let mut http = Vec::new();
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        let rf = format!("spec.rules[{ri}]");
        let mut matches = Vec::new();
        let mut prefix_match = rule.matches.is_empty();
        for (mi, m) in rule.matches.iter().enumerate() {
            let mf = format!("{rf}.matches[{mi}]");
            let mut rm = RouteMatch::default();
            if let Some(p) = &m.path {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                let kind = p.kind.as_deref().unwrap_or("PathPrefix");
                rm.uri = match kind {
                    "Exact" | "PathPrefix" => {
                        if !valid_path(&value) {
                            errors.push(FieldError::new(
                                format!("{mf}.path.value"),
                                format!(
                                    "{value:?} must be an absolute path of URL path characters"
                                ),
                            ));
                        }
                        if kind == "Exact" {
                            Some(StringMatch::Exact(value))
                        } else {
                            prefix_match = true;
                            Some(StringMatch::Prefix(value))
                        }
                    }
                    "RegularExpression" => {
                        if let Err(e) = regex::Regex::new(&value) {
                            errors.push(FieldError::new(
                                format!("{mf}.path.value"),
                                format!("invalid regex: {e}"),
                            ));
                        }
                        Some(StringMatch::Regex(value))
                    }
                    other => {
                        errors.push(FieldError::new(
                            format!("{mf}.path.type"),
                            format!("unknown type {other:?}"),
                        ));
                        None
                    }
                };
            } else {
                prefix_match = true;
            }
            for (list, field, entries) in [
                ("headers", "headers", &m.headers),
                ("queryParams", "queryParams", &m.query_params),
            ] {
                let mut seen = BTreeSet::new();
                for (hi, h) in entries.iter().enumerate() {
                    let hf = format!("{mf}.{field}[{hi}]");
                    let key = if list == "headers" {
                        h.name.to_ascii_lowercase()
                    } else {
                        h.name.clone()
                    };
                    if !seen.insert(key) {
                        errors.push(FieldError::new(
                            format!("{hf}.name"),
                            format!("duplicate match on {:?}", h.name),
                        ));
                    }
                    if list == "headers" && !valid_header_name(&h.name) {
                        errors.push(FieldError::new(
                            format!("{hf}.name"),
                            format!("{:?} is not a valid header name", h.name),
                        ));
                    }
                    let value = match h.kind.as_deref().unwrap_or("Exact") {
                        "Exact" => StringMatch::Exact(h.value.clone()),
                        "RegularExpression" => {
                            if let Err(e) = regex::Regex::new(&h.value) {
                                errors.push(FieldError::new(
                                    format!("{hf}.value"),
                                    format!("invalid regex: {e}"),
                                ));
                            }
                            StringMatch::Regex(h.value.clone())
                        }
                        other => {
                            errors.push(FieldError::new(
                                format!("{hf}.type"),
                                format!("unknown type {other:?}"),
                            ));
                            StringMatch::Exact(h.value.clone())
                        }
                    };
                    if list == "headers" {
                        rm.headers.push(HeaderMatch {
                            name: h.name.to_ascii_lowercase(),
                            value: Some(value),
                            invert: false,
                        });
                    } else {
                        rm.query_params.push(QueryMatch {
                            name: h.name.clone(),
                            value: Some(value),
                        });
                    }
                }
            }
            match &m.method {
                None => {}
                Some(MethodMatch::Http(method)) => {
                    if !METHODS.contains(&method.as_str()) {
                        errors.push(FieldError::new(
                            format!("{mf}.method"),
                            format!("{method:?} is not an HTTP method"),
                        ));
                    }
                    rm.method = Some(StringMatch::Exact(method.clone()));
                }
                Some(MethodMatch::Grpc(g)) => {
                    // gRPC calls are POST /<service>/<method>.
                    let service = g.service.as_deref().unwrap_or("");
                    let method = g.method.as_deref().unwrap_or("");
                    let regex_type = g.kind.as_deref() == Some("RegularExpression");
                    rm.uri = match (service.is_empty(), method.is_empty(), regex_type) {
                        (true, true, _) => {
                            errors.push(FieldError::new(
                                format!("{mf}.method"),
                                "service or method is required",
                            ));
                            None
                        }
                        (false, false, false) => {
                            Some(StringMatch::Exact(format!("/{service}/{method}")))
                        }
                        (false, true, false) => Some(StringMatch::Prefix(format!("/{service}/"))),
                        (true, false, false) => Some(StringMatch::Regex(format!(
                            "/[^/]+/{}",
                            regex::escape(method)
                        ))),
                        (_, _, true) => Some(StringMatch::Regex(format!(
                            "/{}/{}",
                            if service.is_empty() { "[^/]+" } else { service },
                            if method.is_empty() { "[^/]+" } else { method }
                        ))),
                    };
                }
            }
            if grpc && m.method.is_none() && m.path.is_some() {
                errors.push(FieldError::new(
                    format!("{mf}.path"),
                    "GRPCRoute matches by method, not path",
                ));
            }
            matches.push(rm);
        }
        let applied = apply_filters(
            &rule.filters,
            ns,
            &format!("{rf}.filters"),
            prefix_match,
            &mut errors,
        );
        if applied.redirect.is_some() && !rule.backend_refs.is_empty() {
            errors.push(FieldError::new(
                format!("{rf}.filters"),
                "RequestRedirect and backendRefs cannot be used together",
            ));
        }
        if applied.redirect.is_some() && applied.rewrite.is_some() {
            errors.push(FieldError::new(
                format!("{rf}.filters"),
                "RequestRedirect and URLRewrite cannot be used together",
            ));
        }
        let mut destinations = Vec::new();
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let bf = format!("{rf}.backendRefs[{bi}]");
            let destination = backend_destination(b, ns, &bf, &mut errors);
            let weight = match b.weight.unwrap_or(1) {
                w @ 0..=1_000_000 => w as u32,
                w => {
                    errors.push(FieldError::new(
                        format!("{bf}.weight"),
                        format!("{w} is not in 0-1000000"),
                    ));
                    0
                }
            };
            let backend = apply_filters(
                &b.filters,
                ns,
                &format!("{bf}.filters"),
                prefix_match,
                &mut errors,
            );
            // Not a core Service (None): accepted, but the mesh has nowhere to send its share.
            if let Some(destination) = destination {
                destinations.push(WeightedDestination {
                    destination,
                    weight,
                    headers: backend.headers,
                });
            }
        }
        let timeout = rule.timeouts.as_ref().and_then(|t| {
            let request = t
                .request
                .as_deref()
                .and_then(|d| duration(d, &format!("{rf}.timeouts.request"), &mut errors));
            let backend = t
                .backend_request
                .as_deref()
                .and_then(|d| duration(d, &format!("{rf}.timeouts.backendRequest"), &mut errors));
            request.or(backend)
        });
        let action = match applied.redirect {
            Some(r) => RouteAction::Redirect(r),
            // Gateway API: no backends, or all at weight 0, answers 500.
            None if destinations.iter().all(|d| d.weight == 0) && !destinations.is_empty() => {
                RouteAction::DirectResponse {
                    status: 500,
                    body: None,
                }
            }
            None if destinations.is_empty() => RouteAction::DirectResponse {
                status: 500,
                body: None,
            },
            None => RouteAction::Forward(destinations),
        };
        http.push(HttpRoute {
            name: rule.name.clone(),
            matches,
            action,
            rewrite: applied.rewrite,
            timeout,
            retries: None,
            fault: None,
            mirrors: applied.mirrors,
            headers: applied.headers,
            cors: None,
        });
    }
    let mut tables = Vec::new();
    for (pi, p) in route.spec.parent_refs.iter().enumerate() {
        if is_gateway_parent(p) {
            // Ingress: the rules apply at the Gateway, for the route's hostnames.
            let gw_ns = p.namespace.as_deref().unwrap_or(ns);
            let hosts = if route.spec.hostnames.is_empty() {
                vec!["*".to_string()]
            } else {
                route
                    .spec
                    .hostnames
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect()
            };
            // A listener by name (`sectionName`) or port, or every listener that takes it.
            let port = p
                .port
                .and_then(|n| port_number(n, &format!("spec.parentRefs[{pi}].port"), &mut errors));
            tables.push(RouteTable {
                hosts,
                namespace: ns.to_string(),
                export_to: Vec::new(),
                port,
                section: p.section_name.clone(),
                gateways: vec![format!("{gw_ns}/{}", p.name)],
                tls: Vec::new(),
                http: http.clone(),
                tcp: Vec::new(),
                source: doc.meta.resource_ref(),
            });
            continue;
        }
        if !is_core_service(p.group.as_deref(), p.kind.as_deref()) || p.kind.is_none() {
            continue;
        }
        let port = p
            .port
            .and_then(|n| port_number(n, &format!("spec.parentRefs[{pi}].port"), &mut errors));
        tables.push(RouteTable {
            hosts: vec![service_fqdn(&p.name, p.namespace.as_deref().unwrap_or(ns))],
            namespace: ns.to_string(),
            export_to: Vec::new(),
            port,
            section: None,
            gateways: Vec::new(),
            tls: Vec::new(),
            http: http.clone(),
            tcp: Vec::new(),
            source: doc.meta.resource_ref(),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut cross_namespace = Vec::new();
    for rule in &route.spec.rules {
        let mirrors = rule
            .filters
            .iter()
            .chain(rule.backend_refs.iter().flat_map(|b| &b.filters))
            .filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref));
        for b in rule.backend_refs.iter().chain(mirrors) {
            cross_namespace.extend(cross_namespace_service(b, ns));
        }
    }
    Ok(RouteResource {
        kind: if grpc { "GRPCRoute" } else { "HTTPRoute" },
        tables,
        cross_namespace,
    })
}

impl MeshResource for RouteResource {
    fn translate(&self, meta: &Meta, model: &mut MeshModel) {
        let denied: Vec<String> = self
            .cross_namespace
            .iter()
            .filter(|(ns, name)| {
                let from = ObjectRef {
                    group: "gateway.networking.k8s.io",
                    kind: self.kind,
                    namespace: &meta.namespace,
                    name: &meta.name,
                };
                let to = ObjectRef {
                    group: "",
                    kind: "Service",
                    namespace: ns,
                    name,
                };
                !model.reference_permitted(from, to)
            })
            .map(|(ns, name)| service_fqdn(name, ns))
            .collect();
        if !denied.is_empty() {
            tracing::warn!(
                route = %meta.resource_ref(),
                backends = ?denied,
                "backendRefs to another namespace without a ReferenceGrant there are not used \
                 (Gateway API: RefNotPermitted)"
            );
        }
        model.routes.extend(self.tables.iter().map(|t| {
            let mut t = t.clone();
            if !denied.is_empty() {
                drop_backends(&mut t, &denied);
            }
            t
        }));
    }
}

/// Removes the backends a ReferenceGrant does not permit. A rule left without backends
/// answers 500 (HTTP) or is dropped (TCP, TLS), as Gateway API has it for a rule whose
/// backends are all invalid. Where only some are refused, the others take the traffic.
fn drop_backends(table: &mut RouteTable, denied: &[String]) {
    let allowed = |d: &Destination| !denied.contains(&d.host);
    for route in &mut table.http {
        if let RouteAction::Forward(ds) = &mut route.action {
            let before = ds.len();
            ds.retain(|d| allowed(&d.destination));
            if ds.is_empty() && before > 0 {
                route.action = RouteAction::DirectResponse {
                    status: 500,
                    body: None,
                };
            }
        }
        route.mirrors.retain(|m| allowed(&m.destination));
    }
    for rule in &mut table.tcp {
        rule.destinations.retain(|d| allowed(&d.destination));
    }
    table.tcp.retain(|r| !r.destinations.is_empty());
    for rule in &mut table.tls {
        rule.destinations.retain(|d| allowed(&d.destination));
    }
    table.tls.retain(|r| !r.destinations.is_empty());
}

/// `(namespace, name)` of a Service backendRef outside `ns`.
fn cross_namespace_service(b: &BackendRef, ns: &str) -> Option<(String, String)> {
    let other = b.namespace.as_deref().filter(|n| *n != ns)?;
    is_core_service(
        b.group.as_deref(),
        Some(b.kind.as_deref().unwrap_or("Service")),
    )
    .then(|| (other.to_string(), b.name.clone()))
}

/// A parentRef naming a Gateway (the default kind of a parentRef).
fn is_gateway_parent(p: &ParentRef) -> bool {
    matches!(p.group.as_deref(), None | Some("gateway.networking.k8s.io"))
        && matches!(p.kind.as_deref(), None | Some("Gateway"))
}

// === Gateway (translated for the classes Mast serves); GatewayClass, ReferenceGrant,
// TLSRoute: validated, not translated ===

/// The GatewayClasses whose Gateways Mast serves: Istio's, so users' manifests work as they
/// are, and Mast's own.
pub const GATEWAY_CLASSES: [&str; 2] = ["istio", "mast"];
/// The label of the proxy Istio deploys for a Gateway API Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

#[derive(Debug, Deserialize)]
struct GatewayDoc {
    spec: GatewaySpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewaySpec {
    #[serde(default)]
    gateway_class_name: String,
    #[serde(default)]
    listeners: Vec<Listener>,
    #[serde(default)]
    addresses: Vec<Address>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listener {
    name: String,
    hostname: Option<String>,
    port: i64,
    protocol: String,
    tls: Option<ListenerTls>,
    allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListenerTls {
    mode: Option<String>,
    #[serde(default)]
    certificate_refs: Vec<SecretRef>,
}

#[derive(Debug, Deserialize)]
struct SecretRef {
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AllowedRoutes {
    namespaces: Option<RouteNamespaces>,
}

#[derive(Debug, Deserialize)]
struct RouteNamespaces {
    from: Option<String>,
    selector: Option<NamespaceSelector>,
}

/// `allowedRoutes.namespaces.selector`: a Kubernetes label selector over Namespaces.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamespaceSelector {
    #[serde(default)]
    match_labels: Labels,
    #[serde(default)]
    match_expressions: Vec<SelectorRequirement>,
}

#[derive(Clone, Debug, Deserialize)]
struct SelectorRequirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

impl NamespaceSelector {
    /// Kubernetes' label selector semantics (`In`, `NotIn`, `Exists`, `DoesNotExist`).
    fn matches(&self, labels: &Labels) -> bool {
        labels_match(&self.match_labels, labels)
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => v.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => v.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            })
    }
}

/// A Gateway API Gateway: `Some` model gateway for the classes Mast serves, and the
/// listeners (by server index) whose routes may come from namespaces a selector picks —
/// resolved against the model's Namespaces when translated.
#[derive(Debug)]
struct GatewayApiGateway(Option<Gateway>, Vec<(usize, NamespaceSelector)>);

impl MeshResource for GatewayApiGateway {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        let Some(g) = &self.0 else { return };
        let mut g = g.clone();
        for (i, selector) in &self.1 {
            let Some(server) = g.servers.get_mut(*i) else {
                continue;
            };
            let host = server
                .hosts
                .first()
                .map_or("*".to_string(), |h| h.host.clone());
            server.hosts = model
                .namespaces
                .values()
                .filter(|ns| selector.matches(&ns.labels))
                .map(|ns| GatewayHost {
                    namespace: Some(ns.name.clone()),
                    host: host.clone(),
                })
                .collect();
        }
        model.gateways.push(g);
    }
}

/// The model's view of a Gateway API Gateway: one server per listener, hosts scoped to the
/// namespaces routes may attach from (`Same`, Gateway API's default, or `All`).
fn gateway_of(doc: &Document<'_>, spec: &GatewaySpec) -> Option<Gateway> {
    if !GATEWAY_CLASSES.contains(&spec.gateway_class_name.as_str()) {
        return None;
    }
    let ns = &doc.meta.namespace;
    let servers = spec
        .listeners
        .iter()
        .filter_map(|l| {
            let port = u16::try_from(l.port).ok()?;
            let host_ns = match l
                .allowed_routes
                .as_ref()
                .and_then(|a| a.namespaces.as_ref())
                .and_then(|n| n.from.as_deref())
            {
                Some("All") => None,
                _ => Some(ns.clone()),
            };
            let tls_mode = l.tls.as_ref().and_then(|t| t.mode.as_deref());
            let tls = match l.protocol.as_str() {
                "HTTPS" | "TLS" => {
                    let passthrough = tls_mode == Some("Passthrough");
                    // Only Secrets of the Gateway's own namespace (a cross-namespace reference
                    // needs a ReferenceGrant, which Mast does not evaluate yet).
                    let credential = l.tls.as_ref().and_then(|t| {
                        t.certificate_refs
                            .iter()
                            .find(|r| r.namespace.as_deref().is_none_or(|n| n == ns))
                            .map(|r| r.name.clone())
                    });
                    Some(ServerTls {
                        mode: if passthrough {
                            ServerTlsMode::Passthrough
                        } else {
                            ServerTlsMode::Simple
                        },
                        credential_name: credential,
                        ..ServerTls::default()
                    })
                }
                _ => None,
            };
            Some(GatewayServer {
                port,
                port_name: l.name.clone(),
                protocol: match l.protocol.as_str() {
                    "HTTP" => Protocol::Http,
                    "HTTPS" => Protocol::Https,
                    "TLS" => Protocol::Tls,
                    _ => Protocol::Tcp,
                },
                bind: None,
                hosts: vec![GatewayHost {
                    namespace: host_ns,
                    host: l.hostname.as_deref().unwrap_or("*").to_ascii_lowercase(),
                }],
                tls,
            })
        })
        .collect();
    Some(Gateway {
        name: doc.meta.name.clone(),
        namespace: ns.clone(),
        selector: [(GATEWAY_NAME_LABEL.to_string(), doc.meta.name.clone())]
            .into_iter()
            .collect(),
        namespace_scoped: true,
        servers,
        source: doc.meta.resource_ref(),
    })
}

#[derive(Debug, Deserialize)]
struct Address {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: String,
}

fn parse_gateway(doc: &Document<'_>) -> Result<GatewayApiGateway, Vec<FieldError>> {
    let gw: GatewayDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        let f = format!("spec.listeners[{i}]");
        if !valid_hostname(&l.name, false) {
            errors.push(FieldError::new(
                format!("{f}.name"),
                format!("{:?} is not a valid listener name", l.name),
            ));
        }
        if !names.insert(l.name.clone()) {
            errors.push(FieldError::new(
                format!("{f}.name"),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
        port_number(l.port, &format!("{f}.port"), &mut errors);
        let l4 = matches!(l.protocol.as_str(), "TCP" | "UDP");
        if l4 && l.hostname.is_some() {
            errors.push(FieldError::new(
                format!("{f}.hostname"),
                format!("must not be set for protocol {}", l.protocol),
            ));
        }
        if l4 && l.tls.is_some() {
            errors.push(FieldError::new(
                format!("{f}.tls"),
                format!("must not be set for protocol {}", l.protocol),
            ));
        }
        if l.protocol == "HTTPS"
            && l.tls.as_ref().and_then(|t| t.mode.as_deref()) == Some("Passthrough")
        {
            errors.push(FieldError::new(
                format!("{f}.tls.mode"),
                "HTTPS listeners terminate TLS; use protocol TLS for Passthrough",
            ));
        }
    }
    for (i, a) in gw.spec.addresses.iter().enumerate() {
        let f = format!("spec.addresses[{i}].value");
        match a.kind.as_deref().unwrap_or("IPAddress") {
            "IPAddress" if a.value.parse::<IpAddr>().is_err() => {
                errors.push(FieldError::new(
                    f,
                    format!("{:?} is not an IP address", a.value),
                ));
            }
            "Hostname" if !valid_hostname(&a.value, false) => {
                errors.push(FieldError::new(
                    f,
                    format!("{:?} is not a hostname", a.value),
                ));
            }
            _ => {}
        }
    }
    // `from: Selector` listeners, by their index among the servers (listeners with a port
    // out of range are not servers).
    let selectors = gw
        .spec
        .listeners
        .iter()
        .filter(|l| u16::try_from(l.port).is_ok())
        .enumerate()
        .filter_map(|(i, l)| {
            let n = l.allowed_routes.as_ref()?.namespaces.as_ref()?;
            (n.from.as_deref() == Some("Selector"))
                .then(|| (i, n.selector.clone().unwrap_or_default()))
        })
        .collect();
    if errors.is_empty() {
        Ok(GatewayApiGateway(gateway_of(doc, &gw.spec), selectors))
    } else {
        Err(errors)
    }
}

fn parse_gateway_class(doc: &Document<'_>) -> Result<(), Vec<FieldError>> {
    let controller = doc
        .value
        .pointer("/spec/controllerName")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    // A domain-prefixed path: `example.com/gateway-controller`.
    match controller.split_once('/') {
        Some((domain, path)) if valid_hostname(domain, false) && !path.is_empty() => Ok(()),
        _ => Err(vec![FieldError::new(
            "spec.controllerName",
            format!(
                "{controller:?} must be a domain-prefixed path such as example.net/gateway-controller"
            ),
        )]),
    }
}

#[derive(Debug, Deserialize)]
struct GrantDoc {
    spec: GrantSpec,
}

#[derive(Debug, Default, Deserialize)]
struct GrantSpec {
    #[serde(default)]
    from: Vec<GrantFromDoc>,
    #[serde(default)]
    to: Vec<GrantToDoc>,
}

#[derive(Debug, Deserialize)]
struct GrantFromDoc {
    #[serde(default)]
    group: String,
    kind: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Debug, Deserialize)]
struct GrantToDoc {
    #[serde(default)]
    group: String,
    kind: String,
    name: Option<String>,
}

/// A ReferenceGrant, for the model.
#[derive(Debug)]
struct Grant(ReferenceGrant);

impl MeshResource for Grant {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.reference_grants.push(self.0.clone());
    }
}

fn reference_grant(doc: &Document<'_>) -> Result<Grant, Vec<FieldError>> {
    parse_reference_grant(doc)?;
    let g: GrantDoc = deserialize(doc).map_err(|e| vec![e])?;
    Ok(Grant(ReferenceGrant {
        namespace: doc.meta.namespace.clone(),
        from: g
            .spec
            .from
            .into_iter()
            .map(|f| GrantFrom {
                group: f.group,
                kind: f.kind,
                namespace: f.namespace,
            })
            .collect(),
        to: g
            .spec
            .to
            .into_iter()
            .map(|t| GrantTo {
                group: t.group,
                kind: t.kind,
                name: t.name.filter(|n| !n.is_empty()),
            })
            .collect(),
    }))
}

fn parse_reference_grant(doc: &Document<'_>) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    for list in ["from", "to"] {
        match doc
            .value
            .pointer(&format!("/spec/{list}"))
            .and_then(|v| v.as_array())
        {
            Some(a) if !a.is_empty() => {
                if list == "from" {
                    for (i, e) in a.iter().enumerate() {
                        if e.get("namespace")
                            .and_then(|n| n.as_str())
                            .is_none_or(str::is_empty)
                        {
                            errors.push(FieldError::new(
                                format!("spec.from[{i}].namespace"),
                                "required",
                            ));
                        }
                    }
                }
            }
            _ => errors.push(FieldError::new(
                format!("spec.{list}"),
                "at least one entry is required",
            )),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// TLSRoute and TCPRoute: connections a Gateway's TLS (Passthrough) or TCP listener takes,
/// routed by SNI (TLSRoute `hostnames`) or all of them (TCPRoute) to weighted backends.
/// Only Gateway parents are served: the mesh routes TCP by Service, not by these kinds.
fn parse_l4_route(doc: &Document<'_>, tls: bool) -> Result<RouteResource, Vec<FieldError>> {
    if tls {
        parse_tls_route(doc)?;
    }
    let route: RouteDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let mut cross_namespace = Vec::new();
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        let mut destinations = Vec::new();
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let bf = format!("spec.rules[{ri}].backendRefs[{bi}]");
            let weight = match b.weight {
                None => 1,
                Some(w) => u32::try_from(w).unwrap_or_else(|_| {
                    errors.push(FieldError::new(
                        format!("{bf}.weight"),
                        format!("{w} is not between 0 and 1000000"),
                    ));
                    0
                }),
            };
            if let Some(destination) = backend_destination(b, ns, &bf, &mut errors) {
                destinations.push(WeightedDestination {
                    destination,
                    weight,
                    headers: HeaderOperations::default(),
                });
            }
            cross_namespace.extend(cross_namespace_service(b, ns));
        }
        if destinations.iter().any(|d| d.weight > 0) {
            rules.push(destinations);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let hosts: Vec<String> = match (tls, route.spec.hostnames.is_empty()) {
        (true, false) => route
            .spec
            .hostnames
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        _ => vec!["*".to_string()],
    };
    let mut tables = Vec::new();
    for (pi, p) in route.spec.parent_refs.iter().enumerate() {
        if !is_gateway_parent(p) {
            continue;
        }
        let port = p
            .port
            .and_then(|n| port_number(n, &format!("spec.parentRefs[{pi}].port"), &mut errors));
        let mut table = RouteTable {
            hosts: hosts.clone(),
            namespace: ns.to_string(),
            export_to: Vec::new(),
            port: None,
            section: p.section_name.clone(),
            gateways: vec![format!(
                "{}/{}",
                p.namespace.as_deref().unwrap_or(ns),
                p.name
            )],
            http: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            source: doc.meta.resource_ref(),
        };
        for destinations in &rules {
            if tls {
                table.tls.push(TlsRoute {
                    sni_hosts: hosts.clone(),
                    port,
                    destinations: destinations.clone(),
                });
            } else {
                table.tcp.push(TcpRoute {
                    port,
                    destinations: destinations.clone(),
                });
            }
        }
        tables.push(table);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RouteResource {
        kind: if tls { "TLSRoute" } else { "TCPRoute" },
        tables,
        cross_namespace,
    })
}

fn parse_tls_route(doc: &Document<'_>) -> Result<(), Vec<FieldError>> {
    let hostnames = doc
        .value
        .pointer("/spec/hostnames")
        .and_then(|v| v.as_array());
    let Some(hostnames) = hostnames.filter(|h| !h.is_empty()) else {
        if doc.meta.version() == "v1alpha2" {
            return Ok(());
        }
        return Err(vec![FieldError::new(
            "spec.hostnames",
            "at least one hostname is required",
        )]);
    };
    let bad: Vec<FieldError> = hostnames
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.as_str().is_some_and(|h| valid_hostname(h, true)))
        .map(|(i, h)| {
            FieldError::new(
                format!("spec.hostnames[{i}]"),
                format!("{h} is not a valid hostname"),
            )
        })
        .collect();
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

#[cfg(test)]
mod tests;
