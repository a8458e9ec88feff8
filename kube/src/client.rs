//! Connecting to the API server: in-cluster (the pod's service-account token) or from a
//! kubeconfig (`--kubeconfig PATH`, else `KUBECONFIG`, else `~/.kube/config`).
//!
//! mastd runs in a pod on a cluster and from a laptop against one; both should need nothing
//! but the flag. The rustls crypto provider is installed explicitly (ring, as the rest of the
//! workspace uses): kube-rs only installs one for aws-lc-rs, and a process that ever links two
//! providers would otherwise fail at its first TLS handshake instead of at start-up.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

/// The client type, for crates that hold one without depending on kube-rs themselves.
pub use kube::Client;

/// Where the API server's address and credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientSource {
    /// In a pod: the service account's token and CA; outside one, the default kubeconfig
    /// (`KUBECONFIG` or `~/.kube/config`). What `kubectl` does.
    #[default]
    Infer,
    /// The pod's service account only (`KUBERNETES_SERVICE_HOST`, the mounted token).
    InCluster,
    /// This kubeconfig file, its current context.
    Kubeconfig(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration: not in a pod (no KUBERNETES_SERVICE_HOST / service-account \
         token) and no usable kubeconfig (KUBECONFIG or ~/.kube/config): {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("not in a pod (in-cluster configuration): {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot build the Kubernetes client: {0}")]
    Build(#[source] kube::Error),
}

/// Install ring as the process' rustls provider unless one is installed already.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is then in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The client configuration for `source`.
pub async fn config(source: &ClientSource) -> Result<kube::Config, Error> {
    match source {
        ClientSource::Infer => kube::Config::infer().await.map_err(Error::Infer),
        ClientSource::InCluster => kube::Config::incluster().map_err(Error::InCluster),
        ClientSource::Kubeconfig(path) => from_kubeconfig(path).await,
    }
}

async fn from_kubeconfig(path: &Path) -> Result<kube::Config, Error> {
    let err = |source| Error::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(err)?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(err)
}

/// A client for `source`, ready to use.
pub async fn client(source: &ClientSource) -> Result<kube::Client, Error> {
    from_config(config(source).await?)
}

/// A client for an explicit configuration (tests point one at a fake API server).
pub fn from_config(config: kube::Config) -> Result<kube::Client, Error> {
    install_crypto_provider();
    kube::Client::try_from(config).map_err(Error::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:6443'}\nusers:\n- name: u\n  user: {token: abc}\ncontexts:\n- name: x\n  context: {cluster: c, user: u, namespace: mesh}\ncurrent-context: x\n";

    #[tokio::test]
    async fn kubeconfig_file_gives_its_cluster_and_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, KUBECONFIG).unwrap();
        let config = config(&ClientSource::Kubeconfig(path)).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:6443/");
        assert_eq!(config.default_namespace, "mesh");
        from_config(config).unwrap();
    }

    #[tokio::test]
    async fn missing_kubeconfig_names_the_path() {
        let e = config(&ClientSource::Kubeconfig("/nonexistent/kubeconfig".into()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kubeconfig"), "{e}");
    }
}
