//! Who is asking: the proxy identity istiod derives from an Envoy `Node` — its id
//! (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`) and the `ISTIO_META_*` metadata the sidecar
//! agent puts on it. Every per-proxy decision of the translation (namespace visibility, Sidecar
//! scope, inbound services, interception mode) reads this one parsed value, so the parsing rules
//! and their errors live in one place.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use mast_mesh_config::model::Labels;

/// How the proxy's traffic reaches it (node metadata `INTERCEPTION_MODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InterceptionMode {
    /// iptables REDIRECT to 15001/15006 (Istio's default).
    #[default]
    Redirect,
    /// iptables TPROXY; the same listeners as REDIRECT.
    Tproxy,
    /// No iptables: outbound listeners bind `127.0.0.1:<service port>` and the app calls them.
    None,
}

impl InterceptionMode {
    /// Traffic is captured by iptables, so listeners hang off `virtualOutbound`/`virtualInbound`
    /// instead of binding ports themselves.
    pub fn captures(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// What pilot knows about a proxy, from its node id and metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyNode {
    /// The node id as sent (`sidecar~10.1.2.3~app-1.default~default.svc.cluster.local`).
    pub id: String,
    /// First id field: `sidecar`, or `router` for gateways.
    pub kind: String,
    pub ip: String,
    pub pod_name: String,
    pub namespace: String,
    /// Last id field (`default.svc.cluster.local`).
    pub dns_domain: String,
    pub labels: Labels,
    pub service_account: String,
    /// The node's `cluster` (`<canonical service>.<namespace>`, as the agent sets it): the
    /// service name of the spans the proxy reports.
    pub service_cluster: String,
    /// `WORKLOAD_NAME` (the Deployment, say); the pod name when absent.
    pub workload_name: String,
    /// `CLUSTER_ID`; Istio's default `Kubernetes` when absent.
    pub cluster_id: String,
    pub mesh_id: Option<String>,
    pub interception_mode: InterceptionMode,
    /// What the proxy runs, as `istioctl proxy-status` shows it: `ISTIO_VERSION` when the
    /// agent sends it, else the user agent's name and version marked with a `*`
    /// (`envoy 1.40.0*`, `mast-proxy 0.1.0*`).
    pub version: Option<String>,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("node id {id:?} is not <type>~<ip>~<pod>.<namespace>~<domain>: {reason}")]
    BadId { id: String, reason: &'static str },
    #[error(
        "node {id:?} has no namespace: neither metadata NAMESPACE nor <pod>.<namespace> in its id"
    )]
    NoNamespace { id: String },
    #[error("node metadata {key} must be {expected}")]
    BadMetadata {
        key: &'static str,
        expected: &'static str,
    },
    #[error("node metadata INTERCEPTION_MODE {0:?} is not REDIRECT, TPROXY or NONE")]
    BadInterception(String),
}

/// Istio's `CLUSTER_ID` when the agent sends none.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

// === impl ProxyNode ===

impl ProxyNode {
    /// A gateway (node type `router`): it gets the listeners of the Gateways that select it,
    /// not a sidecar's.
    pub fn is_gateway(&self) -> bool {
        self.kind == "router"
    }

