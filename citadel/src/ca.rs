//! The certificate authority: a signing certificate and key, and the trust bundle.
//!
//! Two ways to get a signing certificate, as Istio's CA:
//! - **self-signed root** (default): made on first start (ECDSA P-256, 10 years) and kept in
//!   the CA directory as `root-cert.pem` / `root-key.pem` (0600), so a restart keeps every
//!   issued certificate valid;
//! - **plug-in CA**: Istio's `cacerts` files in the same directory (`ca-cert.pem`,
//!   `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), typically an intermediate under an
//!   organisation's root; workloads get the intermediate chain with their certificate.
//!
//! The same material can also come from memory ([`CaPem`], [`CertificateAuthority::from_pem`]):
//! on Kubernetes it lives in a Secret (`istio-ca-secret`, or the plug-in `cacerts`) under the
//! same key names as the files, and mastd's replicas must share one root without a shared disk.
//!
//! **Chains and trust bundles.** A CreateCertificate answer lists the leaf first, then the
//! intermediates, then the trust anchors: every *self-signed* certificate at the end of the
//! list is a root the workload must trust. During a root rotation that tail holds the staged
//! next root, then (once it signs) the previous roots until they expire, so workloads holding
//! certificates from either root keep talking to each other (see [`rotate_root`], README).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::SpiffeId;

/// Lifetime of a self-signed root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this far in the past, for clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error(
        "plug-in CA in {dir}: missing {missing} (need ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)"
    )]
    IncompletePlugin { dir: PathBuf, missing: String },
    #[error("{key}: {message}")]
    BadPem { key: &'static str, message: String },
    #[error("bad CSR: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {requested:?}, but the caller is {caller}")]
    IdentityMismatch {
        requested: Vec<String>,
        caller: String,
    },
    #[error("bad validity: {0}")]
    BadTtl(String),
    #[error("signing: {0}")]
    Sign(String),
}

/// The largest CSR citadel reads (PEM bytes). A workload CSR is well under 2 KiB (an RSA-4096
/// key makes it ~1.7 KiB); anything near this is not a workload asking for its identity.
pub const MAX_CSR_BYTES: usize = 32 * 1024;

/// Settings of the CA.
#[derive(Debug, Clone)]
pub struct CaOptions {
    pub trust_domain: String,
    /// Workload certificate lifetime when the CSR asks for none (Istio: 24 h).
    pub default_ttl: Duration,
    /// The longest lifetime granted (Istio: 90 days).
    pub max_ttl: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// The CA's material as PEM text under Istio's key names (`cacerts` / `istio-ca-secret`).
///
/// A self-signed root has only `ca-cert.pem` and `ca-key.pem` (Istio leaves `cert-chain.pem`
/// and `root-cert.pem` empty in `istio-ca-secret`); a plug-in CA has all four, `root-cert.pem`
/// holding the trust anchor(s) and `cert-chain.pem` the signing certificate and intermediates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CaPem {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert_chain: String,
    pub root_cert: String,
}

impl CaPem {
    pub const CA_CERT: &'static str = "ca-cert.pem";
    pub const CA_KEY: &'static str = "ca-key.pem";
    pub const CERT_CHAIN: &'static str = "cert-chain.pem";
    pub const ROOT_CERT: &'static str = "root-cert.pem";

    /// A new self-signed root (ECDSA P-256, 10 years), as citadel makes on first start.
    pub fn self_signed(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let cert = root_params(trust_domain)
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Self {
            ca_cert: cert.pem(),
            ca_key: key.serialize_pem(),
            cert_chain: String::new(),
            root_cert: String::new(),
        })
    }

    /// The certificates workloads must trust: `root-cert.pem`, or the self-signed `ca-cert.pem`.
    pub fn trust_anchors_pem(&self) -> String {
        if self.root_cert.trim().is_empty() {
            self.ca_cert.clone()
        } else {
            self.root_cert.clone()
        }
    }
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem")
            .field("ca_cert", &self.ca_cert.len())
            .field("ca_key", &"<redacted>")
            .field("cert_chain", &self.cert_chain.len())
            .field("root_cert", &self.root_cert.len())
            .finish()
    }
}

