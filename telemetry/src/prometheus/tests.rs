use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::graph::{Graph, GraphQuery, GraphType};
use crate::mesh::{ServiceFeatures, Target};
use crate::target::TargetState;

struct Mesh;

impl MeshView for Mesh {
    fn targets(&self) -> Vec<Target> {
        Vec::new()
    }

    fn service_features(&self, _: &str, service: &str) -> ServiceFeatures {
        ServiceFeatures {
            traffic_shifting: service == "user",
            ..Default::default()
        }
    }
}

#[test]
fn kiali_request_query() {
    let q = edge_query(
        Family::Requests,
        Reporter::Destination,
        &["shop".to_string()],
        300,
    );
    let by = "reporter, source_workload_namespace, source_workload, source_app, source_version, \
              destination_service_namespace, destination_service, destination_service_name, \
              destination_workload_namespace, destination_workload, destination_app, \
              destination_version, request_protocol, response_code, grpc_response_status, \
              response_flags, connection_security_policy";
    assert_eq!(
        q,
        format!(
            "sum(rate(istio_requests_total{{reporter=\"destination\",destination_service_namespace=\"shop\"}}[300s])) by ({by}) \
             or sum(rate(istio_requests_total{{reporter=\"destination\",source_workload_namespace=\"shop\"}}[300s])) by ({by})"
        )
    );
    let q = edge_query(Family::Duration, Reporter::Source, &["a".into()], 60);
    assert!(q.starts_with(
        "sum(rate(istio_request_duration_milliseconds_bucket{reporter=\"source\",destination_service_namespace=\"a\"}[60s])) by (le, reporter, "
    ));
    assert!(q.contains("request_protocol) or sum("));
    let q = edge_query(Family::TcpSent, Reporter::Source, &["a".into()], 60);
    assert!(q.contains("istio_tcp_sent_bytes_total{reporter=\"source\""));
    assert!(q.contains("request_protocol, connection_security_policy)"));
}

#[test]
fn namespaces_are_quoted_and_escaped() {
    assert_eq!(namespace_matcher(&["default".into()]), "=\"default\"");
    assert_eq!(
        namespace_matcher(&["a".into(), "b-c".into()]),
        "=~\"a|b-c\""
    );
    // Names come from the URL: no way out of the string or the regex.
    assert_eq!(
        namespace_matcher(&["x\"}".into()]),
        "=\"x\\\"}\"",
        "one name, a plain string"
    );
    assert_eq!(
        namespace_matcher(&["a.b".into(), "c|d\\".into()]),
        r#"=~"a\\.b|c\\|d\\\\""#
    );
}

#[test]
fn steps_and_rate_ranges() {
    let source = |scrape: u64| {
        let mut c = PrometheusConfig::new("http://127.0.0.1:9090");
        c.scrape_interval = Duration::from_secs(scrape);
        PrometheusSource::new(&c).unwrap()
    };
    let s = |d: Duration| d.as_secs();
    let p = source(15);
    assert_eq!(p.steps(Period::M1).0.as_secs(), 15);
    assert_eq!(s(p.steps(Period::M1).1), 60);
    assert_eq!(s(p.steps(Period::M5).0), 15);
    assert_eq!(s(p.steps(Period::H1).0), 60);
    assert_eq!(s(p.steps(Period::H1).1), 60);
    let p = source(1);
    assert_eq!((s(p.steps(Period::M1).0), s(p.steps(Period::M1).1)), (1, 4));
    assert_eq!(
        (s(p.steps(Period::M15).0), s(p.steps(Period::M15).1)),
        (15, 15)
    );
    let mut c = PrometheusConfig::new("http://127.0.0.1:9090");
    c.scrape_interval = Duration::ZERO;
    assert!(PrometheusSource::new(&c).is_err());
}

#[test]
fn instances() {
    assert_eq!(
        instance_of("http://10.0.0.7:15090/stats/prometheus").as_deref(),
        Some("10.0.0.7:15090")
    );
    assert_eq!(
        instance_of("http://[fd00::7]:15090/stats/prometheus").as_deref(),
        Some("[fd00::7]:15090")
    );
    assert_eq!(instance_of("not a url"), None);
}

