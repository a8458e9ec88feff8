//! mastd: the Mast control plane in one binary, as istiod is for Istio. It hosts pilot
//! (config folder → xDS over ADS) and citadel (workload certificates over Istio's CA API on
//! TLS :15012), which also turns on mesh mTLS in the generated config. istiod always runs its
//! CA, so mastd does too: its root lives in `--ca-dir` (by default a state directory of the
//! user's, made on first start); `--no-ca` opts out, and then the mesh runs in plaintext.
//! It serves the sidecar injection webhook on :15017 (`--no-injector` to switch it off) and
//! the telemetry collector with the topology web view on :20001 (`--no-telemetry`; with
//! `--prometheus URL` the graph is read from Prometheus instead of scraped), and receives the
//! sidecars' spans (OTLP :4317/:4318, Zipkin JSON) into a bounded trace store the view's side
//! panel reads, where its own work (config change → validation → push) is traced too.
//!
//! With `--kube` pilot reads the mesh from the Kubernetes API (mast-kube) instead of
//! `--config-dir`, and citadel (unless `--ca-dir` is given) keeps its root in the Secret
//! `istio-ca-secret` (or Istio's plug-in `cacerts`) and checks callers by TokenReview; the
//! elected leader publishes the trust bundle as ConfigMap `istio-ca-root-cert` in every
//! namespace and keeps the injector webhook's caBundle current.
//!
//! The library holds everything but the entry point, so each part can be read (and tested)
//! on its own: [`config`] is the command line, [`app`] wires the parts in order, and the other
//! modules adapt one library crate each to mastd.

pub mod app;
pub mod citadel;
pub mod config;
pub mod injector;
pub mod kube;
pub mod telemetry;
pub mod traces;

pub use app::StartError;
pub use config::Config;
