//! Sidecar injection: Istio's pod mutation, rendered by Mast.
//!
//! Users keep their Istio habits and manifests, so the injected pod is Istio's pod: the same
//! `istio-init` and `istio-proxy` containers, args, environment, probes, volumes, labels and
//! annotations as Istio's injection template produces (checked against Istio's own goldens in
//! `tests/goldens.rs`), with Mast's image in place of `proxyv2`. That image carries `mast-proxy`
//! (also installed as `pilot-agent`, so the template's `pilot-agent request … drain` hooks work)
//! and `mast-init`, which `mast-proxy istio-iptables …` runs.
//!
//! The mutation works on `serde_json::Value` rather than typed Kubernetes structs so that fields
//! this code does not know — newer Kubernetes versions, vendor extensions — pass through
//! untouched. [`decide`] is Istio's `injectRequired`; [`inject_pod`] renders and merges.

pub mod annotations;
mod merge;
mod probes;
pub mod quantity;
pub mod selection;
mod template;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use annotations as ann;

/// What the injector was configured with: Istio's Helm values and mesh config that shape the
/// template. The defaults are Istio's, so Istio's goldens are our goldens.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The sidecar image (mast-proxy, with mast-init beside it).
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// Sidecar as an init container with `restartPolicy: Always` (Kubernetes ≥ 1.29).
    pub native_sidecar: bool,
    pub hold_application_until_proxy_starts: bool,
    pub interception_mode: String,
    pub include_ip_ranges: String,
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: String,
    pub exclude_outbound_ports: String,
    /// The agent's status port (probes, merged metrics); 0 turns probes off.
    pub status_port: u16,
    pub readiness_initial_delay_seconds: u32,
    pub readiness_period_seconds: u32,
    pub readiness_failure_threshold: u32,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    pub ca_address: String,
    pub pilot_cert_provider: String,
    pub cluster_id: String,
    pub mesh_id: String,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub network: Option<String>,
    pub revision: String,
    pub proxy_log_level: String,
    pub proxy_component_log_level: String,
    pub agent_log_level: String,
    /// The CNI plugin sets up capture; the init container only validates it.
    pub cni: bool,
    /// meshConfig.inboundTrafficPolicy.mode = LOCALHOST.
    pub inbound_localhost: bool,
    /// meshConfig.defaultConfig, as ProxyConfig JSON fields that differ from the defaults.
    pub default_proxy_config: Map<String, Value>,
    /// Namespaces never injected.
    pub ignored_namespaces: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: concat!("ghcr.io/mast-mesh/mast-proxy:", env!("CARGO_PKG_VERSION")).into(),
            image_pull_policy: None,
            native_sidecar: true,
            hold_application_until_proxy_starts: false,
            interception_mode: "REDIRECT".into(),
            include_ip_ranges: "*".into(),
            exclude_ip_ranges: String::new(),
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            include_outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            status_port: 15020,
            readiness_initial_delay_seconds: 0,
            readiness_period_seconds: 15,
            readiness_failure_threshold: 4,
            cpu_request: "100m".into(),
            memory_request: "128Mi".into(),
            cpu_limit: "2".into(),
            memory_limit: "1Gi".into(),
            ca_address: "istiod.istio-system.svc:15012".into(),
            pilot_cert_provider: "istiod".into(),
            cluster_id: "Kubernetes".into(),
            mesh_id: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            network: None,
            revision: "default".into(),
            proxy_log_level: "warning".into(),
            proxy_component_log_level: "misc:error".into(),
            agent_log_level: "default:info".into(),
            cni: false,
            inbound_localhost: false,
            default_proxy_config: Map::new(),
            ignored_namespaces: vec!["kube-system".into(), "kube-public".into()],
        }
    }
}

/// Why a pod is refused.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {annotation}={value:?}: {reason}")]
    Annotation {
        annotation: String,
        value: String,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Malformed { field: String, reason: String },
}

impl InjectError {
    fn malformed(field: &str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The workload that owns the pod, as Istio names it in `ISTIO_META_WORKLOAD_NAME` and
/// `ISTIO_META_OWNER`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    /// `kubernetes://apis/apps/v1/namespaces/default/deployments/hello`.
    pub owner: String,
}

impl Workload {
    /// The owner of a controller kind (`apps/v1`, `Deployment`).
    pub fn controller(api_version: &str, kind: &str, namespace: &str, name: &str) -> Self {
        // Core kinds too are written under apis/ (apis/v1/…), as Istio writes them.
        Self {
            name: name.to_string(),
            owner: format!(
                "kubernetes://apis/{api_version}/namespaces/{namespace}/{}s/{name}",
                kind.to_ascii_lowercase()
            ),
        }
    }

