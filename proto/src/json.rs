//! Envoy config ⇄ proto3 JSON, exactly as Envoy's admin API prints it.
//!
//! `envoy-types` has the Rust structs of Envoy's API but no serde support, and proto3 JSON
//! needs the schema anyway (an `Any` only says its type by URL). So the build script compiles
//! Envoy's `.proto` files (shipped inside the `envoy-types` package) into a descriptor set,
//! and here it becomes a `prost_reflect` pool: a typed message is encoded to bytes, decoded as
//! a dynamic message of the same name, and serialized with the proto3 JSON mapping.
//!
//! Envoy's choices are kept: original (snake_case) field names, `@type` on every `Any` with
//! the packed message expanded in place, default values left out, 64-bit integers as strings.

use std::sync::LazyLock;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde_json::Value;

/// The Envoy API descriptors compiled by `build.rs`.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Decoded once, on first use (it takes a few milliseconds and most binaries call it never or
/// often). The error is kept as text so the static needs no `Clone` error type.
static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()));

/// The prefix Envoy (and every Google-style API) puts before a message name in an `Any`.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded descriptor set is broken: a build problem, not an input problem.
    #[error("Envoy descriptor pool: {0}")]
    Pool(String),
    #[error("message type {0:?} is not in Mast's Envoy descriptor pool")]
    UnknownType(String),
    #[error("decoding {type_name}: {source}")]
    Decode {
        type_name: String,
        source: prost::DecodeError,
    },
    #[error("rendering {type_name} as JSON: {source}")]
    ToJson {
        type_name: String,
        source: serde_json::Error,
    },
    #[error("parsing {type_name} from JSON: {source}")]
    FromJson {
        type_name: String,
        source: serde_json::Error,
    },
    #[error("parsing YAML: {0}")]
    Yaml(String),
}

/// The descriptor pool of Envoy's API (plus the Istio filter configs found in Istio's xDS).
pub fn pool() -> Result<&'static DescriptorPool, Error> {
    POOL.as_ref().map_err(|e| Error::Pool(e.clone()))
}

/// A private copy of the pool, dropped with its owner. For binaries that need reflection
/// once or rarely (a sidecar parsing its bootstrap, rendering a config dump) and should not
/// keep the ~25 MB of decoded descriptors resident for the rest of their life.
pub fn fresh_pool() -> Result<DescriptorPool, Error> {
    DescriptorPool::decode(DESCRIPTORS).map_err(|e| Error::Pool(e.to_string()))
}

fn descriptor(type_name: &str) -> Result<MessageDescriptor, Error> {
    descriptor_in(pool()?, type_name)
}

fn descriptor_in(pool: &DescriptorPool, type_name: &str) -> Result<MessageDescriptor, Error> {
    pool.get_message_by_name(type_name)
        .ok_or_else(|| Error::UnknownType(type_name.to_string()))
}

