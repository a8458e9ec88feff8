//! Round trips over real sockets: the generated OTLP gRPC client, and OTLP/HTTP and Zipkin
//! bodies POSTed by an HTTP client, into a store read back through the query API's JSON.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};

use super::*;
use crate::traces::TraceId;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn request(
    service: &str,
    trace: u8,
    spans: &[(u8, Option<u8>, bool)],
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", service),
                    kv("k8s.namespace.name", "default"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: spans
                    .iter()
                    .map(|(id, parent, failed)| Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![*id; 8],
                        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
                        name: format!("GET /{id}"),
                        kind: span::SpanKind::Server as i32,
                        start_time_unix_nano: 1_700_000_000_000_000_000 + *id as u64 * 1_000_000,
                        end_time_unix_nano: 1_700_000_000_000_000_000 + *id as u64 * 3_000_000,
                        attributes: vec![kv("http.method", "GET")],
                        status: Some(Status {
                            code: if *failed {
                                status::StatusCode::Error as i32
                            } else {
                                status::StatusCode::Unset as i32
                            },
                            message: if *failed {
                                "boom".into()
                            } else {
                                String::new()
                            },
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn listener() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[tokio::test]
async fn grpc_export_round_trip() {
    let store = Arc::new(TraceStore::default());
    let (l, addr) = listener().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_grpc(l, Arc::clone(&store), async {
        let _ = stopped.await;
    }));
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let answer = client
        .export(request(
            "user.default",
            1,
            &[(1, None, false), (2, Some(1), true)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.partial_success, None);

    // A span with a bad id is refused alone, and said so.
    let mut bad = request("user.default", 2, &[(1, None, false), (2, None, false)]);
    bad.resource_spans[0].scope_spans[0].spans[1].span_id = vec![1, 2, 3];
    let answer = client.export(bad).await.unwrap().into_inner();
    let partial = answer.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("span 1: span_id must be 8 bytes"),
        "{}",
        partial.error_message
    );

    let trace = store.get(&TraceId([1; 16])).unwrap();
    assert_eq!(trace.spans.len(), 2);
    let failed = trace.spans.iter().find(|s| s.error).unwrap();
    assert_eq!(failed.status_message, "boom");
    assert_eq!(failed.service(), "user.default");
    assert_eq!(store.stats().spans, 3);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    ctype: &str,
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header(header::CONTENT_TYPE, ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        ct,
        res.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

#[tokio::test]
async fn http_export_round_trip_protobuf_json_and_zipkin() {
    let store = Arc::new(TraceStore::default());
    let (l, addr) = listener().await;
    tokio::spawn(serve_http(l, Arc::clone(&store), std::future::pending()));

    // Protobuf, answered in protobuf.
    let body = request("myapp.default", 1, &[(1, None, false)]).encode_to_vec();
    let (status, ct, answer) = post(addr, "/v1/traces", PROTOBUF, body).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, PROTOBUF));
    assert_eq!(
        ExportTraceServiceResponse::decode(answer.as_slice())
            .unwrap()
            .partial_success,
        None
    );

    // JSON as OTLP/JSON writes it: hex ids, lowerCamelCase, 64-bit integers as strings.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"user.default"}}]},
      "scopeSpans":[{"spans":[{"traceId":"01010101010101010101010101010101","spanId":"0202020202020202",
      "parentSpanId":"0101010101010101","name":"GET /users","kind":2,
      "startTimeUnixNano":"1700000000002000000","endTimeUnixNano":"1700000000004000000",
      "attributes":[{"key":"http.status_code","value":{"intValue":"503"}}],
      "status":{"code":2,"message":"upstream reset"}}]}]}]}"#;
    let (status, ct, answer) = post(
        addr,
        "/v1/traces",
        "application/json; charset=utf-8",
        json.into(),
    )
    .await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::OK, JSON),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Zipkin v2 JSON on the same port.
    let zipkin = r#"[{"traceId":"01010101010101010101010101010101","id":"0303030303030303","parentId":"0202020202020202",
      "name":"db","kind":"CLIENT","timestamp":1700000000003000,"duration":500,"localEndpoint":{"serviceName":"user.default"}}]"#;
    let (status, _, _) = post(addr, "/api/v2/spans", JSON, zipkin.into()).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let trace = store.get(&TraceId([1; 16])).unwrap();
    assert_eq!(trace.spans.len(), 3);
    let j = crate::traces::jaeger::trace_json(&trace);
    let services: Vec<&str> = j["processes"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["serviceName"].as_str().unwrap())
        .collect();
    assert!(
        services.contains(&"myapp.default") && services.contains(&"user.default"),
        "{services:?}"
    );
    let failed = trace.spans.iter().find(|s| s.name == "GET /users").unwrap();
    assert!(failed.error);
    assert_eq!(failed.duration_nanos(), 2_000_000);

    // Bad bodies: named errors in the request's encoding, nothing stored.
    let (status, ct, answer) = post(addr, "/v1/traces", PROTOBUF, vec![0xff, 0xff, 0xff]).await;
    assert_eq!((status, ct.as_str()), (StatusCode::BAD_REQUEST, PROTOBUF));
    let rpc = RpcStatus::decode(answer.as_slice()).unwrap();
    assert!(rpc.message.contains("protobuf"), "{}", rpc.message);
    let (status, _, answer) =
        post(addr, "/v1/traces", JSON, b"{\"resourceSpans\": 3}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&answer).contains("JSON"));
    let (status, _, answer) = post(addr, "/v1/traces", "text/plain", b"hi".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(String::from_utf8_lossy(&answer).contains("application/x-protobuf"));
    let (status, _, _) = post(addr, "/api/v2/spans", JSON, b"[{]".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(store.stats().spans, 3);
}
