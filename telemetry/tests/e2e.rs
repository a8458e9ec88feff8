//! End to end: three in-process fake proxies whose Istio counters advance with time (a client
//! calling the `user` service, split 50/50 over user-v1 and user-v2, all mTLS, some 503s),
//! listed by a `MeshView`, scraped by a real `Collector` every 150 ms, and the graph read
//! back over HTTP from the router. Then one proxy dies: its node turns unreachable while the
//! API keeps answering.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mesh::{Mesh, RPS, client_page, data, edge, near, one, target, user_page};
use common::{FakeProxy, eventually, get};
use mast_telemetry::{Collector, CollectorConfig, router, serve};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_from_live_fake_proxies() {
    let client = FakeProxy::start(client_page).await;
    let v1 = FakeProxy::start(user_page("v1", 50)).await;
    let v2 = FakeProxy::start(user_page("v2", 150)).await;
    let mesh = Arc::new(Mesh {
        targets: Mutex::new(vec![
            target("client-1", "client", "client", None, &client),
            target("user-v1-1", "user-v1", "user", Some("v1"), &v1),
            target("user-v2-1", "user-v2", "user", Some("v2"), &v2),
        ]),
    });
    let config = CollectorConfig {
        interval: Duration::from_millis(150),
        // A loaded CI machine may answer slower than one interval; a dead proxy is refused
        // at once anyway.
        timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let collector = Collector::new(mesh.clone(), config).unwrap();
    let app = router(collector.telemetry(), None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let collector_task = tokio::spawn(collector.run(stopped(stop_rx.clone())));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server_task = tokio::spawn(serve(listener, app, stopped(stop_rx.clone())));

    // 3 s of data, then the figures must be what the fakes serve.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let graph_url = format!("{base}/api/namespaces/default/graph?duration=1m");
    let (g, v1_node) = eventually(
        "graph matches the fakes",
        Duration::from_secs(20),
        || async {
            let r = get(&graph_url).await.map_err(|e| e.to_string())?;
            let g = r.json();
            let nodes = data(&g["elements"]["nodes"]);
            let edges = data(&g["elements"]["edges"]);
            let user_box = one(&nodes, "user box", |n| {
                n["nodeType"] == "box" && n["app"] == "user"
            })?;
            let n1 = one(&nodes, "v1", |n| n["app"] == "user" && n["version"] == "v1")?;
            let n2 = one(&nodes, "v2", |n| n["app"] == "user" && n["version"] == "v2")?;
            if n1["parent"] != user_box["id"] || n2["parent"] != user_box["id"] {
                return Err("versions not in the user box".into());
            }
            let svc = one(&nodes, "user service", |n| {
                n["nodeType"] == "service" && n["service"] == "user"
            })?;
            if svc["hasTrafficShifting"] != true || svc["hasVS"]["hostnames"][0] != "user" {
                return Err(format!("service badges: {svc}"));
            }
            let c = one(&nodes, "client", |n| {
                n["nodeType"] == "app" && n["app"] == "client"
            })?;
            let in_edge = edge(&edges, &c, &svc)?;
            let to1 = edge(&edges, &svc, &n1)?;
            let to2 = edge(&edges, &svc, &n2)?;
            if !near(&in_edge["rps"], 2.0 * RPS, 0.15) {
                return Err(format!("client → user rps {}", in_edge["rps"]));
            }
            for (e, errors) in [(&to1, 0.05), (&to2, 0.15)] {
                if !near(&e["rps"], RPS, 0.15) || !near(&e["percent"], 50.0, 0.1) {
                    return Err(format!("split: rps {} percent {}", e["rps"], e["percent"]));
                }
                if !near(&e["errorRate"], errors, 0.3) {
                    return Err(format!("errorRate {} (want {errors})", e["errorRate"]));
                }
            }
            Ok((g.clone(), n1))
        },
    )
    .await;

    let nodes = data(&g["elements"]["nodes"]);
    let edges = data(&g["elements"]["edges"]);
    let svc = one(&nodes, "svc", |n| n["service"] == "user").unwrap();
    let c = one(&nodes, "client", |n| {
        n["nodeType"] == "app" && n["app"] == "client"
    })
    .unwrap();
    let in_edge = edge(&edges, &c, &svc).unwrap();
    assert_eq!(in_edge["isMTLS"], "100");
    assert_eq!(in_edge["percent"], 100.0);
    assert_eq!(in_edge["traffic"]["protocol"], "http");
    // Requests at 7 ms (5xx at 30 ms): p50 inside (5,10].
    let p50 = in_edge["p50"].as_f64().unwrap();
    assert!(p50 > 5.0 && p50 <= 10.0, "p50 {p50}");
    assert_eq!(
        in_edge["traffic"]["responses"]["503"]["flags"]["URX"]
            .as_str()
            .map(|s| s.parse::<f64>().unwrap() > 5.0),
        Some(true)
    );
    let v2_node = one(&nodes, "v2", |n| n["version"] == "v2").unwrap();
    assert_eq!(edge(&edges, &svc, &v1_node).unwrap()["health"], "healthy");
    assert_eq!(edge(&edges, &svc, &v2_node).unwrap()["health"], "failure");
    assert_eq!(v1_node["isUnreachable"], false);
    assert_eq!(v1_node["mtlsPercent"], 100.0);
    // The client's own reports of the user calls are not counted again; its raw TCP to an
    // outside address is (no destination proxy reports it).
    let passthrough = one(&nodes, "passthrough", |n| {
        n["service"] == "PassthroughCluster"
    })
    .unwrap();
    let tcp = edge(&edges, &c, &passthrough).unwrap();
    assert_eq!(tcp["traffic"]["protocol"], "tcp");
    assert!(near(&tcp["tcpBytesPerSecond"], 1000.0, 0.2), "{tcp}");
    assert_eq!(edges.len(), 4, "{edges:#?}");

    // Ids are stable across refreshes.
    let again = get(&graph_url).await.unwrap().json();
    let ids = |g: &Value| {
        let mut ids: Vec<String> = data(&g["elements"]["nodes"])
            .iter()
            .chain(data(&g["elements"]["edges"]).iter())
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&g), ids(&again));

    // Node and edge detail: one point per scrape interval.
    let id = v1_node["id"].as_str().unwrap();
    let d = get(&format!(
        "{base}/api/namespaces/default/nodes/{id}?duration=1m"
    ))
    .await
    .unwrap();
    assert_eq!(d.status, 200);
    let d = d.json();
    assert_eq!(d["data"]["id"], id);
    let rps = d["series"]["rps"].as_array().unwrap();
    assert!(rps.len() >= 15, "{} points", rps.len());
    let avg: f64 = rps
        .iter()
        .skip(1)
        .map(|p| p[1].as_f64().unwrap())
        .sum::<f64>()
        / (rps.len() - 1) as f64;
    assert!((avg - RPS).abs() < RPS * 0.2, "average {avg}");
    assert_eq!(
        d["series"]["errorRate"].as_array().unwrap().len(),
        rps.len()
    );
    assert_eq!(d["series"]["p95"].as_array().unwrap().len(), rps.len());
    let edge_id = in_edge["id"].as_str().unwrap();
    let d = get(&format!("{base}/api/namespaces/default/nodes/{edge_id}"))
        .await
        .unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.json()["data"]["source"], c["id"]);

    let h = get(&format!("{base}/api/health")).await.unwrap().json();
    assert_eq!(
        (h["targets"].as_u64(), h["reachable"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(h["intervalSeconds"], 0.15);
    let ns = get(&format!("{base}/api/namespaces")).await.unwrap().json();
    assert_eq!(ns, serde_json::json!([{"name": "default"}]));

    // user-v2's proxy dies: its node greys out, the API keeps answering.
    v2.kill();
    let v2_id = v2_node["id"].clone();
    eventually("v2 unreachable", Duration::from_secs(10), || async {
        let g = get(&graph_url).await.map_err(|e| e.to_string())?.json();
        let nodes = data(&g["elements"]["nodes"]);
        let n = one(&nodes, "v2", |n| n["id"] == v2_id)?;
        let v1 = one(&nodes, "v1", |n| n["version"] == "v1")?;
        match (&n["isUnreachable"], &v1["isUnreachable"]) {
            (Value::Bool(true), Value::Bool(false)) => Ok(()),
            other => Err(format!("isUnreachable {other:?}")),
        }
    })
    .await;
    let h = get(&format!("{base}/api/health")).await.unwrap().json();
    assert_eq!(
        (h["targets"].as_u64(), h["reachable"].as_u64()),
        (Some(3), Some(2))
    );

    // The host stops listing v2: it is no longer counted, its traffic stays until it ages out.
    mesh.targets
        .lock()
        .unwrap()
        .retain(|t| t.workload != "user-v2");
    eventually("v2 delisted", Duration::from_secs(10), || async {
        let h = get(&format!("{base}/api/health"))
            .await
            .map_err(|e| e.to_string())?
            .json();
        (h["targets"] == 2 && h["reachable"] == 2)
            .then_some(())
            .ok_or(format!("{h}"))
    })
    .await;
    let g = get(&graph_url).await.unwrap().json();
    let nodes = data(&g["elements"]["nodes"]);
    let n = one(&nodes, "v2", |n| n["id"] == v2_node["id"]).unwrap();
    assert_eq!(n["isUnreachable"], false);

    let _ = stop_tx.send(true);
    collector_task.await.unwrap();
    server_task.await.unwrap().unwrap();
}
