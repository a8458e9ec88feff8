//! The topology view at scale: a synthetic mesh of 500 services / 2000 workloads for
//! mast-telemetry's collector and for Prometheus, the peer it replaces (bench/README.md,
//! "Topology view at scale"; `bench/telemetry/run.sh` drives it).
//!
//! Why a synthetic mesh: 2000 real sidecars do not fit on a 2-core machine, but what the
//! collector (or Prometheus) pays for is the pages it scrapes, not the proxies. So this binary
//! *is* the 2000 sidecars' stats ports: `sidecars` serves one `/stats/prometheus` page per
//! workload on its own port (127.0.0.1:base+n, so each target keeps its own pooled
//! connection, as with real pods), written as mast-proxy writes them — Istio's standard
//! metric names, the 21 labels in mast-proxy's order, Istio's duration and size buckets,
//! OpenMetrics content type, `envoy_*` cluster lines and `# EOF` (the unit test below checks
//! the Istio part line for line against `mast_proxy::metrics::Metrics::encode`). Counters
//! are functions of time (each edge's rate swings ±30% over two minutes), so pages are
//! rendered on demand from pre-built label strings and nothing is stored per scrape: cheap.
//!
//! The mesh: 10 namespaces × 50 services, 2–8 versions each (2000 workloads); a call tree
//! per namespace plus cross-calls, ≈ 4000 workload-to-workload edges (HTTP, gRPC, and TCP
//! into "database" services), an ingress into each namespace's entry service, some 4xx/5xx
//! (gRPC: non-OK statuses), mTLS everywhere except into namespace ns9, per-edge latency
//! distributions over Istio's buckets.
//!
//! Subcommands:
//! - `sidecars --base-port P [--file-sd F]`: serve the pages (pin it away from the scraper);
//!   `--file-sd` writes a Prometheus `file_sd` targets file for the peer.
//! - `collector --base-port P --listen A --web-dir D`: mast-telemetry's real `Collector` with
//!   a static `MeshView` of the 2000 targets (5 s rounds), and its `router` (API + web view)
//!   on A. Rounds are driven by `Collector::scrape_once` in the same ticker loop as
//!   `Collector::run`, so each round can be timed: one JSON line per round with its wall
//!   time, the process CPU time it cost (getrusage) and VmRSS/VmHWM.
//! - `get --url U`: times sequential keep-alive GETs (the graph API), p50/p99.
//! - `promql --prom U --namespaces a,b`: runs the PromQL queries Kiali sends Prometheus to
//!   build the same graph (traffic, TCP, response time, security policy: 11 per namespace),
//!   one after another, and times the whole set, p50/p99.
//! - `describe`: the mesh's size and page sizes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::f64::consts::PI;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mast_telemetry::{Collector, CollectorConfig, MeshView, ServiceFeatures, Target};
use tokio::net::TcpListener;

/// mastd's allocator (mastd/src/main.rs), so the collector's memory is what mastd would hold.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAMESPACES: usize = 10;
const SERVICES: usize = 500;
/// Versions per service, cycled (mean 4: 496 services → 1984 workloads, the last 4 get 4).
const VERSION_PATTERN: [usize; 8] = [2, 8, 3, 5, 4, 2, 6, 2];
/// Workload-to-workload edges to aim for.
const TARGET_EDGES: usize = 4000;
/// Istio's duration buckets (ms) and size buckets (bytes), as in proxy/src/metrics.rs.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
const BYTES_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];
/// Traffic swings by ±SWING around each edge's rate over SWING_PERIOD seconds.
const SWING: f64 = 0.3;
const SWING_PERIOD: f64 = 120.0;

#[derive(Parser, Debug)]
#[command(about = "Synthetic 2000-sidecar mesh for mast-telemetry vs Prometheus")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve every sidecar's /stats/prometheus on 127.0.0.1:base-port+n.
    Sidecars {
        #[arg(long, default_value_t = 21000)]
        base_port: u16,
        /// Write a Prometheus file_sd targets file listing every sidecar.
        #[arg(long)]
        file_sd: Option<PathBuf>,
    },
    /// Run mast-telemetry's collector over the sidecars, serving the API and web view.
    Collector {
        #[arg(long, default_value_t = 21000)]
        base_port: u16,
        #[arg(long, default_value = "127.0.0.1:20101")]
        listen: SocketAddr,
        /// The built web view (telemetry/web/dist).
        #[arg(long)]
        web_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 5.0)]
        interval: f64,
    },
    /// Time sequential GETs of one URL over one keep-alive connection.
    Get {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        repeat: usize,
        /// Stop early after this many seconds (at least 3 requests are made).
        #[arg(long, default_value_t = 10.0)]
        max_seconds: f64,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// A label for the output line.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Time the PromQL queries Kiali makes for a graph of these namespaces.
    Promql {
        #[arg(long, default_value = "http://127.0.0.1:19090")]
        prom: String,
        /// Comma-separated namespaces.
        #[arg(long)]
        namespaces: String,
        #[arg(long, default_value_t = 20)]
        repeat: usize,
        #[arg(long, default_value_t = 20.0)]
        max_seconds: f64,
        /// The graph window in seconds (Kiali's `duration`).
        #[arg(long, default_value_t = 300)]
        window: u64,
        #[arg(long, default_value = "")]
        name: String,
        /// Print each query once and exit.
        #[arg(long)]
        print: bool,
    },
    /// Print the mesh's size and page sizes.
    Describe,
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Sidecars { base_port, file_sd } => {
            let mesh = Arc::new(Mesh::build());
            check_ports(&mesh, base_port)?;
            if let Some(path) = file_sd {
                write_file_sd(&mesh, base_port, &path)?;
            }
            runtime_current()?.block_on(serve_sidecars(mesh, base_port))
        }
        Cmd::Collector {
            base_port,
            listen,
            web_dir,
            interval,
        } => {
            let mesh = Mesh::build();
            check_ports(&mesh, base_port)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_collector(&mesh, base_port, listen, web_dir, interval))
        }
        Cmd::Get {
            url,
            repeat,
            max_seconds,
            warmup,
            name,
        } => runtime_current()?.block_on(time_get(&url, repeat, max_seconds, warmup, &name)),
        Cmd::Promql {
            prom,
            namespaces,
            repeat,
            max_seconds,
            window,
            name,
            print,
        } => {
            let nss: Vec<&str> = namespaces.split(',').map(str::trim).collect();
            let queries: Vec<(String, String)> = nss
                .iter()
                .flat_map(|ns| kiali_queries(ns, window))
                .collect();
            if print {
                for (kind, q) in &queries {
                    println!("# {kind}\n{q}\n");
                }
                return Ok(());
            }
            runtime_current()?.block_on(time_promql(&prom, &queries, repeat, max_seconds, &name))
        }
        Cmd::Describe => describe(),
    }
}

