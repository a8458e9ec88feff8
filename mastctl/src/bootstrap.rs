//! `mastctl bootstrap`: the Envoy bootstrap a sidecar needs to join the mesh — its node
//! identity and metadata exactly as Istio's agent writes them (so pilot sees an Envoy and a
//! mast-proxy alike), ADS to mastd (state of the world or delta), and the admin port. With
//! it, a stock Envoy becomes a Mast sidecar: `envoy -c <(mastctl bootstrap ...)`.
//!
//! The bootstrap is built as the real `envoy.config.bootstrap.v3.Bootstrap` protobuf and
//! printed through `mast-proto`'s proto3 JSON rendering, so every field name, enum and `@type`
//! is one Envoy accepts: valid by construction rather than by hand-written JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, bail};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{DynamicResources, StaticResources};
use envoy_types::pb::envoy::config::bootstrap::v3::Admin;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService,
    Http2ProtocolOptions, Node, Pipe, SocketAddress, address,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, Value, value::Kind};
use envoy_types::util::pack_any;
use prost::Name;

/// The bootstrap cluster that carries ADS to mastd (Istio's name for it).
const XDS_CLUSTER: &str = "xds-grpc";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pod name (POD_NAME).
    #[arg(long)]
    pod: String,
    /// `sidecar`, or `router` for a gateway (istio-ingressgateway's `proxy router`): it gets
    /// the listeners of the Gateways whose selector matches --labels.
    #[arg(long, default_value = "sidecar", value_parser = ["sidecar", "router"])]
    proxy_type: String,
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
    /// Unix socket of the SDS server that holds the workload certificate (istio-agent's
    /// role; `mast-proxy --agent --sds-socket PATH` serves it).
    #[arg(long, default_value = SDS_SOCKET)]
    sds_socket: String,
}

/// Istio's path of the agent's SDS socket.
const SDS_SOCKET: &str = "./var/run/secrets/workload-spiffe-uds/socket";
/// The bootstrap cluster to the SDS server (Istio's name; pilot's TLS config refers to it).
const SDS_CLUSTER: &str = "sds-grpc";

