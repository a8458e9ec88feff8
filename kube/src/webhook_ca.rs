//! Keeps the injector's MutatingWebhookConfiguration trusting the injector's certificate.
//!
//! The API server calls the injection webhook over TLS and verifies mastd's serving
//! certificate against `webhooks[*].clientConfig.caBundle`. That certificate is issued by
//! citadel, so the bundle must be citadel's root — known only once mastd has loaded or made it,
//! so the manifest ships the field empty (manifests/install/injector-webhook.yaml) and mastd
//! fills it, at start-up and whenever the root changes, as istiod's webhook controller does.
//! A `kubectl apply` of the manifest empties it again, so the configuration is re-checked
//! periodically too; an empty or stale caBundle means pods in injected namespaces cannot be
//! created (failurePolicy: Fail).
//!
//! The write is a strategic merge patch naming each webhook (`webhooks` merges on `name`), so
//! only `clientConfig.caBundle` of our webhooks changes and a concurrent edit of other fields is
//! kept. Only the leader writes ([`crate::leader`]); a patch is sent only when a bundle differs.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

/// The MutatingWebhookConfiguration in manifests/install/injector-webhook.yaml.
pub const DEFAULT_WEBHOOK_CONFIG: &str = "mast-sidecar-injector";
/// How often the configuration is re-checked without a root change.
pub const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("MutatingWebhookConfiguration {name} not found (is the injector installed?)")]
    NotFound { name: String },
    #[error("MutatingWebhookConfiguration {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Set `caBundle` to `ca_bundle_pem` on every webhook of the configuration `name` whose bundle
/// differs. Returns the names of the webhooks patched (empty: all were right).
pub async fn patch_ca_bundle(
    client: kube::Client,
    name: &str,
    ca_bundle_pem: &str,
) -> Result<Vec<String>, Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let api_err = |source| Error::Api {
        name: name.into(),
        source,
    };
    let Some(config) = api.get_opt(name).await.map_err(api_err)? else {
        return Err(Error::NotFound { name: name.into() });
    };
    let want = ca_bundle_pem.as_bytes();
    let stale: Vec<String> = config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(want))
        .map(|w| w.name)
        .collect();
    if stale.is_empty() {
        return Ok(stale);
    }
    let bundle = ByteString(want.to_vec());
    let patch = json!({
        "webhooks": stale
            .iter()
            .map(|n| json!({"name": n, "clientConfig": {"caBundle": bundle}}))
            .collect::<Vec<_>>()
    });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(api_err)?;
    tracing::info!(config = %name, webhooks = ?stale, "injector webhook caBundle set to the mesh root");
    Ok(stale)
}

