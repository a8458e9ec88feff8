//! The headers an app must copy from the request it serves onto the requests it makes, so the
//! sidecars can join the calls into one trace. Istio asks every app to do this
//! ("Trace context propagation" in its distributed-tracing docs): the sidecar starts or
//! continues a span per hop, but only the app knows which inbound request caused an outbound one.
//!
//! `end-user` is not a trace header but the header the demo's header-match route
//! (`end-user: jason` → v2) keys on; it has to travel from myapp to user the same way.

use hyper::HeaderMap;

/// Propagated by exact name: Envoy's request id, W3C Trace Context, B3 single-header form,
/// and the demo's routing header.
const EXACT: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "end-user",
];
/// B3 multi-header form: `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`,
/// `x-b3-flags`.
const PREFIX: &str = "x-b3-";

/// The headers of `headers` to copy onto outbound calls.
pub fn propagated(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| is_propagated(name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Header names are already lower case in a [`HeaderMap`].
fn is_propagated(name: &str) -> bool {
    EXACT.contains(&name) || name.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderValue, USER_AGENT};

    #[test]
    fn keeps_trace_headers_only() {
        let mut h = HeaderMap::new();
        for name in [
            "x-request-id",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "traceparent",
            "tracestate",
            "end-user",
        ] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        h.insert(USER_AGENT, HeaderValue::from_static("curl"));
        h.insert("cookie", HeaderValue::from_static("secret"));
        let p = propagated(&h);
        assert_eq!(p.len(), 8);
        assert!(p.get(USER_AGENT).is_none() && p.get("cookie").is_none());
    }
}
