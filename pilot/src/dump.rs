//! `/debug/config_dump`: the xDS a proxy gets, in the JSON shape of Envoy's own admin
//! `/config_dump` — so the tools people already use on Envoy dumps (istioctl proxy-config, jq
//! recipes) read pilot's view of a proxy the same way, and the two can be diffed.

use std::time::SystemTime;

use serde_json::Value;

use mast_proto::TypeUrl;

use crate::ads::ProxyResources;

/// Render what `resources` would give a proxy as a `envoy.admin.v3.ConfigDump`, every
/// resource marked with its own version and the model version it comes from.
pub fn config_dump(
    resources: &ProxyResources,
    model_version: u64,
) -> Result<Value, mast_proto::Error> {
    let mut dump = mast_proto::ConfigDumpBuilder::new();
    let now = Some(SystemTime::now());
    let version = model_version.to_string();
    dump.clusters_version(version.clone());
    dump.listeners_version(version.clone());
    let each = |t: TypeUrl| resources.of_type(t).into_iter().flat_map(|m| m.values());
    for r in each(TypeUrl::Cluster) {
        dump.dynamic_cluster(r.version.to_string(), r.any(), now);
    }
    for r in each(TypeUrl::Listener) {
        dump.dynamic_listener(r.name.to_string(), r.version.to_string(), r.any(), now);
    }
    for r in each(TypeUrl::Route) {
        dump.dynamic_route_config(r.version.to_string(), r.any(), now);
    }
    for r in each(TypeUrl::Endpoint) {
        dump.dynamic_endpoint_config(r.version.to_string(), r.any(), now);
    }
    dump.to_json()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use super::*;
    use crate::ads::Resource;

    #[test]
    fn dump_has_envoy_shape() {
        let mut r = ProxyResources::default();
        let c = Cluster {
            name: "outbound|8080||user.default.svc.cluster.local".into(),
            ..Default::default()
        };
        r.insert(
            TypeUrl::Cluster,
            Resource::new(c.name.clone(), TypeUrl::Cluster, &c),
        );
        let json = config_dump(&r, 7).unwrap();
        let configs = json["configs"].as_array().unwrap();
        let clusters = configs
            .iter()
            .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
            .unwrap();
        assert_eq!(clusters["version_info"], "7");
        let dynamic = &clusters["dynamic_active_clusters"][0];
        assert_eq!(
            dynamic["cluster"]["@type"],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
        assert_eq!(
            dynamic["cluster"]["name"],
            "outbound|8080||user.default.svc.cluster.local"
        );
    }
}
