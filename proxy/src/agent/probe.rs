//! Kubernetes probes that Istio's injector rewrote to the agent: `ISTIO_KUBE_APP_PROBERS`.
//!
//! With mTLS on, kubelet cannot reach the app's own probe ports through the sidecar, so the
//! injector points every probe (and lifecycle hook) at the agent's status port, at
//! `/app-health/<container>/{livez,readyz,startupz}` or
//! `/app-lifecycle/<container>/{prestopz,poststartz}`, and hands the original handlers over in
//! `ISTIO_KUBE_APP_PROBERS` (a JSON object from those paths to `{httpGet|tcpSocket|grpc,
//! timeoutSeconds}`). The agent runs the original probe from inside the pod, where the app is
//! reachable, and answers as kubelet's prober would: the app's HTTP status, or 200 / 500 for
//! TCP and gRPC. The variable is checked whole at start, as Istio's agent does, so a bad one
//! fails the pod at once rather than at its first probe.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::Full;
use serde::Deserialize;

use super::client::{self, Scheme};

/// Istio's variable with the rewritten probes.
pub const KUBE_APP_PROBERS: &str = "ISTIO_KUBE_APP_PROBERS";

/// Kubernetes' default `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of the app's answer is passed back (kubelet keeps 10 KiB for its events).
const BODY_LIMIT: usize = 10 * 1024;

/// One rewritten probe, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AppProbe {
    pub action: Action,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Http {
        scheme: Scheme,
        /// The probe's `host`; `None`: the pod IP.
        host: Option<String>,
        port: u16,
        path: PathAndQuery,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
}

/// What is wrong with `ISTIO_KUBE_APP_PROBERS`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeConfigError {
    #[error("not JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{path:?}: {reason}")]
    Probe { path: String, reason: String },
}

// Kubernetes' probe handlers as the injector serialises them (k8s.io/api/core/v1). Fields of
// the Probe that do not change how one probe runs (periods, thresholds) are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prober {
    http_get: Option<HttpGetAction>,
    tcp_socket: Option<TcpSocketAction>,
    grpc: Option<GrpcAction>,
    timeout_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpGetAction {
    #[serde(default)]
    path: String,
    port: IntOrString,
    #[serde(default)]
    host: String,
    #[serde(default)]
    scheme: String,
    #[serde(default)]
    http_headers: Vec<HttpHeader>,
}

