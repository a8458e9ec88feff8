//! EnvoyFilter: raw Envoy configuration patches. Mast's proxy is not Envoy, so patches are
//! not applied; the kind is accepted after Istio's CRD rule on match contexts.

use serde_json::Value;

use super::array;
use crate::dialect::FieldError;
use crate::dialect::kube::port_number;

/// The CEL rule on EnvoyFilter matches: a `waypoint` match goes with, and only with, the
/// WAYPOINT context; a listener/route/cluster match never does.
pub(super) fn envoy_filter(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    for (i, patch) in array(spec.get("configPatches")).iter().enumerate() {
        let Some(m) = patch.get("match") else {
            continue;
        };
        let f = format!("spec.configPatches[{i}].match");
        let waypoint_ctx = m.get("context").and_then(Value::as_str) == Some("WAYPOINT");
        let has_waypoint = m.get("waypoint").is_some();
        let has_other = ["listener", "routeConfiguration", "cluster"]
            .iter()
            .any(|k| m.get(k).is_some());
        if has_waypoint != waypoint_ctx || (waypoint_ctx && has_other) {
            errors.push(FieldError::new(
                f.clone(),
                "Invalid value: \"object\": only support waypointMatch when context is WAYPOINT",
            ));
        }
        if let Some(port) = m
            .get("waypoint")
            .and_then(|w| w.get("portNumber"))
            .and_then(Value::as_i64)
        {
            port_number(port, &format!("{f}.waypoint.portNumber"), errors);
        }
    }
}
