//! `mastctl demo`, the README's first command, run as a user runs it and judged by what it
//! prints: its `--json` summary and its terminal commentary.
//!
//! - As root (pods: network namespaces, iptables capture): `mastctl demo --duration 40s
//!   --json` on a copy of `manifests/samples/todolist`. While it runs the test breaks
//!   `user-split.yaml` (a negative weight: reported in the terminal, the 50/50 split stays)
//!   and then sets 80/20. The summary must show v1 and v2 each 50% ±5% before, 80% ±5% for v1
//!   after, zero failed requests, the 80/20 edit in force at myapp's sidecar less than a second
//!   after the save, 100% mTLS between services, the load coming in through the ingress
//!   gateway at `http://myapp.default.example.com:8080/` (the gateway's own figures: traffic
//!   to myapp, all of it mTLS, no errors; its /etc/hosts line removed at exit), and a clean
//!   teardown — which
//!   the test checks itself too: no process, network namespace, link, `/etc/netns` entry,
//!   temporary directory or root-namespace iptables rule of the run is left.
//! - Not root (loopback, INTERCEPTION_MODE=NONE): the same demo as an unprivileged user
//!   (`setpriv` to `nobody` when the test runs as root), stopped by Ctrl-C after 20 s, same
//!   checks without the edit.
//!
//! - In both runs, mastd's trace API (`/api/traces?service=istio-ingressgateway.istio-system`
//!   on the topology view's port) must hold one trace of a request through the gateway to
//!   myapp, user and todo: spans of every proxy on the path (gateway client, myapp server and
//!   client, user and todo server), one root, every parent in the trace, each server span's
//!   parent the caller's client span, each span inside its parent's time, and Istio's
//!   `istio.canonical_service` / `istio.namespace` tags on every span, the gateway's spawned
//!   upstream span included (Envoy's finalizeUpstreamSpan).
//!
//! - On loopback the test also scrapes the sidecars while the load runs: myapp's checks
//!   (`GET /api/ping`) make gRPC calls to user and TCP connections to todo's `tcp-echo` port,
//!   and the series Istio's dashboards chart for them must be there with the real workloads
//!   on both ends — `istio_tcp_sent_bytes_total` and `istio_tcp_connections_opened_total`
//!   from myapp's sidecar naming todo-v1 (workload, app, version, canonical names: from the
//!   endpoint's metadata, TCP has no metadata exchange) and from todo's naming myapp by its
//!   certificate and the service as `todo.default.svc.cluster.local`;
//!   `istio_requests_total{request_protocol="grpc"}` and `istio_request_messages_total`
//!   from myapp's sidecar naming user v1/v2 and from user's naming myapp-v1.
//!
//! Without root the first part prints `demo: SKIPPED` (a failure when MAST_REQUIRE_NETNS is
//! set, as scripts/test.sh does as root).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mast_e2e::{bin, free_port, workspace_root};
use serde_json::Value;

