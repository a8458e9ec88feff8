//! Envoy's RBAC filters (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`), compiled
//! once per xDS update and evaluated per request or connection.
//!
//! Istio turns every AuthorizationPolicy into these filters (a DENY filter, then an ALLOW
//! filter, plus `shadow_rules` for dry-run policies), so a sidecar that ignored them would
//! silently open what the mesh operator closed. Conversion refuses anything it cannot
//! honour, naming the field, so the Listener is NACKed instead of served with a hole.
//!
//! Semantics follow Envoy's engine: `ALLOW` lets a request through iff some policy matches
//! (no policies denies everything), `DENY` refuses it iff some policy matches, `LOG` never
//! refuses. A policy matches when any of its permissions and any of its principals match.
//! Policies are tried in name order (Envoy keeps them in a sorted map), so the reported
//! effective policy id is the same as Envoy's. `shadow_rules` are only logged.
//!
//! `metadata` and `sourced_metadata` matchers read the request's dynamic metadata, which the
//! JWT filter fills with the verified payload (see [`metadata`]); on connections there is
//! none, and they match as Envoy's do on absent metadata. ROUTE-sourced metadata is not
//! kept and never matches. CEL conditions, `matcher` trees, custom principals/permissions
//! and `filter_state` are refused.
//!
//! Header and string matching is [`crate::matcher`]'s, shared with the router so that a
//! policy and a route read a header the same way. Regexes are compiled once; evaluation
//! allocates only to join a header's several values and to name the policy behind a denial.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule;
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use regex::Regex;

use crate::matcher::{HeaderMatcher, RequestHead, StringMatcher};

mod metadata;

use crate::resources::{At, FieldError, FieldResult, decode_any};
pub use metadata::{DynamicMetadata, MetadataMatcher};

pub const HTTP_FILTER: &str = "envoy.filters.http.rbac";
pub const NETWORK_FILTER: &str = "envoy.filters.network.rbac";

/// What a request or connection offers to the matchers. Connection-level checks leave the
/// HTTP fields `None`.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    pub headers: Option<&'a http::HeaderMap>,
    pub method: Option<&'a str>,
    /// The path without its query, for `url_path` and `uri_template`.
    pub path: Option<&'a str>,
    /// The `:path` pseudo-header as sent (with the query), for header matchers on `:path`.
    pub full_path: Option<&'a str>,
    pub authority: Option<&'a str>,
    /// The direct peer.
    pub source: SocketAddr,
    /// The x-forwarded-for-aware remote; the direct peer's IP for now.
    pub remote_ip: IpAddr,
    pub destination: SocketAddr,
    /// The peer's SPIFFE URI from mTLS; `None` for plaintext.
    pub principal: Option<&'a str>,
    pub sni: Option<&'a str>,
    /// Dynamic metadata of the request (the JWT filter's payload); `None` on connections.
    pub metadata: Option<&'a DynamicMetadata>,
}

/// The outcome of one RBAC filter, or of several in sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// `policy` is the matching DENY policy; `None` when no ALLOW policy matched.
    Deny {
        policy: Option<String>,
    },
}

/// One RBAC filter: its enforced rules and its shadow (dry-run) rules.
#[derive(Debug)]
pub struct Rbac {
    /// `None`: no `rules`, so nothing is enforced (Envoy's behaviour).
    rules: Option<Engine>,
    shadow: Option<Engine>,
}

#[derive(Debug)]
struct Engine {
    action: Action,
    /// In name order, as Envoy's sorted map.
    policies: Vec<(String, Policy)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Log,
}

#[derive(Debug)]
struct Policy {
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
}

#[derive(Debug)]
enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
    UriTemplate(Regex),
    DestinationIp(Cidr),
    DestinationPort(u32),
    DestinationPortRange(i64, i64),
    RequestedServerName(StringMatcher),
    Metadata(MetadataMatcher),
    /// ROUTE-sourced metadata, which is not kept.
    Never,
}

#[derive(Debug)]
enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// `None`: any authenticated (mTLS) peer.
    Authenticated(Option<StringMatcher>),
    /// `direct_remote_ip` and the deprecated `source_ip`.
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
    Metadata(MetadataMatcher),
    /// ROUTE-sourced metadata, which is not kept.
    Never,
}

