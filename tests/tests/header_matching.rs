//! Header matching, differentially: mast-proxy must decide exactly as Envoy does.
//!
//! Routes and RBAC policies both match on `HeaderMatcher`s, and Istio writes them for every
//! VirtualService `headers`/`authority`/`method` match and every AuthorizationPolicy
//! `when: request.headers[...]`, `hosts`, `methods` and `notHosts`. A sidecar that reads a
//! header differently from Envoy routes a request to the wrong version or lets through what
//! the policy refused. So one table of (matcher, request) rows — repeated headers, empty
//! values, case, `invert_match`, presence and absence, full-match regexes, integer ranges,
//! `treat_missing_header_as_empty`, the deprecated fields, and the pseudo-headers
//! `:authority`, `:path`, `:method`, `:scheme` — goes through a real Envoy and through
//! mast-proxy, both started from the same static bootstrap, twice:
//!
//! - routing: a listener whose routes each carry one matcher (`prefix: /m<i>/` plus the header
//!   matcher) and answer with a distinct direct response, falling back to a 404;
//! - RBAC: a listener whose `envoy.filters.http.rbac` ALLOW policy `m<i>` needs `url_path`
//!   `/m<i>/` and the matcher, in front of a route that always answers 200.
//!
//! Each decision (route hit or not, allowed or denied) must be equal for every row; the table
//! is printed. Needs Envoy (`$ENVOY_BIN`, else `.venv/bin/envoy`); without it the test fails.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mast_e2e::{HttpClient, Proc, eventually, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One matcher and the requests that probe it.
struct Case {
    what: &'static str,
    matcher: Value,
    requests: Vec<Probe>,
}

/// One request: its method, the path after `/m<i>`, its Host and extra header lines.
struct Probe {
    method: &'static str,
    rest: &'static str,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

fn probe(headers: &[(&'static str, &'static str)]) -> Probe {
    Probe {
        method: "GET",
        rest: "/x",
        host: "web.example",
        headers: headers.to_vec(),
    }
}

impl Probe {
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }

    fn rest(mut self, r: &'static str) -> Self {
        self.rest = r;
        self
    }

    fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if self.method != "GET" {
            let _ = write!(s, "{} ", self.method);
        }
        if self.rest != "/x" {
            let _ = write!(s, "…{} ", self.rest);
        }
        if self.host != "web.example" {
            let _ = write!(s, "Host: {} ", self.host);
        }
        if self.headers.is_empty() && s.is_empty() {
            s.push_str("(no header)");
        }
        for (k, v) in &self.headers {
            let _ = write!(s, "{k}: {v:?} ");
        }
        s.trim_end().to_string()
    }
}

fn exact(name: &str, v: &str) -> Value {
    json!({"name": name, "string_match": {"exact": v}})
}

fn with(mut m: Value, key: &str, v: Value) -> Value {
    if let Some(o) = m.as_object_mut() {
        o.insert(key.to_string(), v);
    }
    m
}

