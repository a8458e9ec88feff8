//! `mastctl proxy-config`, as istioctl's: what a sidecar runs with, read from its Envoy admin
//! `/config_dump` and shown as istioctl's tables (or as the JSON itself).
//!
//! Two sources, both reached through the API server so the client needs no port-forward
//! support (kube-rs port-forwards only with a WebSocket crate this workspace does not carry):
//! - `proxy`: the sidecar's own admin, through the pod proxy subresource
//!   (`/api/v1/namespaces/{ns}/pods/{pod}:15000/proxy/config_dump`). The API server dials the
//!   pod's IP and the admin port listens on 127.0.0.1 only (mast-proxy's as Envoy's in Istio),
//!   so on a real cluster this is expected to be refused (a 503 "error trying to reach
//!   service ... connection refused").
//! - `pilot`: what mastd last sent that proxy, from its debug endpoint
//!   `/debug/config_dump?proxyID=<pod>.<ns>` on 15014 (which listens on the pod IP), through
//!   the service proxy (`services/mastd:15014/proxy/...`). Each mastd replica knows only the
//!   proxies connected to it and the service proxy picks a replica per request, so a "no
//!   connected proxy" answer is asked again a few times before it is believed.
//!
//! `auto` (the default) asks the sidecar first and falls back to mastd when the pod proxy
//! cannot reach it, saying so on stderr: the sidecar's view is the truth when it is available.
//! The tables are built from the dump only, so they work the same for Envoy, mast-proxy and
//! mastd, which serve the same format; a column the dump cannot fill honestly is `-`.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::KubeArgs;

/// The sidecar's admin port (Envoy's and mast-proxy's).
pub const ADMIN_PORT: u16 = 15000;

/// mastd's HTTP port (metrics and `/debug/*`), as istiod's monitoring port.
pub const MASTD_HTTP_PORT: u16 = 15014;

/// How many times `pilot` asks before it believes "no connected proxy": the service proxy
/// picks one of mastd's replicas (two in the install manifest) per request, and only the one
/// the sidecar is connected to knows it. With two replicas, six misses in a row is 1 in 64.
const PILOT_ATTEMPTS: usize = 6;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    kube: KubeArgs,
    /// The pod, as `name` or `name.namespace` (default namespace: the kubeconfig context's).
    pod: String,
    /// Which part of the configuration.
    #[arg(value_enum, default_value_t = Section::All)]
    section: Section,
    /// `short`: istioctl's tables; `json`: the section of the config dump as JSON.
    #[arg(long, short, value_enum, default_value_t = Output::Short)]
    output: Output,
    /// Whose view: `proxy`, the sidecar's admin; `pilot`, what mastd last sent it; `auto`, the
    /// sidecar's, else mastd's when the API server cannot reach the sidecar's admin port.
    #[arg(long, value_enum, default_value_t = Source::Auto)]
    source: Source,
    /// The namespace mastd runs in (its Service `mastd`, port 15014).
    #[arg(long, default_value = "mast-system")]
    mastd_namespace: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    Auto,
    Proxy,
    Pilot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Clusters,
    Listeners,
    Routes,
    Endpoints,
    Secret,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Short,
    Json,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let (dump, notice) = super::runtime()?.block_on(async {
        let mut config = args.kube.config().await?;
        // kube retries a 503 for minutes; from the pod proxy it is the sidecar refusing the
        // API server's dial, which no retry fixes, and `auto` should fall back at once.
        config.default_retry = false;
        let client = mast_kube::client::from_config(config)?;
        let (name, namespace) = match args.pod.split_once('.') {
            Some((name, namespace)) => (name.to_string(), namespace.to_string()),
            None => (args.pod.clone(), client.default_namespace().to_string()),
        };
        check_name("pod", &name)?;
        check_name("namespace", &namespace)?;
        check_name("--mastd-namespace", &args.mastd_namespace)?;
        fetch_from(
            &client,
            args.source,
            &args.mastd_namespace,
            &namespace,
            &name,
        )
        .await
    })?;
    if let Some(notice) = notice {
        eprintln!("{notice}");
    }
    let text = render(&dump, args.section, args.output)?;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}

/// Refuse what cannot be a Kubernetes name before it goes into a URL path.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if !ok {
        bail!(
            "{what} {name:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.'; \
             give the pod as <pod> or <pod>.<namespace>)"
        );
    }
    Ok(())
}

