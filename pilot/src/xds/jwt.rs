//! RequestAuthentication → Envoy's `envoy.filters.http.jwt_authn`, shaped as istiod's
//! policy applier shapes it, and the JWKS resolver that fills in `jwksUri` keys.
//!
//! One provider per rule (`origins-<i>`, rules of every applying policy sorted by issuer),
//! each with `payload_in_metadata: payload` so the verified payload lands in the dynamic
//! metadata of `envoy.filters.http.jwt_authn` under `payload` — exactly where the RBAC
//! matchers of [`super::authz`] read `iss`, `sub` and claims. The requirement is Istio's: a
//! request without a token passes (authorization decides, with `requestPrincipals`), a token
//! that fails verification is refused with 401. The filter goes before the RBAC filters.
//!
//! Keys: like istiod's default (`PILOT_JWT_ENABLE_REMOTE_JWKS=false`), pilot fetches
//! `jwksUri` itself and inlines the keys as `local_jwks`, so proxies need no route to the
//! key server and mast-proxy needs no remote-JWKS client. Until a fetch succeeds the
//! provider gets [`NEVER_VALID_JWKS`], a key whose private half was discarded
//! when it was made, so every token fails (fail closed, as istiod does); a failed refresh
//! keeps the last keys fetched, as istiod's refresher does. Fetching never
//! blocks xDS generation: [`run_resolver`] sits between the config source and the ADS
//! server, fetches in the background, writes the keys into the model and publishes a new
//! snapshot (a push) when they change; it re-fetches every `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`
//! (20 minutes by default, as Istio).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::RouteMatch;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::{
    JwksSourceSpecifier, NormalizePayload,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::Empty;
use mast_mesh_config::MeshModel;
use mast_mesh_config::authn::JwtRule;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::any;
use crate::ads::Snapshot;

/// The filter's name; RBAC's metadata matchers name it too.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The metadata key the verified payload is written under (Istio's `payload`).
pub const PAYLOAD_KEY: &str = "payload";
/// Istio's default refresh interval of fetched keys.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(20 * 60);
/// Istio's retry interval after a failed fetch.
const RETRY_ON_FAILURE: Duration = Duration::from_secs(60);
/// Istio's default JWKS fetch timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// A fetched document larger than this is not a key set.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// An RSA public key made for Mast whose private key was never stored: no token can verify
/// against it. Used when a `jwksUri` has not been (or cannot be) fetched.
pub const NEVER_VALID_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"mast-unfetched-jwks","use":"sig","alg":"RS256","e":"AQAB","n":"qGNt_tY3fjXWeWsfZQaooWCKgqrQgOAvb-hvXilmITd9Un5-Pz7ZpOaVH6PsoONg4XTHsOBWnGLdt3gktm2iEKnEkhO2pGOk3V8NRURjdoocWsxKFWO3p5hCEpQzEz6796hNoigIodNmQoXthMLNU2xyesw2Maod3Vpjo1JNtTDOe1BecqI5xuUh35XgJTgdbp00kxjmGdEuIaKPARQWOOF-YCSoNDJiejmk-nzq2FbERZf6CjhEWUWwfFSMYmF-dQM7WrlRic4ZDl6CsPJn7KYCgm6Y5-6VakQFc29ZuF8lSGPjNTEcycmqB5kPOJFdeeFhjKqzcLQezUjdxQRi9Q"}]}"#;

/// Why a JWKS could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URI: {0}")]
    Uri(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("not a JWKS: {0}")]
    NotJwks(String),
}

/// The `jwt_authn` filter for a proxy's rules (already sorted by issuer); `None` without
/// rules. `clear_route_cache` as istiod sets it: on every proxy but a sidecar, so a gateway
/// chooses the route again once a token is verified (claims-based routing).
pub fn jwt_filter(rules: &[&JwtRule], clear_route_cache: bool) -> Option<HttpFilter> {
    let config = jwt_authentication(rules, clear_route_cache)?;
    Some(HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(any(&config))),
        ..Default::default()
    })
}

/// The `jwt_authn` filters of a proxy, from the model.
pub fn jwt_filters(
    model: &MeshModel,
    namespace: &str,
    labels: &mast_mesh_config::model::Labels,
    clear_route_cache: bool,
) -> Vec<HttpFilter> {
    jwt_filter(&model.jwt_rules_for(namespace, labels), clear_route_cache)
        .into_iter()
        .collect()
}

