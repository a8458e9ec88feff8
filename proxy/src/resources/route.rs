//! RDS: route configurations, ready for per-request matching.
//!
//! Virtual hosts are found as Envoy finds them — exact domain, then the longest `*.suffix`,
//! then the longest `prefix*`, then `*` — and routes are tried in order. Regexes are RE2 full
//! matches, as Envoy's `safe_regex`, compiled here once. Header and query-parameter values
//! are matched by [`crate::matcher`], the same code RBAC uses; `dynamic_metadata` matchers
//! (istiod's JWT claim routes) by RBAC's metadata matcher, over the metadata the filters wrote
//! before the route was chosen (see `http::filters` for when it is chosen again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::route::v3 as rv3;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action as RouteActionKind;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::google::protobuf::Any;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use mast_proto::TypeUrl;
use regex::Regex;

use super::{
    At, FieldError, FieldResult, Rejection, ResourceError, XdsResource, decode_any, opt_duration,
    per_million,
};
use crate::matcher::{self, HeaderMatcher, RequestHead, full_match_regex};
use crate::rbac::{DynamicMetadata, MetadataMatcher};

// The route tests (`route/tests.rs`, through `super::*`) build their protos with these names.
#[cfg(test)]
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
#[cfg(test)]
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// A route configuration (`"8080"`, `inbound|8080||`, or inline in a listener).
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.example.com` as (".example.com", index), longest first.
    suffix: Vec<(String, usize)>,
    /// `example.*` as ("example.", index), longest first.
    prefix: Vec<(String, usize)>,
    any: Option<usize>,
    /// `ignore_port_in_host_matching`: the Host's port plays no part in choosing the
    /// virtual host (istiod sets it on gateways, whose clients say `host:8443`).
    ignore_port: bool,
}

/// `require_tls` of a virtual host: which plaintext requests are redirected to `https://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsRequirement {
    #[default]
    None,
    /// Only requests from outside the mesh (not marked `x-envoy-internal`).
    ExternalOnly,
    /// Every request not over TLS (istiod's `httpsRedirect`).
    All,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub require_tls: TlsRequirement,
    pub routes: Vec<Route>,
    pub headers: HeaderOps,
    pub fault: Option<Arc<Fault>>,
    pub retry: Option<Arc<RetryPolicy>>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: HeaderOps,
    pub fault: Option<Arc<Fault>>,
    /// `decorator`: the operation name of the request's span.
    pub decorator: Option<crate::http::trace::Decorator>,
}

#[derive(Debug)]
pub struct RouteMatch {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatch>,
    metadata: Vec<MetadataMatcher>,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Separated(String),
    Regex(Regex),
}

#[derive(Debug)]
struct QueryMatch {
    name: String,
    kind: Option<matcher::StringMatcher>,
    present: bool,
}

#[derive(Debug)]
pub enum Action {
    Forward(Arc<Forward>),
    Redirect(Redirect),
    Direct {
        status: http::StatusCode,
        body: Bytes,
    },
}

/// Where and how a request is forwarded.
#[derive(Debug)]
pub struct Forward {
    pub clusters: Clusters,
    /// `None`: no timeout (Envoy's 0s).
    pub timeout: Option<Duration>,
    pub retry: Option<Arc<RetryPolicy>>,
    pub mirrors: Vec<Mirror>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<HeaderValue>,
    /// Ring-hash key from this request header.
    pub hash_header: Option<HeaderName>,
    /// A weighted cluster's own request header operations (`weighted_clusters.clusters[i]
    /// .request_headers_to_add`/`_remove`), by cluster name; applied before the route's and
    /// the virtual host's, which override them (Envoy's default order).
    pub cluster_headers: std::collections::HashMap<String, HeaderOps>,
}

#[derive(Debug)]
pub enum Clusters {
    One(String),
    Weighted {
        items: Vec<(String, u32)>,
        total: u32,
    },
}

#[derive(Debug)]
pub struct Mirror {
    pub cluster: String,
    pub ppm: u32,
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub strip_query: bool,
    pub status: http::StatusCode,
}

/// Retries as Envoy's router does them.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub num_retries: u32,
    pub on: RetryOn,
    pub per_try_timeout: Option<Duration>,
    /// `envoy.retry_host_predicates.previous_hosts`: retry on another host.
    pub other_host: bool,
    pub retriable_status: Vec<u16>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// The `retry_on` conditions mast-proxy knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub server_5xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub retriable_4xx: bool,
    pub refused_stream: bool,
    pub retriable_status_codes: bool,
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_unavailable: bool,
    pub grpc_internal: bool,
}