fn cases() -> Vec<Case> {
    let c = |what, matcher, requests| Case {
        what,
        matcher,
        requests,
    };
    let multi = || probe(&[("x-m", "a"), ("x-m", "b")]);
    let range = |lo: i64, hi: i64| json!({"name": "x-n", "range_match": {"start": lo, "end": hi}});
    vec![
        // Several values: Envoy 1.40 matches when any one does (not their join).
        c(
            "x-m exact \"a\" inverted",
            json!({"name": "x-m", "string_match": {"exact": "a"}, "invert_match": true}),
            vec![multi(), probe(&[("x-m", "c"), ("x-m", "d")])],
        ),
        c(
            "x-m exact \"a,b\"",
            exact("x-m", "a,b"),
            vec![multi(), probe(&[("x-m", "a,b")]), probe(&[("x-m", "a")])],
        ),
        c(
            "x-m exact_match \"a\" (deprecated)",
            json!({"name": "x-m", "exact_match": "a"}),
            vec![multi(), probe(&[("x-m", "a")])],
        ),
        c(
            "x-m contains_match \"a,b\" (deprecated)",
            json!({"name": "x-m", "contains_match": "a,b"}),
            vec![multi(), probe(&[("x-m", "b")])],
        ),
        c(
            "x-m suffix ignore_case \",B\"",
            json!({"name": "x-m", "string_match": {"suffix": ",B", "ignore_case": true}}),
            vec![multi()],
        ),
        // Empty values, and the deprecated exact_match "" (any value).
        c(
            "x-e exact \"\"",
            exact("x-e", ""),
            vec![probe(&[("x-e", "")]), probe(&[("x-e", "v")]), probe(&[])],
        ),
        c(
            "x-e exact_match \"\" (deprecated)",
            json!({"name": "x-e", "exact_match": ""}),
            vec![probe(&[("x-e", "v")]), probe(&[("x-e", "")]), probe(&[])],
        ),
        // Case.
        c(
            "x-c exact \"Foo\"",
            exact("x-c", "Foo"),
            vec![probe(&[("x-c", "Foo")]), probe(&[("x-c", "foo")])],
        ),
        c(
            "x-c exact \"Foo\" ignore_case",
            json!({"name": "x-c", "string_match": {"exact": "Foo", "ignore_case": true}}),
            vec![probe(&[("x-c", "fOO")]), probe(&[("x-c", "fo")])],
        ),
        c(
            "x-c prefix \"AB\" ignore_case",
            json!({"name": "x-c", "string_match": {"prefix": "AB", "ignore_case": true}}),
            vec![probe(&[("x-c", "abc")]), probe(&[("x-c", "xab")])],
        ),
        c(
            "x-c contains \"Mid\" ignore_case",
            json!({"name": "x-c", "string_match": {"contains": "Mid", "ignore_case": true}}),
            vec![probe(&[("x-c", "aMIDb")]), probe(&[("x-c", "mi d")])],
        ),
        c(
            "x-c prefix_match \"AB\" (deprecated)",
            json!({"name": "x-c", "prefix_match": "AB"}),
            vec![probe(&[("x-c", "abc")]), probe(&[("x-c", "ABc")])],
        ),
        c(
            "X-Upper exact \"v\" (name in capitals)",
            exact("X-Upper", "v"),
            vec![probe(&[("x-upper", "v")])],
        ),
        // invert_match.
        c(
            "x-i exact \"bad\" inverted",
            with(exact("x-i", "bad"), "invert_match", json!(true)),
            vec![
                probe(&[("x-i", "good")]),
                probe(&[("x-i", "bad")]),
                probe(&[]),
            ],
        ),
        // Presence and absence.
        c(
            "x-p present",
            json!({"name": "x-p", "present_match": true}),
            vec![probe(&[("x-p", "")]), probe(&[("x-p", "1")]), probe(&[])],
        ),
        c(
            "x-p present_match false",
            json!({"name": "x-p", "present_match": false}),
            vec![probe(&[]), probe(&[("x-p", "1")])],
        ),
        c(
            "x-p present inverted",
            json!({"name": "x-p", "present_match": true, "invert_match": true}),
            vec![probe(&[]), probe(&[("x-p", "1")])],
        ),
        c(
            "x-p present_match false inverted",
            json!({"name": "x-p", "present_match": false, "invert_match": true}),
            vec![probe(&[]), probe(&[("x-p", "1")])],
        ),
        c(
            "x-p (no specifier)",
            json!({"name": "x-p"}),
            vec![probe(&[("x-p", "1")]), probe(&[])],
        ),
        // treat_missing_header_as_empty.
        c(
            "x-t exact \"\" missing-as-empty",
            with(
                exact("x-t", ""),
                "treat_missing_header_as_empty",
                json!(true),
            ),
            vec![probe(&[]), probe(&[("x-t", "v")])],
        ),
        c(
            "x-t exact \"secret\" inverted, missing-as-empty",
            json!({"name": "x-t", "string_match": {"exact": "secret"}, "invert_match": true,
                   "treat_missing_header_as_empty": true}),
            vec![
                probe(&[]),
                probe(&[("x-t", "secret")]),
                probe(&[("x-t", "other")]),
            ],
        ),
        c(
            "x-t present, missing-as-empty",
            json!({"name": "x-t", "present_match": true, "treat_missing_header_as_empty": true}),
            vec![probe(&[]), probe(&[("x-t", "v")])],
        ),
        c(
            "x-t range [0,9) missing-as-empty",
            with(range(0, 9), "treat_missing_header_as_empty", json!(true)),
            vec![probe(&[])],
        ),
        // Regexes match the whole value.
        c(
            "x-r safe_regex_match [0-9]+ (deprecated)",
            json!({"name": "x-r", "safe_regex_match": {"regex": "[0-9]+"}}),
            vec![
                probe(&[("x-r", "123")]),
                probe(&[("x-r", "a123")]),
                probe(&[("x-r", "123a")]),
            ],
        ),
        c(
            "x-r safe_regex ab|cd",
            json!({"name": "x-r", "string_match": {"safe_regex": {"regex": "ab|cd"}}}),
            vec![
                probe(&[("x-r", "cd")]),
                probe(&[("x-r", "abcd")]),
                probe(&[("x-r", "ab"), ("x-r", "cd")]),
            ],
        ),
        // Integer ranges, [start, end).
        c(
            "x-n range [10,20)",
            range(10, 20),
            vec![
                probe(&[("x-n", "15")]),
                probe(&[("x-n", "20")]),
                probe(&[("x-n", "+15")]),
                probe(&[("x-n", "15x")]),
                probe(&[("x-n", "1.5e1")]),
                probe(&[("x-n", "15"), ("x-n", "16")]),
            ],
        ),
        c(
            "x-n range [-10,0)",
            range(-10, 0),
            vec![probe(&[("x-n", "-1")]), probe(&[("x-n", "0")])],
        ),
        // Pseudo-headers, as Istio writes them.
        c(
            ":authority exact web.example",
            exact(":authority", "web.example"),
            vec![
                probe(&[]),
                probe(&[]).host("web.example:8080"),
                probe(&[]).host("WEB.example"),
            ],
        ),
        c(
            ":authority prefix \"web.\" ignore_case",
            json!({"name": ":authority", "string_match": {"prefix": "WEB.", "ignore_case": true}}),
            vec![probe(&[]), probe(&[]).host("api.example")],
        ),
        c(
            "host exact web.example",
            exact("host", "web.example"),
            vec![probe(&[])],
        ),
        c(
            ":path suffix \"?q=1\"",
            json!({"name": ":path", "string_match": {"suffix": "/x?q=1"}}),
            vec![probe(&[]).rest("/x?q=1"), probe(&[])],
        ),
        c(
            ":method exact POST",
            exact(":method", "POST"),
            vec![probe(&[]).method("POST"), probe(&[])],
        ),
        c(
            ":method exact_match GET inverted (deprecated)",
            json!({"name": ":method", "exact_match": "GET", "invert_match": true}),
            vec![probe(&[]).method("DELETE"), probe(&[])],
        ),
        c(
            ":scheme exact http",
            exact(":scheme", "http"),
            vec![probe(&[]), probe(&[("x-forwarded-proto", "https")])],
        ),
        c(
            ":scheme exact https",
            exact(":scheme", "https"),
            vec![probe(&[]), probe(&[("x-forwarded-proto", "https")])],
        ),
    ]
}

