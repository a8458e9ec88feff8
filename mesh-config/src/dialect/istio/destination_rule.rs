//! DestinationRule: what happens to traffic for a host after routing — load balancing,
//! connection pool limits, outlier detection, client TLS, per-port settings and named
//! subsets — into a [`DestinationPolicy`].
//!
//! Enforces istiod's DestinationRule rules (pkg/config/validation/validation.go,
//! ValidateDestinationRule and the validateTrafficPolicy family; agent/validation.go
//! ValidateTLS): a valid host, unique DNS-label subset names, policies that set something,
//! known load balancer and TLS modes, MUTUAL TLS files, non-negative limits, durations of
//! whole milliseconds, percentages in 0–100, a port on every port-level setting.
//!
//! The spec is read straight into `mast_crds::networking::DestinationRuleSpec`, the type the
//! DestinationRule CRD is generated from, so a field has one Rust type in the CRD and here;
//! enums (load balancers, TLS and HTTP/2 upgrade modes) are refused by that type when unknown.

use std::collections::{BTreeMap, BTreeSet};

use mast_crds::networking as api;
use serde::Deserialize;

use super::{
    check_wildcard_domain, count, deserialize, dns1123_label, duration, ms_duration, resolve_host,
};
use crate::dialect::kube::port_number;
use crate::dialect::{Document, FieldError, MeshResource, Meta};
use crate::model::*;

/// The document around the spec: `spec` is required, the rest was read into [`Meta`].
#[derive(Debug, Deserialize)]
struct DrDoc {
    spec: api::DestinationRuleSpec,
}

#[derive(Debug)]
pub(super) struct DestinationRuleResource(DestinationPolicy);

/// istiod's validateTrafficPolicy: a policy that is present sets something, and not both
/// tunnel and proxyProtocol.
fn policy(p: &api::TrafficPolicy, f: &str, errors: &mut Vec<FieldError>) -> TrafficPolicy {
    if p.load_balancer.is_none()
        && p.connection_pool.is_none()
        && p.outlier_detection.is_none()
        && p.tls.is_none()
        && p.port_level_settings.is_empty()
        && p.tunnel.is_none()
        && p.proxy_protocol.is_none()
        && p.retry_budget.is_none()
    {
        errors.push(FieldError::new(
            f,
            "traffic policy must have at least one field",
        ));
    }
    if p.tunnel.is_some() && p.proxy_protocol.is_some() {
        errors.push(FieldError::new(
            f,
            "tunnel and proxyProtocol must not be set together",
        ));
    }
    let mut out = TrafficPolicy {
        load_balancer: p
            .load_balancer
            .as_ref()
            .and_then(|lb| load_balancer(lb, &format!("{f}.loadBalancer"), errors)),
        connection_pool: p
            .connection_pool
            .as_ref()
            .map(|c| pool(c, &format!("{f}.connectionPool"), errors)),
        outlier_detection: p
            .outlier_detection
            .as_ref()
            .map(|o| outlier(o, &format!("{f}.outlierDetection"), errors)),
        tls: p.tls.as_ref().map(|t| tls(t, &format!("{f}.tls"), errors)),
        port_level: BTreeMap::new(),
    };
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        let Some(port) = pl
            .port
            .as_ref()
            .and_then(|p| port_number(i64::from(p.number), &format!("{pf}.port.number"), errors))
        else {
            if pl.port.is_none() {
                errors.push(FieldError::new(format!("{pf}.port"), "required"));
            }
            continue;
        };
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            errors.push(FieldError::new(
                pf.clone(),
                "port traffic policy must have at least one field",
            ));
        }
        out.port_level.insert(
            port,
            TrafficPolicy {
                load_balancer: pl
                    .load_balancer
                    .as_ref()
                    .and_then(|lb| load_balancer(lb, &format!("{pf}.loadBalancer"), errors)),
                connection_pool: pl
                    .connection_pool
                    .as_ref()
                    .map(|c| pool(c, &format!("{pf}.connectionPool"), errors)),
                outlier_detection: pl
                    .outlier_detection
                    .as_ref()
                    .map(|o| outlier(o, &format!("{pf}.outlierDetection"), errors)),
                tls: pl
                    .tls
                    .as_ref()
                    .map(|t| tls(t, &format!("{pf}.tls"), errors)),
                port_level: BTreeMap::new(),
            },
        );
    }
    out
}

