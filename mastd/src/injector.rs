//! mastd's sidecar injection webhook (Istio's :15017): its TLS certificate and its server.
//!
//! The API server only calls a webhook whose certificate it trusts through the
//! MutatingWebhookConfiguration's caBundle. With a CA the certificate is issued by citadel, so
//! that bundle is simply the mesh root (which mastd keeps current on a cluster); without one it
//! is self-signed, for local runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mast_citadel::CertificateAuthority;
use mast_injector::inject::Settings;
use mast_injector::webhook;
use tracing::{error, info};

use crate::app::{Shutdown, StartError};

/// The names the webhook's Service answers to in Istio's layout.
const NAMES: [&str; 2] = [
    "mastd.mast-system.svc",
    "mastd.mast-system.svc.cluster.local",
];

/// How long the webhook's citadel-issued certificate lasts: it is reissued at every start.
const CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Serve the injection webhook on `addr` until shutdown.
pub async fn start(
    addr: SocketAddr,
    ca: Option<&CertificateAuthority>,
    settings: Settings,
    counters: Arc<webhook::Counters>,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let names = NAMES.map(String::from);
    let tls = match ca {
        Some(ca) => {
            let ips = [addr.ip(), IpAddr::from([127, 0, 0, 1])];
            let (chain, key) = ca
                .issue_server_cert(&names, &ips, CERT_TTL)
                .map_err(|e| StartError::Injector(e.to_string()))?;
            webhook::server_tls(&chain, &key)
        }
        None => {
            let mut all = names.to_vec();
            all.extend(["localhost".to_string(), addr.ip().to_string()]);
            webhook::self_signed_tls(&all)
        }
    }
    .map_err(|e| StartError::Injector(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Injector(format!("cannot bind {addr}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(
        injector = %bound,
        image = %settings.image,
        native_sidecar = settings.native_sidecar,
        "injection webhook serving /inject"
    );
    let settings = Arc::new(settings);
    tokio::spawn(async move {
        if let Err(e) = webhook::serve(listener, tls, settings, counters, shutdown.wait()).await {
            error!("injection webhook stopped: {e}");
        }
    });
    Ok(())
}
