//! RequestAuthentication: the JWTs a workload accepts. Mast does not act on it yet; it is
//! accepted after Istio's CRD checks (non-empty strings, jwksUri scheme, header names,
//! timeout, presence) and the targetRef/selector rules shared with the other policy kinds.

use serde_json::Value;

use super::array;
use crate::dialect::FieldError;
use crate::dialect::duration::parse_duration;

fn non_empty_strings(v: Option<&Value>, field: &str, errors: &mut Vec<FieldError>) {
    for (i, s) in array(v).iter().enumerate() {
        if s.as_str().is_none_or(str::is_empty) {
            errors.push(FieldError::new(
                format!("{field}[{i}]"),
                "should be at least 1 chars long",
            ));
        }
    }
}

/// `targetRef`/`targetRefs`/`selector` of the security and extension kinds.
fn policy_targets(
    spec: &serde_json::Map<String, Value>,
    namespace: &str,
    errors: &mut Vec<FieldError>,
) {
    let refs: Vec<(String, &Value)> = spec
        .get("targetRef")
        .map(|r| ("spec.targetRef".to_string(), r))
        .into_iter()
        .chain(
            array(spec.get("targetRefs"))
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        )
        .collect();
    let has_selector = spec.get("selector").is_some();
    if (spec.contains_key("targetRef") && spec.contains_key("targetRefs"))
        || (has_selector && !refs.is_empty())
    {
        errors.push(FieldError::new(
            "spec",
            "only one of targetRefs or selector can be set",
        ));
    }
    for (field, r) in refs {
        let get = |k: &str| r.get(k).and_then(Value::as_str);
        if get("name").is_none_or(str::is_empty) {
            errors.push(FieldError::new(format!("{field}.name"), "Required value"));
        }
        if let Some(ns) = get("namespace")
            && !ns.is_empty()
            && ns != namespace
        {
            errors.push(FieldError::new(
                format!("{field}.namespace"),
                "cross namespace referencing is not currently supported",
            ));
        }
        let group = get("group").unwrap_or("");
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
        let kind = get("kind").unwrap_or("");
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

pub(super) fn request_authentication(
    spec: &serde_json::Map<String, Value>,
    namespace: &str,
    errors: &mut Vec<FieldError>,
) {
    policy_targets(spec, namespace, errors);
    for (i, rule) in array(spec.get("jwtRules")).iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        let Some(rule) = rule.as_object() else {
            errors.push(FieldError::new(f, "in body must be of type object"));
            continue;
        };
        non_empty_strings(rule.get("audiences"), &format!("{f}.audiences"), errors);
        non_empty_strings(rule.get("fromParams"), &format!("{f}.fromParams"), errors);
        non_empty_strings(rule.get("fromCookies"), &format!("{f}.fromCookies"), errors);
        non_empty_strings(
            rule.get("spaceDelimitedClaims"),
            &format!("{f}.spaceDelimitedClaims"),
            errors,
        );
        if let Some(uri) = rule.get("jwksUri").and_then(Value::as_str) {
            let scheme_ok = uri.split_once("://").is_some_and(|(scheme, rest)| {
                !rest.is_empty() && matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
            });
            if !scheme_ok {
                errors.push(FieldError::new(
                    format!("{f}.jwksUri"),
                    "url must have scheme http:// or https://",
                ));
            }
        }
        for (j, h) in array(rule.get("fromHeaders")).iter().enumerate() {
            match h.get("name").and_then(Value::as_str) {
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
        for (j, o) in array(rule.get("outputClaimToHeaders")).iter().enumerate() {
            let of = format!("{f}.outputClaimToHeaders[{j}]");
            if !o.is_object() {
                errors.push(FieldError::new(of, "in body must be of type object"));
                continue;
            }
            if o.get("claim")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errors.push(FieldError::new(
                    format!("{of}.claim"),
                    "in body should be at least 1 chars long",
                ));
            }
            match o.get("header").and_then(Value::as_str) {
                None | Some("") => errors.push(FieldError::new(
                    format!("{of}.header"),
                    "header in body should be at least 1 chars long",
                )),
                Some(h)
                    if !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    errors.push(FieldError::new(
                        format!("{of}.header"),
                        "header in body should match '^[-_A-Za-z0-9]+$'",
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(t) = rule.get("timeout").and_then(Value::as_str) {
            match parse_duration(t) {
                Ok(d) if !d.is_zero() => {}
                _ => errors.push(FieldError::new(
                    format!("{f}.timeout"),
                    format!("{t:?} must be a valid duration greater than 1ms"),
                )),
            }
        }
        if let Some(p) = rule.get("presence")
            && !matches!(p.as_str(), Some("REQUIRED" | "OPTIONAL" | "UNSPECIFIED"))
        {
            errors.push(FieldError::new(
                format!("{f}.presence"),
                format!("Unsupported value: {p}"),
            ));
        }
    }
}
