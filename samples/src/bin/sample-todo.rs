//! `sample-todo`: the todo list's storage service (see [`mast_samples::todo`]).

use std::process::ExitCode;

use mast_samples::config::ProcessEnv;
use mast_samples::todo::{App, Config};
use mast_samples::{echo, server};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    server::init_logging();
    let config = match Config::parse(std::env::args_os(), &ProcessEnv) {
        Ok(config) => config,
        Err(e) => return Ok(e.report("sample-todo")),
    };
    let echo = echo::serve("sample-todo", config.tcp_listen, server::shutdown_signal()?);
    tokio::try_join!(
        server::run_app("sample-todo", config.listen, App::new()),
        echo
    )?;
    Ok(ExitCode::SUCCESS)
}
