//! Mast's mesh model and the parsers that fill it from every configuration dialect users
//! already write: Kubernetes, Istio, Gateway API (GAMMA), SMI and Knative.
//!
//! This crate is shared by `mastd` (pilot), `mastctl` (offline `analyze`) and the injector, so
//! it does no networking and builds no xDS: input text in, [`model::MeshModel`] and
//! [`error::ConfigError`]s out. Its Mast dependencies are `mast-proto`, for the duration
//! grammar it shares with the sidecar (every user of this crate links `mast-proto` anyway),
//! and `mast-crds`, whose spec types the Istio dialect reads, so a field of Istio's API has
//! one Rust type for the CRDs and for validation.

pub mod authn;
pub mod error;
pub mod model;
pub mod security;
pub mod telemetry;

pub use error::{ConfigError, ConfigWarning};
pub use model::MeshModel;
pub mod dialect;
pub mod locate;
pub mod source;
pub mod store;