/// Fault injection (`envoy.filters.http.fault`), per virtual host or route.
#[derive(Debug)]
pub struct Fault {
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(Abort, u32)>,
}

#[derive(Debug, Clone, Copy)]
pub enum Abort {
    Http(http::StatusCode),
    Grpc(u32),
}

/// Request and response header changes.
#[derive(Debug, Default)]
pub struct HeaderOps {
    pub request_add: Vec<(HeaderName, HeaderValue, bool)>,
    pub request_remove: Vec<HeaderName>,
    pub response_add: Vec<(HeaderName, HeaderValue, bool)>,
    pub response_remove: Vec<HeaderName>,
}

// === impl rv3::RouteConfiguration ===

impl XdsResource for rv3::RouteConfiguration {
    const TYPE: TypeUrl = TypeUrl::Route;
    type Compiled = RouteTable;

    fn name(&self) -> &str {
        &self.name
    }

    fn compile(&self) -> Result<RouteTable, Rejection> {
        Ok(RouteTable::from_proto(self)?)
    }
}

// === impl RouteTable ===

impl RouteTable {
    pub fn from_proto(rc: &rv3::RouteConfiguration) -> Result<Self, ResourceError> {
        let mut table = Self::build(&rc.name, &rc.virtual_hosts)
            .map_err(|e| e.resource("RouteConfiguration", &rc.name))?;
        table.ignore_port = rc.ignore_port_in_host_matching;
        Ok(table)
    }

    pub fn build(name: &str, hosts: &[rv3::VirtualHost]) -> FieldResult<Self> {
        let mut virtual_hosts = Vec::with_capacity(hosts.len());
        let mut exact = HashMap::new();
        let mut suffix = Vec::new();
        let mut prefix = Vec::new();
        let mut any = None;
        for (i, vh) in hosts.iter().enumerate() {
            let at = format!("virtual_hosts[{i}]");
            virtual_hosts.push(VirtualHost::from_proto(vh).at(&at)?);
            for (j, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                let dup = if d == "*" {
                    any.replace(i).is_some()
                } else if let Some(s) = d.strip_prefix('*') {
                    suffix.push((s.to_string(), i));
                    false
                } else if let Some(p) = d.strip_suffix('*') {
                    prefix.push((p.to_string(), i));
                    false
                } else {
                    exact.insert(d.clone(), i).is_some()
                };
                if dup {
                    return Err(FieldError::new(
                        format!("{at}.domains[{j}]"),
                        format!("domain {d:?} is in more than one virtual host"),
                    ));
                }
            }
        }
        suffix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        prefix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(Self {
            name: name.to_string(),
            virtual_hosts,
            exact,
            suffix,
            prefix,
            any,
            ignore_port: false,
        })
    }

    /// The virtual host for a Host/:authority value (with or without port).
    pub fn find_host(&self, host: &str) -> Option<&VirtualHost> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let host = if self.ignore_port {
            strip_port(host)
        } else {
            host
        };
        let found = self.exact.get(host).copied().or_else(|| {
            // Envoy also tries the host without its port.
            let bare = strip_port(host);
            (bare != host)
                .then(|| self.exact.get(bare).copied())
                .flatten()
                .or_else(|| {
                    self.suffix
                        .iter()
                        .find(|(s, _)| host.ends_with(s.as_str()) && host.len() > s.len())
                        .or_else(|| {
                            self.prefix
                                .iter()
                                .find(|(p, _)| host.starts_with(p.as_str()) && host.len() > p.len())
                        })
                        .map(|(_, i)| *i)
                        .or(self.any)
                })
        });
        found.map(|i| &self.virtual_hosts[i])
    }
}

/// `host:80` → `host`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i + 1..].is_empty() && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            if host.starts_with('[') && !host[..i].ends_with(']') {
                host
            } else {
                &host[..i]
            }
        }
        _ => host,
    }
}

// === impl VirtualHost ===

