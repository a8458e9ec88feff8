//! `mast-proto`: the protobuf APIs Mast speaks beyond the Rust types `envoy-types` gives.
//!
//! * [`json`]: Envoy config as proto3 JSON, the way Envoy itself prints and reads it
//!   (original snake_case field names, `@type` on every `Any`, nested `Any`s expanded). The
//!   `envoy-types` structs have no serde support, so this goes through a reflection pool of
//!   Envoy's `.proto` descriptors compiled at build time. Used for pilot's
//!   `/debug/config_dump`, the sidecar's admin `/config_dump`, and to read Envoy bootstraps.
//! * [`config_dump`]: builds Envoy's admin `ConfigDump` (clusters, listeners, routes, endpoints,
//!   secrets) so our dumps have exactly the shape `istioctl proxy-config` and people expect.
//! * [`istio`]: Istio's CA API (`istio.v1.auth.IstioCertificateService`), client and server.
//! * [`xds`]: the xDS resource types as one typed [`TypeUrl`] (URL, short name, push order),
//!   so pilot, mast-proxy and the load tools cannot disagree on a type URL.
//! * [`duration`]: Go's duration syntax (`1m30s`, `250us`), as Istio takes it in YAML, flags
//!   and environment; the mesh config and the sidecar both parse with it.

pub mod config_dump;
pub mod duration;
pub mod istio;
pub mod json;
pub mod xds;

pub use config_dump::ConfigDumpBuilder;
pub use duration::{DurationError, parse_go_duration};
pub use json::{
    Error, any_to_json, decode_any, encoded_to_json, json_to_any, json_to_message, message_to_json,
    pool, yaml_to_any, yaml_to_message,
};
pub use xds::{TypeUrl, UnknownTypeUrl};
