//! VirtualService: the routing rules for a set of hosts — HTTP routes (match, weighted
//! destinations, redirect, direct response, rewrite, timeout, retries, fault injection,
//! mirrors, CORS, header edits) and TCP routes — into a [`RouteTable`].
//!
//! Enforces istiod's VirtualService rules (pkg/config/validation/validation.go
//! ValidateVirtualService and virtualservice.go validateHTTPRoute): hosts that are valid,
//! non-overlapping domains (none for a delegate, `*` only at gateways), one action per HTTP
//! route, relative weights, valid string matches and regexes, header names, redirect and
//! status codes, durations of whole milliseconds, retry conditions, fault percentages, CORS
//! methods; subsets are checked against DestinationRules once the model holds everything.
//!
//! The spec is read straight into `mast_crds::networking::VirtualServiceSpec`, the type the
//! VirtualService CRD is generated from, so a field has one Rust type in the CRD and here.

use mast_crds::networking as api;
use serde::Deserialize;

use super::{
    check_regex, check_wildcard_domain, deserialize, dns1123_label, is_ip, ms_duration, percentage,
    resolve_host,
};
use crate::dialect::kube::port_number;
use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::*;

/// The document around the spec: `spec` is required, the rest (apiVersion, kind, metadata)
/// was read into [`Meta`] already.
#[derive(Debug, Deserialize)]
struct VsDoc {
    spec: api::VirtualServiceSpec,
}

#[derive(Debug)]
pub(super) struct VirtualServiceResource {
    table: RouteTable,
    /// Field path of every subset reference, for `check_references`.
    subset_refs: Vec<(String, Destination)>,
    /// A delegate (no hosts): included by another VirtualService, nothing on its own.
    delegate: bool,
}

/// Which of istiod's two string-match checks applies: `validateStringMatch` (an empty prefix is
/// an error) or, for `uri`, `validateStringMatchRegexp` (only the regex is checked).
#[derive(Clone, Copy, PartialEq, Eq)]
enum EmptyPrefix {
    Refused,
    Allowed,
}

fn string_match(
    m: &api::StringMatch,
    field: &str,
    empty_prefix: EmptyPrefix,
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
        if p.is_empty() && empty_prefix == EmptyPrefix::Refused {
            errors.push(FieldError::new(
                format!("{field}.prefix"),
                "prefix string match should not be empty",
            ));
        }
        return Some(StringMatch::Prefix(p.clone()));
    }
    if let Some(r) = &m.regex {
        istio_regex(r, &format!("{field}.regex"), errors);
        return Some(StringMatch::Regex(r.clone()));
    }
    None
}

/// istiod's `validateStringRegexp`: not empty, at most 1024 bytes, and compiles (RE2 syntax,
/// which the `regex` crate shares).
fn istio_regex(re: &str, field: &str, errors: &mut Vec<FieldError>) {
    if re.is_empty() {
        errors.push(FieldError::new(
            field,
            "regex string match should not be empty",
        ));
    } else if re.len() > 1024 {
        errors.push(FieldError::new(
            field,
            "regex is too large, max length allowed is 1024",
        ));
    } else {
        check_regex(re, field, errors);
    }
}

/// RFC 7230 token characters, istiod's `validHeaderNameRegex`.
fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The header-match key prefix that names a JWT claim (istiod's `HeaderJWTClaim`).
const JWT_CLAIM_PREFIX: &str = "@request.auth.claims";

/// The claim path of a `@request.auth.claims.<a>.<b>` or `@request.auth.claims[a][b]` header
/// match key (the prefix in any case, as istiod's `ToRoutingClaim`), `None` for a header.
fn routing_claim(name: &str) -> Option<Vec<String>> {
    let prefix = name.get(..JWT_CLAIM_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(JWT_CLAIM_PREFIX) {
        return None;
    }
    let rest = &name[JWT_CLAIM_PREFIX.len()..];
    let (inner, separator) = match rest.strip_prefix('.') {
        Some(dotted) => (dotted, "."),
        None => (rest.strip_prefix('[')?.strip_suffix(']')?, "]["),
    };
    (!inner.is_empty()).then(|| inner.split(separator).map(String::from).collect())
}

/// A header-match entry on a JWT claim: a value is required (a claim is matched as a string or
/// list of strings), and `regex: '*'` is not "present" here (istiod would emit it as a regex
/// Envoy refuses).
fn claim_match(
    path: Vec<String>,
    v: &api::StringMatch,
    field: &str,
    invert: bool,
    errors: &mut Vec<FieldError>,
) -> Option<ClaimMatch> {
    let value = string_match(v, field, EmptyPrefix::Refused, errors);
    if value.is_none() {
        errors.push(FieldError::new(
            field,
            "a JWT claim match needs exact, prefix or regex",
        ));
    }
    Some(ClaimMatch {
        path,
        value: value?,
        invert,
    })
}

/// istiod's `ValidateHTTPHeaderNameOrJwtClaimRoute`, for header match keys: a token, an HTTP/2
/// pseudo-header, or a JWT claim (`@request.auth.claims.groups`).
fn check_header_match_name(name: &str, field: &str, errors: &mut Vec<FieldError>) {
    let pseudo = matches!(
        name,
        ":method" | ":scheme" | ":authority" | ":path" | ":status"
    );
    let claim = routing_claim(name).is_some();
    if name.is_empty() {
        errors.push(FieldError::new(field, "header name cannot be empty"));
    } else if !(pseudo || claim || is_header_token(name)) {
        errors.push(FieldError::new(
            field,
            format!("header name {name:?} is not a valid header name"),
        ));
    }
}

/// istiod's header-operation name rules (`ValidateHTTPHeaderWithAuthorityOperationName` for
/// request set/add, `ValidateHTTPHeaderOperationName` otherwise) and `ValidateHTTPHeaderValue`'s
/// control-character rule: no `:`-prefixed header except `:authority` on requests, no `Host`
/// except when setting or adding a request header.
fn check_header_ops(h: Option<&api::Headers>, field: &str, errors: &mut Vec<FieldError>) {
    let Some(h) = h else {
        return;
    };
    let internal = |n: &str| n.starts_with(':') || n.eq_ignore_ascii_case("host");
    let authority =
        |n: &str| n.eq_ignore_ascii_case(":authority") || n.eq_ignore_ascii_case("host");
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else {
            continue;
        };
        let set_add = ops
            .set
            .iter()
            .map(|(k, v)| ("set", k, Some(v)))
            .chain(ops.add.iter().map(|(k, v)| ("add", k, Some(v))));
        let removes = ops.remove.iter().map(|k| ("remove", k, None));
        for (op, name, value) in set_add.chain(removes) {
            let f = format!("{field}.{side}.{op}");
            let may_touch_authority = side == "request" && op != "remove";
            if name.is_empty() {
                errors.push(FieldError::new(f.clone(), "header name cannot be empty"));
            } else if may_touch_authority {
                if internal(name) && !authority(name) {
                    errors.push(FieldError::new(
                        f.clone(),
                        format!("invalid header {name:?}: header cannot have \":\" prefix"),
                    ));
                }
            } else if name.eq_ignore_ascii_case("host") {
                errors.push(FieldError::new(
                    f.clone(),
                    format!("invalid header {name:?}: cannot set Host header"),
                ));
            } else if name.starts_with(':') {
                errors.push(FieldError::new(
                    f.clone(),
                    format!("invalid header {name:?}: header cannot have \":\" prefix"),
                ));
            }
            if let Some(v) = value
                && v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                errors.push(FieldError::new(
                    format!("{f}.{name}"),
                    format!("header value {v:?} contains control characters"),
                ));
            }
        }
    }
}

