//! What Envoy's codec and connection manager check before a request reaches any filter:
//! framing, header limits, one authority, a normalised path, and which upgrades may pass.
//!
//! Every later step — RBAC, routing, header rewriting, the upstream request — reads the
//! request as it leaves here, so what is authorised and routed is exactly what is forwarded:
//! one authority (the request target's in absolute form, else the single `Host`, else
//! `:authority`), written back as the only `Host`; the canonical path, written back as the
//! request target. A request that cannot be made unambiguous is refused with Envoy's status
//! and, for HTTP/1, its connection closed.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Method, StatusCode, Uri, Version};

use super::framing::{Head, Problem};
use super::path::Normalized;
use crate::resources::listener::HttpManager;

/// A request refused before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// Envoy's response code details (logged; the body of the local reply).
    pub details: &'static str,
    /// Close the connection after answering (HTTP/1: the rest of the stream is suspect).
    pub close: bool,
    /// A redirect's target (`UNESCAPE_AND_REDIRECT`).
    pub location: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, details: &'static str) -> Self {
        Self {
            status,
            details,
            close: false,
            location: None,
        }
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl From<Problem> for Refusal {
    fn from(p: Problem) -> Self {
        Refusal::new(p.status(), p.details()).closing()
    }
}

/// What the router needs from a sanitised request.
#[derive(Debug, PartialEq, Eq)]
pub struct Sanitized {
    /// The one authority: routed, authorised and forwarded.
    pub authority: String,
    /// An allowed WebSocket upgrade (to be tunnelled if the upstream agrees).
    pub upgrade: bool,
}

/// Check and normalise `parts` in place. `head` is the framing guard's verdict for an
/// HTTP/1 request (`None`: the guard has none, which never happens for a well-formed
/// stream); it is ignored for HTTP/2.
pub fn request(
    hcm: &HttpManager,
    parts: &mut Parts,
    head: Option<Head>,
    grpc: bool,
) -> Result<Sanitized, Refusal> {
    let h2 = parts.version == Version::HTTP_2;
    if !h2 {
        match head {
            None => {
                return Err(Refusal::new(StatusCode::BAD_REQUEST, "http1.codec_error").closing());
            }
            Some(h) if !h.matches(parts) => {
                return Err(Refusal::new(StatusCode::BAD_REQUEST, "http1.codec_error").closing());
            }
            Some(h) => {
                if let Some(p) = h.problem {
                    return Err(p.into());
                }
            }
        }
    }
    if parts.version < Version::HTTP_11 {
        if !hcm.accept_http_10 {
            return Err(Refusal::new(StatusCode::UPGRADE_REQUIRED, "http1.codec_error").closing());
        }
        if !parts.headers.contains_key(header::HOST)
            && parts.uri.authority().is_none()
            && let Some(v) = hcm
                .default_host_for_http_10
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    check_limits(hcm, parts)?;
    if nominates_host(parts) {
        // `Connection: Host` would have the authority stripped as hop-by-hop (Envoy: 400).
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid_connection_header").closing());
    }
    let authority = authority(parts, h2)?;
    let upgrade = upgrade(hcm, parts, h2)?;
    if parts.method != Method::CONNECT {
        normalize_path(hcm, parts, grpc)?;
    }
    match HeaderValue::from_str(&authority) {
        Ok(_) if authority.is_empty() => {}
        Ok(v) => {
            parts.headers.remove(header::HOST);
            parts.headers.insert(header::HOST, v);
        }
        Err(_) => return Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid_authority")),
    }
    Ok(Sanitized { authority, upgrade })
}

/// `max_request_headers_kb` and `max_headers_count`, counted as Envoy counts them: the
/// header names and values, the method and the path.
fn check_limits(hcm: &HttpManager, parts: &Parts) -> Result<(), Refusal> {
    let too_large = || {
        let mut r = Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_overflow",
        );
        r.close = parts.version != Version::HTTP_2;
        r
    };
    if parts.headers.len() > hcm.max_headers {
        return Err(too_large());
    }
    let mut size = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len();
        if size > hcm.max_request_headers {
            return Err(too_large());
        }
    }
    if size > hcm.max_request_headers {
        return Err(too_large());
    }
    Ok(())
}

