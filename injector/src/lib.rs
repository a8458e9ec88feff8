//! Mast's sidecar injection support.
//!
//! Today this is the transparent traffic capture that Istio's `istio-init` container performs
//! with `istio-iptables`: [`capture`] plans the iptables rules (pure, unit-tested against
//! Istio's listings), [`cli`] reads istio-iptables' flags and environment so `mast-init` is a
//! drop-in for the injected init container's args, and [`iptables`] applies and removes the
//! rules through `iptables-restore` (nf_tables backend when present).

pub mod capture;
pub mod cli;
pub mod inject;
pub mod iptables;
pub mod kube_inject;
pub mod webhook;
