//! `envoy.filters.http.jwt_authn`: verifies JSON Web Tokens as Envoy does, so Istio's
//! RequestAuthentication holds on mast-proxy as on Envoy.
//!
//! istiod writes one provider per `jwtRules` entry with the keys inlined (`local_jwks`; it
//! fetches `jwksUri` itself) and a requirement that lets a request without a token through
//! (AuthorizationPolicy decides) but refuses a token that fails. The config is compiled once
//! per xDS update; a config mast-proxy cannot honour (remote JWKS, per-route requirements,
//! a filter-state selector) is refused by name so the listener is NACKed, never served
//! half-checked.
//!
//! Verification follows Envoy's order and words: the token is found (configured headers with
//! their prefix, query parameters, cookies; by default `Authorization: Bearer` and
//! `access_token`), parsed, its issuer checked, then `exp`/`nbf` with the clock skew (60 s by
//! default), then the audiences, then the signature against the keys whose `kid` and `alg`
//! fit. RS256/384/512, PS256/384/512, ES256 and ES384 are verified with `ring`. A refusal
//! is Envoy's: 401 (403 for audiences) with jwt_verify_lib's message as the body and
//! `www-authenticate: Bearer realm="<original URI>", error="invalid_token"`.
//!
//! On success the payload is written to the request's dynamic metadata under the filter's
//! name and `payload_in_metadata` (where RBAC reads `iss`, `sub` and claims), the payload is
//! forwarded in `forward_payload_header`, claims are copied to headers, and the token is
//! removed from its header unless `forward` is set. A provider with `clear_route_cache` then
//! has the route chosen again ([`Outcome::ClearRouteCache`]), so routes can match claims.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::JwksSourceSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use http::header::HeaderName;
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Map, Value};

use crate::rbac::DynamicMetadata;
use crate::resources::{At, FieldError, FieldResult};

pub const FILTER: &str = "envoy.filters.http.jwt_authn";
/// Envoy's default `clock_skew_seconds`.
const DEFAULT_CLOCK_SKEW: u64 = 60;
/// Envoy truncates the path of the `www-authenticate` realm to this many bytes.
const MAX_URI_PATH: usize = 256;

/// A compiled `JwtAuthentication`.
#[derive(Debug)]
pub struct JwtAuthn {
    providers: HashMap<String, Provider>,
    rules: Vec<(PathMatch, Requirement)>,
    bypass_cors_preflight: bool,
}

#[derive(Debug)]
struct Provider {
    issuer: String,
    audiences: Vec<String>,
    forward: bool,
    forward_payload_header: Option<HeaderName>,
    payload_in_metadata: Option<String>,
    space_delimited_claims: Vec<String>,
    claim_to_headers: Vec<(HeaderName, String)>,
    locations: Vec<Location>,
    keys: Vec<Jwk>,
    clock_skew: u64,
    clear_route_cache: bool,
}

#[derive(Debug, Clone)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug)]
enum Requirement {
    Provider(String),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    AllowMissing,
    AllowMissingOrFailed,
}

#[derive(Debug)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: PublicKey,
}

#[derive(Debug)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`).
    EcP256(Vec<u8>),
    EcP384(Vec<u8>),
}

/// jwt_verify_lib's statuses mast-proxy can produce; `message` is Envoy's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Missing,
    NotYetValid,
    Expired,
    BadFormat,
    HeaderBadBase64,
    HeaderBadJson,
    HeaderBadAlg,
    HeaderNotImplementedAlg,
    HeaderBadKid,
    PayloadBadBase64,
    PayloadBadJson,
    IssNotString,
    SubNotString,
    IatNotInteger,
    NbfNotInteger,
    ExpNotInteger,
    AudNotString,
    SignatureBadBase64,
    UnknownIssuer,
    AudienceNotAllowed,
    VerificationFail,
    KidAlgMismatch,
}

/// A token one provider verified, and what to do with it.
struct Verified<'p> {
    provider: &'p Provider,
    location: Location,
    payload_segment: String,
    payload: Map<String, Value>,
}