/// The request's one authority. HTTP/1: an absolute-form target's, else the only `Host`
/// (two `Host` lines are refused, as RFC 9112 says a server must). HTTP/2: `:authority`,
/// else a single `host`; a `host` that disagrees with `:authority` is refused.
fn authority(parts: &mut Parts, h2: bool) -> Result<String, Refusal> {
    let bad = |d| Refusal::new(StatusCode::BAD_REQUEST, d);
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(if h2 {
            bad("http2.violation.of.messaging.rule")
        } else {
            bad("http1.codec_error").closing()
        });
    }
    // Authority-form (`GET host:port`, or a target without its leading slash) is CONNECT's
    // alone: Envoy answers 400.
    if parts.uri.authority().is_some() && parts.uri.scheme().is_none() && !h2 {
        return Err(bad("http1.invalid_url").closing());
    }
    let from_target = parts.uri.authority().map(|a| a.as_str().to_string());
    let authority = match (from_target, host) {
        (Some(target), Some(host)) if h2 => {
            if host.as_bytes() != target.as_bytes() {
                return Err(bad("http2.violation.of.messaging.rule"));
            }
            target
        }
        // Absolute form: the target's authority replaces Host, as in Envoy's codec.
        (Some(target), _) => target,
        (None, Some(host)) => match host.to_str() {
            Ok(h) => h.to_string(),
            Err(_) => return Err(bad("invalid_authority")),
        },
        // HTTP/1.0 may come without a Host: routed by the `*` domain, forwarded without.
        (None, None) if parts.version < Version::HTTP_11 => return Ok(String::new()),
        (None, None) => return Err(bad("missing_host_header")),
    };
    if authority.is_empty() || authority.parse::<Authority>().is_err() || authority.contains('@') {
        return Err(bad("invalid_authority"));
    }
    // From here on the target is origin-form: the authority lives in Host alone.
    if parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    Ok(authority)
}

/// Upgrades, as Envoy's connection manager takes them: `h2c` is removed and the request
/// served as HTTP/1.1; a WebSocket upgrade passes when the connection manager allows it;
/// any other upgrade, and CONNECT, is refused with 403.
fn upgrade(hcm: &HttpManager, parts: &mut Parts, h2: bool) -> Result<bool, Refusal> {
    let forbidden = || {
        let mut r = Refusal::new(StatusCode::FORBIDDEN, "upgrade_failed");
        r.close = !h2;
        r
    };
    if parts.method == Method::CONNECT {
        return Err(forbidden());
    }
    if h2 {
        // HTTP/2 has no Upgrade (RFC 9113 §8.2.2); extended CONNECT is not offered.
        parts.headers.remove(header::UPGRADE);
        return Ok(false);
    }
    let Some(value) = parts.headers.get(header::UPGRADE) else {
        return Ok(false);
    };
    let value = value.as_bytes().trim_ascii();
    if value.eq_ignore_ascii_case(b"h2c")
        && parts.headers.get_all(header::UPGRADE).iter().count() == 1
    {
        parts.headers.remove(header::UPGRADE);
        parts.headers.remove("http2-settings");
        remove_connection_tokens(parts, &["upgrade", "http2-settings"]);
        return Ok(false);
    }
    if hcm.websocket && value.eq_ignore_ascii_case(b"websocket") {
        // After a 101 the connection is a tunnel: a body sent with the upgrade would be
        // read once as the request's body and again as tunnel bytes, or lost (Envoy streams
        // the head and never answers). Refused.
        let has_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
            || parts
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            let mut r = Refusal::new(StatusCode::BAD_REQUEST, "upgrade_with_body");
            r.close = true;
            return Err(r);
        }
        return Ok(true);
    }
    Err(forbidden())
}

/// Whether a `Connection` header names `Host` among the hop-by-hop headers.
fn nominates_host(parts: &Parts) -> bool {
    parts.headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"host"))
    })
}

