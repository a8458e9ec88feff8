//! Static bootstraps for mast-proxy's `--config` (the file `envoy -c` takes), for the tests
//! that run a proxy without a control plane.
//!
//! Many tests need the same shape — one HTTP listener whose connection manager routes
//! everything to one backend — and differ only in a connection-manager field or the
//! route's timeout; one builder keeps that YAML (and its escaping) in one place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

/// One HTTP listener `web` on 127.0.0.1:`listen` routing every request to the cluster
/// `backend` (127.0.0.1:`backend`, STATIC), and the admin on 127.0.0.1:`admin`.
#[derive(Debug, Clone)]
pub struct StaticBootstrap<'a> {
    pub listen: u16,
    pub admin: u16,
    pub backend: u16,
    /// YAML at the connection manager's level (one line, or lines indented to match), e.g.
    /// `stream_idle_timeout: 1s`.
    pub hcm_extra: &'a str,
    /// The route's `timeout`; Envoy's default (15 s) when `None`.
    pub route_timeout: Option<Duration>,
}

impl<'a> StaticBootstrap<'a> {
    pub fn new(listen: u16, admin: u16, backend: u16) -> Self {
        Self {
            listen,
            admin,
            backend,
            hcm_extra: "",
            route_timeout: None,
        }
    }

    /// With `extra` in the connection manager.
    pub fn hcm(mut self, extra: &'a str) -> Self {
        self.hcm_extra = extra;
        self
    }

    /// With the route's `timeout`.
    pub fn route_timeout(mut self, timeout: Duration) -> Self {
        self.route_timeout = Some(timeout);
        self
    }

    /// The bootstrap as YAML.
    pub fn yaml(&self) -> String {
        let Self {
            listen,
            admin,
            backend,
            hcm_extra,
            route_timeout,
        } = self;
        // Protobuf JSON writes durations in seconds.
        let timeout = route_timeout
            .map(|t| format!(", timeout: {}s", t.as_secs_f64()))
            .unwrap_or_default();
        let hcm_extra = if hcm_extra.is_empty() {
            String::new()
        } else {
            format!("\n          {hcm_extra}")
        };
        format!(
            r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web{hcm_extra}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend{timeout}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}
"#
        )
    }

    /// Write the bootstrap to `dir/bootstrap.yaml`; its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("bootstrap.yaml");
        std::fs::write(&path, self.yaml())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_land_in_the_connection_manager_and_the_route() {
        let plain = StaticBootstrap::new(1, 2, 3).yaml();
        assert!(
            plain.contains("stat_prefix: web\n          route_config:"),
            "{plain}"
        );
        assert!(plain.contains("route: {cluster: backend}"), "{plain}");
        assert!(plain.contains("port_value: 3}"), "{plain}");
        let tuned = StaticBootstrap::new(1, 2, 3)
            .hcm("stream_idle_timeout: 1s")
            .route_timeout(Duration::from_secs(10))
            .yaml();
        assert!(
            tuned.contains(
                "stat_prefix: web\n          stream_idle_timeout: 1s\n          route_config:"
            ),
            "{tuned}"
        );
        assert!(
            tuned.contains("route: {cluster: backend, timeout: 10s}"),
            "{tuned}"
        );
    }
}
