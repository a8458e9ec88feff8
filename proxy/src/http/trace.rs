//! Distributed tracing in the HTTP connection manager, with Envoy's semantics for the config
//! istiod sends (`HttpConnectionManager.tracing`, the UUID `request_id_extension`, route
//! `decorator`s).
//!
//! Applications only forward trace headers; the sidecars make the spans. So every request gets
//! a span here: a server span on an inbound connection manager, a client span on an outbound
//! one, joined to the incoming trace and injected into the request the upstream sees, so the
//! next sidecar's span is this one's child. What is decided and written follows Envoy, because
//! traces from a mesh of Envoys and mast-proxies must join up and read the same:
//!
//! - **Sampling** (Envoy's `mutateTracingRequestHeader`): the decision is packed into the
//!   `x-request-id` UUID's 15th character (`9` sampled, `a` forced by `x-envoy-force-trace`,
//!   `b` asked for by `x-client-trace-id`), so every hop of a request agrees without talking.
//!   A fresh request is sampled when the first 8 hex digits of its request id, mod 10,000, fall
//!   under `random_sampling`; `overall_sampling` can veto any reason.
//! - **Context**: the OpenTelemetry tracer reads and writes W3C `traceparent`/`tracestate`
//!   only (an invalid `traceparent` means no span at all, as Envoy's null span); the Zipkin
//!   tracer reads B3 (`b3` single header first, then `x-b3-*`) and, with
//!   `USE_B3_WITH_W3C_PROPAGATION`, `traceparent`, and writes `x-b3-*` (and `traceparent`).
//!   An incoming sampled flag wins over the local decision.
//! - **Names and tags**: the span takes the route's decorator operation (istiod's
//!   `<host>:<port>/*`), an inbound one the caller's `x-envoy-decorator-operation`; tags are
//!   Envoy's (`guid:x-request-id`, `http.url`, `http.method`, `http.protocol`,
//!   `http.status_code`, `response_flags`, `upstream_cluster`, `node_id`, `component`, …) plus
//!   the custom tags istiod adds (`istio.canonical_service`, `istio.namespace`, …); `error`
//!   on a 5xx, no response, or a non-OK gRPC status.
//!
//! A span is handed to its provider's exporter (`crate::trace_export`) when the request's
//! telemetry is recorded; the exporter never blocks the request.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, HttpService};
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType as ProviderConfigType;
use envoy_types::pb::envoy::config::trace::v3::zipkin_config::{
    CollectorEndpointVersion, TraceContextOption,
};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::Type as TagType;
use envoy_types::pb::envoy::r#type::v3::Percent;
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;

use crate::resources::route::Route;
use crate::resources::{At, FieldError, FieldResult, decode_any, opt_duration};
use crate::trace_export::Exporter;

/// Envoy's OpenTelemetry `max_cache_size` default.
const OTEL_MAX_CACHE_SIZE: usize = 1024;
/// Envoy's default `max_path_tag_length`.
const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;
/// The position of the trace reason in a UUID request id (the version digit of a UUIDv4).
const TRACE_BYTE_POSITION: usize = 14;
const UUID_LENGTH: usize = 36;

const X_REQUEST_ID: &str = "x-request-id";
const X_CLIENT_TRACE_ID: &str = "x-client-trace-id";
const X_ENVOY_FORCE_TRACE: &str = "x-envoy-force-trace";
const X_DECORATOR_OPERATION: &str = "x-envoy-decorator-operation";
const X_DOWNSTREAM_CLUSTER: &str = "x-envoy-downstream-service-cluster";
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const B3: &str = "b3";
const X_B3_TRACE_ID: &str = "x-b3-traceid";
const X_B3_SPAN_ID: &str = "x-b3-spanid";
const X_B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
const X_B3_SAMPLED: &str = "x-b3-sampled";
const X_B3_FLAGS: &str = "x-b3-flags";

/// A connection manager's `tracing`, compiled.
#[derive(Debug)]
pub struct TracingConfig {
    /// `None`: decisions are made and packed into `x-request-id`, but no span is made (Envoy
    /// with no tracer configured).
    pub provider: Option<Arc<Provider>>,
    /// `client_sampling`, out of 100 (Envoy truncates the percentage).
    client_sampling: u64,
    /// `random_sampling`, out of 10,000.
    random_sampling: u64,
    /// `overall_sampling`, out of 10,000.
    overall_sampling: u64,
    custom_tags: Vec<CustomTag>,
    max_path_tag_length: usize,
    /// The UUID extension's `use_request_id_for_trace_sampling` (default true).
    use_request_id: bool,
    /// The UUID extension's `pack_trace_reason` (default true).
    pack_trace_reason: bool,
    /// `generate_request_id` (default true).
    generate_request_id: bool,
    /// `spawn_upstream_span`: the proxy is a hop of its own — a server span for the
    /// downstream and a client child span for the upstream request (istiod sets it on
    /// gateways with `PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY`).
    spawn_upstream_span: bool,
    /// `preserve_external_request_id`: an edge keeps the client's request id (off by
    /// default, so a client cannot pick its own sampling bits).
    preserve_external_request_id: bool,
    /// The config that replaced this one on its listener's filter chain: a connection opened
    /// before an update traces with the newest config, as Envoy drains the connections of an
    /// updated listener (its old config would otherwise live as long as the connection).
    next: arc_swap::ArcSwapOption<TracingConfig>,
    /// The update removed tracing from the chain.
    removed: std::sync::atomic::AtomicBool,
    /// The connection manager's `stat_prefix`, for `http.<prefix>.tracing.*`.
    stat_prefix: String,
    decisions: OnceLock<Arc<crate::trace_export::Decisions>>,
}

