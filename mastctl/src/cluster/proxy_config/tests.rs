//! proxy-config tables from real config dumps (istioctl's test data in `testdata/upstream`) and
//! from one mast-proxy's builder makes, and the fetch through the fake API server's pod proxy.

use std::time::{Duration, UNIX_EPOCH};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Metadata, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::util::pack_any;
use mast_kube::testing::FakeApiServer;
use mast_proto::config_dump::ConfigDumpBuilder;
use serde_json::json;

use super::*;

/// A config dump of the corpus (`testdata/upstream/envoy-configdump`).
fn corpus_dump(name: &str) -> Value {
    let path = mast_testdata::corpus(&format!("envoy-configdump/{name}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn short(dump: &Value, section: Section) -> String {
    render(dump, section, Output::Short).unwrap()
}

#[test]
fn clusters_of_istioctls_dump() {
    let dump = corpus_dump("istioctl-proxyconfig-config_dump.json");
    assert_eq!(
        short(&dump, Section::Clusters),
        "\
SERVICE FQDN                        PORT   SUBSET   DIRECTION     TYPE     DESTINATION RULE
agent                               -      -        -             STATIC   -
prometheus_stats                    -      -        -             STATIC   -
httpbin.default.svc.cluster.local   8000   http     inbound-vip   EDS      -
"
    );
}

#[test]
fn listeners_of_istioctls_dumps() {
    let dump = corpus_dump("istioctl-proxyconfig-config_dump.json");
    let table = short(&dump, Section::Listeners);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ADDRESS", "PORT", "MATCH", "DESTINATION"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "0.0.0.0",
            "15021",
            "ALL",
            "Inline",
            "Route:",
            "/healthz/ready*"
        ]
    );
    // The internal listener's four chains: three HTTP (inline routes), one TCP.
    let internal: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("internal:main_internal"))
        .collect();
    assert_eq!(internal.len(), 4, "{table}");

    let sidecar = corpus_dump("istioctl-authz-sidecar-listeners-configdump.json");
    let table = short(&sidecar, Section::Listeners);
    let row = |address: &str, port: &str| -> Vec<String> {
        table
            .lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&address) && w.get(1) == Some(&port)
            })
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        row("10.96.0.10", "53"),
        ["ALL Cluster: outbound|53||kube-dns.kube-system.svc.cluster.local"]
    );
    let http = row("0.0.0.0", "9080");
    assert_eq!(http[0], "Trans: raw_buffer; App: http/1.1,h2c Route: 9080");
    // The default chain is the last row of its listener.
    assert!(http.last().unwrap().starts_with("ALL "), "{http:?}");
}

#[test]
fn routes_name_their_virtual_service() {
    let dump = corpus_dump("istioctl-describe-http_config.json");
    let table = short(&dump, Section::Routes);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME", "VHOST", "NAME", "DOMAINS", "MATCH", "VIRTUAL", "SERVICE"
        ]
    );
    assert_eq!(
        lines[1],
        ["http.8080", "*:80", "*", "/productpage", "bookinfo.default"]
    );
    assert!(
        lines.contains(&vec![
            "http.8080",
            "*:80",
            "*",
            "/static*",
            "bookinfo.default"
        ]),
        "{table}"
    );
}

#[test]
fn endpoints_and_secrets_of_istioctls_dump() {
    let dump = corpus_dump("istioctl-proxyconfig-config_dump.json");
    assert_eq!(
        short(&dump, Section::Endpoints),
        "\
ENDPOINT                                        STATUS    CLUSTER
127.0.0.1:15000                                 HEALTHY   prometheus_stats
envoy://connect_originate/192.168.195.248:800   HEALTHY   inbound-vip|8100|http|httpbin.default.svc.cluster.local
"
    );
    assert_eq!(
        short(&dump, Section::Secret),
        "\
RESOURCE NAME   TYPE         STATUS
default         Cert Chain   ACTIVE
ROOTCA          CA           ACTIVE
"
    );
    // `all` is every table, one after another.
    let all = short(&dump, Section::All);
    for header in [
        "SERVICE FQDN",
        "ADDRESS",
        "VHOST NAME",
        "ENDPOINT",
        "RESOURCE NAME",
    ] {
        assert!(all.contains(header), "{all}");
    }
}

#[test]
fn json_output_is_the_section() {
    let dump = corpus_dump("istioctl-proxyconfig-config_dump.json");
    let clusters: Value =
        serde_json::from_str(&render(&dump, Section::Clusters, Output::Json).unwrap()).unwrap();
    assert_eq!(clusters.as_array().unwrap().len(), 3);
    assert_eq!(clusters[0]["name"], "agent");
    let all: Value =
        serde_json::from_str(&render(&dump, Section::All, Output::Json).unwrap()).unwrap();
    assert_eq!(all, dump);
}

