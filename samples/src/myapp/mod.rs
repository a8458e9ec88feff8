//! `myapp`: the todo-list web app, the front of the demo. Each page is built from two calls
//! made for that request, one to `user` (which the mesh sends to v1 or v2) and one to `todo`,
//! so reloading the page shows the split. A failed call is answered 502 with the backend's
//! name, so a load generator can count which hop failed.
//!
//! `GET /api/ping` checks the two other protocols the demo shows: a gRPC `GetUser` to user
//! (tonic, the Service's `grpc` port) and a line through todo's TCP echo (`tcp-echo`).

mod backend;
mod page;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use clap::Parser;
use hyper::body::{Bytes, Incoming};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tracing::debug;

use self::backend::Backend;
pub use self::backend::{CONNECT_TIMEOUT, Error, REQUEST_TIMEOUT, Target};
use crate::config::{self, Env, Setting};
use crate::server::{self, Body, Handler};
use crate::todo::Todo;
use crate::trace;
use crate::user::User;

pub const USER_URL: &str = "USER_URL";
pub const TODO_URL: &str = "TODO_URL";
pub const USER_HOST: &str = "USER_HOST";
pub const TODO_HOST: &str = "TODO_HOST";
pub const USER_GRPC_URL: &str = "USER_GRPC_URL";
pub const TODO_TCP: &str = "TODO_TCP";
/// user's `grpc` port and todo's `tcp-echo` port in `manifests/samples/todolist/services.yaml`.
const DEFAULT_USER_GRPC_URL: &str = "http://user:8083";
const DEFAULT_TODO_TCP: &str = "todo:8084";

/// The port of the myapp WorkloadEntry `mastctl demo` registers.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9080));
/// The user backend's settings; the default URL is the Service in
/// `manifests/samples/todolist/services.yaml`.
const USER: BackendSettings = BackendSettings {
    url_flag: "user-url",
    url_var: USER_URL,
    default_url: "http://user:8081",
    host_flag: "user-host",
    host_var: USER_HOST,
};
const TODO: BackendSettings = BackendSettings {
    url_flag: "todo-url",
    url_var: TODO_URL,
    default_url: "http://todo:8082",
    host_flag: "todo-host",
    host_var: TODO_HOST,
};
/// The user the page greets.
const PAGE_USER: u64 = 1;

/// The todo-list web app: serves the page built from user and todo.
#[derive(Debug, Parser)]
#[command(name = "sample-myapp")]
pub struct Args {
    /// Address to listen on [env: LISTEN] [default: 127.0.0.1:9080]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Base URL of the user service [env: USER_URL] [default: http://user:8081]
    #[arg(long, value_name = "URL")]
    user_url: Option<String>,
    /// Base URL of the todo service [env: TODO_URL] [default: http://todo:8082]
    #[arg(long, value_name = "URL")]
    todo_url: Option<String>,
    /// Host header for calls to user, when the URL is a sidecar's local port (the mesh's NONE
    /// interception mode), e.g. `user` [env: USER_HOST] [default: the URL's host:port]
    #[arg(long, value_name = "HOST")]
    user_host: Option<String>,
    /// Host header for calls to todo, as --user-host [env: TODO_HOST]
    #[arg(long, value_name = "HOST")]
    todo_host: Option<String>,
    /// URL of user's gRPC port; --user-host, if given, is the calls' :authority
    /// [env: USER_GRPC_URL] [default: http://user:8083]
    #[arg(long, value_name = "URL")]
    user_grpc_url: Option<String>,
    /// HOST:PORT of todo's TCP echo [env: TODO_TCP] [default: todo:8084]
    #[arg(long, value_name = "ADDR")]
    todo_tcp: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub user: Target,
    pub todo: Target,
    /// user's gRPC URL, and the :authority to name when it is a sidecar's local port.
    pub user_grpc: (String, Option<String>),
    /// todo's TCP echo, `host:port`.
    pub todo_tcp: String,
}

/// Where a backend's URL and Host header come from.
struct BackendSettings {
    url_flag: &'static str,
    url_var: &'static str,
    default_url: &'static str,
    host_flag: &'static str,
    host_var: &'static str,
}

/// What a page shows, and the JSON of `GET /api/page`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub user: User,
    pub todos: Vec<Todo>,
}

