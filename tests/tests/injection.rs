//! Sidecar injection as a cluster sees it: the webhook in a running mastd, over HTTPS with a
//! certificate from the mesh CA, answering AdmissionReviews the way the API server sends them;
//! and `mastctl kube-inject` on real manifests. The client is `curl` (a real TLS stack that
//! checks the certificate against the mesh root and the service name, as the API server does
//! with the webhook's caBundle).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use mast_e2e::{CaOptions, Mastd, bin};
use serde_json::{Value, json};

fn corpus(name: &str) -> PathBuf {
    mast_testdata::corpus(&format!("istio-inject/{name}"))
}

/// The pod the API server would send for the first replica of `deployment`.
fn pod_of(deployment: &Value) -> Value {
    let name = deployment["metadata"]["name"].as_str().unwrap_or("app");
    let mut pod = deployment["spec"]["template"].clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    let meta = pod["metadata"].as_object_mut().expect("template metadata");
    meta.insert("generateName".into(), json!(format!("{name}-6d4cf56db6-")));
    meta.entry("labels")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("labels")
        .insert("pod-template-hash".into(), json!("6d4cf56db6"));
    meta.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-6d4cf56db6"),
                "uid": "5f1a7c1e-0000-4000-8000-000000000000", "controller": true}]),
    );
    pod
}

fn admission_review(pod: &Value, namespace: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false,
        }
    })
}

/// POSTs `body` to the webhook with curl, verifying its certificate for `mastd.mast-system.svc`
/// against the mesh root; returns (HTTP status, body).
fn post(mastd: &Mastd, work: &Path, body: &[u8], content_type: &str) -> Result<(u16, String)> {
    let ca = mastd.ca.as_ref().context("mastd runs with citadel")?;
    let file = work.join("review.json");
    std::fs::write(&file, body)?;
    let port = mastd.injector_addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(ca.root_cert())
        .args([
            "--resolve",
            &format!("mastd.mast-system.svc:{port}:127.0.0.1"),
        ])
        .args(["-H", &format!("content-type: {content_type}")])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("https://mastd.mast-system.svc:{port}/inject"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "curl failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').context("curl output")?;
    Ok((code.trim().parse()?, body.to_string()))
}

fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_injects_over_https_and_refuses_bad_input_clearly() -> Result<()> {
    if Command::new("curl").arg("--version").output().is_err() {
        bail!("curl is needed (scripts/test.sh installs it)");
    }
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let config = work.join("config");
    std::fs::create_dir_all(&config)?;
    let mastd = Mastd::start_with_ca(
        &config,
        work,
        CaOptions {
            dir: work.join("ca"),
            addr: None,
            workload_ttl: None,
        },
    )
    .await?;

    // A Deployment's pod, as the ReplicaSet controller creates it.
    let text = std::fs::read_to_string(corpus("hello-probes.yaml"))?;
    let deployment = yaml_docs(&text)?.remove(0);
    let pod = pod_of(&deployment);
    let review = serde_json::to_vec(&admission_review(&pod, "shop"))?;
    let (status, body) = post(&mastd, work, &review, "application/json")?;
    ensure!(status == 200, "{status}: {body}");
    let answer: Value = serde_json::from_str(&body)?;
    ensure!(answer["apiVersion"] == "admission.k8s.io/v1" && answer["kind"] == "AdmissionReview");
    let response = &answer["response"];
    ensure!(
        response["uid"] == "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
        "{response}"
    );
    ensure!(
        response["allowed"] == true && response["patchType"] == "JSONPatch",
        "{response}"
    );
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().context("patch")?)?;
    let patch: json_patch::Patch = serde_json::from_slice(&patch)?;
    let mut injected = pod.clone();
    json_patch::patch(&mut injected, &patch).context("the patch applies to the pod")?;

    let spec = &injected["spec"];
    ensure!(names(&spec["initContainers"]) == ["istio-init", "istio-proxy"]);
    ensure!(names(&spec["containers"]) == ["hello", "world"]);
    let proxy = &spec["initContainers"][1];
    ensure!(proxy["restartPolicy"] == "Always", "native sidecar");
    ensure!(proxy["securityContext"]["runAsUser"] == 1337);
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .cloned()
    };
    ensure!(env("ISTIO_META_WORKLOAD_NAME").context("workload")?["value"] == "hello");
    ensure!(
        env("ISTIO_META_OWNER").context("owner")?["value"]
            == "kubernetes://apis/apps/v1/namespaces/shop/deployments/hello"
    );
    let probers: Value = serde_json::from_str(
        env("ISTIO_KUBE_APP_PROBERS").context("probers")?["value"]
            .as_str()
            .context("text")?,
    )?;
    ensure!(
        probers["/app-health/hello/livez"]["httpGet"]["port"] == 80,
        "{probers}"
    );
    ensure!(spec["containers"][0]["livenessProbe"]["httpGet"]["port"] == 15020);
    let token = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "istio-token")
        .context("token volume")?;
    ensure!(token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "istio-ca");
    let meta = &injected["metadata"];
    ensure!(meta["labels"]["security.istio.io/tlsMode"] == "istio");
    ensure!(meta["labels"]["service.istio.io/canonical-name"] == "hello");
    ensure!(meta["annotations"]["sidecar.istio.io/status"].is_string());
    println!(
        "webhook: {} patch operations, pod gets istio-init + native istio-proxy",
        patch.0.len()
    );

    // The same pod through the webhook a second time (the API server's reinvocation): no change.
    let again = serde_json::to_vec(&admission_review(&injected, "shop"))?;
    let (_, body) = post(&mastd, work, &again, "application/json")?;
    let answer: Value = serde_json::from_str(&body)?;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap_or(""))?;
    let patch: json_patch::Patch =
        serde_json::from_slice(&patch).unwrap_or(json_patch::Patch(vec![]));
    ensure!(
        patch.0.is_empty(),
        "re-injection changed the pod: {:?}",
        patch.0
    );

    // Opted out: allowed untouched.
    let mut opted_out = pod.clone();
    opted_out["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"});
    let (_, body) = post(
        &mastd,
        work,
        &serde_json::to_vec(&admission_review(&opted_out, "shop"))?,
        "application/json",
    )?;
    let answer: Value = serde_json::from_str(&body)?;
    ensure!(
        answer["response"]["allowed"] == true && answer["response"].get("patch").is_none(),
        "{answer}"
    );

    // A bad traffic annotation: denied, and the message names it.
    let bad = yaml_docs(&std::fs::read_to_string(corpus(
        "traffic-annotations-bad-excludeoutboundports.yaml",
    ))?)?
    .remove(0);
    let (_, body) = post(
        &mastd,
        work,
        &serde_json::to_vec(&admission_review(&pod_of(&bad), "shop"))?,
        "application/json",
    )?;
    let answer: Value = serde_json::from_str(&body)?;
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or("");
    ensure!(answer["response"]["allowed"] == false, "{answer}");
    ensure!(
        message.contains("traffic.sidecar.istio.io/excludeOutboundPorts"),
        "{message}"
    );
    println!("webhook: bad annotation denied: {message}");

    // What it cannot read gets a clear HTTP error, and the webhook stays up.
    let (status, body) = post(&mastd, work, b"{\"not\": \"a review\"", "application/json")?;
    ensure!(
        status == 400 && body.contains("AdmissionReview"),
        "{status}: {body}"
    );
    let (status, _) = post(&mastd, work, b"<xml/>", "application/xml")?;
    ensure!(status == 415, "{status}");
    let (status, _) = post(&mastd, work, &review, "application/json")?;
    ensure!(status == 200, "still serving");
    Ok(())
}

