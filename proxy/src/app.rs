//! Wiring: start the admin servers and the workers, load config (pilot or file), run until
//! drained. The drain itself (who is told to go away, and how) is described in
//! [`crate::shared`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::admin::{self, Role};
use crate::config::Config;
use crate::listen::Listeners;
use crate::shared::{LogReload, Shared};
use crate::{static_config, xds};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start {concurrency} worker threads: {source}")]
    Workers {
        concurrency: usize,
        source: std::io::Error,
    },
    #[error(transparent)]
    Static(#[from] static_config::Error),
    #[error("{path}: {message}")]
    Rejected { path: String, message: String },
    #[error("cannot serve SDS on {path}: {source}")]
    Sds {
        path: String,
        source: std::io::Error,
    },
}

/// Run the proxy until it has drained (SIGTERM, SIGINT, `/quitquitquit` or the agent's
/// `/drain`).
pub async fn run(
    config: Config,
    access_log: bool,
    log_reload: Option<LogReload>,
) -> Result<(), Error> {
    let mut config = config;
    match crate::listen::raise_fd_limit() {
        Ok(n) => tracing::info!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let static_cfg = match &config.static_config {
        Some(path) => Some((path.clone(), static_config::load(path)?)),
        None => None,
    };
    if let Some((_, s)) = &static_cfg
        && let Some(addr) = s.admin
    {
        config.admin_addr = addr;
    }
    let shared = Arc::new(Shared::new(config, access_log, log_reload));
    // Envoy's threading model: this runtime (the caller's, one thread) is the main thread —
    // xDS, admin, certificates — and traffic runs on `concurrency` workers of their own
    // (or here too, with one worker).
    let concurrency = shared.config.concurrency;
    let listeners =
        Listeners::with_workers(Arc::clone(&shared), concurrency).map_err(|source| {
            Error::Workers {
                concurrency,
                source,
            }
        })?;
    let listeners = Arc::new(listeners);
    let cfg = &shared.config;
    for (role, addr, what) in [
        (Role::Admin, cfg.admin_addr, "admin"),
        (Role::Status, cfg.status_addr, "status (healthz)"),
        (Role::Stats, cfg.stats_addr, "Prometheus stats"),
    ] {
        if addr.port() == 0 && role != Role::Admin {
            continue;
        }
        let l = admin::bind(addr)
            .await
            .map_err(|source| Error::Bind { what, addr, source })?;
        tracing::info!(%addr, what, "serving");
        tokio::spawn(admin::serve(
            l,
            role,
            Arc::clone(&shared),
            Arc::clone(&listeners),
        ));
    }
    if cfg.agent_addr.port() != 0 {
        let addr = cfg.agent_addr;
        let what = "agent status (app probes, merged metrics, drain)";
        match admin::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, what, probes = cfg.app_probers.len(), "serving");
                tokio::spawn(crate::agent::serve(l, Arc::clone(&shared)));
            }
            Err(source) if cfg.agent_addr_required => {
                return Err(Error::Bind { what, addr, source });
            }
            // Istio's default port, taken (another proxy on this host): the rest still works.
            Err(e) => tracing::error!(%addr, what, error = %e, "cannot serve; set --agent-port"),
        }
    }

    if let Some(ca) = &cfg.ca_address {
        let ca = crate::identity::IstioCa::new(crate::identity::IdentityConfig {
            ca_address: ca.clone(),
            root_cert: cfg.ca_root_cert.clone(),
            token_file: cfg.ca_token_file.clone(),
            ttl: cfg.secret_ttl,
        });
        tokio::spawn(crate::identity::run(
            ca,
            cfg.spiffe_id(),
            Arc::clone(&shared.secrets),
        ));
    } else {
        tracing::info!("no CA address (CA_ADDR): no workload certificate, mTLS is off");
    }
    if let Some(path) = &cfg.sds_socket {
        let listener = crate::sds::bind(path).map_err(|source| Error::Sds {
            path: path.display().to_string(),
            source,
        })?;
        tracing::info!(socket = %path.display(), "serving SDS");
        tokio::spawn(crate::sds::serve(listener, Arc::clone(&shared.secrets)));
    }
    if cfg.agent {
        // Agent mode is ready once it holds a certificate.
        shared.ready.send_replace(true);
    }

    match (static_cfg, &cfg.discovery_address) {
        (Some((path, s)), _) => {
            let mut publisher = xds::Publisher::new(Arc::clone(&shared), Arc::clone(&listeners));
            for type_url in mast_proto::TypeUrl::PUSH_ORDER {
                let items = s.by_type.get(&type_url).cloned().unwrap_or_default();
                let incoming = items
                    .into_iter()
                    .map(|any| crate::state::Incoming {
                        name: None,
                        version: "static".into(),
                        any,
                    })
                    .collect();
                publisher
                    .apply(type_url.url(), "static", incoming, &[], true)
                    .map_err(|message| Error::Rejected {
                        path: path.display().to_string(),
                        message,
                    })?;
            }
            publisher.try_publish();
            tracing::info!(file = %path.display(), "static config loaded");
        }
        (None, Some(addr)) => {
            // Not stopped by the drain (see `xds::run`): it ends with the process.
            tokio::spawn(xds::run(
                Arc::clone(&shared),
                Arc::clone(&listeners),
                addr.clone(),
            ));
        }
        (None, None) => {}
    }

    wait_for_drain(&shared).await;
    tracing::info!(
        drain_secs = shared.config.termination_drain.as_secs_f64(),
        exit_on_zero_active_connections = shared.config.exit_on_zero_active_connections,
        "draining: still accepting; drained connections close after their current request \
         (HTTP/1 `connection: close`, HTTP/2 GOAWAY)"
    );
    drain_period(&shared).await;
    listeners.stop_all();
    tracing::info!(
        open = shared.active_connections.load(Ordering::Relaxed),
        "drained; exiting"
    );
    Ok(())
}

