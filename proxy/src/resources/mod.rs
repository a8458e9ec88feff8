//! Envoy's xDS resources, checked and turned into the forms the data plane runs on.
//!
//! Conversion happens once per xDS update, off the request path: regexes are compiled,
//! weights summed, durations and percentages normalised, so a request only walks plain
//! structs. Whatever mast-proxy cannot honour is an error naming the resource and the field —
//! it becomes the NACK's `error_detail`, and the last good config stays in force.

pub mod cluster;
pub mod listener;
pub mod route;
pub mod tls;

use std::time::Duration;

use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// What is wrong with a resource, and where.
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

/// A protobuf duration; negative ones are refused.
pub fn duration(
    d: &envoy_types::pb::google::protobuf::Duration,
    field: &str,
) -> FieldResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(FieldError::new(field, "negative duration"));
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