#[test]
fn kube_inject_injects_manifests_and_names_bad_annotations() -> Result<()> {
    let mastctl = bin("mastctl");
    // Two Deployments in one stream: both injected.
    let out = Command::new(&mastctl)
        .args(["kube-inject", "-f"])
        .arg(corpus("hello-multi.yaml"))
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_docs(&String::from_utf8(out.stdout)?)?;
    ensure!(docs.len() == 2);
    for d in &docs {
        let spec = &d["spec"]["template"]["spec"];
        ensure!(
            names(&spec["initContainers"]) == ["istio-init", "istio-proxy"],
            "{d}"
        );
    }
    // A Service passes through unchanged.
    let out = Command::new(&mastctl)
        .args(["kube-inject", "-f"])
        .arg(corpus("hello-service.yaml"))
        .output()?;
    ensure!(out.status.success());
    let input = yaml_docs(&std::fs::read_to_string(corpus("hello-service.yaml"))?)?;
    ensure!(yaml_docs(&String::from_utf8(out.stdout)?)? == input);
    // hostNetwork: left alone, and the user is told why.
    let out = Command::new(&mastctl)
        .args(["kube-inject", "-f"])
        .arg(corpus("hello-host-network.yaml"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.contains("host networking"),
        "{stderr}"
    );
    // A bad annotation: exit 64, the message names the file, the object and the annotation.
    let out = Command::new(&mastctl)
        .args(["kube-inject", "-f"])
        .arg(corpus("traffic-annotations-bad-includeipranges.yaml"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(64), "{:?} {stderr}", out.status);
    for words in [
        "traffic-annotations-bad-includeipranges.yaml",
        "Deployment default/traffic",
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
    ] {
        ensure!(stderr.contains(words), "{words:?} not in {stderr}");
    }
    Ok(())
}