/// The `:authority` a route sets, through `rewrite.authority` or a request header set/add of
/// `:authority`/`Host`; istiod's `validateAuthorityRewrite` allows one.
fn check_authority_set_once(h: &api::HttpRoute, field: &str, errors: &mut Vec<FieldError>) {
    let request = h.headers.as_ref().and_then(|h| h.request.as_ref());
    let from_headers = request
        .into_iter()
        .flat_map(|r| r.set.keys().chain(r.add.keys()))
        .filter(|k| k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host"))
        .count();
    let from_rewrite = usize::from(
        h.rewrite
            .as_ref()
            .and_then(|r| r.authority.as_deref())
            .is_some_and(|a| !a.is_empty()),
    );
    if from_headers + from_rewrite > 1 {
        errors.push(FieldError::new(
            format!("{field}.headers.request"),
            "authority header cannot be set multiple times (rewrite.authority, :authority, Host)",
        ));
    }
}

fn header_ops(h: Option<&api::HeaderOperations>) -> HeaderOps {
    h.map(|h| HeaderOps {
        set: h.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        add: h.add.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        remove: h.remove.clone(),
    })
    .unwrap_or_default()
}

fn headers(h: Option<&api::Headers>) -> HeaderOperations {
    h.map(|h| HeaderOperations {
        request: header_ops(h.request.as_ref()),
        response: header_ops(h.response.as_ref()),
    })
    .unwrap_or_default()
}

fn destination(
    d: &api::Destination,
    ns: &str,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Destination {
    // istiod's validateDestination: a valid (possibly wildcard) domain other than `*`, a
    // DNS-1123 subset name.
    if d.host.is_empty() {
        errors.push(FieldError::new(format!("{field}.host"), "required"));
    } else if d.host == "*" {
        errors.push(FieldError::new(
            format!("{field}.host"),
            "invalid destination host *",
        ));
    } else if let Err(e) = check_wildcard_domain(&d.host) {
        errors.push(FieldError::new(format!("{field}.host"), e));
    }
    if let Some(subset) = d.subset.as_deref()
        && !subset.is_empty()
        && !dns1123_label(subset)
    {
        errors.push(FieldError::new(
            format!("{field}.subset"),
            format!("subset name is invalid: {subset:?} (must be a DNS-1123 label)"),
        ));
    }
    let port = d
        .port
        .as_ref()
        .and_then(|p| port_number(i64::from(p.number), &format!("{field}.port.number"), errors));
    Destination {
        host: resolve_host(&d.host, ns),
        subset: d.subset.clone().filter(|s| !s.is_empty()),
        port,
    }
}

/// One weighted destination of an HTTP route (with header edits) or a TCP route (without),
/// as [`weighted`] reads both.
struct RouteDestination<'a> {
    destination: &'a api::Destination,
    weight: Option<i32>,
    headers: Option<&'a api::Headers>,
}

impl<'a> From<&'a api::HttpRouteDestination> for RouteDestination<'a> {
    fn from(r: &'a api::HttpRouteDestination) -> Self {
        Self {
            destination: &r.destination,
            weight: r.weight,
            headers: r.headers.as_ref(),
        }
    }
}

impl<'a> From<&'a api::RouteDestination> for RouteDestination<'a> {
    fn from(r: &'a api::RouteDestination) -> Self {
        Self {
            destination: &r.destination,
            weight: r.weight,
            headers: None,
        }
    }
}

/// Weighted destinations, with current istiod's rule: weights are relative — each is ≥ 0 and,
/// with several destinations, their total is > 0; a destination gets weight/total of the
/// traffic (60 and 30 split 2:1). A single destination gets everything, weight or not.
/// Weights are Istio's `int32`: a larger one does not parse.
fn weighted(
    routes: &[RouteDestination<'_>],
    ns: &str,
    field: &str,
    errors: &mut Vec<FieldError>,
    refs: &mut Vec<(String, Destination)>,
) -> Vec<WeightedDestination> {
    let mut out = Vec::new();
    let mut sum = 0i64;
    for (i, r) in routes.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let dest = destination(r.destination, ns, &format!("{f}.destination"), errors);
        check_header_ops(r.headers, &format!("{f}.headers"), errors);
        let weight = match r.weight {
            None if routes.len() == 1 => 100,
            None => 0,
            Some(w) if w < 0 => {
                errors.push(FieldError::new(
                    format!("{f}.weight"),
                    format!("{w} is negative; weights are relative shares ≥ 0"),
                ));
                0
            }
            // Not negative here.
            Some(w) => w.unsigned_abs(),
        };
        sum += i64::from(weight);
        if dest.subset.is_some() {
            refs.push((format!("{f}.destination.subset"), dest.clone()));
        }
        out.push(WeightedDestination {
            destination: dest,
            weight,
            headers: headers(r.headers),
        });
    }
    // A single destination takes all the traffic whatever its weight says (istiod writes
    // it as the route's one cluster).
    if let [one] = out.as_mut_slice() {
        one.weight = 100;
    }
    if routes.len() > 1 && sum <= 0 {
        errors.push(FieldError::new(
            format!("{field}[{}].weight", routes.len() - 1),
            "the weights sum to 0: with several destinations at least one needs a weight",
        ));
    }
    if sum > i64::from(u32::MAX) {
        errors.push(FieldError::new(
            format!("{field}[{}].weight", routes.len() - 1),
            format!("the weights sum to {sum}, more than {}", u32::MAX),
        ));
    }
    out
}

