use super::*;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RouteConfiguration, VirtualHost as VhProto,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;

fn parts(uri: &str, host: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::get(uri).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn route(m: rv3::RouteMatch, cluster: &str) -> rv3::Route {
    rv3::Route {
        r#match: Some(m),
        action: Some(RouteActionKind::Route(rv3::RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn prefix(p: &str) -> rv3::RouteMatch {
    rv3::RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

fn cluster_of(r: &Route) -> &str {
    match &r.action {
        Action::Forward(f) => f.pick_cluster(),
        _ => "",
    }
}

fn table(hosts: Vec<VhProto>) -> RouteTable {
    RouteTable::from_proto(&RouteConfiguration {
        name: "80".into(),
        virtual_hosts: hosts,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn virtual_hosts_are_found_as_envoy_finds_them() {
    let vh = |name: &str, domains: &[&str]| VhProto {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes: vec![route(prefix("/"), name)],
        ..Default::default()
    };
    let t = table(vec![
        vh(
            "exact",
            &["user", "user:80", "user.default.svc.cluster.local"],
        ),
        vh("suffix", &["*.example.com"]),
        vh("longer-suffix", &["*.api.example.com"]),
        vh("prefix", &["foo.*"]),
        vh("any", &["*"]),
    ]);
    let name = |h: &str| t.find_host(h).map(|v| v.name.clone()).unwrap_or_default();
    assert_eq!(name("user"), "exact");
    assert_eq!(name("USER:80"), "exact");
    assert_eq!(
        name("user:9999"),
        "exact",
        "port stripped when no exact match"
    );
    assert_eq!(name("a.example.com"), "suffix");
    assert_eq!(name("v1.api.example.com"), "longer-suffix");
    assert_eq!(name("foo.bar"), "prefix");
    assert_eq!(name("other"), "any");
}

#[test]
fn duplicate_domains_are_rejected_with_the_field() {
    let vh = |name: &str| VhProto {
        name: name.into(),
        domains: vec!["user".into()],
        routes: vec![route(prefix("/"), "c")],
        ..Default::default()
    };
    let err = RouteTable::from_proto(&RouteConfiguration {
        name: "80".into(),
        virtual_hosts: vec![vh("a"), vh("b")],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.kind, "RouteConfiguration");
    assert_eq!(err.field, "virtual_hosts[1].domains[0]");
}

#[test]
fn routes_match_path_headers_and_query_in_order() {
    let header = |name: &str, exact: &str| HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(exact.into())),
            ignore_case: false,
        })),
        ..Default::default()
    };
    let mut jason = prefix("/");
    jason.headers.push(header("end-user", "jason"));
    let mut q = prefix("/");
    q.query_parameters.push(rv3::QueryParameterMatcher {
        name: "debug".into(),
        query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::PresentMatch(true)),
    });
    let regex = rv3::RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/items/[0-9]+".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let exact = rv3::RouteMatch {
        path_specifier: Some(PathSpecifier::Path("/exact".into())),
        ..Default::default()
    };
    let sep = rv3::RouteMatch {
        path_specifier: Some(PathSpecifier::PathSeparatedPrefix("/api".into())),
        ..Default::default()
    };
    let t = table(vec![VhProto {
        name: "v".into(),
        domains: vec!["*".into()],
        routes: vec![
            route(jason, "v2"),
            route(q, "debug"),
            route(regex, "items"),
            route(exact, "exact"),
            route(sep, "api"),
            route(prefix("/"), "v1"),
        ],
        ..Default::default()
    }]);
    let vh = t.find_host("user").unwrap();
    let pick = |uri: &str, headers: &[(&str, &str)]| {
        cluster_of(
            vh.find_route(&parts(uri, "user", headers), &Default::default())
                .unwrap(),
        )
        .to_string()
    };
    assert_eq!(pick("/", &[("end-user", "jason")]), "v2");
    assert_eq!(pick("/", &[("end-user", "alice")]), "v1");
    assert_eq!(pick("/x?debug=1", &[]), "debug");
    assert_eq!(pick("/items/42", &[]), "items");
    assert_eq!(pick("/items/42/x", &[]), "v1", "regex is a full match");
    assert_eq!(pick("/exact", &[]), "exact");
    assert_eq!(pick("/exact/no", &[]), "v1");
    assert_eq!(pick("/api/users", &[]), "api");
    assert_eq!(
        pick("/apiary", &[]),
        "v1",
        "path_separated_prefix needs a separator"
    );
}

#[test]
fn weighted_clusters_split_by_weight() {
    let f = Forward::from_proto(&rv3::RouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(rv3::WeightedCluster {
            clusters: vec![
                rv3::weighted_cluster::ClusterWeight {
                    name: "v1".into(),
                    weight: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 80 }),
                    ..Default::default()
                },
                rv3::weighted_cluster::ClusterWeight {
                    name: "v2".into(),
                    weight: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 20 }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })),
        ..Default::default()
    })
    .unwrap();
    let v1 = (0..10_000).filter(|_| f.pick_cluster() == "v1").count();
    assert!((7_700..8_300).contains(&v1), "{v1}");
    assert_eq!(
        f.timeout,
        Some(Duration::from_secs(15)),
        "Envoy's default route timeout"
    );
}

