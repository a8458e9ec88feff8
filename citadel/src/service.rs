//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, served over TLS.
//!
//! Who may have which certificate: the caller proves an identity — a bearer token
//! (`authorization: Bearer …`) checked by the configured [`Authenticator`] (local workload
//! credentials, see [`crate::token`], or Kubernetes TokenReview) or, for renewals, the mesh
//! certificate it presents on the TLS connection — and gets a certificate for exactly that
//! SPIFFE ID. A CSR
//! naming anyone else is refused with PERMISSION_DENIED and logged with the caller and the
//! identity it asked for.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mast_proto::istio::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mast_proto::istio::ca::{IstioCertificateRequest, IstioCertificateResponse};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::SpiffeId;
use crate::auth::{AuthenticationError, Authenticator};
use crate::ca::{CaError, CertificateAuthority};
use crate::token::TokenVerifier;

/// Istio's CA metrics (`citadel_server_*`), for mastd's `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every CreateCertificate call.
    pub csr: Counter,
    pub authentication_failure: Counter,
    /// Malformed CSR or validity.
    pub csr_parsing_err: Counter,
    /// A CSR for an identity that is not the caller's.
    pub id_mismatch: Counter,
    pub sign_err: Counter,
    pub success_cert_issuance: Counter,
    /// The current root's expiry (Unix seconds).
    pub root_cert_expiry: Gauge,
}

impl Counters {
    /// Register under Istio's exact names: mastd's `/metrics` writes every counter under the
    /// name it was registered with (`mast_pilot::metrics::encode_text`), no `_total` added.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            ("citadel_server_csr_count", "CSRs received", &self.csr),
            (
                "citadel_server_authentication_failure_count",
                "CSRs from callers that could not be authenticated",
                &self.authentication_failure,
            ),
            (
                "citadel_server_csr_parsing_err_count",
                "Malformed CSRs or validity durations",
                &self.csr_parsing_err,
            ),
            (
                "citadel_server_id_extraction_err_count",
                "CSRs for an identity other than the caller's",
                &self.id_mismatch,
            ),
            (
                "citadel_server_csr_sign_err_count",
                "CSRs that failed to sign",
                &self.sign_err,
            ),
            (
                "citadel_server_success_cert_issuance_count",
                "Certificates issued",
                &self.success_cert_issuance,
            ),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "Unix time at which the signing root expires",
            self.root_cert_expiry.clone(),
        );
    }
}

/// The CA service.
#[derive(Debug, Clone)]
pub struct Citadel {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<dyn Authenticator>,
    pub counters: Arc<Counters>,
}

impl Citadel {
    /// The CA with local workload credentials (the CA directory's key).
    pub fn new(ca: Arc<CertificateAuthority>, tokens: TokenVerifier) -> Self {
        Self::with_authenticator(ca, Arc::new(tokens))
    }

