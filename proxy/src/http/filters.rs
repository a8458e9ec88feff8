//! The HTTP filter chain: what runs on a request after the connection manager's checks and
//! before the router, one filter after the other.
//!
//! Envoy keeps each concern that may stop a request — JWT authentication, authorization,
//! fault injection — in its own filter, applied in the order of the connection manager's
//! `http_filters` list, with the router always last. Keeping them here as small types behind
//! one trait, run by one loop, makes that order visible in one place, and a new filter plugs
//! in without touching the router: it lets the request continue or answers it locally.
//!
//! The chain runs after path normalisation and the authority checks (`sanitize`), so every
//! filter sees the request as the router will.
//!
//! The route is chosen before the chain runs, as Envoy's connection manager picks it for its
//! filters: the fault filter reads its (per-route) config from it. The JWT filter may change
//! headers (claims copied to headers, the token removed) and writes the verified payload; when
//! a provider with `clear_route_cache` (istiod sets it on gateways) verified the token, the
//! route is chosen again right after the filter, as Envoy clears its route cache, so routes
//! matching claims (`dynamic_metadata`) see them and the filters after it see the new route.
//! Otherwise (sidecars, no token, no such provider) the first choice stands.
//!
//! Filters share the request's dynamic metadata: the JWT filter writes the verified payload,
//! the RBAC filters read it (Istio's `requestPrincipals` and `request.auth.claims`).
//!
//! The listener config keeps the RBAC filters in their order but not where the fault filter
//! stood (it allows no listener-wide fault, so the filter has no config of its own); the fault
//! filter runs after the RBAC filters, as in the chain Istio writes.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use http::request::Parts;

use super::recorder::Recorder;
use super::reply::{Form, LocalReply};
use super::router::{self, Selected};
use crate::http::jwt::{JwtAuthn, Outcome as JwtOutcome};
use crate::rbac::{DynamicMetadata, Rbac};
use crate::resources::chance;
use crate::resources::listener::HttpManager;
use crate::resources::route::{Abort, VirtualHost};

/// What a filter decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FilterOutcome {
    /// On to the next filter, and at the end to the router.
    Continue,
    /// Answer the request here; the filters after this one and the router do not run.
    Reply(LocalReply),
}

/// A request as the filters see it; `'r` is the route table's, which outlives the request's
/// borrows so the router can take the (possibly re-chosen) route afterwards.
pub(super) struct FilterRequest<'a, 'r> {
    pub parts: &'a mut Parts,
    /// The authority the request was checked and is routed by.
    pub host: &'a str,
    /// The direct peer.
    pub peer: SocketAddr,
    /// Where the client was going.
    pub dst: SocketAddr,
    /// The peer's SPIFFE ID when the connection is mTLS.
    pub principal: Option<&'a str>,
    /// The virtual host the request is routed in, to choose the route again.
    pub vhost: Option<&'r VirtualHost>,
    /// The route the router will take, if any matches.
    pub route: Option<Selected<'r>>,
    pub rec: &'a mut Recorder,
    /// Dynamic metadata, per filter name, written and read by the filters.
    pub metadata: DynamicMetadata,
}

/// One HTTP filter.
pub(super) trait HttpFilter {
    /// Look at (or change) the request; let it continue or answer it.
    async fn on_request(&self, req: &mut FilterRequest<'_, '_>) -> FilterOutcome;
}

/// A connection manager's filters, in the order they run.
pub(super) struct FilterChain {
    filters: Vec<Filter>,
}

/// The filters mast-proxy runs. An enum rather than trait objects: the chain is walked on
/// every request, and a filter's future stays a plain value.
enum Filter {
    Jwt(JwtFilter),
    Rbac(RbacFilter),
    Fault(FaultFilter),
}

/// `envoy.filters.http.jwt_authn`: verifies tokens, writes the payload to the metadata.
pub(super) struct JwtFilter(Arc<JwtAuthn>);

