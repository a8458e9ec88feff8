//! The README's command blocks, run as written.
//!
//! A newcomer's first contact with Mast is the README: a recipe that fails there costs more
//! trust than any bug deep in the code. So every ```` ```sh ```` block in README.md carries a
//! marker on the line before it, and this test runs the ones that can run on one machine:
//!
//! - `<!-- readme-test: run -->` — run it; `id=NAME` names it, `after=NAME` runs the named block
//!   first in the same session (the servers a reader started earlier are still up);
//! - `<!-- readme-test: cluster -->` — needs a Kubernetes cluster: not run here;
//! - `<!-- readme-test: skip: WHY -->` — not run, for the reason given.
//!
//! A block without a marker fails the test, so a new recipe cannot slip in untested.
//!
//! Each run block gets a network namespace of its own (the README's fixed ports, 15010, 8081…,
//! cannot collide with anything on the machine), in a fresh directory holding the repository's
//! `manifests/` and `testdata/`. The text is run as written, with three mechanical readings a
//! reader makes too: the binaries are the ones this test suite built (`cargo build` does
//! nothing, `cargo run -p X --` runs `X`, `target/release/` is the build's directory,
//! `.venv/bin/envoy` is the suite's Envoy, and `/tmp/` is a folder of the block's own, so runs
//! never share a file); a line ending in `&` starts a
//! server in the background; and each other command is retried for up to a minute while the
//! servers come up (`curl` fails on an HTTP error, as a reader would notice one). Everything a
//! block started is killed by process group when it ends.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mast_e2e::{bin, envoy_bin, workspace_root};

/// What the marker before a block says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Run {
        id: Option<String>,
        after: Option<String>,
    },
    Cluster,
    Skip(String),
}

/// A ```sh block of the README.
#[derive(Debug, Clone)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    marker: Option<Marker>,
    text: String,
}

fn parse_marker(line: &str) -> Option<Result<Marker, String>> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim()
        .strip_prefix("readme-test:")?
        .trim();
    let (word, rest) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
    let word = word.trim_end_matches(':');
    Some(match word {
        "run" => {
            let mut id = None;
            let mut after = None;
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("id", v)) => id = Some(v.to_string()),
                    Some(("after", v)) => after = Some(v.to_string()),
                    _ => return Some(Err(format!("unknown run option {kv:?}"))),
                }
            }
            Ok(Marker::Run { id, after })
        }
        "cluster" => Ok(Marker::Cluster),
        "skip" if !rest.trim().is_empty() => Ok(Marker::Skip(rest.trim().to_string())),
        "skip" => Err("`skip` needs a reason".into()),
        other => Err(format!("unknown marker {other:?}")),
    })
}

/// The ```sh blocks and their markers; a malformed marker is an error naming its line.
fn blocks(readme: &str) -> Result<Vec<Block>> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() == "```sh" {
            let marker = match i.checked_sub(1).and_then(|p| parse_marker(lines[p])) {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => bail!("README.md:{}: {e}", i),
                None => None,
            };
            let start = i;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && lines[i].trim_end() != "```" {
                text.push_str(lines[i]);
                text.push('\n');
                i += 1;
            }
            out.push(Block {
                line: start + 1,
                marker,
                text,
            });
        }
        i += 1;
    }
    Ok(out)
}

/// The commands of a block: continuation lines joined (kept as written), comments and blank
/// lines between commands dropped.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if cur.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if !strip_comment(line).trim_end().ends_with('\\') {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A shell line without its trailing comment (a `#` starting a word outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// Whether a command starts a server in the background (ends in a single `&`).
fn is_background(command: &str) -> bool {
    let last = command.lines().last().unwrap_or("");
    let code = strip_comment(last).trim_end();
    code.ends_with('&') && !code.ends_with("&&")
}

/// The three mechanical readings of the module doc, applied to a command's text.
fn localise(command: &str) -> String {
    command
        .replace("target/release/", "\"$MAST_BIN\"/")
        .replace(".venv/bin/envoy", "\"$MAST_ENVOY\"")
        .replace("/tmp/", "\"$MAST_TMP\"/")
}

const PROLOGUE: &str = r#"
export HOME="$PWD/home"
mkdir -p "$HOME"
cargo() {
    case "$1" in
    build) return 0 ;;  # the test suite built the binaries already
    run)
        shift
        local pkg=""
        while [ $# -gt 0 ]; do
            case "$1" in
            -p|--package) pkg="$2"; shift 2 ;;
            --release|-q) shift ;;
            --) shift; break ;;
            *) echo "readme-test: unsupported \`cargo run\` argument $1" >&2; return 2 ;;
            esac
        done
        "$MAST_BIN/$pkg" "$@" ;;
    *) echo "readme-test: unsupported \`cargo $1\`" >&2; return 2 ;;
    esac
}
curl() { command curl -fsS --max-time 5 "$@"; }
"#;

/// The bash script of a block (and the blocks it follows).
fn script(chain: &[&Block]) -> String {
    let mut s = String::from(PROLOGUE);
    for block in chain {
        s.push_str(&format!("\necho '--- README.md:{} ---'\n", block.line));
        for cmd in commands(&block.text) {
            let local = localise(&cmd);
            if is_background(&cmd) {
                s.push_str(&local);
            } else {
                let first = cmd.lines().next().unwrap_or("").replace('\'', "");
                s.push_str(&format!(
                    "__deadline=$((SECONDS + 60))\nuntil (\n{local}); do\n  \
                     if [ $SECONDS -ge $__deadline ]; then echo 'readme-test: still failing \
                     after 60 s: {first}' >&2; exit 1; fi\n  sleep 1\ndone\n"
                ));
            }
        }
    }
    s
}

