//! ServiceEntry: a service the mesh should know that Kubernetes does not declare — an
//! external API, VMs, a hand-made endpoint list — into one [`Service`] per host.
//!
//! Enforces istiod's ServiceEntry rules (pkg/config/validation/validation.go,
//! ValidateServiceEntry): hosts that are valid domains other than `*`, IP/CIDR addresses,
//! workloadSelector xor endpoints, named ports with known protocols, the per-resolution rules
//! (NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS) and endpoint addresses and port names;
//! defaults as the registry's conversion (pilot/pkg/serviceregistry/serviceentry/conversion.go).
//!
//! The spec is read straight into `mast_crds::networking::ServiceEntrySpec`, the type the
//! ServiceEntry CRD is generated from (its endpoints are `WorkloadEntrySpec`s, as in Istio),
//! so a field has one Rust type in the CRD and here.

use std::collections::{BTreeMap, BTreeSet};

use mast_crds::networking as api;
use serde::Deserialize;

use super::{
    check_fqdn, check_port_name, check_protocol, check_unix_address, check_wildcard_domain, count,
    deserialize, is_ip,
};
use crate::dialect::kube::{infer_protocol, port_number};
use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::*;

/// The document around the spec: `spec` is required, the rest was read into [`Meta`].
#[derive(Debug, Deserialize)]
struct SeDoc {
    spec: api::ServiceEntrySpec,
}

/// Istio's name of a resolution, as its messages spell it.
fn resolution_name(r: api::Resolution) -> &'static str {
    match r {
        api::Resolution::None => "NONE",
        api::Resolution::Static => "STATIC",
        api::Resolution::Dns => "DNS",
        api::Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        api::Resolution::DynamicDns => "DYNAMIC_DNS",
    }
}

#[derive(Debug)]
pub(super) struct ServiceEntryResource(Vec<Service>);

