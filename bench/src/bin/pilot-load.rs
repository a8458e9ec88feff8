//! pilot-load: how fast does mastd get a config change to thousands of proxies?
//!
//! Like Istio's pilot-load, it simulates proxies instead of running them: each simulated proxy
//! is one delta-ADS stream (many streams share a few HTTP/2 connections) that subscribes to
//! clusters, endpoints, listeners and routes exactly as Envoy does and ACKs every response.
//! Delta is used because its responses carry resource names, so a simulated proxy never has
//! to decode a protobuf — the load generator stays cheap and the CPU goes to mastd.
//!
//! It writes a mesh of N services (each with two workloads, v1/v2, and a VirtualService
//! splitting between them), starts a release mastd on it (pinned to one core with taskset
//! when available), connects P proxies, then measures:
//! - initial sync: from the first connect to every proxy holding all four types;
//! - convergence: from rewriting one VirtualService to each proxy receiving the new routes
//!   (p50, p99, max over proxies);
//! - mastd's RSS (now and its high-water mark) and CPU time, read from /proc.
//!
//! Optional phases, each after the changes:
//! - `--churn R --churn-secs N`: endpoint churn, R pod changes per second (a WorkloadEntry
//!   added or removed) for N seconds: delay to every subscriber, what was pushed and how much;
//! - `--restart`: SIGKILL mastd and start it again on the same ports: every proxy reconnects
//!   at once (a reconnect storm); time to resync and the new process's memory high-water mark.
//!
//! `--namespaces K --sidecar-scope` spreads the services over K namespaces, each with a
//! `Sidecar` limiting egress to `./*` and a shared namespace (Istio's advice for big meshes).
//!
//! `--real-proxies N` checks the simulation against the real thing: N mast-proxy processes
//! run beside the simulated streams, each with the identity of one simulated proxy (its twin),
//! and must hold byte for byte what their twins hold, within the same window: see
//! `real_proxies.rs`.

#[path = "pilot-load/real_proxies.rs"]
mod real_proxies;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use mast_proto::TypeUrl;
use prost::Message;
use tokio::sync::{Barrier, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::real_proxies::{Lab, Twin};

/// The simulated proxies take in gigabytes in messages of up to 550 KB. glibc's allocator spent
/// most of a load-generator thread growing and freeing those buffers (`_int_malloc`,
/// `malloc_consolidate`): CPU taken from the two cores mastd shares with the simulation.
/// With mimalloc, huge pages off and no purging (`main`), it takes a third less CPU
/// (bench/README.md, "pilot scale").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    /// Services in the mesh (each with a v1 and a v2 workload and a 50/50 VirtualService).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Simulated proxies.
    #[arg(long, default_value_t = 2000)]
    proxies: usize,
    /// HTTP/2 connections the proxies' streams are spread over.
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Config changes to measure.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// The mastd binary (a release build).
    #[arg(long, default_value = "target/release/mastd")]
    mastd: PathBuf,
    /// Core to pin mastd to (taskset); the load generator takes the others.
    #[arg(long, default_value_t = 1)]
    mastd_core: usize,
    /// Namespaces the services are spread over (`ns-0` …); the services of namespace
    /// `shared` come on top with `--sidecar-scope`.
    #[arg(long, default_value_t = 1)]
    namespaces: usize,
    /// A Sidecar per namespace limiting egress to `./*` and `shared/*`, with 10 services in
    /// the `shared` namespace.
    #[arg(long)]
    sidecar_scope: bool,
    /// Endpoint churn: pod changes per second (0: no churn phase).
    #[arg(long, default_value_t = 0)]
    churn: u32,
    /// How long the churn lasts.
    #[arg(long, default_value_t = 60)]
    churn_secs: u64,
    /// SIGKILL mastd after the other phases and measure every proxy reconnecting at once.
    #[arg(long)]
    restart: bool,
    /// mastd's push throttle (PILOT_PUSH_THROTTLE); unset: mastd's default.
    #[arg(long)]
    push_throttle: Option<usize>,
    /// State-of-the-world ADS instead of delta (every response carries the whole type).
    #[arg(long)]
    sotw: bool,
    /// Real mast-proxy processes besides the simulated streams (each in a network namespace
    /// of its own; needs root), each the twin of a simulated proxy with the same identity:
    /// checked to converge and to hold exactly the bytes their twins hold.
    #[arg(long, default_value_t = 0)]
    real_proxies: usize,
    /// The mast-proxy binary for `--real-proxies` (a release build).
    #[arg(long, default_value = "target/release/mast-proxy")]
    mast_proxy: PathBuf,
}

impl Args {
    fn namespace(&self, svc: usize) -> String {
        if self.namespaces <= 1 && !self.sidecar_scope {
            "default".into()
        } else {
            format!("ns-{}", svc % self.namespaces.max(1))
        }
    }

