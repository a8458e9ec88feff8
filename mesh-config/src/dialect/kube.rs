//! Kubernetes core resources: Service, Namespace, Pod, and EndpointSlice
//! (`discovery.k8s.io/v1`).
//!
//! A Service gives a hostname and ports to the workloads its selector picks; the port's
//! application protocol is inferred as Istio does (`appProtocol`, else the port name's
//! prefix: `http-web`, `grpc`, …), because it decides whether traffic is routed at L7.
//! A Service without a selector has the endpoints its EndpointSlices list (label
//! `kubernetes.io/service-name`), as in Istio: that is how a cluster names backends that are
//! no pods of its own (a database outside, another cluster). A selector's Service ignores its
//! slices, which only repeat the pods the selector already picks.
//! The ConfigMap `istio` in `istio-system` carries MeshConfig under its `mesh` key, as for
//! istiod; the settings Mast acts on are read from it by [`super::mesh_config`] (others are
//! left alone).
//! Other core kinds (Deployment, ServiceAccount, other ConfigMaps, …) are none of the mesh's
//! business and are ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{Document, FieldError, MeshResource, Meta, ParseResult, deserialize};
use crate::model::{
    Endpoint, Labels, MeshModel, MeshSettings, Namespace, Protocol, Resolution, Service,
    ServicePort, TargetPort, TlsSecret, Workload, service_fqdn,
};

/// Istio's root namespace and the ConfigMap istiod reads MeshConfig from.
pub const ROOT_NAMESPACE: &str = "istio-system";
pub const MESH_CONFIGMAP: &str = "istio";

pub fn parse(doc: &Document<'_>) -> ParseResult {
    if doc.meta.api_version == "discovery.k8s.io/v1" && doc.meta.kind == "EndpointSlice" {
        return Some(parse_endpoint_slice(doc).map(|s| Box::new(s) as Box<dyn MeshResource>));
    }
    if doc.meta.api_version != "v1" {
        return None;
    }
    Some(match doc.meta.kind.as_str() {
        "Service" => parse_service(doc).map(|s| Box::new(s) as Box<dyn MeshResource>),
        "Namespace" => Ok(Box::new(NamespaceResource) as Box<dyn MeshResource>),
        "Pod" => parse_pod(doc).map(|p| Box::new(p) as Box<dyn MeshResource>),
        "Secret" => parse_secret(doc).map(|s| Box::new(s) as Box<dyn MeshResource>),
        "ConfigMap" if doc.meta.name == MESH_CONFIGMAP && doc.meta.namespace == ROOT_NAMESPACE => {
            parse_mesh_config(doc).map(|m| Box::new(m) as Box<dyn MeshResource>)
        }
        _ => return None,
    })
}

// === Secrets (certificates a Gateway's credentialName names) ===

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretDoc {
    /// Base64 values, as the API server stores them.
    #[serde(default)]
    data: BTreeMap<String, String>,
    /// Plain values, as people write them by hand (the API server merges them into `data`).
    #[serde(default)]
    string_data: BTreeMap<String, String>,
}

/// A Secret: only its certificate keys matter to the mesh — `tls.crt`/`tls.key`/`ca.crt`
/// (type `kubernetes.io/tls`) or Istio's generic `cert`/`key`/`cacert`. Other Secrets are
/// kept out of the model.
#[derive(Debug)]
struct SecretResource(Option<TlsSecret>);

fn parse_secret(doc: &Document<'_>) -> Result<SecretResource, Vec<FieldError>> {
    use base64::Engine as _;
    let s: SecretDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &s.data {
        let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
        match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    values.insert(k.clone(), text);
                }
                Err(_) => {
                    // Binary values (keystores, say) are nothing the mesh reads.
                }
            },
            Err(e) => errors.push(FieldError::new(
                format!("data.{k}"),
                format!("not base64: {e}"),
            )),
        }
    }
    for (k, v) in &s.string_data {
        values.insert(k.clone(), v.clone());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let pick = |keys: [&str; 2]| keys.iter().find_map(|k| values.get(*k).cloned());
    let cert = pick(["tls.crt", "cert"]);
    let key = pick(["tls.key", "key"]);
    let ca = pick(["ca.crt", "cacert"]);
    if cert.is_some() != key.is_some() {
        let (missing, have) = if cert.is_some() {
            ("tls.key", "tls.crt")
        } else {
            ("tls.crt", "tls.key")
        };
        errors.push(FieldError::new(
            format!("data.{missing}"),
            format!("a certificate Secret with {have} needs {missing} (or Istio's cert/key)"),
        ));
        return Err(errors);
    }
    if cert.is_none() && ca.is_none() {
        return Ok(SecretResource(None));
    }
    Ok(SecretResource(Some(TlsSecret {
        cert,
        key,
        ca,
        source: doc.meta.resource_ref(),
    })))
}

impl MeshResource for SecretResource {
    fn translate(&self, meta: &Meta, model: &mut MeshModel) {
        if let Some(secret) = &self.0 {
            model
                .tls_secrets
                .insert((meta.namespace.clone(), meta.name.clone()), secret.clone());
        }
    }
}

