//! A digest of the xDS resources a proxy holds, so that two proxies' configs can be compared
//! without shipping them: per type, the sorted (name, SHA-256 of the resource's bytes as
//! received) pairs, and one digest over all types.
//!
//! The admin's `/debug/xds_digest` serves it (see [`crate::admin`]), and pilot-load computes
//! the same digest for the simulated proxy that shares a real proxy's identity, with these
//! same functions, to check that real and simulated proxies end up with the same bytes.
//! SHA-256 (ring, already linked for TLS) rather than a fast hash because the digest is a
//! claim that two configs are equal; each resource is hashed once, when it arrives, and the
//! per-type digest is recomputed only when asked after a change.

use std::fmt::Write as _;

use mast_proto::TypeUrl;
use ring::digest::{Context, SHA256};

/// SHA-256 of one resource's bytes (the `value` of its `Any`).
pub type Hash = [u8; 32];

/// One type's part of a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDigest {
    pub type_url: TypeUrl,
    pub count: usize,
    pub digest: Hash,
}

/// The hash of a resource's bytes as received.
pub fn resource_hash(value: &[u8]) -> Hash {
    finish(ring::digest::digest(&SHA256, value))
}

/// The digest of one type's resources, given in name order (as a `BTreeMap` yields them):
/// SHA-256 over `name NUL hash` for each.
pub fn type_digest<'a>(items: impl IntoIterator<Item = (&'a str, &'a Hash)>) -> Hash {
    let mut ctx = Context::new(&SHA256);
    for (name, hash) in items {
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(hash);
    }
    finish(ctx.finish())
}

/// The digest over all types: SHA-256 over `type_url NUL count NUL digest` for each type that
/// holds something, in [`TypeUrl`] order. An empty type counts as absent, so that a proxy that
/// never subscribed to a type and one that holds none of it agree.
pub fn overall(types: &[TypeDigest]) -> Hash {
    let mut sorted: Vec<&TypeDigest> = types.iter().filter(|t| t.count > 0).collect();
    sorted.sort_by_key(|t| t.type_url);
    let mut ctx = Context::new(&SHA256);
    for t in sorted {
        ctx.update(t.type_url.url().as_bytes());
        ctx.update(&[0]);
        ctx.update(t.count.to_string().as_bytes());
        ctx.update(&[0]);
        ctx.update(&t.digest);
    }
    finish(ctx.finish())
}

/// Lower-case hex, as the admin prints a hash.
pub fn hex(hash: &Hash) -> String {
    let mut s = String::with_capacity(64);
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn finish(d: ring::digest::Digest) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_changes_with_any_byte_or_name_and_ignores_empty_types() {
        let a = resource_hash(b"cluster a");
        let b = resource_hash(b"cluster b");
        assert_ne!(a, b);
        assert_eq!(
            hex(&resource_hash(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "plain SHA-256"
        );
        let one = type_digest([("a", &a), ("b", &b)]);
        assert_ne!(one, type_digest([("a", &a), ("c", &b)]), "a name");
        assert_ne!(one, type_digest([("a", &a), ("b", &a)]), "a resource");
        // The separator keeps ("ab", h) apart from ("a", "b…").
        assert_ne!(type_digest([("ab", &a)]), type_digest([("a", &a)]));

        let clusters = TypeDigest {
            type_url: TypeUrl::Cluster,
            count: 2,
            digest: one,
        };
        let no_routes = TypeDigest {
            type_url: TypeUrl::Route,
            count: 0,
            digest: type_digest([]),
        };
        assert_eq!(
            overall(std::slice::from_ref(&clusters)),
            overall(&[no_routes, clusters.clone()])
        );
        let routes = TypeDigest {
            type_url: TypeUrl::Route,
            count: 1,
            digest: type_digest([("80", &a)]),
        };
        assert_eq!(
            overall(&[clusters.clone(), routes.clone()]),
            overall(&[routes.clone(), clusters.clone()]),
            "order of the types given does not matter"
        );
        assert_ne!(
            overall(std::slice::from_ref(&clusters)),
            overall(&[clusters, routes])
        );
    }
}
