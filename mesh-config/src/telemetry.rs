//! Tracing in the mesh model: MeshConfig's extension providers and defaults, the Telemetry
//! API's `tracing[]` rules, and istiod's resolution of both into one client and one server
//! setting per workload.
//!
//! A sidecar reports a client span for what its app calls and a server span for what its app
//! serves; which collector gets them and how often a trace is started is decided here, once,
//! exactly as istiod decides it (`pilot/pkg/model/telemetry.go`), so an Envoy sidecar and a
//! mast-proxy configured by Mast make the same choices and land in one trace. Resolution:
//! `defaultProviders.tracing` first, then the root namespace's namespace-wide Telemetry, the
//! workload's namespace-wide Telemetry, then the Telemetries selecting the workload, each
//! later rule overriding the fields it sets (a shallow merge, as istiod's).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::model::{Labels, MeshModel, ResourceRef, labels_match};
use crate::security::ROOT_NAMESPACE;

/// istiod's `PILOT_TRACE_SAMPLING` default: the percentage of requests that start a trace
/// when neither a Telemetry nor `defaultConfig.tracing.sampling` says otherwise.
pub const DEFAULT_TRACE_SAMPLING: f64 = 1.0;

// === MeshConfig ===

/// The tracing part of MeshConfig.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeshTracing {
    /// `enableTracing` (Istio's default: on). Only consulted when no Telemetry and no
    /// default provider configure tracing (istiod's legacy path).
    pub enable_tracing: bool,
    /// `extensionProviders[]`, in order.
    pub extension_providers: Vec<ExtensionProvider>,
    /// `defaultProviders.tracing`: provider names; istiod uses the first.
    pub default_providers: Vec<String>,
    /// `defaultConfig.tracing.sampling` (0 = unset, as in the proto).
    pub sampling: f64,
    /// `defaultConfig.tracing.customTags`.
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// `defaultConfig.tracing.maxPathTagLength` (0 = unset).
    pub max_path_tag_length: u32,
}

impl Default for MeshTracing {
    fn default() -> Self {
        Self {
            enable_tracing: true,
            extension_providers: Vec::new(),
            default_providers: Vec::new(),
            sampling: 0.0,
            custom_tags: BTreeMap::new(),
            max_path_tag_length: 0,
        }
    }
}

impl MeshTracing {
    /// istiod's `proxyConfigSamplingValue`: `defaultConfig.tracing.sampling` when set (a value
    /// above 100 falls back to 1), else `PILOT_TRACE_SAMPLING`.
    pub fn default_sampling(&self) -> f64 {
        if self.sampling == 0.0 {
            DEFAULT_TRACE_SAMPLING
        } else if self.sampling > 100.0 {
            1.0
        } else {
            self.sampling
        }
    }

    /// istiod's `fetchProvider`: the provider of that name, case-insensitively.
    pub fn provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

/// One `extensionProviders[]` entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExtensionProvider {
    pub name: String,
    pub kind: ProviderKind,
}

/// What a provider is. Only the tracing providers Mast translates are typed; the others
/// (metrics, access logs, ext_authz…) are named so a Telemetry pointing tracing at one is
/// refused as istiod refuses it ("does not support tracing").
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ProviderKind {
    Zipkin(ZipkinProvider),
    OpenTelemetry(OpenTelemetryProvider),
    /// Any other provider, by its MeshConfig key (`prometheus`, `envoyFileAccessLog`, …).
    Other(String),
}

/// `extensionProviders[].zipkin`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZipkinProvider {
    /// `[<namespace>/]<hostname>` of the collector's Service or ServiceEntry.
    pub service: String,
    pub port: u16,
    pub max_tag_length: u32,
    /// `enable64bitTraceId`: 64-bit trace ids instead of Istio's default 128-bit ones.
    pub enable_64bit_trace_id: bool,
    /// Collector path; `/api/v2/spans` when empty.
    pub path: String,
    pub timeout: Option<Duration>,
    pub headers: Vec<HttpHeader>,
    /// `traceContextOption: USE_B3_WITH_W3C_PROPAGATION` (else B3 only).
    pub w3c_propagation: bool,
}

