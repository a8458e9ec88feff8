//! The HTTP connection manager: HTTP/1.1 and HTTP/2 from the client, each request checked,
//! passed through the HTTP filters and routed to a cluster with Envoy's router semantics.
//!
//! The stages run in Envoy's order, one module each, so the order is visible here:
//!
//! 1. `framing` and `sanitize`: the request head as read from the wire is checked, the path
//!    normalised and the authority validated — before anything reads them to decide; at the
//!    edge (`use_remote_address`, a gateway) `forwarded` then says who the client is.
//! 2. `filters`: the configured HTTP filters (RBAC, fault injection) in order; any may
//!    answer the request itself.
//! 3. `router`: the route's local replies (`404 NR`, redirects, direct responses), or
//!    forwarding, which uses `upstream_request` (one attempt and the header rewriting),
//!    `retry` (body buffering, retry conditions, backoff, per-try timeouts) and `mirror`.
//!
//! Each request reads the config snapshot once, so an xDS update never changes a request
//! midway, and kept-alive connections simply pick up the new routes on their next request.
//! Local replies (`reply`) use Envoy's status codes, bodies and response flags (`NR`, `UH`,
//! `UF`, `UO`, `UT`, `FI`, `DI`, `RBAC`), so operators read them the same way.

mod body;
mod filters;
pub(crate) mod forwarded;
mod framing;
mod h2_trailers;
pub mod jwt;
mod mirror;
mod path;
mod recorder;
mod reply;
mod retry;
mod router;
mod sanitize;
mod stream_idle;
pub mod trace;
mod upstream_request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use crate::metrics::{PEER_METADATA, PEER_METADATA_ID, Reporter, ServiceId};
use crate::resources::listener::{Codec, HttpManager};
use crate::shared::Shared;
use crate::upstream::{Body, BoxError};
use filters::{FilterChain, FilterOutcome, FilterRequest};
use reply::local_reply;

pub use body::{Counted, Metered};
pub use path::{EscapedSlashes, PathNormalization};
pub use recorder::Recorder;

/// A downstream request's body as the router reads it: its frames keep the stream's idle
/// clock running (see `stream_idle`).
pub(crate) type DownstreamBody = stream_idle::Watched<Incoming>;

/// What a connection knows about itself.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub hcm: Arc<HttpManager>,
    pub inbound: bool,
    pub peer: SocketAddr,
    /// Where the client was going: the original destination, or the listener address.
    pub dst: SocketAddr,
    /// The original destination when capture restored one: the only address a passthrough
    /// (ORIGINAL_DST) cluster may dial.
    pub original_dst: Option<SocketAddr>,
    /// The downstream connection is TLS (terminated by this proxy): a virtual host's
    /// `require_tls` redirects the requests of plaintext connections.
    pub tls: bool,
    /// The client's SPIFFE ID when the connection is mTLS.
    pub peer_identity: Option<Arc<str>>,
    /// The client's metrics identity with its principal, built once per connection:
    /// (as the metadata exchange names it, with the principal added).
    pub principal_peer: std::sync::OnceLock<(Arc<crate::metrics::Peer>, Arc<crate::metrics::Peer>)>,
}

