//! Whether a request comes from inside the mesh, and what that lets it tell the mesh.
//!
//! Envoy's connection manager decides, before the route is chosen, if a request is internal
//! (`mutateRequestHeaders`), and mast-proxy must decide alike: the answer says which
//! `x-envoy-*` control headers survive (an outside client must not set its own retries with
//! `x-envoy-retry-on`, nor force a trace with `x-envoy-force-trace`, nor claim
//! `x-envoy-internal` to dodge `require_tls: EXTERNAL_ONLY`), and whether the request id is
//! replaced. The rules, as Envoy 1.40 has them:
//!
//! - `x-envoy-internal` is always removed, and set to `true` on internal requests.
//! - With `use_remote_address` (istiod's gateways) the peer is the client: it is appended
//!   to `x-forwarded-for` and `x-forwarded-proto` is overwritten. The request is internal
//!   only if it came without `x-forwarded-for` and the peer is an internal address.
//! - Without it (sidecars) the client is the last `x-forwarded-for` address, and the request
//!   is internal only if that header holds exactly that one internal address.
//! - Internal addresses are what the HCM's `internal_address_config` names; without that
//!   config no address is (Envoy 1.36 dropped the old RFC 1918 default). With the config
//!   but no `cidr_ranges`, the RFC 1918 ranges, `fd00::/8` and the loopback address are.
//! - A request that is not internal loses the internal-only `x-envoy-*` headers; one that is
//!   also at the edge (`use_remote_address`) loses the caller-identity ones too and gets
//!   `x-envoy-external-address`.

use std::net::IpAddr;

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::InternalAddressConfig;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::rbac::Cidr;
use crate::resources::{At, FieldResult};

/// Removed from every request that is not internal (Envoy's `cleanInternalHeaders`).
const INTERNAL_ONLY: [&str; 14] = [
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-original-url",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
];

/// Removed, in addition, from requests at the edge: a client must not name the caller.
const EDGE_ONLY: [&str; 3] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The HCM's `internal_address_config`.
#[derive(Debug, Clone, Default)]
pub struct InternalAddresses {
    /// `unix_sockets`: peers on a Unix socket are internal. mast-proxy listens on IP only,
    /// so this is kept for the config's sake.
    pub unix_sockets: bool,
    /// `cidr_ranges`; empty means Envoy's built-in private ranges.
    cidrs: Vec<Cidr>,
}

impl InternalAddresses {
    pub fn from_proto(c: &InternalAddressConfig) -> FieldResult<Self> {
        let cidrs = c
            .cidr_ranges
            .iter()
            .enumerate()
            .map(|(i, r)| Cidr::from_proto(r).at(format!("cidr_ranges[{i}]")))
            .collect::<FieldResult<_>>()?;
        Ok(Self {
            unix_sockets: c.unix_sockets,
            cidrs,
        })
    }

    /// Envoy's `InternalAddressConfig::isInternalAddress` for an IP address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if !self.cidrs.is_empty() {
            return self.cidrs.iter().any(|c| c.contains(ip));
        }
        // Envoy's `Network::Utility::isInternalAddress`: only 127.0.0.1 of the loopback net.
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                o[0] == 10
                    || (o[0] == 192 && o[1] == 168)
                    || (o[0] == 172 && (16..=31).contains(&o[1]))
                    || v4 == std::net::Ipv4Addr::LOCALHOST
            }
            IpAddr::V6(v6) => v6.octets()[0] == 0xfd || v6.is_loopback(),
        }
    }
}

/// The connection manager's settings that the decision reads.
#[derive(Clone, Copy)]
pub(super) struct Policy<'a> {
    pub use_remote_address: bool,
    pub internal: Option<&'a InternalAddresses>,
}

/// What the decision found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    /// From inside the mesh: its `x-envoy-*` headers are trusted.
    pub internal: bool,
    /// From outside, at the mesh's edge (`use_remote_address`): the request id is replaced.
    pub edge: bool,
}

