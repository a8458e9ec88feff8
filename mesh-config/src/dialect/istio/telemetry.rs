//! Telemetry (`telemetry.istio.io`): metric, tracing and access-log settings. Accepted after
//! Istio's CRD checks on metric providers and tag overrides; Mast's telemetry reads its own
//! settings.

use serde_json::Value;

use super::array;
use crate::dialect::FieldError;

pub(super) fn telemetry(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
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
