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
use super::{Document, FieldError, MeshResource, Meta, ParseResult, deserialize};
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
        ("networking.istio.io", "Gateway" | "WorkloadGroup" | "EnvoyFilter" | "ProxyConfig")
        | (
            "security.istio.io",
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication",
        )
        | ("telemetry.istio.io", "Telemetry")
        | ("extensions.istio.io", "WasmPlugin") => {
            boxed(check_shape(doc).map(|()| Box::new(Accepted) as _))
        }
        _ => return None,
    })
}

/// A kind the mesh accepts but does not act on yet; it only has to be well formed.
#[derive(Debug)]
struct Accepted;

impl MeshResource for Accepted {
    fn translate(&self, _meta: &Meta, _model: &mut MeshModel) {}
}

fn check_shape(doc: &Document<'_>) -> Result<(), Vec<FieldError>> {
    match doc.value.get("spec") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(vec![FieldError::new("spec", "must be a mapping")]),
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
        errors.push(FieldError::new("spec.address", "required (or a network)"));
    }
    let mut ports = BTreeMap::new();
    for (name, n) in &we.spec.ports {
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
