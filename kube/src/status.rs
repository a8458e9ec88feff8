//! Status written back on rejected mesh resources, as Istio does, so that
//! `kubectl get virtualservice user -o yaml` says why the mesh is not using a resource.
//!
//! On a laptop a rejected file is a log line next to the editor; on a cluster the person who
//! ran `kubectl apply` never sees mastd's log, so the reason has to be on the object. Istio's
//! analysis writes it into the object's `status` (`PILOT_ENABLE_STATUS`, "Configuration Status
//! Field"): `validationMessages` entries shaped as istio.analysis.v1alpha1
//! `AnalysisMessageBase` (`type.code` `IST0xxx`, `type.name`, `level`, `documentationUrl`),
//! plus a `PassedAnalysis` condition whose message gives the count. Mast writes the same
//! shape, adding the readable `message` (the field and what is wrong with it) to each entry —
//! Istio's CRDs keep `status` schema-free (`x-kubernetes-preserve-unknown-fields`), so the
//! extra key is stored and shown. When the resource becomes valid again, both are removed.
//!
//! Only Istio's own groups get these messages: other dialects' status blocks belong to their
//! controllers (Knative's `conditions`), and their structural schemas would prune Istio's keys
//! anyway. The Gateway API objects of Mast's own classes get the status their controller owes
//! them instead, computed in [`crate::gateway_status`] and written by [`write_status`]. The patch is a merge patch on the `status` subresource,
//! so it never races with a user's `kubectl apply` of the spec. Writes are idempotent: the
//! wanted messages are compared with what the object already shows, so replicas, restarts and
//! the watch echo of our own patch cause no further writes.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use mast_mesh_config::ConfigError;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Groups whose resources get a status written back.
pub const STATUS_GROUPS: &[&str] = &["networking.istio.io", "security.istio.io"];

/// Who may write: only the leader, when leader election runs.
#[derive(Clone, Debug)]
pub struct WriteGate(watch::Receiver<bool>);

impl WriteGate {
    /// Always write (one replica, no election).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        // The value never changes: the receiver keeps reading `true` with the sender gone.
        drop(tx);
        Self(rx)
    }

    /// Write while `leader` says true (the leader-election module's receiver).
    pub fn from_receiver(leader: watch::Receiver<bool>) -> Self {
        Self(leader)
    }

    pub fn may_write(&self) -> bool {
        *self.0.borrow()
    }

    /// Wait until the gate changes; pending forever once its sender is gone.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Default for WriteGate {
    fn default() -> Self {
        Self::always()
    }
}

/// Whether `ar`'s resources get a status written back.
pub fn writes_status(ar: &ApiResource) -> bool {
    STATUS_GROUPS.contains(&ar.group.as_str())
}

/// The `validationMessages` for `errors` (all of one resource), in Istio's shape.
pub fn validation_messages(errors: &[&ConfigError]) -> Vec<Value> {
    errors
        .iter()
        .map(|e| {
            let (code, name) = analysis_type(e);
            let message = if e.field.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.field, e.message)
            };
            json!({
                "type": {"code": code, "name": name},
                "level": "ERROR",
                "documentationUrl": format!(
                    "https://istio.io/latest/docs/reference/config/analysis/{}/",
                    code.to_ascii_lowercase()
                ),
                "message": message,
            })
        })
        .collect()
}

/// Istio's analysis message type for an error: a reference that does not resolve is
/// IST0101 ReferencedResourceNotFound, anything else about the resource's own fields IST0106
/// SchemaValidationError.
fn analysis_type(e: &ConfigError) -> (&'static str, &'static str) {
    let m = &e.message;
    if m.contains("is not defined") || m.contains("not found") || m.contains("does not exist") {
        ("IST0101", "ReferencedResourceNotFound")
    } else {
        ("IST0106", "SchemaValidationError")
    }
}

