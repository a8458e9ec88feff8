//! A second reading of each HTTP/1 request head, as the bytes arrive, for what hyper's parser
//! settles silently and Envoy's codec refuses.
//!
//! hyper resolves ambiguous framing the RFC's way before the router sees a request: a
//! repeated `Content-Length` of the same value is kept once, a `Content-Length` beside
//! `Transfer-Encoding: chunked` is dropped, and a `#fragment` in the target is cut off. The
//! request that reaches the router then looks clean, so it cannot refuse it. But a sidecar
//! sits behind load balancers and in front of applications that may read the same bytes
//! differently (request smuggling), and Envoy — the proxy mast-proxy replaces — answers these
//! 400 (or 501 for a transfer coding it does not implement). So each head is read here too,
//! from the raw bytes, and its verdict waits in a queue that the router reads, in order, for
//! each HTTP/1 request hyper hands it.
//!
//! The reader follows the message framing (`Content-Length` bodies, chunked bodies with their
//! trailers) to find where the next head starts, and stops at an upgrade or `CONNECT`, where
//! the bytes stop being HTTP/1. When it stops for any other reason (a framing error hyper
//! will also see), it leaves no verdict, and the router refuses a request without one:
//! every request that is forwarded was read twice and agreed on.
//!
//! An HTTP/2 connection (the preface, with codec AUTO or HTTP/2) is followed from there by
//! `h2_trailers`' shadow HPACK decoder instead, for the pseudo-headers h2 drops from
//! trailers: what it refuses fails the read before hyper sees the bytes, which closes the
//! connection.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_trailers::{self, PREFACE, Refusal};
/// A chunk-size line or a trailer line longer than this is not HTTP anyone sends.
const MAX_LINE: usize = 8 * 1024;

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A `#fragment` in the request target (Envoy: 400).
    Fragment,
    /// `Content-Length` and `Transfer-Encoding` together.
    LengthAndChunked,
    /// `Content-Length` more than once, or a list of lengths.
    RepeatedLength,
    /// A transfer coding other than exactly one `chunked` (Envoy: 501).
    TransferEncoding,
}

impl Problem {
    pub fn status(self) -> StatusCode {
        match self {
            Problem::TransferEncoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Envoy's response code details for the same refusal.
    pub fn details(self) -> &'static str {
        match self {
            Problem::Fragment => "http1.invalid_url",
            Problem::LengthAndChunked => "http1.content_length_and_chunked_not_allowed",
            Problem::RepeatedLength => "http1.content_length_not_allowed",
            Problem::TransferEncoding => "http1.invalid_transfer_encoding",
        }
    }
}

/// What the second reading found in one head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    method: Method,
    headers: usize,
    pub problem: Option<Problem>,
}

impl Head {
    /// Whether this is the head hyper parsed into `parts`: the queue and hyper agree.
    pub fn matches(&self, parts: &http::request::Parts) -> bool {
        self.method == parts.method && self.headers == parts.headers.len()
    }
}

/// The verdicts of one connection, oldest first.
#[derive(Debug, Default)]
pub struct Verdicts(Mutex<VecDeque<Head>>);

impl Verdicts {
    fn push(&self, head: Head) {
        match self.0.lock() {
            Ok(mut q) => q.push_back(head),
            Err(p) => p.into_inner().push_back(head),
        }
    }