/// What `GET /api/ping` answers: the user as gRPC gave it, the line todo's echo gave back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub grpc: User,
    pub tcp: String,
}

/// The service.
pub struct App {
    user: Backend,
    todo: Backend,
    user_grpc: Result<crate::grpc::UsersClient, String>,
    todo_tcp: String,
}

/// A backend call that failed, answered as 502.
#[derive(Debug)]
struct Failure {
    backend: &'static str,
    error: Error,
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
        let user_host = Setting::lookup("user-host", args.user_host.clone(), env, USER_HOST);
        let grpc_url = Setting::lookup("user-grpc-url", args.user_grpc_url, env, USER_GRPC_URL)
            .map_or_else(|| DEFAULT_USER_GRPC_URL.to_string(), |s| s.value);
        if !grpc_url.starts_with("http://") {
            return Err(Setting {
                name: "--user-grpc-url".into(),
                value: grpc_url,
            }
            .invalid("expected an http:// URL"));
        }
        Ok(Config {
            listen: config::listen(args.listen, env, DEFAULT_LISTEN)?,
            user: USER.target(args.user_url, args.user_host, env)?,
            todo: TODO.target(args.todo_url, args.todo_host, env)?,
            user_grpc: (grpc_url, user_host.map(|s| s.value)),
            todo_tcp: Setting::lookup("todo-tcp", args.todo_tcp, env, TODO_TCP)
                .map_or_else(|| DEFAULT_TODO_TCP.to_string(), |s| s.value),
        })
    }
}

// === impl BackendSettings ===

impl BackendSettings {
    fn target(
        &self,
        url: Option<String>,
        host: Option<String>,
        env: &dyn Env,
    ) -> Result<Target, config::Error> {
        let url =
            Setting::lookup(self.url_flag, url, env, self.url_var).unwrap_or_else(|| Setting {
                name: "default".into(),
                value: self.default_url.into(),
            });
        let host = Setting::lookup(self.host_flag, host, env, self.host_var);
        Target::parse(&url, host.as_ref())
    }
}

// === impl App ===

impl App {
    pub fn new(config: &Config) -> Self {
        let (url, authority) = &config.user_grpc;
        App {
            user: Backend::new("user", config.user.clone()),
            todo: Backend::new("todo", config.todo.clone()),
            user_grpc: crate::grpc::UsersClient::new(url, authority.as_deref())
                .map_err(|e| format!("bad gRPC URL {url:?}: {e}")),
            todo_tcp: config.todo_tcp.clone(),
        }
    }

    /// A gRPC `GetUser` to user and a line through todo's TCP echo, at the same time.
    async fn ping(&self, trace: &HeaderMap) -> Response<Body> {
        let grpc = async {
            match &self.user_grpc {
                Ok(client) => client
                    .get_user(PAGE_USER, trace)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                Err(e) => Err(e.clone()),
            }
        };
        let (user, echo) = tokio::join!(grpc, crate::echo::ping(&self.todo_tcp, "ping"));
        let failed = |backend: &str, error: String| {
            debug!("{backend} failed: {error}");
            server::json(
                StatusCode::BAD_GATEWAY,
                &serde_json::json!({ "error": format!("{backend} failed: {error}"), "backend": backend }),
            )
        };
        match (user, echo) {
            (Ok(grpc), Ok(tcp)) => server::json(StatusCode::OK, &Ping { grpc, tcp }),
            (Err(e), _) => failed("user-grpc", e),
            (_, Err(e)) => failed("todo-tcp", e.to_string()),
        }
    }

    /// Calls user and todo at the same time.
    async fn page(&self, trace: &HeaderMap) -> Result<Page, Failure> {
        let user_path = format!("/users/{PAGE_USER}");
        let (user, todos) = tokio::join!(
            self.user.get_json::<User>(&user_path, trace),
            self.todo.get_json::<Vec<Todo>>("/todos", trace),
        );
        Ok(Page {
            user: user.map_err(|e| Failure::new(&self.user, e))?,
            todos: todos.map_err(|e| Failure::new(&self.todo, e))?,
        })
    }

