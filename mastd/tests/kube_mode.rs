//! `mastd --kubeconfig PATH` as a process against the fake API server: the flags, the client
//! built from a kubeconfig, the source wired into pilot, the leader election that lets it
//! write status (and releases the Lease on SIGTERM) — and a bad kubeconfig is a
//! configuration error (exit 64) that names the file.

use std::process::Stdio;
use std::time::Duration;

use mast_kube::testing::{FakeApiServer, KindSpec};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn virtual_service(w1: i64, w2: i64) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "user", "namespace": "default"},
        "spec": {"hosts": ["user"], "http": [{"route": [
            {"destination": {"host": "user", "subset": "v1"}, "weight": w1},
            {"destination": {"host": "user", "subset": "v2"}, "weight": w2},
        ]}]},
    })
}

fn kubeconfig(server: &str, tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mastd-{tag}-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: '{server}'}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    path
}

async fn configz(addr: &str) -> Value {
    get_json(addr, "/debug/configz").await
}

async fn get_json(addr: &str, path: &str) -> Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn weights(configz: &Value) -> Vec<u64> {
    configz["model"]["routes"][0]["http"][0]["action"]["Forward"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["weight"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn mastd_reads_the_mesh_from_the_kubernetes_api() {
    let api = FakeApiServer::start().await.unwrap();
    api.add_kind(KindSpec::namespaced(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ));
    api.add_kind(KindSpec::namespaced(
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ));
    api.add_kind(KindSpec::namespaced(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
    ));
    // citadel keeps its root in a Secret; the trust bundle goes to a ConfigMap per namespace.
    api.add_kind(KindSpec::namespaced("", "v1", "Secret", "secrets"));
    api.add_kind(KindSpec::namespaced("", "v1", "ConfigMap", "configmaps"));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "user", "namespace": "default"},
                     "spec": {"selector": {"app": "user"}, "ports": [{"name": "http", "port": 8081}]}}));
    api.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                     "metadata": {"name": "user", "namespace": "default"},
                     "spec": {"host": "user", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                           {"name": "v2", "labels": {"version": "v2"}}]}}));
    api.apply(virtual_service(50, 50));
    let config = kubeconfig(&api.url(), "kube-mode");
    let telemetry = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();

    let mut mastd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mastd"))
        .args(["--kubeconfig", config.to_str().unwrap()])
        .args(["--xds-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--ca-addr", "127.0.0.1:0"])
        .args(["--telemetry-addr", &telemetry, "--no-trace-receiver"])
        .args(["--no-injector", "--log-json"])
        .env("RUST_LOG", "info")
        .env("POD_NAME", "mastd-0")
        .env("POD_NAMESPACE", "mast-system")
        .env_remove("MAST_CONFIG_DIR")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(mastd.stdout.take().unwrap()).lines();
    let http = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "mastd ready" {
                return entry["fields"]["http"].as_str().unwrap().to_string();
            }
        }
        panic!("mastd exited before it was ready");
    })
    .await
    .expect("mastd ready within 30 s");
    // Keep draining the log so mastd never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let _ = std::fs::remove_file(&config);

    let z = configz(&http).await;
    assert_eq!(weights(&z), [50, 50], "{z}");

    // An accepted edit is a trace of mastd's own work, as in local mode: the change, its
    // debounce and validation, and the publish that the pushes join.
    api.apply(virtual_service(70, 30));
    let mut trace = Value::Null;
    for _ in 0..250 {
        let found = get_json(
            &telemetry,
            "/api/traces?service=mastd&operation=config.change&limit=20",
        )
        .await;
        let changed = found["data"].as_array().into_iter().flatten().find(|t| {
            t["spans"].as_array().into_iter().flatten().any(|s| {
                s["operationName"] == "config.change"
                    && s["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|t| t["key"] == "changed" && t["value"] == true)
            })
        });
        if let Some(t) = changed {
            trace = t.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let by = |name: &str| spans.iter().find(|s| s["operationName"] == name);
    let root = by("config.change").unwrap_or_else(|| panic!("a config.change trace: {trace}"));
    for child in ["config.debounce", "config.validate", "config.publish"] {
        let s = by(child).unwrap_or_else(|| panic!("{child} in {trace}"));
        assert_eq!(
            s["references"][0]["spanID"], root["spanID"],
            "{child} is a child of config.change: {s}"
        );
    }
    assert_eq!(weights(&configz(&http).await), [70, 30]);

    api.apply(virtual_service(80, -10));
    let mut z = Value::Null;
    for _ in 0..250 {
        z = configz(&http).await;
        if z["errors"].as_array().is_some_and(|e| !e.is_empty()) && !api.status_patches().is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = z["errors"][0].as_str().unwrap_or_default().to_string();
    assert!(
        error.starts_with("kube:/networking.istio.io/VirtualService/default/user"),
        "{z}"
    );
    assert_eq!(weights(&z), [70, 30], "the last good split stays");
    let patches = api.status_patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(
        patches[0].body["status"]["validationMessages"][0]["level"],
        "ERROR"
    );
    // It leads (so it wrote the status) …
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "mast-system",
            "mast-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "mastd-0", "{lease}");
    // citadel made its root and stored it as Istio does; the leader published it.
    let secret = api
        .get("v1", "Secret", "mast-system", "istio-ca-secret")
        .expect("istio-ca-secret created");
    let root_b64 = secret["data"]["ca-cert.pem"].as_str().unwrap_or_default();
    assert!(!root_b64.is_empty(), "{secret}");
    let mut bundle = None;
    for _ in 0..250 {
        bundle = api.get("v1", "ConfigMap", "default", "istio-ca-root-cert");
        if bundle.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bundle = bundle.expect("istio-ca-root-cert published in namespace default");
    assert!(
        bundle["data"]["root-cert.pem"]
            .as_str()
            .is_some_and(|pem| pem.contains("BEGIN CERTIFICATE")),
        "{bundle}"
    );

    // … and on SIGTERM it releases the Lease for the next replica.
    let pid = mastd.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), mastd.wait())
        .await
        .expect("mastd stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "mast-system",
            "mast-leader",
        )
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{lease}"
    );
}

#[tokio::test]
async fn an_unreadable_kubeconfig_is_a_configuration_error() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mastd"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig"])
        .args(["--xds-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--ca-addr", "127.0.0.1:0"])
        .args(["--no-injector", "--no-telemetry"])
        .env_remove("MAST_CONFIG_DIR")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("/nonexistent/kubeconfig"), "{log}");
}