/// Serve HTTP on one accepted connection until it closes, stays idle past the connection
/// manager's `idle_timeout`, or is drained.
///
/// Draining (see [`crate::shared`]) closes a connection the way Envoy's connection manager
/// does under `--drain-strategy immediate`, without refusing anyone: an HTTP/1 response
/// carries `connection: close` and the connection closes after it (one idle between
/// requests closes at once); an HTTP/2 connection gets a GOAWAY and finishes its streams. A
/// connection that has not sent its first request yet is not closed — it is served once,
/// then closed the same way, so a caller that connects during the drain gets its answer.
///
/// Idle keep-alive connections are kept as long as Envoy keeps them (an hour unless the
/// config says otherwise): a proxy that closes them sooner than its clients expect races
/// their next request — the client writes on a connection the proxy is closing and sees a
/// reset it cannot safely retry.
pub async fn serve<S>(ctx: Arc<ConnCtx>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hcm = &ctx.hcm;
    // hyper must read any head the connection manager accepts; the router answers 431
    // above `max_request_headers_kb` itself, as Envoy does.
    let max_buf = (hcm.max_request_headers + 8 * 1024).max(96 * 1024);
    // Who watches each stream's idle clock while its response is written (`stream_idle`).
    let handoff = Arc::new(stream_idle::Handoff::default());
    let mut builder = auto::Builder::new(stream_idle::StreamExec(Arc::clone(&handoff)));
    builder = match ctx.hcm.codec {
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
        Codec::Auto => builder,
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's header-read timeout also runs while a kept-alive connection waits for its
        // next request, so it is only set when the config asks for one.
        .header_read_timeout(ctx.hcm.request_headers_timeout)
        // A client may shut its write side and still wait for the answer.
        .half_close(true)
        .max_headers(hcm.max_headers)
        .max_buf_size(max_buf);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024u32)
        .keep_alive_interval(Duration::from_secs(300));
    let activity = Arc::new(Activity::new());
    // Notified by an HTTP/2 request that arrives while draining: the connection then gets
    // its GOAWAY (HTTP/1 needs nothing: its responses say `connection: close`).
    let goaway = Arc::new(tokio::sync::Notify::new());
    let svc_ctx = Arc::clone(&ctx);
    let svc_activity = Arc::clone(&activity);
    let svc_goaway = Arc::clone(&goaway);
    let svc_handoff = Arc::clone(&handoff);
    // HTTP/1 heads, and HTTP/2 header blocks, are read a second time, from the raw bytes
    // (see `framing` and `h2_trailers`).
    let scanner = match hcm.codec {
        Codec::Http2 => framing::Scanner::http2(),
        codec => framing::Scanner::new(codec == Codec::Auto, max_buf, hcm.max_headers),
    };
    let verdicts = scanner.verdicts();
    // The connection manager's filters, built once for the connection.
    let filters = Arc::new(FilterChain::new(hcm));
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = Arc::clone(&svc_ctx);
        let filters = Arc::clone(&filters);
        let stream = InFlight::new(Arc::clone(&svc_activity));
        let clock = svc_ctx.hcm.stream_idle_timeout.map(|t| {
            stream_idle::StreamClock::start(t, hyper::body::Body::is_end_stream(req.body()))
        });
        svc_handoff.stream_started(clock.as_ref(), req.version());
        let head = match req.version() {
            Version::HTTP_2 => None,
            _ => verdicts.next(),
        };
        // The framing guard stops reading at an upgrade: unless it is tunnelled, the
        // connection must close after this response.
        let ends_reading = req.version() != Version::HTTP_2
            && (req.method() == http::Method::CONNECT
                || req
                    .headers()
                    .get_all(header::UPGRADE)
                    .iter()
                    .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"h2c")));
        let http2 = req.version() == Version::HTTP_2;
        if http2 && ctx.shared.draining(ctx.inbound) {
            svc_goaway.notify_one();
        }
        async move {
            let mut resp = handle(Arc::clone(&ctx), &filters, req, head, clock.clone()).await;
            // Checked as the response leaves, so a request already in flight when the drain
            // starts closes its connection too.
            let drained = !http2 && ctx.shared.draining(ctx.inbound);
            if (ends_reading || drained) && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked {
                body,
                idle: clock.map(stream_idle::Timed::new),
                _stream: stream,
            }))
        }
    });
    let io = framing::Guarded::new(stream, scanner);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle_timeout = ctx.hcm.idle_timeout;
    let mut draining = false;
    loop {
        // Without an idle timeout the branch below is off; the instant is never reached.
        let check = tokio::time::Instant::from_std(activity.quiet_since())
            + idle_timeout.unwrap_or(Duration::from_secs(86_400));
        tokio::select! {
            // In order, not shuffled: besides the connection each branch is a one-time
            // event, and the shuffle draws a random number at every wake-up.
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %ctx.peer, error = %e, "downstream connection error");
                }
                return;
            }
            _ = ctx.shared.drain_started(ctx.inbound), if !draining => {
                draining = true;
                // Before its first request hyper may still be reading which protocol it
                // speaks, and a shutdown then would drop the connection unanswered.
                if activity.spoke() {
                    break;
                }
            }
            _ = goaway.notified() => break,
            () = handoff.h1_stalled() => {
                // The client stopped reading the response: hyper no longer polls its body,
                // so the connection is dropped here (closing it, and the upstream exchange
                // with the body).
                tracing::debug!(peer = %ctx.peer, "stream idle timeout: downstream stopped reading; closing");
                return;
            }
            _ = tokio::time::sleep_until(check), if idle_timeout.is_some() => {
                if idle_timeout.is_some_and(|t| activity.idle_for(t)) {
                    tracing::debug!(peer = %ctx.peer, "downstream connection idle; closing");
                    break;
                }
            }
        }
    }
    // Close what is idle now; requests in flight finish first (HTTP/1 then closes, HTTP/2
    // gets a GOAWAY).
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A downstream connection's streams, for the idle timeout and the drain: how many are
/// open, when the last one ended, and whether there was any.
struct Activity {
    start: Instant,
    open: AtomicU64,
    spoke: std::sync::atomic::AtomicBool,
    /// Milliseconds after `start` when the count last fell to zero.
    quiet_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            open: AtomicU64::new(0),
            spoke: std::sync::atomic::AtomicBool::new(false),
            quiet_ms: AtomicU64::new(0),
        }
    }

    /// Whether a request has arrived on the connection.
    fn spoke(&self) -> bool {
        // SeqCst, as the drain flag's lock: a request that arrives as the drain starts is
        // seen either here or by the service's own check of the drain.
        self.spoke.load(Ordering::SeqCst)
    }

    /// When the connection last became idle; now if a stream is open.
    fn quiet_since(&self) -> Instant {
        if self.open.load(Ordering::Acquire) > 0 {
            return Instant::now();
        }
        self.start + Duration::from_millis(self.quiet_ms.load(Ordering::Acquire))
    }

    fn idle_for(&self, timeout: Duration) -> bool {
        self.open.load(Ordering::Acquire) == 0 && self.quiet_since().elapsed() >= timeout
    }
}