/// Where and how spans are exported; one exporter serves every listener with the same
/// provider settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    /// The collector's cluster (CDS), reached through the proxy's own upstream machinery.
    pub cluster: String,
    /// The collector's host name, for `Host`/`:authority`.
    pub authority: String,
    /// The export path (`/v1/traces`, `/api/v2/spans`; gRPC's method path is fixed).
    pub path: String,
    pub timeout: Duration,
    /// `request_headers_to_add` / gRPC `initial_metadata`.
    pub headers: Vec<(String, String)>,
    /// OpenTelemetry `service_name`; Zipkin's local endpoint name is the node's cluster.
    pub service_name: String,
    /// How many finished spans may wait for export: OpenTelemetry's `max_cache_size`
    /// (Envoy's default 1,024); Zipkin has no such setting.
    pub capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OtlpGrpc,
    OtlpHttp,
    Zipkin,
}

/// A tracer: its exporter settings and how it reads and writes context.
#[derive(Debug)]
pub struct Provider {
    pub spec: ProviderSpec,
    /// Zipkin's `trace_id_128bit`: new traces get 128-bit ids.
    trace_id_128: bool,
    /// Zipkin's `shared_span_context` (default true): a server span keeps the caller's span id.
    shared_span_context: bool,
    /// Zipkin's `USE_B3_WITH_W3C_PROPAGATION`.
    w3c_with_b3: bool,
    exporter: OnceLock<Arc<Exporter>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CustomTag {
    /// Literal and environment tags (the environment is read once, as Envoy reads it).
    Fixed { tag: String, value: String },
    Header {
        tag: String,
        name: HeaderName,
        default: String,
    },
    /// Request-metadata tags (istiod's RBAC dry-run tags): set only when the metadata is
    /// there; mast-proxy writes no such metadata, so they stay unset as in Envoy without
    /// shadow rules.
    Metadata,
}

/// A route's `decorator`: the operation its spans are named by, and whether an outbound
/// request tells the next hop (`x-envoy-decorator-operation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decorator {
    pub operation: String,
    pub propagate: bool,
}

impl Decorator {
    pub fn from_proto(d: &envoy_types::pb::envoy::config::route::v3::Decorator) -> Option<Self> {
        (!d.operation.is_empty()).then(|| Self {
            operation: d.operation.clone(),
            propagate: d.propagate.as_ref().is_none_or(|b| b.value),
        })
    }
}

/// Why a request is traced (Envoy's `Tracing::Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotTraceable,
    Sampling,
    ServiceForced,
    ClientForced,
}

/// Span kind, from the listener's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// An incoming trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub trace_id: u128,
    /// The trace id had 128 bits (B3 allows 64).
    pub trace_id_128: bool,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    /// The context's own decision, when it carries one.
    pub sampled: Option<bool>,
    pub tracestate: String,
}

/// A finished span, as the exporters encode it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    pub trace_id: u128,
    pub trace_id_128: bool,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub duration: Duration,
    pub tags: Vec<(&'static str, String)>,
    /// Custom tags, whose names come from config.
    pub custom: Vec<(String, String)>,
    pub tracestate: String,
    pub error: bool,
    /// A Zipkin server span sharing its caller's span id.
    pub shared: bool,
}

/// A sampled span waiting for its request to end.
pub struct ActiveSpan {
    data: SpanData,
    /// `spawn_upstream_span`: the upstream request's span.
    upstream: Option<SpanData>,
    started: Instant,
    exporter: Arc<Exporter>,
    /// The upstream's `x-envoy-decorator-operation` (outbound), which names the span.
    rename: Option<Arc<OnceLock<String>>>,
}

// === impl TracingConfig ===

impl TracingConfig {
    /// The connection manager's tracing, or `None` when it has no `tracing` field.
    pub fn from_hcm(h: &HttpConnectionManager) -> FieldResult<Option<Arc<Self>>> {
        let Some(t) = &h.tracing else {
            return Ok(None);
        };
        let (use_request_id, pack_trace_reason) = uuid_extension(h)?;
        Self::build(t, use_request_id, pack_trace_reason)
            .at("tracing")
            .map(|mut c| {
                c.generate_request_id = h.generate_request_id.as_ref().is_none_or(|b| b.value);
                c.stat_prefix = h.stat_prefix.clone();
                c.preserve_external_request_id = h.preserve_external_request_id;
                Some(Arc::new(c))
            })
    }

