//! Fuzz targets for what mast-proxy reads from outside (issue 21 §1): xDS resources from the
//! control plane, raw bytes from clients on an HTTP listener, TLS ClientHellos for sniffing.
//! Never a panic: a bad resource is a NACK ([`Nack`]), a bad request an HTTP error or a closed
//! connection.
//!
//! xDS seeds are the real Istio-generated resources of `testdata/upstream/envoy-configdump`
//! (read, never modified) plus hand-built ones here; they are mutated as bytes and, through
//! protobuf reflection, field by field (edge numbers, hostile strings, unknown enum values,
//! repeated elements duplicated or emptied, nested `Any`s mutated in turn). HTTP seeds are in
//! `testdata/fuzz-seeds/http/`. `MAST_FUZZ_CASES` runs longer; see `docs/fuzzing.md`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use mast_proto::TypeUrl;
use mast_proxy::http::{ConnCtx, PathNormalization, serve};
use mast_proxy::resources::listener::{Codec, HttpManager, RouteSource};
use mast_proxy::resources::{Rejection, XdsResource};
use mast_proxy::shared::Shared;
use mast_proxy::state::{Incoming, Resources};
use mast_testdata::fuzz::{self, Rng};
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// === xDS ===

/// The message type of each type URL mast-proxy takes over ADS.
fn message_name(t: TypeUrl) -> &'static str {
    t.url().trim_start_matches("type.googleapis.com/")
}

/// Real resources (as `Any`s) from the Istio config dumps, and a few built here so every type
/// has seeds.
fn xds_seeds() -> Vec<(TypeUrl, Any)> {
    fn walk(v: &Json, out: &mut Vec<(TypeUrl, Any)>) {
        match v {
            Json::Object(o) => {
                let ty = o.get("@type").and_then(Json::as_str).unwrap_or_default();
                if let Some(t) = TypeUrl::ALL.into_iter().find(|t| t.url() == ty) {
                    let mut body = o.clone();
                    body.remove("@type");
                    if let Ok(any) =
                        mast_proto::json::json_to_any(message_name(t), &Json::Object(body))
                    {
                        out.push((t, any));
                    }
                }
                o.values().for_each(|v| walk(v, out));
            }
            Json::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut seeds = Vec::new();
    let dir = mast_testdata::corpus("envoy-configdump");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let json: Json = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        walk(&json, &mut seeds);
    }
    let built = [
        (
            TypeUrl::Cluster,
            serde_json::json!({
                "name": "outbound|80||a.default.svc.cluster.local", "type": "EDS",
                "eds_cluster_config": {"service_name": "outbound|80||a.default.svc.cluster.local", "eds_config": {"ads": {}}},
                "connect_timeout": "1s", "lb_policy": "LEAST_REQUEST",
                "circuit_breakers": {"thresholds": [{"max_connections": 100, "max_retries": 3}]},
                "outlier_detection": {"consecutive_5xx": 5, "interval": "10s", "base_ejection_time": "30s"},
            }),
        ),
        (
            TypeUrl::Endpoint,
            serde_json::json!({
                "cluster_name": "outbound|80||a.default.svc.cluster.local",
                "endpoints": [{"locality": {"region": "r"}, "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 8080}}}, "load_balancing_weight": 3},
                    {"endpoint": {"address": {"socket_address": {"address": "fe80::1", "port_value": 80}}}, "health_status": "UNHEALTHY"}
                ]}]
            }),
        ),
        (
            TypeUrl::Route,
            serde_json::json!({
                "name": "80",
                "virtual_hosts": [{"name": "a", "domains": ["a", "a.default.svc.cluster.local", "*.example.com"],
                  "routes": [
                    {"match": {"safe_regex": {"regex": "^/api/(v1|v2)/.*"}, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
                     "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 90}, {"name": "b", "weight": 10}]},
                               "timeout": "1.5s", "prefix_rewrite": "/",
                               "retry_policy": {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "1s"}}},
                    {"match": {"prefix": "/"}, "redirect": {"https_redirect": true}},
                    {"match": {"path": "/x"}, "direct_response": {"status": 418, "body": {"inline_string": "t"}}}
                  ]}]
            }),
        ),
    ];
    for (t, json) in built {
        seeds.push((
            t,
            mast_proto::json::json_to_any(message_name(t), &json).unwrap(),
        ));
    }
    for t in TypeUrl::ALL {
        seeds.push((
            t,
            Any {
                type_url: t.url().to_string(),
                value: Vec::new(),
            },
        ));
    }
    for t in [
        TypeUrl::Listener,
        TypeUrl::Route,
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
    ] {
        assert!(
            seeds
                .iter()
                .filter(|(s, a)| *s == t && !a.value.is_empty())
                .count()
                > 0,
            "no seed of {t:?}"
        );
    }
    seeds
}