impl VirtualHost {
    fn from_proto(vh: &rv3::VirtualHost) -> FieldResult<Self> {
        let routes = vh
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::from_proto(r).at(format!("routes[{i}]")))
            .collect::<FieldResult<_>>()?;
        use rv3::virtual_host::TlsRequirementType;
        let require_tls = match TlsRequirementType::try_from(vh.require_tls) {
            Ok(TlsRequirementType::None) => TlsRequirement::None,
            Ok(TlsRequirementType::ExternalOnly) => TlsRequirement::ExternalOnly,
            Ok(TlsRequirementType::All) => TlsRequirement::All,
            Err(_) => {
                return Err(FieldError::new(
                    "require_tls",
                    format!("unknown TLS requirement {}", vh.require_tls),
                ));
            }
        };
        Ok(Self {
            name: vh.name.clone(),
            require_tls,
            routes,
            headers: HeaderOps::from_proto(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            )?,
            fault: fault_config(&vh.typed_per_filter_config)?,
            retry: vh
                .retry_policy
                .as_ref()
                .map(|r| RetryPolicy::from_proto(r).at("retry_policy").map(Arc::new))
                .transpose()?,
        })
    }

    /// The first route matching the request.
    pub fn find_route(&self, req: &Parts, metadata: &DynamicMetadata) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(req, metadata))
    }

    /// Where a plaintext request must go instead (Envoy's answer to `require_tls`: a 301 to
    /// `https://` with the request's Host and path as they came); `None` when it may stay.
    pub fn tls_redirect(&self, tls: bool, req: &Parts, host: &str) -> Option<String> {
        let redirect = match self.require_tls {
            TlsRequirement::None => false,
            TlsRequirement::All => !tls,
            TlsRequirement::ExternalOnly => {
                !tls && req
                    .headers
                    .get("x-envoy-internal")
                    .is_none_or(|v| v.as_bytes() != b"true")
            }
        };
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        redirect.then(|| format!("https://{host}{path}"))
    }
}

// === impl Route ===

impl Route {
    fn from_proto(r: &rv3::Route) -> FieldResult<Self> {
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| FieldError::new("match", "required"))?;
        let matcher = RouteMatch::from_proto(m).at("match")?;
        let action = match &r.action {
            Some(RouteActionKind::Route(a)) => {
                Action::Forward(Arc::new(Forward::from_proto(a).at("route")?))
            }
            Some(RouteActionKind::Redirect(a)) => {
                Action::Redirect(Redirect::from_proto(a).at("redirect")?)
            }
            Some(RouteActionKind::DirectResponse(d)) => {
                let status = http::StatusCode::from_u16(d.status as u16)
                    .ok()
                    .filter(|_| (200..600).contains(&d.status))
                    .ok_or_else(|| FieldError::new("direct_response.status", "not 200-599"))?;
                let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                    None => Bytes::new(),
                    Some(DataSpecifier::InlineString(s)) => Bytes::from(s.clone()),
                    Some(DataSpecifier::InlineBytes(b)) => Bytes::from(b.clone()),
                    Some(_) => {
                        return Err(FieldError::new(
                            "direct_response.body",
                            "only inline_string and inline_bytes are supported",
                        ));
                    }
                };
                Action::Direct { status, body }
            }
            Some(_) => {
                return Err(FieldError::new(
                    "action",
                    "only route, redirect and direct_response actions are supported",
                ));
            }
            None => return Err(FieldError::new("action", "required")),
        };
        Ok(Self {
            name: r.name.clone(),
            matcher,
            action,
            headers: HeaderOps::from_proto(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
            )?,
            fault: fault_config(&r.typed_per_filter_config)?,
            decorator: r
                .decorator
                .as_ref()
                .and_then(crate::http::trace::Decorator::from_proto),
        })
    }
}

fn fault_config(per_filter: &HashMap<String, Any>) -> FieldResult<Option<Arc<Fault>>> {
    let Some(any) = per_filter.get(FAULT_FILTER) else {
        return Ok(None);
    };
    let at = format!("typed_per_filter_config[{FAULT_FILTER:?}]");
    let f: HttpFault = decode_any(any, &at)?;
    Fault::from_proto(&f).at(&at).map(|f| Some(Arc::new(f)))
}

// === impl RouteMatch ===

