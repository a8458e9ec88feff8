//! proxy-config tables from real config dumps (istioctl's test data in the shared corpus) and
//! from one mast-proxy's builder makes, and the fetch through the fake API server's pod proxy.

use std::path::PathBuf;
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

/// A config dump of the corpus (`MAST_CORPUS_DIR`, else `shared/corpus` beside the
/// workspace); `None`, with a notice, where it is not checked out.
fn corpus_dump(name: &str) -> Option<Value> {
    let dir = std::env::var_os("MAST_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    let path = dir.join("envoy-configdump").join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).unwrap()),
        Err(_) => {
            eprintln!(
                "NOTICE: corpus file {} not found (set MAST_CORPUS_DIR); skipping",
                path.display()
            );
            None
        }
    }
}

fn short(dump: &Value, section: Section) -> String {
    render(dump, section, Output::Short).unwrap()
}

#[test]
fn clusters_of_istioctls_dump() {
    let Some(dump) = corpus_dump("istioctl-proxyconfig-config_dump.json") else {
        return;
    };
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
    let Some(dump) = corpus_dump("istioctl-proxyconfig-config_dump.json") else {
        return;
    };
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

    let Some(sidecar) = corpus_dump("istioctl-authz-sidecar-listeners-configdump.json") else {
        return;
    };
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
    let Some(dump) = corpus_dump("istioctl-describe-http_config.json") else {
        return;
    };
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
    let Some(dump) = corpus_dump("istioctl-proxyconfig-config_dump.json") else {
        return;
    };
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
    let Some(dump) = corpus_dump("istioctl-proxyconfig-config_dump.json") else {
        return;
    };
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