/// What the filter decided for a request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Continue,
    /// Continue, and choose the route again: a provider with `clear_route_cache` verified the
    /// token and wrote its payload to the metadata or a claim to a header (Envoy's rule).
    ClearRouteCache,
    Reject {
        status: StatusCode,
        body: &'static str,
        www_authenticate: String,
    },
}

// === impl Status ===

impl Status {
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "Jwt is missing",
            Self::NotYetValid => "Jwt not yet valid",
            Self::Expired => "Jwt is expired",
            Self::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Self::HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            Self::HeaderBadJson => "Jwt header is an invalid JSON",
            Self::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Self::HeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Self::HeaderBadKid => "Jwt header [kid] field is not a string",
            Self::PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            Self::PayloadBadJson => "Jwt payload is an invalid JSON",
            Self::IssNotString => "Jwt payload [iss] field is not a string",
            Self::SubNotString => "Jwt payload [sub] field is not a string",
            Self::IatNotInteger => "Jwt payload [iat] field is not an integer",
            Self::NbfNotInteger => "Jwt payload [nbf] field is not an integer",
            Self::ExpNotInteger => "Jwt payload [exp] field is not an integer",
            Self::AudNotString => "Jwt payload [aud] field is not a string or string list",
            Self::SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            Self::UnknownIssuer => "Jwt issuer is not configured",
            Self::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Self::VerificationFail => "Jwt verification fails",
            Self::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
        }
    }

    /// Which failure to report when several providers failed: a real verification error
    /// over an issuer that belongs to another provider, over a missing token.
    fn rank(self) -> u8 {
        match self {
            Self::Missing => 0,
            Self::UnknownIssuer => 1,
            _ => 2,
        }
    }
}

// === impl JwtAuthn ===

impl JwtAuthn {
    pub fn from_proto(p: &pb::JwtAuthentication) -> FieldResult<Self> {
        if p.filter_state_rules.is_some() {
            return Err(FieldError::new("filter_state_rules", "not supported"));
        }
        if !p.requirement_map.is_empty() {
            return Err(FieldError::new(
                "requirement_map",
                "per-route requirements are not supported",
            ));
        }
        let mut providers = HashMap::new();
        for (name, provider) in &p.providers {
            providers.insert(
                name.clone(),
                Provider::from_proto(provider).at(format!("providers[{name}]"))?,
            );
        }
        let mut rules = Vec::new();
        for (i, r) in p.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let m = r
                .r#match
                .as_ref()
                .ok_or_else(|| FieldError::new(format!("{at}.match"), "required"))?;
            if !m.headers.is_empty() || !m.query_parameters.is_empty() {
                return Err(FieldError::new(
                    format!("{at}.match"),
                    "header and query matches are not supported",
                ));
            }
            let path = match &m.path_specifier {
                Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
                Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
                _ => {
                    return Err(FieldError::new(
                        format!("{at}.match"),
                        "only prefix and path matches are supported",
                    ));
                }
            };
            let requirement = match &r.requirement_type {
                Some(RequirementType::Requires(req)) => {
                    Requirement::from_proto(req, &providers).at(format!("{at}.requires"))?
                }
                Some(RequirementType::RequirementName(_)) => {
                    return Err(FieldError::new(
                        format!("{at}.requirement_name"),
                        "not supported",
                    ));
                }
                // A rule without a requirement matches and requires nothing.
                None => Requirement::AllowMissingOrFailed,
            };
            rules.push((path, requirement));
        }
        Ok(Self {
            providers,
            rules,
            bypass_cors_preflight: p.bypass_cors_preflight,
        })
    }

    /// Verify `parts` against the first rule its path matches; on success, apply what the
    /// verified providers ask (metadata, headers, token removal).
    pub fn on_request(&self, parts: &mut Parts, metadata: &mut DynamicMetadata) -> Outcome {
        self.on_request_at(parts, metadata, now())
    }

    fn on_request_at(
        &self,
        parts: &mut Parts,
        metadata: &mut DynamicMetadata,
        now: u64,
    ) -> Outcome {
        if self.bypass_cors_preflight && is_cors_preflight(parts) {
            return Outcome::Continue;
        }
        let path = parts.uri.path();
        let Some((_, requirement)) = self.rules.iter().find(|(m, _)| match m {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        }) else {
            return Outcome::Continue;
        };
        let mut results: HashMap<&str, Result<Verified<'_>, Status>> = HashMap::new();
        match self.evaluate(requirement, parts, now, &mut results) {
            Ok(()) => {
                let mut clear_route_cache = false;
                for v in results.into_values().flatten() {
                    clear_route_cache |= v.apply(parts, metadata);
                }
                if clear_route_cache {
                    Outcome::ClearRouteCache
                } else {
                    Outcome::Continue
                }
            }
            Err(status) => Outcome::Reject {
                status: if status == Status::AudienceNotAllowed {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::UNAUTHORIZED
                },
                body: status.message(),
                www_authenticate: www_authenticate(parts, status),
            },
        }
    }

    fn evaluate<'s>(
        &'s self,
        r: &'s Requirement,
        parts: &Parts,
        now: u64,
        results: &mut HashMap<&'s str, Result<Verified<'s>, Status>>,
    ) -> Result<(), Status> {
        match r {
            Requirement::Provider(name) => {
                if !results.contains_key(name.as_str()) {
                    let Some(p) = self.providers.get(name) else {
                        return Err(Status::VerificationFail);
                    };
                    results.insert(name, p.verify(parts, now));
                }
                match results.get(name.as_str()) {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(s)) => Err(*s),
                    None => Err(Status::Missing),
                }
            }
            Requirement::Any(list) => {
                let mut worst: Option<Status> = None;
                for r in list {
                    match self.evaluate(r, parts, now, results) {
                        Ok(()) => return Ok(()),
                        Err(s) => {
                            if worst.is_none_or(|w| s.rank() > w.rank()) {
                                worst = Some(s);
                            }
                        }
                    }
                }
                Err(worst.unwrap_or(Status::Missing))
            }
            Requirement::All(list) => list
                .iter()
                .try_for_each(|r| self.evaluate(r, parts, now, results)),
            Requirement::AllowMissing => {
                let any_token = self.providers.values().any(|p| p.extract(parts).is_some());
                if any_token {
                    Err(Status::Missing)
                } else {
                    Ok(())
                }
            }
            Requirement::AllowMissingOrFailed => Ok(()),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_cors_preflight(parts: &Parts) -> bool {
    parts.method == http::Method::OPTIONS
        && parts
            .headers
            .get(http::header::ORIGIN)
            .is_some_and(|v| !v.is_empty())
        && parts
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|v| !v.is_empty())
}

