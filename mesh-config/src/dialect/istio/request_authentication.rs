//! RequestAuthentication: the JWTs a workload or gateway accepts. It is checked as Istio's CRD
//! checks it (non-empty strings, jwksUri scheme, header names, timeout, presence) with the
//! targetRef/selector rules shared with the other policy kinds, then enters the model as a
//! [`RequestAuthn`] that pilot turns into Envoy's `jwt_authn` filter.
//!
//! The spec is read straight into `mast_crds::security::RequestAuthenticationSpec`, the type
//! the CRD is generated from, so a field has one Rust type in the CRD and here; an unknown
//! `presence` is refused by that type.

use mast_crds::security as api;

use super::typed_spec;
use crate::authn::{AuthnTarget, JwtRule, RequestAuthn};
use crate::dialect::duration::parse_duration;
use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::{MeshModel, ResourceRef};

/// A checked RequestAuthentication, ready for the model.
#[derive(Debug)]
pub struct RequestAuthnResource(RequestAuthn);

impl MeshResource for RequestAuthnResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.request_authentications.push(self.0.clone());
    }
}

/// Checks a RequestAuthentication and reads it into the model's form.
pub(super) fn parse_request_authentication(
    doc: &Document<'_>,
) -> Result<RequestAuthnResource, Vec<FieldError>> {
    let s: api::RequestAuthenticationSpec = typed_spec(doc)?;
    let mut errors = Vec::new();
    request_authentication(&s, &doc.meta.namespace, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RequestAuthnResource(RequestAuthn {
        name: doc.meta.name.clone(),
        namespace: doc.meta.namespace.clone(),
        target: target(&s),
        rules: s.jwt_rules.into_iter().map(jwt_rule).collect(),
        source: ResourceRef {
            kind: doc.meta.kind.clone(),
            namespace: doc.meta.namespace.clone(),
            name: doc.meta.name.clone(),
        },
    }))
}

/// What the policy selects. A targetRef to a Gateway (Gateway API) selects that gateway's
/// pods; other kinds (a Service, for waypoints) select no sidecar or gateway, as in Istio.
fn target(s: &api::RequestAuthenticationSpec) -> AuthnTarget {
    let refs: Vec<&api::PolicyTargetReference> =
        s.target_ref.iter().chain(&s.target_refs).collect();
    if !refs.is_empty() {
        let gateways: Vec<String> = refs
            .iter()
            .filter(|r| {
                r.kind == "Gateway"
                    && r.group.as_deref().unwrap_or_default() == "gateway.networking.k8s.io"
            })
            .map(|r| r.name.clone())
            .collect();
        return if gateways.is_empty() {
            AuthnTarget::Nothing
        } else {
            AuthnTarget::Gateways(gateways)
        };
    }
    match &s.selector {
        Some(sel) if !sel.match_labels.is_empty() => AuthnTarget::Labels(sel.match_labels.clone()),
        _ => AuthnTarget::All,
    }
}

fn jwt_rule(r: api::JwtRule) -> JwtRule {
    JwtRule {
        issuer: r.issuer.unwrap_or_default(),
        audiences: r.audiences,
        jwks_uri: r.jwks_uri.or(r.jwks_uri_snake).filter(|u| !u.is_empty()),
        jwks: r.jwks.filter(|j| !j.is_empty()),
        fetched_jwks: None,
        from_headers: r
            .from_headers
            .into_iter()
            .map(|h| (h.name.unwrap_or_default(), h.prefix.unwrap_or_default()))
            .collect(),
        from_params: r.from_params,
        from_cookies: r.from_cookies,
        forward_original_token: r.forward_original_token.unwrap_or(false),
        output_payload_to_header: r.output_payload_to_header.filter(|h| !h.is_empty()),
        output_claim_to_headers: r
            .output_claim_to_headers
            .into_iter()
            .map(|c| (c.header, c.claim))
            .collect(),
        space_delimited_claims: r.space_delimited_claims,
        // Checked above: a valid duration.
        timeout: r.timeout.as_deref().and_then(|t| parse_duration(t).ok()),
    }
}

/// The CRD's `minLength: 1` on list items.
fn non_empty_strings(v: &[String], field: &str, errors: &mut Vec<FieldError>) {
    for (i, s) in v.iter().enumerate() {
        if s.is_empty() {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                "should be at least 1 chars long",
            ));
        }
    }
}

/// `targetRef`/`targetRefs`/`selector` of the security and extension kinds.
fn policy_targets(
    spec: &api::RequestAuthenticationSpec,
    namespace: &str,
    errors: &mut Vec<FieldError>,
) {
    let refs: Vec<(String, &api::PolicyTargetReference)> = spec
        .target_ref
        .iter()
        .map(|r| ("spec.targetRef".to_string(), r))
        .chain(
            spec.target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        )
        .collect();
    if (spec.target_ref.is_some() && !spec.target_refs.is_empty())
        || (spec.selector.is_some() && !refs.is_empty())
    {
        errors.push(FieldError::new(
            "spec",
            "only one of targetRefs or selector can be set",
        ));
    }
    for (field, r) in refs {
        if r.name.is_empty() {
            errors.push(FieldError::new(format!("{field}.name"), "Required value"));
        }
        if let Some(ns) = r.namespace.as_deref()
            && !ns.is_empty()
            && ns != namespace
        {
            errors.push(FieldError::new(
                format!("{field}.namespace"),
                "cross namespace referencing is not currently supported",
            ));
        }
        let group = r.group.as_deref().unwrap_or_default();
        let group_ok = group.is_empty()
            || group.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !group_ok {
            errors.push(FieldError::new(
                format!("{field}.group"),
                format!("{group:?} in body should match a DNS subdomain"),
            ));
        }
        let kind = r.kind.as_str();
        let kind_ok = kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !kind.ends_with('-');
        if !kind_ok {
            errors.push(FieldError::new(
                format!("{field}.kind"),
                format!("{kind:?} in body should match '^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$'"),
            ));
        }
    }
}