/// The message name in a type URL: the part after the last `/`, as the proto3 spec says.
fn type_name_of(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

fn serialize_options() -> SerializeOptions {
    // Envoy's admin output uses the .proto field names (`dynamic_active_clusters`), not the
    // lowerCamelCase JSON names.
    SerializeOptions::new().use_proto_field_name(true)
}

/// The serialized message `bytes` of type `type_name` (e.g.
/// `envoy.config.cluster.v3.Cluster`) as proto3 JSON.
pub fn encoded_to_json(type_name: &str, bytes: &[u8]) -> Result<Value, Error> {
    encoded_to_json_in(pool()?, type_name, bytes)
}

/// [`encoded_to_json`] with a given pool (see [`fresh_pool`]).
pub fn encoded_to_json_in(
    pool: &DescriptorPool,
    type_name: &str,
    bytes: &[u8],
) -> Result<Value, Error> {
    let message =
        DynamicMessage::decode(descriptor_in(pool, type_name)?, bytes).map_err(|source| {
            Error::Decode {
                type_name: type_name.to_string(),
                source,
            }
        })?;
    message
        .serialize_with_options(serde_json::value::Serializer, &serialize_options())
        .map_err(|source| Error::ToJson {
            type_name: type_name.to_string(),
            source,
        })
}

/// A typed `envoy-types` message as proto3 JSON (no `@type`: it is not an `Any`).
pub fn message_to_json<M: Message + Name>(message: &M) -> Result<Value, Error> {
    encoded_to_json(&M::full_name(), &message.encode_to_vec())
}

/// An `Any` as Envoy prints it: `{"@type": "type.googleapis.com/…", …fields of the message}`.
pub fn any_to_json(any: &Any) -> Result<Value, Error> {
    // Going through `google.protobuf.Any` itself lets the pool apply the JSON mapping of Any
    // (and of well-known types packed in it, which nest as `{"@type", "value"}`).
    let wrapper = prost_types::Any {
        type_url: any.type_url.clone(),
        value: any.value.clone(),
    };
    encoded_to_json("google.protobuf.Any", &wrapper.encode_to_vec())
}

/// Unpacks an `Any` into a dynamic message (for callers that want to walk fields by name).
pub fn decode_any(any: &Any) -> Result<DynamicMessage, Error> {
    let type_name = type_name_of(&any.type_url);
    DynamicMessage::decode(descriptor(type_name)?, any.value.as_slice()).map_err(|source| {
        Error::Decode {
            type_name: type_name.to_string(),
            source,
        }
    })
}

fn json_to_dynamic(type_name: &str, json: &Value) -> Result<DynamicMessage, Error> {
    json_to_dynamic_in(pool()?, type_name, json)
}

fn json_to_dynamic_in(
    pool: &DescriptorPool,
    type_name: &str,
    json: &Value,
) -> Result<DynamicMessage, Error> {
    // Unknown fields are errors, as in Envoy: a typo in a config must not pass silently.
    DynamicMessage::deserialize_with_options(
        descriptor_in(pool, type_name)?,
        json,
        &DeserializeOptions::new(),
    )
    .map_err(|source| Error::FromJson {
        type_name: type_name.to_string(),
        source,
    })
}

/// Parses proto3 JSON (snake_case or lowerCamelCase names, as Envoy accepts) into a typed
/// `envoy-types` message, e.g. a `Bootstrap` or a `Cluster`.
pub fn json_to_message<M: Message + Name + Default>(json: &Value) -> Result<M, Error> {
    let type_name = M::full_name();
    let bytes = json_to_dynamic(&type_name, json)?.encode_to_vec();
    M::decode(bytes.as_slice()).map_err(|source| Error::Decode { type_name, source })
}

/// [`json_to_message`] with a given pool (see [`fresh_pool`]).
pub fn json_to_message_in<M: Message + Name + Default>(
    pool: &DescriptorPool,
    json: &Value,
) -> Result<M, Error> {
    let type_name = M::full_name();
    let bytes = json_to_dynamic_in(pool, &type_name, json)?.encode_to_vec();
    M::decode(bytes.as_slice()).map_err(|source| Error::Decode { type_name, source })
}

/// [`json_to_any`] with a given pool (see [`fresh_pool`]).
pub fn json_to_any_in(pool: &DescriptorPool, type_name: &str, json: &Value) -> Result<Any, Error> {
    Ok(Any {
        type_url: format!("{TYPE_URL_PREFIX}{type_name}"),
        value: json_to_dynamic_in(pool, type_name, json)?.encode_to_vec(),
    })
}

/// Parses proto3 JSON of message type `type_name` into an `Any`: for messages the caller has
/// no Rust type for (Istio filter configs) or picks at run time.
pub fn json_to_any(type_name: &str, json: &Value) -> Result<Any, Error> {
    Ok(Any {
        type_url: format!("{TYPE_URL_PREFIX}{type_name}"),
        value: json_to_dynamic(type_name, json)?.encode_to_vec(),
    })
}

fn yaml_to_json(yaml: &str) -> Result<Value, Error> {
    // YAML is a superset of JSON, so this also takes Envoy's `-c bootstrap.json`.
    serde_saphyr::from_str(yaml).map_err(|e| Error::Yaml(e.to_string()))
}

/// Parses an Envoy YAML (or JSON) config into a typed message, as `envoy -c file.yaml` does.
pub fn yaml_to_message<M: Message + Name + Default>(yaml: &str) -> Result<M, Error> {
    json_to_message(&yaml_to_json(yaml)?)
}

/// Parses an Envoy YAML (or JSON) config of message type `type_name` into an `Any`.
pub fn yaml_to_any(type_name: &str, yaml: &str) -> Result<Any, Error> {
    json_to_any(type_name, &yaml_to_json(yaml)?)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
    use envoy_types::util::pack_any;
    use serde_json::json;

    use super::*;

    fn cluster() -> Cluster {
        Cluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            connect_timeout: Some(Duration {
                seconds: 10,
                nanos: 0,
            }),
            per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
            transport_socket: Some(envoy_types::pb::envoy::config::core::v3::TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                        pack_any(UpstreamTlsContext {
                            sni: "outbound_.9080_._.reviews.default.svc.cluster.local".into(),
                            ..Default::default()
                        }),
                    ),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn any_renders_like_envoy() -> Result<(), Error> {
        let json = any_to_json(&pack_any(cluster()))?;
        assert_eq!(
            json,
            json!({
                "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "name": "outbound|9080||reviews.default.svc.cluster.local",
                "type": "EDS",
                "connect_timeout": "10s",
                "per_connection_buffer_limit_bytes": 32768,
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": "outbound_.9080_._.reviews.default.svc.cluster.local"
                    }
                }
            })
        );
        Ok(())
    }

    #[test]
    fn message_round_trips_through_json() -> Result<(), Error> {
        let original = cluster();
        let json = message_to_json(&original)?;
        assert!(json.get("@type").is_none(), "a bare message has no @type");
        let back: Cluster = json_to_message(&json)?;
        assert_eq!(back, original);
        Ok(())
    }

    #[test]
    fn camel_case_input_is_accepted_and_typos_are_not() -> Result<(), Error> {
        let c: Cluster = json_to_message(&json!({"name": "x", "connectTimeout": "0.25s"}))?;
        assert_eq!(
            c.connect_timeout,
            Some(Duration {
                seconds: 0,
                nanos: 250_000_000
            })
        );
        let err = json_to_message::<Cluster>(&json!({"name": "x", "conect_timeout": "1s"}));
        assert!(matches!(err, Err(Error::FromJson { .. })), "{err:?}");
        Ok(())
    }

    #[test]
    fn unknown_any_type_is_an_error_not_garbage() {
        let any = Any {
            type_url: "type.googleapis.com/example.NotAType".into(),
            value: vec![],
        };
        assert!(any_to_json(&any).is_err());
        assert!(matches!(decode_any(&any), Err(Error::UnknownType(t)) if t == "example.NotAType"));
    }

    #[test]
    fn yaml_bootstrap_parses() -> Result<(), Error> {
        let yaml = r#"
node:
  id: sidecar~10.0.0.1~p.ns~ns.svc.cluster.local
  metadata:
    NAMESPACE: ns
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 15000 }
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"#;
        let bootstrap: Bootstrap = yaml_to_message(yaml)?;
        assert_eq!(
            bootstrap.node.as_ref().map(|n| n.id.as_str()),
            Some("sidecar~10.0.0.1~p.ns~ns.svc.cluster.local")
        );
        let cluster = &bootstrap
            .static_resources
            .as_ref()
            .map(|s| s.clusters.clone())
            .unwrap_or_default()[0];
        let options = &cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            options.type_url,
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
        let any = yaml_to_any("envoy.config.bootstrap.v3.Bootstrap", yaml)?;
        assert_eq!(any.value, bootstrap.encode_to_vec());
        Ok(())
    }

    #[test]
    fn istio_filter_configs_are_in_the_pool() -> Result<(), Error> {
        for (type_name, json) in [
            (
                "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
                json!({"alpn_override": [{"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}),
            ),
            (
                "envoy.tcp.metadataexchange.config.MetadataExchange",
                json!({"protocol": "istio-peer-exchange"}),
            ),
            (
                "stats.PluginConfig",
                json!({"disable_host_header_fallback": true}),
            ),
            (
                "udpa.type.v1.TypedStruct",
                json!({"type_url": "type.googleapis.com/x.Y", "value": {"a": 1.0}}),
            ),
        ] {
            let any = json_to_any(type_name, &json)?;
            let mut expected = json.clone();
            if let Value::Object(map) = &mut expected {
                map.insert(
                    "@type".into(),
                    Value::String(format!("{TYPE_URL_PREFIX}{type_name}")),
                );
            }
            assert_eq!(any_to_json(&any)?, expected, "{type_name}");
        }
        Ok(())
    }
}