// === the bootstrap ===

fn hcm(name: &str, routes: Vec<Value>, filters: Vec<Value>) -> Value {
    let mut http_filters = filters;
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
            "http_filters": http_filters,
        }
    })
}

fn direct(prefix: &str, headers: Option<&Value>, status: u16, body: &str) -> Value {
    let mut m = json!({"prefix": prefix});
    if let Some(h) = headers {
        m["headers"] = json!([h]);
    }
    json!({"match": m, "direct_response": {"status": status, "body": {"inline_string": body}}})
}

fn listener(name: &str, port: u16, filter: Value) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [filter]}],
    })
}

/// Route listener on `route`, RBAC listener on `rbac`, admin on `admin`.
fn bootstrap(cases: &[Case], route: u16, rbac: u16, admin: u16) -> Value {
    let mut routes: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| direct(&format!("/m{i}/"), Some(&c.matcher), 200, &format!("m{i}")))
        .collect();
    routes.push(direct("/", None, 404, "none"));
    let policies: serde_json::Map<String, Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let permission = json!({"and_rules": {"rules": [
                {"url_path": {"path": {"prefix": format!("/m{i}/")}}},
                {"header": c.matcher},
            ]}});
            (
                format!("m{i}"),
                json!({"permissions": [permission], "principals": [{"any": true}]}),
            )
        })
        .collect();
    let rbac_filter = json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies},
        }
    });
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                listener("route", route, hcm("route", routes, vec![])),
                listener("rbac", rbac, hcm("rbac", vec![direct("/", None, 200, "allowed")], vec![rbac_filter])),
            ],
        },
    })
}

// === the proxies ===

struct Proxy {
    proc: Proc,
    route: u16,
    rbac: u16,
}