/// A `CidrRange` (also the connection manager's `internal_address_config`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cidr {
    net: IpAddr,
    len: u8,
}

// === impl Rbac ===

impl Rbac {
    /// `envoy.filters.http.rbac`'s config.
    pub fn from_http_proto(p: &HttpRbac) -> FieldResult<Self> {
        if p.matcher.is_some() {
            return Err(FieldError::new(
                "matcher",
                "RBAC matcher trees are not supported",
            ));
        }
        if p.shadow_matcher.is_some() {
            return Err(FieldError::new(
                "shadow_matcher",
                "RBAC matcher trees are not supported",
            ));
        }
        Self::build(p.rules.as_ref(), p.shadow_rules.as_ref())
    }

    /// `envoy.filters.network.rbac`'s config.
    pub fn from_network_proto(p: &NetworkRbac) -> FieldResult<Self> {
        if p.matcher.is_some() {
            return Err(FieldError::new(
                "matcher",
                "RBAC matcher trees are not supported",
            ));
        }
        if p.shadow_matcher.is_some() {
            return Err(FieldError::new(
                "shadow_matcher",
                "RBAC matcher trees are not supported",
            ));
        }
        if p.delay_deny.is_some() {
            return Err(FieldError::new("delay_deny", "not supported"));
        }
        // Both enforcement types give the same answer: nothing a matcher reads here changes
        // during a connection.
        Self::build(p.rules.as_ref(), p.shadow_rules.as_ref())
    }

    fn build(rules: Option<&rbac::Rbac>, shadow: Option<&rbac::Rbac>) -> FieldResult<Self> {
        Ok(Self {
            rules: rules.map(Engine::from_proto).transpose().at("rules")?,
            shadow: shadow
                .map(Engine::from_proto)
                .transpose()
                .at("shadow_rules")?,
        })
    }

    /// The enforced decision; the shadow rules' result is only logged.
    pub fn evaluate(&self, attrs: &Attrs<'_>) -> Decision {
        if let Some(shadow) = &self.shadow {
            let (allowed, policy) = shadow.decide(attrs);
            tracing::info!(
                shadow_engine_result = if allowed { "allowed" } else { "denied" },
                shadow_effective_policy_id = policy.unwrap_or(""),
                source = %attrs.source,
                destination = %attrs.destination,
                path = attrs.path.unwrap_or(""),
                "RBAC shadow rules"
            );
        }
        let Some(rules) = &self.rules else {
            return Decision::Allow;
        };
        match rules.decide(attrs) {
            (true, _) => Decision::Allow,
            (false, policy) => Decision::Deny {
                policy: policy.map(str::to_string),
            },
        }
    }
}

/// Run RBAC filters in order; the first denial stops the request.
pub fn check(filters: &[Arc<Rbac>], attrs: &Attrs<'_>) -> Decision {
    for f in filters {
        let d = f.evaluate(attrs);
        if d != Decision::Allow {
            return d;
        }
    }
    Decision::Allow
}

/// [`check`] for a connection's network filters; logs a denial.
pub fn allow_connection(filters: &[Arc<Rbac>], attrs: &Attrs<'_>) -> bool {
    if filters.is_empty() {
        return true;
    }
    match check(filters, attrs) {
        Decision::Allow => true,
        Decision::Deny { policy } => {
            tracing::debug!(
                source = %attrs.source,
                destination = %attrs.destination,
                policy = policy.as_deref().unwrap_or("none"),
                "RBAC: connection denied"
            );
            false
        }
    }
}

impl<'a> Attrs<'a> {
    /// A connection's attributes, without HTTP.
    pub fn connection(
        source: SocketAddr,
        destination: SocketAddr,
        principal: Option<&'a str>,
        sni: Option<&'a str>,
    ) -> Self {
        Self {
            headers: None,
            method: None,
            path: None,
            full_path: None,
            authority: None,
            source,
            remote_ip: source.ip(),
            destination,
            principal,
            sni,
            metadata: None,
        }
    }
}

