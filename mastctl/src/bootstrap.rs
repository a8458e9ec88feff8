//! `mastctl bootstrap`: the Envoy bootstrap a sidecar needs to join the mesh — its node
//! identity and metadata exactly as Istio's agent writes them (so pilot sees an Envoy and a
//! mast-proxy alike), ADS to mastd, and the admin port. With it, a stock Envoy becomes a
//! Mast sidecar: `envoy -c <(mastctl bootstrap ...)`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pod name (POD_NAME).
    #[arg(long)]
    pod: String,
    /// Pod namespace (POD_NAMESPACE).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Pod IP (INSTANCE_IP).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Pod labels, `k=v,k2=v2`.
    #[arg(long, default_value = "")]
    labels: String,
    /// Service account (SERVICE_ACCOUNT).
    #[arg(long, default_value = "default")]
    service_account: String,
    /// mastd's xDS address, `host:port`.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: String,
    /// REDIRECT (iptables), TPROXY, or NONE (listeners on 127.0.0.1:<service port>).
    #[arg(long, default_value = "REDIRECT")]
    interception_mode: String,
    /// Envoy admin port (on 127.0.0.1).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// ISTIO_META_CLUSTER_ID.
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// Use delta xDS instead of state of the world.
    #[arg(long)]
    delta: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let bootstrap = build(args)?;
    println!("{}", serde_json::to_string_pretty(&bootstrap)?);
    Ok(())
}

fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--labels: {pair:?} is not key=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

pub fn build(args: &Args) -> anyhow::Result<Value> {
    let mode = args.interception_mode.to_ascii_uppercase();
    if !matches!(mode.as_str(), "REDIRECT" | "TPROXY" | "NONE") {
        bail!("--interception-mode: {mode:?} is not REDIRECT, TPROXY or NONE");
    }
    let labels = parse_labels(&args.labels)?;
    let (host, port) = args
        .xds_address
        .rsplit_once(':')
        .with_context(|| format!("--xds-address {:?} is not host:port", args.xds_address))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--xds-address: bad port {port:?}"))?;
    let workload = labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| args.pod.clone());
    let id = format!(
        "sidecar~{}~{}.{}~{}.svc.cluster.local",
        args.ip, args.pod, args.namespace, args.namespace
    );
    let discovery = if host.parse::<IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    Ok(json!({
        "node": {
            "id": id,
            "cluster": format!("{workload}.{}", args.namespace),
            "metadata": {
                "NAMESPACE": args.namespace,
                "NAME": args.pod,
                "LABELS": labels,
                "SERVICE_ACCOUNT": args.service_account,
                "WORKLOAD_NAME": workload,
                "INTERCEPTION_MODE": mode,
                "CLUSTER_ID": args.cluster_id,
                "MESH_ID": "cluster.local",
                "INSTANCE_IPS": args.ip.to_string(),
            }
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": args.admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if args.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": discovery,
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": host, "port_value": port}
                    }}}]}]
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                }
            }]
        }
    }))
}
