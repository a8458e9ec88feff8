//! SDS: the workload certificate and trust bundle for a co-located Envoy.
//!
//! In Istio, istio-agent gets the certificate from the CA and serves it to Envoy over SDS
//! on a Unix socket (`./var/run/secrets/workload-spiffe-uds/socket`), under the names
//! `default` and `ROOTCA` that pilot's config refers to. mast-proxy plays that role with
//! `--sds-socket` (and `--agent` when it should do nothing else), so an Envoy sidecar and a
//! mast-proxy sidecar hold certificates from the same CA and talk mTLS to each other.
//!
//! Each SDS stream is state-of-the-world for the names it asks for; a rotation is pushed on
//! every open stream. Until the first certificate exists nothing is sent, and Envoy keeps the
//! listeners and clusters that need it warming, as with istio-agent.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use mast_proto::TypeUrl;
use prost::Message;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::tls::{SDS_DEFAULT, SDS_ROOTCA, SecretStore, WorkloadCert};

/// Bind the SDS socket, replacing a stale one from an earlier run.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Serve SDS until the process exits.
pub async fn serve(listener: UnixListener, store: Arc<SecretStore>) {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let svc = SecretDiscoveryServiceServer::new(Sds {
        store,
        nonce: Arc::new(AtomicU64::new(0)),
    });
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(error = %e, "SDS server stopped");
    }
}

enum Event {
    Request(Option<Result<Box<DiscoveryRequest>, Status>>),
    /// `false`: the store is gone.
    Rotated(bool),
}

struct Sds {
    store: Arc<SecretStore>,
    nonce: Arc<AtomicU64>,
}

type ResponseStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "delta SDS is not served; use state-of-the-world (Istio's default)",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut requests = request.into_inner();
        let store = Arc::clone(&self.store);
        let nonce = Arc::clone(&self.nonce);
        let out = async_stream::try_stream! {
            let mut updates = store.subscribe();
            let mut names: BTreeSet<String> = BTreeSet::new();
            let mut sent_version = 0u64;
            loop {
                let event = tokio::select! {
                    req = requests.next() => Event::Request(req.map(|r| r.map(Box::new))),
                    changed = updates.changed() => Event::Rotated(changed.is_ok()),
                };
                match event {
                    Event::Request(None) | Event::Rotated(false) => break,
                    Event::Request(Some(req)) => {
                        let req = req?;
                        if let Some(err) = &req.error_detail {
                            tracing::warn!(names = ?req.resource_names, error = %err.message, "SDS: Envoy rejected a secret");
                        }
                        let wanted: BTreeSet<String> = req.resource_names.iter().cloned().collect();
                        if wanted != names {
                            names = wanted;
                            sent_version = 0;
                        }
                    }
                    Event::Rotated(true) => {}
                }
                let version = *updates.borrow_and_update();
                if version == sent_version || names.is_empty() {
                    continue;
                }
                let Some(cert) = store.current() else { continue };
                let n = nonce.fetch_add(1, Ordering::Relaxed);
                sent_version = version;
                yield response(&cert, &names, version, n);
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let cert = self
            .store
            .current()
            .ok_or_else(|| Status::unavailable("no workload certificate yet"))?;
        let names = request.into_inner().resource_names.into_iter().collect();
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(response(&cert, &names, 0, n)))
    }
}

fn response(
    cert: &WorkloadCert,
    names: &BTreeSet<String>,
    version: u64,
    nonce: u64,
) -> DiscoveryResponse {
    let resources = names
        .iter()
        .filter_map(|name| secret(cert, name))
        .map(|s| Any {
            type_url: TypeUrl::Secret.url().into(),
            value: s.encode_to_vec(),
        })
        .collect();
    DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: TypeUrl::Secret.url().into(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn inline(bytes: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.as_bytes().to_vec())),
        ..Default::default()
    })
}

/// The secret called `name`: one of Istio's two workload secrets, or files on this host.
fn secret(cert: &WorkloadCert, name: &str) -> Option<Secret> {
    let kind = match name {
        SDS_DEFAULT => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&cert.chain_pem),
            private_key: inline(&cert.key_pem),
            ..Default::default()
        }),
        SDS_ROOTCA => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(&cert.roots_pem),
            ..Default::default()
        }),
        other => file_secret(other)?,
    };
    Some(Secret {
        name: name.to_string(),
        r#type: Some(kind),
    })
}

/// istio-agent's file secrets, which istiod names for a DestinationRule's TLS origination:
/// `file-root:<path>` (CAs; `file-root:system` is the system bundle) and
/// `file-cert:<cert>~<key>`. The files are read for each response.
fn file_secret(name: &str) -> Option<secret::Type> {
    use crate::resources::tls::{
        FILE_CERT_PREFIX, FILE_CERT_SEPARATOR, FILE_ROOT_PREFIX, SYSTEM_ROOTS,
    };
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(name, path, error = %e, "SDS: cannot read the secret's file");
            None
        }
    };
    if let Some(path) = name.strip_prefix(FILE_ROOT_PREFIX) {
        let pem = if path == SYSTEM_ROOTS {
            let found = crate::tls::credentials::system_bundle_path();
            if found.is_none() {
                tracing::warn!(name, "SDS: no system CA bundle on this host");
            }
            read(found?)?
        } else {
            read(path)?
        };
        return Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(&pem),
                ..Default::default()
            },
        ));
    }
    if let Some(files) = name.strip_prefix(FILE_CERT_PREFIX) {
        let Some((cert, key)) = files.split_once(FILE_CERT_SEPARATOR) else {
            tracing::warn!(name, "SDS: expected file-cert:<certificate>~<key>");
            return None;
        };
        return Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&read(cert)?),
            private_key: inline(&read(key)?),
            ..Default::default()
        }));
    }
    tracing::warn!(name, "SDS: unknown secret requested");
    None
}
