//! Why mast-proxy refuses an xDS response, as types: one [`Rejection`] per reason, and the
//! [`Nack`] that carries all of a response's rejections back to pilot.
//!
//! A NACK's `error_detail` is the only thing pilot, `mastctl proxy-status` and the
//! differential tests against Envoy ever see of a rejection, so its text is part of the
//! contract: each variant's `Display` spells one of the messages mast-proxy has always sent,
//! and [`Nack`] joins them with `"; "` as before. Code that needs to tell causes apart
//! matches on the variant instead of searching the text.

use std::fmt;

use mast_proto::TypeUrl;

use super::ResourceError;

/// One reason a response is NACKed.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// An `Any` of another type than the response's.
    #[error("resource of type {got} in a {expected} response")]
    WrongType { expected: TypeUrl, got: String },
    /// The bytes are not a valid message of the response's type.
    #[error("{type_url}: cannot decode: {source}")]
    Decode {
        type_url: TypeUrl,
        source: prost::DecodeError,
    },
    /// The resource decodes but asks for something mast-proxy cannot honour; the error names
    /// the resource and the field.
    #[error(transparent)]
    Invalid(#[from] ResourceError),
    /// A type mast-proxy does not take over ADS, or one that is no xDS type at all; the URL
    /// is as it came on the wire.
    #[error("type {0} is not supported")]
    UnsupportedType(String),
    /// A listener whose address cannot be bound: Envoy NACKs the LDS response for it, and so
    /// does mast-proxy. The text is the listener layer's (name, address, OS error).
    #[error("{0}")]
    Bind(String),
}

/// Everything wrong with one response, in the order found. Its `Display` is the NACK's
/// `error_detail` message.
#[derive(Debug)]
pub struct Nack(pub Vec<Rejection>);

// === impl Nack ===

impl Nack {
    pub fn rejections(&self) -> &[Rejection] {
        &self.0
    }
}

impl fmt::Display for Nack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Nack {}

impl From<Rejection> for Nack {
    fn from(r: Rejection) -> Self {
        Nack(vec![r])
    }
}

/// For callers that only report a NACK's text (`--config` loading), so `?` keeps working
/// where the error is a message.
impl From<Nack> for String {
    fn from(nack: Nack) -> Self {
        nack.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn texts_are_the_nack_messages() {
        let decode =
            envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(&[0xff_u8][..])
                .unwrap_err();
        let nack = Nack(vec![
            Rejection::WrongType {
                expected: TypeUrl::Route,
                got: TypeUrl::Cluster.url().into(),
            },
            Rejection::Decode {
                type_url: TypeUrl::Route,
                source: decode.clone(),
            },
            Rejection::Invalid(ResourceError {
                kind: "RouteConfiguration",
                name: "80".into(),
                field: "virtual_hosts[0].domains[0]".into(),
                message: "duplicate".into(),
            }),
            Rejection::UnsupportedType("type.googleapis.com/x".into()),
            Rejection::Bind("listener a: busy".into()),
        ]);
        assert_eq!(
            nack.to_string(),
            format!(
                "resource of type {c} in a {r} response; {r}: cannot decode: {decode}; \
                 RouteConfiguration \"80\": virtual_hosts[0].domains[0]: duplicate; \
                 type type.googleapis.com/x is not supported; listener a: busy",
                c = TypeUrl::Cluster.url(),
                r = TypeUrl::Route.url(),
            )
        );
        assert_eq!(nack.rejections().len(), 5);
    }
}
