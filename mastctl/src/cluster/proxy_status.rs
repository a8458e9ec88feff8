//! `mastctl proxy-status`, as istioctl's: every proxy connected to the control plane and,
//! per xDS type, whether it runs what mastd last sent it. The first command to reach for when
//! a change "does not take effect": SYNCED means the proxy acknowledged the latest config, so
//! the question is what the config says (`proxy-config`), not whether it arrived.
//!
//! The source is mastd's `/debug/syncz` (what each connection was sent and acknowledged):
//! from a local mastd with `--mastd URL`, or on a cluster from every mastd pod through the API
//! server's pod proxy — each replica knows only the proxies connected to it, as each istiod
//! does, so all of them are asked and their lists joined.
//!
//! The statuses are istioctl's: `SYNCED` (the last version sent was acknowledged), `NOT SENT`
//! (nothing of that type sent yet), `STALE` (a newer version sent is not acknowledged: slow,
//! or rejected — `/debug/syncz` has the NACK's text), `STALE (Never Acknowledged)`, and
//! `IGNORED` for a type the proxy never asked for (ECDS: mastd serves none).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::KubeArgs;
use super::proxy_config::MASTD_HTTP_PORT;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    kube: KubeArgs,
    /// Only this proxy: `<pod>.<namespace>`, or a part of its node id.
    proxy: Option<String>,
    /// A local mastd's HTTP address (its `--http-addr`, e.g. `http://127.0.0.1:15014`);
    /// without it, every mastd pod of the cluster, through the API server.
    #[arg(long, value_name = "URL")]
    mastd: Option<String>,
    /// The namespace mastd runs in on the cluster (its pods labelled `app=mastd`).
    #[arg(long, default_value = super::MAST_NAMESPACE)]
    mastd_namespace: String,
}

/// One proxy as `/debug/syncz` shows it.
#[derive(Debug, Deserialize)]
struct Sync {
    proxy: String,
    #[serde(default)]
    cluster_id: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    types: BTreeMap<String, TypeSync>,
}

#[derive(Debug, Default, Deserialize)]
struct TypeSync {
    sent_version: Option<String>,
    acked_version: Option<String>,
}

/// A row of the table: the proxy, and which control plane instance it is connected to.
#[derive(Debug)]
struct Row {
    sync: Sync,
    control_plane: String,
}

/// The columns after NAME and CLUSTER, with the `/debug/syncz` key of each.
const TYPES: [(&str, &str); 5] = [
    ("CDS", "cds"),
    ("LDS", "lds"),
    ("EDS", "eds"),
    ("RDS", "rds"),
    ("ECDS", "ecds"),
];

pub fn run(args: &Args) -> anyhow::Result<()> {
    let rows = super::runtime()?.block_on(async {
        match &args.mastd {
            Some(url) => local(url).await,
            None => cluster(&args.kube, &args.mastd_namespace).await,
        }
    })?;
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|r| args.proxy.as_deref().is_none_or(|p| matches(&r.sync, p)))
        .collect();
    if let (Some(proxy), true) = (&args.proxy, rows.is_empty()) {
        bail!("no connected proxy matches {proxy:?}");
    }
    print!("{}", table(rows));
    Ok(())
}

/// The proxies connected to the mastd at `url`.
async fn local(url: &str) -> anyhow::Result<Vec<Row>> {
    let base = url.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let syncz = format!("{base}/debug/syncz");
    let (status, body) = crate::http::get(&syncz).await.map_err(|e| {
        anyhow::anyhow!("GET {syncz}: {e} (is mastd running, with --http-addr there?)")
    })?;
    if status != 200 {
        bail!("GET {syncz}: HTTP {status}: {}", body.trim());
    }
    let control_plane = base.split("://").nth(1).unwrap_or(&base).to_string();
    parse(&body, &control_plane).with_context(|| format!("GET {syncz}"))
}

/// The proxies connected to each mastd pod of the cluster, through the pod proxy.
async fn cluster(kube: &KubeArgs, namespace: &str) -> anyhow::Result<Vec<Row>> {
    use k8s_openapi::api::core::v1::Pod;
    let client = kube.client().await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&kube::api::ListParams::default().labels("app=mastd"))
        .await
        .with_context(|| {
            format!(
                "listing mastd's pods in {namespace} (is Mast installed there? --mastd-namespace)"
            )
        })?;
    let running: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    if running.is_empty() {
        bail!("no running mastd pod in {namespace} (label app=mastd)");
    }
    let mut rows = Vec::new();
    for pod in running {
        let path = format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}:{MASTD_HTTP_PORT}/proxy/debug/syncz"
        );
        let request = http::Request::get(&path)
            .body(Vec::new())
            .context("building the request")?;
        let body = client
            .request_text(request)
            .await
            .with_context(|| format!("GET {path}: may you get pods/proxy in {namespace}?"))?;
        rows.extend(parse(&body, &pod).with_context(|| format!("GET {path}"))?);
    }
    Ok(rows)
}

