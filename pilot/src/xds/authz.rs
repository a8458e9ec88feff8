//! AuthorizationPolicy → Envoy RBAC filters, shaped as istiod's authz builder shapes them.
//!
//! One filter per action, in the order Envoy must run them: AUDIT (`LOG`, never denies), DENY,
//! then ALLOW. Each policy rule becomes one RBAC policy named
//! `ns[<namespace>]-policy[<name>]-rule[<index>]`: its permissions are the rule's `to`
//! operations (hosts, methods, paths, ports, then `when` conditions on the destination),
//! its principals the `from` sources (principals, request principals, namespaces, IP blocks,
//! then `when` conditions on the source); every field is an OR of its values, a `not*` field
//! the negation of one. Dry-run policies (`istio.io/dry-run: "true"`) go to `shadow_rules`.
//! The golden files in the corpus (`security/authz-builder`) pin the shapes. Principals are
//! matched as written (Istio's trust-domain aliases are not expanded: one trust domain).
//!
//! TCP chains get the network RBAC filter. HTTP-only attributes (hosts, methods, paths,
//! request principals, request headers and JWT claims) cannot be checked there; as Istio
//! does, an ALLOW rule that needs one is left out (it cannot allow TCP traffic), and a DENY
//! rule is kept without them (it denies more, never less).

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::rbac::v3::permission::{self, Rule};
use envoy_types::pb::envoy::config::rbac::v3::principal::{self, Authenticated, Identifier};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac as Rules};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use mast_mesh_config::security::{AuthzAction, AuthzPolicy, AuthzRule, Condition};

use super::any;

const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Istio writes this prefix on every RBAC filter.
const SHADOW_PREFIX: &str = "istio_dry_run_allow_";

/// The HTTP RBAC filters for a workload's policies (AUDIT, DENY, ALLOW; none when no policy
/// applies).
pub fn http_rbac_filters(policies: &[&AuthzPolicy]) -> Vec<HttpFilter> {
    filters(policies, false)
        .into_iter()
        .map(|(rules, shadow)| HttpFilter {
            name: HTTP_RBAC.into(),
            config_type: Some(HttpFilterConfig::TypedConfig(any(&HttpRbac {
                rules,
                shadow_rules: shadow,
                shadow_rules_stat_prefix: SHADOW_PREFIX.into(),
                ..Default::default()
            }))),
            ..Default::default()
        })
        .collect()
}

/// The network RBAC filters for TCP chains.
pub fn network_rbac_filters(policies: &[&AuthzPolicy]) -> Vec<Filter> {
    filters(policies, true)
        .into_iter()
        .map(|(rules, shadow)| Filter {
            name: NETWORK_RBAC.into(),
            config_type: Some(FilterConfig::TypedConfig(any(&NetworkRbac {
                rules,
                shadow_rules: shadow,
                stat_prefix: "tcp.".into(),
                shadow_rules_stat_prefix: SHADOW_PREFIX.into(),
                ..Default::default()
            }))),
        })
        .collect()
}

/// `(rules, shadow_rules)` per action present, in filter order.
fn filters(policies: &[&AuthzPolicy], tcp: bool) -> Vec<(Option<Rules>, Option<Rules>)> {
    let mut out = Vec::new();
    for (action, envoy) in [
        (AuthzAction::Audit, Action::Log),
        (AuthzAction::Deny, Action::Deny),
        (AuthzAction::Allow, Action::Allow),
    ] {
        let of_action: Vec<&&AuthzPolicy> =
            policies.iter().filter(|p| p.action == action).collect();
        if of_action.is_empty() {
            continue;
        }
        let mut rules = Rules {
            action: envoy as i32,
            ..Default::default()
        };
        let mut shadow = Rules {
            action: envoy as i32,
            ..Default::default()
        };
        let mut enforced = false;
        let mut dry = false;
        for p in of_action {
            let target = if p.dry_run {
                dry = true;
                &mut shadow
            } else {
                enforced = true;
                &mut rules
            };
            for (name, policy) in policy_rules(p, tcp) {
                target.policies.insert(name, policy);
            }
        }
        out.push((enforced.then_some(rules), dry.then_some(shadow)));
    }
    for p in policies.iter().filter(|p| p.action == AuthzAction::Custom) {
        tracing::warn!(policy = %p.source, "CUSTOM (ext_authz) AuthorizationPolicy is not supported; ignored");
    }
    out
}

fn policy_name(p: &AuthzPolicy, i: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace, p.name)
}