/// `extensionProviders[].opentelemetry`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpenTelemetryProvider {
    pub service: String,
    pub port: u16,
    pub max_tag_length: u32,
    /// `http` set: export OTLP/HTTP; otherwise OTLP/gRPC (`grpc` optional).
    pub transport: OtlpTransport,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum OtlpTransport {
    Grpc {
        timeout: Option<Duration>,
        initial_metadata: Vec<HttpHeader>,
    },
    Http {
        path: String,
        timeout: Option<Duration>,
        headers: Vec<HttpHeader>,
    },
}

/// A header a provider sends with its exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpHeader {
    pub name: String,
    pub value: HeaderValue,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum HeaderValue {
    Value(String),
    /// `envName`: read from the control plane's environment, as istiod does.
    Env(String),
}

// === Telemetry API ===

/// A Telemetry resource's tracing part.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Telemetry {
    pub namespace: String,
    /// `selector.matchLabels`; `None` (or empty labels) is namespace-wide, mesh-wide in the
    /// root namespace.
    pub selector: Option<Labels>,
    /// `targetRef`/`targetRefs` set: the Telemetry is for the Gateway API gateways (or
    /// waypoints) it names, neither namespace-wide nor for sidecars selected by labels.
    /// Mast does not attach it to anything yet.
    pub target_refs: bool,
    pub tracing: Vec<TracingRule>,
    pub source: ResourceRef,
}

/// Which side of the workload's traffic a rule applies to (`match.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum WorkloadMode {
    #[default]
    ClientAndServer,
    Client,
    Server,
}

/// One `tracing[]` entry: every field optional, unset fields leave the level above alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TracingRule {
    pub mode: WorkloadMode,
    pub providers: Vec<String>,
    pub random_sampling_percentage: Option<f64>,
    pub custom_tags: Option<BTreeMap<String, CustomTag>>,
    pub disable_span_reporting: Option<bool>,
    pub use_request_id_for_trace_sampling: Option<bool>,
    pub enable_istio_tags: Option<bool>,
}

/// A span tag: a fixed value, a request header, or the proxy's environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CustomTag {
    Literal {
        value: String,
    },
    Header {
        name: String,
        default_value: String,
    },
    Environment {
        name: String,
        default_value: String,
    },
    /// An access-log formatter (`%REQ(...)%`).
    Formatter {
        value: String,
    },
}

/// The resolved setting of one side (istiod's `TracingSpec`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TracingSpec {
    /// `None`: a provider was named that MeshConfig does not define, or none at all.
    pub provider: Option<ExtensionProvider>,
    pub disabled: bool,
    pub random_sampling_percentage: Option<f64>,
    pub custom_tags: Option<BTreeMap<String, CustomTag>>,
    pub use_request_id_for_trace_sampling: bool,
    pub enable_istio_tags: bool,
}

impl Default for TracingSpec {
    fn default() -> Self {
        Self {
            provider: None,
            disabled: false,
            random_sampling_percentage: None,
            custom_tags: None,
            use_request_id_for_trace_sampling: true,
            enable_istio_tags: true,
        }
    }
}

/// istiod's `TracingConfig`: what the workload's outbound (client) and inbound (server)
/// connection managers do.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TracingConfig {
    pub client: TracingSpec,
    pub server: TracingSpec,
}

// === impl MeshModel ===

fn namespace_wide(t: &Telemetry) -> bool {
    !t.target_refs && t.selector.as_ref().is_none_or(BTreeMap::is_empty)
}

impl MeshModel {
    /// The Telemetries that shape a workload's tracing, in istiod's order: the root
    /// namespace's namespace-wide one, the workload namespace's, then those selecting it.
    /// Among several namespace-wide Telemetries of a namespace the first (oldest) counts.
    pub fn telemetries_for(&self, namespace: &str, labels: &Labels) -> Vec<&Telemetry> {
        let wide = |ns: &str| {
            self.telemetries
                .iter()
                .find(|t| t.namespace == ns && namespace_wide(t))
        };
        let mut out: Vec<&Telemetry> = wide(ROOT_NAMESPACE).into_iter().collect();
        if namespace != ROOT_NAMESPACE {
            out.extend(wide(namespace));
        }
        out.extend(self.telemetries.iter().filter(|t| {
            t.namespace == namespace
                && !namespace_wide(t)
                && !t.target_refs
                && t.selector.as_ref().is_some_and(|s| labels_match(s, labels))
        }));
        out
    }

