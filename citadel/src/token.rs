//! Local-mode workload credentials: the laptop's stand-in for Kubernetes service-account
//! tokens.
//!
//! On a cluster citadel authenticates a CSR by the caller's projected service-account token
//! (TokenReview). Locally there is no API server, so citadel keeps a random key in its CA
//! directory (`workload-token.key`, 0600) and accepts tokens MACed with it. Whoever can read
//! the CA directory — the person running the mesh — issues one per workload with `mastctl
//! credential`; the sidecar presents it as Istio's sidecar presents its token
//! (`authorization: Bearer …`). A token binds one namespace and service account and
//! expires; it cannot be widened without the key.
//!
//! Format: `mast1.<base64url(json {"ns","sa","exp"})>.<base64url(HMAC-SHA256)>`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::ca::{CaError, ensure_dir};

const KEY_FILE: &str = "workload-token.key";
const PREFIX: &str = "mast1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credential (authorization: Bearer <token>)")]
    Missing,
    #[error("malformed credential")]
    Malformed,
    #[error("credential signature does not verify")]
    BadSignature,
    #[error("credential expired")]
    Expired,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    ns: String,
    sa: String,
    exp: u64,
}

fn key(dir: &Path, create: bool) -> Result<hmac::Key, CaError> {
    let path = dir.join(KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            ensure_dir(dir)?;
            let mut b = vec![0u8; 32];
            SystemRandom::new()
                .fill(&mut b)
                .map_err(|_| CaError::Sign("no randomness".into()))?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| CaError::Io {
                    path: path.clone(),
                    source,
                })?;
            f.write_all(&b).map_err(|source| CaError::Io {
                path: path.clone(),
                source,
            })?;
            b
        }
        Err(source) => return Err(CaError::Io { path, source }),
    };
    if bytes.len() < 32 {
        return Err(CaError::BadFile {
            path,
            message: "key shorter than 32 bytes".into(),
        });
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// Issue a credential for `namespace/service_account`, valid for `ttl`.
pub fn issue(
    dir: &Path,
    namespace: &str,
    service_account: &str,
    ttl: Duration,
) -> Result<String, CaError> {
    let key = key(dir, true)?;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(ttl)
        .as_secs();
    let claims = serde_json::to_vec(&Claims {
        ns: namespace.into(),
        sa: service_account.into(),
        exp,
    })
    .map_err(|e| CaError::Sign(e.to_string()))?;
    let body = format!("{PREFIX}.{}", B64.encode(claims));
    let tag = hmac::sign(&key, body.as_bytes());
    Ok(format!("{body}.{}", B64.encode(tag.as_ref())))
}

/// Checks credentials against the CA directory's key.
pub struct TokenVerifier {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier")
    }
}

impl TokenVerifier {
    /// Load (or create) the key in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        Ok(Self {
            key: key(dir, true)?,
        })
    }

    /// The `(namespace, service account)` a credential vouches for.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<(String, String), AuthError> {
        let (body, tag) = token.trim().rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (prefix, claims) = body.split_once('.').ok_or(AuthError::Malformed)?;
        if prefix != PREFIX {
            return Err(AuthError::Malformed);
        }
        let tag = B64.decode(tag).map_err(|_| AuthError::Malformed)?;
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = B64
            .decode(claims)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Malformed)?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok((claims.ns, claims.sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_bind_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        let t = issue(dir.path(), "default", "user", Duration::from_secs(60)).unwrap();
        let v = TokenVerifier::load(dir.path()).unwrap();
        assert_eq!(
            v.verify(&t, SystemTime::now()),
            Ok(("default".into(), "user".into()))
        );
        // Key file is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = TokenVerifier::load(dir.path()).unwrap();
        let t = issue(dir.path(), "default", "user", Duration::from_secs(60)).unwrap();
        // Swap the claims for another service account, keep the tag.
        let (_, rest) = t.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        let forged = format!(
            "{PREFIX}.{}.{tag}",
            B64.encode(br#"{"ns":"default","sa":"admin","exp":99999999999}"#)
        );
        assert_eq!(
            v.verify(&forged, SystemTime::now()),
            Err(AuthError::BadSignature)
        );
        let later = SystemTime::now() + Duration::from_secs(120);
        assert_eq!(v.verify(&t, later), Err(AuthError::Expired));
        let other = tempfile::tempdir().unwrap();
        let foreign = issue(other.path(), "default", "user", Duration::from_secs(60)).unwrap();
        assert_eq!(
            v.verify(&foreign, SystemTime::now()),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify("nonsense", SystemTime::now()),
            Err(AuthError::Malformed)
        );
    }
}