fn parse(body: &str, control_plane: &str) -> anyhow::Result<Vec<Row>> {
    let syncs: Vec<Sync> = serde_json::from_str(body).context("not mastd's syncz JSON")?;
    Ok(syncs
        .into_iter()
        .map(|sync| Row {
            sync,
            control_plane: control_plane.to_string(),
        })
        .collect())
}

/// istioctl's NAME: `<pod>.<namespace>` from `sidecar~<ip>~<pod>.<namespace>~<domain>`.
fn name(node_id: &str) -> &str {
    node_id.split('~').nth(2).unwrap_or(node_id)
}

fn matches(sync: &Sync, wanted: &str) -> bool {
    name(&sync.proxy) == wanted || sync.proxy.contains(wanted)
}

/// istioctl's status of one type.
fn status(t: Option<&TypeSync>) -> &'static str {
    let Some(t) = t else {
        return "IGNORED";
    };
    match (&t.sent_version, &t.acked_version) {
        (None, _) => "NOT SENT",
        (Some(sent), Some(acked)) if sent == acked => "SYNCED",
        (Some(_), None) => "STALE (Never Acknowledged)",
        (Some(_), Some(_)) => "STALE",
    }
}

/// The rows as istioctl prints them: sorted by name, columns aligned with two spaces.
fn table(mut rows: Vec<Row>) -> String {
    rows.sort_by(|a, b| name(&a.sync.proxy).cmp(name(&b.sync.proxy)));
    let mut lines: Vec<Vec<String>> = vec![
        ["NAME", "CLUSTER"]
            .into_iter()
            .chain(TYPES.iter().map(|(column, _)| *column))
            .chain(["ISTIOD", "VERSION"])
            .map(String::from)
            .collect(),
    ];
    for r in &rows {
        let mut line = vec![
            name(&r.sync.proxy).to_string(),
            r.sync.cluster_id.clone().unwrap_or_else(|| "-".into()),
        ];
        line.extend(
            TYPES
                .iter()
                .map(|(_, key)| status(r.sync.types.get(*key)).to_string()),
        );
        line.push(r.control_plane.clone());
        line.push(r.sync.version.clone().unwrap_or_else(|| "-".into()));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let last = line.len() - 1;
        for (i, cell) in line.iter().enumerate() {
            if i == last {
                let _ = writeln!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNCZ: &str = r#"[
      {"proxy": "sidecar~10.0.0.2~user-v1.default~default.svc.cluster.local",
       "cluster_id": "Kubernetes", "version": "mast-proxy 0.1.0*", "conn_id": 2, "delta": false,
       "connected_at": 1,
       "types": {
         "cds": {"sent_version": "a", "acked_version": "a", "resources": 3, "nacks": 0},
         "eds": {"sent_version": "b", "acked_version": "b", "resources": 3, "nacks": 0},
         "lds": {"sent_version": "c", "acked_version": "old", "resources": 3, "nacks": 1},
         "rds": {"sent_version": "d", "acked_version": null, "resources": 1, "nacks": 0}}},
      {"proxy": "sidecar~10.0.0.1~myapp-1.default~default.svc.cluster.local",
       "cluster_id": "Kubernetes", "version": "envoy 1.40.0*", "conn_id": 1, "delta": true,
       "connected_at": 1,
       "types": {"cds": {"sent_version": null, "acked_version": null, "resources": 0, "nacks": 0}}}
    ]"#;

    #[test]
    fn rows_are_istioctls() {
        let rows = parse(SYNCZ, "127.0.0.1:15014").unwrap();
        let t = table(rows);
        let lines: Vec<Vec<&str>> = t
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION"
            ]
        );
        assert_eq!(
            lines[1],
            [
                "myapp-1.default",
                "Kubernetes",
                "NOT SENT",
                "IGNORED",
                "IGNORED",
                "IGNORED",
                "IGNORED",
                "127.0.0.1:15014",
                "envoy 1.40.0*"
            ]
        );
        assert_eq!(
            lines[2],
            [
                "user-v1.default",
                "Kubernetes",
                "SYNCED",
                "STALE",
                "SYNCED",
                "STALE (Never Acknowledged)",
                "IGNORED",
                "127.0.0.1:15014",
                "mast-proxy 0.1.0*"
            ]
        );
    }

    #[test]
    fn a_proxy_is_found_by_name_or_a_part_of_its_id() {
        let rows = parse(SYNCZ, "x").unwrap();
        assert!(matches(&rows[0].sync, "user-v1.default"));
        assert!(matches(&rows[0].sync, "10.0.0.2"));
        assert!(!matches(&rows[0].sync, "myapp-1.default"));
    }
}