const HOSTILE_STRINGS: &[&str] = &[
    "",
    "*",
    "*.",
    ".",
    "/",
    "[",
    "(?P<",
    "a{99999}",
    "(a+)+$",
    "\\",
    "\u{0}",
    "\r\nx: y",
    "::",
    "0.0.0.0",
    "255.255.255.256",
    "[::1]:99999",
    "::ffff:1.2.3.4",
    "unix:///tmp/x",
    "outbound|80||",
    "inbound|0||",
    "é",
    "%00",
    "type.googleapis.com/",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "envoy.filters.network.http_connection_manager",
    "envoy.filters.http.router",
    "envoy.filters.http.rbac",
    "envoy.filters.http.jwt_authn",
    "envoy.transport_sockets.tls",
];

/// Mutate a message in place through reflection: set fields get edge values, unset ones
/// get set, lists grow or empty, nested messages (and `Any`s) recurse.
fn mutate_message(rng: &mut Rng, msg: &mut DynamicMessage, depth: usize) {
    let desc = msg.descriptor();
    if desc.full_name() == "google.protobuf.Any" {
        mutate_any(rng, msg, depth);
        return;
    }
    let fields: Vec<_> = desc.fields().collect();
    if fields.is_empty() {
        return;
    }
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        // Prefer fields that are set: that is where the real config is.
        let set: Vec<_> = msg.fields().map(|(f, _)| f).collect();
        let field = if !set.is_empty() && !rng.one_in(4) {
            rng.pick(&set).clone()
        } else {
            rng.pick(&fields).clone()
        };
        if rng.one_in(12) {
            msg.clear_field(&field);
            continue;
        }
        let kind = field.kind();
        let value = msg.get_field_mut(&field);
        mutate_value(rng, value, &kind, depth);
    }
}

fn mutate_any(rng: &mut Rng, msg: &mut DynamicMessage, depth: usize) {
    let pool = mast_proto::json::pool().unwrap();
    let type_url = msg
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let value = msg
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let inner_desc = pool.get_message_by_name(type_url.trim_start_matches("type.googleapis.com/"));
    match (rng.below(4), inner_desc) {
        (0, _) => msg.set_field_by_name(
            "type_url",
            Value::String(format!("type.googleapis.com/{}", rng.pick(HOSTILE_STRINGS))),
        ),
        (1, _) => {
            let bytes = fuzz::mutate_bytes(rng, &value, &[]);
            msg.set_field_by_name("value", Value::Bytes(bytes.into()));
        }
        (_, Some(d)) if depth < 12 => {
            if let Ok(mut inner) = DynamicMessage::decode(d, value.as_ref()) {
                mutate_message(rng, &mut inner, depth + 1);
                msg.set_field_by_name("value", Value::Bytes(inner.encode_to_vec().into()));
            }
        }
        _ => {}
    }
}