impl RouteMatch {
    fn from_proto(m: &rv3::RouteMatch) -> FieldResult<Self> {
        let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
        let fold = |s: &str| {
            if case_sensitive {
                s.to_string()
            } else {
                s.to_ascii_lowercase()
            }
        };
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(fold(p)),
            Some(PathSpecifier::Path(p)) => PathMatch::Exact(fold(p)),
            Some(PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::Separated(fold(p)),
            Some(PathSpecifier::SafeRegex(r)) => {
                PathMatch::Regex(full_match_regex(r, "safe_regex")?)
            }
            Some(_) => {
                return Err(FieldError::new(
                    "path_specifier",
                    "only prefix, path, safe_regex and path_separated_prefix are supported",
                ));
            }
            None => return Err(FieldError::new("path_specifier", "required")),
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::from_proto(h).at(format!("headers[{i}]")))
            .collect::<FieldResult<_>>()?;
        let query = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let at = format!("query_parameters[{i}]");
                Ok(match &q.query_parameter_match_specifier {
                    Some(QueryParameterMatchSpecifier::StringMatch(s)) => QueryMatch {
                        name: q.name.clone(),
                        kind: Some(
                            matcher::StringMatcher::from_proto(s)
                                .at(format!("{at}.string_match"))?,
                        ),
                        present: true,
                    },
                    Some(QueryParameterMatchSpecifier::PresentMatch(p)) => QueryMatch {
                        name: q.name.clone(),
                        kind: None,
                        present: *p,
                    },
                    None => QueryMatch {
                        name: q.name.clone(),
                        kind: None,
                        present: true,
                    },
                })
            })
            .collect::<FieldResult<_>>()?;
        let metadata = m
            .dynamic_metadata
            .iter()
            .enumerate()
            .map(|(i, d)| MetadataMatcher::from_proto(d).at(format!("dynamic_metadata[{i}]")))
            .collect::<FieldResult<_>>()?;
        Ok(Self {
            path,
            case_sensitive,
            headers,
            query,
            metadata,
        })
    }

    pub fn matches(&self, req: &Parts, metadata: &DynamicMetadata) -> bool {
        let raw = req.uri.path();
        let lowered;
        let path = if self.case_sensitive {
            raw
        } else {
            lowered = raw.to_ascii_lowercase();
            lowered.as_str()
        };
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Separated(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(r) => r.is_match(raw),
        };
        path_ok
            && (self.headers.is_empty() || {
                let head = RequestHead::from_parts(req);
                self.headers.iter().all(|h| h.matches(&head))
            })
            && (self.query.is_empty() || self.query_matches(req.uri.query().unwrap_or_default()))
            && self.metadata.iter().all(|m| m.matches(Some(metadata)))
    }

    fn query_matches(&self, query: &str) -> bool {
        self.query.iter().all(|q| {
            let value = query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == q.name).then_some(v)
            });
            match (&q.kind, value) {
                (Some(m), Some(v)) => m.matches(v),
                (Some(_), None) => false,
                (None, v) => v.is_some() == q.present,
            }
        })
    }
}

// === impl Forward ===

