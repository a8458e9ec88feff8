//! Kubernetes core resources: Service, Namespace and Pod.
//!
//! A Service gives a hostname and ports to the workloads its selector picks; the port's
//! application protocol is inferred as Istio does (`appProtocol`, else the port name's
//! prefix: `http-web`, `grpc`, …), because it decides whether traffic is routed at L7.
//! Other core kinds (Deployment, ServiceAccount, ConfigMap, …) are none of the mesh's business
//! and are ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{Document, FieldError, MeshResource, Meta, ParseResult, deserialize};
use crate::model::{
    Labels, MeshModel, Namespace, Protocol, Resolution, Service, ServicePort, TargetPort, Workload,
    service_fqdn,
};

pub fn parse(doc: &Document<'_>) -> ParseResult {
    if doc.meta.api_version != "v1" {
        return None;
    }
    Some(match doc.meta.kind.as_str() {
        "Service" => parse_service(doc).map(|s| Box::new(s) as Box<dyn MeshResource>),
        "Namespace" => Ok(Box::new(NamespaceResource) as Box<dyn MeshResource>),
        "Pod" => parse_pod(doc).map(|p| Box::new(p) as Box<dyn MeshResource>),
        _ => return None,
    })
}

// === Service ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceDoc {
    #[serde(default)]
    spec: ServiceSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(default)]
    selector: Option<Labels>,
    #[serde(default)]
    ports: Vec<KubePort>,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default, rename = "type")]
    service_type: Option<String>,
    #[serde(default)]
    external_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubePort {
    #[serde(default)]
    name: Option<String>,
    port: i64,
    #[serde(default)]
    target_port: Option<IntOrString>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    app_protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    String(String),
}

#[derive(Debug)]
struct ServiceResource(Service);

fn parse_service(doc: &Document<'_>) -> Result<ServiceResource, Vec<FieldError>> {
    let parsed: ServiceDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    check_dns_label(&doc.meta.name, "metadata.name", &mut errors);
    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in parsed.spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(port) = port_number(p.port, &format!("{field}.port"), &mut errors) else {
            continue;
        };
        let name = p.name.clone().unwrap_or_default();
        if parsed.spec.ports.len() > 1 && name.is_empty() {
            errors.push(FieldError::new(
                format!("{field}.name"),
                "required when a Service has more than one port",
            ));
        }
        if !name.is_empty() && !names.insert(name.clone()) {
            errors.push(FieldError::new(
                format!("{field}.name"),
                format!("duplicate port name {name:?}"),
            ));
        }
        let l4 = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if !numbers.insert((port, l4.clone())) {
            errors.push(FieldError::new(
                format!("{field}.port"),
                format!("duplicate port {port}/{l4}"),
            ));
        }
        let target_port = match &p.target_port {
            None => None,
            Some(IntOrString::Int(n)) => {
                port_number(*n, &format!("{field}.targetPort"), &mut errors).map(TargetPort::Number)
            }
            Some(IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => port_number(n, &format!("{field}.targetPort"), &mut errors)
                    .map(TargetPort::Number),
                Err(_) => Some(TargetPort::Name(s.clone())),
            },
        };
        ports.push(ServicePort {
            protocol: infer_protocol(p.app_protocol.as_deref(), &name, &l4),
            name,
            port,
            target_port,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let external = parsed.spec.service_type.as_deref() == Some("ExternalName");
    let mut addresses = Vec::new();
    if let Some(ip) = parsed
        .spec
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
    {
        addresses.push(ip);
    }
    let meta = &doc.meta;
    Ok(ServiceResource(Service {
        hostname: service_fqdn(&meta.name, &meta.namespace),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        ports,
        selector: if external { None } else { parsed.spec.selector },
        endpoints: parsed
            .spec
            .external_name
            .filter(|_| external)
            .map(|host| {
                vec![crate::model::Endpoint {
                    address: host,
                    ports: BTreeMap::new(),
                    labels: Labels::new(),
                    weight: None,
                }]
            })
            .unwrap_or_default(),
        addresses,
        resolution: if external {
            Resolution::Dns
        } else {
            Resolution::Static
        },
        mesh_external: external,
        export_to: meta
            .annotations
            .get("networking.istio.io/exportTo")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default(),
        source: meta.resource_ref(),
    }))
}

impl MeshResource for ServiceResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model
            .services
            .insert(self.0.hostname.clone(), self.0.clone());
    }
}

