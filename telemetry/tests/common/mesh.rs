//! The fake mesh the end-to-end tests run: a client calling the `user` service, split 50/50
//! over user-v1 and user-v2 (all mTLS, some 503s), plus raw TCP to an outside address; the
//! pages its proxies serve (counters that advance with time), the `MeshView` listing them,
//! and helpers to pick nodes and edges out of the graph JSON.

use std::sync::Mutex;
use std::time::Duration;

use mast_telemetry::{MeshView, ServiceFeatures, Target};
use serde_json::Value;

use super::FakeProxy;

/// Requests per second each user version serves.
pub const RPS: f64 = 20.0;

pub struct Mesh {
    pub targets: Mutex<Vec<Target>>,
}

impl MeshView for Mesh {
    fn targets(&self) -> Vec<Target> {
        self.targets.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn service_features(&self, namespace: &str, service: &str) -> ServiceFeatures {
        if (namespace, service) == ("default", "user") {
            ServiceFeatures {
                traffic_shifting: true,
                virtual_services: vec!["user".into()],
                ..Default::default()
            }
        } else {
            ServiceFeatures::default()
        }
    }
}

pub fn target(
    id: &str,
    workload: &str,
    app: &str,
    version: Option<&str>,
    proxy: &FakeProxy,
) -> Target {
    Target {
        id: format!("sidecar~127.0.0.1~{id}.default~default.svc.cluster.local"),
        namespace: "default".into(),
        workload: workload.into(),
        app: Some(app.into()),
        version: version.map(str::to_string),
        stats_url: proxy.stats_url(),
    }
}

/// The label set mast-proxy writes (proxy/src/metrics.rs order), for a call client → user.
pub fn labels(reporter: &str, version: &str, code: u16) -> String {
    let security = if reporter == "destination" {
        "mutual_tls"
    } else {
        "unknown"
    };
    format!(
        "reporter=\"{reporter}\",source_workload=\"client\",source_workload_namespace=\"default\",\
         source_principal=\"spiffe://cluster.local/ns/default/sa/client\",source_app=\"client\",\
         source_version=\"unknown\",source_cluster=\"Kubernetes\",destination_workload=\"user-{version}\",\
         destination_workload_namespace=\"default\",destination_principal=\"spiffe://cluster.local/ns/default/sa/user\",\
         destination_app=\"user\",destination_version=\"{version}\",\
         destination_service=\"user.default.svc.cluster.local\",destination_service_name=\"user\",\
         destination_service_namespace=\"default\",destination_cluster=\"Kubernetes\",request_protocol=\"http\",\
         response_code=\"{code}\",grpc_response_status=\"\",connection_security_policy=\"{security}\",response_flags=\"{}\"",
        if code == 503 { "URX" } else { "-" }
    )
}

/// Istio's duration buckets; every request of the fakes takes `ms`.
pub const BUCKETS: [&str; 20] = [
    "0.5",
    "1.0",
    "5.0",
    "10.0",
    "25.0",
    "50.0",
    "100.0",
    "250.0",
    "500.0",
    "1000.0",
    "2500.0",
    "5000.0",
    "10000.0",
    "30000.0",
    "60000.0",
    "300000.0",
    "600000.0",
    "1800000.0",
    "3600000.0",
    "+Inf",
];

pub fn request_series(out: &mut String, labels: &str, count: u64, ms: f64) {
    out.push_str(&format!("istio_requests_total{{{labels}}} {count}\n"));
    out.push_str(&format!(
        "istio_request_duration_milliseconds_sum{{{labels}}} {}\n",
        count as f64 * ms
    ));
    out.push_str(&format!(
        "istio_request_duration_milliseconds_count{{{labels}}} {count}\n"
    ));
    for le in BUCKETS {
        let bound: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        let n = if ms <= bound { count } else { 0 };
        out.push_str(&format!(
            "istio_request_duration_milliseconds_bucket{{le=\"{le}\",{labels}}} {n}\n"
        ));
    }
}

/// Calls so far to user-`version`, failing `fail_per_mille`‰ with 503.
pub fn counts(elapsed: Duration, fail_per_mille: u64) -> (u64, u64) {
    let total = (elapsed.as_secs_f64() * RPS) as u64;
    let failed = total * fail_per_mille / 1000;
    (total - failed, failed)
}

/// The server side's page: destination-reported calls, 5xx at 30 ms, the rest at 7 ms.
pub fn user_page(version: &'static str, fail_per_mille: u64) -> impl Fn(Duration) -> String {
    move |elapsed| {
        let (ok, failed) = counts(elapsed, fail_per_mille);
        let mut out =
            String::from("# HELP istio_requests Requests.\n# TYPE istio_requests counter\n");
        request_series(&mut out, &labels("destination", version, 200), ok, 7.0);
        if failed > 0 {
            request_series(&mut out, &labels("destination", version, 503), failed, 30.0);
        }
        out.push_str("envoy_server_uptime 12\n# EOF\n");
        out
    }
}

/// The client's page: the same calls as the client saw them (to be ignored: the destinations
/// report), and raw TCP to an address outside the mesh (PassthroughCluster, source only).
pub fn client_page(elapsed: Duration) -> String {
    let mut out = String::new();
    for (version, fail) in [("v1", 50), ("v2", 150)] {
        let (ok, failed) = counts(elapsed, fail);
        request_series(&mut out, &labels("source", version, 200), ok, 8.0);
        request_series(&mut out, &labels("source", version, 503), failed, 31.0);
    }
    let bytes = (elapsed.as_secs_f64() * 1000.0) as u64;
    out.push_str(&format!(
        "istio_tcp_sent_bytes_total{{reporter=\"source\",source_workload=\"client\",source_workload_namespace=\"default\",\
         source_app=\"client\",source_version=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",\
         destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"PassthroughCluster\",\
         destination_service_name=\"PassthroughCluster\",destination_service_namespace=\"unknown\",\
         connection_security_policy=\"unknown\",response_flags=\"-\"}} {bytes}\n"
    ));
    out
}

pub fn data(list: &Value) -> Vec<Value> {
    list.as_array()
        .map(|a| a.iter().map(|e| e["data"].clone()).collect())
        .unwrap_or_default()
}

pub fn one(list: &[Value], what: &str, f: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let hits: Vec<&Value> = list.iter().filter(|v| f(v)).collect();
    match hits.as_slice() {
        [v] => Ok((*v).clone()),
        _ => Err(format!("{} matches for {what}", hits.len())),
    }
}

pub fn edge(edges: &[Value], from: &Value, to: &Value) -> Result<Value, String> {
    one(edges, "edge", |e| {
        e["source"] == from["id"] && e["target"] == to["id"]
    })
}

pub fn near(v: &Value, want: f64, tolerance: f64) -> bool {
    v.as_f64()
        .is_some_and(|x| (x - want).abs() <= tolerance * want)
}
