//! Hostile HTTP, end to end: mast-proxy must be at least as strict as Envoy.
//!
//! A sidecar sits in front of apps that trust it to have parsed each request once, the way
//! the next hop will: one request in, at most one request out, with the path the
//! AuthorizationPolicy judged and the authority the route was chosen by. A proxy that is
//! looser than its peers is a request-smuggling, policy-bypass or host-confusion bug, and
//! one that routes an unknown Host to itself is a denial of service. This file is the proof
//! that mast-proxy is not: hand-written hostile requests go raw over TCP (and a few over h2c
//! prior knowledge) to a real Envoy 1.40 sidecar and to a mast-proxy sidecar configured by
//! the same mastd from the same Istio YAML, in front of a recording backend that keeps the
//! exact bytes of everything it receives.
//!
//! Per case, the rule is "mast-proxy is at least as strict as Envoy": when Envoy refuses
//! (a 4xx/5xx local reply, nothing forwarded) mast-proxy must refuse too (any 4xx/5xx or a
//! closed connection, nothing forwarded); when Envoy forwards, mast-proxy forwards the same
//! path and authority or refuses. On top of that, invariants hold for both: never more
//! upstream requests than the client sent, never two Hosts or two Content-Lengths or
//! Content-Length beside Transfer-Encoding upstream, never `evil.example` as the upstream
//! authority, never the HTTP/2 preface to an HTTP/1.1 backend, never a 101 for `h2c`, no
//! request whose RFC 3986-normalised path is under `/admin` past the DENY policy, none outside
//! `/ok/` past the ALLOW policy; and an unknown Host (which routes to `PassthroughCluster`,
//! with no original destination in NONE interception mode) costs neither file descriptors
//! nor memory, 1,000 times in a row.
//!
//! Topology, all on loopback and started once for every case: mastd (no CA: plaintext); a
//! client pod per kind whose outbound listeners a Sidecar `egress` binds on 127.0.0.21
//! (Envoy) and 127.0.0.22 (mast-proxy), routing service `web` to the recorder; `user` pods
//! at 127.0.0.31/.32 (inbound via a Sidecar `ingress`, AuthorizationPolicy DENY `/admin*`)
//! and `gate` pods at 127.0.0.33/.34 (ALLOW `/ok/*` only), both forwarding to the recorder.
//! Cases run one at a time, so whatever the recorder receives during a case belongs to it.
//!
//! Beyond HTTP/1 requests (sections 1–6), the desync families: HTTP/2 → HTTP/1 downgrade
//! with hand-built h2c frames (section 7: what no HTTP/2 library would send), WebSocket
//! upgrade abuse (8), and the response side (9): a backend (`bad`) that lies about its
//! response framing, each lie followed by `GET /next` on the same client connection, whose
//! answer must be the right one.
//!
//! `cargo test -p mast-e2e --test hostile_http -- --nocapture` prints the results as the
//! Markdown table that docs/http-hardening.md is made from.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mast_e2e::{HttpClient, Mastd, PodSpec, Sidecar, SidecarKind, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT_ENVOY_IP: &str = "127.0.0.21";
const CLIENT_MAST_IP: &str = "127.0.0.22";
const USER_ENVOY_IP: &str = "127.0.0.31";
const USER_MAST_IP: &str = "127.0.0.32";
const GATE_ENVOY_IP: &str = "127.0.0.33";
const GATE_MAST_IP: &str = "127.0.0.34";

/// The recorder's answer body: a 200 that says who answered.
const BACKEND_BODY: &str = "recorder";
/// How long one exchange may take before it counts as "no answer".
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after an exchange a late (smuggled) upstream request may still arrive.
const SETTLE: Duration = Duration::from_millis(80);
/// Placeholder in a case's bytes for the address of the listener under test.
const SELF_ADDR: &str = "{SELF}";

const CLIENT_ENVOY: PodSpec<'static> = PodSpec {
    name: "client-envoy",
    namespace: "default",
    labels: &[("app", "client"), ("version", "envoy")],
    service_account: "client",
};
const CLIENT_MAST: PodSpec<'static> = PodSpec {
    name: "client-mast",
    namespace: "default",
    labels: &[("app", "client"), ("version", "mast")],
    service_account: "client",
};
const USER_ENVOY: PodSpec<'static> = PodSpec {
    name: "user-envoy",
    namespace: "default",
    labels: &[("app", "user"), ("version", "envoy")],
    service_account: "user",
};
const USER_MAST: PodSpec<'static> = PodSpec {
    name: "user-mast",
    namespace: "default",
    labels: &[("app", "user"), ("version", "mast")],
    service_account: "user",
};
const GATE_ENVOY: PodSpec<'static> = PodSpec {
    name: "gate-envoy",
    namespace: "default",
    labels: &[("app", "gate"), ("version", "envoy")],
    service_account: "gate",
};
const GATE_MAST: PodSpec<'static> = PodSpec {
    name: "gate-mast",
    namespace: "default",
    labels: &[("app", "gate"), ("version", "mast")],
    service_account: "gate",
};

// === the recording backend ===

/// A request the recorder parsed, with the exact bytes it arrived as.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Head {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn is_websocket_upgrade(&self) -> bool {
        self.all("upgrade")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

#[derive(Debug, Clone)]
enum What {
    /// A whole request.
    Request(Head),
    /// A well-formed head whose body was cut off by a close: the proxy streamed a request
    /// upstream, then found its body malformed and reset it (as Envoy does).
    Aborted(Head),
    /// Bytes that are not an HTTP/1.1 request (the reason).
    Garbage(String),
    /// Bytes inside an upgraded (101) connection.
    Tunnel,
}

#[derive(Debug, Clone)]
struct Received {
    conn: u64,
    raw: Vec<u8>,
    what: What,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// A raw HTTP/1.1 backend: records each request's bytes, answers 200 with a body naming
/// itself, answers a websocket upgrade with 101 and echoes the tunnel.
struct Recorder {
    port: u16,
    log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let log: Log = Arc::default();
        let next = Arc::new(AtomicU64::new(0));
        let log_c = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, conn, log_c.clone()));
            }
        });
        Ok(Self { port, log, task })
    }

    fn mark(&self) -> usize {
        self.log.lock().map_or(0, |l| l.len())
    }

    fn since(&self, mark: usize) -> Vec<Received> {
        self.log
            .lock()
            .map(|l| l.get(mark..).map(<[Received]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn push(log: &Log, r: Received) {
    if let Ok(mut l) = log.lock() {
        l.push(r);
    }
}

async fn serve(mut s: TcpStream, conn: u64, log: Log) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match parse_request(&buf) {
            Parse::Done(head, used) => {
                let raw: Vec<u8> = buf.drain(..used).collect();
                // `/ws-refuse*` declines the upgrade with a plain 200.
                let upgrade = head.is_websocket_upgrade() && !head.target.starts_with("/ws-refuse");
                push(
                    &log,
                    Received {
                        conn,
                        raw,
                        what: What::Request(head),
                    },
                );
                if upgrade {
                    let answer = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                                  connection: Upgrade\r\n\
                                  sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    return tunnel(s, conn, log, buf).await;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{BACKEND_BODY}",
                    BACKEND_BODY.len()
                );
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            Parse::Bad(why) => {
                push(
                    &log,
                    Received {
                        conn,
                        raw: std::mem::take(&mut buf),
                        what: What::Garbage(why),
                    },
                );
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
            Parse::More => {}
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    let what = match find(&buf, b"\r\n\r\n").map(|end| parse_head(&buf[..end])) {
                        Some(Ok(head)) => What::Aborted(head),
                        Some(Err(e)) => What::Garbage(e),
                        None => What::Garbage("an incomplete head at close".into()),
                    };
                    push(
                        &log,
                        Received {
                            conn,
                            raw: buf,
                            what,
                        },
                    );
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// After a 101: echo whatever comes, and record it.
async fn tunnel(mut s: TcpStream, conn: u64, log: Log, early: Vec<u8>) {
    let mut pending = early;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if !pending.is_empty() {
            if s.write_all(&pending).await.is_err() {
                return;
            }
            push(
                &log,
                Received {
                    conn,
                    raw: std::mem::take(&mut pending),
                    what: What::Tunnel,
                },
            );
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

enum Parse {
    More,
    Done(Head, usize),
    Bad(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse one HTTP/1.1 request strictly (RFC 9112): what a careful backend would accept.
fn parse_request(buf: &[u8]) -> Parse {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 1 << 20 {
            Parse::Bad("no end of headers in 1 MiB".into())
        } else {
            Parse::More
        };
    };
    let mut h = match parse_head(&buf[..end]) {
        Ok(h) => h,
        Err(e) => return Parse::Bad(e),
    };
    let start = end + 4;
    let te = h.all("transfer-encoding").join(",");
    let cls = h.all("content-length");
    if !te.is_empty() {
        let last = te.rsplit(',').next().unwrap_or_default().trim();
        if !last.eq_ignore_ascii_case("chunked") {
            return Parse::Bad(format!("transfer-encoding {te:?} does not end in chunked"));
        }
        match parse_chunked(&buf[start..]) {
            Ok(Some((body, used))) => {
                h.body = body;
                Parse::Done(h, start + used)
            }
            Ok(None) => Parse::More,
            Err(e) => Parse::Bad(e),
        }
    } else if let Some(first) = cls.first() {
        if cls.iter().any(|v| v != first) {
            return Parse::Bad(format!("content-lengths {cls:?}"));
        }
        let Some(n) = first
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| first.parse::<usize>().ok())
            .flatten()
        else {
            return Parse::Bad(format!("content-length {first:?}"));
        };
        if buf.len() < start + n {
            return Parse::More;
        }
        h.body = buf[start..start + n].to_vec();
        Parse::Done(h, start + n)
    } else {
        Parse::Done(h, start)
    }
}

/// A request line and header fields (without the final CRLF CRLF), strictly.
fn parse_head(head: &[u8]) -> std::result::Result<Head, String> {
    if head.contains(&0) {
        return Err("NUL in the head".into());
    }
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(format!("request line {line:?}"));
    };
    let mut headers = Vec::new();
    for l in lines {
        if l.contains('\n') || l.contains('\r') {
            return Err(format!("bare CR/LF in {l:?}"));
        }
        if l.starts_with([' ', '\t']) {
            return Err(format!("obs-fold {l:?}"));
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(format!("header without colon {l:?}"));
        };
        if k.is_empty() || k.contains([' ', '\t']) {
            return Err(format!("bad header name {k:?}"));
        }
        headers.push((k.to_string(), v.trim_matches([' ', '\t']).to_string()));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
    })
}

/// A chunked body: `Ok(None)` while incomplete.
fn parse_chunked(buf: &[u8]) -> std::result::Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[at..at + eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default();
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("chunk size {line:?}"));
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|e| format!("{line:?}: {e}"))?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        at += size + 2;
    }
}

// === the client side ===

/// How an exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// A whole response arrived.
    Answered,
    /// The proxy closed (or reset) the connection before a whole response.
    Closed,
    /// Nothing complete within [`ANSWER_TIMEOUT`].
    TimedOut,
    /// The HTTP/2 client failed (reset stream, GOAWAY, …).
    H2Error(String),
    /// The listener did not take the connection.
    NoConnection(String),
}

#[derive(Debug, Clone)]
struct Answer {
    status: Option<u16>,
    end: End,
    /// What came after the first response (for a case that sends more after it).
    more: Vec<u8>,
}

impl Answer {
    fn refused(&self) -> bool {
        self.status.is_none_or(|s| s >= 400)
    }

    fn describe(&self) -> String {
        let mut s = match (&self.status, &self.end) {
            (Some(st), End::Answered) => st.to_string(),
            (Some(st), _) => format!("{st} (cut off)"),
            (None, End::Closed) => "closed, no answer".into(),
            (None, End::TimedOut) => "no answer in 2 s".into(),
            (None, End::H2Error(e)) => format!("h2 error: {e}"),
            (None, End::NoConnection(e)) => format!("no connection: {e}"),
            (None, End::Answered) => "?".into(),
        };
        if !self.more.is_empty() {
            let first = self.more.split(|b| *b == b'\n').next().unwrap_or_default();
            let first = String::from_utf8_lossy(first);
            let _ = write!(
                s,
                ", then {} bytes (`{}`)",
                self.more.len(),
                first.trim_end()
            );
        }
        s
    }
}

/// The length and status of the first final response in `buf`, if it is complete.
fn response_len(buf: &[u8]) -> Option<(u16, usize)> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status: u16 = head.split(' ').nth(1)?.trim().parse().ok()?;
    if (100..200).contains(&status) && status != 101 {
        let (s, n) = response_len(&buf[end..])?;
        return Some((s, end + n));
    }
    if status == 101 || status == 204 || status == 304 {
        return Some((status, end));
    }
    let header = |name: &str| {
        head.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let n = find(&buf[end..], b"0\r\n\r\n")?;
        return Some((status, end + n + 5));
    }
    match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if buf.len() >= end + n => Some((status, end + n)),
        Some(_) => None,
        // Until close.
        None => None,
    }
}

