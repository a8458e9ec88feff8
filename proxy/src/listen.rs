//! Accepting connections: one accept loop per bound listener, kept across config updates.
//!
//! A listener whose name and address stay the same keeps its socket and loop through any
//! number of LDS updates — its config is read from the snapshot per connection — so no
//! connection is refused during a change. A removed listener stops accepting; its open
//! connections finish on their own. `virtualOutbound`/`virtualInbound` read the original
//! destination (`SO_ORIGINAL_DST`) and hand the connection to the listener for that address,
//! as Envoy does, then the first bytes are sniffed where the listener asks for it.
//!
//! With `--concurrency N` (N ≥ 2) this is Envoy's threading model: N worker threads, each
//! running its own single-threaded event loop, and each listener bound N times with
//! `SO_REUSEPORT` (Envoy's default `enable_reuse_port` on Linux), one socket per worker, so
//! the kernel spreads new connections over the workers and a connection lives its whole life
//! on the thread that accepted it — no work stealing, no wake-ups across cores on the
//! per-connection path. The control plane (xDS, admin, certificates) stays on the main
//! runtime; an LDS change binds, or stops, the listener on every worker at once. With one
//! worker the accept loops run on the main runtime itself, as before: no extra thread.
//!
//! Draining does not stop the accept loops: as Envoy's graceful drain, listeners keep
//! accepting until the process exits, and the connections the drain covers are closed by
//! their protocol (see [`crate::shared`]), so a caller that connects during the drain is
//! answered rather than refused.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::NodeType;
use crate::http::{self, ConnCtx};
use crate::resources::listener::{ChainKind, ConnInfo, ListenerConfig};
use crate::shared::Shared;
use crate::state::Snapshot;
use crate::tcp;

/// Longest a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running accept loops.
pub struct Listeners {
    shared: Arc<Shared>,
    workers: Workers,
    running: Mutex<HashMap<String, Running>>,
}

struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Connections accepted, one counter per worker, each written by its worker only.
    accepted: Vec<Arc<AtomicU64>>,
}

/// Where accept loops run: the caller's runtime (one worker), or worker threads of their own.
enum Workers {
    Current,
    Threads(Vec<Worker>),
}

/// A worker thread and its single-threaded runtime.
struct Worker {
    handle: tokio::runtime::Handle,
    /// Dropped with the [`Listeners`]: the thread then returns and drops its runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Workers {
    fn start(n: usize) -> io::Result<Self> {
        if n <= 1 {
            return Ok(Self::Current);
        }
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("mast-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.push(Worker {
                handle,
                _stop: stop,
            });
        }
        Ok(Self::Threads(workers))
    }

    fn count(&self) -> usize {
        match self {
            Self::Current => 1,
            Self::Threads(w) => w.len(),
        }
    }
}