async fn start(which: &str, envoy: Option<&Path>, cases: &[Case], dir: &Path) -> Result<Proxy> {
    let (route, rbac, admin) = (free_port(), free_port(), free_port());
    let boot = dir.join(format!("{which}.json"));
    std::fs::write(
        &boot,
        serde_json::to_string_pretty(&bootstrap(cases, route, rbac, admin))?,
    )?;
    let log = dir.join(format!("{which}.log"));
    let mut proc = match envoy {
        Some(bin) => Proc::spawn(
            which,
            Command::new(bin)
                .arg("-c")
                .arg(&boot)
                .args(["--concurrency", "1", "--use-dynamic-base-id"])
                .args(["-l", "warning", "--drain-time-s", "1"]),
            log,
        )?,
        None => Proc::spawn(
            which,
            Command::new(mast_e2e::bin("mast-proxy"))
                .arg("--config")
                .arg(&boot)
                .args(["--stats-port", &free_port().to_string()])
                .args(["--status-port", &free_port().to_string()])
                .args(["--agent-port", "0", "--drain", "1s", "--concurrency", "1"]),
            log,
        )?,
    };
    let ready = eventually(
        &format!("{which} ready"),
        Duration::from_secs(20),
        || async move {
            let (status, body) = HttpClient::new()
                .get(&format!("http://127.0.0.1:{admin}/ready"), None, &[])
                .await?;
            ensure!(status == 200, "{status} {body}");
            Ok(())
        },
    )
    .await;
    proc.check_running()?;
    ready.with_context(|| proc.log_text())?;
    Ok(Proxy { proc, route, rbac })
}

/// One HTTP/1.1 request, raw (so repeated headers go out as written); the status and body.
async fn exchange(port: u16, p: &Probe, path: &str) -> Result<(u16, String)> {
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n",
        p.method, p.host
    );
    for (k, v) in &p.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(head.as_bytes()).await?;
    // Read up to the end of the body its Content-Length announces: waiting for the close
    // would wait out Envoy's delayed_close_timeout (1 s) on every request.
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            if response_complete(&out) {
                return Ok::<_, std::io::Error>(());
            }
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .context("no answer")??;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// A whole response: its head and as many body bytes as its Content-Length says.
fn response_complete(out: &[u8]) -> bool {
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|n| out.len() >= end + 4 + n)
}

/// (route matched, RBAC allowed) for one row.
async fn decide(proxy: &Proxy, i: usize, p: &Probe) -> Result<(String, String)> {
    let path = format!("/m{i}{}", p.rest);
    let (status, body) = exchange(proxy.route, p, &path).await?;
    let route = match (status, body.as_str()) {
        (200, b) if b == format!("m{i}") => "hit".to_string(),
        (404, "none") => "miss".to_string(),
        (s, b) => format!("{s} {b:?}"),
    };
    let (status, body) = exchange(proxy.rbac, p, &path).await?;
    let rbac = match (status, body.as_str()) {
        (200, "allowed") => "allow".to_string(),
        (403, _) => "deny".to_string(),
        (s, b) => format!("{s} {b:?}"),
    };
    Ok((route, rbac))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_matching_equals_envoy() -> Result<()> {
    // Like every Envoy test here: no Envoy is a failure, not a skip (scripts/test.sh installs it).
    let envoy_bin = mast_e2e::envoy_bin();
    let dir = tempfile::tempdir()?;
    let cases = cases();
    let mut envoy = start("envoy", Some(&envoy_bin), &cases, dir.path()).await?;
    let mut mast = start("mast-proxy", None, &cases, dir.path()).await?;

    let mut table = String::from(
        "| # | matcher | request | route: Envoy | route: mast-proxy | RBAC: Envoy | RBAC: mast-proxy | |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let (mut rows, mut differ) = (0, Vec::new());
    for (i, case) in cases.iter().enumerate() {
        for p in &case.requests {
            rows += 1;
            let e = decide(&envoy, i, p).await?;
            let m = decide(&mast, i, p).await?;
            let same = e == m;
            if !same {
                differ.push(format!("m{i} {} / {}", case.what, p.describe()));
            }
            let _ = writeln!(
                table,
                "| m{i} | `{}` | `{}` | {} | {} | {} | {} | {} |",
                case.what,
                p.describe(),
                e.0,
                m.0,
                e.1,
                m.1,
                if same { "=" } else { "**≠**" }
            );
        }
    }
    println!("{table}");
    println!(
        "{rows} rows, {} equal, {} different",
        rows - differ.len(),
        differ.len()
    );
    envoy.proc.check_running()?;
    mast.proc.check_running()?;
    ensure!(
        differ.is_empty(),
        "mast-proxy decided differently from Envoy on {} of {rows} rows:\n{}",
        differ.len(),
        differ.join("\n")
    );
    Ok(())
}
