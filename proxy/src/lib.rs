//! mast-proxy: the Mast sidecar. It takes the same xDS (LDS, RDS, CDS, EDS over ADS) that
//! pilot gives a real Envoy and serves the pod's traffic with Envoy's semantics, Istio's
//! ports and Istio's metrics, so the two are interchangeable in a mesh.
//!
//! Layout: [`config`] (the sidecar environment), [`xds`] (the ADS client) and
//! [`static_config`] (`--config FILE`) feed [`state`], built from [`resources`] (checked
//! xDS resources); [`listen`] accepts connections and hands them to [`http`] (the router) or
//! [`tcp`]; [`upstream`] holds clusters, load balancing and pools; [`metrics`] and [`admin`]
//! report; [`identity`] keeps the workload certificate that [`tls`] uses for mTLS; [`app`]
//! wires it together. [`agent`] plays pilot-agent's part for Istio's injected pod spec (the
//! `:15020` status server with app probes, merged metrics and drain; `mast-proxy request`),
//! and [`cli`] reads both mast-proxy's flags and Istio's sidecar argv.

pub mod admin;
pub mod agent;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod identity;
pub mod listen;
pub mod matcher;
pub mod memory;
pub mod metrics;
pub mod rbac;
pub mod resources;
pub mod sds;
pub mod shared;
pub mod state;
pub mod static_config;
pub mod tcp;
pub mod tls;
pub mod trace_export;
pub mod upstream;
pub mod xds;
