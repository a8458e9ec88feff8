//! The shape of one proxy's config before any Envoy proto is built: which services it can see
//! (`exportTo`, Sidecar egress hosts), which outbound listeners exist at which address and which
//! route configuration each needs, and which inbound ports its own workload serves.
//!
//! Listener and route names must agree exactly (a listener asking RDS for `"8080"` must find a
//! route configuration `"8080"`), and clusters must exist for every service a listener or route
//! can reach. Deciding all of that once, here, keeps `listeners.rs`, `routes.rs` and
//! `clusters.rs` from each re-deriving (and disagreeing about) the same facts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mast_mesh_config::model::{
    CaptureMode, MeshModel, Protocol, Service, ServicePort, SidecarScope, TargetPort, Workload,
    labels_match,
};

use super::node::ProxyNode;

/// Ports of the proxy itself: a service on them would loop traffic back into the proxy.
pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;

/// Where the app reaches outbound listeners when nothing captures its traffic.
pub const LOCALHOST: &str = "127.0.0.1";
pub const WILDCARD: &str = "0.0.0.0";

/// Everything the outbound half of a proxy's config is built from.
#[derive(Debug, Default)]
pub struct OutboundPlan<'a> {
    /// Every service the proxy may call, by hostname (one cluster set each).
    pub services: Vec<&'a Service>,
    /// Listeners by (address, port); the name is `<address>_<port>`.
    pub listeners: BTreeMap<(String, u16), ListenerPlan<'a>>,
    /// Route configurations by name.
    pub routes: BTreeMap<String, RoutePlan<'a>>,
    /// iptables capture is on: `virtualOutbound` exists and per-port listeners don't bind.
    pub capture: bool,
    /// Sidecar `outboundTrafficPolicy: REGISTRY_ONLY`: unknown destinations are refused.
    pub registry_only: bool,
}

/// One outbound listener.
#[derive(Debug)]
pub struct ListenerPlan<'a> {
    pub address: String,
    pub port: u16,
    /// Bind the socket (no capture) rather than wait for `virtualOutbound` to hand over.
    pub bind_to_port: bool,
    /// RDS route configuration for HTTP traffic on this listener.
    pub http_route: Option<String>,
    /// Some traffic here may or may not be HTTP: detect it (`http_inspector`).
    pub sniff: bool,
    /// Where non-HTTP traffic goes: the first TCP (or undeclared) service on this address/port.
    pub tcp: Option<(&'a Service, &'a ServicePort)>,
    /// TLS/HTTPS services without a VIP sharing this listener: told apart by SNI.
    pub tls: Vec<(&'a Service, &'a ServicePort)>,
}

impl ListenerPlan<'_> {
    pub fn name(&self) -> String {
        format!("{}_{}", self.address, self.port)
    }
}

/// One RDS route configuration: a virtual host per service.
#[derive(Debug)]
pub struct RoutePlan<'a> {
    pub name: String,
    /// The service port the routed requests arrived for.
    pub port: u16,
    pub services: Vec<&'a Service>,
}

/// One port the proxy's own workload serves (`inbound|<port>||`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundPort {
    /// The port the workload listens on (Istio ≥1.10 names inbound clusters by it).
    pub port: u16,
    pub protocol: Protocol,
    /// Where the proxy forwards to: the app on loopback, or a Sidecar `defaultEndpoint`.
    pub endpoint: (String, u16),
    /// `Some(address)`: a listener of its own bound there (Sidecar ingress without capture),
    /// instead of a filter chain of `virtualInbound`.
    pub bind: Option<String>,
    /// The workload's services reached on this port (the inbound cluster's `istio.services`
    /// metadata, from which the receiving proxy labels `destination_service`).
    pub services: Vec<ServiceRef>,
}

/// A service as Istio's telemetry metadata names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

/// A Sidecar egress listener (or the implicit one), resolved against the model.
struct EgressView<'a> {
    port: Option<&'a ServicePort>,
    bind: Option<&'a str>,
    bind_to_port: bool,
    services: Vec<&'a Service>,
}

// === Sidecar scope ===

