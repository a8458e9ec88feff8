//! Gateway proxies (node type `router`): the way into (and out of) the mesh.
//!
//! A gateway is an Envoy (or mast-proxy) that listens on the ports of the Istio `Gateway`
//! resources whose `selector` picks its labels, in any namespace (istiod's default,
//! `PILOT_SCOPE_GATEWAY_TO_NAMESPACE=false`). What it does with a connection comes from the
//! VirtualServices bound to those Gateways (`gateways: [<ns>/<name>]`), not from the services'
//! own routes, and it has no inbound side: it is a client of the mesh like any sidecar, so
//! its clusters, endpoints and auto mTLS are the sidecars' ([`super::clusters`],
//! [`super::endpoints`]).
//!
//! Names and shapes follow istiod's gateway translation, since users' EnvoyFilters and
//! dashboards key on them:
//! - one listener per `(bind, port)`, `0.0.0.0_<port>`;
//! - plain HTTP servers of every Gateway on a port share RDS `http.<port>`; an HTTPS server
//!   that terminates TLS has its own filter chain (matched by SNI) and RDS
//!   `https.<port>.<portName>.<gateway>.<namespace>`;
//! - a virtual host per host in both the server's `hosts` (with its `ns/` scoping) and the
//!   VirtualService's, named `<host>:<port>`, with no catch-all after the rules (a request no
//!   rule matches is a 404), and a `blackhole:<port>` 404 host when nothing is bound;
//! - `tls.httpsRedirect` is `require_tls: ALL` (Envoy's 301 to `https://`);
//! - `credentialName` is SDS secret `kubernetes://<name>` over the ADS stream (and
//!   `kubernetes://<name>-cacert` for the client CA), served by pilot from the Secret, so a
//!   new Secret version reaches the gateway without a listener change (no dropped
//!   connections); a server whose Secret is missing is left out (and logged, naming the
//!   Gateway, server and Secret) so it cannot hold the other servers in warming;
//! - TLS `PASSTHROUGH` servers route by SNI (`tls` rules of the VirtualServices) to
//!   `tcp_proxy`, TCP servers by their `tcp` rules.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TrafficDirection, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    TlsCertificate,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use mast_mesh_config::model::{
    Gateway, GatewayServer, MeshModel, Protocol, RouteTable, ServerTlsMode, labels_match,
};

use super::clusters::ads_config_source;
use super::endpoints::socket_address;
use super::listeners::{
    hcm_filter, http_connection_manager, tcp_proxy_filter, tcp_split, tls_inspector,
};
use super::mtls::Security;
use super::node::ProxyNode;
use super::plan::{WILDCARD, exported_to};
use super::routes::{Where, table_routes, weighted_clusters};
use super::{ProxyConfig, any, clusters, endpoints, outbound_cluster_name, plan};

/// The SDS resource-name prefix of a Kubernetes Secret (`credentialName`).
pub const KUBERNETES_SECRET_PREFIX: &str = "kubernetes://";
/// The suffix of the SDS name (and of the optional separate Secret) holding a client CA.
pub const CA_SECRET_SUFFIX: &str = "-cacert";

/// Everything a gateway proxy gets: xDS plus the Secrets its servers name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayConfig {
    pub config: ProxyConfig,
    /// SDS secrets (`kubernetes://<name>`, `kubernetes://<name>-cacert`), sorted by name.
    pub secrets: Vec<Secret>,
}

/// The Gateways whose selector picks this proxy, in model order.
pub fn gateways_for<'a>(model: &'a MeshModel, proxy: &ProxyNode) -> Vec<&'a Gateway> {
    model
        .gateways
        .iter()
        .filter(|g| labels_match(&g.selector, &proxy.labels))
        .filter(|g| !g.namespace_scoped || g.namespace == proxy.namespace)
        .collect()
}

/// A server with the Gateway it belongs to.
#[derive(Clone, Copy)]
struct Bound<'a> {
    gateway: &'a Gateway,
    server: &'a GatewayServer,
}