    /// The verdict for the request hyper dispatches next; `None` when the second reading
    /// has none (it stopped): such a request must be refused.
    pub fn next(&self) -> Option<Head> {
        match self.0.lock() {
            Ok(mut q) => q.pop_front(),
            Err(p) => p.into_inner().pop_front(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first bytes, which may be the HTTP/2 preface (codec AUTO).
    Preface,
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    /// HTTP/2: the bytes go to the shadow decoder.
    Http2,
    /// Not HTTP/1 any more (HTTP/2, an upgrade, CONNECT), or unreadable: nothing to read.
    Off,
}

/// The incremental reader.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    buf: Vec<u8>,
    /// How far `buf` was searched for the end of a head.
    searched: usize,
    max_head: usize,
    max_headers: usize,
    verdicts: Arc<Verdicts>,
    /// The HTTP/2 reading, once the connection turned out to be HTTP/2.
    h2: Option<Box<h2_trailers::Shadow>>,
    refused: Option<Refusal>,
}

impl Scanner {
    /// `sniff_h2`: the connection may also be HTTP/2 (codec AUTO). `max_head`: the longest
    /// head hyper reads; `max_headers`: hyper's limit on their number.
    pub fn new(sniff_h2: bool, max_head: usize, max_headers: usize) -> Self {
        Self {
            state: if sniff_h2 {
                State::Preface
            } else {
                State::Head
            },
            buf: Vec::new(),
            searched: 0,
            max_head,
            max_headers,
            verdicts: Arc::default(),
            h2: None,
            refused: None,
        }
    }

    /// A scanner for an HTTP/2-only connection: HTTP/2 from its first byte.
    pub fn http2() -> Self {
        let mut s = Self::new(false, 0, 0);
        s.state = State::Http2;
        s.h2 = Some(Box::new(h2_trailers::Shadow::new(true)));
        s
    }

    /// Why the client's bytes were refused, if they were: the connection must fail.
    pub fn refused(&self) -> Option<Refusal> {
        self.refused
    }

    pub fn verdicts(&self) -> Arc<Verdicts> {
        Arc::clone(&self.verdicts)
    }

    /// Read `data`, the next bytes from the client.
    pub fn feed(&mut self, input: &[u8]) {
        // Bytes carried over from a buffer that held the end of one part and the start of
        // the next (a head and its body, pipelined requests).
        let mut carried: Vec<u8>;
        let mut data: &[u8] = input;
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Http2 => {
                    if let Some(h2) = self.h2.as_mut()
                        && let Err(r) = h2.feed(data)
                    {
                        self.refused = Some(r);
                    }
                    return;
                }
                State::Preface => {
                    self.buf.extend_from_slice(data);
                    let n = self.buf.len().min(PREFACE.len());
                    if self.buf[..n] != PREFACE[..n] {
                        self.state = State::Head;
                        carried = std::mem::take(&mut self.buf);
                        data = &carried;
                        continue;
                    }
                    if self.buf.len() >= PREFACE.len() {
                        // HTTP/2 (codec AUTO): what follows the preface is frames.
                        carried = self.buf.split_off(PREFACE.len());
                        self.buf = Vec::new();
                        self.state = State::Http2;
                        self.h2 = Some(Box::new(h2_trailers::Shadow::new(false)));
                        data = &carried;
                        continue;
                    }
                    return;
                }
                State::Head => {
                    if self.buf.is_empty() {
                        // Empty lines before a request line are skipped, as by httparse.
                        let start = data
                            .iter()
                            .position(|b| *b != b'\r' && *b != b'\n')
                            .unwrap_or(data.len());
                        data = &data[start..];
                        if data.is_empty() {
                            return;
                        }
                        // The common case: the whole head in one read, judged where it lies.
                        if let Some(end) = head_end(data, 0) {
                            self.state = self.read_head(&data[..end]);
                            data = &data[end..];
                            continue;
                        }
                    }
                    self.buf.extend_from_slice(data);
                    let Some(end) = head_end(&self.buf, self.searched) else {
                        self.searched = self.buf.len();
                        if self.buf.len() > self.max_head {
                            // hyper answers 431 and closes.
                            self.stop();
                        }
                        return;
                    };
                    carried = self.buf.split_off(end);
                    let head = std::mem::take(&mut self.buf);
                    self.searched = 0;
                    self.state = self.read_head(&head);
                    data = &carried;
                }
                State::Body(n) => {
                    self.state = match skip(&mut data, n) {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                }
                State::ChunkData(n) => {
                    self.state = match skip(&mut data, n) {
                        0 => State::ChunkDataEnd,
                        left => State::ChunkData(left),
                    };
                }
                State::ChunkSize | State::ChunkDataEnd | State::Trailers => {
                    if self.state == State::ChunkDataEnd {
                        // Exactly CRLF follows a chunk's data.
                        let seen = self.buf.len();
                        let want = &b"\r\n"[seen.min(2)..];
                        let n = want.len().min(data.len());
                        if data[..n] != want[..n] {
                            self.stop();
                            return;
                        }
                    }
                    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > MAX_LINE {
                            self.stop();
                        }
                        return;
                    };
                    self.buf.extend_from_slice(&data[..=nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.buf);
                    self.state = match (self.state, line.strip_suffix(b"\r\n")) {
                        (_, None) => State::Off,
                        (State::ChunkSize, Some(l)) => match chunk_size(l) {
                            Some(0) => State::Trailers,
                            Some(n) => State::ChunkData(n),
                            None => State::Off,
                        },
                        (State::ChunkDataEnd, Some([])) => State::ChunkSize,
                        (State::Trailers, Some([])) => State::Head,
                        (State::Trailers, Some(_)) => State::Trailers,
                        _ => State::Off,
                    };
                }
            }
        }
    }

    fn stop(&mut self) {
        self.state = State::Off;
        self.buf = Vec::new();
    }

    /// Judge one complete head and say what follows it.
    fn read_head(&mut self, head: &[u8]) -> State {
        // Header slots on the stack for the usual limits (hyper does the same).
        const ON_STACK: usize = 128;
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; ON_STACK];
        let mut heap = Vec::new();
        let slots = if self.max_headers <= ON_STACK {
            &mut stack[..self.max_headers]
        } else {
            heap.resize_with(self.max_headers, MaybeUninit::uninit);
            &mut heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        // hyper refuses what httparse cannot parse (and answers for it): nothing follows.
        let Ok(httparse::Status::Complete(_)) = req.parse_with_uninit_headers(head, slots) else {
            return State::Off;
        };
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return State::Off;
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return State::Off;
        };
        let mut lengths = 0usize;
        let mut length: Option<u64> = None;
        let mut codings = 0usize;
        let mut chunked_only = true;
        let mut upgrade = false;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty())
                    .and_then(|v| v.parse().ok());
                if length.is_none() {
                    // A list ("5, 5") or no number at all.
                    lengths += 1;
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in h.value.split(|b| *b == b',') {
                    codings += 1;
                    if !coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                        chunked_only = false;
                    }
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                upgrade |= !h.value.trim_ascii().eq_ignore_ascii_case(b"h2c");
            }
        }
        let problem = if target.contains('#') {
            Some(Problem::Fragment)
        } else if lengths > 0 && codings > 0 {
            Some(Problem::LengthAndChunked)
        } else if lengths > 1 {
            Some(Problem::RepeatedLength)
        } else if codings > 1 || (codings == 1 && !chunked_only) {
            Some(Problem::TransferEncoding)
        } else {
            None
        };
        self.verdicts.push(Head {
            method: method.clone(),
            headers: req.headers.len(),
            problem,
        });
        if problem.is_some() || upgrade || method == Method::CONNECT {
            // A refused request closes the connection; an upgrade stops being HTTP/1.
            return State::Off;
        }
        match (codings, length) {
            (1, _) => State::ChunkSize,
            (_, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head,
        }
    }
}

