//! Security policy in the mesh model: PeerAuthentication (is mTLS required on a port?) and
//! AuthorizationPolicy (who may call what), with Istio's rules for which policy applies to a
//! workload.
//!
//! The policies are kept close to Istio's API (field for field, `not*` forms included) so
//! pilot can translate them as istiod does — into TLS filter chains and Envoy RBAC filters —
//! and the CLI can explain them. Resolution follows Istio: the mesh-wide policy lives in the
//! root namespace (`istio-system`), a namespace-wide one has no selector, a workload policy
//! selects labels; the most specific wins, and `UNSET` inherits from the level above.

use serde::Serialize;

use crate::model::{Labels, MeshModel, ResourceRef, labels_match};

/// Istio's default `meshConfig.rootNamespace`: policies here without a selector are mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// PeerAuthentication's mTLS mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MtlsMode {
    /// Inherit from the next level up.
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "UNSET" => Self::Unset,
            "DISABLE" => Self::Disable,
            "PERMISSIVE" => Self::Permissive,
            "STRICT" => Self::Strict,
            _ => return None,
        })
    }
}

/// A PeerAuthentication.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerAuthn {
    pub namespace: String,
    /// `None`: namespace-wide (mesh-wide in the root namespace).
    pub selector: Option<Labels>,
    pub mode: MtlsMode,
    /// `portLevelMtls`, by workload port.
    pub port_modes: std::collections::BTreeMap<u16, MtlsMode>,
    pub source: ResourceRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AuthzAction {
    Allow,
    Deny,
    Audit,
    Custom,
}

/// An AuthorizationPolicy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuthzPolicy {
    pub name: String,
    pub namespace: String,
    pub selector: Option<Labels>,
    pub action: AuthzAction,
    /// `None`: the field is absent (ALLOW: matches nothing; DENY: nothing). `Some(vec![])` is
    /// `rules: []`, which Istio treats the same; a rule `{}` matches everything.
    pub rules: Option<Vec<AuthzRule>>,
    /// `istio.io/dry-run: "true"`: evaluated and logged, never enforced.
    pub dry_run: bool,
    pub source: ResourceRef,
}

/// One rule: any `from` AND any `to` AND every `when`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuthzRule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// `from.source`: every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub not_service_accounts: Vec<String>,
    pub trust_domains: Vec<String>,
    pub not_trust_domains: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
}

/// `to.operation`: every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

/// `when`: the attribute `key` has one of `values` (and none of `not_values`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

fn selects(selector: &Option<Labels>, labels: &Labels) -> bool {
    selector.as_ref().is_none_or(|s| labels_match(s, labels))
}

impl MeshModel {
    /// The effective mTLS mode of a workload's port: the workload policy's port level, then
    /// its workload level, then the namespace policy, then the mesh policy; `UNSET` falls
    /// through; `PERMISSIVE` when nothing says otherwise. Never `Unset`.
    pub fn mtls_mode(&self, namespace: &str, labels: &Labels, port: u16) -> MtlsMode {
        // The oldest policy wins among equals, as in Istio; the model keeps source order.
        let workload = self.peer_authentications.iter().find(|p| {
            p.namespace == namespace && p.selector.as_ref().is_some_and(|s| labels_match(s, labels))
        });
        let ns = self
            .peer_authentications
            .iter()
            .find(|p| p.namespace == namespace && p.selector.is_none());
        let mesh = self
            .peer_authentications
            .iter()
            .find(|p| p.namespace == ROOT_NAMESPACE && p.selector.is_none());
        let levels = [
            workload.and_then(|p| p.port_modes.get(&port).copied()),
            workload.map(|p| p.mode),
            ns.map(|p| p.mode),
            mesh.map(|p| p.mode),
        ];
        levels
            .into_iter()
            .flatten()
            .find(|m| *m != MtlsMode::Unset)
            .unwrap_or(MtlsMode::Permissive)
    }

    /// AuthorizationPolicies that apply to a workload: mesh-wide (root namespace, no
    /// selector), its namespace's without selector, and those selecting its labels.
    pub fn authz_policies_for(&self, namespace: &str, labels: &Labels) -> Vec<&AuthzPolicy> {
        self.authorization_policies
            .iter()
            .filter(|p| {
                (p.namespace == ROOT_NAMESPACE && p.selector.is_none())
                    || (p.namespace == namespace && selects(&p.selector, labels))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pa(ns: &str, sel: Option<Labels>, mode: MtlsMode, ports: &[(u16, MtlsMode)]) -> PeerAuthn {
        PeerAuthn {
            namespace: ns.into(),
            selector: sel,
            mode,
            port_modes: ports.iter().copied().collect(),
            source: ResourceRef::default(),
        }
    }

    #[test]
    fn mtls_mode_most_specific_wins_and_unset_inherits() {
        let user = labels(&[("app", "user")]);
        let mut m = MeshModel::default();
        assert_eq!(m.mtls_mode("default", &user, 80), MtlsMode::Permissive);
        m.peer_authentications
            .push(pa(ROOT_NAMESPACE, None, MtlsMode::Strict, &[]));
        assert_eq!(m.mtls_mode("default", &user, 80), MtlsMode::Strict);
        m.peer_authentications
            .push(pa("default", None, MtlsMode::Permissive, &[]));
        assert_eq!(m.mtls_mode("default", &user, 80), MtlsMode::Permissive);
        assert_eq!(m.mtls_mode("other", &user, 80), MtlsMode::Strict);
        m.peer_authentications.push(pa(
            "default",
            Some(user.clone()),
            MtlsMode::Unset,
            &[(8080, MtlsMode::Disable)],
        ));
        assert_eq!(m.mtls_mode("default", &user, 8080), MtlsMode::Disable);
        assert_eq!(
            m.mtls_mode("default", &user, 80),
            MtlsMode::Permissive,
            "UNSET at workload level inherits the namespace's"
        );
        assert_eq!(
            m.mtls_mode("default", &labels(&[("app", "web")]), 8080),
            MtlsMode::Permissive
        );
    }

    #[test]
    fn authz_policies_apply_by_namespace_and_selector() {
        let pol = |ns: &str, sel: Option<Labels>, name: &str| AuthzPolicy {
            name: name.into(),
            namespace: ns.into(),
            selector: sel,
            action: AuthzAction::Allow,
            rules: Some(vec![]),
            dry_run: false,
            source: ResourceRef::default(),
        };
        let m = MeshModel {
            authorization_policies: vec![
                pol(ROOT_NAMESPACE, None, "mesh"),
                pol("default", None, "ns"),
                pol("default", Some(labels(&[("app", "user")])), "user"),
                pol("default", Some(labels(&[("app", "web")])), "web"),
                pol("other", None, "other-ns"),
            ],
            ..MeshModel::default()
        };
        let names: Vec<&str> = m
            .authz_policies_for("default", &labels(&[("app", "user"), ("version", "v1")]))
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["mesh", "ns", "user"]);
    }
}