/// One open stream: counted from its request until its response body ends or is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::AcqRel);
        activity.spoke.store(true, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.quiet_ms.store(ms, Ordering::Release);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted as open until it is done, under the
/// stream's idle clock when the connection manager has one.
struct Tracked {
    body: Body,
    idle: Option<stream_idle::Timed>,
    _stream: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match &mut this.idle {
            Some(idle) => idle.poll_frame(std::pin::Pin::new(&mut this.body), cx),
            None => std::pin::Pin::new(&mut this.body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Remove every header whose name `drop` selects: one pass over the head's names, then one
/// hashed removal per name present. Most heads carry none of the names a caller strips, and
/// removing each candidate name by itself hashes it whether it is there or not.
fn remove_headers(headers: &mut http::HeaderMap, drop: impl Fn(&header::HeaderName) -> bool) {
    // No allocation when nothing matches.
    let present: Vec<header::HeaderName> = headers.keys().filter(|n| drop(n)).cloned().collect();
    for name in present {
        headers.remove(name);
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The request's host: `:authority` for HTTP/2, `Host` for HTTP/1.
fn request_host(req: &http::request::Parts) -> String {
    req.uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// One request through the connection manager: checks, filters, router; under the
/// stream's idle clock (`stream_idle_timeout`) when there is one.
async fn handle(
    ctx: Arc<ConnCtx>,
    filters: &FilterChain,
    req: Request<Incoming>,
    head: Option<framing::Head>,
    clock: Option<Arc<stream_idle::StreamClock>>,
) -> Response<Body> {
    let start = Instant::now();
    let shared = &ctx.shared;
    let snap = shared.store.current.load_full();
    let (mut parts, body) = req.into_parts();
    let body = stream_idle::Watched::new(body, clock.clone());
    let grpc = is_grpc(&parts.headers);
    let checked = sanitize::request(&ctx.hcm, &mut parts, head, grpc);
    let host = match &checked {
        Ok(s) => s.authority.clone(),
        Err(_) => request_host(&parts),
    };
    let metrics = Arc::clone(&shared.metrics);
    let (reporter, peer) = if ctx.inbound {
        let mut peer = metrics.peer_from_header(parts.headers.get(PEER_METADATA));
        if let Some(id) = &ctx.peer_identity {
            peer = match ctx.principal_peer.get() {
                Some((base, with)) if Arc::ptr_eq(base, &peer) => Arc::clone(with),
                _ => {
                    let with = crate::metrics::with_principal(&peer, id);
                    let _ = ctx.principal_peer.set((peer, Arc::clone(&with)));
                    with
                }
            };
        }
        parts.headers.remove(PEER_METADATA);
        parts.headers.remove(PEER_METADATA_ID);
        (Reporter::Destination, peer)
    } else {
        (Reporter::Source, metrics.unknown_peer())
    };
    let service = if ctx.inbound {
        metrics.service_for_host(&host)
    } else {
        Arc::new(ServiceId::unknown())
    };
    let request_bytes = Arc::new(AtomicU64::new(0));
    let (method, path) = (parts.method.clone(), parts.uri.path().to_string());
    // A second recorder answers for the request if its stream times out, since the work the
    // timeout cancels owns the first.
    let recorder = || Recorder {
        mtls: ctx.inbound && ctx.peer_identity.is_some(),
        local_principal: false,
        metrics: Arc::clone(&metrics),
        reporter,
        peer: Arc::clone(&peer),
        service: Arc::clone(&service),
        protocol: if grpc { "grpc" } else { "http" },
        code: 0,
        flags: "-",
        start,
        request_bytes: Arc::clone(&request_bytes),
        access_log: shared.access_log,
        method: method.clone(),
        path: path.clone(),
        authority: host.clone(),
        upstream: None,
        cluster: None,
        span: None,
        grpc_messages: grpc.then(Default::default),
    };
    let mut rec = recorder();
    if let Err(refusal) = checked {
        tracing::debug!(peer = %ctx.peer, details = refusal.details, "request refused before routing");
        return refused(rec, grpc, parts.version, refusal);
    }
    let version = parts.version;
    let work = async {
        let local = Some(ctx.dst.ip())
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .unwrap_or(shared.config.instance_ip);
        let policy = forwarded::Policy {
            use_remote_address: ctx.hcm.use_remote_address,
            internal: ctx.hcm.internal_addresses.as_ref(),
        };
        let verdict = forwarded::decide(&mut parts.headers, policy, ctx.peer.ip(), local, ctx.tls);

        // The route is chosen before the filters, which may read its per-route config; the
        // router, last, acts on it.
        let table = router::table(&ctx.hcm, &snap);
        let vhost = table.as_deref().and_then(|t| t.find_host(&host));
        // `require_tls`: Envoy answers a plaintext request with a redirect to https:// before
        // any route is chosen (istiod's `httpsRedirect`).
        if let Some(location) = vhost.and_then(|vh| vh.tls_redirect(ctx.tls, &parts, &host)) {
            let mut resp = local_reply(rec, false, StatusCode::MOVED_PERMANENTLY, "-", "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return resp;
        }
        let metadata = Default::default();
        let selected = vhost.and_then(|vh| router::select(vh, &parts, &metadata));
        let mut on_response = trace::OnResponse::default();
        if let Some(cfg) = ctx.hcm.tracing.as_ref().and_then(|t| t.current()) {
            let start = trace::Start {
                shared,
                cfg: &cfg,
                inbound: ctx.inbound,
                edge: verdict.edge,
                tls: ctx.tls,
                peer: ctx.peer.ip(),
                host: &host,
                route: selected.map(|s| s.route),
            };
            (rec.span, on_response) = trace::start(start, &mut parts);
        }
        let mut filtered = FilterRequest {
            parts: &mut parts,
            host: &host,
            peer: ctx.peer,
            dst: ctx.dst,
            principal: ctx.peer_identity.as_deref(),
            vhost,
            route: selected,
            rec: &mut rec,
            metadata,
        };
        if let FilterOutcome::Reply(reply) = filters.on_request(&mut filtered).await {
            return on_response.apply(reply.send(rec, grpc));
        }
        // The JWT filter may have chosen the route again (`clear_route_cache`).
        let selected = filtered.route;
        let down = router::Downstream {
            parts,
            body,
            rec,
            grpc,
        };
        on_response.apply(router::route(&ctx, &snap, selected, down).await)
    };
    match clock {
        Some(clock) => tokio::select! {
            // The response first when both are ready (and no random draw per poll).
            biased;
            resp = work => resp,
            () = clock.idle() => {
                tracing::debug!(peer = %ctx.peer, "stream idle timeout before the response");
                stream_idle::reply(recorder(), grpc, version, &clock)
            }
        },
        None => work.await,
    }
}

/// A request refused before routing: Envoy's status, its details as the body, and for
/// HTTP/1 the connection closed when the stream can no longer be trusted.
fn refused(rec: Recorder, grpc: bool, version: Version, r: sanitize::Refusal) -> Response<Body> {
    let redirect = r.location.is_some();
    let mut resp = local_reply(
        rec,
        grpc && !redirect,
        r.status,
        "-",
        if redirect { "" } else { r.details },
    );
    if let Some(location) = r.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    if r.close && version != Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