impl Attrs<'_> {
    /// A header matcher against this request, reading pseudo-headers as Envoy's header map
    /// holds them. A connection has no headers: only `present_match: false` (or
    /// `treat_missing_header_as_empty`) can match it.
    fn header_matches(&self, m: &HeaderMatcher) -> bool {
        let empty;
        let headers = match self.headers {
            Some(h) => h,
            None => {
                empty = http::HeaderMap::new();
                &empty
            }
        };
        m.matches(&RequestHead {
            headers,
            method: self.method,
            authority: self.authority,
            path: self.full_path.or(self.path),
            // Attrs carries no HTTP/2 `:scheme`; an mTLS peer means a TLS connection.
            scheme: self
                .headers
                .map(|h| crate::matcher::scheme(None, h, self.principal.is_some())),
        })
    }
}

// === impl Engine ===

impl Engine {
    fn from_proto(r: &rbac::Rbac) -> FieldResult<Self> {
        let action = match rbac::rbac::Action::try_from(r.action) {
            Ok(rbac::rbac::Action::Allow) => Action::Allow,
            Ok(rbac::rbac::Action::Deny) => Action::Deny,
            Ok(rbac::rbac::Action::Log) => Action::Log,
            Err(_) => {
                return Err(FieldError::new(
                    "action",
                    format!("unknown action {}", r.action),
                ));
            }
        };
        let mut names: Vec<&String> = r.policies.keys().collect();
        names.sort();
        let policies = names
            .into_iter()
            .map(|name| {
                let p = &r.policies[name];
                Policy::from_proto(p)
                    .at(format!("policies[{name:?}]"))
                    .map(|p| (name.clone(), p))
            })
            .collect::<FieldResult<_>>()?;
        Ok(Self { action, policies })
    }

    /// Whether the engine lets the request through, and the effective policy id.
    fn decide(&self, attrs: &Attrs<'_>) -> (bool, Option<&str>) {
        let hit = self
            .policies
            .iter()
            .find(|(_, p)| p.matches(attrs))
            .map(|(n, _)| n.as_str());
        match self.action {
            Action::Allow => (hit.is_some(), hit),
            Action::Deny => (hit.is_none(), hit),
            Action::Log => {
                if let Some(policy) = hit {
                    tracing::debug!(policy, "RBAC: LOG policy matched");
                }
                (true, hit)
            }
        }
    }
}

// === impl Policy ===

impl Policy {
    fn from_proto(p: &rbac::Policy) -> FieldResult<Self> {
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(FieldError::new(
                "condition",
                "CEL conditions are not supported",
            ));
        }
        let permissions = p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| Permission::from_proto(x).at(format!("permissions[{i}]")))
            .collect::<FieldResult<_>>()?;
        let principals = p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| Principal::from_proto(x).at(format!("principals[{i}]")))
            .collect::<FieldResult<_>>()?;
        Ok(Self {
            permissions,
            principals,
        })
    }

    fn matches(&self, a: &Attrs<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(a))
            && self.principals.iter().any(|p| p.matches(a))
    }
}

// === impl Permission ===