/// The Sidecar resource that applies to a proxy, by index in the model: one in its namespace
/// whose selector picks its labels, else its namespace's selector-less one (istiod's
/// precedence, without the mesh-wide root-namespace default).
pub fn sidecar_for<'a>(
    model: &'a MeshModel,
    proxy: &ProxyNode,
) -> Option<(usize, &'a SidecarScope)> {
    let in_ns = || {
        model
            .sidecars
            .iter()
            .enumerate()
            .filter(|(_, s)| s.namespace == proxy.namespace)
    };
    in_ns()
        .find(|(_, s)| {
            s.workload_selector
                .as_ref()
                .is_some_and(|sel| labels_match(sel, &proxy.labels))
        })
        .or_else(|| in_ns().find(|(_, s)| s.workload_selector.is_none()))
}

/// `exportTo`: empty or `*` is everywhere, `.` the owner's namespace, else namespace names.
pub fn exported_to(export_to: &[String], owner_ns: &str, proxy_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == proxy_ns || (e == "." && owner_ns == proxy_ns))
}

/// A Sidecar egress `hosts` entry (`ns/host`, `*` and `.` allowed) against a service.
pub fn egress_host_matches(entry: &str, proxy_ns: &str, svc: &Service) -> bool {
    let (ns, host) = entry.split_once('/').unwrap_or(("*", entry));
    let ns_ok = ns == "*" || ns == svc.namespace || (ns == "." && svc.namespace == proxy_ns);
    let host_ok = host == "*"
        || host == svc.hostname
        || host
            .strip_prefix('*')
            .is_some_and(|suffix| svc.hostname.ends_with(suffix));
    ns_ok && host_ok
}

/// Services the proxy may call: exported to its namespace and, when a Sidecar with egress
/// listeners applies, named by one of them. Sorted by hostname.
pub fn visible_services<'a>(model: &'a MeshModel, proxy: &ProxyNode) -> Vec<&'a Service> {
    let sidecar = sidecar_for(model, proxy).map(|(_, s)| s);
    egress_views(model, proxy, sidecar)
        .into_iter()
        .flat_map(|v| v.services)
        .map(|s| (s.hostname.as_str(), s))
        .collect::<BTreeMap<&str, &Service>>()
        .into_values()
        .collect()
}

fn egress_views<'a>(
    model: &'a MeshModel,
    proxy: &ProxyNode,
    sidecar: Option<&'a SidecarScope>,
) -> Vec<EgressView<'a>> {
    let exported = || {
        model
            .services
            .values()
            .filter(|s| exported_to(&s.export_to, &s.namespace, &proxy.namespace))
    };
    let capture = proxy.interception_mode.captures();
    let egress = sidecar.map(|s| s.egress.as_slice()).unwrap_or_default();
    if egress.is_empty() {
        return vec![EgressView {
            port: None,
            bind: None,
            bind_to_port: !capture,
            services: exported().collect(),
        }];
    }
    // Port-specific egress listeners first: they claim their port before the catch-all
    // listener does, as in istiod.
    let mut ordered: Vec<_> = egress.iter().collect();
    ordered.sort_by_key(|e| e.port.is_none());
    ordered
        .into_iter()
        .map(|e| EgressView {
            port: e.port.as_ref(),
            bind: e.bind.as_deref().filter(|b| !b.is_empty()),
            bind_to_port: !capture || e.capture_mode == Some(CaptureMode::None),
            services: exported()
                .filter(|s| {
                    e.hosts
                        .iter()
                        .any(|h| egress_host_matches(h, &proxy.namespace, s))
                })
                .collect(),
        })
        .collect()
}

// === Outbound ===

