//! The upstream request: the request head as the upstream sees it, one attempt to send it,
//! and the upstream's response on its way back.
//!
//! Envoy's router rewrites the head once (hop-by-hop headers dropped, `x-forwarded-proto` and
//! `x-request-id` filled in, the route's host and path rewrites, the VirtualService header
//! operations, Istio's metadata exchange) and hands a copy to each attempt, its
//! `UpstreamRequest`. An attempt picks a host (avoiding those already tried), sends within
//! its time limit, and reports what happened — the response, or why there is none — for the
//! retry state to judge. Keeping it apart from the retry loop means an attempt knows nothing
//! of policy, and the retry state nothing of connections.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, Entry, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::rt::TokioIo;

use super::recorder::Recorder;
use super::reply::{LocalReply, empty};
use super::retry::RequestBody;
use super::router::Routed;
use super::{ConnCtx, Metered, remove_headers, request_host};
use crate::metrics::{
    PEER_METADATA_ID_NAME as PEER_METADATA_ID, PEER_METADATA_NAME as PEER_METADATA,
};
use crate::resources::cluster::HostAddr;
use crate::resources::route::{Forward, Route, VirtualHost};
use crate::upstream::{ActiveGuard, Body, Cluster, Host, Outcome};

/// The upstream request's head, rewritten once; each attempt and mirror sends a copy.
pub(super) struct Head {
    pub parts: Parts,
    /// Path and query, after the route's rewrite.
    pub path: String,
    /// `path` parsed once for every attempt's URI, when it is one an absolute URI can end
    /// with (empty, or starting `/`, `?` or `#`); otherwise each attempt parses the whole URI.
    path_and_query: Option<PathAndQuery>,
    /// The downstream's host, before any rewrite (mirrors derive their host from it).
    pub host: String,
    /// The consistent-hash key, from the route's hash header.
    pub hash_key: Option<Vec<u8>>,
}

/// One route's attempts at one cluster.
pub(super) struct UpstreamRequest<'a> {
    pub conn: &'a ConnCtx,
    pub cluster: &'a Cluster,
    pub head: &'a Head,
    /// Speak HTTP/2 to the upstream.
    pub h2: bool,
}

/// What one attempt got.
pub(super) struct Attempt {
    /// The host tried; `None` for a passthrough to the original destination.
    pub host: Option<Arc<Host>>,
    pub result: Result<Response<Incoming>, AttemptError>,
}

/// Why an attempt got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttemptError {
    /// The per-try or the route's timeout passed.
    Timeout,
    /// The cluster's connection or pending-request limit was reached.
    Overflow,
    ConnectFailure,
    /// The connection closed or reset before the response head.
    Reset,
    /// The response's framing is ambiguous (`Content-Length` beside `Transfer-Encoding`, a
    /// length on a 204 or on a 1xx): answering it would trust one reading of bytes another
    /// hop may read differently (Envoy: 502, `UPE`).
    Protocol,
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

/// Header names the router writes on every request, validated once.
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

// === impl Head ===

impl Head {
    /// Rewrite the downstream head for the upstream.
    pub fn new(req: &Routed<'_>, fwd: &Forward, mut parts: Parts, upgrade: bool) -> Self {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let path = match fwd.rewrite_path(&req.route.matcher, parts.uri.path()) {
            Some(p) => match parts.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            },
            None => path,
        };
        let host = request_host(&parts);
        strip_hop_by_hop(&mut parts.headers, upgrade);
        // Each written only when absent: one hashed lookup (an entry) for the test and the
        // write.
        if let Entry::Vacant(e) = parts.headers.entry(&X_FORWARDED_PROTO) {
            e.insert(HeaderValue::from_static("http"));
        }
        if let Entry::Vacant(e) = parts.headers.entry(&X_REQUEST_ID) {
            e.insert(request_id());
        }
        if let Some(h) = &fwd.host_rewrite {
            parts.headers.insert(header::HOST, h.clone());
        } else if let Entry::Vacant(e) = parts.headers.entry(header::HOST)
            && let Ok(h) = HeaderValue::from_str(&host)
        {
            e.insert(h);
        }
        req.vhost.headers.apply_request(&mut parts.headers);
        req.route.headers.apply_request(&mut parts.headers);
        let metrics = &req.conn.shared.metrics;
        if req.conn.inbound {
            parts.headers.remove(&PEER_METADATA);
            parts.headers.remove(&PEER_METADATA_ID);
        } else {
            parts
                .headers
                .insert(&PEER_METADATA, metrics.mx_header.clone());
            parts
                .headers
                .insert(&PEER_METADATA_ID, metrics.mx_id.clone());
        }
        let hash_key = fwd
            .hash_header
            .as_ref()
            .and_then(|h| parts.headers.get(h))
            .map(|v| v.as_bytes().to_vec());
        let path_and_query = parse_path(&path);
        Self {
            parts,
            path,
            path_and_query,
            host,
            hash_key,
        }
    }
}

