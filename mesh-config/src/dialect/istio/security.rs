//! PeerAuthentication and AuthorizationPolicy (`security.istio.io`): the mTLS mode a
//! workload accepts and who may call it, into [`crate::security`] values field for field.
//!
//! The spec is read straight into `mast_crds::security`'s `PeerAuthenticationSpec` and
//! `AuthorizationPolicySpec`, the types the CRDs are generated from, so a field has one Rust
//! type in the CRD and here and unknown modes and actions are refused by the type. Istio's
//! rules then run on the typed spec ([`peer_authentication`], [`authorization_policy`]: port-
//! level settings need a selector, serviceAccounts not mixed with namespaces or principals,
//! well-formed IPs and ports…) before the accepted spec becomes the model.

use std::collections::BTreeMap;

use mast_crds::networking::LabelSelector;
use mast_crds::security as api;

use super::typed_spec;
use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::{MeshModel, ResourceRef};
use crate::security::{
    AuthzAction, AuthzPolicy, AuthzRule, Condition, MtlsMode, Operation, PeerAuthn, Source,
};

/// istiod's ValidatePeerAuthentication and the CRD's rules: port-level settings are not empty,
/// need a selector with labels, and are keyed by port numbers.
fn peer_authentication(spec: &api::PeerAuthenticationSpec, errors: &mut Vec<FieldError>) {
    workload_selector(spec.selector.as_ref(), errors);
    let Some(ports) = &spec.port_level_mtls else {
        return;
    };
    if ports.is_empty() {
        errors.push(FieldError::new(
            "spec.portLevelMtls",
            "should have at least 1 properties",
        ));
    }
    // istiod: a selector without labels is as namespace-wide as none at all.
    if spec
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
    {
        errors.push(FieldError::new(
            "spec.portLevelMtls",
            "portLevelMtls requires a selector with matchLabels (mesh/namespace peer authentication cannot have port level mTLS)",
        ));
    }
    for port in ports.keys() {
        let field = format!("spec.portLevelMtls[{port}]");
        match port.parse::<u64>() {
            Err(_) => errors.push(FieldError::new(
                field,
                format!("type conversion error from {port:?} to a port number"),
            )),
            Ok(p) if !(1..=65535).contains(&p) => {
                errors.push(FieldError::new(field, "port must be between 1-65535"))
            }
            Ok(_) => {}
        }
    }
}

/// Istio's name of an action, as its messages spell it.
fn action_name(action: api::Action) -> &'static str {
    match action {
        api::Action::Allow => "ALLOW",
        api::Action::Deny => "DENY",
        api::Action::Audit => "AUDIT",
        api::Action::Custom => "CUSTOM",
    }
}

/// istiod's ValidateAuthorizationPolicy: DENY and CUSTOM need rules, CUSTOM a provider name
/// and only CUSTOM a provider; then each rule.
fn authorization_policy(spec: &api::AuthorizationPolicySpec, errors: &mut Vec<FieldError>) {
    workload_selector(spec.selector.as_ref(), errors);
    policy_target_refs(spec, errors);
    let action = spec.action.unwrap_or(api::Action::Allow);
    let custom = action == api::Action::Custom;
    // An empty list decodes as no rules at all, as in istiod.
    if spec.rules.is_empty() && matches!(action, api::Action::Deny | api::Action::Custom) {
        errors.push(FieldError::new(
            "spec.rules",
            format!(
                "{} action without rules is meaningless as it will never be triggered, add an empty rule {{}} if you want it be triggered for every request",
                action_name(action)
            ),
        ));
    }
    if custom
        && !spec.rules.is_empty()
        && spec
            .provider
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .is_none_or(str::is_empty)
    {
        errors.push(FieldError::new(
            "spec.provider.name",
            "provider.name must not be empty with the CUSTOM action",
        ));
    }
    if spec.provider.is_some() && !custom {
        errors.push(FieldError::new(
            "spec.provider",
            format!(
                "provider must not be set with the non-CUSTOM action {}",
                action_name(action)
            ),
        ));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        authorization_rule(rule, custom, &format!("spec.rules[{i}]"), errors);
    }
}