    /// The simulated proxy that real proxy `k` is the twin of: spread over all of them.
    fn twin_of(&self, k: usize) -> usize {
        k * self.proxies / self.real_proxies.max(1)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    mast_proxy::memory::disable_transparent_huge_pages();
    // Keep freed pages: every change frees and allocates 2000 route configurations of 550 KB,
    // and purging them between changes made the kernel fault and zero them again (pilot-load's
    // system time 18.3 -> 11.2 s for the same run). The load generator's memory is not measured.
    mast_proxy::memory::set_purge_delay_ms(-1);
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    write_mesh(&args, &config)?;

    // Real proxies reach mastd over a bridge, so mastd listens on the bridge's address.
    let mut lab = if args.real_proxies > 0 {
        ensure!(
            args.real_proxies <= args.proxies.min(200),
            "--real-proxies must be at most --proxies and 200"
        );
        Some(Lab::new()?)
    } else {
        None
    };
    let xds_ip = lab
        .as_ref()
        .map_or_else(|| "127.0.0.1".to_string(), Lab::gateway);
    let port = free_port()?;
    let http_port = free_port()?;
    let mut mastd = start_mastd(&args, &config, &xds_ip, port, http_port)?;
    let result = tokio::select! {
        r = run(&args, &config, (&xds_ip, port), http_port, &mut mastd, lab.as_mut(), dir.path()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let _ = mastd.kill();
    let _ = mastd.wait();
    drop(lab);
    result
}

async fn run(
    args: &Args,
    config: &Path,
    (xds_ip, port): (&str, u16),
    http_port: u16,
    mastd: &mut Child,
    mut lab: Option<&mut Lab>,
    work: &Path,
) -> Result<()> {
    let pid = mastd.id();
    wait_for_port(xds_ip, port, mastd).await?;
    let idle_rss = proc_kb(pid, "VmRSS")?;
    println!(
        "mesh: {} services in {} namespace(s){}, {} workloads; {} proxies over {} connections; mastd pid {pid}",
        args.services,
        args.namespaces,
        if args.sidecar_scope {
            " + shared, Sidecar-scoped"
        } else {
            ""
        },
        args.services * 2,
        args.proxies,
        args.connections
    );
    println!(
        "mastd RSS after loading config, no proxies: {} MB",
        idle_rss / 1024
    );

    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(Endpoint::from_shared(format!("http://{xds_ip}:{port}"))?.connect_lazy());
    }
    let cpu_before = cpu_seconds(pid)?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let start = Instant::now();
    let mut twins: HashMap<usize, Arc<Twin>> = HashMap::new();
    if let Some(lab) = lab.as_deref_mut() {
        for k in 0..args.real_proxies {
            let i = args.twin_of(k);
            let (env, twin) = real_identity(args, i, &lab.ip(k), &format!("{xds_ip}:{port}"))?;
            let twin = Arc::new(twin);
            lab.start(k, i, Arc::clone(&twin), &args.mast_proxy, &env, work)?;
            twins.insert(i, twin);
        }
        println!(
            "real proxies: {} mast-proxy processes, one network namespace each, started with their twins (simulated proxies {})",
            args.real_proxies,
            (0..args.real_proxies)
                .map(|k| args.twin_of(k).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let barrier = Arc::new(Barrier::new(args.proxies + 1));
    for i in 0..args.proxies {
        let channel = channels[i % channels.len()].clone();
        let svc = i % args.services;
        let tx = events_tx.clone();
        let barrier = barrier.clone();
        let namespace = args.namespace(svc);
        let sotw = args.sotw;
        let twin = twins.get(&i).cloned();
        tokio::spawn(async move {
            let sim = Sim {
                i,
                svc,
                namespace,
                sotw,
                twin,
                events: tx.clone(),
            };
            if let Err(e) = sim.run(channel, barrier).await {
                let _ = tx.send(Event::Failed(i, format!("{e:#}")));
            }
        });
    }
    barrier.wait().await;

    // Initial sync: every proxy has all four types.
    let (full_push, sync_p50) = wait_synced(args, &mut events, start).await?;
    let cpu_sync = cpu_seconds(pid)? - cpu_before;
    println!(
        "initial sync of {} proxies: {:.2}s (p50 proxy {:.2}s), mastd CPU {:.1}s, RSS {} MB, high-water {} MB",
        args.proxies,
        full_push.as_secs_f64(),
        sync_p50.as_secs_f64(),
        cpu_sync,
        proc_kb(pid, "VmRSS")? / 1024,
        proc_kb(pid, "VmHWM")? / 1024,
    );
    if let Some(lab) = lab.as_deref_mut() {
        let real = lab.converged(start, Duration::from_secs(180)).await?;
        report_real("initial sync", lab, real, full_push, start);
        if let Some(first) = lab.reals.first() {
            println!("real proxy 0 and its twin hold {}", first.twin.counts());
        }
    }

    // Config changes: rewrite one VirtualService (of svc-0, in the first namespace). Every
    // proxy that can see svc-0 must get new routes; with Sidecar scoping, no other proxy may.
    let sees =
        |i: usize| !args.sidecar_scope || args.namespace(i % args.services) == args.namespace(0);
    let expected = (0..args.proxies).filter(|i| sees(*i)).count();
    let mut all = Vec::new();
    for change in 0..args.changes {
        tokio::time::sleep(Duration::from_millis(500)).await;
        while events.try_recv().is_ok() {}
        let cpu0 = cpu_seconds(pid)?;
        let twin_digests: Vec<String> = lab
            .as_deref()
            .map(|l| l.reals.iter().map(|r| r.twin.digest()).collect())
            .unwrap_or_default();
        let w = 10 + 10 * (change % 8) as u32;
        let written = Instant::now();
        std::fs::write(
            config.join("svc-0-split.yaml"),
            virtual_service(&args.namespace(0), 0, w, 100 - w),
        )?;
        let mut got: HashMap<usize, Duration> = HashMap::new();
        let mut unexpected = HashSet::new();
        let mut deadline = written + Duration::from_secs(60);
        loop {
            if got.len() == expected && Instant::now() >= deadline {
                break;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, events.recv()).await {
                Ok(Some(Event::Pushed(i, TypeUrl::Route, at, _))) if at >= written => {
                    if sees(i) {
                        got.entry(i).or_insert(at - written);
                        if got.len() == expected {
                            // Linger a little to catch pushes to proxies that cannot see it.
                            deadline = Instant::now() + Duration::from_millis(300);
                        }
                    } else {
                        unexpected.insert(i);
                    }
                }
                Ok(Some(Event::Failed(i, e))) => bail!("proxy {i} failed: {e}"),
                Ok(Some(_)) => {}
                Ok(None) => bail!("events closed"),
                Err(_) if got.len() == expected => break,
                Err(_) => bail!(
                    "change {change}: only {} of {expected} proxies updated",
                    got.len()
                ),
            }
        }
        let mut times: Vec<Duration> = got.into_values().collect();
        let cpu = cpu_seconds(pid)? - cpu0;
        println!(
            "change {change}: p50 {:>4} ms, p99 {:>4} ms, max {:>4} ms (incl. 100 ms debounce), mastd CPU {:.2}s, {} proxies updated, {} pushed to that cannot see it",
            percentile(&mut times, 50.0).as_millis(),
            percentile(&mut times, 99.0).as_millis(),
            percentile(&mut times, 100.0).as_millis(),
            cpu,
            times.len(),
            unexpected.len(),
        );
        if let Some(lab) = lab.as_deref_mut() {
            let sim_max = percentile(&mut times, 100.0);
            let real = lab.converged(written, Duration::from_secs(60)).await?;
            // Only the real proxies whose twin's config changed count (with Sidecar scoping
            // a proxy may not see the change).
            let real: Vec<Duration> = real
                .into_iter()
                .zip(&lab.reals)
                .zip(&twin_digests)
                .filter(|((_, r), before)| r.twin.digest() != **before)
                .map(|((t, _), _)| t)
                .collect();
            report_real(&format!("change {change}"), lab, real, sim_max, written);
        }
        all.extend(times);
    }
    if args.changes > 0 {
        println!(
            "convergence over {} changes × {} proxies: p50 {} ms, p99 {} ms, max {} ms",
            args.changes,
            expected,
            percentile(&mut all, 50.0).as_millis(),
            percentile(&mut all, 99.0).as_millis(),
            percentile(&mut all, 100.0).as_millis()
        );
    }
    println!(
        "mastd RSS after the changes: {} MB (high-water {} MB); total CPU {:.1}s",
        proc_kb(pid, "VmRSS")? / 1024,
        proc_kb(pid, "VmHWM")? / 1024,
        cpu_seconds(pid)?
    );

    if args.churn > 0 {
        churn(args, config, pid, &mut events).await?;
    }
    if args.restart {
        let steady = proc_kb(pid, "VmRSS")?;
        let _ = mastd.kill();
        let _ = mastd.wait();
        let killed = Instant::now();
        *mastd = start_mastd(args, config, xds_ip, port, http_port)?;
        let pid = mastd.id();
        let (all_back, p50) = wait_synced(args, &mut events, killed).await?;
        let hwm = proc_kb(pid, "VmHWM")?;
        println!(
            "reconnect storm: mastd SIGKILLed and restarted, all {} proxies resynced in {:.2}s (p50 {:.2}s), CPU {:.1}s; new mastd RSS {} MB, high-water {} MB = {:.0}% of the steady state before ({} MB)",
            args.proxies,
            all_back.as_secs_f64(),
            p50.as_secs_f64(),
            cpu_seconds(pid)?,
            proc_kb(pid, "VmRSS")? / 1024,
            hwm / 1024,
            100.0 * hwm as f64 / steady as f64,
            steady / 1024,
        );
        if let Some(lab) = lab {
            let real = lab.converged(killed, Duration::from_secs(180)).await?;
            report_real("reconnect storm", lab, real, all_back, killed);
        }
    }
    Ok(())
}

/// Wait until every proxy has reported a full sync; returns the time to the last and the
/// median proxy, from `start`.
async fn wait_synced(
    args: &Args,
    events: &mut mpsc::UnboundedReceiver<Event>,
    start: Instant,
) -> Result<(Duration, Duration)> {
    let mut synced = HashSet::new();
    let mut sync_times = Vec::new();
    while synced.len() < args.proxies {
        match tokio::time::timeout(Duration::from_secs(180), events.recv()).await {
            Ok(Some(Event::Synced(i))) => {
                if synced.insert(i) {
                    sync_times.push(start.elapsed());
                }
            }
            Ok(Some(Event::Failed(i, e))) => bail!("proxy {i} failed: {e}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("only {} proxies synced in 180s", synced.len()),
        }
    }
    let last = start.elapsed();
    Ok((last, percentile(&mut sync_times, 50.0)))
}

/// Endpoint churn: `args.churn` pod changes per second, each adding or removing a third
/// workload of one service (`svc-k-v3`), spread over the services. Every change must reach
/// every proxy that can see the service as an EDS push, and nothing else may be pushed.
async fn churn(
    args: &Args,
    config: &Path,
    pid: u32,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    while events.try_recv().is_ok() {}
    let total = (args.churn as u64 * args.churn_secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.churn as f64);
    let cpu0 = cpu_seconds(pid)?;
    let start = Instant::now();
    // Which services changed when: a proxy's EDS push for svc-k answers every change of k
    // written before it.
    let mut written: Vec<(usize, Instant)> = Vec::with_capacity(total);
    let mut present: HashSet<usize> = HashSet::new();
    let mut delays: Vec<Duration> = Vec::new();
    // (proxy, service) → index in `written` of the oldest change not yet seen.
    let mut pending: HashMap<(usize, usize), Vec<Instant>> = HashMap::new();
    let sees = |i: usize, svc: usize| {
        !args.sidecar_scope || args.namespace(i % args.services) == args.namespace(svc)
    };
    let (mut eds_pushes, mut eds_bytes, mut other_pushes) = (0u64, 0u64, 0u64);
    let mut next_write = start;
    let mut k = 0usize;
    let end_writes = start + Duration::from_secs(args.churn_secs);
    let mut deadline = end_writes + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        if now >= next_write && now < end_writes && written.len() < total {
            // Spread over services, skipping svc-0 (the route-change service).
            let svc = 1 + (k * 7919) % (args.services - 1).max(1);
            k += 1;
            let file = config.join(format!("churn-{svc}.yaml"));
            if present.remove(&svc) {
                std::fs::remove_file(&file)?;
            } else {
                present.insert(svc);
                std::fs::write(&file, workload_entry(&args.namespace(svc), svc, "v3", 3))?;
            }
            let at = Instant::now();
            written.push((svc, at));
            for i in 0..args.proxies {
                if sees(i, svc) {
                    pending.entry((i, svc)).or_default().push(at);
                }
            }
            next_write += interval;
            continue;
        }
        if written.len() >= total && pending.values().all(Vec::is_empty) {
            break;
        }
        if now >= deadline {
            let left: usize = pending.values().map(Vec::len).sum();
            bail!("churn: {left} (proxy, change) deliveries missing 30 s after the last change");
        }
        let wait = if written.len() < total {
            next_write.saturating_duration_since(now)
        } else {
            deadline.saturating_duration_since(now)
        };
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(Event::Pushed(_, t, _, bytes))) => {
                if t == TypeUrl::Endpoint {
                    eds_pushes += 1;
                    eds_bytes += bytes as u64;
                } else {
                    other_pushes += 1;
                }
            }
            Ok(Some(Event::Endpoints(i, svcs, at))) => {
                for svc in svcs {
                    if let Some(p) = pending.get_mut(&(i, svc)) {
                        for w in p.drain(..) {
                            delays.push(at.saturating_duration_since(w));
                        }
                    }
                }
            }
            Ok(Some(Event::Failed(i, e))) => bail!("proxy {i} failed: {e}"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("events closed"),
            Err(_) => {}
        }
        if written.len() >= total {
            deadline = deadline.min(Instant::now() + Duration::from_secs(30));
        }
    }
    let cpu = cpu_seconds(pid)? - cpu0;
    let changes = written.len().max(1) as f64;
    println!(
        "endpoint churn: {} pod changes at {}/s; delay to each subscriber p50 {} ms, p99 {} ms, max {} ms (over {} deliveries); pushes: {} EDS ({:.0} per change, {:.1} KB per change), {} of other types; mastd CPU {:.1}s ({:.0} ms per change)",
        written.len(),
        args.churn,
        percentile(&mut delays, 50.0).as_millis(),
        percentile(&mut delays, 99.0).as_millis(),
        percentile(&mut delays, 100.0).as_millis(),
        delays.len(),
        eds_pushes,
        eds_pushes as f64 / changes,
        eds_bytes as f64 / changes / 1024.0,
        other_pushes,
        cpu,
        1000.0 * cpu / changes,
    );
    Ok(())
}

enum Event {
    Synced(usize),
    /// A response of a type arrived (proxy, type, when, encoded bytes).
    Pushed(usize, TypeUrl, Instant, usize),
    /// An EDS response carried these services' endpoints.
    Endpoints(usize, Vec<usize>, Instant),
    Failed(usize, String),
}

/// One simulated sidecar: subscribe like Envoy, ACK everything, report what arrives, and
/// reconnect (like Envoy, with a short backoff) when mastd goes away.
struct Sim {
    i: usize,
    svc: usize,
    namespace: String,
    sotw: bool,
    /// Set when a real proxy has this one's identity: the node it sends, and what it holds.
    twin: Option<Arc<Twin>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Sim {
    async fn run(&self, channel: Channel, barrier: Arc<Barrier>) -> Result<()> {
        let mut barrier = Some(barrier);
        loop {
            let run = if self.sotw {
                self.stream_sotw(channel.clone(), barrier.take()).await
            } else {
                self.stream(channel.clone(), barrier.take()).await
            };
            match run {
                Ok(()) | Err(_) => {
                    // mastd went away: back off and reconnect.
                    tokio::time::sleep(Duration::from_millis(200 + (self.i % 100) as u64 * 5))
                        .await;
                }
            }
        }
    }

    async fn stream(&self, channel: Channel, barrier: Option<Arc<Barrier>>) -> Result<()> {
        let (node, cds, lds) = (self.node(), TypeUrl::Cluster.url(), TypeUrl::Listener.url());
        let (tx, mut stream) = open_ads::<_, LightDelta>(
            channel,
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            [
                DeltaDiscoveryRequest {
                    node: Some(node),
                    type_url: cds.into(),
                    ..Default::default()
                },
                DeltaDiscoveryRequest {
                    type_url: lds.into(),
                    ..Default::default()
                },
            ],
            barrier,
        )
        .await?;
        let mut progress = Progress::default();
        let mut eds_names: HashSet<String> = HashSet::new();
        let mut rds_names: HashSet<String> = HashSet::new();
        while let Some(resp) = stream.message().await? {
            let now = Instant::now();
            let Some(t) =
                TypeUrl::from_url(&resp.type_url).filter(|t| TypeUrl::PUSH_ORDER.contains(t))
            else {
                bail!("unexpected type {}", resp.type_url);
            };
            let mut follow_up = None;
            if t == TypeUrl::Cluster {
                // Subscribe to endpoints of every cluster (pilot answers for the EDS ones).
                let new: Vec<String> = resp
                    .resources
                    .iter()
                    .map(|r| r.name.clone())
                    .filter(|n| n.starts_with("outbound|") && eds_names.insert(n.clone()))
                    .collect();
                if !new.is_empty() {
                    follow_up = Some((TypeUrl::Endpoint, new));
                }
            }
            if t == TypeUrl::Listener {
                let new: Vec<String> = resp
                    .resources
                    .iter()
                    .filter_map(|r| r.name.rsplit('_').next().map(str::to_string))
                    .filter(|n| n.parse::<u16>().is_ok() && rds_names.insert(n.clone()))
                    .collect();
                if !new.is_empty() {
                    follow_up = Some((TypeUrl::Route, new));
                }
            }
            tx.send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await?;
            if let Some((type_url, names)) = follow_up {
                tx.send(DeltaDiscoveryRequest {
                    type_url: type_url.url().into(),
                    resource_names_subscribe: names,
                    ..Default::default()
                })
                .await?;
            }
            if let Some(twin) = &self.twin {
                // The bytes of each resource, as mast-proxy hashes them (its `Any`'s value).
                let anys: Vec<(&str, LightAny)> = resp
                    .resources
                    .iter()
                    .filter(|r| !r.resource.is_empty())
                    .map(|r| Ok((r.name.as_str(), LightAny::decode(r.resource.clone())?)))
                    .collect::<Result<_>>()?;
                let resources = anys.iter().map(|(n, a)| (*n, a.value.as_ref()));
                twin.apply(t, false, resources, &resp.removed_resources, now);
            }
            let names = resp.resources.iter().map(|r| r.name.as_str());
            self.report(&mut progress, t, now, resp.encoded_len(), names);
        }
        Ok(())
    }
}

impl Sim {
    /// The state-of-the-world flavour: one request per type naming what it wants (all
    /// clusters and listeners; the EDS clusters and route names they mention), ACKed with
    /// the version and the same names.
    async fn stream_sotw(&self, channel: Channel, barrier: Option<Arc<Barrier>>) -> Result<()> {
        let (node, cds, lds) = (self.node(), TypeUrl::Cluster.url(), TypeUrl::Listener.url());
        let (tx, mut stream) = open_ads::<_, LightSotw>(
            channel,
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            [
                DiscoveryRequest {
                    node: Some(node),
                    type_url: cds.into(),
                    ..Default::default()
                },
                DiscoveryRequest {
                    type_url: lds.into(),
                    ..Default::default()
                },
            ],
            barrier,
        )
        .await?;
        let mut progress = Progress::default();
        let mut eds_names: Vec<String> = Vec::new();
        let mut rds_names: Vec<String> = Vec::new();
        while let Some(resp) = stream.message().await? {
            let now = Instant::now();
            let Some(t) =
                TypeUrl::from_url(&resp.type_url).filter(|t| TypeUrl::PUSH_ORDER.contains(t))
            else {
                bail!("unexpected type {}", resp.type_url);
            };
            let names: Vec<String> = resp
                .resources
                .iter()
                .filter_map(|a| LightNamed::decode(a.value.clone()).ok().map(|n| n.name))
                .collect();
            if let Some(twin) = &self.twin {
                let resources = names.iter().zip(&resp.resources);
                let resources = resources.map(|(n, a)| (n.as_str(), a.value.as_ref()));
                twin.apply(t, true, resources, &[], now);
            }
            let mut follow_up = None;
            if t == TypeUrl::Cluster {
                let eds: Vec<String> = names
                    .iter()
                    .filter(|n| n.starts_with("outbound|"))
                    .cloned()
                    .collect();
                if eds != eds_names {
                    eds_names = eds;
                    follow_up = Some((TypeUrl::Endpoint, eds_names.clone()));
                }
            }
            if t == TypeUrl::Listener {
                let rds: Vec<String> = names
                    .iter()
                    .filter_map(|n| n.rsplit('_').next())
                    .filter(|n| n.parse::<u16>().is_ok())
                    .map(str::to_string)
                    .collect();
                if rds != rds_names {
                    rds_names = rds;
                    follow_up = Some((TypeUrl::Route, rds_names.clone()));
                }
            }
            let wanted = match t {
                TypeUrl::Endpoint => eds_names.clone(),
                TypeUrl::Route => rds_names.clone(),
                _ => Vec::new(),
            };
            tx.send(DiscoveryRequest {
                type_url: resp.type_url.clone(),
                version_info: resp.version_info.clone(),
                response_nonce: resp.nonce.clone(),
                resource_names: wanted,
                ..Default::default()
            })
            .await?;
            if let Some((type_url, names)) = follow_up {
                tx.send(DiscoveryRequest {
                    type_url: type_url.url().into(),
                    resource_names: names,
                    ..Default::default()
                })
                .await?;
            }
            let names = names.iter().map(String::as_str);
            self.report(&mut progress, t, now, resp.encoded_len(), names);
        }
        Ok(())
    }
}

/// What one stream has received so far.
#[derive(Default)]
struct Progress {
    have: HashSet<TypeUrl>,
    synced: bool,
}

impl Sim {
    /// The node this stream sends: the real proxy's for a twin.
    fn node(&self) -> Node {
        let version = if self.i.is_multiple_of(2) { "v1" } else { "v2" };
        match &self.twin {
            Some(t) => t.node.clone(),
            None => node(&sim_ip(self.i), self.i, self.svc, &self.namespace, version),
        }
    }
}

/// Open an ADS stream (delta or state of the world, by `path`) as Envoy does: the first
/// requests (CDS with the node, then LDS) queued, the stream opened once every simulated proxy
/// is ready (`barrier`), responses read as `Resp`.
async fn open_ads<Req, Resp>(
    channel: Channel,
    path: &'static str,
    first: [Req; 2],
    barrier: Option<Arc<Barrier>>,
) -> Result<(mpsc::Sender<Req>, tonic::Streaming<Resp>)>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    let mut client = tonic::client::Grpc::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(16);
    for request in first {
        tx.send(request).await?;
    }
    if let Some(b) = barrier {
        b.wait().await;
    }
    client.ready().await?;
    let stream = client
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::<Req, Resp>::default(),
        )
        .await?
        .into_inner();
    Ok((tx, stream))
}

impl Sim {
    /// A response of type `t` carrying `names` arrived: once the stream holds all four types it
    /// is synced; after that every response is reported as a push (with the services whose
    /// endpoints it carries).
    fn report<'a>(
        &self,
        p: &mut Progress,
        t: TypeUrl,
        now: Instant,
        bytes: usize,
        names: impl Iterator<Item = &'a str>,
    ) {
        p.have.insert(t);
        if p.synced {
            let _ = self.events.send(Event::Pushed(self.i, t, now, bytes));
            if t == TypeUrl::Endpoint {
                let svcs = names.filter_map(service_of).collect();
                let _ = self.events.send(Event::Endpoints(self.i, svcs, now));
            }
        } else if p.have.len() == TypeUrl::PUSH_ORDER.len() {
            p.synced = true;
            let _ = self.events.send(Event::Synced(self.i));
        }
    }
}

/// A `DiscoveryResponse` with each `Any` as bytes; a resource's name is field 1 of every
/// type pilot-load reads (Cluster, ClusterLoadAssignment, Listener, RouteConfiguration).
#[derive(Clone, PartialEq, prost::Message)]
struct LightSotw {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LightAny>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LightAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: bytes::Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LightNamed {
    #[prost(string, tag = "1")]
    name: String,
}

/// A `DeltaDiscoveryResponse` as the simulated proxies read it: names and versions, each
/// resource's `Any` left as the bytes it came in (no copy, no decode), so that the load
/// generator's CPU goes on counting, not on decoding what mastd sent.
#[derive(Clone, PartialEq, prost::Message)]
struct LightDelta {
    #[prost(string, tag = "1")]
    system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LightResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(string, repeated, tag = "6")]
    removed_resources: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LightResource {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(bytes = "bytes", tag = "2")]
    resource: bytes::Bytes,
    #[prost(string, tag = "3")]
    name: String,
}

/// `k` of a cluster named `outbound|8080||svc-k.<ns>.svc.cluster.local` (no subset).
fn service_of(cluster: &str) -> Option<usize> {
    let host = cluster.strip_prefix("outbound|8080||svc-")?;
    host.split('.').next()?.parse().ok()
}

/// The IP of simulated proxy `i` (its twin, if any, takes the real proxy's).
fn sim_ip(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

fn node(ip: &str, i: usize, svc: usize, namespace: &str, version: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let labels = Struct {
        fields: [
            ("app".to_string(), s(&format!("svc-{svc}"))),
            ("version".to_string(), s(version)),
            // As Istio's injector labels every pod (and so span tags name the workload).
            (
                "service.istio.io/canonical-name".to_string(),
                s(&format!("svc-{svc}")),
            ),
            (
                "service.istio.io/canonical-revision".to_string(),
                s(version),
            ),
        ]
        .into(),
    };
    let metadata = Struct {
        fields: [
            ("NAMESPACE".to_string(), s(namespace)),
            ("INTERCEPTION_MODE".to_string(), s("REDIRECT")),
            ("SERVICE_ACCOUNT".to_string(), s(&format!("svc-{svc}"))),
            (
                "WORKLOAD_NAME".to_string(),
                s(&format!("svc-{svc}-{version}")),
            ),
            (
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            ),
        ]
        .into(),
    };
    Node {
        id: format!("sidecar~{ip}~svc-{svc}-{i}.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(metadata),
        ..Default::default()
    }
}

/// The environment real proxy's mast-proxy runs with to be simulated proxy `i` at `ip`
/// (Istio's pod env: POD_NAME, POD_NAMESPACE, INSTANCE_IP, ISTIO_META_*), and its twin, whose
/// node is the one mast-proxy builds from that environment. Fails if that node lacks a field
/// of the simulated proxy's node or says it differently, so the twin is the simulated proxy.
fn real_identity(
    args: &Args,
    i: usize,
    ip: &str,
    pilot: &str,
) -> Result<(BTreeMap<String, String>, Twin)> {
    let svc = i % args.services;
    let namespace = args.namespace(svc);
    let version = if i.is_multiple_of(2) { "v1" } else { "v2" };
    let labels = serde_json::json!({
        "app": format!("svc-{svc}"),
        "version": version,
        "service.istio.io/canonical-name": format!("svc-{svc}"),
        "service.istio.io/canonical-revision": version,
    });
    let env: BTreeMap<String, String> = [
        ("POD_NAME", format!("svc-{svc}-{i}")),
        ("POD_NAMESPACE", namespace.clone()),
        ("INSTANCE_IP", ip.to_string()),
        ("SERVICE_ACCOUNT", format!("svc-{svc}")),
        ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT".into()),
        ("ISTIO_META_WORKLOAD_NAME", format!("svc-{svc}-{version}")),
        ("ISTIO_METAJSON_LABELS", labels.to_string()),
        (
            "PROXY_CONFIG",
            serde_json::json!({ "discoveryAddress": pilot }).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config =
        mast_proxy::config::Config::from_env(&env, &mast_proxy::config::Overrides::default())
            .map_err(|e| anyhow::anyhow!("mast-proxy's config for proxy {i}: {e}"))?;
    let real = mast_proxy::xds::node(&mast_proxy::shared::Shared::new(config, false, None));
    let sim = node(ip, i, svc, &namespace, version);
    ensure!(
        real.id == sim.id,
        "node ids differ: {} vs {}",
        real.id,
        sim.id
    );
    let (real_md, sim_md) = (
        real.metadata.clone().unwrap_or_default(),
        sim.metadata.unwrap_or_default(),
    );
    for (k, v) in &sim_md.fields {
        ensure!(
            real_md.fields.get(k) == Some(v),
            "mast-proxy's node metadata {k} is {:?}, the simulated proxy's {v:?}",
            real_md.fields.get(k)
        );
    }
    Ok((env, Twin::new(real)))
}

/// The real proxies' line after a phase: their times from `t0` to holding what their twins
/// hold, beside the simulated proxies'.
fn report_real(phase: &str, lab: &Lab, mut real: Vec<Duration>, sim_max: Duration, t0: Instant) {
    println!(
        "{phase}, real proxies: p50 {:>4} ms, max {:>4} ms over {} (digest polled every {} ms; simulated max {} ms, twins settled at {} ms); {} of {} real proxies hold byte for byte what their twins hold",
        percentile(&mut real, 50.0).as_millis(),
        percentile(&mut real, 100.0).as_millis(),
        real.len(),
        real_proxies::POLL.as_millis(),
        sim_max.as_millis(),
        lab.twins_settled(t0).as_millis(),
        lab.reals.len(),
        lab.reals.len(),
    );
}

fn write_mesh(args: &Args, dir: &Path) -> Result<()> {
    let mut base = String::new();
    let mut services: Vec<(usize, String)> =
        (0..args.services).map(|s| (s, args.namespace(s))).collect();
    if args.sidecar_scope {
        // The shared namespace's services: numbered after the others.
        services.extend((0..10).map(|k| (args.services + k, "shared".to_string())));
        let mut namespaces: Vec<String> = (0..args.namespaces).map(|n| format!("ns-{n}")).collect();
        namespaces.push("shared".into());
        for ns in namespaces {
            write!(
                base,
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\n\
                 metadata: {{name: default, namespace: {ns}}}\n\
                 spec:\n  egress:\n  - hosts: [\"./*\", \"shared/*\"]\n---\n"
            )?;
        }
    }
    for (s, ns) in &services {
        let s = *s;
        write!(
            base,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: {ns}}}\n\
             spec:\n  selector: {{app: svc-{s}}}\n  ports:\n  - {{name: http, port: 8080, targetPort: 9080}}\n---\n"
        )?;
        for (v, name) in [(1, "v1"), (2, "v2")] {
            base.push_str(&workload_entry(ns, s, name, v));
            base.push_str("---\n");
        }
        write!(
            base,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: svc-{s}, namespace: {ns}}}\n\
             spec:\n  host: svc-{s}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n"
        )?;
        if s > 0 {
            base.push_str(&virtual_service(ns, s, 50, 50));
            base.push_str("---\n");
        }
    }
    std::fs::write(dir.join("mesh.yaml"), base)?;
    std::fs::write(
        dir.join("svc-0-split.yaml"),
        virtual_service(&args.namespace(0), 0, 50, 50),
    )?;
    Ok(())
}

/// Workload `n` (1, 2, 3…) of service `s`, with label `version`.
fn workload_entry(ns: &str, s: usize, version: &str, n: usize) -> String {
    let ip = format!("10.{}.{}.{}", 100 + n, s / 250, s % 250 + 1);
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
         metadata: {{name: svc-{s}-{version}, namespace: {ns}}}\n\
         spec:\n  address: {ip}\n  labels: {{app: svc-{s}, version: {version}}}\n  serviceAccount: svc-{s}\n"
    )
}

fn virtual_service(ns: &str, s: usize, w1: u32, w2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: svc-{s}, namespace: {ns}}}\n\
         spec:\n  hosts: [svc-{s}]\n  http:\n  - route:\n    \
         - {{destination: {{host: svc-{s}, subset: v1}}, weight: {w1}}}\n    \
         - {{destination: {{host: svc-{s}, subset: v2}}, weight: {w2}}}\n"
    )
}