    /// Parse `sidecar~10.1.2.3~app-1.default~default.svc.cluster.local` and the metadata keys
    /// istiod reads (`NAMESPACE`, `LABELS`, `SERVICE_ACCOUNT`, `WORKLOAD_NAME`,
    /// `INTERCEPTION_MODE`, `CLUSTER_ID`, `MESH_ID`). Metadata wins over the id where both
    /// say something, as in istiod.
    pub fn from_envoy_node(node: &Node) -> Result<Self, NodeError> {
        let bad = |reason| NodeError::BadId {
            id: node.id.clone(),
            reason,
        };
        let parts: Vec<&str> = node.id.split('~').collect();
        let [kind, ip, pod_ns, domain] = parts[..] else {
            return Err(bad("expected four '~'-separated fields"));
        };
        if kind.is_empty() {
            return Err(bad("empty proxy type"));
        }
        if ip.is_empty() {
            return Err(bad("empty IP address"));
        }
        let (pod, id_ns) = pod_ns.split_once('.').unwrap_or((pod_ns, ""));
        let meta = Metadata(node.metadata.as_ref());

        let namespace = meta
            .string("NAMESPACE")?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id_ns.to_string());
        if namespace.is_empty() {
            return Err(NodeError::NoNamespace {
                id: node.id.clone(),
            });
        }
        let interception_mode = match meta.string("INTERCEPTION_MODE")?.as_deref() {
            None | Some("") | Some("REDIRECT") => InterceptionMode::Redirect,
            Some("TPROXY") => InterceptionMode::Tproxy,
            Some("NONE") => InterceptionMode::None,
            Some(other) => return Err(NodeError::BadInterception(other.to_string())),
        };
        Ok(Self {
            id: node.id.clone(),
            kind: kind.to_string(),
            ip: ip.to_string(),
            pod_name: pod.to_string(),
            namespace,
            dns_domain: domain.to_string(),
            service_cluster: node.cluster.clone(),
            labels: meta.labels()?,
            service_account: non_empty(meta.string("SERVICE_ACCOUNT")?)
                .unwrap_or_else(|| "default".into()),
            workload_name: non_empty(meta.string("WORKLOAD_NAME")?)
                .unwrap_or_else(|| pod.to_string()),
            cluster_id: non_empty(meta.string("CLUSTER_ID")?)
                .unwrap_or_else(|| DEFAULT_CLUSTER_ID.into()),
            mesh_id: non_empty(meta.string("MESH_ID")?),
            interception_mode,
            version: non_empty(meta.string("ISTIO_VERSION")?).or_else(|| user_agent(node)),
        })
    }
}

/// `envoy 1.40.0*`: the node's user agent and its version, when it sends them.
fn user_agent(node: &Node) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let version = match node.user_agent_version_type.as_ref()? {
        UserAgentVersionType::UserAgentVersion(v) => v.clone(),
        UserAgentVersionType::UserAgentBuildVersion(b) => {
            let v = b.version.as_ref()?;
            format!("{}.{}.{}", v.major_number, v.minor_number, v.patch)
        }
    };
    let name = node.user_agent_name.as_str();
    Some(if name.is_empty() {
        format!("{version}*")
    } else {
        format!("{name} {version}*")
    })
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Typed reads of the node's `google.protobuf.Struct` metadata.
struct Metadata<'a>(Option<&'a Struct>);

