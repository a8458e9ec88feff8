//! RDS: one route configuration per HTTP port (named `"<port>"`, as istiod names them; see
//! [`super::plan`] for the `"<fqdn>:<port>"` and `"<bind>:<port>"` variants), with a virtual
//! host per service on that port answering to every alias a client may use (`user`,
//! `user.ns`, `user.ns.svc`, `user.ns.svc.cluster.local`, each also with `:<port>`, short
//! forms only from the service's own namespace, VIPs too), and the routes of the route table
//! (VirtualService, HTTPRoute, TrafficSplit, Knative Route) that targets the service. Requests
//! for unknown hosts fall through to `PassthroughCluster` (`allow_any`, Istio's `ALLOW_ANY`),
//! or get a 502 (`block_all`) under `REGISTRY_ONLY`.
//!
//! One deliberate difference from istiod: when a route table has no catch-all rule, the
//! virtual host still ends with a `default` route to the service (istiod answers 404), so a
//! header-matched canary rule never blackholes the rest of a service's traffic. Not for an
//! ExternalName Service, which istiod treats as an alias of its target: there, as in Istio,
//! a request the VirtualService does not match is a 404.

use std::collections::{HashMap, HashSet};

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, Metadata, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::retry_policy::{RetryHostPredicate, RetryPriority};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy, HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{BoolValue, Struct, UInt32Value};
use mast_mesh_config::model::{
    AbortKind, Destination, HashKey, HeaderOperations, HeaderOps, HttpRoute, LoadBalancer,
    MeshModel, PathRewrite, Redirect, RouteAction as ModelAction, RouteTable, Service, StringMatch,
    WeightedDestination, labels_match,
};

use super::clusters::PASSTHROUGH;
use super::node::ProxyNode;
use super::plan::{OutboundPlan, exported_to};
use super::{any, duration, merged_policy, outbound_cluster_name, string_value};

/// Istio's default retry conditions.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// One route configuration per planned RDS name: a virtual host per service, then the
/// catch-all for hosts the mesh doesn't know.
pub fn outbound(
    model: &MeshModel,
    plan: &OutboundPlan<'_>,
    proxy: &ProxyNode,
) -> Vec<RouteConfiguration> {
    plan.routes
        .values()
        .map(|rp| {
            // Envoy rejects a route configuration in which two virtual hosts claim one domain;
            // the first service (by hostname) keeps it, so one odd alias can't take down the
            // whole port.
            let mut claimed = HashSet::new();
            let mut virtual_hosts: Vec<VirtualHost> = rp
                .services
                .iter()
                .map(|svc| {
                    let mut vh = virtual_host(model, svc, rp.port, proxy);
                    vh.domains.retain(|d| claimed.insert(d.clone()));
                    vh
                })
                .filter(|vh| !vh.domains.is_empty())
                .collect();
            virtual_hosts.push(catch_all_host(plan.registry_only));
            RouteConfiguration {
                name: rp.name.clone(),
                virtual_hosts,
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            }
        })
        .collect()
}

/// `allow_any` to `PassthroughCluster` (Istio's `ALLOW_ANY`), or `block_all` answering 502
/// under `REGISTRY_ONLY`.
fn catch_all_host(registry_only: bool) -> VirtualHost {
    let (name, action) = if registry_only {
        (
            "block_all",
            Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        )
    } else {
        (
            "allow_any",
            Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH.into())),
                timeout: Some(duration(std::time::Duration::ZERO)),
                ..Default::default()
            }),
        )
    };
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: name.into(),
            r#match: Some(prefix_match("/")),
            action: Some(action),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// The route config of an inbound HTTP chain: everything to the local app.
