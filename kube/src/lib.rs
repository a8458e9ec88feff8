//! Mast on Kubernetes: the API server is the engine.
//!
//! On a cluster mastd reads the same mesh model from the API server that it reads from a folder
//! on a laptop: kube-rs reflectors keep Services, Pods, Namespaces, ServiceAccounts and every
//! mesh custom resource, and hand them to the same parsers and the same last-good store
//! (`mast_mesh_config`), so the xDS is the same whichever the source. Around that sit the
//! pieces a cluster needs and a laptop does not: status conditions written back on rejected
//! resources and on Gateway API objects of Mast's classes, the proxies of Gateway API Gateways
//! deployed as istiod's deployment controller does, TokenReview to authenticate sidecars to citadel, the CA's root in a Secret and the
//! trust bundle published as a ConfigMap in every namespace, the injector webhook's caBundle,
//! and leader election so only one replica writes.

pub mod client;
pub mod gateway_deploy;
pub mod gateway_status;
pub mod source;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub mod ca_secret;
pub mod leader;
pub mod tokenreview;
pub mod trust_bundle;
pub mod webhook_ca;