fn status_of(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    String::from_utf8_lossy(line)
        .split(' ')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Send `request` on a fresh connection and read the first response; then, if `after` is
/// set, send it and collect what comes for `linger`.
async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    after: Option<&[u8]>,
    linger: Duration,
) -> Result<Answer> {
    let mut s = tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    // A proxy may answer (431, 400) and close before it has read everything: not an error.
    let _ = s.write_all(request).await;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (status, end, used) = loop {
        if let Some((status, n)) = response_len(&buf) {
            break (Some(status), End::Answered, n);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => break (status_of(&buf), End::TimedOut, buf.len()),
            Ok(Ok(0) | Err(_)) => {
                // A response framed by the close is whole.
                let end = if status_of(&buf).is_some() && find(&buf, b"\r\n\r\n").is_some() {
                    End::Answered
                } else {
                    End::Closed
                };
                break (status_of(&buf), end, buf.len());
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut more = buf.split_off(used);
    if end == End::Answered && (after.is_some() || !linger.is_zero()) {
        if let Some(after) = after {
            let _ = s.write_all(after).await;
        }
        let deadline = Instant::now() + linger;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => more.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    }
    Ok(Answer { status, end, more })
}

/// One GET over HTTP/2 with prior knowledge (h2c), on a fresh connection.
async fn h2c_exchange(addr: SocketAddr, uri: &str, headers: &[(String, String)]) -> Answer {
    let attempt = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(uri);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        anyhow::Ok(status)
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, attempt).await {
        Ok(Ok(status)) => Answer {
            status: Some(status),
            end: End::Answered,
            more: Vec::new(),
        },
        Ok(Err(e)) => Answer {
            status: None,
            end: End::H2Error(format!("{e:#}")),
            more: Vec::new(),
        },
        Err(_) => Answer {
            status: None,
            end: End::TimedOut,
            more: Vec::new(),
        },
    }
}

// === raw HTTP/2 ===

/// HTTP/2 frames by hand, with an HPACK encoder that only writes literals (no table, no
/// Huffman): every byte of a name or value goes on the wire as given.
mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut v: usize) {
        let max = (1usize << prefix_bits) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// A header block of literals without indexing, new names.
    pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in fields {
            out.push(0);
            int(&mut out, 0, 7, k.len());
            out.extend_from_slice(k);
            int(&mut out, 0, 7, v.len());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn headers(stream: u32, end_stream: bool, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(1, flags, stream, &block(fields))
    }

    pub fn data(stream: u32, end_stream: bool, bytes: &[u8]) -> Vec<u8> {
        frame(0, if end_stream { END_STREAM } else { 0 }, stream, bytes)
    }

    /// The `:status` at the start of a response header block: static-table entries, or a
    /// literal with the `:status` name whose value is plain or Huffman-coded digits.
    pub fn status(block: &[u8]) -> Option<u16> {
        let mut at = 0;
        while let Some(&b) = block.get(at) {
            if b & 0xe0 == 0x20 {
                // A dynamic table size update: skip its integer.
                at += 1;
                if b & 0x1f == 0x1f {
                    while block.get(at)? & 0x80 != 0 {
                        at += 1;
                    }
                    at += 1;
                }
                continue;
            }
            break;
        }
        let b = *block.get(at)?;
        if b & 0x80 != 0 {
            return [200, 204, 206, 304, 400, 404, 500]
                .get(usize::from(b & 0x7f).checked_sub(8)?)
                .copied();
        }
        let index = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
        if !(8..=14).contains(&index) {
            return None;
        }
        let len_byte = *block.get(at + 1)?;
        let len = usize::from(len_byte & 0x7f);
        let value = block.get(at + 2..at + 2 + len)?;
        let digits = if len_byte & 0x80 == 0 {
            String::from_utf8_lossy(value).into_owned()
        } else {
            huffman_digits(value)?
        };
        digits.parse().ok()
    }

    /// Huffman-coded decimal digits (RFC 7541 Appendix B: `0`-`2` are 5 bits, `3`-`9` 6).
    fn huffman_digits(bytes: &[u8]) -> Option<String> {
        let bit = |i: usize| (bytes[i / 8] >> (7 - i % 8)) & 1;
        let total = bytes.len() * 8;
        let mut i = 0;
        let mut out = String::new();
        while i + 5 <= total {
            let mut code = 0u8;
            for k in 0..5 {
                code = code << 1 | bit(i + k);
            }
            if code <= 2 {
                out.push(char::from(b'0' + code));
                i += 5;
            } else if code & 0b11100 == 0b01100 && i + 6 <= total {
                let code6 = code << 1 | bit(i + 5);
                out.push(char::from(b'0' + code6 - 0x19 + 3));
                i += 6;
            } else if code == 0b11111 {
                break; // EOS padding
            } else {
                return None;
            }
        }
        Some(out)
    }
}

/// Send the preface, empty SETTINGS and `frames`, then read until stream 1 ends.
async fn h2raw_exchange(addr: SocketAddr, frames: &[u8]) -> Answer {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut out = h2raw::PREFACE.to_vec();
        out.extend(h2raw::frame(4, 0, 0, &[]));
        out.extend_from_slice(frames);
        // A PING after the request: a connection whose codec failed on the request never
        // acknowledges it (Envoy then waits a second before it closes: its delayed close),
        // one that lives acknowledges it at once, before any answer.
        out.extend(h2raw::frame(6, 0, 0, b"mastping"));
        let _ = s.write_all(&out).await;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut status = None;
        let ping_deadline = tokio::time::Instant::now() + Duration::from_millis(250);
        let mut alive = false;
        loop {
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (ty, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload: Vec<u8> = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                match ty {
                    6 if flags & 1 != 0 => alive = true,
                    4 if flags & 1 == 0 => {
                        let _ = s.write_all(&h2raw::frame(4, 1, 0, &[])).await;
                    }
                    1 if stream == 1 => {
                        let mut block = payload.as_slice();
                        if flags & 0x8 != 0 {
                            let pad = usize::from(*block.first().unwrap_or(&0));
                            block = &block[1..block.len().saturating_sub(pad)];
                        }
                        if flags & 0x20 != 0 {
                            block = block.get(5..).unwrap_or_default();
                        }
                        if status.is_none() {
                            status = Some(h2raw::status(block).unwrap_or(0));
                        }
                        if flags & h2raw::END_STREAM != 0 {
                            return anyhow::Ok((status, End::Answered));
                        }
                    }
                    0 if stream == 1 && flags & h2raw::END_STREAM != 0 => {
                        return Ok((status, End::Answered));
                    }
                    3 if stream == 1 => {
                        let code = payload
                            .get(..4)
                            .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                        return Ok((status, End::H2Error(format!("RST_STREAM {code}"))));
                    }
                    7 => {
                        let code = payload
                            .get(4..8)
                            .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                        if status.is_none() || code != 0 {
                            return Ok((status, End::H2Error(format!("GOAWAY {code}"))));
                        }
                    }
                    _ => {}
                }
            }
            let read = if alive {
                s.read(&mut chunk).await
            } else {
                match tokio::time::timeout_at(ping_deadline, s.read(&mut chunk)).await {
                    Ok(r) => r,
                    // No PING ACK: the connection is dead, whenever the peer closes it.
                    Err(_) => return Ok((status, End::Closed)),
                }
            };
            match read {
                Ok(0) | Err(_) => return Ok((status, End::Closed)),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, attempt).await {
        Ok(Ok((status, end))) => Answer {
            // A status the decoder could not read counts as an answer of unknown code.
            status: status.filter(|s| *s != 0),
            end: if status == Some(0) {
                End::H2Error("a :status this client cannot decode".into())
            } else {
                end
            },
            more: Vec::new(),
        },
        Ok(Err(e)) => Answer {
            status: None,
            end: End::NoConnection(format!("{e:#}")),
            more: Vec::new(),
        },
        Err(_) => Answer {
            status: None,
            end: End::TimedOut,
            more: Vec::new(),
        },
    }
}

// === the response side ===

/// What the lying backend answers to `GET /<kind>`: bad framing with a response hidden in
/// it that says `smuggled`. `GET /next` gets `next-ok`.
fn lie(kind: &str) -> Vec<u8> {
    const HIDDEN: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";
    let s = match kind {
        "control" => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_string(),
        "double-cl" => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: {}\r\n\r\nhello{HIDDEN}",
            5 + HIDDEN.len()
        ),
        "cl-te" => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{HIDDEN}",
            "5\r\nhello\r\n0\r\n\r\n".len() + HIDDEN.len()
        ),
        "te-cl" => format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n{HIDDEN}"
        ),
        "bad-chunk" => format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n{HIDDEN}"
        ),
        "chunk-0x" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n".into(),
        "te-gzip" => format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\ncontent-length: 5\r\n\r\nhello{HIDDEN}"
        ),
        "extra" => format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello{HIDDEN}"),
        "cl-list" => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 5, {}\r\n\r\nhello{HIDDEN}",
            5 + HIDDEN.len()
        ),
        "204-body" => format!("HTTP/1.1 204 No Content\r\ncontent-length: 8\r\n\r\n{HIDDEN}"),
        "304-body" => format!("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\nhello{HIDDEN}"),
        "100s" => {
            let mut s = "HTTP/1.1 100 Continue\r\n\r\n".repeat(50);
            s.push_str("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
            s
        }
        "100-cl" => format!(
            "HTTP/1.1 100 Continue\r\ncontent-length: {}\r\n\r\n{HIDDEN}HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            HIDDEN.len()
        ),
        "103-then" => "HTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".into(),
        "101-unasked" => format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n{HIDDEN}"),
        "fold" => "HTTP/1.1 200 OK\r\nx-a: a\r\n content-length: 99\r\ncontent-length: 5\r\n\r\nhello".into(),
        "bare-cr" => "HTTP/1.1 200 OK\r\nx-a: a\rcontent-length: 99\r\ncontent-length: 5\r\n\r\nhello".into(),
        "nul" => "HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 5\r\n\r\nhello".into(),
        "space-colon" => "HTTP/1.1 200 OK\r\ncontent-length : 99\r\ncontent-length: 5\r\n\r\nhello".into(),
        "status-2000" => "HTTP/1.1 2000 OK\r\ncontent-length: 5\r\n\r\nhello".into(),
        "http10-keepalive" => format!("HTTP/1.0 200 OK\r\n\r\nhello{HIDDEN}"),
        "no-length" => format!("HTTP/1.1 200 OK\r\n\r\nhello{HIDDEN}"),
        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into(),
    };
    s.into_bytes()
}