    /// Istio's `GetDeployMetaFromPod`: the controller from the pod's owner references
    /// (a ReplicaSet's `-<hash>` suffix dropped to name the Deployment, a Job created by a
    /// CronJob named after the CronJob), else the pod itself.
    pub fn of_pod(pod: &Value, namespace: &str) -> Self {
        let meta = &pod["metadata"];
        let pod_name = meta["name"]
            .as_str()
            .or_else(|| meta["generateName"].as_str())
            .unwrap_or("")
            .to_string();
        let owner = meta["ownerReferences"].as_array().and_then(|refs| {
            refs.iter()
                .find(|r| r["controller"].as_bool() == Some(true))
                .or_else(|| refs.first())
        });
        let Some(owner) = owner else {
            return Self::controller("v1", "Pod", namespace, &pod_name);
        };
        let kind = owner["kind"].as_str().unwrap_or("");
        let name = owner["name"].as_str().unwrap_or("");
        let api = owner["apiVersion"].as_str().unwrap_or("v1");
        match kind {
            "ReplicaSet" => {
                let template_hash = meta["labels"]["pod-template-hash"].as_str();
                let deployment = match template_hash {
                    Some(hash) => name.strip_suffix(&format!("-{hash}")),
                    None => None,
                };
                match deployment {
                    Some(d) => Self::controller("apps/v1", "Deployment", namespace, d),
                    None => Self::controller(api, kind, namespace, name),
                }
            }
            "Job" => {
                // A CronJob's Job is `<cronjob>-<scheduled time in minutes>`.
                match name.rsplit_once('-') {
                    Some((cron, suffix))
                        if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        Self::controller("batch/v1", "CronJob", namespace, cron)
                    }
                    _ => Self::controller(api, kind, namespace, name),
                }
            }
            _ => Self::controller(api, kind, namespace, name),
        }
    }
}

/// Whether to inject, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(String),
}

/// Istio's `injectRequired` for a pod (metadata + spec) in `namespace`, the namespace already
/// selected (by the webhook's namespaceSelector, or explicitly by `kube-inject`).
pub fn decide(pod: &Value, namespace: &str, settings: &Settings) -> Decision {
    let spec = &pod["spec"];
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    if spec["hostNetwork"].as_bool() == Some(true) {
        return Decision::Skip(format!(
            "pod {namespace}/{name} has host networking enabled"
        ));
    }
    if settings.ignored_namespaces.iter().any(|n| n == namespace) {
        return Decision::Skip(format!("namespace {namespace} is never injected"));
    }
    let label = pod["metadata"]["labels"][ann::INJECT].as_str();
    let annotation = pod["metadata"]["annotations"][ann::INJECT].as_str();
    // The label wins over the annotation, as in Istio.
    if let Some(value) = label.or(annotation) {
        match value.to_ascii_lowercase().as_str() {
            "y" | "yes" | "true" | "on" => {}
            _ => {
                return Decision::Skip(format!(
                    "pod {namespace}/{name} opted out with {}={value}",
                    ann::INJECT
                ));
            }
        }
    }
    Decision::Inject
}

/// Injects the sidecar into `pod` (a Pod or a pod template: `metadata` + `spec`). The result
/// is the whole mutated object; re-injecting an injected pod gives the same pod.
pub fn inject_pod(
    pod: &Value,
    namespace: &str,
    workload: &Workload,
    settings: &Settings,
) -> Result<Value, InjectError> {
    let mut pod = pod.clone();
    if !pod.is_object() {
        return Err(InjectError::malformed("pod", "not an object"));
    }
    let annotations = string_map(&pod["metadata"]["annotations"], "metadata.annotations")?;
    let labels = string_map(&pod["metadata"]["labels"], "metadata.labels")?;
    ann::validate(|k| annotations.get(k).cloned())?;
    if pod["spec"]["containers"].as_array().is_none() {
        return Err(InjectError::malformed(
            "spec.containers",
            "a pod needs a list of containers",
        ));
    }

    let templates = annotations
        .get(ann::TEMPLATES)
        .map(|t| t.split(',').map(str::trim).map(str::to_string).collect())
        .unwrap_or_else(|| vec!["sidecar".to_string()]);
    for t in &templates {
        if !matches!(
            t.as_str(),
            "sidecar" | "gateway" | "grpc-simple" | "grpc-agent"
        ) {
            return Err(InjectError::Annotation {
                annotation: ann::TEMPLATES.into(),
                value: t.clone(),
                reason: "unknown template (sidecar, gateway, grpc-agent, grpc-simple)".into(),
            });
        }
    }

    // Re-injection: take out what an earlier injection added, keeping the user's own
    // customisations of the istio-* containers (Istio's proxy.istio.io/overrides).
    let (previous_probers, previous) = strip_previous(&mut pod, &annotations)?;

    let params = template::Params::new(&pod, namespace, workload, settings, &annotations, &labels)?;
    let rendered = template::render(&params, &templates)?;
    merge::apply(&mut pod, rendered, &params, previous)?;
    post_process(&mut pod, &params, previous_probers.as_deref())?;
    Ok(pod)
}

/// What an earlier injection's containers held: its `ISTIO_KUBE_APP_PROBERS` and the
/// containers themselves.
type Previous = (Option<String>, Vec<Value>);

