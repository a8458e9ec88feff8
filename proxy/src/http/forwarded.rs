//! What the edge of the mesh tells the app about its client (`use_remote_address`).
//!
//! A gateway is where requests enter the mesh, so it is the one hop that knows who the client
//! is. With `use_remote_address: true` (istiod's setting for gateways) Envoy appends the
//! peer's address to `x-forwarded-for`, overwrites `x-forwarded-proto` with the scheme of the
//! downstream connection, and treats the request as external: it says the client's address
//! in `x-envoy-external-address` and drops the `x-envoy-*` control headers a client could
//! otherwise use to steer the mesh (`x-envoy-internal` would spare it `require_tls:
//! EXTERNAL_ONLY`, `x-envoy-retry-on` would set its retries). This runs before the route is
//! chosen, as in Envoy. Sidecars (`use_remote_address: false`, pilot's setting) leave all of
//! these as they came.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::HeaderValue;

/// The request headers Envoy reserves for itself and removes from external requests.
const INTERNAL_ONLY: [&str; 17] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
];

/// Rewrite the forwarding headers of a request that arrived from `peer` on an edge
/// connection (`tls`: over TLS). `local` is this proxy's own address, which Envoy writes into
/// `x-forwarded-for` in place of a loopback peer.
pub(super) fn at_the_edge(headers: &mut HeaderMap, peer: IpAddr, local: IpAddr, tls: bool) {
    let peer = peer.to_canonical();
    let hop = if peer.is_loopback() && !local.is_loopback() {
        local
    } else {
        peer
    };
    let previous: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let xff = if previous.is_empty() {
        hop.to_string()
    } else {
        format!("{},{hop}", previous.join(","))
    };
    for name in INTERNAL_ONLY {
        headers.remove(name);
    }
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_str(&peer.to_string()) {
        headers.insert("x-envoy-external-address", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    /// What Envoy 1.3x does with `use_remote_address: true` and its default (empty)
    /// internal-address config, checked against a real Envoy.
    #[test]
    fn as_envoy_at_the_edge() {
        let mut h = headers(&[
            ("x-envoy-internal", "true"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-peer-metadata-id", "kept"),
        ]);
        let (loopback, local) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([192, 0, 2, 2]));
        at_the_edge(&mut h, loopback, local, false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,192.0.2.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-envoy-external-address"], "127.0.0.1");
        assert!(!h.contains_key("x-envoy-internal"));
        assert!(!h.contains_key("x-envoy-retry-on"));
        assert_eq!(h["x-envoy-peer-metadata-id"], "kept");

        let mut h = HeaderMap::new();
        let client = IpAddr::from([203, 0, 113, 9]);
        at_the_edge(&mut h, client, local, true);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-envoy-external-address"], "203.0.113.9");
    }
}