pub(super) fn parse_service_entry(
    doc: &Document<'_>,
) -> Result<ServiceEntryResource, Vec<FieldError>> {
    let se: SeDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    if se.spec.hosts.is_empty() {
        errors.push(FieldError::new(
            "spec.hosts",
            "at least one host is required",
        ));
    }
    let resolution_name = resolution_name(se.spec.resolution.unwrap_or(api::Resolution::None));
    let resolution = match resolution_name {
        "STATIC" => Resolution::Static,
        "DNS" | "DNS_ROUND_ROBIN" => Resolution::Dns,
        // NONE, and DYNAMIC_DNS: resolved per request from the Host/SNI the client sent, to
        // Mast the original destination the client resolved itself.
        _ => Resolution::None,
    };
    let mesh_external = se.spec.location != Some(api::Location::MeshInternal);
    for (i, h) in se.spec.hosts.iter().enumerate() {
        if h == "*" {
            errors.push(FieldError::new(
                format!("spec.hosts[{i}]"),
                "hostname cannot be wildcard",
            ));
        } else if let Err(e) = check_wildcard_domain(h) {
            errors.push(FieldError::new(format!("spec.hosts[{i}]"), e));
        }
    }
    resolution_rules(&se.spec, resolution_name, &mut errors);
    if let Some(sel) = &se.spec.workload_selector {
        if !se.spec.endpoints.is_empty() {
            errors.push(FieldError::new(
                "spec",
                "only one of WorkloadSelector or Endpoints can be set",
            ));
        }
        for (k, v) in &sel.labels {
            if k.contains('*') || v.contains('*') {
                errors.push(FieldError::new(
                    format!("spec.workloadSelector.labels.{k}"),
                    "wildcard is not supported in selector",
                ));
            }
        }
    }
    let dns = matches!(resolution_name, "DNS" | "DNS_ROUND_ROBIN");
    for (i, a) in se.spec.addresses.iter().enumerate() {
        if !is_ip_or_cidr(a) {
            errors.push(FieldError::new(
                format!("spec.addresses[{i}]"),
                format!("{a:?} is not a valid IP address or CIDR"),
            ));
        }
        if dns && a.contains('/') {
            errors.push(FieldError::new(
                format!("spec.addresses[{i}]"),
                "CIDR addresses are allowed only for NONE/STATIC resolution types",
            ));
        }
    }
    if resolution == Resolution::None && !se.spec.endpoints.is_empty() {
        errors.push(FieldError::new(
            "spec.endpoints",
            "NONE mode cannot set endpoints",
        ));
    }
    if resolution_name == "DNS_ROUND_ROBIN" && se.spec.endpoints.len() > 1 {
        errors.push(FieldError::new(
            "spec.endpoints",
            "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
        ));
    }
    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    for (i, p) in se.spec.ports.iter().enumerate() {
        check_port_name(&p.name, &format!("spec.ports[{i}].name"), &mut errors);
        check_protocol(
            p.protocol.as_deref(),
            &format!("spec.ports[{i}].protocol"),
            &mut errors,
        );
        if !port_names.insert(p.name.clone()) {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].name"),
                format!("Duplicate value: {:?}", p.name),
            ));
        }
        if !port_numbers.insert(p.number) {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].number"),
                format!("port number cannot be duplicated: {}", p.number),
            ));
        }
    }
    let mut ports = Vec::new();
    for (i, p) in se.spec.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let Some(port) = port_number(i64::from(p.number), &format!("{f}.number"), &mut errors)
        else {
            continue;
        };
        let protocol = p.protocol.as_deref().unwrap_or("");
        ports.push(ServicePort {
            name: p.name.clone(),
            port,
            // 0 is protobuf's "unset".
            target_port: p
                .target_port
                .filter(|t| *t != 0)
                .and_then(|t| port_number(i64::from(t), &format!("{f}.targetPort"), &mut errors))
                .map(TargetPort::Number),
            protocol: infer_protocol(Some(protocol), &p.name, "TCP"),
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in se.spec.endpoints.iter().enumerate() {
        let f = format!("spec.endpoints[{i}]");
        endpoint_address(e, resolution_name, &f, &mut errors);
        let mut eports = BTreeMap::new();
        for (name, n) in &e.ports {
            check_port_name(name, &format!("{f}.ports.{name}"), &mut errors);
            if !port_names.contains(name) {
                errors.push(FieldError::new(
                    format!("{f}.ports.{name}"),
                    format!("endpoint port {name:?} is not defined by the service entry"),
                ));
            }
            if let Some(p) = port_number(i64::from(*n), &format!("{f}.ports.{name}"), &mut errors) {
                eports.insert(name.clone(), p);
            }
        }
        endpoints.push(Endpoint {
            address: e.address.clone().unwrap_or_default(),
            ports: eports,
            labels: e.labels.clone(),
            weight: count(e.weight, &format!("{f}.weight"), &mut errors),
            has_sidecar: workload_entry_has_sidecar(&e.labels, e.service_account.as_deref()),
        });
    }
    // A STATIC entry without endpoints or selector is valid to istiod: a service with no
    // endpoints yet.
    if !errors.is_empty() {
        return Err(errors);
    }
    let services = se
        .spec
        .hosts
        .iter()
        .map(|h| Service {
            hostname: h.clone(),
            name: h.clone(),
            namespace: ns.to_string(),
            ports: ports.clone(),
            selector: se.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
            endpoints: endpoints.clone(),
            addresses: se.spec.addresses.clone(),
            resolution,
            mesh_external,
            export_to: se.spec.export_to.clone(),
            source: doc.meta.resource_ref(),
        })
        .collect();
    Ok(ServiceEntryResource(services))
}

fn is_ip_or_cidr(a: &str) -> bool {
    match a.split_once('/') {
        None => is_ip(a),
        Some((ip, bits)) => {
            let max = if ip.contains(':') { 128 } else { 32 };
            is_ip(ip) && bits.parse::<u8>().is_ok_and(|b| b <= max)
        }
    }
}

/// istiod's per-resolution rules (ValidateServiceEntry): DNS without endpoints resolves the
/// hosts, so they are FQDNs; DYNAMIC_DNS takes wildcard hosts only, no addresses or endpoints,
/// HTTP/TLS/gRPC/HTTP2 ports; several hosts need HTTP or TLS ports unless resolution is NONE.
fn resolution_rules(spec: &api::ServiceEntrySpec, resolution: &str, errors: &mut Vec<FieldError>) {
    if matches!(resolution, "DNS" | "DNS_ROUND_ROBIN")
        && spec.endpoints.is_empty()
        && let Some((i, e)) = spec
            .hosts
            .iter()
            .enumerate()
            .find_map(|(i, h)| check_fqdn(h).err().map(|e| (i, e)))
    {
        errors.push(FieldError::new(
            format!("spec.hosts[{i}]"),
            format!(
                "hosts must be FQDN if no endpoints are provided for resolution mode {resolution}: {e}"
            ),
        ));
    }
    if resolution == "DYNAMIC_DNS" {
        for (i, h) in spec.hosts.iter().enumerate() {
            if !h.starts_with('*') {
                errors.push(FieldError::new(
                    format!("spec.hosts[{i}]"),
                    "host must be wildcarded for resolution mode DYNAMIC_DNS",
                ));
            }
        }
        if !spec.addresses.is_empty() {
            errors.push(FieldError::new(
                "spec.addresses",
                "addresses cannot be set for resolution type DYNAMIC_DNS",
            ));
        }
        if !spec.endpoints.is_empty() {
            errors.push(FieldError::new(
                "spec.endpoints",
                "endpoints cannot be set for resolution type DYNAMIC_DNS",
            ));
        }
        for (i, p) in spec.ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("").to_ascii_lowercase();
            if !matches!(proto.as_str(), "http" | "tls" | "grpc" | "http2") {
                errors.push(FieldError::new(
                    format!("spec.ports[{i}].protocol"),
                    "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS",
                ));
            }
        }
    }
    if resolution != "NONE" && spec.hosts.len() > 1 {
        // Istio's protocol.IsHTTP / IsTLS.
        let http_or_tls = |p: &str| {
            matches!(
                p.to_ascii_lowercase().as_str(),
                "http" | "http2" | "grpc" | "grpc-web" | "https" | "tls"
            )
        };
        if let Some(i) = spec
            .ports
            .iter()
            .position(|p| !http_or_tls(p.protocol.as_deref().unwrap_or("")))
        {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].protocol"),
                "multiple hosts provided with non-HTTP, non-TLS ports",
            ));
        }
    }
}

