//! `tcp_proxy`: opaque TCP to a cluster (or to the original destination for passthrough),
//! with Istio's TCP metrics counted when the connection closes.
//!
//! TCP has no metadata exchange in mast-proxy, so the client side names the server from the
//! endpoint it picked (istiod's `istio.workload` endpoint metadata) and, under mTLS, from the
//! server's certificate, as Istio's client sidecar does.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::{Reporter, ServiceId, TcpLabels};
use crate::resources::cluster::HostAddr;
use crate::resources::listener::TcpProxy;
use crate::shared::Shared;
use crate::upstream::{ActiveGuard, Outcome, connect_tcp, tls_handshake};

pub async fn proxy<S>(
    shared: Arc<Shared>,
    tcp: Arc<TcpProxy>,
    mut down: S,
    dst: SocketAddr,
    original_dst: Option<SocketAddr>,
    inbound: bool,
    peer_identity: Option<Arc<str>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let snap = shared.store.current.load_full();
    let name = tcp.pick_cluster();
    let Some(cluster) = snap.clusters.get(name).cloned() else {
        tracing::debug!(cluster = name, "tcp: no such cluster; closing");
        return;
    };
    let metrics = &shared.metrics;
    // Inbound: the service the inbound cluster serves (its `istio.services` metadata), as
    // Istio labels the server side; a TCP connection names no host to look it up by.
    let service = if inbound {
        let by_addr = metrics.service_for_host(&dst.ip().to_string());
        cluster.inbound_service(&by_addr).unwrap_or(by_addr)
    } else {
        Arc::clone(&cluster.service)
    };
    let (reporter, source, destination) = if inbound {
        match &peer_identity {
            Some(id) => (
                Reporter::Destination,
                crate::metrics::peer_of_identity(id),
                Arc::clone(&metrics.local_mtls),
            ),
            None => (
                Reporter::Destination,
                metrics.unknown_peer(),
                Arc::clone(&metrics.local),
            ),
        }
    } else {
        (
            Reporter::Source,
            Arc::clone(&metrics.local),
            metrics.unknown_peer(),
        )
    };
    let mut labels = TcpLabels {
        reporter,
        source,
        destination,
        service: if service.host == "unknown" {
            Arc::new(ServiceId::from_cluster(name))
        } else {
            service
        },
        mtls: inbound && peer_identity.is_some(),
        flags: "-",
    };
    let host = cluster.pick(None, &[]).ok();
    if !inbound
        && let Some(peer) =
            crate::metrics::upstream_peer(host.as_ref().and_then(|h| h.peer.as_ref()), None)
    {
        labels.destination = peer;
    }
    let target = match (&host, cluster.is_original_dst()) {
        (Some(h), _) => match &h.addr {
            HostAddr::Ip(a) => Some(*a),
            HostAddr::Dns(name, port) => tokio::net::lookup_host((name.as_str(), *port))
                .await
                .ok()
                .and_then(|mut a| a.next()),
        },
        // A passthrough dials the original destination only when capture restored one.
        (None, true) => original_dst,
        (None, false) => None,
    };
    let Some(target) = target else {
        labels.flags = "UH";
        metrics.tcp_opened(&labels);
        metrics.tcp_closed(&labels, 0, 0);
        return;
    };
    let _active = host.clone().map(ActiveGuard::new);
    let up = match connect_tcp(target, cluster.config.bind, cluster.config.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%target, error = %e, "tcp: upstream connect failed");
            if let Some(h) = &host {
                cluster.record(h, Outcome::Gateway);
            }
            labels.flags = "UF";
            metrics.tcp_opened(&labels);
            metrics.tcp_closed(&labels, 0, 0);
            return;
        }
    };
    let tls = host
        .as_ref()
        .filter(|h| h.tls)
        .and_then(|_| cluster.config.transport.any_tls());
    let (received, sent) = match tls {
        None => {
            if let Some(h) = &host {
                cluster.record(h, Outcome::Success);
            }
            metrics.tcp_opened(&labels);
            pipe(&shared, &mut down, up).await
        }
        Some(tls) => match tls_handshake(up, target, tls, &shared.secrets, &shared.sds, None).await
        {
            Ok(up) => {
                if let Some(h) = &host {
                    cluster.record(h, Outcome::Success);
                }
                // The server's certificate names its principal (and its namespace when the
                // endpoint's metadata did not), as Istio's client side reads the upstream's
                // SAN; this side's principal is known too.
                if let Some(id) = crate::tls::peer_identity(up.get_ref().1) {
                    let endpoint = host.as_ref().and_then(|h| h.peer.as_ref());
                    if let Some(peer) = crate::metrics::upstream_peer(endpoint, Some(&id)) {
                        labels.destination = peer;
                    }
                    labels.source = Arc::clone(&metrics.local_mtls);
                }
                metrics.tcp_opened(&labels);
                pipe(&shared, &mut down, up).await
            }
            Err(e) => {
                tracing::debug!(%target, error = %e, "tcp: upstream TLS failed");
                if let Some(h) = &host {
                    cluster.record(h, Outcome::Gateway);
                }
                labels.flags = "UF";
                metrics.tcp_opened(&labels);
                (0, 0)
            }
        },
    };
    metrics.tcp_closed(&labels, sent, received);
}

/// Copy both ways until either side closes (or the drain period ends).
async fn pipe<D, U>(shared: &Shared, down: &mut D, mut up: U) -> (u64, u64)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional(down, &mut up);
    tokio::select! {
        r = copy => r.unwrap_or((0, 0)),
        // Draining: TCP has no graceful close of its own; give it the drain period.
        _ = async {
            shared.drained().await;
            tokio::time::sleep(shared.config.termination_drain).await;
        } => (0, 0),
    }
}
