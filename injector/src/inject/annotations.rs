//! The pod annotations that steer injection, and their validation.
//!
//! Istio refuses a pod whose traffic annotations do not parse (`validateAnnotations` in its
//! injector): a typo in `excludeOutboundIPRanges` would otherwise silently capture — or leak —
//! traffic. We do the same, and the error names the annotation and the offending value so the
//! user can fix the manifest from the admission message alone.

use std::net::IpAddr;

use super::InjectError;

pub const INJECT: &str = "sidecar.istio.io/inject";
pub const STATUS: &str = "sidecar.istio.io/status";
pub const REV: &str = "istio.io/rev";
pub const TEMPLATES: &str = "inject.istio.io/templates";
pub const OVERRIDES: &str = "proxy.istio.io/overrides";
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
pub const COMPONENT_LOG_LEVEL: &str = "sidecar.istio.io/componentLogLevel";
pub const AGENT_LOG_LEVEL: &str = "sidecar.istio.io/agentLogLevel";
pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
pub const REWRITE_PROBERS: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
pub const READINESS_FAILURE: &str = "readiness.status.sidecar.istio.io/failureThreshold";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";

/// A check of one annotation's value; the error is the reason.
type Check = fn(&str) -> Result<(), String>;

/// Checks every annotation Istio validates; the first bad one is the error.
pub fn validate(get: impl Fn(&str) -> Option<String>) -> Result<(), InjectError> {
    let checks: &[(&str, Check)] = &[
        (INCLUDE_OUTBOUND_IP_RANGES, cidrs_or_wildcard),
        (EXCLUDE_OUTBOUND_IP_RANGES, cidrs),
        (INCLUDE_INBOUND_PORTS, ports_or_wildcard),
        (EXCLUDE_INBOUND_PORTS, ports),
        (INCLUDE_OUTBOUND_PORTS, ports_or_wildcard),
        (EXCLUDE_OUTBOUND_PORTS, ports),
        (INTERCEPTION_MODE, interception_mode),
        (INJECT, boolean),
        (NATIVE_SIDECAR, boolean),
        (REWRITE_PROBERS, boolean),
        (STATUS_PORT, port_or_zero),
        (READINESS_INITIAL_DELAY, non_negative),
        (READINESS_PERIOD, positive),
        (READINESS_FAILURE, positive),
        (PROXY_CPU, quantity),
        (PROXY_CPU_LIMIT, quantity),
        (PROXY_MEMORY, quantity),
        (PROXY_MEMORY_LIMIT, quantity),
    ];
    for (name, check) in checks {
        if let Some(value) = get(name) {
            check(&value).map_err(|reason| InjectError::Annotation {
                annotation: (*name).to_string(),
                value,
                reason,
            })?;
        }
    }
    Ok(())
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn cidrs_or_wildcard(value: &str) -> Result<(), String> {
    if value.trim() == "*" {
        return Ok(());
    }
    cidrs(value)
}

fn cidrs(value: &str) -> Result<(), String> {
    for item in list(value) {
        let (addr, len) = item
            .split_once('/')
            .ok_or_else(|| format!("{item:?} is not a CIDR like 10.0.0.0/8"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{item:?} is not a CIDR: bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("{item:?} is not a CIDR: bad prefix length")),
        }
    }
    Ok(())
}

fn ports_or_wildcard(value: &str) -> Result<(), String> {
    if value.trim() == "*" {
        return Ok(());
    }
    ports(value)
}

fn ports(value: &str) -> Result<(), String> {
    for item in list(value) {
        match item.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => {}
            _ => return Err(format!("{item:?} is not a port number (1-65535)")),
        }
    }
    Ok(())
}

fn port_or_zero(value: &str) -> Result<(), String> {
    value
        .trim()
        .parse::<u16>()
        .map(|_| ())
        .map_err(|_| format!("{value:?} is not a port number"))
}

fn interception_mode(value: &str) -> Result<(), String> {
    match value {
        "REDIRECT" | "TPROXY" | "NONE" => Ok(()),
        _ => Err(format!("{value:?} is not one of REDIRECT, TPROXY, NONE")),
    }
}

fn boolean(value: &str) -> Result<(), String> {
    parse_bool(value)
        .map(|_| ())
        .ok_or_else(|| format!("{value:?} is not a boolean"))
}

fn non_negative(value: &str) -> Result<(), String> {
    value
        .trim()
        .parse::<u32>()
        .map(|_| ())
        .map_err(|_| format!("{value:?} is not a non-negative integer"))
}

fn positive(value: &str) -> Result<(), String> {
    match value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err(format!("{value:?} is not a positive integer")),
    }
}

fn quantity(value: &str) -> Result<(), String> {
    super::quantity::canonical(value)
        .map(|_| ())
        .ok_or_else(|| format!("{value:?} is not a Kubernetes quantity like 100m or 128Mi"))
}

/// Go's `strconv.ParseBool`, which Istio uses for its boolean annotations.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "y" | "yes" | "on" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}
