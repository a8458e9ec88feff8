//! citadel: Mast's certificate authority, a component of mastd as Istio's CA is of istiod.
//!
//! Every workload gets `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` from
//! Istio's CA API (`CreateCertificate`), for exactly the identity its credential proves.
//! [`ca`] holds the signing certificate and trust bundle (self-signed root or plug-in
//! `cacerts`, from a directory or from a Kubernetes Secret's data), [`auth`] the pluggable
//! caller authentication, [`token`] the local-mode workload credential, [`service`] the gRPC
//! server.

pub mod auth;
pub mod ca;
pub mod service;
pub mod token;

use std::fmt;
use std::str::FromStr;

pub use auth::{AuthFuture, AuthenticationError, Authenticator, Caller};
pub use ca::{
    CaError, CaOptions, CaPem, CertificateAuthority, MAX_CSR_BYTES, RotationStep, rotate_root,
};
pub use service::{Citadel, ServerTls, serve};
pub use token::TokenVerifier;

/// Where citadel keeps its root when no directory is given (mastd and mastctl agree on it):
/// `mast/ca` in the user's state directory (XDG base directories: `$XDG_STATE_HOME`, else
/// `~/.local/state`). `None` when neither is set to an absolute path.
pub fn default_ca_dir() -> Option<std::path::PathBuf> {
    default_ca_dir_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

fn default_ca_dir_from(
    state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<std::path::PathBuf> {
    let absolute =
        |v: std::ffi::OsString| Some(std::path::PathBuf::from(v)).filter(|p| p.is_absolute());
    state_home
        .and_then(absolute)
        .or_else(|| home.and_then(absolute).map(|h| h.join(".local/state")))
        .map(|state| state.join("mast/ca"))
}

/// A workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a SPIFFE workload ID (spiffe://<td>/ns/<ns>/sa/<sa>): {0:?}")]
pub struct BadSpiffeId(String);

impl FromStr for SpiffeId {
    type Err = BadSpiffeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadSpiffeId(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Self::new(td, ns, sa))
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests;
