//! MeshConfig: the YAML under the `mesh` key of the `istio` ConfigMap in `istio-system`, read
//! as istiod reads it (and its `meshNetworks` key, of which only `fromCidr` is read).
//!
//! The one place MeshConfig text becomes [`MeshSettings`], whether the ConfigMap came from
//! the config folder or from the cluster (both arrive as a `v1 ConfigMap` document, see
//! [`super::kube`]). Only the settings Mast acts on are read — path normalisation and
//! tracing (`enableTracing`, `extensionProviders`, `defaultProviders.tracing`,
//! `defaultConfig.tracing`); the rest of Istio's MeshConfig passes unread, so an existing
//! Istio ConfigMap is taken as it is. Field names are accepted in protobuf JSON's two
//! spellings (`customTags` and `custom_tags`), as istiod's unmarshalling accepts both.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::FieldError;
use super::duration::parse_duration;
use crate::model::{MeshSettings, PathNormalization};
use crate::telemetry::{
    CustomTag, ExtensionProvider, HeaderValue, HttpHeader, MeshTracing, OpenTelemetryProvider,
    OtlpTransport, ProviderKind, ZipkinProvider,
};

/// Errors name their field under the ConfigMap key: `data.mesh: extensionProviders[0].port`.
const PREFIX: &str = "data.mesh: ";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfigDoc {
    #[serde(default)]
    path_normalization: Option<PathNormalizationDoc>,
    #[serde(default, alias = "enable_tracing")]
    enable_tracing: Option<bool>,
    #[serde(default, alias = "extension_providers")]
    extension_providers: Vec<ProviderDoc>,
    #[serde(default, alias = "default_providers")]
    default_providers: Option<DefaultProvidersDoc>,
    #[serde(default, alias = "default_config")]
    default_config: Option<ProxyConfigDoc>,
}

