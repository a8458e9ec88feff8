//! citadel's caller authentication on Kubernetes: the API server's TokenReview.
//!
//! A sidecar proves who it is with its projected service-account token (Istio's `istio-token`,
//! audience `istio-ca`). Only the API server can say whether that token is still valid (it is
//! bound to a pod and dies with it), so citadel asks it — `POST
//! authentication.k8s.io/v1/tokenreviews` with `spec.audiences: ["istio-ca"]`, as istiod does —
//! and takes the identity from `status.user.username`, `system:serviceaccount:<ns>:<sa>`.
//!
//! Three outcomes, kept apart on purpose:
//! - authenticated, for one of our audiences, as a service account → that identity;
//! - not authenticated, another audience, an API server that ignores audiences, or a user
//!   that is not a service account → refused, with the reason (`UNAUTHENTICATED`);
//! - the review could not be made (network, 5xx, throttling, mastd lacking RBAC for
//!   `tokenreviews`) → unavailable (`UNAVAILABLE`): the caller retries; it never gets a
//!   refusal it did not earn, let alone someone else's identity.
//!
//! Positive answers are cached briefly (30 s, bounded) because every proxy renews on start and
//! restarts come in waves; a token revoked (pod deleted) is therefore honoured at most that long
//! after its revocation. Refusals are not cached, so a fixed RBAC or a fresh token works at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use mast_citadel::{AuthFuture, AuthenticationError, Authenticator, Caller};

/// The audience of Istio's projected token `istio-token`.
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";
/// How long a positive review is reused.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
/// At most this many tokens are remembered.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

const SA_PREFIX: &str = "system:serviceaccount:";

/// Authenticates bearer tokens with the API server's TokenReview.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    ttl: Duration,
    capacity: usize,
    cache: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

// === impl TokenReviewer ===

impl TokenReviewer {
    /// Reviews for audience `istio-ca`, positive answers cached 30 s.
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
            audiences: vec![ISTIO_CA_AUDIENCE.to_string()],
            ttl: DEFAULT_CACHE_TTL,
            capacity: DEFAULT_CACHE_CAPACITY,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Accept tokens for these audiences instead (any one of them).
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        self.audiences = audiences;
        self
    }

    /// Cache positive answers this long, for at most `capacity` tokens (`ttl` zero: no cache).
    pub fn with_cache(mut self, ttl: Duration, capacity: usize) -> Self {
        self.ttl = ttl;
        self.capacity = capacity;
        self
    }

    fn cached(&self, token: &str) -> Option<Caller> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(token)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(c, _)| c.clone())
    }

    fn remember(&self, token: &str, caller: &Caller) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.capacity {
            cache.retain(|_, (_, until)| *until > now);
        }
        if cache.len() >= self.capacity {
            // Still full of live entries: start over rather than grow; the API server answers
            // the next wave once.
            cache.clear();
        }
        cache.insert(token.to_string(), (caller.clone(), now + self.ttl));
    }

    /// Ask the API server about `token`.
    pub async fn review(&self, token: &str) -> Result<Caller, AuthenticationError> {
        if let Some(c) = self.cached(token) {
            return Ok(c);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(self.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(unavailable)?;
        let caller = judge(&answer, &self.audiences)?;
        self.remember(token, &caller);
        Ok(caller)
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(self.review(token))
    }
}

/// A failed review request: our problem or the API server's, never the caller's.
fn unavailable(e: kube::Error) -> AuthenticationError {
    let msg = match &e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => format!(
            "the API server refused mastd's TokenReview (does mastd's ClusterRole allow create on tokenreviews?): {}",
            s.message
        ),
        kube::Error::Api(s) => format!("TokenReview failed: {} ({})", s.message, s.code),
        e => format!("TokenReview failed: {e}"),
    };
    tracing::warn!("{msg}");
    AuthenticationError::Unavailable(msg)
}

