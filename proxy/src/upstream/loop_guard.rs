//! The proxy never connects to itself.
//!
//! A request whose upstream is one of this process's own listening sockets would be accepted
//! by that listener and proxied again — to the same place, and again, until the process runs
//! out of file descriptors. That is what a passthrough to an "original destination" does
//! when the destination is the proxy's own address (a sidecar without iptables capture, or a
//! client that dials the capture port directly), and what a misconfigured endpoint can do.
//! Istio guards some of these paths with blackhole filter chains; the guard here holds for
//! every path and every interception mode, and looks only at the address dialled — never at
//! the request.
//!
//! Every socket the proxy listens on is registered here, and every dial is checked first: an
//! address that is one of them (or a wildcard listener's port on an address of this host)
//! is refused as a connection failure.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{LazyLock, RwLock};

static LISTENING: LazyLock<RwLock<HashSet<SocketAddr>>> = LazyLock::new(RwLock::default);

/// `addr` is one of ours from now on (its real port, after binding port 0).
pub fn listening(addr: SocketAddr) {
    match LISTENING.write() {
        Ok(mut set) => set.insert(addr),
        Err(p) => p.into_inner().insert(addr),
    };
}

/// `addr` no longer accepts connections.
pub fn closed(addr: SocketAddr) {
    match LISTENING.write() {
        Ok(mut set) => set.remove(&addr),
        Err(p) => p.into_inner().remove(&addr),
    };
}

/// Whether dialling `target` would reach one of this process's listeners.
pub fn is_own(target: SocketAddr) -> bool {
    let ip = canonical(target.ip());
    let wildcard = {
        let set = match LISTENING.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let mut wildcard = false;
        for l in set.iter().filter(|l| l.port() == target.port()) {
            let lip = canonical(l.ip());
            if lip == ip {
                return true;
            }
            // `[::]` also accepts IPv4 (dual stack); `0.0.0.0` only IPv4.
            wildcard |= lip.is_unspecified() && (lip.is_ipv6() || ip.is_ipv4());
        }
        wildcard
    };
    // A wildcard listener on this port accepts on every address of this host.
    wildcard && (ip.is_loopback() || ip.is_unspecified() || is_local(ip))
}

/// IPv4-mapped IPv6 addresses are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is an address of this host: the kernel lets a socket bind only to those.
fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listeners_are_recognised_by_address_and_by_wildcard_port() {
        // Ports no test binds: this registry is process-wide.
        let exact: SocketAddr = "127.0.0.77:41001".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:41002".parse().unwrap();
        listening(exact);
        listening(any);
        assert!(is_own(exact));
        assert!(is_own("[::ffff:127.0.0.77]:41001".parse().unwrap()));
        assert!(!is_own("127.0.0.78:41001".parse().unwrap()));
        assert!(is_own("127.0.0.1:41002".parse().unwrap()));
        assert!(is_own("127.9.9.9:41002".parse().unwrap()));
        assert!(is_own("0.0.0.0:41002".parse().unwrap()));
        // TEST-NET-3 is on no interface here.
        assert!(!is_own("203.0.113.9:41002".parse().unwrap()));
        assert!(!is_own("127.0.0.1:41003".parse().unwrap()));
        closed(exact);
        closed(any);
        assert!(!is_own(exact));
        assert!(!is_own("127.0.0.1:41002".parse().unwrap()));
    }
}