/// Envoy's `Bearer realm="<x-forwarded-proto>://<host><path>"`, with the error unless the
/// token was missing.
fn www_authenticate(parts: &Parts, status: Status) -> String {
    let scheme = parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http");
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut end = path.len().min(MAX_URI_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let mut value = format!("Bearer realm=\"{scheme}://{host}{}\"", &path[..end]);
    if status != Status::Missing {
        value.push_str(", error=\"invalid_token\"");
    }
    value
}

// === impl Requirement ===

impl Requirement {
    fn from_proto(
        r: &pb::JwtRequirement,
        providers: &HashMap<String, Provider>,
    ) -> FieldResult<Self> {
        let list = |reqs: &[pb::JwtRequirement], field: &str| {
            reqs.iter()
                .enumerate()
                .map(|(i, r)| {
                    Self::from_proto(r, providers).at(format!("{field}.requirements[{i}]"))
                })
                .collect::<FieldResult<Vec<_>>>()
        };
        Ok(match &r.requires_type {
            Some(RequiresType::ProviderName(name)) => {
                if !providers.contains_key(name) {
                    return Err(FieldError::new(
                        "provider_name",
                        format!("{name:?} is not a provider"),
                    ));
                }
                Self::Provider(name.clone())
            }
            Some(RequiresType::ProviderAndAudiences(_)) => {
                return Err(FieldError::new("provider_and_audiences", "not supported"));
            }
            Some(RequiresType::RequiresAny(l)) => Self::Any(list(&l.requirements, "requires_any")?),
            Some(RequiresType::RequiresAll(l)) => Self::All(list(&l.requirements, "requires_all")?),
            Some(RequiresType::AllowMissingOrFailed(_)) => Self::AllowMissingOrFailed,
            Some(RequiresType::AllowMissing(_)) => Self::AllowMissing,
            Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
                return Err(FieldError::new(
                    "extract_only_without_validation",
                    "not supported",
                ));
            }
            None => Self::AllowMissingOrFailed,
        })
    }
}