fn start_mastd(
    args: &Args,
    config: &Path,
    xds_ip: &str,
    port: u16,
    http_port: u16,
) -> Result<Child> {
    let mut cmd = if Command::new("taskset").arg("-V").output().is_ok() {
        let mut c = Command::new("taskset");
        c.args(["-c", &args.mastd_core.to_string()])
            .arg(&args.mastd);
        c
    } else {
        Command::new(&args.mastd)
    };
    // Plaintext, as the figures in bench/README.md were taken (mastd runs citadel by default).
    cmd.arg("--config-dir")
        .arg(config)
        .arg("--no-ca")
        .args(["--xds-addr", &format!("{xds_ip}:{port}")])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        // Its other servers on free ports, so that a run never meets another mastd's.
        .args(["--injector-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--telemetry-addr", &format!("127.0.0.1:{}", free_port()?)])
        .env(
            "RUST_LOG",
            std::env::var("MASTD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(if std::env::var_os("MASTD_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    if let Some(n) = args.push_throttle {
        cmd.env("PILOT_PUSH_THROTTLE", n.to_string());
    }
    cmd.spawn()
        .with_context(|| format!("start {}", args.mastd.display()))
}

async fn wait_for_port(ip: &str, port: u16, mastd: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = mastd.try_wait()? {
            bail!("mastd exited: {status}");
        }
        if tokio::net::TcpStream::connect((ip, port)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("mastd did not listen within 60s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `kB` field of /proc/<pid>/status (VmRSS: now; VmHWM: the high-water mark).
fn proc_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field}"))
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / 100.0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}
