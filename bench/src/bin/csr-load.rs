//! citadel's signing rate: CreateCertificate calls over TLS, as sidecars make them.
//!
//! CSRs (fresh ECDSA P-256 keys, the workload's SPIFFE ID as URI SAN) are made before the
//! clock starts and reused round-robin, so the figure is citadel's cost (TLS, token check,
//! CSR signature check, signing), not the client's key generation.
//!
//! `csr-load --ca 127.0.0.1:15012 --root ca/root-cert.pem --token token --spiffe
//! spiffe://cluster.local/ns/default/sa/bench --concurrency 16 --duration 10` prints one
//! JSON object: calls, errors, rate, and p50/p99/max latency in µs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use mast_proto::istio::ca::IstioCertificateRequest;
use mast_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[derive(Parser, Debug)]
struct Args {
    /// citadel's address, host:port.
    #[arg(long)]
    ca: String,
    /// Root certificate to verify citadel with.
    #[arg(long)]
    root: PathBuf,
    /// The workload credential (`mastctl credential`).
    #[arg(long)]
    token: PathBuf,
    #[arg(long)]
    spiffe: String,
    /// Concurrent in-flight calls, spread over `connections` HTTP/2 connections.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds to measure (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Distinct CSRs to cycle through.
    #[arg(long, default_value_t = 256)]
    csrs: usize,
}

fn csr(spiffe: &str) -> Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.to_string().try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let root = std::fs::read(&args.root).with_context(|| args.root.display().to_string())?;
    let token = std::fs::read_to_string(&args.token)?.trim().to_string();
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..args.csrs)
            .map(|_| csr(&args.spiffe))
            .collect::<Result<_>>()?,
    );
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let ch = Channel::from_shared(format!("https://{}", args.ca))?
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&root))
                    .domain_name("istiod.istio-system.svc"),
            )?
            .connect()
            .await
            .context("connect to citadel")?;
        channels.push(ch);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let mut client = IstioCertificateServiceClient::new(channels[i % channels.len()].clone());
        let (stop, measuring, errors, csrs) = (
            stop.clone(),
            measuring.clone(),
            errors.clone(),
            csrs.clone(),
        );
        let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                let mut req = tonic::Request::new(IstioCertificateRequest {
                    csr: csrs[n % csrs.len()].clone(),
                    validity_duration: 3600,
                    metadata: None,
                });
                req.metadata_mut().insert("authorization", auth.clone());
                n += 1;
                let t = Instant::now();
                let ok = client.create_certificate(req).await.is_ok();
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "calls": all.len(),
            "errors": errors.load(Ordering::Relaxed),
            "rate": all.len() as f64 / elapsed,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "max_us": all.last().copied().unwrap_or(0),
        })
    );
    Ok(())
}