fn mutate_value(rng: &mut Rng, value: &mut Value, kind: &Kind, depth: usize) {
    match value {
        Value::Bool(b) => *b = !*b,
        Value::I32(n) => *n = rng.edgy_i64() as i32,
        Value::I64(n) => *n = rng.edgy_i64(),
        Value::U32(n) => *n = rng.edgy_u64() as u32,
        Value::U64(n) => *n = rng.edgy_u64(),
        Value::F32(n) => *n = *rng.pick(&[f32::NAN, f32::INFINITY, -1.0, 0.0, f32::MAX, 1e-30]),
        Value::F64(n) => *n = *rng.pick(&[f64::NAN, f64::NEG_INFINITY, -1.0, 0.0, f64::MAX, 1e300]),
        Value::String(s) => {
            *s = match rng.below(4) {
                // Long, but bounded: the mutator must not be what runs out of memory.
                0 if s.len() < 1024 => s.repeat(1 + rng.below(300)),
                1 => format!("{s}{}", rng.pick(HOSTILE_STRINGS)),
                _ => rng.pick(HOSTILE_STRINGS).to_string(),
            }
        }
        Value::Bytes(b) => *b = fuzz::mutate_bytes(rng, b, &[]).into(),
        Value::EnumNumber(n) => *n = rng.edgy_i64() as i32,
        Value::Message(m) if depth < 24 => mutate_message(rng, m, depth + 1),
        Value::Message(_) => {}
        Value::List(items) => match rng.below(5) {
            0 => items.clear(),
            1 if !items.is_empty() => {
                let copy = rng.pick(items).clone();
                for _ in 0..1 + rng.below(3) {
                    items.push(copy.clone());
                }
            }
            2 if items.is_empty() => {
                if let Some(mut v) = default_of(kind) {
                    mutate_value(rng, &mut v, kind, depth + 1);
                    items.push(v);
                }
            }
            _ if !items.is_empty() => {
                let i = rng.below(items.len());
                mutate_value(rng, &mut items[i], kind, depth);
            }
            _ => {}
        },
        Value::Map(map) => {
            if rng.one_in(3) {
                map.clear();
            } else if let Some(k) = map.keys().next().cloned() {
                let value_kind = match kind {
                    Kind::Message(d) => d.map_entry_value_field().kind(),
                    other => other.clone(),
                };
                if let Some(v) = map.get_mut(&k) {
                    mutate_value(rng, v, &value_kind, depth);
                }
            }
        }
    }
}

fn default_of(kind: &Kind) -> Option<Value> {
    Some(match kind {
        Kind::Message(d) => Value::Message(DynamicMessage::new(d.clone())),
        Kind::String => Value::String(String::new()),
        Kind::Bool => Value::Bool(false),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(0),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(0),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(0),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(0),
        Kind::Enum(_) => Value::EnumNumber(0),
        _ => return None,
    })
}

fn descriptor(t: TypeUrl) -> MessageDescriptor {
    mast_proto::json::pool()
        .unwrap()
        .get_message_by_name(message_name(t))
        .unwrap()
}

/// One response of one type into a fresh store, SotW and delta; an error must be a NACK.
fn apply_all(t: TypeUrl, anys: &[Any]) {
    for replace in [true, false] {
        let mut resources = Resources::default();
        let incoming = anys
            .iter()
            .map(|any| Incoming {
                name: None,
                version: String::new(),
                any: any.clone(),
            })
            .collect();
        if let Err(nack) = resources.apply(t, "1", incoming, &[], replace) {
            assert!(!nack.to_string().is_empty());
            for r in nack.rejections() {
                // A resource that decodes but is refused names the field at fault.
                if let Rejection::Invalid(e) = r {
                    assert!(!e.field.is_empty(), "a rejection without a field: {e}");
                }
            }
        }
    }
    // And each through the trait, as the delta client names them.
    for any in anys {
        match t {
            TypeUrl::Listener => {
                compile::<envoy_types::pb::envoy::config::listener::v3::Listener>(any)
            }
            TypeUrl::Route => {
                compile::<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>(any)
            }
            TypeUrl::Cluster => {
                compile::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(any)
            }
            TypeUrl::Endpoint => {
                compile::<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>(any)
            }
            TypeUrl::Secret => compile::<
                envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
            >(any),
        }
    }
}

fn compile<R: XdsResource>(any: &Any) {
    if let Ok(r) = R::from_any(any) {
        let _ = r.name();
        let _ = r.compile();
    }
}

#[test]
fn fuzz_xds_any_bytes() {
    let seeds = xds_seeds();
    fuzz::run(
        "xds-bytes",
        20000,
        |rng| {
            let (t, seed) = rng.pick(&seeds).clone();
            let value = if rng.one_in(8) {
                rng.bytes(256)
            } else {
                fuzz::mutate_bytes(rng, &seed.value, &[])
            };
            (
                t,
                Any {
                    type_url: t.url().to_string(),
                    value,
                },
            )
        },
        |(t, any)| apply_all(*t, std::slice::from_ref(any)),
    );
}

