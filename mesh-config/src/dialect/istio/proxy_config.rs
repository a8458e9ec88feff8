//! ProxyConfig: per-workload proxy settings (concurrency, image). Accepted after Istio's CRD
//! checks (non-negative concurrency, non-empty selector keys).

use serde_json::Value;

use crate::dialect::FieldError;

pub(super) fn proxy_config(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    if let Some(c) = spec.get("concurrency").and_then(Value::as_i64)
        && c < 0
    {
        errors.push(FieldError::new(
            "spec.concurrency",
            "should be greater than or equal to 0",
        ));
    }
    let labels = spec
        .get("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    for key in labels.into_iter().flat_map(|m| m.keys()) {
        if key.is_empty() {
            errors.push(FieldError::new(
                "spec.selector.matchLabels",
                "key must not be empty",
            ));
        }
    }
}