pub(super) fn parse_virtual_service(
    doc: &Document<'_>,
) -> Result<VirtualServiceResource, Vec<FieldError>> {
    let vs: VsDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    let mut refs = Vec::new();
    // With no hosts the VirtualService is a delegate, included by another one's `delegate`.
    let is_delegate = vs.spec.hosts.is_empty();
    let applies_to_gateway =
        !vs.spec.gateways.is_empty() && !vs.spec.gateways.iter().any(|g| g == "mesh");
    // Where the rules apply (`mesh` when no gateway is named), each gateway as `<ns>/<name>`.
    let top_gateways: Vec<String> = if vs.spec.gateways.is_empty() {
        vec![MESH_GATEWAY.to_string()]
    } else {
        vs.spec
            .gateways
            .iter()
            .map(|g| gateway_ref(g, ns))
            .collect()
    };
    let binds_gateway = vs.spec.gateways.iter().any(|g| g != MESH_GATEWAY)
        || vs
            .spec
            .http
            .iter()
            .flat_map(|h| &h.matches)
            .any(|m| m.gateways.iter().any(|g| g != MESH_GATEWAY));
    hosts(&vs.spec, applies_to_gateway, &mut errors);
    if !applies_to_gateway {
        jwt_claims_need_gateway(&vs.spec, &mut errors);
    }
    if vs.spec.http.is_empty() && vs.spec.tcp.is_empty() && vs.spec.tls.is_empty() {
        errors.push(FieldError::new(
            "spec",
            "http, tcp or tls must contain at least one route",
        ));
    }
    let mut http = Vec::new();
    for (i, h) in vs.spec.http.iter().enumerate() {
        let f = format!("spec.http[{i}]");
        // Route names need not be unique: istiod uses them only in logs and stats.
        route_conflicts(h, is_delegate, &f, &mut errors);
        check_header_ops(h.headers.as_ref(), &format!("{f}.headers"), &mut errors);
        check_authority_set_once(h, &f, &mut errors);
        let mut matches = Vec::new();
        for (j, m) in h.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            let sm = |v: &Option<api::StringMatch>,
                      name: &str,
                      empty_prefix: EmptyPrefix,
                      errors: &mut Vec<FieldError>| {
                v.as_ref()
                    .and_then(|m| string_match(m, &format!("{mf}.{name}"), empty_prefix, errors))
            };
            let mut hdrs = Vec::new();
            let mut claims = Vec::new();
            for (k, v) in &m.headers {
                let hf = format!("{mf}.headers.{k}");
                if let Some(path) = routing_claim(k) {
                    claims.extend(claim_match(path, v, &hf, false, &mut errors));
                    continue;
                }
                check_header_match_name(k, &hf, &mut errors);
                let value = string_match(v, &hf, EmptyPrefix::Refused, &mut errors);
                hdrs.push(HeaderMatch {
                    name: k.to_ascii_lowercase(),
                    value,
                    invert: false,
                });
            }
            for (k, v) in &m.without_headers {
                let hf = format!("{mf}.withoutHeaders.{k}");
                if let Some(path) = routing_claim(k) {
                    claims.extend(claim_match(path, v, &hf, true, &mut errors));
                    continue;
                }
                check_header_match_name(k, &hf, &mut errors);
                // istiod skips the check for `regex: "*"`, which reads as "any value": the
                // header must be absent.
                let value = if v.regex.as_deref() == Some("*") {
                    None
                } else {
                    string_match(v, &hf, EmptyPrefix::Refused, &mut errors)
                };
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
                    value: string_match(
                        v,
                        &format!("{mf}.queryParams.{k}"),
                        EmptyPrefix::Refused,
                        &mut errors,
                    ),
                })
                .collect();
            if let Some(sn) = &m.source_namespace
                && !sn.is_empty()
                && !dns1123_label(sn)
            {
                errors.push(FieldError::new(
                    format!("{mf}.sourceNamespace"),
                    format!("sourceNamespace match {sn:?} is invalid (must be a DNS-1123 label)"),
                ));
            }
            matches.push(RouteMatch {
                name: m.name.clone(),
                uri: sm(&m.uri, "uri", EmptyPrefix::Allowed, &mut errors),
                scheme: sm(&m.scheme, "scheme", EmptyPrefix::Refused, &mut errors),
                method: sm(&m.method, "method", EmptyPrefix::Refused, &mut errors),
                authority: sm(&m.authority, "authority", EmptyPrefix::Refused, &mut errors),
                headers: hdrs,
                claims,
                query_params,
                port: m
                    .port
                    .and_then(|p| port_number(i64::from(p), &format!("{mf}.port"), &mut errors)),
                source_labels: m.source_labels.clone(),
                source_namespace: m.source_namespace.clone(),
                ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
                // A match's own gateways replace the VirtualService's for its rule.
                gateways: if m.gateways.is_empty() {
                    top_gateways.clone()
                } else {
                    m.gateways.iter().map(|g| gateway_ref(g, ns)).collect()
                },
            });
        }
        let action = if let Some(r) = &h.redirect {
            RouteAction::Redirect(redirect(r, &h.matches, &f, &mut errors))
        } else if let Some(d) = &h.direct_response {
            direct_response(d, &f, &mut errors)
        } else {
            let route: Vec<RouteDestination<'_>> = h.route.iter().map(Into::into).collect();
            RouteAction::Forward(weighted(
                &route,
                ns,
                &format!("{f}.route"),
                &mut errors,
                &mut refs,
            ))
        };
        let rewrite = h.rewrite.as_ref().map(|r| {
            // istiod's validateHTTPRewrite: one of uri/uriRegexRewrite, and something to do.
            let uri = r.uri.as_deref().filter(|u| !u.is_empty());
            let authority = r.authority.as_deref().filter(|a| !a.is_empty());
            if uri.is_some() && r.uri_regex_rewrite.is_some() {
                errors.push(FieldError::new(
                    format!("{f}.rewrite"),
                    "uri and uriRegexRewrite are mutually exclusive",
                ));
            }
            if uri.is_none() && r.uri_regex_rewrite.is_none() && authority.is_none() {
                errors.push(FieldError::new(
                    format!("{f}.rewrite"),
                    "rewrite must specify at least one of uri, uriRegexRewrite or authority",
                ));
            }
            if let Some(rr) = &r.uri_regex_rewrite {
                let (pattern, rewrite) = regex_rewrite(rr);
                if pattern.is_empty() || rewrite.is_empty() {
                    errors.push(FieldError::new(
                        format!("{f}.rewrite.uriRegexRewrite"),
                        "uriRegexRewrite requires both match and rewrite",
                    ));
                } else {
                    istio_regex(
                        pattern,
                        &format!("{f}.rewrite.uriRegexRewrite.match"),
                        &mut errors,
                    );
                }
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
                    (None, Some(rr)) => {
                        let (pattern, rewrite) = regex_rewrite(rr);
                        Some(PathRewrite::Regex {
                            pattern: pattern.to_string(),
                            substitution: rewrite.to_string(),
                        })
                    }
                    (None, None) => None,
                },
                authority: r.authority.clone(),
            }
        });
        let timeout = h
            .timeout
            .as_deref()
            .and_then(|t| ms_duration(t, &format!("{f}.timeout"), &mut errors));
        let retries = h.retries.as_ref().map(|r| {
            check_retries(r, &format!("{f}.retries"), &mut errors);
            RetryPolicy {
                attempts: r.attempts.unwrap_or(0).max(0) as u32,
                per_try_timeout: r.per_try_timeout.as_deref().and_then(|t| {
                    ms_duration(t, &format!("{f}.retries.perTryTimeout"), &mut errors)
                }),
                retry_on: r.retry_on.clone(),
                retry_remote_localities: r.retry_remote_localities.unwrap_or(false),
            }
        });
        let fault = h.fault.as_ref().map(|fl| {
            // istiod's validateHTTPFaultInjectionDelay: a delay without fixedDelay is accepted
            // and injects nothing; exponentialDelay is refused as not supported.
            let delay = fl.delay.as_ref().and_then(|d| {
                let fixed = d.fixed_delay.as_deref().and_then(|t| {
                    ms_duration(t, &format!("{f}.fault.delay.fixedDelay"), &mut errors)
                });
                if let Some(e) = &d.exponential_delay {
                    ms_duration(e, &format!("{f}.fault.delay.exponentialDelay"), &mut errors);
                    errors.push(FieldError::new(
                        format!("{f}.fault.delay.exponentialDelay"),
                        "exponentialDelay not supported yet",
                    ));
                }
                if let Some(p) = &d.percentage {
                    fault_percentage(
                        p.value,
                        &format!("{f}.fault.delay.percentage.value"),
                        &mut errors,
                    );
                }
                let pct = d
                    .percentage
                    .as_ref()
                    .map(|p| p.value)
                    .or(d.percent.map(f64::from))
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
            // istiod's validateHTTPFaultInjectionAbort: an abort with no error type is only a
            // warning there, and aborts nothing.
            let abort = fl.abort.as_ref().and_then(|a| {
                if let Some(p) = &a.percentage {
                    fault_percentage(
                        p.value,
                        &format!("{f}.fault.abort.percentage.value"),
                        &mut errors,
                    );
                }
                let kind = match (a.http_status, &a.grpc_status, &a.http2_error) {
                    (Some(s), _, _) => {
                        http_status(
                            i64::from(s),
                            &format!("{f}.fault.abort.httpStatus"),
                            &mut errors,
                        );
                        AbortKind::HttpStatus(s.clamp(200, 600) as u16)
                    }
                    (None, Some(g), _) => {
                        if !crate::model::GRPC_STATUS_NAMES.contains(&g.as_str()) {
                            errors.push(FieldError::new(
                                format!("{f}.fault.abort.grpcStatus"),
                                format!(
                                    "gRPC status {g:?} is not supported (one of {})",
                                    crate::model::GRPC_STATUS_NAMES.join(", ")
                                ),
                            ));
                        }
                        AbortKind::GrpcStatus(g.clone())
                    }
                    (None, None, Some(_)) => {
                        errors.push(FieldError::new(
                            format!("{f}.fault.abort.http2Error"),
                            "HTTP/2 abort fault injection not supported yet",
                        ));
                        return None;
                    }
                    (None, None, None) => return None,
                };
                let pct = a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0);
                Some(FaultAbort {
                    kind,
                    percentage: percentage(
                        pct,
                        &format!("{f}.fault.abort.percentage.value"),
                        &mut errors,
                    ),
                })
            });
            if fl.abort.is_none() && fl.delay.is_none() {
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
                .or(h.mirror_percent.or(h.mirror_percent_snake).map(f64::from))
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
        let cors = h
            .cors_policy
            .as_ref()
            .map(|c| cors_policy(c, &format!("{f}.corsPolicy"), &mut errors));
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
        let route: Vec<RouteDestination<'_>> = t.route.iter().map(Into::into).collect();
        let destinations = weighted(&route, ns, &format!("{f}.route"), &mut errors, &mut refs);
        let ports: Vec<Option<u16>> = if t.matches.is_empty() {
            vec![None]
        } else {
            t.matches
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    m.port.and_then(|p| {
                        port_number(i64::from(p), &format!("{f}.match[{j}].port"), &mut errors)
                    })
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
    let mut tls = Vec::new();
    for (i, t) in vs.spec.tls.iter().enumerate() {
        let f = format!("spec.tls[{i}]");
        if t.matches.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.match"),
                "TLS route must have at least one match condition",
            ));
        }
        if t.route.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.route"),
                "TLS route is required",
            ));
        }
        let route: Vec<RouteDestination<'_>> = t.route.iter().map(Into::into).collect();
        let destinations = weighted(&route, ns, &format!("{f}.route"), &mut errors, &mut refs);
        for (j, m) in t.matches.iter().enumerate() {
            if m.sni_hosts.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.match[{j}].sniHosts"),
                    "TLS match must have at least one SNI host",
                ));
            }
            tls.push(TlsRoute {
                sni_hosts: m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                port: m.port.and_then(|p| {
                    port_number(i64::from(p), &format!("{f}.match[{j}].port"), &mut errors)
                }),
                destinations: destinations.clone(),
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // A delegate has no hosts of its own and Mast does not resolve delegation yet, so it adds
    // nothing to any proxy's routes.
    let delegate = is_delegate;
    Ok(VirtualServiceResource {
        table: RouteTable {
            // At a gateway the hosts are the names clients put in Host (`bookinfo.com`):
            // only a one-label short name is a service of the namespace there, as istiod's
            // ResolveShortnameToFQDN.
            hosts: vs
                .spec
                .hosts
                .iter()
                .map(|h| {
                    if binds_gateway && h.contains('.') {
                        h.to_ascii_lowercase()
                    } else {
                        resolve_host(h, ns)
                    }
                })
                .collect(),
            namespace: ns.to_string(),
            export_to: vs.spec.export_to,
            port: None,
            section: None,
            // Every place a rule applies, as istiod selects VirtualServices for a proxy: the
            // VirtualService's gateways and those its matches name.
            gateways: {
                let mut all = top_gateways.clone();
                for g in http
                    .iter()
                    .flat_map(|r: &HttpRoute| &r.matches)
                    .flat_map(|m| &m.gateways)
                {
                    if !all.contains(g) {
                        all.push(g.clone());
                    }
                }
                all
            },
            tls,
            http,
            tcp,
            source: doc.meta.resource_ref(),
        },
        subset_refs: refs,
        delegate,
    })
}

/// A `gateways` entry as `<namespace>/<name>` (istiod's `resolveGatewayName`): `mesh` stays,
/// `ns/name` is kept, a bare name is in the VirtualService's namespace, and the old
/// `name.ns.svc.cluster.local` form names `ns/name`.
fn gateway_ref(g: &str, vs_namespace: &str) -> String {
    if g == MESH_GATEWAY || g.contains('/') {
        return g.to_string();
    }
    match g.split_once('.') {
        Some((name, rest)) => {
            let ns = rest.split('.').next().unwrap_or(vs_namespace);
            format!("{ns}/{name}")
        }
        None => format!("{vs_namespace}/{g}"),
    }
}

/// istiod's host rules for a VirtualService: a delegate (no hosts) has no gateways, tcp or
/// tls; each host is a valid wildcard domain or an IP; `*` only at a gateway; no two hosts
/// overlap (`*.example.com` and `api.example.com` do).
fn hosts(spec: &api::VirtualServiceSpec, applies_to_gateway: bool, errors: &mut Vec<FieldError>) {
    if spec.hosts.is_empty() {
        for (field, set) in [
            ("spec.gateways", !spec.gateways.is_empty()),
            ("spec.tls", !spec.tls.is_empty()),
            ("spec.tcp", !spec.tcp.is_empty()),
        ] {
            if set {
                errors.push(FieldError::new(
                    field,
                    "a delegate VirtualService (no hosts) must not set gateways, tcp or tls",
                ));
            }
        }
    }
    let mut all_valid = true;
    for (i, h) in spec.hosts.iter().enumerate() {
        let f = format!("spec.hosts[{i}]");
        // A gateway's SNI routes may name Istio's generated `outbound_.<port>_._.<host>`.
        let generated_sni = applies_to_gateway && h.starts_with("outbound_");
        if generated_sni {
            continue;
        }
        if let Err(e) = check_wildcard_domain(h) {
            if !is_ip(h) {
                errors.push(FieldError::new(f, e));
                all_valid = false;
            }
        } else if !applies_to_gateway && h == "*" {
            errors.push(FieldError::new(
                f,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            ));
            all_valid = false;
        }
    }
    if all_valid {
        for (i, a) in spec.hosts.iter().enumerate() {
            for b in &spec.hosts[i + 1..] {
                if hosts_overlap(a, b) {
                    errors.push(FieldError::new(
                        format!("spec.hosts[{i}]"),
                        format!("duplicate hosts in virtual service: {a} & {b}"),
                    ));
                }
            }
        }
    }
}

/// Istio's `host.Name.Matches`: equal names, or a wildcard whose suffix the other ends with.
fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// JWT claim routing (`@request.auth.claims.*` header keys) exists only at gateways.
fn jwt_claims_need_gateway(spec: &api::VirtualServiceSpec, errors: &mut Vec<FieldError>) {
    for (i, h) in spec.http.iter().enumerate() {
        for (j, m) in h.matches.iter().enumerate() {
            let keys = m.headers.keys().chain(m.without_headers.keys());
            for k in keys.filter(|k| routing_claim(k).is_some()) {
                errors.push(FieldError::new(
                    format!("spec.http[{i}].match[{j}].headers.{k}"),
                    "JWT claim based routing is only supported for gateways",
                ));
            }
        }
    }
}

/// istiod's validateHTTPRouteConflict: a route with `delegate` has no route or redirect; a
/// redirect or direct response stands alone (no route, fault or rewrite); otherwise a route
/// is required; `mirror` and `mirrors` exclude each other; a delegate cannot delegate again.
fn route_conflicts(h: &api::HttpRoute, in_delegate: bool, f: &str, errors: &mut Vec<FieldError>) {
    let mut conflict = |field: String, msg: &str| errors.push(FieldError::new(field, msg));
    if h.delegate.is_some() {
        if in_delegate {
            conflict(
                format!("{f}.delegate"),
                "a delegate VirtualService's route cannot delegate again",
            );
        }
        if h.redirect.is_some() {
            conflict(
                format!("{f}.redirect"),
                "a route with delegate must not specify redirect",
            );
        }
        if !h.route.is_empty() {
            conflict(
                format!("{f}.route"),
                "a route with delegate must not specify route",
            );
        }
        return;
    }
    let standalone = if h.redirect.is_some() {
        if h.direct_response.is_some() {
            conflict(
                format!("{f}.directResponse"),
                "an HTTP route cannot have both redirect and directResponse",
            );
        }
        Some("redirect")
    } else if h.direct_response.is_some() {
        Some("directResponse")
    } else {
        if h.route.is_empty() {
            conflict(
                format!("{f}.route"),
                "one of route, redirect, directResponse or delegate is required",
            );
        }
        None
    };
    if let Some(action) = standalone {
        if !h.route.is_empty() {
            conflict(
                format!("{f}.route"),
                &format!("an HTTP route cannot have both route and {action}"),
            );
        }
        if h.fault.is_some() {
            conflict(
                format!("{f}.fault"),
                &format!("an HTTP route cannot have both fault and {action}"),
            );
        }
        if h.rewrite.is_some() {
            conflict(
                format!("{f}.rewrite"),
                &format!("an HTTP route cannot have both rewrite and {action}"),
            );
        }
    }
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        conflict(
            format!("{f}.mirrors"),
            "an HTTP route cannot have both mirror and mirrors",
        );
    }
}

