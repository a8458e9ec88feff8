//! `mastctl demo`: the whole mesh on this machine in one command — the todo-list story.
//!
//! mastd (pilot, citadel, the collector and the topology view) runs on the sample folder
//! `manifests/samples/todolist`; the sample apps (`myapp`, `user` v1 and v2, `todo`) each run
//! next to their own mast-proxy with a workload certificate from citadel; a load generator
//! clicks around myapp; the terminal shows requests/s, the user split, errors, p99 and the mTLS
//! share live, and what each edit of the folder did. As root every workload is a pod (network
//! namespace, iptables capture from the injector's `istio-init`); otherwise the demo says so
//! and runs them on loopback without capture (Istio's `INTERCEPTION_MODE=NONE`).
//!
//! Users come in through the front door, as in a cluster: Istio's ingress gateway (mast-proxy
//! as `proxy router`, labelled `istio: ingressgateway`) serves the sample's `myapp-gateway` at
//! `http://myapp.default.example.com:8080/`; the load generator sends its clicks there with
//! that Host, and as root the demo names the gateway in /etc/hosts for a browser (one marked
//! line, removed at exit). The table and `--json` show what the gateway itself reports.
//!
//! Ctrl-C or `--duration` stops everything in order and then checks that nothing is left: no
//! child process, namespace, link, `/etc/netns` entry or temporary file. `--json` prints a
//! machine-readable summary (the CI proof reads it).

mod load;
mod pods;
mod procs;
mod split;
mod sync;
mod topology;

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use self::load::{Load, SharedStats, Stats};
use self::pods::Lab;
use self::procs::Proc;
use self::split::{SplitWatcher, describe};
use self::topology::{App, INGRESS, Mode, NAMESPACE, TRACE_SAMPLING_PERCENT, WORKLOADS, Workload};
use crate::http::{get as http_get, get_as as http_get_as};

/// The sidecar's user and group, as in Istio's injected pods.
const PROXY_UID: u32 = 1337;
/// The split service.
const SPLIT_HOST: &str = "user.default.svc.cluster.local";
/// How long a stopped process gets before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// The sample Services' ports myapp calls: user's and todo's `http`, user's `grpc`, todo's
/// `tcp-echo` (on loopback, myapp's sidecar listens on each of them).
#[derive(Clone, Copy, Debug)]
struct ServicePorts {
    user: u16,
    todo: u16,
    user_grpc: u16,
    todo_tcp: u16,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The mesh configuration folder mastd reads and watches; edit its files while the demo
    /// runs (the sample's `user-split.yaml` holds the split).
    #[arg(long, default_value = "manifests/samples/todolist")]
    config: PathBuf,
    /// Stop after this long (`40s`, `5m`); by default the demo runs until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Start the mesh but send no traffic (use the app in a browser yourself).
    #[arg(long)]
    no_load: bool,
    /// Clicks per second the load generator makes on myapp.
    #[arg(long, default_value_t = 100)]
    rps: u32,
    /// Port of the topology view (mastd's telemetry address, on 127.0.0.1).
    #[arg(long, default_value_t = 20001)]
    port: u16,
    /// `pods`: network namespaces with iptables capture (root); `loopback`: no capture
    /// (INTERCEPTION_MODE=NONE); `auto`: pods when possible.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Print a JSON summary on stdout at exit (the running commentary then goes to stderr).
    #[arg(long)]
    json: bool,
    /// Keep the run's logs and generated config in this directory instead of a temporary one
    /// that is removed at exit.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Auto,
    Pods,
    Loopback,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mast_mesh_config::dialect::duration::parse_duration(s)
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(Demo::run(args))
}

/// Where the running commentary goes: stdout, or stderr when stdout carries the JSON.
struct Out {
    json: bool,
    live: bool,
}

impl Out {
    fn line(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    /// Rewrites the current terminal line (a TTY), or prints a new line.
    fn status(&self, text: &str) {
        if self.live {
            if self.json {
                eprint!("\r\x1b[2K{text}");
                let _ = std::io::stderr().flush();
            } else {
                print!("\r\x1b[2K{text}");
                let _ = std::io::stdout().flush();
            }
        } else {
            self.line(text);
        }
    }

    /// Ends a rewritten line before ordinary output.
    fn end_status(&self) {
        if self.live {
            self.line("");
        }
    }
}

/// One workload, running.
struct Running {
    workload: Workload,
    ip: Ipv4Addr,
    status_port: u16,
    app: Proc,
    sidecar: Proc,
}

struct Demo<'a> {
    args: &'a Args,
    out: Out,
    mode: Mode,
    work: Work,
    lab: Option<Lab>,
    mastd: Option<Proc>,
    running: Vec<Running>,
    /// The ingress gateway's mast-proxy.
    gateway: Option<Proc>,
    pids: Vec<u32>,
}

