//! `mast-init`: the `istio-init` container's program. It takes istio-iptables' flags, so the
//! init container args our injector writes (and Istio's goldens hold) work unchanged, and sets
//! up, prints (`--dry-run`) or removes (`--cleanup`) the traffic-capture rules. Wiring only:
//! parsing lives in `mast_injector::cli`, rules in `capture`, execution in `iptables`.

use std::process::ExitCode;

use anyhow::Context;
use mast_injector::cli::{self, Action, Command};
use mast_injector::iptables;

/// Exit status for a bad flag or value (sysexits' EX_USAGE), as every Mast binary uses.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1), &cli::ProcessEnv) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("mast-init: {e}");
            eprintln!("run `mast-init --help` for the flags");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Run { action, config } => match run(action, &config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mast-init: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(action: Action, config: &mast_injector::capture::CaptureConfig) -> anyhow::Result<()> {
    match action {
        Action::DryRun => print!("{}", iptables::render(config)),
        Action::Apply => iptables::apply(config).context("installing capture rules")?,
        Action::Cleanup => iptables::cleanup(config).context("removing capture rules")?,
        Action::Skip => eprintln!("mast-init: --skip-rule-apply given; nothing changed"),
    }
    Ok(())
}
