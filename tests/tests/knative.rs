//! Knative Serving on Mast, through the ingress gateway (Envoy, then mast-proxy, as the
//! gateway; one shared mastd and set of backends).
//!
//! Two ways a cluster runs Knative are proven:
//! - **Mast's own Knative dialect**: a Knative Service `myapp` with two revisions at 50/50 and
//!   nothing else; its external URL `myapp.default.example.com` (the default domain) is
//!   served by Knative's gateway `knative-serving/knative-ingress-gateway`, the split holds
//!   within tolerance with zero failures, and each revision gets Knative's
//!   `Knative-Serving-Revision` header.
//! - **net-istio's own Istio resources**, written as net-istio writes them
//!   (`pkg/reconciler/ingress/resources/virtual_service.go`, `config/20{2,3}-*gateway.yaml`,
//!   the serverless service's DestinationRule, and the `K-Network-Hash` probe route that
//!   `knative.dev/networking`'s `InsertProbe` adds), for a route `hello` whose Knative Service
//!   is present too: the VirtualServices win over Mast's own translation (as in Istio, which
//!   never reads Knative objects), mastd says so, the probe route answers with the hash, the
//!   split and the revision headers hold through the external gateway and the cluster-local
//!   gateway, a DomainMapping's `rewrite.authority` reaches the revision, and a Host the
//!   VirtualService does not match is a 404.
//!
//! The mesh side is checked from a client sidecar (Envoy, then mast-proxy) on Knative's
//! service port 80 (skipped where 127.0.0.1:80 cannot be bound, a failure under
//! `MAST_REQUIRE_NETNS=1`): net-istio's mesh VirtualService and Mast's own translation split
//! and set the headers there too, and a Host of the ExternalName Service that the
//! VirtualService does not match is a 404.
//!
//! The Gateways are net-istio's except for their port numbers (80 and 8081 there): the test
//! takes free ports so it can run beside the other gateway suites. Last, with the
//! `knative-ingress-gateway` resource removed, both gateways serve the one Mast adds in its
//! place (port 80, as net-istio installs it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mast_e2e::{
    HttpClient, Mastd, PodSpec, Sidecar, SidecarKind, eventually, free_port, send_requests,
};

const GATEWAY_POD: PodSpec<'static> = PodSpec {
    name: "istio-ingressgateway-kn",
    namespace: "istio-system",
    labels: &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")],
    service_account: "istio-ingressgateway-service-account",
};

/// An app in the mesh calling Knative services by their cluster-local names.
const CLIENT_POD: PodSpec<'static> = PodSpec {
    name: "client-kn",
    namespace: "default",
    labels: &[("app", "client")],
    service_account: "client",
};

/// The hash net-istio puts in its probe route (a SHA-256 of the Ingress, hex).
const HASH: &str = "6d0b5d21e6a2c9a9f3f61b8d2d1d3ab0b0c2e84ddcb6f1d0c35a3e4f9b8a7c21";

/// Requests per split measurement, and the tolerance around 50% that cannot flake (binomial
/// standard deviation at 200 requests is 3.5%: 15% is more than four of them).
const REQUESTS: u64 = 200;
const TOLERANCE: f64 = 15.0;

/// An HTTP server on `addr` answering its `name`; on `/echo`, its name and the request's Host
/// and Knative headers, one per line, so the test sees what the gateway forwarded.
struct EchoBackend {
    stop: Arc<AtomicBool>,
}