/// The whole config of a gateway proxy.
pub fn generate(model: &MeshModel, proxy: &ProxyNode, security: &Security) -> GatewayConfig {
    let gateways = gateways_for(model, proxy);
    if gateways.is_empty() {
        tracing::warn!(
            node = %proxy.id,
            labels = ?proxy.labels,
            "gateway proxy matches no Gateway's selector: it gets no listeners"
        );
    }
    // Servers by listener, in model order.
    let mut by_listener: BTreeMap<(String, u16), Vec<Bound<'_>>> = BTreeMap::new();
    for gateway in &gateways {
        for server in &gateway.servers {
            let bind = server.bind.clone().unwrap_or_else(|| WILDCARD.to_string());
            by_listener
                .entry((bind, server.port))
                .or_default()
                .push(Bound { gateway, server });
        }
    }
    let services = plan::visible_services(model, proxy);
    let mut out = GatewayConfig {
        config: ProxyConfig {
            clusters: clusters::outbound_for(model, &services, security, true),
            endpoints: endpoints::outbound(model, &services),
            ..ProxyConfig::default()
        },
        secrets: Vec::new(),
    };
    let mut routes: BTreeMap<String, Vec<Bound<'_>>> = BTreeMap::new();
    for ((bind, port), servers) in &by_listener {
        let name = format!("{bind}_{port}");
        let chains = filter_chains(model, proxy, security, &name, servers, &mut routes);
        if chains.is_empty() {
            tracing::warn!(listener = %name, "gateway listener has no usable server; skipped");
            continue;
        }
        let terminates_or_sni = chains.iter().any(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| !m.server_names.is_empty() || !m.transport_protocol.is_empty())
                || c.transport_socket.is_some()
        });
        out.config.listeners.push(Listener {
            name: name.clone(),
            address: Some(socket_address(bind, *port)),
            traffic_direction: TrafficDirection::Outbound as i32,
            listener_filters: if terminates_or_sni {
                vec![tls_inspector()]
            } else {
                Vec::new()
            },
            filter_chains: chains,
            ..Default::default()
        });
    }
    for (name, servers) in &routes {
        out.config
            .routes
            .push(route_config(model, proxy, name, servers));
    }
    out.secrets = secrets(model, proxy, &by_listener);
    // DestinationRule credentialNames (TLS origination at an egress gateway).
    for s in super::upstream_tls::credential_secrets(model, &proxy.namespace) {
        if !out.secrets.iter().any(|have| have.name == s.name) {
            out.secrets.push(s);
        }
    }
    out.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    out.config.normalize();
    out
}

/// The filter chains of one listener. Plain HTTP servers share one chain (the first
/// protocol on a port wins, as istiod: HTTP and TLS servers cannot share a port).
fn filter_chains<'a>(
    model: &MeshModel,
    proxy: &ProxyNode,
    security: &Security,
    listener: &str,
    servers: &[Bound<'a>],
    routes: &mut BTreeMap<String, Vec<Bound<'a>>>,
) -> Vec<FilterChain> {
    let stat_prefix = format!("outbound_{listener}");
    let Some(first) = servers.first() else {
        return Vec::new();
    };
    if first.server.protocol.is_http() {
        let mut route_name = None;
        for b in servers {
            if !b.server.protocol.is_http() {
                tracing::warn!(
                    gateway = %b.gateway.source, port = b.server.port,
                    "a non-HTTP server on a port with HTTP servers is ignored, as istiod does"
                );
                continue;
            }
            if let Some(name) = b.server.route_name(b.gateway) {
                routes.entry(name.clone()).or_default().push(*b);
                route_name = Some(name);
            }
        }
        let Some(route_name) = route_name else {
            return Vec::new();
        };
        return vec![FilterChain {
            filters: vec![hcm_filter(gateway_hcm(
                &stat_prefix,
                &route_name,
                model,
                proxy,
            ))],
            ..Default::default()
        }];
    }
    let mut chains = Vec::new();
    for b in servers {
        if b.server.protocol.is_http() {
            tracing::warn!(
                gateway = %b.gateway.source, port = b.server.port,
                "an HTTP server on a port with TLS/TCP servers is ignored, as istiod does"
            );
            continue;
        }
        let sni = sni_hosts(b.server);
        let tls = b.server.tls.as_ref();
        match (b.server.protocol, tls) {
            (Protocol::Https, Some(t)) if t.mode.terminates() => {
                if !credential_present(model, proxy, b) {
                    continue;
                }
                let Some(route_name) = b.server.route_name(b.gateway) else {
                    continue;
                };
                routes.entry(route_name.clone()).or_default().push(*b);
                chains.push(FilterChain {
                    name: route_name.clone(),
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: sni,
                        ..Default::default()
                    }),
                    transport_socket: Some(downstream_tls(b.server, security)),
                    filters: vec![hcm_filter(gateway_hcm(
                        &stat_prefix,
                        &route_name,
                        model,
                        proxy,
                    ))],
                    ..Default::default()
                });
            }
            (_, Some(t)) if !t.mode.terminates() => {
                if t.mode == ServerTlsMode::AutoPassthrough {
                    chains.extend(auto_passthrough_chains(model, proxy, b.server));
                    continue;
                }
                for (hosts, cluster) in tls_routes(model, proxy, b) {
                    chains.push(FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            // `*` (a TLSRoute without hostnames): any SNI.
                            server_names: hosts.into_iter().filter(|h| h != "*").collect(),
                            ..Default::default()
                        }),
                        filters: vec![tcp_proxy_filter(&stat_prefix, cluster)],
                        ..Default::default()
                    });
                }
            }
            (_, tls) => {
                // TCP, or TLS terminated here and forwarded as TCP.
                if tls.is_some() && !credential_present(model, proxy, b) {
                    continue;
                }
                let Some(cluster) = tcp_route(model, proxy, b) else {
                    tracing::warn!(
                        gateway = %b.gateway.source, port = b.server.port,
                        "no VirtualService tcp route is bound to this server"
                    );
                    continue;
                };
                chains.push(FilterChain {
                    filter_chain_match: tls.map(|_| FilterChainMatch {
                        server_names: sni,
                        ..Default::default()
                    }),
                    transport_socket: tls.map(|_| downstream_tls(b.server, security)),
                    filters: vec![tcp_proxy_filter(&stat_prefix, cluster)],
                    ..Default::default()
                });
            }
        }
    }
    chains
}