impl Listeners {
    /// Accept loops on the caller's runtime (one worker).
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            workers: Workers::Current,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// `concurrency` workers (Envoy's `--concurrency`): for 2 or more, that many threads,
    /// each with its own event loop and its own `SO_REUSEPORT` socket per listener.
    pub fn with_workers(shared: Arc<Shared>, concurrency: usize) -> io::Result<Self> {
        Ok(Self {
            shared,
            workers: Workers::start(concurrency)?,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// How many workers accept connections.
    pub fn concurrency(&self) -> usize {
        self.workers.count()
    }

    /// Connections each worker has accepted on each running listener (Envoy's
    /// `listener.<address>.worker_<N>.downstream_cx_total`), by listener name.
    pub fn accepted(&self) -> Vec<(String, SocketAddr, Vec<u64>)> {
        let running = match self.running.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let mut v: Vec<_> = running
            .iter()
            .map(|(name, r)| {
                let counts = r
                    .accepted
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect();
                (name.clone(), r.addr, counts)
            })
            .collect();
        v.sort();
        v
    }

    /// The per-worker listener counters in Envoy's `/stats` text form, and
    /// `server.concurrency`.
    pub fn worker_stats(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (_, addr, counts) in self.accepted() {
            let prefix = addr.to_string().replace(':', "_");
            for (i, n) in counts.iter().enumerate() {
                let _ = writeln!(out, "listener.{prefix}.worker_{i}.downstream_cx_total: {n}");
            }
        }
        let _ = writeln!(out, "server.concurrency: {}", self.concurrency());
        out
    }

    /// Bind what is new, stop what is gone. Returns the listeners that could not bind
    /// (they are left out; the rest run).
    pub fn reconcile(&self, snap: &Snapshot) -> Result<(), String> {
        let mut running = match self.running.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let wanted: HashMap<&str, &Arc<ListenerConfig>> = snap
            .listeners
            .iter()
            .filter(|l| l.bind)
            .map(|l| (l.name.as_str(), l))
            .collect();
        running.retain(|name, r| {
            let keep = wanted.get(name.as_str()).is_some_and(|l| l.addr == r.addr);
            if !keep {
                r.stop.send_replace(true);
                tracing::info!(listener = %name, addr = %r.addr, "listener removed");
            }
            keep
        });
        let mut errors = Vec::new();
        for (name, l) in wanted {
            if running.contains_key(name) {
                continue;
            }
            match bind_all(l.addr, self.workers.count()) {
                Ok(sockets) => {
                    let (stop, stop_rx) = watch::channel(false);
                    let accepted: Vec<_> = sockets
                        .iter()
                        .map(|_| Arc::new(AtomicU64::new(0)))
                        .collect();
                    tracing::info!(listener = %name, addr = %l.addr, workers = sockets.len(), "listening");
                    for (i, socket) in sockets.into_iter().enumerate() {
                        let accept = accept_loop(
                            Arc::clone(&self.shared),
                            name.to_string(),
                            socket,
                            stop_rx.clone(),
                            Arc::clone(&accepted[i]),
                        );
                        match &self.workers {
                            Workers::Current => drop(tokio::spawn(accept)),
                            Workers::Threads(w) => drop(w[i].handle.spawn(accept)),
                        }
                    }
                    running.insert(
                        name.to_string(),
                        Running {
                            addr: l.addr,
                            stop,
                            accepted,
                        },
                    );
                }
                Err(e) => errors.push(bind_failure(name, l.addr, &e)),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Stop accepting everywhere (at exit, once the drain is over).
    pub fn stop_all(&self) {
        let running = match self.running.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        for r in running.values() {
            r.stop.send_replace(true);
        }
    }

    /// Whether each listener of `wanted` that does not run yet could bind its address now,
    /// without keeping it: Envoy binds a listener when LDS adds it and NACKs that response
    /// if it cannot, even while the listener still waits for its routes; mast-proxy binds
    /// only when the routes are there, so it asks first and NACKs the same response.
    /// Returns one message per listener that could not bind, as [`Listeners::reconcile`]
    /// words it.
    pub fn probe<'a>(
        &self,
        wanted: impl IntoIterator<Item = (&'a str, SocketAddr)>,
    ) -> Vec<String> {
        let running = match self.running.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        wanted
            .into_iter()
            .filter(|(name, addr)| running.get(*name).is_none_or(|r| r.addr != *addr))
            // An address one of ours holds is handed over by reconcile (a renamed listener).
            .filter(|(_, addr)| !running.values().any(|r| r.addr == *addr))
            .filter_map(|(name, addr)| {
                let bound = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )
                .and_then(|s| {
                    s.set_reuse_address(true)?;
                    s.bind(&addr.into())
                });
                bound.err().map(|e| bind_failure(name, addr, &e))
            })
            .collect()
    }

    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let running = match self.running.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let mut v: Vec<_> = running.iter().map(|(n, r)| (n.clone(), r.addr)).collect();
        v.sort();
        v
    }
}

/// Raise the soft limit on open files to the hard limit, as Envoy does at start: each
/// downstream connection costs one descriptor and each upstream one more, so the default
/// soft limit (1,024 on most systems) would cap a sidecar at a few hundred clients, far below
/// what the kernel allows the process. Returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

fn bind_failure(name: &str, addr: SocketAddr, e: &io::Error) -> String {
    format!("Listener {name:?}: address: cannot bind {addr}: {e}")
}

/// `workers` listening sockets on `addr`: one plain socket for one worker, else as many
/// with `SO_REUSEPORT`, the first one's port reused by the others (`addr` may say port 0).
/// Blocking-mode-off std sockets: each is registered with the runtime of the worker that
/// accepts on it.
fn bind_all(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut sockets: Vec<std::net::TcpListener> = Vec::with_capacity(workers);
    let mut at = addr;
    for _ in 0..workers.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if workers > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        socket.listen(1024)?;
        let socket: std::net::TcpListener = socket.into();
        at = socket.local_addr()?;
        sockets.push(socket);
    }
    crate::upstream::loop_guard::listening(at);
    Ok(sockets)
}

async fn accept_loop(
    shared: Arc<Shared>,
    name: String,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    accepted: Arc<AtomicU64>,
) {
    // Registered here, on the worker that accepts on it.
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot register the listening socket");
            return;
        }
    };
    let name: Arc<str> = name.into();
    loop {
        tokio::select! {
            accept = listener.accept() => match accept {
                Ok((stream, peer)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(Arc::clone(&shared), Arc::clone(&name), stream, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    if let Ok(addr) = listener.local_addr() {
        crate::upstream::loop_guard::closed(addr);
    }
}

async fn connection(shared: Arc<Shared>, name: Arc<str>, stream: TcpStream, peer: SocketAddr) {
    let _active = ActiveConnection::new(Arc::clone(&shared));
    let snap = shared.store.current.load_full();
    let Some(l) = snap.listener(&name) else {
        return;
    };
    let local = stream.local_addr().unwrap_or(l.addr);
    // The destination before capture, when the listener reads it and the kernel has one
    // (as Envoy's "restored" local address): only then may a passthrough cluster dial it.
    let restored = if l.original_dst {
        original_dst(&stream)
    } else {
        None
    };
    let dst = restored.unwrap_or(local);
    // Outbound capture hands the connection to the listener for its destination.
    let listener = match l.use_original_dst.then(|| snap.handoff(dst)).flatten() {
        Some(target) if dst != local => Arc::clone(target),
        _ => Arc::clone(l),
    };
    let mut transport = "raw_buffer";
    let mut alpn: Vec<&str> = Vec::new();
    let mut hello = None;
    let port = dst.port();
    if listener.sniffs(port) {
        // One budget for all the inspectors, as Envoy's listener_filters_timeout.
        let deadline = listener
            .sniff_timeout
            .map(|t| tokio::time::Instant::now() + t);
        let sniffed = match sniff(&stream, deadline).await {
            Sniffed::Tls if listener.sniffs_tls(port) => {
                transport = "tls";
                match client_hello(&stream, deadline).await {
                    Ok(h) => {
                        hello = h;
                        Sniffed::Tls
                    }
                    Err(HelloRefused::TimedOut) => Sniffed::TimedOut,
                    Err(HelloRefused::TooLarge) => {
                        tracing::debug!(listener = %listener.name, %peer, "ClientHello too large; closing");
                        return;
                    }
                }
            }
            other => other,
        };
        match sniffed {
            Sniffed::Http1 if listener.sniffs_http(port) => alpn.push("http/1.1"),
            Sniffed::Http2 if listener.sniffs_http(port) => alpn.push("h2c"),
            Sniffed::TimedOut if !listener.continue_on_sniff_timeout => {
                tracing::debug!(listener = %listener.name, %peer, "listener filters timed out; closing");
                return;
            }
            _ => {}
        }
    }
    if let Some(h) = &hello {
        alpn = h.alpn.iter().map(String::as_str).collect();
    }
    let info = ConnInfo {
        dst: Some(dst),
        transport,
        alpn,
        sni: hello.as_ref().and_then(|h| h.sni.as_deref()),
    };
    let Some(chain) = listener.select(&info) else {
        tracing::debug!(listener = %listener.name, %dst, "no filter chain matched; closing");
        return;
    };
    // A gateway has no inbound side: whatever its listeners say, it is the client of the
    // mesh for every request it forwards (Istio reports them with reporter="source").
    let inbound = listener.inbound && shared.config.node_type == NodeType::Sidecar;
    let conn = Conn {
        shared,
        kind: chain.kind.clone(),
        inbound,
        peer,
        dst,
        original_dst: restored,
        sni: hello.as_ref().and_then(|h| h.sni.clone()),
    };
    let Some(tls) = chain.tls.clone() else {
        if let ChainKind::Http(hcm) = &conn.kind
            && !first_bytes(&stream, hcm.idle_timeout).await
        {
            return;
        }
        // Boxed: a spawned task is as large as its largest state, and the codec's is many
        // KiB; a connection still waiting for its first bytes should not pay for it.
        Box::pin(conn.serve(stream, None, false)).await;
        return;
    };
    // A chain whose certificate or client CA has not arrived serves no one rather than
    // presenting something else (Envoy keeps it warming); the other chains are unaffected.
    if let Some(secret) = tls.waiting_for(&conn.shared.secrets, &conn.shared.sds) {
        tracing::debug!(listener = %listener.name, chain = %chain.name, secret, "TLS secret not received yet; closing");
        return;
    }
    let config = match tls.server_config(&conn.shared.secrets, &conn.shared.sds) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(listener = %listener.name, error = %e, "TLS config unusable; closing");
            return;
        }
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls_stream)) => {
            let identity = crate::tls::peer_identity(tls_stream.get_ref().1).map(Arc::from);
            Box::pin(conn.serve(tls_stream, identity, true)).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(listener = %listener.name, %peer, error = %e, "TLS handshake failed");
        }
        Err(_) => tracing::debug!(listener = %listener.name, %peer, "TLS handshake timed out"),
    }
}

/// One downstream connection counted in [`Shared::active_connections`] while it lives.
struct ActiveConnection(Arc<Shared>);

impl ActiveConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared.active_connections.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wait, holding nothing but the socket, until a plaintext HTTP client sends its first bytes:
/// the HTTP codec allocates its read buffer (8 KiB) as soon as it is polled, so a crowd of
/// idle connections would cost that much each for nothing (Envoy allocates on the first
/// read too). `false` when the connection manager's idle timeout passes first: the
/// connection is closed. A drain does not end the wait: the client may still be about to
/// send its request, which is then served (see [`crate::http::serve`]).
async fn first_bytes(stream: &TcpStream, idle: Option<Duration>) -> bool {
    let idle = async {
        match idle {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let mut one = [0u8; 1];
    tokio::select! {
        // A peek, not `readable()`, which may wake before any byte is there.
        r = stream.peek(&mut one) => r.is_ok(),
        _ = idle => false,
    }
}

/// A connection after filter-chain selection, ready for its filters.
struct Conn {
    shared: Arc<Shared>,
    kind: ChainKind,
    inbound: bool,
    peer: SocketAddr,
    dst: SocketAddr,
    /// The original destination, when it was restored from capture.
    original_dst: Option<SocketAddr>,
    /// The SNI of the ClientHello, for RBAC's `requested_server_name`.
    sni: Option<String>,
}

impl Conn {
    /// Run the chain's filters on `stream` (plaintext, or the decrypted side of TLS with
    /// the peer's SPIFFE ID when it has one).
    async fn serve<S>(self, stream: S, peer_identity: Option<Arc<str>>, tls: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // RBAC network filters, once the peer's identity is known (after the handshake).
        let attrs = crate::rbac::Attrs::connection(
            self.peer,
            self.dst,
            peer_identity.as_deref(),
            self.sni.as_deref(),
        );
        if !crate::rbac::allow_connection(self.kind.network_rbac(), &attrs) {
            return;
        }
        match self.kind {
            ChainKind::Http(hcm) => {
                let ctx = Arc::new(ConnCtx {
                    shared: self.shared,
                    hcm,
                    inbound: self.inbound,
                    peer: self.peer,
                    dst: self.dst,
                    original_dst: self.original_dst,
                    tls,
                    peer_identity,
                    principal_peer: std::sync::OnceLock::new(),
                });
                http::serve(ctx, stream).await;
            }
            ChainKind::Tcp(t) => {
                tcp::proxy(
                    self.shared,
                    t,
                    stream,
                    self.dst,
                    self.original_dst,
                    self.inbound,
                    peer_identity,
                )
                .await
            }
        }
    }
}

/// The inspectors' wait for the client's first bytes ran out.
#[derive(Debug, PartialEq, Eq)]
struct TimedOut;

/// Peek at what the client has sent so far, waiting for at least one byte until `deadline`
/// (forever without one). `Ok(0)` is a closed connection.
async fn peek(
    stream: &TcpStream,
    buf: &mut [u8],
    deadline: Option<tokio::time::Instant>,
) -> Result<usize, TimedOut> {
    let peeked = match deadline {
        Some(at) => tokio::time::timeout_at(at, stream.peek(buf))
            .await
            .map_err(|_| TimedOut)?,
        None => stream.peek(buf).await,
    };
    Ok(peeked.unwrap_or(0))
}

/// Wait a little for more bytes of a message that has begun to arrive (`peek` returns at
/// once while anything is buffered), backing off from 1 ms to 50 ms; `Err` past `deadline`.
async fn wait_for_more(
    deadline: Option<tokio::time::Instant>,
    pause: &mut Duration,
) -> Result<(), TimedOut> {
    if deadline.is_some_and(|at| tokio::time::Instant::now() >= at) {
        return Err(TimedOut);
    }
    tokio::time::sleep(*pause).await;
    *pause = (*pause * 2).min(Duration::from_millis(50));
    Ok(())
}

/// Envoy's `tls_inspector` `max_client_hello_size` (64 KiB): a larger ClientHello closes
/// the connection.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Read (without consuming) a whole ClientHello, for SNI and ALPN. `Ok(None)` when what
/// arrived is not a ClientHello this parser understands; `Err(HelloRefused)` when it is
/// larger than [`MAX_CLIENT_HELLO`] or the wait ran out.
///
/// A ClientHello may be fragmented over several TLS records (legal, and a known way past
/// sniffers that read one record) and over many TCP segments: the records are put back
/// together before parsing, as Envoy's inspector (BoringSSL) does.
async fn client_hello(
    stream: &TcpStream,
    deadline: Option<tokio::time::Instant>,
) -> Result<Option<crate::tls::HelloInfo>, HelloRefused> {
    // Room for the largest ClientHello accepted and the record headers around it.
    let mut buf = vec![0u8; MAX_CLIENT_HELLO + 8 * 1024];
    let mut pause = Duration::from_millis(1);
    let mut last = 0;
    loop {
        let n = peek(stream, &mut buf, deadline)
            .await
            .map_err(|_| HelloRefused::TimedOut)?;
        match reassemble_hello(&buf[..n]) {
            Hello::Whole(message) => return Ok(crate::tls::parse_client_hello_message(&message)),
            Hello::TooLarge => return Err(HelloRefused::TooLarge),
            Hello::NotHandshake => return Ok(None),
            Hello::Partial => {}
        }
        if n == 0 || n == buf.len() {
            return Ok(None);
        }
        if n == last {
            wait_for_more(deadline, &mut pause)
                .await
                .map_err(|_| HelloRefused::TimedOut)?;
        }
        last = n;
    }
}

/// Why a ClientHello was not read.
#[derive(Debug, PartialEq, Eq)]
enum HelloRefused {
    /// The listener's timeout ran out first.
    TimedOut,
    /// Over [`MAX_CLIENT_HELLO`].
    TooLarge,
}

/// The first handshake message of `bytes`, put together from its records.
#[derive(Debug, PartialEq, Eq)]
enum Hello {
    /// The whole handshake message, its header included.
    Whole(Vec<u8>),
    /// More bytes are needed.
    Partial,
    /// The message is over [`MAX_CLIENT_HELLO`].
    TooLarge,
    /// A record that is not a handshake record comes first.
    NotHandshake,
}

fn reassemble_hello(bytes: &[u8]) -> Hello {
    let mut payload = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 5) {
        if header[0] != 0x16 {
            return Hello::NotHandshake;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(body) = bytes.get(at + 5..at + 5 + len) else {
            payload.extend_from_slice(&bytes[(at + 5).min(bytes.len())..]);
            break;
        };
        payload.extend_from_slice(body);
        at += 5 + len;
        if let Some(need) = message_len(&payload)
            && payload.len() >= need
        {
            break;
        }
        if len == 0 {
            return Hello::NotHandshake;
        }
    }
    let Some(need) = message_len(&payload) else {
        return Hello::Partial;
    };
    if need > MAX_CLIENT_HELLO {
        return Hello::TooLarge;
    }
    if payload.len() < need {
        return Hello::Partial;
    }
    Hello::Whole(payload[..need].to_vec())
}

/// A handshake message's length with its 4-byte header, once the header is there.
fn message_len(payload: &[u8]) -> Option<usize> {
    let h = payload.get(..4)?;
    Some(4 + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3])))
}

#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    Tls,
    Http1,
    Http2,
    Other,
    /// The client sent too little before the listener's timeout.
    TimedOut,
}

