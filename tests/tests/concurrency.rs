//! `mast-proxy --concurrency N` (issue 22), as a user sees it: with 2, requests on separate
//! connections are served by both worker threads — the kernel spreads the connections over
//! the workers' `SO_REUSEPORT` sockets, and the admin's `/stats` counts each worker's
//! accepts as Envoy does (`listener.<address>.worker_<N>.downstream_cx_total`); with 1 there
//! is no worker thread and one counter. (That an LDS update reaches every worker is proved
//! in the proxy's unit tests, through the same publisher xDS uses.)

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mast_e2e::bootstrap::StaticBootstrap;
use mast_e2e::{Backend, HttpClient, eventually, free_port};

/// One request on a connection of its own; the answer's first line.
async fn one_connection(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .context("no answer")??;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Run mast-proxy with `--concurrency n`, send `conns` requests each on its own connection,
/// and return each worker's accepted connections from `/stats` and the proxy's thread names.
async fn served_by(n: usize, conns: u64) -> Result<(Vec<u64>, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let backend = Backend::start("v1").await?;
    let (listen, admin) = (free_port(), free_port());
    let boot = StaticBootstrap::new(listen, admin, backend.port).write(dir.path())?;
    let mut proxy = mast_e2e::Proc::spawn(
        "mast-proxy",
        std::process::Command::new(mast_e2e::bin("mast-proxy"))
            .arg("--config")
            .arg(&boot)
            .args([
                "--stats-port",
                "0",
                "--status-port",
                "0",
                "--agent-port",
                "0",
            ])
            .args(["--drain", "1s", "--concurrency", &n.to_string()]),
        dir.path().join("proxy.log"),
    )?;
    let client = HttpClient::new();
    eventually("mast-proxy proxies", Duration::from_secs(10), || async {
        let (status, body) = client
            .get(&format!("http://127.0.0.1:{listen}/"), Some("web"), &[])
            .await?;
        ensure!(status == 200, "{status} {body}");
        Ok(())
    })
    .await?;
    // The readiness probes above went through the listener too: count from here.
    let before = worker_counts(&client, admin, listen).await?;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(one_connection(listen)));
    }
    for t in tasks {
        let line = t.await??;
        ensure!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    }
    let after = worker_counts(&client, admin, listen).await?;
    ensure!(after.len() == before.len(), "{before:?} then {after:?}");
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    ensure!(
        delta.iter().sum::<u64>() == conns,
        "{conns} connections, counted {delta:?}"
    );
    let threads = std::fs::read_dir(format!("/proc/{}/task", proxy.pid()))?
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    proxy.check_running()?;
    Ok((delta, threads))
}

/// `listener.127.0.0.1_<port>.worker_<N>.downstream_cx_total` for N = 0, 1, …
async fn worker_counts(client: &HttpClient, admin: u16, listen: u16) -> Result<Vec<u64>> {
    let (status, stats) = client
        .get(&format!("http://127.0.0.1:{admin}/stats"), None, &[])
        .await?;
    ensure!(status == 200, "{status} {stats}");
    let prefix = format!("listener.127.0.0.1_{listen}.worker_");
    let mut counts = Vec::new();
    for line in stats.lines() {
        if let Some(rest) = line.strip_prefix(&prefix) {
            let (worker, value) = rest
                .split_once(".downstream_cx_total: ")
                .with_context(|| format!("bad stat line {line:?}"))?;
            let worker: usize = worker.parse()?;
            ensure!(worker == counts.len(), "workers out of order in {stats}");
            counts.push(value.parse()?);
        }
    }
    ensure!(
        !counts.is_empty(),
        "no per-worker listener stats in {stats}"
    );
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_both_serve_connections() -> Result<()> {
    let (counts, threads) = served_by(2, 64).await?;
    ensure!(counts.len() == 2, "{counts:?}");
    // The kernel hashes each connection's addresses to one socket: with 64 connections,
    // one worker taking them all would be a 1-in-2^63 chance.
    ensure!(
        counts.iter().all(|n| *n > 0),
        "one worker served everything: {counts:?}"
    );
    for w in ["mast-worker-0", "mast-worker-1"] {
        ensure!(
            threads.iter().any(|t| t == w),
            "no {w} thread in {threads:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_runs_on_the_main_thread() -> Result<()> {
    let (counts, threads) = served_by(1, 16).await?;
    ensure!(counts == [16], "{counts:?}");
    ensure!(
        !threads.iter().any(|t| t.starts_with("mast-worker")),
        "{threads:?}"
    );
    Ok(())
}