fn load_balancer(
    lb: &api::LoadBalancerSettings,
    f: &str,
    errors: &mut Vec<FieldError>,
) -> Option<LoadBalancer> {
    if let Some(w) = &lb.warmup {
        if w.duration.is_empty() {
            errors.push(FieldError::new(
                format!("{f}.warmup.duration"),
                "Required value",
            ));
        } else {
            ms_duration(&w.duration, &format!("{f}.warmup.duration"), errors);
        }
        if let Some(p) = w.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            errors.push(FieldError::new(
                format!("{f}.warmup.minimumPercent"),
                format!("Invalid value: {p}: must be in 0-100"),
            ));
        }
        // istiod: aggression > 0 (the CRD's minimum is 0, istiod refuses 0 itself).
        if let Some(a) = w.aggression
            && a <= 0.0
        {
            errors.push(FieldError::new(
                format!("{f}.warmup.aggression"),
                format!("Invalid value: {a}: aggression should be greater than 0"),
            ));
        }
    }
    if let Some(h) = &lb.consistent_hash {
        let key = if let Some(name) = &h.http_header_name {
            HashKey::Header(name.to_ascii_lowercase())
        } else if let Some(c) = &h.http_cookie {
            if c.name.is_empty() {
                errors.push(FieldError::new(
                    format!("{f}.consistentHash.httpCookie.name"),
                    "name required for httpCookie",
                ));
            }
            HashKey::Cookie {
                name: c.name.clone(),
                ttl: c.ttl.as_deref().and_then(|t| {
                    duration(t, &format!("{f}.consistentHash.httpCookie.ttl"), errors)
                }),
            }
        } else if h.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else if let Some(q) = &h.http_query_parameter_name {
            HashKey::QueryParameter(q.clone())
        } else {
            return None;
        };
        return Some(LoadBalancer::ConsistentHash(key));
    }
    Some(match lb.simple? {
        api::SimpleLb::LeastRequest | api::SimpleLb::LeastConn | api::SimpleLb::Unspecified => {
            LoadBalancer::LeastRequest
        }
        api::SimpleLb::RoundRobin => LoadBalancer::RoundRobin,
        api::SimpleLb::Random => LoadBalancer::Random,
        api::SimpleLb::Passthrough => LoadBalancer::Passthrough,
    })
}

fn pool(c: &api::ConnectionPoolSettings, f: &str, errors: &mut Vec<FieldError>) -> ConnectionPool {
    let mut p = ConnectionPool::default();
    if c.tcp.is_none() && c.http.is_none() {
        errors.push(FieldError::new(
            f,
            "connection pool must have at least one field (tcp or http)",
        ));
    }
    if let Some(t) = &c.tcp {
        p.max_connections = count(
            t.max_connections,
            &format!("{f}.tcp.maxConnections"),
            errors,
        );
        p.connect_timeout = t
            .connect_timeout
            .as_deref()
            .and_then(|d| ms_duration(d, &format!("{f}.tcp.connectTimeout"), errors));
        p.tcp_keepalive = t.tcp_keepalive.is_some();
    }
    if let Some(h) = &c.http {
        p.http1_max_pending_requests = count(
            h.http1_max_pending_requests,
            &format!("{f}.http.http1MaxPendingRequests"),
            errors,
        );
        p.http2_max_requests = count(
            h.http2_max_requests,
            &format!("{f}.http.http2MaxRequests"),
            errors,
        );
        p.max_requests_per_connection = count(
            h.max_requests_per_connection,
            &format!("{f}.http.maxRequestsPerConnection"),
            errors,
        );
        p.max_retries = count(h.max_retries, &format!("{f}.http.maxRetries"), errors);
        p.idle_timeout = h
            .idle_timeout
            .as_deref()
            .and_then(|d| ms_duration(d, &format!("{f}.http.idleTimeout"), errors));
        p.h2_upgrade = match h.h2_upgrade_policy {
            Some(api::H2UpgradePolicy::Upgrade) => Some(true),
            Some(api::H2UpgradePolicy::DoNotUpgrade) => Some(false),
            Some(api::H2UpgradePolicy::Default) | None => None,
        };
    }
    p
}