// === impl Provider ===

impl Provider {
    fn from_proto(p: &pb::JwtProvider) -> FieldResult<Self> {
        let keys = match &p.jwks_source_specifier {
            Some(JwksSourceSpecifier::LocalJwks(ds)) => match &ds.specifier {
                Some(Specifier::InlineString(s)) => parse_jwks(s.as_bytes()),
                Some(Specifier::InlineBytes(b)) => parse_jwks(b),
                _ => {
                    return Err(FieldError::new(
                        "local_jwks",
                        "only inline_string and inline_bytes are supported",
                    ));
                }
            },
            Some(JwksSourceSpecifier::RemoteJwks(_)) => {
                return Err(FieldError::new(
                    "remote_jwks",
                    "not supported: keys must be inlined as local_jwks (pilot fetches jwksUri)",
                ));
            }
            None => return Err(FieldError::new("jwks_source_specifier", "required")),
        };
        if keys.is_empty() {
            // As Envoy: an unusable key set is logged and every token then fails.
            tracing::warn!(issuer = %p.issuer, "JWKS has no usable key: tokens will be refused");
        }
        let header = |name: &str, field: &str| {
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| FieldError::new(field, format!("{name:?} is not a header name")))
        };
        let mut locations = Vec::new();
        for (i, h) in p.from_headers.iter().enumerate() {
            locations.push(Location::Header {
                name: header(&h.name, &format!("from_headers[{i}].name"))?,
                prefix: h.value_prefix.clone(),
            });
        }
        locations.extend(p.from_params.iter().cloned().map(Location::Param));
        locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
        if locations.is_empty() {
            locations = vec![
                Location::Header {
                    name: http::header::AUTHORIZATION,
                    prefix: "Bearer ".into(),
                },
                Location::Param("access_token".into()),
            ];
        }
        let claim_to_headers = p
            .claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok((
                    header(
                        &c.header_name,
                        &format!("claim_to_headers[{i}].header_name"),
                    )?,
                    c.claim_name.clone(),
                ))
            })
            .collect::<FieldResult<Vec<_>>>()?;
        Ok(Self {
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            forward: p.forward,
            forward_payload_header: (!p.forward_payload_header.is_empty())
                .then(|| header(&p.forward_payload_header, "forward_payload_header"))
                .transpose()?,
            payload_in_metadata: (!p.payload_in_metadata.is_empty())
                .then(|| p.payload_in_metadata.clone()),
            space_delimited_claims: p
                .normalize_payload_in_metadata
                .as_ref()
                .map(|n| n.space_delimited_claims.clone())
                .unwrap_or_default(),
            claim_to_headers,
            locations,
            keys,
            clock_skew: if p.clock_skew_seconds == 0 {
                DEFAULT_CLOCK_SKEW
            } else {
                u64::from(p.clock_skew_seconds)
            },
            clear_route_cache: p.clear_route_cache,
        })
    }

    /// The first token in this provider's locations, and where it was.
    fn extract(&self, parts: &Parts) -> Option<(String, Location)> {
        for loc in &self.locations {
            let token = match loc {
                Location::Header { name, prefix } => {
                    parts.headers.get_all(name).iter().find_map(|v| {
                        let v = v.to_str().ok()?;
                        let rest = if prefix.is_empty() {
                            v
                        } else if v.len() >= prefix.len()
                            && v.is_char_boundary(prefix.len())
                            && v[..prefix.len()].eq_ignore_ascii_case(prefix)
                        {
                            &v[prefix.len()..]
                        } else {
                            return None;
                        };
                        let token: String = rest
                            .trim_start()
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != ',')
                            .collect();
                        (!token.is_empty()).then_some(token)
                    })
                }
                Location::Param(name) => parts.uri.query().and_then(|q| {
                    q.split('&').find_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == name && !v.is_empty()).then(|| v.to_string())
                    })
                }),
                Location::Cookie(name) => parts
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| {
                        let (k, v) = c.trim().split_once('=')?;
                        (k == name && !v.is_empty()).then(|| v.to_string())
                    }),
            };
            if let Some(t) = token {
                return Some((t, loc.clone()));
            }
        }
        None
    }

    fn verify(&self, parts: &Parts, now: u64) -> Result<Verified<'_>, Status> {
        let (token, location) = self.extract(parts).ok_or(Status::Missing)?;
        let jwt = Jwt::parse(&token)?;
        if !self.issuer.is_empty() && jwt.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(Status::UnknownIssuer);
        }
        if let Some(nbf) = jwt.nbf
            && now.saturating_add(self.clock_skew) < nbf
        {
            return Err(Status::NotYetValid);
        }
        if let Some(exp) = jwt.exp
            && now > exp.saturating_add(self.clock_skew)
        {
            return Err(Status::Expired);
        }
        if !self.audiences.is_empty() && !jwt.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(Status::AudienceNotAllowed);
        }
        self.check_signature(&jwt)?;
        Ok(Verified {
            provider: self,
            location,
            payload_segment: jwt.payload_segment,
            payload: jwt.payload,
        })
    }

    /// Envoy's key selection: a key whose `kid` (when both have one) and `alg` (when the
    /// key names one) fit the token, of the type the algorithm needs; any that verifies.
    fn check_signature(&self, jwt: &Jwt) -> Result<(), Status> {
        let mut candidates = 0;
        for k in &self.keys {
            if let (Some(want), Some(have)) = (&jwt.kid, &k.kid)
                && want != have
            {
                continue;
            }
            if k.alg.as_ref().is_some_and(|a| *a != jwt.alg) {
                continue;
            }
            let ok = match (&k.key, jwt.alg.as_str()) {
                (PublicKey::Rsa { n, e }, alg) => {
                    let params: &'static signature::RsaParameters = match alg {
                        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                        "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                        "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                        "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                        "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                        _ => continue,
                    };
                    candidates += 1;
                    RsaPublicKeyComponents { n, e }
                        .verify(params, jwt.signed.as_bytes(), &jwt.signature)
                        .is_ok()
                }
                (PublicKey::EcP256(point), "ES256") => {
                    candidates += 1;
                    verify_with(&signature::ECDSA_P256_SHA256_FIXED, point, jwt)
                }
                (PublicKey::EcP384(point), "ES384") => {
                    candidates += 1;
                    verify_with(&signature::ECDSA_P384_SHA384_FIXED, point, jwt)
                }
                _ => continue,
            };
            if ok {
                return Ok(());
            }
        }
        Err(if candidates == 0 {
            Status::KidAlgMismatch
        } else {
            Status::VerificationFail
        })
    }
}