pub fn inbound_route_config(cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: format!("{cluster}:*"),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(prefix_match("/")),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
                    timeout: Some(duration(std::time::Duration::ZERO)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// The route table that applies to `host` on `port` for this proxy: the first visible one
/// naming the host (exactly, or by a `*.` wildcard), as istiod merges by creation order.
fn table_for<'a>(
    model: &'a MeshModel,
    host: &str,
    port: u16,
    proxy_ns: &str,
) -> Option<&'a RouteTable> {
    let matches = |t: &&RouteTable, exact: bool| {
        t.applies_to_mesh()
            && exported_to(&t.export_to, &t.namespace, proxy_ns)
            && t.port.is_none_or(|p| p == port)
            && t.hosts.iter().any(|h| {
                if exact {
                    h == host
                } else {
                    h.strip_prefix('*')
                        .is_some_and(|suffix| host.ends_with(suffix))
                }
            })
    };
    model
        .routes
        .iter()
        .find(|t| matches(t, true))
        .or_else(|| model.routes.iter().find(|t| matches(t, false)))
}

/// TCP routes of the service's table on `port`, as seen from `proxy`: `(cluster, weight)`.
pub fn tcp_destinations(
    model: &MeshModel,
    svc: &Service,
    port: u16,
    proxy: &ProxyNode,
) -> Vec<(String, u32)> {
    let Some(table) = table_for(model, &svc.hostname, port, &proxy.namespace) else {
        return Vec::new();
    };
    table
        .tcp
        .iter()
        .find(|r| r.port.is_none_or(|p| p == port))
        .map(|r| weighted_clusters(model, &r.destinations, port))
        .unwrap_or_default()
}

/// The clusters of weighted destinations reached on `port`, `(cluster, weight)`, without the
/// ones at weight 0.
pub fn weighted_clusters(
    model: &MeshModel,
    destinations: &[WeightedDestination],
    port: u16,
) -> Vec<(String, u32)> {
    destinations
        .iter()
        .filter(|d| d.weight > 0)
        .map(|d| (cluster_for(model, &d.destination, port), d.weight))
        .collect()
}

fn virtual_host(model: &MeshModel, svc: &Service, port: u16, proxy: &ProxyNode) -> VirtualHost {
    let table = table_for(model, &svc.hostname, port, &proxy.namespace);
    let (mut routes, catch_all) = table
        .map(|table| table_routes(model, table, &svc.hostname, port, proxy, Where::Mesh))
        .unwrap_or_default();
    // An ExternalName Service is only an alias of its target for istiod: the
    // VirtualService's rules are all there is, and a request they do not match is a 404.
    // (Knative's route Services are ExternalNames whose VirtualService matches by authority.)
    let alias_routed = table.is_some() && is_external_name(svc);
    if !catch_all && !alias_routed {
        let rm = prefix_match("/");
        routes.push(Route {
            name: "default".into(),
            decorator: Some(decorator(&svc.hostname, port, &rm)),
            r#match: Some(rm),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(outbound_cluster_name(
                    port,
                    None,
                    &svc.hostname,
                ))),
                timeout: Some(duration(std::time::Duration::ZERO)),
                retry_policy: Some(default_retry_policy()),
                hash_policy: hash_policy(model, &svc.hostname, None, port),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    VirtualHost {
        name: format!("{}:{port}", svc.hostname),
        domains: domains(svc, port, &proxy.namespace),
        routes,
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// A Kubernetes Service of `type: ExternalName` (the mesh-config dialect makes it a DNS
/// service with the external name as its one endpoint).
fn is_external_name(svc: &Service) -> bool {
    svc.source.kind == "Service"
        && svc.mesh_external
        && svc.resolution == mast_mesh_config::model::Resolution::Dns
}

/// Where routes are being built: the sidecars (`mesh`), or one gateway (`<ns>/<name>`). A
/// match's own `gateways` narrows its rule to some of the places its table applies.
#[derive(Clone, Copy, Debug)]
pub(super) enum Where<'a> {
    Mesh,
    Gateway { namespace: &'a str, name: &'a str },
}

impl Where<'_> {
    /// Whether a match with these `gateways` applies here (empty: wherever its table does).
    fn selects(self, gateways: &[String]) -> bool {
        gateways.is_empty()
            || gateways.iter().any(|g| match self {
                Where::Mesh => g == mast_mesh_config::model::MESH_GATEWAY,
                Where::Gateway { namespace, name } => g.split_once('/') == Some((namespace, name)),
            })
    }
}