    fn build(
        t: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing,
        use_request_id: bool,
        pack_trace_reason: bool,
    ) -> FieldResult<Self> {
        let client_sampling = match &t.client_sampling {
            Some(p) => percent(p, "client_sampling")? as u64,
            None => 100,
        };
        let random_sampling = per_10k(&t.random_sampling, "random_sampling")?;
        let overall_sampling = per_10k(&t.overall_sampling, "overall_sampling")?;
        let custom_tags = t
            .custom_tags
            .iter()
            .enumerate()
            .map(|(i, c)| custom_tag(c).at(format!("custom_tags[{i}]")))
            .collect::<FieldResult<Vec<_>>>()?;
        let provider = match &t.provider {
            None => None,
            Some(p) => Some(Arc::new(Provider::from_proto(p).at("provider")?)),
        };
        Ok(Self {
            provider,
            client_sampling,
            random_sampling,
            overall_sampling,
            custom_tags,
            max_path_tag_length: t
                .max_path_tag_length
                .as_ref()
                .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |v| v.value as usize),
            use_request_id,
            pack_trace_reason,
            generate_request_id: true,
            spawn_upstream_span: t.spawn_upstream_span.as_ref().is_some_and(|b| b.value),
            preserve_external_request_id: false,
            stat_prefix: String::new(),
            decisions: OnceLock::new(),
            next: Default::default(),
            removed: Default::default(),
        })
    }

    /// A listener's filter chain (`key`) was compiled with `new` (`None`: without tracing):
    /// the config it had before points to it from now on.
    pub fn supersede(key: &str, new: Option<&Arc<Self>>) {
        static LATEST: std::sync::LazyLock<Mutex<HashMap<String, Weak<TracingConfig>>>> =
            std::sync::LazyLock::new(Default::default);
        let mut map = match LATEST.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(old) = map.get(key).and_then(Weak::upgrade) {
            match new {
                Some(n) if !Arc::ptr_eq(&old, n) => old.next.store(Some(Arc::clone(n))),
                Some(_) => {}
                None => old.removed.store(true, Ordering::Relaxed),
            }
        }
        match new {
            Some(n) => {
                map.insert(key.to_string(), Arc::downgrade(n));
            }
            None => {
                map.remove(key);
            }
        }
    }

    /// The config a request uses on a connection opened with this one: the newest for its
    /// filter chain (the walk is shortened for the next request), `None` once tracing was
    /// removed.
    pub fn current(self: &Arc<Self>) -> Option<Arc<Self>> {
        if self.next.load().is_none() {
            return (!self.removed.load(Ordering::Relaxed)).then(|| Arc::clone(self));
        }
        let mut latest = self.next.load_full()?;
        while let Some(n) = latest.next.load_full() {
            latest = n;
        }
        self.next.store(Some(Arc::clone(&latest)));
        (!latest.removed.load(Ordering::Relaxed)).then_some(latest)
    }

    /// Envoy's sampling decision for a request, packed into its `x-request-id` (which must
    /// already be set when one is generated). `random` is a number for `client_sampling`.
    pub fn decide(&self, headers: &mut HeaderMap, random: u64) -> Reason {
        if !self.use_request_id {
            return Reason::Sampling;
        }
        let Some(id) = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) else {
            return Reason::NotTraceable;
        };
        let Some(n) = id
            .get(..8)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .filter(|_| id.len() >= 8)
        else {
            return Reason::NotTraceable;
        };
        let result = n % 10_000;
        let mut reason = trace_reason(id);
        if reason == Reason::NotTraceable {
            if headers.contains_key(X_CLIENT_TRACE_ID) && random % 100 < self.client_sampling {
                reason = Reason::ClientForced;
            } else if headers.contains_key(X_ENVOY_FORCE_TRACE) {
                reason = Reason::ServiceForced;
            } else if result < self.random_sampling {
                reason = Reason::Sampling;
            }
            if reason != Reason::NotTraceable {
                self.set_reason(headers, reason);
            }
        }
        if reason != Reason::NotTraceable && result >= self.overall_sampling {
            reason = Reason::NotTraceable;
            self.set_reason(headers, reason);
        }
        reason
    }

    fn set_reason(&self, headers: &mut HeaderMap, reason: Reason) {
        if !self.pack_trace_reason {
            return;
        }
        let Some(id) = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) else {
            return;
        };
        if id.len() != UUID_LENGTH || !id.is_char_boundary(TRACE_BYTE_POSITION + 1) {
            return;
        }
        let c = match reason {
            Reason::Sampling => '9',
            Reason::ServiceForced => 'a',
            Reason::ClientForced => 'b',
            Reason::NotTraceable => '4',
        };
        let mut s = id.to_string();
        s.replace_range(
            TRACE_BYTE_POSITION..=TRACE_BYTE_POSITION,
            c.encode_utf8(&mut [0; 4]),
        );
        if let Ok(v) = HeaderValue::from_str(&s) {
            headers.insert(X_REQUEST_ID, v);
        }
    }
}

/// The reason packed into a request id; anything but a 36-character UUID is not traceable.
fn trace_reason(id: &str) -> Reason {
    if id.len() != UUID_LENGTH {
        return Reason::NotTraceable;
    }
    match id.as_bytes()[TRACE_BYTE_POSITION] {
        b'9' => Reason::Sampling,
        b'a' => Reason::ServiceForced,
        b'b' => Reason::ClientForced,
        _ => Reason::NotTraceable,
    }
}

/// The HCM's UUID request id extension: (`use_request_id_for_trace_sampling`,
/// `pack_trace_reason`), both true by default.
fn uuid_extension(h: &HttpConnectionManager) -> FieldResult<(bool, bool)> {
    let Some(any) = h
        .request_id_extension
        .as_ref()
        .and_then(|e| e.typed_config.as_ref())
    else {
        return Ok((true, true));
    };
    let u: UuidRequestIdConfig = decode_any(any, "request_id_extension.typed_config")?;
    Ok((
        u.use_request_id_for_trace_sampling
            .as_ref()
            .is_none_or(|b| b.value),
        u.pack_trace_reason.as_ref().is_none_or(|b| b.value),
    ))
}

fn percent(p: &Percent, field: &str) -> FieldResult<f64> {
    if !(0.0..=100.0).contains(&p.value) {
        return Err(FieldError::new(field, "must be between 0 and 100"));
    }
    Ok(p.value)
}