/// The connection manager of a gateway: istiod's gateway settings over the sidecars' —
/// the gateway is the edge, so the client's address is the peer's (`use_remote_address`) and
/// client certificate details are sanitised and set (`SANITIZE_SET`).
fn gateway_hcm(
    stat_prefix: &str,
    route_name: &str,
    model: &MeshModel,
    proxy: &ProxyNode,
) -> envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager{
    let mut hcm = http_connection_manager(
        stat_prefix,
        RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_name.to_string(),
        }),
        &model.mesh,
    );
    hcm.use_remote_address = Some(BoolValue { value: true });
    hcm.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
    hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
        subject: Some(BoolValue { value: true }),
        cert: true,
        dns: true,
        uri: true,
        ..Default::default()
    });
    hcm.server_name = "istio-envoy".into();
    super::tracing::HcmTracing::new(model, proxy, super::tracing::Class::Gateway).apply(&mut hcm);
    // With use_remote_address, which clients are internal (and keep x-envoy-* headers such
    // as x-envoy-force-trace) comes from meshNetworks, as istiod sets it: Envoy 1.33+ takes
    // no address for internal by default.
    hcm.internal_address_config = super::tracing::internal_address_config(&model.mesh);
    // RequestAuthentication's jwt_authn, then AuthorizationPolicy's RBAC, ahead of the rest,
    // as on a sidecar's inbound chains (Istio applies both to gateway pods by their labels).
    let policies = model.authz_policies_for(&proxy.namespace, &proxy.labels);
    let auth = super::jwt::jwt_filters(model, &proxy.namespace, &proxy.labels, true)
        .into_iter()
        .chain(super::authz::http_rbac_filters(&policies));
    hcm.http_filters.splice(0..0, auth);
    hcm
}

