//! `--config FILE`: run from a file instead of pilot, for debugging, tests and benchmarks.
//!
//! Two shapes are read, YAML or JSON: an Envoy bootstrap (its `static_resources` listeners
//! and clusters, and its admin address), so the very file given to `envoy -c` works; or a
//! list of typed xDS resources (`resources: [{"@type": ...}]`, Envoy's file-based xDS
//! format), which may also hold route configurations and endpoint assignments.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::google::protobuf::Any;
use mast_proto::TypeUrl;
use prost::Message;
use serde_json::Value;

use crate::resources::cluster::socket_addr;
use crate::state::{Incoming, Resources};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// The file's resources by type, and the admin address it names.
pub struct StaticConfig {
    pub by_type: BTreeMap<TypeUrl, Vec<Any>>,
    pub admin: Option<SocketAddr>,
    pub bootstrap: Option<Bootstrap>,
}

pub fn load(path: &Path) -> Result<StaticConfig, Error> {
    let err = |message: String| Error::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let json: Value =
        serde_saphyr::from_str(&text).map_err(|e| err(format!("not YAML or JSON: {e}")))?;
    let mut by_type: BTreeMap<TypeUrl, Vec<Any>> = BTreeMap::new();
    // A private descriptor pool, dropped on return: a sidecar should not carry Envoy's whole
    // API schema (~25 MB decoded) for the rest of its life to read one file at start.
    let pool = mast_proto::json::fresh_pool().map_err(|e| err(e.to_string()))?;
    if let Some(list) = json.get("resources").and_then(Value::as_array) {
        for (i, item) in list.iter().enumerate() {
            let mut item = item.clone();
            let type_url = item
                .as_object_mut()
                .and_then(|o| o.remove("@type"))
                .and_then(|t| t.as_str().map(str::to_string))
                .ok_or_else(|| err(format!("resources[{i}]: \"@type\" is required")))?;
            let type_name = type_url.rsplit('/').next().unwrap_or(&type_url).to_string();
            let any = mast_proto::json::json_to_any_in(&pool, &type_name, &item)
                .map_err(|e| err(format!("resources[{i}]: {e}")))?;
            let Some(t) =
                TypeUrl::from_url(&any.type_url).filter(|t| TypeUrl::PUSH_ORDER.contains(t))
            else {
                return Err(err(format!(
                    "resources[{i}]: type {type_url} is not an xDS resource mast-proxy reads"
                )));
            };
            by_type.entry(t).or_default().push(any);
        }
        return Ok(StaticConfig {
            by_type,
            admin: None,
            bootstrap: None,
        });
    }
    let bootstrap: Bootstrap = mast_proto::json::json_to_message_in(&pool, &json)
        .map_err(|e| err(format!("bootstrap: {e}")))?;
    let admin = bootstrap
        .admin
        .as_ref()
        .and_then(|a| a.address.as_ref())
        .and_then(|a| socket_addr(a).ok());
    if let Some(sr) = &bootstrap.static_resources {
        for l in &sr.listeners {
            by_type.entry(TypeUrl::Listener).or_default().push(Any {
                type_url: TypeUrl::Listener.url().into(),
                value: l.encode_to_vec(),
            });
        }
        for c in &sr.clusters {
            by_type.entry(TypeUrl::Cluster).or_default().push(Any {
                type_url: TypeUrl::Cluster.url().into(),
                value: c.encode_to_vec(),
            });
        }
    }
    Ok(StaticConfig {
        by_type,
        admin,
        bootstrap: Some(bootstrap),
    })
}

/// Apply a static config to an empty resource store, type by type.
pub fn apply(cfg: &StaticConfig, resources: &mut Resources) -> Result<(), String> {
    for type_url in TypeUrl::PUSH_ORDER {
        let items = cfg.by_type.get(&type_url).cloned().unwrap_or_default();
        let incoming = items
            .into_iter()
            .map(|any| Incoming {
                name: None,
                version: "static".into(),
                any,
            })
            .collect();
        resources.apply(type_url, "static", incoming, &[], true)?;
    }
    Ok(())
}