/// Plan the outbound listeners and routes of `proxy`.
///
/// Names follow istiod: HTTP ports share one listener `0.0.0.0_<port>` (routed by Host through
/// RDS `"<port>"`); TCP and undeclared ports get a listener per service VIP
/// (`<vip>_<port>`, falling back to `0.0.0.0_<port>` for services without one), and an
/// undeclared port sniffs HTTP and routes it through RDS `"<fqdn>:<port>"`. Without capture
/// every listener binds `127.0.0.1` (or the Sidecar egress `bind`), so the app calls
/// `127.0.0.1:<port>` with a Host header. An explicit `bind` makes the RDS name
/// `"<bind>:<port>"` so two egress listeners on one port don't share routes.
pub fn outbound<'a>(model: &'a MeshModel, proxy: &ProxyNode) -> OutboundPlan<'a> {
    let sidecar = sidecar_for(model, proxy).map(|(_, s)| s);
    let views = egress_views(model, proxy, sidecar);
    let mut plan = OutboundPlan {
        capture: proxy.interception_mode.captures(),
        registry_only: sidecar.is_some_and(|s| s.registry_only),
        ..OutboundPlan::default()
    };
    let mut seen = BTreeMap::new();
    for view in &views {
        for svc in &view.services {
            seen.insert(svc.hostname.as_str(), *svc);
            for sp in &svc.ports {
                if view.port.is_some_and(|p| p.port != sp.port) {
                    continue;
                }
                if !view.bind_to_port
                    && matches!(sp.port, VIRTUAL_OUTBOUND_PORT | VIRTUAL_INBOUND_PORT)
                {
                    continue;
                }
                let protocol = view.port.map_or(sp.protocol, |p| p.protocol);
                plan.add_port(view, svc, sp, protocol);
            }
        }
    }
    plan.services = seen.into_values().collect();
    plan
}

impl<'a> OutboundPlan<'a> {
    fn add_port(
        &mut self,
        view: &EgressView<'a>,
        svc: &'a Service,
        sp: &'a ServicePort,
        protocol: Protocol,
    ) {
        let port = sp.port;
        let shared_addr = match (view.bind, view.bind_to_port) {
            (Some(b), _) => b.to_string(),
            (None, true) => LOCALHOST.to_string(),
            (None, false) => WILDCARD.to_string(),
        };
        let shared_route = match view.bind {
            Some(b) => format!("{b}:{port}"),
            None => port.to_string(),
        };
        if protocol.is_http() {
            let l = self.listener(&shared_addr, port, view.bind_to_port);
            l.http_route.get_or_insert_with(|| shared_route.clone());
            let route = l.http_route.clone().unwrap_or(shared_route);
            self.route(route, port, svc);
            return;
        }
        let is_tls = matches!(protocol, Protocol::Https | Protocol::Tls);
        // TCP-like: own listener per VIP when captured and no bind is forced.
        let vips: Vec<&str> = if view.bind.is_none() && !view.bind_to_port {
            svc.addresses
                .iter()
                .map(String::as_str)
                .filter(|a| a.parse::<IpAddr>().is_ok())
                .collect()
        } else {
            Vec::new()
        };
        let addrs: Vec<String> = if vips.is_empty() {
            vec![shared_addr]
        } else {
            vips.iter().map(|v| v.to_string()).collect()
        };
        for addr in addrs {
            let on_vip = !vips.is_empty();
            let l = self.listener(&addr, port, view.bind_to_port);
            if is_tls && !on_vip {
                // Many external HTTPS hosts share `0.0.0.0_443`; the client's SNI says which.
                if !l.tls.iter().any(|(s, _)| s.hostname == svc.hostname) {
                    l.tls.push((svc, sp));
                }
                continue;
            }
            if l.tcp.is_none() {
                l.tcp = Some((svc, sp));
            }
            if protocol == Protocol::Unknown {
                l.sniff = true;
                let name = if on_vip {
                    format!("{}:{port}", svc.hostname)
                } else {
                    shared_route.clone()
                };
                let route = l.http_route.get_or_insert(name).clone();
                self.route(route, port, svc);
            }
        }
    }

    fn listener(&mut self, addr: &str, port: u16, bind_to_port: bool) -> &mut ListenerPlan<'a> {
        self.listeners
            .entry((addr.to_string(), port))
            .or_insert_with(|| ListenerPlan {
                address: addr.to_string(),
                port,
                bind_to_port,
                http_route: None,
                sniff: false,
                tcp: None,
                tls: Vec::new(),
            })
    }

    fn route(&mut self, name: String, port: u16, svc: &'a Service) {
        let r = self
            .routes
            .entry(name.clone())
            .or_insert_with(|| RoutePlan {
                name,
                port,
                services: Vec::new(),
            });
        if !r.services.iter().any(|s| s.hostname == svc.hostname) {
            r.services.push(svc);
        }
    }
}

