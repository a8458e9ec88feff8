//! Sidecar: narrows what a group of sidecars listens for (ingress ports) and can reach
//! (egress hosts, outbound traffic policy), into a [`SidecarScope`].
//!
//! Enforces istiod's Sidecar rules (pkg/config/validation/validation.go, ValidateSidecar): not
//! empty, egress hosts as `namespace/fqdn`, unique valid ports without targetPort, IP binds
//! (Unix sockets on port 0), one trailing port-less egress listener, defaultEndpoint shape,
//! known capture and outbound traffic policy modes.
//!
//! The spec is read straight into `mast_crds::networking::SidecarSpec`, the type the Sidecar
//! CRD is generated from, so a field has one Rust type in the CRD and here; unknown capture
//! and outbound traffic policy modes are refused by that type.

use std::collections::BTreeSet;

use mast_crds::networking as api;
use serde::Deserialize;

use super::{
    check_port_name, check_protocol, check_unix_address, check_wildcard_domain, deserialize,
    dns1123_label, is_ip,
};
use crate::dialect::kube::{infer_protocol, port_number};
use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::*;

/// The document around the spec, which may be absent (and is then refused as empty).
#[derive(Debug, Deserialize)]
struct ScDoc {
    #[serde(default)]
    spec: api::SidecarSpec,
}

#[derive(Debug)]
pub(super) struct SidecarResource(SidecarScope);

fn capture_mode(v: Option<api::CaptureMode>) -> Option<CaptureMode> {
    Some(match v? {
        api::CaptureMode::Default => CaptureMode::Default,
        api::CaptureMode::Iptables => CaptureMode::Iptables,
        api::CaptureMode::None => CaptureMode::None,
    })
}

/// A port's name, empty when absent (proto3 strings).
fn port_name(p: &api::ServicePort) -> &str {
    p.name.as_deref().unwrap_or_default()
}

fn sidecar_port(
    p: &api::ServicePort,
    f: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ServicePort> {
    let port = port_number(i64::from(p.number), &format!("{f}.number"), errors)?;
    Some(ServicePort {
        name: port_name(p).to_string(),
        port,
        // A Sidecar port has no target port (istiod refuses one, see `listener_rules`).
        target_port: None,
        protocol: infer_protocol(p.protocol.as_deref(), port_name(p), "TCP"),
    })
}

/// istiod's ValidateSidecar listener rules: ports valid, unique and without targetPort; named
/// ports named as DNS labels with a known protocol; binds are IPs, or `unix://` sockets for
/// port-0 egress listeners (capture DEFAULT or NONE); one port-less egress listener, last;
/// defaultEndpoint a loopback/any address with a port, or a unix socket.
fn listener_rules(spec: &api::SidecarSpec, errors: &mut Vec<FieldError>) {
    let mut ingress_ports = BTreeSet::new();
    for (i, l) in spec.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        port_shape(&l.port, &format!("{f}.port"), errors);
        if !ingress_ports.insert(l.port.number) {
            errors.push(FieldError::new(
                format!("{f}.port.number"),
                "ports on IP bound listeners must be unique",
            ));
        }
        bind_is_ip(l.bind.as_deref(), &f, errors);
        if let Some(d) = l.default_endpoint.as_deref().filter(|d| !d.is_empty())
            && let Err(msg) = check_default_endpoint(d)
        {
            errors.push(FieldError::new(format!("{f}.defaultEndpoint"), msg));
        }
    }
    let mut egress_ports = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    let mut catch_all = false;
    let last = spec.egress.len().saturating_sub(1);
    for (i, l) in spec.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        let Some(port) = &l.port else {
            if catch_all {
                errors.push(FieldError::new(
                    format!("{f}.port"),
                    "egress can have only one listener with empty port",
                ));
            } else if i != last {
                errors.push(FieldError::new(
                    format!("{f}.port"),
                    "the egress listener with empty port should be the last listener in the list",
                ));
            } else {
                catch_all = true;
            }
            continue;
        };
        if port.number == 0 {
            if !port_name(port).is_empty() {
                check_port_name(port_name(port), &format!("{f}.port.name"), errors);
            }
            check_protocol(
                port.protocol.as_deref(),
                &format!("{f}.port.protocol"),
                errors,
            );
            let bind = l.bind.as_deref().unwrap_or("");
            match bind.strip_prefix("unix://") {
                None => errors.push(FieldError::new(
                    format!("{f}.bind"),
                    "ports with 0 value must have a unix domain socket bind address",
                )),
                Some(path) => {
                    if let Err(msg) = check_unix_address(path) {
                        errors.push(FieldError::new(format!("{f}.bind"), msg));
                    }
                }
            }
            if l.capture_mode == Some(api::CaptureMode::Iptables) {
                errors.push(FieldError::new(
                    format!("{f}.captureMode"),
                    "captureMode must be DEFAULT/NONE for unix domain socket listeners",
                ));
            }
            if !sockets.insert(bind.to_string()) {
                errors.push(FieldError::new(
                    format!("{f}.bind"),
                    "unix domain socket values for listeners must be unique",
                ));
            }
        } else {
            port_shape(port, &format!("{f}.port"), errors);
            bind_is_ip(l.bind.as_deref(), &f, errors);
            if !egress_ports.insert(port.number) {
                errors.push(FieldError::new(
                    format!("{f}.port.number"),
                    "ports on IP bound listeners must be unique",
                ));
            }
        }
    }
}

