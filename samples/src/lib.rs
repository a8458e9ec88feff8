//! The todo-list sample apps that `mastctl demo` runs inside the mesh: `myapp` (the web front
//! end) calls `user` (deployed as v1 and v2, split 50/50 by a VirtualService) and `todo`.
//!
//! They are deliberately ordinary HTTP/1.1 services that know nothing about the mesh: every
//! feature the demo shows (routing, the split, mTLS, metrics, the topology view) has to come
//! from the sidecars. The one thing they do for the mesh is what Istio asks of every app:
//! `myapp` copies the trace headers of the request it serves onto its outbound calls
//! ([`trace`]).
//!
//! Besides HTTP, `user` also answers one gRPC method ([`grpc`], tonic) and `todo` echoes
//! lines on a TCP port ([`echo`]), and `myapp`'s `GET /api/ping` calls both, so the demo's
//! load shows gRPC and opaque TCP in the mesh's metrics as well.

pub mod config;
pub mod echo;
pub mod grpc;
pub mod myapp;
pub mod server;
pub mod todo;
pub mod trace;
pub mod user;
