//! PeerAuthentication and AuthorizationPolicy (`security.istio.io`): the mTLS mode a
//! workload accepts and who may call it, into [`crate::security`] values field for field.
//!
//! Istio's rules run first ([`peer_authentication`], [`authorization_policy`]: mTLS modes,
//! port-level settings need a selector, serviceAccounts not mixed with namespaces or
//! principals), then the typed parse turns an accepted document into the model.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::{Labels, MeshModel, ResourceRef};
use crate::security::{
    AuthzAction, AuthzPolicy, AuthzRule, Condition, MtlsMode, Operation, PeerAuthn, Source,
};

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

pub(super) fn peer_authentication(
    spec: &serde_json::Map<String, Value>,
    errors: &mut Vec<FieldError>,
) {
    mtls_mode(spec.get("mtls"), "spec.mtls", errors);
    workload_selector(spec.get("selector"), errors);
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
    // istiod: a selector without labels is as namespace-wide as none at all.
    let labels = spec
        .get("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    if labels.is_none_or(serde_json::Map::is_empty) {
        errors.push(FieldError::new(
            "spec.portLevelMtls",
            "portLevelMtls requires a selector with matchLabels (mesh/namespace peer authentication cannot have port level mTLS)",
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

pub(super) fn authorization_policy(
    spec: &serde_json::Map<String, Value>,
    errors: &mut Vec<FieldError>,
) {
    workload_selector(spec.get("selector"), errors);
    policy_target_refs(spec, errors);
    let action = spec
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("ALLOW");
    let rules = spec
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    // An empty list decodes as no rules at all, as in istiod.
    if rules.is_empty() && matches!(action, "DENY" | "CUSTOM") {
        errors.push(FieldError::new(
            "spec.rules",
            format!(
                "{action} action without rules is meaningless as it will never be triggered, add an empty rule {{}} if you want it be triggered for every request"
            ),
        ));
    }
    let provider = spec.get("provider").filter(|p| !p.is_null());
    if action == "CUSTOM" && !rules.is_empty() {
        let name = provider.and_then(|p| p.get("name")).and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            errors.push(FieldError::new(
                "spec.provider.name",
                "provider.name must not be empty with the CUSTOM action",
            ));
        }
    }
    if provider.is_some() && action != "CUSTOM" {
        errors.push(FieldError::new(
            "spec.provider",
            format!("provider must not be set with the non-CUSTOM action {action}"),
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        authorization_rule(
            rule,
            action == "CUSTOM",
            &format!("spec.rules[{i}]"),
            errors,
        );
    }
}

const SOURCE_FIELDS: &[&str] = &[
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
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];

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

const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|s| s.as_str().unwrap_or("")).collect())
        .unwrap_or_default()
}

/// istiod's per-rule checks of ValidateAuthorizationPolicy.
fn authorization_rule(rule: &Value, custom: bool, f: &str, errors: &mut Vec<FieldError>) {
    let list = |k: &str| rule.get(k).and_then(Value::as_array).map(Vec::as_slice);
    for (j, from) in list("from").unwrap_or_default().iter().enumerate() {
        let ff = format!("{f}.from[{j}].source");
        let Some(source) = from.get("source").filter(|s| !s.is_null()) else {
            errors.push(FieldError::new(ff, "from.source must not be nil"));
            continue;
        };
        let has = |k: &str| !strings(source, k).is_empty();
        if !SOURCE_FIELDS.iter().any(|k| has(k)) {
            errors.push(FieldError::new(ff.clone(), "from.source must not be empty"));
        }
        if (has("serviceAccounts") || has("notServiceAccounts"))
            && (has("namespaces")
                || has("principals")
                || has("notNamespaces")
                || has("notPrincipals"))
        {
            errors.push(FieldError::new(
                ff.clone(),
                "Cannot set serviceAccounts with namespaces or principals",
            ));
        }
        for key in SOURCE_FIELDS {
            let values = strings(source, key);
            if values.iter().any(|v| v.is_empty()) {
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
            if custom && NOT_WITH_CUSTOM.contains(key) && !values.is_empty() {
                errors.push(FieldError::new(
                    format!("{ff}.{key}"),
                    format!("{key} is currently not supported with CUSTOM action"),
                ));
            }
        }
        for key in ["serviceAccounts", "notServiceAccounts"] {
            let values = strings(source, key);
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
        for key in ["trustDomains", "notTrustDomains"] {
            for v in strings(source, key).into_iter().filter(|v| v.contains('/')) {
                errors.push(FieldError::new(
                    format!("{ff}.{key}"),
                    format!("trust domain must not contain '/', found {v:?}"),
                ));
            }
        }
    }
    for (j, to) in list("to").unwrap_or_default().iter().enumerate() {
        let tf = format!("{f}.to[{j}].operation");
        let Some(op) = to.get("operation").filter(|o| !o.is_null()) else {
            errors.push(FieldError::new(tf, "to.operation must not be nil"));
            continue;
        };
        if OPERATION_FIELDS.iter().all(|k| strings(op, k).is_empty()) {
            errors.push(FieldError::new(
                tf.clone(),
                "to.operation must not be empty",
            ));
        }
        for key in OPERATION_FIELDS {
            if strings(op, key).iter().any(|v| v.is_empty()) {
                errors.push(FieldError::new(
                    format!("{tf}.{key}"),
                    format!("empty value not allowed, found in {key}"),
                ));
            }
        }
        for key in ["ports", "notPorts"] {
            for p in strings(op, key) {
                if !p.is_empty() && p.parse::<u16>().is_err() {
                    errors.push(FieldError::new(
                        format!("{tf}.{key}"),
                        format!("bad port ({p})"),
                    ));
                }
            }
        }
    }
    for (j, when) in list("when").unwrap_or_default().iter().enumerate() {
        let wf = format!("{f}.when[{j}]");
        let key = when.get("key").and_then(Value::as_str).unwrap_or("");
        if key.is_empty() {
            errors.push(FieldError::new(
                format!("{wf}.key"),
                "key must not be empty",
            ));
            continue;
        }
        if strings(when, "values").is_empty() && strings(when, "notValues").is_empty() {
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
fn workload_selector(selector: Option<&Value>, errors: &mut Vec<FieldError>) {
    let labels = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    for (k, v) in labels.into_iter().flatten() {
        let v = v.as_str().unwrap_or("");
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
fn policy_target_refs(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    let target_refs = spec
        .get("targetRefs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let set = [
        spec.get("selector").is_some_and(|s| !s.is_null()),
        spec.get("targetRef").is_some_and(|s| !s.is_null()),
        !target_refs.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        errors.push(FieldError::new(
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        ));
    }
    let refs = spec
        .get("targetRef")
        .map(|r| ("spec.targetRef".to_string(), r))
        .into_iter()
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
    for (f, r) in refs {
        let get = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
        if get("name").is_empty() {
            errors.push(FieldError::new(
                format!("{f}.name"),
                "targetRef name must be set",
            ));
        }
        if !get("namespace").is_empty() {
            errors.push(FieldError::new(
                format!("{f}.namespace"),
                "targetRef namespace must not be set; cross namespace referencing is not supported",
            ));
        }
        let allowed = matches!(
            (get("group"), get("kind")),
            ("" | "core", "Service")
                | ("networking.istio.io", "ServiceEntry")
                | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
        );
        if !allowed {
            errors.push(FieldError::new(
                format!("{f}.kind"),
                format!(
                    "targetRef must be to a Service, ServiceEntry, Gateway or GatewayClass but was {}/{}",
                    get("group"),
                    get("kind")
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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    match_labels: Labels,
}

#[derive(Debug, Default, Deserialize)]
struct Mtls {
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaSpec {
    selector: Option<Selector>,
    mtls: Option<Mtls>,
    #[serde(default)]
    port_level_mtls: BTreeMap<String, Mtls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApSpec {
    selector: Option<Selector>,
    action: Option<String>,
    rules: Option<Vec<ApRule>>,
}

#[derive(Debug, Default, Deserialize)]
struct ApRule {
    #[serde(default)]
    from: Vec<ApFrom>,
    #[serde(default)]
    to: Vec<ApTo>,
    #[serde(default)]
    when: Vec<ApWhen>,
}

#[derive(Debug, Default, Deserialize)]
struct ApFrom {
    #[serde(default)]
    source: ApSource,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ApSource {
    principals: Vec<String>,
    not_principals: Vec<String>,
    request_principals: Vec<String>,
    not_request_principals: Vec<String>,
    namespaces: Vec<String>,
    not_namespaces: Vec<String>,
    service_accounts: Vec<String>,
    not_service_accounts: Vec<String>,
    trust_domains: Vec<String>,
    not_trust_domains: Vec<String>,
    ip_blocks: Vec<String>,
    not_ip_blocks: Vec<String>,
    remote_ip_blocks: Vec<String>,
    not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ApTo {
    #[serde(default)]
    operation: ApOperation,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ApOperation {
    hosts: Vec<String>,
    not_hosts: Vec<String>,
    ports: Vec<String>,
    not_ports: Vec<String>,
    methods: Vec<String>,
    not_methods: Vec<String>,
    paths: Vec<String>,
    not_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ApWhen {
    key: String,
    values: Vec<String>,
    not_values: Vec<String>,
}

fn spec<T: Default + for<'de> Deserialize<'de>>(doc: &Document<'_>) -> Result<T, Vec<FieldError>> {
    match doc.value.get("spec") {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_path_to_error::deserialize(v.clone()).map_err(|e| {
            vec![FieldError::new(
                format!("spec.{}", e.path()),
                e.into_inner().to_string(),
            )]
        }),
    }
}

fn source_ref(meta: &Meta) -> ResourceRef {
    ResourceRef {
        kind: meta.kind.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    }
}

fn mode(m: Option<&Mtls>, field: &str) -> Result<MtlsMode, FieldError> {
    match m.and_then(|m| m.mode.as_deref()) {
        None => Ok(MtlsMode::Unset),
        Some(s) => MtlsMode::parse(s).ok_or_else(|| {
            FieldError::new(
                format!("{field}.mode"),
                format!(
                    "Unsupported value: {s:?}: supported values: UNSET, DISABLE, PERMISSIVE, STRICT"
                ),
            )
        }),
    }
}

#[derive(Debug)]
pub struct PeerAuthnResource(PeerAuthn);

pub fn parse_peer_authentication(doc: &Document<'_>) -> Result<PeerAuthnResource, Vec<FieldError>> {
    let s: PaSpec = spec(doc)?;
    let mut errors = Vec::new();
    let main = mode(s.mtls.as_ref(), "spec.mtls").unwrap_or_else(|e| {
        errors.push(e);
        MtlsMode::Unset
    });
    let mut port_modes = BTreeMap::new();
    for (port, m) in &s.port_level_mtls {
        let field = format!("spec.portLevelMtls[{port}]");
        match (port.parse::<u16>(), mode(Some(m), &field)) {
            (Ok(p), Ok(m)) if p > 0 => {
                port_modes.insert(p, m);
            }
            (_, Err(e)) => errors.push(e),
            _ => errors.push(FieldError::new(field, "not a port number")),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PeerAuthnResource(PeerAuthn {
        namespace: doc.meta.namespace.clone(),
        selector: s.selector.map(|s| s.match_labels),
        mode: main,
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
    let s: ApSpec = spec(doc)?;
    let action = match s.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => AuthzAction::Allow,
        "DENY" => AuthzAction::Deny,
        "AUDIT" => AuthzAction::Audit,
        "CUSTOM" => AuthzAction::Custom,
        other => {
            return Err(vec![FieldError::new(
                "spec.action",
                format!(
                    "Unsupported value: {other:?}: supported values: ALLOW, DENY, AUDIT, CUSTOM"
                ),
            )]);
        }
    };
    let rules = s.rules.map(|rules| {
        rules
            .into_iter()
            .map(|r| AuthzRule {
                from: r
                    .from
                    .into_iter()
                    .map(|f| {
                        let s = f.source;
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
                        let o = t.operation;
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
            })
            .collect()
    });
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