/// istiod's validateWorkloadEntry for inline endpoints: an address unless a network is named;
/// `unix://` sockets as absolute paths without ports; with STATIC an IP, with DNS an IP or FQDN.
fn endpoint_address(
    e: &api::WorkloadEntrySpec,
    resolution: &str,
    f: &str,
    errors: &mut Vec<FieldError>,
) {
    let field = format!("{f}.address");
    let addr = e.address.as_deref().unwrap_or("");
    if addr.is_empty() {
        if e.network.as_deref().unwrap_or("").is_empty() || resolution != "STATIC" {
            errors.push(FieldError::new(field, "address is required"));
        }
        return;
    }
    if resolution == "STATIC"
        && let Some(path) = addr.strip_prefix("unix://")
    {
        if let Err(msg) = check_unix_address(path) {
            errors.push(FieldError::new(field, msg));
        }
        if !e.ports.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.ports"),
                format!("unix endpoint {addr} must not include ports"),
            ));
        }
        return;
    }
    if is_ip(addr) {
        return;
    }
    if resolution == "STATIC" {
        errors.push(FieldError::new(
            field,
            format!("endpoint address {addr:?} is not a valid IP address"),
        ));
    } else if check_fqdn(addr).is_err() {
        errors.push(FieldError::new(
            field,
            format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
        ));
    }
}

impl MeshResource for ServiceEntryResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        for s in &self.0 {
            model
                .services
                .entry(s.hostname.clone())
                .or_insert_with(|| s.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::error_lines;

    fn se(spec: &str) -> Vec<String> {
        error_lines(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: e\nspec:\n{spec}"
        ))
    }

    fn rejected(spec: &str, field: &str) {
        let errors = se(spec);
        assert!(
            errors.iter().any(|e| e.starts_with(field)),
            "expected an error on {field}, got {errors:?}"
        );
    }

    const PORTS: &str = "  ports: [{number: 80, name: http, protocol: HTTP}]\n";

    /// ValidateServiceEntry has no "STATIC needs endpoints" rule.
    #[test]
    fn static_without_endpoints_is_accepted() {
        let errors = se(&format!(
            "  hosts: [vm.example.com]\n  resolution: STATIC\n{PORTS}"
        ));
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// ValidateServiceEntry: DYNAMIC_DNS takes wildcard hosts, no addresses, HTTP-ish ports.
    #[test]
    fn dynamic_dns_is_accepted_with_its_rules() {
        let errors = se(&format!(
            "  hosts: ['*.example.com']\n  resolution: DYNAMIC_DNS\n{PORTS}"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        rejected(
            &format!("  hosts: [a.example.com]\n  resolution: DYNAMIC_DNS\n{PORTS}"),
            "spec.hosts[0]",
        );
    }

    /// ValidatePortName / ValidateProtocol / ValidateIPSubnet; targetPort 0 is unset.
    #[test]
    fn ports_and_addresses() {
        rejected(
            "  hosts: [a.example.com]\n  ports: [{number: 80, name: ''}]\n",
            "spec.ports[0].name",
        );
        rejected(
            "  hosts: [a.example.com]\n  ports: [{number: 80, name: web, protocol: QUIC}]\n",
            "spec.ports[0].protocol",
        );
        rejected(
            &format!("  hosts: [a.example.com]\n  addresses: [not-an-ip]\n{PORTS}"),
            "spec.addresses[0]",
        );
        let errors = se(
            "  hosts: [a.example.com]\n  addresses: [10.0.0.0/8]\n  ports: [{number: 80, name: http, targetPort: 0}]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// validateWorkloadEntry on STATIC endpoints: IP addresses, ports named by the entry.
    #[test]
    fn static_endpoints() {
        let base = format!("  hosts: [a.example.com]\n  resolution: STATIC\n{PORTS}");
        rejected(
            &format!("{base}  endpoints: [{{address: vm.example.com}}]\n"),
            "spec.endpoints[0].address",
        );
        rejected(
            &format!("{base}  endpoints: [{{address: 10.0.0.1, ports: {{grpc: 8080}}}}]\n"),
            "spec.endpoints[0].ports.grpc",
        );
        let errors = se(&format!(
            "{base}  endpoints: [{{address: 10.0.0.1, ports: {{http: 8080}}}}]\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// ValidateServiceEntry: DNS without endpoints needs FQDN hosts; several hosts need
    /// HTTP/TLS ports.
    #[test]
    fn dns_rules() {
        rejected(
            &format!("  hosts: ['*.example.com']\n  resolution: DNS\n{PORTS}"),
            "spec.hosts[0]",
        );
        rejected(
            "  hosts: [a.example.com, b.example.com]\n  resolution: DNS\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n",
            "spec.ports[0].protocol",
        );
    }
}