/// The run's directory: temporary (removed at exit) or `--keep`.
enum Work {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Work {
    fn path(&self) -> &Path {
        match self {
            Work::Temp(t) => t.path(),
            Work::Kept(p) => p,
        }
    }
}

impl<'a> Demo<'a> {
    async fn run(args: &'a Args) -> Result<ExitCode> {
        let out = Out {
            json: args.json,
            live: if args.json {
                std::io::stderr().is_terminal()
            } else {
                std::io::stdout().is_terminal()
            },
        };
        let config = in_repository(&args.config);
        if !config.is_dir() {
            bail!(
                "the config folder {} does not exist (run from the repository root, or pass \
                 --config DIR)",
                config.display()
            );
        }
        let (mode, why_not_pods) = match (args.mode, pods::unavailable()) {
            (ModeArg::Loopback, _) => (None, Some("--mode loopback".to_string())),
            (ModeArg::Pods, Some(reason)) => bail!("--mode pods: {reason}"),
            (_, None) => (Some(()), None),
            (ModeArg::Auto, Some(reason)) => (None, Some(reason)),
        };
        let work = match &args.keep {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                Work::Kept(dir.clone())
            }
            None => Work::Temp(
                tempfile::Builder::new()
                    .prefix("mast-demo-")
                    .tempdir()
                    .context("creating a temporary directory")?,
            ),
        };
        // Sidecars run as UID 1337 and must reach their files in here.
        set_mode(work.path(), 0o755)?;
        let lab = match mode {
            Some(()) => Some(Lab::new()?),
            None => None,
        };
        let mode = lab.as_ref().map_or(Mode::Loopback, |l| l.mode);
        let mut demo = Demo {
            args,
            out,
            mode,
            work,
            lab,
            mastd: None,
            running: Vec::new(),
            gateway: None,
            pids: Vec::new(),
        };
        let started = Instant::now();
        let mut stop = stop_signals()?;
        let result = async {
            let up = tokio::select! {
                up = demo.start(&config, why_not_pods.as_deref()) => up?,
                _ = stop.changed() => bail!("interrupted during start-up"),
            };
            demo.serve(&config, up, started, &mut stop).await
        }
        .await;
        demo.out.end_status();
        let teardown = demo.teardown();
        let (summary, failed) = match result {
            Ok(summary) => (summary, None),
            Err(e) => (json!({}), Some(e)),
        };
        let clean = teardown.is_empty();
        if clean {
            demo.out
                .line("✔ stopped; nothing left behind (processes, namespaces, links, files)");
        } else {
            demo.out.line("✘ teardown left something behind:");
            for t in &teardown {
                demo.out.line(&format!("    {t}"));
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if args.json {
            let mut summary = summary;
            summary["teardown"] = json!({
                "clean": clean,
                "left": teardown,
                "pids": demo.pids,
                "work_dir": demo.work.path().display().to_string(),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Ok(if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }

    /// Config, network, mastd, the workloads; returns when myapp answers through the mesh.
    async fn start(&mut self, config: &Path, why_not_pods: Option<&str>) -> Result<Up> {
        let how = match (self.mode, why_not_pods) {
            (Mode::Pods { .. }, _) => {
                "each workload a pod: network namespace + iptables capture".to_string()
            }
            (Mode::Loopback, Some(why)) => format!(
                "{why}: workloads share loopback without capture (INTERCEPTION_MODE=NONE); \
                 run as root for pods with iptables capture"
            ),
            (Mode::Loopback, None) => "loopback, INTERCEPTION_MODE=NONE".to_string(),
        };
        self.out
            .line(&format!("Mast demo: the todo-list mesh ({how})"));

        // Configuration: the sample folder as it is, plus where this run's workloads live.
        let overlay = self.work.path().join("workloads");
        std::fs::create_dir_all(&overlay)?;
        std::fs::write(
            overlay.join("workloads.yaml"),
            topology::overlay_yaml(self.mode, true),
        )?;
        let dirs = vec![config.to_path_buf(), overlay.clone()];
        let (watcher, first) = SplitWatcher::new(dirs.clone(), SPLIT_HOST)
            .with_context(|| format!("reading {}", config.display()))?;
        for e in &first.errors {
            self.out.line(&format!("  ✘ config    {e}"));
        }
        let model = watcher.model();
        for svc in ["myapp", "user", "todo"] {
            let host = format!("{svc}.{NAMESPACE}.svc.cluster.local");
            if !model.services.contains_key(&host) {
                bail!(
                    "{} has no Service `{svc}` in namespace {NAMESPACE}: the demo runs the \
                     todo-list sample (manifests/samples/todolist)",
                    config.display()
                );
            }
        }
        let service_port = |svc: &str| {
            model
                .services
                .get(&format!("{svc}.{NAMESPACE}.svc.cluster.local"))
                .and_then(|s| s.ports.first())
                .map_or(80, |p| p.port)
        };
        // The Services' second ports, by name (`grpc`, `tcp-echo`), for myapp's checks.
        let named_port = |svc: &str, name: &str, default: u16| {
            model
                .services
                .get(&format!("{svc}.{NAMESPACE}.svc.cluster.local"))
                .and_then(|s| s.ports.iter().find(|p| p.name == name))
                .map_or(default, |p| p.port)
        };
        let ports = ServicePorts {
            user: service_port("user"),
            todo: service_port("todo"),
            user_grpc: named_port("user", "grpc", 8083),
            todo_tcp: named_port("todo", "tcp-echo", 8084),
        };
        self.out.line(&format!(
            "  ✔ config    {}: split {}",
            config.display(),
            describe(&first.weights)
        ));

        // The network, then mastd on it.
        let cp = self.mode.control_plane_ip();
        if let Some(lab) = self.lab.as_mut() {
            lab.bridge()?;
        }
        let xds: SocketAddr = (cp, 15010).into();
        let ca: SocketAddr = (cp, 15012).into();
        let http: SocketAddr = ([127, 0, 0, 1], 15014).into();
        let view: SocketAddr = ([127, 0, 0, 1], self.args.port).into();
        for addr in [xds, ca, http, view] {
            ensure_free(addr)?;
        }
        // mastd's trace receiver where the sidecars reach it (OTLP's ports; the mesh's tracing
        // provider in the overlay); a port taken anyway only turns tracing off.
        let receiver = self.mode.trace_receiver_ip();
        let otlp: SocketAddr = (receiver, topology::TRACE_PORT).into();
        let otlp_http: SocketAddr = (receiver, 4318).into();
        let traces = (ensure_free(otlp).is_ok() && ensure_free(otlp_http).is_ok())
            .then_some((otlp, otlp_http));
        if traces.is_none() {
            self.out.line(&format!(
                "  ! {otlp} or {otlp_http} is in use: mastd receives no spans this run"
            ));
            // No receiver, so no tracing provider pointing at it.
            std::fs::write(
                overlay.join("workloads.yaml"),
                topology::overlay_yaml(self.mode, false),
            )?;
        }
        let t = Instant::now();
        self.start_mastd(&dirs, xds, ca, http, view, traces)?;
        self.wait_http(
            "mastd",
            &format!("http://{http}/ready"),
            Duration::from_secs(30),
        )
        .await?;
        self.out.line(&format!(
            "  ✔ mastd     pilot {xds}, citadel {ca}, topology view {view} ({:.1} s)",
            t.elapsed().as_secs_f64()
        ));

        // The workloads.
        let proxy = self.proxy_binary()?;
        let hosts = topology::pod_hosts(&[
            ("myapp".into(), Ipv4Addr::new(10, 96, 0, 10)),
            ("user".into(), Ipv4Addr::new(10, 96, 0, 11)),
            ("todo".into(), Ipv4Addr::new(10, 96, 0, 12)),
        ]);
        for (i, w) in WORKLOADS.iter().enumerate() {
            let t = Instant::now();
            self.start_workload(i, w, &proxy, &hosts, xds, ca, ports)?;
            let r = self.running.last().context("just started")?;
            let ready = format!("http://{}:{}/healthz/ready", r.ip, r.status_port);
            self.wait_http(
                &format!("{}'s sidecar", w.name),
                &ready,
                Duration::from_secs(30),
            )
            .await?;
            self.out.line(&format!(
                "  ✔ {:<9} {} app :{} + sidecar, identity spiffe://cluster.local/ns/{NAMESPACE}/sa/{} ({:.1} s)",
                w.name,
                self.running.last().map_or(Ipv4Addr::UNSPECIFIED, |r| r.ip),
                w.port,
                w.service_account,
                t.elapsed().as_secs_f64()
            ));
        }
        let myapp = format!("http://{}:{}", self.mode.workload_ip(0), WORKLOADS[0].port);
        let t = Instant::now();
        self.wait_http(
            "myapp, through the mesh",
            &format!("{myapp}/api/page"),
            Duration::from_secs(30),
        )
        .await?;
        self.out.line(&format!(
            "  ✔ mesh      myapp answers through its sidecar, user and todo over mTLS ({:.1} s)",
            t.elapsed().as_secs_f64()
        ));

        // The front door: Istio's ingress gateway, serving the sample's myapp-gateway.
        let t = Instant::now();
        let front = self.start_gateway(&proxy, &hosts, xds, ca)?;
        self.wait_http(
            "the ingress gateway",
            &format!("{}/healthz/ready", front.status),
            Duration::from_secs(30),
        )
        .await?;
        self.wait_http_as(
            "myapp, through the ingress gateway",
            &format!("{}/api/page", front.base),
            Some(INGRESS.host),
            Duration::from_secs(30),
        )
        .await?;
        self.out.line(&format!(
            "  ✔ gateway   {} {} :{} (proxy router), routes {} to myapp ({:.1} s)",
            INGRESS.name,
            front.ip,
            INGRESS.port,
            INGRESS.host,
            t.elapsed().as_secs_f64()
        ));
        self.out.line("");
        self.out.line(&format!("  App            {}", front.url()));
        match (&self.lab, front.hosts_entry) {
            (Some(_), true) => self.out.line(&format!(
                "                 (the demo added `{} {}` to /etc/hosts; removed at exit)",
                front.ip, INGRESS.host
            )),
            _ => self.out.line(&format!(
                "                 curl -H 'Host: {}' {}/   (or add `{} {}` to /etc/hosts)",
                INGRESS.host, front.base, front.ip, INGRESS.host
            )),
        }
        self.out.line(&format!("  Topology view  http://{view}/"));
        self.out.line(&format!(
            "  Traces         http://{view}/ — click a node or edge: \"Recent traces\", click one \
             for its waterfall (API: http://{view}/api/traces?service={}.{}){}",
            INGRESS.name,
            INGRESS.namespace,
            traces
                .map(|(g, h)| {
                    format!(
                        "; the mesh samples {TRACE_SAMPLING_PERCENT}% of requests, spans to \
                         OTLP {g} or http://{h}/v1/traces"
                    )
                })
                .unwrap_or_default()
        ));
        self.out.line(&format!(
            "  Change the split: edit {} — Ctrl-C stops{}",
            config.join("user-split.yaml").display(),
            self.args
                .duration
                .map(|d| format!(" (stopping by itself after {})", humantime(d)))
                .unwrap_or_default()
        ));
        self.out.line("");
        Ok(Up {
            watcher,
            weights: first.weights,
            myapp,
            front,
            view,
            debug: http,
        })
    }

    /// Traffic and the live view until Ctrl-C or `--duration`; the summary.
    async fn serve(
        &mut self,
        config: &Path,
        up: Up,
        started: Instant,
        stop: &mut tokio::sync::watch::Receiver<Option<&'static str>>,
    ) -> Result<serde_json::Value> {
        let Up {
            mut watcher,
            weights,
            myapp,
            front,
            view,
            debug,
        } = up;
        let syncz = format!("http://{debug}/debug/syncz");
        let mut acks = sync::RouteAcks::default();
        // A valid edit not yet in force at myapp's sidecar: (saved at, its event, seen at).
        let mut pending: Option<(std::time::SystemTime, usize, Instant)> = None;
        let load_start = Instant::now();
        let stats = SharedStats::new(Stats::new(load_start, weights.clone()));
        // Users come in through the front door, as browsers do.
        let load = (!self.args.no_load).then(|| {
            Load::start(
                &front.base,
                Some(INGRESS.host),
                self.args.rps,
                8,
                stats.clone(),
            )
        });
        let mut events: Vec<serde_json::Value> = Vec::new();
        let mut mtls: Option<Mtls> = None;
        let mut gateway: Option<GatewayView> = None;
        let deadline = self.args.duration.map(|d| load_start + d);
        self.out.line(
            "   time    req/s   user split                 errors   p99        mTLS (mesh)   gateway → myapp",
        );
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut n: u64 = 0;
        let mut last_split = weights;
        let stop_reason = loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break stop.borrow().unwrap_or("a signal"),
            }
            n += 1;
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break "--duration reached";
            }
            if let Ok((200, body)) = http_get(&syncz).await
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&body)
            {
                acks.record(std::time::SystemTime::now(), &json, "myapp");
            }
            if let Some((saved, event, seen)) = pending {
                let took = acks.took_effect(saved);
                if took.is_some() || seen.elapsed() > EFFECT_WAIT {
                    pending = None;
                    self.out.end_status();
                    match took {
                        Some(d) => self.out.line(&format!(
                            "             in force at myapp's sidecar {} ms after the save",
                            d.as_millis()
                        )),
                        None => self.out.line(&format!(
                            "             myapp's sidecar has not acknowledged new routes after {} s",
                            EFFECT_WAIT.as_secs()
                        )),
                    }
                    if let Some(e) = events.get_mut(event) {
                        e["took_effect_ms"] = json!(took.map(|d| d.as_millis() as u64));
                    }
                }
            }
            if let Some(change) = watcher.poll() {
                let at = now.duration_since(load_start).as_secs_f64();
                let files: Vec<String> = change
                    .files
                    .iter()
                    .map(|f| {
                        f.file_name().map_or(f.display().to_string(), |n| {
                            n.to_string_lossy().into_owned()
                        })
                    })
                    .collect();
                self.out.end_status();
                if change.errors.is_empty() {
                    self.out.line(&format!(
                        "  ✔ {:>5.1}s  {} applied: split {}",
                        at,
                        files.join(", "),
                        describe(&change.weights)
                    ));
                } else {
                    for e in &change.errors {
                        self.out.line(&format!("  ✘ {at:>5.1}s  rejected: {e}"));
                    }
                    self.out.line(&format!(
                        "             the last good split stays: {}",
                        describe(&change.weights)
                    ));
                }
                events.push(json!({
                    "at_s": round(at, 2),
                    "files": files,
                    "applied": change.errors.is_empty(),
                    "errors": change.errors,
                    "weights": change.weights,
                }));
                if change.weights != last_split {
                    let saved = change
                        .files
                        .iter()
                        .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                        .max()
                        .unwrap_or_else(std::time::SystemTime::now);
                    pending = Some((saved, events.len() - 1, now));
                    stats.lock().new_phase(now, change.weights.clone());
                    last_split = change.weights.clone();
                }
            }
            if n.is_multiple_of(10) {
                self.check_running()?;
                mtls = mesh_mtls(view, "1m").await.or(mtls);
                gateway = gateway_view(view, "1m").await.or(gateway);
            }
            if n.is_multiple_of(5) && (self.out.live || n.is_multiple_of(25)) {
                let live = stats.lock().live(now);
                let split = split_text(&live.split);
                self.out.status(&format!(
                    "  {:>5}s   {:>6.1}   {:<26} {:<8} {:<10} {:<13} {}",
                    now.duration_since(load_start).as_secs(),
                    live.rps,
                    split,
                    live.errors,
                    live.p99_ms.map_or("-".into(), |p| format!("{p:.1} ms")),
                    mtls.as_ref()
                        .map_or("-".into(), |m| format!("{:.0}%", m.percent)),
                    gateway.as_ref().map_or("-".into(), GatewayView::short),
                ));
            }
        };
        self.out.end_status();
        self.out.line(&format!("  stopping ({stop_reason})…"));
        if let Some(load) = load {
            load.stop().await;
        }
        let ended = Instant::now();
        // Let the collector take one more look so the last requests count in the mTLS share.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let window = window_for(ended.duration_since(load_start));
        let final_mtls = mesh_mtls(view, window).await.or(mtls);
        let final_gateway = gateway_view(view, window).await.or(gateway);
        let mut stats = stats.lock();
        stats.finish(ended);
        let run_s = ended.duration_since(load_start).as_secs_f64();
        let phases: Vec<serde_json::Value> = stats
            .phases
            .iter()
            .map(|p| {
                json!({
                    "from_s": round(p.from_s, 2),
                    "to_s": round(p.to_s, 2),
                    "weights": p.weights,
                    "requests": p.requests,
                    "errors": p.errors,
                    "served_by": p.served_by,
                    "split": p.split().into_iter().map(|(k, v)| (k, round(v, 1))).collect::<std::collections::BTreeMap<_, _>>(),
                    "p50_ms": p.latency_ms(0.5).map(|v| round(v, 2)),
                    "p99_ms": p.latency_ms(0.99).map(|v| round(v, 2)),
                })
            })
            .collect();
        let rps = stats.requests as f64 / run_s.max(0.001);
        self.out.line(&format!(
            "  {} requests in {:.0} s ({:.0}/s), {} errors, p99 {}, mTLS {}",
            stats.requests,
            run_s,
            rps,
            stats.errors,
            stats
                .latency_ms(0.99)
                .map_or("-".into(), |p| format!("{p:.1} ms")),
            final_mtls.as_ref().map_or("-".into(), |m| format!(
                "{:.1}% of {:.1} req/s between services",
                m.percent, m.rps
            )),
        ));
        if let Some(g) = &final_gateway {
            self.out.line(&format!(
                "  the ingress gateway's view: {:.1} req/s to myapp, {:.1}% errors, p99 {}, mTLS {:.0}%",
                g.rps,
                g.error_percent,
                g.p99_ms.map_or("-".into(), |p| format!("{p:.0} ms")),
                g.mtls_percent
            ));
        }
        for p in &stats.phases {
            self.out.line(&format!(
                "    {:>5.1}–{:<5.1}s  configured {:<20} served {:<26} {} errors",
                p.from_s,
                p.to_s,
                describe(&p.weights),
                split_text(&p.split()),
                p.errors
            ));
        }
        for e in &stats.first_errors {
            self.out.line(&format!("    error: {e}"));
        }
        Ok(json!({
            "mode": match self.mode { Mode::Pods { .. } => "pods", Mode::Loopback => "loopback" },
            "interception_mode": self.mode.interception(),
            "config": config.display().to_string(),
            "app_url": front.url(),
            "myapp_url": format!("{myapp}/"),
            "gateway": {
                "name": INGRESS.name,
                "namespace": INGRESS.namespace,
                "address": format!("{}:{}", front.ip, INGRESS.port),
                "host": INGRESS.host,
                "hosts_entry": front.hosts_entry,
                "rps": final_gateway.as_ref().map(|g| round(g.rps, 1)),
                "error_percent": final_gateway.as_ref().map(|g| round(g.error_percent, 2)),
                "p99_ms": final_gateway.as_ref().and_then(|g| g.p99_ms),
                "mtls_percent": final_gateway.as_ref().map(|g| round(g.mtls_percent, 2)),
            },
            "topology_url": format!("http://{view}/"),
            "traces_url": format!("http://{view}/api/traces"),
            "startup_s": round(load_start.duration_since(started).as_secs_f64(), 2),
            "duration_s": round(run_s, 2),
            "stopped_by": stop_reason,
            "requests": stats.requests,
            "errors": stats.errors,
            "first_errors": stats.first_errors,
            "rps": round(rps, 1),
            "p50_ms": stats.latency_ms(0.5).map(|v| round(v, 2)),
            "p99_ms": stats.latency_ms(0.99).map(|v| round(v, 2)),
            "split": stats.phases.first().map(|p| p.split().into_iter().map(|(k, v)| (k, round(v, 1))).collect::<std::collections::BTreeMap<_, _>>()),
            "mtls_percent": final_mtls.as_ref().map(|m| round(m.percent, 2)),
            "mesh_rps": final_mtls.as_ref().map(|m| round(m.rps, 1)),
            "phases": phases,
            "config_events": events,
            "workloads": self.running.iter().map(|r| json!({
                "name": r.workload.name,
                "ip": r.ip.to_string(),
                "port": r.workload.port,
                "service_account": r.workload.service_account,
            })).collect::<Vec<_>>(),
        }))
    }

    fn start_mastd(
        &mut self,
        dirs: &[PathBuf],
        xds: SocketAddr,
        ca: SocketAddr,
        http: SocketAddr,
        view: SocketAddr,
        traces: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<()> {
        let mut cmd = Command::new(procs::sibling("mastd")?);
        for d in dirs {
            cmd.arg("--config-dir").arg(d);
        }
        cmd.args(["--xds-addr", &xds.to_string()])
            .args(["--ca-addr", &ca.to_string()])
            .arg("--ca-dir")
            .arg(self.work.path().join("ca"))
            .args(["--http-addr", &http.to_string()])
            .args(["--telemetry-addr", &view.to_string()])
            .args(["--scrape-interval", "2s"])
            .args(match traces {
                Some((grpc, http)) => vec![
                    "--otlp-grpc-addr".to_string(),
                    grpc.to_string(),
                    "--otlp-http-addr".to_string(),
                    http.to_string(),
                ],
                None => vec!["--no-trace-receiver".to_string()],
            })
            .arg("--no-injector")
            .env("RUST_LOG", "info");
        match web_dir() {
            Some(dir) => {
                cmd.arg("--web-dir").arg(dir);
            }
            None => self.out.line(
                "  ! the topology view is not built (cd telemetry/web && npm ci && npm run build); \
                 its API still answers",
            ),
        }
        let p = Proc::spawn("mastd", &mut cmd, &self.work.path().join("mastd.log"))?;
        self.pids.push(p.pid);
        self.mastd = Some(p);
        Ok(())
    }

    /// mast-proxy, where UID 1337 can run it (pods), or as built.
    fn proxy_binary(&self) -> Result<PathBuf> {
        let built = procs::sibling("mast-proxy")?;
        if self.lab.is_none() {
            return Ok(built);
        }
        let bin = self.work.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        set_mode(&bin, 0o755)?;
        let copy = bin.join("mast-proxy");
        std::fs::copy(&built, &copy)
            .with_context(|| format!("copying {} for UID {PROXY_UID}", built.display()))?;
        set_mode(&copy, 0o755)?;
        // `mast-proxy istio-iptables` hands over to its sibling mast-init.
        let init = procs::sibling("mast-init")?;
        std::fs::copy(&init, bin.join("mast-init"))?;
        set_mode(&bin.join("mast-init"), 0o755)?;
        Ok(copy)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_workload(
        &mut self,
        index: usize,
        w: &Workload,
        proxy: &Path,
        hosts: &str,
        xds: SocketAddr,
        ca: SocketAddr,
        services: ServicePorts,
    ) -> Result<()> {
        let dir = self.work.path().join(w.name);
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o755)?;
        let ip = self.mode.workload_ip(index);
        let ports = self.mode.sidecar_ports(index);

        let (token_file, root_cert) = self.identity(&dir, NAMESPACE, w.service_account)?;

        let pod = match self.lab.as_mut() {
            Some(lab) => {
                let pod = lab.pod(index, w.name, hosts)?;
                std::os::unix::fs::chown(&token_file, Some(PROXY_UID), Some(PROXY_UID))?;
                // istio-init: the injector's argv, run by the sidecar image's entrypoint.
                let argv = pods::istio_init_args(w)?;
                let mut full: Vec<&str> = vec![proxy.to_str().context("proxy path")?];
                full.extend(argv.iter().map(String::as_str));
                pods::netns_exec(&pod.ns, &full)
                    .with_context(|| format!("istio-init in {}", w.name))?;
                Some(pod)
            }
            None => None,
        };

        // The app.
        let app_bin = procs::sibling(match w.app {
            App::Myapp => "sample-myapp",
            App::User => "sample-user",
            App::Todo => "sample-todo",
        })?;
        let mut app = match &pod {
            Some(p) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &p.ns]).arg(&app_bin);
                c.args(["--listen", &format!("0.0.0.0:{}", w.port)]);
                if let Some(e) = w.extra {
                    c.args([e.flag, &format!("0.0.0.0:{}", e.port)]);
                }
                c
            }
            None => {
                let mut c = Command::new(&app_bin);
                c.args(["--listen", &format!("127.0.0.1:{}", w.port)]);
                if let Some(e) = w.extra {
                    c.args([e.flag, &format!("127.0.0.1:{}", e.port)]);
                }
                if w.app == App::Myapp {
                    // No capture: myapp calls its sidecar's listeners, naming the service
                    // (as Host, and as :authority for gRPC).
                    c.args(["--user-url", &format!("http://127.0.0.1:{}", services.user)])
                        .args(["--user-host", "user"])
                        .args(["--todo-url", &format!("http://127.0.0.1:{}", services.todo)])
                        .args(["--todo-host", "todo"])
                        .args([
                            "--user-grpc-url",
                            &format!("http://127.0.0.1:{}", services.user_grpc),
                        ])
                        .args(["--todo-tcp", &format!("127.0.0.1:{}", services.todo_tcp)]);
                }
                c
            }
        };
        if w.app == App::User {
            app.args(["--version", w.version]);
        }
        app.env("RUST_LOG", "warn");
        let app = Proc::spawn(w.name, &mut app, &dir.join("app.log"))?;
        self.pids.push(app.pid);

