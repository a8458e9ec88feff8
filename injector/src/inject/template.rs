//! The injection templates: what Istio's `sidecar` and `gateway` templates render, built as
//! JSON values instead of a Go text template.
//!
//! Values come from [`Settings`] (Istio's Helm values and mesh config) overridden per pod by
//! annotations, exactly where Istio's template reads `annotation .ObjectMeta …`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::annotations as ann;
use super::{InjectError, Settings, Workload, quantity};

/// Everything the templates read, resolved once per pod.
pub struct Params {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub native_sidecar: bool,
    pub hold: bool,
    pub interception_mode: String,
    pub status_port: u16,
    pub rewrite_probes: bool,
    pub include_ip_ranges: String,
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: Option<String>,
    pub exclude_outbound_ports: Option<String>,
    pub kubevirt_interfaces: Option<String>,
    pub exclude_interfaces: Option<String>,
    pub readiness_initial_delay: u32,
    pub readiness_period: u32,
    pub readiness_failure: u32,
    pub resources: Value,
    pub proxy_config: Map<String, Value>,
    pub proxy_metadata: Vec<(String, String)>,
    pub pod_ports: Vec<Value>,
    pub app_containers: Vec<String>,
    pub workload: Workload,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub tls_mode: String,
    pub proxy_log_level: String,
    pub component_log_level: String,
    pub agent_log_level: String,
    pub user_volumes: Vec<(String, Value)>,
    pub user_mounts: Vec<(String, Value)>,
    pub settings: Settings,
    pub concurrency: Option<u64>,
}