/// The config dump from `source`, and for `auto` the line saying which source answered when
/// it was not the sidecar.
pub async fn fetch_from(
    client: &kube::Client,
    source: Source,
    mastd_namespace: &str,
    namespace: &str,
    pod: &str,
) -> anyhow::Result<(Value, Option<String>)> {
    match source {
        Source::Proxy => Ok((fetch(client, namespace, pod).await?, None)),
        Source::Pilot => Ok((
            fetch_from_pilot(client, mastd_namespace, namespace, pod).await?,
            None,
        )),
        Source::Auto => {
            let err = match fetch(client, namespace, pod).await {
                Ok(dump) => return Ok((dump, None)),
                Err(e) => e,
            };
            let Some(why) = unreachable_backend(&err) else {
                return Err(err);
            };
            let dump = fetch_from_pilot(client, mastd_namespace, namespace, pod)
                .await
                .with_context(|| {
                    format!(
                        "the sidecar's admin port is not reachable through the API server \
                         ({why}), and asking mastd in {mastd_namespace} instead failed"
                    )
                })?;
            let notice = format!(
                "{pod}.{namespace}: the sidecar's admin port is not reachable through the API \
                 server (it listens on 127.0.0.1; {why}); showing what mastd last sent it \
                 (--source pilot)"
            );
            Ok((dump, Some(notice)))
        }
    }
}

/// Why the pod proxy could not reach the backend, if that is the failure: the API server's
/// 502/503 (its Status message, e.g. "error trying to reach service: dial tcp
/// 10.0.0.7:15000: connect: connection refused"), or such a message under another code. A
/// failure to reach the API server itself is not one: mastd is asked through it too.
fn unreachable_backend(err: &anyhow::Error) -> Option<String> {
    let status = err
        .chain()
        .find_map(|e| match e.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => Some(status),
            _ => None,
        })?;
    let refused = status.message.contains("connection refused")
        || status.message.contains("error trying to reach");
    if matches!(status.code, 502 | 503) || refused {
        Some(format!("{} {}", status.code, status.message.trim()))
    } else {
        None
    }
}

/// The pod's config dump, through the API server's pod proxy.
pub async fn fetch(client: &kube::Client, namespace: &str, pod: &str) -> anyhow::Result<Value> {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{ADMIN_PORT}/proxy/config_dump");
    let request = http::Request::get(&path)
        .body(Vec::new())
        .context("building the request")?;
    let text = client.request_text(request).await.with_context(|| {
        format!(
            "reading {pod}.{namespace}'s config dump (GET {path}): is the pod running with a \
             sidecar, and may you get pods/proxy there? (A refused connection: the admin port \
             listens on 127.0.0.1 only; use `--source pilot` for what mastd sent it, or \
             `kubectl port-forward {pod} {ADMIN_PORT}` and `curl \
             localhost:{ADMIN_PORT}/config_dump`.)"
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{pod}.{namespace}: the config dump is not JSON"))
}

/// What mastd last sent the pod's sidecar, from its `/debug/config_dump` through the API
/// server's service proxy to `mastd:15014` in `mastd_namespace`.
pub async fn fetch_from_pilot(
    client: &kube::Client,
    mastd_namespace: &str,
    namespace: &str,
    pod: &str,
) -> anyhow::Result<Value> {
    let path = format!(
        "/api/v1/namespaces/{mastd_namespace}/services/mastd:{MASTD_HTTP_PORT}/proxy\
         /debug/config_dump?proxyID={pod}.{namespace}"
    );
    let mut attempt = 0;
    let text = loop {
        attempt += 1;
        let request = http::Request::get(&path)
            .body(Vec::new())
            .context("building the request")?;
        match client.request_text(request).await {
            Ok(text) => break text,
            Err(kube::Error::Api(status))
                if status.code == 404 && status.message.contains("no connected proxy") =>
            {
                if attempt < PILOT_ATTEMPTS {
                    continue;
                }
                bail!(
                    "mastd has no connected proxy {pod}.{namespace} (asked {PILOT_ATTEMPTS} \
                     times through GET {path}; each mastd replica knows only the sidecars \
                     connected to it): is the pod running with a sidecar, and is the sidecar \
                     connected to mastd in {mastd_namespace}? (mastd's /debug/syncz lists the \
                     connected proxies.)"
                );
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "asking mastd for {pod}.{namespace}'s config (GET {path}): is mast \
                     installed in {mastd_namespace} (--mastd-namespace), is a mastd pod \
                     ready, and may you get services/proxy there?"
                )));
            }
        }
    };
    serde_json::from_str(&text).with_context(|| {
        format!("mastd's config dump for {pod}.{namespace} is not JSON (GET {path})")
    })
}