/// The Envoy routes of a route table's HTTP rules for requests to `host` on `port`, as
/// `proxy` sees them (`sourceLabels`/`sourceNamespace` matches select on the proxy), and
/// whether they end in a catch-all (so nothing after them is reachable). Shared by the
/// sidecars' per-service virtual hosts and the gateways' per-host ones.
pub(super) fn table_routes(
    model: &MeshModel,
    table: &RouteTable,
    host: &str,
    port: u16,
    proxy: &ProxyNode,
    at: Where<'_>,
) -> (Vec<Route>, bool) {
    let mut routes = Vec::new();
    let mut catch_all = false;
    for (i, rule) in table.http.iter().enumerate() {
        let applicable: Vec<_> = rule
            .matches
            .iter()
            .filter(|m| at.selects(&m.gateways))
            .filter(|m| m.port.is_none_or(|p| p == port))
            .filter(|m| labels_match(&m.source_labels, &proxy.labels))
            .filter(|m| {
                m.source_namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == proxy.namespace)
            })
            .collect();
        if !rule.matches.is_empty() && applicable.is_empty() {
            continue;
        }
        let action = route_action(model, host, rule, port);
        let (req_add, req_remove, resp_add, resp_remove) = header_options(&rule.headers);
        let mut per_filter = HashMap::new();
        if let Some(fault) = &rule.fault {
            per_filter.insert(
                "envoy.filters.http.fault".to_string(),
                any(&http_fault(fault)),
            );
        }
        let base = Route {
            name: rule
                .name
                .clone()
                .unwrap_or_else(|| format!("{}.{}", table.source.name, i)),
            action: Some(action),
            metadata: Some(istio_metadata(table)),
            request_headers_to_add: req_add,
            request_headers_to_remove: req_remove,
            response_headers_to_add: resp_add,
            response_headers_to_remove: resp_remove,
            typed_per_filter_config: per_filter,
            ..Default::default()
        };
        if applicable.is_empty() {
            let rm = prefix_match("/");
            routes.push(Route {
                decorator: Some(decorator(host, port, &rm)),
                r#match: Some(rm),
                ..base
            });
            catch_all = true;
            break;
        }
        for m in applicable {
            let rm = route_match(m);
            let is_catch_all = matches!(&rm.path_specifier, Some(PathSpecifier::Prefix(p)) if p == "/")
                && rm.headers.is_empty()
                && rm.query_parameters.is_empty()
                && rm.dynamic_metadata.is_empty();
            routes.push(Route {
                decorator: Some(decorator(host, port, &rm)),
                r#match: Some(rm),
                ..base.clone()
            });
            catch_all |= is_catch_all;
        }
        if catch_all {
            break;
        }
    }
    (routes, catch_all)
}

/// Every name a client may use for the service, each also with `:<port>`.
pub fn domains(svc: &Service, port: u16, proxy_ns: &str) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    let suffix = format!(
        ".{}.svc.{}",
        svc.namespace,
        mast_mesh_config::model::DEFAULT_DOMAIN_SUFFIX
    );
    if let Some(short) = svc.hostname.strip_suffix(&suffix) {
        names.push(format!("{short}.{}.svc", svc.namespace));
        names.push(format!("{short}.{}", svc.namespace));
        if svc.namespace == proxy_ns {
            names.push(short.to_string());
        }
    }
    // A CIDR (ServiceEntry `addresses: [10.0.0.0/24]`) is not a Host header.
    names.extend(svc.addresses.iter().filter(|a| !a.contains('/')).cloned());
    let mut out = Vec::with_capacity(names.len() * 2);
    for n in names {
        out.push(format!("{n}:{port}"));
        out.push(n);
    }
    out.sort();
    out.dedup();
    out
}

/// The cluster for a destination: its port if given, else the only port of its service,
/// else the port the request came in on (istiod's rule).
fn cluster_for(model: &MeshModel, d: &Destination, port: u16) -> String {
    let p =
        d.port.unwrap_or_else(
            || match model.services.get(&d.host).map(|s| s.ports.as_slice()) {
                Some([only]) => only.port,
                _ => port,
            },
        );
    outbound_cluster_name(p, d.subset.as_deref(), &d.host)
}