impl Params {
    pub fn new(
        pod: &Value,
        _namespace: &str,
        workload: &Workload,
        settings: &Settings,
        annotations: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Self, InjectError> {
        let a = |key: &str| annotations.get(key).cloned();
        let or = |key: &str, default: &str| a(key).unwrap_or_else(|| default.to_string());

        // proxy.istio.io/config over meshConfig.defaultConfig.
        let mut proxy_config = settings.default_proxy_config.clone();
        if let Some(text) = a(ann::PROXY_CONFIG) {
            let over: Value =
                serde_saphyr::from_str(&text).map_err(|e| InjectError::Annotation {
                    annotation: ann::PROXY_CONFIG.into(),
                    value: text.clone(),
                    reason: format!("not a ProxyConfig: {e}"),
                })?;
            let Value::Object(over) = over else {
                return Err(InjectError::Annotation {
                    annotation: ann::PROXY_CONFIG.into(),
                    value: text,
                    reason: "not a ProxyConfig: expected a map".into(),
                });
            };
            for (k, v) in over {
                match (proxy_config.get_mut(&k), v) {
                    (Some(Value::Object(base)), Value::Object(more)) => base.extend(more),
                    (_, v) => {
                        proxy_config.insert(k, v);
                    }
                }
            }
        }
        let proxy_metadata: Vec<(String, String)> = match proxy_config.get("proxyMetadata") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            _ => Vec::new(),
        };

        let mode_default = proxy_config
            .get("interceptionMode")
            .and_then(Value::as_str)
            .unwrap_or(&settings.interception_mode)
            .to_string();
        let interception_mode = or(ann::INTERCEPTION_MODE, &mode_default);
        let status_port = match a(ann::STATUS_PORT) {
            Some(p) => p.trim().parse().unwrap_or(settings.status_port),
            None => settings.status_port,
        };
        let parse_u32 = |key: &str, default: u32| {
            a(key)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        let native_sidecar = match a(ann::NATIVE_SIDECAR) {
            Some(v) => ann::parse_bool(&v).unwrap_or(settings.native_sidecar),
            None => settings.native_sidecar,
        };
        let hold = proxy_config
            .get("holdApplicationUntilProxyStarts")
            .and_then(Value::as_bool)
            .unwrap_or(settings.hold_application_until_proxy_starts);
        let rewrite_probes = a(ann::REWRITE_PROBERS)
            .and_then(|v| ann::parse_bool(&v))
            .unwrap_or(true);

        let canon = |q: &str, what: &str| {
            quantity::canonical(q).ok_or_else(|| InjectError::Annotation {
                annotation: what.into(),
                value: q.into(),
                reason: "not a Kubernetes quantity".into(),
            })
        };
        let cpu_req = canon(&or(ann::PROXY_CPU, &settings.cpu_request), ann::PROXY_CPU)?;
        let mem_req = canon(
            &or(ann::PROXY_MEMORY, &settings.memory_request),
            ann::PROXY_MEMORY,
        )?;
        let cpu_lim = canon(
            &or(ann::PROXY_CPU_LIMIT, &settings.cpu_limit),
            ann::PROXY_CPU_LIMIT,
        )?;
        let mem_lim = canon(
            &or(ann::PROXY_MEMORY_LIMIT, &settings.memory_limit),
            ann::PROXY_MEMORY_LIMIT,
        )?;
        // Any resource annotation replaces the defaults wholesale, as in Istio's template.
        let annotated = [
            ann::PROXY_CPU,
            ann::PROXY_MEMORY,
            ann::PROXY_CPU_LIMIT,
            ann::PROXY_MEMORY_LIMIT,
        ]
        .iter()
        .any(|k| annotations.contains_key(*k));
        let resources = if annotated {
            let mut requests = Map::new();
            let mut limits = Map::new();
            for (key, is_limit, name, value) in [
                (ann::PROXY_CPU, false, "cpu", &cpu_req),
                (ann::PROXY_MEMORY, false, "memory", &mem_req),
                (ann::PROXY_CPU_LIMIT, true, "cpu", &cpu_lim),
                (ann::PROXY_MEMORY_LIMIT, true, "memory", &mem_lim),
            ] {
                if annotations.contains_key(key) {
                    let map = if is_limit { &mut limits } else { &mut requests };
                    map.insert(name.into(), json!(value));
                }
            }
            let mut r = Map::new();
            if !limits.is_empty() {
                r.insert("limits".into(), Value::Object(limits));
            }
            if !requests.is_empty() {
                r.insert("requests".into(), Value::Object(requests));
            }
            Value::Object(r)
        } else {
            json!({
                "limits": {"cpu": cpu_lim, "memory": mem_lim},
                "requests": {"cpu": cpu_req, "memory": mem_req},
            })
        };
        // Envoy's worker count follows the CPU limit when ProxyConfig asks for it (Istio sets
        // --concurrency only when the mesh config does).
        let concurrency = match proxy_config.get("concurrency").and_then(Value::as_u64) {
            Some(n) if n > 0 => Some(n),
            _ => None,
        };

        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let app: Vec<&Value> = containers
            .iter()
            .filter(|c| !c["name"].as_str().unwrap_or("").starts_with("istio-"))
            .collect();
        let app_containers = app
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let pod_ports = app
            .iter()
            .filter_map(|c| c["ports"].as_array())
            .flatten()
            .cloned()
            .collect();

        let canonical_name = labels
            .get("service.istio.io/canonical-name")
            .or_else(|| labels.get("app.kubernetes.io/name"))
            .or_else(|| labels.get("app"))
            .cloned()
            .unwrap_or_else(|| workload.name.clone());
        let canonical_name = truncate_label(&canonical_name);
        let canonical_revision = labels
            .get("service.istio.io/canonical-revision")
            .or_else(|| labels.get("app.kubernetes.io/version"))
            .or_else(|| labels.get("version"))
            .cloned()
            .unwrap_or_else(|| "latest".into());
        let tls_mode = labels
            .get("security.istio.io/tlsMode")
            .cloned()
            .unwrap_or_else(|| "istio".into());

        let user_volumes = json_object_annotation(annotations, ann::USER_VOLUME)?;
        let user_mounts = json_object_annotation(annotations, ann::USER_VOLUME_MOUNT)?;

        let image = a(ann::PROXY_IMAGE).unwrap_or_else(|| settings.image.clone());
        Ok(Self {
            image,
            image_pull_policy: settings.image_pull_policy.clone(),
            native_sidecar,
            hold,
            interception_mode,
            status_port,
            rewrite_probes,
            include_ip_ranges: or(ann::INCLUDE_OUTBOUND_IP_RANGES, &settings.include_ip_ranges),
            exclude_ip_ranges: or(ann::EXCLUDE_OUTBOUND_IP_RANGES, &settings.exclude_ip_ranges),
            include_inbound_ports: or(ann::INCLUDE_INBOUND_PORTS, &settings.include_inbound_ports),
            exclude_inbound_ports: or(ann::EXCLUDE_INBOUND_PORTS, &settings.exclude_inbound_ports),
            include_outbound_ports: a(ann::INCLUDE_OUTBOUND_PORTS)
                .or_else(|| non_empty(&settings.include_outbound_ports)),
            exclude_outbound_ports: a(ann::EXCLUDE_OUTBOUND_PORTS)
                .or_else(|| non_empty(&settings.exclude_outbound_ports)),
            kubevirt_interfaces: a(ann::KUBEVIRT_INTERFACES),
            exclude_interfaces: a(ann::EXCLUDE_INTERFACES),
            readiness_initial_delay: parse_u32(
                ann::READINESS_INITIAL_DELAY,
                settings.readiness_initial_delay_seconds,
            ),
            readiness_period: parse_u32(ann::READINESS_PERIOD, settings.readiness_period_seconds),
            readiness_failure: parse_u32(
                ann::READINESS_FAILURE,
                settings.readiness_failure_threshold,
            ),
            resources,
            proxy_config,
            proxy_metadata,
            pod_ports,
            app_containers,
            workload: workload.clone(),
            canonical_name,
            canonical_revision,
            tls_mode,
            proxy_log_level: or(ann::LOG_LEVEL, &settings.proxy_log_level),
            component_log_level: or(
                ann::COMPONENT_LOG_LEVEL,
                &settings.proxy_component_log_level,
            ),
            agent_log_level: or(ann::AGENT_LOG_LEVEL, &settings.agent_log_level),
            user_volumes,
            user_mounts,
            settings: settings.clone(),
            concurrency,
        })
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Kubernetes label values are at most 63 characters; Istio truncates and drops a trailing `-`.
fn truncate_label(value: &str) -> String {
    let cut: String = value.chars().take(63).collect();
    cut.trim_end_matches('-').to_string()
}

fn json_object_annotation(
    annotations: &BTreeMap<String, String>,
    key: &str,
) -> Result<Vec<(String, Value)>, InjectError> {
    let Some(text) = annotations.get(key) else {
        return Ok(Vec::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map.into_iter().collect()),
        Ok(_) => Err(InjectError::Annotation {
            annotation: key.into(),
            value: text.clone(),
            reason: "expected a JSON object of name → spec".into(),
        }),
        Err(e) => Err(InjectError::Annotation {
            annotation: key.into(),
            value: text.clone(),
            reason: format!("not JSON: {e}"),
        }),
    }
}

/// The fragment the templates add to a pod: labels, annotations, containers and volumes.
#[derive(Default)]
pub struct Rendered {
    pub labels: Map<String, Value>,
    pub annotations: Map<String, Value>,
    pub init_containers: Vec<Value>,
    pub containers: Vec<Value>,
    pub volumes: Vec<Value>,
    pub pod_security_context: Option<Value>,
}

pub fn render(p: &Params, templates: &[String]) -> Result<Rendered, InjectError> {
    let mut out = Rendered::default();
    for t in templates {
        match t.as_str() {
            "sidecar" => sidecar(p, &mut out),
            "gateway" => gateway(p, &mut out),
            other => {
                return Err(InjectError::Annotation {
                    annotation: ann::TEMPLATES.into(),
                    value: other.into(),
                    reason: "proxyless gRPC (grpc-agent, grpc-simple) is not supported by \
                             Mast: use the sidecar template"
                        .into(),
                });
            }
        }
    }
    Ok(out)
}

fn sidecar(p: &Params, out: &mut Rendered) {
    out.labels
        .insert("security.istio.io/tlsMode".into(), json!(p.tls_mode));
    canonical_labels(p, out);
    out.annotations
        .insert(ann::REV.into(), json!(p.settings.revision));
    if p.settings.cni {
        out.annotations
            .insert(ann::INTERCEPTION_MODE.into(), json!(p.interception_mode));
        out.annotations.insert(
            ann::INCLUDE_OUTBOUND_IP_RANGES.into(),
            json!(p.include_ip_ranges),
        );
        out.annotations.insert(
            ann::INCLUDE_INBOUND_PORTS.into(),
            json!(p.include_inbound_ports),
        );
        out.annotations.insert(
            ann::EXCLUDE_INBOUND_PORTS.into(),
            json!(excluded_inbound(p.status_port, &p.exclude_inbound_ports)),
        );
        if let Some(network) = &p.settings.network {
            out.labels
                .insert("topology.istio.io/network".into(), json!(network));
        }
    }
    if p.interception_mode != "NONE" {
        out.init_containers.push(init_container(p));
    }
    let proxy = proxy_container(p, "sidecar");
    if p.native_sidecar {
        out.init_containers.push(proxy);
    } else {
        out.containers.push(proxy);
    }
    out.volumes = volumes(p, true, false);
}

fn gateway(p: &Params, out: &mut Rendered) {
    canonical_labels(p, out);
    out.annotations
        .insert(ann::REV.into(), json!(p.settings.revision));
    let mut proxy = proxy_container(p, "router");
    if let Some(obj) = proxy.as_object_mut() {
        obj.remove("lifecycle");
        obj.remove("startupProbe");
        obj.remove("restartPolicy");
        obj.remove("resources");
        obj.insert(
            "securityContext".into(),
            json!({"runAsUser": 1337, "runAsGroup": 1337}),
        );
        if let Some(mounts) = obj.get_mut("volumeMounts").and_then(Value::as_array_mut) {
            mounts.retain(|m| m["name"] != "istio-ca-crl");
        }
    }
    out.containers.push(proxy);
    out.volumes = volumes(p, false, true);
    out.pod_security_context = Some(json!({
        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    }));
}

fn canonical_labels(p: &Params, out: &mut Rendered) {
    out.labels.insert(
        "service.istio.io/canonical-name".into(),
        json!(p.canonical_name),
    );
    out.labels.insert(
        "service.istio.io/canonical-revision".into(),
        json!(p.canonical_revision),
    );
}

/// Istio's `excludeInboundPort`: the status port joins the excluded list unless it is 0 or
/// already there.
fn excluded_inbound(status_port: u16, excluded: &str) -> String {
    let port = status_port.to_string();
    if status_port == 0 {
        return excluded.to_string();
    }
    if excluded.is_empty() {
        return port;
    }
    if excluded.split(',').any(|p| p.trim() == port) {
        return excluded.to_string();
    }
    format!("{excluded},{port}")
}

fn init_container(p: &Params) -> Value {
    let mut args: Vec<String> = [
        "istio-iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(p.interception_mode.clone());
    args.extend(["-i".into(), p.include_ip_ranges.clone()]);
    args.extend(["-x".into(), p.exclude_ip_ranges.clone()]);
    args.extend(["-b".into(), p.include_inbound_ports.clone()]);
    let excluded = excluded_inbound(p.status_port, &p.exclude_inbound_ports);
    args.push("-d".into());
    args.push(if excluded.is_empty() {
        "15090,15021".into()
    } else {
        format!("15090,15021,{excluded}")
    });
    if let Some(q) = &p.include_outbound_ports {
        args.extend(["-q".into(), q.clone()]);
    }
    if let Some(o) = &p.exclude_outbound_ports {
        args.extend(["-o".into(), o.clone()]);
    }
    if let Some(k) = &p.kubevirt_interfaces {
        args.extend(["-k".into(), k.clone()]);
    }
    if let Some(c) = &p.exclude_interfaces {
        args.extend(["-c".into(), c.clone()]);
    }
    args.push(format!("--log_output_level={}", p.agent_log_level));
    let cni = p.settings.cni;
    if cni {
        args.extend(["--run-validation".into(), "--skip-rule-apply".into()]);
    }
    let security = if cni {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 1337,
            "runAsNonRoot": true,
            "runAsUser": 1337,
        })
    } else {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        })
    };
    let mut c = json!({
        "name": if cni { "istio-validation" } else { "istio-init" },
        "image": p.image,
        "args": args,
        "resources": p.resources,
        "securityContext": security,
    });
    if !p.proxy_metadata.is_empty() {
        c["env"] = Value::Array(
            p.proxy_metadata
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect(),
        );
    }
    if let Some(policy) = &p.image_pull_policy {
        c["imagePullPolicy"] = json!(policy);
    }
    c
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn resource_env(name: &str, resource: &str) -> Value {
    json!({"name": name, "valueFrom": {"resourceFieldRef": {"divisor": "1", "resource": resource}}})
}

fn value_env(name: &str, value: impl Into<Value>) -> Value {
    let value = value.into();
    // Kubernetes drops an empty value; so do we, to stay stable across a round trip.
    if value.as_str() == Some("") {
        return json!({"name": name});
    }
    json!({"name": name, "value": value})
}

/// `ISTIO_META_POD_PORTS` in the template's own layout (one port per line).
fn pod_ports_text(ports: &[Value]) -> String {
    let mut text = String::from("[\n");
    for (i, port) in ports.iter().enumerate() {
        // Go's ContainerPort field order, which a map would lose.
        let fields: Vec<String> = ["name", "hostPort", "containerPort", "protocol", "hostIP"]
            .iter()
            .filter_map(|key| Some(format!("{key:?}:{}", port.get(*key)?)))
            .collect();
        let sep = if i == 0 { "    " } else { "    ," };
        text.push_str(&format!("{sep}{{{}}}\n", fields.join(",")));
    }
    text.push(']');
    text
}

/// `PROXY_CONFIG`: the effective ProxyConfig, as protobuf JSON in field order.
fn proxy_config_text(config: &Map<String, Value>) -> String {
    // ProxyConfig field numbers order the JSON, as protojson does.
    const ORDER: &[&str] = &[
        "configPath",
        "binaryPath",
        "serviceCluster",
        "drainDuration",
        "parentShutdownDuration",
        "discoveryAddress",
        "discoveryRefreshDelay",
        "zipkinAddress",
        "statsdUdpAddress",
        "envoyMetricsServiceAddress",
        "proxyAdminPort",
        "availabilityZone",
        "controlPlaneAuthPolicy",
        "customConfigFile",
        "statNameLength",
        "concurrency",
        "proxyBootstrapTemplatePath",
        "interceptionMode",
        "tracing",
        "sds",
        "envoyAccessLogService",
        "envoyMetricsService",
        "proxyMetadata",
        "statusPort",
        "extraStatTags",
        "gatewayTopology",
        "terminationDrainDuration",
        "meshId",
        "readinessProbe",
        "proxyStatsMatcher",
        "holdApplicationUntilProxyStarts",
        "caCertificatesPem",
        "image",
        "privateKeyProvider",
        "proxyHeaders",
    ];
    let mut keys: Vec<&String> = config.keys().collect();
    keys.sort_by_key(|k| ORDER.iter().position(|o| o == k).unwrap_or(usize::MAX));
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}:{}",
                serde_json::to_string(k).unwrap_or_default(),
                serde_json::to_string(&config[k.as_str()]).unwrap_or_default()
            )
        })
        .collect();
    format!("{{{}}}\n", parts.join(","))
}