/// Wait out the drain as Istio's pilot-agent does before it stops Envoy: the whole
/// `terminationDrainDuration`, or with `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` at least
/// `MINIMUM_DRAIN_DURATION` and then until no downstream connection is left (checked each
/// second), whichever ends first. Whatever is still open when it returns is cut.
async fn drain_period(shared: &Shared) {
    let cfg = &shared.config;
    let deadline = tokio::time::Instant::now() + cfg.termination_drain;
    if !cfg.exit_on_zero_active_connections {
        tokio::time::sleep_until(deadline).await;
        return;
    }
    let no_connections_left = async {
        tokio::time::sleep(cfg.minimum_drain).await;
        let mut each_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            each_second.tick().await;
            match shared.active_connections.load(Ordering::Relaxed) {
                0 => return,
                open => tracing::info!(open, "draining: connections still open"),
            }
        }
    };
    if tokio::time::timeout_at(deadline, no_connections_left)
        .await
        .is_ok()
    {
        tracing::info!("draining: no connection left");
    }
}

async fn wait_for_drain(shared: &Shared) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = shared.drained() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    shared.start_drain();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(env: &[(&str, &str)]) -> Shared {
        let env: std::collections::BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let o = crate::config::Overrides {
            drain: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        Shared::new(Config::from_env(&env, &o).unwrap(), false, None)
    }

    async fn lasts(shared: &Shared) -> Duration {
        let start = tokio::time::Instant::now();
        drain_period(shared).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_lasts_its_period_or_until_no_connection_is_left() {
        // By default the whole period, connections or not.
        assert_eq!(lasts(&shared(&[])).await, Duration::from_secs(10));
        let exit_on_zero = shared(&[
            ("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", "true"),
            ("MINIMUM_DRAIN_DURATION", "2s"),
        ]);
        // Nothing open: the minimum only.
        assert_eq!(lasts(&exit_on_zero).await, Duration::from_secs(2));
        // One connection, closed at 4.5 s: found at the next check.
        exit_on_zero.active_connections.store(1, Ordering::Relaxed);
        let closes = async {
            tokio::time::sleep(Duration::from_millis(4500)).await;
            exit_on_zero.active_connections.store(0, Ordering::Relaxed);
        };
        let (took, ()) = tokio::join!(lasts(&exit_on_zero), closes);
        assert_eq!(took, Duration::from_secs(5));
        // Never closed: the period still ends it.
        exit_on_zero.active_connections.store(1, Ordering::Relaxed);
        assert_eq!(lasts(&exit_on_zero).await, Duration::from_secs(10));
    }
}
