//! `mastctl analyze PATH...`: load files and folders together (so references between files
//! resolve) through the same store mastd uses, and report every rejected resource and every
//! resource set aside by another (warnings).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mast_mesh_config::source::read_config_dirs;
use mast_mesh_config::store::ConfigStore;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (read recursively: *.yaml, *.yml, *.json).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let files = read_config_dirs(&args.paths).context("reading the configuration")?;
    let file_count = files.len();
    let mut store = ConfigStore::default();
    let report = store.apply_files(files);
    for e in &report.errors {
        eprintln!("Error: {e}");
    }
    // Accepted but set aside (a Knative route net-istio's VirtualService overrides): worth
    // reading, not a failure.
    for w in &report.warnings {
        eprintln!("Warning: {w}");
    }
    let model = store.model();
    if report.errors.is_empty() {
        println!(
            "✔ No validation issues found in {file_count} file(s): {} services, {} workloads, {} route tables, {} destination rules{}.",
            model.services.len(),
            model.workloads.len(),
            model.routes.len(),
            model.destination_policies.len(),
            match report.warnings.len() {
                0 => String::new(),
                n => format!("; {n} warning(s)"),
            }
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "✘ {} error(s) in {file_count} file(s).",
            report.errors.len()
        );
        Ok(ExitCode::from(1))
    }
}