/// istiod's validateHTTPRedirect: something to redirect to, uri xor prefixRewrite (the latter
/// only with prefix URI matches), any 3xx code, an http/https scheme, a valid port.
fn redirect(
    r: &api::HttpRedirect,
    matches: &[api::HttpMatchRequest],
    f: &str,
    errors: &mut Vec<FieldError>,
) -> Redirect {
    let rf = format!("{f}.redirect");
    let uri = r.uri.as_deref().filter(|u| !u.is_empty());
    let prefix = r.prefix_rewrite.as_deref().filter(|p| !p.is_empty());
    if uri.is_some() && prefix.is_some() {
        errors.push(FieldError::new(
            format!("{rf}.prefixRewrite"),
            "redirect may only specify one of uri or prefixRewrite",
        ));
    }
    if prefix.is_some()
        && matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
    {
        errors.push(FieldError::new(
            format!("{rf}.prefixRewrite"),
            "redirect prefixRewrite requires all URI matches to use prefix match type",
        ));
    }
    let scheme = r.scheme.as_deref().filter(|s| !s.is_empty());
    let authority = r.authority.as_deref().filter(|a| !a.is_empty());
    if uri.is_none()
        && prefix.is_none()
        && authority.is_none()
        && scheme.is_none()
        && r.port.is_none()
        && r.derive_port.is_none()
    {
        errors.push(FieldError::new(
            rf.clone(),
            "redirect must specify uri, prefixRewrite, authority, scheme or port",
        ));
    }
    let status = match r.redirect_code {
        None | Some(0) => 301,
        Some(c @ 300..=399) => c as u16,
        Some(c) => {
            errors.push(FieldError::new(
                format!("{rf}.redirectCode"),
                format!("{c} is not a valid redirect code, must be 3xx"),
            ));
            301
        }
    };
    if let Some(s) = scheme
        && s != "http"
        && s != "https"
    {
        errors.push(FieldError::new(
            format!("{rf}.scheme"),
            format!("invalid redirect scheme {s:?}, must be \"http\" or \"https\""),
        ));
    }
    Redirect {
        scheme: scheme.map(str::to_string),
        host: authority.map(str::to_string),
        port: r
            .port
            .filter(|p| *p != 0)
            .and_then(|p| port_number(i64::from(p), &format!("{rf}.port"), errors)),
        path: uri
            .map(|u| PathRewrite::Full(u.to_string()))
            .or_else(|| prefix.map(|p| PathRewrite::Prefix(p.to_string()))),
        status,
    }
}

