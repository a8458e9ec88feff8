//! Load-balancing choices over the hosts that may take a request.
//!
//! Least-request is Envoy's (and Istio's default): two random hosts, the one with fewer
//! active requests wins — nearly as good as a full scan and O(1). Ring hash is done by
//! rendezvous hashing: as consistent (a host leaving moves only its own keys) without a
//! ring to rebuild on every EDS update.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Host;

pub fn round_robin<'a>(hosts: &[&'a Arc<Host>], next: &AtomicUsize) -> &'a Arc<Host> {
    let i = next.fetch_add(1, Ordering::Relaxed) % hosts.len();
    hosts[i]
}

pub fn random<'a>(hosts: &[&'a Arc<Host>]) -> &'a Arc<Host> {
    hosts[rand::random_range(0..hosts.len())]
}

pub fn least_request<'a>(hosts: &[&'a Arc<Host>]) -> &'a Arc<Host> {
    if hosts.len() == 1 {
        return hosts[0];
    }
    let a = rand::random_range(0..hosts.len());
    let mut b = rand::random_range(0..hosts.len() - 1);
    if b >= a {
        b += 1;
    }
    let (ha, hb) = (hosts[a], hosts[b]);
    if hb.active.load(Ordering::Relaxed) < ha.active.load(Ordering::Relaxed) {
        hb
    } else {
        ha
    }
}

pub fn consistent<'a>(hosts: &[&'a Arc<Host>], key: &[u8]) -> &'a Arc<Host> {
    let score = |h: &Host| {
        let mut s = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut s);
        h.addr.hash(&mut s);
        s.finish()
    };
    hosts
        .iter()
        .copied()
        .max_by_key(|h| score(h))
        .unwrap_or(hosts[0])
}