/// Why the blocks cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (a network namespace per block)".into());
    }
    for tool in ["unshare", "ip", "curl"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!("`{tool}` not found in PATH"));
        }
    }
    None
}

/// Run one block (after its prerequisites) in its own network namespace; `Err` with the output.
fn run(chain: &[&Block], work: &Path) -> Result<String> {
    std::fs::create_dir_all(work)?;
    let root = workspace_root();
    for dir in ["manifests", "testdata"] {
        std::os::unix::fs::symlink(root.join(dir), work.join(dir))?;
    }
    let script_path = work.join("block.sh");
    std::fs::write(&script_path, script(chain))?;
    let log_path = work.join("output.log");
    let log = std::fs::File::create(&log_path)?;
    let bin_dir = bin("mastd")
        .parent()
        .map(Path::to_path_buf)
        .context("binary directory")?;
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut child = Command::new("unshare")
        .args(["--net", "--", "bash", "-c"])
        .arg("ip link set lo up && exec bash \"$0\"")
        .arg(&script_path)
        .current_dir(work)
        .env("MAST_TMP", &tmp)
        .env("MAST_BIN", &bin_dir)
        .env("MAST_ENVOY", envoy_bin())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting unshare")?;
    let pgid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The servers the block started in the background, then anything left.
    // SAFETY: kill has no memory preconditions; the group is the one this test created.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => bail!("exited with {s}; output:\n{output}"),
        None => bail!("still running after 240 s; output:\n{output}"),
    }
}

#[test]
fn every_readme_block_is_marked_and_the_local_ones_run() -> Result<()> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    let blocks = blocks(&readme)?;
    let unmarked: Vec<usize> = blocks
        .iter()
        .filter(|b| b.marker.is_none())
        .map(|b| b.line)
        .collect();
    assert!(
        unmarked.is_empty(),
        "README.md blocks without a `<!-- readme-test: … -->` marker on the line before, at \
         lines {unmarked:?}: say whether each runs here (run), needs a cluster, or is skipped and why"
    );
    if let Some(reason) = cannot_run() {
        if std::env::var_os("MAST_REQUIRE_NETNS").is_some() {
            bail!("the README's blocks cannot run ({reason}) and MAST_REQUIRE_NETNS is set");
        }
        eprintln!("readme: SKIPPED running the blocks: {reason}");
        return Ok(());
    }
    let by_id = |id: &str| {
        blocks
            .iter()
            .find(|b| matches!(&b.marker, Some(Marker::Run { id: Some(i), .. }) if i == id))
    };
    let target = workspace_root().join("target");
    let work = tempfile::Builder::new()
        .prefix("readme-test-")
        .tempdir_in(&target)?;
    let mut failures = Vec::new();
    let mut ran = 0;
    for block in &blocks {
        let Some(Marker::Run { after, .. }) = &block.marker else {
            continue;
        };
        let mut chain = Vec::new();
        if let Some(after) = after {
            let first = by_id(after)
                .with_context(|| format!("README.md:{}: after={after}: no such id", block.line))?;
            chain.push(first);
        }
        chain.push(block);
        let started = Instant::now();
        match run(&chain, &work.path().join(format!("line-{}", block.line))) {
            Ok(_) => eprintln!(
                "readme: README.md:{} ran in {:.1} s",
                block.line,
                started.elapsed().as_secs_f64()
            ),
            Err(e) => failures.push(format!("README.md:{}: {e:#}", block.line)),
        }
        ran += 1;
    }
    assert!(ran >= 4, "only {ran} README blocks are marked `run`");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn markers_commands_and_background_lines_are_read_as_a_reader_would() {
    let readme = "x\n<!-- readme-test: run id=a -->\n```sh\n# a comment\nfoo --x \\\n  --y &   # bg\n\
                  curl -H 'Host: #1' http://h/  # fg\n```\n```sh\nbare\n```\n\
                  <!-- readme-test: skip: why not -->\n```sh\nz\n```\n";
    let b = blocks(readme).unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(
        b[0].marker,
        Some(Marker::Run {
            id: Some("a".into()),
            after: None
        })
    );
    assert_eq!(b[1].marker, None);
    assert_eq!(b[2].marker, Some(Marker::Skip("why not".into())));
    let cmds = commands(&b[0].text);
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(is_background(&cmds[0]));
    assert!(!is_background(&cmds[1]));
    assert!(!is_background("a && b"));
    assert_eq!(
        strip_comment("curl -H 'Host: #1' x # c"),
        "curl -H 'Host: #1' x "
    );
    assert!(parse_marker("<!-- readme-test: skip -->").unwrap().is_err());
    assert!(
        parse_marker("<!-- readme-test: run nope -->")
            .unwrap()
            .is_err()
    );
    assert_eq!(
        localise("target/release/mastd && .venv/bin/envoy -c /tmp/e.json"),
        "\"$MAST_BIN\"/mastd && \"$MAST_ENVOY\" -c \"$MAST_TMP\"/e.json"
    );
}
