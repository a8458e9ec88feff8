//! Istio's own gRPC APIs. Today only the CA API: every Istio-compatible sidecar asks the CA
//! to sign its workload certificate with `istio.v1.auth.IstioCertificateService/
//! CreateCertificate`, so Mast's citadel serves exactly this service and mast-proxy calls it.
//! Code generated at build time from `istio/ca.proto` (client and server).

/// `package istio.v1`.
pub mod v1 {
    /// `package istio.v1.auth`: the CA API (request, response, service).
    pub mod auth {
        include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
    }
}

/// Short name for the CA API: `mast_proto::istio::ca::IstioCertificateRequest`, the client
/// `ca::istio_certificate_service_client::IstioCertificateServiceClient` and the server
/// `ca::istio_certificate_service_server::{IstioCertificateService, IstioCertificateServiceServer}`.
pub use v1::auth as ca;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::ca::istio_certificate_service_client::IstioCertificateServiceClient;
    use super::ca::istio_certificate_service_server::{
        IstioCertificateService, IstioCertificateServiceServer,
    };
    use super::ca::{IstioCertificateRequest, IstioCertificateResponse, Roots};

    /// Answers with the CSR, the requested validity and the caller's metadata echoed back, so
    /// the test sees every request field cross the wire.
    struct EchoCa;

    #[tonic::async_trait]
    impl IstioCertificateService for EchoCa {
        async fn create_certificate(
            &self,
            request: Request<IstioCertificateRequest>,
        ) -> Result<Response<IstioCertificateResponse>, Status> {
            let req = request.into_inner();
            if req.csr.is_empty() {
                return Err(Status::invalid_argument("empty csr"));
            }
            let workload = req
                .metadata
                .as_ref()
                .and_then(|m| m.fields.get("WorkloadName"))
                .and_then(|v| match &v.kind {
                    Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            Ok(Response::new(IstioCertificateResponse {
                cert_chain: vec![
                    format!("leaf for {}", req.csr),
                    format!("ttl {}", req.validity_duration),
                    workload,
                ],
                root_cert: Some(Roots {
                    ca_cert: vec!["root".into()],
                }),
            }))
        }
    }

    async fn serve() -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IstioCertificateServiceServer::new(EchoCa))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Ok(addr)
    }

    #[tokio::test]
    async fn generated_client_and_server_talk() -> anyhow::Result<()> {
        let addr = serve().await?;
        let mut client = IstioCertificateServiceClient::connect(format!("http://{addr}")).await?;
        let metadata = prost_types::Struct {
            fields: [(
                "WorkloadName".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("reviews-v1".into())),
                },
            )]
            .into(),
        };
        let response = client
            .create_certificate(IstioCertificateRequest {
                csr: "CSR".into(),
                validity_duration: 86400,
                metadata: Some(metadata),
            })
            .await?
            .into_inner();
        assert_eq!(
            response.cert_chain,
            ["leaf for CSR", "ttl 86400", "reviews-v1"]
        );
        assert_eq!(
            response.root_cert.map(|r| r.ca_cert),
            Some(vec!["root".into()])
        );

        let err = client
            .create_certificate(IstioCertificateRequest::default())
            .await
            .err();
        assert_eq!(err.map(|e| e.code()), Some(tonic::Code::InvalidArgument));
        Ok(())
    }

    /// The field numbers are the wire contract with Istio's agents: pin them with bytes an
    /// Istio client would send (csr = 1, validity_duration = 3, metadata = 4).
    #[test]
    fn field_numbers_match_istio() {
        use prost::Message;
        let req = IstioCertificateRequest {
            csr: "a".into(),
            validity_duration: 5,
            metadata: Some(prost_types::Struct::default()),
        };
        assert_eq!(req.encode_to_vec(), [0x0a, 1, b'a', 0x18, 5, 0x22, 0]);
        let resp = IstioCertificateResponse {
            cert_chain: vec!["c".into()],
            root_cert: Some(Roots {
                ca_cert: vec!["r".into()],
            }),
        };
        assert_eq!(
            resp.encode_to_vec(),
            [0x0a, 1, b'c', 0x12, 3, 0x0a, 1, b'r']
        );
    }
}
