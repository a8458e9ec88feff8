//! WorkloadEntry: one non-Kubernetes workload (a VM, a bare-metal server) with its address,
//! labels, ports and identity, into a [`Workload`]; a ServiceEntry's inline endpoints share
//! its spec type.
//!
//! Enforces istiod's WorkloadEntry rules (pkg/config/validation/validation.go,
//! ValidateWorkloadEntry → validateWorkloadEntry): an IP, FQDN or Unix-socket address unless a
//! network is given, sockets without ports, DNS-label port names, valid port numbers, a
//! non-negative weight. Whether the workload has a sidecar follows istiod
//! ([`workload_entry_has_sidecar`]).
//!
//! The spec is read straight into `mast_crds::networking::WorkloadEntrySpec`, the type the
//! WorkloadEntry CRD is generated from, so a field has one Rust type in the CRD and here.

use std::collections::BTreeMap;

use mast_crds::networking as api;
use serde::Deserialize;

use super::{check_fqdn, check_port_name, count, deserialize, is_ip};
use crate::dialect::kube::port_number;
use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::*;

/// The document around the spec: `spec` is required, the rest was read into [`Meta`].
#[derive(Debug, Deserialize)]
struct WeDoc {
    spec: api::WorkloadEntrySpec,
}

#[derive(Debug)]
pub(super) struct WorkloadEntryResource(Workload);

pub(super) fn parse_workload_entry(
    doc: &Document<'_>,
) -> Result<WorkloadEntryResource, Vec<FieldError>> {
    let we: WeDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let address = we.spec.address.unwrap_or_default();
    if address.is_empty() && we.spec.network.as_deref().unwrap_or("").is_empty() {
        errors.push(FieldError::new(
            "spec.address",
            "Address is required (or a network)",
        ));
    }
    if let Some(path) = address.strip_prefix("unix://") {
        if path.ends_with('/') {
            errors.push(FieldError::new("spec.address", "UDS may not be a dir"));
        } else if !path.starts_with('/') && !path.starts_with('@') {
            errors.push(FieldError::new(
                "spec.address",
                "UDS must be an absolute path or abstract socket",
            ));
        }
        if !we.spec.ports.is_empty() {
            errors.push(FieldError::new("spec.ports", "UDS may not include ports"));
        }
    } else if !address.is_empty() && !is_ip(&address) && check_fqdn(&address).is_err() {
        // istiod's validateWorkloadEntry with FQDN addresses allowed.
        errors.push(FieldError::new(
            "spec.address",
            format!("endpoint address {address:?} is not a valid FQDN or an IP address"),
        ));
    }
    let mut ports = BTreeMap::new();
    for (name, n) in &we.spec.ports {
        check_port_name(name, &format!("spec.ports.{name}"), &mut errors);
        if let Some(p) = port_number(i64::from(*n), &format!("spec.ports.{name}"), &mut errors) {
            ports.insert(name.clone(), p);
        }
    }
    let weight = count(we.spec.weight, "spec.weight", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let meta = &doc.meta;
    let has_sidecar =
        workload_entry_has_sidecar(&we.spec.labels, we.spec.service_account.as_deref());
    Ok(WorkloadEntryResource(Workload {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        address,
        labels: we.spec.labels,
        ports,
        service_account: we.spec.service_account.unwrap_or_else(|| "default".into()),
        weight,
        locality: we.spec.locality,
        network: we.spec.network,
        has_sidecar,
        source: meta.resource_ref(),
    }))
}

impl MeshResource for WorkloadEntryResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.workloads.push(self.0.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::error_lines;

    fn we(spec: &str) -> Vec<String> {
        error_lines(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm\nspec:\n{spec}"
        ))
    }

    /// ValidatePortName (and the CRD's port-name rule): DNS-1123 labels, so no `_` or `.`.
    #[test]
    fn port_names_are_dns_labels() {
        let errors = we("  address: 10.0.0.1\n  ports: {http_alt: 8080}\n");
        assert!(
            errors.iter().any(|e| e.starts_with("spec.ports.http_alt")),
            "{errors:?}"
        );
        assert!(we("  address: 10.0.0.1\n  ports: {http-alt: 8080}\n").is_empty());
    }

    /// validateWorkloadEntry: the address is an IP, an FQDN or a unix socket.
    #[test]
    fn address_is_ip_or_fqdn() {
        assert!(we("  address: vm1.example.com\n").is_empty());
        let errors = we("  address: 'not a host'\n");
        assert!(
            errors.iter().any(|e| e.starts_with("spec.address")),
            "{errors:?}"
        );
        let errors = we("  network: ''\n");
        assert!(
            errors.iter().any(|e| e.starts_with("spec.address")),
            "{errors:?}"
        );
    }
}
