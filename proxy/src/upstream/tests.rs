use super::*;
use crate::resources::cluster::{Limits, OutlierConfig};

fn cluster(lb: LbPolicy, hosts: usize, outlier: Option<OutlierConfig>) -> Cluster {
    let specs = (0..hosts)
        .map(|i| HostSpec {
            socket_match: Default::default(),
            workload: None,
            addr: HostAddr::Ip(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16))),
            weight: 1,
            healthy: true,
        })
        .collect();
    Cluster::new(Arc::new(ClusterConfig {
        transport: Default::default(),
        name: "outbound|80||user.default.svc.cluster.local".into(),
        discovery: Discovery::Static,
        lb,
        connect_timeout: Duration::from_secs(1),
        limits: Limits::default(),
        outlier,
        protocol: UpstreamProtocol::Http1,
        idle_timeout: None,
        max_requests_per_connection: None,
        panic_threshold: 0.0,
        inline_hosts: Some(specs),
        bind: None,
        services: Vec::new(),
    }))
}

#[test]
fn round_robin_visits_every_host() {
    let c = cluster(LbPolicy::RoundRobin, 3, None);
    let mut seen: Vec<String> = (0..6)
        .map(|_| c.pick(None, &[]).unwrap().addr.to_string())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
}

#[test]
fn least_request_prefers_idle_hosts() {
    let c = cluster(LbPolicy::LeastRequest, 2, None);
    let busy = c.hosts()[0].clone();
    busy.active.store(100, Ordering::Relaxed);
    for _ in 0..50 {
        assert_ne!(c.pick(None, &[]).unwrap().addr, busy.addr);
    }
}

#[test]
fn ring_hash_is_sticky_and_retries_avoid_previous_hosts() {
    let c = cluster(LbPolicy::RingHash, 5, None);
    let a = c.pick(Some(b"user-42"), &[]).unwrap().addr.clone();
    for _ in 0..20 {
        assert_eq!(c.pick(Some(b"user-42"), &[]).unwrap().addr, a);
    }
    let other = c.pick(Some(b"user-42"), std::slice::from_ref(&a)).unwrap();
    assert_ne!(other.addr, a);
}

#[test]
fn consecutive_errors_eject_within_budget() {
    let outlier = OutlierConfig {
        consecutive_5xx: Some(3),
        consecutive_gateway: None,
        interval: Duration::from_secs(1),
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        max_ejection_percent: 50,
    };
    let c = cluster(LbPolicy::RoundRobin, 2, Some(outlier));
    let hosts = c.hosts();
    let (h0, h1) = (&hosts[0], &hosts[1]);
    c.record(h0, Outcome::Server5xx(500));
    c.record(h0, Outcome::Success);
    c.record(h0, Outcome::Gateway);
    c.record(h0, Outcome::Server5xx(503));
    assert!(!h0.is_ejected(Instant::now()), "a success resets the count");
    c.record(h0, Outcome::Gateway);
    assert!(h0.is_ejected(Instant::now()));
    for _ in 0..10 {
        assert_eq!(c.pick(None, &[]).unwrap().addr, h1.addr);
    }
    // 50% of 2 hosts: the second may not go too.
    for _ in 0..5 {
        c.record(h1, Outcome::Gateway);
    }
    assert!(!h1.is_ejected(Instant::now()));
    assert_eq!(c.stats.outlier_ejections.load(Ordering::Relaxed), 1);
}

#[test]
fn no_healthy_upstream_without_panic_mode() {
    let outlier = OutlierConfig {
        consecutive_5xx: Some(1),
        consecutive_gateway: None,
        interval: Duration::from_secs(1),
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        max_ejection_percent: 100,
    };
    let c = cluster(LbPolicy::Random, 1, Some(outlier));
    let h = c.hosts()[0].clone();
    c.record(&h, Outcome::Gateway);
    assert_eq!(c.pick(None, &[]).err(), Some(PickError::NoHealthyUpstream));
}

#[test]
fn endpoint_updates_keep_host_state() {
    let c = cluster(LbPolicy::RoundRobin, 2, None);
    let h0 = c.hosts()[0].clone();
    h0.rq_total.store(7, Ordering::Relaxed);
    let mut specs: Vec<HostSpec> = c
        .hosts()
        .iter()
        .map(|h| HostSpec {
            socket_match: Default::default(),
            workload: None,
            addr: h.addr.clone(),
            weight: 1,
            healthy: true,
        })
        .collect();
    specs.push(HostSpec {
        socket_match: Default::default(),
        workload: None,
        addr: HostAddr::Ip(SocketAddr::from(([127, 0, 0, 1], 9100))),
        weight: 1,
        healthy: true,
    });
    c.set_hosts(&specs);
    assert_eq!(c.hosts().len(), 3);
    assert!(Arc::ptr_eq(&c.hosts()[0], &h0));
}

#[test]
fn request_limit_opens_the_circuit() {
    let counter = std::sync::atomic::AtomicU32::new(0);
    let a = LimitGuard::try_new(&counter, 2).unwrap();
    let _b = LimitGuard::try_new(&counter, 2).unwrap();
    assert!(LimitGuard::try_new(&counter, 2).is_none());
    drop(a);
    assert!(LimitGuard::try_new(&counter, 2).is_some());
}
