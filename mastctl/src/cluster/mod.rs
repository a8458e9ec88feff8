//! The subcommands that talk to a cluster (`install`, `uninstall`, `proxy-config`,
//! `proxy-status`, `dashboard`), as istioctl's do: they reach the API server with the user's kubeconfig, the
//! way kubectl does, so whoever can `kubectl apply` can use them with nothing else to set up.
//!
//! Everything goes through the API server (server-side apply, the pod and service proxy
//! subresources), never straight to a pod's IP, so they work from a laptop outside the
//! cluster network.

use std::path::PathBuf;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub mod dashboard;
pub mod install;
pub mod proxy_config;
pub mod proxy_status;

/// The namespace the control plane is installed in (manifests/install/mast.yaml).
pub const MAST_NAMESPACE: &str = "mast-system";

/// Where the cluster is: kubectl's flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubeArgs {
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else the pod's service
    /// account when run in a pod).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

impl KubeArgs {
    /// A client for the cluster these flags name.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(mast_kube::client::from_config(self.config().await?)?)
    }

    /// The configuration of the cluster these flags name (for a client that needs a setting
    /// changed first).
    pub async fn config(&self) -> anyhow::Result<kube::Config> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("kubeconfig {}", path.display()))?
            }
            (None, Some(context)) => kube::Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("kubeconfig context {context}"))?,
            (None, None) => kube::Config::infer().await.context(
                "no Kubernetes configuration: no --kubeconfig, no usable KUBECONFIG or \
                 ~/.kube/config, and not in a pod",
            )?,
        };
        Ok(config)
    }
}

/// A tokio runtime for one command (mastctl's other commands need none).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster: {server: 'http://127.0.0.1:6443'}\n- name: b\n  cluster: {server: 'http://127.0.0.2:6443'}\nusers:\n- name: u\n  user: {token: abc}\ncontexts:\n- name: one\n  context: {cluster: a, user: u}\n- name: two\n  context: {cluster: b, user: u, namespace: mesh}\ncurrent-context: one\n";

    #[tokio::test]
    async fn context_flag_picks_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, KUBECONFIG).unwrap();
        let args = |context: Option<&str>| KubeArgs {
            kubeconfig: Some(path.clone()),
            context: context.map(String::from),
        };
        let current = args(None).client().await.unwrap();
        assert_eq!(current.default_namespace(), "default");
        let two = args(Some("two")).client().await.unwrap();
        assert_eq!(two.default_namespace(), "mesh");
        let Err(e) = args(Some("three")).client().await else {
            panic!("a context that is not there")
        };
        assert!(format!("{e:#}").contains("three"), "{e:#}");
    }

    #[tokio::test]
    async fn unreadable_kubeconfig_names_the_file() {
        let args = KubeArgs {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            context: None,
        };
        let Err(e) = args.client().await else {
            panic!("no kubeconfig")
        };
        assert!(
            format!("{e:#}").contains("/nonexistent/kubeconfig"),
            "{e:#}"
        );
    }
}