/// The signing certificate, its key, and what workloads must trust.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    signing_not_after: OffsetDateTime,
    /// Served after the leaf: intermediates (plug-in) then the root(s).
    chain_tail: Vec<String>,
    /// Every root workloads trust (current first, then previous roots still valid).
    bundle: Vec<String>,
    pub opts: CaOptions,
    pub plugged_in: bool,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.opts.trust_domain)
            .field("plugged_in", &self.plugged_in)
            .field("roots", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn bad(path: &Path, message: impl std::fmt::Display) -> CaError {
    CaError::BadFile {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Write a file readable by its owner only (keys), atomically.
fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn write_public(path: &Path, text: &str) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| CaError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Make the CA directory (0700) if it is not there.
pub fn ensure_dir(dir: &Path) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CaError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// PEM blocks of a file, each as its own PEM string.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END CERTIFICATE") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// `not_after` of a PEM certificate.
fn not_after(pem: &str) -> Option<OffsetDateTime> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, x) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(x.validity().not_after.to_datetime())
}

fn root_params(trust_domain: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now + ROOT_TTL;
    p
}

impl CertificateAuthority {
    /// Load the CA from `dir` (plug-in files, or the persisted self-signed root), creating a
    /// self-signed root on first use.
    pub fn load_or_create(dir: &Path, opts: CaOptions) -> Result<Self, CaError> {
        ensure_dir(dir)?;
        let plugin = ["ca-cert.pem", "ca-key.pem", "cert-chain.pem"];
        let present: Vec<&str> = plugin
            .iter()
            .copied()
            .filter(|f| dir.join(f).exists())
            .collect();
        if !present.is_empty() {
            let missing: Vec<&str> = plugin
                .iter()
                .copied()
                .chain(["root-cert.pem"])
                .filter(|f| !dir.join(f).exists())
                .collect();
            if !missing.is_empty() {
                return Err(CaError::IncompletePlugin {
                    dir: dir.to_path_buf(),
                    missing: missing.join(", "),
                });
            }
            return Self::plugin(dir, opts);
        }
        let (cert_path, key_path) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
        if !cert_path.exists() || !key_path.exists() {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| CaError::Sign(e.to_string()))?;
            let cert = root_params(&opts.trust_domain)
                .self_signed(&key)
                .map_err(|e| CaError::Sign(e.to_string()))?;
            write_private(&key_path, &key.serialize_pem())?;
            write_public(&cert_path, &cert.pem())?;
            tracing::info!(dir = %dir.display(), "created a self-signed root CA (10 years)");
        }
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| bad(&key_path, e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&cert_path, e))?;
        let signing_not_after =
            not_after(&cert_pem).ok_or_else(|| bad(&cert_path, "not a certificate"))?;
        let mut bundle = vec![cert_pem.clone()];
        bundle.extend(staged_root(dir)?);
        bundle.extend(previous_roots(dir)?);
        Ok(Self {
            issuer,
            signing_not_after,
            chain_tail: bundle.clone(),
            bundle,
            opts,
            plugged_in: false,
        })
    }

    fn plugin(dir: &Path, opts: CaOptions) -> Result<Self, CaError> {
        let cert_path = dir.join("ca-cert.pem");
        let key_path = dir.join("ca-key.pem");
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| bad(&key_path, e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&cert_path, e))?;
        let signing_not_after =
            not_after(&cert_pem).ok_or_else(|| bad(&cert_path, "not a certificate"))?;
        let chain_path = dir.join("cert-chain.pem");
        let chain = pem_blocks(&read(&chain_path)?);
        if chain.is_empty() {
            return Err(bad(&chain_path, "no certificate"));
        }
        let roots_path = dir.join("root-cert.pem");
        let mut bundle = pem_blocks(&read(&roots_path)?);
        if bundle.is_empty() {
            return Err(bad(&roots_path, "no certificate"));
        }
        bundle.extend(previous_roots(dir)?);
        // cert-chain.pem holds the signing certificate and the intermediates up to the root;
        // workloads get them after their leaf, then the trust anchors.
        let mut tail: Vec<String> = chain
            .into_iter()
            .filter(|c| !bundle.iter().any(|r| r.trim() == c.trim()))
            .collect();
        tail.extend(bundle.iter().cloned());
        tracing::info!(dir = %dir.display(), "plug-in CA loaded (cacerts)");
        Ok(Self {
            issuer,
            signing_not_after,
            chain_tail: tail,
            bundle,
            opts,
            plugged_in: true,
        })
    }

    /// The CA from in-memory PEM (a Kubernetes Secret's data): a self-signed root when
    /// `root-cert.pem` is empty, else a plug-in CA whose `cert-chain.pem` (the signing
    /// certificate and intermediates; empty means signed directly by the root) workloads get
    /// after their leaf, then the roots.
    pub fn from_pem(pem: &CaPem, opts: CaOptions) -> Result<Self, CaError> {
        let bad = |key, message: &dyn std::fmt::Display| CaError::BadPem {
            key,
            message: message.to_string(),
        };
        if pem_blocks(&pem.ca_cert).len() != 1 {
            return Err(bad(CaPem::CA_CERT, &"expected exactly one certificate"));
        }
        let key = KeyPair::from_pem(&pem.ca_key).map_err(|e| bad(CaPem::CA_KEY, &e))?;
        let issuer =
            Issuer::from_ca_cert_pem(&pem.ca_cert, key).map_err(|e| bad(CaPem::CA_CERT, &e))?;
        let signing_not_after =
            not_after(&pem.ca_cert).ok_or_else(|| bad(CaPem::CA_CERT, &"not a certificate"))?;
        let self_signed = pem.root_cert.trim().is_empty();
        let bundle = if self_signed {
            vec![pem.ca_cert.clone()]
        } else {
            let roots = pem_blocks(&pem.root_cert);
            if roots.is_empty() {
                return Err(bad(CaPem::ROOT_CERT, &"no certificate"));
            }
            roots
        };
        let mut chain = pem_blocks(&pem.cert_chain);
        if chain.is_empty() {
            chain.push(pem.ca_cert.clone());
        }
        let mut tail: Vec<String> = chain
            .into_iter()
            .filter(|c| !bundle.iter().any(|r| r.trim() == c.trim()))
            .collect();
        tail.extend(bundle.iter().cloned());
        Ok(Self {
            issuer,
            signing_not_after,
            chain_tail: tail,
            plugged_in: !bundle.iter().any(|r| r.trim() == pem.ca_cert.trim()),
            bundle,
            opts,
        })
    }

    /// When the signing chain's root expires (Unix seconds; 0 if unreadable).
    pub fn root_not_after_unix(&self) -> i64 {
        self.bundle
            .first()
            .and_then(|r| not_after(r))
            .map_or(0, |t| t.unix_timestamp())
    }

    /// The trust bundle, PEM.
    pub fn trust_bundle_pem(&self) -> String {
        self.bundle.concat()
    }

    /// Sign a workload CSR for `identity`: the CSR's signature must verify, its only SAN must
    /// be the caller's SPIFFE ID (no second URI, no DNS name), it must be at most
    /// [`MAX_CSR_BYTES`], and a requested lifetime over `max_ttl` is refused as Istio's CA
    /// does (`requested TTL … is greater than the max allowed TTL …`), not silently cut.
    /// Returns the PEM chain, leaf first.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>, CaError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CaError::BadCsr(format!(
                "{} bytes, over the {MAX_CSR_BYTES}-byte limit",
                csr_pem.len()
            )));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let want = identity.to_string();
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                other => format!("{other:?}"),
            })
            .collect();
        if requested != [want.clone()] {
            return Err(CaError::IdentityMismatch {
                requested,
                caller: want,
            });
        }
        let ttl = match ttl {
            None => self.opts.default_ttl,
            Some(t) if t.is_zero() => return Err(CaError::BadTtl("zero".into())),
            Some(t) if t > self.opts.max_ttl => {
                return Err(CaError::BadTtl(format!(
                    "requested TTL {}s is greater than the max allowed TTL {}s",
                    t.as_secs(),
                    self.opts.max_ttl.as_secs()
                )));
            }
            Some(t) => t,
        };
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = csr.params.subject_alt_names.clone();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.not_before = now - BACKDATE;
        p.not_after = (now + ttl).min(self.signing_not_after);
        p.serial_number = Some(random_serial()?);
        csr.params = p;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut out = Vec::with_capacity(1 + self.chain_tail.len());
        out.push(cert.pem());
        out.extend(self.chain_tail.iter().cloned());
        Ok(out)
    }

    /// citadel's own TLS serving certificate (istiod's names, plus `extra_dns` and `ips`),
    /// with its key, both PEM.
    pub fn issue_server_cert(
        &self,
        extra_dns: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut names: Vec<String> = [
            "istiod.istio-system.svc",
            "istiod.istio-system.svc.cluster.local",
            "localhost",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.extend(extra_dns.iter().cloned());
        let mut p = CertificateParams::new(names).map_err(|e| CaError::Sign(e.to_string()))?;
        p.subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.distinguished_name = DistinguishedName::new();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - BACKDATE;
        p.not_after = (now + ttl).min(self.signing_not_after);
        p.serial_number = Some(random_serial()?);
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut chain = cert.pem();
        for c in self.chain_tail.iter().filter(|c| !self.bundle.contains(c)) {
            chain.push_str(c);
        }
        Ok((chain, key.serialize_pem()))
    }
}