fn proxy_container(p: &Params, mode: &str) -> Value {
    let s = &p.settings;
    let mut args: Vec<String> = vec![
        "proxy".into(),
        mode.into(),
        "--domain".into(),
        format!("$(POD_NAMESPACE).svc.{}", s.cluster_domain),
        format!("--proxyLogLevel={}", p.proxy_log_level),
        format!("--proxyComponentLogLevel={}", p.component_log_level),
        format!("--log_output_level={}", p.agent_log_level),
    ];
    if let Some(n) = p.concurrency {
        args.extend(["--concurrency".into(), n.to_string()]);
    }
    let mut env = Vec::new();
    if p.settings.inbound_localhost {
        env.push(value_env(
            "REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION",
            "true",
        ));
    }
    env.extend([
        value_env("PILOT_CERT_PROVIDER", s.pilot_cert_provider.as_str()),
        value_env("CA_ADDR", s.ca_address.as_str()),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("HOST_IP", "status.hostIP"),
        resource_env("ISTIO_CPU_LIMIT", "limits.cpu"),
        value_env("PROXY_CONFIG", proxy_config_text(&p.proxy_config)),
        value_env("ISTIO_META_POD_PORTS", pod_ports_text(&p.pod_ports)),
    ]);
    let app_containers = p.app_containers.join(",");
    let app_env = value_env("ISTIO_META_APP_CONTAINERS", app_containers);
    let memlimit = resource_env("GOMEMLIMIT", "limits.memory");
    if mode == "router" {
        env.extend([memlimit, app_env]);
    } else {
        env.extend([app_env, memlimit]);
    }
    env.extend([
        value_env("ISTIO_META_CLUSTER_ID", s.cluster_id.as_str()),
        field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
        value_env("ISTIO_META_INTERCEPTION_MODE", p.interception_mode.as_str()),
        value_env("ISTIO_META_WORKLOAD_NAME", p.workload.name.as_str()),
        value_env("ISTIO_META_OWNER", p.workload.owner.as_str()),
        value_env("ISTIO_META_MESH_ID", s.mesh_id.as_str()),
        value_env("TRUST_DOMAIN", s.trust_domain.as_str()),
    ]);
    if let Some(network) = &s.network {
        env.push(value_env("ISTIO_META_NETWORK", network.as_str()));
    }
    for (k, v) in &p.proxy_metadata {
        env.push(value_env(k, v.as_str()));
    }

    let tproxy = p.interception_mode == "TPROXY";
    let security = if tproxy {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 1337,
            "runAsNonRoot": false,
            "runAsUser": 0,
        })
    } else {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 1337,
            "runAsNonRoot": true,
            "runAsUser": 1337,
        })
    };
    let mut mounts = vec![
        json!({"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"}),
        json!({"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"}),
        json!({"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"}),
        json!({"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"}),
        json!({"mountPath": "/var/run/secrets/istio/crl", "name": "istio-ca-crl"}),
        json!({"mountPath": "/var/lib/istio/data", "name": "istio-data"}),
        json!({"mountPath": "/etc/istio/proxy", "name": "istio-envoy"}),
        json!({"mountPath": "/var/run/secrets/tokens", "name": "istio-token"}),
        json!({"mountPath": "/etc/istio/pod", "name": "istio-podinfo"}),
    ];
    for (name, mount) in &p.user_mounts {
        let mut m = mount.clone();
        m["name"] = json!(name);
        mounts.push(m);
    }
    let mut c = json!({
        "name": "istio-proxy",
        "image": p.image,
        "args": args,
        "env": env,
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "resources": p.resources,
        "securityContext": security,
        "volumeMounts": mounts,
    });
    if let Some(policy) = &p.image_pull_policy {
        c["imagePullPolicy"] = json!(policy);
    }
    if p.status_port != 0 {
        let mut readiness = json!({
            "failureThreshold": p.readiness_failure,
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "periodSeconds": p.readiness_period,
            "timeoutSeconds": 3,
        });
        if p.readiness_initial_delay > 0 {
            readiness["initialDelaySeconds"] = json!(p.readiness_initial_delay);
        }
        c["readinessProbe"] = readiness;
    }
    if p.status_port != 0 {
        c["startupProbe"] = json!({
            "failureThreshold": 600,
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "periodSeconds": 1,
            "timeoutSeconds": 3,
        });
    }
    if p.native_sidecar {
        c["restartPolicy"] = json!("Always");
        c["lifecycle"] = json!({"preStop": {"exec": {"command": [
            "pilot-agent", "request", format!("--debug-port={}", p.status_port), "POST", "drain"
        ]}}});
    } else if p.hold {
        c["lifecycle"] = json!({"postStart": {"exec": {"command": ["pilot-agent", "wait"]}}});
    }
    c
}

fn volumes(p: &Params, crl: bool, gateway: bool) -> Vec<Value> {
    let empty = if gateway {
        |name: &str| json!({"name": name, "emptyDir": {}})
    } else {
        |name: &str| json!({"name": name})
    };
    let mut v = vec![
        json!({"name": "workload-socket"}),
        empty("credential-socket"),
        empty("workload-certs"),
        json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-data", "emptyDir": {}}),
        json!({"name": "istio-podinfo", "downwardAPI": {"items": [
            {"fieldRef": {"fieldPath": "metadata.labels"}, "path": "labels"},
            {"fieldRef": {"fieldPath": "metadata.annotations"}, "path": "annotations"},
        ]}}),
        json!({"name": "istio-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}
        ]}}),
        json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
    ];
    if crl {
        v.push(json!({"name": "istio-ca-crl", "configMap": {"name": "istio-ca-crl", "optional": true}}));
    }
    for (name, spec) in &p.user_volumes {
        let mut vol = spec.clone();
        vol["name"] = json!(name);
        v.push(vol);
    }
    v
}