impl EchoBackend {
    async fn start(name: &str, addr: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (name, stop_c) = (name.to_string(), stop.clone());
        tokio::spawn(async move {
            while !stop_c.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let name = name.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mut body = name.clone();
                        if req.uri().path() == "/echo" {
                            for h in [
                                "host",
                                "knative-serving-revision",
                                "knative-serving-namespace",
                                "k-network-hash",
                            ] {
                                let v = req
                                    .headers()
                                    .get(h)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-");
                                body.push_str(&format!("\n{h}={v}"));
                            }
                        }
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { stop })
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// net-istio's Gateways (config/202-gateway.yaml, config/203-local-gateway.yaml) on the
/// test's ports.
fn gateways(external: u16, local: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: knative-ingress-gateway
  namespace: knative-serving
  labels:
    app.kubernetes.io/component: net-istio
    app.kubernetes.io/name: knative-serving
    networking.knative.dev/ingress-provider: istio
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: {external}
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: knative-local-gateway
  namespace: knative-serving
  labels:
    app.kubernetes.io/component: net-istio
    app.kubernetes.io/name: knative-serving
    networking.knative.dev/ingress-provider: istio
spec:
  selector:
    istio: ingressgateway
  servers:
    - port:
        number: {local}
        name: http
        protocol: HTTP
      hosts:
        - "*"
"#
    )
}

/// Mast's own dialect: a Knative Service with two revisions at 50/50, and the revisions'
/// pods (WorkloadEntries standing for the pods labelled with their revision).
fn myapp(port: u16) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: myapp
  namespace: default
spec:
  template:
    metadata:
      name: myapp-00002
    spec:
      containers:
      - image: example.com/myapp
        ports:
        - containerPort: {port}
  traffic:
  - revisionName: myapp-00001
    percent: 50
  - revisionName: myapp-00002
    percent: 50
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: myapp-00001-pod, namespace: default}}
spec:
  address: 127.0.0.2
  labels: {{serving.knative.dev/revision: myapp-00001}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: myapp-00002-pod, namespace: default}}
spec:
  address: 127.0.0.3
  labels: {{serving.knative.dev/revision: myapp-00002}}
"#
    )
}

/// A route `hello` as a cluster with net-istio holds it: the Knative Service, the Services
/// Knative makes (the route's ExternalName to the local gateway, each revision's Service and
/// private Service; here with selectors, where Knative fills their Endpoints itself), the
/// serverless services' DestinationRules and net-istio's two VirtualServices, with the probe route first in each.
fn hello(p1: u16, p2: u16) -> String {
    let mut y = String::from(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  traffic:
  - revisionName: hello-00001
    percent: 50
  - revisionName: hello-00002
    percent: 50
---
apiVersion: v1
kind: Service
metadata:
  name: hello
  namespace: default
  labels:
    serving.knative.dev/route: hello
spec:
  type: ExternalName
  externalName: knative-local-gateway.istio-system.svc.cluster.local
  ports:
  - name: http2
    port: 80
    targetPort: 80
  sessionAffinity: None
"#,
    );
    for (rev, port) in [("hello-00001", p1), ("hello-00002", p2)] {
        y.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata:
  name: {rev}
  namespace: default
  labels:
    serving.knative.dev/revision: {rev}
spec:
  selector:
    serving.knative.dev/revision: {rev}
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: {rev}-private
  namespace: default
  labels:
    serving.knative.dev/revision: {rev}
spec:
  selector:
    serving.knative.dev/revisionUID: {rev}-uid
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: http
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {rev}-pod, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{serving.knative.dev/revision: {rev}, serving.knative.dev/revisionUID: {rev}-uid}}
  ports: {{http: {port}}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: {rev}-private
  namespace: default
spec:
  host: {rev}-private.default.svc.cluster.local
  subsets:
  - name: normal
    trafficPolicy:
      loadBalancer:
        simple: LEAST_REQUEST
  - name: direct
    trafficPolicy:
      loadBalancer:
        simple: PASSTHROUGH
"#
        ));
    }
    let split = r#"    route:
    - destination:
        host: hello-00001.default.svc.cluster.local
        port:
          number: 80
      headers:
        request:
          set:
            Knative-Serving-Namespace: default
            Knative-Serving-Revision: hello-00001
      weight: 50
    - destination:
        host: hello-00002.default.svc.cluster.local
        port:
          number: 80
      headers:
        request:
          set:
            Knative-Serving-Namespace: default
            Knative-Serving-Revision: hello-00002
      weight: 50
