//! Runs the built `mast-init` binary for what needs no privileges: `--dry-run` prints the
//! iptables-restore input for the golden init-container args, and bad flags exit 64 naming
//! the flag. (Applying rules is covered by `netns_capture.rs`.)

use std::process::{Command, Output};

const MAST_INIT: &str = env!("CARGO_BIN_EXE_mast-init");

fn mast_init(args: &[&str]) -> Output {
    Command::new(MAST_INIT)
        .args(args)
        .env_clear()
        .output()
        .expect("run mast-init")
}

#[test]
fn dry_run_prints_restore_input_for_golden_args() {
    let out = mast_init(&[
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
        "--log_output_level=default:info",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("# iptables-restore --noflush (IPv4)\n*nat\n"),
        "{stdout}"
    );
    assert!(stdout.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
    assert!(stdout.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
    assert!(stdout.contains("-A PREROUTING -p tcp -j ISTIO_INBOUND\n"));
    assert!(stdout.contains("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
    assert!(
        stdout.ends_with("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n"),
        "{stdout}"
    );
}

#[test]
fn bad_flags_exit_64_naming_the_flag() {
    for (args, needle) in [
        (&["-p", "nope"][..], "-p/--envoy-port"),
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["-b"][..], "-b/--istio-inbound-ports"),
        (&["-i", "10.0.0.0/99"][..], "-i/--istio-service-cidr"),
    ] {
        let out = mast_init(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn help_lists_the_flags() {
    let out = mast_init(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--istio-service-exclude-cidr"));
}