/// SNI names of a server: its hosts without namespace, `*` dropped (a chain matching every
/// name matches no SNI at all in Envoy, so it is left out and the chain matches anything).
fn sni_hosts(server: &GatewayServer) -> Vec<String> {
    let mut names: Vec<String> = server
        .hosts
        .iter()
        .map(|h| h.host.clone())
        .filter(|h| h != "*")
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The TLS context of a server that terminates TLS.
fn downstream_tls(server: &GatewayServer, security: &Security) -> TransportSocket {
    let tls = server.tls.clone().unwrap_or_default();
    let mut common = CommonTlsContext {
        alpn_protocols: if server.protocol == Protocol::Https {
            vec!["h2".into(), "http/1.1".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let mutual = matches!(
        tls.mode,
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if let Some(name) = &tls.credential_name {
        common.tls_certificate_sds_secret_configs = vec![SdsSecretConfig {
            name: format!("{KUBERNETES_SECRET_PREFIX}{name}"),
            sds_config: Some(ads_config_source()),
        }];
        if mutual {
            common.validation_context_type = Some(
                ValidationContextType::ValidationContextSdsSecretConfig(SdsSecretConfig {
                    name: format!("{KUBERNETES_SECRET_PREFIX}{name}{CA_SECRET_SUFFIX}"),
                    sds_config: Some(ads_config_source()),
                }),
            );
        }
    } else if tls.mode == ServerTlsMode::IstioMutual {
        // The gateway's own workload certificate, from its agent, as the sidecars' mTLS.
        return super::mtls::downstream_socket(&security.trust_domain);
    } else {
        let file = |p: &Option<String>| {
            p.as_ref().map(|f| DataSource {
                specifier: Some(DataSpecifier::Filename(f.clone())),
                ..Default::default()
            })
        };
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: file(&tls.server_certificate),
            private_key: file(&tls.private_key),
            ..Default::default()
        }];
        if mutual && tls.ca_certificates.is_some() {
            common.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: file(&tls.ca_certificates),
                    ..Default::default()
                },
            ));
        }
    }
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: tls.mode == ServerTlsMode::Mutual,
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfig::TypedConfig(any(&ctx))),
    }
}

/// The route tables bound to `gateway` and visible from the gateway proxy's namespace.
fn bound_tables<'a>(
    model: &'a MeshModel,
    proxy: &'a ProxyNode,
    gateway: &'a Gateway,
) -> impl Iterator<Item = &'a RouteTable> + 'a {
    model.routes.iter().filter(move |t| {
        t.applies_to_gateway(&gateway.namespace, &gateway.name)
            && exported_to(&t.export_to, &t.namespace, &proxy.namespace)
    })
}

/// The hosts a table serves through a server: each pair of a server host (visible to the
/// table's namespace) and a table host that match, as the more specific of the two.
fn server_hosts_for(server: &GatewayServer, gateway: &Gateway, table: &RouteTable) -> Vec<String> {
    let mut out = Vec::new();
    // A Gateway API route attached to one listener, by `sectionName` or `port`.
    if table
        .section
        .as_ref()
        .is_some_and(|s| *s != server.port_name)
        || table.port.is_some_and(|p| p != server.port)
    {
        return out;
    }
    for sh in &server.hosts {
        let ns_ok = match sh.namespace.as_deref() {
            None | Some("*") => true,
            Some(".") => table.namespace == gateway.namespace,
            Some(ns) => table.namespace == ns,
        };
        if !ns_ok {
            continue;
        }
        for th in &table.hosts {
            if let Some(h) = intersect(&sh.host, th)
                && !out.contains(&h)
            {
                out.push(h);
            }
        }
    }
    out
}

/// `true` when wildcard-or-name `pattern` covers `name` (`*` covers everything, `*.a.b`
/// covers `x.a.b` and `*.x.a.b`).
fn covers(pattern: &str, name: &str) -> bool {
    if pattern == "*" || pattern == name {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            name.strip_prefix('*').unwrap_or(name).ends_with(suffix) && name.len() > suffix.len()
        }
        None => false,
    }
}

/// The more specific of two hosts when one covers the other (istiod's host intersection).
fn intersect(a: &str, b: &str) -> Option<String> {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if covers(&a, &b) {
        Some(b)
    } else if covers(&b, &a) {
        Some(a)
    } else {
        None
    }
}