// === the same graph from a scraped page and from Prometheus' answers ===

/// Istio's duration bounds as proxies write them.
const LE: [&str; 20] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
];

/// One series of the test mesh: its labels, its family, and its count after 60 s.
struct Line {
    family: Family,
    labels: Vec<(&'static str, String)>,
    count: f64,
}

fn call(
    reporter: &str,
    dest: &str,
    version: &str,
    service: &str,
    protocol: &str,
    code: &str,
    grpc: &str,
) -> Vec<(&'static str, String)> {
    let unknown = dest == "unknown";
    vec![
        ("reporter", reporter.into()),
        ("source_workload", "client".into()),
        ("source_workload_namespace", "default".into()),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/client".into(),
        ),
        ("source_app", "client".into()),
        ("source_version", "unknown".into()),
        ("destination_workload", dest.into()),
        (
            "destination_workload_namespace",
            if unknown { "unknown" } else { "default" }.into(),
        ),
        (
            "destination_app",
            if unknown { "unknown" } else { service }.into(),
        ),
        ("destination_version", version.into()),
        (
            "destination_service",
            if unknown {
                service.to_string()
            } else {
                format!("{service}.default.svc.cluster.local")
            },
        ),
        ("destination_service_name", service.into()),
        (
            "destination_service_namespace",
            if unknown { "unknown" } else { "default" }.into(),
        ),
        ("request_protocol", protocol.into()),
        ("response_code", code.into()),
        ("grpc_response_status", grpc.into()),
        (
            "connection_security_policy",
            if reporter == "destination" {
                "mutual_tls"
            } else {
                "unknown"
            }
            .into(),
        ),
        (
            "response_flags",
            if code == "503" { "URX" } else { "-" }.into(),
        ),
    ]
}