/// A percentage as Envoy keeps it: rounded to a count out of 10,000 (100% when unset).
fn per_10k(p: &Option<Percent>, field: &str) -> FieldResult<u64> {
    match p {
        None => Ok(10_000),
        Some(p) => Ok((percent(p, field)? * 100.0).round() as u64),
    }
}

fn custom_tag(
    c: &envoy_types::pb::envoy::r#type::tracing::v3::CustomTag,
) -> FieldResult<CustomTag> {
    let tag = c.tag.clone();
    if tag.is_empty() {
        return Err(FieldError::new("tag", "required"));
    }
    Ok(match &c.r#type {
        Some(TagType::Literal(l)) => CustomTag::Fixed {
            tag,
            value: l.value.clone(),
        },
        Some(TagType::Environment(e)) => CustomTag::Fixed {
            tag,
            value: std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()),
        },
        Some(TagType::RequestHeader(h)) => CustomTag::Header {
            tag,
            name: HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| FieldError::new("request_header.name", "not a header name"))?,
            default: h.default_value.clone(),
        },
        Some(TagType::Metadata(_)) => CustomTag::Metadata,
        Some(TagType::Value(v)) if !v.contains('%') => CustomTag::Fixed {
            tag,
            value: v.clone(),
        },
        Some(TagType::Value(_)) => {
            return Err(FieldError::new(
                "value",
                "format commands in custom tag values are not supported",
            ));
        }
        None => return Err(FieldError::new("type", "required")),
    })
}

// === impl Provider ===

impl Provider {
    fn from_proto(
        p: &envoy_types::pb::envoy::config::trace::v3::tracing::Http,
    ) -> FieldResult<Self> {
        let Some(ProviderConfigType::TypedConfig(any)) = &p.config_type else {
            return Err(FieldError::new("typed_config", "required"));
        };
        let otel = <OpenTelemetryConfig as prost::Name>::type_url();
        let zipkin = <ZipkinConfig as prost::Name>::type_url();
        if any.type_url == otel {
            let c: OpenTelemetryConfig = decode_any(any, "typed_config")?;
            Self::otel(&c).at("typed_config")
        } else if any.type_url == zipkin {
            let c: ZipkinConfig = decode_any(any, "typed_config")?;
            Self::zipkin(&c).at("typed_config")
        } else {
            Err(FieldError::new(
                "typed_config",
                format!(
                    "tracer {} ({}) is not supported; OpenTelemetry and Zipkin are",
                    p.name, any.type_url
                ),
            ))
        }
    }

    fn new(spec: ProviderSpec) -> Self {
        Self {
            spec,
            trace_id_128: true,
            shared_span_context: false,
            w3c_with_b3: false,
            exporter: OnceLock::new(),
        }
    }

