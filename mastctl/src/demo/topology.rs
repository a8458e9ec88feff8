//! The demo's workloads and where each one lives, in either of the two ways the demo runs.
//!
//! The mesh configuration a user edits (Services, the DestinationRule, the 50/50
//! VirtualService, PeerAuthentication) is the sample folder, read by mastd as it is. What
//! depends on how the demo runs — the workloads' addresses, and in NONE mode the Sidecar
//! resources that tell each proxy where its app listens — is generated here into a second
//! config folder, so the sample stays the same YAML a Kubernetes user would apply.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Which sample app a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    Myapp,
    User,
    Todo,
}

/// One workload of the todo-list story: an app with its own sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The WorkloadEntry's name, also the pod's.
    pub name: &'static str,
    pub app: App,
    /// The `app` label.
    pub app_label: &'static str,
    pub version: &'static str,
    pub service_account: &'static str,
    /// The port the app listens on (the WorkloadEntry's `http` port, the Services'
    /// `targetPort: http`). Distinct per workload so that all of them fit on one loopback.
    pub port: u16,
    /// Its other port, if any: user's gRPC server (`grpc`) or todo's TCP echo (`tcp-echo`),
    /// the target ports of the Services' second ports.
    pub extra: Option<ExtraPort>,
}

/// A workload's port besides `http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtraPort {
    /// The port's name, in the WorkloadEntry and in the Service's `targetPort`.
    pub name: &'static str,
    pub port: u16,
    /// The Sidecar ingress protocol (NONE mode).
    pub protocol: &'static str,
    /// The app's flag for the address to serve it on.
    pub flag: &'static str,
}

const fn grpc(port: u16) -> Option<ExtraPort> {
    Some(ExtraPort {
        name: "grpc",
        port,
        protocol: "GRPC",
        flag: "--grpc-listen",
    })
}

/// myapp, user v1 and v2 (HTTP and gRPC), todo (HTTP and a TCP echo).
pub const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "myapp-v1",
        app: App::Myapp,
        app_label: "myapp",
        version: "v1",
        service_account: "myapp",
        port: 9080,
        extra: None,
    },
    Workload {
        name: "user-v1",
        app: App::User,
        app_label: "user",
        version: "v1",
        service_account: "user",
        port: 9181,
        extra: grpc(9191),
    },
    Workload {
        name: "user-v2",
        app: App::User,
        app_label: "user",
        version: "v2",
        service_account: "user",
        port: 9281,
        extra: grpc(9291),
    },
    Workload {
        name: "todo-v1",
        app: App::Todo,
        app_label: "todo",
        version: "v1",
        service_account: "todo",
        port: 9182,
        extra: Some(ExtraPort {
            name: "tcp-echo",
            port: 9192,
            protocol: "TCP",
            flag: "--tcp-listen",
        }),
    },
];

/// The namespace of the sample.
pub const NAMESPACE: &str = "default";

/// The front door: Istio's ingress gateway, as `manifests/install/gateways.yaml` runs it on
/// Kubernetes (namespace, the pod's labels — canonical service included, which names it in
/// telemetry and traces — service account), serving the sample's `myapp-gateway`.
pub struct IngressGateway {
    pub name: &'static str,
    pub namespace: &'static str,
    pub labels: &'static str,
    pub service_account: &'static str,
    /// The Gateway's server port (the container port behind the Service's port 80).
    pub port: u16,
    /// The host the Gateway and myapp's VirtualService name.
    pub host: &'static str,
    /// Its place among the demo's addresses and ports, after the workloads.
    pub index: usize,
}

pub const INGRESS: IngressGateway = IngressGateway {
    name: "istio-ingressgateway",
    namespace: "istio-system",
    labels: "istio=ingressgateway,app=istio-ingressgateway,\
             service.istio.io/canonical-name=istio-ingressgateway,\
             service.istio.io/canonical-revision=latest",
    service_account: "istio-ingressgateway-service-account",
    port: 8080,
    host: "myapp.default.example.com",
    index: WORKLOADS.len(),
};