/// `host` is the service the rule is written for: the cluster when no destination has weight.
fn route_action(model: &MeshModel, host: &str, rule: &HttpRoute, port: u16) -> Action {
    match &rule.action {
        ModelAction::Redirect(r) => Action::Redirect(redirect(r)),
        ModelAction::DirectResponse { status, body } => {
            Action::DirectResponse(DirectResponseAction {
                status: u32::from(*status),
                body: body.as_ref().map(|b| DataSource {
                    specifier: Some(DataSpecifier::InlineString(b.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
        ModelAction::Forward(dests) => {
            let live: Vec<_> = dests.iter().filter(|d| d.weight > 0).collect();
            let cluster_specifier = match live.as_slice() {
                [] => ClusterSpecifier::Cluster(outbound_cluster_name(port, None, host)),
                [one] if one.headers.is_empty() => {
                    ClusterSpecifier::Cluster(cluster_for(model, &one.destination, port))
                }
                many => ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: many
                        .iter()
                        .map(|d| {
                            let (ra, rr, sa, sr) = header_options(&d.headers);
                            ClusterWeight {
                                name: cluster_for(model, &d.destination, port),
                                weight: Some(UInt32Value { value: d.weight }),
                                request_headers_to_add: ra,
                                request_headers_to_remove: rr,
                                response_headers_to_add: sa,
                                response_headers_to_remove: sr,
                                ..Default::default()
                            }
                        })
                        .collect(),
                    ..Default::default()
                }),
            };
            let (host, subset, dest_port) = live.first().map_or((host, None, port), |d| {
                let p = d.destination.port.unwrap_or(port);
                (
                    d.destination.host.as_str(),
                    d.destination.subset.as_deref(),
                    p,
                )
            });
            let mut action = RouteAction {
                cluster_specifier: Some(cluster_specifier),
                timeout: Some(duration(rule.timeout.unwrap_or_default())),
                retry_policy: match &rule.retries {
                    None => Some(default_retry_policy()),
                    Some(r) if r.attempts == 0 => None,
                    Some(r) => Some(retry_policy(r)),
                },
                request_mirror_policies: rule
                    .mirrors
                    .iter()
                    .map(|m| RequestMirrorPolicy {
                        cluster: cluster_for(model, &m.destination, port),
                        runtime_fraction: Some(RuntimeFractionalPercent {
                            default_value: Some(fraction(m.percentage)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                hash_policy: hash_policy(model, host, subset, dest_port),
                ..Default::default()
            };
            if let Some(rw) = &rule.rewrite {
                match &rw.path {
                    Some(PathRewrite::Prefix(p)) => action.prefix_rewrite = p.clone(),
                    Some(PathRewrite::Full(p)) => {
                        action.regex_rewrite = Some(RegexMatchAndSubstitute {
                            pattern: Some(regex("^/.*$")),
                            substitution: p.clone(),
                        });
                    }
                    Some(PathRewrite::Regex {
                        pattern,
                        substitution,
                    }) => {
                        action.regex_rewrite = Some(RegexMatchAndSubstitute {
                            pattern: Some(regex(pattern)),
                            substitution: substitution.clone(),
                        });
                    }
                    None => {}
                }
                if let Some(a) = &rw.authority {
                    action.host_rewrite_specifier =
                        Some(HostRewriteSpecifier::HostRewriteLiteral(a.clone()));
                }
            }
            Action::Route(action)
        }
    }
}

/// The route's hash policy when the destination's (subset- and port-merged) load balancer
/// is consistent hashing: the ring-hash cluster hashes on what the route extracts.
fn hash_policy(model: &MeshModel, host: &str, subset: Option<&str>, port: u16) -> Vec<HashPolicy> {
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let Some(dr) = model.destination_policies.get(host) else {
        return Vec::new();
    };
    let over = subset
        .and_then(|name| dr.subsets.iter().find(|s| s.name == name))
        .and_then(|s| s.traffic_policy.as_ref());
    let policy = merged_policy(Some(&dr.traffic_policy), over, port);
    let Some(LoadBalancer::ConsistentHash(key)) = &policy.load_balancer else {
        return Vec::new();
    };
    let spec = match key {
        HashKey::Header(name) => PolicySpecifier::Header(Header {
            header_name: name.clone(),
            ..Default::default()
        }),
        HashKey::Cookie { name, ttl } => PolicySpecifier::Cookie(Cookie {
            name: name.clone(),
            ttl: ttl.map(duration),
            ..Default::default()
        }),
        HashKey::SourceIp => {
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
        }
        HashKey::QueryParameter(name) => {
            PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() })
        }
    };
    vec![HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    }]
}

fn redirect(r: &Redirect) -> RedirectAction {
    RedirectAction {
        scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        host_redirect: r.host.clone().unwrap_or_default(),
        port_redirect: r.port.map(u32::from).unwrap_or_default(),
        path_rewrite_specifier: match &r.path {
            Some(PathRewrite::Full(p)) => Some(PathRewriteSpecifier::PathRedirect(p.clone())),
            Some(PathRewrite::Prefix(p)) => Some(PathRewriteSpecifier::PrefixRewrite(p.clone())),
            _ => None,
        },
        response_code: match r.status {
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            _ => RedirectResponseCode::MovedPermanently,
        } as i32,
        ..Default::default()
    }
}

fn route_match(m: &mast_mesh_config::model::RouteMatch) -> RouteMatch {
    let path_specifier = Some(match &m.uri {
        None => PathSpecifier::Prefix("/".into()),
        Some(StringMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(r)) => PathSpecifier::SafeRegex(regex(r)),
    });
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.clone(),
            invert_match: h.invert,
            header_match_specifier: Some(match &h.value {
                None => HeaderMatchSpecifier::PresentMatch(true),
                Some(v) => HeaderMatchSpecifier::StringMatch(string_matcher(v)),
            }),
            ..Default::default()
        })
        .collect();
    for (name, v) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(v) = v {
            headers.push(HeaderMatcher {
                name: name.into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_matcher(v))),
                ..Default::default()
            });
        }
    }
    RouteMatch {
        path_specifier,
        // Explicit either way, as istiod writes it.
        case_sensitive: Some(BoolValue {
            value: !m.ignore_uri_case,
        }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|q| QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(match &q.value {
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                    Some(v) => QueryParameterMatchSpecifier::StringMatch(string_matcher(v)),
                }),
            })
            .collect(),
        // Claims are matched on what jwt_authn verified (istiod: the route is chosen again
        // after the filter, see `super::jwt`).
        dynamic_metadata: m
            .claims
            .iter()
            .map(|c| super::jwt::claim_matcher(&c.path, string_matcher(&c.value), c.invert))
            .collect(),
        ..Default::default()
    }
}

fn string_matcher(m: &StringMatch) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match m {
            StringMatch::Exact(s) => MatchPattern::Exact(s.clone()),
            StringMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
            StringMatch::Regex(r) => MatchPattern::SafeRegex(regex(r)),
        }),
        ..Default::default()
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