    fn otel(c: &OpenTelemetryConfig) -> FieldResult<Self> {
        if c.sampler.is_some() {
            return Err(FieldError::new("sampler", "samplers are not supported"));
        }
        if c.exporter.is_some() {
            return Err(FieldError::new(
                "exporter",
                "custom exporters are not supported",
            ));
        }
        if !c.resource_detectors.is_empty() {
            return Err(FieldError::new(
                "resource_detectors",
                "resource detectors are not supported",
            ));
        }
        let service_name = if c.service_name.is_empty() {
            "unknown_service:envoy".to_string()
        } else {
            c.service_name.clone()
        };
        let capacity = c
            .max_cache_size
            .as_ref()
            .map_or(OTEL_MAX_CACHE_SIZE, |v| v.value as usize)
            .max(1);
        let spec = match (&c.grpc_service, &c.http_service) {
            (Some(g), None) => {
                let Some(TargetSpecifier::EnvoyGrpc(e)) = &g.target_specifier else {
                    return Err(FieldError::new(
                        "grpc_service",
                        "only envoy_grpc (a cluster) is supported",
                    ));
                };
                if e.cluster_name.is_empty() {
                    return Err(FieldError::new(
                        "grpc_service.envoy_grpc.cluster_name",
                        "required",
                    ));
                }
                ProviderSpec {
                    kind: ProviderKind::OtlpGrpc,
                    cluster: e.cluster_name.clone(),
                    authority: if e.authority.is_empty() {
                        e.cluster_name.clone()
                    } else {
                        e.authority.clone()
                    },
                    path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export".into(),
                    timeout: opt_duration(&g.timeout, "grpc_service.timeout")?
                        .filter(|d| !d.is_zero())
                        .unwrap_or(Duration::from_secs(5)),
                    headers: g
                        .initial_metadata
                        .iter()
                        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
                        .collect(),
                    service_name,
                    capacity,
                }
            }
            (None, Some(h)) => {
                let (cluster, authority, path, timeout, headers) =
                    http_service(h).at("http_service")?;
                ProviderSpec {
                    kind: ProviderKind::OtlpHttp,
                    cluster,
                    authority,
                    path,
                    timeout,
                    headers,
                    service_name,
                    capacity,
                }
            }
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "http_service",
                    "grpc_service and http_service are exclusive",
                ));
            }
            (None, None) => {
                return Err(FieldError::new(
                    "grpc_service",
                    "grpc_service or http_service is required",
                ));
            }
        };
        Ok(Self::new(spec))
    }

    fn zipkin(c: &ZipkinConfig) -> FieldResult<Self> {
        if c.collector_endpoint_version != CollectorEndpointVersion::HttpJson as i32 {
            return Err(FieldError::new(
                "collector_endpoint_version",
                "only HTTP_JSON (Zipkin v2 JSON) is supported",
            ));
        }
        let (cluster, authority, path, timeout, headers) = match &c.collector_service {
            Some(h) => http_service(h).at("collector_service")?,
            None => {
                if c.collector_cluster.is_empty() {
                    return Err(FieldError::new(
                        "collector_cluster",
                        "collector_cluster or collector_service is required",
                    ));
                }
                if !c.collector_endpoint.starts_with('/') {
                    return Err(FieldError::new("collector_endpoint", "must be a path"));
                }
                let authority = if c.collector_hostname.is_empty() {
                    c.collector_cluster.clone()
                } else {
                    c.collector_hostname.clone()
                };
                (
                    c.collector_cluster.clone(),
                    authority,
                    c.collector_endpoint.clone(),
                    Duration::from_secs(5),
                    Vec::new(),
                )
            }
        };
        let mut p = Self::new(ProviderSpec {
            kind: ProviderKind::Zipkin,
            cluster,
            authority,
            path,
            timeout,
            headers,
            service_name: String::new(),
            capacity: crate::trace_export::QUEUE_CAPACITY,
        });
        p.trace_id_128 = c.trace_id_128bit;
        p.shared_span_context = c.shared_span_context.as_ref().is_none_or(|b| b.value);
        p.w3c_with_b3 =
            c.trace_context_option == TraceContextOption::UseB3WithW3cPropagation as i32;
        Ok(p)
    }

    /// The provider's exporter, made on first use (one per distinct provider settings).
    fn exporter(&self, shared: &crate::shared::Shared) -> Arc<Exporter> {
        Arc::clone(
            self.exporter
                .get_or_init(|| shared.tracers.exporter(shared, &self.spec)),
        )
    }

    /// The context in the request, per this tracer's formats. `Err` when a header of its
    /// format is present but malformed: Envoy then makes no span.
    fn extract(&self, headers: &HeaderMap) -> Result<Option<Context>, ()> {
        match self.spec.kind {
            ProviderKind::OtlpGrpc | ProviderKind::OtlpHttp => w3c(headers),
            ProviderKind::Zipkin => {
                if let Some(c) = b3(headers)? {
                    return Ok(Some(c));
                }
                if self.w3c_with_b3 {
                    return w3c(headers);
                }
                Ok(None)
            }
        }
    }

    /// Write the span's context into the upstream request.
    fn inject(&self, span: &SpanData, sampled: bool, headers: &mut HeaderMap) {
        let traceparent = || {
            format!(
                "00-{:032x}-{:016x}-{}",
                span.trace_id,
                span.span_id,
                if sampled { "01" } else { "00" }
            )
        };
        match self.spec.kind {
            ProviderKind::OtlpGrpc | ProviderKind::OtlpHttp => {
                put(headers, TRACEPARENT, &traceparent());
                if !span.tracestate.is_empty() {
                    put(headers, TRACESTATE, &span.tracestate);
                }
            }
            ProviderKind::Zipkin => {
                let trace_id = if span.trace_id_128 {
                    format!("{:032x}", span.trace_id)
                } else {
                    format!("{:016x}", span.trace_id as u64)
                };
                put(headers, X_B3_TRACE_ID, &trace_id);
                put(headers, X_B3_SPAN_ID, &format!("{:016x}", span.span_id));
                match span.parent_id {
                    Some(p) => put(headers, X_B3_PARENT_SPAN_ID, &format!("{p:016x}")),
                    None => {
                        headers.remove(X_B3_PARENT_SPAN_ID);
                    }
                }
                put(headers, X_B3_SAMPLED, if sampled { "1" } else { "0" });
                // A single `b3` header would be read before the multi headers by the next
                // hop: keep it, but say the same as they do.
                if headers.contains_key(B3) {
                    let mut single = format!(
                        "{trace_id}-{:016x}-{}",
                        span.span_id,
                        if sampled { "1" } else { "0" }
                    );
                    if let Some(p) = span.parent_id {
                        single.push_str(&format!("-{p:016x}"));
                    }
                    put(headers, B3, &single);
                }
                if self.w3c_with_b3 {
                    put(headers, TRACEPARENT, &traceparent());
                }
            }
        }
    }
}

/// An `HttpService`: (cluster, authority, path, timeout, headers).
#[allow(clippy::type_complexity)]
fn http_service(
    h: &HttpService,
) -> FieldResult<(String, String, String, Duration, Vec<(String, String)>)> {
    let uri = h
        .http_uri
        .as_ref()
        .ok_or_else(|| FieldError::new("http_uri", "required"))?;
    let cluster = match &uri.http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => return Err(FieldError::new("http_uri.cluster", "required")),
    };
    // Envoy's extractHostPathFromUri: the scheme is optional.
    let rest = uri
        .uri
        .split_once("://")
        .map_or(uri.uri.as_str(), |(_, r)| r);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(FieldError::new("http_uri.uri", "no host"));
    }
    let timeout = opt_duration(&uri.timeout, "http_uri.timeout")?
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(5));
    let headers = h
        .request_headers_to_add
        .iter()
        .filter_map(|o: &HeaderValueOption| o.header.as_ref())
        .map(|hv| (hv.key.to_ascii_lowercase(), hv.value.clone()))
        .collect();
    Ok((
        cluster,
        authority.to_string(),
        path.to_string(),
        timeout,
        headers,
    ))
}

