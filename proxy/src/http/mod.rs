//! The HTTP connection manager and router: HTTP/1.1 and HTTP/2 from the client, routed by
//! the current route table to a cluster, with Envoy's router semantics — retries, timeouts,
//! fault injection, mirroring, header changes, redirects, rewrites and upgrades.
//!
//! Each request reads the config snapshot once, so an xDS update never changes a request
//! midway, and kept-alive connections simply pick up the new routes on their next request.
//! Local replies use Envoy's status codes, bodies and response flags (`NR`, `UH`, `UF`,
//! `UO`, `UT`, `FI`, `DI`, `RBAC`), so operators read them the same way.

mod body;
mod framing;
mod path;
mod recorder;
mod sanitize;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use crate::metrics::{PEER_METADATA, PEER_METADATA_ID, Reporter, ServiceId};
use crate::resources::chance;
use crate::resources::listener::{Codec, HttpManager, RouteSource};
use crate::resources::route::{Abort, Action, Forward, Route, VirtualHost};
use crate::shared::Shared;
use crate::upstream::{ActiveGuard, Body, BoxError, Cluster, LimitGuard, Outcome};

pub use body::{Counted, Metered};
pub use path::{EscapedSlashes, PathNormalization};
pub use recorder::Recorder;

/// Bodies up to this size are buffered so the request can be retried or mirrored.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;

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
    /// The client's SPIFFE ID when the connection is mTLS.
    pub peer_identity: Option<Arc<str>>,
    /// The client's metrics identity with its principal, built once per connection:
    /// (as the metadata exchange names it, with the principal added).
    pub principal_peer: std::sync::OnceLock<(Arc<crate::metrics::Peer>, Arc<crate::metrics::Peer>)>,
}

/// Serve HTTP on one accepted connection until it closes, stays idle past the connection
/// manager's `idle_timeout`, or the proxy drains.
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
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
    let svc_ctx = Arc::clone(&ctx);
    let svc_activity = Arc::clone(&activity);
    // HTTP/1 heads are read a second time, from the raw bytes (see `framing`).
    let scanner = match hcm.codec {
        Codec::Http2 => framing::Scanner::off(),
        codec => framing::Scanner::new(codec == Codec::Auto, max_buf, hcm.max_headers),
    };
    let verdicts = scanner.verdicts();
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = Arc::clone(&svc_ctx);
        let stream = InFlight::new(Arc::clone(&svc_activity));
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
        async move {
            let mut resp = handle(ctx, req, head).await;
            if ends_reading && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked {
                body,
                _stream: stream,
            }))
        }
    });
    let io = framing::Guarded::new(stream, scanner);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle_timeout = ctx.hcm.idle_timeout;
    loop {
        // Without an idle timeout the branch below is off; the instant is never reached.
        let check = tokio::time::Instant::from_std(activity.quiet_since())
            + idle_timeout.unwrap_or(Duration::from_secs(86_400));
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %ctx.peer, error = %e, "downstream connection error");
                }
                return;
            }
            _ = ctx.shared.drained() => break,
            _ = tokio::time::sleep_until(check), if idle_timeout.is_some() => {
                if idle_timeout.is_some_and(|t| activity.idle_for(t)) {
                    tracing::debug!(peer = %ctx.peer, "downstream connection idle; closing");
                    break;
                }
            }
        }
    }
    // Close what is idle now; requests in flight finish first (HTTP/2 gets a GOAWAY).
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A downstream connection's streams, for the idle timeout: how many are open, and when the
/// last one ended.
struct Activity {
    start: Instant,
    open: AtomicU64,
    /// Milliseconds after `start` when the count last fell to zero.
    quiet_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            open: AtomicU64::new(0),
            quiet_ms: AtomicU64::new(0),
        }
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