fn policy_rules(p: &AuthzPolicy, tcp: bool) -> Vec<(String, Policy)> {
    let rules = p.rules.as_deref().unwrap_or_default();
    if rules.is_empty() {
        // No rules: a policy that matches nothing (Istio's shape for `rules` absent).
        return vec![(
            policy_name(p, 0),
            Policy {
                permissions: vec![Permission {
                    rule: Some(Rule::NotRule(Box::new(Permission {
                        rule: Some(Rule::Any(true)),
                    }))),
                }],
                principals: vec![Principal {
                    identifier: Some(Identifier::NotId(Box::new(Principal {
                        identifier: Some(Identifier::Any(true)),
                    }))),
                }],
                ..Default::default()
            },
        )];
    }
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if tcp && p.action == AuthzAction::Allow && needs_http(rule) {
            tracing::debug!(policy = %p.source, rule = i, "rule needs HTTP attributes: not applied to TCP");
            continue;
        }
        out.push((policy_name(p, i), rule_policy(rule, &p.namespace, tcp)));
    }
    out
}

/// A rule uses attributes only HTTP has.
fn needs_http(r: &AuthzRule) -> bool {
    r.from
        .iter()
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty())
        || r.to.iter().any(|o| {
            !o.hosts.is_empty()
                || !o.not_hosts.is_empty()
                || !o.methods.is_empty()
                || !o.not_methods.is_empty()
                || !o.paths.is_empty()
                || !o.not_paths.is_empty()
        })
        || r.when.iter().any(|c| http_only_key(&c.key))
}

fn http_only_key(key: &str) -> bool {
    key.starts_with("request.")
}

/// Values and negated values of one attribute, already converted.
fn perm_pair(out: &mut Vec<Permission>, values: Vec<Permission>, not: Vec<Permission>) {
    if !values.is_empty() {
        out.push(or_perm(values));
    }
    if !not.is_empty() {
        out.push(Permission {
            rule: Some(Rule::NotRule(Box::new(or_perm(not)))),
        });
    }
}

fn princ_pair(out: &mut Vec<Principal>, values: Vec<Principal>, not: Vec<Principal>) {
    if !values.is_empty() {
        out.push(or_princ(values));
    }
    if !not.is_empty() {
        out.push(Principal {
            identifier: Some(Identifier::NotId(Box::new(or_princ(not)))),
        });
    }
}

fn or_perm(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(Rule::OrRules(permission::Set { rules })),
    }
}

fn or_princ(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(Identifier::OrIds(principal::Set { ids })),
    }
}