        // The sidecar.
        let mut side = match &pod {
            Some(p) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &p.ns, "setpriv"])
                    .args([
                        &format!("--reuid={PROXY_UID}"),
                        &format!("--regid={PROXY_UID}"),
                        "--clear-groups",
                    ])
                    .arg(proxy)
                    .current_dir("/");
                c
            }
            None => {
                let mut c = Command::new(proxy);
                c.args(["--admin-port", &ports.admin.to_string()])
                    .args(["--status-port", &ports.status.to_string()])
                    .args(["--stats-port", &ports.stats.to_string()])
                    .args(["--agent-port", "0"]);
                c
            }
        };
        self.proxy_settings(
            &mut side,
            &PodIdentity {
                pod: w.name,
                workload: w.name,
                namespace: NAMESPACE,
                service_account: w.service_account,
                // With the canonical service labels Istio's injector adds to a pod (from
                // `app` and `version`): they name the workload in telemetry and traces.
                labels: &format!(
                    "app={a},version={v},service.istio.io/canonical-name={a},\
                     service.istio.io/canonical-revision={v}",
                    a = w.app_label,
                    v = w.version
                ),
                ip,
            },
            (xds, ca),
            (&token_file, &root_cert),
        );
        let sidecar = Proc::spawn(
            &format!("{}'s sidecar", w.name),
            &mut side,
            &dir.join("mast-proxy.log"),
        )?;
        self.pids.push(sidecar.pid);
        self.running.push(Running {
            workload: *w,
            ip,
            status_port: ports.status,
            app,
            sidecar,
        });
        Ok(())
    }

    /// Polls `url` until it answers 200, failing early when a process has died.
    async fn wait_http(&mut self, what: &str, url: &str, timeout: Duration) -> Result<()> {
        self.wait_http_as(what, url, None, timeout).await
    }

    /// [`Self::wait_http`] naming `host` in the Host header.
    async fn wait_http_as(
        &mut self,
        what: &str,
        url: &str,
        host: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            self.check_running()?;
            match http_get_as(url, host).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status}: {}", body.trim()),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                bail!("{what} did not answer {url} within {timeout:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A proxy's identity in `dir`: a credential citadel accepts for the service account
    /// (`istio-token`), and the mesh root to check citadel with (`root-cert.pem`).
    fn identity(
        &self,
        dir: &Path,
        namespace: &str,
        service_account: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let ca_dir = self.work.path().join("ca");
        let token = mast_citadel::token::issue(
            &ca_dir,
            namespace,
            service_account,
            Duration::from_secs(24 * 3600),
        )
        .with_context(|| format!("issuing a credential for {namespace}/{service_account}"))?;
        let token_file = dir.join("istio-token");
        let root_cert = dir.join("root-cert.pem");
        std::fs::write(&token_file, token)?;
        set_mode(&token_file, 0o600)?;
        std::fs::copy(ca_dir.join("root-cert.pem"), &root_cert)
            .context("reading citadel's root certificate")?;
        set_mode(&root_cert, 0o644)?;
        Ok((token_file, root_cert))
    }

    /// What every mast-proxy of the demo is told, sidecar or gateway: the pod's environment
    /// as Istio's injector writes it, its labels, mastd's addresses and its identity files.
    fn proxy_settings(
        &self,
        cmd: &mut Command,
        pod: &PodIdentity<'_>,
        (xds, ca): (SocketAddr, SocketAddr),
        (token_file, root_cert): (&Path, &Path),
    ) {
        cmd.env("POD_NAME", pod.pod)
            .env("POD_NAMESPACE", pod.namespace)
            .env("INSTANCE_IP", pod.ip.to_string())
            .env("SERVICE_ACCOUNT", pod.service_account)
            .env("ISTIO_META_INTERCEPTION_MODE", self.mode.interception())
            .env("ISTIO_META_WORKLOAD_NAME", pod.workload)
            .env(
                "PROXY_CONFIG",
                format!(r#"{{"discoveryAddress":"{xds}","terminationDrainDuration":"1s"}}"#),
            )
            .env(
                "RUST_LOG",
                std::env::var("MAST_DEMO_PROXY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(["--labels", pod.labels])
            .args(["--concurrency", "1"])
            .args(["--discovery-address", &xds.to_string()])
            .args(["--ca-address", &ca.to_string()])
            .arg("--ca-root-cert")
            .arg(root_cert)
            .arg("--ca-token-file")
            .arg(token_file);
    }

    /// An error naming the first process of the run that has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(m) = self.mastd.as_mut() {
            m.check_running()?;
        }
        // bench/soak/run.sh restarts sidecars itself (as a kubelet would) and says so.
        let restarted_elsewhere = std::env::var_os("MAST_DEMO_SIDECARS_RESTARTED").is_some();
        for r in &mut self.running {
            r.app.check_running()?;
            if !restarted_elsewhere {
                r.sidecar.check_running()?;
            }
        }
        if let Some(g) = self.gateway.as_mut() {
            g.check_running()?;
        }
        Ok(())
    }

    /// Istio's ingress gateway: mast-proxy as `proxy router` with the gateway pods' labels,
    /// namespace and service account (its own pod as root, a process on loopback otherwise).
    /// As root the demo also names the gateway in /etc/hosts, so a browser on this machine
    /// opens `http://myapp.default.example.com:8080/` as written.
    fn start_gateway(
        &mut self,
        proxy: &Path,
        hosts: &str,
        xds: SocketAddr,
        ca: SocketAddr,
    ) -> Result<FrontDoor> {
        let dir = self.work.path().join(INGRESS.name);
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o755)?;
        let ip = self.mode.workload_ip(INGRESS.index);
        let ports = self.mode.sidecar_ports(INGRESS.index);
        let (token_file, root_cert) =
            self.identity(&dir, INGRESS.namespace, INGRESS.service_account)?;

        let mut hosts_entry = false;
        let mut cmd = match self.lab.as_mut() {
            Some(lab) => {
                // A gateway pod has no istio-init: nothing is captured, it listens itself.
                let pod = lab.pod(INGRESS.index, INGRESS.name, hosts)?;
                std::os::unix::fs::chown(&token_file, Some(PROXY_UID), Some(PROXY_UID))?;
                hosts_entry = match lab.add_hosts_entry(ip, INGRESS.host) {
                    Ok(()) => true,
                    Err(e) => {
                        self.out.line(&format!("  ! /etc/hosts not changed: {e:#}"));
                        false
                    }
                };
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &pod.ns, "setpriv"])
                    .args([
                        &format!("--reuid={PROXY_UID}"),
                        &format!("--regid={PROXY_UID}"),
                        "--clear-groups",
                    ])
                    .arg(proxy)
                    .args(["proxy", "router"])
                    .current_dir("/");
                c
            }
            None => {
                ensure_free((Ipv4Addr::UNSPECIFIED, INGRESS.port).into()).with_context(|| {
                    format!("the ingress gateway listens on port {}", INGRESS.port)
                })?;
                let mut c = Command::new(proxy);
                c.args(["proxy", "router"])
                    .args(["--admin-port", &ports.admin.to_string()])
                    .args(["--status-port", &ports.status.to_string()])
                    .args(["--stats-port", &ports.stats.to_string()])
                    .args(["--agent-port", "0"]);
                c
            }
        };
        self.proxy_settings(
            &mut cmd,
            &PodIdentity {
                pod: &format!("{}-demo", INGRESS.name),
                workload: INGRESS.name,
                namespace: INGRESS.namespace,
                service_account: INGRESS.service_account,
                labels: INGRESS.labels,
                ip,
            },
            (xds, ca),
            (&token_file, &root_cert),
        );
        let proxy = Proc::spawn(INGRESS.name, &mut cmd, &dir.join("mast-proxy.log"))?;
        self.pids.push(proxy.pid);
        self.gateway = Some(proxy);
        Ok(FrontDoor {
            ip,
            base: format!("http://{ip}:{}", INGRESS.port),
            status: format!("http://{ip}:{}", ports.status),
            hosts_entry,
        })
    }

    /// Stops everything in order and lists what is left.
    fn teardown(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        // The way in first (no new traffic), the apps, their sidecars, the control plane.
        if let Some(g) = self.gateway.as_mut() {
            g.stop(GRACE);
        }
        for r in self.running.iter_mut().rev() {
            r.app.stop(GRACE);
        }
        for r in self.running.iter_mut().rev() {
            r.sidecar.stop(GRACE);
        }
        if let Some(m) = self.mastd.as_mut() {
            m.stop(GRACE);
        }
        for pid in &self.pids {
            if procs::alive(*pid) {
                left.push(format!("process {pid}"));
            }
        }
        if let Some(lab) = self.lab.as_mut() {
            left.extend(lab.teardown());
            left.extend(lab.leftovers());
        }
        if let Work::Temp(_) = &self.work {
            let path = self.work.path().to_path_buf();
            let _ = std::fs::remove_dir_all(&path);
            if path.exists() {
                left.push(format!("directory {}", path.display()));
            }
        }
        left
    }
}

