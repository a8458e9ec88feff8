//! The three apps together on loopback, wired as `mastctl demo` wires them when there is no
//! mesh in between: myapp → user and todo by URL. In-process servers for the behaviour, and
//! the built binaries for what only a process shows (flags and environment, the `listening on`
//! line, a clean exit on SIGTERM/SIGINT).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mast_samples::myapp::{self, Page};
use mast_samples::server::{self, Handler};
use mast_samples::todo::{self, Todo};
use mast_samples::user::{self, Version};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn call(method: Method, url: &str, headers: &[(&str, &str)], body: Option<Value>) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get(url: &str) -> Answer {
    call(Method::GET, url, &[], None).await
}

/// Serves `app` on a free loopback port until the test's runtime ends; returns its base URL.
async fn start<H: Handler>(app: Arc<H>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::run(listener, app, std::future::pending()));
    url
}

async fn start_myapp(user_url: &str, todo_url: &str) -> String {
    let args = [
        "sample-myapp",
        "--user-url",
        user_url,
        "--todo-url",
        todo_url,
    ];
    let config = myapp::Config::parse(args, &HashMap::new()).unwrap();
    start(Arc::new(myapp::App::new(&config))).await
}

/// The todo list: user (at `version`), todo and myapp in front.
struct TodoList {
    user: Arc<user::App>,
    user_url: String,
    todo: String,
    myapp: String,
}

async fn start_all(version: Version) -> TodoList {
    let user = Arc::new(user::App::new(version));
    let user_url = start(user.clone()).await;
    let todo = start(Arc::new(todo::App::new())).await;
    let myapp = start_myapp(&user_url, &todo).await;
    TodoList {
        user,
        user_url,
        todo,
        myapp,
    }
}

/// A URL nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn page_combines_user_and_todo() {
    let app = start_all(Version::V1).await;
    let page = get(&format!("{}/api/page", app.myapp)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let page: Page = serde_json::from_str(&page.body).unwrap();
    assert_eq!((page.user.id, page.user.name.as_str()), (1, "Ada Lovelace"));
    assert_eq!(page.user.version, "v1");
    let todos: Vec<Todo> =
        serde_json::from_str(&get(&format!("{}/todos", app.todo)).await.body).unwrap();
    assert!(!todos.is_empty());
    assert_eq!(page.todos, todos);

    let html = get(&format!("{}/", app.myapp)).await;
    assert_eq!(html.status, StatusCode::OK);
    assert_eq!(html.headers["content-type"], "text/html; charset=utf-8");
    assert!(html.body.contains("served by user v1"), "{}", html.body);
    assert!(html.body.contains(&todos[0].title));
    assert_eq!(
        get(&format!("{}/healthz", app.myapp)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("{}/nothing", app.myapp)).await.status,
        StatusCode::NOT_FOUND
    );
}