/// One route configuration: a virtual host per served host, the rules of every table bound
/// to the servers' gateways.
fn route_config(
    model: &MeshModel,
    proxy: &ProxyNode,
    name: &str,
    servers: &[Bound<'_>],
) -> RouteConfiguration {
    let port = servers.first().map_or(0, |b| b.server.port);
    let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for b in servers {
        let redirect = b.server.tls.as_ref().is_some_and(|t| t.https_redirect);
        for table in bound_tables(model, proxy, b.gateway) {
            let hosts = server_hosts_for(b.server, b.gateway, table);
            if hosts.is_empty() {
                continue;
            }
            for host in hosts {
                let at = Where::Gateway {
                    namespace: &b.gateway.namespace,
                    name: &b.gateway.name,
                };
                let (routes, _) = table_routes(model, table, &host, port, proxy, at);
                let vh = vhosts.entry(host.clone()).or_insert_with(|| VirtualHost {
                    name: format!("{host}:{port}"),
                    domains: vec![host.clone()],
                    include_request_attempt_count: true,
                    ..Default::default()
                });
                vh.routes.extend(routes);
                if redirect {
                    vh.require_tls = TlsRequirementType::All as i32;
                }
            }
        }
        if redirect {
            for h in &b.server.hosts {
                let host = h.host.to_ascii_lowercase();
                let vh = vhosts.entry(host.clone()).or_insert_with(|| VirtualHost {
                    name: format!("{host}:{port}"),
                    domains: vec![host.clone()],
                    include_request_attempt_count: true,
                    ..Default::default()
                });
                vh.require_tls = TlsRequirementType::All as i32;
            }
        }
    }
    let mut virtual_hosts: Vec<VirtualHost> = vhosts.into_values().collect();
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".into()],
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: Some(UInt32Value { value: 1024 * 1024 }),
        ..Default::default()
    }
}

/// Where a TCP (or terminated TLS) server sends a connection: the first `tcp` rule of a
/// bound table (matching the server's port when the rule names one).
fn tcp_route(model: &MeshModel, proxy: &ProxyNode, b: &Bound<'_>) -> Option<ClusterSpecifier> {
    for table in bound_tables(model, proxy, b.gateway) {
        if server_hosts_for(b.server, b.gateway, table).is_empty() && !table.hosts.is_empty() {
            continue;
        }
        if let Some(rule) = table
            .tcp
            .iter()
            .find(|r| r.port.is_none_or(|p| p == b.server.port))
        {
            return weighted(model, &rule.destinations, b.server.port);
        }
    }
    None
}

/// PASSTHROUGH: per bound table with `tls` rules, the SNI hosts its matches name and the
/// clusters they go to.
fn tls_routes(
    model: &MeshModel,
    proxy: &ProxyNode,
    b: &Bound<'_>,
) -> Vec<(Vec<String>, ClusterSpecifier)> {
    let mut out = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for table in bound_tables(model, proxy, b.gateway) {
        if server_hosts_for(b.server, b.gateway, table).is_empty() {
            continue;
        }
        for rule in &table.tls {
            let hosts: Vec<String> = rule
                .sni_hosts
                .iter()
                .filter(|h| !taken.contains(h))
                .cloned()
                .collect();
            if hosts.is_empty() || rule.port.is_some_and(|p| p != b.server.port) {
                continue;
            }
            if let Some(cluster) = weighted(model, &rule.destinations, b.server.port) {
                taken.extend(hosts.iter().cloned());
                out.push((hosts, cluster));
            }
        }
    }
    out
}

/// AUTO_PASSTHROUGH: a chain per cluster, matched by the SNI that names it
/// (`outbound_.<port>_.<subset>_.<host>`), for the services the server's hosts cover.
fn auto_passthrough_chains(
    model: &MeshModel,
    proxy: &ProxyNode,
    server: &GatewayServer,
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    for svc in plan::visible_services(model, proxy) {
        if svc.mesh_external || !server.hosts.iter().any(|h| covers(&h.host, &svc.hostname)) {
            continue;
        }
        for p in &svc.ports {
            let mut subsets: Vec<Option<&str>> = vec![None];
            if let Some(dr) = model.destination_policies.get(&svc.hostname) {
                subsets.extend(dr.subsets.iter().map(|s| Some(s.name.as_str())));
            }
            for subset in subsets {
                let cluster = outbound_cluster_name(p.port, subset, &svc.hostname);
                chains.push(FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: vec![super::mtls::sni(p.port, subset, &svc.hostname)],
                        application_protocols: super::mtls::INBOUND_MESH_ALPN
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                        ..Default::default()
                    }),
                    filters: vec![tcp_proxy_filter(
                        &cluster,
                        ClusterSpecifier::Cluster(cluster.clone()),
                    )],
                    ..Default::default()
                });
            }
        }
    }
    chains
}

fn weighted(
    model: &MeshModel,
    destinations: &[mast_mesh_config::model::WeightedDestination],
    port: u16,
) -> Option<ClusterSpecifier> {
    tcp_split(&weighted_clusters(model, destinations, port))
}

