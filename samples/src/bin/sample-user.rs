//! `sample-user`: one version of the todo list's user service (see [`mast_samples::user`]).

use std::process::ExitCode;

use mast_samples::config::ProcessEnv;
use mast_samples::user::{App, Config};
use mast_samples::{grpc, server};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    server::init_logging();
    let config = match Config::parse(std::env::args_os(), &ProcessEnv) {
        Ok(config) => config,
        Err(e) => return Ok(e.report("sample-user")),
    };
    let name = format!("sample-user {}", config.version);
    let grpc = grpc::serve(
        &name,
        config.grpc_listen,
        config.version,
        server::shutdown_signal()?,
    );
    tokio::try_join!(
        server::run_app(&name, config.listen, App::new(config.version)),
        grpc
    )?;
    Ok(ExitCode::SUCCESS)
}