#[test]
fn retry_policy_conditions_and_unknown_ones() {
    let p = RetryPolicy::from_proto(&rv3::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        ..Default::default()
    })
    .unwrap();
    assert!(p.retries_status(503, None));
    assert!(!p.retries_status(500, None));
    assert!(p.retries_status(200, Some(14)), "grpc UNAVAILABLE");
    assert!(p.retries_connect_failure());
    assert_eq!(p.num_retries, 2);
    let err = RetryPolicy::from_proto(&rv3::RetryPolicy {
        retry_on: "5xx,sometimes".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.field, "retry_on");
    assert!(err.message.contains("sometimes"));
}

#[test]
fn rewrites_and_redirects() {
    let f = Forward::from_proto(&rv3::RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
        prefix_rewrite: "/v2/".into(),
        ..Default::default()
    })
    .unwrap();
    let m = RouteMatch::from_proto(&prefix("/v1/")).unwrap();
    assert_eq!(
        f.rewrite_path(&m, "/v1/users").as_deref(),
        Some("/v2/users")
    );
    let r = Redirect::from_proto(&rv3::RedirectAction {
        host_redirect: "new.example.com".into(),
        path_rewrite_specifier: Some(PathRewriteSpecifier::PathRedirect("/moved".into())),
        ..Default::default()
    })
    .unwrap();
    let loc = r.location(&m, &parts("/v1/x?a=1", "old:8080", &[]), "http");
    assert_eq!(loc, "http://new.example.com/moved?a=1");
    assert_eq!(r.status, http::StatusCode::MOVED_PERMANENTLY);
}