/// A dump as mast-proxy's admin builds it.
fn mast_proxy_dump() -> Value {
    let at = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let mut metadata = Metadata::default();
    metadata.filter_metadata.insert(
        "istio".into(),
        envoy_types::pb::google::protobuf::Struct {
            fields: [(
                "config".to_string(),
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                        "/apis/networking.istio.io/v1/namespaces/shop/destination-rule/reviews"
                            .into(),
                    )),
                },
            )]
            .into_iter()
            .collect(),
        },
    );
    let cluster = Cluster {
        name: "outbound|9080|v2|reviews.shop.svc.cluster.local".into(),
        cluster_discovery_type: Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                DiscoveryType::Eds as i32,
            ),
        ),
        metadata: Some(metadata),
        ..Default::default()
    };
    let listener = Listener {
        name: "10.0.0.7_9080".into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "10.0.0.7".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(9080)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let mut b = ConfigDumpBuilder::new();
    b.clusters_version("v1")
        .dynamic_cluster("v1", pack_any(cluster), at)
        .listeners_version("v1")
        .dynamic_listener("10.0.0.7_9080", "v1", pack_any(listener), at);
    b.to_json().unwrap()
}

#[test]
fn tables_of_a_mast_proxy_dump() {
    let dump = mast_proxy_dump();
    assert_eq!(
        short(&dump, Section::Clusters),
        "\
SERVICE FQDN                     PORT   SUBSET   DIRECTION   TYPE   DESTINATION RULE
reviews.shop.svc.cluster.local   9080   v2       outbound    EDS    reviews.shop
"
    );
    // A listener without filter chains has no rows; its section is still a table.
    assert_eq!(
        short(&dump, Section::Listeners),
        "ADDRESS   PORT   MATCH   DESTINATION\n"
    );
}

#[test]
fn not_a_config_dump_is_refused() {
    let e = render(&json!({"clusters": []}), Section::All, Output::Short).unwrap_err();
    assert!(e.to_string().contains("no `configs` list"), "{e}");
}

#[tokio::test]
async fn fetch_goes_through_the_pod_proxy() {
    let server = FakeApiServer::start().await.unwrap();
    let dump = mast_proxy_dump();
    server.respond(
        http::Method::GET,
        "/api/v1/namespaces/shop/pods/reviews-v2-5d8f:15000/proxy/config_dump",
        200,
        dump.clone(),
    );
    let got = fetch(&server.client(), "shop", "reviews-v2-5d8f")
        .await
        .unwrap();
    assert_eq!(got, dump);
    // A pod that is not there: the API server's error, with the path asked.
    let e = fetch(&server.client(), "shop", "gone").await.unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("GET /api/v1/namespaces/shop/pods/gone:15000/proxy/config_dump"),
        "{e}"
    );
}

/// A client of `server` without kube's retries, as `run` builds it (a 503 is answered at once).
fn client(server: &FakeApiServer) -> kube::Client {
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.default_namespace = "default".into();
    config.default_retry = false;
    mast_kube::client::from_config(config).unwrap()
}

const MASTD_DUMP_PATH: &str =
    "/api/v1/namespaces/mast-system/services/mastd:15014/proxy/debug/config_dump";

/// What a real API server answers when the pod proxy's dial to the admin port is refused.
fn refused(code: u16) -> Value {
    mast_kube::testing::status(
        code,
        "ServiceUnavailable",
        "error trying to reach service: dial tcp 10.244.0.7:15000: connect: connection refused",
        "pods",
        "reviews-v2-5d8f",
    )
}

/// mastd's view differs from the sidecar's (one cluster, no listener) so tests see who answered.
fn mastd_dump() -> Value {
    let mut dump = mast_proxy_dump();
    dump["configs"].as_array_mut().unwrap().retain(|c| {
        !c["@type"]
            .as_str()
            .unwrap()
            .ends_with("ListenersConfigDump")
    });
    dump
}

#[tokio::test]
async fn pilot_source_asks_mastd_through_the_service_proxy() {
    let server = FakeApiServer::start().await.unwrap();
    // `respond` matches the path without its query; the query is checked in `requests()`.
    server.respond(
        http::Method::GET,
        "/api/v1/namespaces/mesh/services/mastd:15014/proxy/debug/config_dump",
        200,
        mastd_dump(),
    );
    let (got, notice) = fetch_from(
        &client(&server),
        Source::Pilot,
        "mesh",
        "shop",
        "reviews-v2-5d8f",
    )
    .await
    .unwrap();
    assert_eq!(got, mastd_dump());
    assert_eq!(notice, None);
    // Only mastd was asked, for the pod by `<pod>.<namespace>`.
    assert_eq!(
        server.requests(),
        [
            "GET /api/v1/namespaces/mesh/services/mastd:15014/proxy/debug/config_dump?proxyID=reviews-v2-5d8f.shop"
        ]
    );
}