/// A started mesh.
struct Up {
    watcher: SplitWatcher,
    weights: split::Weights,
    /// myapp's own address (its sidecar's inbound).
    myapp: String,
    /// The way users come in.
    front: FrontDoor,
    view: SocketAddr,
    /// mastd's debug endpoints (`/debug/syncz`).
    debug: SocketAddr,
}

/// Who a proxy of the demo is: its pod, workload, namespace, service account, labels, IP.
struct PodIdentity<'a> {
    pod: &'a str,
    workload: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    /// `k=v,k2=v2`, as `mast-proxy --labels` takes them.
    labels: &'a str,
    ip: Ipv4Addr,
}

/// Where users come in: the ingress gateway's address, routing by Host.
struct FrontDoor {
    ip: Ipv4Addr,
    /// `http://<gateway>:<port>`, where requests are sent (with `Host: myapp…`).
    base: String,
    /// The gateway's status endpoint (`/healthz/ready`).
    status: String,
    /// Whether /etc/hosts names the gateway for [`INGRESS`]'s host (root only).
    hosts_entry: bool,
}

impl FrontDoor {
    /// The URL a user opens.
    fn url(&self) -> String {
        format!("http://{}:{}/", INGRESS.host, INGRESS.port)
    }
}

/// How long the demo waits for myapp's sidecar to acknowledge an edit's routes.
const EFFECT_WAIT: Duration = Duration::from_secs(10);

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP, as a value that changes once: from then on the demo
/// winds down and cleans up instead of dying with its children still running.
fn stop_signals() -> Result<tokio::sync::watch::Receiver<Option<&'static str>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
    tokio::spawn(async move {
        let why = tokio::select! {
            _ = int.recv() => "Ctrl-C",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        };
        let _ = tx.send(Some(why));
    });
    Ok(rx)
}