"#;
    let rule = |prefix: &str, gateways: &str, probe: bool| {
        let mut r = String::new();
        if probe {
            r.push_str(&format!(
                "  - headers:\n      request:\n        set:\n          K-Network-Hash: {HASH}\n"
            ));
            r.push_str(&format!(
                "    match:\n    - authority:\n        prefix: {prefix}\n      gateways:\n{gateways}      headers:\n        K-Network-Hash:\n          exact: override\n"
            ));
        } else {
            r.push_str(&format!(
                "  - match:\n    - authority:\n        prefix: {prefix}\n      gateways:\n{gateways}"
            ));
        }
        r.push_str("    retries: {}\n");
        r.push_str(split);
        r
    };
    let local_gw = "      - knative-serving/knative-local-gateway\n";
    let ext_gw = "      - knative-serving/knative-ingress-gateway\n";
    let mesh_gw = "      - mesh\n";
    y.push_str(&format!(
        r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: hello-ingress
  namespace: default
  labels:
    networking.internal.knative.dev/ingress: hello
    serving.knative.dev/route: hello
    serving.knative.dev/routeNamespace: default
  annotations:
    networking.knative.dev/ingress.class: istio.ingress.networking.knative.dev
spec:
  gateways:
  - knative-serving/knative-ingress-gateway
  - knative-serving/knative-local-gateway
  hosts:
  - hello.default
  - hello.default.example.com
  - hello.default.svc
  - hello.default.svc.cluster.local
  http:
{}{}{}{}---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: hello-mesh
  namespace: default
  labels:
    networking.internal.knative.dev/ingress: hello
    serving.knative.dev/route: hello
    serving.knative.dev/routeNamespace: default
spec:
  gateways:
  - mesh
  hosts:
  - hello.default
  - hello.default.svc
  - hello.default.svc.cluster.local
  http:
{}{}"#,
        rule("hello.default", local_gw, true),
        rule("hello.default", local_gw, false),
        rule("hello.default.example.com", ext_gw, true),
        rule("hello.default.example.com", ext_gw, false),
        rule("hello.default", mesh_gw, true),
        rule("hello.default", mesh_gw, false),
    ));
    // A DomainMapping hello.example.org → hello, as net-istio writes its Ingress: the route's
    // Host rewritten to the mapped service's (`rewrite.authority`). net-istio's destination
    // is the route's ExternalName Service (back through the local gateway, a name loopback
    // cannot resolve); here it is the revision, which shows the Host it got.
    y.push_str(
        r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: hello.example.org-ingress
  namespace: default
  labels:
    networking.internal.knative.dev/ingress: hello.example.org
spec:
  gateways:
  - knative-serving/knative-ingress-gateway
  hosts:
  - hello.example.org
  http:
  - match:
    - authority:
        prefix: hello.example.org
      gateways:
      - knative-serving/knative-ingress-gateway
    retries: {}
    rewrite:
      authority: hello.default.svc.cluster.local
    route:
    - destination:
        host: hello-00001.default.svc.cluster.local
        port:
          number: 80
      weight: 100
"#,
    );
    y
}

/// GET `url` with `host` and `headers` until it answers 200; the body.
async fn get_ok(
    gw: &Sidecar,
    what: &str,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<String> {
    let client = HttpClient::new();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = eventually(what, Duration::from_secs(20), || {
        let (client, headers) = (client.clone(), headers.clone());
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let (status, body) = client.get(url, Some(host), &h).await?;
            if status != 200 {
                bail!("status {status}: {body}");
            }
            Ok(body)
        }
    })
    .await;
    match r {
        Ok(b) => Ok(b),
        Err(e) => {
            let dump = gw.admin("/config_dump").await.unwrap_or_default();
            bail!(
                "{e:#}\n{} log:\n{}\nconfig:\n{dump}",
                gw.kind,
                gw.proc.log_text()
            )
        }
    }
}