/// A backend that answers each request by its path with [`lie`], keeping the connection
/// open (a pooled upstream connection is what bad framing poisons).
async fn start_liar() -> Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    while let Parse::Done(head, used) = parse_request(&buf) {
                        buf.drain(..used);
                        let kind = head.target.trim_start_matches('/');
                        let answer = if kind == "next" {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nnext-ok".to_vec()
                        } else {
                            lie(kind)
                        };
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                        if matches!(kind, "no-length" | "http10-keepalive") {
                            // A body framed by the close: close it.
                            let _ = s.shutdown().await;
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Ok((port, task))
}

/// `first`, its answer, then `GET /next` on the same connection and its answer in `more`.
async fn desync_exchange(addr: SocketAddr, first: &[u8]) -> Result<Answer> {
    let next = get("/next", "bad");
    let a = exchange(addr, first, Some(&next), Duration::from_millis(200)).await?;
    Ok(a)
}

/// The response-side rule: no `smuggled` reaches the client, and whatever comes after the
/// first answer is nothing (the proxy closed) or the answer to `/next`.
fn desynced(a: &Answer) -> Option<String> {
    if find(&a.more, b"smuggled").is_some() {
        return Some("the hidden response reached the client".into());
    }
    if a.more.is_empty() {
        return None;
    }
    let ok = status_of(&a.more) == Some(200) && find(&a.more, b"next-ok").is_some();
    (!ok).then(|| {
        let first = a.more.split(|b| *b == b'\n').next().unwrap_or_default();
        format!(
            "the answer to /next was `{}`",
            String::from_utf8_lossy(first).trim_end()
        )
    })
}

// === the cases ===

/// Which listener a case goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// The client pod's outbound listener for `web` (Host-routed; unknown hosts go to
    /// `PassthroughCluster`).
    Outbound,
    /// `user`'s inbound listener, behind AuthorizationPolicy DENY `/admin*`.
    Deny,
    /// `gate`'s inbound listener, behind AuthorizationPolicy ALLOW `/ok/*`.
    Allow,
    /// The client pod's outbound listener for `bad`, whose backend lies about framing.
    Liar,
}

enum Wire {
    H1 {
        bytes: Vec<u8>,
        after: Option<Vec<u8>>,
        linger: Duration,
    },
    H2c {
        path: String,
        authority: String,
        headers: Vec<(String, String)>,
    },
    /// Hand-built HTTP/2 frames after the preface (h2c prior knowledge): what no HTTP/2
    /// library sends (uppercase names, connection headers, CR/LF in values, pseudo-headers
    /// in trailers, a wrong `content-length`).
    H2Raw(Vec<u8>),
    /// The response side: `first` on a keep-alive connection, then `GET /next` once its
    /// answer is in; the second answer must be the backend's answer to `/next`.
    Desync(Vec<u8>),
}

struct Case {
    id: String,
    request: String,
    group: Group,
    wire: Wire,
    /// How many requests the client sent (pipelining): more upstream is smuggling.
    sent: usize,
    /// Both sidecars must forward exactly these paths (a control, or an admitted variant).
    must_forward: Option<Vec<&'static str>>,
    /// Both sidecars must answer this status.
    must_status: Option<u16>,
    /// An `h2c` upgrade: a 101 would hand the connection to HTTP/2.
    never_101: bool,
    /// Where Envoy itself breaks an invariant: its breach is reported, not failed, and the
    /// invariant still binds mast-proxy.
    envoy_quirk: Option<&'static str>,
    /// Where mast-proxy is knowingly looser than Envoy (the reason): its "at least as
    /// strict" breaches are reported as a known gap, not failed; the invariants still bind.
    mast_gap: Option<&'static str>,
    /// Bytes that must not appear anywhere in what either sidecar sends upstream (a field
    /// the client smuggled in a place the proxy must not forward it from).
    never_upstream: Vec<&'static [u8]>,
    /// An authority no route knows (Envoy: `PassthroughCluster`, 503): these run last, after
    /// the volume check, since a proxy that loops on one could starve every later case.
    passthrough: bool,
}

/// Builds the case list, numbering within sections.
struct Cases {
    list: Vec<Case>,
    section: u32,
    n: u32,
}

impl Cases {
    fn section(&mut self, s: u32) {
        self.section = s;
        self.n = 0;
    }

    fn add(&mut self, group: Group, request: &str, wire: Wire) -> &mut Case {
        self.n += 1;
        self.list.push(Case {
            id: format!("{}.{}", self.section, self.n),
            request: request.to_string(),
            group,
            wire,
            sent: 1,
            must_forward: None,
            must_status: None,
            never_101: false,
            envoy_quirk: None,
            mast_gap: None,
            never_upstream: Vec::new(),
            passthrough: self.section == 1,
        });
        let last = self.list.len() - 1;
        &mut self.list[last]
    }

    fn raw(&mut self, group: Group, request: &str, bytes: impl Into<Vec<u8>>) -> &mut Case {
        self.add(
            group,
            request,
            Wire::H1 {
                bytes: bytes.into(),
                after: None,
                linger: Duration::ZERO,
            },
        )
    }

    fn h2c(&mut self, group: Group, request: &str, authority: &str, path: &str) -> &mut Case {
        self.add(
            group,
            request,
            Wire::H2c {
                path: path.into(),
                authority: authority.into(),
                headers: Vec::new(),
            },
        )
    }
}

