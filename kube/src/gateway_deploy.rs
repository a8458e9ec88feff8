//! Automated deployment of a Gateway API Gateway's proxy, as istiod's deployment controller
//! does: a user who writes `kind: Gateway` with `gatewayClassName: istio` expects a proxy to
//! appear for it, with a LoadBalancer Service in front, and to go when the Gateway goes.
//!
//! For each Gateway of Mast's classes that is managed (no `spec.addresses` entry other than an
//! IP address — a Hostname address names a Service someone deployed themselves, as in Istio's
//! `IsManaged`) three objects named `<gateway>-<class>` (Istio: `<name>-istio`) are
//! server-side applied in the Gateway's namespace, each owned by the Gateway (so Kubernetes'
//! garbage collector deletes them with it) and labelled `gateway.istio.io/managed`:
//! - a ServiceAccount;
//! - a Deployment whose pods carry `gateway.networking.k8s.io/gateway-name: <gateway>` (the
//!   label the Gateway's config selects, [`mast_mesh_config`]'s translation) and run the proxy
//!   container the injector's `gateway` template renders — the same code path as the webhook's
//!   ([`ProxyRenderer`], wired by mastd), so a gateway pod is a gateway pod however it came;
//! - a Service selecting those pods, on every listener port plus 15021 (status), of type
//!   LoadBalancer unless the Gateway's `networking.istio.io/service-type` annotation says
//!   otherwise.
//!
//! [`desired`] computes the objects (pure, unit-tested); the source applies them when they
//! differ from what it applied last (server-side apply is itself idempotent: an unchanged
//! apply writes nothing).

use std::fmt;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::gateway_status::{self, GROUP};

/// The label a Gateway's proxy pods carry; the Gateway's config selects them by it.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Istio's label on what its deployment controller creates.
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// Its value.
pub const MANAGED_VALUE: &str = "istio.io-gateway-controller";
/// The Gateway annotation that picks the Service type.
pub const SERVICE_TYPE_ANNOTATION: &str = "networking.istio.io/service-type";
/// The field manager of the server-side applies.
pub const FIELD_MANAGER: &str = "istio.io/gateway-controller";
/// pilot-agent's status port, served by every gateway pod.
pub const STATUS_PORT: u16 = 15021;

/// Renders the proxy into a pod template: `(template, namespace, deployment name)` → the
/// template with the proxy container, or why not. mastd wires the injector's
/// `inject_pod` with the gateway template here.
#[derive(Clone)]
pub struct ProxyRenderer(pub Arc<RenderFn>);

/// What a [`ProxyRenderer`] calls.
pub type RenderFn = dyn Fn(&Value, &str, &str) -> Result<Value, String> + Send + Sync;

impl ProxyRenderer {
    pub fn new(
        render: impl Fn(&Value, &str, &str) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(render))
    }
}

impl fmt::Debug for ProxyRenderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyRenderer")
    }
}

/// Why a Gateway's objects could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Gateway has no uid (not read from the API server)")]
    NoUid,
    #[error("cannot render the gateway proxy: {0}")]
    Render(String),
}

/// A Gateway as the deployer needs it.
#[derive(Clone, Copy, Debug)]
pub struct GatewayRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: Option<&'a str>,
    /// The object (spec and metadata, no status).
    pub value: &'a Value,
}

/// Whether Mast deploys for this Gateway: one of its classes, and no address or a single IP
/// address (Istio's `IsManaged`: a Hostname address names a Service deployed by hand; several
/// addresses cannot be one Service).
pub fn is_managed(gateway: &Value) -> bool {
    let addresses = gateway["spec"]["addresses"].as_array();
    gateway_status::is_ours(gateway)
        && match addresses.map(Vec::as_slice) {
            None | Some([]) => true,
            Some([one]) => one["type"].as_str().is_none_or(|t| t == "IPAddress"),
            Some(_) => false,
        }
}

/// Whether an existing object (`None`: there is none) may be applied over: only what this
/// controller created, marked with [`MANAGED_LABEL`] — never a user's own `web-istio`.
pub fn may_take(existing: Option<&Value>) -> bool {
    existing.is_none_or(|o| o["metadata"]["labels"][MANAGED_LABEL].is_string())
}

