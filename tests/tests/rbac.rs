//! mast-proxy enforces Envoy's RBAC filters, the form Istio's AuthorizationPolicy takes on
//! the wire: an HTTP DENY filter then an ALLOW filter in front of the router (403 "RBAC:
//! access denied", counted with flag `RBAC`), and network RBAC in front of `tcp_proxy`
//! (a denied connection is closed unproxied). A config it cannot honour is refused.
//!
//! One mast-proxy from a static `--config` file, one HTTP backend, all on loopback.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mast_e2e::{Backend, HttpClient, Proc, eventually, free_port};

fn bootstrap(web: u16, tcp_open: u16, tcp_shut: u16, admin: u16, backend: u16) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: {web}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend, timeout: 10s}}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  "ns[default]-policy[deny-admin]-rule[0]":
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules:
                            rules:
                            - url_path: {{path: {{prefix: /admin}}}}
                    principals:
                    - and_ids: {{ids: [{{any: true}}]}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  "ns[default]-policy[allow-get]-rule[0]":
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules:
                            rules:
                            - header: {{name: ":method", string_match: {{exact: GET}}}}
                    principals:
                    - and_ids:
                        ids:
                        - or_ids:
                            ids:
                            - remote_ip: {{address_prefix: 127.0.0.0, prefix_len: 8}}
              shadow_rules:
                action: DENY
                policies:
                  "ns[default]-policy[dry-run]-rule[0]":
                    permissions: [{{any: true}}]
                    principals: [{{any: true}}]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  - name: tcp-open
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tcp_open}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp.
          rules:
            policies:
              loopback:
                permissions: [{{destination_port: {tcp_open}}}]
                principals: [{{direct_remote_ip: {{address_prefix: 127.0.0.1, prefix_len: 32}}}}]
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp-open
          cluster: backend
  - name: tcp-shut
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tcp_shut}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp.
          rules:
            action: DENY
            policies:
              everyone:
                permissions: [{{any: true}}]
                principals: [{{any: true}}]
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp-shut
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}
"#
    )
}

/// Send one HTTP/1.1 request with `method` and read the whole answer (the connection
/// closes after it).
async fn exchange(port: u16, method: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .context("no answer")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_filters_allow_and_deny() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backend = Backend::start("ok").await?;
    let (web, tcp_open, tcp_shut, admin, stats) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let boot = dir.path().join("bootstrap.yaml");
    std::fs::write(
        &boot,
        bootstrap(web, tcp_open, tcp_shut, admin, backend.port),
    )?;
    let mut proxy = Proc::spawn(
        "mast-proxy",
        std::process::Command::new(mast_e2e::bin("mast-proxy"))
            .arg("--config")
            .arg(&boot)
            .args(["--stats-port", &stats.to_string()])
            .args([
                "--status-port",
                &free_port().to_string(),
                "--agent-port",
                "0",
            ])
            .args(["--drain", "1s", "--concurrency", "1"]),
        dir.path().join("proxy.log"),
    )?;
    eventually("mast-proxy ready", Duration::from_secs(10), || async move {
        let (status, body) = HttpClient::new()
            .get(&format!("http://127.0.0.1:{admin}/ready"), None, &[])
            .await?;
        ensure!(status == 200, "{status} {body}");
        Ok(())
    })
    .await?;
    proxy.check_running()?;

    // Allowed by the ALLOW filter; the shadow DENY-everything rule changes nothing.
    let ok = exchange(web, "GET", "/items?x=1").await?;
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok"),
        "{ok:?}"
    );
    // The DENY filter comes first.
    let admin_page = exchange(web, "GET", "/admin/users").await?;
    assert!(admin_page.starts_with("HTTP/1.1 403"), "{admin_page:?}");
    assert!(
        admin_page.ends_with("RBAC: access denied"),
        "{admin_page:?}"
    );
    assert!(
        admin_page
            .to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{admin_page:?}"
    );
    // No ALLOW policy matches a POST.
    let post = exchange(web, "POST", "/items").await?;
    assert!(post.starts_with("HTTP/1.1 403"), "{post:?}");
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Denials are counted like any local reply, with Envoy's flag.
    let (_, metrics) = HttpClient::new()
        .get(
            &format!("http://127.0.0.1:{stats}/stats/prometheus"),
            None,
            &[],
        )
        .await?;
    let denied = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains("response_code=\"403\"") && l.contains("response_flags=\"RBAC\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(denied, 2.0, "{metrics}");

    // Network RBAC: allowed connections are proxied, denied ones closed with nothing sent.
    let through = exchange(tcp_open, "GET", "/").await?;
    assert!(through.starts_with("HTTP/1.1 200"), "{through:?}");
    let shut = exchange(tcp_shut, "GET", "/").await;
    assert!(
        matches!(&shut, Ok(s) if s.is_empty()) || shut.is_err(),
        "{shut:?}"
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    proxy.check_running()?;

    // What cannot be enforced is refused, naming the field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        bootstrap(
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            backend.port,
        )
        .replace(
            "- url_path: {path: {prefix: /admin}}",
            "- url_path: {path: {safe_regex: {regex: \"(\"}}}",
        ),
    )?;
    let out = std::process::Command::new(mast_e2e::bin("mast-proxy"))
        .arg("--config")
        .arg(&bad)
        .args(["--admin-port", &free_port().to_string()])
        .args([
            "--stats-port",
            "0",
            "--status-port",
            "0",
            "--agent-port",
            "0",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Listener \"web\"")
            && err.contains("http_filters[0].typed_config.rules.policies")
            && err.contains("url_path.path.safe_regex"),
        "{err}"
    );
    Ok(())
}