#[test]
fn bad_regex_names_its_field() {
    let m = rv3::RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: "(".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let err = RouteTable::from_proto(&RouteConfiguration {
        name: "80".into(),
        virtual_hosts: vec![VhProto {
            name: "v".into(),
            domains: vec!["*".into()],
            routes: vec![route(m, "c")],
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.field, "virtual_hosts[0].routes[0].match.safe_regex");
}

#[test]
fn gateway_hosts_ignore_the_port_and_https_redirect_is_a_301_target() {
    let rc = RouteConfiguration {
        name: "http.8081".into(),
        ignore_port_in_host_matching: true,
        virtual_hosts: vec![
            VhProto {
                name: "bookinfo.example.com:8081".into(),
                domains: vec!["bookinfo.example.com".into()],
                require_tls: rv3::virtual_host::TlsRequirementType::All as i32,
                routes: vec![route(prefix("/"), "page")],
                ..Default::default()
            },
            VhProto {
                name: "*.example.com:8081".into(),
                domains: vec!["*.example.com".into()],
                routes: vec![route(prefix("/"), "other")],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let t = RouteTable::from_proto(&rc).unwrap();
    // With the port ignored, `host:port` finds the exact domain before the wildcard.
    let vh = t.find_host("bookinfo.example.com:8081").unwrap();
    assert_eq!(vh.name, "bookinfo.example.com:8081");
    assert_eq!(
        t.find_host("a.example.com:8081").unwrap().name,
        "*.example.com:8081"
    );
    let req = parts(
        "/productpage?u=1",
        "bookinfo.example.com:8081",
        &[("x-envoy-internal", "true")],
    );
    assert_eq!(
        vh.tls_redirect(false, &req, "bookinfo.example.com:8081")
            .as_deref(),
        Some("https://bookinfo.example.com:8081/productpage?u=1")
    );
    assert_eq!(vh.tls_redirect(true, &req, "bookinfo.example.com"), None);
    let other = t.find_host("a.example.com").unwrap();
    assert_eq!(other.tls_redirect(false, &req, "a.example.com"), None);

    // EXTERNAL_ONLY spares requests the mesh marked internal.
    let mut rc = rc;
    rc.virtual_hosts[0].require_tls = rv3::virtual_host::TlsRequirementType::ExternalOnly as i32;
    let t = RouteTable::from_proto(&rc).unwrap();
    let vh = t.find_host("bookinfo.example.com").unwrap();
    assert_eq!(vh.tls_redirect(false, &req, "h"), None);
    let outside = parts("/", "h", &[]);
    assert_eq!(
        vh.tls_redirect(false, &outside, "h").as_deref(),
        Some("https://h/")
    );
    // Without ignore_port_in_host_matching, Envoy's default, the port-less exact domain is
    // still found for `host:port` (the proxy also tries the bare host).
    rc.ignore_port_in_host_matching = false;
    let t = RouteTable::from_proto(&rc).unwrap();
    assert_eq!(
        t.find_host("bookinfo.example.com:8081").unwrap().name,
        "bookinfo.example.com:8081"
    );
}

/// A weighted cluster's own request headers (istiod's per-destination `headers.request`, as
/// Knative's `Knative-Serving-Revision`) are kept for that cluster only.
#[test]
fn weighted_cluster_request_headers_belong_to_their_cluster() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue as HvProto, HeaderValueOption};
    let set = |k: &str, v: &str| HeaderValueOption {
        header: Some(HvProto {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let weighted = |name: &str, rev: Option<&str>| rv3::weighted_cluster::ClusterWeight {
        name: name.into(),
        weight: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 50 }),
        request_headers_to_add: rev
            .map(|r| vec![set("knative-serving-revision", r)])
            .unwrap_or_default(),
        ..Default::default()
    };
    let f = Forward::from_proto(&rv3::RouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(rv3::WeightedCluster {
            clusters: vec![weighted("r1", Some("r-00001")), weighted("r2", None)],
            ..Default::default()
        })),
        ..Default::default()
    })
    .unwrap();
    let mut headers = http::HeaderMap::new();
    f.cluster_headers["r1"].apply_request(&mut headers);
    assert_eq!(headers["knative-serving-revision"], "r-00001");
    assert!(!f.cluster_headers.contains_key("r2"));
}

/// istiod's claim route: `dynamic_metadata` on `jwt_authn` → `payload` → `group`, a string or
/// any element of a list; without the metadata (no verified token) the next route matches.
/// A matcher mast-proxy cannot read is refused at its field.
#[test]
fn dynamic_metadata_matches_claims_and_bad_matchers_name_their_field() {
    use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
    use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment;
    use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
    use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        ListMatcher, MetadataMatcher, OrMatcher, ValueMatcher,
    };
    let string = ValueMatcher {
        match_pattern: Some(ValuePattern::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact("group1".into())),
            ignore_case: false,
        })),
    };
    let claim = MetadataMatcher {
        filter: "envoy.filters.http.jwt_authn".into(),
        path: ["payload", "group"]
            .iter()
            .map(|k| PathSegment {
                segment: Some(Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(ValueMatcher {
            match_pattern: Some(ValuePattern::OrMatch(OrMatcher {
                value_matchers: vec![
                    ValueMatcher {
                        match_pattern: Some(ValuePattern::ListMatch(Box::new(ListMatcher {
                            match_pattern: Some(ListPattern::OneOf(Box::new(string.clone()))),
                        }))),
                    },
                    string,
                ],
            })),
        }),
        invert: false,
    };
    let mut by_claim = prefix("/");
    by_claim.dynamic_metadata.push(claim.clone());
    let t = table(vec![VhProto {
        name: "v".into(),
        domains: vec!["*".into()],
        routes: vec![route(by_claim, "group1"), route(prefix("/"), "default")],
        ..Default::default()
    }]);
    let vh = t.find_host("gw").unwrap();
    let pick = |payload: Option<&str>| {
        let metadata: crate::rbac::DynamicMetadata = match payload {
            Some(p) => serde_json::from_str(&format!(
                r#"{{"envoy.filters.http.jwt_authn": {{"payload": {p}}}}}"#
            ))
            .unwrap(),
            None => Default::default(),
        };
        cluster_of(vh.find_route(&parts("/", "gw", &[]), &metadata).unwrap()).to_string()
    };
    assert_eq!(pick(Some(r#"{"group": "group1"}"#)), "group1");
    assert_eq!(pick(Some(r#"{"group": ["x", "group1"]}"#)), "group1");
    assert_eq!(pick(Some(r#"{"group": "group2"}"#)), "default");
    assert_eq!(pick(None), "default");

    let mut bad = prefix("/");
    bad.dynamic_metadata.push(MetadataMatcher {
        value: None,
        ..claim
    });
    let err = RouteTable::from_proto(&RouteConfiguration {
        name: "80".into(),
        virtual_hosts: vec![VhProto {
            name: "v".into(),
            domains: vec!["*".into()],
            routes: vec![route(bad, "c")],
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        err.field,
        "virtual_hosts[0].routes[0].match.dynamic_metadata[0].value"
    );
}
