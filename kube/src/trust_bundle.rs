//! Publishes the mesh's trust bundle as the ConfigMap `istio-ca-root-cert` (key
//! `root-cert.pem`) in every namespace, as istiod's namespace controller does.
//!
//! Sidecars mount that ConfigMap to verify citadel before they hold any certificate of their
//! own (Istio's injected pods mount it at `/var/run/secrets/istio`); without it in a namespace,
//! no injected pod there can start. So it must exist in every namespace, including ones
//! created after mastd started, come back if someone deletes it, and follow the root when it
//! changes (a rotation adds the next root to the bundle before it signs).
//!
//! Two watches (Namespaces; ConfigMaps named `istio-ca-root-cert` in all namespaces) keep a
//! picture of what is there; after each change every namespace whose ConfigMap is missing or
//! different is written — created, or merge-patched on `data` only — and nothing else, so a
//! steady cluster costs no writes. Namespaces being deleted and the system namespaces Istio
//! skips are left alone. Only the leader writes ([`crate::leader`]): followers do not even
//! watch, and a new leader starts from a fresh list.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;

/// The ConfigMap's name, as Istio's.
pub const CONFIGMAP: &str = "istio-ca-root-cert";
/// The key holding the PEM bundle.
pub const KEY: &str = "root-cert.pem";
/// Namespaces Istio does not publish to.
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];
/// Wait before retrying failed writes.
const RETRY: Duration = Duration::from_secs(5);

/// Keep `istio-ca-root-cert` equal to `bundle` in every namespace while `leader` is true.
/// Runs until the leader election ends (its sender dropped); a dropped bundle sender only
/// means the root no longer changes.
pub async fn run(
    client: kube::Client,
    mut bundle: watch::Receiver<String>,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return;
            }
            continue;
        }
        tracing::info!("publishing the trust bundle to every namespace (leader)");
        if !lead(&client, &mut bundle, &mut leader).await {
            return;
        }
    }
}

/// A picture of one kind kept from a watch: key → value, swapped whole on a relist.
#[derive(Debug)]
struct Mirror<V> {
    items: BTreeMap<String, V>,
    relisting: Option<BTreeMap<String, V>>,
    ready: bool,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            relisting: None,
            ready: false,
        }
    }
}

impl<V> Mirror<V> {
    /// Apply a watch event, `entry` giving an object's key and value.
    fn apply<K>(&mut self, event: watcher::Event<K>, entry: impl Fn(&K) -> (String, V)) {
        match event {
            watcher::Event::Init => self.relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => {
                let (k, v) = entry(&o);
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, v);
            }
            watcher::Event::InitDone => {
                self.items = self.relisting.take().unwrap_or_default();
                self.ready = true;
            }
            watcher::Event::Apply(o) => {
                let (k, v) = entry(&o);
                self.items.insert(k, v);
            }
            watcher::Event::Delete(o) => {
                let (k, _) = entry(&o);
                self.items.remove(&k);
            }
        }
    }
}

/// Publish while leading. Returns false when the election is over (stop), true when
/// leadership was lost (wait for it again).
async fn lead(
    client: &kube::Client,
    bundle: &mut watch::Receiver<String>,
    leader: &mut watch::Receiver<bool>,
) -> bool {
    let namespaces = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let configmaps = watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}")),
    )
    .default_backoff();
    tokio::pin!(namespaces, configmaps);
    // Namespace → publishable (not being deleted, not ignored).
    let mut ns: Mirror<bool> = Mirror::default();
    // Namespace → its ConfigMap's bundle.
    let mut cms: Mirror<Option<String>> = Mirror::default();
    let mut retry = false;
    let mut bundle_open = true;
    loop {
        tokio::select! {
            e = namespaces.next() => match e {
                Some(Ok(e)) => ns.apply(e, |n: &Namespace| {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    let terminating = n.metadata.deletion_timestamp.is_some()
                        || n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
                    let publish = !terminating && !IGNORED_NAMESPACES.contains(&name.as_str());
                    (name, publish)
                }),
                Some(Err(e)) => tracing::warn!("trust bundle: watching namespaces: {e}"),
                None => return true,
            },
            e = configmaps.next() => match e {
                Some(Ok(e)) => cms.apply(e, |c: &ConfigMap| {
                    let namespace = c.metadata.namespace.clone().unwrap_or_default();
                    (namespace, c.data.as_ref().and_then(|d| d.get(KEY)).cloned())
                }),
                Some(Err(e)) => tracing::warn!("trust bundle: watching ConfigMaps: {e}"),
                None => return true,
            },
            r = bundle.changed(), if bundle_open => bundle_open = r.is_ok(),
            r = leader.changed() => {
                if r.is_err() {
                    return false;
                }
                if !*leader.borrow_and_update() {
                    tracing::info!("no longer leader: trust bundle publishing paused");
                    return true;
                }
            },
            () = tokio::time::sleep(RETRY), if retry => {}
        }
        if ns.ready && cms.ready {
            let pem = bundle.borrow().clone();
            retry = !reconcile(client, &ns, &mut cms, &pem).await;
        }
    }
}