/// Keep the configuration `name`'s caBundle equal to `bundle` (the root that signs the
/// injector's serving certificate) while `leader` is true: at once, on every change of either,
/// and every [`RESYNC`]. Failures are retried with a capped backoff. Runs until the leader
/// election ends (its sender dropped); a dropped bundle sender only means the root no longer
/// changes.
pub async fn run(
    client: kube::Client,
    name: String,
    mut bundle: watch::Receiver<String>,
    mut leader: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut bundle_open = true;
    loop {
        if !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return;
            }
            continue;
        }
        let pem = bundle.borrow_and_update().clone();
        let wait = match patch_ca_bundle(client.clone(), &name, &pem).await {
            Ok(_) => {
                backoff = Duration::from_secs(1);
                RESYNC
            }
            Err(e) => {
                tracing::warn!("injector webhook caBundle: {e}; retrying in {backoff:?}");
                let b = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                b
            }
        };
        tokio::select! {
            r = bundle.changed(), if bundle_open => bundle_open = r.is_ok(),
            r = leader.changed() => if r.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::Method;
    use serde_json::Value;

    use super::*;
    use crate::testing::FakeApiServer;

    const PATH: &str =
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mast-sidecar-injector";

    /// The configuration as the API server returns it after `kubectl apply` of the manifest.
    fn installed() -> Value {
        let hook = |name: &str, ns_selector: Value| {
            json!({
                "name": name,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "reinvocationPolicy": "Never",
                "matchPolicy": "Equivalent",
                "clientConfig": {"service": {"name": "mastd", "namespace": "mast-system", "path": "/inject", "port": 443}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "*"}],
                "namespaceSelector": ns_selector,
                "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]}
            })
        };
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {
                "name": "mast-sidecar-injector",
                "labels": {"app": "mastd", "app.kubernetes.io/part-of": "mast"},
                "generation": 1
            },
            "webhooks": [
                hook("namespace.sidecar-injector.mast.io", json!({"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]})),
                hook("rev.namespace.sidecar-injector.mast.io", json!({"matchExpressions": [{"key": "istio.io/rev", "operator": "In", "values": ["default"]}]})),
                hook("object.sidecar-injector.mast.io", json!({"matchExpressions": [{"key": "istio-injection", "operator": "DoesNotExist"}]})),
            ]
        })
    }

    fn b64(pem: &str) -> Value {
        serde_json::to_value(ByteString(pem.as_bytes().to_vec())).unwrap()
    }

    fn bundles(api: &FakeApiServer) -> Vec<Value> {
        api.get_at(PATH).unwrap()["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["clientConfig"]["caBundle"].clone())
            .collect()
    }

    const ROOT_A: &str = "-----BEGIN CERTIFICATE-----\nMIIBa...A\n-----END CERTIFICATE-----\n";
    const ROOT_B: &str = "-----BEGIN CERTIFICATE-----\nMIIBb...B\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn every_webhook_gets_the_root_base64_and_nothing_else_changes() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        api.put_at(PATH, installed());
        let patches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&patches);
        api.hook(move |method, _, body| {
            if *method == Method::PATCH {
                seen.lock().unwrap().push(body.clone());
            }
            None
        });
        let patched = patch_ca_bundle(client.clone(), DEFAULT_WEBHOOK_CONFIG, ROOT_A)
            .await
            .unwrap();
        assert_eq!(patched.len(), 3);
        assert_eq!(bundles(&api), vec![b64(ROOT_A); 3]);
        // The patch names the webhooks and carries only their caBundle.
        let sent = patches.lock().unwrap()[0].clone();
        assert_eq!(
            sent["webhooks"][0],
            json!({"name": "namespace.sidecar-injector.mast.io", "clientConfig": {"caBundle": b64(ROOT_A)}})
        );
        let after = api.get_at(PATH).unwrap();
        assert_eq!(after["webhooks"][0]["failurePolicy"], "Fail");
        assert_eq!(
            after["webhooks"][2]["clientConfig"]["service"]["path"],
            "/inject"
        );
        // Already right: no second write.
        assert!(
            patch_ca_bundle(client, DEFAULT_WEBHOOK_CONFIG, ROOT_A)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(patches.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_missing_configuration_is_a_clear_error() {
        let (client, _api) = FakeApiServer::start_in_memory().await;
        let err = patch_ca_bundle(client, DEFAULT_WEBHOOK_CONFIG, ROOT_A)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "MutatingWebhookConfiguration mast-sidecar-injector not found (is the injector installed?)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_patches_at_start_on_root_change_and_after_a_reapply() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        api.put_at(PATH, installed());
        let (bundle_tx, bundle) = watch::channel(ROOT_A.to_string());
        let (leader_tx, leader) = watch::channel(false);
        let task = tokio::spawn(run(client, DEFAULT_WEBHOOK_CONFIG.into(), bundle, leader));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !api.requests().iter().any(|l| l.starts_with("PATCH")),
            "followers never write"
        );
        leader_tx.send_replace(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bundles(&api), vec![b64(ROOT_A); 3]);
        bundle_tx.send_replace(ROOT_B.to_string());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bundles(&api), vec![b64(ROOT_B); 3]);
        // `kubectl apply` of the manifest empties caBundle; the resync restores it.
        api.put_at(PATH, installed());
        tokio::time::sleep(RESYNC + Duration::from_secs(1)).await;
        assert_eq!(bundles(&api), vec![b64(ROOT_B); 3]);
        drop((bundle_tx, leader_tx));
        task.await.unwrap();
    }
}
