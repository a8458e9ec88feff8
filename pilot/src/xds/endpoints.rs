//! EDS: the endpoints of each EDS cluster — the workloads a service selects (filtered by
//! subset labels for subset clusters) and a ServiceEntry's listed endpoints — at the port the
//! workload actually listens on, grouped by locality so Envoy's locality-aware balancing can
//! use it. Also the inline endpoint lists of STATIC and DNS clusters, which share the shapes.
//!
//! A workload's endpoint also carries Istio's telemetry metadata, `istio.workload`
//! (`<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>`), as istiod
//! writes it: a client sidecar names the server in its metrics from the endpoint it picked
//! when no metadata exchange happens (TCP, a server without a sidecar, a failed request).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Locality, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use mast_mesh_config::model::{
    Endpoint, Labels, MeshModel, Service, ServicePort, TargetPort, Workload, labels_match,
};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::Struct;

use super::clusters::is_eds;
use super::mtls::SOCKET_MATCH_KEY;
use super::node::DEFAULT_CLUSTER_ID;
use super::{outbound_cluster_name, string_value};

/// One `ClusterLoadAssignment` per EDS cluster of `services` (every port, every subset), named
/// as the cluster's `eds_cluster_config.service_name` — which is the cluster name.
pub fn outbound(model: &MeshModel, services: &[&Service]) -> Vec<ClusterLoadAssignment> {
    let mut out = Vec::new();
    for svc in services.iter().filter(|s| is_eds(s)) {
        let subsets = model
            .destination_policies
            .get(&svc.hostname)
            .map(|d| d.subsets.as_slice())
            .unwrap_or_default();
        for port in &svc.ports {
            let name = outbound_cluster_name(port.port, None, &svc.hostname);
            out.push(assignment(
                name,
                endpoints_of(model, svc, port, &Labels::new()),
            ));
            for subset in subsets {
                let name = outbound_cluster_name(port.port, Some(&subset.name), &svc.hostname);
                out.push(assignment(
                    name,
                    endpoints_of(model, svc, port, &subset.labels),
                ));
            }
        }
    }
    out
}

/// An endpoint before it is grouped: address, port, weight and locality.
struct Ep<'a> {
    address: &'a str,
    port: u16,
    weight: Option<u32>,
    locality: Option<&'a str>,
    /// It has a sidecar: auto mTLS applies (`tlsMode: istio`).
    sidecar: bool,
    /// The workload behind it, for the `istio.workload` telemetry metadata.
    workload: Option<&'a Workload>,
}