/// The `/echo` body as `header → value`.
fn echoed(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .skip(1)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// 200 requests through the gateway: both revisions within tolerance, no failure.
async fn check_split(kind: SidecarKind, url: &str, host: &str, revs: [&str; 2]) -> Result<()> {
    let tally = send_requests(url, host, &[], REQUESTS, 4).await;
    assert_eq!(
        tally.failures(),
        0,
        "{kind}: {host}: failures {:?}",
        tally.errors
    );
    for rev in revs {
        let share = tally.percent(rev);
        assert!(
            (share - 50.0).abs() <= TOLERANCE,
            "{kind}: {host}: {rev} served {share:.1}% ({:?})",
            tally.by_body
        );
    }
    Ok(())
}

async fn check_gateway(
    kind: SidecarKind,
    mastd: &Mastd,
    work: &std::path::Path,
    ext: u16,
    local: u16,
) -> Result<()> {
    let gw = Sidecar::start_gateway(kind, &GATEWAY_POD, mastd.xds_addr, work).await?;
    let ext_url = format!("http://127.0.0.1:{ext}");
    let local_url = format!("http://127.0.0.1:{local}");

    // Mast's own dialect: the external URL through Knative's gateway, split 50/50.
    let host = "myapp.default.example.com";
    let body = get_ok(
        &gw,
        "myapp's external URL",
        &format!("{ext_url}/echo"),
        host,
        &[],
    )
    .await?;
    let h = echoed(&body);
    let rev = body.lines().next().unwrap_or_default();
    assert!(
        rev == "myapp-00001" || rev == "myapp-00002",
        "{kind}: {body}"
    );
    assert_eq!(h["knative-serving-revision"], rev, "{kind}: {body}");
    assert_eq!(h["knative-serving-namespace"], "default", "{kind}: {body}");
    check_split(
        kind,
        &format!("{ext_url}/"),
        host,
        ["myapp-00001", "myapp-00002"],
    )
    .await?;

    // net-istio's VirtualServices, external gateway: split, headers, the probe route.
    let host = "hello.default.example.com";
    let body = get_ok(
        &gw,
        "hello's external URL",
        &format!("{ext_url}/echo"),
        host,
        &[],
    )
    .await?;
    let h = echoed(&body);
    let rev = body.lines().next().unwrap_or_default();
    assert_eq!(h["knative-serving-revision"], rev, "{kind}: {body}");
    assert_eq!(h["knative-serving-namespace"], "default", "{kind}: {body}");
    assert_eq!(h["k-network-hash"], "-", "{kind}: {body}");
    check_split(
        kind,
        &format!("{ext_url}/"),
        host,
        ["hello-00001", "hello-00002"],
    )
    .await?;
    // The probe: `K-Network-Hash: override` is answered through the probe route, which sets
    // the Ingress's hash (Mast's own translation has no probe route: this proves net-istio's
    // VirtualService is the one in force).
    let probe = [("K-Network-Hash", "override")];
    let body = get_ok(
        &gw,
        "net-istio's probe",
        &format!("{ext_url}/echo"),
        host,
        &probe,
    )
    .await?;
    assert_eq!(echoed(&body)["k-network-hash"], HASH, "{kind}: {body}");
    // `:authority` prefix matching: a port in Host still matches.
    let body = get_ok(
        &gw,
        "authority with a port",
        &format!("{ext_url}/echo"),
        &format!("{host}:{ext}"),
        &[],
    )
    .await?;
    assert!(body.starts_with("hello-0000"), "{kind}: {body}");

    // rewrite.authority (a DomainMapping): the revision sees the mapped service's Host.
    let body = get_ok(
        &gw,
        "the domain mapping",
        &format!("{ext_url}/echo"),
        "hello.example.org",
        &[],
    )
    .await?;
    assert_eq!(
        echoed(&body)["host"],
        "hello.default.svc.cluster.local",
        "{kind}: {body}"
    );

    // The cluster-local gateway (where the route's ExternalName Service leads mesh traffic).
    for host in ["hello.default.svc.cluster.local", "hello.default"] {
        let body = get_ok(&gw, host, &format!("{local_url}/echo"), host, &probe).await?;
        assert_eq!(echoed(&body)["k-network-hash"], HASH, "{kind}: {body}");
        check_split(
            kind,
            &format!("{local_url}/"),
            host,
            ["hello-00001", "hello-00002"],
        )
        .await?;
    }
    // The cluster-local names are not served by the external gateway: its rules match the
    // external authority only, so the Host is a 404, as in Istio. (The reverse holds in Istio
    // too: `hello.default` is a prefix of `hello.default.example.com`.)
    let client = HttpClient::new();
    let (status, _) = client
        .get(
            &format!("{ext_url}/"),
            Some("hello.default.svc.cluster.local"),
            &[],
        )
        .await?;
    assert_eq!(
        status, 404,
        "{kind}: cluster-local host on the external gateway"
    );
    drop(gw);
    Ok(())
}

/// The mesh side, from a sidecar (NONE interception: it listens on 127.0.0.1:80, Knative's
/// service port): net-istio's mesh VirtualService for `hello` (probe route, split, headers;
/// a Host it does not match is a 404, not a trip to the ExternalName's target) and Mast's own
/// translation for `myapp`.
async fn check_mesh(kind: SidecarKind, mastd: &Mastd, work: &std::path::Path) -> Result<()> {
    let sc =
        Sidecar::start_kind(kind, &CLIENT_POD, "127.0.0.1", mastd.xds_addr, work, true).await?;
    let url = "http://127.0.0.1:80";
    for host in ["hello.default.svc.cluster.local", "hello.default"] {
        let body = get_ok(&sc, host, &format!("{url}/echo"), host, &[]).await?;
        let h = echoed(&body);
        let rev = body.lines().next().unwrap_or_default();
        assert_eq!(h["knative-serving-revision"], rev, "{kind}: {body}");
        let probe = [("K-Network-Hash", "override")];
        let body = get_ok(&sc, host, &format!("{url}/echo"), host, &probe).await?;
        assert_eq!(echoed(&body)["k-network-hash"], HASH, "{kind}: {body}");
        check_split(
            kind,
            &format!("{url}/"),
            host,
            ["hello-00001", "hello-00002"],
        )
        .await?;
    }
    // `hello` is a name of the ExternalName Service the VirtualService's authority prefix
    // does not match: 404, as Istio.
    let (status, body) = HttpClient::new()
        .get(&format!("{url}/"), Some("hello"), &[])
        .await?;
    assert_eq!(status, 404, "{kind}: Host hello: {body}");
    let host = "myapp.default.svc.cluster.local";
    let body = get_ok(&sc, host, &format!("{url}/echo"), host, &[]).await?;
    let rev = body.lines().next().unwrap_or_default();
    assert_eq!(
        echoed(&body)["knative-serving-revision"],
        rev,
        "{kind}: {body}"
    );
    check_split(
        kind,
        &format!("{url}/"),
        host,
        ["myapp-00001", "myapp-00002"],
    )
    .await?;
    drop(sc);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knative_services_through_the_ingress_gateway() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config)?;
    // myapp's revisions on one port of two loopback addresses (one containerPort, as in the
    // revision template); hello's on ports of their own.
    let port = free_port();
    let _m1 = EchoBackend::start("myapp-00001", ([127, 0, 0, 2], port).into()).await?;
    let _m2 = EchoBackend::start("myapp-00002", ([127, 0, 0, 3], port).into()).await?;
    let (p1, p2) = (free_port(), free_port());
    let _h1 = EchoBackend::start("hello-00001", ([127, 0, 0, 1], p1).into()).await?;
    let _h2 = EchoBackend::start("hello-00002", ([127, 0, 0, 1], p2).into()).await?;
    let (ext, local) = (free_port(), free_port());
    std::fs::write(config.join("gateways.yaml"), gateways(ext, local))?;
    std::fs::write(config.join("myapp.yaml"), myapp(port))?;
    std::fs::write(config.join("hello.yaml"), hello(p1, p2))?;

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let mastd = Mastd::start(&config, &work).await?;
    // The overlap is reported: hello's own translation is set aside for net-istio's.
    eventually("mastd reports the overlap", Duration::from_secs(10), || {
        let log = mastd.proc.log_text();
        async move {
            if log.lines().any(|l| {
                l.contains("config set aside")
                    && l.contains("Knative Service default/hello")
                    && l.contains("VirtualService default/hello-")
            }) {
                Ok(())
            } else {
                bail!("no overlap line in mastd's log:\n{log}")
            }
        }
    })
    .await?;
    let configz = mastd.debug_json("/debug/configz").await?;
    let warnings = configz["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.contains("hello.default.example.com"))),
        "{warnings:?}"
    );
    assert!(
        !warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("myapp"))),
        "{warnings:?}"
    );
    check_gateway(SidecarKind::Envoy, &mastd, &work, ext, local).await?;
    check_gateway(SidecarKind::Mast, &mastd, &work, ext, local).await?;
    // The sidecars listen on Knative's service port, 80, and so does the default gateway:
    // only where the test may bind it.
    if std::net::TcpListener::bind(("127.0.0.1", 80)).is_err() {
        if std::env::var_os("MAST_REQUIRE_NETNS").is_some() {
            bail!("cannot listen on 127.0.0.1:80 (taken, or not root) for the mesh checks");
        }
        eprintln!("skipping the mesh checks: cannot listen on 127.0.0.1:80");
        assert_no_nack(&mastd);
        return Ok(());
    }
    check_mesh(SidecarKind::Envoy, &mastd, &work).await?;
    check_mesh(SidecarKind::Mast, &mastd, &work).await?;
    // Without a knative-ingress-gateway resource, Mast serves the one net-istio installs:
    // the Istio ingress gateway's pods, port 80.
    let all = gateways(ext, local);
    let local_only = all.split("\n---\n").nth(1).context("the local gateway")?;
    mast_e2e::write_atomic(&config.join("gateways.yaml"), local_only)?;
    for kind in [SidecarKind::Envoy, SidecarKind::Mast] {
        let gw = Sidecar::start_gateway(kind, &GATEWAY_POD, mastd.xds_addr, &work).await?;
        let body = get_ok(
            &gw,
            "myapp through the default knative-ingress-gateway",
            "http://127.0.0.1:80/echo",
            "myapp.default.example.com",
            &[],
        )
        .await?;
        assert!(body.starts_with("myapp-0000"), "{kind}: {body}");
        let body = get_ok(
            &gw,
            "hello through the default knative-ingress-gateway",
            "http://127.0.0.1:80/echo",
            "hello.default.example.com",
            &[("K-Network-Hash", "override")],
        )
        .await?;
        assert_eq!(echoed(&body)["k-network-hash"], HASH, "{kind}: {body}");
        drop(gw);
    }
    assert_no_nack(&mastd);
    Ok(())
}

/// Every proxy accepted everything pilot sent (a rejected cluster can hide behind routes that
/// still work).
fn assert_no_nack(mastd: &Mastd) {
    let log = mastd.proc.log_text();
    let nacks: Vec<&str> = log.lines().filter(|l| l.contains("NACK")).collect();
    assert!(
        nacks.is_empty(),
        "proxies rejected config:\n{}",
        nacks.join("\n")
    );
}
