//! `todo`: the todo list, kept in memory (the demo is about the calls, not about storage).
//! `myapp` reads and adds items through it; it also answers directly for scripts and tests.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Mutex, PoisonError};

use clap::Parser;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::{self, Env};
use crate::server::{self, Body, Handler};

/// Longer titles are refused.
pub const MAX_TITLE_CHARS: usize = 200;
/// The list keeps its newest items: a load generator adding items for hours must not grow the
/// process without bound, nor start failing.
pub const MAX_TODOS: usize = 1000;
/// The port of the todo WorkloadEntry `mastctl demo` registers.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9182));
/// What a fresh list holds, so the demo page is not empty and tells what to try.
const SEED: &[&str] = &[
    "Reload the page: user v1 and v2 take turns",
    "Shift the split in user-split.yaml",
    "Open the topology view on :20001",
];

/// An item of the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    pub id: u64,
    pub title: String,
}

/// The body of `POST /todos`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewTodo {
    pub title: String,
}

/// The todo list's in-memory storage service.
#[derive(Debug, Parser)]
#[command(name = "sample-todo")]
pub struct Args {
    /// Address to listen on [env: LISTEN] [default: 127.0.0.1:9182]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address of the TCP line echo ([`crate::echo`]) [env: TCP_LISTEN] [default:
    /// 127.0.0.1:9192, the WorkloadEntry's `tcp-echo` port]
    #[arg(long, value_name = "ADDR")]
    tcp_listen: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub tcp_listen: SocketAddr,
}

/// The address of the TCP echo.
pub const TCP_LISTEN: &str = "TCP_LISTEN";
const DEFAULT_TCP_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9192));

/// The service.
pub struct App {
    list: Mutex<List>,
}

struct List {
    next_id: u64,
    items: VecDeque<Todo>,
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
        let listen = config::listen(args.listen, env, DEFAULT_LISTEN)?;
        let tcp_listen = config::listen_as(
            "tcp-listen",
            TCP_LISTEN,
            args.tcp_listen,
            env,
            DEFAULT_TCP_LISTEN,
        )?;
        Ok(Config { listen, tcp_listen })
    }
}

// === impl App ===

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// A list holding the seed items.
    pub fn new() -> Self {
        let mut list = List {
            next_id: 1,
            items: VecDeque::new(),
        };
        for title in SEED {
            list.add(title.to_string());
        }
        App {
            list: Mutex::new(list),
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, List> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn add(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match server::read_body(req).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        match parse_title(&body) {
            Ok(title) => server::json(StatusCode::CREATED, &self.list().add(title)),
            Err(reason) => server::error(StatusCode::BAD_REQUEST, reason),
        }
    }

    fn remove(&self, id: &str) -> Response<Body> {
        let removed = id.parse().is_ok_and(|id| self.list().remove(id));
        if removed {
            server::respond(StatusCode::NO_CONTENT, "application/json", "")
        } else {
            server::error(StatusCode::NOT_FOUND, "no such todo")
        }
    }
}

impl Handler for App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/healthz") => server::text(StatusCode::OK, "ok"),
            (&Method::GET, "/todos") => {
                let items: Vec<Todo> = self.list().items.iter().cloned().collect();
                server::json(StatusCode::OK, &items)
            }
            (&Method::POST, "/todos") => self.add(req).await,
            (&Method::DELETE, _) => match path.strip_prefix("/todos/") {
                Some(id) => self.remove(id),
                None => server::not_found(),
            },
            _ => server::not_found(),
        }
    }
}

// === impl List ===

impl List {
    fn add(&mut self, title: String) -> Todo {
        let todo = Todo {
            id: self.next_id,
            title,
        };
        self.next_id += 1;
        self.items.push_back(todo.clone());
        if self.items.len() > MAX_TODOS {
            self.items.pop_front();
        }
        todo
    }

    fn remove(&mut self, id: u64) -> bool {
        let before = self.items.len();
        self.items.retain(|t| t.id != id);
        self.items.len() != before
    }
}

/// The trimmed title of a `POST /todos` body, or why it is refused.
fn parse_title(body: &[u8]) -> Result<String, &'static str> {
    let new: NewTodo =
        serde_json::from_slice(body).map_err(|_| "expected a JSON object {\"title\": \"…\"}")?;
    let title = new.title.trim();
    if title.is_empty() {
        Err("the title is empty")
    } else if title.chars().count() > MAX_TITLE_CHARS {
        Err("the title is longer than 200 characters")
    } else {
        Ok(title.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_checked() {
        assert_eq!(parse_title(br#"{"title": "  milk "}"#).unwrap(), "milk");
        assert!(parse_title(br#"{"title": "   "}"#).is_err());
        assert!(parse_title(br#"{"name": "milk"}"#).is_err());
        assert!(parse_title(b"milk").is_err());
        let long = format!(r#"{{"title": "{}"}}"#, "é".repeat(MAX_TITLE_CHARS + 1));
        assert!(parse_title(long.as_bytes()).is_err());
    }

    #[test]
    fn the_list_keeps_its_newest_items() {
        let app = App::new();
        let mut list = app.list();
        assert_eq!(list.items.len(), SEED.len());
        for n in 0..MAX_TODOS {
            list.add(format!("item {n}"));
        }
        assert_eq!(list.items.len(), MAX_TODOS);
        assert_eq!(list.items[0].title, "item 0");
        let first = list.items[0].id;
        assert!(list.remove(first));
        assert!(!list.remove(0));
    }
}