/// Whether the Secret a server's `credentialName` names exists in the gateway proxy's
/// namespace with what the mode needs (a certificate and key; for MUTUAL also a CA). A server
/// without it is left out, as istiod does, so one missing Secret costs that server only:
/// a chain waiting for a secret would hold the whole listener (and, at start, the whole
/// proxy) in warming.
fn credential_present(model: &MeshModel, proxy: &ProxyNode, b: &Bound<'_>) -> bool {
    let Some(tls) = &b.server.tls else {
        return true;
    };
    let Some(name) = &tls.credential_name else {
        return true;
    };
    let ns = &proxy.namespace;
    let lookup = |n: &str| model.tls_secrets.get(&(ns.clone(), n.to_string()));
    let cert = lookup(name).is_some_and(|s| s.cert.is_some() && s.key.is_some());
    let ca = !matches!(
        tls.mode,
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) || lookup(&format!("{name}{CA_SECRET_SUFFIX}"))
        .is_some_and(|s| s.ca.is_some() || s.cert.is_some())
        || lookup(name).is_some_and(|s| s.ca.is_some());
    if !(cert && ca) {
        tracing::warn!(
            gateway = %b.gateway.source,
            server = %b.server.port_name,
            port = b.server.port,
            secret = %format!("{ns}/{name}"),
            "credentialName names no usable certificate Secret in the gateway's namespace \
             (tls.crt and tls.key{}): this server is left out until it exists; the other \
             servers are unaffected",
            if ca { "" } else { ", and ca.crt or a <name>-cacert Secret for MUTUAL" }
        );
    }
    cert && ca
}

/// The SDS secrets the servers of these listeners name, from the Secrets in the gateway
/// proxy's own namespace (as istiod: a `credentialName` is read where the gateway workload
/// runs, not where the Gateway resource lives, so a Gateway cannot pull certificates out of
/// another namespace). Servers whose Secret is missing have no chain
/// ([`credential_present`]), so nothing waits for a secret that is not sent.
fn secrets(
    model: &MeshModel,
    proxy: &ProxyNode,
    listeners: &BTreeMap<(String, u16), Vec<Bound<'_>>>,
) -> Vec<Secret> {
    let mut out: BTreeMap<String, Secret> = BTreeMap::new();
    for b in listeners.values().flatten() {
        let Some(tls) = &b.server.tls else { continue };
        let Some(name) = &tls.credential_name else {
            continue;
        };
        let ns = &proxy.namespace;
        let lookup = |n: &str| model.tls_secrets.get(&(ns.clone(), n.to_string()));
        let found = lookup(name).and_then(|s| Some((s.cert.as_ref()?, s.key.as_ref()?)));
        if let Some((cert, key)) = found {
            let sds = format!("{KUBERNETES_SECRET_PREFIX}{name}");
            out.entry(sds.clone()).or_insert_with(|| Secret {
                name: sds,
                r#type: Some(SecretType::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(cert)),
                    private_key: Some(inline(key)),
                    ..Default::default()
                })),
            });
        }
        if matches!(
            tls.mode,
            ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
        ) {
            let ca = lookup(&format!("{name}{CA_SECRET_SUFFIX}"))
                .and_then(|s| s.ca.clone().or_else(|| s.cert.clone()))
                .or_else(|| lookup(name).and_then(|s| s.ca.clone()));
            if let Some(ca) = ca {
                let sds = format!("{KUBERNETES_SECRET_PREFIX}{name}{CA_SECRET_SUFFIX}");
                out.entry(sds.clone()).or_insert_with(|| Secret {
                    name: sds,
                    r#type: Some(SecretType::ValidationContext(
                        CertificateValidationContext {
                            trusted_ca: Some(inline(&ca)),
                            ..Default::default()
                        },
                    )),
                });
            }
        }
    }
    out.into_values().collect()
}

fn inline(pem: &str) -> DataSource {
    DataSource {
        specifier: Some(DataSpecifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_intersection_keeps_the_more_specific_name() {
        assert_eq!(
            intersect("*", "bookinfo.com").as_deref(),
            Some("bookinfo.com")
        );
        assert_eq!(
            intersect("*.example.com", "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            intersect("a.example.com", "*.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(intersect("*", "*").as_deref(), Some("*"));
        assert_eq!(
            intersect("*.a.com", "*.x.a.com").as_deref(),
            Some("*.x.a.com")
        );
        assert_eq!(intersect("a.com", "b.com"), None);
        assert_eq!(intersect("*.example.com", "example.com"), None);
    }
}