fn prefix_match(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        case_sensitive: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// The tracing operation name istiod gives a route: `<host>:<port><path>`, a prefix match
/// ending in `*`.
fn decorator(host: &str, port: u16, m: &RouteMatch) -> Decorator {
    let path = match &m.path_specifier {
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        _ => "/*".to_string(),
    };
    Decorator {
        operation: format!("{host}:{port}{path}"),
        ..Default::default()
    }
}

/// Istio's retry policy when a route sets none: 2 attempts, on connection-level failures and
/// 503, each to a host not tried before.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![previous_hosts()],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn previous_hosts() -> RetryHostPredicate {
    use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
    RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".into(),
        config_type: Some(ConfigType::TypedConfig(any(&PreviousHostsPredicate {}))),
    }
}

/// Istio's `retryRemoteLocalities`: each retry prefers a priority (locality) not yet tried.
fn previous_priorities() -> RetryPriority {
    use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType;
    RetryPriority {
        name: "envoy.retry_priorities.previous_priorities".into(),
        config_type: Some(ConfigType::TypedConfig(any(&PreviousPrioritiesConfig {
            update_frequency: 2,
        }))),
    }
}

fn retry_policy(r: &mast_mesh_config::model::RetryPolicy) -> RetryPolicy {
    // Istio: status codes in retryOn become retriable_status_codes.
    let mut on = Vec::new();
    let mut codes = Vec::new();
    for part in r.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON).split(',') {
        let part = part.trim();
        match part.parse::<u32>() {
            Ok(code) => codes.push(code),
            Err(_) if !part.is_empty() => on.push(part.to_string()),
            Err(_) => {}
        }
    }
    if !codes.is_empty() && !on.iter().any(|p| p == "retriable-status-codes") {
        on.push("retriable-status-codes".into());
    }
    if r.retry_on.is_none() {
        codes.push(503);
    }
    RetryPolicy {
        retry_on: on.join(","),
        num_retries: Some(UInt32Value { value: r.attempts }),
        per_try_timeout: r.per_try_timeout.map(duration),
        retry_priority: r.retry_remote_localities.then(previous_priorities),
        retriable_status_codes: codes,
        retry_host_predicate: vec![previous_hosts()],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// A percentage as Envoy's fraction of a million (Istio's precision).
fn fraction(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32,
        denominator: DenominatorType::Million as i32,
    }
}