/// Look at the first bytes without consuming them, until `deadline` (none: as long as the
/// client takes, as Envoy's `listener_filters_timeout: 0s`).
async fn sniff(stream: &TcpStream, deadline: Option<tokio::time::Instant>) -> Sniffed {
    let mut buf = [0u8; 24];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match peek(stream, &mut buf, deadline).await {
            Ok(n) => n,
            Err(TimedOut) => return Sniffed::TimedOut,
        };
        if n == 0 {
            return Sniffed::Other;
        }
        let seen = &buf[..n];
        if seen[0] == 0x16 {
            return Sniffed::Tls;
        }
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        if PREFACE.starts_with(seen) {
            if n >= PREFACE.len() {
                return Sniffed::Http2;
            }
        } else if let Some(sp) = seen.iter().position(|b| *b == b' ') {
            let method = &seen[..sp];
            return if !method.is_empty() && method.iter().all(|b| b.is_ascii_uppercase()) {
                Sniffed::Http1
            } else {
                Sniffed::Other
            };
        } else if n == buf.len() || !seen.iter().all(|b| b.is_ascii_uppercase()) {
            return Sniffed::Other;
        }
        // Not enough bytes yet to decide: wait for more.
        if wait_for_more(deadline, &mut pause).await.is_err() {
            return Sniffed::TimedOut;
        }
    }
}

