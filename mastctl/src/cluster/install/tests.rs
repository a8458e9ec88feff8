//! install/uninstall against the in-process fake API server: what lands in it, and what is
//! printed.

use std::time::Duration;

use mast_kube::testing::FakeApiServer;
use serde_json::Value;

use super::*;

fn options() -> InstallOptions {
    InstallOptions {
        dry_run: false,
        wait: false,
        timeout: Duration::from_secs(10),
        poll: Duration::from_millis(20),
    }
}

async fn server() -> FakeApiServer {
    let server = FakeApiServer::start().await.unwrap();
    server.add_builtin_kinds();
    server
}

fn everything() -> String {
    manifest::generate(&GenerateArgs::default()).unwrap()
}

async fn run_install(
    server: &FakeApiServer,
    text: &str,
    options: InstallOptions,
) -> anyhow::Result<String> {
    let mut out = Vec::new();
    install(&server.client(), text, options, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

async fn run_uninstall(server: &FakeApiServer, purge: bool) -> String {
    let mut out = Vec::new();
    uninstall(&server.client(), &everything(), purge, false, &mut out)
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The object as stored, without what the server adds.
fn stored(server: &FakeApiServer, doc: &Document) -> Option<Value> {
    let api_version = doc.object["apiVersion"].as_str().unwrap();
    let namespace = doc.namespace.as_deref().unwrap_or("");
    server.get(api_version, &doc.gvk.kind, namespace, &doc.name)
}

/// `stored` holds every field `applied` sets, with the same value.
fn contains(stored: &Value, applied: &Value) -> bool {
    match (stored, applied) {
        (Value::Object(s), Value::Object(a)) => a
            .iter()
            .all(|(k, v)| s.get(k).is_some_and(|sv| contains(sv, v))),
        _ => stored == applied,
    }
}

#[tokio::test]
async fn install_applies_every_document_crds_first() {
    let server = server().await;
    let text = everything();
    let out = run_install(&server, &text, options()).await.unwrap();
    let docs = documents(&text).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), docs.len(), "{out}");
    assert_eq!(
        lines[0],
        format!(
            "customresourcedefinition.apiextensions.k8s.io/{} applied",
            docs[0].name
        )
    );
    assert!(lines.contains(&"namespace/mast-system applied"), "{out}");
    assert!(lines.contains(&"deployment.apps/mastd applied"), "{out}");
    assert_eq!(
        *lines.last().unwrap(),
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/mast-sidecar-injector applied"
    );
    for doc in &docs {
        let object = stored(&server, doc).unwrap_or_else(|| panic!("{} missing", doc.describe()));
        assert!(contains(&object, &doc.object), "{} differs", doc.describe());
        let managers = &object["metadata"]["managedFields"];
        assert_eq!(managers[0]["manager"], FIELD_MANAGER, "{}", doc.describe());
        assert_eq!(managers[0]["operation"], "Apply");
    }
    // Every request was a server-side apply, forced, by mastctl.
    let patches: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH "))
        .collect();
    assert_eq!(patches.len(), docs.len());
    for p in &patches {
        assert!(
            p.contains("fieldManager=mastctl") && p.contains("force=true"),
            "{p}"
        );
    }
    // The CRDs' kinds are served now.
    let served = kube::discovery::pinned_kind(
        &server.client(),
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
    )
    .await;
    assert!(served.is_ok(), "{served:?}");
}

#[tokio::test]
async fn reinstall_changes_nothing() {
    let server = server().await;
    let text = everything();
    let first = run_install(&server, &text, options()).await.unwrap();
    let docs = documents(&text).unwrap();
    let versions: Vec<Value> = docs
        .iter()
        .map(|d| stored(&server, d).unwrap()["metadata"]["resourceVersion"].clone())
        .collect();
    let second = run_install(&server, &text, options()).await.unwrap();
    assert_eq!(first, second);
    let again: Vec<Value> = docs
        .iter()
        .map(|d| stored(&server, d).unwrap()["metadata"]["resourceVersion"].clone())
        .collect();
    assert_eq!(versions, again, "a re-apply of the same manifests wrote");
}

#[tokio::test]
async fn install_takes_over_a_changed_field() {
    let server = server().await;
    let text = everything();
    run_install(&server, &text, options()).await.unwrap();
    let mut deploy = server
        .get("apps/v1", "Deployment", "mast-system", "mastd")
        .unwrap();
    deploy["spec"]["replicas"] = 5.into();
    server.apply(deploy);
    run_install(&server, &text, options()).await.unwrap();
    let deploy = server
        .get("apps/v1", "Deployment", "mast-system", "mastd")
        .unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
}

#[tokio::test]
async fn dry_run_stores_nothing() {
    let server = server().await;
    let mut o = options();
    o.dry_run = true;
    let text = manifest::generate(&GenerateArgs::default()).unwrap();
    let out = run_install(&server, &text, o).await.unwrap();
    assert!(
        out.lines().all(|l| l.ends_with("applied (server dry run)")),
        "{out}"
    );
    for doc in documents(&text).unwrap() {
        assert!(stored(&server, &doc).is_none(), "{} stored", doc.describe());
    }
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("PATCH "))
            .all(|r| r.contains("dryRun=All"))
    );
}

