use super::*;

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest as UpstreamRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as UpstreamValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

fn span(error: bool, kind: Kind, parent: Option<u64>) -> SpanData {
    SpanData {
        trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
        trace_id_128: true,
        span_id: 0x00f067aa0ba902b7,
        parent_id: parent,
        name: "reviews.default.svc.cluster.local:9080/*".into(),
        kind,
        start: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123),
        duration: Duration::from_micros(1500),
        tags: vec![
            ("http.status_code", if error { "503" } else { "200" }.into()),
            ("component", "proxy".into()),
            ("zone", String::new()),
        ],
        custom: vec![("istio.canonical_service".into(), "productpage".into())],
        tracestate: "vendor=x".into(),
        error,
        shared: false,
    }
}

fn local() -> Local {
    Local {
        service_cluster: "productpage.default".into(),
        ip: "10.0.0.7".parse().unwrap(),
    }
}

#[test]
fn otlp_decodes_with_the_upstream_schema() {
    let spans = [
        span(false, Kind::Client, Some(0x1122334455667788)),
        span(true, Kind::Server, None),
    ];
    let bytes = otlp_request(&spans, "productpage.default").encode_to_vec();
    let req = UpstreamRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(req.resource_spans.len(), 1);
    let rs = &req.resource_spans[0];
    let resource = rs.resource.as_ref().unwrap();
    assert_eq!(resource.attributes[0].key, "service.name");
    assert_eq!(
        resource.attributes[0].value.as_ref().unwrap().value,
        Some(UpstreamValue::StringValue("productpage.default".into()))
    );
    let ss = &rs.scope_spans[0];
    assert_eq!(ss.scope.as_ref().unwrap().name, "envoy");
    let [client, server] = &ss.spans[..] else {
        panic!("two spans")
    };
    assert_eq!(
        client.trace_id,
        hex("4bf92f3577b34da6a3ce929d0e0e4736"),
        "16 big-endian bytes"
    );
    assert_eq!(client.span_id, hex("00f067aa0ba902b7"));
    assert_eq!(client.parent_span_id, hex("1122334455667788"));
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert!(server.parent_span_id.is_empty());
    assert_eq!(client.name, "reviews.default.svc.cluster.local:9080/*");
    assert_eq!(client.trace_state, "vendor=x");
    assert_eq!(client.start_time_unix_nano, 1_700_000_000_000_123_000);
    assert_eq!(
        client.end_time_unix_nano - client.start_time_unix_nano,
        1_500_000
    );
    let attrs: Vec<(String, Option<UpstreamValue>)> = client
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
        .collect();
    assert!(attrs.contains(&(
        "istio.canonical_service".into(),
        Some(UpstreamValue::StringValue("productpage".into()))
    )));
    assert!(attrs.contains(&(
        "http.status_code".into(),
        Some(UpstreamValue::StringValue("200".into()))
    )));
    // STATUS_CODE_ERROR on an error span only, as Envoy.
    assert!(client.status.is_none());
    assert_eq!(server.status.as_ref().unwrap().code, 2);
    // Envoy's flags: sampled, parent remote (0x301) or a root (0x101).
    assert_eq!(client.flags, 0x301);
    assert_eq!(server.flags, 0x101);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn grpc_frames_are_length_prefixed() {
    let msg = otlp_request(&[span(false, Kind::Client, None)], "s").encode_to_vec();
    let framed = grpc_frame(&msg);
    assert_eq!(framed[0], 0, "uncompressed");
    assert_eq!(
        u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize,
        msg.len()
    );
    assert!(UpstreamRequest::decode(&framed[5..]).is_ok());
}

#[test]
fn zipkin_v2_json_as_envoy_writes_it() {
    let mut shared = span(false, Kind::Server, Some(0x0020000000000001));
    shared.shared = true;
    let mut short = span(false, Kind::Client, None);
    short.trace_id = 0x463ac35c9f6413ad;
    short.trace_id_128 = false;
    short.duration = Duration::ZERO;
    let body = zipkin_json(
        &[span(true, Kind::Client, Some(7)), shared, short],
        &local(),
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 3);
    let s = &list[0];
    assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s["id"], "00f067aa0ba902b7");
    assert_eq!(s["parentId"], "0000000000000007");
    assert_eq!(s["kind"], "CLIENT");
    assert_eq!(s["name"], "reviews.default.svc.cluster.local:9080/*");
    assert_eq!(s["timestamp"], 1_700_000_000_000_123u64);
    assert_eq!(s["duration"], 1500);
    assert_eq!(s["localEndpoint"]["serviceName"], "productpage.default");
    assert_eq!(s["localEndpoint"]["ipv4"], "10.0.0.7");
    assert_eq!(s["localEndpoint"]["port"], 0);
    assert_eq!(s["annotations"][0]["value"], "cr");
    assert_eq!(s["annotations"][0]["timestamp"], 1_700_000_000_001_623u64);
    assert_eq!(list[1]["annotations"][0]["value"], "ss");
    assert_eq!(s["tags"]["http.status_code"], "503");
    assert_eq!(s["tags"]["istio.canonical_service"], "productpage");
    assert!(s.get("shared").is_none());
    assert!(s["tags"].get("zone").is_none(), "no empty tags in Zipkin");
    assert_eq!(list[1]["kind"], "SERVER");
    assert_eq!(list[1]["shared"], true);
    assert_eq!(list[2]["traceId"], "463ac35c9f6413ad");
    assert!(list[2].get("parentId").is_none());
    assert_eq!(list[2]["duration"], 1, "Zipkin wants a positive duration");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let (exporter, mut rx) = Exporter::channel(2);
    let t = std::time::Instant::now();
    for _ in 0..5 {
        exporter.push(span(false, Kind::Client, None));
    }
    assert!(t.elapsed() < Duration::from_millis(100));
    assert_eq!(exporter.stats().spans_dropped.load(Ordering::Relaxed), 3);
    assert!(rx.try_recv().is_ok());
    assert!(rx.try_recv().is_ok());
    assert!(rx.try_recv().is_err());
    // Room again: the next span is queued.
    exporter.push(span(false, Kind::Client, None));
    assert!(rx.try_recv().is_ok());
    assert_eq!(exporter.stats().spans_dropped.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn batches_flush_at_five_spans_or_on_the_timer_and_count_a_missing_cluster() {
    let stats = Arc::new(Stats::default());
    let spec = ProviderSpec {
        kind: ProviderKind::Zipkin,
        cluster: "outbound|9411||zipkin".into(),
        authority: "zipkin".into(),
        path: "/api/v2/spans".into(),
        timeout: Duration::from_secs(1),
        headers: Vec::new(),
        service_name: String::new(),
        capacity: QUEUE_CAPACITY,
    };
    let e = Exporter::spawn(
        spec,
        local(),
        Arc::new(Store::new()),
        Arc::new(SecretStore::default()),
        Arc::new(SdsSecrets::default()),
        Arc::clone(&stats),
        Tuning::default(),
    );
    for _ in 0..5 {
        e.push(span(false, Kind::Client, None));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(stats.spans_sent.load(Ordering::Relaxed), 5);
    assert_eq!(stats.timer_flushed.load(Ordering::Relaxed), 0);
    // No such cluster: Envoy's reports_skipped_no_cluster.
    assert_eq!(stats.reports_skipped_no_cluster.load(Ordering::Relaxed), 1);
    e.push(span(false, Kind::Client, None));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        stats.spans_sent.load(Ordering::Relaxed),
        5,
        "waits for more"
    );
    tokio::time::sleep(FLUSH_INTERVAL).await;
    assert_eq!(stats.spans_sent.load(Ordering::Relaxed), 6);
    assert_eq!(stats.timer_flushed.load(Ordering::Relaxed), 1);
    let _ = SystemTime::now();
}

#[test]
fn stats_use_envoys_names() {
    let t = Tracers::default();
    t.zipkin.spans_sent.fetch_add(3, Ordering::Relaxed);
    t.opentelemetry
        .spans_dropped
        .fetch_add(2, Ordering::Relaxed);
    t.decisions("inbound_0.0.0.0_9080").count(Reason::Sampling);
    t.decisions("inbound_0.0.0.0_9080")
        .count(Reason::NotTraceable);
    t.decisions("outbound_0.0.0.0_80")
        .count(Reason::ServiceForced);
    let s = t.envoy_stats();
    assert!(
        s.contains("http.inbound_0.0.0.0_9080.tracing.random_sampling: 1\n"),
        "{s}"
    );
    assert!(
        s.contains("http.inbound_0.0.0.0_9080.tracing.not_traceable: 1\n"),
        "{s}"
    );
    assert!(
        s.contains("http.outbound_0.0.0.0_80.tracing.service_forced: 1\n"),
        "{s}"
    );
    assert!(s.contains("tracing.zipkin.spans_sent: 3\n"), "{s}");
    assert!(
        s.contains("tracing.opentelemetry.spans_dropped: 2\n"),
        "{s}"
    );
    let p = t.envoy_prometheus();
    assert!(
        p.contains("envoy_http_tracing_random_sampling{envoy_http_conn_manager_prefix=\"inbound_0.0.0.0_9080\"} 1\n"),
        "{p}"
    );
    assert_eq!(
        p.matches("# TYPE envoy_http_tracing_client_enabled counter")
            .count(),
        1
    );
    assert!(p.contains("envoy_tracing_zipkin_spans_sent 3\n"), "{p}");
    assert!(
        p.contains("envoy_tracing_opentelemetry_timer_flushed 0\n"),
        "{p}"
    );
}
