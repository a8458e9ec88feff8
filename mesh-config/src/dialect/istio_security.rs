//! `security.istio.io` PeerAuthentication and AuthorizationPolicy into the model.
//!
//! Shape checks (Istio's CRD rules) run first in [`super::istio`]; this turns an accepted
//! document into [`crate::security`] values, field for field.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Document, FieldError, MeshResource, Meta};
use crate::model::{Labels, MeshModel, ResourceRef};
use crate::security::{
    AuthzAction, AuthzPolicy, AuthzRule, Condition, MtlsMode, Operation, PeerAuthn, Source,
};

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
