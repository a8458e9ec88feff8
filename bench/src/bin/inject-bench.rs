//! Injection cost without the network: how long mastd's webhook spends on one AdmissionReview
//! (decode, decide, render, merge, JSON Patch diff, encode), and the review file that
//! bench/inject/run.sh replays over HTTPS.
//!
//!   inject-bench --manifest testdata/upstream/istio-inject/hello-probes.yaml \
//!       --write-review /tmp/review.json --iterations 20000

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use mast_injector::inject::Settings;
use mast_injector::webhook::review;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// A manifest whose first workload's pod template is reviewed.
    #[arg(long)]
    manifest: PathBuf,
    /// Also write the AdmissionReview request here (for wrk).
    #[arg(long)]
    write_review: Option<PathBuf>,
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| args.manifest.display().to_string())?;
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text)?;
    let workload = docs
        .iter()
        .find(|d| d["spec"]["template"].is_object())
        .context("no workload with a pod template")?;
    let name = workload["metadata"]["name"].as_str().unwrap_or("app");
    let mut pod = workload["spec"]["template"].clone();
    pod["metadata"]["generateName"] = json!(format!("{name}-6d4cf56db6-"));
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": format!("{name}-6d4cf56db6"), "uid": "u", "controller": true}]);
    let request = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "object": pod,
        }
    });
    let body = serde_json::to_vec(&request)?;
    if let Some(path) = &args.write_review {
        std::fs::write(path, &body)?;
    }
    let settings = Settings::default();
    let mut samples = Vec::with_capacity(args.iterations);
    let mut response_len = 0;
    for _ in 0..args.iterations {
        let started = Instant::now();
        let (answer, _) = review(&body, &settings)?;
        let encoded = serde_json::to_vec(&answer)?;
        samples.push(started.elapsed());
        response_len = encoded.len();
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    println!(
        "in-process review ({} iterations, request {} B, response {} B): p50 {:?} p99 {:?} max {:?}",
        args.iterations,
        body.len(),
        response_len,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