/// Nothing but CRDs is applied until every CRD is Established; then the rest follows.
#[tokio::test]
async fn install_waits_until_crds_are_established() {
    let server = std::sync::Arc::new(server().await);
    server.hold_crds();
    let text = everything();
    let task = {
        let (server, text) = (server.clone(), text.clone());
        tokio::spawn(async move { run_install(&server, &text, options()).await })
    };
    let crds = documents(&text)
        .unwrap()
        .into_iter()
        .filter(is_crd)
        .collect::<Vec<_>>();
    // Until every CRD is stored, and a little longer, nothing else is applied.
    for _ in 0..500 {
        if crds.iter().all(|d| stored(&server, d).is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished());
    assert!(
        server.get("v1", "Namespace", "", "mast-system").is_none(),
        "applied before the CRDs were Established"
    );
    server.establish_crds();
    let out = task.await.unwrap().unwrap();
    assert!(out.contains("deployment.apps/mastd applied"), "{out}");
    assert!(server.get("v1", "Namespace", "", "mast-system").is_some());
}

#[tokio::test]
async fn a_crd_never_established_is_a_clear_error() {
    let server = server().await;
    server.hold_crds();
    let mut o = options();
    o.timeout = Duration::from_millis(300);
    let e = run_install(&server, &everything(), o).await.unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("is not Established after"), "{e}");
    assert!(e.contains("CustomResourceDefinition "), "{e}");
    assert!(server.get("v1", "Namespace", "", "mast-system").is_none());
}

#[tokio::test]
async fn wait_follows_the_deployment_rollout() {
    let server = std::sync::Arc::new(server().await);
    let mut o = options();
    o.wait = true;
    let text = manifest::generate(&GenerateArgs {
        install: true,
        ..GenerateArgs::default()
    })
    .unwrap();
    let task = {
        let (server, text) = (server.clone(), text.clone());
        tokio::spawn(async move { run_install(&server, &text, o).await })
    };
    let mut deploy = None;
    for _ in 0..500 {
        deploy = server.get("apps/v1", "Deployment", "mast-system", "mastd");
        if deploy.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "done before any replica was available");
    // The deployment controller's report, for mastd and then for the gateways (applied
    // after it).
    let mut deploy = deploy.unwrap();
    deploy["status"] = serde_json::json!({
        "observedGeneration": deploy["metadata"]["generation"],
        "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
    });
    server.apply(deploy);
    for gateway in ["istio-ingressgateway", "istio-egressgateway"] {
        let mut d = None;
        for _ in 0..500 {
            d = server.get("apps/v1", "Deployment", "istio-system", gateway);
            if d.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut d = d.unwrap_or_else(|| panic!("{gateway} was not applied"));
        d["status"] = serde_json::json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        });
        server.apply(d);
    }
    let out = task.await.unwrap().unwrap();
    assert!(
        out.contains("deployment.apps/mastd rolled out (2/2 available)\n"),
        "{out}"
    );
    assert!(
        out.contains("deployment.apps/istio-ingressgateway rolled out (1/1 available)\n"),
        "{out}"
    );
}

#[tokio::test]
async fn uninstall_deletes_in_reverse_and_keeps_crds() {
    let server = server().await;
    let text = everything();
    run_install(&server, &text, options()).await.unwrap();
    let out = run_uninstall(&server, false).await;
    let docs = documents(&text).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), docs.len());
    assert_eq!(
        lines[0],
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/mast-sidecar-injector deleted"
    );
    for doc in &docs {
        let kept = stored(&server, doc).is_some();
        assert_eq!(kept, is_crd(doc), "{}", doc.describe());
        let verb = if is_crd(doc) {
            "kept (--purge deletes it)"
        } else {
            "deleted"
        };
        assert!(
            lines.contains(&format!("{} {verb}", doc.describe()).as_str()),
            "{out}"
        );
    }
    // Again: everything is gone already.
    let again = run_uninstall(&server, false).await;
    assert!(again.contains("deployment.apps/mastd not found"), "{again}");
    assert!(!again.contains(" deleted"), "{again}");
}

#[tokio::test]
async fn purge_deletes_the_crds_and_their_resources() {
    let server = server().await;
    run_install(&server, &everything(), options())
        .await
        .unwrap();
    server.apply(serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"]},
    }));
    let out = run_uninstall(&server, true).await;
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/virtualservices.networking.istio.io deleted"
        ),
        "{out}"
    );
    for doc in documents(&everything()).unwrap() {
        assert!(stored(&server, &doc).is_none(), "{} kept", doc.describe());
    }
    // The kind is no longer served, so its resources are gone with it.
    let gone = kube::discovery::pinned_kind(
        &server.client(),
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
    )
    .await;
    assert!(gone.is_err());
    assert!(
        server
            .get(
                "networking.istio.io/v1",
                "VirtualService",
                "default",
                "reviews"
            )
            .is_none()
    );
}

#[test]
fn documents_name_what_is_missing() {
    let e = documents("apiVersion: v1\nkind: Namespace\nmetadata: {}\n").unwrap_err();
    assert_eq!(e.to_string(), "manifest document 1: no name");
    let docs = documents(
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: shop}\n---\n",
    )
    .unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].describe(), "deployment.apps/d");
    assert_eq!(docs[0].namespace.as_deref(), Some("shop"));
}