/// A regex rewrite's `match` and `rewrite`, empty when absent (proto3 strings).
fn regex_rewrite(rr: &api::RegexRewrite) -> (&str, &str) {
    (
        rr.pattern.as_deref().unwrap_or_default(),
        rr.rewrite.as_deref().unwrap_or_default(),
    )
}

/// istiod's validateHTTPStatus, shared by directResponse and fault aborts: 200 to 600.
fn http_status(s: i64, field: &str, errors: &mut Vec<FieldError>) {
    if !(200..=600).contains(&s) {
        errors.push(FieldError::new(
            field,
            format!("HTTP status {s} is not in range 200-599"),
        ));
    }
}

/// istiod's validateHTTPDirectResponse: a valid status and a body under 1 MiB.
fn direct_response(
    d: &api::HttpDirectResponse,
    f: &str,
    errors: &mut Vec<FieldError>,
) -> RouteAction {
    http_status(
        i64::from(d.status),
        &format!("{f}.directResponse.status"),
        errors,
    );
    let size = d.body.as_ref().map_or(0, |b| {
        b.string
            .as_ref()
            .map(String::len)
            .or_else(|| b.bytes.as_ref().map(|s| s.len() / 4 * 3))
            .unwrap_or(0)
    });
    if size > 1024 * 1024 {
        errors.push(FieldError::new(
            format!("{f}.directResponse.body"),
            "large direct_responses may impact control plane performance, must be less than 1MB",
        ));
    }
    RouteAction::DirectResponse {
        status: d.status.clamp(200, 600) as u16,
        body: d.body.as_ref().and_then(|b| b.string.clone()),
    }
}