pub fn run(args: &Args) -> anyhow::Result<()> {
    let json = mast_proto::message_to_json(&build(args)?)?;
    println!("{}", serde_json::to_string_pretty(&json)?);
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

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn socket_address(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn http2_options() -> Any {
    pack_any(HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    })
}

/// The cluster to the local SDS server, over a Unix socket (gRPC, so HTTP/2).
fn sds_cluster(path: &str) -> Cluster {
    Cluster {
        name: SDS_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: SDS_CLUSTER.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::Pipe(Pipe {
                                path: path.to_string(),
                                mode: 0,
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: [(HttpProtocolOptions::full_name(), http2_options())]
            .into(),
        ..Default::default()
    }
}

/// The cluster to mastd: gRPC needs HTTP/2, which Envoy only speaks upstream when told.
fn xds_cluster(host: &str, port: u16) -> Cluster {
    // A literal IP needs no resolver; a name (`mastd.mast-system.svc`) is re-resolved.
    let discovery = if host.parse::<IpAddr>().is_ok() {
        DiscoveryType::Static
    } else {
        DiscoveryType::StrictDns
    };
    Cluster {
        name: XDS_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: XDS_CLUSTER.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(host, port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: [(HttpProtocolOptions::full_name(), http2_options())]
            .into(),
        ..Default::default()
    }
}

pub fn build(args: &Args) -> anyhow::Result<Bootstrap> {
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
    // `[::1]:15010` names an IPv6 host in brackets; the socket address wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // Istio's agent names the workload after the `app` label when there is one.
    let workload = labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| args.pod.clone());
    let id = format!(
        "{}~{}~{}.{}~{}.svc.cluster.local",
        args.proxy_type, args.ip, args.pod, args.namespace, args.namespace
    );
    let labels = Struct {
        fields: labels.into_iter().map(|(k, v)| (k, string(v))).collect(),
    };
    let metadata = Struct {
        fields: [
            ("NAMESPACE", string(&args.namespace)),
            ("NAME", string(&args.pod)),
            (
                "LABELS",
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            ),
            ("SERVICE_ACCOUNT", string(&args.service_account)),
            ("WORKLOAD_NAME", string(&workload)),
            ("INTERCEPTION_MODE", string(mode)),
            ("CLUSTER_ID", string(&args.cluster_id)),
            ("MESH_ID", string("cluster.local")),
            ("INSTANCE_IPS", string(args.ip.to_string())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    Ok(Bootstrap {
        node: Some(Node {
            id,
            cluster: format!("{workload}.{}", args.namespace),
            metadata: Some(metadata),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(socket_address("127.0.0.1", args.admin_port)),
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: if args.delta {
                    ApiType::DeltaGrpc
                } else {
                    ApiType::Grpc
                } as i32,
                transport_api_version: ApiVersion::V3 as i32,
                set_node_on_first_message_only: true,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: XDS_CLUSTER.to_string(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            cds_config: Some(ads_config_source()),
            lds_config: Some(ads_config_source()),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            clusters: vec![xds_cluster(host, port), sds_cluster(&args.sds_socket)],
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "mastctl",
            "--pod",
            "reviews-v1-abc",
            "--namespace",
            "shop",
            "--ip",
            "10.1.2.3",
            "--labels",
            "app=reviews,version=v1",
            "--service-account",
            "bookinfo-reviews",
        ];
        if !extra.contains(&"--interception-mode") {
            // Lower case on purpose: the flag is case-insensitive, as Istio's env var is.
            argv.extend(["--interception-mode", "none"]);
        }
        if extra.contains(&"--labels") {
            argv.drain(7..9);
        }
        argv.extend(extra);
        Cli::parse_from(argv).args
    }

    fn rendered(extra: &[&str]) -> anyhow::Result<serde_json::Value> {
        Ok(mast_proto::message_to_json(&build(&args(extra))?)?)
    }

    #[test]
    fn node_and_ads_are_shaped_as_istio() -> anyhow::Result<()> {
        let v = rendered(&[])?;
        assert_eq!(
            v["node"]["id"],
            "sidecar~10.1.2.3~reviews-v1-abc.shop~shop.svc.cluster.local"
        );
        let meta = &v["node"]["metadata"];
        assert_eq!(meta["NAMESPACE"], "shop");
        assert_eq!(meta["LABELS"], json!({"app": "reviews", "version": "v1"}));
        assert_eq!(meta["SERVICE_ACCOUNT"], "bookinfo-reviews");
        assert_eq!(meta["WORKLOAD_NAME"], "reviews");
        assert_eq!(meta["INTERCEPTION_MODE"], "NONE");
        assert_eq!(meta["CLUSTER_ID"], "Kubernetes");
        assert_eq!(meta["MESH_ID"], "cluster.local");

        let dynamic = &v["dynamic_resources"];
        assert_eq!(
            dynamic["ads_config"],
            json!({
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
            })
        );
        for key in ["cds_config", "lds_config"] {
            assert_eq!(
                dynamic[key],
                json!({"ads": {}, "resource_api_version": "V3"})
            );
        }
        assert_eq!(
            v["admin"]["address"]["socket_address"],
            json!({"address": "127.0.0.1", "port_value": 15000})
        );
        let xds = &v["static_resources"]["clusters"][0];
        assert_eq!(xds["type"], "STATIC");
        assert_eq!(
            xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
            json!({
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            })
        );
        Ok(())
    }

    #[test]
    fn delta_and_dns_names() -> anyhow::Result<()> {
        let v = rendered(&["--delta", "--xds-address", "mastd.mast-system.svc:15010"])?;
        assert_eq!(
            v["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        let xds = &v["static_resources"]["clusters"][0];
        assert_eq!(xds["type"], "STRICT_DNS");
        assert_eq!(
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            json!({"address": "mastd.mast-system.svc", "port_value": 15010})
        );
        Ok(())
    }

    #[test]
    fn printed_json_parses_back_as_the_same_bootstrap() -> anyhow::Result<()> {
        let bootstrap = build(&args(&[]))?;
        let text = serde_json::to_string_pretty(&mast_proto::message_to_json(&bootstrap)?)?;
        let back: Bootstrap = mast_proto::json_to_message(&serde_json::from_str(&text)?)?;
        assert_eq!(back, bootstrap);
        Ok(())
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (extra, flag) in [
            (&["--xds-address", "no-port"][..], "--xds-address"),
            (&["--xds-address", "host:99999"][..], "--xds-address"),
            (&["--interception-mode", "ebpf"][..], "--interception-mode"),
            (&["--labels", "app"][..], "--labels"),
        ] {
            let err = build(&args(extra)).err().map(|e| format!("{e:#}"));
            assert!(
                err.as_deref().is_some_and(|e| e.contains(flag)),
                "{extra:?}: {err:?}"
            );
        }
    }

    /// An Envoy binary to validate with: `$ENVOY_BIN`, the repo's `.venv` (scripts/test.sh),
    /// or `/tmp/envoy-venv`.
    fn envoy_binary() -> Option<PathBuf> {
        let repo_venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy");
        std::env::var_os("ENVOY_BIN")
            .map(PathBuf::from)
            .into_iter()
            .chain([repo_venv, PathBuf::from("/tmp/envoy-venv/bin/envoy")])
            .find(|p| p.is_file())
    }

    #[test]
    fn real_envoy_validates_it() -> anyhow::Result<()> {
        let Some(envoy) = envoy_binary() else {
            eprintln!(
                "NOTICE: no Envoy binary (ENVOY_BIN, .venv, /tmp/envoy-venv): skipping --mode validate"
            );
            return Ok(());
        };
        let dir = tempfile::tempdir()?;
        for (i, extra) in [
            &[][..],
            &["--delta", "--xds-address", "localhost:15010"][..],
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("bootstrap-{i}.json"));
            let json = mast_proto::message_to_json(&build(&args(extra))?)?;
            std::fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
            let out = Command::new(&envoy)
                .args([
                    "--mode",
                    "validate",
                    "--use-dynamic-base-id",
                    "-l",
                    "error",
                    "-c",
                ])
                .arg(&path)
                .output()?;
            assert!(
                out.status.success(),
                "envoy rejected {extra:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}