fn verify_with(alg: &'static dyn VerificationAlgorithm, key: &[u8], jwt: &Jwt) -> bool {
    UnparsedPublicKey::new(alg, key)
        .verify(jwt.signed.as_bytes(), &jwt.signature)
        .is_ok()
}

// === impl Verified ===

impl Verified<'_> {
    /// Apply what the provider asks; whether the route cache is to be cleared (the provider
    /// says so, and the payload went to the metadata or a claim to a header).
    fn apply(self, parts: &mut Parts, metadata: &mut DynamicMetadata) -> bool {
        let p = self.provider;
        let mut header_added = false;
        if !p.forward
            && let Location::Header { name, .. } = &self.location
        {
            parts.headers.remove(name);
        }
        if let Some(h) = &p.forward_payload_header
            && let Ok(v) = HeaderValue::from_str(&self.payload_segment)
        {
            parts.headers.insert(h.clone(), v);
        }
        for (header, claim) in &p.claim_to_headers {
            let value = match self.payload.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => continue,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                parts.headers.insert(header.clone(), v);
                header_added = true;
            }
        }
        let clear_route_cache =
            p.clear_route_cache && (header_added || p.payload_in_metadata.is_some());
        if let Some(key) = &p.payload_in_metadata {
            let mut payload = self.payload;
            for claim in &p.space_delimited_claims {
                if let Some(Value::String(s)) = payload.get(claim) {
                    let list = s
                        .split(' ')
                        .filter(|x| !x.is_empty())
                        .map(|x| Value::String(x.to_string()))
                        .collect();
                    payload.insert(claim.clone(), Value::Array(list));
                }
            }
            let entry = metadata
                .entry(FILTER.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = entry {
                m.insert(key.clone(), Value::Object(payload));
            }
        }
        clear_route_cache
    }
}