/// istiod's validatePercentage for fault percentages: 0, or 0.0001 to 100.
fn fault_percentage(v: f64, field: &str, errors: &mut Vec<FieldError>) {
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        errors.push(FieldError::new(
            field,
            format!("percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"),
        ));
    }
}

/// retryOn conditions Envoy knows (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`), as
/// istiod lists them; an HTTP status code is accepted too.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The status codes Go's `net/http.StatusText` names, which istiod accepts in retryOn.
fn known_status(code: u16) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428
        | 429 | 431 | 451 | 500..=508 | 510 | 511)
}

/// istiod's ValidateHTTPRetry: attempts ≥ 0; with 0 attempts (retries off) nothing else may be
/// set; known retryOn conditions; backoff a valid duration.
fn check_retries(r: &api::HttpRetry, f: &str, errors: &mut Vec<FieldError>) {
    let attempts = r.attempts.unwrap_or(0);
    if attempts < 0 {
        errors.push(FieldError::new(
            format!("{f}.attempts"),
            "attempts cannot be negative",
        ));
    }
    let retry_on = r.retry_on.as_deref().filter(|s| !s.is_empty());
    if attempts == 0
        && (r.per_try_timeout.is_some()
            || retry_on.is_some()
            || r.retry_remote_localities.is_some())
    {
        errors.push(FieldError::new(
            format!("{f}.attempts"),
            "http retry policy configured when attempts are set to 0 (disabled)",
        ));
    }
    for policy in retry_on.into_iter().flat_map(|s| s.split(',')) {
        let status = policy.parse::<u16>().is_ok_and(known_status);
        if !status && !RETRY_ON.contains(&policy) {
            errors.push(FieldError::new(
                format!("{f}.retryOn"),
                format!("{policy:?} is not a valid retryOn policy"),
            ));
        }
    }
    if let Some(b) = &r.backoff {
        ms_duration(b, &format!("{f}.backoff"), errors);
    }
}

/// istiod's validateCORSPolicy: non-empty origins (regexes checked), methods Go knows, header
/// names that are tokens or `*`, maxAge in whole seconds.
fn cors_policy(c: &api::CorsPolicy, f: &str, errors: &mut Vec<FieldError>) -> CorsPolicy {
    const METHODS: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
    ];
    let allow_origins = c
        .allow_origins
        .iter()
        .enumerate()
        .filter_map(|(j, o)| {
            let of = format!("{f}.allowOrigins[{j}]");
            let value = o.exact.as_ref().or(o.prefix.as_ref()).or(o.regex.as_ref());
            if value.is_none_or(String::is_empty) {
                errors.push(FieldError::new(
                    of.clone(),
                    "an allowed origin needs a non-empty exact, prefix or regex",
                ));
            }
            string_match(o, &of, EmptyPrefix::Allowed, errors)
        })
        .collect();
    for (j, m) in c.allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            errors.push(FieldError::new(
                format!("{f}.allowMethods[{j}]"),
                format!("{m:?} is not a supported HTTP method"),
            ));
        }
    }
    for (name, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (j, h) in list.iter().enumerate() {
            if h != "*" && !is_header_token(h) {
                errors.push(FieldError::new(
                    format!("{f}.{name}[{j}]"),
                    format!("header name {h:?} is not a valid header name"),
                ));
            }
        }
    }
    let max_age = c.max_age.as_deref().and_then(|t| {
        let d = ms_duration(t, &format!("{f}.maxAge"), errors)?;
        if d.subsec_nanos() != 0 {
            errors.push(FieldError::new(
                format!("{f}.maxAge"),
                "max_age duration is accurate only to seconds precision",
            ));
        }
        Some(d)
    });
    CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age,
        allow_credentials: c.allow_credentials,
    }
}