fn put(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn hex_u64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// A B3 trace id: 16 or 32 hex digits.
fn hex_trace_id(s: &str) -> Option<(u128, bool)> {
    if !(s.len() == 16 || s.len() == 32) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok().map(|n| (n, s.len() == 32))
}

/// W3C `traceparent`: `version-traceid(32)-parentid(16)-flags(2)`, ids not all zero.
fn w3c(headers: &HeaderMap) -> Result<Option<Context>, ()> {
    let Some(tp) = headers.get(TRACEPARENT) else {
        return Ok(None);
    };
    let tp = tp.to_str().map_err(|_| ())?;
    if tp.len() != 55 {
        return Err(());
    }
    let parts: Vec<&str> = tp.split('-').collect();
    let [version, trace, span, flags] = parts[..] else {
        return Err(());
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return Err(());
    }
    let trace_id = u128::from_str_radix(trace, 16).map_err(|_| ())?;
    let span_id = u64::from_str_radix(span, 16).map_err(|_| ())?;
    let flags = u8::from_str_radix(flags, 16).map_err(|_| ())?;
    if trace_id == 0 || span_id == 0 {
        return Err(());
    }
    let tracestate = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Some(Context {
        trace_id,
        trace_id_128: true,
        span_id,
        parent_id: None,
        sampled: Some(flags & 1 == 1),
        tracestate,
    }))
}

fn b3_sampling(s: &str) -> Result<bool, ()> {
    match s {
        "0" => Ok(false),
        "1" | "d" => Ok(true),
        _ => Err(()),
    }
}

/// B3: the single `b3` header first, then `x-b3-*`.
fn b3(headers: &HeaderMap) -> Result<Option<Context>, ()> {
    if let Some(single) = headers.get(B3) {
        let single = single.to_str().map_err(|_| ())?;
        let parts: Vec<&str> = single.split('-').collect();
        if parts.len() == 1 {
            // Only a decision: no context, but the decision stands.
            let sampled = b3_sampling(parts[0])?;
            return Ok(Some(Context {
                trace_id: 0,
                trace_id_128: false,
                span_id: 0,
                parent_id: None,
                sampled: Some(sampled),
                tracestate: String::new(),
            }));
        }
        let (trace_id, trace_id_128) = hex_trace_id(parts[0]).ok_or(())?;
        let span_id = parts.get(1).and_then(|s| hex_u64(s)).ok_or(())?;
        let sampled = parts.get(2).map(|s| b3_sampling(s)).transpose()?;
        let parent_id = parts.get(3).map(|s| hex_u64(s).ok_or(())).transpose()?;
        if parts.len() > 4 {
            return Err(());
        }
        return Ok(Some(Context {
            trace_id,
            trace_id_128,
            span_id,
            parent_id,
            sampled,
            tracestate: String::new(),
        }));
    }
    let sampled = if header(headers, X_B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        header(headers, X_B3_SAMPLED)
            .map(|s| s == "1" || s == "d" || s.eq_ignore_ascii_case("true"))
    };
    let (Some(trace), Some(span)) = (
        header(headers, X_B3_TRACE_ID),
        header(headers, X_B3_SPAN_ID),
    ) else {
        // A decision without ids still decides.
        return Ok(sampled.map(|s| Context {
            trace_id: 0,
            trace_id_128: false,
            span_id: 0,
            parent_id: None,
            sampled: Some(s),
            tracestate: String::new(),
        }));
    };
    let (trace_id, trace_id_128) = hex_trace_id(trace).ok_or(())?;
    let span_id = hex_u64(span).ok_or(())?;
    let parent_id = match header(headers, X_B3_PARENT_SPAN_ID) {
        Some(p) => Some(hex_u64(p).ok_or(())?),
        None => None,
    };
    Ok(Some(Context {
        trace_id,
        trace_id_128,
        span_id,
        parent_id,
        sampled,
        tracestate: String::new(),
    }))
}

fn nonzero_u64() -> u64 {
    loop {
        let n: u64 = rand::random();
        if n != 0 {
            return n;
        }
    }
}

/// A random UUID (version 4) for `x-request-id`.
fn uuid() -> String {
    let n: u128 = rand::random();
    let s = format!("{n:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &s[0..8],
        &s[8..12],
        &s[13..16],
        &s[17..20],
        &s[20..32]
    )
}

/// What the connection manager knows about a request when its span starts.
pub(super) struct Start<'a> {
    pub shared: &'a crate::shared::Shared,
    pub cfg: &'a TracingConfig,
    pub inbound: bool,
    /// The request came from outside the mesh, at its edge (`use_remote_address` and not
    /// internal by `internal_address_config`): its own request id is not trusted.
    pub edge: bool,
    pub tls: bool,
    pub peer: std::net::IpAddr,
    pub host: &'a str,
    pub route: Option<&'a Route>,
}

/// What tracing does to a request's response (Envoy's `encodeHeaders`): an inbound
/// response tells the caller the route's operation, unless the caller named it; an outbound
/// one renames this span after the operation the upstream sent, and drops the header.
#[derive(Default)]
pub(super) struct OnResponse {
    set: Option<HeaderValue>,
    rename: Option<Arc<OnceLock<String>>>,
}

impl OnResponse {
    pub fn apply(
        self,
        mut resp: http::Response<crate::upstream::Body>,
    ) -> http::Response<crate::upstream::Body> {
        if let Some(v) = self.set {
            resp.headers_mut().insert(X_DECORATOR_OPERATION, v);
        } else if let Some(rename) = self.rename
            && let Some(v) = resp.headers_mut().remove(X_DECORATOR_OPERATION)
            && let Ok(op) = v.to_str()
            && !op.is_empty()
        {
            let _ = rename.set(op.to_string());
        }
        resp
    }
}