/// The demos use Istio's fixed ports (15010, 15012, 15014): one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The demo's run, as a user started it.
struct Run {
    summary: Value,
    /// Its terminal commentary (stderr, since stdout carries the JSON).
    commentary: String,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A copy of the sample folder the test may edit.
fn sample_copy(dir: &Path) -> Result<PathBuf> {
    let config = dir.join("todolist");
    std::fs::create_dir_all(&config)?;
    for entry in std::fs::read_dir(workspace_root().join("manifests/samples/todolist"))? {
        let path = entry?.path();
        std::fs::copy(&path, config.join(path.file_name().context("name")?))?;
    }
    Ok(config)
}

/// `user-split.yaml` with these two weights.
fn set_split(config: &Path, v1: i64, v2: i64) -> Result<()> {
    let path = config.join("user-split.yaml");
    let text = std::fs::read_to_string(&path)?;
    let mut weights = [v1, v2].into_iter();
    let edited: Vec<String> = text
        .lines()
        .map(|l| match l.split_once("weight:") {
            Some((indent, _)) => match weights.next() {
                Some(w) => format!("{indent}weight: {w}"),
                None => l.to_string(),
            },
            None => l.to_string(),
        })
        .collect();
    ensure!(
        weights.next().is_none(),
        "two weights in {}",
        path.display()
    );
    // Written whole and renamed into place, as editors do.
    let tmp = config.join(".user-split.yaml.tmp");
    std::fs::write(&tmp, edited.join("\n") + "\n")?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Runs `cmd` (a `mastctl demo … --json`), calling `during(seconds since the load started)`
/// every 100 ms once the demo says it is serving — `Ok(true)` presses Ctrl-C (SIGINT) —
/// and returns the summary and commentary.
fn run_demo(mut cmd: Command, mut during: impl FnMut(f64) -> Result<bool>) -> Result<Run> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mastctl demo")?;
    let stderr = child.stderr.take().context("stderr")?;
    let commentary = Arc::new(Mutex::new(String::new()));
    let serving = Arc::new(Mutex::new(None::<Instant>));
    let reader = std::thread::spawn({
        let (commentary, serving) = (commentary.clone(), serving.clone());
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("demo| {line}");
                if line.contains("Change the split") {
                    *serving.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                }
                let mut c = commentary.lock().unwrap_or_else(|e| e.into_inner());
                c.push_str(&line);
                c.push('\n');
            }
        }
    });
    let stdout = child.stdout.take().context("stdout")?;
    let json_reader = std::thread::spawn(move || -> std::io::Result<String> {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut s)?;
        Ok(s)
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut interrupted = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("mastctl demo still running after 180 s");
        }
        let since = *serving.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = since {
            match during(t.elapsed().as_secs_f64()) {
                Ok(false) => {}
                Ok(true) if !interrupted => {
                    ctrl_c(child.id())?;
                    interrupted = true;
                }
                Ok(true) => {}
                Err(e) => {
                    // Stop it the way a user would, so it still cleans up.
                    ctrl_c(child.id())?;
                    let _ = child.wait();
                    return Err(e);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    let json = json_reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
    let commentary = commentary.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(
        status.success(),
        "mastctl demo exited with {status}:\n{commentary}"
    );
    let summary: Value = serde_json::from_str(&json)
        .with_context(|| format!("the --json summary is not JSON: {json}"))?;
    Ok(Run {
        summary,
        commentary,
    })
}

/// What the terminal sends on Ctrl-C.
fn ctrl_c(pid: u32) -> Result<()> {
    // SAFETY: kill(2) on our own child, not yet reaped.
    let rc = unsafe { libc::kill(i32::try_from(pid)?, libc::SIGINT) };
    ensure!(rc == 0, "kill(SIGINT) failed");
    Ok(())
}

fn pct(phase: &Value, version: &str) -> f64 {
    phase["split"][version].as_f64().unwrap_or(-1.0)
}

/// GET `path` from `127.0.0.1:port` (HTTP/1.0, the whole answer), as JSON.
fn get_json(port: u16, path: &str) -> Result<Value> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{path}: {head}"
    );
    serde_json::from_str(body).with_context(|| format!("{path}: not JSON: {body}"))
}

/// One request's trace through the whole mesh, from mastd's Jaeger-shaped API: a trace with
/// spans of the gateway, myapp, user and todo, every span's parent in the trace, a server
/// span's parent the caller's client span, each child inside its parent's time, Istio's tags on
/// every span. Returns a one-line description of the trace.
fn check_one_trace(port: u16) -> Result<String> {
    let services = get_json(port, "/api/services")?;
    let names: Vec<String> = services["data"]
        .as_array()
        .context("services")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let gw = names
        .iter()
        .find(|n| n.contains("istio-ingressgateway"))
        .with_context(|| format!("no gateway among the traced services {names:?}"))?;
    let found = get_json(port, &format!("/api/traces?service={gw}&limit=50"))?;
    let traces = found["data"].as_array().context("data")?;
    ensure!(!traces.is_empty(), "no trace for {gw}");
    let mut last_problem = String::new();
    for trace in traces {
        match check_trace(trace) {
            Ok(d) => return Ok(d),
            Err(e) => last_problem = format!("{e:#}"),
        }
    }
    bail!(
        "none of {} traces of {gw} goes through the mesh as it should; the last: {last_problem}",
        traces.len()
    )
}

