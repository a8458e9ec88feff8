//! Which pods the webhook is sent at all: Istio's namespace and object selection
//! (`istio-injection=enabled`, `istio.io/rev`, `sidecar.istio.io/inject` labels).
//!
//! On Kubernetes the API server applies this through the MutatingWebhookConfiguration's
//! selectors (manifests/install/injector-webhook.yaml). Outside Kubernetes — the local mesh —
//! nothing does, so the same rule is written here, and a test evaluates the manifest's
//! selectors against it so the two never drift.

use std::collections::BTreeMap;

pub const NAMESPACE_LABEL: &str = "istio-injection";
pub const REV_LABEL: &str = "istio.io/rev";
pub const POD_LABEL: &str = super::annotations::INJECT;

/// Whether a pod with `pod_labels` in namespace `namespace` (labelled `ns_labels`) is sent to
/// the injector of `revision`. [`super::decide`] then applies the pod-level rules.
pub fn selected(
    namespace: &str,
    ns_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
    revision: &str,
) -> bool {
    let pod = pod_labels.get(POD_LABEL).map(String::as_str);
    match (
        ns_labels.get(NAMESPACE_LABEL).map(String::as_str),
        ns_labels.get(REV_LABEL).map(String::as_str),
    ) {
        (Some("enabled"), _) => pod != Some("false"),
        (Some(_), _) => false,
        (None, Some(rev)) => rev == revision && pod != Some("false"),
        (None, None) => !matches!(namespace, "kube-system" | "kube-public") && pod == Some("true"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Kubernetes' label selector semantics for `matchExpressions`.
    fn matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
        selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| {
                let key = e["key"].as_str().unwrap();
                let values: Vec<&str> = e["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let got = labels.get(key).map(String::as_str);
                match e["operator"].as_str().unwrap() {
                    "In" => got.is_some_and(|v| values.contains(&v)),
                    "NotIn" => !got.is_some_and(|v| values.contains(&v)),
                    "Exists" => got.is_some(),
                    "DoesNotExist" => got.is_none(),
                    other => panic!("operator {other}"),
                }
            })
    }

    #[test]
    fn the_manifest_selects_exactly_what_the_rule_does() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/install/injector-webhook.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let config: Value = serde_saphyr::from_str(&text).unwrap();
        let webhooks = config["webhooks"].as_array().unwrap();
        let namespaces = [
            ("shop", labels(&[("istio-injection", "enabled")])),
            ("off", labels(&[("istio-injection", "disabled")])),
            ("rev", labels(&[("istio.io/rev", "default")])),
            ("other-rev", labels(&[("istio.io/rev", "canary")])),
            (
                "both",
                labels(&[("istio-injection", "enabled"), ("istio.io/rev", "canary")]),
            ),
            ("plain", labels(&[])),
            ("kube-system", labels(&[])),
        ];
        let pods = [
            labels(&[]),
            labels(&[("sidecar.istio.io/inject", "true")]),
            labels(&[("sidecar.istio.io/inject", "false")]),
        ];
        for (ns, ns_labels) in &namespaces {
            let mut with_name = ns_labels.clone();
            with_name.insert("kubernetes.io/metadata.name".into(), ns.to_string());
            for pod in &pods {
                let by_manifest = webhooks.iter().any(|w| {
                    matches(&w["namespaceSelector"], &with_name)
                        && matches(&w["objectSelector"], pod)
                });
                assert_eq!(
                    by_manifest,
                    selected(ns, ns_labels, pod, "default"),
                    "namespace {ns} {ns_labels:?}, pod {pod:?}"
                );
            }
        }
    }
}
