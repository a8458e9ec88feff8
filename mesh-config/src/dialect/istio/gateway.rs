//! Gateway: the ports, hosts and TLS a set of gateway proxies (picked by `selector`) serve,
//! into a [`Gateway`]. What a gateway does with a request comes from the VirtualServices that
//! name it in `gateways`.
//!
//! Enforces istiod's Gateway rules (pkg/config/validation/validation.go, ValidateGateway →
//! validateServer, validateServerPort, validateServerBind, validateTLSOptions): at least one
//! server; each with at least one host in `[namespace/]dnsName` form (`*` and `.` as
//! namespaces, wildcard DNS names); a port with a valid number, a known protocol and a name,
//! names unique across the Gateway's servers; a bind address that is an IP or a Unix socket;
//! TLS settings on HTTPS and TLS servers, and for SIMPLE/MUTUAL either a `credentialName` or
//! the certificate files (MUTUAL also a CA).

use mast_crds::networking::{GatewaySpec, ServerTlsSettings};
use serde::Deserialize;

use super::{check_port_name, check_protocol, check_wildcard_domain, dns1123_label, is_ip};
use crate::dialect::{Document, FieldError, MeshResource, Meta, deserialize};
use crate::model::*;

#[derive(Debug, Deserialize)]
struct GatewayDoc {
    #[serde(default)]
    spec: GatewaySpec,
}

#[derive(Debug)]
pub(super) struct GatewayResource(Gateway);