/// A source's fields by their Istio names, in Istio's order.
fn source_fields(s: &api::Source) -> [(&'static str, &[String]); 14] {
    [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ]
}

/// An operation's fields by their Istio names, in Istio's order.
fn operation_fields(o: &api::Operation) -> [(&'static str, &[String]); 8] {
    [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ]
}

/// Source fields the CUSTOM action cannot use (its external authorizer sees no peer identity).
const NOT_WITH_CUSTOM: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
];

/// istiod's per-rule checks of ValidateAuthorizationPolicy.
fn authorization_rule(rule: &api::Rule, custom: bool, f: &str, errors: &mut Vec<FieldError>) {
    for (j, from) in rule.from.iter().enumerate() {
        let ff = format!("{f}.from[{j}].source");
        let Some(source) = &from.source else {
            errors.push(FieldError::new(ff, "from.source must not be nil"));
            continue;
        };
        let fields = source_fields(source);
        if fields.iter().all(|(_, v)| v.is_empty()) {
            errors.push(FieldError::new(ff.clone(), "from.source must not be empty"));
        }
        if (!source.service_accounts.is_empty() || !source.not_service_accounts.is_empty())
            && (!source.namespaces.is_empty()
                || !source.principals.is_empty()
                || !source.not_namespaces.is_empty()
                || !source.not_principals.is_empty())
        {
            errors.push(FieldError::new(
                ff.clone(),
                "Cannot set serviceAccounts with namespaces or principals",
            ));
        }
        for (key, values) in fields {
            if values.iter().any(String::is_empty) {
                errors.push(FieldError::new(
                    format!("{ff}.{key}"),
                    format!("empty value not allowed, found in {key}"),
                ));
            }
            if key.ends_with("Blocks") {
                for v in values.iter().filter(|v| !v.is_empty() && !is_ip_or_cidr(v)) {
                    errors.push(FieldError::new(
                        format!("{ff}.{key}"),
                        format!("bad IP address or CIDR range ({v})"),
                    ));
                }
            }
            if custom && NOT_WITH_CUSTOM.contains(&key) && !values.is_empty() {
                errors.push(FieldError::new(
                    format!("{ff}.{key}"),
                    format!("{key} is currently not supported with CUSTOM action"),
                ));
            }
        }
        for (key, values) in [
            ("serviceAccounts", &source.service_accounts),
            ("notServiceAccounts", &source.not_service_accounts),
        ] {
            if values.len() > 16 {
                errors.push(FieldError::new(
                    format!("{ff}.{key}"),
                    "may not have more than 16 values",
                ));
            }
            for v in values {
                let bad = v.contains('*')
                    || v.len() > 320
                    || match v.split_once('/') {
                        Some((ns, sa)) => ns.is_empty() || sa.is_empty() || sa.contains('/'),
                        None => false,
                    };
                if bad {
                    errors.push(FieldError::new(
                        format!("{ff}.{key}"),
                        format!("expected format 'serviceAccount' or 'namespace/serviceAccount', found {v:?}"),
                    ));
                }
            }
        }
        for (key, values) in [
            ("trustDomains", &source.trust_domains),
            ("notTrustDomains", &source.not_trust_domains),
        ] {
            for v in values.iter().filter(|v| v.contains('/')) {
                errors.push(FieldError::new(
                    format!("{ff}.{key}"),
                    format!("trust domain must not contain '/', found {v:?}"),
                ));
            }
        }
    }
    for (j, to) in rule.to.iter().enumerate() {
        let tf = format!("{f}.to[{j}].operation");
        let Some(op) = &to.operation else {
            errors.push(FieldError::new(tf, "to.operation must not be nil"));
            continue;
        };
        let fields = operation_fields(op);
        if fields.iter().all(|(_, v)| v.is_empty()) {
            errors.push(FieldError::new(
                tf.clone(),
                "to.operation must not be empty",
            ));
        }
        for (key, values) in fields {
            if values.iter().any(String::is_empty) {
                errors.push(FieldError::new(
                    format!("{tf}.{key}"),
                    format!("empty value not allowed, found in {key}"),
                ));
            }
        }
        for (key, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
            for p in values {
                if !p.is_empty() && p.parse::<u16>().is_err() {
                    errors.push(FieldError::new(
                        format!("{tf}.{key}"),
                        format!("bad port ({p})"),
                    ));
                }
            }
        }
    }
    for (j, when) in rule.when.iter().enumerate() {
        let wf = format!("{f}.when[{j}]");
        let key = when.key.as_str();
        if key.is_empty() {
            errors.push(FieldError::new(
                format!("{wf}.key"),
                "key must not be empty",
            ));
            continue;
        }
        if when.values.is_empty() && when.not_values.is_empty() {
            errors.push(FieldError::new(
                wf.clone(),
                format!("at least one of values or notValues must be set for key {key}"),
            ));
        }
        let identity = matches!(
            key,
            "source.namespace"
                | "source.serviceAccount"
                | "source.trustDomain"
                | "source.principal"
        ) || key.starts_with("request.auth.");
        if custom && identity {
            errors.push(FieldError::new(
                format!("{wf}.key"),
                format!("{key} is currently not supported with CUSTOM action"),
            ));
        }
    }
}

/// istiod's validateWorkloadSelector: no empty keys, no wildcards.
fn workload_selector(selector: Option<&LabelSelector>, errors: &mut Vec<FieldError>) {
    for (k, v) in selector.into_iter().flat_map(|s| &s.match_labels) {
        if k.is_empty() {
            errors.push(FieldError::new(
                "spec.selector.matchLabels",
                format!("empty key is not supported in selector: \"{k}={v}\""),
            ));
        }
        if k.contains('*') || v.contains('*') {
            errors.push(FieldError::new(
                format!("spec.selector.matchLabels.{k}"),
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            ));
        }
    }
}

/// istiod's validateOneOfSelectorType and validatePolicyTargetReference: one of selector,
/// targetRef, targetRefs; each reference named, in this namespace, to a Service,
/// ServiceEntry, Gateway or GatewayClass.
fn policy_target_refs(spec: &api::AuthorizationPolicySpec, errors: &mut Vec<FieldError>) {
    let set = [
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        !spec.target_refs.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        errors.push(FieldError::new(
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        ));
    }
    let refs = spec
        .target_ref
        .iter()
        .map(|r| ("spec.targetRef".to_string(), r))
        .chain(
            spec.target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
    for (f, r) in refs {
        if r.name.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.name"),
                "targetRef name must be set",
            ));
        }
        if r.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            errors.push(FieldError::new(
                format!("{f}.namespace"),
                "targetRef namespace must not be set; cross namespace referencing is not supported",
            ));
        }
        let group = r.group.as_deref().unwrap_or_default();
        let allowed = matches!(
            (group, r.kind.as_str()),
            ("" | "core", "Service")
                | ("networking.istio.io", "ServiceEntry")
                | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
        );
        if !allowed {
            errors.push(FieldError::new(
                format!("{f}.kind"),
                format!(
                    "targetRef must be to a Service, ServiceEntry, Gateway or GatewayClass but was {group}/{}",
                    r.kind
                ),
            ));
        }
    }
}