/// The mTLS share of requests between services (callers inside the mesh), from the topology
/// API: what the destination sidecars report, as the view shows it.
struct Mtls {
    percent: f64,
    rps: f64,
}

async fn mesh_mtls(view: SocketAddr, window: &str) -> Option<Mtls> {
    let url = format!(
        "http://{view}/api/namespaces/{NAMESPACE}/graph?graphType=workload&duration={window}"
    );
    let (status, body) = http_get(&url).await.ok()?;
    if status != 200 {
        return None;
    }
    let g: serde_json::Value = serde_json::from_str(&body).ok()?;
    // Edges leaving a workload of the mesh: the caller→service hop is counted once (the
    // service→workload edges after it carry the same requests), callers from outside the
    // mesh (`unknown`) are left out.
    let callers: Vec<&str> = g["elements"]["nodes"]
        .as_array()?
        .iter()
        .filter(|n| n["data"]["nodeType"] == "workload")
        .filter_map(|n| n["data"]["id"].as_str())
        .collect();
    let (mut total, mut secure) = (0.0, 0.0);
    for e in g["elements"]["edges"].as_array()? {
        let d = &e["data"];
        if !d["source"].as_str().is_some_and(|s| callers.contains(&s)) {
            continue;
        }
        let rps = d["rps"].as_f64().unwrap_or(0.0);
        let pct: f64 = d["isMTLS"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        total += rps;
        secure += rps * pct / 100.0;
    }
    (total > 0.0).then(|| Mtls {
        percent: 100.0 * secure / total,
        rps: total,
    })
}

/// The ingress gateway's traffic to myapp as the gateway itself reports it (Istio's metrics
/// with `reporter="source"` from the gateway's workload), read from the topology API.
struct GatewayView {
    rps: f64,
    error_percent: f64,
    p99_ms: Option<f64>,
    mtls_percent: f64,
}

impl GatewayView {
    fn short(&self) -> String {
        format!("{:.1}/s, mTLS {:.0}%", self.rps, self.mtls_percent)
    }
}

async fn gateway_view(view: SocketAddr, window: &str) -> Option<GatewayView> {
    let url = format!(
        "http://{view}/api/namespaces/graph?namespaces={},{NAMESPACE}&graphType=workload&duration={window}",
        INGRESS.namespace
    );
    let (status, body) = http_get(&url).await.ok()?;
    if status != 200 {
        return None;
    }
    let g: serde_json::Value = serde_json::from_str(&body).ok()?;
    let nodes = g["elements"]["nodes"].as_array()?;
    let id_of = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        nodes
            .iter()
            .map(|n| &n["data"])
            .find(|d| pred(d))
            .and_then(|d| d["id"].as_str())
            .map(str::to_string)
    };
    let gw = id_of(&|d| d["workload"] == INGRESS.name && d["namespace"] == INGRESS.namespace)?;
    // The gateway calls the myapp Service (the graph's service node in front of myapp-v1).
    let myapp = id_of(&|d| {
        d["nodeType"] == "service" && d["service"] == "myapp" && d["namespace"] == NAMESPACE
    })?;
    let edge = g["elements"]["edges"]
        .as_array()?
        .iter()
        .map(|e| &e["data"])
        .find(|d| d["source"] == gw.as_str() && d["target"] == myapp.as_str())?;
    let number = |v: &serde_json::Value| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    Some(GatewayView {
        rps: number(&edge["rps"])?,
        error_percent: 100.0 * number(&edge["errorRate"]).unwrap_or(0.0),
        p99_ms: number(&edge["p99"]).filter(|p| *p > 0.0),
        mtls_percent: number(&edge["isMTLS"]).unwrap_or(0.0),
    })
}

