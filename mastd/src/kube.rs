//! `mastd --kube`: pilot's config from the Kubernetes API instead of a folder.
//!
//! mast-kube's source knows nothing of pilot (so tools can read a cluster's mesh without the
//! xDS server); this adapter is the one place that turns its updates into pilot's snapshots
//! and reports its rejections where the folder source reports them (`/debug`, metrics).
//! mastd waits for the first full list of every kind before it serves: a proxy must never be
//! given an empty mesh because the API server answered slowly, which is what Istio does too
//! (its caches sync before the xDS server takes connections).

use std::path::PathBuf;

use mast_kube::client::ClientSource;
use mast_kube::source::{self, KubeSource, Update};
use mast_pilot::ads::Snapshot;
use mast_pilot::source::{ConfigSource, Debounce, Error, SourceContext, publish_change};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes: {0}")]
    Client(#[from] mast_kube::client::Error),
    #[error("kubernetes: {0}")]
    Source(#[from] source::Error),
    #[error("kubernetes: citadel's root: {0}")]
    Ca(#[from] mast_kube::ca_secret::Error),
}

/// Where the API server is: `--kubeconfig PATH`, else `KUBECONFIG`/in-cluster as kubectl.
pub fn client_source(kubeconfig: Option<PathBuf>) -> ClientSource {
    match kubeconfig {
        Some(path) => ClientSource::Kubeconfig(path),
        None => ClientSource::Infer,
    }
}

/// A client for the cluster.
pub async fn connect(source: &ClientSource) -> Result<mast_kube::client::Client, KubeError> {
    Ok(mast_kube::client::client(source).await?)
}

/// This replica's name in the leader Lease when `POD_NAME` is not set: the host name (a
/// pod's is its name), else one unique to the process.
pub fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("mastd-{}", std::process::id()))
}

/// Run the leader election (Lease `mast-leader` in `namespace`) until `shutdown`; the
/// receiver says whether this replica leads (every writer — status, and the CA's ConfigMaps
/// and caBundle when they are hosted — follows the same one). Await the handle before
/// exiting: the Lease is released so a peer takes over at once.
pub fn elect(
    client: mast_kube::client::Client,
    namespace: &str,
    identity: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let election = mast_kube::leader::LeaderElection::new(
        namespace,
        mast_kube::leader::DEFAULT_LEASE_NAME,
        identity,
    );
    tracing::info!(
        namespace,
        identity,
        lease = %election.lease_name,
        "leader election (only the leader writes to the API server)"
    );
    election.spawn(client, shutdown)
}

/// The proxy of a Gateway API Gateway's automated deployment, rendered by the injector's
/// `gateway` template with the webhook's settings: one code path for every gateway pod.
pub fn gateway_renderer(
    settings: mast_injector::inject::Settings,
) -> mast_kube::gateway_deploy::ProxyRenderer {
    use mast_injector::inject::{Workload, inject_pod};
    mast_kube::gateway_deploy::ProxyRenderer::new(move |pod, namespace, name| {
        let workload = Workload::controller("apps/v1", "Deployment", namespace, name);
        inject_pod(pod, namespace, &workload, &settings).map_err(|e| e.to_string())
    })
}

/// Discover, and wait for the first full list: the source, ready for pilot. With
/// `deploy_gateways`, the leader also deploys the proxies of Gateway API Gateways.
pub async fn start(
    client: mast_kube::client::Client,
    debounce: Debounce,
    write_status: mast_kube::status::WriteGate,
    deploy_gateways: Option<mast_kube::gateway_deploy::ProxyRenderer>,
) -> Result<(KubeSource, Update), KubeError> {
    let options = source::Options {
        debounce: source::Debounce {
            quiet: debounce.quiet,
            max: debounce.max,
        },
        write_status,
        deploy_gateways,
    };
    let mut source = KubeSource::start(client, options).await?;
    let first = source.initial_sync().await?;
    Ok((source, first))
}

/// The Kubernetes source as pilot's [`ConfigSource`].
pub struct PilotSource {
    source: KubeSource,
    first: Option<Update>,
    ctx: SourceContext,
    version: u64,
}

// === impl PilotSource ===

impl PilotSource {
    pub fn new(source: KubeSource, first: Update, ctx: SourceContext) -> Self {
        Self {
            source,
            first: Some(first),
            ctx,
            version: 0,
        }
    }

    fn report(ctx: &SourceContext, update: &Update) {
        ctx.metrics.rejected_configs.set(update.errors.len() as i64);
        ctx.status.set_errors(update.errors.clone());
    }
}

impl ConfigSource for PilotSource {
    fn initial_snapshot(&mut self) -> Snapshot {
        self.version = 1;
        match self.first.take() {
            Some(first) => {
                Self::report(&self.ctx, &first);
                self.ctx
                    .metrics
                    .services
                    .set(first.model.services.len() as i64);
                Snapshot::new(self.version, first.model, first.first_change)
            }
            None => Snapshot::new(self.version, Default::default(), std::time::Instant::now()),
        }
    }

