//! Request authentication in the mesh model: Istio's RequestAuthentication (which JWTs a
//! workload or gateway accepts), with Istio's rules for which policies apply to a proxy.
//!
//! It lives apart from `security.rs` (mTLS and authorization) because it carries data that is
//! not configuration: the JWKS a `jwksUri` points to is fetched by pilot, outside this crate
//! (which does no networking), and written back into [`JwtRule::fetched_jwks`] so that xDS
//! generation stays a pure function of the model. Every policy that applies contributes its
//! rules; istiod merges them into one `jwt_authn` filter, sorted by issuer.

use std::time::Duration;

use serde::Serialize;

use crate::model::{Labels, MeshModel, ResourceRef, labels_match};
use crate::security::ROOT_NAMESPACE;

/// The label a Gateway API gateway's pods carry; a `targetRef` to a Gateway selects them.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// A RequestAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RequestAuthn {
    pub name: String,
    pub namespace: String,
    /// What it applies to in its namespace; `All` in the root namespace is mesh-wide.
    pub target: AuthnTarget,
    pub rules: Vec<JwtRule>,
    pub source: ResourceRef,
}

/// Which proxies of the policy's namespace a RequestAuthentication selects.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub enum AuthnTarget {
    /// No selector and no targetRef: the namespace (the mesh, in the root namespace).
    #[default]
    All,
    /// `selector.matchLabels`.
    Labels(Labels),
    /// `targetRef(s)` of kind Gateway (Gateway API): the gateways' pods by
    /// [`GATEWAY_NAME_LABEL`].
    Gateways(Vec<String>),
    /// Only targetRefs a sidecar or gateway does not act on (a Service, for a waypoint).
    Nothing,
}

/// One `jwtRules` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// `jwksUri` (or the deprecated `jwks_uri`).
    pub jwks_uri: Option<String>,
    /// `jwks`: inline keys, used as written.
    pub jwks: Option<String>,
    /// The keys pilot fetched from `jwks_uri`, or `None` before a fetch has completed.
    pub fetched_jwks: Option<String>,
    /// `fromHeaders` as `(name, prefix)`.
    pub from_headers: Vec<(String, String)>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub forward_original_token: bool,
    pub output_payload_to_header: Option<String>,
    /// `outputClaimToHeaders` as `(header, claim)`.
    pub output_claim_to_headers: Vec<(String, String)>,
    pub space_delimited_claims: Vec<String>,
    /// `timeout` of the JWKS fetch.
    pub timeout: Option<Duration>,
}

// === impl JwtRule ===

impl JwtRule {
    /// The keys to verify with: inline keys, else those fetched from `jwksUri`; `None` when
    /// neither exists (a fetch pending or failed), which must fail every token.
    pub fn keys(&self) -> Option<&str> {
        self.jwks.as_deref().or(self.fetched_jwks.as_deref())
    }
}

// === impl MeshModel ===

impl MeshModel {
    /// RequestAuthentications that apply to a proxy: mesh-wide (root namespace, no target),
    /// its namespace's without target, and those whose selector or targetRef names it.
    pub fn request_authns_for(&self, namespace: &str, labels: &Labels) -> Vec<&RequestAuthn> {
        self.request_authentications
            .iter()
            .filter(|p| match &p.target {
                AuthnTarget::All => p.namespace == ROOT_NAMESPACE || p.namespace == namespace,
                AuthnTarget::Labels(sel) => p.namespace == namespace && labels_match(sel, labels),
                AuthnTarget::Gateways(names) => {
                    p.namespace == namespace
                        && labels
                            .get(GATEWAY_NAME_LABEL)
                            .is_some_and(|n| names.contains(n))
                }
                AuthnTarget::Nothing => false,
            })
            .collect()
    }

    /// The JWT rules a proxy enforces, as istiod merges them: every applying policy's rules,
    /// stably sorted by issuer.
    pub fn jwt_rules_for(&self, namespace: &str, labels: &Labels) -> Vec<&JwtRule> {
        let mut rules: Vec<&JwtRule> = self
            .request_authns_for(namespace, labels)
            .into_iter()
            .flat_map(|p| &p.rules)
            .collect();
        rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ra(ns: &str, target: AuthnTarget, issuer: &str) -> RequestAuthn {
        RequestAuthn {
            name: issuer.into(),
            namespace: ns.into(),
            target,
            rules: vec![JwtRule {
                issuer: issuer.into(),
                ..Default::default()
            }],
            source: ResourceRef::default(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn mesh_namespace_and_workload_policies_merge_sorted_by_issuer() {
        let m = MeshModel {
            request_authentications: vec![
                ra("default", AuthnTarget::Labels(labels(&[("app", "a")])), "z"),
                ra(ROOT_NAMESPACE, AuthnTarget::All, "m"),
                ra("default", AuthnTarget::All, "b"),
                ra("other", AuthnTarget::All, "o"),
                ra("default", AuthnTarget::Gateways(vec!["gw".into()]), "g"),
                ra("default", AuthnTarget::Nothing, "n"),
            ],
            ..Default::default()
        };
        let issuers = |ns: &str, l: &Labels| -> Vec<String> {
            m.jwt_rules_for(ns, l)
                .iter()
                .map(|r| r.issuer.clone())
                .collect()
        };
        assert_eq!(
            issuers("default", &labels(&[("app", "a")])),
            ["b", "m", "z"]
        );
        assert_eq!(issuers("default", &labels(&[("app", "c")])), ["b", "m"]);
        assert_eq!(
            issuers("default", &labels(&[(GATEWAY_NAME_LABEL, "gw")])),
            ["b", "g", "m"]
        );
        assert_eq!(issuers("other", &Labels::new()), ["m", "o"]);
    }

    #[test]
    fn inline_keys_win_over_fetched() {
        let mut r = JwtRule::default();
        assert_eq!(r.keys(), None);
        r.fetched_jwks = Some("f".into());
        assert_eq!(r.keys(), Some("f"));
        r.jwks = Some("i".into());
        assert_eq!(r.keys(), Some("i"));
    }
}
