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
//! - mastd's RSS and CPU time, read from /proc.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use mast_proto::TypeUrl;
use tokio::sync::{Barrier, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

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
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    write_mesh(&config, args.services)?;

    let port = free_port()?;
    let http_port = free_port()?;
    let mut mastd = start_mastd(&args, &config, port, http_port)?;
    let result = run(&args, &config, port, &mut mastd).await;
    let _ = mastd.kill();
    let _ = mastd.wait();
    result
}

async fn run(args: &Args, config: &Path, port: u16, mastd: &mut Child) -> Result<()> {
    let pid = mastd.id();
    wait_for_port(port, mastd).await?;
    let idle_rss = rss_kb(pid)?;
    println!(
        "mesh: {} services, {} workloads; {} proxies over {} connections; mastd pid {pid}",
        args.services,
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
        channels.push(
            Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect()
                .await
                .context("connect to mastd")?,
        );
    }
    let cpu_before = cpu_seconds(pid)?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let start = Instant::now();
    let barrier = Arc::new(Barrier::new(args.proxies + 1));
    for i in 0..args.proxies {
        let channel = channels[i % channels.len()].clone();
        let svc = i % args.services;
        let tx = events_tx.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            if let Err(e) = proxy(i, svc, channel, tx.clone(), barrier).await {
                let _ = tx.send(Event::Failed(i, format!("{e:#}")));
            }
        });
    }
    barrier.wait().await;

    // Initial sync: every proxy has all four types.
    let mut synced = HashSet::new();
    let mut sync_times = Vec::new();
    while synced.len() < args.proxies {
        match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
            Ok(Some(Event::Synced(i))) => {
                if synced.insert(i) {
                    sync_times.push(start.elapsed());
                }
            }
            Ok(Some(Event::Failed(i, e))) => bail!("proxy {i} failed: {e}"),
            Ok(Some(Event::Routes(..))) => {}
            Ok(None) | Err(_) => bail!("only {} proxies synced in 120s", synced.len()),
        }
    }
    let full_push = start.elapsed();
    let cpu_sync = cpu_seconds(pid)? - cpu_before;
    let rss_synced = rss_kb(pid)?;
    println!(
        "initial sync of {} proxies: {:.2}s (p50 proxy {:.2}s), mastd CPU {:.1}s, RSS {} MB",
        args.proxies,
        full_push.as_secs_f64(),
        percentile(&mut sync_times, 50.0).as_secs_f64(),
        cpu_sync,
        rss_synced / 1024
    );

    // Config changes: rewrite one VirtualService; every proxy sees every service, so every
    // proxy must get new routes.
    let mut all = Vec::new();
    for change in 0..args.changes {
        tokio::time::sleep(Duration::from_millis(500)).await;
        while events.try_recv().is_ok() {}
        let cpu0 = cpu_seconds(pid)?;
        let w = 10 + 10 * (change % 8) as u32;
        let written = Instant::now();
        std::fs::write(
            config.join("svc-0-split.yaml"),
            virtual_service(0, w, 100 - w),
        )?;
        let mut got: HashMap<usize, Duration> = HashMap::new();
        while got.len() < args.proxies {
            match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
                Ok(Some(Event::Routes(i, at))) if at >= written => {
                    got.entry(i).or_insert(at - written);
                }
                Ok(Some(Event::Failed(i, e))) => bail!("proxy {i} failed: {e}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => bail!("change {change}: only {} proxies updated", got.len()),
            }
        }
        let mut times: Vec<Duration> = got.into_values().collect();
        let cpu = cpu_seconds(pid)? - cpu0;
        println!(
            "change {change}: p50 {:>4} ms, p99 {:>4} ms, max {:>4} ms (incl. 100 ms debounce), mastd CPU {:.2}s",
            percentile(&mut times, 50.0).as_millis(),
            percentile(&mut times, 99.0).as_millis(),
            percentile(&mut times, 100.0).as_millis(),
            cpu
        );
        all.extend(times);
    }
    println!(
        "convergence over {} changes × {} proxies: p50 {} ms, p99 {} ms, max {} ms",
        args.changes,
        args.proxies,
        percentile(&mut all, 50.0).as_millis(),
        percentile(&mut all, 99.0).as_millis(),
        percentile(&mut all, 100.0).as_millis()
    );
    println!(
        "mastd RSS at the end: {} MB; total CPU {:.1}s",
        rss_kb(pid)? / 1024,
        cpu_seconds(pid)?
    );
    Ok(())
}