impl Metadata<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.and_then(|s| s.fields.get(key))
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, NodeError> {
        match self.get(key).map(|v| &v.kind) {
            None | Some(None) | Some(Some(Kind::NullValue(_))) => Ok(None),
            Some(Some(Kind::StringValue(s))) => Ok(Some(s.clone())),
            Some(Some(_)) => Err(NodeError::BadMetadata {
                key,
                expected: "a string",
            }),
        }
    }

    /// `LABELS` is a struct of strings; anything else is a broken agent, not a label.
    fn labels(&self) -> Result<Labels, NodeError> {
        let err = NodeError::BadMetadata {
            key: "LABELS",
            expected: "a struct of string values",
        };
        match self.get("LABELS").map(|v| &v.kind) {
            None | Some(None) | Some(Some(Kind::NullValue(_))) => Ok(Labels::new()),
            Some(Some(Kind::StructValue(s))) => s
                .fields
                .iter()
                .map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Ok((k.clone(), s.clone())),
                    _ => Err(err.clone()),
                })
                .collect(),
            Some(Some(_)) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_string())),
        }
    }

    fn node(id: &str, meta: &[(&str, Value)]) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    const ID: &str = "sidecar~10.1.2.3~user-v1-abc.prod~prod.svc.cluster.local";

    #[test]
    fn id_and_metadata() {
        let labels = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("app".to_string(), string("user"))].into(),
            })),
        };
        let p = ProxyNode::from_envoy_node(&node(
            ID,
            &[
                ("INTERCEPTION_MODE", string("NONE")),
                ("SERVICE_ACCOUNT", string("user")),
                ("WORKLOAD_NAME", string("user-v1")),
                ("CLUSTER_ID", string("east")),
                ("MESH_ID", string("mesh1")),
                ("LABELS", labels),
            ],
        ))
        .unwrap();
        assert_eq!(p.kind, "sidecar");
        assert_eq!(p.ip, "10.1.2.3");
        assert_eq!(p.pod_name, "user-v1-abc");
        assert_eq!(p.namespace, "prod");
        assert_eq!(p.dns_domain, "prod.svc.cluster.local");
        assert_eq!(p.interception_mode, InterceptionMode::None);
        assert_eq!(p.service_account, "user");
        assert_eq!(p.workload_name, "user-v1");
        assert_eq!(p.cluster_id, "east");
        assert_eq!(p.mesh_id.as_deref(), Some("mesh1"));
        assert_eq!(p.labels.get("app").map(String::as_str), Some("user"));
        assert_eq!(p.version, None);
    }

    #[test]
    fn version_from_istio_metadata_else_the_user_agent() {
        use envoy_types::pb::envoy::config::core::v3::BuildVersion;
        use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
        use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
        let mut n = node(ID, &[("ISTIO_VERSION", string("1.28.0"))]);
        n.user_agent_name = "envoy".into();
        n.user_agent_version_type =
            Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
                version: Some(SemanticVersion {
                    major_number: 1,
                    minor_number: 40,
                    patch: 0,
                }),
                metadata: None,
            }));
        let version = |n: &Node| ProxyNode::from_envoy_node(n).unwrap().version;
        assert_eq!(version(&n).as_deref(), Some("1.28.0"));
        n.metadata = None;
        assert_eq!(version(&n).as_deref(), Some("envoy 1.40.0*"));
        n.user_agent_name = "mast-proxy".into();
        n.user_agent_version_type = Some(UserAgentVersionType::UserAgentVersion("0.1.0".into()));
        assert_eq!(version(&n).as_deref(), Some("mast-proxy 0.1.0*"));
    }

    #[test]
    fn defaults_without_metadata() {
        let p = ProxyNode::from_envoy_node(&Node {
            id: ID.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.interception_mode, InterceptionMode::Redirect);
        assert_eq!(p.service_account, "default");
        assert_eq!(p.workload_name, "user-v1-abc");
        assert_eq!(p.cluster_id, DEFAULT_CLUSTER_ID);
        assert!(p.labels.is_empty());
    }

    #[test]
    fn metadata_namespace_wins_over_id() {
        let p = ProxyNode::from_envoy_node(&node(
            "sidecar~10.0.0.1~vm-1~svc.cluster.local",
            &[("NAMESPACE", string("vms"))],
        ))
        .unwrap();
        assert_eq!((p.pod_name.as_str(), p.namespace.as_str()), ("vm-1", "vms"));
    }

    #[test]
    fn clear_errors() {
        let err = |id: &str, meta: &[(&str, Value)]| {
            ProxyNode::from_envoy_node(&node(id, meta)).unwrap_err()
        };
        assert!(matches!(err("nope", &[]), NodeError::BadId { .. }));
        assert!(matches!(
            err("sidecar~~a.b~b.svc.cluster.local", &[]),
            NodeError::BadId { .. }
        ));
        assert_eq!(
            err("sidecar~10.0.0.1~vm-1~svc.cluster.local", &[]),
            NodeError::NoNamespace {
                id: "sidecar~10.0.0.1~vm-1~svc.cluster.local".into()
            }
        );
        assert_eq!(
            err(ID, &[("INTERCEPTION_MODE", string("EBPF"))]),
            NodeError::BadInterception("EBPF".into())
        );
        assert!(matches!(
            err(ID, &[("LABELS", string("app=user"))]),
            NodeError::BadMetadata { key: "LABELS", .. }
        ));
        let msg = err("nope", &[]).to_string();
        assert!(msg.contains("\"nope\""), "{msg}");
    }
}
