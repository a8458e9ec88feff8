//! An open-loop HTTP/1.1 load generator: requests are *scheduled* at a fixed rate and each
//! latency is measured from its scheduled time, not from when it could be sent. A stall in
//! the system under test therefore shows up in the percentiles (it delays every request
//! scheduled during it) instead of silently lowering the request rate — the coordinated
//! omission that closed-loop tools such as wrk hide. Same idea as wrk2's corrected latency.
//!
//! `openloop --url http://127.0.0.1:8080/ --rate 1000 --duration 15 --connections 32`
//! prints one JSON object: sent, ok, errors, achieved rate and p50/p90/p99/p99.9/max in µs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

#[derive(Parser, Debug)]
struct Args {
    /// http://host:port/path
    #[arg(long)]
    url: String,
    /// Requests per second.
    #[arg(long)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Keep-alive connections (each carries one request at a time).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Host header.
    #[arg(long)]
    host: Option<String>,
    /// Seconds of warm-up before measuring (same rate, not recorded).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

struct Target {
    addr: String,
    request: Vec<u8>,
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns the status code.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("bad head")?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("no status")?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .context("responses must have Content-Length")?;
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let rest = args
        .url
        .strip_prefix("http://")
        .context("only http:// URLs")?;
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = args.host.clone().unwrap_or_else(|| addr.to_string());
    let target = Arc::new(Target {
        addr: addr.to_string(),
        request: format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
    });

    // Scheduled send times go to a shared queue; idle connections take the next one.
    let (tx, rx) = mpsc::unbounded_channel::<(Instant, bool)>();
    let rx = Arc::new(Mutex::new(rx));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(Duration, u16)>>();
    for _ in 0..args.connections {
        let (rx, done, target) = (Arc::clone(&rx), done_tx.clone(), Arc::clone(&target));
        tokio::spawn(async move {
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(16 * 1024);
            loop {
                let Some((scheduled, record)) = rx.lock().await.recv().await else {
                    return;
                };
                let result = async {
                    if conn.is_none() {
                        let s = TcpStream::connect(&target.addr).await?;
                        s.set_nodelay(true)?;
                        conn = Some(s);
                    }
                    let s = conn.as_mut().context("no connection")?;
                    s.write_all(&target.request).await?;
                    read_response(s, &mut buf).await
                }
                .await;
                if result.is_err() {
                    conn = None;
                }
                if record {
                    let _ = done.send(result.map(|status| (scheduled.elapsed(), status)));
                }
            }
        });
    }
    drop(done_tx);

    // The schedule runs on its own thread with std's sleep: tokio's timer has 1 ms
    // granularity, which would batch sends and add up to 1 ms to every latency.
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let (warmup, duration) = (args.warmup, args.duration);
    let scheduler = std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(50);
        let warm_end = start + Duration::from_secs(warmup);
        let end = warm_end + Duration::from_secs(duration);
        let mut sent = 0u64;
        let mut i: u64 = 0;
        loop {
            let at = start + interval.mul_f64(i as f64);
            if at >= end {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let record = at >= warm_end;
            sent += u64::from(record);
            if tx.send((at, record)).is_err() {
                break;
            }
            i += 1;
        }
        sent
    });
    let sent = tokio::task::spawn_blocking(move || scheduler.join().unwrap_or(0)).await?;
    let mut lat = Vec::with_capacity(sent as usize);
    let mut errors = 0u64;
    let mut non_2xx = 0u64;
    // Whatever has not finished 5 s after the schedule ends counts as an error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (lat.len() as u64 + errors + non_2xx) < sent {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(Ok((d, status)))) if (200..300).contains(&status) => lat.push(d),
            Ok(Some(Ok(_))) => non_2xx += 1,
            Ok(Some(Err(_))) => errors += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let unfinished = sent - lat.len() as u64 - errors - non_2xx;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let idx = ((lat.len() as f64 * p / 100.0).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[idx].as_secs_f64() * 1e6
    };
    let report = serde_json::json!({
        "url": args.url,
        "rate": args.rate,
        "duration_s": args.duration,
        "connections": args.connections,
        "sent": sent,
        "ok": lat.len(),
        "non_2xx": non_2xx,
        "errors": errors + unfinished,
        "achieved_rps": lat.len() as f64 / args.duration as f64,
        "p50_us": pct(50.0),
        "p90_us": pct(90.0),
        "p99_us": pct(99.0),
        "p999_us": pct(99.9),
        "max_us": lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
    });
    println!("{report}");
    Ok(())
}