impl Forward {
    fn from_proto(a: &rv3::RouteAction) -> FieldResult<Self> {
        let mut cluster_headers = std::collections::HashMap::new();
        let clusters = match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => Clusters::One(c.clone()),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                let mut items = Vec::new();
                let mut total = 0u32;
                for (i, c) in w.clusters.iter().enumerate() {
                    let weight = c.weight.as_ref().map_or(0, |w| w.value);
                    if c.name.is_empty() {
                        return Err(FieldError::new(
                            format!("weighted_clusters.clusters[{i}].name"),
                            "required (cluster_header is not supported)",
                        ));
                    }
                    total = total
                        .checked_add(weight)
                        .ok_or_else(|| FieldError::new("weighted_clusters", "weights overflow"))?;
                    if weight > 0 {
                        items.push((c.name.clone(), weight));
                    }
                    let ops = HeaderOps::from_proto(
                        &c.request_headers_to_add,
                        &c.request_headers_to_remove,
                        &[],
                        &[],
                    )
                    .at(format!("weighted_clusters.clusters[{i}]"))?;
                    if !ops.is_empty() {
                        cluster_headers.entry(c.name.clone()).or_insert(ops);
                    }
                }
                if total == 0 {
                    return Err(FieldError::new(
                        "weighted_clusters.clusters",
                        "weights sum to 0",
                    ));
                }
                Clusters::Weighted { items, total }
            }
            _ => {
                return Err(FieldError::new(
                    "cluster_specifier",
                    "cluster or weighted_clusters is required",
                ));
            }
        };
        let timeout = opt_duration(&a.timeout, "timeout")?
            .or(Some(Duration::from_secs(15)))
            .filter(|d| !d.is_zero());
        let mirrors = a
            .request_mirror_policies
            .iter()
            .map(|m| Mirror {
                cluster: m.cluster.clone(),
                ppm: m
                    .runtime_fraction
                    .as_ref()
                    .and_then(|f| f.default_value.as_ref())
                    .map_or(1_000_000, per_million),
            })
            .collect();
        let regex_rewrite = match &a.regex_rewrite {
            Some(r) => {
                let pattern = r
                    .pattern
                    .as_ref()
                    .ok_or_else(|| FieldError::new("regex_rewrite.pattern", "required"))?;
                let re = Regex::new(&pattern.regex).map_err(|e| {
                    FieldError::new("regex_rewrite.pattern", format!("bad regex: {e}"))
                })?;
                // RE2 substitutions use \1; Rust's regex uses ${1}.
                let sub = Regex::new(r"\\(\d)")
                    .map(|d| d.replace_all(&r.substitution, "$${$1}").into_owned())
                    .unwrap_or_else(|_| r.substitution.clone());
                Some((re, sub))
            }
            None => None,
        };
        let host_rewrite = match &a.host_rewrite_specifier {
            Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(
                HeaderValue::from_str(h)
                    .map_err(|_| FieldError::new("host_rewrite_literal", "not a header value"))?,
            ),
            Some(HostRewriteSpecifier::AutoHostRewrite(_)) | None => None,
            Some(_) => {
                return Err(FieldError::new(
                    "host_rewrite_specifier",
                    "only host_rewrite_literal and auto_host_rewrite are supported",
                ));
            }
        };
        let hash_header = a
            .hash_policy
            .iter()
            .find_map(|h| match &h.policy_specifier {
                Some(rv3::route_action::hash_policy::PolicySpecifier::Header(hd)) => {
                    HeaderName::from_bytes(hd.header_name.to_ascii_lowercase().as_bytes()).ok()
                }
                _ => None,
            });
        Ok(Self {
            clusters,
            timeout,
            retry: a
                .retry_policy
                .as_ref()
                .map(|r| RetryPolicy::from_proto(r).at("retry_policy").map(Arc::new))
                .transpose()?,
            mirrors,
            prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
            regex_rewrite,
            host_rewrite,
            hash_header,
            cluster_headers,
        })
    }

    /// Pick a cluster by weight.
    pub fn pick_cluster(&self) -> &str {
        match &self.clusters {
            Clusters::One(c) => c,
            Clusters::Weighted { items, total } => {
                let mut n = rand::random_range(0..*total);
                for (name, w) in items {
                    if n < *w {
                        return name;
                    }
                    n -= w;
                }
                items.last().map_or("", |(n, _)| n.as_str())
            }
        }
    }

    /// The upstream path after prefix or regex rewrites.
    pub fn rewrite_path(&self, matcher: &RouteMatch, path: &str) -> Option<String> {
        if let Some(prefix) = &self.prefix_rewrite {
            let matched = match &matcher.path {
                PathMatch::Prefix(p) | PathMatch::Separated(p) => p.len(),
                PathMatch::Exact(p) => p.len(),
                PathMatch::Regex(_) => path.len(),
            };
            let rest = path.get(matched.min(path.len())..).unwrap_or_default();
            return Some(format!("{prefix}{rest}"));
        }
        self.regex_rewrite
            .as_ref()
            .map(|(re, sub)| re.replace_all(path, sub.as_str()).into_owned())
    }
}

// === impl Redirect ===