#[test]
fn fuzz_xds_hostile_protos() {
    let seeds = xds_seeds();
    fuzz::run(
        "xds-protos",
        5000,
        |rng| {
            let (t, seed) = rng.pick(&seeds).clone();
            let mut msg = DynamicMessage::decode(descriptor(t), seed.value.as_slice()).unwrap();
            for _ in 0..1 + rng.below(4) {
                mutate_message(rng, &mut msg, 0);
            }
            let any = Any {
                type_url: t.url().to_string(),
                value: msg.encode_to_vec(),
            };
            // Sometimes two resources of the same name in one response.
            let n = if rng.one_in(6) { 2 } else { 1 };
            (t, vec![any; n])
        },
        |(t, anys)| apply_all(*t, anys),
    );
}

// === HTTP ===

const HTTP_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b": ",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Host: a\r\n",
    b"Host: a\r\nHost: b\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"Expect: 100-continue\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"/../",
    b"%2F",
    b"%2e%2e",
    b"//",
    b"?",
    b"#",
    b" HTTP/1.0",
    b" HTTP/1.1",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"x-forwarded-for: 1.2.3.4\r\n",
    b"te: trailers\r\n",
    b":authority",
    b"\t",
    b"\x7f",
];

fn hcm(codec: Codec, path: PathNormalization) -> HttpManager {
    let routes = serde_json::json!({
        "name": "r",
        "virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [
            {"match": {"prefix": "/redirect"}, "redirect": {"https_redirect": true}},
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
            {"match": {"safe_regex": {"regex": "^/re/[a-z]+$"}}, "route": {"cluster": "none", "prefix_rewrite": "/"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "none", "timeout": "1s"}}
        ]}]
    });
    let routes: envoy_types::pb::envoy::config::route::v3::RouteConfiguration =
        mast_proto::json::json_to_message(&routes).unwrap();
    HttpManager {
        stat_prefix: "fuzz".into(),
        routes: RouteSource::Inline(Arc::new(routes.compile().unwrap())),
        codec,
        websocket: true,
        stream_idle_timeout: Some(Duration::from_secs(1)),
        idle_timeout: Some(Duration::from_secs(1)),
        request_headers_timeout: None,
        jwt: None,
        rbac: Vec::new(),
        network_rbac: Vec::new(),
        path,
        max_request_headers: 60 * 1024,
        max_headers: 100,
        accept_http_10: false,
        default_host_for_http_10: None,
        use_remote_address: false,
        internal_addresses: None,
        tracing: fuzz_tracing(),
    }
}

/// Tracing on (Zipkin with W3C, every request sampled), so hostile trace headers go through
/// the B3 and W3C parsers and the request-id sampling bits.
fn fuzz_tracing() -> Option<Arc<mast_proxy::http::trace::TracingConfig>> {
    let hcm = serde_json::json!({
        "stat_prefix": "fuzz",
        "tracing": {
            "random_sampling": {"value": 100},
            "custom_tags": [{"tag": "user", "request_header": {"name": "x-user"}}],
            "provider": {"name": "envoy.tracers.zipkin", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "trace_context_option": "USE_B3_WITH_W3C_PROPAGATION"
            }}
        }
    });
    let hcm: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
        mast_proto::json::json_to_message(&hcm).unwrap();
    mast_proxy::http::trace::TracingConfig::from_hcm(&hcm).unwrap()
}

struct HttpTarget {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    managers: Vec<Arc<HttpManager>>,
}

impl HttpTarget {
    fn new() -> Self {
        let env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        let config = mast_proxy::config::Config::from_env(&env, &Default::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Shared may start background work: build it inside the runtime.
        let shared = runtime.block_on(async { Arc::new(Shared::new(config, false, None)) });
        let normalize = PathNormalization {
            normalize: true,
            merge_slashes: true,
            ..Default::default()
        };
        let managers = vec![
            Arc::new(hcm(Codec::Auto, normalize)),
            Arc::new(hcm(Codec::Http1, PathNormalization::default())),
            Arc::new(hcm(Codec::Http2, normalize)),
        ];
        Self {
            runtime,
            shared,
            managers,
        }
    }

    /// Serve one connection whose client writes `input`, then closes its write side; read
    /// what comes back. The connection must end (or be dropped after a bounded wait).
    fn feed(&self, input: &[u8], manager: usize, inbound: bool) -> Vec<u8> {
        let peer: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let ctx = Arc::new(ConnCtx {
            shared: Arc::clone(&self.shared),
            hcm: Arc::clone(&self.managers[manager % self.managers.len()]),
            inbound,
            peer,
            dst,
            original_dst: None,
            tls: false,
            peer_identity: None,
            principal_peer: std::sync::OnceLock::new(),
        });
        self.runtime.block_on(async {
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let task = tokio::spawn(serve(ctx, server));
            let _ = client.write_all(input).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(200), client.read_to_end(&mut out))
                .await;
            drop(client);
            // A panic in the connection task is a panic of the target.
            match tokio::time::timeout(Duration::from_millis(200), task).await {
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => {}
            }
            out
        })
    }
}