/// Decide, start the request's span and inject its context: Envoy's `traceRequest`. Returns
/// the span to finish when the request is recorded (when it is sampled), and what to do to
/// the response.
pub(super) fn start(s: Start<'_>, parts: &mut Parts) -> (Option<Box<ActiveSpan>>, OnResponse) {
    // The caller's decorator names an inbound span; the header never reaches the app.
    let operation_override = if s.inbound {
        let op = header(&parts.headers, X_DECORATOR_OPERATION)
            .filter(|o| !o.is_empty())
            .map(str::to_string);
        parts.headers.remove(X_DECORATOR_OPERATION);
        op
    } else {
        None
    };
    let decorator = s.route.and_then(|r| r.decorator.as_ref());
    let mut on_response = OnResponse::default();
    if s.inbound {
        on_response.set = decorator
            .filter(|d| d.propagate && operation_override.is_none())
            .and_then(|d| HeaderValue::from_str(&d.operation).ok());
    } else {
        on_response.rename = Some(Arc::default());
    }
    let span = begin(&s, parts, operation_override, on_response.rename.clone());
    (span, on_response)
}

fn begin(
    s: &Start<'_>,
    parts: &mut Parts,
    operation_override: Option<String>,
    rename: Option<Arc<OnceLock<String>>>,
) -> Option<Box<ActiveSpan>> {
    let cfg = s.cfg;
    let started = Instant::now();
    let start_time = SystemTime::now();
    // Envoy's UUID extension: a request id is made when there is none, and at the edge
    // an outside request's own is replaced unless the config keeps it.
    let replace = s.edge && !cfg.preserve_external_request_id;
    if cfg.generate_request_id && (replace || !parts.headers.contains_key(X_REQUEST_ID)) {
        put(&mut parts.headers, X_REQUEST_ID, &uuid());
    }
    let reason = cfg.decide(&mut parts.headers, rand::random());
    cfg.decisions
        .get_or_init(|| s.shared.tracers.decisions(&cfg.stat_prefix))
        .count(reason);
    let provider = cfg.provider.as_ref()?;
    let incoming = provider.extract(&parts.headers).ok()?;
    let traced = reason != Reason::NotTraceable;
    // Envoy's span kind: a proxy that spawns upstream spans serves the downstream.
    let kind = if s.inbound || cfg.spawn_upstream_span {
        Kind::Server
    } else {
        Kind::Client
    };
    let decorator = s.route.and_then(|r| r.decorator.as_ref());
    let name = operation_override
        .or_else(|| decorator.map(|d| d.operation.clone()))
        .unwrap_or_else(|| match provider.spec.kind {
            ProviderKind::Zipkin => s.host.to_string(),
            _ if s.inbound => "ingress".to_string(),
            _ => format!("egress {}", s.host),
        });
    if !s.inbound
        && let Some(d) = decorator.filter(|d| d.propagate)
    {
        put(&mut parts.headers, X_DECORATOR_OPERATION, &d.operation);
    }
    let zipkin = provider.spec.kind == ProviderKind::Zipkin;
    let (trace_id, trace_id_128, span_id, parent_id, sampled, tracestate, shared) =
        match incoming.filter(|c| c.trace_id != 0) {
            Some(c) => {
                // The context's own decision wins; without one, the local decision.
                let sampled = c.sampled.unwrap_or(traced);
                if zipkin && s.inbound && provider.shared_span_context {
                    (
                        c.trace_id,
                        c.trace_id_128,
                        c.span_id,
                        c.parent_id,
                        sampled,
                        c.tracestate,
                        true,
                    )
                } else {
                    let t = (c.trace_id, c.trace_id_128);
                    (
                        t.0,
                        t.1,
                        nonzero_u64(),
                        Some(c.span_id),
                        sampled,
                        c.tracestate,
                        false,
                    )
                }
            }
            None => {
                // A B3 decision without ids (`b3: 0`) still decides a new root.
                let sampled = provider
                    .extract(&parts.headers)
                    .ok()
                    .flatten()
                    .and_then(|c| c.sampled)
                    .filter(|_| zipkin)
                    .unwrap_or(traced);
                let wide = !zipkin || provider.trace_id_128;
                let trace_id = loop {
                    let n: u128 = if wide {
                        rand::random()
                    } else {
                        u128::from(rand::random::<u64>())
                    };
                    if n != 0 {
                        break n;
                    }
                };
                // Envoy's Zipkin tracer gives a root span the trace id's low 64 bits.
                let span_id = match trace_id as u64 {
                    0 => nonzero_u64(),
                    low if zipkin => low,
                    _ => nonzero_u64(),
                };
                (trace_id, wide, span_id, None, sampled, String::new(), false)
            }
        };
    let mut data = SpanData {
        trace_id,
        trace_id_128,
        span_id,
        parent_id,
        name,
        kind,
        start: start_time,
        duration: Duration::ZERO,
        tags: Vec::new(),
        custom: Vec::new(),
        tracestate,
        error: false,
        shared,
    };
    // With an upstream span, the upstream's parent is that span, a child of this one.
    let upstream = cfg.spawn_upstream_span.then(|| SpanData {
        span_id: nonzero_u64(),
        parent_id: Some(data.span_id),
        name: "router egress".to_string(),
        kind: Kind::Client,
        shared: false,
        tags: Vec::new(),
        custom: Vec::new(),
        ..data.clone()
    });
    provider.inject(
        upstream.as_ref().unwrap_or(&data),
        sampled,
        &mut parts.headers,
    );
    if !sampled {
        return None;
    }
    request_tags(&mut data, cfg, s, parts);
    let protocol = data
        .tags
        .iter()
        .find(|(k, _)| *k == "http.protocol")
        .map(|(_, v)| v.clone());
    let upstream = upstream.map(|mut u| {
        u.tags.extend(protocol.map(|p| ("http.protocol", p)));
        u
    });
    Some(Box::new(ActiveSpan {
        data,
        upstream,
        started,
        exporter: provider.exporter(s.shared),
        rename,
    }))
}

