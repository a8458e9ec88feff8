//! `user`'s gRPC face, so the demo has gRPC traffic for the mesh to route and count (Istio's
//! dashboards have gRPC panels: `istio_requests_total{request_protocol="grpc"}`,
//! `istio_request_messages_total`). One unary method, `mast.samples.Users/GetUser`, the
//! same lookup as `GET /users/{id}`, served by tonic on the port the Service names `grpc`;
//! `myapp` calls it with a tonic client.
//!
//! The two messages are declared here with prost's derive instead of generated from a
//! `.proto` file: that keeps the samples free of a build script, and the wire format is the
//! same as this schema would give:
//!
//! ```proto
//! service Users { rpc GetUser(GetUserRequest) returns (UserReply); }
//! message GetUserRequest { uint64 id = 1; }
//! message UserReply { uint64 id = 1; string name = 2; string version = 3; }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;

use hyper::HeaderMap;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::info;

use crate::myapp::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use crate::user::{self, User, Version};

/// The service's full name.
pub const SERVICE: &str = "mast.samples.Users";
/// The one method's path.
pub const GET_USER: &str = "/mast.samples.Users/GetUser";

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetUserRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UserReply {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub version: String,
}

/// The server: `GetUser` answers the user, or `NOT_FOUND`; any other method `UNIMPLEMENTED`.
#[derive(Clone, Copy, Debug)]
pub struct UsersServer {
    version: Version,
}

/// `GetUser` itself.
struct GetUser(Version);

/// A tonic client for `Users`, connecting on first use (so it can be built outside a
/// runtime) and reconnecting as needed.
pub struct UsersClient {
    endpoint: Endpoint,
    channel: OnceLock<Channel>,
}

// === impl UsersServer ===

impl UsersServer {
    pub fn new(version: Version) -> Self {
        Self { version }
    }
}

impl NamedService for UsersServer {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for UsersServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != GET_USER {
            let status = Status::unimplemented(format!("no method {}", req.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let method = GetUser(self.version);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(method, req).await)
        })
    }
}

impl UnaryService<GetUserRequest> for GetUser {
    type Response = UserReply;
    type Future = BoxFuture<tonic::Response<UserReply>, Status>;

    fn call(&mut self, request: tonic::Request<GetUserRequest>) -> Self::Future {
        let id = request.get_ref().id;
        let found = user::find(self.0, id);
        Box::pin(async move {
            match found {
                Some(u) => Ok(tonic::Response::new(UserReply {
                    id: u.id,
                    name: u.name,
                    version: u.version,
                })),
                None => Err(Status::not_found(format!("no user {id}"))),
            }
        })
    }
}

/// Binds `addr`, logs `listening on`, serves gRPC until `shutdown` completes.
pub async fn serve(
    name: &str,
    addr: SocketAddr,
    version: Version,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    info!("{name} gRPC listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(UsersServer::new(version))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(io::Error::other)
}

// === impl UsersClient ===

impl UsersClient {
    /// A client of the service at `url` (`http://user:8083`); with `authority`, the
    /// `:authority` names that instead of the URL's host (a sidecar's local port in NONE
    /// interception mode routes by it, as by Host for HTTP/1.1).
    pub fn new(url: &str, authority: Option<&str>) -> Result<Self, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(url.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if let Some(a) = authority
            && let Ok(origin) = format!("http://{a}").parse::<http::Uri>()
        {
            endpoint = endpoint.origin(origin);
        }
        Ok(Self {
            endpoint,
            channel: OnceLock::new(),
        })
    }

    /// `GetUser`, with the trace headers of the request being served as gRPC metadata.
    pub async fn get_user(&self, id: u64, trace: &HeaderMap) -> Result<User, Status> {
        let channel = self
            .channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::new(Code::Unavailable, e.to_string()))?;
        let mut request = tonic::Request::new(GetUserRequest { id });
        for (k, v) in trace {
            if let (Ok(k), Ok(v)) = (
                MetadataKey::from_bytes(k.as_str().as_bytes()),
                MetadataValue::try_from(v.as_bytes()),
            ) {
                request.metadata_mut().insert(k, v);
            }
        }
        let path = http::uri::PathAndQuery::from_static(GET_USER);
        let codec = tonic_prost::ProstCodec::<GetUserRequest, UserReply>::default();
        let reply: UserReply = grpc.unary(request, path, codec).await?.into_inner();
        Ok(User {
            id: reply.id,
            name: reply.name,
            version: reply.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tonic client and server over loopback: the user comes back with its version; an
    /// unknown one is NOT_FOUND; trace headers travel as metadata.
    #[tokio::test]
    async fn get_user_over_grpc() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(UsersServer::new(Version::V2))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        let client = UsersClient::new(&format!("http://{addr}"), Some("user")).unwrap();
        let mut trace = HeaderMap::new();
        trace.insert("x-request-id", "abc".parse().unwrap());
        let u = client.get_user(3, &trace).await.unwrap();
        assert_eq!(
            (u.id, u.name.as_str(), u.version.as_str()),
            (3, "Alan Turing", "v2")
        );
        let e = client.get_user(99, &trace).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
