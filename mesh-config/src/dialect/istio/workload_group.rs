//! WorkloadGroup: a template for auto-registered VM WorkloadEntries. Mast does not act on it
//! yet; it is accepted after the checks Istio's CRD makes on its health probe (port numbers,
//! header names), so a file istiod takes is not refused.
//!
//! The spec is read straight into `mast_crds::networking::WorkloadGroupSpec`, the type the
//! CRD is generated from, so a field has one Rust type in the CRD and here.

use mast_crds::networking as api;

use super::typed_spec;
use crate::dialect::kube::port_number;
use crate::dialect::{Accepted, Document, FieldError};

/// Checks a WorkloadGroup; nothing of it enters the model yet.
pub(super) fn parse_workload_group(doc: &Document<'_>) -> Result<Accepted, Vec<FieldError>> {
    // Unlike the policy kinds, a WorkloadGroup has no meaning without its spec.
    if doc.value.get("spec").is_none() {
        return Err(vec![FieldError::new("spec", "Required value")]);
    }
    let s: api::WorkloadGroupSpec = typed_spec(doc)?;
    let mut errors = Vec::new();
    if let Some(probe) = &s.probe {
        probe_rules(probe, &mut errors);
    }
    if errors.is_empty() {
        Ok(Accepted)
    } else {
        Err(errors)
    }
}

/// The CRD's rules on a probe: ports in 1–65535, header names as the pattern says.
fn probe_rules(probe: &api::ReadinessProbe, errors: &mut Vec<FieldError>) {
    let ports = [
        (
            "spec.probe.tcpSocket.port",
            probe.tcp_socket.as_ref().map(|t| t.port),
        ),
        (
            "spec.probe.httpGet.port",
            probe.http_get.as_ref().map(|h| h.port),
        ),
    ];
    for (field, port) in ports {
        if let Some(port) = port {
            port_number(i64::from(port), field, errors);
        }
    }
    let headers = probe.http_get.iter().flat_map(|h| &h.http_headers);
    for (i, h) in headers.enumerate() {
        let name = h.name.as_str();
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

#[cfg(test)]
mod tests {
    use super::super::testing::error_lines;

    fn wg(spec: &str) -> Vec<String> {
        error_lines(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata:\n  name: g\nspec:\n{spec}"
        ))
    }

    /// The spec is mast-crds' type, probe included: ports and header names are checked on it.
    #[test]
    fn probe_is_typed() {
        let template = "  template: {serviceAccount: sa}\n";
        assert!(
            wg(&format!(
                "{template}  probe: {{httpGet: {{port: 8080, path: /ready}}, periodSeconds: 5}}\n"
            ))
            .is_empty()
        );
        assert_eq!(
            wg(&format!(
                "{template}  probe: {{tcpSocket: {{port: 65536}}}}\n"
            )),
            ["spec.probe.tcpSocket.port: port 65536 is not in 1-65535"]
        );
        assert!(
            wg(&format!(
                "{template}  probe: {{httpGet: {{port: 80, httpHeaders: [{{name: '**'}}]}}}}\n"
            ))[0]
                .starts_with("spec.probe.httpGet.httpHeaders[0].name")
        );
    }
}