#[derive(Debug, Default, Deserialize)]
struct PathNormalizationDoc {
    #[serde(default)]
    normalization: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DefaultProvidersDoc {
    #[serde(default)]
    tracing: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ProxyConfigDoc {
    #[serde(default)]
    tracing: Option<ProxyTracingDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProxyTracingDoc {
    #[serde(default)]
    sampling: Option<f64>,
    #[serde(default, alias = "custom_tags")]
    custom_tags: BTreeMap<String, CustomTagDoc>,
    #[serde(default, alias = "max_path_tag_length")]
    max_path_tag_length: Option<u32>,
}

/// A custom tag, in MeshConfig's and the Telemetry API's shared shape.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CustomTagDoc {
    #[serde(default)]
    literal: Option<LiteralDoc>,
    #[serde(default)]
    header: Option<NamedDoc>,
    #[serde(default)]
    environment: Option<NamedDoc>,
    #[serde(default)]
    formatter: Option<LiteralDoc>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct LiteralDoc {
    #[serde(default)]
    value: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamedDoc {
    #[serde(default)]
    name: String,
    #[serde(default, alias = "default_value")]
    default_value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderDoc {
    #[serde(default)]
    name: String,
    #[serde(default)]
    zipkin: Option<ZipkinDoc>,
    #[serde(default)]
    opentelemetry: Option<OtelDoc>,
    /// Every other provider kind, by key (`prometheus`, `envoyFileAccessLog`, …).
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinDoc {
    #[serde(default)]
    service: String,
    #[serde(default)]
    port: i64,
    #[serde(default, alias = "max_tag_length")]
    max_tag_length: Option<u32>,
    #[serde(
        default,
        rename = "enable64bitTraceId",
        alias = "enable_64bit_trace_id"
    )]
    enable_64bit_trace_id: Option<bool>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderDoc>,
    #[serde(default, alias = "trace_context_option")]
    trace_context_option: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtelDoc {
    #[serde(default)]
    service: String,
    #[serde(default)]
    port: i64,
    #[serde(default, alias = "max_tag_length")]
    max_tag_length: Option<u32>,
    #[serde(default)]
    grpc: Option<OtelGrpcDoc>,
    #[serde(default)]
    http: Option<OtelHttpDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtelGrpcDoc {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default, alias = "initial_metadata")]
    initial_metadata: Vec<HeaderDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtelHttpDoc {
    #[serde(default)]
    path: String,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderDoc {
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default, alias = "env_name")]
    env_name: Option<String>,
}

/// Parse the `mesh` key's text. An empty text is Istio's defaults.
pub fn parse(text: &str) -> Result<MeshSettings, Vec<FieldError>> {
    let mut path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, Option<MeshConfigDoc>>(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    let mesh = parsed
        .map_err(|e| {
            let field = if path == "." || path.is_empty() {
                "data.mesh".to_string()
            } else {
                format!("{PREFIX}{path}")
            };
            vec![FieldError::new(field, super::short_message(&e.to_string()))]
        })?
        .unwrap_or_default();
    let mut errors = Vec::new();
    let level = mesh
        .path_normalization
        .and_then(|p| p.normalization)
        .unwrap_or_default();
    let path_normalization = match level.as_str() {
        "" | "DEFAULT" | "BASE" => PathNormalization::Base,
        "NONE" => PathNormalization::None,
        "MERGE_SLASHES" => PathNormalization::MergeSlashes,
        "DECODE_AND_MERGE_SLASHES" => PathNormalization::DecodeAndMergeSlashes,
        other => {
            errors.push(FieldError::new(
                format!("{PREFIX}pathNormalization.normalization"),
                format!(
                    "unknown level {other:?} (DEFAULT, NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES)"
                ),
            ));
            PathNormalization::Base
        }
    };
    let mut tracing = MeshTracing::default();
    if let Some(e) = mesh.enable_tracing {
        tracing.enable_tracing = e;
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in mesh.extension_providers.into_iter().enumerate() {
        let field = format!("{PREFIX}extensionProviders[{i}]");
        if p.name.is_empty() {
            errors.push(FieldError::new(
                format!("{field}.name"),
                "empty extension provider name",
            ));
        } else if !names.insert(p.name.clone()) {
            errors.push(FieldError::new(
                format!("{field}.name"),
                format!("duplicate extension provider name {:?}", p.name),
            ));
        }
        if let Some(kind) = provider_kind(p.zipkin, p.opentelemetry, p.other, &field, &mut errors) {
            tracing
                .extension_providers
                .push(ExtensionProvider { name: p.name, kind });
        }
    }
    if let Some(d) = mesh.default_providers {
        tracing.default_providers = d.tracing;
    }
    if let Some(t) = mesh.default_config.and_then(|c| c.tracing) {
        let field = format!("{PREFIX}defaultConfig.tracing");
        if let Some(s) = t.sampling {
            if s < 0.0 {
                errors.push(FieldError::new(
                    format!("{field}.sampling"),
                    format!("{s} is negative"),
                ));
            }
            tracing.sampling = s;
        }
        tracing.custom_tags =
            custom_tags(&t.custom_tags, &format!("{field}.customTags"), &mut errors);
        tracing.max_path_tag_length = t.max_path_tag_length.unwrap_or(0);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(MeshSettings {
        path_normalization,
        tracing,
        internal_networks: Vec::new(),
    })
}

#[derive(Debug, Default, Deserialize)]
struct MeshNetworksDoc {
    #[serde(default)]
    networks: BTreeMap<String, NetworkDoc>,
}

#[derive(Debug, Default, Deserialize)]
struct NetworkDoc {
    #[serde(default)]
    endpoints: Vec<NetworkEndpointDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkEndpointDoc {
    #[serde(default, alias = "from_cidr")]
    from_cidr: Option<String>,
}

/// The `meshNetworks` key: every network's `fromCidr` endpoints (a bare address is a /32 or
/// /128), sorted by address then prefix length as istiod sorts them.
pub fn parse_networks(text: &str) -> Result<Vec<(std::net::IpAddr, u8)>, Vec<FieldError>> {
    let doc: MeshNetworksDoc = serde_saphyr::from_str::<Option<MeshNetworksDoc>>(text)
        .map_err(|e| {
            vec![FieldError::new(
                "data.meshNetworks",
                super::short_message(&e.to_string()),
            )]
        })?
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, net) in &doc.networks {
        for (i, e) in net.endpoints.iter().enumerate() {
            let Some(cidr) = &e.from_cidr else { continue };
            let (addr, len) = match cidr.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (cidr.as_str(), None),
            };
            let parsed = addr.parse::<std::net::IpAddr>().ok().and_then(|ip| {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = match len {
                    Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
                    None => max,
                };
                Some((ip, len))
            });
            match parsed {
                Some(p) => out.push(p),
                None => errors.push(FieldError::new(
                    format!("data.meshNetworks: networks.{name}.endpoints[{i}].fromCidr"),
                    format!("{cidr:?} is not an address or CIDR range"),
                )),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.sort();
    Ok(out)
}

fn provider_kind(
    zipkin: Option<ZipkinDoc>,
    otel: Option<OtelDoc>,
    other: BTreeMap<String, serde_json::Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ProviderKind> {
    let count = usize::from(zipkin.is_some()) + usize::from(otel.is_some()) + other.len();
    if count != 1 {
        errors.push(FieldError::new(
            field,
            format!("an extension provider sets exactly one provider kind, found {count}"),
        ));
        return None;
    }
    if let Some(z) = zipkin {
        let f = format!("{field}.zipkin");
        let port = port(z.port, &format!("{f}.port"), errors);
        service(&z.service, &format!("{f}.service"), errors);
        let w3c = match z.trace_context_option.as_deref() {
            None | Some("") | Some("USE_B3") => false,
            Some("USE_B3_WITH_W3C_PROPAGATION") => true,
            Some(other) => {
                errors.push(FieldError::new(
                    format!("{f}.traceContextOption"),
                    format!("unknown option {other:?} (USE_B3 or USE_B3_WITH_W3C_PROPAGATION)"),
                ));
                false
            }
        };
        return Some(ProviderKind::Zipkin(ZipkinProvider {
            service: z.service,
            port: port?,
            max_tag_length: z.max_tag_length.unwrap_or(0),
            enable_64bit_trace_id: z.enable_64bit_trace_id.unwrap_or(false),
            path: z.path.unwrap_or_default(),
            timeout: timeout(z.timeout.as_deref(), &format!("{f}.timeout"), errors),
            headers: headers(&z.headers, &format!("{f}.headers"), errors),
            w3c_propagation: w3c,
        }));
    }
    if let Some(o) = otel {
        let f = format!("{field}.opentelemetry");
        let port = port(o.port, &format!("{f}.port"), errors);
        service(&o.service, &format!("{f}.service"), errors);
        let transport = match (o.http, o.grpc) {
            (Some(h), _) => OtlpTransport::Http {
                path: h.path,
                timeout: timeout(h.timeout.as_deref(), &format!("{f}.http.timeout"), errors),
                headers: headers(&h.headers, &format!("{f}.http.headers"), errors),
            },
            (None, g) => {
                let g = g.unwrap_or_default();
                OtlpTransport::Grpc {
                    timeout: timeout(g.timeout.as_deref(), &format!("{f}.grpc.timeout"), errors),
                    initial_metadata: headers(
                        &g.initial_metadata,
                        &format!("{f}.grpc.initialMetadata"),
                        errors,
                    ),
                }
            }
        };
        return Some(ProviderKind::OpenTelemetry(OpenTelemetryProvider {
            service: o.service,
            port: port?,
            max_tag_length: o.max_tag_length.unwrap_or(0),
            transport,
        }));
    }
    other.into_keys().next().map(ProviderKind::Other)
}

/// istiod's `validateExtensionProviderService`: required, `[<namespace>/]<hostname>`.
fn service(s: &str, field: &str, errors: &mut Vec<FieldError>) {
    if s.is_empty() {
        errors.push(FieldError::new(field, "service must not be empty"));
    } else if s.matches('/').count() > 1 || s.starts_with('/') || s.ends_with('/') {
        errors.push(FieldError::new(
            field,
            format!("{s:?} is not <hostname> or <namespace>/<hostname>"),
        ));
    }
}

fn port(p: i64, field: &str, errors: &mut Vec<FieldError>) -> Option<u16> {
    match u16::try_from(p) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errors.push(FieldError::new(
                field,
                format!("port number {p} must be in the range 1..65535"),
            ));
            None
        }
    }
}

fn timeout(t: Option<&str>, field: &str, errors: &mut Vec<FieldError>) -> Option<Duration> {
    let t = t?;
    match parse_duration(t) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(FieldError::new(field, e));
            None
        }
    }
}

fn headers(h: &[HeaderDoc], field: &str, errors: &mut Vec<FieldError>) -> Vec<HttpHeader> {
    let mut out = Vec::new();
    for (i, h) in h.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if h.name.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.name"),
                "header name must not be empty",
            ));
            continue;
        }
        let value = match (&h.value, &h.env_name) {
            (Some(v), None) => HeaderValue::Value(v.clone()),
            (None, Some(e)) => HeaderValue::Env(e.clone()),
            _ => {
                errors.push(FieldError::new(
                    f,
                    "exactly one of value and envName must be set",
                ));
                continue;
            }
        };
        out.push(HttpHeader {
            name: h.name.clone(),
            value,
        });
    }
    out
}

/// Custom tags as istiod validates them: one kind per tag, non-empty names and values.
pub(crate) fn custom_tags(
    tags: &BTreeMap<String, CustomTagDoc>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, CustomTag> {
    let mut out = BTreeMap::new();
    for (name, t) in tags {
        let f = format!("{field}.{name}");
        if name.is_empty() {
            errors.push(FieldError::new(field, "tag name may not be empty"));
            continue;
        }
        let kinds = usize::from(t.literal.is_some())
            + usize::from(t.header.is_some())
            + usize::from(t.environment.is_some())
            + usize::from(t.formatter.is_some());
        if kinds > 1 {
            errors.push(FieldError::new(
                f,
                "only one of literal, header, environment and formatter may be set",
            ));
            continue;
        }
        let tag = if let Some(l) = &t.literal {
            if l.value.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.literal.value"),
                    "literal tag value may not be empty",
                ));
            }
            CustomTag::Literal {
                value: l.value.clone(),
            }
        } else if let Some(h) = &t.header {
            if h.name.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.header.name"),
                    "header tag name may not be empty",
                ));
            }
            CustomTag::Header {
                name: h.name.clone(),
                default_value: h.default_value.clone(),
            }
        } else if let Some(e) = &t.environment {
            if e.name.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.environment.name"),
                    "environment tag name may not be empty",
                ));
            }
            CustomTag::Environment {
                name: e.name.clone(),
                default_value: e.default_value.clone(),
            }
        } else if let Some(v) = &t.formatter {
            if v.value.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.formatter.value"),
                    "formatter tag value may not be empty",
                ));
            }
            CustomTag::Formatter {
                value: v.value.clone(),
            }
        } else {
            // A tag of no kind is accepted by the CRD and produces nothing (istiod skips it).
            continue;
        };
        out.insert(name.clone(), tag);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_istio_defaults() {
        let m = parse("").unwrap();
        assert_eq!(m, MeshSettings::default());
        assert!(m.tracing.enable_tracing);
    }

    #[test]
    fn tracing_providers_and_defaults() {
        let m = parse(
            r#"
enableTracing: true
accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  tracing:
    sampling: 10
    custom_tags:
      team: {literal: {value: a}}
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 56}
- name: otel
  opentelemetry:
    service: observability/otel-collector.observability.svc.cluster.local
    port: 4318
    http:
      path: /v1/traces
      timeout: 3s
      headers: [{name: x-token, value: t}, {name: x-env, envName: TOKEN}]
- name: otel-grpc
  opentelemetry: {service: otel.example.com, port: 4317}
- name: prom
  prometheus: {}
defaultProviders:
  tracing: [zipkin]
  metrics: [prom]
"#,
        )
        .unwrap();
        let t = &m.tracing;
        assert_eq!(t.default_providers, ["zipkin"]);
        assert_eq!(t.default_sampling(), 10.0);
        assert_eq!(
            t.custom_tags["team"],
            CustomTag::Literal { value: "a".into() }
        );
        let ProviderKind::Zipkin(z) = &t.provider("zipkin").unwrap().kind else {
            panic!("zipkin");
        };
        assert_eq!((z.port, z.max_tag_length), (9411, 56));
        let ProviderKind::OpenTelemetry(o) = &t.provider("otel").unwrap().kind else {
            panic!("otel");
        };
        assert_eq!(
            o.transport,
            OtlpTransport::Http {
                path: "/v1/traces".into(),
                timeout: Some(Duration::from_secs(3)),
                headers: vec![
                    HttpHeader {
                        name: "x-token".into(),
                        value: HeaderValue::Value("t".into())
                    },
                    HttpHeader {
                        name: "x-env".into(),
                        value: HeaderValue::Env("TOKEN".into())
                    },
                ],
            }
        );
        let ProviderKind::OpenTelemetry(g) = &t.provider("otel-grpc").unwrap().kind else {
            panic!("otel-grpc");
        };
        assert!(matches!(g.transport, OtlpTransport::Grpc { .. }));
        assert_eq!(
            t.provider("prom").unwrap().kind,
            ProviderKind::Other("prometheus".into())
        );
    }

    #[test]
    fn mesh_networks_give_the_internal_ranges() {
        let nets = parse_networks(
            "networks:\n  n1:\n    endpoints: [{fromCidr: 10.0.0.0/8}, {fromRegistry: Kubernetes}]\n    gateways: [{address: 1.1.1.1, port: 15443}]\n  n2:\n    endpoints: [{fromCidr: 127.0.0.1}]\n",
        )
        .unwrap();
        assert_eq!(
            nets,
            [
                ("10.0.0.0".parse().unwrap(), 8),
                ("127.0.0.1".parse().unwrap(), 32)
            ]
        );
        let e = parse_networks("networks:\n  n1:\n    endpoints: [{fromCidr: 10.0.0.0/33}]\n")
            .unwrap_err();
        assert_eq!(
            e[0].field,
            "data.meshNetworks: networks.n1.endpoints[0].fromCidr"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let fields = |text: &str| -> Vec<String> {
            parse(text)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields("extensionProviders:\n- name: z\n  zipkin: {service: z, port: 70000}\n"),
            ["data.mesh: extensionProviders[0].zipkin.port"]
        );
        assert_eq!(
            fields("extensionProviders:\n- name: z\n  zipkin: {port: 9411}\n"),
            ["data.mesh: extensionProviders[0].zipkin.service"]
        );
        assert_eq!(
            fields(
                "extensionProviders:\n- name: z\n  zipkin: {service: z, port: 1}\n- name: z\n  zipkin: {service: z, port: 1}\n"
            ),
            ["data.mesh: extensionProviders[1].name"]
        );
        assert_eq!(
            fields(
                "extensionProviders:\n- name: o\n  opentelemetry: {service: o, port: 1, grpc: {timeout: soon}}\n"
            ),
            ["data.mesh: extensionProviders[0].opentelemetry.grpc.timeout"]
        );
        assert_eq!(
            fields(
                "defaultConfig:\n  tracing:\n    customTags:\n      t: {literal: {value: \"\"}}\n"
            ),
            ["data.mesh: defaultConfig.tracing.customTags.t.literal.value"]
        );
        assert_eq!(
            fields("enableTracing: maybe\n"),
            ["data.mesh: enableTracing"]
        );
    }
}