/// A route's `dynamic_metadata` matcher on a verified claim, as istiod writes it for a
/// VirtualService's `@request.auth.claims.<a>.<b>` match: `jwt_authn` → `payload` → `a` → `b`,
/// the value itself or any element of a list matching.
#[allow(deprecated)]
pub fn claim_matcher(path: &[String], value: StringMatcher, invert: bool) -> MetadataMatcher {
    let value = ValueMatcher {
        match_pattern: Some(ValuePattern::StringMatch(value)),
    };
    let any_element = ValueMatcher {
        match_pattern: Some(ValuePattern::ListMatch(Box::new(ListMatcher {
            match_pattern: Some(ListPattern::OneOf(Box::new(value.clone()))),
        }))),
    };
    MetadataMatcher {
        filter: JWT_FILTER.into(),
        path: std::iter::once(PAYLOAD_KEY)
            .chain(path.iter().map(String::as_str))
            .map(|k| PathSegment {
                segment: Some(Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(ValueMatcher {
            match_pattern: Some(ValuePattern::OrMatch(OrMatcher {
                value_matchers: vec![any_element, value],
            })),
        }),
        invert,
    }
}

fn provider_name(i: usize) -> String {
    format!("origins-{i}")
}

fn requirement(t: RequiresType) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(t),
    }
}

/// `JwtAuthentication` as istiod writes it: with one rule, "this provider or no token";
/// with several, "any one provider, or every provider-or-missing" — so a request with no
/// token at all passes and one with a bad token fails.
pub fn jwt_authentication(
    rules: &[&JwtRule],
    clear_route_cache: bool,
) -> Option<JwtAuthentication> {
    if rules.is_empty() {
        return None;
    }
    let mut providers = HashMap::new();
    let mut inner_and = Vec::new();
    let mut outer_or = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = provider_name(i);
        providers.insert(name.clone(), provider(rule, clear_route_cache));
        inner_and.push(requirement(RequiresType::RequiresAny(
            JwtRequirementOrList {
                requirements: vec![
                    requirement(RequiresType::ProviderName(name.clone())),
                    requirement(RequiresType::AllowMissing(Empty::default())),
                ],
            },
        )));
        outer_or.push(requirement(RequiresType::ProviderName(name)));
    }
    let requires = if inner_and.len() == 1 {
        inner_and.remove(0)
    } else {
        outer_or.push(requirement(RequiresType::RequiresAll(
            JwtRequirementAndList {
                requirements: inner_and,
            },
        )));
        requirement(RequiresType::RequiresAny(JwtRequirementOrList {
            requirements: outer_or,
        }))
    };
    Some(JwtAuthentication {
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(requires)),
        }],
        providers,
        bypass_cors_preflight: true,
        ..Default::default()
    })
}

fn provider(rule: &JwtRule, clear_route_cache: bool) -> JwtProvider {
    // Istio always normalises `scope` and `permission`, plus the rule's own claims.
    let space_delimited: BTreeSet<String> = ["permission", "scope"]
        .into_iter()
        .map(String::from)
        .chain(rule.space_delimited_claims.iter().cloned())
        .collect();
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: PAYLOAD_KEY.into(),
        normalize_payload_in_metadata: Some(NormalizePayload {
            space_delimited_claims: space_delimited.into_iter().collect(),
        }),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|(header, claim)| JwtClaimToHeader {
                header_name: header.clone(),
                claim_name: claim.clone(),
                ..Default::default()
            })
            .collect(),
        from_headers: rule
            .from_headers
            .iter()
            .map(|(name, prefix)| JwtHeader {
                name: name.clone(),
                value_prefix: prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(Specifier::InlineString(
                rule.keys().unwrap_or(NEVER_VALID_JWKS).to_string(),
            )),
            ..Default::default()
        })),
        clear_route_cache,
        ..Default::default()
    }
}

// === JWKS resolution ===

