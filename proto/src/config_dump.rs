//! Envoy's admin `/config_dump`, built as the real `envoy.admin.v3.ConfigDump` message.
//!
//! `istioctl proxy-config`, people and our own tools read config dumps by their exact shape:
//! a `configs` list of `@type`d sections (`BootstrapConfigDump`, `ClustersConfigDump`,
//! `EndpointsConfigDump`, `ListenersConfigDump`, `RoutesConfigDump`, `SecretsConfigDump`) in
//! Envoy's order, each resource with its `version_info` and `last_updated`. Building the
//! protobuf message and rendering it through [`crate::json`] makes that shape right by
//! construction. pilot uses it for `/debug/config_dump?proxyID=…` (what it sent a proxy), and
//! mast-proxy for its admin `/config_dump` (what it applied).

use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::admin::v3::{
    BootstrapConfigDump, ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump,
    RoutesConfigDump, SecretsConfigDump, clusters_config_dump, endpoints_config_dump,
    listeners_config_dump, routes_config_dump, secrets_config_dump,
};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use envoy_types::util::pack_any;
use serde_json::Value;

use crate::json::{Error, message_to_json};

/// Collects what a proxy holds, section by section; [`ConfigDumpBuilder::build`] assembles the
/// `ConfigDump`. Resources are `Any`s (as they travel in xDS) so the builder needs no
/// knowledge of their types; `last_updated` is when the proxy accepted them.
#[derive(Debug, Clone, Default)]
pub struct ConfigDumpBuilder {
    bootstrap: Option<BootstrapConfigDump>,
    clusters: ClustersConfigDump,
    endpoints: EndpointsConfigDump,
    listeners: ListenersConfigDump,
    routes: RoutesConfigDump,
    secrets: SecretsConfigDump,
}

/// A wall-clock time as the protobuf `Timestamp` Envoy prints (`2023-12-26T05:57:09.894Z`).
pub fn timestamp(time: SystemTime) -> Timestamp {
    // Times before 1970 do not occur for "last updated"; map them to the epoch.
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        // Below one billion by definition, so it fits.
        nanos: since.subsec_nanos() as i32,
    }
}

// === impl ConfigDumpBuilder ===

