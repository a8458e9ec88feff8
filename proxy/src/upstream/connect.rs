//! Dialing upstream hosts: connect timeout, source address, TCP_NODELAY, and the
//! cluster's connection limit.
//!
//! The limit is a semaphore: a request that needs a new connection while the cluster is at
//! `max_connections` waits as "pending", and beyond `max_pending` waiters it fails with an
//! overflow, which the router answers 503 with flag `UO` — Envoy's circuit breaker.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use rustls::pki_types::ServerName;

use crate::resources::cluster::Limits;
use crate::resources::tls::UpstreamTls;
use crate::tls::SecretStore;
use crate::tls::credentials::SdsSecrets;

/// Limits at or above this are "unlimited" (Istio writes u32::MAX).
const UNLIMITED: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection failure: {0}")]
    Io(#[from] io::Error),
    #[error("connection timeout")]
    Timeout,
    #[error("overflow: too many pending connections")]
    Overflow,
    #[error("bad upstream address {0:?}")]
    Address(String),
    #[error("TLS handshake: {0}")]
    Tls(String),
    #[error("{0} is this proxy's own listener: refusing to connect to itself")]
    OwnListener(SocketAddr),
}

/// The connector behind a cluster's HTTP client.
#[derive(Clone)]
pub struct Connector {
    timeout: Duration,
    bind: Option<IpAddr>,
    open: Arc<AtomicU32>,
    slots: Option<Arc<Semaphore>>,
    waiting: Arc<AtomicU32>,
    max_pending: u32,
    /// TLS settings for `https://` requests (endpoints with sidecars, or TLS origination).
    tls: Option<UpstreamTlsFor>,
}

/// What a connection's TLS handshake needs: the cluster's settings, the secrets they may
/// name, and the request's host when the SNI follows it (`auto_sni`).
#[derive(Clone)]
pub struct UpstreamTlsFor {
    pub tls: Arc<UpstreamTls>,
    pub workload: Arc<SecretStore>,
    pub sds: Arc<SdsSecrets>,
    pub request_host: Option<String>,
}

impl Connector {
    pub fn new(
        timeout: Duration,
        bind: Option<IpAddr>,
        open: Arc<AtomicU32>,
        limits: Limits,
        tls: Option<UpstreamTlsFor>,
    ) -> Self {
        Self {
            timeout,
            bind,
            open,
            slots: (limits.max_connections < UNLIMITED)
                .then(|| Arc::new(Semaphore::new(limits.max_connections.max(1) as usize))),
            waiting: Arc::new(AtomicU32::new(0)),
            max_pending: limits.max_pending,
            tls,
        }
    }

    async fn dial(self, uri: Uri) -> Result<TokioIo<Upstream>, ConnectError> {
        let authority = uri
            .authority()
            .ok_or_else(|| ConnectError::Address(uri.to_string()))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let permit = match &self.slots {
            None => None,
            Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
                        self.waiting.fetch_sub(1, Ordering::AcqRel);
                        return Err(ConnectError::Overflow);
                    }
                    let p = Arc::clone(slots).acquire_owned().await;
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    p.ok()
                }
            },
        };
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => tokio::net::lookup_host((host, port))
                .await?
                .next()
                .ok_or_else(|| ConnectError::Address(host.to_string()))?,
        };
        let stream = connect_tcp(addr, self.bind, self.timeout).await?;
        let io = if uri.scheme_str() == Some("https") {
            let Some(t) = &self.tls else {
                return Err(ConnectError::Tls(
                    "the cluster has no TLS transport socket".into(),
                ));
            };
            let host = t.request_host.as_deref();
            Io::Tls(Box::new(
                tls_handshake(stream, addr, &t.tls, &t.workload, &t.sds, host).await?,
            ))
        } else {
            Io::Plain(stream)
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(TokioIo::new(Upstream {
            stream: io,
            requests: ConnRequests::default(),
            _permit: permit,
            open: self.open,
        }))
    }
}

/// The client side of a TLS handshake: mTLS to a sidecar, or TLS origination. The server
/// name is the cluster's SNI (Istio's mesh SNI `outbound_.<port>_.<subset>_.<host>`, or a
/// DestinationRule's `sni`), else the request's host with `auto_sni`, else the address (no
/// SNI is sent). Sidecars are checked by SPIFFE ID; other servers by CA, SANs and, with
/// `auto_san_validation`, that name.
pub async fn tls_handshake(
    stream: TcpStream,
    addr: SocketAddr,
    tls: &UpstreamTls,
    store: &Arc<SecretStore>,
    sds: &Arc<SdsSecrets>,
    request_host: Option<&str>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let config = tls
        .client_config(store, sds)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let name = tls
        .server_name(request_host)
        .and_then(|s| ServerName::try_from(s.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))
}

/// A TCP connection with a timeout, from `bind` if set.
pub async fn connect_tcp(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    if super::loop_guard::is_own(addr) {
        return Err(ConnectError::OwnListener(addr));
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(ConnectError::Timeout),
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().dial(uri))
    }
}

/// An upstream connection; releases its connection slot when closed.
pub struct Upstream {
    stream: Io,
    requests: ConnRequests,
    _permit: Option<OwnedSemaphorePermit>,
    open: Arc<AtomicU32>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The SPIFFE ID of an mTLS upstream, attached to its responses (for metrics).
#[derive(Debug, Clone)]
pub struct UpstreamIdentity(pub Arc<str>);

/// Requests carried so far by one upstream connection (for `max_requests_per_connection`),
/// attached to its responses.
#[derive(Debug, Clone, Default)]
pub struct ConnRequests(pub Arc<AtomicU32>);

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        let c = Connected::new().extra(self.requests.clone());
        match &self.stream {
            Io::Tls(s) => match crate::tls::peer_identity(s.get_ref().1) {
                Some(id) => c.extra(UpstreamIdentity(id.into())),
                None => c,
            },
            Io::Plain(_) => c,
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
