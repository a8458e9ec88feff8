//! The `mastd` binary: parse the command line and hand it to [`mastd::app`]. Everything else
//! lives in the library, so it can be tested without starting a process.

use std::process::ExitCode;

use clap::Parser;

/// pilot builds and frees large encoded responses (a route configuration of a thousand
/// virtual hosts, copied once per proxy) on every push; mimalloc reuses those pages where the
/// system allocator maps and unmaps them each time. Measured in bench/README.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    mastd::app::main(mastd::Config::parse())
}