/// How the workloads are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each workload is a "pod": its own network namespace on a bridge, with iptables capture
    /// programmed by the injector's `istio-init` (root only). `third_octet` picks the /24
    /// (10.202.S.0/24) so that two demos or a demo and the tests never share addresses.
    Pods { third_octet: u8 },
    /// No capture (`INTERCEPTION_MODE=NONE`): every workload on loopback, its sidecar on an
    /// address of its own in 127.0.10.0/24, apps calling their sidecar's local listeners.
    Loopback,
}

impl Mode {
    /// The address of workload `index` (its pod IP, or its sidecar's loopback address).
    pub fn workload_ip(self, index: usize) -> Ipv4Addr {
        let host = u8::try_from(10 + index).unwrap_or(u8::MAX);
        match self {
            Mode::Pods { third_octet } => Ipv4Addr::new(10, 202, third_octet, host),
            Mode::Loopback => Ipv4Addr::new(127, 0, 10, host),
        }
    }

    /// Where mastd serves workloads: the bridge's address for pods, loopback otherwise.
    pub fn control_plane_ip(self) -> Ipv4Addr {
        match self {
            Mode::Pods { third_octet } => Ipv4Addr::new(10, 202, third_octet, 1),
            Mode::Loopback => Ipv4Addr::LOCALHOST,
        }
    }

    /// Where mastd receives spans (OTLP): the control plane's address for pods; on loopback an
    /// address of the demo's own, so that a collector already on 127.0.0.1:4317 (a developer's
    /// machine often runs one) does not keep the demo's traces away.
    pub fn trace_receiver_ip(self) -> Ipv4Addr {
        match self {
            Mode::Pods { .. } => self.control_plane_ip(),
            Mode::Loopback => Ipv4Addr::new(127, 0, 10, 1),
        }
    }