/// Drop `tokens` from the `Connection` header (and the header when nothing is left).
fn remove_connection_tokens(parts: &mut Parts, tokens: &[&str]) {
    let Some(v) = parts
        .headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let kept: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !tokens.iter().any(|x| t.eq_ignore_ascii_case(x)))
        .collect();
    if kept.is_empty() {
        parts.headers.remove(header::CONNECTION);
    } else if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        parts.headers.insert(header::CONNECTION, v);
    }
}

fn normalize_path(hcm: &HttpManager, parts: &mut Parts, grpc: bool) -> Result<(), Refusal> {
    let Some(pq) = parts.uri.path_and_query() else {
        return Ok(());
    };
    // `OPTIONS *` has no path to normalise.
    if pq.as_str() == "*" {
        return Ok(());
    }
    let bad = || Refusal::new(StatusCode::BAD_REQUEST, "path_normalization_failed");
    let path = match hcm.path.apply(pq.as_str()) {
        Normalized::Path(p) if p == pq.as_str() => return Ok(()),
        Normalized::Path(p) => p,
        // Envoy turns the redirect into a refusal for gRPC, which cannot follow it.
        Normalized::Redirect(_) if grpc => return Err(bad()),
        Normalized::Redirect(p) => {
            let mut r = Refusal::new(
                StatusCode::TEMPORARY_REDIRECT,
                "path_normalization_redirect",
            );
            r.location = Some(p);
            return Err(r);
        }
        Normalized::Reject => return Err(bad()),
    };
    let pq: PathAndQuery = path.parse().map_err(|_| bad())?;
    parts.uri = Uri::from(pq);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::framing::Scanner;
    use super::super::path::{EscapedSlashes, PathNormalization};
    use super::*;
    use crate::resources::listener::{Codec, RouteSource};

    fn hcm(path: PathNormalization, websocket: bool) -> HttpManager {
        HttpManager {
            stat_prefix: "t".into(),
            routes: RouteSource::Rds("r".into()),
            codec: Codec::Auto,
            websocket,
            stream_idle_timeout: None,
            idle_timeout: None,
            request_headers_timeout: None,
            jwt: None,
            rbac: Vec::new(),
            network_rbac: Vec::new(),
            path,
            max_request_headers: 60 * 1024,
            max_headers: 100,
            accept_http_10: false,
            default_host_for_http_10: None,
            use_remote_address: false,
            internal_addresses: None,
            tracing: None,
        }
    }

    fn istio() -> HttpManager {
        hcm(
            PathNormalization {
                normalize: true,
                ..Default::default()
            },
            true,
        )
    }

    /// Parse `raw` (one HTTP/1 head) as hyper would, with the guard's verdict.
    fn h1(raw: &str) -> (Parts, Option<Head>) {
        // hyper's own limit on the number of headers is tested end to end.
        let mut scanner = Scanner::new(false, 96 * 1024, 128);
        scanner.feed(raw.as_bytes());
        let head = scanner.verdicts().next();
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut slots);
        req.parse(raw.as_bytes()).unwrap();
        let mut b = http::Request::builder()
            .method(req.method.unwrap())
            .uri(req.path.unwrap())
            .version(if req.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            });
        for h in req.headers.iter() {
            b = b.header(h.name, h.value);
        }
        (b.body(()).unwrap().into_parts().0, head)
    }

    fn run(hcm: &HttpManager, raw: &str) -> Result<(Sanitized, Parts), Refusal> {
        let (mut parts, head) = h1(raw);
        request(hcm, &mut parts, head, false).map(|s| (s, parts))
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        let (s, parts) = run(
            &istio(),
            "GET http://ledger.default:8080/abs?x=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        )
        .unwrap();
        assert_eq!(s.authority, "ledger.default:8080");
        assert_eq!(parts.uri, "/abs?x=1");
        let hosts: Vec<_> = parts.headers.get_all(header::HOST).iter().collect();
        assert_eq!(hosts, ["ledger.default:8080"]);
    }

    #[test]
    fn host_must_be_one_and_valid() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            "GET admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Host\r\n\r\n",
        ] {
            let r = run(&istio(), raw).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{raw:?}");
        }
    }

    #[test]
    fn h2_host_must_agree_with_authority() {
        let req = |host: Option<&str>| {
            let mut b = http::Request::builder()
                .uri("http://ledger:80/x")
                .version(Version::HTTP_2);
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            b.body(()).unwrap().into_parts().0
        };
        let mut p = req(Some("evil.example"));
        assert!(request(&istio(), &mut p, None, false).is_err());
        let mut p = req(Some("ledger:80"));
        let s = request(&istio(), &mut p, None, false).unwrap();
        assert_eq!(s.authority, "ledger:80");
        let mut p = req(None);
        assert_eq!(
            request(&istio(), &mut p, None, false).unwrap().authority,
            "ledger:80"
        );
        assert_eq!(p.headers.get(header::HOST).unwrap(), "ledger:80");
        assert_eq!(p.uri, "/x");
    }

    #[test]
    fn paths_are_normalised_before_anything_reads_them() {
        let (_, parts) = run(
            &istio(),
            "GET /public/%2e%2e/admin?q=/../ HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .unwrap();
        assert_eq!(parts.uri, "/admin?q=/../");
        let r = run(&istio(), "GET /a/%00 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let redirect = hcm(
            PathNormalization {
                normalize: true,
                merge_slashes: true,
                escaped_slashes: EscapedSlashes::Redirect,
            },
            true,
        );
        let r = run(&redirect, "GET /a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err();
        assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.location.as_deref(), Some("/a/b"));
    }

    #[test]
    fn upgrades_as_envoy() {
        let (s, parts) = run(
            &istio(),
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        )
        .unwrap();
        assert!(!s.upgrade);
        assert!(parts.headers.get(header::UPGRADE).is_none());
        assert!(parts.headers.get("http2-settings").is_none());
        assert!(parts.headers.get(header::CONNECTION).is_none());
        let ws = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(run(&istio(), ws).unwrap().0.upgrade);
        let off = hcm(PathNormalization::default(), false);
        assert_eq!(run(&off, ws).unwrap_err().status, StatusCode::FORBIDDEN);
        let foo = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n";
        assert_eq!(
            run(&istio(), foo).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn a_websocket_upgrade_with_a_body_is_refused() {
        let hcm = hcm(PathNormalization::default(), true);
        let ws = "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n";
        let ok = run(&hcm, &format!("{ws}\r\n")).expect("plain upgrade");
        assert!(ok.0.upgrade);
        let ok = run(&hcm, &format!("{ws}Content-Length: 0\r\n\r\n")).expect("empty body");
        assert!(ok.0.upgrade);
        for extra in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
            let Err(r) = run(&hcm, &format!("{ws}{extra}\r\n")) else {
                panic!("{extra} passed");
            };
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{extra}");
            assert!(r.close, "{extra}");
        }
    }

    #[test]
    fn limits_as_envoy() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(61 * 1024)
        );
        let r = run(&istio(), &big).unwrap_err();
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..100 {
            many.push_str(&format!("X-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        let r = run(&istio(), &many).unwrap_err();
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn http_10_as_envoy() {
        let raw = "GET / HTTP/1.0\r\n\r\n";
        let r = run(&istio(), raw).unwrap_err();
        assert_eq!((r.status, r.close), (StatusCode::UPGRADE_REQUIRED, true));
        let mut accepting = istio();
        accepting.accept_http_10 = true;
        assert_eq!(run(&accepting, raw).unwrap().0.authority, "");
        accepting.default_host_for_http_10 = Some("web".into());
        let (s, parts) = run(&accepting, raw).unwrap();
        assert_eq!(s.authority, "web");
        assert_eq!(parts.headers.get(header::HOST).unwrap(), "web");
    }

    #[test]
    fn framing_problems_and_missing_verdicts_close_the_connection() {
        let r = run(
            &istio(),
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap_err();
        assert_eq!((r.status, r.close), (StatusCode::BAD_REQUEST, true));
        let (mut parts, _) = h1("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = request(&istio(), &mut parts, None, false).unwrap_err();
        assert!(r.close);
    }
}