    /// Passes a change on to todo: its answer is passed back, unless todo itself failed (5xx
    /// or no answer), which is a 502 like any backend failure.
    async fn change_todo(
        &self,
        method: Method,
        path: &str,
        trace: &HeaderMap,
        body: Option<Bytes>,
    ) -> Response<Body> {
        match self.todo.send(method, path, trace, body).await {
            Ok((status, _)) if status.is_server_error() => {
                Failure::new(&self.todo, Error::Status(status)).json()
            }
            Ok((status, body)) => server::respond(status, "application/json", body),
            Err(e) => Failure::new(&self.todo, e).json(),
        }
    }
}

impl Handler for App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let trace = trace::propagated(req.headers());
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/healthz") => server::text(StatusCode::OK, "ok"),
            (Method::GET, "/") => match self.page(&trace).await {
                Ok(p) => server::html(StatusCode::OK, page::render(&p)),
                Err(f) => server::html(StatusCode::BAD_GATEWAY, page::render_failure(&f)),
            },
            (Method::GET, "/api/page") => match self.page(&trace).await {
                Ok(p) => server::json(StatusCode::OK, &p),
                Err(f) => f.json(),
            },
            (Method::GET, "/api/ping") => self.ping(&trace).await,
            (Method::POST, "/api/todos") => match server::read_body(req).await {
                Ok(body) => {
                    self.change_todo(Method::POST, "/todos", &trace, Some(body))
                        .await
                }
                Err(resp) => resp,
            },
            (Method::DELETE, _) => match path
                .strip_prefix("/api/todos/")
                .and_then(|id| id.parse::<u64>().ok())
            {
                Some(id) => {
                    let path = format!("/todos/{id}");
                    self.change_todo(Method::DELETE, &path, &trace, None).await
                }
                None => server::not_found(),
            },
            _ => server::not_found(),
        }
    }
}

// === impl Failure ===

impl Failure {
    fn new(backend: &Backend, error: Error) -> Self {
        let f = Failure {
            backend: backend.name(),
            error,
        };
        debug!("{}", f.message());
        f
    }

    fn message(&self) -> String {
        format!("{} failed: {}", self.backend, self.error.chain())
    }

    /// `{"error": "user failed: …", "backend": "user"}`
    fn json(&self) -> Response<Body> {
        server::json(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({ "error": self.message(), "backend": self.backend }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn config_defaults_to_the_sample_services() {
        let c = Config::parse(["sample-myapp"], &HashMap::new()).unwrap();
        assert_eq!(c.listen.port(), 9080);
        assert_eq!(
            c.user,
            Target::parse(&setting("http://user:8081"), None).unwrap()
        );
        assert_eq!(
            c.todo,
            Target::parse(&setting("http://todo:8082"), None).unwrap()
        );
        assert_eq!(c.user_grpc, ("http://user:8083".to_string(), None));
        assert_eq!(c.todo_tcp, "todo:8084");
    }

    /// In NONE mode the gRPC calls name the service as the HTTP ones do.
    #[test]
    fn grpc_and_tcp_settings() {
        let env = HashMap::from([(USER_HOST, "user"), (TODO_TCP, "127.0.0.1:8084")]);
        let c = Config::parse(
            ["sample-myapp", "--user-grpc-url", "http://127.0.0.1:8083"],
            &env,
        )
        .unwrap();
        assert_eq!(
            c.user_grpc,
            (
                "http://127.0.0.1:8083".to_string(),
                Some("user".to_string())
            )
        );
        assert_eq!(c.todo_tcp, "127.0.0.1:8084");
        let e = Config::parse(["sample-myapp", "--user-grpc-url", "user:8083"], &env)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--user-grpc-url="), "{e}");
    }

    #[test]
    fn config_from_env_and_flags() {
        let env = HashMap::from([
            (USER_URL, "http://127.0.0.1:8081"),
            (USER_HOST, "user"),
            (TODO_URL, "http://127.0.0.1:1"),
        ]);
        let c = Config::parse(["sample-myapp", "--todo-url", "http://todo:2"], &env).unwrap();
        let user_host = setting("user");
        let want_user = Target::parse(&setting("http://127.0.0.1:8081"), Some(&user_host));
        assert_eq!(c.user, want_user.unwrap());
        assert_eq!(
            c.todo,
            Target::parse(&setting("http://todo:2"), None).unwrap()
        );
        let e = Config::parse(
            ["sample-myapp", "--user-host", "bad\nhost"],
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--user-host="), "{e}");
    }

    fn setting(value: &str) -> Setting {
        Setting {
            name: "test".into(),
            value: value.into(),
        }
    }
}
