//! Telemetry (`telemetry.istio.io`): metric, tracing and access-log settings. Its `tracing[]`
//! rules go into the model ([`crate::telemetry`]), where pilot reads them for the sidecars'
//! and gateways' connection managers; metrics and access logs are accepted after Istio's CRD
//! checks on metric providers and tag overrides, and Mast's telemetry reads its own settings.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::array;
use crate::dialect::mesh_config::{CustomTagDoc, custom_tags};
use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::{Labels, MeshModel};
use crate::telemetry::{Telemetry, TracingRule, WorkloadMode};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TelemetrySpec {
    #[serde(default)]
    selector: Option<SelectorDoc>,
    #[serde(default)]
    tracing: Vec<TracingDoc>,
    #[serde(default)]
    target_ref: Option<Value>,
    #[serde(default)]
    target_refs: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectorDoc {
    #[serde(default)]
    match_labels: Labels,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TracingDoc {
    #[serde(default, rename = "match")]
    matches: Option<MatchDoc>,
    #[serde(default)]
    providers: Vec<ProviderRefDoc>,
    #[serde(default)]
    random_sampling_percentage: Option<f64>,
    #[serde(default)]
    custom_tags: Option<BTreeMap<String, CustomTagDoc>>,
    #[serde(default)]
    disable_span_reporting: Option<bool>,
    #[serde(default)]
    use_request_id_for_trace_sampling: Option<bool>,
    #[serde(default)]
    enable_istio_tags: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct MatchDoc {
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ProviderRefDoc {
    #[serde(default)]
    name: String,
}

#[derive(Debug)]
pub struct TelemetryResource(Telemetry);

/// A Telemetry: the untyped checks on its metrics, then its selector and tracing rules,
/// validated as istiod's `validateTelemetryTracing` (and the CRD's schema) do.
pub fn parse_telemetry(doc: &Document<'_>) -> Result<TelemetryResource, Vec<FieldError>> {
    let mut errors = Vec::new();
    match doc.value.get("spec") {
        Some(Value::Object(spec)) => telemetry(spec, &mut errors),
        None | Some(Value::Null) => {}
        Some(_) => return Err(vec![FieldError::new("spec", "must be a mapping")]),
    }
    let spec: TelemetrySpec = super::typed_spec(doc)?;
    let set = usize::from(spec.selector.is_some())
        + usize::from(spec.target_ref.is_some())
        + usize::from(!spec.target_refs.is_empty());
    if set > 1 {
        // The CRD's x-kubernetes-validations rule.
        errors.push(FieldError::new(
            "spec",
            "only one of targetRefs or selector can be set",
        ));
    }
    let mut tracing = Vec::new();
    for (i, t) in spec.tracing.into_iter().enumerate() {
        let f = format!("spec.tracing[{i}]");
        let mode = match t.matches.and_then(|m| m.mode).as_deref() {
            None | Some("CLIENT_AND_SERVER") => WorkloadMode::ClientAndServer,
            Some("CLIENT") => WorkloadMode::Client,
            Some("SERVER") => WorkloadMode::Server,
            Some(other) => {
                errors.push(FieldError::new(
                    format!("{f}.match.mode"),
                    format!(
                        "Unsupported value: {other:?}: supported values: CLIENT_AND_SERVER, CLIENT, SERVER"
                    ),
                ));
                WorkloadMode::ClientAndServer
            }
        };
        for (j, p) in t.providers.iter().enumerate() {
            if p.name.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.providers[{j}].name"),
                    "name in body should be at least 1 chars long",
                ));
            }
        }
        if let Some(p) = t.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            errors.push(FieldError::new(
                format!("{f}.randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            ));
        }
        let tags = t
            .custom_tags
            .map(|tags| custom_tags(&tags, &format!("{f}.customTags"), &mut errors));
        tracing.push(TracingRule {
            mode,
            providers: t.providers.into_iter().map(|p| p.name).collect(),
            random_sampling_percentage: t.random_sampling_percentage,
            custom_tags: tags,
            disable_span_reporting: t.disable_span_reporting,
            use_request_id_for_trace_sampling: t.use_request_id_for_trace_sampling,
            enable_istio_tags: t.enable_istio_tags,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(TelemetryResource(Telemetry {
        namespace: doc.meta.namespace.clone(),
        selector: spec.selector.map(|s| s.match_labels),
        target_refs: spec.target_ref.is_some() || !spec.target_refs.is_empty(),
        tracing,
        source: doc.meta.resource_ref(),
    }))
}

impl MeshResource for TelemetryResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.telemetries.push(self.0.clone());
    }
}

fn telemetry(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    for (i, m) in array(spec.get("metrics")).iter().enumerate() {
        let f = format!("spec.metrics[{i}]");
        for (j, p) in array(m.get("providers")).iter().enumerate() {
            if p.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errors.push(FieldError::new(
                    format!("{f}.providers[{j}].name"),
                    "name in body should be at least 1 chars long",
                ));
            }
        }
        for (j, o) in array(m.get("overrides")).iter().enumerate() {
            let of = format!("{f}.overrides[{j}]");
            if o.get("match")
                .and_then(|x| x.get("customMetric"))
                .and_then(Value::as_str)
                == Some("")
            {
                errors.push(FieldError::new(
                    format!("{of}.match.customMetric"),
                    "customMetric in body should be at least 1 chars long",
                ));
            }
            let tags = o.get("tagOverrides").and_then(Value::as_object);
            for (tag, t) in tags.into_iter().flatten() {
                let op = t
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("UPSERT");
                let has_value = t.get("value").is_some_and(|v| !v.is_null());
                if op == "UPSERT" && !has_value {
                    errors.push(FieldError::new(
                        format!("{of}.tagOverrides.{tag}"),
                        "value must be set when operation is UPSERT",
                    ));
                }
                if op == "REMOVE" && has_value {
                    errors.push(FieldError::new(
                        format!("{of}.tagOverrides.{tag}"),
                        "value must not be set when operation is REMOVE",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_lines, model};
    use crate::telemetry::CustomTag;

    #[test]
    fn tracing_rules_reach_the_model() {
        let m = model(
            r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: default}
spec:
  selector: {matchLabels: {app: a}}
  tracing:
  - providers: [{name: zipkin}]
    match: {mode: SERVER}
    randomSamplingPercentage: 12.5
    disableSpanReporting: false
    useRequestIdForTraceSampling: false
    customTags:
      lit: {literal: {value: v}}
      hdr: {header: {name: x-user, defaultValue: none}}
      env: {environment: {name: POD}}
"#,
        );
        let t = &m.telemetries[0];
        assert_eq!(t.selector.as_ref().unwrap()["app"], "a");
        let r = &t.tracing[0];
        assert_eq!(r.mode, crate::telemetry::WorkloadMode::Server);
        assert_eq!(r.providers, ["zipkin"]);
        assert_eq!(r.random_sampling_percentage, Some(12.5));
        assert_eq!(r.use_request_id_for_trace_sampling, Some(false));
        let tags = r.custom_tags.as_ref().unwrap();
        assert_eq!(
            tags["hdr"],
            CustomTag::Header {
                name: "x-user".into(),
                default_value: "none".into()
            }
        );
        assert_eq!(tags.len(), 3);
    }

    #[test]
    fn bad_tracing_fields_are_named() {
        let lines = error_lines(
            r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: default}
spec:
  tracing:
  - randomSamplingPercentage: 101
    match: {mode: BOTH}
    providers: [{name: ""}]
    customTags:
      h: {header: {name: ""}}
"#,
        );
        assert_eq!(
            lines,
            [
                "spec.tracing[0].match.mode: Unsupported value: \"BOTH\": supported values: CLIENT_AND_SERVER, CLIENT, SERVER",
                "spec.tracing[0].providers[0].name: name in body should be at least 1 chars long",
                "spec.tracing[0].randomSamplingPercentage: randomSamplingPercentage must be in range [0.0, 100.0]",
                "spec.tracing[0].customTags.h.header.name: header tag name may not be empty",
            ]
        );
        let lines = error_lines(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec:\n  selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g}]\n",
        );
        assert_eq!(
            lines,
            ["spec: only one of targetRefs or selector can be set"]
        );
        let lines = error_lines(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec:\n  tracing:\n  - randomSamplingPercentage: lots\n",
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("spec.tracing[0].randomSamplingPercentage: "),
            "{lines:?}"
        );
    }
}