    /// Istio's name for the sidecar's interception mode.
    pub fn interception(self) -> &'static str {
        match self {
            Mode::Pods { .. } => "REDIRECT",
            Mode::Loopback => "NONE",
        }
    }

    /// The sidecar's admin, status and Prometheus ports. Pods have a network namespace each
    /// and use Istio's; on one loopback every sidecar needs its own.
    pub fn sidecar_ports(self, index: usize) -> SidecarPorts {
        match self {
            Mode::Pods { .. } => SidecarPorts {
                admin: 15000,
                status: 15021,
                stats: 15090,
            },
            Mode::Loopback => {
                let base = 15100 + 10 * u16::try_from(index).unwrap_or(0);
                SidecarPorts {
                    admin: base,
                    status: base + 1,
                    stats: base + 2,
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SidecarPorts {
    pub admin: u16,
    pub status: u16,
    pub stats: u16,
}

/// mastd's trace receiver as the mesh names it: a tracing provider's `service`.
pub const TRACE_SERVICE: &str = "mastd.istio-system.svc.cluster.local";
/// OTLP/gRPC's port, where mastd receives spans.
pub const TRACE_PORT: u16 = 4317;
/// The demo's sampling: a share that shows traces within seconds at the demo's load.
pub const TRACE_SAMPLING_PERCENT: f64 = 100.0;

/// The mode-specific half of the mesh configuration: a WorkloadEntry per workload (Istio's way
/// to register a workload that is not a Kubernetes pod), and for NONE mode a Sidecar per
/// workload saying where its app listens and what it calls. With `tracing`, mastd's receiver
/// is the mesh's tracing provider, as a user adds a collector to Istio: a ServiceEntry for it,
/// MeshConfig's `extensionProviders` + `defaultProviders.tracing` (the `istio` ConfigMap), and
/// a mesh-wide Telemetry with the sampling.
pub fn overlay_yaml(mode: Mode, tracing: bool) -> String {
    let mut y = String::from(
        "# Generated by `mastctl demo` for this run: where each workload of the todo-list \
         sample lives.\n",
    );
    if tracing {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: mastd-traces, namespace: istio-system}}\n\
             spec:\n  hosts: [{TRACE_SERVICE}]\n  location: MESH_INTERNAL\n  \
             resolution: STATIC\n  ports:\n  - {{number: {TRACE_PORT}, name: grpc-otlp, \
             protocol: GRPC}}\n  endpoints:\n  - address: {cp}\n\
             ---\napiVersion: v1\nkind: ConfigMap\n\
             metadata: {{name: istio, namespace: istio-system}}\n\
             data:\n  mesh: |\n    defaultProviders:\n      tracing: [mastd]\n    \
             extensionProviders:\n    - name: mastd\n      opentelemetry:\n        \
             service: {TRACE_SERVICE}\n        port: {TRACE_PORT}\n\
             ---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
             metadata: {{name: mesh-default, namespace: istio-system}}\n\
             spec:\n  tracing:\n  - randomSamplingPercentage: {TRACE_SAMPLING_PERCENT:.1}\n",
            cp = mode.trace_receiver_ip(),
        );
    }
    for (i, w) in WORKLOADS.iter().enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec:\n  address: {ip}\n  labels: {{app: {app}, version: {version}, \
             security.istio.io/tlsMode: istio}}\n  ports: {{http: {port}{extra}}}\n  \
             serviceAccount: {sa}\n",
            name = w.name,
            ip = mode.workload_ip(i),
            app = w.app_label,
            version = w.version,
            port = w.port,
            extra = w
                .extra
                .map(|e| format!(", {}: {}", e.name, e.port))
                .unwrap_or_default(),
            sa = w.service_account,
        );
        if mode == Mode::Loopback {
            // myapp calls user and todo; the others call nothing in the mesh, so their
            // sidecars bind no outbound listener that would clash on the shared loopback.
            // The trace receiver's port gets an egress listener of its own, bound to the
            // sidecar's address rather than 127.0.0.1 (where mastd itself listens, and where
            // every sidecar would bind it): the tracing cluster is there, nothing clashes.
            let mut egress = String::new();
            if tracing {
                let _ = write!(
                    egress,
                    "\n  - port: {{number: {TRACE_PORT}, protocol: GRPC, name: grpc-otlp}}\n    \
                     bind: {ip}\n    hosts: [\"istio-system/{TRACE_SERVICE}\"]",
                    ip = mode.workload_ip(i),
                );
            }
            match (w.app, tracing) {
                (App::Myapp, _) => {
                    let _ = write!(
                        egress,
                        "\n  - hosts: [\"./user.{NAMESPACE}.svc.cluster.local\", \
                         \"./todo.{NAMESPACE}.svc.cluster.local\"]"
                    );
                }
                (App::User | App::Todo, false) => {
                    egress.push_str("\n  - hosts: [\"istio-system/*\"]")
                }
                (App::User | App::Todo, true) => {}
            }
            let _ = write!(
                y,
                "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
                 metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
                 spec:\n  workloadSelector: {{labels: {{app: {app}, version: {version}}}}}\n  \
                 ingress:\n  - port: {{number: {port}, protocol: HTTP, name: http}}\n    \
                 defaultEndpoint: 127.0.0.1:{port}{extra}\n  egress:{egress}\n",
                name = w.name,
                app = w.app_label,
                version = w.version,
                port = w.port,
                extra = w
                    .extra
                    .map(|e| format!(
                        "\n  - port: {{number: {p}, protocol: {proto}, name: {name}}}\n    \
                         defaultEndpoint: 127.0.0.1:{p}",
                        p = e.port,
                        proto = e.protocol,
                        name = e.name,
                    ))
                    .unwrap_or_default(),
            );
        }
    }
    y
}