/// A response body that keeps its stream counted as open until it is done.
struct Tracked {
    body: Body,
    _stream: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
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

/// Envoy's mapping of a local reply's HTTP status to a gRPC status.
fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// A reply from the proxy itself, recorded at once.
fn local_reply(
    mut rec: Recorder,
    grpc: bool,
    status: StatusCode,
    flags: &'static str,
    text: &'static str,
) -> Response<Body> {
    rec.code = status.as_u16();
    rec.flags = flags;
    let mut resp = if grpc {
        // Trailers-only gRPC response, as Envoy sends for gRPC requests.
        let code = grpc_status_for(status);
        let mut r = Response::new(empty());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from(code));
        if let Ok(v) = HeaderValue::from_str(text) {
            r.headers_mut().insert("grpc-message", v);
        }
        rec.code = 200;
        rec.finish(Some(code), 0, false);
        r
    } else {
        let len = text.len() as u64;
        let mut r = Response::new(full(text));
        *r.status_mut() = status;
        if !text.is_empty() {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        rec.finish(None, len, false);
        r
    };
    if !grpc {
        *resp.status_mut() = status;
    }
    resp
}

async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
    head: Option<framing::Head>,
) -> Response<Body> {
    let start = Instant::now();
    let shared = &ctx.shared;
    let snap = shared.store.current.load_full();
    let (mut parts, body) = req.into_parts();
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
    let rec = Recorder {
        mtls: ctx.inbound && ctx.peer_identity.is_some(),
        local_principal: false,
        metrics,
        reporter,
        peer,
        service,
        protocol: if grpc { "grpc" } else { "http" },
        code: 0,
        flags: "-",
        start,
        request_bytes: Arc::new(AtomicU64::new(0)),
        access_log: shared.access_log,
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        authority: host.clone(),
        upstream: None,
        cluster: None,
    };
    if let Err(refusal) = checked {
        tracing::debug!(peer = %ctx.peer, details = refusal.details, "request refused before routing");
        return refused(rec, grpc, parts.version, refusal);
    }

    // RBAC filters run before the router, as in the filter chain Envoy builds.
    if !ctx.hcm.rbac.is_empty() {
        let attrs = crate::rbac::Attrs {
            headers: Some(&parts.headers),
            method: Some(parts.method.as_str()),
            path: Some(parts.uri.path()),
            full_path: parts.uri.path_and_query().map(|p| p.as_str()),
            authority: Some(&host),
            source: ctx.peer,
            remote_ip: ctx.peer.ip(),
            destination: ctx.dst,
            principal: ctx.peer_identity.as_deref(),
            sni: None,
        };
        if let crate::rbac::Decision::Deny { policy } = crate::rbac::check(&ctx.hcm.rbac, &attrs) {
            let policy = policy.as_deref().unwrap_or("none");
            tracing::debug!(peer = %ctx.peer, policy, "RBAC: request denied");
            return local_reply(
                rec,
                grpc,
                StatusCode::FORBIDDEN,
                "RBAC",
                "RBAC: access denied",
            );
        }
    }

    let table = match &ctx.hcm.routes {
        RouteSource::Rds(name) => snap.routes.get(name).cloned(),
        RouteSource::Inline(t) => Some(Arc::clone(t)),
    };
    let Some(table) = table else {
        return local_reply(rec, grpc, StatusCode::NOT_FOUND, "NR", "");
    };
    let Some(vhost) = table.find_host(&host) else {
        return local_reply(rec, grpc, StatusCode::NOT_FOUND, "NR", "");
    };
    let Some(route) = vhost.find_route(&parts) else {
        return local_reply(rec, grpc, StatusCode::NOT_FOUND, "NR", "");
    };

    let mut rec = rec;
    if let Some(fault) = route.fault.as_ref().or(vhost.fault.as_ref()) {
        if let Some((delay, ppm)) = fault.delay
            && chance(ppm)
        {
            tokio::time::sleep(delay).await;
            rec.flags = "DI";
        }
        if let Some((abort, ppm)) = fault.abort
            && chance(ppm)
        {
            return match abort {
                Abort::Http(status) => local_reply(rec, false, status, "FI", "fault filter abort"),
                Abort::Grpc(code) => {
                    let mut r = Response::new(empty());
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    r.headers_mut()
                        .insert("grpc-status", HeaderValue::from(code));
                    rec.code = 200;
                    rec.flags = "FI";
                    rec.finish(Some(code), 0, false);
                    r
                }
            };
        }
    }

    match &route.action {
        Action::Redirect(r) => {
            let location = r.location(&route.matcher, &parts, "http");
            let mut resp = local_reply(rec, false, r.status, "-", "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Action::Direct { status, body } => {
            rec.code = status.as_u16();
            rec.finish(None, body.len() as u64, false);
            let mut resp = Response::new(full(body.clone()));
            *resp.status_mut() = *status;
            apply_response_ops(vhost, route, resp.headers_mut());
            resp
        }
        Action::Forward(fwd) => {
            let fwd = Arc::clone(fwd);
            forward(&ctx, &snap, vhost, route, &fwd, parts, body, rec, grpc).await
        }
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

fn apply_response_ops(vhost: &VirtualHost, route: &Route, headers: &mut http::HeaderMap) {
    route.headers.apply_response(headers);
    vhost.headers.apply_response(headers);
}

/// Hop-by-hop headers, which never cross a proxy.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    if let Some(named) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
    {
        for name in named.split(',').map(str::trim) {
            if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(n);
            }
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for h in &HOP_BY_HOP {
        if keep_upgrade && (*h == header::CONNECTION || *h == header::UPGRADE) {
            continue;
        }
        headers.remove(h);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove("http2-settings");
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn request_id() -> HeaderValue {
    let n: u128 = rand::random();
    let s = format!("{n:032x}");
    let id = format!(
        "{}-{}-4{}-a{}-{}",
        &s[0..8],
        &s[8..12],
        &s[13..16],
        &s[17..20],
        &s[20..32]
    );
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

enum AttemptError {
    Timeout,
    Overflow,
    ConnectFailure,
    Reset,
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: &ConnCtx,
    snap: &crate::state::Snapshot,
    vhost: &VirtualHost,
    route: &Route,
    fwd: &Forward,
    mut parts: http::request::Parts,
    body: Incoming,
    mut rec: Recorder,
    grpc: bool,
) -> Response<Body> {
    let cluster_name = fwd.pick_cluster();
    rec.cluster = Some(cluster_name.to_string());
    let Some(cluster) = snap.clusters.get(cluster_name).cloned() else {
        return local_reply(rec, grpc, StatusCode::SERVICE_UNAVAILABLE, "NC", "");
    };
    if !ctx.inbound {
        rec.service = Arc::clone(&cluster.service);
    }
    let limits = cluster.config.limits;
    let Some(_rq) = LimitGuard::try_new(&cluster.active_requests, limits.max_requests) else {
        cluster
            .stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        return local_reply(
            rec,
            grpc,
            StatusCode::SERVICE_UNAVAILABLE,
            "UO",
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        );
    };

    let downstream_h2 = parts.version == Version::HTTP_2;
    let upgrade = !downstream_h2 && parts.headers.contains_key(header::UPGRADE);
    let on_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let h2 = cluster.uses_http2(downstream_h2) && !upgrade;

    // The upstream request's head.
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let path = match fwd.rewrite_path(&route.matcher, parts.uri.path()) {
        Some(p) => match parts.uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        },
        None => path,
    };
    let host_header = request_host(&parts);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if !parts.headers.contains_key("x-forwarded-proto") {
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if !parts.headers.contains_key("x-request-id") {
        parts.headers.insert("x-request-id", request_id());
    }
    if let Some(h) = &fwd.host_rewrite {
        parts.headers.insert(header::HOST, h.clone());
    } else if !parts.headers.contains_key(header::HOST)
        && let Ok(h) = HeaderValue::from_str(&host_header)
    {
        parts.headers.insert(header::HOST, h);
    }
    vhost.headers.apply_request(&mut parts.headers);
    route.headers.apply_request(&mut parts.headers);
    let metrics = &ctx.shared.metrics;
    if ctx.inbound {
        parts.headers.remove(PEER_METADATA);
        parts.headers.remove(PEER_METADATA_ID);
    } else {
        parts
            .headers
            .insert(PEER_METADATA, metrics.mx_header.clone());
        parts
            .headers
            .insert(PEER_METADATA_ID, metrics.mx_id.clone());
    }
    let hash_key: Option<Vec<u8>> = fwd
        .hash_header
        .as_ref()
        .and_then(|h| parts.headers.get(h))
        .map(|v| v.as_bytes().to_vec());

    // The body: buffered when small enough to replay for retries and mirrors.
    let retry = fwd.retry.clone().or_else(|| vhost.retry.clone());
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let replayable = http_body::Body::is_end_stream(&body)
        || content_length.is_some_and(|n| n <= MAX_BUFFERED_BODY);
    let wants_buffer = !upgrade && replayable && (retry.is_some() || !fwd.mirrors.is_empty());
    let mut buffered: Option<Bytes> = None;
    let mut streaming: Option<Incoming> = None;
    if wants_buffer {
        match body.collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                rec.request_bytes
                    .store(bytes.len() as u64, Ordering::Relaxed);
                buffered = Some(bytes);
            }
            Err(_) => {
                return local_reply(rec, grpc, StatusCode::BAD_REQUEST, "DC", "");
            }
        }
    } else {
        streaming = Some(body);
    }

    for mirror in &fwd.mirrors {
        if let (Some(b), true) = (&buffered, chance(mirror.ppm))
            && let Some(mc) = snap.clusters.get(&mirror.cluster).cloned()
        {
            let mut mparts = clone_parts(&parts);
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{}-shadow",
                crate::resources::route::strip_port(&host_header)
            )) {
                mparts.headers.insert(header::HOST, v);
            }
            let body = b.clone();
            let path = path.clone();
            let secrets = Arc::clone(&ctx.shared.secrets);
            tokio::spawn(async move {
                if let Ok(host) = mc.pick(None, &[]) {
                    let Ok(uri) =
                        format!("{}://{}{}", host.scheme(), host.authority(), path).parse::<Uri>()
                    else {
                        return;
                    };
                    mparts.uri = uri;
                    let h2 = mc.uses_http2(mparts.version == Version::HTTP_2);
                    if !h2 {
                        mparts.version = Version::HTTP_11;
                    }
                    let req = Request::from_parts(mparts, full(body));
                    if let Ok(resp) = mc.client(h2, &secrets).request(req).await {
                        let _ = resp.into_body().collect().await;
                    }
                }
            });
        }
    }

    let max_attempts = match (&retry, &buffered) {
        (Some(r), Some(_)) => 1 + r.num_retries,
        _ => 1,
    };
    let deadline = fwd
        .timeout
        .map(|t| tokio::time::Instant::from_std(rec.start) + t);
    let mut tried = Vec::new();
    let mut attempt = 0u32;
    let mut retried = false;
    loop {
        attempt += 1;
        // A passthrough (ORIGINAL_DST) dials the destination capture restored; without one
        // it has nowhere to go — its own listener would be the only candidate — and, as any
        // cluster without a host, answers "no healthy upstream".
        let picked = cluster.pick(hash_key.as_deref(), &tried);
        let (host, scheme, authority) = match (picked, ctx.original_dst) {
            (Ok(h), _) => {
                let (scheme, authority) = (h.scheme(), h.authority());
                (Some(h), scheme, authority)
            }
            (Err(_), Some(dst)) if cluster.is_original_dst() => (None, "http", dst.to_string()),
            (Err(_), _) => {
                return local_reply(
                    rec,
                    grpc,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UH",
                    "no healthy upstream",
                );
            }
        };
        rec.upstream = Some(authority.clone());
        let Ok(uri) = format!("{scheme}://{authority}{path}").parse::<Uri>() else {
            return local_reply(rec, grpc, StatusCode::BAD_REQUEST, "-", "bad request path");
        };
        let mut up_parts = clone_parts(&parts);
        up_parts.uri = uri;
        up_parts.version = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let up_body = match (&buffered, streaming.take()) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => Counted::new(s, Arc::clone(&rec.request_bytes)).boxed_unsync(),
            (None, None) => empty(),
        };
        let mut up_req = Request::from_parts(up_parts, up_body);
        if h2 {
            up_req.headers_mut().remove(header::HOST);
        }
        let guard = host.clone().map(ActiveGuard::new);
        cluster
            .stats
            .upstream_rq_total
            .fetch_add(1, Ordering::Relaxed);
        // Envoy's max_requests_per_connection (DestinationRule maxRequestsPerConnection):
        // the connection is retired from the pool once it has carried that many.
        let captured = cluster
            .config
            .max_requests_per_connection
            .filter(|n| *n > 0)
            .map(|n| (n, capture_connection(&mut up_req)));
        let send = cluster.client(h2, &ctx.shared.secrets).request(up_req);
        let per_try = retry.as_ref().and_then(|r| r.per_try_timeout);
        let now = tokio::time::Instant::now();
        let limit = match (per_try.map(|p| now + p), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match limit {
            Some(at) => match tokio::time::timeout_at(at, send).await {
                Ok(r) => r.map_err(classify),
                Err(_) => Err(AttemptError::Timeout),
            },
            None => send.await.map_err(classify),
        };
        drop(guard);
        let can_retry = |cluster: &Cluster| {
            attempt < max_attempts
                && deadline.is_none_or(|d| tokio::time::Instant::now() < d)
                && cluster.active_retries.load(Ordering::Relaxed) < limits.max_retries
        };
        match result {
            Ok(resp) => {
                if let Some((max, cap)) = &captured
                    && let Some(count) = resp.extensions().get::<crate::upstream::ConnRequests>()
                    && count.0.fetch_add(1, Ordering::Relaxed) + 1 >= *max
                    && let Some(conn) = cap.connection_metadata().as_ref()
                {
                    conn.poison();
                }
                let status = resp.status().as_u16();
                let grpc_status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok());
                if let Some(h) = &host {
                    cluster.record(
                        h,
                        if status >= 500 {
                            Outcome::Server5xx(status)
                        } else {
                            Outcome::Success
                        },
                    );
                }
                let again = retry
                    .as_ref()
                    .is_some_and(|r| r.retries_status(status, grpc_status));
                if again && can_retry(&cluster) {
                    if let Some(h) = &host {
                        tried.push(h.addr.clone());
                    }
                    retried = true;
                    backoff(&cluster, retry.as_deref(), attempt).await;
                    continue;
                }
                if again && retried {
                    rec.flags = "URX";
                }
                // The client hears its own protocol version, whatever the upstream spoke
                // (an HTTP/1.0 app's answer goes to an HTTP/1.1 client as HTTP/1.1).
                let mut resp = resp;
                *resp.version_mut() = parts.version;
                return respond(ctx, vhost, route, resp, rec, on_upgrade, grpc_status);
            }
            Err(err) => {
                if let Some(h) = &host {
                    cluster.record(h, Outcome::Gateway);
                    if matches!(err, AttemptError::ConnectFailure) {
                        h.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let (status, flags, text) = match err {
                    AttemptError::Overflow => {
                        cluster
                            .stats
                            .upstream_rq_pending_overflow
                            .fetch_add(1, Ordering::Relaxed);
                        return local_reply(
                            rec,
                            grpc,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "UO",
                            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                        );
                    }
                    AttemptError::Timeout => {
                        cluster
                            .stats
                            .upstream_rq_timeout
                            .fetch_add(1, Ordering::Relaxed);
                        let whole = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                        if !whole && can_retry(&cluster) {
                            if let Some(h) = &host {
                                tried.push(h.addr.clone());
                            }
                            retried = true;
                            backoff(&cluster, retry.as_deref(), attempt).await;
                            continue;
                        }
                        (
                            StatusCode::GATEWAY_TIMEOUT,
                            "UT",
                            "upstream request timeout",
                        )
                    }
                    AttemptError::ConnectFailure => {
                        cluster
                            .stats
                            .upstream_cx_connect_fail
                            .fetch_add(1, Ordering::Relaxed);
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "UF",
                            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                        )
                    }
                    AttemptError::Reset => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "UC",
                        "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    ),
                };
                let retryable = retry.as_ref().is_some_and(|r| r.retries_connect_failure());
                if retryable && can_retry(&cluster) {
                    if let Some(h) = &host {
                        tried.push(h.addr.clone());
                    }
                    retried = true;
                    backoff(&cluster, retry.as_deref(), attempt).await;
                    continue;
                }
                let flags = if retried && flags != "UT" {
                    "URX"
                } else {
                    flags
                };
                return local_reply(rec, grpc, status, flags, text);
            }
        }
    }
}

async fn backoff(
    cluster: &Cluster,
    retry: Option<&crate::resources::route::RetryPolicy>,
    attempt: u32,
) {
    cluster
        .stats
        .upstream_rq_retry
        .fetch_add(1, Ordering::Relaxed);
    let Some(_g) = LimitGuard::try_new(&cluster.active_retries, u32::MAX) else {
        return;
    };
    if let Some(r) = retry {
        tokio::time::sleep(r.backoff(attempt - 1)).await;
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> AttemptError {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(ce) = s.downcast_ref::<crate::upstream::ConnectError>() {
            return match ce {
                crate::upstream::ConnectError::Overflow => AttemptError::Overflow,
                crate::upstream::ConnectError::Timeout => AttemptError::ConnectFailure,
                _ => AttemptError::ConnectFailure,
            };
        }
        source = s.source();
    }
    if e.is_connect() {
        AttemptError::ConnectFailure
    } else {
        AttemptError::Reset
    }
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

/// The upstream's response on its way back: header changes, metadata exchange, upgrades,
/// and metering of the body.
fn respond(
    ctx: &ConnCtx,
    vhost: &VirtualHost,
    route: &Route,
    mut resp: Response<Incoming>,
    mut rec: Recorder,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    grpc_status: Option<u32>,
) -> Response<Body> {
    let upstream_upgrade = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        Some(hyper::upgrade::on(&mut resp))
    } else {
        None
    };
    let (mut parts, body) = resp.into_parts();
    let metrics = &ctx.shared.metrics;
    if ctx.inbound {
        parts
            .headers
            .insert(PEER_METADATA, metrics.mx_header.clone());
        parts
            .headers
            .insert(PEER_METADATA_ID, metrics.mx_id.clone());
    } else {
        rec.peer = metrics.peer_from_header(parts.headers.get(PEER_METADATA));
        if let Some(peer) = parts.extensions.get::<crate::upstream::UpstreamIdentity>() {
            rec.peer = crate::metrics::with_principal(&rec.peer, &peer.0);
            rec.local_principal = true;
        }
        parts.headers.remove(PEER_METADATA);
        parts.headers.remove(PEER_METADATA_ID);
    }
    rec.code = parts.status.as_u16();
    let switching = upstream_upgrade.is_some();
    strip_hop_by_hop(&mut parts.headers, switching);
    apply_response_ops(vhost, route, &mut parts.headers);
    if let (Some(up), Some(down)) = (upstream_upgrade, on_upgrade) {
        tokio::spawn(async move {
            if let (Ok(up), Ok(down)) = (up.await, down.await) {
                let mut up = TokioIo::new(up);
                let mut down = TokioIo::new(down);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
        });
        rec.finish(None, 0, false);
        return Response::from_parts(parts, empty());
    }
    let body: Body = Metered::new(body, rec, grpc_status).boxed_unsync();
    Response::from_parts(parts, body)
}

/// Unused-error helper so `BoxError` stays the one error type of bodies.
#[allow(dead_code)]
fn box_err<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}