    /// Whether a workload's tracing depends on its labels beyond its namespace (some
    /// Telemetry of the namespace selects workloads).
    pub fn tracing_selects_workloads(&self, namespace: &str) -> bool {
        self.telemetries
            .iter()
            .any(|t| t.namespace == namespace && !namespace_wide(t) && !t.target_refs)
    }

    /// istiod's `Telemetries.Tracing`: `None` when neither a Telemetry tracing rule nor a
    /// default provider applies (the caller then falls back to `enableTracing`); otherwise
    /// the merged client and server specs, disabled where no provider resolved.
    pub fn tracing_for(&self, namespace: &str, labels: &Labels) -> Option<TracingConfig> {
        let rules: Vec<&TracingRule> = self
            .telemetries_for(namespace, labels)
            .into_iter()
            .flat_map(|t| &t.tracing)
            .collect();
        let mesh = &self.mesh.tracing;
        if rules.is_empty() && mesh.default_providers.is_empty() {
            return None;
        }
        let mut cfg = TracingConfig::default();
        if let Some(first) = mesh.default_providers.first() {
            let p = mesh.provider(first).cloned();
            cfg.client.provider = p.clone();
            cfg.server.provider = p;
        }
        for rule in rules {
            let specs: Vec<&mut TracingSpec> = match rule.mode {
                WorkloadMode::ClientAndServer => vec![&mut cfg.client, &mut cfg.server],
                WorkloadMode::Client => vec![&mut cfg.client],
                WorkloadMode::Server => vec![&mut cfg.server],
            };
            let provider = rule.providers.first().map(|n| mesh.provider(n).cloned());
            for spec in specs {
                if let Some(p) = &provider {
                    spec.provider = p.clone();
                }
                if let Some(d) = rule.disable_span_reporting {
                    spec.disabled = d;
                }
                if let Some(tags) = &rule.custom_tags {
                    spec.custom_tags = Some(tags.clone());
                }
                if let Some(p) = rule.random_sampling_percentage {
                    spec.random_sampling_percentage = Some(p);
                }
                if let Some(u) = rule.use_request_id_for_trace_sampling {
                    spec.use_request_id_for_trace_sampling = u;
                }
                if let Some(e) = rule.enable_istio_tags {
                    spec.enable_istio_tags = e;
                }
            }
        }
        for spec in [&mut cfg.client, &mut cfg.server] {
            if spec.provider.is_none() {
                spec.disabled = true;
            }
        }
        Some(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn zipkin(name: &str) -> ExtensionProvider {
        ExtensionProvider {
            name: name.into(),
            kind: ProviderKind::Zipkin(ZipkinProvider {
                service: "zipkin.istio-system.svc.cluster.local".into(),
                port: 9411,
                max_tag_length: 0,
                enable_64bit_trace_id: false,
                path: String::new(),
                timeout: None,
                headers: Vec::new(),
                w3c_propagation: false,
            }),
        }
    }

    fn tel(ns: &str, selector: Option<&[(&str, &str)]>, rule: TracingRule) -> Telemetry {
        Telemetry {
            namespace: ns.into(),
            selector: selector.map(labels),
            target_refs: false,
            tracing: vec![rule],
            source: ResourceRef::default(),
        }
    }

    fn model() -> MeshModel {
        let mut m = MeshModel::default();
        m.mesh.tracing.extension_providers = vec![zipkin("zipkin"), zipkin("other")];
        m
    }

    #[test]
    fn nothing_configured_is_the_legacy_path() {
        let m = model();
        assert_eq!(m.tracing_for("default", &Labels::new()), None);
        assert_eq!(m.mesh.tracing.default_sampling(), 1.0);
    }

    #[test]
    fn default_provider_alone_traces_both_sides() {
        let mut m = model();
        m.mesh.tracing.default_providers = vec!["ZIPKIN".into()];
        let cfg = m.tracing_for("default", &Labels::new()).unwrap();
        assert_eq!(cfg.client.provider.as_ref().unwrap().name, "zipkin");
        assert!(!cfg.client.disabled && !cfg.server.disabled);
        assert!(cfg.client.use_request_id_for_trace_sampling);
        assert_eq!(cfg.client.random_sampling_percentage, None);
    }

    #[test]
    fn root_then_namespace_then_workload_override_field_by_field() {
        let mut m = model();
        m.telemetries = vec![
            // A workload rule listed first still applies last.
            tel(
                "default",
                Some(&[("app", "a")]),
                TracingRule {
                    random_sampling_percentage: Some(50.0),
                    ..TracingRule::default()
                },
            ),
            tel(
                ROOT_NAMESPACE,
                None,
                TracingRule {
                    providers: vec!["zipkin".into()],
                    random_sampling_percentage: Some(10.0),
                    use_request_id_for_trace_sampling: Some(false),
                    ..TracingRule::default()
                },
            ),
            tel(
                "default",
                None,
                TracingRule {
                    mode: WorkloadMode::Server,
                    providers: vec!["other".into()],
                    random_sampling_percentage: Some(20.0),
                    ..TracingRule::default()
                },
            ),
        ];
        let a = m.tracing_for("default", &labels(&[("app", "a")])).unwrap();
        assert_eq!(a.client.provider.as_ref().unwrap().name, "zipkin");
        assert_eq!(a.server.provider.as_ref().unwrap().name, "other");
        assert_eq!(a.client.random_sampling_percentage, Some(50.0));
        assert_eq!(a.server.random_sampling_percentage, Some(50.0));
        assert!(!a.client.use_request_id_for_trace_sampling);
        let b = m.tracing_for("default", &labels(&[("app", "b")])).unwrap();
        assert_eq!(b.client.random_sampling_percentage, Some(10.0));
        assert_eq!(b.server.random_sampling_percentage, Some(20.0));
        // A Telemetry for Gateway API gateways (targetRefs) is not namespace-wide.
        let mut gw = tel(
            "prod",
            None,
            TracingRule {
                random_sampling_percentage: Some(99.0),
                ..TracingRule::default()
            },
        );
        gw.target_refs = true;
        m.telemetries.push(gw);
        let other_ns = m.tracing_for("prod", &Labels::new()).unwrap();
        assert_eq!(other_ns.client.random_sampling_percentage, Some(10.0));
        assert_eq!(other_ns.server.provider.as_ref().unwrap().name, "zipkin");
        assert!(m.tracing_selects_workloads("default"));
        assert!(!m.tracing_selects_workloads("prod"));
    }

    #[test]
    fn unknown_provider_or_disabled_reporting_disables() {
        let mut m = model();
        m.telemetries = vec![tel(
            "default",
            None,
            TracingRule {
                providers: vec!["missing".into()],
                ..TracingRule::default()
            },
        )];
        let cfg = m.tracing_for("default", &Labels::new()).unwrap();
        assert!(cfg.client.disabled && cfg.server.disabled);
        m.mesh.tracing.default_providers = vec!["zipkin".into()];
        m.telemetries = vec![tel(
            "default",
            None,
            TracingRule {
                mode: WorkloadMode::Client,
                disable_span_reporting: Some(true),
                ..TracingRule::default()
            },
        )];
        let cfg = m.tracing_for("default", &Labels::new()).unwrap();
        assert!(cfg.client.disabled);
        assert!(!cfg.server.disabled);
    }

    #[test]
    fn default_config_sampling_follows_istiod() {
        let mut t = MeshTracing {
            sampling: 25.0,
            ..MeshTracing::default()
        };
        assert_eq!(t.default_sampling(), 25.0);
        t.sampling = 150.0;
        assert_eq!(t.default_sampling(), 1.0);
    }
}