/// Pass over up to `n` body bytes of `data`; how many are still to come.
fn skip(data: &mut &[u8], n: u64) -> u64 {
    let take = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
    *data = &data[take..];
    n - take as u64
}

/// The index just past the blank line that ends a head, searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// A chunk-size line (without its CRLF): hex digits, optional whitespace, extensions.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    if !(rest.is_empty() || rest[0] == b';' || rest[0] == b' ' || rest[0] == b'\t') {
        return None;
    }
    let text = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(text, 16).ok()
}

pin_project_lite::pin_project! {
    /// The client's side of a connection, read a second time by a [`Scanner`].
    pub struct Guarded<S> {
        #[pin]
        inner: S,
        scanner: Scanner,
    }
}

impl<S> Guarded<S> {
    pub fn new(inner: S, scanner: Scanner) -> Self {
        Self { inner, scanner }
    }
}

impl<S: AsyncRead> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(r) = this.scanner.refused() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, r)));
        }
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            this.scanner.feed(&buf.filled()[before..]);
            if let Some(r) = this.scanner.refused() {
                // hyper never sees these bytes: the read fails, and the connection with it.
                tracing::debug!(error = %r, "refusing the client's HTTP/2 bytes");
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, r)));
            }
        }
        res
    }
}

impl<S: AsyncWrite> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Vec<Head>, State) {
        let mut s = Scanner::new(true, 96 * 1024, 100);
        for c in chunks {
            s.feed(c);
        }
        let v = s.verdicts();
        let mut out = Vec::new();
        while let Some(h) = v.next() {
            out.push(h);
        }
        (out, s.state)
    }

    fn problems(raw: &[u8]) -> Vec<Option<Problem>> {
        scan(&[raw]).0.into_iter().map(|h| h.problem).collect()
    }

    #[test]
    fn clean_requests_are_read_through_bodies_and_pipelines() {
        let raw: &[u8] = b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\nGET /smuggled HTTP/1.1\
            POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
            GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        let (heads, state) = scan(&[raw]);
        let methods: Vec<_> = heads.iter().map(|h| h.method.as_str()).collect();
        assert_eq!(methods, ["GET", "POST", "POST", "GET"]);
        assert!(heads.iter().all(|h| h.problem.is_none()));
        assert_eq!(heads[1].headers, 2);
        assert_eq!(state, State::Head);
        // The same bytes one at a time.
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        let (again, _) = scan(&bytes);
        assert_eq!(again, heads);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (raw, want) in [
            (
                &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                Problem::LengthAndChunked,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Problem::LengthAndChunked,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Problem::RepeatedLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
                Problem::RepeatedLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                Problem::RepeatedLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Problem::TransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                Problem::TransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Problem::TransferEncoding,
            ),
            (
                b"GET /admin#frag HTTP/1.1\r\nHost: x\r\n\r\n",
                Problem::Fragment,
            ),
        ] {
            assert_eq!(problems(raw), vec![Some(want)], "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_refusal_stops_the_reading() {
        // Whatever follows a refused head is never judged: the connection closes.
        let (heads, state) = scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nxGET / HTTP/1.1\r\n\r\n",
        ]);
        assert_eq!(heads.len(), 1);
        assert_eq!(state, State::Off);
    }

    #[test]
    fn http2_upgrades_and_connect_stop_the_reading() {
        // HTTP/2 goes to the shadow decoder (`h2_trailers`): no HTTP/1 heads, and this
        // is an unknown frame type to it (h2 refuses the frame's length).
        let mut s = Scanner::new(true, 96 * 1024, 100);
        s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!((s.state, s.refused()), (State::Http2, None));
        s.feed(b"GET / HTTP/1.1\r\n\r\n");
        assert!(s.verdicts().next().is_none());
        assert_eq!((s.state, s.refused()), (State::Http2, None));
        let (heads, state) =
            scan(&[b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET / HTTP/1.1\r\n\r\n"]);
        assert_eq!(heads.len(), 1);
        assert_eq!(state, State::Off);
        // h2c is stripped by the router and the connection stays HTTP/1.
        let (heads, state) = scan(&[
            b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ]);
        assert_eq!(heads.len(), 2);
        assert_eq!(state, State::Head);
    }

    #[test]
    fn malformed_chunks_stop_the_reading() {
        for raw in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n",
        ] {
            let (_, state) = scan(&[raw]);
            assert_eq!(state, State::Off, "{}", String::from_utf8_lossy(raw));
        }
    }

    /// A request, then trailers with `:path` (a literal field without indexing).
    fn h2_with_pseudo_trailers() -> Vec<u8> {
        let mut raw = PREFACE.to_vec();
        raw.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let head = [0x83, 0x86, 0x84, 0x01, 0x01, b'u'];
        raw.extend_from_slice(&[0, 0, head.len() as u8, 0x1, 0x4, 0, 0, 0, 1]);
        raw.extend_from_slice(&head);
        let mut t = vec![0x00, 5];
        t.extend_from_slice(b":path");
        t.extend_from_slice(&[6]);
        t.extend_from_slice(b"/admin");
        raw.extend_from_slice(&[0, 0, t.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
        raw.extend_from_slice(&t);
        raw
    }

    #[test]
    fn http2_pseudo_trailers_are_refused_with_either_codec() {
        let raw = h2_with_pseudo_trailers();
        for mut s in [Scanner::new(true, 96 * 1024, 100), Scanner::http2()] {
            // Up to the trailers' block nothing is refused.
            s.feed(&raw[..raw.len() - 14]);
            assert_eq!(s.refused(), None);
            s.feed(&raw[raw.len() - 14..]);
            assert_eq!(s.refused(), Some(Refusal::PseudoInTrailers));
        }
        // An HTTP/1-only connection never reads HTTP/2.
        let mut s = Scanner::new(false, 96 * 1024, 100);
        s.feed(&raw);
        assert_eq!(s.refused(), None);
    }

    #[tokio::test]
    async fn a_refusal_fails_the_read_before_the_bytes_pass() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let raw = h2_with_pseudo_trailers();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut guarded = Guarded::new(server, Scanner::http2());
        // Everything before the trailers' frame passes.
        let before = raw.len() - 22;
        client.write_all(&raw[..before]).await.unwrap();
        let mut got = vec![0u8; before];
        guarded.read_exact(&mut got).await.unwrap();
        assert_eq!(got, raw[..before]);
        client.write_all(&raw[before..]).await.unwrap();
        let mut buf = [0u8; 64];
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // And every later read too.
        client.write_all(b"more").await.unwrap();
        assert!(guarded.read(&mut buf).await.is_err());
    }

    #[test]
    fn oversized_heads_stop_the_reading() {
        let mut s = Scanner::new(false, 1024, 100);
        s.feed(b"GET / HTTP/1.1\r\n");
        s.feed(&vec![b'a'; 2048]);
        assert_eq!(s.state, State::Off);
        assert!(s.verdicts().next().is_none());
    }
}

/// What the second reading costs, in release (`cargo test --release -p mast-proxy --lib
/// framing_cost -- --ignored --nocapture`): a benchmark, not a test.
#[cfg(test)]
mod cost {
    use super::*;

    #[test]
    #[ignore = "a measurement; run it in release"]
    fn framing_cost() {
        let head: &[u8] = b"GET /api/users/42?expand=todos HTTP/1.1\r\nHost: user.default.svc.cluster.local:8081\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: application/json\r\nAccept-Encoding: gzip, deflate\r\nx-request-id: 9f1c2b4e-8d7a-4c1b-a2e3-5f6d7c8b9a0e\r\nx-envoy-peer-metadata-id: sidecar~10.202.89.10~myapp-v1.default~default.svc.cluster.local\r\n\r\n";
        let mut s = Scanner::new(true, 96 * 1024, 100);
        let v = s.verdicts();
        let n = 1_000_000u32;
        let t = std::time::Instant::now();
        for _ in 0..n {
            s.feed(std::hint::black_box(head));
            std::hint::black_box(v.next());
        }
        let per = t.elapsed() / n;
        eprintln!("framing guard: {per:?} per {}-byte head", head.len());
    }
}