fn runtime_current() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn check_ports(mesh: &Mesh, base: u16) -> Result<()> {
    if base as usize + mesh.workloads.len() > u16::MAX as usize {
        bail!(
            "base port {base} + {} sidecars overflows",
            mesh.workloads.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The mesh model
// ---------------------------------------------------------------------------------------------

/// splitmix64: deterministic pseudo-randomness, so every run (and both subcommands) builds the
/// same mesh.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1).
fn unit(a: u64, b: u64) -> f64 {
    (mix(a, b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Log-uniform in [lo, hi).
fn log_uniform(a: u64, b: u64, lo: f64, hi: f64) -> f64 {
    lo * (hi / lo).powf(unit(a, b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http,
    Grpc,
    Tcp,
}

#[derive(Debug)]
struct Service {
    name: String,
    namespace: String,
    host: String,
    proto: Proto,
    port: u16,
    target_port: u16,
    workloads: Vec<usize>,
    features: ServiceFeatures,
}

#[derive(Debug)]
struct Workload {
    name: String,
    namespace: String,
    app: String,
    version: String,
    principal: String,
}

/// One response class on an edge: its share of the edge's requests.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    code: u16,
    grpc: Option<u32>,
    share: f64,
}

/// Traffic from one workload (None: from outside the mesh) to one workload of a service.
#[derive(Debug)]
struct Edge {
    src: Option<usize>,
    dst: usize,
    service: usize,
    proto: Proto,
    mtls: bool,
    /// Requests/s (HTTP, gRPC) or connections/s (TCP) at the mean.
    rate: f64,
    phase: f64,
    outcomes: Vec<Outcome>,
    /// Cumulative share of requests at or below each duration bucket (the last is +Inf = 1).
    latency_cdf: [f64; 20],
    mean_ms: f64,
    request_size: u64,
    response_size: u64,
    /// TCP: bytes per closed connection each way.
    sent_per_conn: u64,
    received_per_conn: u64,
}

impl Edge {
    /// "Effective seconds" of traffic since the start: its derivative is 1 ± SWING, so
    /// counters advance at a varying rate and never go back.
    fn progress(&self, tau: f64) -> f64 {
        let w = 2.0 * PI / SWING_PERIOD;
        (tau + SWING / w * ((w * tau + self.phase).sin() - self.phase.sin())).max(0.0)
    }

    fn requests(&self, outcome: usize, tau: f64) -> u64 {
        let share = self.outcomes.get(outcome).map_or(0.0, |o| o.share);
        (self.rate * share * self.progress(tau)).floor() as u64
    }

    /// TCP: (opened, closed) connections.
    fn connections(&self, tau: f64) -> (u64, u64) {
        let p = self.progress(tau);
        let closed = (self.rate * p).floor() as u64;
        let opened = (self.rate * (p + 1.0)).floor() as u64;
        (opened, closed)
    }
}

/// A workload as metric labels name it (mast-proxy's `Peer`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerKey {
    workload: String,
    namespace: String,
    app: String,
    version: String,
    principal: String,
    cluster: String,
}

impl PeerKey {
    fn unknown() -> Self {
        let u = || "unknown".to_string();
        Self {
            workload: u(),
            namespace: u(),
            app: u(),
            version: u(),
            principal: u(),
            cluster: u(),
        }
    }

    fn of(w: &Workload, mtls: bool) -> Self {
        Self {
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            app: w.app.clone(),
            version: w.version.clone(),
            principal: if mtls {
                w.principal.clone()
            } else {
                "unknown".into()
            },
            cluster: "Kubernetes".into(),
        }
    }
}

/// mast-proxy's `ServiceId`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceKey {
    host: String,
    name: String,
    namespace: String,
}

impl ServiceKey {
    fn of(s: &Service) -> Self {
        Self {
            host: s.host.clone(),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
        }
    }

    fn unknown() -> Self {
        Self {
            host: "unknown".into(),
            name: "unknown".into(),
            namespace: "unknown".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reporter {
    Source,
    Destination,
}

/// The label set of one series, structured (the test rebuilds mast-proxy's labels from it).
#[derive(Debug, Clone)]
struct SeriesKey {
    reporter: Reporter,
    source: PeerKey,
    destination: PeerKey,
    service: ServiceKey,
    mtls: bool,
    /// `Some((protocol, code, grpc status))` for request series, `None` for TCP.
    request: Option<(&'static str, u16, Option<u32>)>,
}

impl SeriesKey {
    /// The labels inside `{}`, in mast-proxy's order (proxy/src/metrics.rs `encode_common`).
    fn labels(&self) -> String {
        let reporter = match self.reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        let (s, d, v) = (&self.source, &self.destination, &self.service);
        let mut pairs: Vec<(&str, String)> = vec![
            ("reporter", reporter.into()),
            ("source_workload", s.workload.clone()),
            ("source_workload_namespace", s.namespace.clone()),
            ("source_principal", s.principal.clone()),
            ("source_app", s.app.clone()),
            ("source_version", s.version.clone()),
            // Istio's fallback without canonical labels: app and version.
            ("source_canonical_service", s.app.clone()),
            ("source_canonical_revision", s.version.clone()),
            ("source_cluster", s.cluster.clone()),
            ("destination_workload", d.workload.clone()),
            ("destination_workload_namespace", d.namespace.clone()),
            ("destination_principal", d.principal.clone()),
            ("destination_app", d.app.clone()),
            ("destination_version", d.version.clone()),
            ("destination_canonical_service", d.app.clone()),
            ("destination_canonical_revision", d.version.clone()),
            ("destination_service", v.host.clone()),
            ("destination_service_name", v.name.clone()),
            ("destination_service_namespace", v.namespace.clone()),
            ("destination_cluster", d.cluster.clone()),
        ];
        if let Some((protocol, code, grpc)) = self.request {
            pairs.push(("request_protocol", protocol.into()));
            pairs.push(("response_code", code.to_string()));
            pairs.push((
                "grpc_response_status",
                grpc.map(|g| g.to_string()).unwrap_or_default(),
            ));
        }
        pairs.push(("connection_security_policy", self.policy().into()));
        pairs.push(("response_flags", "-".into()));
        pairs
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Istio's `connection_security_policy`: a client reports `unknown`.
    fn policy(&self) -> &'static str {
        match (self.reporter, self.mtls) {
            (Reporter::Source, _) => "unknown",
            (Reporter::Destination, true) => "mutual_tls",
            (Reporter::Destination, false) => "none",
        }
    }
}

/// One label set on one sidecar's page and the (edge, outcome) pairs it sums.
#[derive(Debug)]
struct Series {
    key: SeriesKey,
    labels: String,
    members: Vec<(usize, usize)>,
}

#[derive(Debug, Default)]
struct Sidecar {
    requests: Vec<Series>,
    tcp: Vec<Series>,
    /// `envoy_cluster_upstream_rq_total` lines: cluster name → edges whose requests it counts.
    clusters: BTreeMap<String, Vec<usize>>,
}

struct Mesh {
    services: Vec<Service>,
    workloads: Vec<Workload>,
    edges: Vec<Edge>,
    links: usize,
    sidecars: Vec<Sidecar>,
    /// Pre-formatted `le` values, as prometheus-client writes them.
    duration_le: Vec<String>,
    bytes_le: Vec<String>,
}

fn phi(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26 (error < 1.5e-7), for the latency distributions.
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    0.5 * (1.0 + if z >= 0.0 { erf } else { -erf })
}

impl Mesh {
    fn build() -> Self {
        let mut services = Vec::with_capacity(SERVICES);
        let mut workloads = Vec::new();
        for s in 0..SERVICES {
            let ns = format!("ns{}", s % NAMESPACES);
            let local = s / NAMESPACES;
            let name = format!("svc{s}");
            let versions = if s < 496 {
                VERSION_PATTERN[s % VERSION_PATTERN.len()]
            } else {
                4
            };
            let proto = if local >= 46 {
                Proto::Tcp
            } else if s % 6 == 0 {
                Proto::Grpc
            } else {
                Proto::Http
            };
            let (port, target_port) = match proto {
                Proto::Http => (80, 8080),
                Proto::Grpc => (9090, 9090),
                Proto::Tcp => (5432, 5432),
            };
            let host = format!("{name}.{ns}.svc.cluster.local");
            let shifting = s % 3 == 0 && versions > 1;
            let features = ServiceFeatures {
                traffic_shifting: shifting,
                fault_injection: s % 13 == 0,
                request_timeout: s % 11 == 0,
                circuit_breaker: s % 7 == 0,
                virtual_services: if shifting || s % 13 == 0 || s % 11 == 0 {
                    vec![name.clone()]
                } else {
                    Vec::new()
                },
            };
            let mut ws = Vec::new();
            for v in 1..=versions {
                ws.push(workloads.len());
                workloads.push(Workload {
                    name: format!("{name}-v{v}"),
                    namespace: ns.clone(),
                    app: name.clone(),
                    version: format!("v{v}"),
                    principal: format!("spiffe://cluster.local/ns/{ns}/sa/{name}"),
                });
            }
            services.push(Service {
                name,
                namespace: ns,
                host,
                proto,
                port,
                target_port,
                workloads: ws,
                features,
            });
        }

        // Service-to-service links: a call tree per namespace (entry service at the root,
        // every service called), then extra calls (70% within the namespace) until the
        // workload edges reach the target.
        let mut links: Vec<(usize, usize)> = Vec::new();
        let mut seen = HashSet::new();
        let pairs =
            |s: usize, t: usize| services[s].workloads.len().max(services[t].workloads.len());
        let mut edge_count: usize = (0..NAMESPACES).map(|k| services[k].workloads.len()).sum();
        for k in 0..NAMESPACES {
            for local in 1..SERVICES / NAMESPACES {
                let parent = (local - 1) / 3;
                let (s, t) = (parent * NAMESPACES + k, local * NAMESPACES + k);
                seen.insert((s, t));
                links.push((s, t));
                edge_count += pairs(s, t);
            }
        }
        let mut j = 0u64;
        while edge_count < TARGET_EDGES {
            j += 1;
            let s = (mix(j, 1) % SERVICES as u64) as usize;
            if services[s].proto == Proto::Tcp {
                continue;
            }
            let t = if unit(j, 2) < 0.7 {
                (mix(j, 3) % (SERVICES / NAMESPACES) as u64) as usize * NAMESPACES + s % NAMESPACES
            } else {
                (mix(j, 4) % SERVICES as u64) as usize
            };
            if t == s
                || t % (SERVICES / NAMESPACES * NAMESPACES) < NAMESPACES
                || !seen.insert((s, t))
            {
                continue;
            }
            links.push((s, t));
            edge_count += pairs(s, t);
        }

        let mut edges = Vec::new();
        // Ingress: outside the mesh (no sidecar, so `unknown`) into each namespace's entry.
        // (Service k, k < NAMESPACES, is namespace k's entry: local index 0.)
        for (k, svc) in services.iter().enumerate().take(NAMESPACES) {
            let n = svc.workloads.len();
            for (i, &w) in svc.workloads.iter().enumerate() {
                let id = edges.len() as u64;
                edges.push(new_edge(
                    id,
                    None,
                    w,
                    k,
                    svc.proto,
                    false,
                    log_uniform(id, 10, 20.0, 60.0) / n as f64 * (1.0 + i as f64 * 0.1),
                ));
            }
        }
        for &(s, t) in &links {
            let (src, dst) = (&services[s], &services[t]);
            let n = src.workloads.len().max(dst.workloads.len());
            let link_rate = log_uniform(s as u64, t as u64, 1.0, 40.0);
            // A shifted service sends 70% to v1 (its first version), the rest evenly.
            let weight = |i: usize| {
                let v = i % dst.workloads.len();
                if dst.features.traffic_shifting {
                    if v == 0 {
                        0.7 * (dst.workloads.len() - 1) as f64 / 0.3
                    } else {
                        1.0
                    }
                } else {
                    1.0
                }
            };
            let total: f64 = (0..n).map(weight).sum();
            for i in 0..n {
                let id = edges.len() as u64;
                let mtls = dst.namespace != "ns9";
                let rate = match dst.proto {
                    Proto::Tcp => log_uniform(id, 11, 1.0, 5.0),
                    _ => link_rate * weight(i) / total,
                };
                edges.push(new_edge(
                    id,
                    Some(src.workloads[i % src.workloads.len()]),
                    dst.workloads[i % dst.workloads.len()],
                    t,
                    dst.proto,
                    mtls,
                    rate,
                ));
            }
        }

        let mut mesh = Mesh {
            links: links.len(),
            sidecars: Vec::new(),
            duration_le: DURATION_BUCKETS
                .iter()
                .map(|b| dtoa::Buffer::new().format(*b).to_string())
                .collect(),
            bytes_le: BYTES_BUCKETS
                .iter()
                .map(|b| dtoa::Buffer::new().format(*b).to_string())
                .collect(),
            services,
            workloads,
            edges,
        };
        mesh.sidecars = mesh.build_sidecars();
        mesh
    }

    /// Each workload's series, as its sidecar would have them: outbound calls reported as
    /// `source`, inbound as `destination`; TCP as mast-proxy reports it (no metadata exchange
    /// on TCP: the server sees an `unknown` client and service, the client an `unknown` peer).
    fn build_sidecars(&self) -> Vec<Sidecar> {
        let mut index: Vec<HashMap<String, (bool, usize)>> =
            vec![HashMap::new(); self.workloads.len()];
        let mut sidecars: Vec<Sidecar> = (0..self.workloads.len())
            .map(|_| Sidecar::default())
            .collect();
        let mut add =
            |w: usize, key: SeriesKey, member: (usize, usize), sidecars: &mut Vec<Sidecar>| {
                let labels = key.labels();
                let tcp = key.request.is_none();
                let sc = &mut sidecars[w];
                match index[w].get(&labels) {
                    Some(&(true, i)) => sc.tcp[i].members.push(member),
                    Some(&(false, i)) => sc.requests[i].members.push(member),
                    None => {
                        let list = if tcp { &mut sc.tcp } else { &mut sc.requests };
                        index[w].insert(labels.clone(), (tcp, list.len()));
                        list.push(Series {
                            key,
                            labels,
                            members: vec![member],
                        });
                    }
                }
            };
        for (e, edge) in self.edges.iter().enumerate() {
            let dst = &self.workloads[edge.dst];
            let svc = &self.services[edge.service];
            if edge.proto == Proto::Tcp {
                if let Some(src) = edge.src {
                    let key = SeriesKey {
                        reporter: Reporter::Source,
                        source: PeerKey::of(&self.workloads[src], false),
                        destination: PeerKey::unknown(),
                        service: ServiceKey::of(svc),
                        mtls: false,
                        request: None,
                    };
                    add(src, key, (e, 0), &mut sidecars);
                }
                let mut source = PeerKey::unknown();
                if edge.mtls
                    && let Some(src) = edge.src
                {
                    source.principal = self.workloads[src].principal.clone();
                }
                let key = SeriesKey {
                    reporter: Reporter::Destination,
                    source,
                    destination: PeerKey::of(dst, edge.mtls),
                    service: ServiceKey::unknown(),
                    mtls: edge.mtls,
                    request: None,
                };
                add(edge.dst, key, (e, 0), &mut sidecars);
                continue;
            }
            let protocol = if edge.proto == Proto::Grpc {
                "grpc"
            } else {
                "http"
            };
            for (o, outcome) in edge.outcomes.iter().enumerate() {
                let request = Some((protocol, outcome.code, outcome.grpc));
                if let Some(src) = edge.src {
                    let key = SeriesKey {
                        reporter: Reporter::Source,
                        source: PeerKey::of(&self.workloads[src], edge.mtls),
                        destination: PeerKey::of(dst, edge.mtls),
                        service: ServiceKey::of(svc),
                        mtls: edge.mtls,
                        request,
                    };
                    add(src, key, (e, o), &mut sidecars);
                }
                let source = match edge.src {
                    Some(src) => PeerKey::of(&self.workloads[src], edge.mtls),
                    None => PeerKey::unknown(),
                };
                let key = SeriesKey {
                    reporter: Reporter::Destination,
                    source,
                    destination: PeerKey::of(dst, edge.mtls),
                    service: ServiceKey::of(svc),
                    mtls: edge.mtls,
                    request,
                };
                add(edge.dst, key, (e, o), &mut sidecars);
            }
        }
        // Envoy's cluster lines mast-proxy appends: with a Sidecar resource scoping each
        // proxy to the services it calls (Istio's advice at this size), a proxy has its
        // outbound clusters (default and one per subset), its inbound cluster and the two
        // catch-alls.
        for (e, edge) in self.edges.iter().enumerate() {
            let svc = &self.services[edge.service];
            if let Some(src) = edge.src {
                let c = &mut sidecars[src].clusters;
                c.entry(format!("outbound|{}||{}", svc.port, svc.host))
                    .or_default()
                    .push(e);
                for &w in &svc.workloads {
                    let subset = &self.workloads[w].version;
                    c.entry(format!("outbound|{}|{subset}|{}", svc.port, svc.host))
                        .or_default();
                }
            }
            sidecars[edge.dst]
                .clusters
                .entry(format!("inbound|{}||", svc.target_port))
                .or_default()
                .push(e);
        }
        for sc in &mut sidecars {
            sc.clusters.entry("BlackHoleCluster".into()).or_default();
            sc.clusters.entry("PassthroughCluster".into()).or_default();
        }
        sidecars
    }

    /// One sidecar's page at `tau` seconds after the start, into `out`.
    fn render(&self, w: usize, tau: f64, out: &mut Vec<u8>) {
        let Some(sc) = self.sidecars.get(w) else {
            return;
        };
        let mut ib = itoa::Buffer::new();
        let mut db = dtoa::Buffer::new();
        // Values of every request series first: four families print them.
        struct Vals {
            count: u64,
            buckets: [u64; 20],
            sum_ms: f64,
            req: [u64; 9],
            req_sum: f64,
            resp: [u64; 9],
            resp_sum: f64,
        }
        let vals: Vec<Vals> = sc
            .requests
            .iter()
            .map(|s| {
                let mut v = Vals {
                    count: 0,
                    buckets: [0; 20],
                    sum_ms: 0.0,
                    req: [0; 9],
                    req_sum: 0.0,
                    resp: [0; 9],
                    resp_sum: 0.0,
                };
                for &(e, o) in &s.members {
                    let edge = &self.edges[e];
                    let n = edge.requests(o, tau);
                    v.count += n;
                    for (b, cdf) in v.buckets.iter_mut().zip(edge.latency_cdf) {
                        *b += (n as f64 * cdf).floor() as u64;
                    }
                    v.sum_ms += n as f64 * edge.mean_ms;
                    for (i, bound) in BYTES_BUCKETS.iter().chain([&f64::INFINITY]).enumerate() {
                        if edge.request_size as f64 <= *bound {
                            v.req[i] += n;
                        }
                        if edge.response_size as f64 <= *bound {
                            v.resp[i] += n;
                        }
                    }
                    v.req_sum += (n * edge.request_size) as f64;
                    v.resp_sum += (n * edge.response_size) as f64;
                }
                v
            })
            .collect();

        let line = |out: &mut Vec<u8>, name: &str, labels: &str, le: Option<&str>, value: &str| {
            out.extend_from_slice(name.as_bytes());
            out.push(b'{');
            // prometheus-client writes `le` first.
            if let Some(le) = le {
                out.extend_from_slice(b"le=\"");
                out.extend_from_slice(le.as_bytes());
                out.extend_from_slice(b"\",");
            }
            out.extend_from_slice(labels.as_bytes());
            out.extend_from_slice(b"} ");
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        };

        // A family with no series is left out, as prometheus-client does.
        let header = |out: &mut Vec<u8>, name: &str, help: &str, kind: &str| {
            let mark = out.len();
            out.extend_from_slice(
                format!("# HELP {name} {help}.\n# TYPE {name} {kind}\n").as_bytes(),
            );
            (mark, out.len())
        };
        let close = |out: &mut Vec<u8>, (mark, end): (usize, usize)| {
            if out.len() == end {
                out.truncate(mark);
            }
        };

        let h = header(out, "istio_requests", "Requests", "counter");
        for (s, v) in sc.requests.iter().zip(&vals) {
            if v.count > 0 {
                line(
                    out,
                    "istio_requests_total",
                    &s.labels,
                    None,
                    ib.format(v.count),
                );
            }
        }
        close(out, h);
        let name = "istio_request_duration_milliseconds";
        let h = header(out, name, "Request duration", "histogram");
        let (sum_name, count_name, bucket_name) = (
            format!("{name}_sum"),
            format!("{name}_count"),
            format!("{name}_bucket"),
        );
        for (s, v) in sc.requests.iter().zip(&vals) {
            if v.count == 0 {
                continue;
            }
            line(out, &sum_name, &s.labels, None, db.format(v.sum_ms));
            line(out, &count_name, &s.labels, None, ib.format(v.count));
            for (i, b) in v.buckets.iter().enumerate() {
                let le = self.duration_le.get(i).map_or("+Inf", String::as_str);
                line(out, &bucket_name, &s.labels, Some(le), ib.format(*b));
            }
        }
        close(out, h);
        for (name, help, pick) in [
            ("istio_request_bytes", "Request size", 0),
            ("istio_response_bytes", "Response size", 1),
        ] {
            let h = header(out, name, help, "histogram");
            let (sum_name, count_name, bucket_name) = (
                format!("{name}_sum"),
                format!("{name}_count"),
                format!("{name}_bucket"),
            );
            for (s, v) in sc.requests.iter().zip(&vals) {
                if v.count == 0 {
                    continue;
                }
                let (buckets, sum) = if pick == 0 {
                    (&v.req, v.req_sum)
                } else {
                    (&v.resp, v.resp_sum)
                };
                line(out, &sum_name, &s.labels, None, db.format(sum));
                line(out, &count_name, &s.labels, None, ib.format(v.count));
                for (i, b) in buckets.iter().enumerate() {
                    let le = self.bytes_le.get(i).map_or("+Inf", String::as_str);
                    line(out, &bucket_name, &s.labels, Some(le), ib.format(*b));
                }
            }
            close(out, h);
        }
        let tcp: Vec<(u64, u64, u64, u64)> = sc
            .tcp
            .iter()
            .map(|s| {
                let mut t = (0, 0, 0, 0);
                for &(e, _) in &s.members {
                    let edge = &self.edges[e];
                    let (opened, closed) = edge.connections(tau);
                    t.0 += closed * edge.sent_per_conn;
                    t.1 += closed * edge.received_per_conn;
                    t.2 += opened;
                    t.3 += closed;
                }
                t
            })
            .collect();
        for (name, help, pick) in [
            ("istio_tcp_sent_bytes", "Bytes sent", 0),
            ("istio_tcp_received_bytes", "Bytes received", 1),
            ("istio_tcp_connections_opened", "Connections opened", 2),
            ("istio_tcp_connections_closed", "Connections closed", 3),
        ] {
            let h = header(out, name, help, "counter");
            let total_name = format!("{name}_total");
            for (s, t) in sc.tcp.iter().zip(&tcp) {
                let value = [t.0, t.1, t.2, t.3][pick];
                // mast-proxy counts bytes and closes when a connection closes: no line before.
                let exists = if pick == 2 { t.2 > 0 } else { t.3 > 0 };
                if exists {
                    line(out, &total_name, &s.labels, None, ib.format(value));
                }
            }
            close(out, h);
        }
        // mast-proxy's Envoy-style lines (proxy/src/admin.rs `envoy_prometheus`).
        out.extend_from_slice(b"# TYPE envoy_cluster_upstream_rq_total counter\n");
        for (name, members) in &sc.clusters {
            let n: u64 = members
                .iter()
                .map(|&e| {
                    let edge = &self.edges[e];
                    if edge.proto == Proto::Tcp {
                        return 0;
                    }
                    (0..edge.outcomes.len())
                        .map(|o| edge.requests(o, tau))
                        .sum::<u64>()
                })
                .sum();
            out.extend_from_slice(b"envoy_cluster_upstream_rq_total{cluster_name=\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\"} ");
            out.extend_from_slice(ib.format(n).as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"# TYPE envoy_cluster_upstream_rq_retry counter\n");
        for name in sc.clusters.keys() {
            out.extend_from_slice(b"envoy_cluster_upstream_rq_retry{cluster_name=\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\"} 0\n");
        }
        out.extend_from_slice(
            b"# TYPE envoy_control_plane_connected_state gauge\nenvoy_control_plane_connected_state 1\n# EOF\n",
        );
    }

    fn target(&self, n: usize, base_port: u16) -> Target {
        let w = &self.workloads[n];
        Target {
            id: format!(
                "sidecar~127.0.0.1~{}-{n:04x}.{}~{}.svc.cluster.local",
                w.name, w.namespace, w.namespace
            ),
            namespace: w.namespace.clone(),
            workload: w.name.clone(),
            app: Some(w.app.clone()),
            version: Some(w.version.clone()),
            stats_url: format!(
                "http://127.0.0.1:{}/stats/prometheus",
                base_port as usize + n
            ),
        }
    }
}

fn new_edge(
    id: u64,
    src: Option<usize>,
    dst: usize,
    service: usize,
    proto: Proto,
    mtls: bool,
    rate: f64,
) -> Edge {
    let u = unit(id, 20);
    let err = |k: u64, lo: f64, hi: f64| lo + (hi - lo) * unit(id, k);
    let (fail_code, fail_grpc, nf_code, nf_grpc) = match proto {
        Proto::Grpc => (200, Some(14), 200, Some(5)),
        _ => (503, None, 404, None),
    };
    let ok_grpc = if proto == Proto::Grpc { Some(0) } else { None };
    let mut outcomes = Vec::new();
    let mut push = |code, grpc, share| {
        outcomes.push(Outcome { code, grpc, share });
    };
    if proto == Proto::Tcp {
        push(0, None, 1.0);
    } else if u < 0.70 {
        push(200, ok_grpc, 1.0);
    } else if u < 0.85 {
        let e = err(21, 0.01, 0.05);
        push(200, ok_grpc, 1.0 - e);
        push(fail_code, fail_grpc, e);
    } else if u < 0.93 {
        let e = err(22, 0.10, 0.30);
        push(200, ok_grpc, 1.0 - e);
        push(fail_code, fail_grpc, e);
    } else if u < 0.97 {
        let e = err(23, 0.10, 0.25);
        push(200, ok_grpc, 1.0 - e);
        push(nf_code, nf_grpc, e);
    } else {
        let (e1, e2) = (err(24, 0.02, 0.08), err(25, 0.02, 0.08));
        push(200, ok_grpc, 1.0 - e1 - e2);
        push(fail_code, fail_grpc, e1);
        push(nf_code, nf_grpc, e2);
    }
    // Log-normal latency: median 2–120 ms, sigma 0.6, over Istio's buckets.
    let median = log_uniform(id, 30, 2.0, 120.0);
    let sigma = 0.6;
    let mut latency_cdf = [1.0; 20];
    for (c, b) in latency_cdf.iter_mut().zip(DURATION_BUCKETS) {
        *c = phi((b.ln() - median.ln()) / sigma);
    }
    Edge {
        src,
        dst,
        service,
        proto,
        mtls,
        rate,
        phase: unit(id, 31) * 2.0 * PI,
        outcomes,
        latency_cdf,
        mean_ms: median * (sigma * sigma / 2.0).exp(),
        request_size: log_uniform(id, 32, 200.0, 2000.0) as u64,
        response_size: log_uniform(id, 33, 300.0, 50000.0) as u64,
        sent_per_conn: log_uniform(id, 34, 2e3, 2e5) as u64,
        received_per_conn: log_uniform(id, 35, 1e3, 5e4) as u64,
    }
}

// ---------------------------------------------------------------------------------------------
// sidecars: the pages
// ---------------------------------------------------------------------------------------------

fn write_file_sd(mesh: &Mesh, base_port: u16, path: &PathBuf) -> Result<()> {
    // One group per target with the labels Istio's Prometheus config copies from pods.
    let groups: Vec<serde_json::Value> = mesh
        .workloads
        .iter()
        .enumerate()
        .map(|(n, w)| {
            serde_json::json!({
                "targets": [format!("127.0.0.1:{}", base_port as usize + n)],
                "labels": {
                    "namespace": w.namespace,
                    "pod": format!("{}-{n:04x}", w.name),
                    "app": w.app,
                    "version": w.version,
                },
            })
        })
        .collect();
    std::fs::write(path, serde_json::to_vec_pretty(&groups)?)
        .with_context(|| path.display().to_string())
}

async fn serve_sidecars(mesh: Arc<Mesh>, base_port: u16) -> Result<()> {
    let start = Instant::now();
    let pages = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    for n in 0..mesh.workloads.len() {
        let port = base_port + n as u16;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        let (mesh, pages, bytes) = (Arc::clone(&mesh), Arc::clone(&pages), Arc::clone(&bytes));
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (mesh, pages, bytes) =
                    (Arc::clone(&mesh), Arc::clone(&pages), Arc::clone(&bytes));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let resp = if req.uri().path() == "/stats/prometheus" {
                            let mut body = Vec::with_capacity(256 << 10);
                            mesh.render(n, start.elapsed().as_secs_f64(), &mut body);
                            pages.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                            Response::builder()
                                .header(
                                    header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(body)))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"not found\n")))
                        };
                        async move { resp }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
    eprintln!(
        "serving {} sidecars on 127.0.0.1:{}-{}",
        mesh.workloads.len(),
        base_port,
        base_port as usize + mesh.workloads.len() - 1
    );
    shutdown_signal().await;
    let cpu = cpu_seconds();
    eprintln!(
        "{}",
        serde_json::json!({
            "pages": pages.load(Ordering::Relaxed),
            "mb": bytes.load(Ordering::Relaxed) as f64 / 1e6,
            "seconds": start.elapsed().as_secs_f64(),
            "cpu_seconds": cpu,
        })
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// This process's user + system CPU time.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: initialised (zeroed, then filled by a successful getrusage).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (VmRSS, VmHWM) in MB.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

// ---------------------------------------------------------------------------------------------
// collector: mast-telemetry over the sidecars
// ---------------------------------------------------------------------------------------------

/// The host's view, fixed: every sidecar, and the badges of every service.
struct StaticMesh {
    targets: Vec<Target>,
    features: HashMap<(String, String), ServiceFeatures>,
}

impl MeshView for StaticMesh {
    fn targets(&self) -> Vec<Target> {
        self.targets.clone()
    }

    fn service_features(&self, namespace: &str, service: &str) -> ServiceFeatures {
        self.features
            .get(&(namespace.to_string(), service.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

async fn run_collector(
    mesh: &Mesh,
    base_port: u16,
    listen: SocketAddr,
    web_dir: Option<PathBuf>,
    interval: f64,
) -> Result<()> {
    let view = StaticMesh {
        targets: (0..mesh.workloads.len())
            .map(|n| mesh.target(n, base_port))
            .collect(),
        features: mesh
            .services
            .iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s.features.clone()))
            .collect(),
    };
    let config = CollectorConfig {
        interval: Duration::from_secs_f64(interval),
        ..CollectorConfig::default()
    };
    let mut collector = Collector::new(Arc::new(view), config)?;
    let app = mast_telemetry::router(collector.telemetry(), web_dir);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let server = tokio::spawn(mast_telemetry::serve(listener, app, async move {
        let _ = api_stop.wait_for(|s| *s).await;
    }));
    eprintln!(
        "collector: {} targets, API and web view on http://{listen}/",
        mesh.workloads.len()
    );

    // Collector::run's loop (a ticker that delays missed ticks), with each round timed.
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let started = Instant::now();
    let mut round = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let report = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = collector.scrape_once() => r,
        };
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        round += 1;
        let (rss, hwm) = rss_mb();
        let line = serde_json::json!({
            "round": round,
            "at": started.elapsed().as_secs_f64(),
            "targets": report.targets,
            "reachable": report.reachable,
            "edges": report.edges,
            "wall_ms": (wall * 1000.0).round(),
            "cpu_ms": (cpu * 1000.0).round(),
            "cpu_total_s": cpu_seconds(),
            "rss_mb": rss,
            "hwm_mb": hwm,
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// get / promql: the timing clients
// ---------------------------------------------------------------------------------------------

fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// Sends `req`, reads the whole body; (status, body).
async fn fetch(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut ms: Vec<f64>, extra: serde_json::Value) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let mut v = serde_json::json!({
        "name": name,
        "n": ms.len(),
        "p50_ms": percentile(&ms, 50.0),
        "p99_ms": percentile(&ms, 99.0),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
        "mean_ms": ms.iter().sum::<f64>() / ms.len().max(1) as f64,
    });
    if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

async fn time_get(
    url: &str,
    repeat: usize,
    max_seconds: f64,
    warmup: usize,
    name: &str,
) -> Result<()> {
    let client = client();
    let get = || Request::get(url).body(Full::new(Bytes::new()));
    let mut bytes = 0;
    for _ in 0..warmup {
        let (status, body) = fetch(&client, get()?).await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
        }
        bytes = body.len();
    }
    let mut ms = Vec::with_capacity(repeat);
    let started = Instant::now();
    while ms.len() < repeat && (ms.len() < 3 || started.elapsed().as_secs_f64() < max_seconds) {
        let t = Instant::now();
        let (status, body) = fetch(&client, get()?).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            bail!("GET {url}: {status}");
        }
        bytes = body.len();
    }
    println!(
        "{}",
        summary(name, ms, serde_json::json!({ "bytes": bytes }))
    );
    Ok(())
}

/// The queries Kiali's graph sends Prometheus for one namespace (kiali/kiali
/// graph/telemetry/istio/istio.go and the responseTime and securityPolicy appenders), with
/// `source_app`/`source_version` where Kiali groups by `*_canonical_service`/`_revision`
/// (mast-proxy's metrics carry the former). (kind, PromQL).
fn kiali_queries(ns: &str, window: u64) -> Vec<(String, String)> {
    let http_by = "source_workload_namespace,source_workload,source_app,source_version,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_app,destination_version,request_protocol,response_code,grpc_response_status,response_flags";
    let tcp_by = "source_workload_namespace,source_workload,source_app,source_version,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_app,destination_version,response_flags";
    let rt_by = "le,source_workload_namespace,source_workload,source_app,source_version,destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,destination_app,destination_version";
    let sp_by = "source_workload_namespace,source_workload,source_app,source_version,source_principal,destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,destination_app,destination_version,destination_principal,connection_security_policy";
    let w = format!("{window}s");
    let from_unknown = format!(
        r#"reporter="destination",source_workload="unknown",destination_workload_namespace="{ns}""#
    );
    let from_outside = format!(
        r#"reporter="source",source_workload_namespace!="{ns}",source_workload!="unknown",destination_service_namespace="{ns}""#
    );
    let from_inside = format!(r#"reporter="source",source_workload_namespace="{ns}""#);
    let mut q = Vec::new();
    for (kind, sel) in [
        ("traffic", &from_unknown),
        ("traffic", &from_outside),
        ("traffic", &from_inside),
    ] {
        q.push((
            kind.to_string(),
            format!("sum(rate(istio_requests_total{{{sel}}}[{w}])) by ({http_by})"),
        ));
    }
    for sel in [&from_unknown, &from_outside, &from_inside] {
        q.push((
            "tcp".to_string(),
            format!("sum(rate(istio_tcp_sent_bytes_total{{{sel}}}[{w}])) by ({tcp_by})"),
        ));
    }
    for sel in [&from_unknown, &from_outside, &from_inside] {
        q.push((
            "responseTime".to_string(),
            format!(
                r#"histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket{{{sel},response_code=~"2[0-9]{{2}}"}}[{w}])) by ({rt_by})) > 0"#
            ),
        ));
    }
    for sel in [
        format!(
            r#"reporter="destination",source_workload_namespace!="{ns}",destination_service_namespace="{ns}""#
        ),
        format!(r#"reporter="destination",source_workload_namespace="{ns}""#),
    ] {
        q.push((
            "securityPolicy".to_string(),
            format!(
                "(sum(rate(istio_requests_total{{{sel}}}[{w}])) by ({sp_by}) > 0) OR (sum(rate(istio_tcp_sent_bytes_total{{{sel}}}[{w}])) by ({sp_by}) > 0)"
            ),
        ));
    }
    q
}

async fn time_promql(
    prom: &str,
    queries: &[(String, String)],
    repeat: usize,
    max_seconds: f64,
    name: &str,
) -> Result<()> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let client = client();
    let url = format!("{}/api/v1/query", prom.trim_end_matches('/'));
    // POST, form-encoded, as Kiali's Prometheus client does for long queries.
    let post = |query: &str, at: f64| {
        let body = format!(
            "query={}&time={at:.3}",
            utf8_percent_encode(query, NON_ALPHANUMERIC)
        );
        Request::post(url.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
    };
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    // One untimed pass: checks every query and counts what it returns.
    let mut series = 0usize;
    let mut bytes = 0usize;
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for (kind, q) in queries {
        let (status, body) = fetch(&client, post(q, now())?).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("query {q}: not JSON ({status})"))?;
        if v["status"] != "success" {
            bail!("query {q}: {status} {v}");
        }
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        series += n;
        bytes += body.len();
        *by_kind.entry(kind.as_str()).or_default() += n;
    }
    let mut totals = Vec::new();
    let mut per_kind: BTreeMap<&str, f64> = BTreeMap::new();
    let started = Instant::now();
    while totals.len() < repeat
        && (totals.len() < 3 || started.elapsed().as_secs_f64() < max_seconds)
    {
        let t = Instant::now();
        for (kind, q) in queries {
            let tq = Instant::now();
            let (status, _) = fetch(&client, post(q, now())?).await?;
            if !status.is_success() {
                bail!("query {q}: {status}");
            }
            *per_kind.entry(kind.as_str()).or_default() += tq.elapsed().as_secs_f64() * 1000.0;
        }
        totals.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let runs = totals.len().max(1) as f64;
    let mean_by_kind: BTreeMap<&str, f64> = per_kind.iter().map(|(k, v)| (*k, v / runs)).collect();
    println!(
        "{}",
        summary(
            name,
            totals,
            serde_json::json!({
                "queries": queries.len(),
                "result_series": series,
                "result_series_by_kind": by_kind,
                "bytes": bytes,
                "mean_ms_by_kind": mean_by_kind,
            })
        )
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// describe
// ---------------------------------------------------------------------------------------------

fn describe() -> Result<()> {
    let t = Instant::now();
    let mesh = Mesh::build();
    let build_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut by_proto: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &mesh.edges {
        let p = match e.proto {
            Proto::Http => "http",
            Proto::Grpc => "grpc",
            Proto::Tcp => "tcp",
        };
        *by_proto.entry(p).or_default() += 1;
    }
    let erroring = mesh
        .edges
        .iter()
        .filter(|e| {
            e.outcomes
                .iter()
                .any(|o| o.code >= 500 || o.grpc.is_some_and(|g| g != 0))
        })
        .count();
    let mtls = mesh.edges.iter().filter(|e| e.mtls).count();
    let request_sets: usize = mesh.sidecars.iter().map(|s| s.requests.len()).sum();
    let destination_sets = mesh
        .sidecars
        .iter()
        .flat_map(|s| &s.requests)
        .filter(|r| r.key.reporter == Reporter::Destination)
        .count();
    let tcp_sets: usize = mesh.sidecars.iter().map(|s| s.tcp.len()).sum();
    let clusters: usize = mesh.sidecars.iter().map(|s| s.clusters.len()).sum();
    let mut sizes = Vec::with_capacity(mesh.workloads.len());
    let mut page = Vec::with_capacity(1 << 20);
    let t = Instant::now();
    for n in 0..mesh.workloads.len() {
        page.clear();
        mesh.render(n, 600.0, &mut page);
        sizes.push(page.len());
    }
    let render = t.elapsed().as_secs_f64();
    let total: usize = sizes.iter().sum();
    sizes.sort_unstable();
    let rps: f64 = mesh
        .edges
        .iter()
        .filter(|e| e.proto != Proto::Tcp)
        .map(|e| e.rate)
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "namespaces": NAMESPACES,
            "services": mesh.services.len(),
            "workloads": mesh.workloads.len(),
            "service_links": mesh.links,
            "edges": mesh.edges.len(),
            "edges_by_protocol": by_proto,
            "edges_with_5xx_or_grpc_errors": erroring,
            "edges_mtls": mtls,
            "mesh_requests_per_second": rps.round(),
            // Series on all pages: each request label set is 1 counter + 3 histograms
            // (22 + 11 + 11 lines); each TCP label set up to 4 counters.
            "request_label_sets": request_sets,
            "request_label_sets_reporter_destination": destination_sets,
            "tcp_label_sets": tcp_sets,
            "series": request_sets * 45 + tcp_sets * 4 + clusters * 2 + mesh.workloads.len(),
            "page_bytes_mean": total / sizes.len().max(1),
            "page_bytes_max": sizes.last().copied().unwrap_or(0),
            "round_mb": total as f64 / 1e6,
            "render_mb_per_s": total as f64 / 1e6 / render,
            "build_ms": build_ms,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use mast_proxy::config::{Config, Overrides};
    use mast_proxy::metrics::{self, Metrics, Peer, RequestLabels, ServiceId, TcpLabels};

    fn proxy_metrics(w: &Workload) -> Metrics {
        let env: BTreeMap<String, String> = [
            ("POD_NAME", format!("{}-abc-xyz", w.name)),
            ("POD_NAMESPACE", w.namespace.clone()),
            ("SERVICE_ACCOUNT", w.app.clone()),
            ("ISTIO_META_WORKLOAD_NAME", w.name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let o = Overrides {
            labels: Some(format!("app={},version={}", w.app, w.version)),
            ..Default::default()
        };
        Metrics::new(&Config::from_env(&env, &o).expect("config"))
    }

    fn peer(p: &PeerKey) -> Arc<Peer> {
        Arc::new(Peer {
            workload: p.workload.clone(),
            namespace: p.namespace.clone(),
            app: p.app.clone(),
            version: p.version.clone(),
            // Istio's fallback without canonical labels: app and version.
            canonical_service: p.app.clone(),
            canonical_revision: p.version.clone(),
            principal: p.principal.clone(),
            cluster: p.cluster.clone(),
        })
    }

    fn service(s: &ServiceKey) -> Arc<ServiceId> {
        Arc::new(ServiceId {
            host: s.host.clone(),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
        })
    }

    fn reporter(r: Reporter) -> metrics::Reporter {
        match r {
            Reporter::Source => metrics::Reporter::Source,
            Reporter::Destination => metrics::Reporter::Destination,
        }
    }

    /// The page mast-proxy would write after the same traffic: every request observed at
    /// the upper bound of the bucket our counts put it in, every TCP connection opened and
    /// closed with the per-connection bytes.
    fn proxy_page(mesh: &Mesh, w: usize, tau: f64) -> String {
        let m = proxy_metrics(&mesh.workloads[w]);
        let sc = &mesh.sidecars[w];
        for s in &sc.requests {
            let Some((protocol, code, grpc)) = s.key.request else {
                panic!("request series without request labels");
            };
            let labels = RequestLabels {
                reporter: reporter(s.key.reporter),
                source: peer(&s.key.source),
                destination: peer(&s.key.destination),
                service: service(&s.key.service),
                protocol,
                code,
                grpc_status: grpc,
                mtls: s.key.mtls,
                flags: "-",
            };
            for &(e, o) in &s.members {
                let edge = &mesh.edges[e];
                let n = edge.requests(o, tau);
                let mut below = 0;
                for (i, cdf) in edge.latency_cdf.iter().enumerate() {
                    let cum = (n as f64 * cdf).floor() as u64;
                    let millis = DURATION_BUCKETS.get(i).copied().unwrap_or(1e9);
                    for _ in below..cum {
                        m.record_request(
                            labels.clone(),
                            millis,
                            edge.request_size,
                            edge.response_size,
                        );
                    }
                    below = cum;
                }
            }
        }
        for s in &sc.tcp {
            let labels = TcpLabels {
                reporter: reporter(s.key.reporter),
                source: peer(&s.key.source),
                destination: peer(&s.key.destination),
                service: service(&s.key.service),
                mtls: s.key.mtls,
                flags: "-",
            };
            for &(e, _) in &s.members {
                let edge = &mesh.edges[e];
                let (opened, closed) = edge.connections(tau);
                for _ in 0..opened {
                    m.tcp_opened(&labels);
                }
                for _ in 0..closed {
                    m.tcp_closed(&labels, edge.sent_per_conn, edge.received_per_conn);
                }
            }
        }
        m.encode()
    }

    /// Family blocks (split at `# HELP`), each: header lines in order, series lines sorted,
    /// and the duration `_sum` values dropped (ours is count × mean, the proxy's the sum of
    /// what the test observed).
    fn families(page: &str) -> Vec<(Vec<String>, Vec<String>)> {
        let mut out: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for line in page.lines() {
            if line.starts_with("# HELP") {
                out.push((vec![line.to_string()], Vec::new()));
            } else if let Some(last) = out.last_mut() {
                if line.starts_with('#') {
                    last.0.push(line.to_string());
                } else if line.starts_with("istio_request_duration_milliseconds_sum") {
                    last.1
                        .push(line.rsplit_once(' ').map_or(line, |(l, _)| l).to_string());
                } else {
                    last.1.push(line.to_string());
                }
            }
        }
        for f in &mut out {
            f.1.sort();
        }
        out
    }

    #[test]
    fn pages_match_mast_proxy() {
        let mesh = Mesh::build();
        // Some of each kind: an entry workload (ingress), gRPC, a TCP client and a database.
        let mut picks = vec![0usize];
        let find = |f: &dyn Fn(&Sidecar) -> bool| mesh.sidecars.iter().position(f);
        picks.extend(find(&|s| {
            s.tcp.iter().any(|t| t.key.reporter == Reporter::Source)
        }));
        picks.extend(find(&|s| {
            s.tcp
                .iter()
                .any(|t| t.key.reporter == Reporter::Destination)
        }));
        picks.extend(find(&|s| {
            s.requests
                .iter()
                .any(|r| r.key.request.is_some_and(|q| q.0 == "grpc"))
        }));
        picks.extend(find(&|s| {
            s.requests
                .iter()
                .any(|r| !r.key.mtls && r.key.source.workload != "unknown")
        }));
        picks.extend(find(&|s| {
            s.requests
                .iter()
                .any(|r| r.key.request.is_some_and(|q| q.1 == 503))
        }));
        assert!(picks.len() >= 6, "{picks:?}");
        for w in picks {
            let mut ours = Vec::new();
            mesh.render(w, 30.0, &mut ours);
            let ours = String::from_utf8(ours).expect("utf-8");
            assert!(ours.ends_with("# EOF\n"));
            let istio = ours
                .split("# TYPE envoy_cluster_upstream_rq_total")
                .next()
                .unwrap_or_default();
            let theirs = proxy_page(&mesh, w, 30.0);
            let theirs = theirs.strip_suffix("# EOF\n").unwrap_or(&theirs);
            let (a, b) = (families(istio), families(theirs));
            assert_eq!(a.len(), b.len(), "families of sidecar {w}");
            for (fa, fb) in a.iter().zip(&b) {
                assert_eq!(fa.0, fb.0, "headers of sidecar {w}");
                assert_eq!(fa.1.len(), fb.1.len(), "{:?} of sidecar {w}", fa.0);
                for (la, lb) in fa.1.iter().zip(&fb.1) {
                    assert_eq!(la, lb, "sidecar {w}");
                }
            }
        }
    }

    #[test]
    fn the_mesh_has_the_asked_shape() {
        let mesh = Mesh::build();
        assert_eq!(mesh.services.len(), 500);
        assert_eq!(mesh.workloads.len(), 2000);
        let versions: HashSet<usize> = mesh.services.iter().map(|s| s.workloads.len()).collect();
        assert_eq!(versions.iter().min(), Some(&2));
        assert_eq!(versions.iter().max(), Some(&8));
        assert!(
            (4000..4200).contains(&mesh.edges.len()),
            "{}",
            mesh.edges.len()
        );
        // Every workload has traffic in or out.
        let mut busy = vec![false; mesh.workloads.len()];
        for e in &mesh.edges {
            busy[e.dst] = true;
            if let Some(s) = e.src {
                busy[s] = true;
            }
        }
        assert!(busy.iter().all(|b| *b));
    }

    #[test]
    fn counters_only_grow() {
        let mesh = Mesh::build();
        let parse = |page: &str| -> HashMap<String, f64> {
            page.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        };
        for w in [0, 7, 1999] {
            let mut before = Vec::new();
            let mut after = Vec::new();
            mesh.render(w, 100.0, &mut before);
            mesh.render(w, 105.0, &mut after);
            let (b, a) = (
                parse(&String::from_utf8_lossy(&before)),
                parse(&String::from_utf8_lossy(&after)),
            );
            for (k, v) in &b {
                assert!(
                    a.get(k).is_some_and(|x| x >= v),
                    "{k} went from {v} to {:?}",
                    a.get(k)
                );
            }
            assert!(a.values().sum::<f64>() > b.values().sum::<f64>());
        }
    }
}
