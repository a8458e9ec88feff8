//! Istio's standard metrics as the collector sees them: which sample names it keeps, and how
//! a sample's labels become an edge (source workload → destination service → destination
//! workload) plus the part of the edge's statistics the sample feeds.
//!
//! Everything else on a proxy's page (Envoy's own `envoy_*` stats, other labels such as
//! `source_cluster` or `destination_principal`) is dropped here, so what the windows keep is
//! per edge, never per raw series.

use std::sync::Arc;

use crate::exposition::Sample;

/// Istio's duration buckets (milliseconds), the `le` bounds of
/// `istio_request_duration_milliseconds_bucket` before `+Inf`.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Buckets kept per histogram: Istio's bounds and `+Inf`.
pub const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// The sample names the collector keeps.
pub const KEPT_METRICS: [&str; 14] = [
    "istio_requests_total",
    "istio_request_duration_milliseconds_bucket",
    "istio_request_duration_milliseconds_sum",
    "istio_request_duration_milliseconds_count",
    "istio_request_bytes_bucket",
    "istio_request_bytes_sum",
    "istio_request_bytes_count",
    "istio_response_bytes_bucket",
    "istio_response_bytes_sum",
    "istio_response_bytes_count",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
];

/// Which proxy of a call wrote the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reporter {
    Source,
    Destination,
}

/// An edge's protocol: `request_protocol` for requests, TCP for the `istio_tcp_*` metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Grpc,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

/// One side of a call as the labels name it; absent values are `unknown`, as Istio writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
}

impl Workload {
    pub fn is_unknown(&self) -> bool {
        is_unknown(&self.name)
    }
}

/// The service a call was for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `destination_service`, e.g. `user.default.svc.cluster.local`.
    pub host: Arc<str>,
}

/// The unit the windows keep statistics for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub reporter: Reporter,
    pub protocol: Protocol,
    pub source: Workload,
    pub service: Service,
    pub dest: Workload,
}

/// A response class within an edge: Kiali's response breakdown is keyed by these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodeKey {
    /// `response_code` (`200`, `503`, `0` when no response).
    pub code: Arc<str>,
    /// `grpc_response_status` (empty for plain HTTP).
    pub grpc: Arc<str>,
    /// `response_flags` (`-` when none).
    pub flags: Arc<str>,
}

impl CodeKey {
    pub fn is_5xx(&self) -> bool {
        self.code.len() == 3 && self.code.starts_with('5')
    }

    pub fn is_4xx(&self) -> bool {
        self.code.len() == 3 && self.code.starts_with('4')
    }

    /// gRPC failure as Kiali counts it: any status but OK, a missing status included.
    pub fn is_grpc_error(&self) -> bool {
        &*self.grpc != "0"
    }
}

/// What a kept sample contributes to its edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `istio_requests_total`: requests with this response, over mTLS or not.
    Requests { code: Arc<CodeKey>, mtls: bool },
    /// `istio_request_duration_milliseconds_bucket` at `le` = bucket index.
    DurationBucket(u8),
    /// `istio_tcp_sent_bytes_total` / `istio_tcp_received_bytes_total`.
    TcpBytes { mtls: bool },
    /// Kept Istio metrics no API figure is computed from yet (sizes, connection counts,
    /// histogram sums and counts), and buckets at bounds other than Istio's.
    Unused,
}

/// The metric family of a sample name, if the collector keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Requests,
    DurationBucket,
    TcpBytes,
    Other,
}

pub fn classify(name: &str) -> Option<Metric> {
    match name {
        "istio_requests_total" => Some(Metric::Requests),
        "istio_request_duration_milliseconds_bucket" => Some(Metric::DurationBucket),
        "istio_tcp_sent_bytes_total" | "istio_tcp_received_bytes_total" => Some(Metric::TcpBytes),
        n if KEPT_METRICS.contains(&n) => Some(Metric::Other),
        _ => None,
    }
}

/// Index of an `le` bound among Istio's duration buckets (`+Inf` is the last).
pub fn bucket_index(le: &str) -> Option<u8> {
    let v: f64 = match le {
        "+Inf" | "Inf" | "inf" => return Some(DURATION_BUCKETS.len() as u8),
        s => s.parse().ok()?,
    };
    DURATION_BUCKETS
        .iter()
        .position(|b| (b - v).abs() <= b * 1e-9)
        .map(|i| i as u8)
}

/// The labels of one kept sample, read once when its series is first seen.
pub struct SampleLabels {
    pub edge: EdgeKey,
    pub code: CodeKey,
    pub mtls: bool,
    pub le: Option<String>,
}

pub fn is_unknown(v: &str) -> bool {
    v.is_empty() || v == "unknown"
}

impl SampleLabels {
    pub fn read(metric: Metric, sample: &Sample<'_>) -> Self {
        Self::from_labels(metric, sample.labels())
    }