// === JWT and JWKS parsing ===

struct Jwt {
    alg: String,
    kid: Option<String>,
    iss: Option<String>,
    aud: Vec<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    payload_segment: String,
    payload: Map<String, Value>,
    /// `header.payload`, what the signature covers.
    signed: String,
    signature: Vec<u8>,
}

impl Jwt {
    fn parse(token: &str) -> Result<Self, Status> {
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, s] = parts[..] else {
            return Err(Status::BadFormat);
        };
        let decode = |seg: &str| URL_SAFE_NO_PAD.decode(seg.trim_end_matches('='));
        let header = decode(h).map_err(|_| Status::HeaderBadBase64)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|_| Status::HeaderBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(Status::HeaderBadAlg),
        };
        if !matches!(
            alg.as_str(),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384"
        ) {
            return Err(Status::HeaderNotImplementedAlg);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(Status::HeaderBadKid),
        };
        let payload = decode(p).map_err(|_| Status::PayloadBadBase64)?;
        let payload: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| Status::PayloadBadJson)?;
        let string = |k: &str, err| match payload.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err),
        };
        let int = |k: &str, err| match payload.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(err),
            Some(_) => Err(err),
        };
        let iss = string("iss", Status::IssNotString)?;
        string("sub", Status::SubNotString)?;
        int("iat", Status::IatNotInteger)?;
        let nbf = int("nbf", Status::NbfNotInteger)?;
        let exp = int("exp", Status::ExpNotInteger)?;
        let aud = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().map(String::from).ok_or(Status::AudNotString))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(Status::AudNotString),
        };
        let signature = decode(s).map_err(|_| Status::SignatureBadBase64)?;
        if signature.is_empty() {
            return Err(Status::BadFormat);
        }
        Ok(Self {
            alg,
            kid,
            iss,
            aud,
            exp,
            nbf,
            payload_segment: p.to_string(),
            payload,
            signed: format!("{h}.{p}"),
            signature,
        })
    }
}

/// The usable keys of a JWKS; keys of other types or with bad fields are skipped.
fn parse_jwks(raw: &[u8]) -> Vec<Jwk> {
    let Ok(v) = serde_json::from_slice::<Value>(raw) else {
        return Vec::new();
    };
    let Some(keys) = v.get("keys").and_then(Value::as_array) else {
        return Vec::new();
    };
    keys.iter().filter_map(parse_jwk).collect()
}

fn parse_jwk(k: &Value) -> Option<Jwk> {
    let field = |name: &str| k.get(name).and_then(Value::as_str);
    let b64 =
        |name: &str| field(name).and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok());
    let key = match field("kty")? {
        "RSA" => {
            let n = b64("n")?;
            let first = n.iter().position(|b| *b != 0)?;
            PublicKey::Rsa {
                n: n[first..].to_vec(),
                e: b64("e")?,
            }
        }
        "EC" => {
            let (x, y) = (b64("x")?, b64("y")?);
            let len = match field("crv")? {
                "P-256" => 32,
                "P-384" => 48,
                _ => return None,
            };
            if x.len() > len || y.len() > len {
                return None;
            }
            let mut point = vec![4u8];
            for c in [&x, &y] {
                point.extend(std::iter::repeat_n(0, len - c.len()));
                point.extend_from_slice(c);
            }
            if len == 32 {
                PublicKey::EcP256(point)
            } else {
                PublicKey::EcP384(point)
            }
        }
        _ => return None,
    };
    Some(Jwk {
        kid: field("kid").map(String::from),
        alg: field("alg").map(String::from),
        key,
    })
}

#[cfg(test)]
mod tests;