/// `envoy.filters.http.rbac`: one filter's enforced (and shadow) policies.
pub(super) struct RbacFilter(Arc<Rbac>);

/// `envoy.filters.http.fault`: delays and aborts from the route's (or its virtual host's)
/// fault config.
pub(super) struct FaultFilter;

// === impl FilterChain ===

impl FilterChain {
    /// The chain a connection manager's config asks for.
    pub fn new(hcm: &HttpManager) -> Self {
        let mut chain = Self::with_rbac(&hcm.rbac);
        if let Some(jwt) = &hcm.jwt {
            chain
                .filters
                .insert(0, Filter::Jwt(JwtFilter(Arc::clone(jwt))));
        }
        chain
    }

    fn with_rbac(rbac: &[Arc<Rbac>]) -> Self {
        let mut filters: Vec<Filter> = rbac
            .iter()
            .map(|r| Filter::Rbac(RbacFilter(Arc::clone(r))))
            .collect();
        filters.push(Filter::Fault(FaultFilter));
        Self { filters }
    }

    /// Run the filters in order until one answers.
    pub async fn on_request(&self, req: &mut FilterRequest<'_, '_>) -> FilterOutcome {
        for filter in &self.filters {
            if let FilterOutcome::Reply(reply) = filter.on_request(req).await {
                return FilterOutcome::Reply(reply);
            }
        }
        FilterOutcome::Continue
    }
}

// === impl Filter ===

impl HttpFilter for Filter {
    async fn on_request(&self, req: &mut FilterRequest<'_, '_>) -> FilterOutcome {
        match self {
            Self::Jwt(f) => f.on_request(req).await,
            Self::Rbac(f) => f.on_request(req).await,
            Self::Fault(f) => f.on_request(req).await,
        }
    }
}

// === impl JwtFilter ===

impl HttpFilter for JwtFilter {
    async fn on_request(&self, req: &mut FilterRequest<'_, '_>) -> FilterOutcome {
        match self.0.on_request(req.parts, &mut req.metadata) {
            JwtOutcome::Continue => FilterOutcome::Continue,
            JwtOutcome::ClearRouteCache => {
                req.route = req
                    .vhost
                    .and_then(|vh| router::select(vh, req.parts, &req.metadata));
                FilterOutcome::Continue
            }
            JwtOutcome::Reject {
                status,
                body,
                www_authenticate,
            } => {
                tracing::debug!(peer = %req.peer, reason = body, "jwt_authn: request refused");
                let mut reply = LocalReply::new(status, "-", body);
                if let Ok(v) = http::HeaderValue::from_str(&www_authenticate) {
                    reply.headers.push((http::header::WWW_AUTHENTICATE, v));
                }
                FilterOutcome::Reply(reply)
            }
        }
    }
}

// === impl RbacFilter ===

impl HttpFilter for RbacFilter {
    async fn on_request(&self, req: &mut FilterRequest<'_, '_>) -> FilterOutcome {
        let parts = &*req.parts;
        let attrs = crate::rbac::Attrs {
            headers: Some(&parts.headers),
            method: Some(parts.method.as_str()),
            path: Some(parts.uri.path()),
            full_path: parts.uri.path_and_query().map(|p| p.as_str()),
            authority: Some(req.host),
            source: req.peer,
            remote_ip: req.peer.ip(),
            destination: req.dst,
            principal: req.principal,
            sni: None,
            metadata: Some(&req.metadata),
        };
        match self.0.evaluate(&attrs) {
            crate::rbac::Decision::Allow => FilterOutcome::Continue,
            crate::rbac::Decision::Deny { policy } => {
                let policy = policy.as_deref().unwrap_or("none");
                tracing::debug!(peer = %req.peer, policy, "RBAC: request denied");
                FilterOutcome::Reply(LocalReply::new(
                    StatusCode::FORBIDDEN,
                    "RBAC",
                    "RBAC: access denied",
                ))
            }
        }
    }
}

// === impl FaultFilter ===