fn assignment(cluster_name: String, eps: Vec<Ep<'_>>) -> ClusterLoadAssignment {
    // Grouped by locality in a BTreeMap so the output is the same whatever the model order of
    // workloads in different localities.
    let mut by_locality: BTreeMap<Option<&str>, Vec<LbEndpoint>> = BTreeMap::new();
    for e in eps {
        by_locality
            .entry(e.locality)
            .or_default()
            .push(lb_endpoint(&e));
    }
    ClusterLoadAssignment {
        cluster_name,
        endpoints: by_locality
            .into_iter()
            .map(|(loc, eps)| LocalityLbEndpoints {
                locality: Some(locality(loc)),
                lb_endpoints: eps,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// `region/zone/subzone`, as Istio writes localities (`istio-locality` label, topology labels).
fn locality(s: Option<&str>) -> Locality {
    let mut parts = s.unwrap_or_default().splitn(3, '/');
    let mut next = || parts.next().unwrap_or_default().to_string();
    Locality {
        region: next(),
        zone: next(),
        sub_zone: next(),
    }
}

/// The endpoints of `svc` on `port` whose labels match `subset`.
fn endpoints_of<'a>(
    model: &'a MeshModel,
    svc: &'a Service,
    port: &ServicePort,
    subset: &Labels,
) -> Vec<Ep<'a>> {
    let mut out = Vec::new();
    for w in model.selected_workloads(svc) {
        if !labels_match(subset, &w.labels) {
            continue;
        }
        if let Some(p) = workload_port(w, port) {
            out.push(Ep {
                address: &w.address,
                port: p,
                weight: w.weight,
                locality: w.locality.as_deref(),
                sidecar: w.has_sidecar,
                workload: Some(w),
            });
        }
    }
    for e in &svc.endpoints {
        if labels_match(subset, &e.labels) {
            out.push(Ep {
                address: &e.address,
                port: entry_endpoint_port(e, port),
                weight: e.weight,
                locality: None,
                sidecar: e.has_sidecar,
                workload: None,
            });
        }
    }
    out
}

/// Where a workload serves a service port: a WorkloadEntry's port of the same name (Istio's
/// rule), else the numeric target port, else the named target port through the workload's
/// named ports, else the service port itself. `None` when a named target port is missing on
/// the workload: it doesn't serve this port.
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

/// A ServiceEntry endpoint's port: its own override by port name, else the target port, else
/// the service port.
fn entry_endpoint_port(e: &Endpoint, port: &ServicePort) -> u16 {
    e.ports
        .get(&port.name)
        .copied()
        .or(match &port.target_port {
            Some(TargetPort::Number(n)) => Some(*n),
            _ => None,
        })
        .unwrap_or(port.port)
}

/// A DNS-resolved cluster's inline endpoints (ServiceEntry `resolution: DNS`): the listed
/// endpoints matching the subset, or the hostname itself when none are listed.
pub fn dns_assignment(
    name: &str,
    svc: &Service,
    port: &ServicePort,
    subset: &Labels,
) -> ClusterLoadAssignment {
    let mut eps: Vec<Ep<'_>> = svc
        .endpoints
        .iter()
        .filter(|e| labels_match(subset, &e.labels))
        .map(|e| Ep {
            address: &e.address,
            port: entry_endpoint_port(e, port),
            weight: e.weight,
            locality: None,
            sidecar: e.has_sidecar,
            workload: None,
        })
        .collect();
    if svc.endpoints.is_empty() {
        eps.push(Ep {
            address: &svc.hostname,
            port: port.port,
            weight: None,
            locality: None,
            sidecar: false,
            workload: None,
        });
    }
    assignment(name.to_string(), eps)
}

/// A STATIC cluster's single endpoint.
pub fn static_assignment(name: &str, address: &str, port: u16) -> ClusterLoadAssignment {
    assignment(
        name.to_string(),
        vec![Ep {
            address,
            port,
            weight: None,
            locality: None,
            sidecar: false,
            workload: None,
        }],
    )
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

/// The two endpoint metadata namespaces, laid out once. Every endpoint's map is a clone of
/// this one (which keeps its hasher and layout), so all of them list their keys in one order
/// and an endpoint encodes to the same bytes every time it is generated: versions and the
/// cache compare bytes.
static METADATA_LAYOUT: LazyLock<HashMap<String, Struct>> = LazyLock::new(|| {
    [SOCKET_MATCH_KEY, "istio"]
        .into_iter()
        .map(|k| (k.to_string(), Struct::default()))
        .collect()
});

fn lb_endpoint(e: &Ep<'_>) -> LbEndpoint {
    let mut filter_metadata = METADATA_LAYOUT.clone();
    match filter_metadata.get_mut(SOCKET_MATCH_KEY) {
        Some(s) if e.sidecar => {
            s.fields = [("tlsMode".to_string(), string_value("istio"))]
                .into_iter()
                .collect();
        }
        _ => {
            filter_metadata.remove(SOCKET_MATCH_KEY);
        }
    }
    match (filter_metadata.get_mut("istio"), e.workload) {
        (Some(s), Some(w)) => {
            s.fields = [("workload".to_string(), string_value(&telemetry_workload(w)))]
                .into_iter()
                .collect();
        }
        _ => {
            filter_metadata.remove("istio");
        }
    }
    LbEndpoint {
        metadata: (!filter_metadata.is_empty()).then(|| Metadata {
            filter_metadata,
            ..Default::default()
        }),
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(e.address, e.port)),
            ..Default::default()
        })),
        // Envoy rejects weight 0; the model's 0 means "unset" here as in Istio.
        load_balancing_weight: e
            .weight
            .filter(|w| *w > 0)
            .map(|value| UInt32Value { value }),
        ..Default::default()
    }
}

/// Istio's compact endpoint telemetry metadata:
/// `<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>`. The canonical
/// names follow Istio's precedence (`service.istio.io/canonical-name`,
/// `app.kubernetes.io/name`, `app`, else the workload; `service.istio.io/canonical-revision`,
/// `app.kubernetes.io/version`, `version`, else `latest`), and a `latest` revision is left
/// empty as istiod leaves it (the reader puts it back).
pub fn telemetry_workload(w: &Workload) -> String {
    let name = workload_name(w);
    let label = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| w.labels.get(*k).filter(|v| !v.is_empty()))
            .cloned()
    };
    let service = label(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| name.clone());
    let revision = label(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .filter(|r| r != "latest")
    .unwrap_or_default();
    format!(
        "{name};{};{service};{revision};{DEFAULT_CLUSTER_ID}",
        w.namespace
    )
}