async fn page(myapp: &str) -> Page {
    let answer = get(&format!("{myapp}/api/page")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

#[tokio::test]
async fn added_todo_shows_on_the_page_and_can_be_removed() {
    let app = start_all(Version::V2).await;
    let url = format!("{}/api/todos", app.myapp);
    let added = call(
        Method::POST,
        &url,
        &[],
        Some(json!({"title": " Buy <milk> "})),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let added: Todo = serde_json::from_str(&added.body).unwrap();
    assert_eq!(added.title, "Buy <milk>");
    assert!(page(&app.myapp).await.todos.contains(&added));
    let html = get(&format!("{}/", app.myapp)).await.body;
    assert!(html.contains("Buy &lt;milk&gt;"), "{html}");

    // todo's own refusal is passed back as is: the backend worked, the request was bad.
    let refused = call(Method::POST, &url, &[], Some(json!({"title": ""}))).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);

    let one = format!("{url}/{}", added.id);
    assert_eq!(
        call(Method::DELETE, &one, &[], None).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(!page(&app.myapp).await.todos.contains(&added));
    assert_eq!(
        call(Method::DELETE, &one, &[], None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn user_answers_with_its_version() {
    for version in [Version::V1, Version::V2] {
        let url = start(Arc::new(user::App::new(version))).await;
        for path in ["/", "/users/3"] {
            let answer = get(&format!("{url}{path}")).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.headers[user::VERSION_HEADER], version.as_str());
            assert_eq!(answer.json()["version"], version.as_str());
        }
        assert_eq!(
            get(&format!("{url}/users/3")).await.json()["name"],
            "Alan Turing"
        );
        let missing = get(&format!("{url}/users/42")).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.headers[user::VERSION_HEADER], version.as_str());
        assert_eq!(get(&format!("{url}/healthz")).await.status, StatusCode::OK);
    }
    let app = start_all(Version::V2).await;
    assert_eq!(page(&app.myapp).await.user.version, "v2");
    let html = get(&format!("{}/", app.myapp)).await.body;
    assert!(html.contains("served by user v2"), "{html}");
}

/// Asserts a 502 whose JSON names `backend` and whose message contains `cause`.
fn assert_failed(answer: &Answer, backend: &str, cause: &str) {
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["backend"], backend, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(&format!("{backend} failed: ")), "{body}");
    assert!(error.contains(cause), "{body}");
}

#[tokio::test]
async fn a_failed_backend_is_a_502_naming_it() {
    let user_url = start(Arc::new(user::App::new(Version::V1))).await;
    let todo_url = start(Arc::new(todo::App::new())).await;

    let no_user = start_myapp(&dead_url(), &todo_url).await;
    let answer = get(&format!("{no_user}/api/page")).await;
    assert_failed(&answer, "user", "Connection refused");
    let html = get(&format!("{no_user}/")).await;
    assert_eq!(html.status, StatusCode::BAD_GATEWAY);
    assert!(
        html.body.contains("The <b>user</b> service failed: "),
        "{}",
        html.body
    );

    let no_todo = start_myapp(&user_url, &dead_url()).await;
    assert_failed(
        &get(&format!("{no_todo}/api/page")).await,
        "todo",
        "Connection refused",
    );
    let add = format!("{no_todo}/api/todos");
    let answer = call(Method::POST, &add, &[], Some(json!({"title": "x"}))).await;
    assert_failed(&answer, "todo", "Connection refused");

    // An error status is a failure too: todo has no /users/1.
    let wrong_user = start_myapp(&todo_url, &todo_url).await;
    assert_failed(&get(&format!("{wrong_user}/api/page")).await, "user", "404");
}

#[tokio::test]
async fn a_backend_that_never_answers_times_out() {
    // Connections complete in the listen backlog, but nothing ever reads the request.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let todo_url = start(Arc::new(todo::App::new())).await;
    let myapp = start_myapp(&silent_url, &todo_url).await;
    let started = Instant::now();
    let answer = get(&format!("{myapp}/api/page")).await;
    assert_failed(&answer, "user", "no answer within");
    assert!(started.elapsed() < myapp::REQUEST_TIMEOUT + Duration::from_secs(2));
}

#[tokio::test]
async fn trace_headers_are_forwarded() {
    let app = start_all(Version::V1).await;
    let trace = [
        ("x-request-id", "5d5e0b7c-2d5f-4d0e-9c3b-2f7f1d8e9a01"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
        (
            "traceparent",
            "00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01",
        ),
    ];
    let mut sent = trace.to_vec();
    sent.push(("cookie", "session=secret"));
    let answer = call(Method::GET, &format!("{}/api/page", app.myapp), &sent, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let seen = app.user.last_trace_headers();
    for (name, value) in trace {
        assert_eq!(
            seen.get(name).map(|v| v.as_bytes()),
            Some(value.as_bytes()),
            "{name}"
        );
    }
    assert_eq!(seen.len(), trace.len(), "only the trace headers: {seen:?}");
    // A health probe (as the sidecar agent sends) does not overwrite the record.
    assert_eq!(
        get(&format!("{}/healthz", app.user_url)).await.status,
        StatusCode::OK
    );
    assert_eq!(app.user.last_trace_headers(), seen);
}

#[tokio::test]
async fn host_override_names_the_service() {
    // Stands in for a sidecar in NONE interception mode: it routes by Host, so it records it.
    let sidecar = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar_url = format!("http://{}", sidecar.local_addr().unwrap());
    let todo_url = start(Arc::new(todo::App::new())).await;
    let args = [
        "sample-myapp",
        "--user-url",
        &sidecar_url,
        "--todo-url",
        &todo_url,
    ];
    let env = HashMap::from([(myapp::USER_HOST, "user")]);
    let config = myapp::Config::parse(args, &env).unwrap();
    let myapp = start(Arc::new(myapp::App::new(&config))).await;
    let page = tokio::spawn(async move { get(&format!("{myapp}/api/page")).await });

    let (mut conn, _) = sidecar.accept().await.unwrap();
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut buf = [0; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "request cut short");
        request.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8(request).unwrap().to_lowercase();
    assert!(
        request.starts_with("get /users/1 http/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\nhost: user\r\n"), "{request}");
    let user = r#"{"id":1,"name":"Ada Lovelace","version":"v1"}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{user}",
        user.len()
    );
    conn.write_all(answer.as_bytes()).await.unwrap();
    assert_eq!(page.await.unwrap().status, StatusCode::OK);
}

/// A built binary, killed if the test fails before it is stopped.
struct Process {
    child: Child,
    /// Its stderr, line by line, read on a thread so the pipe never fills.
    lines: mpsc::Receiver<String>,
    /// Lines read while looking for another.
    passed: std::cell::RefCell<Vec<String>>,
    url: String,
}

impl Process {
    /// Starts `bin` with only `env` in its environment and waits for `listening on http://…`.
    fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(bin)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut process = Process {
            child,
            lines,
            passed: Default::default(),
            url: String::new(),
        };
        let line = process.line_containing("listening on http://");
        let addr = line.split("listening on http://").nth(1).unwrap();
        process.url = format!("http://{}", addr.trim());
        process
    }

    fn line_containing(&self, text: &str) -> String {
        if let Some(line) = self.passed.borrow().iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => self.passed.borrow_mut().push(line),
                Err(e) => panic!("no line with {text:?}: {e}"),
            }
        }
    }

    /// The address logged after `text` (`gRPC listening on 127.0.0.1:…`).
    fn address_after(&self, text: &str) -> String {
        let line = self.line_containing(text);
        let addr = line.split(text).nth(1).unwrap_or_default();
        addr.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Sends `signal` and expects a clean exit within a few seconds.
    fn stop(mut self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{signal}: {status}");
                self.line_containing("stopped");
                return;
            }
            assert!(Instant::now() < deadline, "still running after {signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_binaries_serve_the_page_and_stop_on_signals() {
    let any_port = "127.0.0.1:0";
    let user = Process::start(
        env!("CARGO_BIN_EXE_sample-user"),
        &["--listen", any_port, "--grpc-listen", any_port],
        &[("VERSION", "v2")],
    );
    let todo = Process::start(
        env!("CARGO_BIN_EXE_sample-todo"),
        &[],
        &[("LISTEN", any_port), ("TCP_LISTEN", any_port)],
    );
    let grpc = user.address_after("gRPC listening on ");
    let tcp = todo.address_after("TCP echo listening on ");
    let myapp = Process::start(
        env!("CARGO_BIN_EXE_sample-myapp"),
        &[
            "--listen",
            any_port,
            "--user-url",
            &user.url,
            "--user-grpc-url",
            &format!("http://{grpc}"),
        ],
        &[("TODO_URL", &todo.url), ("TODO_TCP", &tcp)],
    );
    let page = page(&myapp.url).await;
    assert_eq!(page.user.version, "v2");
    assert!(!page.todos.is_empty());
    // gRPC to user (tonic on both ends) and a line through todo's TCP echo.
    let ping = get(&format!("{}/api/ping", myapp.url)).await;
    assert_eq!(ping.status, StatusCode::OK, "{}", ping.body);
    let ping: Value = serde_json::from_str(&ping.body).unwrap();
    assert_eq!(ping["grpc"]["version"], "v2");
    assert_eq!(ping["grpc"]["name"], "Ada Lovelace");
    assert_eq!(ping["tcp"], "ping");
    myapp.stop("-INT");
    user.stop("-TERM");
    todo.stop("-TERM");
}

#[test]
fn bad_configuration_exits_64_naming_the_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_sample-user"))
        .env_clear()
        .env("VERSION", "v3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("VERSION=\"v3\": expected v1 or v2"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sample-myapp"))
        .args(["--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