/// Decide whether a request that arrived from `peer` is internal, and rewrite its
/// forwarding and `x-envoy-*` headers as Envoy does. `local` is this proxy's own address,
/// which Envoy writes into `x-forwarded-for` in place of a loopback peer; `tls`: the
/// downstream connection is TLS.
pub(super) fn decide(
    headers: &mut HeaderMap,
    policy: Policy<'_>,
    peer: IpAddr,
    local: IpAddr,
    tls: bool,
) -> Verdict {
    let peer = peer.to_canonical();
    let previous: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let (client, trusted) = if policy.use_remote_address {
        let had_xff = !previous.is_empty() || headers.contains_key(&X_FORWARDED_FOR);
        let hop = if peer.is_loopback() && !local.is_loopback() {
            local
        } else {
            peer
        };
        let kept: Vec<&str> = previous
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        let xff = if kept.is_empty() {
            hop.to_string()
        } else {
            format!("{},{hop}", kept.join(","))
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(&X_FORWARDED_FOR, v);
        }
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        (Some(peer), !had_xff)
    } else if previous.is_empty() {
        (None, false)
    } else {
        // Envoy's `getLastAddressFromXFF` with no trusted hops.
        let xff = previous.join(",");
        let (last, single) = match xff.rfind(',') {
            Some(i) => (&xff[i + 1..], false),
            None => (xff.as_str(), true),
        };
        (
            last.trim()
                .parse::<IpAddr>()
                .ok()
                .map(|ip| ip.to_canonical()),
            single,
        )
    };
    let internal =
        trusted && client.is_some_and(|ip| policy.internal.is_some_and(|cfg| cfg.contains(ip)));
    let edge = !internal && policy.use_remote_address;
    // `x-envoy-internal` always goes (the verdict above never reads it), and unless the
    // request is internal the internal-only names, and at the edge the caller's: one pass
    // over the head's names, a removal only for those present.
    super::remove_headers(headers, |name| {
        let name = name.as_str();
        name.starts_with("x-envoy-")
            && (name == "x-envoy-internal"
                || (!internal
                    && (INTERNAL_ONLY.contains(&name) || (edge && EDGE_ONLY.contains(&name)))))
    });
    if internal {
        headers.insert(&X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    }
    if edge
        && let Some(client) = client
        && let Ok(v) = HeaderValue::from_str(&client.to_string())
    {
        headers.insert(&X_ENVOY_EXTERNAL_ADDRESS, v);
    }
    Verdict { internal, edge }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::CidrRange;

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

    fn control() -> HeaderMap {
        headers(&[
            ("x-envoy-internal", "true"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-force-trace", "true"),
            ("x-envoy-original-url", "/x"),
            ("x-envoy-decorator-operation", "op"),
            ("x-envoy-peer-metadata-id", "kept"),
        ])
    }

    fn mesh(cidr: &str, len: u32) -> InternalAddresses {
        InternalAddresses::from_proto(&InternalAddressConfig {
            unix_sockets: false,
            cidr_ranges: vec![CidrRange {
                address_prefix: cidr.into(),
                prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: len }),
            }],
        })
        .expect("valid")
    }

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn gateway(cfg: Option<&InternalAddresses>) -> Policy<'_> {
        Policy {
            use_remote_address: true,
            internal: cfg,
        }
    }

    fn sidecar(cfg: Option<&InternalAddresses>) -> Policy<'_> {
        Policy {
            use_remote_address: false,
            internal: cfg,
        }
    }

    /// `use_remote_address` without `internal_address_config`: every request is external,
    /// loses the control headers, and says who the client is. Checked against Envoy 1.40.
    #[test]
    fn edge_without_config_is_external() {
        let mut h = control();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let v = decide(&mut h, gateway(None), LOOPBACK, LOCAL, false);
        assert_eq!(
            v,
            Verdict {
                internal: false,
                edge: true
            }
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,192.0.2.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-envoy-external-address"], "127.0.0.1");
        for gone in [
            "x-envoy-internal",
            "x-envoy-retry-on",
            "x-envoy-force-trace",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert!(!h.contains_key("x-envoy-original-url"));
        assert!(!h.contains_key("x-envoy-decorator-operation"));
        assert_eq!(h["x-envoy-peer-metadata-id"], "kept");

        let mut h = HeaderMap::new();
        let client = IpAddr::from([203, 0, 113, 9]);
        decide(&mut h, gateway(None), client, LOCAL, true);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-envoy-external-address"], "203.0.113.9");
    }

    /// A gateway whose config names the peer's network trusts a request that came without
    /// `x-forwarded-for`: it keeps `x-envoy-force-trace` and is marked internal.
    #[test]
    fn edge_trusts_a_configured_peer_without_xff() {
        let cfg = mesh("127.0.0.0", 8);
        let mut h = control();
        let v = decide(&mut h, gateway(Some(&cfg)), LOOPBACK, LOCAL, false);
        assert_eq!(
            v,
            Verdict {
                internal: true,
                edge: false
            }
        );
        assert_eq!(h["x-envoy-internal"], "true");
        assert_eq!(h["x-envoy-force-trace"], "true");
        assert_eq!(h["x-envoy-retry-on"], "5xx");
        assert_eq!(h["x-envoy-decorator-operation"], "op");
        assert!(!h.contains_key("x-envoy-external-address"));
        assert_eq!(h["x-forwarded-for"], "192.0.2.2");

        // With an `x-forwarded-for` from the client, it is not.
        let mut h = control();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let v = decide(&mut h, gateway(Some(&cfg)), LOOPBACK, LOCAL, false);
        assert_eq!(
            v,
            Verdict {
                internal: false,
                edge: true
            }
        );
        assert!(!h.contains_key("x-envoy-force-trace"));

        // Nor is a peer outside the ranges.
        let mut h = control();
        let outside = IpAddr::from([10, 1, 2, 3]);
        let v = decide(&mut h, gateway(Some(&cfg)), outside, LOCAL, false);
        assert!(!v.internal);
        assert!(!h.contains_key("x-envoy-internal"));
    }

    /// A sidecar (no `use_remote_address`) judges by `x-forwarded-for`: none, or more than
    /// one address, is external but not the edge, so the caller-identity headers stay.
    #[test]
    fn sidecar_judges_by_xff() {
        let cfg = mesh("10.0.0.0", 8);
        let mut h = control();
        let v = decide(&mut h, sidecar(Some(&cfg)), LOOPBACK, LOCAL, false);
        assert_eq!(
            v,
            Verdict {
                internal: false,
                edge: false
            }
        );
        assert!(!h.contains_key("x-envoy-force-trace"));
        assert!(!h.contains_key("x-envoy-retry-on"));
        assert!(!h.contains_key("x-envoy-internal"));
        assert_eq!(h["x-envoy-decorator-operation"], "op");
        assert!(!h.contains_key("x-envoy-external-address"));
        assert!(!h.contains_key("x-forwarded-for"));

        let mut h = control();
        h.insert("x-forwarded-for", HeaderValue::from_static(" 10.9.8.7 "));
        let v = decide(&mut h, sidecar(Some(&cfg)), LOOPBACK, LOCAL, false);
        assert_eq!(
            v,
            Verdict {
                internal: true,
                edge: false
            }
        );
        assert_eq!(h["x-envoy-force-trace"], "true");
        assert_eq!(h["x-envoy-internal"], "true");
        assert_eq!(h["x-forwarded-for"], " 10.9.8.7 ");

        for xff in ["1.2.3.4,10.9.8.7", "10.9.8.7, 10.9.8.6", "not-an-ip"] {
            let mut h = control();
            h.insert("x-forwarded-for", HeaderValue::from_static(xff));
            let v = decide(&mut h, sidecar(Some(&cfg)), LOOPBACK, LOCAL, false);
            assert!(!v.internal, "{xff}");
            assert!(!h.contains_key("x-envoy-force-trace"), "{xff}");
        }

        // Without the config nothing is internal.
        let mut h = control();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.9.8.7"));
        assert!(!decide(&mut h, sidecar(None), LOOPBACK, LOCAL, false).internal);
    }

    /// Each of the seventeen names, alone and twice: an edge request loses all of them, a
    /// sidecar's external request the internal-only ones, an internal request none; other
    /// `x-envoy-*` headers and the rest of the head stay whatever the verdict.
    #[test]
    fn each_control_header_goes_by_the_verdict() {
        let cfg = mesh("10.0.0.0", 8);
        let names = INTERNAL_ONLY.iter().chain(EDGE_ONLY.iter());
        for name in names {
            let edge_only = EDGE_ONLY.contains(name);
            // (policy, x-forwarded-for, expected to keep `name`)
            let cases = [
                (gateway(Some(&cfg)), None, false),
                (sidecar(Some(&cfg)), None, edge_only),
                (sidecar(Some(&cfg)), Some("10.9.8.7"), true),
            ];
            for (policy, xff, kept) in cases {
                let mut h = headers(&[
                    ("accept", "*/*"),
                    ("x-envoy-internal", "true"),
                    ("x-envoy-peer-metadata-id", "id"),
                ]);
                let n = http::header::HeaderName::from_static(name);
                h.append(&n, HeaderValue::from_static("1"));
                h.append(&n, HeaderValue::from_static("2"));
                if let Some(xff) = xff {
                    h.insert("x-forwarded-for", HeaderValue::from_static(xff));
                }
                let v = decide(&mut h, policy, LOOPBACK, LOCAL, false);
                let what = format!("{name} {:?} {xff:?}", v);
                assert_eq!(
                    h.get_all(&n).iter().count(),
                    if kept { 2 } else { 0 },
                    "{what}"
                );
                assert_eq!(h["accept"], "*/*", "{what}");
                assert_eq!(h["x-envoy-peer-metadata-id"], "id", "{what}");
                assert_eq!(
                    h.get_all("x-envoy-internal").iter().count(),
                    usize::from(v.internal),
                    "{what}"
                );
            }
        }
    }

    /// A config without `cidr_ranges` falls back to Envoy's private ranges.
    #[test]
    fn empty_ranges_mean_private_addresses() {
        let cfg = InternalAddresses::default();
        for ip in [
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.1",
            "192.168.1.1",
            "127.0.0.1",
        ] {
            assert!(cfg.contains(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "172.32.0.1",
            "127.0.0.2",
            "8.8.8.8",
            "fc00::1",
            "2001:db8::1",
        ] {
            assert!(!cfg.contains(ip.parse().expect("ip")), "{ip}");
        }
        assert!(cfg.contains("fd12::1".parse().expect("ip")));
        assert!(cfg.contains("::1".parse().expect("ip")));
        assert!(cfg.contains("::ffff:10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn bad_range_names_its_field() {
        let err = InternalAddresses::from_proto(&InternalAddressConfig {
            unix_sockets: true,
            cidr_ranges: vec![CidrRange {
                address_prefix: "nope".into(),
                prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 8 }),
            }],
        })
        .expect_err("bad prefix");
        assert!(err.field == "cidr_ranges[0].address_prefix", "{err:?}");
    }
}