/// `section` of `dump` as `output`.
pub fn render(dump: &Value, section: Section, output: Output) -> anyhow::Result<String> {
    if !dump["configs"].is_array() {
        bail!("not an Envoy config dump: no `configs` list");
    }
    if output == Output::Json {
        let value = match section {
            Section::All => dump.clone(),
            Section::Clusters => Value::Array(clusters(dump)),
            Section::Listeners => Value::Array(listeners(dump)),
            Section::Routes => Value::Array(route_configs(dump)),
            Section::Endpoints => Value::Array(endpoint_configs(dump)),
            Section::Secret => Value::Array(secrets(dump).into_iter().map(|(s, _)| s).collect()),
        };
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    let tables: Vec<Table> = match section {
        Section::Clusters => vec![clusters_table(dump)],
        Section::Listeners => vec![listeners_table(dump)],
        Section::Routes => vec![routes_table(dump)],
        Section::Endpoints => vec![endpoints_table(dump)],
        Section::Secret => vec![secrets_table(dump)],
        Section::All => vec![
            clusters_table(dump),
            listeners_table(dump),
            routes_table(dump),
            endpoints_table(dump),
            secrets_table(dump),
        ],
    };
    Ok(tables
        .iter()
        .map(Table::render)
        .collect::<Vec<_>>()
        .join("\n"))
}

// === the dump's sections ===

/// The config of `@type` `envoy.admin.v3.<name>`.
fn config<'a>(dump: &'a Value, name: &str) -> Option<&'a Value> {
    dump["configs"].as_array()?.iter().find(|c| {
        c["@type"]
            .as_str()
            .is_some_and(|t| t.ends_with(&format!("envoy.admin.v3.{name}")))
    })
}

/// `field` of every entry of the lists `lists` of a config section.
fn entries(dump: &Value, name: &str, lists: &[&str], field: &[&str]) -> Vec<Value> {
    let Some(c) = config(dump, name) else {
        return Vec::new();
    };
    lists
        .iter()
        .filter_map(|l| c[*l].as_array())
        .flatten()
        .filter_map(|e| field.iter().try_fold(e, |v, f| v.get(*f)).cloned())
        .collect()
}

fn clusters(dump: &Value) -> Vec<Value> {
    entries(
        dump,
        "ClustersConfigDump",
        &[
            "static_clusters",
            "dynamic_active_clusters",
            "dynamic_warming_clusters",
        ],
        &["cluster"],
    )
}

fn listeners(dump: &Value) -> Vec<Value> {
    let mut out = entries(
        dump,
        "ListenersConfigDump",
        &["static_listeners"],
        &["listener"],
    );
    out.extend(entries(
        dump,
        "ListenersConfigDump",
        &["dynamic_listeners"],
        &["active_state", "listener"],
    ));
    out
}

fn route_configs(dump: &Value) -> Vec<Value> {
    entries(
        dump,
        "RoutesConfigDump",
        &["static_route_configs", "dynamic_route_configs"],
        &["route_config"],
    )
}

fn endpoint_configs(dump: &Value) -> Vec<Value> {
    entries(
        dump,
        "EndpointsConfigDump",
        &["static_endpoint_configs", "dynamic_endpoint_configs"],
        &["endpoint_config"],
    )
}

/// Every secret, with its state (`ACTIVE` or `WARMING`).
fn secrets(dump: &Value) -> Vec<(Value, &'static str)> {
    let active = entries(
        dump,
        "SecretsConfigDump",
        &["dynamic_active_secrets", "static_secrets"],
        &["secret"],
    );
    let warming = entries(
        dump,
        "SecretsConfigDump",
        &["dynamic_warming_secrets"],
        &["secret"],
    );
    active
        .into_iter()
        .map(|s| (s, "ACTIVE"))
        .chain(warming.into_iter().map(|s| (s, "WARMING")))
        .collect()
}

// === the tables ===

