//! The HTTP contract of telemetry/API.md that does not need traffic: defaults, 400s naming
//! the bad parameter, JSON 404s, and the static web view (content types, no traversal).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::get;
use mast_telemetry::{
    Collector, CollectorConfig, MeshView, ServiceFeatures, Target, router, serve,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct EmptyMesh;

impl MeshView for EmptyMesh {
    fn targets(&self) -> Vec<Target> {
        Vec::new()
    }

    fn service_features(&self, _: &str, _: &str) -> ServiceFeatures {
        ServiceFeatures::default()
    }
}

struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(web_dir: Option<&Path>) -> Server {
        let collector = Collector::new(Arc::new(EmptyMesh), CollectorConfig::default()).unwrap();
        let app = router(collector.telemetry(), web_dir.map(Path::to_path_buf));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, app, async {
            let _ = rx.await;
        }));
        Server {
            base,
            stop: Some(tx),
            task,
        }
    }

    async fn get(&self, path: &str) -> common::Reply {
        get(&format!("{}{}", self.base, path)).await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn defaults_and_empty_answers() {
    let s = Server::start(None).await;
    let h = s.get("/api/health").await;
    assert_eq!(h.status, 200);
    assert!(h.content_type().starts_with("application/json"));
    let h = h.json();
    assert_eq!(h["targets"], 0);
    assert_eq!(h["reachable"], 0);
    assert_eq!(h["lastScrape"], 0);
    assert_eq!(h["intervalSeconds"], 5.0);
    assert_eq!(s.get("/api/namespaces").await.json(), serde_json::json!([]));
    let g = s.get("/api/namespaces/default/graph").await;
    assert_eq!(g.status, 200);
    let g = g.json();
    assert_eq!(g["graphType"], "versionedApp");
    assert_eq!(g["duration"], 300);
    assert!(g["timestamp"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(g["elements"]["nodes"], serde_json::json!([]));
    assert_eq!(g["elements"]["edges"], serde_json::json!([]));
    let g = s
        .get("/api/namespaces/graph?namespaces=default,shop&graphType=workload&duration=1h")
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json()["duration"], 3600);
    // Without a web directory there is nothing at /.
    assert_eq!(s.get("/").await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn bad_values_are_400_naming_parameter_and_value() {
    let s = Server::start(None).await;
    let cases = [
        (
            "/api/namespaces/default/graph?duration=7m",
            r#"duration "7m": expected one of 1m, 5m, 15m, 1h"#,
        ),
        (
            "/api/namespaces/default/graph?graphType=pods",
            r#"graphType "pods": expected one of versionedApp, app, workload, service"#,
        ),
        (
            "/api/namespaces/graph?graphType=app",
            "namespaces: required, a comma-separated list such as namespaces=default,shop",
        ),
        (
            "/api/namespaces/graph?namespaces=a,,b",
            r#"namespaces "a,,b": empty namespace name in the list"#,
        ),
        (
            "/api/namespaces/default/nodes/n1?duration=2h",
            r#"duration "2h": expected one of 1m, 5m, 15m, 1h"#,
        ),
    ];
    for (path, error) in cases {
        let r = s.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["error"], error, "{path}");
    }
    let r = s.get("/api/namespaces/default/nodes/n1").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"],
        r#"no node or edge "n1" in namespace "default" over 5m"#
    );
    let r = s.get("/api/nothing/here").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], r#"no API at "/api/nothing/here""#);
    s.stop().await;
}

#[tokio::test]
async fn serves_the_web_view_without_leaving_its_folder() {
    let root = tempfile::tempdir().unwrap();
    let web = root.path().join("dist");
    std::fs::create_dir_all(web.join("assets")).unwrap();
    std::fs::create_dir_all(web.join("docs")).unwrap();
    std::fs::write(web.join("index.html"), "<!doctype html><title>Mast</title>").unwrap();
    std::fs::write(web.join("assets/app-1a2b.js"), "console.log(1)").unwrap();
    std::fs::write(web.join("assets/app.css"), "body{}").unwrap();
    std::fs::write(web.join("assets/logo.svg"), "<svg/>").unwrap();
    std::fs::write(web.join("assets/icon.png"), [0x89, b'P', b'N', b'G']).unwrap();
    std::fs::write(web.join("docs/index.html"), "docs").unwrap();
    std::fs::write(root.path().join("secret.txt"), "secret").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.path().join("secret.txt"), web.join("link.txt")).unwrap();

    let s = Server::start(Some(&web)).await;
    let r = s.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "text/html; charset=utf-8");
    assert_eq!(&r.body[..], b"<!doctype html><title>Mast</title>");
    for (path, ct) in [
        ("/index.html", "text/html; charset=utf-8"),
        ("/assets/app-1a2b.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/assets/logo.svg", "image/svg+xml"),
        ("/assets/icon.png", "image/png"),
        ("/docs/", "text/html; charset=utf-8"),
        ("/docs", "text/html; charset=utf-8"),
        ("/assets/app%2D1a2b.js", "text/javascript; charset=utf-8"),
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.content_type(), ct, "{path}");
    }
    for path in [
        "/missing.js",
        "/assets/",
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/assets%5c..%5c..%5csecret.txt",
        "/link.txt",
        "/%00",
    ] {
        let r = s.get(path).await;
        assert_eq!(
            r.status,
            404,
            "{path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("secret"),
            "{path}"
        );
    }
    // The API still wins over the files.
    assert_eq!(s.get("/api/health").await.status, 200);
    s.stop().await;
}