fn http_fault(f: &mast_mesh_config::model::FaultInjection) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(d.fixed_delay))),
            percentage: Some(fraction(d.percentage)),
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            error_type: Some(match &a.kind {
                AbortKind::HttpStatus(s) => ErrorType::HttpStatus(u32::from(*s)),
                AbortKind::GrpcStatus(s) => ErrorType::GrpcStatus(grpc_code(s)),
            }),
            percentage: Some(fraction(a.percentage)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// gRPC status names as Istio accepts them (`UNAVAILABLE`), or a number.
fn grpc_code(name: &str) -> u32 {
    name.parse()
        .ok()
        .or_else(|| {
            mast_mesh_config::model::GRPC_STATUS_NAMES
                .iter()
                .position(|c| *c == name)
                .map(|i| i as u32)
        })
        .unwrap_or(2)
}

type HeaderOptions = (
    Vec<HeaderValueOption>,
    Vec<String>,
    Vec<HeaderValueOption>,
    Vec<String>,
);

fn header_options(h: &HeaderOperations) -> HeaderOptions {
    let opts = |ops: &HeaderOps| {
        let mut v = Vec::new();
        for (k, val) in &ops.set {
            v.push(header_value(
                k,
                val,
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            ));
        }
        for (k, val) in &ops.add {
            v.push(header_value(
                k,
                val,
                HeaderAppendAction::AppendIfExistsOrAdd,
            ));
        }
        v
    };
    (
        opts(&h.request),
        h.request.remove.clone(),
        opts(&h.response),
        h.response.remove.clone(),
    )
}

fn header_value(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// `filter_metadata.istio.config`: which resource a route came from, as istiod records it.
fn istio_metadata(table: &RouteTable) -> Metadata {
    let (group, kind) = match table.source.kind.as_str() {
        "VirtualService" => ("networking.istio.io/v1", "virtual-service"),
        "HTTPRoute" => ("gateway.networking.k8s.io/v1", "httproute"),
        "GRPCRoute" => ("gateway.networking.k8s.io/v1", "grpcroute"),
        "TrafficSplit" => ("split.smi-spec.io/v1alpha4", "trafficsplit"),
        _ => ("serving.knative.dev/v1", "route"),
    };
    let path = format!(
        "/apis/{group}/namespaces/{}/{kind}/{}",
        table.source.namespace, table.source.name
    );
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("config".to_string(), string_value(&path));
    Metadata {
        filter_metadata: [(
            "istio".to_string(),
            Struct {
                fields: fields.into_iter().collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}