fn clusters_table(dump: &Value) -> Table {
    let mut t = Table::new(&[
        "SERVICE FQDN",
        "PORT",
        "SUBSET",
        "DIRECTION",
        "TYPE",
        "DESTINATION RULE",
    ]);
    for c in clusters(dump) {
        let name = text(&c["name"]);
        // Istio's cluster names: `direction|port|subset|fqdn`.
        let parts: Vec<&str> = name.split('|').collect();
        let (fqdn, port, subset, direction) = match parts.as_slice() {
            [direction, port, subset, fqdn] => (*fqdn, *port, *subset, *direction),
            _ => (name.as_str(), "-", "-", "-"),
        };
        t.row(vec![
            fqdn.to_string(),
            port.to_string(),
            or_dash(subset),
            direction.to_string(),
            cluster_type(&c),
            istio_config_name(&c["metadata"]),
        ]);
    }
    t
}

/// A cluster's discovery type: `type` (absent is its default, STATIC), or a custom
/// `cluster_type`'s name.
fn cluster_type(c: &Value) -> String {
    if let Some(t) = c["type"].as_str() {
        t.to_string()
    } else if let Some(name) = c["cluster_type"]["name"].as_str() {
        name.to_string()
    } else {
        "STATIC".to_string()
    }
}

/// `name.namespace` of the Istio resource a piece of config came from
/// (`filter_metadata.istio.config` is `/apis/<group>/<version>/namespaces/<ns>/<kind>/<name>`).
fn istio_config_name(metadata: &Value) -> String {
    let Some(path) = metadata["filter_metadata"]["istio"]["config"].as_str() else {
        return "-".into();
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [.., "namespaces", namespace, _kind, name] => format!("{name}.{namespace}"),
        _ => path.to_string(),
    }
}

fn listeners_table(dump: &Value) -> Table {
    let mut t = Table::new(&["ADDRESS", "PORT", "MATCH", "DESTINATION"]);
    for l in listeners(dump) {
        let socket = &l["address"]["socket_address"];
        let (address, port) = if socket.is_object() {
            (text(&socket["address"]), number(&socket["port_value"]))
        } else if l["internal_listener"].is_object() || l["address"].is_null() {
            // An internal listener has no socket: name it instead.
            (format!("internal:{}", text(&l["name"])), "-".to_string())
        } else {
            ("-".to_string(), "-".to_string())
        };
        let chains = l["filter_chains"].as_array().cloned().unwrap_or_default();
        for chain in &chains {
            t.row(vec![
                address.clone(),
                port.clone(),
                chain_match(&chain["filter_chain_match"]),
                chain_destination(chain),
            ]);
        }
        if l["default_filter_chain"].is_object() {
            t.row(vec![
                address.clone(),
                port.clone(),
                "ALL".into(),
                chain_destination(&l["default_filter_chain"]),
            ]);
        }
    }
    t
}