/// The name metrics give a workload: a Deployment's pod (`pod-template-hash` label) is named
/// by its Deployment (`reviews-v1-5d8f7c9b4-x2x9z` → `reviews-v1`), as Istio names it from the
/// pod's owner; a WorkloadEntry or a bare pod by itself.
fn workload_name(w: &Workload) -> String {
    if let Some(hash) = w.labels.get("pod-template-hash")
        && let Some((rest, _suffix)) = w.name.rsplit_once('-')
        && let Some(deployment) = rest.strip_suffix(&format!("-{hash}"))
        && !deployment.is_empty()
    {
        return deployment.to_string();
    }
    w.name.clone()
}

#[cfg(test)]
mod tests {
    use mast_mesh_config::model::{Protocol, Resolution, ResourceRef};

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn workload(name: &str, version: &str, locality: Option<&str>) -> Workload {
        Workload {
            name: name.into(),
            namespace: "default".into(),
            address: format!("10.0.0.{}", name.len()),
            labels: labels(&[("app", "api"), ("version", version)]),
            ports: [("web".to_string(), 8000)].into(),
            service_account: "api".into(),
            weight: Some(3),
            locality: locality.map(String::from),
            network: None,
            has_sidecar: true,
            source: ResourceRef::default(),
        }
    }