impl Permission {
    // `metadata` is deprecated for `sourced_metadata`, yet Istio still writes it.
    #[allow(deprecated)]
    fn from_proto(p: &rbac::Permission) -> FieldResult<Self> {
        let set = |rules: &[rbac::Permission], field: &str| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| Self::from_proto(r).at(format!("{field}.rules[{i}]")))
                .collect::<FieldResult<Vec<_>>>()
        };
        Ok(match &p.rule {
            Some(Rule::Any(true)) => Self::Any,
            Some(Rule::Any(false)) => return Err(FieldError::new("any", "must be true")),
            Some(Rule::AndRules(s)) => Self::And(set(&s.rules, "and_rules")?),
            Some(Rule::OrRules(s)) => Self::Or(set(&s.rules, "or_rules")?),
            Some(Rule::NotRule(r)) => Self::Not(Box::new(Self::from_proto(r).at("not_rule")?)),
            Some(Rule::Header(h)) => Self::Header(HeaderMatcher::from_proto(h).at("header")?),
            Some(Rule::UrlPath(m)) => Self::UrlPath(path_matcher(m).at("url_path")?),
            Some(Rule::UriTemplate(t)) => Self::UriTemplate(uri_template(t).at("uri_template")?),
            Some(Rule::DestinationIp(c)) => {
                Self::DestinationIp(Cidr::from_proto(c).at("destination_ip")?)
            }
            Some(Rule::DestinationPort(p)) => Self::DestinationPort(*p),
            Some(Rule::DestinationPortRange(r)) => {
                Self::DestinationPortRange(i64::from(r.start), i64::from(r.end))
            }
            Some(Rule::RequestedServerName(m)) => {
                Self::RequestedServerName(StringMatcher::from_proto(m).at("requested_server_name")?)
            }
            Some(Rule::Metadata(m)) => {
                Self::Metadata(MetadataMatcher::from_proto(m).at("metadata")?)
            }
            Some(Rule::SourcedMetadata(m)) => MetadataMatcher::from_sourced(m)
                .at("sourced_metadata")?
                .map_or(Self::Never, Self::Metadata),
            Some(Rule::Matcher(_)) => {
                return Err(FieldError::new(
                    "matcher",
                    "extension permissions are not supported",
                ));
            }
            None => return Err(FieldError::new("rule", "a permission rule is required")),
        })
    }

    fn matches(&self, a: &Attrs<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(v) => v.iter().all(|p| p.matches(a)),
            Self::Or(v) => v.iter().any(|p| p.matches(a)),
            Self::Not(p) => !p.matches(a),
            Self::Header(h) => a.header_matches(h),
            Self::UrlPath(m) => a.path.is_some_and(|p| m.matches(p)),
            Self::UriTemplate(r) => a.path.is_some_and(|p| r.is_match(p)),
            Self::DestinationIp(c) => c.contains(a.destination.ip()),
            Self::DestinationPort(p) => u32::from(a.destination.port()) == *p,
            Self::DestinationPortRange(lo, hi) => {
                let p = i64::from(a.destination.port());
                *lo <= p && p < *hi
            }
            Self::RequestedServerName(m) => m.matches(a.sni.unwrap_or("")),
            Self::Metadata(m) => m.matches(a.metadata),
            Self::Never => false,
        }
    }
}

// === impl Principal ===

impl Principal {
    // Istio still writes `metadata`; older configs `source_ip`.
    #[allow(deprecated)]
    fn from_proto(p: &rbac::Principal) -> FieldResult<Self> {
        let set = |ids: &[rbac::Principal], field: &str| {
            ids.iter()
                .enumerate()
                .map(|(i, r)| Self::from_proto(r).at(format!("{field}.ids[{i}]")))
                .collect::<FieldResult<Vec<_>>>()
        };
        Ok(match &p.identifier {
            Some(Identifier::Any(true)) => Self::Any,
            Some(Identifier::Any(false)) => return Err(FieldError::new("any", "must be true")),
            Some(Identifier::AndIds(s)) => Self::And(set(&s.ids, "and_ids")?),
            Some(Identifier::OrIds(s)) => Self::Or(set(&s.ids, "or_ids")?),
            Some(Identifier::NotId(p)) => Self::Not(Box::new(Self::from_proto(p).at("not_id")?)),
            Some(Identifier::Authenticated(a)) => Self::Authenticated(match &a.principal_name {
                Some(m) if m.match_pattern.is_some() => {
                    Some(StringMatcher::from_proto(m).at("authenticated.principal_name")?)
                }
                _ => None,
            }),
            Some(Identifier::SourceIp(c)) => {
                Self::DirectRemoteIp(Cidr::from_proto(c).at("source_ip")?)
            }
            Some(Identifier::DirectRemoteIp(c)) => {
                Self::DirectRemoteIp(Cidr::from_proto(c).at("direct_remote_ip")?)
            }
            Some(Identifier::RemoteIp(c)) => Self::RemoteIp(Cidr::from_proto(c).at("remote_ip")?),
            Some(Identifier::Header(h)) => Self::Header(HeaderMatcher::from_proto(h).at("header")?),
            Some(Identifier::UrlPath(m)) => Self::UrlPath(path_matcher(m).at("url_path")?),
            Some(Identifier::Metadata(m)) => {
                Self::Metadata(MetadataMatcher::from_proto(m).at("metadata")?)
            }
            Some(Identifier::SourcedMetadata(m)) => MetadataMatcher::from_sourced(m)
                .at("sourced_metadata")?
                .map_or(Self::Never, Self::Metadata),
            Some(Identifier::FilterState(_)) => {
                return Err(FieldError::new("filter_state", "not supported"));
            }
            Some(Identifier::Custom(_)) => {
                return Err(FieldError::new(
                    "custom",
                    "extension principals are not supported",
                ));
            }
            None => {
                return Err(FieldError::new(
                    "identifier",
                    "a principal identifier is required",
                ));
            }
        })
    }