/// A filter chain match as istioctl writes it (`ALL` when it matches everything).
fn chain_match(m: &Value) -> String {
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|x| match x {
                Value::Object(_) => format!(
                    "{}/{}",
                    text(&x["address_prefix"]),
                    number(&x["prefix_len"])
                ),
                _ => text(x),
            })
            .collect()
    };
    let mut parts = Vec::new();
    let ranges = list(&m["prefix_ranges"]);
    if !ranges.is_empty() {
        parts.push(format!("Addr: {}", ranges.join(",")));
    }
    if !m["destination_port"].is_null() {
        parts.push(format!("Port: {}", number(&m["destination_port"])));
    }
    let sni = list(&m["server_names"]);
    if !sni.is_empty() {
        parts.push(format!("SNI: {}", sni.join(",")));
    }
    if let Some(t) = m["transport_protocol"].as_str() {
        parts.push(format!("Trans: {t}"));
    }
    let app = list(&m["application_protocols"]);
    if !app.is_empty() {
        parts.push(format!("App: {}", app.join(",")));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

/// Where a filter chain sends traffic: its HTTP route config or its TCP cluster.
fn chain_destination(chain: &Value) -> String {
    for f in chain["filters"].as_array().into_iter().flatten() {
        let c = &f["typed_config"];
        match f["name"].as_str() {
            Some("envoy.filters.network.http_connection_manager") => {
                if let Some(name) = c["rds"]["route_config_name"].as_str() {
                    return format!("Route: {name}");
                }
                let inline = &c["route_config"];
                return match inline["name"].as_str() {
                    Some(name) => format!("Inline Route: {name}"),
                    None => format!("Inline Route: {}", first_route_target(inline)),
                };
            }
            Some("envoy.filters.network.tcp_proxy") => {
                if let Some(cluster) = c["cluster"].as_str() {
                    return format!("Cluster: {cluster}");
                }
                if let Some(w) = c["weighted_clusters"]["clusters"].as_array() {
                    let names: Vec<String> = w.iter().map(|x| text(&x["name"])).collect();
                    return format!("Clusters: {}", names.join(","));
                }
            }
            _ => {}
        }
    }
    "Non-HTTP/Non-TCP".into()
}

/// The first route's path match of an inline route config (istioctl shows it for nameless
/// ones).
fn first_route_target(route_config: &Value) -> String {
    route_config["virtual_hosts"][0]["routes"][0]["match"]
        .as_object()
        .map(|_| route_match(&route_config["virtual_hosts"][0]["routes"][0]["match"]))
        .unwrap_or_else(|| "-".into())
}

fn routes_table(dump: &Value) -> Table {
    let mut t = Table::new(&["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]);
    for rc in route_configs(dump) {
        let name = or_dash(&text(&rc["name"]));
        for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
            let domains: Vec<String> = vh["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let domains = match domains.as_slice() {
                [] => "-".to_string(),
                [one] => one.clone(),
                [first, rest @ ..] => format!("{first} + {} more...", rest.len()),
            };
            for route in vh["routes"].as_array().into_iter().flatten() {
                t.row(vec![
                    name.clone(),
                    text(&vh["name"]),
                    domains.clone(),
                    route_match(&route["match"]),
                    istio_config_name(&route["metadata"]),
                ]);
            }
        }
    }
    t
}

/// A route's path match as istioctl writes it: `/*` for every path, `/p*` for a prefix.
fn route_match(m: &Value) -> String {
    if let Some(p) = m["prefix"].as_str() {
        format!("{p}*")
    } else if let Some(p) = m["path"].as_str() {
        p.to_string()
    } else if let Some(p) = m["path_separated_prefix"].as_str() {
        format!("{p}/*")
    } else if let Some(r) = m["safe_regex"]["regex"].as_str() {
        r.to_string()
    } else if m["connect_matcher"].is_object() {
        "CONNECT".into()
    } else {
        "/*".into()
    }
}

fn endpoints_table(dump: &Value) -> Table {
    let mut t = Table::new(&["ENDPOINT", "STATUS", "CLUSTER"]);
    for cla in endpoint_configs(dump) {
        let cluster = text(&cla["cluster_name"]);
        for locality in cla["endpoints"].as_array().into_iter().flatten() {
            for lb in locality["lb_endpoints"].as_array().into_iter().flatten() {
                let address = &lb["endpoint"]["address"];
                let endpoint = if address["socket_address"].is_object() {
                    let s = &address["socket_address"];
                    format!("{}:{}", text(&s["address"]), number(&s["port_value"]))
                } else if address["envoy_internal_address"].is_object() {
                    let i = &address["envoy_internal_address"];
                    format!(
                        "envoy://{}/{}",
                        text(&i["server_listener_name"]),
                        text(&i["endpoint_id"])
                    )
                } else if let Some(path) = address["pipe"]["path"].as_str() {
                    format!("unix://{path}")
                } else {
                    "-".into()
                };
                // Absent is the enum's default, UNKNOWN (health not checked).
                let status = lb["health_status"].as_str().unwrap_or("UNKNOWN");
                t.row(vec![endpoint, status.to_string(), cluster.clone()]);
            }
        }
    }
    t
}

fn secrets_table(dump: &Value) -> Table {
    let mut t = Table::new(&["RESOURCE NAME", "TYPE", "STATUS"]);
    for (s, state) in secrets(dump) {
        let kind = if s["tls_certificate"].is_object() {
            "Cert Chain"
        } else if s["validation_context"].is_object() {
            "CA"
        } else {
            "-"
        };
        t.row(vec![text(&s["name"]), kind.into(), state.into()]);
    }
    t
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A number that JSON may carry as a number or (uint64/int64) as a string.
fn number(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => "-".into(),
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

// === impl Table ===

/// Columns padded to their widest cell and three spaces apart, as kubectl and istioctl print.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}   ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests;
