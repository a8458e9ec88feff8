//! Envoy's xDS resources, checked and turned into the forms the data plane runs on.
//!
//! Conversion happens once per xDS update, off the request path: regexes are compiled,
//! weights summed, durations and percentages normalised, so a request only walks plain
//! structs. Whatever mast-proxy cannot honour is an error naming the resource and the field —
//! it becomes the NACK's `error_detail`, and the last good config stays in force.
//!
//! Each resource type the ADS client takes implements [`XdsResource`] on its protobuf
//! message: its [`TypeUrl`], its name, and what it compiles to. The store applies every type
//! through that one trait, so decoding, naming and rejecting work the same for all of them,
//! and every failure is a typed [`Rejection`].

pub mod cluster;
pub mod listener;
mod rejection;
pub mod route;
pub mod secret;
pub mod tls;

use std::time::Duration;

use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Any;
use mast_proto::TypeUrl;
use prost::Message;

pub use rejection::{Nack, Rejection};

/// One xDS resource type as mast-proxy takes it over ADS, implemented on its protobuf
/// message.
pub trait XdsResource: Message + Default {
    /// The type URL its `Any`s and responses carry.
    const TYPE: TypeUrl;
    /// What the data plane runs on.
    type Compiled: Send + Sync + 'static;

    /// The resource's name: what delta xDS names it by, and what listeners and clusters
    /// refer to it by.
    fn name(&self) -> &str;

    /// Check the resource and turn it into its runtime form.
    fn compile(&self) -> Result<Self::Compiled, Rejection>;

    /// Decode an `Any` from a response of this type.
    fn from_any(any: &Any) -> Result<Self, Rejection> {
        if any.type_url != Self::TYPE {
            return Err(Rejection::WrongType {
                expected: Self::TYPE,
                got: any.type_url.clone(),
            });
        }
        Self::decode(any.value.as_slice()).map_err(|source| Rejection::Decode {
            type_url: Self::TYPE,
            source,
        })
    }
}

/// What is wrong with a resource, and where: the [`Rejection::Invalid`] of a resource that
/// decodes but cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {field}: {message}")]
pub struct ResourceError {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub message: String,
}

/// An error inside a resource, before the resource's name is known to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefix the field path with its parent (`virtual_hosts[0]` + `routes[1]`).
    pub fn at(mut self, parent: impl AsRef<str>) -> Self {
        let parent = parent.as_ref();
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    pub fn resource(self, kind: &'static str, name: &str) -> ResourceError {
        ResourceError {
            kind,
            name: name.to_string(),
            field: self.field,
            message: self.message,
        }
    }
}

pub type FieldResult<T> = Result<T, FieldError>;

/// Extension for prefixing errors of nested conversions.
pub trait At<T> {
    fn at(self, parent: impl AsRef<str>) -> FieldResult<T>;
}

impl<T> At<T> for FieldResult<T> {
    fn at(self, parent: impl AsRef<str>) -> FieldResult<T> {
        self.map_err(|e| e.at(parent))
    }
}

/// The largest `google.protobuf.Duration`: 10,000 years.
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// A protobuf duration; negative and out-of-range ones are refused.
pub fn duration(
    d: &envoy_types::pb::google::protobuf::Duration,
    field: &str,
) -> FieldResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(FieldError::new(field, "negative duration"));
    }
    // google.protobuf.Duration's range (10,000 years), which Envoy enforces: beyond it a
    // deadline computed from the value overflows.
    if d.seconds > MAX_DURATION_SECONDS || d.nanos > 999_999_999 {
        return Err(FieldError::new(field, "duration out of range"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub fn opt_duration(
    d: &Option<envoy_types::pb::google::protobuf::Duration>,
    field: &str,
) -> FieldResult<Option<Duration>> {
    d.as_ref().map(|d| duration(d, field)).transpose()
}

/// A probability in parts per million, from Envoy's FractionalPercent.
pub fn per_million(p: &FractionalPercent) -> u32 {
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        _ => 1,
    };
    p.numerator.saturating_mul(scale).min(1_000_000)
}

/// True with probability `ppm` per million.
pub fn chance(ppm: u32) -> bool {
    ppm >= 1_000_000 || (ppm > 0 && rand::random_range(0..1_000_000) < ppm)
}

/// Decode an `Any` of the expected type.
pub fn decode_any<M: Message + Default + prost::Name>(any: &Any, field: &str) -> FieldResult<M> {
    let want = M::type_url();
    if any.type_url != want {
        return Err(FieldError::new(
            field,
            format!("expected {want}, got {}", any.type_url),
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| FieldError::new(field, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

    fn type_of<R: XdsResource + prost::Name>() -> (TypeUrl, String) {
        (R::TYPE, R::type_url())
    }

    #[test]
    fn each_resource_is_its_messages_type() {
        for (t, url) in [
            type_of::<Cluster>(),
            type_of::<ClusterLoadAssignment>(),
            type_of::<Listener>(),
            type_of::<RouteConfiguration>(),
            type_of::<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>(),
        ] {
            assert_eq!(t.url(), url);
        }
    }

    #[test]
    fn from_any_rejects_other_types_and_bad_bytes() {
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|80||a".into(),
            ..Default::default()
        };
        let any = Any {
            type_url: TypeUrl::Endpoint.url().into(),
            value: cla.encode_to_vec(),
        };
        let decoded = ClusterLoadAssignment::from_any(&any).unwrap();
        assert_eq!(XdsResource::name(&decoded), "outbound|80||a");
        assert!(decoded.compile().unwrap().is_empty());

        let err = Cluster::from_any(&any).unwrap_err();
        assert!(
            matches!(&err, Rejection::WrongType { expected: TypeUrl::Cluster, got } if *got == TypeUrl::Endpoint),
            "{err:?}"
        );
        let bad = Any {
            type_url: TypeUrl::Endpoint.url().into(),
            value: vec![0xff],
        };
        let err = ClusterLoadAssignment::from_any(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                Rejection::Decode {
                    type_url: TypeUrl::Endpoint,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn compile_errors_name_resource_and_field() {
        let err = Listener::default().compile().unwrap_err();
        match err {
            Rejection::Invalid(e) => {
                assert_eq!((e.kind, e.field.as_str()), ("Listener", "name"));
            }
            other => panic!("{other:?}"),
        }
    }
}
