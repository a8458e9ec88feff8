use super::*;

use crate::resources::listener::{ChainKind, ListenerConfig};

const OTEL_GRPC: &str = r#"
      tracing:
        client_sampling: {value: 100}
        random_sampling: {value: 100}
        overall_sampling: {value: 100}
        custom_tags:
        - {tag: istio.canonical_service, literal: {value: productpage}}
        - {tag: istio.mesh_id, literal: {value: cluster.local}}
        - {tag: istio.namespace, literal: {value: default}}
        - {tag: user, request_header: {name: x-user, default_value: nobody}}
        - {tag: home, environment: {name: MAST_TRACE_TEST_UNSET_VAR, default_value: unset}}
        - tag: istio.authorization.dry_run.allow_policy.name
          metadata: {kind: {request: {}}, metadata_key: {key: envoy.filters.http.rbac, path: [{key: x}]}}
        provider:
          name: envoy.tracers.opentelemetry
          typed_config:
            "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
            service_name: productpage.default
            grpc_service:
              envoy_grpc: {cluster_name: "outbound|4317||otel.observability.svc.cluster.local", authority: otel.observability.svc.cluster.local}
              timeout: 2s
              initial_metadata: [{key: Authorization, value: token}]"#;

fn hcm_yaml(tracing: &str) -> String {
    // A listener of its own per test: tests run side by side, and a listener compiled again
    // supersedes its chains' tracing.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        r#"
name: web-{n}
address: {{socket_address: {{address: 127.0.0.1, port_value: 8080}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: web
      rds: {{route_config_name: web}}
{tracing}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

fn compile(tracing: &str) -> Result<Option<Arc<TracingConfig>>, String> {
    let proto = mast_proto::json::yaml_to_message(&hcm_yaml(tracing)).unwrap();
    match ListenerConfig::from_proto(&proto) {
        Ok(l) => match &l.chains[0].kind {
            ChainKind::Http(h) => Ok(h.tracing.clone()),
            ChainKind::Tcp(_) => panic!("not HTTP"),
        },
        Err(e) => Err(format!("{}: {}", e.field, e.message)),
    }
}

fn otel() -> Arc<TracingConfig> {
    compile(OTEL_GRPC).unwrap().unwrap()
}

fn zipkin(extra: &str) -> Arc<TracingConfig> {
    compile(&format!(
        r#"
      tracing:
        random_sampling: {{value: 100}}
        provider:
          name: envoy.tracers.zipkin
          typed_config:
            "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
            collector_cluster: "outbound|9411||zipkin.istio-system.svc.cluster.local"
            collector_endpoint: /api/v2/spans
            collector_hostname: zipkin.istio-system.svc.cluster.local
            collector_endpoint_version: HTTP_JSON
            trace_id_128bit: true
            {extra}"#
    ))
    .unwrap()
    .unwrap()
}

fn sampling(random: f64, overall: f64, client: f64) -> TracingConfig {
    TracingConfig {
        provider: None,
        client_sampling: client as u64,
        random_sampling: (random * 100.0).round() as u64,
        overall_sampling: (overall * 100.0).round() as u64,
        custom_tags: Vec::new(),
        max_path_tag_length: DEFAULT_MAX_PATH_TAG_LENGTH,
        use_request_id: true,
        pack_trace_reason: true,
        generate_request_id: true,
        spawn_upstream_span: false,
        preserve_external_request_id: false,
        stat_prefix: "t".into(),
        decisions: OnceLock::new(),
        next: Default::default(),
        removed: Default::default(),
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn rid(h: &HeaderMap) -> &str {
    h.get(X_REQUEST_ID).unwrap().to_str().unwrap()
}

// === config ===

#[test]
fn otel_grpc_provider_compiles_as_istiod_writes_it() {
    let c = otel();
    let p = c.provider.as_ref().unwrap();
    assert_eq!(p.spec.kind, ProviderKind::OtlpGrpc);
    assert_eq!(
        p.spec.cluster,
        "outbound|4317||otel.observability.svc.cluster.local"
    );
    assert_eq!(p.spec.authority, "otel.observability.svc.cluster.local");
    assert_eq!(
        p.spec.path,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    assert_eq!(p.spec.timeout, Duration::from_secs(2));
    assert_eq!(
        p.spec.headers,
        vec![("authorization".to_string(), "token".to_string())]
    );
    assert_eq!(p.spec.service_name, "productpage.default");
    assert_eq!(p.spec.capacity, 1024, "Envoy's max_cache_size default");
    assert_eq!(c.random_sampling, 10_000);
    assert_eq!(c.custom_tags.len(), 6);
}

#[test]
fn otel_http_uri_without_scheme_and_zipkin_forms() {
    let c = compile(
        r#"
      tracing:
        provider:
          name: envoy.tracers.opentelemetry
          typed_config:
            "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
            max_cache_size: 50
            http_service:
              http_uri: {uri: otel.observability.svc.cluster.local/v1/traces, cluster: "outbound|4318||otel", timeout: 1s}
              request_headers_to_add: [{header: {key: x-tenant, value: a}}]"#,
    )
    .unwrap()
    .unwrap();
    let p = c.provider.as_ref().unwrap();
    assert_eq!(p.spec.kind, ProviderKind::OtlpHttp);
    assert_eq!(p.spec.authority, "otel.observability.svc.cluster.local");
    assert_eq!(p.spec.path, "/v1/traces");
    assert_eq!(p.spec.cluster, "outbound|4318||otel");
    assert_eq!(p.spec.capacity, 50);
    // Unset sampling is 100%, as in Envoy.
    assert_eq!(
        (c.random_sampling, c.overall_sampling, c.client_sampling),
        (10_000, 10_000, 100)
    );

    let z = zipkin("");
    let p = z.provider.as_ref().unwrap();
    assert_eq!(p.spec.kind, ProviderKind::Zipkin);
    assert_eq!(p.spec.path, "/api/v2/spans");
    assert_eq!(p.spec.authority, "zipkin.istio-system.svc.cluster.local");
    assert!(p.trace_id_128);
    // Envoy's default is a shared span context; istiod turns it off.
    assert!(p.shared_span_context);
    assert!(
        !zipkin("shared_span_context: false")
            .provider
            .as_ref()
            .unwrap()
            .shared_span_context
    );

    // Istio 1.29+: collector_service.
    let z = compile(
        r#"
      tracing:
        provider:
          name: envoy.tracers.zipkin
          typed_config:
            "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
            collector_endpoint_version: HTTP_JSON
            trace_context_option: USE_B3_WITH_W3C_PROPAGATION
            collector_service:
              http_uri: {uri: "http://zipkin.istio-system.svc.cluster.local/api/v2/spans", cluster: "outbound|9411||zipkin", timeout: 5s}"#,
    )
    .unwrap()
    .unwrap();
    let p = z.provider.as_ref().unwrap();
    assert_eq!(p.spec.cluster, "outbound|9411||zipkin");
    assert_eq!(p.spec.path, "/api/v2/spans");
    assert!(p.w3c_with_b3);
}

#[test]
fn unsupported_tracing_settings_are_refused_naming_the_field() {
    let cases = [
        (
            "      tracing: {random_sampling: {value: 101}}",
            "tracing.random_sampling",
        ),
        (
            "      tracing: {custom_tags: [{tag: a, value: \"%REQ(x)%\"}]}",
            "tracing.custom_tags[0].value",
        ),
        (
            r#"      tracing:
        provider:
          name: envoy.tracers.zipkin
          typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: z, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_PROTO}"#,
            "tracing.provider.typed_config.collector_endpoint_version",
        ),
        (
            r#"      tracing:
        provider:
          name: envoy.tracers.opentelemetry
          typed_config:
            "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
            grpc_service: {envoy_grpc: {cluster_name: c}}
            sampler: {name: envoy.tracers.opentelemetry.samplers.always_on, typed_config: {"@type": type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig}}"#,
            "tracing.provider.typed_config.sampler",
        ),
        (
            r#"      tracing:
        provider:
          name: envoy.tracers.datadog
          typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.DatadogConfig, collector_cluster: d, service_name: s}"#,
            "tracing.provider.typed_config",
        ),
    ];
    for (yaml, field) in cases {
        let err = compile(yaml).unwrap_err();
        assert!(
            err.contains(&format!("{field}: ")),
            "{yaml}\n→ {err}, want field {field}"
        );
    }
}

// === sampling ===

#[test]
fn random_sampling_reads_the_request_id_and_packs_the_reason() {
    // 0x63 = 99 < 100 (1%): sampled; 0x64 = 100: not.
    let one_percent = sampling(1.0, 100.0, 100.0);
    let mut h = headers(&[(X_REQUEST_ID, "00000063-1111-4222-a333-444455556666")]);
    assert_eq!(one_percent.decide(&mut h, 0), Reason::Sampling);
    assert_eq!(rid(&h), "00000063-1111-9222-a333-444455556666");
    let mut h = headers(&[(X_REQUEST_ID, "00000064-1111-4222-a333-444455556666")]);
    assert_eq!(one_percent.decide(&mut h, 0), Reason::NotTraceable);
    assert_eq!(rid(&h), "00000064-1111-4222-a333-444455556666");
    // 10,099 % 10,000 = 99: sampled too.
    let mut h = headers(&[(X_REQUEST_ID, "00002773-1111-4222-a333-444455556666")]);
    assert_eq!(one_percent.decide(&mut h, 0), Reason::Sampling);
}

#[test]
fn a_packed_reason_is_kept_by_the_next_hop() {
    let none = sampling(0.0, 100.0, 100.0);
    for (c, reason) in [
        ('9', Reason::Sampling),
        ('a', Reason::ServiceForced),
        ('b', Reason::ClientForced),
    ] {
        let id = format!("ffffffff-1111-{c}222-a333-444455556666");
        let mut h = headers(&[(X_REQUEST_ID, &id)]);
        assert_eq!(none.decide(&mut h, 0), reason);
        assert_eq!(rid(&h), id);
    }
}

#[test]
fn forced_and_client_traces_as_envoy() {
    let none = sampling(0.0, 100.0, 100.0);
    let id = "ffffffff-1111-4222-a333-444455556666";
    let mut h = headers(&[(X_REQUEST_ID, id), (X_ENVOY_FORCE_TRACE, "true")]);
    assert_eq!(none.decide(&mut h, 0), Reason::ServiceForced);
    assert_eq!(rid(&h), "ffffffff-1111-a222-a333-444455556666");
    // x-client-trace-id wins over force, when client_sampling lets it.
    let mut h = headers(&[
        (X_REQUEST_ID, id),
        (X_CLIENT_TRACE_ID, "abc"),
        (X_ENVOY_FORCE_TRACE, "true"),
    ]);
    assert_eq!(none.decide(&mut h, 0), Reason::ClientForced);
    assert_eq!(rid(&h), "ffffffff-1111-b222-a333-444455556666");
    // client_sampling 0%: the client's id is not enough; force still is.
    let no_client = sampling(0.0, 100.0, 0.0);
    let mut h = headers(&[(X_REQUEST_ID, id), (X_CLIENT_TRACE_ID, "abc")]);
    assert_eq!(no_client.decide(&mut h, 0), Reason::NotTraceable);
    let mut h = headers(&[
        (X_REQUEST_ID, id),
        (X_CLIENT_TRACE_ID, "abc"),
        (X_ENVOY_FORCE_TRACE, "true"),
    ]);
    assert_eq!(no_client.decide(&mut h, 0), Reason::ServiceForced);
    // client_sampling 50%: decided by the random number.
    let half = sampling(0.0, 100.0, 50.0);
    let mut h = headers(&[(X_REQUEST_ID, id), (X_CLIENT_TRACE_ID, "abc")]);
    assert_eq!(half.decide(&mut h, 49), Reason::ClientForced);
    let mut h = headers(&[(X_REQUEST_ID, id), (X_CLIENT_TRACE_ID, "abc")]);
    assert_eq!(half.decide(&mut h, 50), Reason::NotTraceable);
}

#[test]
fn overall_sampling_vetoes_every_reason() {
    let off = sampling(100.0, 0.0, 100.0);
    let mut h = headers(&[(X_REQUEST_ID, "00000001-1111-a222-a333-444455556666")]);
    assert_eq!(off.decide(&mut h, 0), Reason::NotTraceable);
    assert_eq!(rid(&h), "00000001-1111-4222-a333-444455556666");
}

#[test]
fn odd_request_ids_follow_envoy() {
    let all = sampling(100.0, 100.0, 100.0);
    // Not hex at the start: no integer, not traceable.
    let mut h = headers(&[(X_REQUEST_ID, "zzzzzzzz-1111-4222-a333-444455556666")]);
    assert_eq!(all.decide(&mut h, 0), Reason::NotTraceable);
    // Too short to be a UUID: sampled, but nothing packed.
    let mut h = headers(&[(X_REQUEST_ID, "00000001abc")]);
    assert_eq!(all.decide(&mut h, 0), Reason::Sampling);
    assert_eq!(rid(&h), "00000001abc");
    // No request id: not traceable.
    assert_eq!(all.decide(&mut HeaderMap::new(), 0), Reason::NotTraceable);
    // use_request_id_for_trace_sampling false: every request is "Sampling" here, and the
    // request id is left alone.
    let mut off = sampling(0.0, 100.0, 100.0);
    off.use_request_id = false;
    let mut h = headers(&[(X_REQUEST_ID, "00000001-1111-4222-a333-444455556666")]);
    assert_eq!(off.decide(&mut h, 0), Reason::Sampling);
    assert_eq!(rid(&h), "00000001-1111-4222-a333-444455556666");
}

#[test]
fn uuid_extension_settings_are_read() {
    let c = compile(
        r#"
      request_id_extension:
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig
          use_request_id_for_trace_sampling: false
      generate_request_id: false
      tracing: {}"#,
    )
    .unwrap()
    .unwrap();
    assert!(!c.use_request_id);
    assert!(c.pack_trace_reason);
    assert!(!c.generate_request_id);
    assert!(c.provider.is_none());
}

// === context ===

#[test]
fn w3c_traceparent_parsing() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let h = headers(&[(TRACEPARENT, tp), (TRACESTATE, "a=1"), (TRACESTATE, "b=2")]);
    let c = w3c(&h).unwrap().unwrap();
    assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(c.span_id, 0x00f067aa0ba902b7);
    assert_eq!(c.sampled, Some(true));
    assert_eq!(c.tracestate, "a=1,b=2");
    let h = headers(&[(TRACEPARENT, &tp.replace("-01", "-00"))]);
    assert_eq!(w3c(&h).unwrap().unwrap().sampled, Some(false));
    assert_eq!(w3c(&HeaderMap::new()), Ok(None));
    for bad in [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert_eq!(w3c(&headers(&[(TRACEPARENT, bad)])), Err(()), "{bad}");
    }
}

#[test]
fn b3_single_and_multi_parsing() {
    let c = b3(&headers(&[(
        B3,
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    )]))
    .unwrap()
    .unwrap();
    assert_eq!(c.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
    assert!(c.trace_id_128);
    assert_eq!(c.span_id, 0xe457b5a2e4d86bd1);
    assert_eq!(c.parent_id, Some(0x05e3ac9a4f6e3b90));
    assert_eq!(c.sampled, Some(true));
    let c = b3(&headers(&[(B3, "64fe8b2a57d3eff7-e457b5a2e4d86bd1")]))
        .unwrap()
        .unwrap();
    assert!(!c.trace_id_128);
    assert_eq!(c.sampled, None);
    let c = b3(&headers(&[(B3, "0")])).unwrap().unwrap();
    assert_eq!((c.trace_id, c.sampled), (0, Some(false)));
    assert_eq!(b3(&headers(&[(B3, "xyz-e457b5a2e4d86bd1")])), Err(()));
    // The single header is read first.
    let c = b3(&headers(&[
        (B3, "64fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        (X_B3_TRACE_ID, "1111111111111111"),
        (X_B3_SPAN_ID, "2222222222222222"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(c.trace_id, 0x64fe8b2a57d3eff7);
    let c = b3(&headers(&[
        (X_B3_TRACE_ID, "463ac35c9f6413ad48485a3953bb6124"),
        (X_B3_SPAN_ID, "a2fb4a1d1a96d312"),
        (X_B3_PARENT_SPAN_ID, "0020000000000001"),
        (X_B3_SAMPLED, "1"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(c.trace_id, 0x463ac35c9f6413ad48485a3953bb6124);
    assert_eq!(c.parent_id, Some(0x0020000000000001));
    assert_eq!(c.sampled, Some(true));
    let c = b3(&headers(&[
        (X_B3_TRACE_ID, "463ac35c9f6413ad"),
        (X_B3_SPAN_ID, "a2fb4a1d1a96d312"),
        (X_B3_FLAGS, "1"),
        (X_B3_SAMPLED, "0"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(c.sampled, Some(true), "debug implies sampled");
    assert_eq!(
        b3(&headers(&[
            (X_B3_TRACE_ID, "463ac35c9f6413ad"),
            (X_B3_SPAN_ID, "short")
        ])),
        Err(())
    );
    assert_eq!(b3(&HeaderMap::new()), Ok(None));
}

// === spans ===

fn shared() -> crate::shared::Shared {
    let cfg = crate::config::Config::from_env(
        &std::collections::BTreeMap::new(),
        &crate::config::Overrides::default(),
    )
    .unwrap();
    crate::shared::Shared::new(cfg, false, None)
}

fn parts(pairs: &[(&'static str, &str)]) -> Parts {
    let mut req = http::Request::get("/productpage?u=1").body(()).unwrap();
    *req.headers_mut() = headers(pairs);
    req.headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static("curl/8"));
    req.into_parts().0
}

fn decorated(op: &str) -> crate::resources::route::RouteTable {
    let proto: envoy_types::pb::envoy::config::route::v3::RouteConfiguration =
        mast_proto::json::yaml_to_message(&format!(
            r#"
name: r
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: c}}
    decorator: {{operation: "{op}"}}
"#
        ))
        .unwrap();
    crate::resources::route::RouteTable::build("r", &proto.virtual_hosts).unwrap()
}

fn route_of(t: &crate::resources::route::RouteTable) -> &Route {
    let p = http::Request::get("/").body(()).unwrap().into_parts().0;
    t.find_host("anything")
        .unwrap()
        .find_route(&p, &Default::default())
        .unwrap()
}

fn begin(
    cfg: &TracingConfig,
    shared: &crate::shared::Shared,
    inbound: bool,
    route: Option<&Route>,
    p: &mut Parts,
) -> Option<Box<ActiveSpan>> {
    start(
        Start {
            shared,
            cfg,
            inbound,
            edge: false,
            tls: false,
            peer: "10.1.2.3".parse().unwrap(),
            host: "reviews:9080",
            route,
        },
        p,
    )
    .0
}

#[tokio::test]
async fn outbound_otel_span_is_a_child_of_the_incoming_context_and_parent_of_the_upstream() {
    let shared = shared();
    let cfg = otel();
    let table = decorated("reviews.default.svc.cluster.local:9080/*");
    let route = route_of(&table);
    let mut p = parts(&[
        (
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (TRACESTATE, "vendor=x"),
        (X_REQUEST_ID, "ffffffff-1111-4222-a333-444455556666"),
        ("x-user", "jason"),
    ]);
    let span = begin(&cfg, &shared, false, Some(route), &mut p).expect("sampled");
    let d = &span.data;
    assert_eq!(d.kind, Kind::Client);
    assert_eq!(d.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(d.parent_id, Some(0x00f067aa0ba902b7));
    assert_ne!(d.span_id, 0x00f067aa0ba902b7);
    assert_eq!(d.name, "reviews.default.svc.cluster.local:9080/*");
    // The upstream's parent is this span.
    assert_eq!(
        p.headers.get(TRACEPARENT).unwrap(),
        &format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01", d.span_id)
    );
    assert_eq!(p.headers.get(TRACESTATE).unwrap(), "vendor=x");
    assert_eq!(
        p.headers.get(X_DECORATOR_OPERATION).unwrap(),
        "reviews.default.svc.cluster.local:9080/*"
    );
    // Sampled at 100%: the reason is packed.
    assert_eq!(rid(&p.headers), "ffffffff-1111-9222-a333-444455556666");
    let tag = |k: &str| {
        d.tags
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        tag("guid:x-request-id"),
        Some("ffffffff-1111-9222-a333-444455556666")
    );
    assert_eq!(tag("http.url"), Some("http://reviews:9080/productpage?u=1"));
    assert_eq!(tag("http.method"), Some("GET"));
    assert_eq!(tag("http.protocol"), Some("HTTP/1.1"));
    assert_eq!(tag("user_agent"), Some("curl/8"));
    assert_eq!(tag("downstream_cluster"), Some("-"));
    assert_eq!(tag("peer.address"), Some("10.1.2.3"));
    assert_eq!(tag("node_id"), Some(shared.config.node_id().as_str()));
    let custom: HashMap<&str, &str> = d
        .custom
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(custom["istio.canonical_service"], "productpage");
    assert_eq!(custom["istio.namespace"], "default");
    assert_eq!(custom["istio.mesh_id"], "cluster.local");
    assert_eq!(custom["user"], "jason");
    assert_eq!(custom["home"], "unset");
    assert!(!custom.contains_key("istio.authorization.dry_run.allow_policy.name"));
}

#[tokio::test]
async fn inbound_span_takes_the_callers_operation_and_hides_the_header() {
    let shared = shared();
    let cfg = otel();
    let table = decorated("inbound.default.svc.cluster.local:9080/*");
    let route = route_of(&table);
    let mut p = parts(&[(
        X_DECORATOR_OPERATION,
        "details.default.svc.cluster.local:9080/*",
    )]);
    let span = begin(&cfg, &shared, true, Some(route), &mut p).expect("sampled");
    assert_eq!(span.data.kind, Kind::Server);
    assert_eq!(span.data.name, "details.default.svc.cluster.local:9080/*");
    assert!(!p.headers.contains_key(X_DECORATOR_OPERATION));
    // A new root: a request id was generated, a fresh 128-bit trace begun.
    assert_eq!(rid(&p.headers).len(), 36);
    assert_eq!(span.data.parent_id, None);
    assert!(span.data.trace_id >> 64 != 0 || span.data.trace_id != 0);
    let tp = p.headers.get(TRACEPARENT).unwrap().to_str().unwrap();
    assert!(tp.ends_with("-01"), "{tp}");
    // Without a decorator: Envoy's default names.
    let mut p = parts(&[]);
    let span = begin(&cfg, &shared, true, None, &mut p).unwrap();
    assert_eq!(span.data.name, "ingress");
    let mut p = parts(&[]);
    let span = begin(&cfg, &shared, false, None, &mut p).unwrap();
    assert_eq!(span.data.name, "egress reviews:9080");
}

#[tokio::test]
async fn incoming_sampled_flag_wins_and_unsampled_requests_still_propagate() {
    let shared = shared();
    let cfg = otel();
    let mut p = parts(&[(
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    )]);
    // 100% random sampling, but the caller said no: no span to export, context passed on.
    assert!(begin(&cfg, &shared, false, None, &mut p).is_none());
    let tp = p.headers.get(TRACEPARENT).unwrap().to_str().unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(tp.ends_with("-00"));
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "our span is the parent now"
    );
    // An invalid traceparent: Envoy's null span — nothing made, nothing rewritten.
    let bad = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1";
    let mut p = parts(&[(TRACEPARENT, bad)]);
    assert!(begin(&cfg, &shared, false, None, &mut p).is_none());
    assert_eq!(p.headers.get(TRACEPARENT).unwrap(), bad);
    // The OpenTelemetry tracer ignores B3.
    let mut p = parts(&[
        (X_B3_TRACE_ID, "463ac35c9f6413ad"),
        (X_B3_SPAN_ID, "a2fb4a1d1a96d312"),
    ]);
    let span = begin(&cfg, &shared, false, None, &mut p).unwrap();
    assert_ne!(span.data.trace_id, 0x463ac35c9f6413ad);
    assert_eq!(p.headers.get(X_B3_SPAN_ID).unwrap(), "a2fb4a1d1a96d312");
}

#[tokio::test]
async fn zipkin_spans_propagate_b3_and_share_context_when_asked() {
    let shared = shared();
    let incoming = [
        (X_B3_TRACE_ID, "463ac35c9f6413ad48485a3953bb6124"),
        (X_B3_SPAN_ID, "a2fb4a1d1a96d312"),
        (X_B3_PARENT_SPAN_ID, "0020000000000001"),
    ];
    // istiod's setting: no shared context; the server span is a child.
    let cfg = zipkin("shared_span_context: false");
    let mut p = parts(&incoming);
    let span = begin(&cfg, &shared, true, None, &mut p).unwrap();
    assert_eq!(span.data.kind, Kind::Server);
    assert_eq!(span.data.parent_id, Some(0xa2fb4a1d1a96d312));
    assert!(!span.data.shared);
    assert_eq!(
        span.data.name, "reviews:9080",
        "Zipkin's default name is the host"
    );
    assert_eq!(
        p.headers.get(X_B3_SPAN_ID).unwrap(),
        &format!("{:016x}", span.data.span_id)
    );
    assert_eq!(
        p.headers.get(X_B3_PARENT_SPAN_ID).unwrap(),
        "a2fb4a1d1a96d312"
    );
    assert_eq!(
        p.headers.get(X_B3_TRACE_ID).unwrap(),
        "463ac35c9f6413ad48485a3953bb6124"
    );
    assert_eq!(p.headers.get(X_B3_SAMPLED).unwrap(), "1");
    assert!(!p.headers.contains_key(TRACEPARENT));
    // Envoy's default: the server span shares the caller's span id.
    let cfg = zipkin("");
    let mut p = parts(&incoming);
    let span = begin(&cfg, &shared, true, None, &mut p).unwrap();
    assert_eq!(span.data.span_id, 0xa2fb4a1d1a96d312);
    assert_eq!(span.data.parent_id, Some(0x0020000000000001));
    assert!(span.data.shared);
    // A new Zipkin root's span id is its trace id's low half, as Envoy makes it.
    let mut p = parts(&[]);
    let root = begin(&cfg, &shared, false, None, &mut p).unwrap();
    assert_eq!(root.data.span_id, root.data.trace_id as u64);
    assert!(root.data.trace_id >> 64 != 0, "trace_id_128bit");
    // A client span never shares.
    let mut p = parts(&incoming);
    let span = begin(&cfg, &shared, false, None, &mut p).unwrap();
    assert_eq!(span.data.parent_id, Some(0xa2fb4a1d1a96d312));
    // A 64-bit incoming trace id stays 64-bit; `b3` single is rewritten alongside.
    let mut p = parts(&[(B3, "463ac35c9f6413ad-a2fb4a1d1a96d312-1")]);
    let span = begin(&cfg, &shared, false, None, &mut p).unwrap();
    assert_eq!(p.headers.get(X_B3_TRACE_ID).unwrap(), "463ac35c9f6413ad");
    assert_eq!(
        p.headers.get(B3).unwrap(),
        &format!(
            "463ac35c9f6413ad-{:016x}-1-a2fb4a1d1a96d312",
            span.data.span_id
        )
    );
    // `b3: 0` says not sampled, even at 100%.
    let mut p = parts(&[(B3, "0")]);
    assert!(begin(&cfg, &shared, false, None, &mut p).is_none());
    assert_eq!(p.headers.get(X_B3_SAMPLED).unwrap(), "0");
    // W3C alongside B3 when configured.
    let cfg = zipkin("trace_context_option: USE_B3_WITH_W3C_PROPAGATION");
    let mut p = parts(&[(
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    let span = begin(&cfg, &shared, false, None, &mut p).unwrap();
    assert_eq!(span.data.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(
        p.headers.get(TRACEPARENT).unwrap(),
        &format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01",
            span.data.span_id
        )
    );
    assert!(p.headers.contains_key(X_B3_TRACE_ID));
}

#[tokio::test]
async fn finished_spans_carry_the_response_tags_and_errors() {
    let (exporter, mut rx) = Exporter::channel(8);
    let exporter = Arc::new(exporter);
    let mk = || ActiveSpan {
        data: SpanData {
            trace_id: 1,
            trace_id_128: true,
            span_id: 2,
            parent_id: None,
            name: "n".into(),
            kind: Kind::Client,
            start: SystemTime::now(),
            duration: Duration::ZERO,
            tags: Vec::new(),
            custom: Vec::new(),
            tracestate: String::new(),
            error: false,
            shared: false,
        },
        started: Instant::now(),
        exporter: Arc::clone(&exporter),
        rename: None,
        upstream: None,
    };
    let tags = |d: &SpanData| -> HashMap<&'static str, String> { d.tags.iter().cloned().collect() };
    Box::new(mk()).finish(200, "-", Some("outbound|9080||reviews"), None, None, 10, 20);
    let d = rx.recv().await.unwrap();
    let t = tags(&d);
    assert!(!d.error);
    assert_eq!(t["http.status_code"], "200");
    assert_eq!(t["upstream_cluster"], "outbound|9080||reviews");
    assert_eq!(t["response_flags"], "-");
    assert_eq!(t["component"], "proxy");
    assert_eq!(t["request_size"], "10");
    assert_eq!(t["response_size"], "20");
    assert!(!t.contains_key("error"));
    Box::new(mk()).finish(503, "UF", Some("c"), None, None, 0, 0);
    let d = rx.recv().await.unwrap();
    assert!(d.error);
    assert_eq!(tags(&d)["error"], "true");
    assert_eq!(tags(&d)["response_flags"], "UF");
    Box::new(mk()).finish(200, "-", None, None, Some(14), 0, 0);
    let d = rx.recv().await.unwrap();
    assert!(d.error, "a non-OK gRPC status is an error");
    assert_eq!(tags(&d)["grpc.status_code"], "14");
    assert!(!tags(&d).contains_key("upstream_cluster"));
}

#[tokio::test]
async fn decorator_operation_travels_back_on_the_response_as_envoy() {
    let shared = shared();
    let cfg = otel();
    let table = decorated("reviews.default.svc.cluster.local:9080/*");
    let route = route_of(&table);
    let start_at = |inbound: bool, p: &mut Parts| {
        start(
            Start {
                shared: &shared,
                cfg: &cfg,
                inbound,
                edge: false,
                tls: false,
                peer: "10.1.2.3".parse().unwrap(),
                host: "reviews:9080",
                route: Some(route),
            },
            p,
        )
    };
    let response = |pairs: &[(&'static str, &str)]| {
        let mut r = http::Response::new(crate::http::reply::full(""));
        *r.headers_mut() = headers(pairs);
        r
    };
    // Inbound, the caller named nothing: the response names the route's operation.
    let (_, on) = start_at(true, &mut parts(&[]));
    let r = on.apply(response(&[]));
    assert_eq!(
        r.headers().get(X_DECORATOR_OPERATION).unwrap(),
        "reviews.default.svc.cluster.local:9080/*"
    );
    // Inbound, the caller named it: nothing added.
    let (_, on) = start_at(true, &mut parts(&[(X_DECORATOR_OPERATION, "caller-op")]));
    assert!(
        !on.apply(response(&[]))
            .headers()
            .contains_key(X_DECORATOR_OPERATION)
    );
    // Outbound: the upstream's operation renames the span and goes no further.
    let (span, on) = start_at(false, &mut parts(&[]));
    let r = on.apply(response(&[(X_DECORATOR_OPERATION, "upstream-op")]));
    assert!(!r.headers().contains_key(X_DECORATOR_OPERATION));
    let (exporter, mut rx) = Exporter::channel(1);
    let mut span = span.unwrap();
    span.exporter = Arc::new(exporter);
    span.finish(200, "-", None, None, None, 0, 0);
    assert_eq!(rx.recv().await.unwrap().name, "upstream-op");
}

#[tokio::test]
async fn an_edge_replaces_the_clients_request_id() {
    let shared = shared();
    let none = compile(
        r#"
      tracing: {random_sampling: {value: 0}}"#,
    )
    .unwrap()
    .unwrap();
    let forged = "00000001-1111-9222-a333-444455556666";
    let at = |edge: bool, cfg: &TracingConfig| {
        let mut p = parts(&[(X_REQUEST_ID, forged)]);
        let _ = start(
            Start {
                shared: &shared,
                cfg,
                inbound: false,
                edge,
                tls: false,
                peer: "10.1.2.3".parse().unwrap(),
                host: "gw",
                route: None,
            },
            &mut p,
        );
        rid(&p.headers).to_string()
    };
    // A sidecar trusts the id (and its sampled bit); a gateway makes its own.
    assert_eq!(at(false, &none), forged);
    let fresh = at(true, &none);
    assert_ne!(fresh, forged);
    assert_eq!(&fresh[14..15], "4", "not traced: 0% sampling");
    let keep = compile(
        r#"
      preserve_external_request_id: true
      tracing: {random_sampling: {value: 0}}"#,
    )
    .unwrap()
    .unwrap();
    assert_eq!(at(true, &keep), forged);
}

#[tokio::test]
async fn spawn_upstream_span_makes_the_proxy_a_hop_of_its_own() {
    let shared = shared();
    let cfg = compile(
        r#"
      tracing:
        spawn_upstream_span: true
        random_sampling: {value: 100}
        custom_tags:
        - {tag: istio.canonical_service, literal: {value: istio-ingressgateway}}
        - {tag: istio.namespace, literal: {value: istio-system}}
        provider:
          name: envoy.tracers.opentelemetry
          typed_config:
            "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
            grpc_service: {envoy_grpc: {cluster_name: otel}}"#,
    )
    .unwrap()
    .unwrap();
    let mut p = parts(&[(
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    // A gateway's listener is OUTBOUND, yet its downstream span is a server span.
    let mut span = begin(&cfg, &shared, false, None, &mut p).unwrap();
    assert_eq!(span.data.kind, Kind::Server);
    assert_eq!(span.data.parent_id, Some(0x00f067aa0ba902b7));
    let up = span.upstream.clone().unwrap();
    assert_eq!(up.kind, Kind::Client);
    assert_eq!(up.parent_id, Some(span.data.span_id));
    // The upstream's parent is the upstream span.
    assert_eq!(
        p.headers.get(TRACEPARENT).unwrap(),
        &format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01", up.span_id)
    );
    let (exporter, mut rx) = Exporter::channel(4);
    span.exporter = Arc::new(exporter);
    span.finish(
        502,
        "UF",
        Some("outbound|9080||reviews"),
        Some("10.0.0.9:9080"),
        None,
        0,
        0,
    );
    let u = rx.recv().await.unwrap();
    assert_eq!(u.name, "router outbound|9080||reviews egress");
    let tags: HashMap<&str, String> = u.tags.iter().cloned().collect();
    assert_eq!(tags["upstream_address"], "10.0.0.9:9080");
    assert_eq!(tags["http.status_code"], "502");
    assert_eq!(tags["error"], "true");
    // Istio's tags on the upstream span as on the downstream one (finalizeUpstreamSpan).
    let custom: HashMap<&str, &str> = u
        .custom
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(custom["istio.canonical_service"], "istio-ingressgateway");
    assert_eq!(custom["istio.namespace"], "istio-system");
    let d = rx.recv().await.unwrap();
    assert_eq!(d.kind, Kind::Server);
    assert_eq!(d.custom, u.custom);
    assert!(d.error);
}

#[test]
fn an_updated_listener_moves_open_connections_to_its_new_tracing() {
    let key = "test-listener/chain-0";
    let first = otel();
    TracingConfig::supersede(key, Some(&first));
    assert!(Arc::ptr_eq(&first.current().unwrap(), &first));
    let second = zipkin("");
    let third = zipkin("shared_span_context: false");
    TracingConfig::supersede(key, Some(&second));
    TracingConfig::supersede(key, Some(&third));
    // A connection that opened with the first config now traces with the third.
    assert!(Arc::ptr_eq(&first.current().unwrap(), &third));
    assert!(Arc::ptr_eq(&second.current().unwrap(), &third));
    // The same config compiled again changes nothing.
    TracingConfig::supersede(key, Some(&third));
    assert!(Arc::ptr_eq(&third.current().unwrap(), &third));
    // Tracing removed from the chain: no tracing on old connections either.
    TracingConfig::supersede(key, None);
    assert!(first.current().is_none());
    assert!(third.current().is_none());
}
