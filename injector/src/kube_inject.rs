//! `kube-inject`: injection applied to manifests offline, as `istioctl kube-inject -f` does.
//!
//! Users pipe whole manifest files through it — several documents, `kind: List`, workloads mixed
//! with Services — so every pod template is found wherever its kind keeps it, and everything
//! else passes through unchanged.

use serde_json::Value;

use crate::inject::{self, Decision, InjectError, Settings, Workload};

/// A document that could not be injected, named so the user can find it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("document {index}: not YAML: {reason}")]
    Yaml { index: usize, reason: String },
    /// The injector's reason is part of the message (not a separate source), so one line
    /// names the object, the annotation and the value.
    #[error("{kind} {namespace}/{name}: {reason}")]
    Inject {
        kind: String,
        namespace: String,
        name: String,
        reason: Box<InjectError>,
    },
    #[error("cannot write YAML: {0}")]
    Write(String),
}

/// What happened to one pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub decision: Decision,
}

/// Injects every pod template in a multi-document YAML stream.
pub fn inject_yaml(text: &str, settings: &Settings) -> Result<(String, Vec<Report>), Error> {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(text).map_err(|e| Error::Yaml {
        index: 0,
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut reports = Vec::new();
    for doc in docs {
        if doc.is_null() {
            continue;
        }
        out.push(inject_document(doc, settings, &mut reports)?);
    }
    let text = out
        .iter()
        .map(|d| serde_saphyr::to_string(d).map_err(|e| Error::Write(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?
        .join("---\n");
    Ok((text, reports))
}

/// Injects the pod template(s) of one Kubernetes object; other kinds come back unchanged.
pub fn inject_document(
    mut doc: Value,
    settings: &Settings,
    reports: &mut Vec<Report>,
) -> Result<Value, Error> {
    let kind = doc["kind"].as_str().unwrap_or("").to_string();
    let api_version = doc["apiVersion"].as_str().unwrap_or("v1").to_string();
    let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let template_path = match kind.as_str() {
        "List" => {
            if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    let taken = std::mem::take(item);
                    *item = inject_document(taken, settings, reports)?;
                }
            }
            return Ok(doc);
        }
        "Pod" => "",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController"
        | "DeploymentConfig" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return Ok(doc),
    };
    let workload = if kind == "Pod" {
        Workload::of_pod(&doc, &namespace)
    } else {
        Workload::controller(&api_version, &kind, &namespace, &name)
    };
    let Some(template) = doc.pointer_mut(template_path) else {
        return Ok(doc);
    };
    // A template has no name of its own; Istio decides on it with the workload's.
    let mut probe = template.clone();
    if probe["metadata"]["name"].is_null()
        && let Some(meta) = probe.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("name".into(), Value::String(name.clone()));
    }
    let decision = inject::decide(&probe, &namespace, settings);
    if decision == Decision::Inject {
        let injected =
            inject::inject_pod(template, &namespace, &workload, settings).map_err(|source| {
                Error::Inject {
                    kind: kind.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    reason: Box::new(source),
                }
            })?;
        *template = injected;
    }
    reports.push(Report {
        kind,
        namespace,
        name,
        decision,
    });
    Ok(doc)
}