/// The HTTP target really reaches the router: the seeds get answers.
#[test]
fn http_target_answers_the_seeds() {
    let target = HttpTarget::new();
    let get = target.feed(b"GET /direct HTTP/1.1\r\nHost: a\r\n\r\n", 0, true);
    let get = String::from_utf8_lossy(&get);
    assert!(get.starts_with("HTTP/1.1 200"), "{get}");
    assert!(get.ends_with("ok"), "{get}");
    let none = target.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 1, false);
    assert!(
        String::from_utf8_lossy(&none).starts_with("HTTP/1.1 5"),
        "{none:?}"
    );
    let h2 = &fuzz::seeds("http")
        .into_iter()
        .find(|(p, _)| p.ends_with("h2c-prior-knowledge.bin"))
        .unwrap()
        .1;
    let h2 = target.feed(h2, 2, true);
    // A SETTINGS frame (type 4) first, then the response's frames.
    assert!(h2.len() > 9 && h2[3] == 4, "{h2:?}");
}

/// The xDS seeds are real, acceptable resources: mutations start from config that compiles.
#[test]
fn xds_seeds_mostly_compile() {
    let seeds = xds_seeds();
    let ok = seeds
        .iter()
        .filter(|(t, any)| {
            let mut r = Resources::default();
            let incoming = vec![Incoming {
                name: None,
                version: String::new(),
                any: any.clone(),
            }];
            r.apply(*t, "1", incoming, &[], true).is_ok()
        })
        .count();
    eprintln!("xDS seeds: {} of {} accepted", ok, seeds.len());
    assert!(ok * 2 > seeds.len(), "{ok} of {}", seeds.len());
}

#[test]
fn fuzz_http_raw_bytes() {
    let seeds: Vec<Vec<u8>> = fuzz::seeds("http").into_iter().map(|(_, b)| b).collect();
    let target = HttpTarget::new();
    let mut answered = (0usize, 0usize);
    let mut statuses = std::collections::BTreeMap::new();
    let n = fuzz::run(
        "http-bytes",
        20000,
        |rng| {
            let bytes = match rng.below(10) {
                0 => rng.bytes(512),
                1..=3 => {
                    let text = String::from_utf8_lossy(&seeds[rng.below(seeds.len())]).into_owned();
                    let headers: &[&str] = &[
                        "Host: x",
                        "Content-Length: 0",
                        "Transfer-Encoding: chunked",
                        "Transfer-Encoding: chunked, identity",
                        " folded",
                        "X: \u{1}",
                        ":path: /",
                        "Content-Length: +5",
                        "content-length: 1, 2",
                        "GET http://a@b/../c HTTP/1.1",
                        "GET * HTTP/1.1",
                        "CONNECT a:443 HTTP/1.1",
                    ];
                    let mutated = fuzz::mutate_lines(rng, &text, headers);
                    mutated.replace('\n', "\r\n").into_bytes()
                }
                _ => {
                    let seed = &seeds[rng.below(seeds.len())];
                    fuzz::mutate_bytes(rng, seed, HTTP_DICT)
                }
            };
            (bytes, rng.below(3), rng.one_in(2))
        },
        |(bytes, manager, inbound)| {
            let out = target.feed(bytes, *manager, *inbound);
            if out.starts_with(b"HTTP/1.1 ") {
                answered.0 += 1;
                *statuses.entry(out[9..12].to_vec()).or_insert(0usize) += 1;
                if out.starts_with(b"HTTP/1.1 2") || out.starts_with(b"HTTP/1.1 5") {
                    answered.1 += 1;
                }
            }
        },
    );
    // How deep the inputs get: an HTTP/1 answer, and one from past the request checks (the
    // route's direct response or its missing cluster).
    eprintln!(
        "http-bytes: {} of {n} answered over HTTP/1, {} from a route",
        answered.0, answered.1
    );
    let statuses: Vec<_> = statuses
        .iter()
        .map(|(s, n)| format!("{}: {n}", String::from_utf8_lossy(s)))
        .collect();
    eprintln!("http-bytes statuses: {}", statuses.join(", "));
}