impl ConfigDumpBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bootstrap the proxy started from (first section of the dump).
    pub fn bootstrap(
        &mut self,
        bootstrap: Bootstrap,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.bootstrap = Some(BootstrapConfigDump {
            bootstrap: Some(bootstrap),
            last_updated: last_updated.map(timestamp),
        });
        self
    }

    /// The last CDS version the proxy accepted (top-level `version_info` of the section).
    pub fn clusters_version(&mut self, version_info: impl Into<String>) -> &mut Self {
        self.clusters.version_info = version_info.into();
        self
    }

    /// A cluster from the bootstrap.
    pub fn static_cluster(&mut self, cluster: Any, last_updated: Option<SystemTime>) -> &mut Self {
        self.clusters
            .static_clusters
            .push(clusters_config_dump::StaticCluster {
                cluster: Some(cluster),
                last_updated: last_updated.map(timestamp),
            });
        self
    }

    /// A cluster received over CDS and in use (`dynamic_active_clusters`).
    pub fn dynamic_cluster(
        &mut self,
        version_info: impl Into<String>,
        cluster: Any,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.clusters
            .dynamic_active_clusters
            .push(clusters_config_dump::DynamicCluster {
                version_info: version_info.into(),
                cluster: Some(cluster),
                last_updated: last_updated.map(timestamp),
                ..Default::default()
            });
        self
    }

    /// The last LDS version the proxy accepted (top-level `version_info` of the section).
    pub fn listeners_version(&mut self, version_info: impl Into<String>) -> &mut Self {
        self.listeners.version_info = version_info.into();
        self
    }

    /// A listener from the bootstrap.
    pub fn static_listener(
        &mut self,
        listener: Any,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.listeners
            .static_listeners
            .push(listeners_config_dump::StaticListener {
                listener: Some(listener),
                last_updated: last_updated.map(timestamp),
            });
        self
    }

    /// A listener received over LDS and serving (`dynamic_listeners[].active_state`).
    pub fn dynamic_listener(
        &mut self,
        name: impl Into<String>,
        version_info: impl Into<String>,
        listener: Any,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.listeners
            .dynamic_listeners
            .push(listeners_config_dump::DynamicListener {
                name: name.into(),
                active_state: Some(listeners_config_dump::DynamicListenerState {
                    version_info: version_info.into(),
                    listener: Some(listener),
                    last_updated: last_updated.map(timestamp),
                }),
                ..Default::default()
            });
        self
    }

    /// A route configuration from the bootstrap (or inline in a listener).
    pub fn static_route_config(
        &mut self,
        route_config: Any,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.routes
            .static_route_configs
            .push(routes_config_dump::StaticRouteConfig {
                route_config: Some(route_config),
                last_updated: last_updated.map(timestamp),
            });
        self
    }

    /// A route configuration received over RDS.
    pub fn dynamic_route_config(
        &mut self,
        version_info: impl Into<String>,
        route_config: Any,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.routes
            .dynamic_route_configs
            .push(routes_config_dump::DynamicRouteConfig {
                version_info: version_info.into(),
                route_config: Some(route_config),
                last_updated: last_updated.map(timestamp),
                ..Default::default()
            });
        self
    }

    /// A load assignment from the bootstrap.
    pub fn static_endpoint_config(
        &mut self,
        endpoint_config: Any,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.endpoints
            .static_endpoint_configs
            .push(endpoints_config_dump::StaticEndpointConfig {
                endpoint_config: Some(endpoint_config),
                last_updated: last_updated.map(timestamp),
            });
        self
    }

    /// A load assignment received over EDS.
    pub fn dynamic_endpoint_config(
        &mut self,
        version_info: impl Into<String>,
        endpoint_config: Any,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.endpoints.dynamic_endpoint_configs.push(
            endpoints_config_dump::DynamicEndpointConfig {
                version_info: version_info.into(),
                endpoint_config: Some(endpoint_config),
                last_updated: last_updated.map(timestamp),
                ..Default::default()
            },
        );
        self
    }

    /// A secret received over SDS and in use. Envoy redacts private keys in its dump; the
    /// caller passes the secret already redacted.
    pub fn dynamic_secret(
        &mut self,
        name: impl Into<String>,
        version_info: impl Into<String>,
        secret: Any,
        last_updated: Option<SystemTime>,
    ) -> &mut Self {
        self.secrets
            .dynamic_active_secrets
            .push(secrets_config_dump::DynamicSecret {
                name: name.into(),
                version_info: version_info.into(),
                secret: Some(secret),
                last_updated: last_updated.map(timestamp),
                ..Default::default()
            });
        self
    }

    /// The `ConfigDump` message, sections in Envoy's order. Clusters, listeners and routes
    /// are always present (as in Envoy, even when empty); bootstrap, endpoints and secrets
    /// only when given — Envoy too shows endpoints only on request (`?include_eds`).
    pub fn build(&self) -> ConfigDump {
        let mut configs = Vec::with_capacity(6);
        if let Some(bootstrap) = &self.bootstrap {
            configs.push(pack_any(bootstrap.clone()));
        }
        configs.push(pack_any(self.clusters.clone()));
        if !self.endpoints.static_endpoint_configs.is_empty()
            || !self.endpoints.dynamic_endpoint_configs.is_empty()
        {
            configs.push(pack_any(self.endpoints.clone()));
        }
        configs.push(pack_any(self.listeners.clone()));
        configs.push(pack_any(self.routes.clone()));
        if !self.secrets.dynamic_active_secrets.is_empty() {
            configs.push(pack_any(self.secrets.clone()));
        }
        ConfigDump { configs }
    }

    /// The dump as Envoy's admin API prints it.
    pub fn to_json(&self) -> Result<Value, Error> {
        message_to_json(&self.build())
    }

    /// [`Self::to_json`] with a given descriptor pool (see [`crate::json::fresh_pool`]).
    pub fn to_json_in(&self, pool: &prost_reflect::DescriptorPool) -> Result<Value, Error> {
        let dump = self.build();
        crate::json::encoded_to_json_in(
            pool,
            &<ConfigDump as prost::Name>::full_name(),
            &prost::Message::encode_to_vec(&dump),
        )
    }
}

#[cfg(test)]
mod tests;