    fn run(
        self,
        publish: watch::Sender<Snapshot>,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        let Self {
            source,
            ctx,
            mut version,
            ..
        } = self;
        async move {
            source
                .run(move |update| {
                    Self::report(&ctx, &update);
                    if !update.changed {
                        return !publish.is_closed();
                    }
                    version += 1;
                    publish_change(
                        &publish,
                        &ctx.metrics,
                        &update.trace,
                        version,
                        update.model,
                        update.first_change,
                    )
                })
                .await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mast_kube::status::WriteGate;
    use mast_kube::testing::{FakeApiServer, KindSpec};
    use mast_mesh_config::model::{MeshModel, RouteAction};
    use mast_pilot::server::{self, PilotConfig};
    use mast_pilot::xds::{Security, XdsGenerator};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn virtual_service(w1: i64, w2: i64) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "user", "namespace": "default"},
            "spec": {"hosts": ["user"], "http": [{"route": [
                {"destination": {"host": "user", "subset": "v1"}, "weight": w1},
                {"destination": {"host": "user", "subset": "v2"}, "weight": w2},
            ]}]},
        })
    }

    fn weights(model: &MeshModel) -> Vec<u32> {
        match &model.routes[0].http[0].action {
            RouteAction::Forward(d) => d.iter().map(|d| d.weight).collect(),
            other => panic!("{other:?}"),
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// mastd's `--kube --kubeconfig PATH` path: the cluster's split in pilot's snapshots, an
    /// edit pushed as a new snapshot, an invalid edit kept out and shown on /debug/configz.
    #[tokio::test]
    async fn pilot_serves_the_clusters_config_and_pushes_its_edits() {
        let api = FakeApiServer::start().await.unwrap();
        api.add_kind(KindSpec::namespaced(
            "networking.istio.io",
            "v1",
            "VirtualService",
            "virtualservices",
        ));
        api.add_kind(KindSpec::namespaced(
            "networking.istio.io",
            "v1",
            "DestinationRule",
            "destinationrules",
        ));
        api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "user", "namespace": "default"},
                         "spec": {"selector": {"app": "user"}, "ports": [{"name": "http", "port": 8081, "targetPort": "http"}]}}));
        for (v, ip) in [("v1", "10.244.0.11"), ("v2", "10.244.0.12")] {
            api.apply(json!({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": format!("user-{v}"), "namespace": "default", "labels": {"app": "user", "version": v}},
                             "spec": {"containers": [{"name": "user", "ports": [{"name": "http", "containerPort": 9081}]}]},
                             "status": {"podIP": ip}}));
        }
        api.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                         "metadata": {"name": "user", "namespace": "default"},
                         "spec": {"host": "user", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                               {"name": "v2", "labels": {"version": "v2"}}]}}));
        api.apply(virtual_service(50, 50));

        let kubeconfig =
            std::env::temp_dir().join(format!("mastd-kube-test-{}.yaml", std::process::id()));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: '{}'}}\n\
                 users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\n\
                 current-context: c\n",
                api.url()
            ),
        )
        .unwrap();
        let debounce = Debounce {
            quiet: Duration::from_millis(20),
            max: Duration::from_secs(1),
        };
        let client = connect(&client_source(Some(kubeconfig.clone())))
            .await
            .unwrap();
        let (source, first) = start(client, debounce, WriteGate::always(), None)
            .await
            .unwrap();
        let _ = std::fs::remove_file(&kubeconfig);

        let config = PilotConfig {
            config_dirs: Vec::new(),
            xds_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            debounce,
            push_throttle: mast_pilot::ads::server::DEFAULT_PUSH_THROTTLE,
        };
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let generator = XdsGenerator::new(Security {
            mtls: false,
            trust_domain: "cluster.local".into(),
        });
        let pilot = tokio::spawn(
            server::Pilot::new(config, generator)
                .source(move |ctx| PilotSource::new(source, first, ctx))
                .on_bound(move |bound, handles| {
                    let _ = bound_tx.send((bound, handles));
                })
                .run(async move {
                    let _ = stop_rx.await;
                }),
        );
        let (bound, handles) = bound_rx.await.unwrap();
        let mut snapshots = handles.snapshots.clone();
        {
            let s = snapshots.borrow_and_update();
            assert_eq!(s.version, 1);
            assert_eq!(weights(&s.model), [50, 50]);
            assert_eq!(s.model.workloads.len(), 2);
        }

        api.apply(virtual_service(80, 20));
        tokio::time::timeout(Duration::from_secs(10), snapshots.changed())
            .await
            .unwrap()
            .unwrap();
        {
            let s = snapshots.borrow_and_update();
            assert_eq!(s.version, 2);
            assert_eq!(weights(&s.model), [80, 20]);
        }

        api.apply(virtual_service(80, -10));
        let mut configz = String::new();
        for _ in 0..200 {
            configz = get(bound.http, "/debug/configz").await;
            if configz.contains("kube:/networking.istio.io/VirtualService/default/user") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            configz.contains("kube:/networking.istio.io/VirtualService/default/user"),
            "{configz}"
        );
        assert!(configz.contains("spec.http[0]"), "{configz}");
        assert!(
            !snapshots.has_changed().unwrap(),
            "an invalid edit publishes nothing"
        );
        assert_eq!(weights(&snapshots.borrow().model), [80, 20]);

        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(10), pilot)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