pub(super) fn parse_gateway(doc: &Document<'_>) -> Result<GatewayResource, Vec<FieldError>> {
    let gw: GatewayDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    if gw.spec.servers.is_empty() {
        errors.push(FieldError::new(
            "spec.servers",
            "gateway must have at least one server",
        ));
    }
    let mut port_names = std::collections::BTreeSet::new();
    let mut servers = Vec::new();
    for (i, s) in gw.spec.servers.iter().enumerate() {
        let f = format!("spec.servers[{i}]");
        let protocol_name = s.port.protocol.to_ascii_uppercase();
        check_protocol(
            Some(&s.port.protocol),
            &format!("{f}.port.protocol"),
            &mut errors,
        );
        if s.port.protocol.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.port.protocol"),
                "port protocol must be set",
            ));
        }
        if s.port.name.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.port.name"),
                "port name must be set",
            ));
        } else {
            check_port_name(&s.port.name, &format!("{f}.port.name"), &mut errors);
            if !port_names.insert(s.port.name.clone()) {
                errors.push(FieldError::new(
                    format!("{f}.port.name"),
                    format!(
                        "port names in servers must be unique: duplicate name {}",
                        s.port.name
                    ),
                ));
            }
        }
        let port = match u16::try_from(s.port.number) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                errors.push(FieldError::new(
                    format!("{f}.port.number"),
                    format!(
                        "port number {} must be in the range 1..65535",
                        s.port.number
                    ),
                ));
                None
            }
        };
        if s.hosts.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.hosts"),
                "server config must contain at least one host",
            ));
        }
        let mut hosts = Vec::new();
        for (j, h) in s.hosts.iter().enumerate() {
            match gateway_host(h) {
                Ok(host) => hosts.push(host),
                Err(e) => errors.push(FieldError::new(format!("{f}.hosts[{j}]"), e)),
            }
        }
        if let Some(bind) = &s.bind
            && !is_ip(bind)
            && !bind.starts_with("unix://")
        {
            errors.push(FieldError::new(
                format!("{f}.bind"),
                format!("{bind:?} is not a valid IP address or unix socket"),
            ));
        }
        let tls = s
            .tls
            .as_ref()
            .and_then(|t| server_tls(t, &format!("{f}.tls"), &mut errors));
        let protocol = gateway_protocol(&protocol_name);
        let tls_protocol = matches!(protocol_name.as_str(), "HTTPS" | "TLS");
        if tls_protocol && tls.is_none() {
            errors.push(FieldError::new(
                format!("{f}.tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            ));
        }
        let Some(port) = port else { continue };
        servers.push(GatewayServer {
            port,
            port_name: s.port.name.clone(),
            protocol,
            bind: s.bind.clone(),
            hosts,
            tls,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let meta = &doc.meta;
    Ok(GatewayResource(Gateway {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        selector: gw.spec.selector.clone(),
        namespace_scoped: false,
        servers,
        source: meta.resource_ref(),
    }))
}

/// A server host: `[namespace/]dnsName`.
fn gateway_host(h: &str) -> Result<GatewayHost, String> {
    let (ns, host) = match h.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, h),
    };
    if let Some(ns) = ns
        && ns != "*"
        && ns != "."
        && !dns1123_label(ns)
    {
        return Err(format!(
            "namespace {ns:?} of host {h:?} must be *, . or a DNS-1123 label"
        ));
    }
    if host != "*" {
        check_wildcard_domain(host)?;
    }
    Ok(GatewayHost {
        namespace: ns.filter(|n| *n != "*").map(str::to_string),
        host: host.to_ascii_lowercase(),
    })
}

/// Istio's protocol names for gateway ports.
fn gateway_protocol(name: &str) -> Protocol {
    match name {
        "HTTP" | "HTTP_PROXY" => Protocol::Http,
        "HTTP2" | "GRPC-WEB" => Protocol::Http2,
        "GRPC" => Protocol::Grpc,
        "HTTPS" => Protocol::Https,
        "TLS" => Protocol::Tls,
        _ => Protocol::Tcp,
    }
}

/// istiod's `validateTLSOptions` for a gateway server.
fn server_tls(t: &ServerTlsSettings, f: &str, errors: &mut Vec<FieldError>) -> Option<ServerTls> {
    let mode = match t.mode.as_deref().unwrap_or("SIMPLE") {
        "SIMPLE" => ServerTlsMode::Simple,
        "MUTUAL" => ServerTlsMode::Mutual,
        "OPTIONAL_MUTUAL" => ServerTlsMode::OptionalMutual,
        "PASSTHROUGH" => ServerTlsMode::Passthrough,
        "ISTIO_MUTUAL" => ServerTlsMode::IstioMutual,
        "AUTO_PASSTHROUGH" => ServerTlsMode::AutoPassthrough,
        other => {
            errors.push(FieldError::new(
                format!("{f}.mode"),
                format!("unknown TLS mode {other:?}"),
            ));
            return None;
        }
    };
    let needs_cert = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) && !t.https_redirect;
    if needs_cert && t.credential_name.as_deref().unwrap_or("").is_empty() {
        if t.server_certificate.as_deref().unwrap_or("").is_empty() {
            errors.push(FieldError::new(
                format!("{f}.serverCertificate"),
                format!("{mode:?} TLS requires a server certificate (or a credentialName)"),
            ));
        }
        if t.private_key.as_deref().unwrap_or("").is_empty() {
            errors.push(FieldError::new(
                format!("{f}.privateKey"),
                format!("{mode:?} TLS requires a private key (or a credentialName)"),
            ));
        }
        if mode == ServerTlsMode::Mutual && t.ca_certificates.as_deref().unwrap_or("").is_empty() {
            errors.push(FieldError::new(
                format!("{f}.caCertificates"),
                "MUTUAL TLS requires a client CA bundle (or a credentialName)",
            ));
        }
    }
    if mode == ServerTlsMode::IstioMutual
        && (t.credential_name.is_some() || t.server_certificate.is_some())
    {
        errors.push(FieldError::new(
            f,
            "ISTIO_MUTUAL TLS cannot have associated credentialName or certificates",
        ));
    }
    let empty = |s: &Option<String>| s.clone().filter(|v| !v.is_empty());
    Some(ServerTls {
        https_redirect: t.https_redirect,
        mode,
        credential_name: empty(&t.credential_name),
        server_certificate: empty(&t.server_certificate),
        private_key: empty(&t.private_key),
        ca_certificates: empty(&t.ca_certificates),
        subject_alt_names: t.subject_alt_names.clone(),
        min_protocol_version: t.min_protocol_version.clone(),
        max_protocol_version: t.max_protocol_version.clone(),
        cipher_suites: t.cipher_suites.clone(),
    })
}

impl MeshResource for GatewayResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.gateways.push(self.0.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_lines, model};

    fn gw(spec: &str) -> Vec<String> {
        error_lines(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n{spec}"
        ))
    }

    #[test]
    fn bookinfo_gateway_translates() {
        let m = model(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bookinfo-gateway}\n\
             spec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: ['*']\n",
        );
        let g = &m.gateways[0];
        assert_eq!(
            g.selector.get("istio").map(String::as_str),
            Some("ingressgateway")
        );
        assert_eq!(g.servers[0].port, 8080);
        assert_eq!(g.servers[0].route_name(g).as_deref(), Some("http.8080"));
    }

    #[test]
    fn servers_need_hosts_ports_and_tls_where_istio_requires_them() {
        let errors = gw(
            "  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: []\n",
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.servers[0].hosts")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("spec.servers[0].tls")),
            "{errors:?}"
        );
        let errors = gw(
            "  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.com]\n    tls: {mode: SIMPLE}\n",
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.servers[0].tls.privateKey")),
            "{errors:?}"
        );
        assert!(
            gw("  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [ns1/a.com]\n    tls: {mode: SIMPLE, credentialName: cert}\n")
                .is_empty()
        );
        let errors = gw(
            "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['bad ns/a.com']\n",
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.servers[0].hosts[0]")),
            "{errors:?}"
        );
        let errors = gw("  servers: []\n");
        assert!(
            errors.iter().any(|e| e.starts_with("spec.servers")),
            "{errors:?}"
        );
    }
}
