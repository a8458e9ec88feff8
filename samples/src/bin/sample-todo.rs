//! `sample-todo`: the todo list's storage service (see [`mast_samples::todo`]).

use std::process::ExitCode;

use mast_samples::config::ProcessEnv;
use mast_samples::server;
use mast_samples::todo::{App, Config};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    server::init_logging();
    let config = match Config::parse(std::env::args_os(), &ProcessEnv) {
        Ok(config) => config,
        Err(e) => return Ok(e.report("sample-todo")),
    };
    server::run_app("sample-todo", config.listen, App::new()).await?;
    Ok(ExitCode::SUCCESS)
}