fn check_trace(trace: &Value) -> Result<String> {
    use std::collections::HashMap;
    let spans = trace["spans"].as_array().context("spans")?;
    let service = |s: &Value| -> String {
        let pid = s["processID"].as_str().unwrap_or_default();
        trace["processes"][pid]["serviceName"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let tag = |s: &Value, key: &str| -> Option<String> {
        s["tags"]
            .as_array()?
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| match &t["value"] {
                Value::String(v) => v.clone(),
                v => v.to_string(),
            })
    };
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .filter_map(|s| Some((s["spanID"].as_str()?, s)))
        .collect();
    let mut kinds: Vec<(String, String)> = Vec::new();
    let mut roots = 0;
    for s in spans {
        let svc = service(s);
        let kind = tag(s, "span.kind").unwrap_or_default();
        kinds.push((svc.clone(), kind.clone()));
        // Envoy's finalizeUpstreamSpan applies the custom tags to a spawned upstream span
        // too (setCommonTags): the gateway's `router <cluster> egress` carries them.
        let canonical = tag(s, "istio.canonical_service")
            .with_context(|| format!("span of {svc} without istio.canonical_service: {s}"))?;
        ensure!(
            svc.starts_with(&canonical),
            "{svc}'s span says canonical service {canonical}"
        );
        ensure!(
            tag(s, "istio.namespace").is_some(),
            "{svc}: no istio.namespace"
        );
        let Some(parent) = s["references"].as_array().and_then(|r| r.first()) else {
            roots += 1;
            continue;
        };
        let pid = parent["spanID"].as_str().context("parent spanID")?;
        let p = by_id
            .get(pid)
            .with_context(|| format!("{svc}'s span has parent {pid}, not in the trace"))?;
        let (start, dur) = (
            s["startTime"].as_u64().unwrap_or(0),
            s["duration"].as_u64().unwrap_or(0),
        );
        let (pstart, pdur) = (
            p["startTime"].as_u64().unwrap_or(0),
            p["duration"].as_u64().unwrap_or(0),
        );
        // Microseconds; 1 ms of slack for the clocks of two processes rounding.
        ensure!(
            start + 1000 >= pstart && start + dur <= pstart + pdur + 1000,
            "{svc}'s span [{start}, +{dur}] is not inside its parent's [{pstart}, +{pdur}]"
        );
        if kind == "server" && service(p) != svc {
            ensure!(
                tag(p, "span.kind").as_deref() == Some("client"),
                "{svc}'s server span's parent (of {}) is not a client span",
                service(p)
            );
        }
    }
    ensure!(roots == 1, "{roots} root spans");
    let has = |name: &str, kind: &str| kinds.iter().any(|(s, k)| s.starts_with(name) && k == kind);
    for (name, kind) in [
        ("istio-ingressgateway", "client"),
        ("myapp", "server"),
        ("myapp", "client"),
        ("user", "server"),
        ("todo", "server"),
    ] {
        ensure!(has(name, kind), "no {kind} span of {name}: {kinds:?}");
    }
    Ok(format!(
        "trace {} has {} spans: {kinds:?}",
        trace["traceID"],
        spans.len()
    ))
}

/// What every run must show: (almost) no failed request, full mTLS between services, a clean
/// exit.
/// GET `path` from `addr` (HTTP/1.0, the whole answer), as text.
fn get_text(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{addr}{path}: {head}"
    );
    Ok(body.to_string())
}