// === Inbound ===

/// Services whose selector picks this proxy's labels (same namespace): it serves them.
pub fn own_services<'a>(model: &'a MeshModel, proxy: &ProxyNode) -> Vec<&'a Service> {
    model
        .services
        .values()
        .filter(|s| {
            s.namespace == proxy.namespace
                && s.selector
                    .as_ref()
                    .is_some_and(|sel| !sel.is_empty() && labels_match(sel, &proxy.labels))
        })
        .collect()
}

/// The ports the proxy's workload serves, sorted and unique by port.
///
/// A Sidecar with `ingress` listeners replaces the service-derived set (as in istiod), and
/// only such listeners may bind their own socket: without capture a service port is the
/// app's own socket, so a proxy listener there would collide with it.
pub fn inbound_ports(model: &MeshModel, proxy: &ProxyNode) -> Vec<InboundPort> {
    let capture = proxy.interception_mode.captures();
    let ingress = sidecar_for(model, proxy)
        .map(|(_, s)| s.ingress.as_slice())
        .unwrap_or_default();
    let mut out: BTreeMap<u16, InboundPort> = BTreeMap::new();
    let workload = model.workloads.iter().find(|w| {
        w.namespace == proxy.namespace && (w.name == proxy.pod_name || w.address == proxy.ip)
    });
    if !ingress.is_empty() {
        for i in ingress {
            let port = i.port.port;
            let endpoint = i
                .default_endpoint
                .as_deref()
                .and_then(|e| parse_endpoint(e, &proxy.ip))
                .unwrap_or_else(|| (LOCALHOST.to_string(), port));
            let binds = !capture || i.capture_mode == Some(CaptureMode::None);
            out.entry(port).or_insert(InboundPort {
                port,
                protocol: i.port.protocol,
                services: services_on(model, proxy, workload, port),
                endpoint,
                bind: binds.then(|| {
                    i.bind
                        .clone()
                        .filter(|b| !b.is_empty())
                        .unwrap_or_else(|| proxy.ip.clone())
                }),
            });
        }
        return out.into_values().collect();
    }
    let mut protocols: BTreeMap<u16, BTreeSet<Protocol>> = BTreeMap::new();
    for svc in own_services(model, proxy) {
        for sp in &svc.ports {
            if let Some(port) = target_port(sp, workload) {
                protocols.entry(port).or_default().insert(sp.protocol);
            }
        }
    }
    protocols
        .into_iter()
        .map(|(port, ps)| InboundPort {
            port,
            // Services disagreeing on a port's protocol: let the proxy sniff.
            protocol: match ps.len() {
                1 => ps.into_iter().next().unwrap_or_default(),
                _ => Protocol::Unknown,
            },
            services: services_on(model, proxy, workload, port),
            endpoint: (LOCALHOST.to_string(), port),
            bind: None,
        })
        .collect()
}

/// The workload port a service port sends to.
fn target_port(sp: &ServicePort, workload: Option<&Workload>) -> Option<u16> {
    match &sp.target_port {
        Some(TargetPort::Number(n)) => Some(*n),
        Some(TargetPort::Name(name)) => match workload {
            Some(w) => w.ports.get(name).copied(),
            // Without the workload's named ports, Istio's pre-1.10 behaviour: the service port.
            None => Some(sp.port),
        },
        None => Some(sp.port),
    }
}

/// The proxy's own services that reach it on workload port `port`.
fn services_on(
    model: &MeshModel,
    proxy: &ProxyNode,
    workload: Option<&Workload>,
    port: u16,
) -> Vec<ServiceRef> {
    own_services(model, proxy)
        .into_iter()
        .filter(|svc| {
            svc.ports
                .iter()
                .any(|sp| target_port(sp, workload) == Some(port))
        })
        .map(|svc| ServiceRef {
            host: svc.hostname.clone(),
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
        })
        .collect()
}

/// `127.0.0.1:8080`; `0.0.0.0:<port>` means the instance IP (Istio's reading).
fn parse_endpoint(e: &str, instance_ip: &str) -> Option<(String, u16)> {
    let (host, port) = e.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = if host == WILDCARD { instance_ip } else { host };
    Some((host.to_string(), port))
}