/// The `validationMessages` an object shows now (empty when none).
pub fn current_messages(object: &Value) -> Vec<Value> {
    object
        .get("status")
        .and_then(|s| s.get("validationMessages"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The merge patch that makes the object show `messages` (none: clear what Mast wrote).
pub fn patch_body(messages: &[Value], generation: Option<i64>) -> Value {
    if messages.is_empty() {
        return json!({"status": {
            "observedGeneration": generation,
            "conditions": null,
            "validationMessages": null,
        }});
    }
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let count = match messages.len() {
        1 => "1 error found".to_string(),
        n => format!("{n} errors found"),
    };
    let first = messages[0]["message"].as_str().unwrap_or_default();
    json!({"status": {
        "observedGeneration": generation,
        "conditions": [{
            "type": "PassedAnalysis",
            "status": "False",
            "reason": "errorsFound",
            "message": format!(
                "{count}, the last good version stays in force: {first}. See validationMessages field for details"
            ),
            "lastTransitionTime": now,
        }],
        "validationMessages": messages,
    }})
}

/// Patch `name`'s status subresource; the object as the server now has it.
pub async fn write(
    client: &kube::Client,
    ar: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    messages: &[Value],
    generation: Option<i64>,
) -> Result<DynamicObject, kube::Error> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    let body = patch_body(messages, generation);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
}

/// Merge-patch `name`'s status subresource with `body` (`{"status": …}`); the object as the
/// server now has it. For statuses computed elsewhere (Gateway API).
pub async fn write_status(
    client: &kube::Client,
    ar: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    body: &Value,
) -> Result<DynamicObject, kube::Error> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(body))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(field: &str, message: &str) -> ConfigError {
        ConfigError {
            file: "kube:/networking.istio.io/VirtualService/default/user".into(),
            document: 1,
            resource: None,
            field: field.into(),
            line: None,
            message: message.into(),
        }
    }

    #[test]
    fn messages_have_istios_shape_and_name_the_field() {
        let schema = error(
            "spec.http[0].route[1].weight",
            "-10 is negative; weights are relative shares ≥ 0",
        );
        let reference = error(
            "spec.http[0].route[1].destination.subset",
            "subset \"v3\" is not defined by DestinationRule default/user for host user",
        );
        let m = validation_messages(&[&schema, &reference]);
        assert_eq!(m[0]["type"]["code"], "IST0106");
        assert_eq!(m[0]["level"], "ERROR");
        assert_eq!(
            m[0]["message"],
            "spec.http[0].route[1].weight: -10 is negative; weights are relative shares ≥ 0"
        );
        assert_eq!(m[1]["type"]["code"], "IST0101");
        assert_eq!(m[1]["type"]["name"], "ReferencedResourceNotFound");
        assert!(
            m[1]["documentationUrl"]
                .as_str()
                .unwrap()
                .ends_with("/ist0101/")
        );

        let patch = patch_body(&m, Some(3));
        assert_eq!(patch["status"]["observedGeneration"], 3);
        assert_eq!(patch["status"]["conditions"][0]["type"], "PassedAnalysis");
        assert_eq!(patch["status"]["conditions"][0]["status"], "False");
        assert!(patch["status"]["conditions"][0]["lastTransitionTime"].is_string());
        assert_eq!(current_messages(&patch), m);
    }

    #[test]
    fn clearing_removes_messages_and_condition() {
        let patch = patch_body(&[], Some(4));
        assert!(patch["status"]["validationMessages"].is_null());
        assert!(patch["status"]["conditions"].is_null());
        assert!(current_messages(&patch).is_empty());
    }

    #[test]
    fn only_istio_groups_get_a_status() {
        let ar = |group: &str| ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: format!("{group}/v1"),
            kind: "X".into(),
            plural: "xs".into(),
        };
        assert!(writes_status(&ar("networking.istio.io")));
        assert!(writes_status(&ar("security.istio.io")));
        assert!(!writes_status(&ar("serving.knative.dev")));
        assert!(!writes_status(&ar("")));
    }

    #[tokio::test]
    async fn gate_follows_the_leader() {
        assert!(WriteGate::always().may_write());
        let (tx, rx) = watch::channel(false);
        let mut gate = WriteGate::from_receiver(rx);
        assert!(!gate.may_write());
        tx.send_replace(true);
        gate.changed().await;
        assert!(gate.may_write());
    }
}
