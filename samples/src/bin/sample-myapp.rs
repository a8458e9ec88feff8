//! `sample-myapp`: the todo list's web front end (see [`mast_samples::myapp`]).

use std::process::ExitCode;

use mast_samples::config::ProcessEnv;
use mast_samples::myapp::{App, Config};
use mast_samples::server;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    server::init_logging();
    let config = match Config::parse(std::env::args_os(), &ProcessEnv) {
        Ok(config) => config,
        Err(e) => return Ok(e.report("sample-myapp")),
    };
    server::run_app("sample-myapp", config.listen, App::new(&config)).await?;
    Ok(ExitCode::SUCCESS)
}