// === TLS ClientHello sniffing ===

#[test]
fn fuzz_tls_client_hello() {
    let seeds: Vec<Vec<u8>> = fuzz::seeds("tls").into_iter().map(|(_, b)| b).collect();
    fuzz::run(
        "tls-client-hello",
        100000,
        |rng| {
            if rng.one_in(10) {
                let mut b = rng.bytes(300);
                if !b.is_empty() {
                    b[0] = 0x16;
                }
                b
            } else {
                let seed = &seeds[rng.below(seeds.len())];
                fuzz::mutate_bytes(rng, seed, &[&[0x00, 0x00], &[0xff, 0xff]])
            }
        },
        |bytes| {
            let _ = mast_proxy::tls::parse_client_hello(bytes);
        },
    );
}

// === The environment: PROXY_CONFIG, ISTIO_META_*, ports ===

/// What the injector sets on an istio-proxy container, Istio's names.
fn env_seed() -> Vec<(&'static str, String)> {
    vec![
        ("POD_NAME", "reviews-v1-7d9f8b6c5d-x2x7q".into()),
        ("POD_NAMESPACE", "default".into()),
        ("INSTANCE_IP", "10.244.0.7".into()),
        ("SERVICE_ACCOUNT", "bookinfo-reviews".into()),
        (
            "PROXY_CONFIG",
            serde_json::json!({
                "discoveryAddress": "istiod.istio-system.svc:15012",
                "terminationDrainDuration": "5s",
                "concurrency": 2,
                "statusPort": 15020,
                "proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"},
                "holdApplicationUntilProxyStarts": true
            })
            .to_string(),
        ),
        ("CA_ADDR", "istiod.istio-system.svc:15012".into()),
        ("TRUST_DOMAIN", "cluster.local".into()),
        ("SECRET_TTL", "24h0m0s".into()),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes".into()),
        ("ISTIO_META_WORKLOAD_NAME", "reviews-v1".into()),
        ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT".into()),
        (
            "ISTIO_METAJSON_LABELS",
            r#"{"app":"reviews","version":"v1"}"#.into(),
        ),
        (
            "ISTIO_KUBE_APP_PROBERS",
            r#"{"/app-health/reviews/livez":{"httpGet":{"path":"/healthz","port":9080,"scheme":"HTTP"},"timeoutSeconds":1}}"#.into(),
        ),
        ("MAST_STATS_PORT", "15090".into()),
        ("MAST_AGENT_PORT", "15020".into()),
        ("MAST_ADMIN_PORT", "15000".into()),
        ("HOSTNAME", "reviews-v1-7d9f8b6c5d-x2x7q".into()),
    ]
}

#[test]
fn fuzz_proxy_env_and_proxy_config() {
    use mast_proxy::config::{Config, Overrides};
    let seed = env_seed();
    let env: std::collections::BTreeMap<String, String> = seed
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Config::from_env(&env, &Overrides::default()).expect("the seed environment is valid");
    fuzz::run(
        "proxy-env",
        6000,
        |rng| {
            let mut env = std::collections::BTreeMap::new();
            for (k, v) in &seed {
                if rng.one_in(6) {
                    continue;
                }
                let value = if !rng.one_in(3) {
                    v.clone()
                } else if v.starts_with('{') && !rng.one_in(4) {
                    let mut json: Json = serde_json::from_str(v).unwrap();
                    for _ in 0..1 + rng.below(3) {
                        fuzz::mutate_json(rng, &mut json);
                    }
                    json.to_string()
                } else if rng.one_in(3) {
                    fuzz::HOSTILE_YAML_VALUES[rng.below(fuzz::HOSTILE_YAML_VALUES.len())]
                        .to_string()
                } else {
                    let bytes = fuzz::mutate_bytes(rng, v.as_bytes(), &[b":", b".", b"{", b"\""]);
                    String::from_utf8_lossy(&bytes).into_owned()
                };
                env.insert(k.to_string(), value);
            }
            if rng.one_in(4) {
                env.insert(
                    format!("ISTIO_METAJSON_{}", rng.below(3)),
                    "{\"a\":[1,".into(),
                );
            }
            env
        },
        |env| {
            if let Err(e) = Config::from_env(env, &Overrides::default()) {
                // The error names the variable (or the PROXY_CONFIG field) it is about.
                assert!(!e.name.is_empty(), "{e}");
            }
        },
    );
}

