//! pilot's Prometheus metrics and mastd's `/metrics` page, named and typed as istiod's so
//! Istio's Grafana dashboards (Control Plane, Performance) and alerts work unchanged.
//!
//! istiod serves the Prometheus text format 0.0.4, where a counter's samples carry the
//! family's name as it is (`pilot_xds_pushes`, `citadel_server_csr_count`,
//! `sidecar_injection_success_total`). prometheus-client only writes OpenMetrics, which
//! requires a `_total` suffix on counter samples, so [`encode_text`] turns its page into 0.0.4:
//! every family keeps the name it was registered under, exactly. The `process_*` series
//! (CPU, resident and virtual memory, open file descriptors) are read from `/proc` at each
//! scrape, as client_golang's process collector does for istiod.
//!
//! Every family without labels exists from the start (at 0), and the labelled ones mastd
//! counts are created at 0 too, so a dashboard panel shows 0 rather than "No data".

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The version `istio_build` and `pilot_info` report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The content type of [`encode_text`]'s page.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// istiod's `pilot_xds_push_time` buckets (seconds).
const PUSH_TIME_BUCKETS: [f64; 8] = [0.01, 0.1, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
/// istiod's `pilot_xds_config_size_bytes` buckets.
const CONFIG_SIZE_BUCKETS: [f64; 6] = [1.0, 10_000.0, 1_000_000.0, 4e6, 1e7, 4e7];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

/// `pilot_k8s_cfg_events` / `pilot_k8s_reg_events` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub r#type: &'static str,
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    tag: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(PUSH_TIME_BUCKETS)
}

fn bytes_histogram() -> Histogram {
    Histogram::new(CONFIG_SIZE_BUCKETS)
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
    /// Accepted config changes (`mast_config_changes`).
    pub config_changes: Counter,
    /// Services in the current model (`pilot_services`).
    pub services: Gauge,
    /// Seconds to build and send one xDS response, by type (`pilot_xds_push_time`).
    pub push_time: Family<TypeLabel, Histogram, fn() -> Histogram>,
    /// Encoded size of one xDS response, by type (`pilot_xds_config_size_bytes`).
    pub config_size: Family<TypeLabel, Histogram, fn() -> Histogram>,
    /// Pushes started, by reason (`pilot_push_triggers`; mastd pushes on `config`).
    pub push_triggers: Family<TypeLabel, Counter>,
    /// Config events (`pilot_k8s_cfg_events`): mastd counts each accepted change of its
    /// config source as `{type="config",event="update"}` (the changed kinds are not tracked).
    pub cfg_events: Family<EventLabels, Counter>,
    /// Service-registry events (`pilot_k8s_reg_events`): mastd reads services as config, so
    /// they are counted in `cfg_events`; the family is here, at 0, for the dashboard's panel.
    pub reg_events: Family<EventLabels, Counter>,
    /// Responses that could not be generated (`pilot_total_xds_internal_errors`).
    pub internal_errors: Counter,
    /// Validating-webhook verdicts (`galley_validation_passed`/`_failed`). mastd has no
    /// validating webhook (it rejects bad files as it loads them, see `rejected_configs`), so
    /// these stay 0; they exist so the Control Plane dashboard shows 0, not "No data".
    pub validation_passed: Counter,
    pub validation_failed: Counter,
}

