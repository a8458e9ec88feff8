//! Config dump tests: real dumps from istioctl's test data (`testdata/upstream`) must parse into
//! our pool's `ConfigDump` and print back identically, and a dump we build must have their
//! shape.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use envoy_types::pb::envoy::admin::v3::ConfigDump;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::util::pack_any;
use serde_json::{Value, json};

use super::*;
use crate::json::json_to_message;

/// A config dump of the corpus (`testdata/upstream/envoy-configdump`).
fn corpus_file(name: &str) -> PathBuf {
    mast_testdata::corpus(&format!("envoy-configdump/{name}"))
}

/// Equality as JSON values mean it: numbers by value (`100` and `100.0` are the same proto
/// float), everything else exactly. Returns the path of the first difference.
fn diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            // Each key once: visiting shared keys from both sides would double the work at
            // every level of nesting.
            let only_in_y = y.keys().filter(|k| !x.contains_key(*k));
            for key in x.keys().chain(only_in_y) {
                let sub = format!("{path}.{key}");
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = diff(u, v, &sub) {
                            return Some(d);
                        }
                    }
                    // proto3 has no presence for repeated fields and plain scalars: an empty
                    // list or a zero value is the same as leaving the field out.
                    (Some(u), None) | (None, Some(u)) if is_default(u) => {}
                    (u, v) => return Some(format!("{sub}: {u:?} vs {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} vs {} items", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| diff(u, v, &format!("{path}[{i}]")))
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Null | Value::Object(_) => false,
    }
}

/// Parses a corpus dump as `type_name`, prints it back, and demands the same JSON.
fn round_trip(name: &str, type_name: &str) -> anyhow::Result<()> {
    let path = corpus_file(name);
    let original: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let any = crate::json::json_to_any(type_name, &original)?;
    let mut printed = crate::json::encoded_to_json(type_name, &any.value)?;
    if let Some(t) = original.get("@type") {
        // A top-level section file carries its own `@type`; the bare message does not.
        if let Value::Object(map) = &mut printed {
            map.insert("@type".into(), t.clone());
        }
    }
    if let Some(d) = diff(&original, &printed, "") {
        anyhow::bail!("{name}: re-printed dump differs at {d}");
    }
    Ok(())
}

#[test]
fn full_dump_round_trips() -> anyhow::Result<()> {
    // All seven sections: bootstrap, clusters, endpoints, listeners, scoped routes, routes,
    // secrets, with internal-listener and matcher extensions inside.
    round_trip(
        "istioctl-proxyconfig-config_dump.json",
        "envoy.admin.v3.ConfigDump",
    )
}

#[test]
fn sidecar_listeners_round_trip() -> anyhow::Result<()> {
    // RBAC, ext_authz, Wasm, and Istio's own filters (alpn, metadata exchange, stats).
    round_trip(
        "istioctl-authz-sidecar-listeners-configdump.json",
        "envoy.admin.v3.ConfigDump",
    )
}

#[test]
fn describe_dump_round_trips() -> anyhow::Result<()> {
    round_trip(
        "istioctl-describe-http_config.json",
        "envoy.admin.v3.ConfigDump",
    )
}

#[test]
fn corpus_dump_parses_into_typed_config_dump() -> anyhow::Result<()> {
    let path = corpus_file("istioctl-proxyconfig-config_dump.json");
    let original: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let dump: ConfigDump = json_to_message(&original)?;
    let types: Vec<_> = dump.configs.iter().map(|c| c.type_url.as_str()).collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        ]
    );
    Ok(())
}

fn built() -> ConfigDumpBuilder {
    let at = Some(UNIX_EPOCH + Duration::from_millis(1_703_570_229_894));
    let mut dump = ConfigDumpBuilder::new();
    let cluster = Cluster {
        name: "outbound|9080||reviews.default.svc.cluster.local".into(),
        ..Default::default()
    };
    dump.clusters_version("v7")
        .dynamic_cluster("v7", pack_any(cluster), at)
        .listeners_version("v3")
        .dynamic_listener(
            "0.0.0.0_9080",
            "v3",
            pack_any(Listener {
                name: "0.0.0.0_9080".into(),
                ..Default::default()
            }),
            at,
        )
        .dynamic_route_config(
            "v2",
            pack_any(RouteConfiguration {
                name: "9080".into(),
                ..Default::default()
            }),
            at,
        )
        .dynamic_endpoint_config(
            "v1",
            pack_any(ClusterLoadAssignment {
                cluster_name: "outbound|9080||reviews.default.svc.cluster.local".into(),
                ..Default::default()
            }),
            at,
        );
    dump
}

#[test]
fn built_dump_has_envoys_shape() -> anyhow::Result<()> {
    let json = built().to_json()?;
    assert_eq!(
        json,
        json!({"configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "version_info": "v7",
                "dynamic_active_clusters": [{
                    "version_info": "v7",
                    "cluster": {
                        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                        "name": "outbound|9080||reviews.default.svc.cluster.local"
                    },
                    "last_updated": "2023-12-26T05:57:09.894Z"
                }]
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                "dynamic_endpoint_configs": [{
                    "version_info": "v1",
                    "endpoint_config": {
                        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                        "cluster_name": "outbound|9080||reviews.default.svc.cluster.local"
                    },
                    "last_updated": "2023-12-26T05:57:09.894Z"
                }]
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "version_info": "v3",
                "dynamic_listeners": [{
                    "name": "0.0.0.0_9080",
                    "active_state": {
                        "version_info": "v3",
                        "listener": {
                            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                            "name": "0.0.0.0_9080"
                        },
                        "last_updated": "2023-12-26T05:57:09.894Z"
                    }
                }]
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "dynamic_route_configs": [{
                    "version_info": "v2",
                    "route_config": {
                        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                        "name": "9080"
                    },
                    "last_updated": "2023-12-26T05:57:09.894Z"
                }]
            }
        ]})
    );
    Ok(())
}

#[test]
fn built_dump_parses_back() -> anyhow::Result<()> {
    let dump = built();
    let back: ConfigDump = json_to_message(&dump.to_json()?)?;
    assert_eq!(back, dump.build());
    Ok(())
}

#[test]
fn empty_dump_keeps_the_always_present_sections() -> anyhow::Result<()> {
    let json = ConfigDumpBuilder::new().to_json()?;
    let types: Vec<_> = json["configs"]
        .as_array()
        .map(|c| c.iter().map(|s| s["@type"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
        ]
    );
    Ok(())
}
