//! Caller authentication behind a trait, so the CA does not care where identities come from.
//!
//! Locally a caller proves its identity with a workload credential MACed by the CA directory's
//! key ([`crate::token`]); on Kubernetes with its projected service-account token, checked by
//! the API server's TokenReview (`mast_kube::tokenreview`). citadel only needs "this bearer
//! token is `namespace/service-account`" or "it is not" — and, because a remote check can
//! fail for reasons that say nothing about the caller, a third answer: "cannot tell now",
//! which becomes `UNAVAILABLE` (the sidecar retries) instead of a refusal or, worse, a wrong
//! identity. The trait is object-safe and boxes its future so citadel stays free of any
//! Kubernetes dependency and mastd can pick the implementation at start-up.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use crate::token::TokenVerifier;

/// Who a bearer token says the caller is (the SPIFFE ID adds citadel's trust domain).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
}

impl Caller {
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

/// Why a token did not yield an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthenticationError {
    /// The token proves nothing (bad, expired, wrong audience): `UNAUTHENTICATED`.
    #[error("{0}")]
    Refused(String),
    /// The authority that checks tokens could not be asked (API server down, throttled):
    /// `UNAVAILABLE`, so the caller retries.
    #[error("cannot authenticate now: {0}")]
    Unavailable(String),
}

/// What [`Authenticator::authenticate`] returns: boxed, so the trait works as `dyn`.
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Caller, AuthenticationError>> + Send + 'a>>;

/// Turns a bearer token into the caller's namespace and service account.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

// === impl TokenVerifier ===

impl Authenticator for TokenVerifier {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        let result = self
            .verify(token, SystemTime::now())
            .map(|(ns, sa)| Caller::new(ns, sa))
            .map_err(|e| AuthenticationError::Refused(e.to_string()));
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn local_credentials_authenticate_through_the_trait() {
        let dir = tempfile::tempdir().unwrap();
        let t =
            crate::token::issue(dir.path(), "default", "user", Duration::from_secs(60)).unwrap();
        let auth: std::sync::Arc<dyn Authenticator> =
            std::sync::Arc::new(TokenVerifier::load(dir.path()).unwrap());
        assert_eq!(
            auth.authenticate(&t).await,
            Ok(Caller::new("default", "user"))
        );
        assert!(matches!(
            auth.authenticate("nonsense").await,
            Err(AuthenticationError::Refused(_))
        ));
    }
}