impl MeshResource for VirtualServiceResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        if !self.delegate {
            model.routes.push(self.table.clone());
        }
    }

    fn check_references(&self, _meta: &Meta, model: &MeshModel) -> Vec<FieldError> {
        if self.delegate {
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

#[cfg(test)]
mod tests {
    use super::super::testing::{error_lines, model};
    use crate::model::{PathRewrite, RouteAction};

    fn vs(spec: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\n  namespace: default\nspec:\n{spec}"
        )
    }

    fn rejected(spec: &str, field: &str) {
        let errors = error_lines(&vs(spec));
        assert!(
            errors.iter().any(|e| e.starts_with(field)),
            "expected an error on {field}, got {errors:?}"
        );
    }

    fn accepted(spec: &str) {
        let errors = error_lines(&vs(spec));
        assert!(errors.is_empty(), "{errors:?}");
    }

    const ROUTE: &str = "    route:\n    - destination:\n        host: reviews\n";

    /// ValidateVirtualService: no hosts makes a delegate VirtualService, valid without gateways,
    /// tcp or tls; a delegate adds nothing for sidecars.
    #[test]
    fn delegate_without_hosts_is_accepted() {
        let yaml = vs(&format!("  http:\n  - name: a\n{ROUTE}"));
        assert!(error_lines(&yaml).is_empty());
        assert!(model(&yaml).routes.is_empty());
        rejected(
            &format!("  gateways: [gw]\n  http:\n  - name: a\n{ROUTE}"),
            "spec.gateways",
        );
    }

    /// ValidateVirtualService: hosts are valid wildcard domains, `*` only at gateways, and do
    /// not overlap.
    #[test]
    fn host_rules() {
        rejected(
            &format!("  hosts: ['*']\n  http:\n  - name: a\n{ROUTE}"),
            "spec.hosts[0]",
        );
        accepted(&format!(
            "  hosts: ['*']\n  gateways: [gw]\n  http:\n  - name: a\n{ROUTE}"
        ));
        rejected(
            &format!("  hosts: [a_b.com]\n  http:\n  - name: a\n{ROUTE}"),
            "spec.hosts[0]",
        );
        rejected(
            &format!("  hosts: ['*.example.com', api.example.com]\n  http:\n  - name: a\n{ROUTE}"),
            "spec.hosts[0]",
        );
        accepted(&format!(
            "  hosts: [10.0.0.1, reviews]\n  http:\n  - name: a\n{ROUTE}"
        ));
    }

    /// validateHTTPRoute: route names need not be unique.
    #[test]
    fn duplicate_route_names_are_accepted() {
        accepted(&format!(
            "  hosts: [reviews]\n  http:\n  - name: a\n{ROUTE}  - name: a\n{ROUTE}"
        ));
    }

    /// validateHTTPRouteConflict: redirect and directResponse stand alone (no fault or
    /// rewrite); mirror and mirrors exclude each other; delegate allows a direct response.
    #[test]
    fn route_conflicts() {
        let h = "  hosts: [reviews]\n  http:\n";
        rejected(
            &format!("{h}  - redirect: {{uri: /x}}\n    fault: {{abort: {{httpStatus: 500}}}}\n"),
            "spec.http[0].fault",
        );
        rejected(
            &format!("{h}  - directResponse: {{status: 200}}\n    rewrite: {{uri: /x}}\n"),
            "spec.http[0].rewrite",
        );
        rejected(
            &format!(
                "{h}  - mirror: {{host: a}}\n    mirrors: [{{destination: {{host: b}}}}]\n{ROUTE}"
            ),
            "spec.http[0].mirrors",
        );
        rejected(
            &format!("{h}  - delegate: {{name: d}}\n    redirect: {{uri: /x}}\n"),
            "spec.http[0].redirect",
        );
        accepted(&format!(
            "{h}  - delegate: {{name: d}}\n    directResponse: {{status: 200}}\n"
        ));
    }

    /// validateHTTPRedirect: any 3xx code, something to redirect to, http/https scheme;
    /// prefixRewrite becomes a prefix redirect.
    #[test]
    fn redirect_rules() {
        let h = "  hosts: [reviews]\n  http:\n";
        accepted(&format!(
            "{h}  - redirect: {{uri: /x, redirectCode: 300}}\n"
        ));
        rejected(
            &format!("{h}  - redirect: {{redirectCode: 302}}\n"),
            "spec.http[0].redirect",
        );
        rejected(
            &format!("{h}  - redirect: {{scheme: ftp}}\n"),
            "spec.http[0].redirect.scheme",
        );
        let m = model(&vs(&format!(
            "{h}  - match: [{{uri: {{prefix: /old}}}}]\n    redirect: {{prefixRewrite: /new}}\n"
        )));
        let RouteAction::Redirect(r) = &m.routes[0].http[0].action else {
            panic!("not a redirect");
        };
        assert_eq!(r.path, Some(PathRewrite::Prefix("/new".into())));
        rejected(
            &format!(
                "{h}  - match: [{{uri: {{exact: /old}}}}]\n    redirect: {{prefixRewrite: /new}}\n"
            ),
            "spec.http[0].redirect.prefixRewrite",
        );
    }

    /// validateHTTPFaultInjection: an abort without an error type and a delay without
    /// fixedDelay are accepted (and inject nothing); gRPC statuses are Istio's names;
    /// percentages are 0 or 0.0001–100.
    #[test]
    fn fault_rules() {
        let h = "  hosts: [reviews]\n  http:\n";
        let m = model(&vs(&format!(
            "{h}  - fault: {{abort: {{percentage: {{value: 10}}}}, delay: {{percentage: {{value: 5}}}}}}\n{ROUTE}"
        )));
        let fault = m.routes[0].http[0].fault.as_ref().expect("fault");
        assert!(fault.abort.is_none() && fault.delay.is_none());
        rejected(
            &format!("{h}  - fault: {{abort: {{grpcStatus: NOPE}}}}\n{ROUTE}"),
            "spec.http[0].fault.abort.grpcStatus",
        );
        accepted(&format!(
            "{h}  - fault: {{abort: {{grpcStatus: UNAVAILABLE}}}}\n{ROUTE}"
        ));
        rejected(
            &format!(
                "{h}  - fault: {{abort: {{httpStatus: 503, percentage: {{value: 0.00001}}}}}}\n{ROUTE}"
            ),
            "spec.http[0].fault.abort.percentage.value",
        );
        accepted(&format!(
            "{h}  - fault: {{abort: {{httpStatus: 600}}}}\n{ROUTE}"
        ));
    }

    /// ValidateDuration (≥ 1ms, ms precision) on timeouts; ValidateHTTPRetry's attempts-0 and
    /// retryOn rules.
    #[test]
    fn timeout_and_retry_rules() {
        let h = "  hosts: [reviews]\n  http:\n";
        rejected(
            &format!("{h}  - timeout: 0s\n{ROUTE}"),
            "spec.http[0].timeout",
        );
        rejected(
            &format!("{h}  - retries: {{attempts: 0, retryOn: 5xx}}\n{ROUTE}"),
            "spec.http[0].retries.attempts",
        );
        rejected(
            &format!("{h}  - retries: {{attempts: 2, retryOn: 'sometimes'}}\n{ROUTE}"),
            "spec.http[0].retries.retryOn",
        );
        accepted(&format!(
            "{h}  - retries: {{attempts: 2, retryOn: 'gateway-error,503,reset'}}\n{ROUTE}"
        ));
    }

    /// validateHTTPRewrite, validateAuthorityRewrite, header operation names.
    #[test]
    fn rewrite_and_header_rules() {
        let h = "  hosts: [reviews]\n  http:\n";
        rejected(
            &format!("{h}  - rewrite: {{}}\n{ROUTE}"),
            "spec.http[0].rewrite",
        );
        rejected(
            &format!(
                "{h}  - rewrite: {{authority: a}}\n    headers: {{request: {{set: {{host: b}}}}}}\n{ROUTE}"
            ),
            "spec.http[0].headers.request",
        );
        rejected(
            &format!("{h}  - headers: {{response: {{set: {{':status': '200'}}}}}}\n{ROUTE}"),
            "spec.http[0].headers.response.set",
        );
        rejected(
            &format!("{h}  - headers: {{request: {{remove: [Host]}}}}\n{ROUTE}"),
            "spec.http[0].headers.request.remove",
        );
    }

    /// validateHTTPRouteMatchRequest: empty prefix and regex, header names, sourceNamespace;
    /// `withoutHeaders` with regex `*` means "absent".
    #[test]
    fn match_rules() {
        let h = "  hosts: [reviews]\n  http:\n";
        rejected(
            &format!("{h}  - match: [{{headers: {{x: {{prefix: ''}}}}}}]\n{ROUTE}"),
            "spec.http[0].match[0].headers.x.prefix",
        );
        accepted(&format!("{h}  - match: [{{uri: {{prefix: ''}}}}]\n{ROUTE}"));
        rejected(
            &format!("{h}  - match: [{{uri: {{regex: ''}}}}]\n{ROUTE}"),
            "spec.http[0].match[0].uri.regex",
        );
        rejected(
            &format!("{h}  - match: [{{headers: {{'a b': {{exact: x}}}}}}]\n{ROUTE}"),
            "spec.http[0].match[0].headers.a b",
        );
        rejected(
            &format!("{h}  - match: [{{sourceNamespace: Not_A_Label}}]\n{ROUTE}"),
            "spec.http[0].match[0].sourceNamespace",
        );
        accepted(&format!(
            "{h}  - match: [{{withoutHeaders: {{x-debug: {{regex: '*'}}}}}}]\n{ROUTE}"
        ));
        rejected(
            &format!(
                "{h}  - match: [{{headers: {{'@request.auth.claims.group': {{exact: a}}}}}}]\n{ROUTE}"
            ),
            "spec.http[0].match[0].headers.@request.auth.claims.group",
        );
    }

    /// `@request.auth.claims.<a>.<b>` and `@request.auth.claims[a][b]` keys (the prefix in
    /// any case) are claim matches at gateways, names kept as written; `withoutHeaders`
    /// inverts; a claim match needs a value (`regex: '*'` is refused).
    #[test]
    fn jwt_claim_matches_at_gateways() {
        use crate::model::{ClaimMatch, StringMatch};
        let h = "  hosts: [reviews]\n  gateways: [gw]\n  http:\n";
        let m = model(&vs(&format!(
            "{h}  - match:\n    - headers:\n        '@request.auth.claims.group': {{exact: group1}}\n        '@Request.Auth.Claims[Nested][Key1]': {{prefix: v}}\n        x-user: {{exact: a}}\n      withoutHeaders:\n        '@request.auth.claims.sub': {{regex: 'bad.*'}}\n{ROUTE}"
        )));
        let rm = &m.routes[0].http[0].matches[0];
        assert_eq!(rm.headers.len(), 1);
        assert_eq!(rm.headers[0].name, "x-user");
        let claim = |path: &[&str], value, invert| ClaimMatch {
            path: path.iter().map(|p| p.to_string()).collect(),
            value,
            invert,
        };
        assert_eq!(
            rm.claims,
            [
                claim(&["Nested", "Key1"], StringMatch::Prefix("v".into()), false),
                claim(&["group"], StringMatch::Exact("group1".into()), false),
                claim(&["sub"], StringMatch::Regex("bad.*".into()), true),
            ]
        );
        rejected(
            &format!(
                "{h}  - match: [{{headers: {{'@request.auth.claims.group': {{}}}}}}]\n{ROUTE}"
            ),
            "spec.http[0].match[0].headers.@request.auth.claims.group",
        );
        rejected(
            &format!(
                "{h}  - match: [{{withoutHeaders: {{'@request.auth.claims.group': {{regex: '*'}}}}}}]\n{ROUTE}"
            ),
            "spec.http[0].match[0].withoutHeaders.@request.auth.claims.group",
        );
        rejected(
            &format!(
                "  hosts: [reviews]\n  http:\n  - match: [{{withoutHeaders: {{'@request.auth.claims[group]': {{exact: a}}}}}}]\n{ROUTE}"
            ),
            "spec.http[0].match[0].headers.@request.auth.claims[group]",
        );
    }

    /// validateDestination and validateSubsetName.
    #[test]
    fn destination_rules() {
        let h = "  hosts: [reviews]\n  http:\n";
        rejected(
            &format!("{h}  - route:\n    - destination: {{host: '*'}}\n"),
            "spec.http[0].route[0].destination.host",
        );
        rejected(
            &format!("{h}  - route:\n    - destination: {{host: reviews, subset: v_1}}\n"),
            "spec.http[0].route[0].destination.subset",
        );
    }

    /// The spec is mast-crds' `VirtualServiceSpec`: a weight is Istio's int32 (a larger one is
    /// refused by the type, at its field), TLS routes are typed, unknown fields are ignored.
    #[test]
    fn spec_is_the_crd_type() {
        let h = "  hosts: [reviews]\n  http:\n";
        rejected(
            &format!("{h}  - route:\n    - destination: {{host: a}}\n      weight: 3000000000\n"),
            "spec.http[0].route[0].weight",
        );
        accepted(&format!(
            "{h}  - route:\n    - destination: {{host: a}}\n      weight: 2147483647\n    - destination: {{host: b}}\n"
        ));
        accepted(
            "  hosts: [a.example.com]\n  tls:\n  - match: [{sniHosts: [a.example.com], port: 443}]\n    route: [{destination: {host: a.example.com}, weight: 100}]\n",
        );
        accepted(&format!(
            "  hosts: [reviews]\n  notAnIstioField: 1\n  http:\n  - name: a\n{ROUTE}"
        ));
    }

    /// validateCORSPolicy: methods, header names, whole-second maxAge.
    #[test]
    fn cors_rules() {
        let h = "  hosts: [reviews]\n  http:\n";
        rejected(
            &format!("{h}  - corsPolicy: {{allowMethods: [FETCH]}}\n{ROUTE}"),
            "spec.http[0].corsPolicy.allowMethods[0]",
        );
        rejected(
            &format!("{h}  - corsPolicy: {{maxAge: 1.5s}}\n{ROUTE}"),
            "spec.http[0].corsPolicy.maxAge",
        );
        accepted(&format!(
            "{h}  - corsPolicy: {{allowMethods: [GET, '*'], allowHeaders: ['*', x-a], maxAge: 24h}}\n{ROUTE}"
        ));
    }
}