fn port_shape(p: &api::ServicePort, f: &str, errors: &mut Vec<FieldError>) {
    if !port_name(p).is_empty() {
        check_port_name(port_name(p), &format!("{f}.name"), errors);
    }
    check_protocol(p.protocol.as_deref(), &format!("{f}.protocol"), errors);
    if p.target_port.is_some_and(|t| t != 0) {
        errors.push(FieldError::new(
            format!("{f}.targetPort"),
            "targetPort has no impact on Sidecars",
        ));
    }
}

fn bind_is_ip(bind: Option<&str>, f: &str, errors: &mut Vec<FieldError>) {
    if let Some(b) = bind
        && !b.is_empty()
        && !is_ip(b)
    {
        errors.push(FieldError::new(
            format!("{f}.bind"),
            format!("{b:?} is not a valid IP address"),
        ));
    }
}

/// `127.0.0.1:<port>`, `0.0.0.0:<port>`, `[::1]:<port>`, `[::]:<port>`, `:<port>` or
/// `unix://<path>`.
fn check_default_endpoint(d: &str) -> Result<(), String> {
    if let Some(path) = d.strip_prefix("unix://") {
        return check_unix_address(path);
    }
    let (host, port) = d
        .rsplit_once(':')
        .ok_or_else(|| format!("{d:?}: missing port in address"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        return Err(
            "defaultEndpoint must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:port, [::]:port, unix://filepath or unset"
                .into(),
        );
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => Err(format!(
            "defaultEndpoint port {port:?} is not a port number"
        )),
    }
}

/// istiod's ValidateNamespaceSlashWildcardHostname for sidecars: `namespace/host`, the
/// namespace `*`, `.`, a DNS label or `~`-prefixed one; the host `*` or a dotted domain with at
/// most a leading `*.` wildcard.
fn check_egress_host(h: &str) -> Result<(), String> {
    let (ns, host) = h
        .split_once('/')
        .ok_or_else(|| format!("{h:?}: host must be of form namespace/dnsName"))?;
    if ns.is_empty() || host.is_empty() {
        return Err(format!(
            "{h:?}: config namespace and dnsName in host entry cannot be empty"
        ));
    }
    let ns = ns.strip_prefix('~').unwrap_or(ns);
    if !(ns.is_empty() || ns == "*" || ns == "." || dns1123_label(ns)) {
        return Err(format!("invalid namespace value {ns:?} in sidecar"));
    }
    if host != "*" && !host.contains('.') {
        return Err(format!("{h:?}: short names (non FQDN) are not allowed"));
    }
    check_wildcard_domain(host)?;
    if host.contains('*') && host != "*" && !host.starts_with("*.") {
        return Err(format!("{h:?}: partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

pub(super) fn parse_sidecar(doc: &Document<'_>) -> Result<SidecarResource, Vec<FieldError>> {
    let sc: ScDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let spec = &sc.spec;
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        errors.push(FieldError::new(
            "spec",
            "empty configuration provided: set ingress, egress, outboundTrafficPolicy or inboundConnectionPool",
        ));
    }
    listener_rules(spec, &mut errors);
    let mut egress = Vec::new();
    for (i, e) in sc.spec.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        if e.hosts.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.hosts"),
                "at least one host is required",
            ));
        }
        for (j, h) in e.hosts.iter().enumerate() {
            if let Err(msg) = check_egress_host(h) {
                errors.push(FieldError::new(format!("{f}.hosts[{j}]"), msg));
            }
        }
        // Port 0 is a Unix-socket listener (checked in `listener_rules`); Mast's sidecar has
        // no such listeners, so it is accepted and not served.
        if e.port.as_ref().is_some_and(|p| p.number == 0) {
            continue;
        }
        egress.push(EgressListener {
            port: e
                .port
                .as_ref()
                .and_then(|p| sidecar_port(p, &format!("{f}.port"), &mut errors)),
            bind: e.bind.clone(),
            capture_mode: capture_mode(e.capture_mode),
            hosts: e.hosts.clone(),
        });
    }
    let mut ingress = Vec::new();
    for (i, e) in sc.spec.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        if let Some(port) = sidecar_port(&e.port, &format!("{f}.port"), &mut errors) {
            ingress.push(IngressListener {
                port,
                bind: e.bind.clone(),
                capture_mode: capture_mode(e.capture_mode),
                default_endpoint: e.default_endpoint.clone(),
            });
        }
    }
    let registry_only = sc
        .spec
        .outbound_traffic_policy
        .as_ref()
        .and_then(|o| o.mode)
        == Some(api::OutboundMode::RegistryOnly);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SidecarResource(SidecarScope {
        namespace: doc.meta.namespace.clone(),
        workload_selector: sc.spec.workload_selector.map(|s| s.labels),
        egress,
        ingress,
        registry_only,
        source: doc.meta.resource_ref(),
    }))
}