fn is_ip_or_cidr(a: &str) -> bool {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().is_ok();
    match a.split_once('/') {
        None => ip(a),
        Some((addr, bits)) => {
            let max = if addr.contains(':') { 128 } else { 32 };
            ip(addr) && bits.parse::<u8>().is_ok_and(|b| b <= max)
        }
    }
}

fn source_ref(meta: &Meta) -> ResourceRef {
    ResourceRef {
        kind: meta.kind.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    }
}

fn mode(m: Option<&api::MutualTls>) -> MtlsMode {
    match m.and_then(|m| m.mode) {
        None | Some(api::MtlsMode::Unset) => MtlsMode::Unset,
        Some(api::MtlsMode::Disable) => MtlsMode::Disable,
        Some(api::MtlsMode::Permissive) => MtlsMode::Permissive,
        Some(api::MtlsMode::Strict) => MtlsMode::Strict,
    }
}

#[derive(Debug)]
pub struct PeerAuthnResource(PeerAuthn);

pub fn parse_peer_authentication(doc: &Document<'_>) -> Result<PeerAuthnResource, Vec<FieldError>> {
    let s: api::PeerAuthenticationSpec = typed_spec(doc)?;
    let mut errors = Vec::new();
    peer_authentication(&s, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    // Every key parses: `peer_authentication` checked them.
    let port_modes: BTreeMap<u16, MtlsMode> = s
        .port_level_mtls
        .iter()
        .flatten()
        .filter_map(|(port, m)| Some((port.parse().ok()?, mode(Some(m)))))
        .collect();
    Ok(PeerAuthnResource(PeerAuthn {
        namespace: doc.meta.namespace.clone(),
        selector: s.selector.map(|s| s.match_labels),
        mode: mode(s.mtls.as_ref()),
        port_modes,
        source: source_ref(&doc.meta),
    }))
}

impl MeshResource for PeerAuthnResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.peer_authentications.push(self.0.clone());
    }
}

#[derive(Debug)]
pub struct AuthzResource(AuthzPolicy);