/// `/etc/hosts` for a pod: the Services by name (short, namespaced, FQDN) at virtual IPs that
/// exist on no interface, as a ClusterIP; the pod's sidecar captures connections to them.
pub fn pod_hosts(services: &[(String, Ipv4Addr)]) -> String {
    let mut text = String::from("127.0.0.1 localhost\n");
    for (name, vip) in services {
        let _ = writeln!(
            text,
            "{vip} {name} {name}.{NAMESPACE} {name}.{NAMESPACE}.svc {name}.{NAMESPACE}.svc.cluster.local"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use mast_mesh_config::store::ConfigStore;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn sample() -> BTreeMap<PathBuf, String> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/todolist");
        mast_mesh_config::source::read_config_dirs(&[dir]).expect("sample folder")
    }

    /// The overlay and the sample load together without an error, in both modes, and give
    /// the four workloads at the mode's addresses.
    #[test]
    fn overlay_completes_the_sample() {
        for (mode, tracing) in [
            (Mode::Loopback, true),
            (Mode::Loopback, false),
            (Mode::Pods { third_octet: 7 }, true),
        ] {
            let mut files = sample();
            files.insert(
                PathBuf::from("demo/workloads.yaml"),
                overlay_yaml(mode, tracing),
            );
            let mut store = ConfigStore::default();
            let report = store.apply_files(files);
            assert!(report.errors.is_empty(), "{mode:?}: {:?}", report.errors);
            let model = store.model();
            assert_eq!(model.workloads.len(), 4, "{mode:?}");
            let user_v2 = model
                .workloads
                .iter()
                .find(|w| w.name == "user-v2")
                .expect("user-v2");
            assert_eq!(user_v2.address, mode.workload_ip(2).to_string());
            assert_eq!(user_v2.ports.get("http"), Some(&9281));
            assert_eq!(user_v2.ports.get("grpc"), Some(&9291));
            let todo = model.workloads.iter().find(|w| w.name == "todo-v1");
            assert_eq!(
                todo.and_then(|t| t.ports.get("tcp-echo")),
                Some(&9192),
                "{mode:?}"
            );
            if mode == Mode::Loopback {
                // Each sidecar forwards its app's second port too.
                let todo_sidecar = model
                    .sidecars
                    .iter()
                    .find(|s| {
                        s.workload_selector
                            .as_ref()
                            .is_some_and(|l| l.get("app").map(String::as_str) == Some("todo"))
                    })
                    .expect("todo's Sidecar");
                let ports: Vec<u16> = todo_sidecar.ingress.iter().map(|i| i.port.port).collect();
                assert_eq!(ports, [9182, 9192]);
            }
            let sidecars = if mode == Mode::Loopback { 4 } else { 0 };
            assert_eq!(model.sidecars.len(), sidecars, "{mode:?}");
        }
    }

    #[test]
    fn addresses_and_ports() {
        let pods = Mode::Pods { third_octet: 9 };
        assert_eq!(pods.workload_ip(0), Ipv4Addr::new(10, 202, 9, 10));
        assert_eq!(pods.control_plane_ip(), Ipv4Addr::new(10, 202, 9, 1));
        assert_eq!(pods.sidecar_ports(3).stats, 15090);
        assert_eq!(Mode::Loopback.workload_ip(1), Ipv4Addr::new(127, 0, 10, 11));
        assert_eq!(pods.trace_receiver_ip(), pods.control_plane_ip());
        assert!(
            !(0..5).any(|i| Mode::Loopback.workload_ip(i) == Mode::Loopback.trace_receiver_ip())
        );
        let ports: Vec<u16> = (0..4)
            .map(|i| Mode::Loopback.sidecar_ports(i).admin)
            .collect();
        assert_eq!(ports, [15100, 15110, 15120, 15130]);
    }

    #[test]
    fn hosts_name_every_form() {
        let text = pod_hosts(&[("user".into(), Ipv4Addr::new(10, 96, 0, 11))]);
        assert!(text.contains(
            "10.96.0.11 user user.default user.default.svc user.default.svc.cluster.local"
        ));
    }
}