impl Case {
    fn forwards(&mut self, paths: &[&'static str]) -> &mut Self {
        self.must_forward = Some(paths.to_vec());
        self
    }
    fn status(&mut self, s: u16) -> &mut Self {
        self.must_status = Some(s);
        self
    }
    fn sent(&mut self, n: usize) -> &mut Self {
        self.sent = n;
        self
    }
    fn no_101(&mut self) -> &mut Self {
        self.never_101 = true;
        self
    }
    fn passthrough(&mut self) -> &mut Self {
        self.passthrough = true;
        self
    }
    fn envoy_quirk(&mut self, why: &'static str) -> &mut Self {
        self.envoy_quirk = Some(why);
        self
    }
    #[expect(dead_code, reason = "no case has a known gap now (7.37 was the last)")]
    fn mast_gap(&mut self, why: &'static str) -> &mut Self {
        self.mast_gap = Some(why);
        self
    }
    fn never_upstream(&mut self, bytes: &'static [u8]) -> &mut Self {
        self.never_upstream.push(bytes);
        self
    }
    fn header(&mut self, k: &str, v: &str) -> &mut Self {
        if let Wire::H2c { headers, .. } = &mut self.wire {
            headers.push((k.into(), v.into()));
        }
        self
    }
}

/// A request from header lines (CRLF-joined, the first being the request line) and a body.
fn req(lines: &[&str], body: &str) -> Vec<u8> {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s.push_str(body);
    s.into_bytes()
}

fn get(path: &str, host: &str) -> Vec<u8> {
    req(
        &[&format!("GET {path} HTTP/1.1"), &format!("Host: {host}")],
        "",
    )
}

/// A GET with `n` extra headers of `size` bytes each.
fn padded(n: usize, size: usize) -> Vec<u8> {
    let mut lines = vec!["GET /big HTTP/1.1".to_string(), "Host: web".to_string()];
    for i in 0..n {
        lines.push(format!("x-pad-{i}: {}", "a".repeat(size)));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    req(&refs, "")
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";

fn cases(web: u16) -> Vec<Case> {
    use Group::{Allow, Deny, Liar, Outbound};
    let mut c = Cases {
        list: Vec::new(),
        section: 0,
        n: 0,
    };

    // -- 2: path tricks against a DENY `/admin*` policy (inbound).
    c.section(2);
    c.raw(Deny, "`GET /public` (control)", get("/public", "user"))
        .forwards(&["/public"]);
    c.raw(Deny, "`GET /admin` (control)", get("/admin", "user"))
        .status(403);
    c.raw(
        Deny,
        "`GET /admin/users` (control)",
        get("/admin/users", "user"),
    )
    .status(403);
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/../admin",
        "/public/.%2e/admin",
        "/public/%2e%2e%2fadmin",
        "/%2e/admin",
        "/./admin",
        "//admin",
        "/admin/./x",
        "/%61dmin",
        "/ad%6Din",
        "/public/..%2fadmin",
        "/public%2f..%2fadmin",
        "/public/%252e%252e/admin",
        "/public/..;/admin",
        "/public/..;x/admin",
        "/public/.;/admin",
        "/public/%2e%2e;/admin",
        "/admin;x",
        "/admin#frag",
        "/public/../admin?x=1",
        "/public\\..\\admin",
        "/pub%00/../admin",
        "admin",
        "/public/../../../admin",
    ] {
        c.raw(Deny, &format!("`GET {path}`"), get(path, "user"));
    }
    c.raw(
        Deny,
        "`GET /ADMIN` (case is not folded)",
        get("/ADMIN", "user"),
    )
    .forwards(&["/ADMIN"]);
    c.raw(
        Deny,
        "`GET http://user/public/../admin` (absolute-form)",
        get("http://user/public/../admin", "user"),
    );
    c.h2c(
        Deny,
        "h2c `:path /public/%2e%2e/admin`",
        "user",
        "/public/%2e%2e/admin",
    );
    c.h2c(
        Deny,
        "h2c `:path /public/../admin`",
        "user",
        "/public/../admin",
    );
    c.h2c(Deny, "h2c `:path /public` (control)", "user", "/public")
        .forwards(&["/public"]);

    // -- 6: the ALLOW side of case 2: normalisation must not lose what is allowed either.
    c.section(6);
    c.raw(Allow, "`GET /ok/x` (control)", get("/ok/x", "gate"))
        .forwards(&["/ok/x"]);
    c.raw(Allow, "`GET /ok/./x`", get("/ok/./x", "gate"))
        .forwards(&["/ok/x"]);
    c.raw(Allow, "`GET /x/../ok/x`", get("/x/../ok/x", "gate"))
        .forwards(&["/ok/x"]);
    for path in [
        "/ok/%2e/x",
        "/ok/../x",
        "/ok/%2e%2e/admin",
        "/ok",
        "/OK/x",
        "/ok%2fx",
        "/ok/..%2fadmin",
        "/x/..%2fok/x",
        "/x/..;/ok/x",
        "/%6Fk/x",
    ] {
        c.raw(Allow, &format!("`GET {path}`"), get(path, "gate"));
    }

    // -- 3: authority.
    c.section(3);
    c.raw(Outbound, "`GET /` `Host: web` (control)", get("/", "web"))
        .forwards(&["/"]);
    c.raw(
        Outbound,
        "`GET http://web:<port>/abs` + `Host: evil.example`",
        get(&format!("http://web:{web}/abs"), "evil.example"),
    );
    c.raw(
        Outbound,
        "`GET http://web/abs` + `Host: evil.example`",
        get("http://web/abs", "evil.example"),
    );
    c.raw(
        Outbound,
        "`GET http://evil.example/abs` + `Host: web`",
        get("http://evil.example/abs", "web"),
    )
    .passthrough();
    c.raw(
        Outbound,
        "two `Host: web`",
        req(&["GET /two HTTP/1.1", "Host: web", "Host: web"], ""),
    )
    .passthrough();
    c.raw(
        Outbound,
        "`Host: web` then `Host: evil.example`",
        req(
            &["GET /two HTTP/1.1", "Host: web", "Host: evil.example"],
            "",
        ),
    )
    .passthrough();
    c.raw(
        Outbound,
        "`Host: evil.example` then `Host: web`",
        req(
            &["GET /two HTTP/1.1", "Host: evil.example", "Host: web"],
            "",
        ),
    )
    .passthrough();
    c.raw(
        Outbound,
        "`Host: web, evil.example`",
        get("/list", "web, evil.example"),
    )
    .passthrough();
    c.raw(
        Outbound,
        "`Connection: Host`",
        req(&["GET /conn HTTP/1.1", "Host: web", "Connection: Host"], ""),
    );
    c.raw(
        Outbound,
        "`Host: evil.example@web`",
        get("/userinfo", "evil.example@web"),
    )
    .passthrough();
    c.raw(Outbound, "`Host: WEB` (case)", get("/case", "WEB"));
    c.raw(
        Outbound,
        "authority-form `GET web:<port>`",
        get(&format!("web:{web}"), "web"),
    );
    c.raw(
        Outbound,
        "authority-form `GET evil.example:80` + `Host: web`",
        get("evil.example:80", "web"),
    )
    .passthrough();
    c.raw(
        Outbound,
        "`CONNECT evil.example:443` + `Host: evil.example:443`",
        req(
            &[
                "CONNECT evil.example:443 HTTP/1.1",
                "Host: evil.example:443",
            ],
            "",
        ),
    )
    .passthrough();
    c.raw(
        Outbound,
        "`CONNECT web:<port>`",
        req(
            &[
                &format!("CONNECT web:{web} HTTP/1.1"),
                &format!("Host: web:{web}"),
            ],
            "",
        ),
    );
    c.raw(
        Outbound,
        "`OPTIONS *` + `Host: web`",
        req(&["OPTIONS * HTTP/1.1", "Host: web"], ""),
    );
    c.h2c(Outbound, "h2c `:authority web` (control)", "web", "/h2")
        .forwards(&["/h2"]);
    c.h2c(
        Outbound,
        "h2c `:authority web` + `host: evil.example`",
        "web",
        "/h2",
    )
    .header("host", "evil.example");
    c.h2c(
        Outbound,
        "h2c `:authority evil.example` + `host: web`",
        "evil.example",
        "/h2",
    )
    .header("host", "web")
    .passthrough();

    // -- 4: upgrades.
    c.section(4);
    let h2c_upgrade = req(
        &[
            "GET /up HTTP/1.1",
            "Host: web",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
        ],
        "",
    );
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let mut with_preface = h2c_upgrade.clone();
    with_preface.extend_from_slice(preface);
    c.add(
        Outbound,
        "`Upgrade: h2c` + `HTTP2-Settings`, the HTTP/2 preface in the same write",
        Wire::H1 {
            bytes: with_preface,
            after: None,
            linger: Duration::from_millis(300),
        },
    )
    .no_101();
    c.add(
        Outbound,
        "`Upgrade: h2c` + `HTTP2-Settings`, the preface after the answer",
        Wire::H1 {
            bytes: h2c_upgrade,
            after: Some(preface.to_vec()),
            linger: Duration::from_millis(300),
        },
    )
    .no_101();
    c.add(
        Outbound,
        "`Upgrade: h2c` without `Connection: Upgrade`, then the preface",
        Wire::H1 {
            bytes: req(&["GET /up HTTP/1.1", "Host: web", "Upgrade: h2c"], ""),
            after: Some(preface.to_vec()),
            linger: Duration::from_millis(300),
        },
    )
    .no_101();
    c.raw(
        Outbound,
        "`POST` with a body + `Upgrade: h2c`",
        req(
            &[
                "POST /up HTTP/1.1",
                "Host: web",
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
                "Content-Length: 5",
            ],
            "hello",
        ),
    )
    .no_101();
    c.raw(
        Outbound,
        "`Upgrade: foo` + `Connection: Upgrade`",
        req(
            &[
                "GET /foo HTTP/1.1",
                "Host: web",
                "Connection: Upgrade",
                "Upgrade: foo",
            ],
            "",
        ),
    );
    let websocket = |upgrade: &str| {
        req(
            &[
                "GET /ws HTTP/1.1",
                "Host: web",
                "Connection: Upgrade",
                &format!("Upgrade: {upgrade}"),
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            ],
            "",
        )
    };
    c.add(
        Outbound,
        "websocket upgrade (control), then 4 bytes through the tunnel",
        Wire::H1 {
            bytes: websocket("websocket"),
            after: Some(b"ping".to_vec()),
            linger: Duration::from_millis(300),
        },
    )
    .status(101)
    .forwards(&["/ws"]);
    c.add(
        Outbound,
        "`Upgrade: WebSocket` (case)",
        Wire::H1 {
            bytes: websocket("WebSocket"),
            after: Some(b"ping".to_vec()),
            linger: Duration::from_millis(300),
        },
    );

    // -- 5: limits and framing.
    c.section(5);
    c.raw(Outbound, "59 KiB of headers (control)", padded(59, 1000))
        .forwards(&["/big"]);
    c.raw(Outbound, "70 KiB of headers (70 × 1 KB)", padded(70, 1000));
    c.raw(Outbound, "100 KiB of headers (50 × 2 KB)", padded(50, 2048));
    c.raw(Outbound, "one 70 KiB header", padded(1, 70 * 1024));
    c.raw(Outbound, "100 headers with Host (control)", padded(99, 8))
        .forwards(&["/big"]);
    c.raw(Outbound, "101 headers with Host", padded(100, 8));
    let post = |extra: &[&str], body: &str| {
        let mut lines = vec!["POST /post HTTP/1.1", "Host: web"];
        lines.extend_from_slice(extra);
        req(&lines, body)
    };
    c.raw(
        Outbound,
        "`Content-Length: 5` (control)",
        post(&["Content-Length: 5"], "hello"),
    )
    .forwards(&["/post"]);
    c.raw(
        Outbound,
        "`Transfer-Encoding: chunked` (control)",
        post(&["Transfer-Encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n"),
    )
    .forwards(&["/post"]);
    c.raw(
        Outbound,
        "pipelined: two GETs in one write (control: 2 upstream)",
        [get("/one", "web"), get("/two", "web")].concat(),
    )
    .sent(2);
    let clte_body = format!("0\r\n\r\n{SMUGGLED}");
    c.raw(
        Outbound,
        "CL.TE: `Content-Length` covering `0` chunk + smuggled GET, `Transfer-Encoding: chunked`",
        post(
            &[
                &format!("Content-Length: {}", clte_body.len()),
                "Transfer-Encoding: chunked",
            ],
            &clte_body,
        ),
    );
    let tecl_chunk = format!("{SMUGGLED}x=");
    let tecl_body = format!("{:x}\r\n{tecl_chunk}\r\n0\r\n\r\n", tecl_chunk.len());
    c.raw(
        Outbound,
        "TE.CL: `Transfer-Encoding: chunked` first, `Content-Length: 4`, smuggled GET in the chunk",
        post(
            &["Transfer-Encoding: chunked", "Content-Length: 4"],
            &tecl_body,
        ),
    );
    c.raw(
        Outbound,
        "`Content-Length: 5` twice",
        post(&["Content-Length: 5", "Content-Length: 5"], "hello"),
    );
    c.raw(
        Outbound,
        "`Content-Length: 5` and `Content-Length: 6`",
        post(&["Content-Length: 5", "Content-Length: 6"], "hello!"),
    );
    c.raw(
        Outbound,
        "`Content-Length: 5, 5`",
        post(&["Content-Length: 5, 5"], "hello"),
    );
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    for (what, lines) in [
        (
            "`Transfer-Encoding: chunked` twice",
            &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"][..],
        ),
        (
            "`Transfer-Encoding: chunked, chunked`",
            &["Transfer-Encoding: chunked, chunked"][..],
        ),
        (
            "`Transfer-Encoding: gzip, chunked`",
            &["Transfer-Encoding: gzip, chunked"][..],
        ),
        (
            "`Transfer-Encoding: chunked, gzip`",
            &["Transfer-Encoding: chunked, gzip"][..],
        ),
        (
            "`Transfer-Encoding: xchunked`",
            &["Transfer-Encoding: xchunked"][..],
        ),
        (
            "`Transfer-Encoding: Chunked` (case)",
            &["Transfer-Encoding: Chunked"][..],
        ),
        (
            "`Transfer-Encoding:  chunked` (two spaces)",
            &["Transfer-Encoding:  chunked"][..],
        ),
        (
            "`Transfer-Encoding:\\tchunked` (tab)",
            &["Transfer-Encoding:\tchunked"][..],
        ),
        (
            "`Transfer-Encoding: chunked ` (trailing space)",
            &["Transfer-Encoding: chunked "][..],
        ),
        (
            "`Transfer-Encoding : chunked` (space before colon)",
            &["Transfer-Encoding : chunked"][..],
        ),
        (
            "` Transfer-Encoding: chunked` (leading space: a fold of the line above)",
            &["X-Before: a", " Transfer-Encoding: chunked"][..],
        ),
        (
            "`Transfer-Encoding:` + obs-fold ` chunked`",
            &["Transfer-Encoding:", " chunked"][..],
        ),
        (
            "`Transfer-Encoding: \\x0bchunked` (vertical tab)",
            &["Transfer-Encoding: \x0bchunked"][..],
        ),
        (
            "`Transfer-Encoding: identity` + `Content-Length: 5`",
            &["Transfer-Encoding: identity", "Content-Length: 5"][..],
        ),
    ] {
        // A body that means something under either reading.
        c.raw(Outbound, what, post(lines, chunked));
    }
    c.raw(
        Outbound,
        "HTTP/1.0 + `Transfer-Encoding: chunked`",
        req(
            &[
                "POST /post HTTP/1.0",
                "Host: web",
                "Transfer-Encoding: chunked",
            ],
            chunked,
        ),
    );
    for (what, value) in [
        ("`Content-Length: +5`", "+5"),
        ("`Content-Length: -1`", "-1"),
        ("`Content-Length: 0x5`", "0x5"),
        ("`Content-Length: 5 5`", "5 5"),
        (
            "`Content-Length: 99999999999999999999` (overflow)",
            "99999999999999999999",
        ),
    ] {
        c.raw(
            Outbound,
            what,
            post(&[&format!("Content-Length: {value}")], "hello"),
        );
    }
    c.raw(
        Outbound,
        "`Content-Length : 5` (space before colon)",
        post(&["Content-Length : 5"], "hello"),
    );
    c.raw(
        Outbound,
        "obs-fold: `X-Folded: a` + `\\r\\n b`",
        req(
            &["GET /fold HTTP/1.1", "Host: web", "X-Folded: a", " b"],
            "",
        ),
    );
    c.raw(
        Outbound,
        "bare LF line endings throughout",
        b"GET /lf HTTP/1.1\nHost: web\n\n".to_vec(),
    );
    c.raw(
        Outbound,
        "one bare LF between headers",
        b"GET /lf HTTP/1.1\r\nHost: web\nX-A: b\r\n\r\n".to_vec(),
    );
    c.raw(
        Outbound,
        "bare CR inside a header value",
        b"GET /cr HTTP/1.1\r\nHost: web\r\nX-A: a\rX-B: b\r\n\r\n".to_vec(),
    );
    c.raw(
        Outbound,
        "NUL in a header value",
        b"GET /nul HTTP/1.1\r\nHost: web\r\nX-A: a\0b\r\n\r\n".to_vec(),
    );
    c.raw(
        Outbound,
        "chunk size `ffffffffffffffff1` (overflow)",
        post(
            &["Transfer-Encoding: chunked"],
            "ffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
        ),
    );
    c.raw(
        Outbound,
        "chunk size `0x5`",
        post(&["Transfer-Encoding: chunked"], "0x5\r\nhello\r\n0\r\n\r\n"),
    );
    c.raw(
        Outbound,
        "chunk lines ended by bare LF",
        post(&["Transfer-Encoding: chunked"], "5\nhello\n0\n\n"),
    );
    c.raw(
        Outbound,
        "chunk data longer than its size, smuggled GET after",
        post(
            &["Transfer-Encoding: chunked"],
            &format!("2\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
    )
    .envoy_quirk(
        "Envoy skips the bytes between a chunk's data and the next CRLF, so it reads \
         two pipelined requests here: a lenient chunk parser, not the reference",
    );
    c.raw(
        Outbound,
        "chunk extension with a quoted CRLF-lookalike",
        post(
            &["Transfer-Encoding: chunked"],
            "5;ext=\"a\nb\"\r\nhello\r\n0\r\n\r\n",
        ),
    );
    c.raw(
        Outbound,
        "`GET` with `Content-Length: 0` and a pipelined GET (control: 2 upstream)",
        [
            req(&["GET /a HTTP/1.1", "Host: web", "Content-Length: 0"], ""),
            get("/b", "web"),
        ]
        .concat(),
    )
    .sent(2);
    c.raw(
        Outbound,
        "`GET` with a body (`Content-Length` covering a GET)",
        req(
            &[
                "GET /body HTTP/1.1",
                "Host: web",
                &format!("Content-Length: {}", SMUGGLED.len()),
            ],
            SMUGGLED,
        ),
    );
    c.raw(
        Outbound,
        "request line with two spaces (`GET  /x HTTP/1.1`)",
        b"GET  /x HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(),
    );
    c.raw(
        Outbound,
        "`HTTP/1.2` request line",
        b"GET /v HTTP/1.2\r\nHost: web\r\n\r\n".to_vec(),
    );

    // -- 7: HTTP/2 → HTTP/1 downgrade: h2c requests no library would send, by hand.
    c.section(7);
    let h2 = |fields: &[(&str, &[u8])], body: Option<&[u8]>| -> Vec<u8> {
        let f: Vec<(&[u8], &[u8])> = fields.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        let mut out = h2raw::headers(1, body.is_none(), &f);
        if let Some(b) = body {
            out.extend(h2raw::data(1, true, b));
        }
        out
    };
    let pseudo = |method: &'static str, path: &'static str| -> Vec<(&'static str, &'static [u8])> {
        vec![
            (":method", method.as_bytes()),
            (":scheme", b"http"),
            (":authority", b"web"),
            (":path", path.as_bytes()),
        ]
    };
    let with = |method: &'static str, extra: &[(&'static str, &'static [u8])]| {
        let mut f = pseudo(method, "/h2raw");
        f.extend_from_slice(extra);
        f
    };
    c.add(
        Outbound,
        "h2 `GET /h2raw` by hand (control)",
        Wire::H2Raw(h2(&with("GET", &[]), None)),
    )
    .forwards(&["/h2raw"]);
    c.add(
        Outbound,
        "h2 `POST` with a body of 5 (control)",
        Wire::H2Raw(h2(
            &with("POST", &[("content-length", b"5")]),
            Some(b"hello"),
        )),
    )
    .forwards(&["/h2raw"]);
    for (what, fields, body) in [
        (
            "h2 `content-length: 3`, DATA of 5 bytes",
            with("POST", &[("content-length", b"3")]),
            Some(&b"hello"[..]),
        ),
        (
            "h2 `content-length: 10`, DATA of 5 bytes and END_STREAM",
            with("POST", &[("content-length", b"10")]),
            Some(&b"hello"[..]),
        ),
        (
            "h2 `content-length: 5` and `content-length: 6`",
            with(
                "POST",
                &[("content-length", b"5"), ("content-length", b"6")],
            ),
            Some(&b"hello"[..]),
        ),
        (
            "h2 `content-length: 5, 5`",
            with("POST", &[("content-length", b"5, 5")]),
            Some(&b"hello"[..]),
        ),
        (
            "h2 `transfer-encoding: chunked` with a chunked body hiding a GET",
            with("POST", &[("transfer-encoding", b"chunked")]),
            Some(
                format!("5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")
                    .into_bytes()
                    .leak() as &[u8],
            ),
        ),
        (
            "h2 `connection: keep-alive`",
            with("GET", &[("connection", b"keep-alive")]),
            None,
        ),
        ("h2 `te: gzip`", with("GET", &[("te", b"gzip")]), None),
        (
            "h2 `te: trailers` (allowed)",
            with("GET", &[("te", b"trailers")]),
            None,
        ),
        (
            "h2 `upgrade: websocket`",
            with("GET", &[("upgrade", b"websocket")]),
            None,
        ),
        (
            "h2 `keep-alive: 5`",
            with("GET", &[("keep-alive", b"5")]),
            None,
        ),
        (
            "h2 `proxy-connection: close`",
            with("GET", &[("proxy-connection", b"close")]),
            None,
        ),
        (
            "h2 uppercase name `X-Upper: 1`",
            with("GET", &[("X-Upper", b"1")]),
            None,
        ),
        (
            "h2 name with a space `x bad: 1`",
            with("GET", &[("x bad", b"1")]),
            None,
        ),
        (
            "h2 name with a colon `x:a: 1`",
            with("GET", &[("x:a", b"1")]),
            None,
        ),
        ("h2 empty name", with("GET", &[("", b"1")]), None),
        (
            "h2 value with CRLF + `host: evil.example`",
            with("GET", &[("x-a", b"a\r\nhost: evil.example")]),
            None,
        ),
        (
            "h2 value with a bare LF",
            with("GET", &[("x-a", b"a\nb")]),
            None,
        ),
        ("h2 value with NUL", with("GET", &[("x-a", b"a\0b")]), None),
        (
            "h2 value with leading space",
            with("GET", &[("x-a", b" a")]),
            None,
        ),
        (
            "h2 `:path` with CRLF and a second request",
            {
                let mut f = pseudo("GET", "/h2raw HTTP/1.1\r\nHost: web\r\n\r\nGET /smuggled");
                f.truncate(4);
                f
            },
            None,
        ),
        ("h2 `:path` with a space", pseudo("GET", "/a b"), None),
        ("h2 `:path` `*` on GET", pseudo("GET", "*"), None),
        (
            "h2 `:path` without a leading slash",
            pseudo("GET", "h2raw"),
            None,
        ),
        (
            "h2 `:method` with a space (`GET /evil`)",
            pseudo("GET /evil", "/h2raw"),
            None,
        ),
        (
            "h2 `:authority` with CRLF",
            vec![
                (":method", &b"GET"[..]),
                (":scheme", b"http"),
                (":authority", b"web\r\nx-injected: 1"),
                (":path", b"/h2raw"),
            ],
            None,
        ),
        (
            "h2 `:authority web@evil.example`",
            vec![
                (":method", &b"GET"[..]),
                (":scheme", b"http"),
                (":authority", b"evil.example@web"),
                (":path", b"/h2raw"),
            ],
            None,
        ),
        ("h2 two `:path`", with("GET", &[(":path", b"/other")]), None),
        (
            "h2 a pseudo-header after a regular one",
            {
                let mut f = pseudo("GET", "/h2raw");
                let p = f.remove(3);
                f.push(("x-a", b"1"));
                f.push(p);
                f
            },
            None,
        ),
        (
            "h2 unknown pseudo-header `:foo`",
            with("GET", &[(":foo", b"bar")]),
            None,
        ),
        (
            "h2 no `:scheme`",
            vec![
                (":method", &b"GET"[..]),
                (":authority", b"web"),
                (":path", b"/h2raw"),
            ],
            None,
        ),
        (
            "h2 no `:authority`, `host: web`",
            vec![
                (":method", &b"GET"[..]),
                (":scheme", b"http"),
                (":path", b"/h2raw"),
                ("host", b"web"),
            ],
            None,
        ),
        (
            "h2 `CONNECT` with `:authority web:80`",
            vec![(":method", &b"CONNECT"[..]), (":authority", b"web:80")],
            None,
        ),
        (
            "h2 `CONNECT` with `:path` (malformed)",
            vec![
                (":method", &b"CONNECT"[..]),
                (":authority", b"web:80"),
                (":path", b"/x"),
                (":scheme", b"http"),
            ],
            None,
        ),
        (
            "h2 extended CONNECT `:protocol websocket`",
            vec![
                (":method", &b"CONNECT"[..]),
                (":protocol", b"websocket"),
                (":scheme", b"http"),
                (":authority", b"web"),
                (":path", b"/ws"),
            ],
            None,
        ),
    ] {
        c.add(Outbound, what, Wire::H2Raw(h2(&fields, body)));
    }
    // Trailers: a pseudo-header, a framing header.
    for (what, trailer) in [
        (
            "h2 trailers with `:path: /admin`",
            &[(&b":path"[..], &b"/admin"[..])][..],
        ),
        (
            "h2 trailers with `content-length: 99`",
            &[(&b"content-length"[..], &b"99"[..])][..],
        ),
        (
            "h2 trailers with `transfer-encoding: chunked`",
            &[(&b"transfer-encoding"[..], &b"chunked"[..])][..],
        ),
        (
            "h2 trailers with `x-t: 1` (control)",
            &[(&b"x-t"[..], &b"1"[..])][..],
        ),
    ] {
        let f: Vec<(&[u8], &[u8])> = [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":authority", b"user"),
            (b":path", b"/public"),
        ]
        .to_vec();
        let mut frames = h2raw::headers(1, false, &f);
        frames.extend(h2raw::data(1, false, b"hello"));
        frames.extend(h2raw::headers(1, true, trailer));
        let case = c.add(Deny, what, Wire::H2Raw(frames));
        if what.contains(":path") {
            // Malformed (RFC 9113 §8.1): no whole request may reach the backend (Envoy
            // resets the stream; mast-proxy's shadow HPACK decoder closes the connection,
            // since h2 drops the field silently), and neither the name nor the value may
            // appear in the upstream bytes, an aborted head's included.
            case.forwards(&[])
                .never_upstream(b":path")
                .never_upstream(b"/admin");
        }
    }

    // -- 8: WebSocket upgrades abused.
    c.section(8);
    let ws = |path: &str, extra: &[&str], body: &str| {
        let mut lines = vec![
            format!("GET {path} HTTP/1.1"),
            "Host: web".into(),
            "Connection: Upgrade".into(),
            "Upgrade: websocket".into(),
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".into(),
            "Sec-WebSocket-Version: 13".into(),
        ];
        lines.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        req(&refs, body)
    };
    c.add(
        Outbound,
        "websocket upgrade with `Content-Length: 5` and a body",
        Wire::H1 {
            bytes: ws("/ws", &["Content-Length: 5"], "hello"),
            after: Some(b"ping".to_vec()),
            linger: Duration::from_millis(300),
        },
    );
    c.add(
        Outbound,
        "websocket upgrade with `Transfer-Encoding: chunked` and a body",
        Wire::H1 {
            bytes: ws(
                "/ws",
                &["Transfer-Encoding: chunked"],
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            after: Some(b"ping".to_vec()),
            linger: Duration::from_millis(300),
        },
    );
    c.add(
        Outbound,
        "websocket upgrade, tunnel bytes in the same write as the request",
        Wire::H1 {
            bytes: [ws("/ws", &[], ""), b"ping".to_vec()].concat(),
            after: None,
            linger: Duration::from_millis(300),
        },
    );
    const SMUGGLED_EVIL: &str = "GET /smuggled HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    c.add(
        Outbound,
        "backend declines the upgrade (200), then `GET /smuggled` `Host: evil.example` on the \"tunnel\"",
        Wire::H1 {
            bytes: ws("/ws-refuse", &[], ""),
            after: Some(SMUGGLED_EVIL.as_bytes().to_vec()),
            linger: Duration::from_millis(400),
        },
    )
    .passthrough();
    c.add(
        Outbound,
        "backend declines the upgrade, the smuggled request in the same write",
        Wire::H1 {
            bytes: [ws("/ws-refuse", &[], ""), SMUGGLED_EVIL.as_bytes().to_vec()].concat(),
            after: None,
            linger: Duration::from_millis(400),
        },
    )
    .passthrough();
    c.add(
        Outbound,
        "websocket upgrade over HTTP/1.0",
        Wire::H1 {
            bytes: req(
                &[
                    "GET /ws HTTP/1.0",
                    "Host: web",
                    "Connection: Upgrade",
                    "Upgrade: websocket",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version: 13",
                ],
                "",
            ),
            after: Some(b"ping".to_vec()),
            linger: Duration::from_millis(300),
        },
    );
    c.add(
        Outbound,
        "`POST` websocket upgrade",
        Wire::H1 {
            bytes: {
                let mut b = ws("/ws", &[], "");
                b.splice(0..3, b"POST".iter().copied());
                b
            },
            after: Some(b"ping".to_vec()),
            linger: Duration::from_millis(300),
        },
    );

    // -- 9: the response side: a backend that lies about framing must not desync the
    // client's keep-alive connection (the next answer on it must be the answer to `/next`).
    c.section(9);
    for (kind, what) in [
        ("control", "`Content-Length: 5` (control)"),
        (
            "double-cl",
            "two `Content-Length`s (5, then one covering a hidden response)",
        ),
        ("cl-list", "`Content-Length: 5, 50`"),
        (
            "cl-te",
            "`Content-Length` (covering a hidden response) + `Transfer-Encoding: chunked`",
        ),
        (
            "te-cl",
            "`Transfer-Encoding: chunked` + `Content-Length: 5`, a hidden response after",
        ),
        (
            "te-gzip",
            "`Transfer-Encoding: chunked, gzip` + `Content-Length`",
        ),
        (
            "bad-chunk",
            "chunk data longer than its size, a hidden response after",
        ),
        ("chunk-0x", "chunk size `0x5`"),
        (
            "extra",
            "a hidden response after the body (poisoning the pooled connection)",
        ),
        (
            "no-length",
            "no length (ends at close), a hidden response in the body",
        ),
        (
            "http10-keepalive",
            "`HTTP/1.0 200` without length, a hidden response in the body",
        ),
        ("204-body", "`204` with `Content-Length` and a body"),
        ("304-body", "`304` with a body"),
        ("100s", "fifty `100 Continue`s, then 200"),
        (
            "100-cl",
            "`100 Continue` with `Content-Length` and a hidden response",
        ),
        ("103-then", "`103 Early Hints`, then 200"),
        (
            "101-unasked",
            "`101 Switching Protocols` to a request that did not ask",
        ),
        ("fold", "obs-fold hiding `content-length: 99`"),
        ("bare-cr", "bare CR hiding `content-length: 99`"),
        ("nul", "NUL in a header value"),
        ("space-colon", "`content-length : 99` (space before colon)"),
        ("status-2000", "status `2000`"),
    ] {
        c.add(
            Liar,
            &format!("backend answers {what}; then `GET /next`"),
            Wire::Desync(get(&format!("/{kind}"), "bad")),
        );
    }

    // -- 1: unknown or missing Host (PassthroughCluster without an original destination).
    c.section(1);
    c.raw(Outbound, "`Host: evil.example`", get("/", "evil.example"));
    c.raw(
        Outbound,
        "no Host (HTTP/1.1)",
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    );
    c.raw(
        Outbound,
        "no Host (HTTP/1.0)",
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    );
    c.raw(Outbound, "`Host:` (empty)", get("/", ""));
    c.raw(
        Outbound,
        "`Host:` the listener's own address",
        get("/", SELF_ADDR),
    );
    c.raw(
        Outbound,
        "`Host: 127.0.0.1:<port>` (loopback, nobody there)",
        get("/", &format!("127.0.0.1:{web}")),
    );
    c.h2c(
        Outbound,
        "h2c `:authority evil.example`",
        "evil.example",
        "/",
    );

    c.list
}

// === running and judging ===

/// What one sidecar did with one case.
struct Outcome {
    answer: Answer,
    received: Vec<Received>,
    /// The sidecar's open file descriptors before and after.
    fds: (usize, usize),
}

impl Outcome {
    /// Whole requests the backend received.
    fn requests(&self) -> Vec<&Head> {
        self.received
            .iter()
            .filter_map(|r| match &r.what {
                What::Request(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    /// Heads the backend received, whole requests and aborted ones.
    fn heads(&self) -> Vec<&Head> {
        self.received
            .iter()
            .filter_map(|r| match &r.what {
                What::Request(h) | What::Aborted(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    /// A whole request (or bytes that are no request) reached the backend.
    fn forwarded(&self) -> bool {
        self.received
            .iter()
            .any(|r| matches!(r.what, What::Request(_) | What::Garbage(_)))
    }

    /// Anything at all reached the backend, an aborted head included.
    fn reached(&self) -> bool {
        self.received
            .iter()
            .any(|r| !matches!(r.what, What::Tunnel))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for r in &self.received {
            match &r.what {
                What::Request(h) => {
                    let host = h.all("host").join(" + ");
                    let mut s = format!("`{} {}` host `{host}`", h.method, h.target);
                    let cl = h.all("content-length");
                    let te = h.all("transfer-encoding");
                    if !cl.is_empty() {
                        let _ = write!(s, " cl `{}`", cl.join(" + "));
                    }
                    if !te.is_empty() {
                        let _ = write!(s, " te `{}`", te.join(" + "));
                    }
                    if !h.body.is_empty() {
                        let _ = write!(s, " body {} B", h.body.len());
                    }
                    if h.version != "HTTP/1.1" {
                        let _ = write!(s, " {}", h.version);
                    }
                    parts.push(s);
                }
                What::Aborted(h) => parts.push(format!(
                    "aborted `{} {}` ({} B, then closed)",
                    h.method,
                    h.target,
                    r.raw.len()
                )),
                What::Garbage(why) => {
                    parts.push(format!("**unparseable** {} B ({why})", r.raw.len()))
                }
                What::Tunnel => parts.push(format!("tunnel {} B", r.raw.len())),
            }
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join("; ")
        }
    }

    fn cell(&self) -> String {
        format!("{} → {}", self.answer.describe(), self.describe())
    }
}

/// RFC 3986 normalisation of a request target's path: decode percent-encoded unreserved
/// characters (6.2.2.2), then remove dot segments (5.2.4). `%2F` stays a byte of a segment.
fn normalised_path(target: &str) -> String {
    let path = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
            && (v.is_ascii_alphanumeric() || b"-._~".contains(&v))
        {
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(b[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    let segments: Vec<&str> = decoded.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    let last = segments.len().saturating_sub(1);
    for (n, seg) in segments.iter().enumerate().skip(1) {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if n == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// The invariants that hold for any sidecar, Envoy included.
fn invariants(case: &Case, o: &Outcome) -> Vec<String> {
    let mut bad = Vec::new();
    let requests = o.heads();
    if requests.len() > case.sent {
        let conns: std::collections::BTreeSet<u64> = o.received.iter().map(|r| r.conn).collect();
        bad.push(format!(
            "{} request(s) became {} upstream (on {} connection(s))",
            case.sent,
            requests.len(),
            conns.len()
        ));
    }
    for r in &o.received {
        if find(&r.raw, b"PRI * HTTP/2.0").is_some() {
            bad.push("the HTTP/2 preface reached the HTTP/1.1 backend".into());
        }
        if let What::Garbage(why) = &r.what {
            bad.push(format!("the backend could not parse what it got: {why}"));
        }
        for field in &case.never_upstream {
            if find(&r.raw, field).is_some() {
                bad.push(format!("`{}` reached the backend", field.escape_ascii()));
            }
        }
    }
    for h in &requests {
        let hosts = h.all("host");
        if hosts.len() != 1 {
            bad.push(format!("{} Host headers upstream: {hosts:?}", hosts.len()));
        }
        if hosts
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("evil"))
        {
            bad.push(format!("upstream authority {hosts:?}"));
        }
        let cl = h.all("content-length");
        let te = h.all("transfer-encoding");
        if cl.len() > 1 {
            bad.push(format!("{} Content-Lengths upstream", cl.len()));
        }
        if !cl.is_empty() && !te.is_empty() {
            bad.push("Content-Length and Transfer-Encoding upstream".into());
        }
        if !te.is_empty() && te != ["chunked"] {
            bad.push(format!("Transfer-Encoding {te:?} upstream"));
        }
        if h.all("upgrade")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("h2c"))
            || !h.all("http2-settings").is_empty()
        {
            bad.push("the h2c upgrade reached the backend".into());
        }
        let path = normalised_path(&h.target);
        match case.group {
            Group::Deny if path.starts_with("/admin") => {
                bad.push(format!("`{}` (= {path}) passed DENY /admin*", h.target));
            }
            Group::Allow if !path.starts_with("/ok/") => {
                bad.push(format!("`{}` (= {path}) passed ALLOW /ok/* only", h.target));
            }
            _ => {}
        }
    }
    if o.fds.1.saturating_sub(o.fds.0) >= 50 {
        bad.push(format!(
            "open fds {} → {} over one case: a connection loop?",
            o.fds.0, o.fds.1
        ));
    }
    if let Wire::Desync(_) = &case.wire
        && let Some(why) = desynced(&o.answer)
    {
        bad.push(format!("client connection desynced: {why}"));
    }
    if case.never_101 && o.answer.status == Some(101) {
        bad.push("101 to an h2c upgrade".into());
    }
    if let Some(want) = case.must_status
        && o.answer.status != Some(want)
    {
        bad.push(format!("answered {}, not {want}", o.answer.describe()));
    }
    if let Some(paths) = &case.must_forward {
        let got: Vec<&str> = o.requests().iter().map(|h| h.target.as_str()).collect();
        if got != *paths {
            bad.push(format!("forwarded {got:?}, not {paths:?}"));
        }
    }
    bad
}

/// mast-proxy against Envoy: refuse what Envoy refuses; forward what Envoy forwards the
/// same way, or refuse it.
fn at_least_as_strict(envoy: &Outcome, mast: &Outcome) -> Vec<String> {
    let mut bad = Vec::new();
    let routed = |o: &Outcome| -> Vec<(String, Vec<String>)> {
        o.requests()
            .iter()
            .map(|h| {
                (
                    h.target.clone(),
                    h.all("host").iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    };
    if !envoy.reached() {
        if mast.reached() {
            bad.push("sent upstream a request Envoy refused before sending anything".into());
        }
        if !mast.answer.refused() && envoy.answer.refused() {
            bad.push(format!(
                "answered {} where Envoy refused",
                mast.answer.describe()
            ));
        }
    } else if !envoy.forwarded() {
        if mast.forwarded() {
            bad.push("forwarded a request Envoy refused".into());
        }
        if !mast.answer.refused() && envoy.answer.refused() {
            bad.push(format!(
                "answered {} where Envoy refused",
                mast.answer.describe()
            ));
        }
    } else if mast.forwarded() {
        let (e, m) = (routed(envoy), routed(mast));
        if e != m {
            bad.push(format!("forwarded {m:?} where Envoy forwarded {e:?}"));
        }
    } else if !mast.answer.refused() {
        bad.push(format!(
            "forwarded nothing yet answered {}",
            mast.answer.describe()
        ));
    }
    bad
}

struct Pair {
    envoy: SocketAddr,
    mast: SocketAddr,
    envoy_pid: u32,
    mast_pid: u32,
}

struct World {
    _dir: tempfile::TempDir,
    _mastd: Mastd,
    recorder: Recorder,
    client_envoy: Sidecar,
    client_mast: Sidecar,
    _servers: Vec<Sidecar>,
    web: u16,
    outbound: Pair,
    deny: Pair,
    allow: Pair,
    liar: Pair,
    _liar_task: tokio::task::JoinHandle<()>,
}

impl World {
    fn pair(&self, g: Group) -> &Pair {
        match g {
            Group::Outbound => &self.outbound,
            Group::Deny => &self.deny,
            Group::Allow => &self.allow,
            Group::Liar => &self.liar,
        }
    }

    async fn run(&self, case: &Case, addr: SocketAddr, pid: u32) -> Result<Outcome> {
        let mark = self.recorder.mark();
        let fds_before = fds_and_rss(pid)?.0;
        let answer = match &case.wire {
            Wire::H1 {
                bytes,
                after,
                linger,
            } => {
                let text = String::from_utf8_lossy(bytes);
                let bytes = if text.contains(SELF_ADDR) {
                    text.replace(SELF_ADDR, &addr.to_string()).into_bytes()
                } else {
                    bytes.clone()
                };
                exchange(addr, &bytes, after.as_deref(), *linger)
                    .await
                    .unwrap_or_else(|e| Answer {
                        status: None,
                        end: End::NoConnection(format!("{e:#}")),
                        more: Vec::new(),
                    })
            }
            Wire::H2c {
                path,
                authority,
                headers,
            } => h2c_exchange(addr, &format!("http://{authority}{path}"), headers).await,
            Wire::H2Raw(frames) => h2raw_exchange(addr, frames).await,
            Wire::Desync(first) => desync_exchange(addr, first)
                .await
                .unwrap_or_else(|e| Answer {
                    status: None,
                    end: End::NoConnection(format!("{e:#}")),
                    more: Vec::new(),
                }),
        };
        tokio::time::sleep(SETTLE).await;
        Ok(Outcome {
            answer,
            received: self.recorder.since(mark),
            fds: (fds_before, fds_and_rss(pid)?.0),
        })
    }
}

fn mesh_yaml(
    web: u16,
    user: u16,
    gate: u16,
    inbound: u16,
    recorder: u16,
    bad: (u16, u16),
) -> String {
    let (bad, liar) = bad;
    let mut y = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: bad, namespace: default}}
spec:
  selector: {{app: bad}}
  ports:
  - {{name: http, port: {bad}, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: bad-1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: bad}}
  ports: {{http: {liar}}}
  serviceAccount: bad
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: {web}, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: web}}
  ports: {{http: {recorder}}}
  serviceAccount: web
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client-envoy, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: client, version: envoy}}}}
  egress:
  - bind: {CLIENT_ENVOY_IP}
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client-mast, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: client, version: mast}}}}
  egress:
  - bind: {CLIENT_MAST_IP}
    hosts: ["./*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: user}}}}
  action: DENY
  rules:
  - to:
    - operation: {{paths: ["/admin*"]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-ok, namespace: default}}
spec:
  selector: {{matchLabels: {{app: gate}}}}
  action: ALLOW
  rules:
  - to:
    - operation: {{paths: ["/ok/*"]}}
"#
    );
    for (app, port, ips) in [
        ("user", user, [USER_ENVOY_IP, USER_MAST_IP]),
        ("gate", gate, [GATE_ENVOY_IP, GATE_MAST_IP]),
    ] {
        let _ = write!(
            y,
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {app}, namespace: default}}
spec:
  selector: {{app: {app}}}
  ports:
  - {{name: http, port: {port}, targetPort: {inbound}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {app}-envoy, namespace: default}}
spec:
  address: {envoy_ip}
  labels: {{app: {app}, version: envoy}}
  serviceAccount: {app}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {app}-mast, namespace: default}}
spec:
  address: {mast_ip}
  labels: {{app: {app}, version: mast}}
  serviceAccount: {app}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {app}, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: {app}}}}}
  ingress:
  - port: {{number: {inbound}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{recorder}
  egress:
  - hosts: ["nowhere/*"]
"#,
            envoy_ip = ips[0],
            mast_ip = ips[1],
        );
    }
    y
}

