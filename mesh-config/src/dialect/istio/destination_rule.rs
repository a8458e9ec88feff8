//! DestinationRule: what happens to traffic for a host after routing — load balancing,
//! connection pool limits, outlier detection, client TLS, per-port settings and named
//! subsets — into a [`DestinationPolicy`].
//!
//! Enforces istiod's DestinationRule rules (pkg/config/validation/validation.go,
//! ValidateDestinationRule and the validateTrafficPolicy family; agent/validation.go
//! ValidateTLS): a valid host, unique DNS-label subset names, policies that set something,
//! known load balancer and TLS modes, MUTUAL TLS files, non-negative limits, durations of
//! whole milliseconds, percentages in 0–100, a port on every port-level setting.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::{
    VsPort, check_wildcard_domain, count, dns1123_label, duration, ms_duration, resolve_host,
};
use crate::dialect::kube::port_number;
use crate::dialect::{Document, FieldError, MeshResource, Meta, deserialize};
use crate::model::*;

#[derive(Debug, Deserialize)]
struct DrDoc {
    spec: DrSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrSpec {
    #[serde(default)]
    host: String,
    traffic_policy: Option<DrPolicy>,
    #[serde(default)]
    subsets: Vec<DrSubset>,
    #[serde(default)]
    export_to: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrSubset {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: Labels,
    traffic_policy: Option<DrPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrPolicy {
    load_balancer: Option<DrLb>,
    connection_pool: Option<DrPool>,
    outlier_detection: Option<DrOutlier>,
    tls: Option<DrTls>,
    #[serde(default)]
    port_level_settings: Vec<DrPortPolicy>,
    /// Kept only to know they are set: Mast does not act on them yet.
    tunnel: Option<Value>,
    proxy_protocol: Option<Value>,
    retry_budget: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrPortPolicy {
    port: Option<VsPort>,
    load_balancer: Option<DrLb>,
    connection_pool: Option<DrPool>,
    outlier_detection: Option<DrOutlier>,
    tls: Option<DrTls>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrLb {
    simple: Option<String>,
    consistent_hash: Option<DrHash>,
    warmup: Option<DrWarmup>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrWarmup {
    duration: Option<String>,
    minimum_percent: Option<f64>,
    aggression: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrHash {
    http_header_name: Option<String>,
    http_cookie: Option<DrCookie>,
    use_source_ip: Option<bool>,
    http_query_parameter_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DrCookie {
    name: String,
    ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DrPool {
    tcp: Option<DrTcpPool>,
    http: Option<DrHttpPool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrTcpPool {
    max_connections: Option<i64>,
    connect_timeout: Option<String>,
    tcp_keepalive: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrHttpPool {
    http1_max_pending_requests: Option<i64>,
    http2_max_requests: Option<i64>,
    max_requests_per_connection: Option<i64>,
    max_retries: Option<i64>,
    idle_timeout: Option<String>,
    h2_upgrade_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrOutlier {
    consecutive_errors: Option<i64>,
    consecutive_5xx_errors: Option<i64>,
    consecutive_gateway_errors: Option<i64>,
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_percent: Option<i64>,
    min_health_percent: Option<i64>,
    #[serde(default)]
    split_external_local_origin_errors: bool,
    consecutive_local_origin_failures: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrTls {
    mode: Option<String>,
    sni: Option<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    credential_name: Option<String>,
    client_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
    ca_crl: Option<String>,
    insecure_skip_verify: Option<bool>,
}

#[derive(Debug)]
pub(super) struct DestinationRuleResource(DestinationPolicy);

/// istiod's validateTrafficPolicy: a policy that is present sets something, and not both
/// tunnel and proxyProtocol.
fn policy(p: &DrPolicy, f: &str, errors: &mut Vec<FieldError>) -> TrafficPolicy {
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
        tls: p
            .tls
            .as_ref()
            .and_then(|t| tls(t, &format!("{f}.tls"), errors)),
        port_level: BTreeMap::new(),
    };
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        let Some(port) = pl
            .port
            .as_ref()
            .and_then(|p| port_number(p.number, &format!("{pf}.port.number"), errors))
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
                    .and_then(|t| tls(t, &format!("{pf}.tls"), errors)),
                port_level: BTreeMap::new(),
            },
        );
    }
    out
}

fn load_balancer(lb: &DrLb, f: &str, errors: &mut Vec<FieldError>) -> Option<LoadBalancer> {
    if let Some(w) = &lb.warmup {
        match &w.duration {
            None => errors.push(FieldError::new(
                format!("{f}.warmup.duration"),
                "Required value",
            )),
            Some(d) => {
                ms_duration(d, &format!("{f}.warmup.duration"), errors);
            }
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
    match lb.simple.as_deref()? {
        "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => Some(LoadBalancer::LeastRequest),
        "ROUND_ROBIN" => Some(LoadBalancer::RoundRobin),
        "RANDOM" => Some(LoadBalancer::Random),
        "PASSTHROUGH" => Some(LoadBalancer::Passthrough),
        other => {
            errors.push(FieldError::new(
                format!("{f}.simple"),
                format!("unknown load balancer {other:?}"),
            ));
            None
        }
    }
}

fn pool(c: &DrPool, f: &str, errors: &mut Vec<FieldError>) -> ConnectionPool {
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
        p.h2_upgrade = match h.h2_upgrade_policy.as_deref() {
            Some("UPGRADE") => Some(true),
            Some("DO_NOT_UPGRADE") => Some(false),
            _ => None,
        };
    }
    p
}

fn outlier(o: &DrOutlier, f: &str, errors: &mut Vec<FieldError>) -> OutlierDetection {
    let pct = |v: Option<i64>, name: &str, errors: &mut Vec<FieldError>| {
        v.and_then(|n| {
            if (0..=100).contains(&n) {
                Some(n as u32)
            } else {
                errors.push(FieldError::new(
                    format!("{f}.{name}"),
                    format!("{n} is not a percentage in 0-100"),
                ));
                None
            }
        })
    };
    if !o.split_external_local_origin_errors
        && o.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        errors.push(FieldError::new(
            format!("{f}.consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        ));
    }
    OutlierDetection {
        consecutive_5xx_errors: count(
            o.consecutive_5xx_errors.or(o.consecutive_errors),
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
        split_external_local_origin_errors: o.split_external_local_origin_errors,
    }
}

fn tls(t: &DrTls, f: &str, errors: &mut Vec<FieldError>) -> Option<ClientTls> {
    let mode = match t.mode.as_deref().unwrap_or("DISABLE") {
        "DISABLE" => TlsMode::Disable,
        "SIMPLE" => TlsMode::Simple,
        "MUTUAL" => TlsMode::Mutual,
        "ISTIO_MUTUAL" => TlsMode::IstioMutual,
        other => {
            errors.push(FieldError::new(
                format!("{f}.mode"),
                format!("unknown TLS mode {other:?}"),
            ));
            return None;
        }
    };
    check_tls_files(t, &mode, f, errors);
    Some(ClientTls {
        mode,
        sni: t.sni.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        credential_name: t.credential_name.clone(),
    })
}

/// istiod's ValidateTLS (client side): with credentialName the secret holds the files, so none
/// may be given inline; MUTUAL without one needs clientCertificate and privateKey;
/// insecureSkipVerify leaves nothing to verify with.
fn check_tls_files(t: &DrTls, mode: &TlsMode, f: &str, errors: &mut Vec<FieldError>) {
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

    /// ValidateDestinationRule: the host is a wildcard domain; subset names are DNS-1123 labels.
    #[test]
    fn host_and_subset_names() {
        rejected("  subsets: [{name: v_1}]\n", "spec.subsets[0].name");
        let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: 'foo.*.com'\n";
        assert!(error_lines(yaml).iter().any(|e| e.starts_with("spec.host")));
    }
}