/// Istio's protocol selection: `appProtocol`, then the port name (`<proto>` or
/// `<proto>-<suffix>`), else unknown (sniffed). UDP/SCTP ports are plain TCP to the mesh.
pub fn infer_protocol(app_protocol: Option<&str>, port_name: &str, l4: &str) -> Protocol {
    if l4 != "TCP" {
        return Protocol::Tcp;
    }
    let from = |s: &str| match s.to_ascii_lowercase().as_str() {
        "http" | "http1" | "kubernetes.io/h1" => Some(Protocol::Http),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" | "grpc-web" => Some(Protocol::Grpc),
        "https" => Some(Protocol::Https),
        "tls" => Some(Protocol::Tls),
        "tcp" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
        _ => None,
    };
    if let Some(p) = app_protocol.and_then(from) {
        return p;
    }
    let prefix = port_name.split('-').next().unwrap_or("");
    if port_name.starts_with("grpc-web") {
        return Protocol::Grpc;
    }
    from(prefix).unwrap_or(Protocol::Unknown)
}

// === Namespace ===

#[derive(Debug)]
struct NamespaceResource;

impl MeshResource for NamespaceResource {
    fn translate(&self, meta: &Meta, model: &mut MeshModel) {
        model.namespaces.insert(
            meta.name.clone(),
            Namespace {
                name: meta.name.clone(),
                labels: meta.labels.clone(),
            },
        );
    }
}

// === Pod ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodDoc {
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    service_account_name: Option<String>,
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    ports: Vec<ContainerPort>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    #[serde(default)]
    name: Option<String>,
    container_port: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
}

/// A Pod is a workload once it has an IP (a pod in a static file usually has none yet, and
/// is ignored until it does).
#[derive(Debug)]
struct PodResource(Option<Workload>);

fn parse_pod(doc: &Document<'_>) -> Result<PodResource, Vec<FieldError>> {
    let pod: PodDoc = deserialize(doc).map_err(|e| vec![e])?;
    let Some(ip) = pod.status.pod_ip.filter(|ip| !ip.is_empty()) else {
        return Ok(PodResource(None));
    };
    let mut ports = BTreeMap::new();
    let mut errors = Vec::new();
    for (ci, c) in pod.spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}].containerPort");
            if let (Some(name), Some(port)) =
                (&p.name, port_number(p.container_port, &field, &mut errors))
            {
                ports.insert(name.clone(), port);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let meta = &doc.meta;
    let has_sidecar = meta.annotations.contains_key("sidecar.istio.io/status")
        || meta
            .labels
            .get("security.istio.io/tlsMode")
            .map(String::as_str)
            == Some("istio");
    Ok(PodResource(Some(Workload {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        address: ip,
        labels: meta.labels.clone(),
        ports,
        service_account: pod
            .spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        weight: None,
        locality: None,
        network: None,
        has_sidecar,
        source: meta.resource_ref(),
    })))
}

impl MeshResource for PodResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        if let Some(w) = &self.0 {
            model.workloads.push(w.clone());
        }
    }
}

// === helpers shared with other dialects ===

/// A TCP/UDP port number, or an error at `field`.
pub(crate) fn port_number(n: i64, field: &str, errors: &mut Vec<FieldError>) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errors.push(FieldError::new(
                field,
                format!("port {n} is not in 1-65535"),
            ));
            None
        }
    }
}

/// A DNS-1123 label (service names, port names of the mesh's own kinds).
pub(crate) fn check_dns_label(name: &str, field: &str, errors: &mut Vec<FieldError>) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        errors.push(FieldError::new(
            field,
            format!(
                "{name:?} is not a DNS-1123 label (lower-case letters, digits and '-', at most 63)"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_inference_follows_istio() {
        assert_eq!(infer_protocol(None, "http", "TCP"), Protocol::Http);
        assert_eq!(infer_protocol(None, "http-web", "TCP"), Protocol::Http);
        assert_eq!(infer_protocol(None, "grpc-api", "TCP"), Protocol::Grpc);
        assert_eq!(infer_protocol(None, "web", "TCP"), Protocol::Unknown);
        assert_eq!(infer_protocol(Some("http2"), "web", "TCP"), Protocol::Http2);
        assert_eq!(
            infer_protocol(Some("kubernetes.io/h2c"), "", "TCP"),
            Protocol::Http2
        );
        assert_eq!(infer_protocol(None, "http", "UDP"), Protocol::Tcp);
        assert_eq!(infer_protocol(None, "httpx", "TCP"), Protocol::Unknown);
    }
}