/// `n` requests of a call, each taking `ms`: the counter and its duration buckets.
fn requests(out: &mut Vec<Line>, labels: Vec<(&'static str, String)>, n: f64, ms: f64) {
    for le in LE {
        let bound = client::parse_value(le).unwrap();
        let mut l = labels.clone();
        l.insert(0, ("le", le.to_string()));
        out.push(Line {
            family: Family::Duration,
            labels: l,
            count: if ms <= bound { n } else { 0.0 },
        });
    }
    out.push(Line {
        family: Family::Requests,
        labels,
        count: n,
    });
}

/// client → user (v1 20 rps; v2 18 rps OK + 2 rps 503), as both proxies report it; client →
/// catalog over gRPC (status 0 and 14); raw TCP to an outside address (source only).
fn mesh_lines() -> Vec<Line> {
    let mut out = Vec::new();
    for reporter in ["destination", "source"] {
        let c = |dest, v, code| call(reporter, dest, v, "user", "http", code, "");
        requests(&mut out, c("user-v1", "v1", "200"), 1200.0, 7.0);
        requests(&mut out, c("user-v2", "v2", "200"), 1080.0, 7.0);
        requests(&mut out, c("user-v2", "v2", "503"), 120.0, 30.0);
        let g = |code, status| {
            call(
                reporter,
                "catalog-v1",
                "v1",
                "catalog",
                "grpc",
                code,
                status,
            )
        };
        requests(&mut out, g("200", "0"), 540.0, 3.0);
        requests(&mut out, g("200", "14"), 60.0, 120.0);
    }
    let mut tcp = call(
        "source",
        "unknown",
        "unknown",
        "PassthroughCluster",
        "tcp",
        "",
        "",
    );
    tcp.retain(|(k, _)| !["response_code", "grpc_response_status", "response_flags"].contains(k));
    out.push(Line {
        family: Family::TcpSent,
        labels: tcp.clone(),
        count: 60_000.0,
    });
    out.push(Line {
        family: Family::TcpReceived,
        labels: tcp,
        count: 6_000.0,
    });
    out
}

/// A proxy page with every series at `scale` × its count (0: the baseline page).
fn page(lines: &[Line], scale: f64) -> String {
    let mut out = String::new();
    for l in lines {
        let labels: Vec<String> = l
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        out.push_str(&format!(
            "{}{{{}}} {}\n",
            l.family.metric(),
            labels.join(","),
            l.count * scale
        ));
    }
    out
}

/// Prometheus' answers for the same mesh: each query's `sum(rate(…[60s])) by (…)`, as JSON
/// (labels not in `by` dropped, empty ones absent), plus samples only an odd answer has.
fn answers(lines: &[Line]) -> Vec<(Family, Vec<VectorSample>)> {
    let mut out = Vec::new();
    for family in Family::ALL {
        let by = family.by();
        let by: Vec<&str> = by.split(", ").collect();
        let mut sums: BTreeMap<BTreeMap<String, String>, f64> = BTreeMap::new();
        for l in lines.iter().filter(|l| l.family == family) {
            let labels: BTreeMap<String, String> = l
                .labels
                .iter()
                .filter(|(k, v)| by.contains(k) && !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            *sums.entry(labels).or_default() += l.count / 60.0;
        }
        let mut result: Vec<Value> = sums
            .into_iter()
            .map(|(metric, rate)| json!({"metric": metric, "value": [1060.0, format!("{rate}")]}))
            .collect();
        // A rate Prometheus could not compute, and an overflow: they count nothing.
        result.push(json!({"metric": {"reporter": "destination", "destination_workload": "ghost"}, "value": [1060.0, "NaN"]}));
        result.push(json!({"metric": {"reporter": "destination", "destination_workload": "ghost2", "le": "+Inf"}, "value": [1060.0, "+Inf"]}));
        let body = json!({"status": "success", "data": {"resultType": "vector", "result": result}});
        let answer = parse_answer(StatusCode::OK, body.to_string().as_bytes()).unwrap();
        let QueryData::Vector(v) = answer.data else {
            panic!("not a vector")
        };
        out.push((family, v));
    }
    out
}

fn graph_json(state: &State, graph_type: GraphType) -> Value {
    let q = GraphQuery {
        namespaces: vec!["default".into()],
        graph_type,
        period: Period::M1,
    };
    serde_json::to_value(Graph::build(state, &q).response(&Mesh, &q, 1)).unwrap()
}

#[test]
fn same_graph_as_from_the_scraped_pages() {
    let lines = mesh_lines();
    // Scraping: a baseline page, then the page 60 s later.
    let mut target = TargetState::default();
    target.ingest(&page(&lines, 0.0));
    let ingested = target.ingest(&page(&lines, 1.0));
    assert_eq!(ingested.errors, 0);
    let mut deltas: HashMap<Arc<EdgeKey>, Delta> = HashMap::new();
    for (k, d) in ingested.deltas {
        deltas.entry(k).or_default().merge(&d);
    }
    let mut store = Store::new(3700.0);
    store.record(1000.0, 0.0, HashMap::new());
    store.record(1060.0, 60.0, deltas);
    let scraped = State {
        store,
        targets: HashMap::new(),
    };
    // Prometheus: the rates over the same minute.
    let fetched = State {
        store: window_store(answers(&lines), 1060.0, 60.0),
        targets: HashMap::new(),
    };
    for graph_type in GraphType::ALL {
        let a = graph_json(&scraped, graph_type);
        let b = graph_json(&fetched, graph_type);
        assert_eq!(a, b, "{}", graph_type.as_str());
    }
    // And the figures are the mesh's.
    let g = graph_json(&fetched, GraphType::VersionedApp);
    let edges: Vec<&Value> = g["elements"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["data"])
        .collect();
    // client → user, user → v1, user → v2, client → catalog, catalog → v1, client → passthrough.
    assert_eq!(edges.len(), 6, "{edges:#?}");
    let split: Vec<f64> = edges
        .iter()
        .filter(|e| e["rps"] == 20.0)
        .map(|e| e["percent"].as_f64().unwrap())
        .collect();
    assert_eq!(split, vec![50.0, 50.0]);
    let failing = edges.iter().find(|e| e["errorRate"] == 0.1).unwrap();
    assert_eq!(failing["health"], "failure");
    assert_eq!(failing["isMTLS"], "100");
    let grpc = edges
        .iter()
        .find(|e| e["traffic"]["protocol"] == "grpc")
        .unwrap();
    assert_eq!(grpc["rps"], 10.0);
    assert_eq!(grpc["errorRate"], 0.1);
    let tcp = edges
        .iter()
        .find(|e| e["traffic"]["protocol"] == "tcp")
        .unwrap();
    assert_eq!(tcp["tcpBytesPerSecond"], 1100.0);
}

#[test]
fn series_from_a_range_answer() {
    let key = EdgeKey {
        reporter: Reporter::Destination,
        protocol: crate::istio::Protocol::Http,
        source: crate::istio::Workload {
            namespace: "default".into(),
            name: "client".into(),
            app: "client".into(),
            version: "unknown".into(),
        },
        service: crate::istio::Service {
            namespace: "default".into(),
            name: "user".into(),
            host: "user.default.svc.cluster.local".into(),
        },
        dest: crate::istio::Workload {
            namespace: "default".into(),
            name: "user-v1".into(),
            app: "user".into(),
            version: "v1".into(),
        },
    };
    let edge_labels = json!({
        "reporter": "destination", "source_workload": "client",
        "source_workload_namespace": "default", "source_app": "client",
        "source_version": "unknown", "destination_workload": "user-v1",
        "destination_workload_namespace": "default", "destination_app": "user",
        "destination_version": "v1", "destination_service": "user.default.svc.cluster.local",
        "destination_service_name": "user", "destination_service_namespace": "default",
        "request_protocol": "http"
    });
    let with = |extra: Value| {
        let mut m = edge_labels.clone();
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    };
    let matrix = |result: Value| {
        let body = json!({"status": "success", "data": {"resultType": "matrix", "result": result}});
        match parse_answer(StatusCode::OK, body.to_string().as_bytes())
            .unwrap()
            .data
        {
            QueryData::Matrix(m) => m,
            other => panic!("{other:?}"),
        }
    };
    // Grid: 100, 110, 120, 130 (step 10 s).
    let requests = matrix(json!([
        {"metric": with(json!({"response_code": "200", "connection_security_policy": "mutual_tls"})),
         "values": [[100, "4"], [110, "NaN"], [130, "2"], [999, "7"], [40, "7"]]},
        {"metric": with(json!({"response_code": "503", "connection_security_policy": "mutual_tls"})),
         "values": [[100, "1"], [130, "+Inf"]]},
        // Another edge, not asked for.
        {"metric": with(json!({"destination_workload": "user-v2", "response_code": "200"})),
         "values": [[100, "50"]]}
    ]));
    let buckets = matrix(json!([
        {"metric": with(json!({"le": "10"})), "values": [[100, "5"], [130, "2"]]},
        {"metric": with(json!({"le": "+Inf"})), "values": [[100, "5"], [130, "2"]]}
    ]));
    let grid = Grid {
        start: 100.0,
        step: 10.0,
        points: 4,
    };
    let wanted: HashSet<&EdgeKey> = HashSet::from([&key]);
    let store = steps_store(
        vec![(Family::Requests, requests), (Family::Duration, buckets)],
        &grid,
        &wanted,
    );
    assert_eq!(store.edge_count(), 1);
    let s = store.series([&key], &store.window(40.0));
    let t: Vec<f64> = s.rps.iter().map(|p| p[0]).collect();
    assert_eq!(t, vec![100.0, 110.0, 120.0, 130.0]);
    let rps: Vec<f64> = s.rps.iter().map(|p| p[1]).collect();
    assert_eq!(rps, vec![5.0, 0.0, 0.0, 2.0]);
    assert_eq!(s.error_rate[0][1], 0.2);
    assert_eq!(s.error_rate[3][1], 0.0);
    // All requests in (5, 10]: p95 interpolates to 9.75.
    assert!((s.p95[0][1] - 9.75).abs() < 1e-9, "{:?}", s.p95);
    assert_eq!(s.p95[1][1], 0.0);
}
