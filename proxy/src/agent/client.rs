//! A one-shot HTTP/1.1 client for the agent's own requests: app probes, the app's metrics and
//! `mast-proxy request`.
//!
//! Each call opens one connection, sends one request with `Connection: close` and reads at
//! most `limit` bytes of the answer, as kubelet's prober does; nothing is pooled because
//! probes come seconds apart. HTTPS does not verify the server: kubelet does not either for
//! `scheme: HTTPS` probes, since an app's serving certificate is rarely issued for its pod IP.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("{0:?} is not a TLS server name")]
    ServerName(String),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// An answer: status, headers, and the body up to the caller's limit.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Send `req` (origin-form URI, `Host` set by the caller) to `host:port` and read the answer.
/// The body is cut at `limit` bytes. The caller bounds the time.
pub async fn send(
    scheme: Scheme,
    host: &str,
    port: u16,
    mut req: Request<Full<Bytes>>,
    limit: usize,
) -> Result<Answer, ClientError> {
    let addr = join_host_port(host, port);
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    req.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    match scheme {
        Scheme::Http => exchange(tcp, req, limit).await,
        Scheme::Https => {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|_| ClientError::ServerName(host.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(insecure_config()?)
                .connect(name, tcp)
                .await
                .map_err(|source| ClientError::Tls { addr, source })?;
            exchange(tls, req, limit).await
        }
    }
}

/// `host:port`, bracketing IPv6 literals.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn exchange<S>(
    stream: S,
    req: Request<Full<Bytes>>,
    limit: usize,
) -> Result<Answer, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let (parts, mut body) = resp.into_parts();
    let mut buf = BytesMut::new();
    while buf.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame?.into_data() {
            let take = data.len().min(limit - buf.len());
            buf.extend_from_slice(&data[..take]);
        }
    }
    // The answer is complete (or cut): the connection is not reused.
    drop(body);
    drop(sender);
    conn.abort();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: buf.freeze(),
    })
}

fn insecure_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = crate::tls::provider();
    let verifier = AnyServer(Arc::clone(&provider));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate (kubelet's HTTPS probes do not verify either), but still
/// checks the handshake signatures so the session keys are the server's.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::tls::provider_signature_checks!(0);
}