// === MeshConfig (ConfigMap istio-system/istio) ===

#[derive(Debug, Default, Deserialize)]
struct ConfigMapDoc {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[derive(Debug)]
struct MeshConfigResource(MeshSettings);

fn parse_mesh_config(doc: &Document<'_>) -> Result<MeshConfigResource, Vec<FieldError>> {
    let cm: ConfigMapDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut mesh = match cm.data.get("mesh") {
        Some(text) => super::mesh_config::parse(text)?,
        None => MeshSettings::default(),
    };
    if let Some(text) = cm.data.get("meshNetworks") {
        mesh.internal_networks = super::mesh_config::parse_networks(text)?;
    }
    Ok(MeshConfigResource(mesh))
}

impl MeshResource for MeshConfigResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.mesh = self.0.clone();
    }
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
                    has_sidecar: false,
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
    // istiod reads only the label the injector puts on the pod (GetTLSModeFromEndpointLabels);
    // an injection status annotation without it is not a sidecar pilot may speak mTLS to.
    let has_sidecar = meta
        .labels
        .get(crate::model::TLS_MODE_LABEL)
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

// === EndpointSlice ===

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointSliceDoc {
    address_type: String,
    #[serde(default)]
    endpoints: Vec<SliceEndpoint>,
    /// Absent or null: no ports (the slice's endpoints serve none of the Service's ports).
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceEndpoint {
    addresses: Vec<String>,
    #[serde(default)]
    conditions: SliceConditions,
    #[serde(default)]
    target_ref: Option<TargetRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceConditions {
    /// Absent means unknown, which consumers must treat as ready (the API's documentation).
    #[serde(default)]
    ready: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetRef {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlicePort {
    /// The Service port's name ("" for a Service's only, unnamed, port).
    #[serde(default)]
    name: Option<String>,
    /// Absent: every port (the API allows it; no Service controller writes it).
    #[serde(default)]
    port: Option<i64>,
}

/// The ready endpoints of one slice, for the Service it names.
#[derive(Debug)]
struct EndpointSliceResource {
    /// `None` when the slice names no Service (it then feeds nothing).
    service: Option<String>,
    endpoints: Vec<SliceAddress>,
}

#[derive(Debug)]
struct SliceAddress {
    address: String,
    /// Service port name → the endpoint's port.
    ports: BTreeMap<String, u16>,
    /// The Pod behind it (`targetRef`), whose labels and sidecar the endpoint carries.
    pod: Option<(String, String)>,
}

fn parse_endpoint_slice(doc: &Document<'_>) -> Result<EndpointSliceResource, Vec<FieldError>> {
    let slice: EndpointSliceDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
        errors.push(FieldError::new(
            "addressType",
            format!("{:?} is not IPv4, IPv6 or FQDN", slice.address_type),
        ));
    }
    let mut ports = BTreeMap::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(n) = p.port else { continue };
        if let Some(port) = port_number(n, &format!("ports[{i}].port"), &mut errors) {
            ports.insert(p.name.clone().unwrap_or_default(), port);
        }
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        if e.addresses.is_empty() {
            errors.push(FieldError::new(
                format!("endpoints[{i}].addresses"),
                "at least one address is required",
            ));
        }
        // Not ready: terminating or failing its readiness probe; no traffic, as in Istio.
        if e.conditions.ready == Some(false) {
            continue;
        }
        let pod = e
            .target_ref
            .as_ref()
            .and_then(|t| match (&t.kind, &t.name) {
                (Some(kind), Some(name)) if kind == "Pod" => Some((
                    t.namespace
                        .clone()
                        .unwrap_or_else(|| doc.meta.namespace.clone()),
                    name.clone(),
                )),
                _ => None,
            });
        // The API holds one address per endpoint (more are for a future dual-stack use).
        if let Some(address) = e.addresses.first() {
            endpoints.push(SliceAddress {
                address: address.clone(),
                ports: ports.clone(),
                pod,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(EndpointSliceResource {
        service: doc.meta.labels.get(SERVICE_NAME_LABEL).cloned(),
        endpoints,
    })
}

impl MeshResource for EndpointSliceResource {
    fn translate(&self, meta: &Meta, model: &mut MeshModel) {
        let Some(name) = &self.service else {
            return;
        };
        let hostname = service_fqdn(name, &meta.namespace);
        let endpoints: Vec<Endpoint> = self
            .endpoints
            .iter()
            .map(|e| {
                // A Pod's labels select subsets; its sidecar decides mTLS.
                let pod = e.pod.as_ref().and_then(|(ns, pod)| {
                    model
                        .workloads
                        .iter()
                        .find(|w| &w.namespace == ns && &w.name == pod)
                });
                Endpoint {
                    address: e.address.clone(),
                    ports: e.ports.clone(),
                    labels: pod.map(|w| w.labels.clone()).unwrap_or_default(),
                    weight: None,
                    has_sidecar: pod.is_some_and(|w| w.has_sidecar),
                }
            })
            .collect();
        match model.services.get_mut(&hostname) {
            // Only a selector-less Service: a selector's pods are its endpoints already.
            Some(svc) if svc.selector.is_none() && !svc.mesh_external => {
                svc.endpoints.extend(endpoints);
            }
            _ => {}
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
    use crate::model::PathNormalization;
    use crate::store::ConfigStore;

    /// The model of these documents, read as one folder's file.
    fn model_of(yaml: &str) -> (std::sync::Arc<MeshModel>, Vec<crate::ConfigError>) {
        let mut store = ConfigStore::default();
        let report = store.apply_files(BTreeMap::from([(
            std::path::PathBuf::from("k.yaml"),
            yaml.to_string(),
        )]));
        (store.model(), report.errors)
    }

    const SELECTORLESS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec:\n  ports:\n  - {name: tcp-pg, port: 5432, targetPort: 6432}\n";

    fn slice(name: &str, service: &str, body: &str) -> String {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{kubernetes.io/service-name: {service}}}\n{body}"
        )
    }

    #[test]
    fn mesh_config_path_normalization_from_the_istio_configmap() {
        let cm = |ns: &str, name: &str, mesh: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata:\n  mesh: |-\n{}\n",
                mesh.lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
        let (m, errors) = model_of(&cm(
            "istio-system",
            "istio",
            "accessLogFile: /dev/stdout\npathNormalization:\n  normalization: MERGE_SLASHES",
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(m.mesh.path_normalization, PathNormalization::MergeSlashes);
        // Istio's default, and other ConfigMaps are none of the mesh's business.
        let (m, _) = model_of(&cm("istio-system", "istio", "accessLogFile: /dev/stdout"));
        assert_eq!(m.mesh.path_normalization, PathNormalization::Base);
        let (m, errors) = model_of(&cm(
            "default",
            "istio",
            "pathNormalization: {normalization: NONE}",
        ));
        assert!(errors.is_empty());
        assert_eq!(m.mesh.path_normalization, PathNormalization::Base);
        let (_, errors) = model_of(&cm(
            "istio-system",
            "istio",
            "pathNormalization: {normalization: SOMETIMES}",
        ));
        let text = errors[0].to_string();
        assert!(
            text.contains("pathNormalization.normalization") && text.contains("SOMETIMES"),
            "{text}"
        );
    }

    #[test]
    fn a_selectorless_service_gets_its_slices_ready_endpoints() {
        let yaml = format!(
            "{SELECTORLESS}{}{}",
            slice(
                "db-abc",
                "db",
                "addressType: IPv4\nports:\n- {name: tcp-pg, port: 6432, protocol: TCP}\nendpoints:\n- addresses: [10.1.0.5]\n  conditions: {ready: true}\n- addresses: [10.1.0.6]\n- addresses: [10.1.0.7]\n  conditions: {ready: false}\n"
            ),
            slice(
                "other-xyz",
                "other",
                "addressType: IPv4\nendpoints:\n- addresses: [10.9.9.9]\n"
            )
        );
        let (model, errors) = model_of(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let svc = &model.services["db.shop.svc.cluster.local"];
        let got: Vec<(&str, Option<&u16>)> = svc
            .endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.ports.get("tcp-pg")))
            .collect();
        // The not-ready one is left out; a slice of another Service adds nothing here.
        assert_eq!(got, [("10.1.0.5", Some(&6432)), ("10.1.0.6", Some(&6432))]);
    }

    #[test]
    fn a_selectors_service_ignores_its_slices_and_pods_lend_their_labels() {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80}}\n{}---\n{SELECTORLESS}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: db-0\n  namespace: shop\n  labels: {{app: db, version: v2, security.istio.io/tlsMode: istio}}\n  annotations: {{sidecar.istio.io/status: '{{}}'}}\nstatus: {{podIP: 10.1.0.5}}\n{}",
            slice(
                "web-1",
                "web",
                "addressType: IPv4\nendpoints:\n- addresses: [10.2.0.1]\n"
            ),
            slice(
                "db-1",
                "db",
                "addressType: IPv4\nendpoints:\n- addresses: [10.1.0.5]\n  targetRef: {kind: Pod, name: db-0, namespace: shop}\n"
            ),
        );
        let (model, errors) = model_of(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            model.services["web.shop.svc.cluster.local"]
                .endpoints
                .is_empty()
        );
        let db = &model.services["db.shop.svc.cluster.local"].endpoints;
        assert_eq!(db.len(), 1);
        assert_eq!(db[0].labels.get("version").map(String::as_str), Some("v2"));
        assert!(
            db[0].has_sidecar,
            "the pod's sidecar makes its endpoint mTLS"
        );
    }

    #[test]
    fn a_bad_slice_names_its_field() {
        let yaml = slice(
            "db-bad",
            "db",
            "addressType: IPX\nports:\n- {name: a, port: 70000}\nendpoints:\n- addresses: []\n",
        );
        let (_, errors) = model_of(&yaml);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["addressType", "ports[0].port", "endpoints[0].addresses"],
            "{errors:?}"
        );
    }

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
