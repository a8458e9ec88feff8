//! pilot: the control plane's heart. It reads mesh configuration (a folder of YAML now,
//! Kubernetes later), keeps the mesh model, translates it into Envoy xDS per proxy and serves
//! it over ADS — to a real Envoy or to mast-proxy alike.

pub mod ads;
pub mod debug;
pub mod dump;
pub mod metrics;
pub mod server;
pub mod source;
pub mod xds;
