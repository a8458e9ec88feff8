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
    no_transparent_huge_pages();
    mastd::app::main(mastd::Config::parse())
}

/// mimalloc (v3) asks for transparent huge pages on its arenas, so the first byte touched in
/// a 2 MiB stretch faults in (and zeroes) the whole stretch. pilot's memory is many
/// per-connection pieces spread over such stretches: with THP, 1000 services × 500 simulated
/// proxies held 265 MB, without 228 MB, at the same CPU (bench/README.md, "pilot scale"). The
/// flag is read at fault time, so setting it here also covers the arena mimalloc reserved
/// before `main`.
fn no_transparent_huge_pages() {
    // SAFETY: a prctl that only sets a flag of this process; on a kernel without it, it fails
    // and THP stays as it was.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