fn outlier(o: &api::OutlierDetection, f: &str, errors: &mut Vec<FieldError>) -> OutlierDetection {
    let pct = |v: Option<i32>, name: &str, errors: &mut Vec<FieldError>| {
        v.and_then(|n| {
            if (0..=100).contains(&n) {
                Some(n.unsigned_abs())
            } else {
                errors.push(FieldError::new(
                    format!("{f}.{name}"),
                    format!("{n} is not a percentage in 0-100"),
                ));
                None
            }
        })
    };
    let split_external_local_origin_errors = o.split_external_local_origin_errors == Some(true);
    if !split_external_local_origin_errors
        && o.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        errors.push(FieldError::new(
            format!("{f}.consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        ));
    }
    OutlierDetection {
        consecutive_5xx_errors: count(
            o.consecutive_5xx_errors
                .map(i64::from)
                .or(o.consecutive_errors.map(i64::from)),
            &format!("{f}.consecutive5xxErrors"),
            errors,
        ),
        consecutive_gateway_errors: count(
            o.consecutive_gateway_errors,
            &format!("{f}.consecutiveGatewayErrors"),
            errors,
        ),
        interval: o
            .interval
            .as_deref()
            .and_then(|d| ms_duration(d, &format!("{f}.interval"), errors)),
        base_ejection_time: o
            .base_ejection_time
            .as_deref()
            .and_then(|d| ms_duration(d, &format!("{f}.baseEjectionTime"), errors)),
        max_ejection_percent: pct(o.max_ejection_percent, "maxEjectionPercent", errors),
        min_health_percent: pct(o.min_health_percent, "minHealthPercent", errors),
        split_external_local_origin_errors,
    }
}

fn tls(t: &api::ClientTlsSettings, f: &str, errors: &mut Vec<FieldError>) -> ClientTls {
    let mode = match t.mode.unwrap_or(api::ClientTlsMode::Disable) {
        api::ClientTlsMode::Disable => TlsMode::Disable,
        api::ClientTlsMode::Simple => TlsMode::Simple,
        api::ClientTlsMode::Mutual => TlsMode::Mutual,
        api::ClientTlsMode::IstioMutual => TlsMode::IstioMutual,
    };
    check_tls_files(t, &mode, f, errors);
    ClientTls {
        mode,
        sni: t.sni.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        credential_name: nonempty(&t.credential_name),
        ca_certificates: nonempty(&t.ca_certificates),
        client_certificate: nonempty(&t.client_certificate),
        private_key: nonempty(&t.private_key),
        insecure_skip_verify: t.insecure_skip_verify == Some(true),
        ca_crl: nonempty(&t.ca_crl),
    }
}

/// Istio treats an empty string field as unset.
fn nonempty(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.is_empty())
}

/// istiod's ValidateTLS (client side): with credentialName the secret holds the files, so none
/// may be given inline; MUTUAL without one needs clientCertificate and privateKey;
/// insecureSkipVerify leaves nothing to verify with.
fn check_tls_files(
    t: &api::ClientTlsSettings,
    mode: &TlsMode,
    f: &str,
    errors: &mut Vec<FieldError>,
) {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let credential = set(&t.credential_name);
    if t.insecure_skip_verify == Some(true) {
        let sans = !t.subject_alt_names.is_empty();
        let conflict = match mode {
            TlsMode::Simple => set(&t.ca_certificates) || credential || sans,
            TlsMode::Mutual => set(&t.ca_certificates) || sans,
            _ => false,
        };
        if conflict {
            errors.push(FieldError::new(
                format!("{f}.insecureSkipVerify"),
                "cannot specify caCertificates, credentialName (SIMPLE) or subjectAltNames when insecureSkipVerify is true",
            ));
        }
    }
    let simple_or_mutual = matches!(mode, TlsMode::Simple | TlsMode::Mutual);
    if simple_or_mutual && credential {
        if set(&t.client_certificate)
            || set(&t.ca_certificates)
            || set(&t.private_key)
            || set(&t.ca_crl)
        {
            errors.push(FieldError::new(
                format!("{f}.credentialName"),
                "cannot specify client certificates or CA certificate or CA CRL if credentialName is set",
            ));
        }
        return;
    }
    if matches!(mode, TlsMode::Mutual) {
        if !set(&t.client_certificate) {
            errors.push(FieldError::new(
                format!("{f}.clientCertificate"),
                "client certificate required for mutual tls",
            ));
        }
        if !set(&t.private_key) {
            errors.push(FieldError::new(
                format!("{f}.privateKey"),
                "private key required for mutual tls",
            ));
        }
    }
}

pub(super) fn parse_destination_rule(
    doc: &Document<'_>,
) -> Result<DestinationRuleResource, Vec<FieldError>> {
    let dr: DrDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    if dr.spec.host.is_empty() {
        errors.push(FieldError::new("spec.host", "required"));
    } else if let Err(e) = check_wildcard_domain(&dr.spec.host) {
        errors.push(FieldError::new("spec.host", e));
    }
    let traffic_policy = dr
        .spec
        .traffic_policy
        .as_ref()
        .map(|p| policy(p, "spec.trafficPolicy", &mut errors))
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut subsets = Vec::new();
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            errors.push(FieldError::new(format!("{f}.name"), "required"));
        } else if !dns1123_label(&s.name) {
            errors.push(FieldError::new(
                format!("{f}.name"),
                format!(
                    "subset name is invalid: {:?} (must be a DNS-1123 label)",
                    s.name
                ),
            ));
        } else if !names.insert(s.name.clone()) {
            errors.push(FieldError::new(
                format!("{f}.name"),
                format!("duplicate subset name {:?}", s.name),
            ));
        }
        subsets.push(Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            traffic_policy: s
                .traffic_policy
                .as_ref()
                .map(|p| policy(p, &format!("{f}.trafficPolicy"), &mut errors)),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(DestinationRuleResource(DestinationPolicy {
        host: resolve_host(&dr.spec.host, ns),
        namespace: ns.to_string(),
        traffic_policy,
        subsets,
        export_to: dr.spec.export_to,
        source: doc.meta.resource_ref(),
    }))
}

impl MeshResource for DestinationRuleResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        // As istiod: a rule in the host's own namespace wins over one elsewhere.
        let host_ns = self.0.host.split('.').nth(1).unwrap_or("");
        match model.destination_policies.get(&self.0.host) {
            Some(existing) if existing.namespace == host_ns || self.0.namespace != host_ns => {}
            _ => {
                model
                    .destination_policies
                    .insert(self.0.host.clone(), self.0.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::error_lines;

    fn rejected(spec: &str, field: &str) {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n{spec}"
        );
        let errors = error_lines(&yaml);
        assert!(
            errors.iter().any(|e| e.starts_with(field)),
            "expected an error on {field}, got {errors:?}"
        );
    }

    fn accepted(spec: &str) {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n{spec}"
        );
        let errors = error_lines(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// validateTrafficPolicy / validateConnectionPool / validatePortTrafficPolicies: a section
    /// that is present sets something.
    #[test]
    fn empty_sections_are_refused() {
        rejected("  trafficPolicy: {}\n", "spec.trafficPolicy");
        rejected(
            "  trafficPolicy: {connectionPool: {}}\n",
            "spec.trafficPolicy.connectionPool",
        );
        rejected(
            "  trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}\n",
            "spec.trafficPolicy.portLevelSettings[0]",
        );
        rejected(
            "  subsets: [{name: v1, trafficPolicy: {}}]\n",
            "spec.subsets[0].trafficPolicy",
        );
    }

    /// ValidateDuration on outlier detection and pool timeouts: at least 1ms, ms precision.
    #[test]
    fn durations_are_istio_durations() {
        rejected(
            "  trafficPolicy: {outlierDetection: {interval: 0s}}\n",
            "spec.trafficPolicy.outlierDetection.interval",
        );
        rejected(
            "  trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0.0001s}}}\n",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        );
    }

    /// validateLoadBalancer: warmup aggression > 0 (not ≥ 1); an httpCookie has a name.
    #[test]
    fn load_balancer_rules() {
        accepted(
            "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s, aggression: 0.5}}}\n",
        );
        rejected(
            "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s, aggression: 0}}}\n",
            "spec.trafficPolicy.loadBalancer.warmup.aggression",
        );
        rejected(
            "  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: ''}}}}\n",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
        );
    }

    /// validateOutlierDetection: local-origin failures only with split errors.
    #[test]
    fn local_origin_failures_need_split() {
        rejected(
            "  trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}\n",
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        );
        accepted(
            "  trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3, splitExternalLocalOriginErrors: true}}\n",
        );
    }

    /// ValidateTLS: MUTUAL needs a certificate and key unless credentialName holds them.
    #[test]
    fn mutual_tls_needs_its_files() {
        rejected(
            "  trafficPolicy: {tls: {mode: MUTUAL}}\n",
            "spec.trafficPolicy.tls.clientCertificate",
        );
        accepted("  trafficPolicy: {tls: {mode: MUTUAL, credentialName: client-cert}}\n");
        rejected(
            "  trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}\n",
            "spec.trafficPolicy.tls.credentialName",
        );
    }

    /// The spec is mast-crds' `DestinationRuleSpec`: enums are refused by the type at their
    /// field, and a missing host or subset name is reported by its own path, as istiod does.
    #[test]
    fn spec_is_the_crd_type() {
        rejected(
            "  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n",
            "spec.trafficPolicy.loadBalancer.simple",
        );
        let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  trafficPolicy: {tls: {mode: STRICT}}\n";
        assert_eq!(
            error_lines(yaml),
            [
                "spec.trafficPolicy.tls.mode: Unsupported value: \"STRICT\": supported values: DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"
            ]
        );
        rejected("  subsets: [{labels: {v: '1'}}]\n", "spec.subsets[0].name");
        let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  subsets: [{name: v1}]\n";
        assert_eq!(error_lines(yaml), ["spec.host: required"]);
    }

    /// ValidateDestinationRule: the host is a wildcard domain; subset names are DNS-1123 labels.
    #[test]
    fn host_and_subset_names() {
        rejected("  subsets: [{name: v_1}]\n", "spec.subsets[0].name");
        let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: 'foo.*.com'\n";
        assert!(error_lines(yaml).iter().any(|e| e.starts_with("spec.host")));
    }
}