/// Write every publishable namespace whose ConfigMap differs from `pem`; false if a write
/// failed (retry later).
async fn reconcile(
    client: &kube::Client,
    ns: &Mirror<bool>,
    cms: &mut Mirror<Option<String>>,
    pem: &str,
) -> bool {
    let mut ok = true;
    for (name, _) in ns.items.iter().filter(|(_, publish)| **publish) {
        let current = cms.items.get(name);
        if current.is_some_and(|c| c.as_deref() == Some(pem)) {
            continue;
        }
        match publish(client, name, pem, current.is_some()).await {
            Ok(()) => {
                cms.items.insert(name.clone(), Some(pem.to_string()));
            }
            Err(e) => {
                tracing::warn!(namespace = %name, "publishing {CONFIGMAP}: {e}");
                ok = false;
            }
        }
    }
    ok
}

/// Create the ConfigMap (or, when it exists, patch its bundle).
async fn publish(
    client: &kube::Client,
    namespace: &str,
    pem: &str,
    exists: bool,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    if !exists {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.into()),
                labels: Some(BTreeMap::from([(
                    "istio.io/config".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(KEY.to_string(), pem.to_string())])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => {
                tracing::debug!(%namespace, "created {CONFIGMAP}");
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    api.patch(
        CONFIGMAP,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {KEY: pem}})),
    )
    .await?;
    tracing::debug!(%namespace, "updated {CONFIGMAP}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::Value;

    use super::*;
    use crate::testing::FakeApiServer;

    const A: &str = "-----BEGIN CERTIFICATE-----\nMIIBa...A\n-----END CERTIFICATE-----\n";
    const B: &str = "-----BEGIN CERTIFICATE-----\nMIIBb...B\n-----END CERTIFICATE-----\n";

    fn namespace(name: &str, phase: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": phase}
        })
    }

    fn cm_path(ns: &str) -> String {
        format!("/api/v1/namespaces/{ns}/configmaps/{CONFIGMAP}")
    }

    fn bundle_in(api: &FakeApiServer, ns: &str) -> Option<String> {
        api.get_at(&cm_path(ns))
            .and_then(|c| c["data"][KEY].as_str().map(String::from))
    }

    /// Wait (up to 5 s) for `cond`.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < Duration::from_secs(5), "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn writes(api: &FakeApiServer) -> Vec<String> {
        api.requests()
            .into_iter()
            .filter(|l| l.starts_with("POST") || l.starts_with("PATCH"))
            .collect()
    }

    #[tokio::test]
    async fn every_namespace_gets_the_bundle_and_keeps_it() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        for (n, phase) in [
            ("default", "Active"),
            ("bookinfo", "Active"),
            ("kube-system", "Active"),
            ("leaving", "Terminating"),
        ] {
            api.put_at(&format!("/api/v1/namespaces/{n}"), namespace(n, phase));
        }
        // bookinfo already has the right bundle (a previous leader wrote it).
        api.put_at(
            &cm_path("bookinfo"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": CONFIGMAP, "namespace": "bookinfo", "labels": {"istio.io/config": "true"}},
                   "data": {KEY: A}}),
        );
        let (bundle_tx, bundle) = watch::channel(A.to_string());
        let (leader_tx, leader) = watch::channel(true);
        let task = tokio::spawn(run(client, bundle, leader));

        eventually("default published", || {
            bundle_in(&api, "default").as_deref() == Some(A)
        })
        .await;
        assert_eq!(
            api.get_at(&cm_path("default")).unwrap()["metadata"]["labels"]["istio.io/config"],
            "true"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            writes(&api),
            ["POST /api/v1/namespaces/default/configmaps"],
            "only the missing one is written"
        );
        assert_eq!(bundle_in(&api, "kube-system"), None);
        assert_eq!(bundle_in(&api, "leaving"), None);

        // A new root: both updated.
        bundle_tx.send_replace(B.to_string());
        eventually("both updated", || {
            bundle_in(&api, "default").as_deref() == Some(B)
                && bundle_in(&api, "bookinfo").as_deref() == Some(B)
        })
        .await;

        // Deleted: re-created. A new namespace: published.
        assert!(api.delete_at(&cm_path("default")));
        api.put_at("/api/v1/namespaces/todo", namespace("todo", "Active"));
        eventually("re-created and new", || {
            bundle_in(&api, "default").as_deref() == Some(B)
                && bundle_in(&api, "todo").as_deref() == Some(B)
        })
        .await;

        // Steady: no more writes.
        let n = writes(&api).len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(writes(&api).len(), n, "{:?}", writes(&api));

        // Someone edits it by hand: put back.
        let mut edited = api.get_at(&cm_path("todo")).unwrap();
        edited["data"][KEY] = json!("tampered");
        api.put_at(&cm_path("todo"), edited);
        eventually("restored", || bundle_in(&api, "todo").as_deref() == Some(B)).await;

        // The root no longer changes (its sender is gone): publishing goes on.
        drop(bundle_tx);
        // A follower writes nothing.
        leader_tx.send_replace(false);
        tokio::time::sleep(Duration::from_millis(100)).await;
        api.put_at("/api/v1/namespaces/later", namespace("later", "Active"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(bundle_in(&api, "later"), None);
        // Leading again: caught up.
        leader_tx.send_replace(true);
        eventually("caught up", || {
            bundle_in(&api, "later").as_deref() == Some(B)
        })
        .await;

        // The election is over: the publisher stops.
        drop(leader_tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