    /// The CA with any bearer-token check, e.g. Kubernetes TokenReview
    /// (`mast_kube::tokenreview::TokenReviewer`).
    pub fn with_authenticator(
        ca: Arc<CertificateAuthority>,
        authenticator: Arc<dyn Authenticator>,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        counters.root_cert_expiry.set(ca.root_not_after_unix());
        Self {
            ca,
            tokens: authenticator,
            counters,
        }
    }

    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Who is calling: the bearer credential, else the mesh certificate on the connection.
    async fn caller(&self, req: &Request<IstioCertificateRequest>) -> Result<SpiffeId, Status> {
        let td = &self.ca.opts.trust_domain;
        if let Some(v) = req.metadata().get("authorization") {
            let text = v
                .to_str()
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            let token = text
                .strip_prefix("Bearer ")
                .ok_or_else(|| Status::unauthenticated("authorization must be a Bearer token"))?;
            let caller = self.tokens.authenticate(token).await.map_err(|e| match e {
                AuthenticationError::Refused(m) => Status::unauthenticated(m),
                e @ AuthenticationError::Unavailable(_) => Status::unavailable(e.to_string()),
            })?;
            return Ok(SpiffeId::new(
                td,
                &caller.namespace,
                &caller.service_account,
            ));
        }
        // Renewal with the current certificate (verified against the bundle by TLS).
        if let Some(certs) = req.peer_certs()
            && let Some(leaf) = certs.first()
            && let Ok((_, x)) = x509_parser::parse_x509_certificate(leaf.as_ref())
            && let Ok(Some(san)) = x.subject_alternative_name()
        {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(u) = n
                    && let Ok(id) = u.parse::<SpiffeId>()
                    && id.trust_domain == *td
                {
                    return Ok(id);
                }
            }
        }
        Err(Status::unauthenticated(
            "no credential: send authorization: Bearer <token> or a mesh client certificate",
        ))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for Citadel {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.remote_addr();
        self.counters.csr.inc();
        let caller = match self.caller(&request).await {
            Ok(c) => c,
            Err(s) => {
                self.counters.authentication_failure.inc();
                tracing::warn!(peer = ?peer, reason = %s.message(), "CSR refused: unauthenticated");
                return Err(s);
            }
        };
        let req = request.into_inner();
        let ttl = match req.validity_duration {
            0 => None,
            s if s < 0 => return Err(Status::invalid_argument("validity_duration is negative")),
            s => Some(Duration::from_secs(s as u64)),
        };
        match self.ca.sign_csr(&req.csr, &caller, ttl) {
            Ok(cert_chain) => {
                self.counters.success_cert_issuance.inc();
                tracing::debug!(identity = %caller, "certificate issued");
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain,
                    root_cert: None,
                }))
            }
            Err(CaError::IdentityMismatch { requested, caller }) => {
                self.counters.id_mismatch.inc();
                tracing::warn!(
                    peer = ?peer,
                    %caller,
                    requested = ?requested,
                    "CSR refused: it asks for an identity that is not the caller's"
                );
                Err(Status::permission_denied(format!(
                    "caller {caller} may not have a certificate for {}",
                    requested.join(", ")
                )))
            }
            Err(e @ (CaError::BadCsr(_) | CaError::BadTtl(_))) => {
                self.counters.csr_parsing_err.inc();
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(e) => {
                self.counters.sign_err.inc();
                Err(Status::internal(e.to_string()))
            }
        }
    }
}

/// citadel's TLS identity: its serving certificate and the bundle that client certificates
/// (renewals) must chain to.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
}

impl ServerTls {
    /// A serving certificate for citadel itself, from its own CA, for istiod's names,
    /// `localhost` and the listen address.
    pub fn from_ca(ca: &CertificateAuthority, addr: SocketAddr) -> Result<Self, CaError> {
        let ips = vec![addr.ip(), std::net::IpAddr::from([127, 0, 0, 1])];
        let (cert_chain_pem, key_pem) =
            ca.issue_server_cert(&[], &ips, Duration::from_secs(365 * 24 * 3600))?;
        Ok(Self {
            cert_chain_pem,
            key_pem,
            client_ca_pem: ca.trust_bundle_pem(),
        })
    }

    pub fn tonic(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_chain_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.client_ca_pem))
            .client_auth_optional(true)
    }
}

/// The largest request message decoded (tonic's default is 4 MiB): a CSR over
/// [`crate::ca::MAX_CSR_BYTES`] is refused anyway, so a bigger message is refused before it is
/// buffered (tonic answers OUT_OF_RANGE, "decoded message length too large").
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Serve the CA API over TLS until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    citadel: Citadel,
    tls: ServerTls,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Small request/response calls: without TCP_NODELAY, Nagle and delayed ACKs put ~40 ms
    // on every call.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .tls_config(tls.tonic())?
        .add_service(
            IstioCertificateServiceServer::new(citadel)
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