impl MeshResource for SidecarResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.sidecars.push(self.0.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::error_lines;
    use super::check_egress_host;

    fn sidecar(spec: &str) -> Vec<String> {
        error_lines(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\n  namespace: prod\nspec:\n{spec}"
        ))
    }

    fn rejected(spec: &str, field: &str) {
        let errors = sidecar(spec);
        assert!(
            errors.iter().any(|e| e.starts_with(field)),
            "expected an error on {field}, got {errors:?}"
        );
    }

    /// ValidateSidecar: "empty configuration provided".
    #[test]
    fn empty_sidecar_is_refused() {
        rejected("  workloadSelector: {labels: {app: a}}\n", "spec");
    }

    /// ValidateSidecar: the port-less egress listener is the only one and comes last.
    #[test]
    fn catch_all_egress_listener_is_last() {
        rejected(
            "  egress:\n  - hosts: ['./*']\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['./*']\n",
            "spec.egress[0].port",
        );
        let errors = sidecar(
            "  egress:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['./*']\n  - hosts: ['./*', istio-system/*]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// ValidateSidecar: port 0 is a Unix-socket listener, valid with a unix:// bind.
    #[test]
    fn unix_socket_egress_listener() {
        let errors = sidecar(
            "  egress:\n  - port: {number: 0, name: uds, protocol: HTTP}\n    bind: unix:///var/run/app.sock\n    hosts: ['./*']\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        rejected(
            "  egress:\n  - port: {number: 0, protocol: HTTP}\n    hosts: ['./*']\n",
            "spec.egress[0].bind",
        );
    }

    /// ValidateSidecar ingress: unique ports, no targetPort, defaultEndpoint shape, IP binds.
    #[test]
    fn ingress_listener_rules() {
        let l = "  - port: {number: 9080, name: http, protocol: HTTP}\n    defaultEndpoint: 127.0.0.1:8080\n";
        rejected(
            &format!("  ingress:\n{l}{l}"),
            "spec.ingress[1].port.number",
        );
        rejected(
            "  ingress:\n  - port: {number: 9080, protocol: HTTP, targetPort: 8080}\n    defaultEndpoint: 127.0.0.1:8080\n",
            "spec.ingress[0].port.targetPort",
        );
        rejected(
            "  ingress:\n  - port: {number: 9080, protocol: HTTP}\n    defaultEndpoint: 10.1.1.1:8080\n",
            "spec.ingress[0].defaultEndpoint",
        );
        rejected(
            "  ingress:\n  - port: {number: 9080, protocol: HTTP}\n    bind: localhost\n",
            "spec.ingress[0].bind",
        );
    }

    /// ValidateNamespaceSlashWildcardHostname (sidecar form).
    #[test]
    fn egress_hosts() {
        for ok in [
            "./*",
            "*/*",
            "istio-system/*",
            "~prod/*.example.com",
            "./reviews.prod.svc.cluster.local",
        ] {
            assert!(check_egress_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "reviews",
            "/x.com",
            "prod/reviews",
            "prod/*foo.example.com",
            "Bad_NS/*",
        ] {
            assert!(check_egress_host(bad).is_err(), "{bad}");
        }
    }
}