impl Redirect {
    fn from_proto(r: &rv3::RedirectAction) -> FieldResult<Self> {
        let status = match RedirectResponseCode::try_from(r.response_code) {
            Ok(RedirectResponseCode::MovedPermanently) => http::StatusCode::MOVED_PERMANENTLY,
            Ok(RedirectResponseCode::Found) => http::StatusCode::FOUND,
            Ok(RedirectResponseCode::SeeOther) => http::StatusCode::SEE_OTHER,
            Ok(RedirectResponseCode::TemporaryRedirect) => http::StatusCode::TEMPORARY_REDIRECT,
            Ok(RedirectResponseCode::PermanentRedirect) => http::StatusCode::PERMANENT_REDIRECT,
            Err(_) => return Err(FieldError::new("response_code", "unknown code")),
        };
        let (path, prefix_rewrite) = match &r.path_rewrite_specifier {
            Some(PathRewriteSpecifier::PathRedirect(p)) => (Some(p.clone()), None),
            Some(PathRewriteSpecifier::PrefixRewrite(p)) => (None, Some(p.clone())),
            None => (None, None),
            Some(_) => {
                return Err(FieldError::new(
                    "path_rewrite_specifier",
                    "only path_redirect and prefix_rewrite are supported",
                ));
            }
        };
        let scheme = match &r.scheme_rewrite_specifier {
            Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
            Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(Self {
            scheme,
            host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
            port: (r.port_redirect != 0).then_some(r.port_redirect as u16),
            path,
            prefix_rewrite,
            strip_query: r.strip_query,
            status,
        })
    }

    /// The Location for a request.
    pub fn location(&self, matcher: &RouteMatch, req: &Parts, default_scheme: &str) -> String {
        let host_header = req
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let scheme = self.scheme.as_deref().unwrap_or(default_scheme);
        let mut host = self
            .host
            .clone()
            .unwrap_or_else(|| strip_port(&host_header).to_string());
        match self.port {
            Some(p) => host = format!("{host}:{p}"),
            None if self.host.is_none() && self.scheme.is_none() => host = host_header,
            None => {}
        }
        let path = req.uri.path();
        let mut new_path = match (&self.path, &self.prefix_rewrite) {
            (Some(p), _) => p.clone(),
            (None, Some(prefix)) => {
                let matched = match &matcher.path {
                    PathMatch::Prefix(p) | PathMatch::Separated(p) | PathMatch::Exact(p) => p.len(),
                    PathMatch::Regex(_) => path.len(),
                };
                format!(
                    "{prefix}{}",
                    path.get(matched.min(path.len())..).unwrap_or("")
                )
            }
            (None, None) => path.to_string(),
        };
        if !self.strip_query
            && !new_path.contains('?')
            && let Some(q) = req.uri.query()
        {
            new_path = format!("{new_path}?{q}");
        }
        format!("{scheme}://{host}{new_path}")
    }
}

// === impl RetryPolicy ===

impl RetryPolicy {
    pub fn from_proto(r: &rv3::RetryPolicy) -> FieldResult<Self> {
        let mut on = RetryOn::default();
        for cond in r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match cond {
                "5xx" => on.server_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "reset-before-request" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                "cancelled" => on.grpc_cancelled = true,
                "deadline-exceeded" => on.grpc_deadline_exceeded = true,
                "resource-exhausted" => on.grpc_resource_exhausted = true,
                "unavailable" => on.grpc_unavailable = true,
                "internal" => on.grpc_internal = true,
                // Conditions that need state mast-proxy does not track are accepted and
                // never fire, as Envoy does with conditions that cannot occur.
                "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => {}
                other => {
                    return Err(FieldError::new(
                        "retry_on",
                        format!("unknown retry condition {other:?}"),
                    ));
                }
            }
        }
        let other_host = r
            .retry_host_predicate
            .iter()
            .any(|p| p.name == "envoy.retry_host_predicates.previous_hosts");
        let (backoff_base, backoff_max) = match &r.retry_back_off {
            Some(b) => {
                let base = opt_duration(&b.base_interval, "retry_back_off.base_interval")?
                    .unwrap_or(Duration::from_millis(25));
                let max = opt_duration(&b.max_interval, "retry_back_off.max_interval")?
                    .unwrap_or(base.saturating_mul(10));
                (base, max)
            }
            None => (Duration::from_millis(25), Duration::from_millis(250)),
        };
        Ok(Self {
            num_retries: r.num_retries.as_ref().map_or(1, |n| n.value),
            on,
            per_try_timeout: opt_duration(&r.per_try_timeout, "per_try_timeout")?
                .filter(|d| !d.is_zero()),
            other_host,
            retriable_status: r.retriable_status_codes.iter().map(|c| *c as u16).collect(),
            backoff_base,
            backoff_max,
        })
    }

    /// Whether a response with this status (and grpc-status, if any) is retried.
    pub fn retries_status(&self, status: u16, grpc: Option<u32>) -> bool {
        let on = &self.on;
        (on.server_5xx && status >= 500)
            || (on.gateway_error && matches!(status, 502..=504))
            || (on.retriable_4xx && status == 409)
            || (on.retriable_status_codes && self.retriable_status.contains(&status))
            || match grpc {
                Some(1) => on.grpc_cancelled,
                Some(4) => on.grpc_deadline_exceeded,
                Some(8) => on.grpc_resource_exhausted,
                Some(13) => on.grpc_internal,
                Some(14) => on.grpc_unavailable,
                _ => false,
            }
    }