/// The identity an answered review grants, or why it grants none.
fn judge(review: &TokenReview, audiences: &[String]) -> Result<Caller, AuthenticationError> {
    let refused = |m: String| Err(AuthenticationError::Refused(m));
    let Some(status) = &review.status else {
        return refused("TokenReview answered without a status".into());
    };
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().unwrap_or("not authenticated");
        return refused(format!("token not valid: {why}"));
    }
    // An API server that ignores audiences returns none: such a token may have been minted
    // for anyone, so it proves nothing to the CA.
    let granted = status.audiences.as_deref().unwrap_or_default();
    if !granted.iter().any(|a| audiences.contains(a)) {
        return refused(format!(
            "token not valid for audience {audiences:?} (the review granted {granted:?})"
        ));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    match username
        .strip_prefix(SA_PREFIX)
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains(':') => {
            Ok(Caller::new(ns, sa))
        }
        _ => refused(format!(
            "{username:?} is not a service account (system:serviceaccount:<namespace>:<name>)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{FakeApiServer, status};

    const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

    /// The API server's answer for a valid `istio-token` of pod `user-…` in `default`.
    fn authenticated(req: &Value, username: &str, audiences: Value) -> Value {
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": req["spec"],
            "status": {
                "authenticated": true,
                "user": {
                    "username": username,
                    "uid": "9f1c3a5e-2b8d-4c7e-a1f0-6d2e8b4c9a71",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
                    "extra": {
                        "authentication.kubernetes.io/credential-id": ["JTI=5b0c7f1e-8a42-4f6b-9d3e-2c1a7e9b4f08"],
                        "authentication.kubernetes.io/node-name": ["kind-worker"],
                        "authentication.kubernetes.io/node-uid": ["3e8f2a1c-7b4d-4e9a-8c6f-1d2b3a4c5e6f"],
                        "authentication.kubernetes.io/pod-name": ["user-6c9d8f7b5-x2kqp"],
                        "authentication.kubernetes.io/pod-uid": ["a7b8c9d0-1e2f-4a3b-8c4d-5e6f7a8b9c0d"]
                    }
                },
                "audiences": audiences
            }
        })
    }

    fn unauthenticated(req: &Value, error: &str) -> Value {
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": req["spec"],
            "status": {"user": {}, "error": error}
        })
    }

    /// A fake API server that answers reviews per token, counting them.
    async fn server() -> (TokenReviewer, Arc<AtomicUsize>) {
        let (client, api) = FakeApiServer::start_in_memory().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let n = Arc::clone(&calls);
        api.hook(move |method, path, body| {
            if *method != Method::POST || path != PATH {
                return None;
            }
            n.fetch_add(1, Ordering::SeqCst);
            assert_eq!(body["spec"]["audiences"], json!(["istio-ca"]), "{body}");
            let answer = match body["spec"]["token"].as_str().unwrap_or("") {
                "good" => authenticated(body, "system:serviceaccount:default:user", json!(["istio-ca"])),
                "for-api" => unauthenticated(
                    body,
                    "[invalid bearer token, token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"istio-ca\"]]",
                ),
                "no-audiences" => authenticated(body, "system:serviceaccount:default:user", Value::Null),
                "human" => authenticated(body, "alice@example.com", json!(["istio-ca"])),
                "forbidden" => {
                    return Some((
                        403,
                        status(
                            403,
                            "Forbidden",
                            "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:mast-system:mastd\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
                            "tokenreviews",
                            "",
                        ),
                    ));
                }
                "overloaded" => {
                    return Some((
                        500,
                        status(500, "InternalError", "Internal error occurred: etcdserver: request timed out", "", ""),
                    ));
                }
                _ => unauthenticated(body, "[invalid bearer token, service account token has been invalidated]"),
            };
            Some((201, answer))
        });
        (TokenReviewer::new(client), calls)
    }

    #[tokio::test]
    async fn a_service_account_token_is_that_identity_and_is_cached() {
        let (r, calls) = server().await;
        let auth: &dyn Authenticator = &r;
        assert_eq!(
            auth.authenticate("good").await,
            Ok(Caller::new("default", "user"))
        );
        assert_eq!(
            auth.authenticate("good").await,
            Ok(Caller::new("default", "user"))
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "second answer from the cache"
        );
    }

    #[tokio::test]
    async fn refusals_say_why_and_are_not_cached() {
        let (r, calls) = server().await;
        for (token, reason) in [
            ("revoked", "has been invalidated"),
            ("for-api", "is invalid for the target audiences"),
            ("no-audiences", "not valid for audience"),
            ("human", "is not a service account"),
        ] {
            match r.review(token).await {
                Err(AuthenticationError::Refused(m)) => assert!(m.contains(reason), "{token}: {m}"),
                other => panic!("{token}: {other:?}"),
            }
        }
        let _ = r.review("revoked").await;
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn api_errors_are_unavailable_not_an_identity() {
        let (r, _) = server().await;
        match r.review("forbidden").await {
            Err(AuthenticationError::Unavailable(m)) => assert!(m.contains("tokenreviews"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.review("overloaded").await,
            Err(AuthenticationError::Unavailable(_))
        ));
    }

    #[test]
    fn usernames_parse_strictly() {
        let review = |u: &str| TokenReview {
            status: Some(k8s_openapi::api::authentication::v1::TokenReviewStatus {
                authenticated: Some(true),
                audiences: Some(vec!["istio-ca".into()]),
                user: Some(k8s_openapi::api::authentication::v1::UserInfo {
                    username: Some(u.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let aud = ["istio-ca".to_string()];
        assert_eq!(
            judge(&review("system:serviceaccount:bookinfo:reviews"), &aud),
            Ok(Caller::new("bookinfo", "reviews"))
        );
        for bad in [
            "system:serviceaccount:ns",
            "system:serviceaccount::sa",
            "system:serviceaccount:ns:",
            "system:serviceaccount:a:b:c",
            "system:node:kind-worker",
        ] {
            assert!(judge(&review(bad), &aud).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let (client, _api) = {
            // A client is needed only to build the reviewer; nothing is asked.
            let (svc, _h) = tower_test::mock::pair::<
                http::Request<kube::client::Body>,
                http::Response<kube::client::Body>,
            >();
            (kube::Client::new(svc, "default"), ())
        };
        let r = TokenReviewer::new(client).with_cache(Duration::from_secs(30), 2);
        for t in ["a", "b", "c"] {
            r.remember(t, &Caller::new("ns", t));
        }
        let len = r.cache.lock().unwrap().len();
        assert!(len <= 2, "{len}");
        assert_eq!(r.cached("c"), Some(Caller::new("ns", "c")));
    }
}