// === Regressions found by the targets above ===

fn route_with_backoff(base: envoy_types::pb::google::protobuf::Duration) -> Any {
    use envoy_types::pb::envoy::config::route::v3 as rv3;
    let route = rv3::Route {
        r#match: Some(rv3::RouteMatch {
            path_specifier: Some(rv3::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(rv3::route::Action::Route(rv3::RouteAction {
            cluster_specifier: Some(rv3::route_action::ClusterSpecifier::Cluster("a".into())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let config = rv3::RouteConfiguration {
        name: "80".into(),
        virtual_hosts: vec![rv3::VirtualHost {
            name: "a".into(),
            domains: vec!["*".into()],
            routes: vec![route],
            retry_policy: Some(rv3::RetryPolicy {
                retry_on: "5xx".into(),
                retry_back_off: Some(rv3::retry_policy::RetryBackOff {
                    base_interval: Some(base),
                    max_interval: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    Any {
        type_url: TypeUrl::Route.url().to_string(),
        value: config.encode_to_vec(),
    }
}

fn apply_route(any: Any) -> Result<(), String> {
    let incoming = vec![Incoming {
        name: None,
        version: String::new(),
        any,
    }];
    Resources::default()
        .apply(TypeUrl::Route, "1", incoming, &[], true)
        .map_err(|nack| nack.to_string())
}

/// Found by `xds-protos` (case 44296 of the 10× run): a retry backoff base with no max
/// (the max defaults to ten times the base) overflowed `Duration` and panicked the proxy
/// while it compiled the route configuration. Out-of-range durations are now refused, as
/// Envoy refuses them, naming the field.
#[test]
fn fuzz_regression_retry_backoff_base_overflow() {
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    let huge = PbDuration {
        seconds: i64::MAX / 4,
        nanos: 0,
    };
    let err = apply_route(route_with_backoff(huge)).unwrap_err();
    assert!(
        err.contains("retry_policy.retry_back_off.base_interval: duration out of range"),
        "{err}"
    );
    // The largest valid duration is taken, and its default max does not overflow.
    let max = PbDuration {
        seconds: 315_576_000_000,
        nanos: 999_999_999,
    };
    apply_route(route_with_backoff(max)).unwrap();
    let bad_nanos = PbDuration {
        seconds: 1,
        nanos: 1_000_000_000,
    };
    assert!(apply_route(route_with_backoff(bad_nanos)).is_err());
}

/// Found by `xds-protos` in the 50× pass (a case that ran for minutes, not a panic): a
/// listener filter's `filter_disabled` with a `destination_port_range` spanning all of
/// `i32` made the proxy walk four billion numbers while compiling the listener. Only port
/// numbers are walked now; the range still means what it says.
#[test]
fn fuzz_regression_listener_filter_port_range_walk() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    let listener = serde_json::json!({
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
            "filter_disabled": {"or_match": {"rules": [
                {"destination_port_range": {"start": i32::MIN, "end": i32::MAX}},
                {"destination_port_range": {"start": 8080, "end": 8081}}
            ]}}
        }],
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "x", "cluster": "c"}
        }]}]
    });
    let listener: Listener = mast_proto::json::json_to_message(&listener).unwrap();
    let started = std::time::Instant::now();
    let compiled = listener.compile().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for port in [0, 80, 8080, 15006, 65535] {
        assert!(!compiled.sniffs_tls(port), "port {port}");
    }
    // A range that holds port numbers only in part keeps those.
    let partial: Listener = mast_proto::json::json_to_message(&serde_json::json!({
        "name": "l",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
            "filter_disabled": {"destination_port_range": {"start": 65000, "end": i32::MAX}}
        }],
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "x", "cluster": "c"}
        }]}]
    }))
    .unwrap();
    let compiled = partial.compile().unwrap();
    assert!(compiled.sniffs_tls(64999));
    assert!(!compiled.sniffs_tls(65000));
    assert!(!compiled.sniffs_tls(65535));
}
