//! `user`: says who the current user is. The demo deploys it twice, as v1 and v2, and the mesh
//! splits `myapp`'s calls between them; each answer carries its version in the JSON and in the
//! `x-user-version` header, so the split is visible on the page and countable by a load
//! generator without parsing bodies.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use clap::Parser;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::config::{self, Env, Setting};
use crate::server::{self, Body, Handler};
use crate::trace;

/// The version to report.
pub const VERSION: &str = "VERSION";
/// The address of the gRPC server ([`crate::grpc`]).
pub const GRPC_LISTEN: &str = "GRPC_LISTEN";
/// The response header naming the version that answered.
pub const VERSION_HEADER: &str = "x-user-version";

/// The users every version knows.
const USERS: &[(u64, &str)] = &[
    (1, "Ada Lovelace"),
    (2, "Grace Hopper"),
    (3, "Alan Turing"),
    (4, "Barbara Liskov"),
    (5, "Edsger Dijkstra"),
];

/// The user `GET /` answers.
const DEFAULT_USER: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A user as the service answers it (and as `myapp` reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub version: String,
}

/// One version (v1 or v2) of the todo list's user service.
#[derive(Debug, Parser)]
#[command(name = "sample-user")]
pub struct Args {
    /// Address to listen on [env: LISTEN] [default: 127.0.0.1:9181 for v1, 127.0.0.1:9281 for
    /// v2, the ports of the sample WorkloadEntries]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Version to report, v1 or v2 [env: VERSION] [default: v1]
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// Address of the gRPC server (`mast.samples.Users`) [env: GRPC_LISTEN] [default:
    /// 127.0.0.1:9191 for v1, 127.0.0.1:9291 for v2, the WorkloadEntries' `grpc` ports]
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub version: Version,
    pub grpc_listen: SocketAddr,
}

/// The service. It keeps the trace headers of the last request it served, so a test can see
/// what `myapp` propagated.
pub struct App {
    version: Version,
    last_trace: Mutex<HeaderMap>,
}

// === impl Version ===

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }

    /// The port of this version's WorkloadEntry `mastctl demo` registers.
    fn default_listen(self) -> SocketAddr {
        let port = match self {
            Version::V1 => 9181,
            Version::V2 => 9281,
        };
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// The `grpc` port of this version's WorkloadEntry.
    fn default_grpc_listen(self) -> SocketAddr {
        let port = match self {
            Version::V1 => 9191,
            Version::V2 => 9291,
        };
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }
}

impl FromStr for Version {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "v1" => Ok(Version::V1),
            "v2" => Ok(Version::V2),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Config ===

impl Config {
    /// From a command line (program name first) and the environment.
    pub fn parse<I, T>(args: I, env: &dyn Env) -> Result<Self, config::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Args::try_parse_from(args)?;
        let version = match Setting::lookup("version", args.version, env, VERSION) {
            Some(s) => s
                .value
                .parse()
                .map_err(|()| s.invalid("expected v1 or v2"))?,
            None => Version::V1,
        };
        let listen = config::listen(args.listen, env, version.default_listen())?;
        let grpc_listen = config::listen_as(
            "grpc-listen",
            GRPC_LISTEN,
            args.grpc_listen,
            env,
            version.default_grpc_listen(),
        )?;
        Ok(Config {
            listen,
            version,
            grpc_listen,
        })
    }
}

/// User `id` as `version` answers it (over HTTP and gRPC alike).
pub fn find(version: Version, id: u64) -> Option<User> {
    let (id, name) = USERS.iter().find(|(known, _)| *known == id)?;
    Some(User {
        id: *id,
        name: name.to_string(),
        version: version.to_string(),
    })
}

// === impl App ===

impl App {
    pub fn new(version: Version) -> Self {
        App {
            version,
            last_trace: Mutex::new(HeaderMap::new()),
        }
    }

    /// The trace headers of the last request (other than `/healthz`).
    pub fn last_trace_headers(&self) -> HeaderMap {
        self.last_trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn user(&self, id: u64) -> Option<User> {
        find(self.version, id)
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET {
            return server::not_found();
        }
        let path = req.uri().path();
        if path == "/healthz" {
            return server::text(StatusCode::OK, "ok");
        }
        // Health probes are not recorded: they would overwrite the last real call.
        let trace = trace::propagated(req.headers());
        debug!(?trace, "{path}");
        *self
            .last_trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = trace;
        let id = match path.strip_prefix("/users/") {
            None if path == "/" => Some(DEFAULT_USER),
            None => return server::not_found(),
            Some(id) => id.parse().ok(),
        };
        match id.and_then(|id| self.user(id)) {
            Some(user) => server::json(StatusCode::OK, &user),
            None => server::error(StatusCode::NOT_FOUND, "no such user"),
        }
    }
}

impl Handler for App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let mut resp = self.answer(&req);
        resp.headers_mut().insert(
            VERSION_HEADER,
            HeaderValue::from_static(self.version.as_str()),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn config_from_flags_env_and_defaults() {
        let c = Config::parse(["sample-user"], &HashMap::new()).unwrap();
        assert_eq!((c.version, c.listen.port()), (Version::V1, 9181));
        let env = HashMap::from([(VERSION, "v2")]);
        let c = Config::parse(["sample-user"], &env).unwrap();
        assert_eq!((c.version, c.listen.port()), (Version::V2, 9281));
        let c = Config::parse(
            ["sample-user", "--version", "v1", "--listen", "0.0.0.0:80"],
            &env,
        )
        .unwrap();
        assert_eq!((c.version, c.listen.port()), (Version::V1, 80));
    }

    #[test]
    fn a_bad_version_names_the_variable() {
        let env = HashMap::from([(VERSION, "v3")]);
        let e = Config::parse(["sample-user"], &env).unwrap_err();
        assert_eq!(e.to_string(), "VERSION=\"v3\": expected v1 or v2");
    }

    #[test]
    fn knows_its_users() {
        let app = App::new(Version::V2);
        let ada = app.user(1).unwrap();
        assert_eq!(
            (ada.name.as_str(), ada.version.as_str()),
            ("Ada Lovelace", "v2")
        );
        assert!(app.user(99).is_none());
    }
}
