//! WorkloadGroup: a template for auto-registered VM WorkloadEntries. Mast does not act on it
//! yet; it is accepted after the checks Istio's CRD makes on its health probe (port numbers,
//! header names), so a file istiod takes is not refused.

use serde_json::Value;

use crate::dialect::FieldError;
use crate::dialect::kube::port_number;

pub(super) fn workload_group(spec: &serde_json::Map<String, Value>, errors: &mut Vec<FieldError>) {
    let Some(probe) = spec.get("probe") else {
        return;
    };
    for (kind, field) in [
        ("tcpSocket", "spec.probe.tcpSocket.port"),
        ("httpGet", "spec.probe.httpGet.port"),
    ] {
        if let Some(port) = probe
            .get(kind)
            .and_then(|p| p.get("port"))
            .and_then(Value::as_i64)
        {
            port_number(port, field, errors);
        }
    }
    let headers = probe
        .get("httpGet")
        .and_then(|h| h.get("httpHeaders"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, h) in headers.iter().enumerate() {
        let name = h.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errors.push(FieldError::new(
                format!("spec.probe.httpGet.httpHeaders[{i}].name"),
                format!("{name:?} in body should match '^[-_A-Za-z0-9]+$'"),
            ));
        }
    }
}