    fn matches(&self, a: &Attrs<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(v) => v.iter().all(|p| p.matches(a)),
            Self::Or(v) => v.iter().any(|p| p.matches(a)),
            Self::Not(p) => !p.matches(a),
            Self::Authenticated(m) => match (a.principal, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(id), Some(m)) => m.matches(id),
            },
            Self::DirectRemoteIp(c) => c.contains(a.source.ip()),
            Self::RemoteIp(c) => c.contains(a.remote_ip),
            Self::Header(h) => a.header_matches(h),
            Self::UrlPath(m) => a.path.is_some_and(|p| m.matches(p)),
            Self::Metadata(m) => m.matches(a.metadata),
            Self::Never => false,
        }
    }
}

fn path_matcher(m: &PathMatcher) -> FieldResult<StringMatcher> {
    match &m.rule {
        Some(PathRule::Path(s)) => StringMatcher::from_proto(s).at("path"),
        None => Err(FieldError::new("rule", "path is required")),
    }
}

/// `envoy.path.match.uri_template` as a full-match regex over the path: `*` and `{name}`
/// are one segment, `**` and `{name=**}` any number of segments (Istio's `{*}`/`{**}`).
fn uri_template(t: &TypedExtensionConfig) -> FieldResult<Regex> {
    let any = t
        .typed_config
        .as_ref()
        .ok_or_else(|| FieldError::new("typed_config", "required"))?;
    let cfg: UriTemplateMatchConfig = decode_any(any, "typed_config")?;
    let tpl = cfg.path_template.as_str();
    let bad = |why: &str| FieldError::new("typed_config.path_template", format!("{tpl:?}: {why}"));
    if !tpl.starts_with('/') {
        return Err(bad("must start with '/'"));
    }
    let mut re = String::from("^");
    let mut rest = tpl;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("**") {
            re.push_str(".*");
            rest = r;
        } else if let Some(r) = rest.strip_prefix('*') {
            re.push_str("[^/]+");
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}').ok_or_else(|| bad("unclosed '{'"))?;
            let var = &r[..end];
            let pattern = var.split_once('=').map_or("*", |(_, p)| p);
            for (i, seg) in pattern.split('/').enumerate() {
                if i > 0 {
                    re.push('/');
                }
                match seg {
                    "**" => re.push_str(".*"),
                    "*" => re.push_str("[^/]+"),
                    lit if !lit.contains(['*', '{', '}']) => re.push_str(&regex::escape(lit)),
                    _ => return Err(bad("bad variable pattern")),
                }
            }
            rest = &r[end + 1..];
        } else {
            let end = rest.find(['*', '{']).unwrap_or(rest.len());
            if rest[..end].contains('}') {
                return Err(bad("unopened '}'"));
            }
            re.push_str(&regex::escape(&rest[..end]));
            rest = &rest[end..];
        }
    }
    re.push('$');
    Regex::new(&re).map_err(|e| bad(&e.to_string()))
}

// === impl Cidr ===

impl Cidr {
    pub(crate) fn from_proto(c: &CidrRange) -> FieldResult<Self> {
        let net: IpAddr = c.address_prefix.parse().map_err(|_| {
            FieldError::new(
                "address_prefix",
                format!("{:?} is not an IP address", c.address_prefix),
            )
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
        if len > max {
            return Err(FieldError::new(
                "prefix_len",
                format!("{len} is longer than the address"),
            ));
        }
        Ok(Self {
            net,
            len: len as u8,
        })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (ip.to_canonical(), self.net) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
