//! mastd's CA: where citadel's root comes from, and serving Istio's CA API with it.
//!
//! istiod always runs its CA, so mastd does too. Off a cluster the root lives in a directory
//! (`--ca-dir`, else the user's state directory, made on first start) and callers prove
//! themselves with local credentials; on a cluster it lives in the Secret `cacerts` (Istio's
//! plug-in) or `istio-ca-secret`, callers are checked by TokenReview, and a replica restarts
//! itself when an operator replaces the root. Choosing between these is wiring, not CA logic,
//! so it lives here rather than in mast-citadel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mast_citadel::{
    Authenticator, CaOptions, CaPem, CertificateAuthority, Citadel, ServerTls, TokenVerifier,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::app::{Shutdown, StartError};
use crate::kube::KubeError;

#[derive(Debug, thiserror::Error)]
pub enum CitadelError {
    #[error("citadel: {0}")]
    Ca(#[from] mast_citadel::CaError),
    #[error("citadel: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "citadel: no state directory for its root (neither XDG_STATE_HOME nor HOME is set): \
         pass --ca-dir DIR, or --no-ca to run without mTLS"
    )]
    NoStateDir,
}

/// Where the root is kept, as `--no-ca`, `--ca-dir` and `--kube` decide it; `C` is the
/// cluster's client, so the Secrets can only be chosen when there is a cluster to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource<C> {
    /// `--no-ca`: no CA, the mesh runs in plaintext.
    None,
    /// A directory: `--ca-dir`, or the user's state directory.
    Dir(std::path::PathBuf),
    /// On a cluster without `--ca-dir`: the CA's Secrets in mastd's namespace.
    Cluster(C),
}

/// A CA ready to serve: the authority, who may ask it for certificates, and where its root
/// came from (for the log).
pub struct Authority {
    pub ca: Arc<CertificateAuthority>,
    pub authenticator: Arc<dyn Authenticator>,
    pub from: String,
}

// === impl RootSource ===

impl<C> RootSource<C> {
    /// `--ca-dir` wins; on a cluster the Secrets; otherwise the user's state directory.
    pub fn choose(
        no_ca: bool,
        ca_dir: Option<&std::path::Path>,
        cluster: Option<C>,
    ) -> Result<Self, CitadelError> {
        Ok(match (ca_dir, cluster) {
            _ if no_ca => Self::None,
            (Some(dir), _) => Self::Dir(dir.to_path_buf()),
            (None, Some(cluster)) => Self::Cluster(cluster),
            (None, None) => {
                Self::Dir(mast_citadel::default_ca_dir().ok_or(CitadelError::NoStateDir)?)
            }
        })
    }
}

// === impl Authority ===

impl Authority {
    /// The root and local credentials in `dir` (the root is made there on first start).
    pub fn from_dir(dir: &std::path::Path, opts: CaOptions) -> Result<Self, CitadelError> {
        Ok(Self {
            ca: Arc::new(CertificateAuthority::load_or_create(dir, opts)?),
            authenticator: Arc::new(TokenVerifier::load(dir)?),
            from: dir.display().to_string(),
        })
    }

    /// The root from the CA's Secrets in `namespace`, callers checked by TokenReview. When
    /// the Secrets later hold another CA, mastd stops (see [`restart_on_new_ca`]).
    pub async fn from_cluster(
        client: &mast_kube::client::Client,
        namespace: &str,
        opts: CaOptions,
        poll: Duration,
        stop: Arc<watch::Sender<bool>>,
    ) -> Result<Self, StartError> {
        let (authority, loaded) = mast_kube::ca_secret::load_ca(client.clone(), namespace, opts)
            .await
            .map_err(|e| StartError::Kube(KubeError::Ca(e)))?;
        let root = loaded.source;
        tokio::spawn(restart_on_new_ca(
            client.clone(),
            namespace.to_string(),
            loaded.pem,
            poll,
            stop,
        ));
        Ok(Self {
            ca: Arc::new(authority),
            authenticator: Arc::new(mast_kube::tokenreview::TokenReviewer::new(client.clone())),
            from: format!("secret {namespace}/{root:?}"),
        })
    }

    /// Serve Istio's CA API on `addr` over TLS until shutdown; the counters are for
    /// `/metrics`.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        shutdown: Shutdown,
    ) -> Result<Arc<mast_citadel::service::Counters>, CitadelError> {
        let ca = &self.ca;
        let tls = ServerTls::from_ca(ca, addr)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| CitadelError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        info!(
            ca = %bound,
            root = %self.from,
            plug_in = ca.plugged_in,
            trust_domain = %ca.opts.trust_domain,
            "citadel serving (mesh mTLS on)"
        );
        let citadel = Citadel::with_authenticator(Arc::clone(ca), Arc::clone(&self.authenticator));
        let counters = Arc::clone(&citadel.counters);
        tokio::spawn(async move {
            if let Err(e) = mast_citadel::serve(listener, citadel, tls, shutdown.wait()).await {
                error!("citadel stopped: {e}");
            }
        });
        Ok(counters)
    }
}

/// On a cluster: once the CA's Secrets hold a new CA, shut down cleanly (as on SIGTERM) at a
/// random moment within `every`, so Kubernetes restarts this replica with the new root while
/// the others keep serving.
async fn restart_on_new_ca(
    client: mast_kube::client::Client,
    namespace: String,
    loaded: CaPem,
    every: Duration,
    stop: Arc<watch::Sender<bool>>,
) {
    let why = mast_kube::ca_secret::wait_for_change(client, &namespace, &loaded, every).await;
    let delay = every.mul_f64(rand::random::<f64>());
    warn!(
        "{why}: restarting in {:.1} s to load it (Kubernetes starts this replica again)",
        delay.as_secs_f64()
    );
    tokio::time::sleep(delay).await;
    stop.send_replace(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_source_follows_the_flags() {
        let dir = std::path::Path::new("/ca");
        let choose = |no_ca, ca_dir, cluster| RootSource::choose(no_ca, ca_dir, cluster).unwrap();
        assert_eq!(choose(true, None, Some(())), RootSource::None);
        assert_eq!(
            choose(false, Some(dir), Some(())),
            RootSource::Dir(dir.into())
        );
        assert_eq!(choose(false, Some(dir), None), RootSource::Dir(dir.into()));
        assert_eq!(choose(false, None, Some(())), RootSource::Cluster(()));
    }
}
