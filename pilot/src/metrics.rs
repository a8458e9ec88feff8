//! pilot's Prometheus metrics, named as istiod names them so existing dashboards and alerts
//! (`pilot_xds`, `pilot_xds_pushes`, `pilot_proxy_convergence_time`, …) work unchanged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    /// Connected proxies (`pilot_xds`).
    pub connected: Gauge,
    /// Responses sent, by type (`pilot_xds_pushes`).
    pub pushes: Family<TypeLabel, Counter>,
    /// NACKs received, by type (`pilot_total_xds_rejects`).
    pub rejects: Family<TypeLabel, Counter>,
    /// Seconds from a config change to its push to a proxy (`pilot_proxy_convergence_time`).
    pub convergence: Histogram,
    /// Resources currently rejected by validation (`pilot_total_rejected_configs`, as a gauge
    /// of what is wrong now rather than a count of events).
    pub rejected_configs: Gauge,
    /// Accepted config changes (`pilot_config_changes`… as `mast_config_changes`).
    pub config_changes: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            connected: Gauge::default(),
            pushes: Family::default(),
            rejects: Family::default(),
            convergence: Histogram::new([
                0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0,
            ]),
            rejected_configs: Gauge::default(),
            config_changes: Counter::default(),
        };
        registry.register("pilot_xds", "Connected xDS clients", m.connected.clone());
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses rejected (NACKed) by proxies, by type",
            m.rejects.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a config change to the push reaching a proxy",
            m.convergence.clone(),
        );
        registry.register(
            "pilot_total_rejected_configs",
            "Configuration resources currently rejected by validation",
            m.rejected_configs.clone(),
        );
        registry.register(
            "mast_config_changes",
            "Accepted configuration changes",
            m.config_changes.clone(),
        );
        m
    }

    pub fn record_push(&self, xds_type: &'static str) {
        self.pushes
            .get_or_create(&TypeLabel { r#type: xds_type })
            .inc();
    }

    pub fn record_nack(&self, xds_type: &'static str) {
        self.rejects
            .get_or_create(&TypeLabel { r#type: xds_type })
            .inc();
    }
}