#[tokio::test]
async fn auto_falls_back_to_mastd_when_the_pod_proxy_is_refused() {
    for code in [502, 503] {
        let server = FakeApiServer::start().await.unwrap();
        server.respond(
            http::Method::GET,
            "/api/v1/namespaces/shop/pods/reviews-v2-5d8f:15000/proxy/config_dump",
            code,
            refused(code),
        );
        server.respond(http::Method::GET, MASTD_DUMP_PATH, 200, mastd_dump());
        let (got, notice) = fetch_from(
            &client(&server),
            Source::Auto,
            "mast-system",
            "shop",
            "reviews-v2-5d8f",
        )
        .await
        .unwrap();
        assert_eq!(got, mastd_dump(), "{code}");
        let notice = notice.unwrap();
        assert!(
            notice.starts_with("reviews-v2-5d8f.shop: the sidecar's admin port is not reachable"),
            "{notice}"
        );
        assert!(notice.contains("it listens on 127.0.0.1"), "{notice}");
        assert!(
            notice.contains(&format!("{code} error trying to reach service")),
            "{notice}"
        );
        assert!(
            notice.contains("showing what mastd last sent it"),
            "{notice}"
        );
        assert_eq!(
            server.requests(),
            [
                "GET /api/v1/namespaces/shop/pods/reviews-v2-5d8f:15000/proxy/config_dump",
                "GET /api/v1/namespaces/mast-system/services/mastd:15014/proxy/debug/config_dump?proxyID=reviews-v2-5d8f.shop",
            ]
        );
    }
}

#[tokio::test]
async fn auto_prefers_the_sidecar_and_does_not_hide_other_failures() {
    let server = FakeApiServer::start().await.unwrap();
    server.respond(
        http::Method::GET,
        "/api/v1/namespaces/shop/pods/reviews-v2-5d8f:15000/proxy/config_dump",
        200,
        mast_proxy_dump(),
    );
    server.respond(http::Method::GET, MASTD_DUMP_PATH, 200, mastd_dump());
    let client = client(&server);
    let (got, notice) = fetch_from(
        &client,
        Source::Auto,
        "mast-system",
        "shop",
        "reviews-v2-5d8f",
    )
    .await
    .unwrap();
    assert_eq!(got, mast_proxy_dump());
    assert_eq!(notice, None);
    // A pod that is not there (404) is the answer: mastd is not asked.
    let e = fetch_from(&client, Source::Auto, "mast-system", "shop", "gone")
        .await
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("GET /api/v1/namespaces/shop/pods/gone:15000"),
        "{e}"
    );
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.contains("services/mastd")),
        "{:?}",
        server.requests()
    );
}

#[tokio::test]
async fn an_unknown_proxy_is_an_error_naming_the_pod() {
    let server = FakeApiServer::start().await.unwrap();
    server.respond(
        http::Method::GET,
        "/api/v1/namespaces/shop/pods/gone:15000/proxy/config_dump",
        503,
        refused(503),
    );
    // mastd's answer is plain text; the fake can only send JSON, so it is a JSON string here.
    server.respond(
        http::Method::GET,
        MASTD_DUMP_PATH,
        404,
        json!("no connected proxy \"gone.shop\" (see /debug/syncz)\n"),
    );
    let client = client(&server);
    for source in [Source::Pilot, Source::Auto] {
        let e = fetch_from(&client, source, "mast-system", "shop", "gone")
            .await
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("mastd has no connected proxy gone.shop"), "{e}");
        assert!(e.contains("/debug/syncz"), "{e}");
    }
    // Each replica knows only its own proxies: asked again before believing it.
    let asked = server
        .requests()
        .iter()
        .filter(|r| r.contains("proxyID=gone.shop"))
        .count();
    assert_eq!(asked, 2 * PILOT_ATTEMPTS);
    // No mastd Service there: the error says where it looked.
    let e = fetch_from(&client, Source::Pilot, "elsewhere", "shop", "gone")
        .await
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("/api/v1/namespaces/elsewhere/services/mastd:15014/proxy"),
        "{e}"
    );
    assert!(e.contains("--mastd-namespace"), "{e}");
}

#[test]
fn names_that_cannot_go_into_a_path_are_refused() {
    for ok in ["reviews-v2-5d8f", "mast-system", "a.b"] {
        check_name("pod", ok).unwrap();
    }
    for bad in ["", "Reviews", "a/b", "a?b", "-a", "a."] {
        let e = check_name("pod", bad).unwrap_err().to_string();
        assert!(e.contains("is not a Kubernetes name"), "{e}");
    }
}