    /// Whether a failure to connect (or a reset before a response) is retried.
    pub fn retries_connect_failure(&self) -> bool {
        self.on.connect_failure || self.on.reset || self.on.server_5xx || self.on.gateway_error
    }

    /// Envoy's backoff: random in [0, base * 2^attempt), capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1 << attempt.min(10))
            .min(self.backoff_max);
        let ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(0..ms))
    }
}

// === impl Fault ===

impl Fault {
    fn from_proto(f: &HttpFault) -> FieldResult<Self> {
        let delay = match &f.delay {
            Some(d) => match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(fd)) => Some((
                    super::duration(fd, "delay.fixed_delay")?,
                    d.percentage.as_ref().map_or(1_000_000, per_million),
                )),
                _ => {
                    return Err(FieldError::new("delay", "only fixed_delay is supported"));
                }
            },
            None => None,
        };
        let abort = match &f.abort {
            Some(a) => {
                let kind = match &a.error_type {
                    Some(ErrorType::HttpStatus(s)) => Abort::Http(
                        http::StatusCode::from_u16(*s as u16)
                            .ok()
                            .filter(|_| (200..600).contains(s))
                            .ok_or_else(|| FieldError::new("abort.http_status", "not 200-599"))?,
                    ),
                    Some(ErrorType::GrpcStatus(s)) => Abort::Grpc(*s),
                    _ => {
                        return Err(FieldError::new(
                            "abort",
                            "http_status or grpc_status is required",
                        ));
                    }
                };
                Some((kind, a.percentage.as_ref().map_or(1_000_000, per_million)))
            }
            None => None,
        };
        Ok(Self { delay, abort })
    }
}

// === impl HeaderOps ===

impl HeaderOps {
    fn from_proto(
        req_add: &[HeaderValueOption],
        req_remove: &[String],
        resp_add: &[HeaderValueOption],
        resp_remove: &[String],
    ) -> FieldResult<Self> {
        Ok(Self {
            request_add: header_adds(req_add).at("request_headers_to_add")?,
            request_remove: header_names(req_remove).at("request_headers_to_remove")?,
            response_add: header_adds(resp_add).at("response_headers_to_add")?,
            response_remove: header_names(resp_remove).at("response_headers_to_remove")?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }

    pub fn apply_request(&self, headers: &mut http::HeaderMap) {
        apply(headers, &self.request_remove, &self.request_add);
    }

    pub fn apply_response(&self, headers: &mut http::HeaderMap) {
        apply(headers, &self.response_remove, &self.response_add);
    }
}

fn apply(
    headers: &mut http::HeaderMap,
    remove: &[HeaderName],
    add: &[(HeaderName, HeaderValue, bool)],
) {
    for name in remove {
        headers.remove(name);
    }
    for (name, value, append) in add {
        if *append {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
        }
    }
}

// `append` is deprecated in favour of `append_action`, but older control planes send it.
#[allow(deprecated)]
fn header_adds(opts: &[HeaderValueOption]) -> FieldResult<Vec<(HeaderName, HeaderValue, bool)>> {
    opts.iter()
        .enumerate()
        .map(|(i, o)| {
            let h = o
                .header
                .as_ref()
                .ok_or_else(|| FieldError::new(format!("[{i}].header"), "required"))?;
            let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
                .map_err(|_| FieldError::new(format!("[{i}].header.key"), "not a header name"))?;
            let raw = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                h.raw_value.as_slice()
            };
            let value = HeaderValue::from_bytes(raw).map_err(|_| {
                FieldError::new(format!("[{i}].header.value"), "not a header value")
            })?;
            let append = match o.append.as_ref() {
                Some(b) => b.value,
                None => {
                    HeaderAppendAction::try_from(o.append_action)
                        == Ok(HeaderAppendAction::AppendIfExistsOrAdd)
                }
            };
            Ok((name, value, append))
        })
        .collect()
}

fn header_names(names: &[String]) -> FieldResult<Vec<HeaderName>> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|_| {
                FieldError::new(format!("[{i}]"), format!("{n:?} is not a header name"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