fn random_serial() -> Result<rcgen::SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CaError::Sign("no randomness".into()))?;
    b[0] &= 0x7f; // positive
    Ok(rcgen::SerialNumber::from_slice(&b))
}

/// The root staged by [`rotate_root`], trusted before it signs.
fn staged_root(dir: &Path) -> Result<Option<String>, CaError> {
    let path = dir.join("next-root-cert.pem");
    if path.exists() {
        Ok(Some(read(&path)?))
    } else {
        Ok(None)
    }
}

/// Roots from `previous-roots.pem` that have not expired.
fn previous_roots(dir: &Path) -> Result<Vec<String>, CaError> {
    let path = dir.join("previous-roots.pem");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let now = OffsetDateTime::now_utc();
    Ok(pem_blocks(&read(&path)?)
        .into_iter()
        .filter(|c| not_after(c).is_some_and(|t| t > now))
        .collect())
}

/// Root rotation, in two steps so that no workload ever meets a certificate from a root it
/// does not trust yet:
///
/// 1. **stage**: make a new root as `next-root-cert.pem`/`next-root-key.pem`. After a mastd
///    restart it is in every answer's trust bundle, while signing still uses the current root;
///    within one certificate lifetime every workload trusts both.
/// 2. **promote** (the next call): the staged root signs; the old one moves to
///    `previous-roots.pem`, trusted until it expires, so certificates it signed keep working.
///
/// Returns which step ran.
pub fn rotate_root(dir: &Path, opts: &CaOptions) -> Result<RotationStep, CaError> {
    let cert_path = dir.join("root-cert.pem");
    let key_path = dir.join("root-key.pem");
    let next_cert = dir.join("next-root-cert.pem");
    let next_key = dir.join("next-root-key.pem");
    if !next_cert.exists() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let cert = root_params(&opts.trust_domain)
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        write_private(&next_key, &key.serialize_pem())?;
        write_public(&next_cert, &cert.pem())?;
        return Ok(RotationStep::Staged);
    }
    let current = read(&cert_path)?;
    let prev_path = dir.join("previous-roots.pem");
    let mut previous = if prev_path.exists() {
        read(&prev_path)?
    } else {
        String::new()
    };
    previous.push_str(&current);
    write_public(&prev_path, &previous)?;
    write_private(&key_path, &read(&next_key)?)?;
    write_public(&cert_path, &read(&next_cert)?)?;
    for p in [&next_cert, &next_key] {
        fs::remove_file(p).map_err(|source| CaError::Io {
            path: p.to_path_buf(),
            source,
        })?;
    }
    Ok(RotationStep::Promoted)
}

/// What [`rotate_root`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// A new root is trusted (after a restart) but does not sign yet.
    Staged,
    /// The staged root signs; the old one is a previous root.
    Promoted,
}