fn request_authentication(
    spec: &api::RequestAuthenticationSpec,
    namespace: &str,
    errors: &mut Vec<FieldError>,
) {
    policy_targets(spec, namespace, errors);
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        non_empty_strings(&rule.audiences, &format!("{f}.audiences"), errors);
        non_empty_strings(&rule.from_params, &format!("{f}.fromParams"), errors);
        non_empty_strings(&rule.from_cookies, &format!("{f}.fromCookies"), errors);
        non_empty_strings(
            &rule.space_delimited_claims,
            &format!("{f}.spaceDelimitedClaims"),
            errors,
        );
        for (name, uri) in [
            ("jwksUri", &rule.jwks_uri),
            ("jwks_uri", &rule.jwks_uri_snake),
        ] {
            let Some(uri) = uri else {
                continue;
            };
            let scheme_ok = uri.split_once("://").is_some_and(|(scheme, rest)| {
                !rest.is_empty() && matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
            });
            if !scheme_ok {
                errors.push(FieldError::new(
                    format!("{f}.{name}"),
                    "url must have scheme http:// or https://",
                ));
            }
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            match h.name.as_deref() {
                None => errors.push(FieldError::new(
                    format!("{f}.fromHeaders[{j}].name"),
                    "Required value",
                )),
                Some("") => errors.push(FieldError::new(
                    format!("{f}.fromHeaders[{j}].name"),
                    "in body should be at least 1 chars long",
                )),
                Some(_) => {}
            }
        }
        for (j, o) in rule.output_claim_to_headers.iter().enumerate() {
            let of = format!("{f}.outputClaimToHeaders[{j}]");
            if o.claim.is_empty() {
                errors.push(FieldError::new(
                    format!("{of}.claim"),
                    "in body should be at least 1 chars long",
                ));
            }
            if o.header.is_empty() {
                errors.push(FieldError::new(
                    format!("{of}.header"),
                    "header in body should be at least 1 chars long",
                ));
            } else if !o
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                errors.push(FieldError::new(
                    format!("{of}.header"),
                    "header in body should match '^[-_A-Za-z0-9]+$'",
                ));
            }
        }
        if let Some(t) = &rule.timeout {
            match parse_duration(t) {
                Ok(d) if !d.is_zero() => {}
                _ => errors.push(FieldError::new(
                    format!("{f}.timeout"),
                    format!("{t:?} must be a valid duration greater than 1ms"),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::error_lines;

    fn ra(spec: &str) -> Vec<String> {
        error_lines(&format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: r\nspec:\n{spec}"
        ))
    }

    /// The spec is mast-crds' type: Istio's presence values only, a header name present and
    /// not empty, target references named.
    #[test]
    fn spec_is_the_crd_type() {
        assert!(
            ra("  jwtRules: [{issuer: a, jwksUri: 'https://a/keys', presence: REQUIRED}]\n")
                .is_empty()
        );
        assert_eq!(
            ra("  jwtRules: [{issuer: a, presence: MANDATORY}]\n"),
            [
                "spec.jwtRules[0].presence: Unsupported value: \"MANDATORY\": supported values: OPTIONAL, REQUIRED"
            ]
        );
        assert_eq!(
            ra("  jwtRules: [{issuer: a, fromHeaders: [{prefix: 'Bearer '}]}]\n"),
            ["spec.jwtRules[0].fromHeaders[0].name: Required value"]
        );
        assert_eq!(
            ra("  targetRef: {kind: Service}\n"),
            ["spec.targetRef.name: Required value"]
        );
    }

    /// The model keeps each rule's fields, the deprecated `jwks_uri` spelling included.
    #[test]
    fn rules_enter_the_model() {
        use crate::authn::AuthnTarget;
        let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: ns}\nspec:\n  selector: {matchLabels: {app: a}}\n  jwtRules:\n  - issuer: iss\n    audiences: [x]\n    jwks_uri: http://127.0.0.1:1/keys\n    fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]\n    fromParams: [tok]\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-payload\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n";
        let model = super::super::testing::model(yaml);
        let [ra] = &model.request_authentications[..] else {
            panic!("{:?}", model.request_authentications);
        };
        assert_eq!((ra.name.as_str(), ra.namespace.as_str()), ("r", "ns"));
        assert!(matches!(&ra.target, AuthnTarget::Labels(l) if l["app"] == "a"));
        let r = &ra.rules[0];
        assert_eq!(r.issuer, "iss");
        assert_eq!(r.audiences, ["x"]);
        assert_eq!(r.jwks_uri.as_deref(), Some("http://127.0.0.1:1/keys"));
        assert_eq!(r.from_headers, [("x-jwt".into(), "Bearer ".into())]);
        assert_eq!(r.from_params, ["tok"]);
        assert!(r.forward_original_token);
        assert_eq!(r.output_payload_to_header.as_deref(), Some("x-payload"));
        assert_eq!(r.output_claim_to_headers, [("x-sub".into(), "sub".into())]);
    }
}