/// The destination before iptables REDIRECT rewrote it (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` on an IPv6 socket). `None` when nothing redirected the connection.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let dst = if stream.local_addr().ok()?.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    dst.ok()?.as_socket()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_soft_limit_is_raised_to_the_hard_limit() {
        let limit = raise_fd_limit().expect("rlimit");
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads into the struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, now.rlim_max);
        assert_eq!(limit, now.rlim_cur);
    }

    #[tokio::test]
    async fn probe_names_a_taken_address_and_lets_a_free_one_pass() {
        let env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        let config = crate::config::Config::from_env(&env, &Default::default()).unwrap();
        let listeners = Listeners::new(Arc::new(Shared::new(config, false, None)));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = taken.local_addr().map(|a| (a, taken)).unwrap();
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let failures = listeners.probe([("a", taken.0), ("b", free)]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with(&format!("Listener \"a\": address: cannot bind {}", taken.0)),
            "{failures:?}"
        );
        // The probe keeps nothing: the free address is still free.
        std::net::TcpListener::bind(free).unwrap();
    }

    /// A bootstrap whose listeners (name, port) all route to one cluster.
    fn bootstrap(dir: &std::path::Path, file: &str, listeners: &[(&str, u16)]) -> Snapshot0 {
        let mut yaml = String::from("static_resources:\n  listeners:\n");
        for (name, port) in listeners {
            yaml.push_str(&format!(
                r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
            ));
        }
        yaml.push_str(
            "  clusters:\n  - name: backend\n    type: STATIC\n    connect_timeout: 1s\n    \
             load_assignment:\n      cluster_name: backend\n      endpoints: [{lb_endpoints: \
             [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]\n",
        );
        let path = dir.join(file);
        std::fs::write(&path, yaml).unwrap();
        crate::static_config::load(&path).unwrap().by_type
    }
    type Snapshot0 = std::collections::BTreeMap<
        mast_proto::TypeUrl,
        Vec<envoy_types::pb::google::protobuf::Any>,
    >;

    /// Push one whole config, as LDS/CDS state-of-the-world responses would.
    fn push(publisher: &mut crate::xds::Publisher, version: &str, by_type: &Snapshot0) {
        for type_url in mast_proto::TypeUrl::PUSH_ORDER {
            let incoming = by_type
                .get(&type_url)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|any| crate::state::Incoming {
                    name: None,
                    version: version.into(),
                    any,
                })
                .collect();
            publisher
                .apply(type_url.url(), version, incoming, &[], true)
                .unwrap();
        }
        publisher.try_publish();
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port()
    }

    /// Open `n` connections to `port` and wait until the workers have accepted them all;
    /// returns what each worker accepted on `listener`.
    async fn spread(listeners: &Listeners, listener: &str, port: u16, n: u64) -> Vec<u64> {
        let mut open = Vec::new();
        for _ in 0..n {
            open.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        for _ in 0..500 {
            let counts = listeners
                .accepted()
                .into_iter()
                .find(|(name, _, _)| name == listener)
                .map(|(_, _, c)| c)
                .unwrap_or_default();
            if counts.iter().sum::<u64>() >= n {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{listener}: not all {n} connections accepted: {:?}",
            listeners.accepted()
        );
    }

    /// `--concurrency 2`: each listener is bound on both workers, the kernel spreads
    /// connections over them, and an LDS update (a listener added, one removed) applies to
    /// both.
    #[tokio::test]
    async fn two_workers_share_every_listener_through_lds_updates() {
        let dir = tempfile::tempdir().unwrap();
        let env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        let config = crate::config::Config::from_env(&env, &Default::default()).unwrap();
        let shared = Arc::new(Shared::new(config, false, None));
        let listeners = Arc::new(Listeners::with_workers(Arc::clone(&shared), 2).unwrap());
        assert_eq!(listeners.concurrency(), 2);
        let mut publisher = crate::xds::Publisher::new(Arc::clone(&shared), Arc::clone(&listeners));
        let (a, b) = (free_port(), free_port());

        push(
            &mut publisher,
            "1",
            &bootstrap(dir.path(), "1.yaml", &[("a", a)]),
        );
        let counts = spread(&listeners, "a", a, 64).await;
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(
            counts.iter().all(|n| *n > 0),
            "one worker took all: {counts:?}"
        );
        let stats = listeners.worker_stats();
        for (i, n) in counts.iter().enumerate() {
            let line = format!("listener.127.0.0.1_{a}.worker_{i}.downstream_cx_total: {n}");
            assert!(stats.contains(&line), "{line} not in {stats}");
        }
        assert!(stats.contains("server.concurrency: 2"), "{stats}");

        // LDS: "b" added, "a" removed. "b" is served by both workers; "a" by neither.
        push(
            &mut publisher,
            "2",
            &bootstrap(dir.path(), "2.yaml", &[("b", b)]),
        );
        let counts = spread(&listeners, "b", b, 64).await;
        assert!(
            counts.iter().all(|n| *n > 0),
            "one worker took all: {counts:?}"
        );
        assert!(listeners.accepted().iter().all(|(name, _, _)| name != "a"));
        let mut refused = false;
        for _ in 0..200 {
            // Each worker closes its own socket; until both have, some connects succeed.
            let mut all = true;
            for _ in 0..16 {
                all &= TcpStream::connect(("127.0.0.1", a)).await.is_err();
            }
            if all {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the removed listener still accepts on some worker");
        // The address is free again: nothing of ours holds it.
        std::net::TcpListener::bind(("127.0.0.1", a)).unwrap();
    }

    #[tokio::test]
    async fn sniffs_http1_http2_tls_and_other() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Sniffed::Http1),
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], Sniffed::Http2),
            (&[0x16, 0x03, 0x01, 0x00][..], Sniffed::Tls),
            (&b"\x00\x01binary"[..], Sniffed::Other),
        ] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut c, bytes)
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            assert_eq!(sniff(&s, Some(deadline)).await, want, "{bytes:?}");
        }
    }

    /// Fuzz target `listener-sniff` (issue 21 §1, see docs/fuzzing.md): mutated first
    /// bytes of a connection, through a real socket, never panic the sniffer or the
    /// ClientHello reader, and the verdict agrees with the first byte.
    #[tokio::test]
    async fn fuzz_listener_sniff() {
        let seeds: Vec<Vec<u8>> = ["http", "tls"]
            .into_iter()
            .flat_map(mast_testdata::fuzz::seeds)
            .map(|(_, b)| b)
            .collect();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let n = mast_testdata::fuzz::cases(300);
        for case in 0..n {
            let mut rng = mast_testdata::fuzz::Rng::new(case as u64);
            let seed = &seeds[rng.below(seeds.len())];
            let bytes = mast_testdata::fuzz::mutate_bytes(&mut rng, seed, &[b"PRI * HTTP/2.0"]);
            let mut c = TcpStream::connect(addr).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut c, &bytes)
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
            let verdict = sniff(&s, Some(deadline)).await;
            if bytes.first() == Some(&0x16) {
                assert_eq!(verdict, Sniffed::Tls, "case {case}: {bytes:?}");
                let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
                let _ = client_hello(&s, Some(deadline)).await;
            }
        }
        eprintln!("fuzz target listener-sniff: {n} cases, no panic");
    }

    /// A ClientHello (the seed with SNI and ALPN) cut into records of `size` bytes of
    /// handshake data each, with padding in an extension to reach `pad` more bytes.
    fn fragmented_hello(size: usize, pad: usize) -> (Vec<u8>, Vec<u8>) {
        let seed = mast_testdata::fuzz::seeds("tls")
            .into_iter()
            .find(|(name, _)| name.to_string_lossy().contains("tls13-sni-alpn"))
            .map(|(_, b)| b)
            .expect("seed");
        let mut msg = seed[5..].to_vec();
        if pad > 0 {
            // Append a padding extension (21) and fix the three lengths.
            let mut ext = vec![0, 21];
            ext.extend_from_slice(&(pad as u16).to_be_bytes());
            ext.extend(std::iter::repeat_n(0u8, pad));
            // The extensions block is last: its length is the 2 bytes before it; find it by
            // walking the fixed ClientHello fields.
            let mut at = 4 + 2 + 32;
            at += 1 + usize::from(msg[at]);
            at += 2 + usize::from(u16::from_be_bytes([msg[at], msg[at + 1]]));
            at += 1 + usize::from(msg[at]);
            let ext_len = usize::from(u16::from_be_bytes([msg[at], msg[at + 1]])) + ext.len();
            msg[at..at + 2].copy_from_slice(&(ext_len as u16).to_be_bytes());
            msg.extend_from_slice(&ext);
            let body = msg.len() - 4;
            msg[1..4].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
        }
        let mut records = Vec::new();
        for part in msg.chunks(size) {
            records.extend_from_slice(&[0x16, 0x03, 0x01]);
            records.extend_from_slice(&(part.len() as u16).to_be_bytes());
            records.extend_from_slice(part);
        }
        (msg, records)
    }

    #[test]
    fn a_client_hello_over_many_records_is_put_back_together() {
        let (msg, one) = fragmented_hello(1 << 14, 0);
        let Hello::Whole(whole) = reassemble_hello(&one) else {
            panic!("one record");
        };
        assert_eq!(whole, msg);
        let info = crate::tls::parse_client_hello_message(&whole).expect("parsed");
        let from_record = crate::tls::parse_client_hello(&one).expect("parsed");
        assert_eq!(
            (&info.sni, &info.alpn),
            (&from_record.sni, &from_record.alpn)
        );
        for size in [1, 7, 100] {
            let (_, records) = fragmented_hello(size, 0);
            let Hello::Whole(r) = reassemble_hello(&records) else {
                panic!("records of {size}");
            };
            assert_eq!(r, msg);
            let again = crate::tls::parse_client_hello_message(&r).expect("parsed");
            assert_eq!(
                (again.sni, again.alpn),
                (info.sni.clone(), info.alpn.clone())
            );
            // Any prefix asks for more.
            for cut in [0, 3, 5, 6, records.len() / 2, records.len() - 1] {
                assert_eq!(
                    reassemble_hello(&records[..cut]),
                    Hello::Partial,
                    "{size}/{cut}"
                );
            }
        }
        // 20 KiB of padding: over one record's 16 KiB, under Envoy's 64 KiB.
        let (big, records) = fragmented_hello(1 << 14, 20 * 1024);
        let Hello::Whole(r) = reassemble_hello(&records) else {
            panic!("20 KiB hello");
        };
        assert_eq!(r, big);
        let parsed = crate::tls::parse_client_hello_message(&r).expect("a 20 KiB hello parses");
        assert_eq!(parsed.alpn, info.alpn);
        let (_, records) = fragmented_hello(1 << 14, 65 * 1024);
        assert_eq!(reassemble_hello(&records[..40]), Hello::TooLarge);
        assert_eq!(
            reassemble_hello(b"\x17\x03\x03\x00\x01x"),
            Hello::NotHandshake
        );
    }

    #[tokio::test]
    async fn a_client_hello_byte_by_byte_and_an_oversized_one() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_, records) = fragmented_hello(50, 0);
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        let (s, _) = l.accept().await.unwrap();
        let writer = tokio::spawn(async move {
            for b in records {
                tokio::io::AsyncWriteExt::write_all(&mut c, &[b])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            c
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let hello = client_hello(&s, Some(deadline)).await.unwrap().unwrap();
        assert!(hello.alpn.iter().any(|a| a == "h2"), "{:?}", hello.alpn);
        drop(writer.await.unwrap());
        let (_, records) = fragmented_hello(1 << 14, 65 * 1024);
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut c, &records)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            client_hello(&s, Some(deadline)).await,
            Err(HelloRefused::TooLarge)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_plaintext_connection_waits_without_a_codec_until_it_speaks() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Silent past the idle timeout: closed.
        assert!(!first_bytes(&s, Some(Duration::from_secs(3600))).await);
        tokio::io::AsyncWriteExt::write_all(&mut c, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(first_bytes(&s, Some(Duration::from_secs(3600))).await);
    }

    #[tokio::test]
    async fn server_first_protocols_are_not_held_forever() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let t = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        assert_eq!(sniff(&s, Some(deadline)).await, Sniffed::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    /// Istio's `listener_filters_timeout: 0s`: a client may open a connection and speak
    /// much later (HTTP clients pool connections they opened speculatively). Giving up
    /// early would send its request down the TCP passthrough instead of the routes.
    #[tokio::test]
    async fn without_a_timeout_a_late_client_is_still_recognised() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::io::AsyncWriteExt::write_all(&mut c, b"GET / HTTP/1.1\r\n")
                .await
                .unwrap();
            c
        });
        assert_eq!(sniff(&s, None).await, Sniffed::Http1);
        drop(late.await.unwrap());
    }

    #[tokio::test]
    async fn a_request_line_split_across_writes_is_waited_for() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut c, b"GE")
            .await
            .unwrap();
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tokio::io::AsyncWriteExt::write_all(&mut c, b"T / HTTP/1.1\r\n")
                .await
                .unwrap();
            c
        });
        assert_eq!(sniff(&s, None).await, Sniffed::Http1);
        drop(rest.await.unwrap());
    }
}