    fn service(target: Option<TargetPort>) -> Service {
        Service {
            hostname: "api.default.svc.cluster.local".into(),
            name: "api".into(),
            namespace: "default".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                target_port: target,
                protocol: Protocol::Http,
            }],
            selector: Some(labels(&[("app", "api")])),
            endpoints: vec![Endpoint {
                address: "192.168.1.9".into(),
                ports: [("http".to_string(), 9999)].into(),
                labels: labels(&[("version", "v1")]),
                weight: None,
                has_sidecar: false,
            }],
            addresses: vec![],
            resolution: Resolution::Static,
            mesh_external: false,
            export_to: vec![],
            source: ResourceRef::default(),
        }
    }

    fn flat(cla: &ClusterLoadAssignment) -> Vec<(String, u32, Option<u32>, String)> {
        cla.endpoints
            .iter()
            .flat_map(|l| {
                let zone = l.locality.clone().unwrap_or_default().zone;
                l.lb_endpoints.iter().map(move |e| {
                    let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                        panic!("not an endpoint")
                    };
                    let Some(AddressKind::SocketAddress(sa)) =
                        &ep.address.as_ref().unwrap().address
                    else {
                        panic!("not a socket address")
                    };
                    let Some(PortSpecifier::PortValue(p)) = sa.port_specifier else {
                        panic!("no port")
                    };
                    (
                        sa.address.clone(),
                        p,
                        e.load_balancing_weight.map(|w| w.value),
                        zone.clone(),
                    )
                })
            })
            .collect()
    }

    /// A Service without a selector, read with its EndpointSlice (as the Kubernetes source
    /// hands them over), gets the slice's ready endpoints on the slice's port.
    #[test]
    fn endpoint_slices_feed_a_selectorless_service() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec:\n  ports:\n  - {name: tcp-pg, port: 5432}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  namespace: shop\n  labels: {kubernetes.io/service-name: db}\naddressType: IPv4\nports:\n- {name: tcp-pg, port: 6432}\nendpoints:\n- addresses: [192.168.10.5]\n- addresses: [192.168.10.6]\n  conditions: {ready: false}\n";
        let mut store = mast_mesh_config::store::ConfigStore::default();
        let report = store.apply_files([("kube.yaml".into(), yaml.to_string())].into());
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let model = store.model();
        let svc = &model.services["db.shop.svc.cluster.local"];
        let cla = &outbound(&model, &[svc])[0];
        assert_eq!(cla.cluster_name, "outbound|5432||db.shop.svc.cluster.local");
        assert_eq!(
            flat(cla),
            [("192.168.10.5".to_string(), 6432, None, String::new())]
        );
    }

    #[test]
    fn named_target_port_resolves_through_workload_ports() {
        let mut m = MeshModel::default();
        m.workloads.push(workload("a", "v1", Some("r1/z1")));
        let svc = service(Some(TargetPort::Name("web".into())));
        let cla = &outbound(&m, &[&svc])[0];
        assert_eq!(
            cla.cluster_name,
            "outbound|80||api.default.svc.cluster.local"
        );
        assert_eq!(
            flat(cla),
            [
                ("192.168.1.9".to_string(), 9999, None, String::new()),
                ("10.0.0.1".to_string(), 8000, Some(3), "z1".to_string()),
            ]
        );
        // A numeric target port wins over nothing; the service port is the last resort.
        let svc = service(Some(TargetPort::Number(7070)));
        assert_eq!(flat(&outbound(&m, &[&svc])[0])[1].1, 7070);
        let svc = service(None);
        assert_eq!(flat(&outbound(&m, &[&svc])[0])[1].1, 80);
    }

    #[test]
    fn locality_groups_and_parts() {
        let l = locality(Some("us-east1/us-east1-b/rack7"));
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()),
            ("us-east1", "us-east1-b", "rack7")
        );
        let mut m = MeshModel::default();
        m.workloads.push(workload("bb", "v1", Some("r/z2")));
        m.workloads.push(workload("a", "v1", Some("r/z1")));
        m.workloads.push(workload("ccc", "v1", Some("r/z2")));
        let svc = service(None);
        let cla = &outbound(&m, &[&svc])[0];
        let zones: Vec<(&str, usize)> = cla
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().zone.as_str(),
                    l.lb_endpoints.len(),
                )
            })
            .collect();
        assert_eq!(zones, [("", 1), ("z1", 1), ("z2", 2)]);
    }

    #[test]
    fn dns_subset_filters_listed_endpoints() {
        let svc = service(None);
        let cla = dns_assignment("x", &svc, &svc.ports[0], &labels(&[("version", "v2")]));
        assert!(flat(&cla).is_empty());
        let cla = dns_assignment("x", &svc, &svc.ports[0], &Labels::new());
        assert_eq!(flat(&cla)[0].1, 9999);
    }

    fn istio_workload(e: &LbEndpoint) -> Option<String> {
        let v = e
            .metadata
            .as_ref()?
            .filter_metadata
            .get("istio")?
            .fields
            .get("workload")?;
        match &v.kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// A workload's endpoint names it for the client's telemetry, as istiod does; a
    /// ServiceEntry's listed endpoint has no workload and carries none.
    #[test]
    fn workload_endpoints_carry_istio_telemetry_metadata() {
        let mut m = MeshModel::default();
        m.workloads.push(workload("a", "v1", None));
        let svc = service(None);
        let cla = &outbound(&m, &[&svc])[0];
        let eps: Vec<&LbEndpoint> = cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).collect();
        let by_addr = |a: &str| {
            eps.iter()
                .find(|e| flat_one(e).0 == a)
                .copied()
                .expect("endpoint")
        };
        assert_eq!(
            istio_workload(by_addr("10.0.0.1")).as_deref(),
            Some("a;default;api;v1;Kubernetes")
        );
        // The sidecar's tlsMode stays beside it.
        assert!(
            by_addr("10.0.0.1")
                .metadata
                .as_ref()
                .unwrap()
                .filter_metadata[SOCKET_MATCH_KEY]
                .fields
                .contains_key("tlsMode")
        );
        assert_eq!(istio_workload(by_addr("192.168.1.9")), None);
        assert!(by_addr("192.168.1.9").metadata.is_none());

        // Canonical labels win; `latest` is left out; a Deployment's pod is its Deployment.
        let mut w = workload("reviews-v2-5d8f7c9b4-x2x9z", "latest", None);
        w.labels
            .insert("pod-template-hash".into(), "5d8f7c9b4".into());
        w.labels
            .insert("service.istio.io/canonical-name".into(), "reviews".into());
        assert_eq!(
            telemetry_workload(&w),
            "reviews-v2;default;reviews;;Kubernetes"
        );
        let mut w = workload("batch", "v1", None);
        w.labels.clear();
        assert_eq!(telemetry_workload(&w), "batch;default;batch;;Kubernetes");
    }

    fn flat_one(e: &LbEndpoint) -> (String, u32) {
        let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            panic!("not an endpoint")
        };
        let Some(AddressKind::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address else {
            panic!("not a socket address")
        };
        let Some(PortSpecifier::PortValue(p)) = sa.port_specifier else {
            panic!("no port")
        };
        (sa.address.clone(), p)
    }
}