/// The smallest telemetry window covering `run`.
fn window_for(run: Duration) -> &'static str {
    match run.as_secs() {
        0..=55 => "1m",
        56..=295 => "5m",
        296..=895 => "15m",
        _ => "1h",
    }
}

fn ensure_free(addr: SocketAddr) -> Result<()> {
    TcpListener::bind(addr).map(drop).with_context(|| {
        format!(
            "{addr} is in use (another mastd or demo?); stop it, or for the topology view \
             pass --port"
        )
    })
}

/// The built topology view: `telemetry/web/dist` under the working directory or the
/// repository this mastctl was built in.
fn web_dir() -> Option<PathBuf> {
    let dir = in_repository(Path::new("telemetry/web/dist"));
    dir.join("index.html").is_file().then_some(dir)
}

/// A relative path as given when it exists from the working directory, else the same path
/// in the repository this mastctl was built in (`target/<profile>/mastctl`), so the demo
/// also starts from another directory.
fn in_repository(rel: &Path) -> PathBuf {
    if rel.is_absolute() || rel.exists() {
        return rel.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join(rel)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| rel.to_path_buf())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn split_text(split: &std::collections::BTreeMap<String, f64>) -> String {
    if split.is_empty() {
        return "-".into();
    }
    split
        .iter()
        .map(|(v, p)| format!("{v} {p:.1}%"))
        .collect::<Vec<_>>()
        .join("  ")
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}