/// The config event mastd counts (see [`Metrics::cfg_events`]).
pub const CONFIG_UPDATE: EventLabels = EventLabels {
    r#type: "config",
    event: "update",
};

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
            services: Gauge::default(),
            push_time: Family::new_with_constructor(seconds_histogram),
            config_size: Family::new_with_constructor(bytes_histogram),
            push_triggers: Family::default(),
            cfg_events: Family::default(),
            reg_events: Family::default(),
            internal_errors: Counter::default(),
            validation_passed: Counter::default(),
            validation_failed: Counter::default(),
        };
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                component: "pilot",
                tag: VERSION,
            })
            .set(1);
        registry.register("istio_build", "Istio component build info", build);
        let info = Family::<VersionLabel, Gauge>::default();
        info.get_or_create(&VersionLabel { version: VERSION })
            .set(1);
        registry.register("pilot_info", "Pilot version and build information.", info);
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
            "pilot_total_xds_internal_errors",
            "xDS responses that could not be generated",
            m.internal_errors.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a config change to the push reaching a proxy",
            m.convergence.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Seconds to build and send one xDS response, by type",
            m.push_time.clone(),
        );
        registry.register(
            "pilot_xds_config_size_bytes",
            "Encoded size of one xDS response, by type",
            m.config_size.clone(),
        );
        registry.register(
            "pilot_push_triggers",
            "Pushes started, by reason",
            m.push_triggers.clone(),
        );
        registry.register(
            "pilot_k8s_cfg_events",
            "Configuration events",
            m.cfg_events.clone(),
        );
        registry.register(
            "pilot_k8s_reg_events",
            "Service registry events",
            m.reg_events.clone(),
        );
        registry.register(
            "pilot_services",
            "Services known to pilot",
            m.services.clone(),
        );
        registry.register(
            "pilot_total_rejected_configs",
            "Configuration resources currently rejected by validation",
            m.rejected_configs.clone(),
        );
        registry.register(
            "galley_validation_passed",
            "Resources that passed the validating webhook",
            m.validation_passed.clone(),
        );
        registry.register(
            "galley_validation_failed",
            "Resources that failed the validating webhook",
            m.validation_failed.clone(),
        );
        registry.register(
            "mast_config_changes",
            "Accepted configuration changes",
            m.config_changes.clone(),
        );
        // The labelled series mastd counts, at 0 from the start.
        let _ = m
            .push_triggers
            .get_or_create(&TypeLabel { r#type: "config" });
        for r#type in ["cds", "eds", "lds", "rds"] {
            let _ = m.rejects.get_or_create(&TypeLabel { r#type });
        }
        let _ = m.cfg_events.get_or_create(&CONFIG_UPDATE);
        let _ = m.reg_events.get_or_create(&EventLabels {
            r#type: "Services",
            event: "add",
        });
        m
    }

    /// One xDS response sent: its type, how long it took to build and send, its size.
    pub fn record_push(&self, xds_type: &'static str, took: Duration, bytes: usize) {
        let labels = TypeLabel { r#type: xds_type };
        self.pushes.get_or_create(&labels).inc();
        self.push_time
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.config_size
            .get_or_create(&labels)
            .observe(bytes as f64);
    }

    pub fn record_nack(&self, xds_type: &'static str) {
        self.rejects
            .get_or_create(&TypeLabel { r#type: xds_type })
            .inc();
    }

    /// An accepted change of the config source, pushed to the proxies; `services` in the
    /// new model.
    pub fn record_config_change(&self, services: usize) {
        self.config_changes.inc();
        self.cfg_events.get_or_create(&CONFIG_UPDATE).inc();
        self.push_triggers
            .get_or_create(&TypeLabel { r#type: "config" })
            .inc();
        self.services
            .set(i64::try_from(services).unwrap_or(i64::MAX));
    }
}

/// `registry` as istiod's `/metrics` page: Prometheus text 0.0.4 with every family under the
/// exact name it was registered with (no `_total` added to counters), then `process_*`.
pub fn encode_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut open_metrics = String::new();
    prometheus_client::encoding::text::encode(&mut open_metrics, registry)?;
    let mut out = to_text_004(&open_metrics);
    write_process_metrics(&mut out, &ProcessStats::read())?;
    Ok(out)
}

/// prometheus-client's OpenMetrics page as text 0.0.4: counter samples lose the `_total`
/// OpenMetrics adds (so the sample is named as its family), `# UNIT` and `# EOF` go.
fn to_text_004(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut counter: Option<&str> = None;
    for line in page.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            counter = match rest.split_once(' ') {
                Some((family, "counter")) => Some(family),
                _ => None,
            };
        } else if let Some(family) = counter
            && let Some(rest) = line
                .strip_prefix(family)
                .and_then(|r| r.strip_prefix("_total"))
            && (rest.starts_with('{') || rest.starts_with(' '))
        {
            out.push_str(family);
            out.push_str(rest);
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// This process's figures, from `/proc/self`.
#[derive(Debug, Default, Clone, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    start_time_seconds: f64,
}

impl ProcessStats {
    fn read() -> Self {
        let mut s = Self::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            s.apply_stat(&stat, boot_time().unwrap_or(0.0));
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let kb = |rest: &str| {
                    rest.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(0, |v| v * 1024)
                };
                if let Some(rest) = line.strip_prefix("VmRSS:") {
                    s.resident_bytes = kb(rest);
                } else if let Some(rest) = line.strip_prefix("VmSize:") {
                    s.virtual_bytes = kb(rest);
                }
            }
        }
        s.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            s.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        s
    }

    /// utime, stime and starttime from `/proc/self/stat`, in clock ticks of 1/100 s (Linux's
    /// fixed USER_HZ for `/proc`).
    fn apply_stat(&mut self, stat: &str, boot_time: f64) {
        // The command name is in parentheses and may hold spaces: count after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); utime is field 14, stime 15, starttime 22.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            self.cpu_seconds = (utime + stime) / 100.0;
        }
        if let Some(start) = field(22) {
            self.start_time_seconds = boot_time + start / 100.0;
        }
    }
}

/// Boot time (Unix seconds), from `/proc/stat`.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn write_process_metrics(out: &mut String, p: &ProcessStats) -> std::fmt::Result {
    let families: [(&str, &str, &str, f64); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes as f64,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds as f64,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in families {
        writeln!(out, "# HELP {name} {help}")?;
        writeln!(out, "# TYPE {name} {kind}")?;
        writeln!(out, "{name} {value}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(page: &'a str, name: &str) -> Option<&'a str> {
        page.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
    }

    #[test]
    fn counters_keep_istiods_names_and_start_at_zero() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let page = encode_text(&registry).unwrap();
        for name in [
            "pilot_xds",
            "pilot_total_xds_internal_errors",
            "galley_validation_passed",
            "galley_validation_failed",
            "pilot_services",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
        ] {
            assert!(sample(&page, name).is_some(), "{name} missing:\n{page}");
        }
        assert_eq!(
            sample(&page, "pilot_push_triggers"),
            Some(r#"pilot_push_triggers{type="config"} 0"#)
        );
        // A family's label sets come out in hash order: look for the line, not the first one.
        for t in ["cds", "eds", "lds", "rds"] {
            let line = format!(r#"pilot_total_xds_rejects{{type="{t}"}} 0"#);
            assert!(page.lines().any(|l| l == line), "{line} missing:\n{page}");
        }
        assert!(sample(&page, "istio_build").is_some_and(|l| l.contains(r#"component="pilot""#)));
        assert!(!page.contains("_total{type"), "{page}");
        assert!(!page.contains("# EOF"));

        m.record_push("cds", Duration::from_millis(3), 2048);
        m.record_config_change(4);
        let page = encode_text(&registry).unwrap();
        assert_eq!(
            sample(&page, "pilot_xds_pushes"),
            Some(r#"pilot_xds_pushes{type="cds"} 1"#)
        );
        assert!(
            page.contains(r#"pilot_xds_push_time_bucket{le="0.01",type="cds"} 1"#),
            "{page}"
        );
        assert!(page.contains(r#"pilot_xds_config_size_bytes_bucket{le="10000.0",type="cds"} 1"#));
        assert!(page.contains(r#"pilot_k8s_cfg_events{type="config",event="update"} 1"#));
        assert_eq!(sample(&page, "pilot_services"), Some("pilot_services 4"));
        let resident: f64 = sample(&page, "process_resident_memory_bytes")
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(resident > 1e5, "{resident}");
    }

    #[test]
    fn text_004_strips_only_the_suffix_openmetrics_adds() {
        let page = "# HELP a_total x\n# TYPE a_total counter\na_total_total{k=\"v\"} 2\n\
                    # TYPE b counter\nb_total 1\n# TYPE c gauge\nc_total 3\n# UNIT c s\n# EOF\n";
        assert_eq!(
            to_text_004(page),
            "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 2\n\
             # TYPE b counter\nb 1\n# TYPE c gauge\nc_total 3\n"
        );
    }

    #[test]
    fn proc_stat_with_a_spaced_command_name() {
        let mut p = ProcessStats::default();
        let stat = "42 (my (od) d) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 \
                    1000000 200 18446744073709551615";
        p.apply_stat(stat, 1_700_000_000.0);
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
    }
}