/// The `jwksUri`s of a model's rules that have no inline keys, with the timeout and the
/// policy that names each (for log lines).
fn wanted_uris(model: &MeshModel) -> BTreeMap<String, (Duration, String)> {
    let mut out = BTreeMap::new();
    for ra in &model.request_authentications {
        for rule in &ra.rules {
            if rule.jwks.is_some() {
                continue;
            }
            if let Some(uri) = &rule.jwks_uri {
                out.entry(uri.clone()).or_insert((
                    rule.timeout.unwrap_or(DEFAULT_TIMEOUT),
                    format!("{}/{}", ra.namespace, ra.name),
                ));
            }
        }
    }
    out
}

/// `model` with the fetched keys written into its rules; `None` when nothing changes.
fn with_keys(model: &MeshModel, keys: &HashMap<String, String>) -> Option<MeshModel> {
    let changes = |r: &JwtRule| {
        r.jwks.is_none()
            && r.jwks_uri
                .as_ref()
                .is_some_and(|u| keys.get(u) != r.fetched_jwks.as_ref())
    };
    let any = model
        .request_authentications
        .iter()
        .flat_map(|ra| &ra.rules)
        .any(changes);
    if !any {
        return None;
    }
    let mut out = model.clone();
    for rule in out
        .request_authentications
        .iter_mut()
        .flat_map(|ra| &mut ra.rules)
    {
        if rule.jwks.is_none()
            && let Some(uri) = &rule.jwks_uri
        {
            rule.fetched_jwks = keys.get(uri).cloned();
        }
    }
    Some(out)
}

/// Fetch one JWKS over HTTP(S) and check it is a key set.
pub async fn fetch_jwks(uri: &str, timeout: Duration) -> Result<String, FetchError> {
    use http_body_util::{BodyExt, Empty, Limited};
    let parsed: http::Uri = uri.parse().map_err(|e| FetchError::Uri(format!("{e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| FetchError::Request(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(https);
    let request = async {
        let resp = client
            .get(parsed)
            .await
            .map_err(|e| FetchError::Request(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| FetchError::Request(e.to_string()))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|e| FetchError::NotJwks(e.to_string()))
    };
    let body = tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| FetchError::Timeout(timeout))??;
    check_jwks(&body)?;
    Ok(body)
}

/// Like istiod, refuse a body that is not a JWKS: it would otherwise be served to proxies.
fn check_jwks(body: &str) -> Result<(), FetchError> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| FetchError::NotJwks(e.to_string()))?;
    match v.get("keys").and_then(|k| k.as_array()) {
        Some(keys) if !keys.is_empty() => Ok(()),
        _ => Err(FetchError::NotJwks("no \"keys\" array".into())),
    }
}

/// Sits between the config source (`raw`) and the ADS server (`publish`): every snapshot is
/// republished with the fetched keys written in, and a change of keys publishes a new
/// snapshot. Versions only grow (the source's version, or one more than the last published).
pub async fn run_resolver(
    mut raw: watch::Receiver<Snapshot>,
    publish: watch::Sender<Snapshot>,
    refresh: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(String, Result<String, FetchError>)>(16);
    let mut keys: HashMap<String, String> = HashMap::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(refresh);
    tick.tick().await;
    let mut retry = tokio::time::interval(RETRY_ON_FAILURE);
    retry.tick().await;
    let mut uris = BTreeMap::new();
    // The first snapshot is already published as the source made it (no keys are known
    // yet): only its URIs are fetched, so a mesh without RequestAuthentication sees exactly
    // the source's snapshots and versions.
    let mut first = true;
    let mut dirty = true;
    let mut raw_seen = None;
    loop {
        if dirty {
            let current = raw.borrow_and_update().clone();
            uris = wanted_uris(&current.model);
            for (uri, (timeout, policy)) in &uris {
                if !keys.contains_key(uri) && !failed.contains(uri) {
                    spawn_fetch(&tx, &mut in_flight, uri, *timeout, policy);
                }
            }
            dirty = false;
            // A config change's pushes join its trace; a key fetch is not a config change.
            let trace = (Some(current.version) != raw_seen)
                .then(|| current.trace.clone())
                .flatten();
            raw_seen = Some(current.version);
            if std::mem::take(&mut first) {
                continue;
            }
            let last = publish.borrow().version;
            let version = current.version.max(last + 1);
            let model = with_keys(&current.model, &keys).map(Arc::new);
            let mut snapshot = Snapshot::new(
                version,
                model.unwrap_or(current.model.clone()),
                current.changed_at,
            );
            snapshot.trace = trace;
            publish.send_replace(snapshot);
        }
        tokio::select! {
            r = raw.changed() => {
                if r.is_err() {
                    return;
                }
                dirty = true;
            }
            Some((uri, result)) = rx.recv() => {
                in_flight.remove(&uri);
                let policy = uris.get(&uri).map(|(_, p)| p.as_str()).unwrap_or("-");
                match result {
                    Ok(jwks) => {
                        failed.remove(&uri);
                        if keys.get(&uri) != Some(&jwks) {
                            info!(uri, policy, "JWKS fetched");
                            keys.insert(uri, jwks);
                            dirty = true;
                        }
                    }
                    Err(e) => {
                        // As istiod: a failed refresh keeps the last keys fetched; with none,
                        // the never-valid set stays and every token is refused.
                        if keys.contains_key(&uri) {
                            warn!(
                                uri, request_authentication = policy, error = %e,
                                "JWKS refresh failed: the last keys fetched stay in use"
                            );
                        } else {
                            warn!(
                                uri, request_authentication = policy, error = %e,
                                "JWKS fetch failed: tokens of this issuer are refused until it succeeds"
                            );
                        }
                        failed.insert(uri);
                    }
                }
            }
            _ = tick.tick() => {
                for (uri, (timeout, policy)) in &uris {
                    spawn_fetch(&tx, &mut in_flight, uri, *timeout, policy);
                }
            }
            _ = retry.tick() => {
                for uri in std::mem::take(&mut failed) {
                    if let Some((timeout, policy)) = uris.get(&uri) {
                        spawn_fetch(&tx, &mut in_flight, &uri, *timeout, policy);
                    }
                }
            }
        }
    }
}