fn rule_policy(rule: &AuthzRule, policy_ns: &str, tcp: bool) -> Policy {
    let perm_conditions: Vec<&Condition> = rule
        .when
        .iter()
        .filter(|c| is_permission_key(&c.key) && !(tcp && http_only_key(&c.key)))
        .collect();
    let princ_conditions: Vec<&Condition> = rule
        .when
        .iter()
        .filter(|c| !(is_permission_key(&c.key) || tcp && http_only_key(&c.key)))
        .collect();
    let ops: Vec<Option<&mast_mesh_config::security::Operation>> = if rule.to.is_empty() {
        vec![None]
    } else {
        rule.to.iter().map(Some).collect()
    };
    let permissions = ops
        .into_iter()
        .map(|op| {
            let mut rules = Vec::new();
            if let Some(o) = op {
                let conv = |v: &[String], f: &dyn Fn(&str) -> Permission| -> Vec<Permission> {
                    if tcp {
                        Vec::new()
                    } else {
                        v.iter().map(|s| f(s)).collect()
                    }
                };
                perm_pair(&mut rules, conv(&o.hosts, &host), conv(&o.not_hosts, &host));
                perm_pair(
                    &mut rules,
                    conv(&o.methods, &method),
                    conv(&o.not_methods, &method),
                );
                perm_pair(&mut rules, conv(&o.paths, &path), conv(&o.not_paths, &path));
                perm_pair(
                    &mut rules,
                    o.ports.iter().filter_map(|p| port(p)).collect(),
                    o.not_ports.iter().filter_map(|p| port(p)).collect(),
                );
            }
            for c in &perm_conditions {
                if let Some((filter, keys)) = experimental_key(&c.key) {
                    // Istio: one metadata matcher over all values, and one negated.
                    if !c.values.is_empty() {
                        rules.push(perm(metadata_rule(filter, &keys, &c.values)));
                    }
                    if !c.not_values.is_empty() {
                        rules.push(perm(Rule::NotRule(Box::new(perm(metadata_rule(
                            filter,
                            &keys,
                            &c.not_values,
                        ))))));
                    }
                    continue;
                }
                let f = |v: &String| condition_permission(&c.key, v);
                perm_pair(
                    &mut rules,
                    c.values.iter().filter_map(f).collect(),
                    c.not_values.iter().filter_map(f).collect(),
                );
            }
            if rules.is_empty() {
                rules.push(Permission {
                    rule: Some(Rule::Any(true)),
                });
            }
            Permission {
                rule: Some(Rule::AndRules(permission::Set { rules })),
            }
        })
        .collect();
    let sources: Vec<Option<&mast_mesh_config::security::Source>> = if rule.from.is_empty() {
        vec![None]
    } else {
        rule.from.iter().map(Some).collect()
    };
    let principals = sources
        .into_iter()
        .map(|src| {
            let mut ids = Vec::new();
            if let Some(s) = src {
                let conv =
                    |v: &[String], f: &dyn Fn(&str) -> Option<Principal>| -> Vec<Principal> {
                        v.iter().filter_map(|s| f(s)).collect()
                    };
                let principal = |v: &str| Some(spiffe_principal(v));
                princ_pair(
                    &mut ids,
                    conv(&s.principals, &principal),
                    conv(&s.not_principals, &principal),
                );
                let sa = |v: &str| service_account(v, policy_ns);
                princ_pair(
                    &mut ids,
                    conv(&s.service_accounts, &sa),
                    conv(&s.not_service_accounts, &sa),
                );
                princ_pair(
                    &mut ids,
                    conv(&s.trust_domains, &|v| Some(trust_domain(v))),
                    conv(&s.not_trust_domains, &|v| Some(trust_domain(v))),
                );
                if !tcp {
                    let rp = |v: &str| Some(request_principal(v));
                    princ_pair(
                        &mut ids,
                        conv(&s.request_principals, &rp),
                        conv(&s.not_request_principals, &rp),
                    );
                }
                let ns = |v: &str| Some(namespace(v));
                princ_pair(
                    &mut ids,
                    conv(&s.namespaces, &ns),
                    conv(&s.not_namespaces, &ns),
                );
                let remote = |v: &str| cidr(v).map(|c| id(Identifier::RemoteIp(c)));
                princ_pair(
                    &mut ids,
                    conv(&s.remote_ip_blocks, &remote),
                    conv(&s.not_remote_ip_blocks, &remote),
                );
                let direct = |v: &str| cidr(v).map(|c| id(Identifier::DirectRemoteIp(c)));
                princ_pair(
                    &mut ids,
                    conv(&s.ip_blocks, &direct),
                    conv(&s.not_ip_blocks, &direct),
                );
            }
            for c in &princ_conditions {
                if let Some(path) = jwt_claim_path(&c.key) {
                    // One matcher over all values (a claim may be a list), and one negated.
                    if !c.values.is_empty() {
                        ids.push(jwt_list_claim(&path, &c.values));
                    }
                    if !c.not_values.is_empty() {
                        ids.push(id(Identifier::NotId(Box::new(jwt_list_claim(
                            &path,
                            &c.not_values,
                        )))));
                    }
                    continue;
                }
                let f = |v: &String| condition_principal(&c.key, v);
                princ_pair(
                    &mut ids,
                    c.values.iter().filter_map(f).collect(),
                    c.not_values.iter().filter_map(f).collect(),
                );
            }
            if ids.is_empty() {
                ids.push(id(Identifier::Any(true)));
            }
            id(Identifier::AndIds(principal::Set { ids }))
        })
        .collect();
    Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

fn id(i: Identifier) -> Principal {
    Principal {
        identifier: Some(i),
    }
}

fn perm(r: Rule) -> Permission {
    Permission { rule: Some(r) }
}

fn is_permission_key(key: &str) -> bool {
    key.starts_with("destination.")
        || key == "connection.sni"
        || key.starts_with("experimental.envoy.filters.")
}

/// `experimental.envoy.filters.a.b[c][d]` → filter `envoy.filters.a.b`, path `[c, d]`.
fn experimental_key(key: &str) -> Option<(&str, Vec<&str>)> {
    let rest = key.strip_prefix("experimental.")?;
    let (filter, path) = rest.split_once('[')?;
    let keys = path
        .trim_end_matches(']')
        .split("][")
        .filter(|k| !k.is_empty())
        .collect();
    Some((filter, keys))
}

/// Dynamic metadata of `filter` at `keys` matching any of `values`.
#[allow(deprecated)]
fn metadata_rule(filter: &str, keys: &[&str], values: &[String]) -> Rule {
    use envoy_types::pb::envoy::r#type::matcher::v3::OrMatcher;
    Rule::Metadata(MetadataMatcher {
        filter: filter.into(),
        path: keys
            .iter()
            .map(|k| PathSegment {
                segment: Some(Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(ValueMatcher {
            match_pattern: Some(ValuePattern::OrMatch(OrMatcher {
                value_matchers: values
                    .iter()
                    .map(|v| ValueMatcher {
                        match_pattern: Some(ValuePattern::StringMatch(wildcard(v, ""))),
                    })
                    .collect(),
            })),
        }),
        ..Default::default()
    })
}

fn string_match(p: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

fn regex(r: &str) -> StringMatcher {
    string_match(MatchPattern::SafeRegex(RegexMatcher {
        regex: r.into(),
        ..Default::default()
    }))
}

/// Istio's value syntax: `*` any, `x*` prefix, `*x` suffix, else exact.
fn wildcard(v: &str, prefix: &str) -> StringMatcher {
    if v == "*" {
        regex(".+")
    } else if let Some(p) = v.strip_suffix('*') {
        string_match(MatchPattern::Prefix(format!("{prefix}{p}")))
    } else if let Some(s) = v.strip_prefix('*') {
        string_match(MatchPattern::Suffix(s.into()))
    } else {
        string_match(MatchPattern::Exact(format!("{prefix}{v}")))
    }
}

fn authenticated(m: StringMatcher) -> Principal {
    id(Identifier::Authenticated(Authenticated {
        principal_name: Some(m),
    }))
}

fn spiffe_principal(v: &str) -> Principal {
    match v.strip_prefix('*') {
        Some(s) if !s.is_empty() => {
            authenticated(regex(&format!("spiffe://.*{}", regex_syntax_escape(s))))
        }
        _ => authenticated(wildcard(v, "spiffe://")),
    }
}

/// `serviceAccounts: ["ns/sa"]`, or `sa` in the policy's namespace; any trust domain.
fn service_account(v: &str, policy_ns: &str) -> Option<Principal> {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
    Some(authenticated(regex(&format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        regex_syntax_escape(ns),
        regex_syntax_escape(sa)
    ))))
}

fn trust_domain(v: &str) -> Principal {
    if let Some(p) = v.strip_suffix('*') {
        authenticated(regex(&format!(
            "spiffe://{}[^/]*/.*",
            regex_syntax_escape(p)
        )))
    } else if let Some(s) = v.strip_prefix('*') {
        authenticated(regex(&format!(
            "spiffe://[^/]*{}/.*",
            regex_syntax_escape(s)
        )))
    } else {
        authenticated(string_match(MatchPattern::Prefix(format!("spiffe://{v}/"))))
    }
}

fn namespace(v: &str) -> Principal {
    let re = if v == "*" {
        ".*/ns/.*/.*".to_string()
    } else if let Some(p) = v.strip_suffix('*') {
        format!(".*/ns/{}.*/.*", regex_syntax_escape(p))
    } else if let Some(s) = v.strip_prefix('*') {
        format!(".*/ns/.*{}/.*", regex_syntax_escape(s))
    } else {
        format!(".*/ns/{}/.*", regex_syntax_escape(v))
    };
    authenticated(regex(&re))
}

/// Escape for RE2 (Go's `regexp.QuoteMeta`).
fn regex_syntax_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// Istio still writes the (deprecated) `metadata` principal for JWT claims.
#[allow(deprecated)]
fn jwt_claim(claim: &str, m: StringMatcher) -> Principal {
    id(Identifier::Metadata(MetadataMatcher {
        filter: "envoy.filters.http.jwt_authn".into(),
        path: ["payload", claim]
            .iter()
            .map(|k| PathSegment {
                segment: Some(Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(ValueMatcher {
            match_pattern: Some(ValuePattern::StringMatch(m)),
        }),
        ..Default::default()
    }))
}

/// `iss/sub` (split at the last `/`): both claims must match. `*` anywhere stands for any
/// issuer or subject, as Istio reads it.
fn request_principal(v: &str) -> Principal {
    let any = || regex(".+");
    let (iss, sub) = if v == "*" {
        (any(), any())
    } else if let Some((i, s)) = v.rsplit_once('/') {
        (wildcard(i, ""), wildcard(s, ""))
    } else if let Some(s) = v.strip_prefix('*') {
        (any(), string_match(MatchPattern::Suffix(s.into())))
    } else if let Some(p) = v.strip_suffix('*') {
        (string_match(MatchPattern::Prefix(p.into())), any())
    } else {
        (
            string_match(MatchPattern::Exact(v.into())),
            string_match(MatchPattern::Exact(String::new())),
        )
    };
    id(Identifier::AndIds(principal::Set {
        ids: vec![jwt_claim("iss", iss), jwt_claim("sub", sub)],
    }))
}

/// A JWT claim that may be a string or a list of strings, against any of `values`.
#[allow(deprecated)]
fn jwt_list_claim(path: &[&str], values: &[String]) -> Principal {
    use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
    use envoy_types::pb::envoy::r#type::matcher::v3::{ListMatcher, OrMatcher};
    // One value is that value's matcher, not an OR of one (which Envoy refuses), as in Istio.
    let any_of = || {
        let mut matchers: Vec<ValueMatcher> = values
            .iter()
            .map(|v| ValueMatcher {
                match_pattern: Some(ValuePattern::StringMatch(wildcard(v, ""))),
            })
            .collect();
        if matchers.len() == 1 {
            matchers.remove(0)
        } else {
            ValueMatcher {
                match_pattern: Some(ValuePattern::OrMatch(OrMatcher {
                    value_matchers: matchers,
                })),
            }
        }
    };
    id(Identifier::Metadata(MetadataMatcher {
        filter: "envoy.filters.http.jwt_authn".into(),
        path: std::iter::once("payload")
            .chain(path.iter().copied())
            .map(|k| PathSegment {
                segment: Some(Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(ValueMatcher {
            match_pattern: Some(ValuePattern::OrMatch(OrMatcher {
                value_matchers: vec![
                    ValueMatcher {
                        match_pattern: Some(ValuePattern::ListMatch(Box::new(ListMatcher {
                            match_pattern: Some(ListPattern::OneOf(Box::new(any_of()))),
                        }))),
                    },
                    any_of(),
                ],
            })),
        }),
        ..Default::default()
    }))
}

/// The claim path of `request.auth.audiences|presenter|claims[a][b]`.
fn jwt_claim_path(key: &str) -> Option<Vec<&str>> {
    match key {
        "request.auth.audiences" => Some(vec!["aud"]),
        "request.auth.presenter" => Some(vec!["azp"]),
        _ => {
            let rest = key.strip_prefix("request.auth.claims[")?;
            Some(rest.trim_end_matches(']').split("][").collect())
        }
    }
}

fn cidr(v: &str) -> Option<CidrRange> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    Some(CidrRange {
        address_prefix: addr.into(),
        prefix_len: Some(UInt32Value {
            value: len.unwrap_or(max).min(max),
        }),
    })
}

fn header(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    let spec = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else {
        let mut m = wildcard(v, "");
        m.ignore_case = ignore_case;
        HeaderMatchSpecifier::StringMatch(m)
    };
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn host(v: &str) -> Permission {
    perm(Rule::Header(header(":authority", v, true)))
}

fn method(v: &str) -> Permission {
    perm(Rule::Header(header(":method", v, false)))
}

fn path(v: &str) -> Permission {
    if v.contains("{*}") || v.contains("{**}") {
        return perm(Rule::UriTemplate(TypedExtensionConfig {
            name: "uri-template".into(),
            typed_config: Some(any(&UriTemplateMatchConfig {
                path_template: v.replace("{**}", "**").replace("{*}", "*"),
            })),
        }));
    }
    perm(Rule::UrlPath(PathMatcher {
        rule: Some(PathRule::Path(wildcard(v, ""))),
    }))
}

fn port(v: &str) -> Option<Permission> {
    v.parse::<u32>()
        .ok()
        .map(|p| perm(Rule::DestinationPort(p)))
}

fn condition_permission(key: &str, v: &str) -> Option<Permission> {
    match key {
        "destination.ip" => cidr(v).map(|c| perm(Rule::DestinationIp(c))),
        "destination.port" => port(v),
        "connection.sni" => Some(perm(Rule::RequestedServerName(wildcard(v, "")))),
        other => {
            tracing::warn!(
                key = other,
                "AuthorizationPolicy condition key not supported; ignored"
            );
            None
        }
    }
}

fn condition_principal(key: &str, v: &str) -> Option<Principal> {
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        return Some(id(Identifier::Header(header(name, v, false))));
    }
    match key {
        "source.ip" => cidr(v).map(|c| id(Identifier::DirectRemoteIp(c))),
        "remote.ip" => cidr(v).map(|c| id(Identifier::RemoteIp(c))),
        "source.namespace" => Some(namespace(v)),
        "source.principal" => Some(spiffe_principal(v)),
        "request.auth.principal" => Some(request_principal(v)),
        other => {
            tracing::warn!(
                key = other,
                "AuthorizationPolicy condition key not supported; ignored"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