async fn world() -> Result<World> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    std::fs::create_dir(&config)?;
    let recorder = Recorder::start().await?;
    let (web, user, gate, inbound) = (free_port(), free_port(), free_port(), free_port());
    let (liar, liar_task) = start_liar().await?;
    let bad = free_port();
    std::fs::write(
        config.join("mesh.yaml"),
        mesh_yaml(web, user, gate, inbound, recorder.port, (bad, liar)),
    )?;
    let mastd = Mastd::start(&config, dir.path()).await?;
    let xds = mastd.xds_addr;
    let work = dir.path();
    let start = |kind, pod, ip| Sidecar::start_kind(kind, pod, ip, xds, work, true);
    let (client_envoy, client_mast, user_envoy, user_mast, gate_envoy, gate_mast) = tokio::try_join!(
        start(SidecarKind::Envoy, &CLIENT_ENVOY, CLIENT_ENVOY_IP),
        start(SidecarKind::Mast, &CLIENT_MAST, CLIENT_MAST_IP),
        start(SidecarKind::Envoy, &USER_ENVOY, USER_ENVOY_IP),
        start(SidecarKind::Mast, &USER_MAST, USER_MAST_IP),
        start(SidecarKind::Envoy, &GATE_ENVOY, GATE_ENVOY_IP),
        start(SidecarKind::Mast, &GATE_MAST, GATE_MAST_IP),
    )?;
    let addr = |ip: &str, port: u16| -> Result<SocketAddr> { Ok(format!("{ip}:{port}").parse()?) };
    let w = World {
        outbound: Pair {
            envoy: addr(CLIENT_ENVOY_IP, web)?,
            mast: addr(CLIENT_MAST_IP, web)?,
            envoy_pid: client_envoy.proc.pid(),
            mast_pid: client_mast.proc.pid(),
        },
        deny: Pair {
            envoy: addr(USER_ENVOY_IP, inbound)?,
            mast: addr(USER_MAST_IP, inbound)?,
            envoy_pid: user_envoy.proc.pid(),
            mast_pid: user_mast.proc.pid(),
        },
        allow: Pair {
            envoy: addr(GATE_ENVOY_IP, inbound)?,
            mast: addr(GATE_MAST_IP, inbound)?,
            envoy_pid: gate_envoy.proc.pid(),
            mast_pid: gate_mast.proc.pid(),
        },
        liar: Pair {
            envoy: addr(CLIENT_ENVOY_IP, bad)?,
            mast: addr(CLIENT_MAST_IP, bad)?,
            envoy_pid: client_envoy.proc.pid(),
            mast_pid: client_mast.proc.pid(),
        },
        _liar_task: liar_task,
        _dir: dir,
        _mastd: mastd,
        recorder,
        client_envoy,
        client_mast,
        _servers: vec![user_envoy, user_mast, gate_envoy, gate_mast],
        web,
    };
    // Ready when each listener answers and each policy is in force.
    let http = HttpClient::new();
    let checks = [
        (w.outbound.envoy, "web", "/", 200),
        (w.outbound.mast, "web", "/", 200),
        (w.liar.envoy, "bad", "/next", 200),
        (w.liar.mast, "bad", "/next", 200),
        (w.deny.envoy, "user", "/", 200),
        (w.deny.mast, "user", "/", 200),
        (w.deny.envoy, "user", "/admin", 403),
        (w.deny.mast, "user", "/admin", 403),
        (w.allow.envoy, "gate", "/ok/", 200),
        (w.allow.mast, "gate", "/ok/", 200),
        (w.allow.envoy, "gate", "/", 403),
        (w.allow.mast, "gate", "/", 403),
    ];
    for (addr, host, path, want) in checks {
        let url = format!("http://{addr}{path}");
        eventually(
            &format!("{url} (Host {host}) answers {want}"),
            Duration::from_secs(20),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let (status, body) = http.get(&url, Some(host), &[]).await?;
                    ensure!(status.as_u16() == want, "{status}: {body}");
                    Ok(())
                }
            },
        )
        .await?;
    }
    Ok(w)
}