pub fn parse_authorization_policy(doc: &Document<'_>) -> Result<AuthzResource, Vec<FieldError>> {
    let s: api::AuthorizationPolicySpec = typed_spec(doc)?;
    let mut errors = Vec::new();
    authorization_policy(&s, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let action = match s.action.unwrap_or(api::Action::Allow) {
        api::Action::Allow => AuthzAction::Allow,
        api::Action::Deny => AuthzAction::Deny,
        api::Action::Audit => AuthzAction::Audit,
        api::Action::Custom => AuthzAction::Custom,
    };
    // Absent and empty rules are the same to Istio (repeated fields have no presence).
    let rules = (!s.rules.is_empty()).then(|| s.rules.into_iter().map(rule).collect());
    Ok(AuthzResource(AuthzPolicy {
        name: doc.meta.name.clone(),
        namespace: doc.meta.namespace.clone(),
        selector: s.selector.map(|s| s.match_labels),
        action,
        rules,
        dry_run: doc
            .meta
            .annotations
            .get("istio.io/dry-run")
            .is_some_and(|v| v == "true"),
        source: source_ref(&doc.meta),
    }))
}

/// A validated rule as the model holds it (sources and operations are present: checked).
fn rule(r: api::Rule) -> AuthzRule {
    AuthzRule {
        from: r
            .from
            .into_iter()
            .map(|f| {
                let s = f.source.unwrap_or_default();
                Source {
                    principals: s.principals,
                    not_principals: s.not_principals,
                    request_principals: s.request_principals,
                    not_request_principals: s.not_request_principals,
                    namespaces: s.namespaces,
                    not_namespaces: s.not_namespaces,
                    service_accounts: s.service_accounts,
                    not_service_accounts: s.not_service_accounts,
                    trust_domains: s.trust_domains,
                    not_trust_domains: s.not_trust_domains,
                    ip_blocks: s.ip_blocks,
                    not_ip_blocks: s.not_ip_blocks,
                    remote_ip_blocks: s.remote_ip_blocks,
                    not_remote_ip_blocks: s.not_remote_ip_blocks,
                }
            })
            .collect(),
        to: r
            .to
            .into_iter()
            .map(|t| {
                let o = t.operation.unwrap_or_default();
                Operation {
                    hosts: o.hosts,
                    not_hosts: o.not_hosts,
                    ports: o.ports,
                    not_ports: o.not_ports,
                    methods: o.methods,
                    not_methods: o.not_methods,
                    paths: o.paths,
                    not_paths: o.not_paths,
                }
            })
            .collect(),
        when: r
            .when
            .into_iter()
            .map(|w| Condition {
                key: w.key,
                values: w.values,
                not_values: w.not_values,
            })
            .collect(),
    }
}

impl MeshResource for AuthzResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.authorization_policies.push(self.0.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::error_lines;

    fn ap(spec: &str) -> Vec<String> {
        error_lines(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n{spec}"
        ))
    }

    fn rejected(spec: &str, field: &str) {
        let errors = ap(spec);
        assert!(
            errors.iter().any(|e| e.starts_with(field)),
            "expected an error on {field}, got {errors:?}"
        );
    }

    /// ValidateAuthorizationPolicy: DENY and CUSTOM need rules; CUSTOM needs a provider name;
    /// a provider only with CUSTOM.
    #[test]
    fn actions_and_providers() {
        rejected("  action: DENY\n", "spec.rules");
        assert!(ap("  action: DENY\n  rules: [{}]\n").is_empty());
        rejected("  action: CUSTOM\n  rules: [{}]\n", "spec.provider.name");
        rejected(
            "  action: ALLOW\n  provider: {name: ext}\n  rules: [{}]\n",
            "spec.provider",
        );
        rejected(
            "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{from: [{source: {principals: [a]}}]}]\n",
            "spec.rules[0].from[0].source.principals",
        );
    }

    /// ValidateAuthorizationPolicy: sources and operations are present and non-empty, values
    /// non-empty, IPs and ports well formed, conditions have values.
    #[test]
    fn rule_contents() {
        rejected("  rules: [{from: [{}]}]\n", "spec.rules[0].from[0].source");
        rejected(
            "  rules: [{from: [{source: {}}]}]\n",
            "spec.rules[0].from[0].source",
        );
        rejected(
            "  rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]\n",
            "spec.rules[0].from[0].source.ipBlocks",
        );
        rejected(
            "  rules: [{to: [{operation: {}}]}]\n",
            "spec.rules[0].to[0].operation",
        );
        rejected(
            "  rules: [{to: [{operation: {ports: ['http']}}]}]\n",
            "spec.rules[0].to[0].operation.ports",
        );
        rejected(
            "  rules: [{to: [{operation: {methods: ['']}}]}]\n",
            "spec.rules[0].to[0].operation.methods",
        );
        rejected(
            "  rules: [{when: [{key: 'request.headers[x]'}]}]\n",
            "spec.rules[0].when[0]",
        );
        assert!(ap("  rules: [{from: [{source: {namespaces: [prod]}}], to: [{operation: {ports: ['8080']}}], when: [{key: source.ip, values: [10.0.0.1]}]}]\n").is_empty());
    }

    /// ValidatePeerAuthentication: port-level mTLS needs a selector with labels.
    #[test]
    fn port_level_mtls_needs_labels() {
        let errors = error_lines(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\nspec:\n  selector: {matchLabels: {}}\n  portLevelMtls: {'8080': {mode: DISABLE}}\n",
        );
        assert!(
            errors.iter().any(|e| e.starts_with("spec.portLevelMtls")),
            "{errors:?}"
        );
    }
}