// === impl UpstreamRequest ===

impl UpstreamRequest<'_> {
    /// One attempt: pick a host not in `tried`, send, and wait for the response head until
    /// `deadline`. The host's and the cluster's stats see the outcome. A reply instead of an
    /// attempt when there is no host to try or no URI to send.
    pub async fn send(
        &self,
        tried: &[HostAddr],
        body: &mut RequestBody,
        deadline: Option<tokio::time::Instant>,
        rec: &mut Recorder,
    ) -> Result<Attempt, LocalReply> {
        let cluster = self.cluster;
        // A passthrough (ORIGINAL_DST) dials the destination capture restored; without one
        // it has nowhere to go — its own listener would be the only candidate — and, as any
        // cluster without a host, answers "no healthy upstream".
        let picked = cluster.pick(self.head.hash_key.as_deref(), tried);
        let (host, scheme, authority, parsed) = match (picked, self.conn.original_dst) {
            (Ok(h), _) => {
                let scheme = h.scheme();
                let (authority, parsed) = match h.uri_authority() {
                    Some(a) => (a.as_str().to_string(), Some(a.clone())),
                    None => (h.authority(), None),
                };
                (Some(h), scheme, authority, parsed)
            }
            (Err(_), Some(dst)) if cluster.is_original_dst() => {
                (None, "http", dst.to_string(), None)
            }
            (Err(_), _) => {
                return Err(LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UH",
                    "no healthy upstream",
                ));
            }
        };
        let uri = attempt_uri(
            scheme,
            &authority,
            parsed,
            self.head.path_and_query.as_ref(),
            &self.head.path,
        );
        rec.upstream = Some(authority);
        // The picked endpoint's `istio.workload` metadata names the server until (unless) its
        // metadata exchange header comes back, as Istio's client sidecar falls back to it.
        if !self.conn.inbound {
            rec.peer = host
                .as_ref()
                .and_then(|h| h.peer.clone())
                .unwrap_or_else(|| self.conn.shared.metrics.unknown_peer());
        }
        let Some(uri) = uri else {
            return Err(LocalReply::new(
                StatusCode::BAD_REQUEST,
                "-",
                "bad request path",
            ));
        };
        let mut parts = clone_parts(&self.head.parts);
        parts.uri = uri;
        parts.version = if self.h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let mut up_req = Request::from_parts(parts, body.for_attempt(rec));
        if self.h2 {
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
        // Envoy's auto_sni names the host the request goes upstream with (after a rewrite).
        let sni_host = self
            .head
            .parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.head.parts.uri.authority().map(|a| a.as_str()))
            .map(crate::resources::route::strip_port);
        // A 1xx with a length or a transfer coding (hyper skips 1xx heads) marks the exchange
        // as badly framed: what follows it cannot be trusted to be the response.
        let bad_interim = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !self.h2 {
            let flag = Arc::clone(&bad_interim);
            hyper::ext::on_informational(&mut up_req, move |r| {
                if !response_framing_ok(r.status(), r.headers()) {
                    flag.store(true, Ordering::Relaxed);
                }
            });
        }
        let shared = &self.conn.shared;
        let send = cluster
            .client(self.h2, &shared.secrets, &shared.sds, sni_host)
            .request(up_req);
        let result = match deadline {
            Some(at) => match tokio::time::timeout_at(at, send).await {
                Ok(r) => r.map_err(classify),
                Err(_) => Err(AttemptError::Timeout),
            },
            None => send.await.map_err(classify),
        };
        drop(guard);
        // Dropping the unread body closes the upstream connection: it is not pooled again.
        let result = result.and_then(|resp| {
            if bad_interim.load(Ordering::Relaxed)
                || !response_framing_ok(resp.status(), resp.headers())
            {
                tracing::debug!(status = %resp.status(), "upstream response with ambiguous framing (UPE)");
                Err(AttemptError::Protocol)
            } else {
                Ok(resp)
            }
        });
        match &result {
            Ok(resp) => {
                if let Some((max, cap)) = &captured
                    && let Some(count) = resp.extensions().get::<crate::upstream::ConnRequests>()
                    && count.0.fetch_add(1, Ordering::Relaxed) + 1 >= *max
                    && let Some(conn) = cap.connection_metadata().as_ref()
                {
                    conn.poison();
                }
                if let Some(h) = &host {
                    let status = resp.status().as_u16();
                    cluster.record(
                        h,
                        if status >= 500 {
                            Outcome::Server5xx(status)
                        } else {
                            Outcome::Success
                        },
                    );
                }
            }
            Err(err) => {
                if let Some(h) = &host {
                    cluster.record(h, Outcome::Gateway);
                    if *err == AttemptError::ConnectFailure {
                        h.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let stat = match err {
                    AttemptError::Overflow => Some(&cluster.stats.upstream_rq_pending_overflow),
                    AttemptError::Timeout => Some(&cluster.stats.upstream_rq_timeout),
                    AttemptError::ConnectFailure => Some(&cluster.stats.upstream_cx_connect_fail),
                    AttemptError::Reset | AttemptError::Protocol => None,
                };
                if let Some(stat) = stat {
                    stat.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Attempt { host, result })
    }
}

// === impl AttemptError ===

impl AttemptError {
    /// Envoy's local reply when this ends the request.
    pub fn reply(self) -> LocalReply {
        let (status, flags, text) = match self {
            Self::Overflow => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UO",
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ),
            Self::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "UT",
                "upstream request timeout",
            ),
            Self::ConnectFailure => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UF",
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            Self::Reset => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UC",
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            ),
            Self::Protocol => (
                StatusCode::BAD_GATEWAY,
                "UPE",
                "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
            ),
        };
        LocalReply::new(status, flags, text)
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> AttemptError {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(ce) = s.downcast_ref::<crate::upstream::ConnectError>() {
            return match ce {
                crate::upstream::ConnectError::Overflow => AttemptError::Overflow,
                crate::upstream::ConnectError::Tls(reason) => {
                    // Envoy names the transport failure in its 503; the log says it here.
                    tracing::warn!(%reason, "upstream connect error: TLS handshake failed (UF)");
                    AttemptError::ConnectFailure
                }
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

/// Whether an HTTP/1 response head frames its body one way only: never `Content-Length`
/// beside `Transfer-Encoding` (RFC 9112 §6.3 calls it smuggling), and no length or coding
/// on a status that has no body (1xx, 204) unless the length is 0.
fn response_framing_ok(status: StatusCode, headers: &http::HeaderMap) -> bool {
    let te = headers.contains_key(header::TRANSFER_ENCODING);
    let cl = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if te && cl > 0 {
        return false;
    }
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        let zero = headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0");
        return !te && zero;
    }
    true
}

/// A copy of a request head, without its extensions (they hold the downstream's upgrade).
pub(super) fn clone_parts(p: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

/// The upstream's response on its way back: header changes, metadata exchange, upgrades,
/// and metering of the body.
pub(super) fn respond(
    req: &Routed<'_>,
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
    let metrics = &req.conn.shared.metrics;
    if req.conn.inbound {
        parts
            .headers
            .insert(&PEER_METADATA, metrics.mx_header.clone());
        parts
            .headers
            .insert(&PEER_METADATA_ID, metrics.mx_id.clone());
    } else {
        // The metadata exchange's headers are taken off the response; most responses (from
        // outside the mesh) have neither, and one pass over the names says so.
        let exchanged = parts
            .headers
            .keys()
            .any(|n| n == PEER_METADATA || n == PEER_METADATA_ID);
        if exchanged {
            if let Some(mx) = parts.headers.remove(&PEER_METADATA) {
                rec.peer = metrics.peer_from_header(Some(&mx));
            }
            parts.headers.remove(&PEER_METADATA_ID);
        }
        if let Some(peer) = parts.extensions.get::<crate::upstream::UpstreamIdentity>() {
            rec.peer = metrics.peer_with_principal(&rec.peer, &peer.0);
            rec.local_principal = true;
        }
    }
    rec.code = parts.status.as_u16();
    let switching = upstream_upgrade.is_some();
    strip_hop_by_hop(&mut parts.headers, switching);
    apply_response_ops(req.vhost, req.route, &mut parts.headers);
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

/// The route's, then the virtual host's, response header operations.
pub(super) fn apply_response_ops(
    vhost: &VirtualHost,
    route: &Route,
    headers: &mut http::HeaderMap,
) {
    route.headers.apply_response(headers);
    vhost.headers.apply_response(headers);
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    // Most heads carry none of them: one pass over the names then, instead of a hashed
    // lookup per name; it also says which of them need looking at.
    let (mut any, mut te, mut connection) = (false, false, false);
    for n in headers.keys().filter(|n| is_hop_by_hop(n)) {
        any = true;
        te |= n == header::TE;
        connection |= n == header::CONNECTION;
    }
    if !any {
        return;
    }
    // The names `Connection` lists go too (but an upgrade's own when it is kept). Those the
    // pass below removes anyway (`Connection: keep-alive`) need no lookup of their own. The
    // value is a cheap clone (shared bytes), so the head can change while it is read.
    let mut te_listed = false;
    if let Some(listed) = connection
        .then(|| headers.get(header::CONNECTION).cloned())
        .flatten()
        && let Ok(listed) = listed.to_str()
    {
        for name in listed.split(',').map(str::trim) {
            if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            te_listed |= name.eq_ignore_ascii_case("te");
            let removed_below = HOP_BY_HOP_NAMES
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
                && !(keep_upgrade && name.eq_ignore_ascii_case("connection"));
            if !removed_below && let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(n);
            }
        }
    }
    // `te: trailers` is kept unless `Connection` names it.
    let te_trailers = te
        && !te_listed
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    remove_headers(headers, |h| {
        is_hop_by_hop(h) && !(keep_upgrade && (h == header::CONNECTION || h == header::UPGRADE))
    });
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A path an absolute URI can end with (empty, or starting `/`, `?` or `#`), parsed.
fn parse_path(path: &str) -> Option<PathAndQuery> {
    if path.is_empty() || path.starts_with(['/', '?', '#']) {
        PathAndQuery::try_from(path).ok()
    } else {
        None
    }
}

/// [`HOP_BY_HOP`] and the three [`is_hop_by_hop`] adds, as a `Connection` header lists them.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "http2-settings",
];

/// A header [`strip_hop_by_hop`] drops (or, `te: trailers` and an upgrade's, may keep).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "http2-settings"
        )
}

/// An attempt's absolute URI: from the host's authority and the head's path as parsed
/// before when both are, else by parsing `scheme://authority path` (the same URI).
fn attempt_uri(
    scheme: &'static str,
    authority: &str,
    parsed: Option<http::uri::Authority>,
    path_and_query: Option<&PathAndQuery>,
    path: &str,
) -> Option<Uri> {
    match (parsed, path_and_query) {
        (Some(authority), Some(path)) => {
            let mut p = http::uri::Parts::default();
            p.scheme = Some(if scheme == "https" {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            });
            p.authority = Some(authority);
            p.path_and_query = Some(path.clone());
            Uri::from_parts(p).ok()
        }
        _ => format!("{scheme}://{authority}{path}").parse().ok(),
    }
}

/// A random UUID (version 4) for `x-request-id`.
fn request_id() -> HeaderValue {
    // A UUID v4 as Envoy writes it: 32 random hex digits in 8-4-4-4-12 groups, the version
    // nibble 4 and the variant nibble a; written in place rather than through `format!`.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut out = [b'-'; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        let digit = match nibble {
            12 => 4,
            16 => 0xa,
            _ => (n >> (124 - 4 * nibble)) as usize & 0xf,
        };
        *slot = HEX[digit];
        nibble += 1;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut upgrade = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get("keep-alive").is_none());
        // `te: trailers` is the one hop-by-hop value gRPC needs end to end.
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-kept"], "1");
        strip_hop_by_hop(&mut upgrade, true);
        assert_eq!(upgrade[header::UPGRADE], "websocket");
        assert!(upgrade.get(header::CONNECTION).is_some());
        assert!(upgrade.get("x-secret").is_none());
    }

    /// `Connection` lists names as tokens: any case, spaces around, empty ones; a listed
    /// `te` goes even as `te: trailers`; a name that only starts like a listed one stays.
    #[test]
    fn connection_names_are_tokens() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive , X-Secret,,te "),
        );
        h.append("x-secret", HeaderValue::from_static("1"));
        h.append("x-secret", HeaderValue::from_static("2"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-secretive", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-secretive"], "kept");

        let mut h = http::HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("UPGRADE, x-a"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "UPGRADE, x-a");

        // An upgrade keeps its `Connection` header, unless the header lists itself.
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("upgrade, Connection"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_dropped() {
        // The names a `Connection` header may list are exactly those `is_hop_by_hop` drops.
        for name in &HOP_BY_HOP {
            assert!(HOP_BY_HOP_NAMES.contains(&name.as_str()), "{name}");
        }
        assert_eq!(HOP_BY_HOP_NAMES.len(), HOP_BY_HOP.len() + 3);
        for name in HOP_BY_HOP_NAMES {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
            let mut h = http::HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("gzip"),
            );
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name}");
            assert_eq!(h.len(), 1, "{name}");
        }
        let mut h = http::HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn attempt_uris_are_the_parsed_uri() {
        let paths = [
            "/",
            "",
            "/a/b?c=d&e",
            "?q",
            "/p#frag",
            "/%41?x=%20",
            "*",
            "foo",
            "//x",
            "/ a",
        ];
        for scheme in ["http", "https"] {
            for authority in ["10.1.2.3:8080", "[::1]:80", "user.shop.svc:80"] {
                let parsed = http::uri::Authority::try_from(authority).ok();
                for path in paths {
                    let pq = parse_path(path);
                    let whole = format!("{scheme}://{authority}{path}").parse::<Uri>().ok();
                    let built = attempt_uri(scheme, authority, parsed.clone(), pq.as_ref(), path);
                    assert_eq!(
                        built.as_ref().map(ToString::to_string),
                        whole.as_ref().map(ToString::to_string),
                        "{scheme} {authority} {path:?}"
                    );
                    assert_eq!(built, whole, "{scheme} {authority} {path:?}");
                }
            }
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        let id = id.to_str().unwrap();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4");
        assert_eq!(&id[19..20], "a");
        assert!(
            id.bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        assert_ne!(id, request_id().to_str().unwrap());
    }

    #[test]
    fn ambiguous_response_framing_is_a_protocol_error() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let ok = StatusCode::OK;
        assert!(response_framing_ok(ok, &h(&[("content-length", "5")])));
        assert!(response_framing_ok(
            ok,
            &h(&[("transfer-encoding", "chunked")])
        ));
        assert!(!response_framing_ok(
            ok,
            &h(&[("content-length", "5"), ("transfer-encoding", "chunked")])
        ));
        let none = StatusCode::NO_CONTENT;
        assert!(response_framing_ok(none, &h(&[])));
        assert!(response_framing_ok(none, &h(&[("content-length", "0")])));
        assert!(!response_framing_ok(none, &h(&[("content-length", "8")])));
        assert!(!response_framing_ok(
            none,
            &h(&[("transfer-encoding", "chunked")])
        ));
        let cont = StatusCode::CONTINUE;
        assert!(response_framing_ok(cont, &h(&[])));
        assert!(!response_framing_ok(cont, &h(&[("content-length", "40")])));
        let r = AttemptError::Protocol.reply();
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn timeouts_answer_504_and_other_failures_503() {
        assert_eq!(
            AttemptError::Timeout.reply().status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(AttemptError::Timeout.reply().flags, "UT");
        assert_eq!(AttemptError::Overflow.reply().flags, "UO");
        assert_eq!(AttemptError::ConnectFailure.reply().flags, "UF");
        assert_eq!(AttemptError::Reset.reply().flags, "UC");
        assert_eq!(
            AttemptError::Reset.reply().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