/// The sum of `metric`'s samples whose labels include every pair of `want`.
fn sum_samples(exposition: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix(metric)?.strip_prefix('{'))
        .filter(|l| {
            want.iter().all(|(k, v)| {
                let pair = format!("{k}=\"{v}\"");
                l.starts_with(&pair) || l.contains(&format!(",{pair}"))
            })
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The loopback demo's sidecars' Prometheus pages (127.0.10.(10+i), stats port 15102+10i, in
/// the order of the demo's workloads: myapp-v1, user-v1, user-v2, todo-v1).
fn loopback_pages() -> Result<[String; 4]> {
    let page = |i: u16| {
        get_text(
            &format!("127.0.10.{}:{}", 10 + i, 15102 + 10 * i),
            "/stats/prometheus",
        )
    };
    Ok([page(0)?, page(1)?, page(2)?, page(3)?])
}

/// The gRPC and TCP series Istio's dashboards chart, as myapp's checks make them: both
/// reporters, the real workloads on both ends. Returns the figures, for the log.
fn check_grpc_and_tcp_series([myapp, user_v1, user_v2, todo]: &[String; 4]) -> Result<String> {
    let to_todo = [
        ("reporter", "source"),
        ("source_workload", "myapp-v1"),
        ("source_canonical_service", "myapp"),
        ("destination_workload", "todo-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_app", "todo"),
        ("destination_version", "v1"),
        ("destination_canonical_service", "todo"),
        ("destination_canonical_revision", "v1"),
        ("destination_service", "todo.default.svc.cluster.local"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/todo",
        ),
    ];
    let sent = sum_samples(myapp, "istio_tcp_sent_bytes_total", &to_todo);
    let opened = sum_samples(myapp, "istio_tcp_connections_opened_total", &to_todo);
    ensure!(
        sent > 0.0 && opened > 0.0,
        "myapp's sidecar: TCP to todo-v1 sent {sent} bytes over {opened} connections:\n{}",
        myapp
            .lines()
            .filter(|l| l.starts_with("istio_tcp_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The server side knows its client by certificate only (principal, namespace): Istio's
    // TCP metadata exchange, which would name the workload, is not spoken by mast-proxy.
    let from_myapp = [
        ("reporter", "destination"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/myapp",
        ),
        ("source_workload_namespace", "default"),
        ("destination_workload", "todo-v1"),
        ("destination_app", "todo"),
        ("destination_service", "todo.default.svc.cluster.local"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let todo_opened = sum_samples(todo, "istio_tcp_connections_opened_total", &from_myapp);
    let todo_received = sum_samples(todo, "istio_tcp_received_bytes_total", &from_myapp);
    ensure!(
        todo_opened > 0.0 && todo_received > 0.0,
        "todo's sidecar: {todo_opened} TCP connections, {todo_received} bytes from myapp:\n{}",
        todo.lines()
            .filter(|l| l.starts_with("istio_tcp_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let grpc_ok = |version: &str| {
        [
            ("reporter", "source"),
            ("source_workload", "myapp-v1"),
            ("request_protocol", "grpc"),
            ("grpc_response_status", "0"),
            ("destination_service_name", "user"),
            ("destination_app", "user"),
            ("destination_version", version),
            ("destination_canonical_service", "user"),
        ]
        .map(|(k, v)| (k, v.to_string()))
    };
    let count = |text: &str, metric: &str, want: &[(&str, String)]| {
        let want: Vec<(&str, &str)> = want.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sum_samples(text, metric, &want)
    };
    let grpc: Vec<f64> = ["v1", "v2"]
        .iter()
        .map(|v| count(myapp, "istio_requests_total", &grpc_ok(v)))
        .collect();
    ensure!(
        grpc.iter().all(|n| *n > 0.0),
        "myapp's sidecar: gRPC calls to user v1, v2: {grpc:?}:\n{}",
        myapp
            .lines()
            .filter(|l| l.contains("request_protocol=\"grpc\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let messages = sum_samples(
        myapp,
        "istio_request_messages_total",
        &[
            ("reporter", "source"),
            ("source_workload", "myapp-v1"),
            ("destination_service_name", "user"),
            ("destination_app", "user"),
        ],
    );
    ensure!(
        messages > 0.0,
        "myapp's sidecar: no gRPC request messages to user"
    );
    let served: f64 = [user_v1, user_v2]
        .iter()
        .map(|page| {
            sum_samples(
                page,
                "istio_requests_total",
                &[
                    ("reporter", "destination"),
                    ("request_protocol", "grpc"),
                    ("source_workload", "myapp-v1"),
                    ("destination_app", "user"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            )
        })
        .sum();
    ensure!(
        served > 0.0,
        "user's sidecars counted no gRPC request from myapp-v1"
    );
    Ok(format!(
        "TCP myapp-v1→todo-v1 {opened} connections, {sent} bytes (todo saw {todo_opened}); \
         gRPC myapp-v1→user v1/v2 {grpc:?} calls, {messages} request messages (user saw {served})"
    ))
}

fn common_checks(run: &Run, mode: &str) -> Result<()> {
    let s = &run.summary;
    ensure!(s["mode"] == mode, "mode {} (want {mode})", s["mode"]);
    ensure!(
        s["requests"].as_u64() > Some(500),
        "too few requests: {}",
        s["requests"]
    );
    // Zero failed requests, through the split edits too.
    ensure!(
        s["errors"] == 0,
        "{} of {} requests failed: {}",
        s["errors"],
        s["requests"],
        s["first_errors"]
    );
    ensure!(
        s["mtls_percent"].as_f64() == Some(100.0),
        "mTLS between services: {} (mesh rps {})",
        s["mtls_percent"],
        s["mesh_rps"]
    );
    // The front door: users come in through Istio's ingress gateway, which reports what it
    // carried to myapp itself (its own metrics, reporter=source), all of it over mTLS.
    ensure!(
        s["app_url"] == "http://myapp.default.example.com:8080/",
        "app_url {}",
        s["app_url"]
    );
    let g = &s["gateway"];
    ensure!(
        g["name"] == "istio-ingressgateway" && g["namespace"] == "istio-system",
        "gateway {g}"
    );
    ensure!(
        g["rps"].as_f64().is_some_and(|r| r > 10.0),
        "the gateway's view shows no traffic to myapp: {g}"
    );
    ensure!(
        g["mtls_percent"].as_f64() == Some(100.0),
        "gateway → myapp mTLS: {g}"
    );
    ensure!(
        g["error_percent"].as_f64() == Some(0.0),
        "gateway → myapp errors: {g}"
    );
    ensure!(
        run.commentary.contains("the ingress gateway's view"),
        "{}",
        run.commentary
    );
    let t = &s["teardown"];
    ensure!(t["clean"] == true, "teardown: {t}");
    // Our own look: no process the demo started is alive, its directory is gone.
    for pid in t["pids"].as_array().context("pids")? {
        let pid = pid.as_u64().context("pid")?;
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|st| st.contains(") Z ")),
            "process {pid} of the demo is still running"
        );
    }
    let work = t["work_dir"].as_str().context("work_dir")?;
    ensure!(!Path::new(work).exists(), "{work} was left behind");
    Ok(())
}

/// The root namespace's iptables rules (without counters), to compare before and after.
fn root_rules() -> String {
    ["iptables-nft-save", "iptables-legacy-save", "iptables-save"]
        .iter()
        .filter(|p| in_path(p))
        .filter_map(|p| Command::new(p).output().ok())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(" [").next().unwrap_or(l).to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn demo_as_root_in_pods() -> Result<()> {
    let why_not = if !is_root() {
        Some("needs root (network namespaces and iptables)")
    } else if !in_path("iptables-nft-restore") && !in_path("iptables-restore") {
        Some("iptables is not installed")
    } else {
        None
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reason) = why_not {
        if std::env::var_os("MAST_REQUIRE_NETNS").is_some() {
            bail!("demo: cannot run ({reason}) but MAST_REQUIRE_NETNS is set");
        }
        println!("demo: SKIPPED: {reason}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let config = sample_copy(dir.path())?;
    let rules_before = root_rules();
    let netns_before = Command::new("ip").args(["netns", "list"]).output()?.stdout;

    let mut cmd = Command::new(bin("mastctl"));
    let view = free_port();
    cmd.args(["demo", "--duration", "40s", "--json", "--mode", "pods"])
        .arg("--config")
        .arg(&config)
        .args(["--port", &view.to_string()]);
    let (mut broke, mut fixed) = (false, false);
    let mut traced: Option<Result<String>> = None;
    let run = run_demo(cmd, |t| {
        // A request's trace, through the gateway to myapp, user and todo (real capture).
        if t > 8.0 && traced.as_ref().is_none_or(|r| r.is_err() && t < 30.0) {
            traced = Some(check_one_trace(view));
        }
        if t > 10.0 && !broke {
            set_split(&config, -10, 20)?; // a negative weight: rejected, 50/50 stays
            broke = true;
        }
        if t > 20.0 && !fixed {
            set_split(&config, 80, 20)?;
            fixed = true;
        }
        Ok(false)
    })?;
    println!(
        "demo summary: {}",
        serde_json::to_string_pretty(&run.summary)?
    );
    common_checks(&run, "pods")?;
    let traced = traced.context("the traces were never looked at")??;
    println!("demo (pods): {traced}");
    let s = &run.summary;
    ensure!(
        s["interception_mode"] == "REDIRECT",
        "{}",
        s["interception_mode"]
    );

    // The broken edit: reported naming the file and the field, and nothing changed.
    ensure!(
        run.commentary.contains("rejected")
            && run.commentary.contains("user-split.yaml")
            && run.commentary.contains("-10 is negative"),
        "the invalid edit was not reported:\n{}",
        run.commentary
    );
    ensure!(
        run.commentary
            .contains("the last good split stays: v1 50% / v2 50%"),
        "{}",
        run.commentary
    );
    let phases = s["phases"].as_array().context("phases")?;
    ensure!(phases.len() == 2, "two splits expected, got {phases:?}");
    let (before, after) = (&phases[0], &phases[1]);
    ensure!(before["weights"]["v1"] == 50 && before["weights"]["v2"] == 50);
    for v in ["v1", "v2"] {
        ensure!(
            (45.0..=55.0).contains(&pct(before, v)),
            "{v} served {}% of 50/50 ({before})",
            pct(before, v)
        );
    }
    ensure!(after["weights"]["v1"] == 80 && after["weights"]["v2"] == 20);
    ensure!(
        (75.0..=85.0).contains(&pct(after, "v1")),
        "v1 served {}% of 80/20 ({after})",
        pct(after, "v1")
    );
    let from = after["from_s"].as_f64().context("from_s")?;
    ensure!(
        (19.0..=23.0).contains(&from),
        "the 80/20 edit seen at {from} s"
    );
    // "Within a second": from the file's save to myapp's sidecar acknowledging the routes.
    let applied = s["config_events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["weights"]["v1"] == 80))
        .context("no config event for the 80/20 edit")?;
    let took = applied["took_effect_ms"]
        .as_u64()
        .with_context(|| format!("the 80/20 edit has no took_effect_ms: {applied}"))?;
    ensure!(
        took < 1000,
        "the 80/20 edit took {took} ms to come into force"
    );
    ensure!(
        run.commentary.contains("in force at myapp's sidecar"),
        "{}",
        run.commentary
    );
    println!("demo: the 80/20 edit was in force at myapp's sidecar {took} ms after the save");

    // Nothing left in the kernel: the demo's namespaces, links, /etc/netns, root rules.
    let netns_after = Command::new("ip").args(["netns", "list"]).output()?.stdout;
    ensure!(
        netns_before == netns_after,
        "network namespaces changed:\nbefore {}\nafter {}",
        String::from_utf8_lossy(&netns_before),
        String::from_utf8_lossy(&netns_after)
    );
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()?
        .stdout;
    let links = String::from_utf8_lossy(&links);
    ensure!(
        !links.contains("mastdemo") && !links.contains("mdemo"),
        "links left: {links}"
    );
    if let Ok(dir) = std::fs::read_dir("/etc/netns") {
        let left: Vec<_> = dir
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("mast-demo-"))
            .map(|e| e.path())
            .collect();
        ensure!(left.is_empty(), "left in /etc/netns: {left:?}");
    }
    ensure!(
        root_rules() == rules_before,
        "the root namespace's iptables rules changed"
    );
    // The browser's name for the gateway was the demo's to add and to take away.
    ensure!(
        s["gateway"]["hosts_entry"] == true,
        "no /etc/hosts entry: {}",
        s["gateway"]
    );
    let hosts = std::fs::read_to_string("/etc/hosts")?;
    ensure!(
        !hosts.contains("# mast-demo"),
        "/etc/hosts keeps the demo's line:\n{hosts}"
    );
    Ok(())
}

#[test]
fn demo_without_root_on_loopback() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir()?;
    let config = sample_copy(dir.path())?;
    let mut cmd = if is_root() {
        ensure!(
            in_path("setpriv"),
            "setpriv (util-linux) is needed to drop root"
        );
        // An unprivileged user must be able to run the binaries and read the config.
        use std::os::unix::fs::PermissionsExt;
        let bins = dir.path().join("bin");
        std::fs::create_dir_all(&bins)?;
        for name in [
            "mastctl",
            "mastd",
            "mast-proxy",
            "sample-myapp",
            "sample-user",
            "sample-todo",
        ] {
            // A hard link costs no disk (debug binaries are hundreds of MB); across file
            // systems, a copy.
            if std::fs::hard_link(bin(name), bins.join(name)).is_err() {
                std::fs::copy(bin(name), bins.join(name))?;
            }
        }
        for path in [dir.path(), &bins, &config] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bins.join("mastctl"))
            .env("TMPDIR", "/tmp")
            .current_dir(dir.path());
        c
    } else {
        Command::new(bin("mastctl"))
    };
    // No --duration: stopped by Ctrl-C after 20 s, as a user at the terminal would.
    let view = free_port();
    cmd.args(["demo", "--json"])
        .arg("--config")
        .arg(&config)
        .args(["--port", &view.to_string()]);
    let mut traced: Option<Result<String>> = None;
    let mut protocols: Option<Result<String>> = None;
    let run = run_demo(cmd, |t| {
        if t > 8.0 && traced.as_ref().is_none_or(|r| r.is_err() && t < 19.0) {
            traced = Some(check_one_trace(view));
        }
        // The checks run every 10th click: give them a few seconds, retry until near the end.
        if t > 6.0 && protocols.as_ref().is_none_or(|r| r.is_err() && t < 19.5) {
            protocols = Some(loopback_pages().and_then(|p| check_grpc_and_tcp_series(&p)));
        }
        Ok(t > 20.0)
    })?;
    println!(
        "demo summary: {}",
        serde_json::to_string_pretty(&run.summary)?
    );
    common_checks(&run, "loopback")?;
    let traced = traced.context("the traces were never looked at")??;
    println!("demo (loopback): {traced}");
    let protocols = protocols.context("the sidecars were never scraped")??;
    println!("demo (loopback): {protocols}");
    ensure!(run.summary["interception_mode"] == "NONE");
    ensure!(
        run.summary["stopped_by"] == "Ctrl-C",
        "{}",
        run.summary["stopped_by"]
    );
    ensure!(
        run.commentary.contains("INTERCEPTION_MODE=NONE"),
        "the demo must say it runs without capture:\n{}",
        run.commentary
    );
    let split = &run.summary["split"];
    for v in ["v1", "v2"] {
        let p = split[v].as_f64().unwrap_or(-1.0);
        ensure!((45.0..=55.0).contains(&p), "{v} served {p}% of 50/50");
    }
    Ok(())
}