#[derive(Deserialize)]
struct HttpHeader {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct TcpSocketAction {
    port: IntOrString,
    #[serde(default)]
    host: String,
}

#[derive(Deserialize)]
struct GrpcAction {
    port: i64,
    #[serde(default)]
    service: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

impl IntOrString {
    fn port(&self) -> Result<u16, String> {
        let n = match self {
            Self::Int(n) => *n,
            // Named ports are resolved by the injector; a number in a string is still fine.
            Self::Str(s) => s.parse().map_err(|_| {
                format!("port {s:?} must be a number (named ports are resolved at injection)")
            })?,
        };
        port(n)
    }
}

fn port(n: i64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {n} is not 1-65535"))
}

/// `/app-health/<container>/{livez,readyz,startupz}` or
/// `/app-lifecycle/<container>/{prestopz,poststartz}`, the only paths Istio's injector writes.
pub fn is_agent_probe_path(path: &str) -> bool {
    let mut parts = path.split('/');
    let (Some(""), Some(kind), Some(container), Some(check), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    !container.is_empty()
        && match kind {
            "app-health" => matches!(check, "livez" | "readyz" | "startupz"),
            "app-lifecycle" => matches!(check, "prestopz" | "poststartz"),
            _ => false,
        }
}

/// Parse `ISTIO_KUBE_APP_PROBERS`; an empty value means no probes.
pub fn parse_probers(text: &str) -> Result<BTreeMap<String, AppProbe>, ProbeConfigError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let raw: BTreeMap<String, Prober> = serde_json::from_str(text)?;
    raw.into_iter()
        .map(|(path, p)| {
            let probe = check(&path, p).map_err(|reason| ProbeConfigError::Probe {
                path: path.clone(),
                reason,
            })?;
            Ok((path, probe))
        })
        .collect()
}

fn check(path: &str, p: Prober) -> Result<AppProbe, String> {
    if !is_agent_probe_path(path) {
        return Err("not /app-health/<container>/{livez,readyz,startupz} or \
             /app-lifecycle/<container>/{prestopz,poststartz}"
            .into());
    }
    let timeout = match p.timeout_seconds {
        Some(n) if n > 0 => Duration::from_secs(n.unsigned_abs()),
        _ => DEFAULT_TIMEOUT,
    };
    let host = |h: String| (!h.is_empty()).then_some(h);
    let action = match (p.http_get, p.tcp_socket, p.grpc) {
        (Some(h), None, None) => {
            let scheme = match h.scheme.to_ascii_uppercase().as_str() {
                "" | "HTTP" => Scheme::Http,
                "HTTPS" => Scheme::Https,
                other => return Err(format!("httpGet.scheme {other:?} is not HTTP or HTTPS")),
            };
            let path = if h.path.starts_with('/') {
                h.path
            } else {
                format!("/{}", h.path)
            };
            let path =
                PathAndQuery::from_str(&path).map_err(|e| format!("httpGet.path {path:?}: {e}"))?;
            let headers = h
                .http_headers
                .into_iter()
                .map(|hd| {
                    let name = HeaderName::from_bytes(hd.name.as_bytes())
                        .map_err(|e| format!("httpHeaders name {:?}: {e}", hd.name))?;
                    let value = HeaderValue::from_str(&hd.value)
                        .map_err(|e| format!("httpHeaders {:?} value: {e}", hd.name))?;
                    Ok((name, value))
                })
                .collect::<Result<_, String>>()?;
            Action::Http {
                scheme,
                host: host(h.host),
                port: h.port.port().map_err(|e| format!("httpGet.{e}"))?,
                path,
                headers,
            }
        }
        (None, Some(t), None) => Action::Tcp {
            host: host(t.host),
            port: t.port.port().map_err(|e| format!("tcpSocket.{e}"))?,
        },
        (None, None, Some(g)) => Action::Grpc {
            port: port(g.port).map_err(|e| format!("grpc.{e}"))?,
            service: g.service.unwrap_or_default(),
        },
        (None, None, None) => return Err("no httpGet, tcpSocket or grpc handler".into()),
        _ => return Err("more than one of httpGet, tcpSocket and grpc".into()),
    };
    Ok(AppProbe { action, timeout })
}

/// Where a probe connects: its own `host` (`localhost` is 127.0.0.1), else the pod IP.
fn target_host(host: Option<&str>, pod_ip: IpAddr) -> String {
    match host {
        Some(h) if h.eq_ignore_ascii_case("localhost") => "127.0.0.1".into(),
        Some(h) => h.to_string(),
        None => pod_ip.to_string(),
    }
}

/// Run `probe` against the app and answer as kubelet expects. `incoming` are kubelet's
/// request headers (its `User-Agent` and `Accept` are passed on, as Istio's agent does).
pub async fn run(probe: &AppProbe, pod_ip: IpAddr, incoming: &HeaderMap) -> (StatusCode, Bytes) {
    let outcome = tokio::time::timeout(probe.timeout, attempt(probe, pod_ip, incoming)).await;
    match outcome {
        Ok(answer) => answer,
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(format!("probe timed out after {:?}\n", probe.timeout)),
        ),
    }
}

async fn attempt(probe: &AppProbe, pod_ip: IpAddr, incoming: &HeaderMap) -> (StatusCode, Bytes) {
    let failed = |what: String| {
        tracing::debug!(%what, "app probe failed");
        (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from(what + "\n"))
    };
    match &probe.action {
        Action::Http {
            scheme,
            host,
            port,
            path,
            headers,
        } => {
            let host = target_host(host.as_deref(), pod_ip);
            let mut req = Request::new(Full::new(Bytes::new()));
            *req.uri_mut() = http::Uri::from(path.clone());
            let h = req.headers_mut();
            for name in [header::USER_AGENT, header::ACCEPT] {
                if let Some(v) = incoming.get(&name) {
                    h.insert(name, v.clone());
                }
            }
            let mut host_header = HeaderValue::from_str(&client::join_host_port(&host, *port))
                .unwrap_or(HeaderValue::from_static("localhost"));
            for (name, value) in headers {
                if name == header::HOST {
                    host_header = value.clone();
                } else {
                    h.append(name.clone(), value.clone());
                }
            }
            h.insert(header::HOST, host_header);
            match client::send(*scheme, &host, *port, req, BODY_LIMIT).await {
                Ok(answer) => (answer.status, answer.body),
                Err(e) => failed(e.to_string()),
            }
        }
        Action::Tcp { host, port } => {
            let host = target_host(host.as_deref(), pod_ip);
            match tokio::net::TcpStream::connect((host.as_str(), *port)).await {
                Ok(_) => (StatusCode::OK, Bytes::from_static(b"OK\n")),
                Err(e) => failed(format!(
                    "cannot connect to {}: {e}",
                    client::join_host_port(&host, *port)
                )),
            }
        }
        Action::Grpc { port, service } => {
            match grpc_check(SocketAddr::new(pod_ip, *port), service, probe.timeout).await {
                Ok(()) => (StatusCode::OK, Bytes::from_static(b"SERVING\n")),
                Err(e) => failed(e),
            }
        }
    }
}

/// The standard `grpc.health.v1.Health/Check`, plaintext as kubelet's gRPC probe.
async fn grpc_check(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("health check of {service:?} failed: {}", s.message()))?;
    let status = resp.into_inner().status();
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(format!("service {service:?} is {}", status.as_str_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_probers() {
        let probes = parse_probers(
            r#"{"/app-health/hello/livez":{"httpGet":{"port":80,"path":"foo","scheme":"HTTP",
                "httpHeaders":[{"name":"X","value":"y"},{"name":"Host","value":"h.example"}]},
                "timeoutSeconds":3,"periodSeconds":10},
              "/app-health/hello/readyz":{"tcpSocket":{"port":3333}},
              "/app-health/g/livez":{"grpc":{"port":9090,"service":""}},
              "/app-health/s/startupz":{"httpGet":{"port":"8443","scheme":"HTTPS","host":"localhost"}},
              "/app-lifecycle/hello/prestopz":{"httpGet":{"port":80,"path":"/stop?now=1"}}}"#,
        )
        .unwrap();
        assert_eq!(probes.len(), 5);
        let live = &probes["/app-health/hello/livez"];
        assert_eq!(live.timeout, Duration::from_secs(3));
        let Action::Http {
            scheme,
            host,
            port,
            path,
            headers,
        } = &live.action
        else {
            panic!("{live:?}");
        };
        assert_eq!((*scheme, host, *port), (Scheme::Http, &None, 80));
        assert_eq!(path.as_str(), "/foo");
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].0.as_str(), "x");
        assert_eq!(
            probes["/app-health/hello/readyz"],
            AppProbe {
                action: Action::Tcp {
                    host: None,
                    port: 3333
                },
                timeout: DEFAULT_TIMEOUT
            }
        );
        assert_eq!(
            probes["/app-health/g/livez"].action,
            Action::Grpc {
                port: 9090,
                service: String::new()
            }
        );
        let Action::Http {
            scheme, host, port, ..
        } = &probes["/app-health/s/startupz"].action
        else {
            panic!();
        };
        assert_eq!(
            (*scheme, host.as_deref(), *port),
            (Scheme::Https, Some("localhost"), 8443)
        );
        let Action::Http { path, .. } = &probes["/app-lifecycle/hello/prestopz"].action else {
            panic!();
        };
        assert_eq!(path.as_str(), "/stop?now=1");
        assert!(parse_probers("").unwrap().is_empty());
        assert!(parse_probers("{}").unwrap().is_empty());
    }

    #[test]
    fn rejects_what_istio_rejects() {
        let cases = [
            ("[1]", "JSON"),
            ("{nope", "JSON"),
            (
                r#"{"/app-health/a/livez":{"httpGet":{"path":"/"}}}"#,
                "port",
            ),
            (
                r#"{"/app-health/a/livez":{"httpGet":{"port":"http"}}}"#,
                "named ports",
            ),
            (
                r#"{"/app-health/a/livez":{"tcpSocket":{"port":70000}}}"#,
                "1-65535",
            ),
            (
                r#"{"/healthz/a/livez":{"tcpSocket":{"port":80}}}"#,
                "/app-health/",
            ),
            (
                r#"{"/app-health/a/deadz":{"tcpSocket":{"port":80}}}"#,
                "/app-health/",
            ),
            (
                r#"{"/app-health/a/livez":{"timeoutSeconds":1}}"#,
                "no httpGet",
            ),
            (
                r#"{"/app-health/a/livez":{"tcpSocket":{"port":1},"grpc":{"port":2}}}"#,
                "more than one",
            ),
            (
                r#"{"/app-health/a/livez":{"httpGet":{"port":1,"scheme":"FTP"}}}"#,
                "FTP",
            ),
            (
                r#"{"/app-health/a/livez":{"httpGet":{"port":1,"httpHeaders":[{"name":"bad name","value":""}]}}}"#,
                "bad name",
            ),
        ];
        for (text, want) in cases {
            let err = parse_probers(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn probe_paths() {
        assert!(is_agent_probe_path("/app-health/hello/livez"));
        assert!(is_agent_probe_path("/app-lifecycle/hello/poststartz"));
        assert!(!is_agent_probe_path("/app-health//livez"));
        assert!(!is_agent_probe_path("/app-health/hello/livez/x"));
        assert!(!is_agent_probe_path("/app-lifecycle/hello/livez"));
    }

    #[tokio::test]
    async fn grpc_probe_reads_the_serving_status() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("up", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("down", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let ip = IpAddr::from([127, 0, 0, 1]);
        let probe = |service: &str, port: u16| AppProbe {
            action: Action::Grpc {
                port,
                service: service.into(),
            },
            timeout: Duration::from_secs(2),
        };
        let none = HeaderMap::new();
        assert_eq!(run(&probe("", port), ip, &none).await.0, StatusCode::OK);
        assert_eq!(run(&probe("up", port), ip, &none).await.0, StatusCode::OK);
        let (status, body) = run(&probe("down", port), ip, &none).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            String::from_utf8_lossy(&body).contains("NOT_SERVING"),
            "{body:?}"
        );
        let (status, _) = run(&probe("unknown", port), ip, &none).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(
            run(&probe("", closed), ip, &none).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn http_probe_over_tls_skips_verification_and_times_out() {
        use std::sync::Arc;
        // A self-signed server, as an app with its own certificate would have.
        let cert = rcgen::generate_simple_self_signed(vec!["app.example".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                        let path = req.uri().path().to_string();
                        let header = req
                            .headers()
                            .get("x-probe")
                            .map(|v| v.to_str().unwrap_or("").to_string());
                        async move {
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                            let mut r = http::Response::new(Full::new(Bytes::from(format!(
                                "{path} {header:?}"
                            ))));
                            *r.status_mut() = if path == "/teapot" {
                                StatusCode::IM_A_TEAPOT
                            } else {
                                StatusCode::OK
                            };
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let probe = |path: &str| {
            let text = format!(
                r#"{{"/app-health/a/livez":{{"httpGet":{{"port":{port},"path":"{path}","scheme":"HTTPS","host":"localhost","httpHeaders":[{{"name":"x-probe","value":"yes"}}]}}}}}}"#
            );
            parse_probers(&text)
                .unwrap()
                .remove("/app-health/a/livez")
                .unwrap()
        };
        // The pod IP is not where the app listens here: `host: localhost` wins.
        let ip = IpAddr::from([192, 0, 2, 1]);
        let none = HeaderMap::new();
        let (status, body) = run(&probe("/ok"), ip, &none).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        assert_eq!(&body[..], b"/ok Some(\"yes\")");
        let (status, _) = run(&probe("/teapot"), ip, &none).await;
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        let started = std::time::Instant::now();
        let (status, body) = run(&probe("/slow"), ip, &none).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            String::from_utf8_lossy(&body).contains("timed out"),
            "{body:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