    /// The same mapping from any label pairs: a scraped sample's, or a series in a
    /// Prometheus query result (where empty labels are absent, which reads the same).
    pub fn from_labels<K, V>(metric: Metric, labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut l = RawLabels::default();
        for (k, v) in labels {
            let slot = match k.as_ref() {
                "reporter" => &mut l.reporter,
                "source_workload" => &mut l.src_workload,
                "source_workload_namespace" => &mut l.src_ns,
                "source_app" => &mut l.src_app,
                "source_version" => &mut l.src_version,
                "destination_workload" => &mut l.dst_workload,
                "destination_workload_namespace" => &mut l.dst_ns,
                "destination_app" => &mut l.dst_app,
                "destination_version" => &mut l.dst_version,
                "destination_service" => &mut l.svc_host,
                "destination_service_name" => &mut l.svc_name,
                "destination_service_namespace" => &mut l.svc_ns,
                "request_protocol" => &mut l.protocol,
                "response_code" => &mut l.code,
                "grpc_response_status" => &mut l.grpc,
                "connection_security_policy" => &mut l.security,
                "response_flags" => &mut l.flags,
                "le" => &mut l.le,
                _ => continue,
            };
            *slot = Some(v.as_ref().to_string());
        }
        let s = |v: &Option<String>| -> Arc<str> {
            match v.as_deref() {
                Some(v) if !v.is_empty() => Arc::from(v),
                _ => Arc::from("unknown"),
            }
        };
        let protocol = match metric {
            Metric::TcpBytes => Protocol::Tcp,
            _ => match l.protocol.as_deref() {
                Some("grpc") => Protocol::Grpc,
                Some("tcp") => Protocol::Tcp,
                _ => Protocol::Http,
            },
        };
        let host = s(&l.svc_host);
        let name = match l.svc_name.as_deref() {
            Some(n) if !is_unknown(n) => Arc::from(n),
            _ => Arc::clone(&host),
        };
        SampleLabels {
            edge: EdgeKey {
                reporter: match l.reporter.as_deref() {
                    Some("source") => Reporter::Source,
                    _ => Reporter::Destination,
                },
                protocol,
                source: Workload {
                    namespace: s(&l.src_ns),
                    name: s(&l.src_workload),
                    app: s(&l.src_app),
                    version: s(&l.src_version),
                },
                service: Service {
                    namespace: s(&l.svc_ns),
                    name,
                    host,
                },
                dest: Workload {
                    namespace: s(&l.dst_ns),
                    name: s(&l.dst_workload),
                    app: s(&l.dst_app),
                    version: s(&l.dst_version),
                },
            },
            code: CodeKey {
                code: s(&l.code),
                grpc: Arc::from(l.grpc.as_deref().unwrap_or("")),
                flags: match l.flags.as_deref() {
                    Some(f) if !f.is_empty() => Arc::from(f),
                    _ => Arc::from("-"),
                },
            },
            mtls: l.security.as_deref() == Some("mutual_tls"),
            le: l.le,
        }
    }
}

#[derive(Default)]
struct RawLabels {
    reporter: Option<String>,
    src_workload: Option<String>,
    src_ns: Option<String>,
    src_app: Option<String>,
    src_version: Option<String>,
    dst_workload: Option<String>,
    dst_ns: Option<String>,
    dst_app: Option<String>,
    dst_version: Option<String>,
    svc_host: Option<String>,
    svc_name: Option<String>,
    svc_ns: Option<String>,
    protocol: Option<String>,
    code: Option<String>,
    grpc: Option<String>,
    security: Option<String>,
    flags: Option<String>,
    le: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::parse_line;

    #[test]
    fn labels_become_an_edge() {
        let line = r#"istio_requests_total{reporter="destination",source_workload="client",source_workload_namespace="default",source_principal="spiffe://x",source_app="client",source_version="unknown",destination_workload="user-v1",destination_workload_namespace="default",destination_app="user",destination_version="v1",destination_service="user.default.svc.cluster.local",destination_service_name="user",destination_service_namespace="default",request_protocol="grpc",response_code="200",grpc_response_status="14",connection_security_policy="mutual_tls",response_flags="-"} 3"#;
        let s = parse_line(line).unwrap().unwrap();
        let l = SampleLabels::read(Metric::Requests, &s);
        assert_eq!(l.edge.reporter, Reporter::Destination);
        assert_eq!(l.edge.protocol, Protocol::Grpc);
        assert_eq!(&*l.edge.source.name, "client");
        assert_eq!(&*l.edge.source.version, "unknown");
        assert_eq!(&*l.edge.service.name, "user");
        assert_eq!(&*l.edge.service.host, "user.default.svc.cluster.local");
        assert_eq!(&*l.edge.dest.version, "v1");
        assert!(l.mtls);
        assert!(l.code.is_grpc_error());
        assert!(!l.code.is_5xx());
    }

    #[test]
    fn missing_labels_are_unknown() {
        let s = parse_line(r#"istio_tcp_sent_bytes_total{reporter="source",destination_service="PassthroughCluster"} 10"#)
            .unwrap()
            .unwrap();
        let l = SampleLabels::read(Metric::TcpBytes, &s);
        assert_eq!(l.edge.reporter, Reporter::Source);
        assert_eq!(l.edge.protocol, Protocol::Tcp);
        assert!(l.edge.dest.is_unknown());
        assert_eq!(&*l.edge.service.name, "PassthroughCluster");
        assert_eq!(&*l.code.flags, "-");
        assert!(!l.mtls);
    }

    #[test]
    fn bucket_bounds() {
        assert_eq!(bucket_index("0.5"), Some(0));
        assert_eq!(bucket_index("1.0"), Some(1));
        assert_eq!(bucket_index("1"), Some(1));
        assert_eq!(bucket_index("3600000"), Some(18));
        assert_eq!(bucket_index("3.6e6"), Some(18));
        assert_eq!(bucket_index("+Inf"), Some(19));
        assert_eq!(bucket_index("7"), None);
        assert_eq!(classify("istio_requests_total"), Some(Metric::Requests));
        assert_eq!(classify("istio_response_bytes_sum"), Some(Metric::Other));
        assert_eq!(classify("envoy_cluster_upstream_rq"), None);
    }
}