/// Open file descriptors and resident memory (KiB) of a process.
fn fds_and_rss(pid: u32) -> Result<(usize, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok((fds, rss))
}

/// Case 1 at volume: 1 then 1,000 requests for an unknown Host, one connection each, in a
/// row; the proxy's fds and RSS must stay flat and the backend see nothing.
async fn unknown_host_at_volume(
    w: &World,
    sidecar: &Sidecar,
    addr: SocketAddr,
) -> Result<(String, Vec<String>)> {
    const FD_GROWTH: usize = 50;
    const RSS_GROWTH_KIB: u64 = 30 * 1024;
    let pid = sidecar.proc.pid();
    let mark = w.recorder.mark();
    let request = get("/", "evil.example");
    let (fds0, rss0) = fds_and_rss(pid)?;
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut sent = 0;
    let mut after_one = (fds0, rss0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stopped = None;
    for i in 0..1001 {
        if Instant::now() > deadline {
            stopped = Some(format!("stopped after {i} requests: 20 s budget spent"));
            break;
        }
        let a = exchange(addr, &request, None, Duration::ZERO).await?;
        sent += 1;
        *statuses.entry(a.describe()).or_default() += 1;
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            after_one = fds_and_rss(pid)?;
        }
        if a.end == End::TimedOut {
            stopped = Some(format!("stopped at request {}: no answer in 2 s", i + 1));
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds1, rss1) = fds_and_rss(pid)?;
    let received = w.recorder.since(mark);
    let mut summary = format!(
        "{sent} requests: {statuses:?}; fds {fds0} → {} (after 1) → {fds1}; \
         RSS {rss0} KiB → {} → {rss1} KiB; backend got {}",
        after_one.0,
        after_one.1,
        received.len()
    );
    let mut bad = Vec::new();
    if let Some(s) = stopped {
        let _ = write!(summary, "; {s}");
        bad.push(s);
    }
    if fds1.saturating_sub(fds0) >= FD_GROWTH || after_one.0.saturating_sub(fds0) >= FD_GROWTH {
        bad.push(format!("fds grew from {fds0} to {fds1}"));
    }
    if rss1.saturating_sub(rss0) >= RSS_GROWTH_KIB {
        bad.push(format!("RSS grew from {rss0} KiB to {rss1} KiB"));
    }
    if !received.is_empty() {
        bad.push(format!("the backend received {} things", received.len()));
    }
    if statuses
        .keys()
        .any(|s| !(s.starts_with("503") || s.starts_with("502")))
    {
        bad.push(format!("answers {statuses:?}, want 503 (or 502)"));
    }
    Ok((summary, bad))
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mast_proxy_is_at_least_as_strict_as_envoy() -> Result<()> {
    let started = Instant::now();
    let w = world().await?;
    eprintln!("setup: {:.1} s", started.elapsed().as_secs_f64());
    let mut table = String::from(
        "| # | Request | Envoy: answer → backend got | mast-proxy: answer → backend got | Verdict |\n\
         |---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    // MAST_HOSTILE_DUMP=1 prints what reached the backend, byte for byte.
    let dump = std::env::var_os("MAST_HOSTILE_DUMP").is_some();
    let all = cases(w.web);
    // Unknown authorities last: a mast-proxy that loops on one could starve the rest.
    let (last, first): (Vec<&Case>, Vec<&Case>) = all.iter().partition(|c| c.passthrough);
    let mut volume = Vec::new();
    for (i, case) in first.iter().chain(last.iter()).enumerate() {
        if case.passthrough && volume.is_empty() {
            // Before section 1's single requests, 1 then 1,000 of them, with fds and RSS.
            for (sidecar, addr) in [
                (&w.client_envoy, w.outbound.envoy),
                (&w.client_mast, w.outbound.mast),
            ] {
                let (summary, bad) = unknown_host_at_volume(&w, sidecar, addr).await?;
                eprintln!("unknown Host at volume, {}: {summary}", sidecar.kind);
                for b in &bad {
                    let who = sidecar.kind;
                    failures.push(format!("1.0 {who}: {b}"));
                }
                volume.push((sidecar.kind, summary, bad));
            }
        }
        let pair = w.pair(case.group);
        let t = Instant::now();
        let envoy = w.run(case, pair.envoy, pair.envoy_pid).await?;
        let te = t.elapsed();
        let mast = w.run(case, pair.mast, pair.mast_pid).await?;
        if t.elapsed() > Duration::from_millis(900) {
            eprintln!(
                "{} slow: Envoy {:.2} s, mast-proxy {:.2} s",
                case.id,
                te.as_secs_f64(),
                (t.elapsed() - te).as_secs_f64()
            );
        }
        if dump {
            for (kind, o) in [("Envoy", &envoy), ("mast-proxy", &mast)] {
                for r in &o.received {
                    let raw = r.raw.escape_ascii().to_string();
                    eprintln!("{} {kind} upstream: {:.800}", case.id, raw);
                }
                eprintln!("{} {kind} answer: {}", case.id, o.answer.describe());
            }
        }
        let mut verdict = Vec::new();
        let mut notes = Vec::new();
        for b in invariants(case, &envoy) {
            match case.envoy_quirk {
                Some(why) => notes.push(format!("Envoy quirk: {b} ({why})")),
                None => verdict.push(format!("Envoy: {b}")),
            }
        }
        for b in invariants(case, &mast) {
            verdict.push(format!("mast-proxy: {b}"));
        }
        for b in at_least_as_strict(&envoy, &mast) {
            match case.mast_gap {
                Some(why) => notes.push(format!("known gap: mast-proxy {b} ({why})")),
                None => verdict.push(format!("mast-proxy: {b}")),
            }
        }
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} |",
            case.id,
            cell(&case.request),
            cell(&envoy.cell()),
            cell(&mast.cell()),
            match (verdict.is_empty(), notes.is_empty()) {
                (true, true) => "ok".to_string(),
                (true, false) => cell(&format!("ok; {}", notes.join("; "))),
                _ => cell(&format!("**FAIL**: {}", verdict.join("; "))),
            }
        );
        for n in &notes {
            eprintln!("{} {}: {n}", case.id, case.request);
        }
        for v in verdict {
            failures.push(format!("{} {}: {v}", case.id, case.request));
        }
        if i % 20 == 19 {
            eprintln!(
                "{} cases in {:.1} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    for (kind, summary, bad) in &volume {
        let _ = writeln!(
            table,
            "| 1.0 | 1 then 1,000 × `Host: evil.example` ({kind}) | {} | | {} |",
            cell(summary),
            if bad.is_empty() {
                "ok".to_string()
            } else {
                cell(&format!("**FAIL**: {}", bad.join("; ")))
            }
        );
    }
    println!("\n{table}");
    eprintln!(
        "{} cases, {} failures, {:.1} s",
        all.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!("{} failure(s):\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

#[test]
fn normalised_path_follows_rfc_3986() {
    for (input, want) in [
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2e/../admin", "/admin"),
        ("/./admin", "/admin"),
        ("//admin", "//admin"),
        ("/%61dmin", "/admin"),
        ("/public/..%2fadmin", "/public/..%2fadmin"),
        ("/public/../admin?x=1", "/admin"),
        ("/ok/./x", "/ok/x"),
        ("/ok/..", "/"),
        ("/a/b/..", "/a/"),
        ("http://user/public/../admin", "/admin"),
        ("/ADMIN", "/ADMIN"),
    ] {
        assert_eq!(normalised_path(input), want, "{input}");
    }
}

#[test]
fn recorder_parser_counts_smuggled_requests() {
    let two = [get("/a", "web"), get("/b", "web")].concat();
    let Parse::Done(h, used) = parse_request(&two) else {
        panic!("first request not parsed");
    };
    assert_eq!(h.target, "/a");
    let Parse::Done(h, _) = parse_request(&two[used..]) else {
        panic!("second request not parsed");
    };
    assert_eq!(h.target, "/b");
    let chunked = req(
        &[
            "POST /p HTTP/1.1",
            "Host: web",
            "Transfer-Encoding: chunked",
        ],
        &format!("0\r\n\r\n{SMUGGLED}"),
    );
    let Parse::Done(_, used) = parse_request(&chunked) else {
        panic!("chunked request not parsed");
    };
    assert!(
        matches!(parse_request(&chunked[used..]), Parse::Done(h, _) if h.target == "/smuggled")
    );
    assert!(matches!(
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n"),
        Parse::Bad(_)
    ));
}

#[test]
fn h2raw_reads_the_status_of_static_literal_and_huffman_fields() {
    // Indexed :status 200 (static 8) and 404 (static 13).
    assert_eq!(h2raw::status(&[0x88]), Some(200));
    assert_eq!(h2raw::status(&[0x8d]), Some(404));
    // A dynamic table size update first, then :status 500.
    assert_eq!(h2raw::status(&[0x20, 0x8e]), Some(500));
    // Literal with incremental indexing, name :status (8), plain "503".
    assert_eq!(h2raw::status(&[0x48, 0x03, b'5', b'0', b'3']), Some(503));
    // The same with Huffman: '5' 011011, '0' 00000, '3' 011001, EOS padding 111.
    let bits = "01101100000011001";
    let mut padded = bits.to_string();
    while !padded.len().is_multiple_of(8) {
        padded.push('1');
    }
    let bytes: Vec<u8> = (0..padded.len() / 8)
        .map(|i| u8::from_str_radix(&padded[i * 8..i * 8 + 8], 2).unwrap())
        .collect();
    let mut block = vec![0x08, 0x80 | bytes.len() as u8];
    block.extend_from_slice(&bytes);
    assert_eq!(h2raw::status(&block), Some(503));
    // Not a :status field.
    assert_eq!(h2raw::status(&[0x82]), None);
}

/// 7.37's invariants can fail: a whole request upstream breaks them (h2 drops the trailer's
/// `:path`, so a proxy that trusts it forwards the rest), and so do upstream bytes that carry
/// the field or its value; a head streamed upstream and then aborted does not.
#[test]
fn a_field_that_must_never_reach_the_backend_breaks_the_invariants() {
    let case = cases(8080)
        .into_iter()
        .find(|c| c.request.contains("trailers with `:path"))
        .expect("case 7.37");
    assert_eq!(case.never_upstream, [&b":path"[..], &b"/admin"[..]]);
    let outcome = |raw: &[u8]| {
        let what = match parse_request(raw) {
            Parse::Done(head, _) => What::Request(head),
            // A chunked body cut off by a close: the head was streamed, then aborted.
            Parse::More => match parse_request(&[raw, &b"0\r\n\r\n"[..]].concat()) {
                Parse::Done(head, _) => What::Aborted(head),
                _ => panic!("unparsed: {}", raw.escape_ascii()),
            },
            Parse::Bad(why) => panic!("unparsed: {why}"),
        };
        Outcome {
            answer: Answer {
                status: Some(200),
                end: End::Answered,
                more: Vec::new(),
            },
            received: vec![Received {
                conn: 1,
                raw: raw.to_vec(),
                what,
            }],
            fds: (10, 10),
        }
    };
    let aborted =
        b"POST /public HTTP/1.1\r\nhost: user\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
    assert_eq!(invariants(&case, &outcome(aborted)), Vec::<String>::new());
    let forwarded = b"POST /public HTTP/1.1\r\nhost: user\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let bad = invariants(&case, &outcome(forwarded));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("forwarded [\"/public\"]"), "{bad:?}");
    let leaked = b"POST /public HTTP/1.1\r\nhost: user\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n:path: /admin\r\n\r\n";
    let bad = invariants(&case, &outcome(leaked));
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(
        bad[0].contains(":path") && bad[1].contains("/admin"),
        "{bad:?}"
    );
}
