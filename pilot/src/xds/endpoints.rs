//! EDS: the endpoints of each EDS cluster — the workloads a service selects (filtered by
//! subset labels for subset clusters) and a ServiceEntry's listed endpoints — at the port the
//! workload actually listens on.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Locality, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use mast_mesh_config::model::{
    Labels, MeshModel, Service, ServicePort, TargetPort, Workload, labels_match,
};

use super::clusters::is_eds;
use super::outbound_cluster_name;
use crate::ads::{ENDPOINT_TYPE, ProxyResources, Resource};

pub fn outbound(model: &MeshModel, services: &[&Service], out: &mut ProxyResources) {
    for svc in services.iter().filter(|s| is_eds(s)) {
        let subsets = model
            .destination_policies
            .get(&svc.hostname)
            .map(|d| d.subsets.as_slice())
            .unwrap_or_default();
        for port in &svc.ports {
            let all = endpoints_of(model, svc, port, &Labels::new());
            insert(out, outbound_cluster_name(port.port, None, &svc.hostname), all);
            for subset in subsets {
                let eps = endpoints_of(model, svc, port, &subset.labels);
                insert(
                    out,
                    outbound_cluster_name(port.port, Some(&subset.name), &svc.hostname),
                    eps,
                );
            }
        }
    }
}

fn insert(out: &mut ProxyResources, name: String, endpoints: Vec<LbEndpoint>) {
    let cla = ClusterLoadAssignment {
        cluster_name: name.clone(),
        endpoints: if endpoints.is_empty() {
            Vec::new()
        } else {
            vec![locality(endpoints)]
        },
        ..Default::default()
    };
    out.insert(ENDPOINT_TYPE, Resource::new(name, ENDPOINT_TYPE, &cla));
}

/// The endpoints of `svc` on `port` whose labels match `subset`.
fn endpoints_of(model: &MeshModel, svc: &Service, port: &ServicePort, subset: &Labels) -> Vec<LbEndpoint> {
    let mut out = Vec::new();
    for w in model.selected_workloads(svc) {
        if !labels_match(subset, &w.labels) {
            continue;
        }
        if let Some(p) = workload_port(w, port) {
            out.push(lb_endpoint(&w.address, p, w.weight));
        }
    }
    for e in &svc.endpoints {
        if !labels_match(subset, &e.labels) {
            continue;
        }
        let p = e
            .ports
            .get(&port.name)
            .copied()
            .or(match &port.target_port {
                Some(TargetPort::Number(n)) => Some(*n),
                _ => None,
            })
            .unwrap_or(port.port);
        out.push(lb_endpoint(&e.address, p, e.weight));
    }
    out
}

/// Where a workload serves a service port: a WorkloadEntry's port of the same name (Istio's
/// rule), else the numeric target port, else the named target port through the workload's
/// named ports, else the service port itself.
pub fn workload_port(w: &Workload, port: &ServicePort) -> Option<u16> {
    if let Some(p) = w.ports.get(&port.name) {
        return Some(*p);
    }
    match &port.target_port {
        Some(TargetPort::Number(n)) => Some(*n),
        Some(TargetPort::Name(name)) => w.ports.get(name).copied(),
        None => Some(port.port),
    }
}

/// A DNS-resolved cluster's inline endpoints (ServiceEntry `resolution: DNS`).
pub fn dns_assignment(name: &str, svc: &Service, port: &ServicePort) -> ClusterLoadAssignment {
    let mut eps: Vec<LbEndpoint> = svc
        .endpoints
        .iter()
        .map(|e| lb_endpoint(&e.address, e.ports.get(&port.name).copied().unwrap_or(port.port), e.weight))
        .collect();
    if eps.is_empty() {
        eps.push(lb_endpoint(&svc.hostname, port.port, None));
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![locality(eps)],
        ..Default::default()
    }
}

pub fn locality(lb_endpoints: Vec<LbEndpoint>) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(Locality::default()),
        lb_endpoints,
        ..Default::default()
    }
}

pub fn socket_address(address: &str, port: u16) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub fn lb_endpoint(address: &str, port: u16, weight: Option<u32>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(address, port)),
            ..Default::default()
        })),
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        ..Default::default()
    }
}