/// Removes the containers and volumes a previous injection listed in its status annotation.
fn strip_previous(
    pod: &mut Value,
    annotations: &BTreeMap<String, String>,
) -> Result<Previous, InjectError> {
    let Some(status) = annotations.get(ann::STATUS) else {
        return Ok((None, Vec::new()));
    };
    let status: Value = serde_json::from_str(status).map_err(|e| InjectError::Annotation {
        annotation: ann::STATUS.into(),
        value: status.clone(),
        reason: format!("not JSON: {e}"),
    })?;
    let names = |key: &str| -> Vec<String> {
        status[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let injected: Vec<String> = names("initContainers")
        .into_iter()
        .chain(names("containers"))
        .collect();
    let volumes = names("volumes");
    let mut previous_probers = None;
    let mut overrides: Vec<Value> = Vec::new();
    for list in ["initContainers", "containers"] {
        if let Some(items) = pod
            .get_mut("spec")
            .and_then(|s| s.get_mut(list))
            .and_then(Value::as_array_mut)
        {
            items.retain(|c| {
                let name = c["name"].as_str().unwrap_or("");
                if !injected.iter().any(|n| n == name) {
                    return true;
                }
                if name == "istio-proxy"
                    && let Some(env) = c["env"].as_array()
                {
                    previous_probers = env
                        .iter()
                        .find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS")
                        .and_then(|e| e["value"].as_str())
                        .map(str::to_string);
                }
                overrides.push(c.clone());
                false
            });
        }
    }
    if let Some(items) = pod
        .get_mut("spec")
        .and_then(|s| s.get_mut("volumes"))
        .and_then(Value::as_array_mut)
    {
        items.retain(|v| !volumes.iter().any(|n| v["name"].as_str() == Some(n)));
    }
    // What the earlier injection produced is the user's starting point for these containers:
    // keep it as an override so custom args and env survive, minus what we regenerate.
    if let Some(meta) = pod["metadata"].as_object_mut()
        && let Some(Value::Object(a)) = meta.get_mut("annotations")
    {
        a.remove(ann::STATUS);
    }
    for o in &mut overrides {
        if let Some(env) = o.get_mut("env").and_then(Value::as_array_mut) {
            env.retain(|e| e["name"] != "ISTIO_KUBE_APP_PROBERS");
        }
        if let Some(obj) = o.as_object_mut() {
            obj.remove("restartPolicy");
        }
    }
    Ok((previous_probers, overrides))
}

/// Probe rewrites, the status annotation, Prometheus and the final container order.
fn post_process(
    pod: &mut Value,
    params: &template::Params,
    previous_probers: Option<&str>,
) -> Result<(), InjectError> {
    let status_port = params.status_port;
    let rewrite = params.rewrite_probes && status_port != 0;
    if rewrite
        && let Some(containers) = pod
            .get_mut("spec")
            .and_then(|s| s.get_mut("containers"))
            .and_then(Value::as_array_mut)
    {
        let mut probers = probes::rewrite(containers, status_port);
        if let Some(inits) = pod
            .get_mut("spec")
            .and_then(|s| s.get_mut("initContainers"))
            .and_then(Value::as_array_mut)
        {
            // Native sidecars of the app (restartPolicy: Always) are probed like containers.
            let mut sidecars: Vec<Value> = inits
                .iter()
                .filter(|c| c["restartPolicy"] == "Always" && !is_istio(c))
                .cloned()
                .collect();
            probers.extend(probes::rewrite(&mut sidecars, status_port));
            for s in sidecars {
                if let Some(slot) = inits.iter_mut().find(|c| c["name"] == s["name"]) {
                    *slot = s;
                }
            }
        }
        probes::merge_previous(&mut probers, previous_probers);
        if !probers.is_empty() {
            let text = serde_json::to_string(&probers)
                .map_err(|e| InjectError::malformed("probes", e.to_string()))?;
            if let Some(proxy) = find_container_mut(pod, "istio-proxy")
                && let Some(env) = proxy.get_mut("env").and_then(Value::as_array_mut)
            {
                env.retain(|e| e["name"] != "ISTIO_KUBE_APP_PROBERS");
                env.push(json!({"name": "ISTIO_KUBE_APP_PROBERS", "value": text}));
            }
        }
    }
    Ok(())
}

fn is_istio(c: &Value) -> bool {
    c["name"].as_str().is_some_and(|n| n.starts_with("istio-"))
}

fn find_container_mut<'a>(pod: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    let spec = pod.get_mut("spec")?;
    let in_init = spec["initContainers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["name"] == name));
    let list = if in_init {
        "initContainers"
    } else {
        "containers"
    };
    spec.get_mut(list)?
        .as_array_mut()?
        .iter_mut()
        .find(|c| c["name"] == name)
}

fn string_map(value: &Value, field: &str) -> Result<BTreeMap<String, String>, InjectError> {
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(InjectError::malformed(
                    &format!("{field}.{k}"),
                    format!("must be a string, not {other}"),
                )),
            })
            .collect(),
        _ => Err(InjectError::malformed(field, "must be a map of strings")),
    }
}

#[cfg(test)]
mod tests;
