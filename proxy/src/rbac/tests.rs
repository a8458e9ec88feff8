// Istio writes the deprecated forms (`metadata`, `safe_regex_match`, …); they are tested.
#![allow(deprecated)]

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{Policy, permission, principal};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as H;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::{Int32Range, Int64Range};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use super::*;

// --- proto builders ---

fn perm(rule: Rule) -> rbac::Permission {
    rbac::Permission { rule: Some(rule) }
}

fn prin(id: Identifier) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(id),
    }
}

fn any_prin() -> rbac::Principal {
    prin(Identifier::Any(true))
}

fn any_perm() -> rbac::Permission {
    perm(Rule::Any(true))
}

fn sm(p: MatchPattern) -> StringMatcher {
    StringMatcher {
        ignore_case: false,
        match_pattern: Some(p),
    }
}

fn exact(s: &str) -> StringMatcher {
    sm(MatchPattern::Exact(s.into()))
}

fn re(s: &str) -> MatchPattern {
    MatchPattern::SafeRegex(RegexMatcher {
        regex: s.into(),
        ..Default::default()
    })
}

fn header(name: &str, spec: H, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn cidr(ip: &str, len: u32) -> CidrRange {
    CidrRange {
        address_prefix: ip.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

fn url_path(m: StringMatcher) -> PathMatcher {
    PathMatcher {
        rule: Some(path_matcher::Rule::Path(m)),
    }
}

fn engine(
    action: rbac::rbac::Action,
    policies: Vec<(&str, Vec<rbac::Permission>, Vec<rbac::Principal>)>,
) -> rbac::Rbac {
    rbac::Rbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(n, permissions, principals)| {
                (
                    n.to_string(),
                    Policy {
                        permissions,
                        principals,
                        ..Default::default()
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn http_rbac(rules: Option<rbac::Rbac>, shadow: Option<rbac::Rbac>) -> Rbac {
    Rbac::from_http_proto(&HttpRbac {
        rules,
        shadow_rules: shadow,
        ..Default::default()
    })
    .unwrap()
}

/// An ALLOW filter with one policy of this permission and any principal.
fn allow_perm(p: rbac::Permission) -> Rbac {
    http_rbac(
        Some(engine(
            rbac::rbac::Action::Allow,
            vec![("p", vec![p], vec![any_prin()])],
        )),
        None,
    )
}

/// An ALLOW filter with one policy of any permission and this principal.
fn allow_prin(p: rbac::Principal) -> Rbac {
    http_rbac(
        Some(engine(
            rbac::rbac::Action::Allow,
            vec![("p", vec![any_perm()], vec![p])],
        )),
        None,
    )
}

// --- requests ---

struct Req {
    headers: http::HeaderMap,
    method: &'static str,
    path: &'static str,
    full_path: &'static str,
    authority: &'static str,
    source: SocketAddr,
    destination: SocketAddr,
    principal: Option<&'static str>,
    sni: Option<&'static str>,
}

impl Req {
    fn new() -> Self {
        Self {
            headers: http::HeaderMap::new(),
            method: "GET",
            path: "/api/v1/items",
            full_path: "/api/v1/items?x=1",
            authority: "Reviews.default.svc:9080",
            source: "10.1.2.3:40000".parse().unwrap(),
            destination: "10.9.8.7:9080".parse().unwrap(),
            principal: Some("spiffe://cluster.local/ns/default/sa/sleep"),
            sni: None,
        }
    }

    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.append(k, http::HeaderValue::from_static(v));
        self
    }

    fn attrs(&self) -> Attrs<'_> {
        Attrs {
            headers: Some(&self.headers),
            method: Some(self.method),
            path: Some(self.path),
            full_path: Some(self.full_path),
            authority: Some(self.authority),
            source: self.source,
            remote_ip: self.source.ip(),
            destination: self.destination,
            principal: self.principal,
            sni: self.sni,
            metadata: None,
        }
    }
}

fn allows(r: &Rbac, req: &Req) -> bool {
    r.evaluate(&req.attrs()) == Decision::Allow
}

// --- engine semantics ---

#[test]
fn allow_needs_a_matching_policy_and_empty_allow_denies_all() {
    let r = allow_perm(perm(Rule::DestinationPort(9080)));
    assert!(allows(&r, &Req::new()));
    let r = allow_perm(perm(Rule::DestinationPort(80)));
    assert_eq!(
        r.evaluate(&Req::new().attrs()),
        Decision::Deny { policy: None }
    );
    let empty = http_rbac(Some(engine(rbac::rbac::Action::Allow, vec![])), None);
    assert!(!allows(&empty, &Req::new()));
}

#[test]
fn deny_names_the_first_matching_policy_in_name_order() {
    let r = http_rbac(
        Some(engine(
            rbac::rbac::Action::Deny,
            vec![
                ("z-policy", vec![any_perm()], vec![any_prin()]),
                ("a-policy", vec![any_perm()], vec![any_prin()]),
                (
                    "m-never",
                    vec![perm(Rule::DestinationPort(1))],
                    vec![any_prin()],
                ),
            ],
        )),
        None,
    );
    assert_eq!(
        r.evaluate(&Req::new().attrs()),
        Decision::Deny {
            policy: Some("a-policy".into())
        }
    );
    let none = http_rbac(
        Some(engine(
            rbac::rbac::Action::Deny,
            vec![(
                "m-never",
                vec![perm(Rule::DestinationPort(1))],
                vec![any_prin()],
            )],
        )),
        None,
    );
    assert!(allows(&none, &Req::new()));
    let empty = http_rbac(Some(engine(rbac::rbac::Action::Deny, vec![])), None);
    assert!(allows(&empty, &Req::new()));
}

#[test]
fn log_never_denies_and_absent_rules_enforce_nothing() {
    let r = http_rbac(
        Some(engine(
            rbac::rbac::Action::Log,
            vec![("p", vec![any_perm()], vec![any_prin()])],
        )),
        None,
    );
    assert!(allows(&r, &Req::new()));
    assert!(allows(&http_rbac(None, None), &Req::new()));
}

#[test]
fn shadow_rules_are_never_enforced() {
    let deny_all = engine(
        rbac::rbac::Action::Deny,
        vec![("dry", vec![any_perm()], vec![any_prin()])],
    );
    assert!(allows(
        &http_rbac(None, Some(deny_all.clone())),
        &Req::new()
    ));
    let allow_none = engine(rbac::rbac::Action::Allow, vec![]);
    assert!(allows(&http_rbac(None, Some(allow_none)), &Req::new()));
    // Enforced rules still apply next to shadow ones.
    assert!(!allows(
        &http_rbac(Some(deny_all.clone()), Some(deny_all)),
        &Req::new()
    ));
}

#[test]
fn policy_needs_a_permission_and_a_principal() {
    let r = http_rbac(
        Some(engine(
            rbac::rbac::Action::Allow,
            vec![(
                "p",
                vec![
                    perm(Rule::DestinationPort(1)),
                    perm(Rule::DestinationPort(9080)),
                ],
                vec![
                    prin(Identifier::DirectRemoteIp(cidr("192.168.0.0", 16))),
                    prin(Identifier::DirectRemoteIp(cidr("10.0.0.0", 8))),
                ],
            )],
        )),
        None,
    );
    assert!(allows(&r, &Req::new()));
    let no_principal = http_rbac(
        Some(engine(
            rbac::rbac::Action::Allow,
            vec![("p", vec![any_perm()], vec![])],
        )),
        None,
    );
    assert!(!allows(&no_principal, &Req::new()));
}

#[test]
fn filters_in_sequence_stop_at_the_first_denial() {
    let deny_sleep = Arc::new(http_rbac(
        Some(engine(
            rbac::rbac::Action::Deny,
            vec![(
                "deny-sleep",
                vec![any_perm()],
                vec![prin(Identifier::Authenticated(principal::Authenticated {
                    principal_name: Some(sm(MatchPattern::Suffix("/sa/sleep".into()))),
                }))],
            )],
        )),
        None,
    ));
    let allow_get = Arc::new(allow_perm(perm(Rule::Header(header(
        ":method",
        H::StringMatch(exact("GET")),
        false,
    )))));
    let filters = [deny_sleep, allow_get];
    assert_eq!(
        check(&filters, &Req::new().attrs()),
        Decision::Deny {
            policy: Some("deny-sleep".into())
        }
    );
    let mut other = Req::new();
    other.principal = Some("spiffe://cluster.local/ns/default/sa/productpage");
    assert_eq!(check(&filters, &other.attrs()), Decision::Allow);
    other.method = "POST";
    assert_eq!(
        check(&filters, &other.attrs()),
        Decision::Deny { policy: None }
    );
    assert_eq!(check(&[], &other.attrs()), Decision::Allow);
    assert!(!allow_connection(&filters, &Req::new().attrs()));
}

// --- permissions ---

#[test]
fn permission_sets() {
    let port = |p| perm(Rule::DestinationPort(p));
    let set = |rules| permission::Set { rules };
    assert!(allows(
        &allow_perm(perm(Rule::AndRules(set(vec![port(9080), any_perm()])))),
        &Req::new()
    ));
    assert!(!allows(
        &allow_perm(perm(Rule::AndRules(set(vec![port(9080), port(1)])))),
        &Req::new()
    ));
    assert!(allows(
        &allow_perm(perm(Rule::OrRules(set(vec![port(1), port(9080)])))),
        &Req::new()
    ));
    assert!(!allows(
        &allow_perm(perm(Rule::OrRules(set(vec![])))),
        &Req::new()
    ));
    assert!(allows(
        &allow_perm(perm(Rule::NotRule(Box::new(port(1))))),
        &Req::new()
    ));
    assert!(!allows(
        &allow_perm(perm(Rule::NotRule(Box::new(any_perm())))),
        &Req::new()
    ));
}

#[test]
fn header_matchers() {
    let ok = |h: HeaderMatcher, req: &Req| allows(&allow_perm(perm(Rule::Header(h))), req);
    let req = Req::new()
        .header("x-user", "Alice")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .header("x-n", "42");
    let ic = |p| StringMatcher {
        ignore_case: true,
        match_pattern: Some(p),
    };
    assert!(ok(
        header("x-user", H::StringMatch(exact("Alice")), false),
        &req
    ));
    assert!(!ok(
        header("x-user", H::StringMatch(exact("alice")), false),
        &req
    ));
    assert!(ok(
        header(
            "x-user",
            H::StringMatch(ic(MatchPattern::Exact("alice".into()))),
            false
        ),
        &req
    ));
    assert!(ok(
        header(
            "X-User",
            H::StringMatch(ic(MatchPattern::Prefix("AL".into()))),
            false
        ),
        &req
    ));
    assert!(ok(
        header(
            "x-user",
            H::StringMatch(sm(MatchPattern::Suffix("ice".into()))),
            false
        ),
        &req
    ));
    assert!(ok(
        header(
            "x-user",
            H::StringMatch(ic(MatchPattern::Contains("LIC".into()))),
            false
        ),
        &req
    ));
    assert!(!ok(
        header(
            "x-user",
            H::StringMatch(sm(MatchPattern::Contains("LIC".into()))),
            false
        ),
        &req
    ));
    assert!(ok(
        header("x-user", H::StringMatch(sm(re("A.*e"))), false),
        &req
    ));
    // Full match, not search.
    assert!(!ok(
        header("x-user", H::StringMatch(sm(re("lic"))), false),
        &req
    ));
    assert!(ok(
        header(
            "x-user",
            H::SafeRegexMatch(RegexMatcher {
                regex: "[A-Z]lice".into(),
                ..Default::default()
            }),
            false
        ),
        &req
    ));
    #[allow(deprecated)]
    {
        assert!(ok(
            header("x-user", H::ExactMatch("Alice".into()), false),
            &req
        ));
        assert!(ok(
            header("x-user", H::PrefixMatch("Al".into()), false),
            &req
        ));
        assert!(ok(
            header("x-user", H::SuffixMatch("ce".into()), false),
            &req
        ));
        assert!(ok(
            header("x-user", H::ContainsMatch("lic".into()), false),
            &req
        ));
    }
    // Several values: any one of them matching is a match (Envoy 1.40), not their join.
    assert!(ok(
        header("x-multi", H::StringMatch(exact("b")), false),
        &req
    ));
    assert!(!ok(
        header("x-multi", H::StringMatch(exact("a,b")), false),
        &req
    ));
    assert!(ok(
        header(
            "x-n",
            H::RangeMatch(Int64Range { start: 40, end: 43 }),
            false
        ),
        &req
    ));
    assert!(!ok(
        header(
            "x-n",
            H::RangeMatch(Int64Range { start: 40, end: 42 }),
            false
        ),
        &req
    ));
    // Presence and inversion, with Envoy's rules for absent headers.
    assert!(ok(header("x-user", H::PresentMatch(true), false), &req));
    assert!(!ok(header("x-none", H::PresentMatch(true), false), &req));
    assert!(ok(header("x-none", H::PresentMatch(false), false), &req));
    assert!(ok(header("x-none", H::PresentMatch(true), true), &req));
    assert!(!ok(header("x-user", H::PresentMatch(true), true), &req));
    assert!(ok(
        header("x-user", H::StringMatch(exact("Bob")), true),
        &req
    ));
    assert!(!ok(
        header("x-user", H::StringMatch(exact("Alice")), true),
        &req
    ));
    // An absent header never matches a value, inverted or not.
    assert!(!ok(
        header("x-none", H::StringMatch(exact("Bob")), true),
        &req
    ));
    let mut missing_as_empty = header("x-none", H::StringMatch(exact("")), false);
    missing_as_empty.treat_missing_header_as_empty = true;
    assert!(ok(missing_as_empty, &req));
}

#[test]
fn pseudo_headers_map_to_request_fields() {
    let ok = |h: HeaderMatcher| allows(&allow_perm(perm(Rule::Header(h))), &Req::new());
    assert!(ok(header(":method", H::StringMatch(exact("GET")), false)));
    assert!(!ok(header(":method", H::StringMatch(exact("POST")), false)));
    assert!(ok(header(
        ":authority",
        H::StringMatch(StringMatcher {
            ignore_case: true,
            match_pattern: Some(MatchPattern::Prefix("reviews.".into())),
        }),
        false
    )));
    // `:path` is the path as sent, with its query.
    assert!(ok(header(
        ":path",
        H::StringMatch(exact("/api/v1/items?x=1")),
        false
    )));
    // Envoy always sets `:scheme`: from x-forwarded-proto, else the connection (an mTLS
    // peer means TLS). `host` reads `:authority`, as in Envoy's header map.
    assert!(ok(header(":scheme", H::StringMatch(exact("https")), false)));
    assert!(ok(header(
        "host",
        H::StringMatch(exact("Reviews.default.svc:9080")),
        false
    )));
    let plain = Req {
        principal: None,
        ..Req::new()
    };
    let scheme_http = allow_perm(perm(Rule::Header(header(
        ":scheme",
        H::StringMatch(exact("http")),
        false,
    ))));
    assert!(allows(&scheme_http, &plain));
    assert!(!allows(
        &scheme_http,
        &plain.header("x-forwarded-proto", "https")
    ));
}

#[test]
fn deprecated_exact_match_empty_matches_any_value() {
    #[allow(deprecated)]
    let any = allow_perm(perm(Rule::Header(header(
        "x-user",
        H::ExactMatch(String::new()),
        false,
    ))));
    assert!(allows(&any, &Req::new().header("x-user", "Alice")));
    assert!(!allows(&any, &Req::new()));
}

#[test]
fn url_path_and_uri_template() {
    let path = |m| allow_perm(perm(Rule::UrlPath(url_path(m))));
    let req = Req::new();
    assert!(allows(&path(exact("/api/v1/items")), &req));
    // The query is not part of url_path.
    assert!(!allows(&path(exact("/api/v1/items?x=1")), &req));
    assert!(allows(
        &path(sm(MatchPattern::Prefix("/api/".into()))),
        &req
    ));
    assert!(allows(
        &path(sm(MatchPattern::Suffix("/items".into()))),
        &req
    ));
    assert!(allows(&path(sm(re("/api/v[0-9]+/.*"))), &req));
    assert!(!allows(&path(sm(re("/v1"))), &req));

    let tpl = |t: &str| {
        allow_perm(perm(Rule::UriTemplate(TypedExtensionConfig {
            name: "uri-template".into(),
            typed_config: Some(pack_any(UriTemplateMatchConfig {
                path_template: t.into(),
            })),
        })))
    };
    assert!(allows(&tpl("/api/*/items"), &req));
    assert!(allows(&tpl("/api/{version}/items"), &req));
    assert!(allows(&tpl("/api/**"), &req));
    assert!(allows(&tpl("/**/items"), &req));
    assert!(allows(&tpl("/{rest=**}"), &req));
    assert!(!allows(&tpl("/api/*"), &req));
    assert!(!allows(&tpl("/other/**"), &req));
    let bad = HttpRbac {
        rules: Some(engine(
            rbac::rbac::Action::Allow,
            vec![(
                "p",
                vec![perm(Rule::UriTemplate(TypedExtensionConfig {
                    name: "uri-template".into(),
                    typed_config: Some(pack_any(UriTemplateMatchConfig {
                        path_template: "/a/{x".into(),
                    })),
                }))],
                vec![any_prin()],
            )],
        )),
        ..Default::default()
    };
    let err = Rbac::from_http_proto(&bad).unwrap_err();
    assert_eq!(
        err.field,
        "rules.policies[\"p\"].permissions[0].uri_template.typed_config.path_template"
    );
}

#[test]
fn destination_ip_ports_and_sni() {
    let req = Req::new();
    let ok = |p| allows(&allow_perm(perm(p)), &req);
    assert!(ok(Rule::DestinationIp(cidr("10.9.0.0", 16))));
    assert!(ok(Rule::DestinationIp(cidr("10.9.8.7", 32))));
    assert!(!ok(Rule::DestinationIp(cidr("10.8.0.0", 16))));
    assert!(ok(Rule::DestinationIp(cidr("0.0.0.0", 0))));
    assert!(!ok(Rule::DestinationIp(cidr("::", 0))));
    assert!(ok(Rule::DestinationPort(9080)));
    assert!(ok(Rule::DestinationPortRange(Int32Range {
        start: 9000,
        end: 9081
    })));
    assert!(!ok(Rule::DestinationPortRange(Int32Range {
        start: 9000,
        end: 9080
    })));
    // No SNI is the empty name.
    assert!(!ok(Rule::RequestedServerName(sm(re(".+")))));
    assert!(ok(Rule::RequestedServerName(exact(""))));
    let mut tls = Req::new();
    tls.sni = Some("outbound_.9080_._.reviews.default.svc.cluster.local");
    assert!(allows(
        &allow_perm(perm(Rule::RequestedServerName(sm(MatchPattern::Suffix(
            ".svc.cluster.local".into()
        ))))),
        &tls
    ));
}

/// Istio's `requestPrincipals: ["*"]`: `iss` and `sub` present in the JWT payload.
fn jwt_principal() -> rbac::Principal {
    use envoy_types::pb::envoy::r#type::matcher::v3 as m;
    let claim = |c: &str| {
        prin(Identifier::Metadata(m::MetadataMatcher {
            filter: "envoy.filters.http.jwt_authn".into(),
            path: ["payload", c]
                .iter()
                .map(|k| m::metadata_matcher::PathSegment {
                    segment: Some(m::metadata_matcher::path_segment::Segment::Key(
                        k.to_string(),
                    )),
                })
                .collect(),
            value: Some(m::ValueMatcher {
                match_pattern: Some(m::value_matcher::MatchPattern::StringMatch(
                    m::StringMatcher {
                        match_pattern: Some(m::string_matcher::MatchPattern::SafeRegex(
                            m::RegexMatcher {
                                regex: ".+".into(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    },
                )),
            }),
            invert: false,
        }))
    };
    prin(Identifier::AndIds(principal::Set {
        ids: vec![claim("iss"), claim("sub")],
    }))
}

#[test]
fn metadata_reads_the_jwt_payload() {
    let r = allow_prin(jwt_principal());
    let req = Req::new();
    assert!(
        !r.evaluate(&req.attrs()).eq(&Decision::Allow),
        "no metadata"
    );
    let md: crate::rbac::DynamicMetadata = serde_json::from_str(
        r#"{"envoy.filters.http.jwt_authn":{"payload":{"iss":"i","sub":"s"}}}"#,
    )
    .unwrap();
    let attrs = Attrs {
        metadata: Some(&md),
        ..req.attrs()
    };
    assert_eq!(r.evaluate(&attrs), Decision::Allow);
    let not = allow_prin(prin(Identifier::NotId(Box::new(jwt_principal()))));
    assert!(allows(&not, &req));
    // A matcher without a path is refused, not silently never-matching.
    let empty = prin(Identifier::Metadata(Default::default()));
    let proto = HttpRbac {
        rules: Some(engine(
            rbac::rbac::Action::Allow,
            vec![("p", vec![any_perm()], vec![empty])],
        )),
        ..Default::default()
    };
    assert!(Rbac::from_http_proto(&proto).is_err());
}

// --- principals ---

#[test]
fn principal_sets() {
    let ip = |c: &str, l| prin(Identifier::DirectRemoteIp(cidr(c, l)));
    let set = |ids| principal::Set { ids };
    let req = Req::new();
    assert!(allows(
        &allow_prin(prin(Identifier::AndIds(set(vec![
            ip("10.0.0.0", 8),
            any_prin()
        ])))),
        &req
    ));
    assert!(!allows(
        &allow_prin(prin(Identifier::AndIds(set(vec![
            ip("10.0.0.0", 8),
            ip("11.0.0.0", 8)
        ])))),
        &req
    ));
    assert!(allows(
        &allow_prin(prin(Identifier::OrIds(set(vec![
            ip("11.0.0.0", 8),
            ip("10.0.0.0", 8)
        ])))),
        &req
    ));
    assert!(allows(
        &allow_prin(prin(Identifier::NotId(Box::new(ip("11.0.0.0", 8))))),
        &req
    ));
    assert!(!allows(
        &allow_prin(prin(Identifier::NotId(Box::new(any_prin())))),
        &req
    ));
}

#[test]
fn authenticated_principals() {
    let authn = |m: Option<StringMatcher>| {
        allow_prin(prin(Identifier::Authenticated(principal::Authenticated {
            principal_name: m,
        })))
    };
    let mtls = Req::new();
    let mut plain = Req::new();
    plain.principal = None;
    assert!(allows(&authn(None), &mtls));
    assert!(!allows(&authn(None), &plain));
    // A matcher without a pattern is as good as none.
    assert!(allows(&authn(Some(StringMatcher::default())), &mtls));
    let sleep = exact("spiffe://cluster.local/ns/default/sa/sleep");
    assert!(allows(&authn(Some(sleep.clone())), &mtls));
    assert!(!allows(&authn(Some(sleep)), &plain));
    assert!(!allows(
        &authn(Some(exact("spiffe://cluster.local/ns/default/sa/other"))),
        &mtls
    ));
    // Istio's namespace form.
    let ns = sm(re("spiffe://.+/ns/default/(.+/|)sa/.+"));
    assert!(allows(&authn(Some(ns)), &mtls));
}

#[test]
fn ip_principals() {
    let mut req = Req::new();
    req.source = "[::ffff:10.1.2.3]:1234".parse().unwrap();
    req.sni = None;
    let r = |id| allow_prin(prin(id));
    assert!(allows(
        &r(Identifier::DirectRemoteIp(cidr("10.1.0.0", 16))),
        &req
    ));
    #[allow(deprecated)]
    let src = Identifier::SourceIp(cidr("10.1.2.3", 32));
    assert!(allows(&r(src), &req));
    assert!(allows(&r(Identifier::RemoteIp(cidr("10.0.0.0", 8))), &req));
    assert!(!allows(
        &r(Identifier::RemoteIp(cidr("10.2.0.0", 16))),
        &req
    ));
    let mut v6 = Req::new();
    v6.source = "[fd00::1]:1".parse().unwrap();
    assert!(allows(&r(Identifier::RemoteIp(cidr("fd00::", 8))), &v6));
    assert!(!allows(&r(Identifier::RemoteIp(cidr("10.0.0.0", 8))), &v6));
}

#[test]
fn header_and_path_principals() {
    let req = Req::new().header("x-token", "abc");
    let r = |id| allow_prin(prin(id));
    assert!(allows(
        &r(Identifier::Header(header(
            "x-token",
            H::StringMatch(exact("abc")),
            false
        ))),
        &req
    ));
    assert!(!allows(
        &r(Identifier::Header(header(
            "x-token",
            H::StringMatch(exact("x")),
            false
        ))),
        &req
    ));
    assert!(allows(
        &r(Identifier::UrlPath(url_path(sm(MatchPattern::Prefix(
            "/api".into()
        ))))),
        &req
    ));
}

#[test]
fn connection_attrs_have_no_http() {
    let r = allow_perm(perm(Rule::Header(header(
        ":method",
        H::PresentMatch(true),
        false,
    ))));
    let attrs = Attrs::connection(
        "10.0.0.1:1".parse().unwrap(),
        "10.0.0.2:80".parse().unwrap(),
        None,
        None,
    );
    assert_eq!(r.evaluate(&attrs), Decision::Deny { policy: None });
    let r = allow_perm(perm(Rule::UrlPath(url_path(sm(MatchPattern::Prefix(
        "/".into(),
    ))))));
    assert_eq!(r.evaluate(&attrs), Decision::Deny { policy: None });
}

// --- conversion errors ---

#[test]
fn unsupported_fields_name_the_field() {
    let with = |p: rbac::Permission| {
        Rbac::from_http_proto(&HttpRbac {
            rules: Some(engine(
                rbac::rbac::Action::Allow,
                vec![("p", vec![p], vec![any_prin()])],
            )),
            ..Default::default()
        })
        .unwrap_err()
    };
    let e = with(perm(Rule::OrRules(permission::Set {
        rules: vec![perm(Rule::Header(header(
            "x",
            H::SafeRegexMatch(RegexMatcher {
                regex: "(".into(),
                ..Default::default()
            }),
            false,
        )))],
    })));
    assert_eq!(
        e.field,
        "rules.policies[\"p\"].permissions[0].or_rules.rules[0].header.safe_regex_match.regex"
    );
    let e = with(perm(Rule::Matcher(Default::default())));
    assert_eq!(e.field, "rules.policies[\"p\"].permissions[0].matcher");
    let e = with(rbac::Permission { rule: None });
    assert_eq!(e.field, "rules.policies[\"p\"].permissions[0].rule");
    let e = with(perm(Rule::DestinationIp(cidr("nope", 8))));
    assert_eq!(
        e.field,
        "rules.policies[\"p\"].permissions[0].destination_ip.address_prefix"
    );
    let e = with(perm(Rule::DestinationIp(cidr("10.0.0.0", 33))));
    assert_eq!(
        e.field,
        "rules.policies[\"p\"].permissions[0].destination_ip.prefix_len"
    );

    let e = Rbac::from_http_proto(&HttpRbac {
        shadow_rules: Some(engine(
            rbac::rbac::Action::Allow,
            vec![(
                "s",
                vec![any_perm()],
                vec![prin(Identifier::FilterState(Default::default()))],
            )],
        )),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        e.field,
        "shadow_rules.policies[\"s\"].principals[0].filter_state"
    );

    let mut cel = engine(
        rbac::rbac::Action::Allow,
        vec![("c", vec![any_perm()], vec![any_prin()])],
    );
    if let Some(p) = cel.policies.get_mut("c") {
        p.condition = Some(Default::default());
    }
    let e = Rbac::from_http_proto(&HttpRbac {
        rules: Some(cel),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "rules.policies[\"c\"].condition");

    let e = Rbac::from_network_proto(&NetworkRbac {
        delay_deny: Some(Default::default()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "delay_deny");
}

// --- Istio's generated filters ---

/// istiod's RBAC goldens (`testdata/upstream/istio-samples/security/authz-builder`).
fn authz_builder() -> std::path::PathBuf {
    mast_testdata::corpus("istio-samples/security/authz-builder")
}

fn istio_filter(name: &str) -> Rbac {
    let yaml = std::fs::read_to_string(authz_builder().join(name)).unwrap();
    let filter: HttpFilter = mast_proto::json::yaml_to_message(&yaml).unwrap();
    assert_eq!(filter.name, HTTP_FILTER);
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("{name}: no typed_config");
    };
    let proto: HttpRbac = decode_any(any, "typed_config").unwrap();
    Rbac::from_http_proto(&proto).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

#[test]
fn istio_generated_filters_compile() {
    let dir = std::fs::read_dir(authz_builder()).unwrap();
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains("-out") && name.ends_with(".yaml") {
            let yaml = std::fs::read_to_string(e.path()).unwrap();
            if !yaml.contains(HTTP_FILTER) {
                continue;
            }
            istio_filter(&name);
            n += 1;
        }
    }
    assert!(n > 5, "only {n} filters found");
}

#[test]
fn istio_deny_then_allow() {
    let deny = istio_filter("deny-and-allow-out1.yaml");
    let allow = istio_filter("deny-and-allow-out2.yaml");
    let filters = [Arc::new(deny), Arc::new(allow)];
    let mut req = Req::new();
    req.principal = Some("spiffe://allow");
    assert_eq!(check(&filters, &req.attrs()), Decision::Allow);
    req.principal = Some("spiffe://deny");
    assert_eq!(
        check(&filters, &req.attrs()),
        Decision::Deny {
            policy: Some("ns[foo]-policy[httpbin-deny]-rule[0]".into())
        }
    );
    req.principal = Some("spiffe://other");
    assert_eq!(
        check(&filters, &req.attrs()),
        Decision::Deny { policy: None }
    );
    req.principal = None;
    assert_eq!(
        check(&filters, &req.attrs()),
        Decision::Deny { policy: None }
    );
}

#[test]
fn istio_single_policy_path_and_dry_run() {
    // `/**/not-path/template` and friends aside, any path matches `.+` in the or_rules, but
    // the not_rule also has `.+`, so nothing is allowed: the policy is deny-all.
    let r = istio_filter("allow-path-out.yaml");
    assert!(!allows(&r, &Req::new()));

    // Only shadow rules: nothing is enforced.
    let r = istio_filter("dry-run-allow-out.yaml");
    let mut req = Req::new();
    req.path = "/not-exact";
    assert!(allows(&r, &req));

    let r = istio_filter("allow-nil-rule-out.yaml");
    assert!(!allows(&r, &Req::new()));

    let r = istio_filter("trust-domains-out.yaml");
    let mut req = Req::new();
    req.principal = Some("spiffe://nobody.example/ns/x/sa/y");
    let _ = r.evaluate(&req.attrs());
}

// --- in a Listener ---

fn listener(http_filter_extra: &str) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    let yaml = format!(
        r#"
name: web
address: {{socket_address: {{address: 127.0.0.1, port_value: 8080}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.rbac
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
      stat_prefix: tcp.
      rules: {{action: DENY, policies: {{p: {{permissions: [{{destination_port: 1}}], principals: [{{any: true}}]}}}}}}
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: web
      rds: {{route_config_name: web}}
      http_filters:
      - name: envoy.filters.http.rbac
        {http_filter_extra}
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
          rules: {{policies: {{}}}}
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    );
    mast_proto::json::yaml_to_message(&yaml).unwrap()
}

#[test]
fn listener_carries_http_and_network_rbac() {
    use crate::resources::listener::{ChainKind, ConnInfo, ListenerConfig};
    let l = ListenerConfig::from_proto(&listener("")).unwrap();
    let chain = l.select(&ConnInfo::default()).unwrap();
    let ChainKind::Http(hcm) = &chain.kind else {
        panic!("not HTTP");
    };
    assert_eq!(hcm.rbac.len(), 1);
    assert_eq!(chain.kind.network_rbac().len(), 1);
    let attrs = Attrs::connection(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
        None,
        None,
    );
    assert!(allow_connection(chain.kind.network_rbac(), &attrs));
    // An ALLOW filter without policies denies every request.
    assert!(!matches!(check(&hcm.rbac, &attrs), Decision::Allow));

    let err = ListenerConfig::from_proto(&listener("disabled: true")).unwrap_err();
    assert_eq!(
        err.field,
        "filter_chains[0].filters[1].typed_config.http_filters[0].disabled"
    );
}