enum Event {
    Synced(usize),
    Routes(usize, Instant),
    Failed(usize, String),
}

/// One simulated sidecar: subscribe like Envoy, ACK everything, report what arrives.
async fn proxy(
    i: usize,
    svc: usize,
    channel: Channel,
    events: mpsc::UnboundedSender<Event>,
    barrier: Arc<Barrier>,
) -> Result<()> {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(16);
    let version = if i.is_multiple_of(2) { "v1" } else { "v2" };
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(i, svc, version)),
        type_url: TypeUrl::Cluster.url().into(),
        ..Default::default()
    })
    .await?;
    tx.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Listener.url().into(),
        ..Default::default()
    })
    .await?;
    barrier.wait().await;
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut have: HashSet<TypeUrl> = HashSet::new();
    let mut synced = false;
    let mut eds_names: HashSet<String> = HashSet::new();
    let mut rds_names: HashSet<String> = HashSet::new();
    while let Some(resp) = stream.message().await? {
        let now = Instant::now();
        let Some(t) = TypeUrl::from_url(&resp.type_url).filter(|t| TypeUrl::PUSH_ORDER.contains(t))
        else {
            bail!("unexpected type {}", resp.type_url);
        };
        have.insert(t);
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
        if t == TypeUrl::Route && synced {
            let _ = events.send(Event::Routes(i, now));
        }
        if !synced && have.len() == TypeUrl::PUSH_ORDER.len() {
            synced = true;
            let _ = events.send(Event::Synced(i));
        }
    }
    Ok(())
}

fn node(i: usize, svc: usize, version: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let labels = Struct {
        fields: [
            ("app".to_string(), s(&format!("svc-{svc}"))),
            ("version".to_string(), s(version)),
        ]
        .into(),
    };
    let metadata = Struct {
        fields: [
            ("NAMESPACE".to_string(), s("default")),
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
    let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    Node {
        id: format!("sidecar~{ip}~svc-{svc}-{i}.default~default.svc.cluster.local"),
        metadata: Some(metadata),
        ..Default::default()
    }
}

fn write_mesh(dir: &Path, services: usize) -> Result<()> {
    let mut base = String::new();
    for s in 0..services {
        let ip = |v: usize| format!("10.200.{}.{}", (s * 2 + v) / 250, (s * 2 + v) % 250 + 1);
        write!(
            base,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: default}}\n\
             spec:\n  selector: {{app: svc-{s}}}\n  ports:\n  - {{name: http, port: 8080, targetPort: 9080}}\n---\n"
        )?;
        for (v, name) in [(0, "v1"), (1, "v2")] {
            write!(
                base,
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
                 metadata: {{name: svc-{s}-{name}, namespace: default}}\n\
                 spec:\n  address: {}\n  labels: {{app: svc-{s}, version: {name}}}\n  serviceAccount: svc-{s}\n---\n",
                ip(v)
            )?;
        }
        write!(
            base,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: svc-{s}, namespace: default}}\n\
             spec:\n  host: svc-{s}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n"
        )?;
        if s > 0 {
            base.push_str(&virtual_service(s, 50, 50));
            base.push_str("---\n");
        }
    }
    std::fs::write(dir.join("mesh.yaml"), base)?;
    std::fs::write(dir.join("svc-0-split.yaml"), virtual_service(0, 50, 50))?;
    Ok(())
}

fn virtual_service(s: usize, w1: u32, w2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: svc-{s}, namespace: default}}\n\
         spec:\n  hosts: [svc-{s}]\n  http:\n  - route:\n    \
         - {{destination: {{host: svc-{s}, subset: v1}}, weight: {w1}}}\n    \
         - {{destination: {{host: svc-{s}, subset: v2}}, weight: {w2}}}\n"
    )
}

fn start_mastd(args: &Args, config: &Path, port: u16, http_port: u16) -> Result<Child> {
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
        .args(["--xds-addr", &format!("127.0.0.1:{port}")])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd.spawn()
        .with_context(|| format!("start {}", args.mastd.display()))
}

async fn wait_for_port(port: u16, mastd: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = mastd.try_wait()? {
            bail!("mastd exited: {status}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
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

fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
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