fn spawn_fetch(
    tx: &mpsc::Sender<(String, Result<String, FetchError>)>,
    in_flight: &mut BTreeSet<String>,
    uri: &str,
    timeout: Duration,
    policy: &str,
) {
    if !in_flight.insert(uri.to_string()) {
        return;
    }
    let tx = tx.clone();
    let uri = uri.to_string();
    tracing::debug!(uri, request_authentication = policy, "fetching JWKS");
    tokio::spawn(async move {
        let result = fetch_jwks(&uri, timeout).await;
        let _ = tx.send((uri, result)).await;
    });
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use mast_mesh_config::authn::{AuthnTarget, RequestAuthn};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn rule(issuer: &str) -> JwtRule {
        JwtRule {
            issuer: issuer.into(),
            jwks: Some(r#"{"keys":[]}"#.into()),
            ..Default::default()
        }
    }

    fn requires(c: &JwtAuthentication) -> &JwtRequirement {
        match &c.rules[0].requirement_type {
            Some(RequirementType::Requires(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_rule_is_provider_or_missing() {
        let mut r = rule("iss");
        r.audiences = vec!["aud".into()];
        r.forward_original_token = true;
        r.output_payload_to_header = Some("x-payload".into());
        r.from_headers = vec![("x-jwt".into(), "Bearer ".into())];
        let c = jwt_authentication(&[&r], false).expect("a filter");
        assert!(c.bypass_cors_preflight);
        let p = &c.providers["origins-0"];
        assert_eq!(p.issuer, "iss");
        assert_eq!(p.audiences, ["aud"]);
        assert!(p.forward);
        assert_eq!(p.forward_payload_header, "x-payload");
        assert_eq!(p.payload_in_metadata, "payload");
        assert!(
            !p.clear_route_cache,
            "a sidecar does not choose its route again"
        );
        assert_eq!(p.from_headers[0].value_prefix, "Bearer ");
        assert_eq!(
            p.normalize_payload_in_metadata
                .as_ref()
                .map(|n| n.space_delimited_claims.clone()),
            Some(vec!["permission".to_string(), "scope".to_string()])
        );
        let Some(RequiresType::RequiresAny(or)) = &requires(&c).requires_type else {
            panic!()
        };
        assert_eq!(
            or.requirements
                .iter()
                .map(|r| r.requires_type.clone())
                .collect::<Vec<_>>(),
            [
                Some(RequiresType::ProviderName("origins-0".into())),
                Some(RequiresType::AllowMissing(Empty::default()))
            ]
        );
    }

    #[test]
    fn several_rules_are_any_provider_or_all_missing() {
        let (a, b) = (rule("a"), rule("b"));
        let c = jwt_authentication(&[&a, &b], true).expect("a filter");
        let Some(RequiresType::RequiresAny(or)) = &requires(&c).requires_type else {
            panic!()
        };
        assert_eq!(or.requirements.len(), 3);
        assert!(c.providers.values().all(|p| p.clear_route_cache));
        assert!(matches!(
            &or.requirements[2].requires_type,
            Some(RequiresType::RequiresAll(and)) if and.requirements.len() == 2
        ));
        assert!(jwt_authentication(&[], true).is_none());
    }

    /// istiod's route matcher for `@request.auth.claims.nested.key1`: the payload path, the
    /// value as a string or as any element of a list.
    #[test]
    fn claim_matcher_is_payload_path_string_or_list_element() {
        use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
        let exact = StringMatcher {
            match_pattern: Some(MatchPattern::Exact("valueA".into())),
            ..Default::default()
        };
        let m = claim_matcher(&["nested".into(), "key1".into()], exact.clone(), true);
        assert_eq!(m.filter, JWT_FILTER);
        assert!(m.invert);
        let keys: Vec<_> = m
            .path
            .iter()
            .map(|p| match &p.segment {
                Some(Segment::Key(k)) => k.as_str(),
                None => "",
            })
            .collect();
        assert_eq!(keys, ["payload", "nested", "key1"]);
        let Some(ValuePattern::OrMatch(or)) = m.value.and_then(|v| v.match_pattern) else {
            panic!("not an or_match")
        };
        let string = ValueMatcher {
            match_pattern: Some(ValuePattern::StringMatch(exact)),
        };
        assert_eq!(
            or.value_matchers[0].match_pattern,
            Some(ValuePattern::ListMatch(Box::new(ListMatcher {
                match_pattern: Some(ListPattern::OneOf(Box::new(string.clone()))),
            })))
        );
        assert_eq!(or.value_matchers[1], string);
    }

    #[test]
    fn unfetched_uri_fails_closed() {
        let r = JwtRule {
            issuer: "i".into(),
            jwks_uri: Some("http://127.0.0.1:9/keys".into()),
            ..Default::default()
        };
        let p = provider(&r, false);
        assert_eq!(
            p.jwks_source_specifier,
            Some(JwksSourceSpecifier::LocalJwks(DataSource {
                specifier: Some(Specifier::InlineString(NEVER_VALID_JWKS.into())),
                ..Default::default()
            }))
        );
        check_jwks(NEVER_VALID_JWKS).expect("a key set");
    }

    /// A one-shot HTTP server answering every request with `body`.
    async fn serve(body: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        format!("http://{addr}/keys")
    }

    #[tokio::test]
    async fn resolver_fetches_and_publishes_the_keys() {
        const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}"#;
        let uri = serve(JWKS).await;
        let mut model = MeshModel::default();
        model.request_authentications.push(RequestAuthn {
            name: "ra".into(),
            namespace: "default".into(),
            target: AuthnTarget::All,
            rules: vec![JwtRule {
                issuer: "i".into(),
                jwks_uri: Some(uri),
                ..Default::default()
            }],
            ..Default::default()
        });
        let first = Snapshot::new(3, Arc::new(model), Instant::now());
        let (_raw_tx, raw) = watch::channel(first.clone());
        let (publish, mut published) = watch::channel(first);
        tokio::spawn(run_resolver(raw, publish, DEFAULT_REFRESH));
        let fetched = tokio::time::timeout(
            Duration::from_secs(5),
            published.wait_for(|s| {
                s.model.request_authentications[0].rules[0]
                    .fetched_jwks
                    .is_some()
            }),
        )
        .await
        .expect("keys published in time")
        .expect("resolver running")
        .clone();
        assert_eq!(
            fetched.model.request_authentications[0].rules[0].keys(),
            Some(JWKS)
        );
        assert!(fetched.version > 3, "a new version: {}", fetched.version);
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_jwks_is_refused() {
        let uri = serve("<html>login</html>").await;
        let e = fetch_jwks(&uri, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, FetchError::NotJwks(_)), "{e}");
    }
}