/// An operator plugs in `cacerts` while mastd runs: it notices within its poll interval and
/// shuts down cleanly (exit 0, the Lease released) so Kubernetes starts it with the new root.
#[tokio::test]
async fn a_new_ca_in_the_secrets_restarts_mastd_cleanly() {
    let api = FakeApiServer::start().await.unwrap();
    for (group, kind, plural) in [
        ("coordination.k8s.io", "Lease", "leases"),
        ("", "Secret", "secrets"),
        ("", "ConfigMap", "configmaps"),
    ] {
        api.add_kind(KindSpec::namespaced(group, "v1", kind, plural));
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}));
    let config = kubeconfig(&api.url(), "new-ca");
    let mut mastd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mastd"))
        .args(["--kubeconfig", config.to_str().unwrap()])
        .args(["--xds-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--ca-addr", "127.0.0.1:0", "--ca-poll-interval", "200ms"])
        .args(["--no-injector", "--no-telemetry", "--log-json"])
        .env("RUST_LOG", "info")
        .env("POD_NAME", "mastd-0")
        .env("POD_NAMESPACE", "mast-system")
        .env_remove("MAST_CONFIG_DIR")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(mastd.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("mastd ready") {
                return;
            }
        }
        panic!("mastd exited before it was ready");
    })
    .await
    .expect("mastd ready within 30 s");
    let log = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let _ = std::fs::remove_file(&config);

    // A plug-in CA: here the self-signed root mastd created, now with its own root named,
    // which is a different CA as far as the Secrets go.
    let created = api
        .get("v1", "Secret", "mast-system", "istio-ca-secret")
        .expect("istio-ca-secret created");
    let data = &created["data"];
    api.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "mast-system"},
        "data": {
            "ca-cert.pem": data["ca-cert.pem"], "ca-key.pem": data["ca-key.pem"],
            "root-cert.pem": data["ca-cert.pem"], "cert-chain.pem": data["ca-cert.pem"],
        },
    }));
    let status = tokio::time::timeout(Duration::from_secs(10), mastd.wait())
        .await
        .expect("mastd restarts for the new CA within 10 s")
        .unwrap();
    assert!(status.success(), "{status}");
    let log = log.await.unwrap();
    assert!(
        log.contains("Secret mast-system/cacerts holds a new CA: restarting in"),
        "{log}"
    );
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "mast-system",
            "mast-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"].as_str().unwrap_or(""), "");
}