impl HttpFilter for FaultFilter {
    async fn on_request(&self, req: &mut FilterRequest<'_, '_>) -> FilterOutcome {
        // Without a route the filter has only its own config, which is always empty.
        let Some(selected) = req.route else {
            return FilterOutcome::Continue;
        };
        let Some(fault) = selected
            .route
            .fault
            .as_ref()
            .or(selected.vhost.fault.as_ref())
        else {
            return FilterOutcome::Continue;
        };
        if let Some((delay, ppm)) = fault.delay
            && chance(ppm)
        {
            tokio::time::sleep(delay).await;
            req.rec.flags = "DI";
        }
        if let Some((abort, ppm)) = fault.abort
            && chance(ppm)
        {
            let reply = match abort {
                // An HTTP abort is plain HTTP even for a gRPC request, as Envoy sends it.
                Abort::Http(status) => LocalReply {
                    form: Form::Http,
                    ..LocalReply::new(status, "FI", "fault filter abort")
                },
                Abort::Grpc(code) => LocalReply {
                    form: Form::Grpc(code),
                    ..LocalReply::new(StatusCode::OK, "FI", "")
                },
            };
            return FilterOutcome::Reply(reply);
        }
        FilterOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;

    use super::*;
    use crate::http::reply::tests::recorder;

    fn rbac(action: rbac_pb::rbac::Action) -> Arc<Rbac> {
        let policy = rbac_pb::Policy {
            permissions: vec![rbac_pb::Permission {
                rule: Some(rbac_pb::permission::Rule::Any(true)),
            }],
            principals: vec![rbac_pb::Principal {
                identifier: Some(rbac_pb::principal::Identifier::Any(true)),
            }],
            ..Default::default()
        };
        let proto = HttpRbac {
            rules: Some(rbac_pb::Rbac {
                action: action as i32,
                policies: HashMap::from([("all".to_string(), policy)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        Arc::new(Rbac::from_http_proto(&proto).unwrap())
    }

    async fn run(chain: &FilterChain) -> (FilterOutcome, &'static str) {
        let (mut parts, ()) = http::Request::get("http://example/x")
            .body(())
            .unwrap()
            .into_parts();
        let mut rec = recorder();
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut req = FilterRequest {
            parts: &mut parts,
            host: "example",
            peer: addr,
            dst: addr,
            principal: None,
            vhost: None,
            route: None,
            rec: &mut rec,
            metadata: Default::default(),
        };
        let outcome = chain.on_request(&mut req).await;
        (outcome, rec.flags)
    }

    #[tokio::test]
    async fn empty_chain_continues() {
        let chain = FilterChain::with_rbac(&[]);
        assert_eq!(run(&chain).await, (FilterOutcome::Continue, "-"));
    }

    #[tokio::test]
    async fn any_rbac_denial_answers_403() {
        use rbac_pb::rbac::Action;
        let chain = FilterChain::with_rbac(&[rbac(Action::Allow), rbac(Action::Deny)]);
        let (outcome, _) = run(&chain).await;
        let FilterOutcome::Reply(reply) = outcome else {
            panic!("denied request continued");
        };
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.flags, "RBAC");
        assert_eq!(reply.form, Form::AsRequest);
        let allowed = FilterChain::with_rbac(&[rbac(Action::Allow)]);
        assert_eq!(run(&allowed).await.0, FilterOutcome::Continue);
    }

    #[test]
    fn fault_filter_runs_after_rbac() {
        use rbac_pb::rbac::Action;
        let chain = FilterChain::with_rbac(&[rbac(Action::Allow), rbac(Action::Deny)]);
        let kinds: Vec<&str> = chain
            .filters
            .iter()
            .map(|f| match f {
                Filter::Jwt(_) => "jwt",
                Filter::Rbac(_) => "rbac",
                Filter::Fault(_) => "fault",
            })
            .collect();
        assert_eq!(kinds, ["rbac", "rbac", "fault"]);
    }
}