/// The ServiceAccount, Deployment and Service for `gw`, in that order (what is applied).
pub fn desired(gw: &GatewayRef<'_>, render: &ProxyRenderer) -> Result<Vec<Value>, Error> {
    let uid = gw.uid.ok_or(Error::NoUid)?;
    let name = gateway_status::deployment_name(gw.name, gw.value);
    let owner = json!([{
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "Gateway",
        "name": gw.name,
        "uid": uid,
    }]);
    let labels = json!({
        GATEWAY_NAME_LABEL: gw.name,
        MANAGED_LABEL: MANAGED_VALUE,
    });
    let meta = |extra: Value| {
        let mut m = json!({
            "name": name,
            "namespace": gw.namespace,
            "labels": labels,
            "ownerReferences": owner,
        });
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        m
    };
    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(json!({})),
    });

    let pod = json!({
        "metadata": {
            "labels": {
                GATEWAY_NAME_LABEL: gw.name,
                "istio.io/gateway-name": gw.name,
                "service.istio.io/canonical-name": name,
                "service.istio.io/canonical-revision": "latest",
                // Rendered here; the webhook must not inject again.
                "sidecar.istio.io/inject": "false",
            },
            "annotations": {
                "inject.istio.io/templates": "gateway",
            },
        },
        "spec": {
            "serviceAccountName": name,
            "containers": [{"name": "istio-proxy", "image": "auto"}],
        },
    });
    let pod = (render.0)(&pod, gw.namespace, &name).map_err(Error::Render)?;
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(json!({})),
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: gw.name}},
            "template": pod,
        },
    });

    let mut ports = vec![json!({
        "name": "status-port",
        "port": STATUS_PORT,
        "protocol": "TCP",
        "appProtocol": "tcp",
    })];
    let mut seen = vec![u64::from(STATUS_PORT)];
    for (i, l) in gw.value["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(port) = l["port"].as_u64() else {
            continue;
        };
        if seen.contains(&port) {
            continue;
        }
        seen.push(port);
        let protocol = l["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
        let listener = l["name"].as_str().unwrap_or_default();
        let port_name = if listener.is_empty() {
            format!("{protocol}-{i}")
        } else {
            listener.to_string()
        };
        ports.push(json!({
            "name": port_name,
            "port": port,
            "protocol": "TCP",
            "appProtocol": protocol,
        }));
    }
    let service_type = gw.value["metadata"]["annotations"][SERVICE_TYPE_ANNOTATION]
        .as_str()
        .unwrap_or("LoadBalancer");
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(json!({})),
        "spec": {
            "type": service_type,
            "selector": {GATEWAY_NAME_LABEL: gw.name},
            "ports": ports,
        },
    });
    Ok(vec![service_account, deployment, service])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(addresses: Value) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "web", "namespace": "shop",
                         "annotations": {SERVICE_TYPE_ANNOTATION: "ClusterIP"}},
            "spec": {"gatewayClassName": "istio", "addresses": addresses, "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "http-alt", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
                {"name": "https", "port": 443, "protocol": "HTTPS"},
            ]},
        })
    }

    fn echo() -> ProxyRenderer {
        ProxyRenderer(Arc::new(|pod: &Value, _: &str, _: &str| Ok(pod.clone())))
    }

    #[test]
    fn three_owned_objects_named_after_gateway_and_class() {
        let v = gateway(json!([]));
        let gw = GatewayRef {
            namespace: "shop",
            name: "web",
            uid: Some("u-1"),
            value: &v,
        };
        let objects = desired(&gw, &echo()).unwrap();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["ServiceAccount", "Deployment", "Service"]);
        for o in &objects {
            assert_eq!(o["metadata"]["name"], "web-istio");
            assert_eq!(o["metadata"]["namespace"], "shop");
            assert_eq!(o["metadata"]["labels"][GATEWAY_NAME_LABEL], "web");
            assert_eq!(o["metadata"]["labels"][MANAGED_LABEL], MANAGED_VALUE);
            assert_eq!(
                o["metadata"]["ownerReferences"],
                json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "name": "web", "uid": "u-1"}])
            );
        }
        let template = &objects[1]["spec"]["template"];
        assert_eq!(template["metadata"]["labels"][GATEWAY_NAME_LABEL], "web");
        assert_eq!(template["spec"]["serviceAccountName"], "web-istio");
        let service = &objects[2]["spec"];
        assert_eq!(service["type"], "ClusterIP", "the annotation overrides");
        let ports: Vec<(u64, &str)> = service["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_u64().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        assert_eq!(
            ports,
            [(15021, "status-port"), (80, "http"), (443, "https")]
        );
    }

    #[test]
    fn a_hostname_address_or_a_foreign_class_is_not_managed() {
        assert!(is_managed(&gateway(json!([]))));
        assert!(is_managed(&gateway(
            json!([{"type": "IPAddress", "value": "10.0.0.1"}])
        )));
        assert!(is_managed(&gateway(json!([{"value": "10.0.0.1"}]))));
        assert!(!is_managed(&gateway(
            json!([{"value": "10.0.0.1"}, {"value": "10.0.0.2"}])
        )));
        assert!(may_take(None));
        assert!(may_take(Some(
            &json!({"metadata": {"labels": {MANAGED_LABEL: MANAGED_VALUE}}})
        )));
        assert!(!may_take(Some(
            &json!({"metadata": {"labels": {"app": "mine"}}})
        )));
        assert!(!is_managed(&gateway(
            json!([{"type": "Hostname", "value": "ingress.istio-system.svc.cluster.local"}])
        )));
        let mut other = gateway(json!([]));
        other["spec"]["gatewayClassName"] = json!("cilium");
        assert!(!is_managed(&other));
        let v = gateway(json!([]));
        let no_uid = GatewayRef {
            namespace: "shop",
            name: "web",
            uid: None,
            value: &v,
        };
        assert!(matches!(desired(&no_uid, &echo()), Err(Error::NoUid)));
    }
}