/// Envoy's request-side tags (`finalizeDownstreamSpan`'s first half, and the tracer's
/// `node_id`/`zone`), and the custom tags.
fn request_tags(data: &mut SpanData, cfg: &TracingConfig, s: &Start<'_>, parts: &Parts) {
    let h = &parts.headers;
    let tags = &mut data.tags;
    let local = &s.shared.config;
    tags.push(("node_id", local.node_id()));
    tags.push((
        "zone",
        local
            .metadata
            .get("ZONE")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
    ));
    if let Some(id) = header(h, X_REQUEST_ID) {
        tags.push(("guid:x-request-id", id.to_string()));
    }
    let proto = header(h, "x-forwarded-proto").unwrap_or(if s.tls { "https" } else { "http" });
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let path = match path.char_indices().nth(cfg.max_path_tag_length) {
        Some((i, _)) => &path[..i],
        None => path,
    };
    tags.push(("http.url", format!("{proto}://{}{path}", s.host)));
    tags.push(("http.method", parts.method.as_str().to_string()));
    tags.push((
        "downstream_cluster",
        header(h, X_DOWNSTREAM_CLUSTER).unwrap_or("-").to_string(),
    ));
    tags.push((
        "user_agent",
        header(h, header::USER_AGENT.as_str())
            .unwrap_or("-")
            .to_string(),
    ));
    tags.push((
        "http.protocol",
        match parts.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        }
        .to_string(),
    ));
    tags.push(("peer.address", s.peer.to_string()));
    if let Some(id) = header(h, X_CLIENT_TRACE_ID) {
        tags.push(("guid:x-client-trace-id", id.to_string()));
    }
    if super::is_grpc(h) {
        tags.push(("grpc.path", parts.uri.path().to_string()));
        tags.push(("grpc.authority", s.host.to_string()));
        if let Some(ct) = header(h, header::CONTENT_TYPE.as_str()) {
            tags.push(("grpc.content_type", ct.to_string()));
        }
        if let Some(t) = header(h, "grpc-timeout") {
            tags.push(("grpc.timeout", t.to_string()));
        }
    }
    let mut custom: HashMap<&str, String> = HashMap::new();
    for t in &cfg.custom_tags {
        match t {
            CustomTag::Fixed { tag, value } => {
                custom.insert(tag, value.clone());
            }
            CustomTag::Header { tag, name, default } => {
                let v = h
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .unwrap_or_else(|| default.clone());
                if !v.is_empty() {
                    custom.insert(tag, v);
                }
            }
            CustomTag::Metadata => {}
        }
    }
    let mut custom: Vec<(String, String)> = custom
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    custom.sort();
    data.custom = custom;
}

// === impl ActiveSpan ===

impl ActiveSpan {
    /// The response side (`setCommonTags`), then hand the span to its exporter.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        mut self: Box<Self>,
        code: u16,
        flags: &str,
        cluster: Option<&str>,
        upstream_address: Option<&str>,
        grpc_status: Option<u32>,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let d = &mut self.data;
        d.duration = self.started.elapsed();
        if let Some(op) = self.rename.as_ref().and_then(|r| r.get()) {
            d.name = op.clone();
        }
        d.tags.push(("component", "proxy".to_string()));
        if let Some(c) = cluster {
            d.tags.push(("upstream_cluster", c.to_string()));
            d.tags.push(("upstream_cluster.name", c.to_string()));
        }
        d.tags.push(("http.status_code", code.to_string()));
        d.tags.push(("response_size", response_bytes.to_string()));
        d.tags.push(("response_flags", flags.to_string()));
        d.tags.push(("request_size", request_bytes.to_string()));
        if code == 0 || code >= 500 {
            d.error = true;
        }
        if let Some(g) = grpc_status {
            d.tags.push(("grpc.status_code", g.to_string()));
            if g != 0 {
                d.error = true;
            }
        }
        if d.error {
            d.tags.push(("error", "true".to_string()));
        }
        // Envoy's finalizeUpstreamSpan, over the whole forwarding (not per attempt).
        if let Some(mut u) = self.upstream.take() {
            u.duration = d.duration;
            u.name = format!("router {} egress", cluster.unwrap_or("-"));
            u.tags.push(("component", "proxy".to_string()));
            // setCommonTags applies the custom tags (istiod's `istio.*`) here too.
            u.custom = d.custom.clone();
            if let Some(c) = cluster {
                u.tags.push(("upstream_cluster", c.to_string()));
                u.tags.push(("upstream_cluster.name", c.to_string()));
            }
            if let Some(a) = upstream_address {
                u.tags.push(("upstream_address", a.to_string()));
            }
            u.tags.push(("http.status_code", code.to_string()));
            u.tags.push(("response_flags", flags.to_string()));
            u.error = d.error;
            if u.error {
                u.tags.push(("error", "true".to_string()));
            }
            self.exporter.push(u);
        }
        self.exporter.push(self.data);
    }
}

#[cfg(test)]
mod tests;
