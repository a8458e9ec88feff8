//! Knative Serving (`serving.knative.dev/v1`) Route and Service traffic blocks, and the
//! `config-domain` ConfigMap that names their external hosts.
//!
//! A revision is the set of pods labelled `serving.knative.dev/revision=<name>`; as Knative
//! itself does, each referenced revision gets a Service of its own name (port 80 → the
//! container port). The route's host `<route>.<ns>.svc.cluster.local` splits by `percent`
//! across them, and every `tag` gets its own host `<tag>-<route>.<ns>.svc.cluster.local`.
//! Each split sets `Knative-Serving-Revision`/`Knative-Serving-Namespace` and retries are off,
//! as Knative's networking layer asks of the mesh (net-istio writes `retries: {}`).
//!
//! The external URL `<route>.<ns>.<domain>` (and `<tag>-<route>.<ns>.<domain>`) is served by
//! the ingress gateway: its route table binds to Knative's gateway
//! `knative-serving/knative-ingress-gateway`. The domain comes from `config-domain` in
//! `knative-serving` (the most specific matching `selector` wins, as Knative picks it;
//! [`DEFAULT_DOMAIN`] without the ConfigMap), and a route labelled
//! `networking.knative.dev/visibility: cluster-local` (or whose domain is
//! `svc.cluster.local`) stays off the gateway. The domain is only known once every resource
//! is read, so routes wait in [`MeshModel::knative`] and [`finish`] builds their gateway
//! tables after translation. When no Gateway `knative-serving/knative-ingress-gateway`
//! exists, [`finish`] adds the one net-istio installs (selector `istio: ingressgateway`, HTTP
//! on port 80, hosts `*`), so the Istio ingress gateway serves Knative without net-istio.
//!
//! With net-istio installed, Knative's own Istio resources are the truth (Istio never reads
//! Knative objects): a route table of this dialect whose host a VirtualService also routes
//! is dropped, and the overlap is reported as a [`ConfigWarning`].
//!
//! `latestRevision: true` (or a bare `configurationName`) cannot be resolved from static
//! files — Knative knows the latest ready revision from status — so it targets every pod of
//! the configuration (`serving.knative.dev/configuration=<name>`) through a service named
//! `<configuration>-latest`. That is the one approximation of this dialect.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::kube::port_number;
use super::{Accepted, Document, FieldError, MeshResource, Meta, ParseResult, deserialize};
use crate::error::ConfigWarning;
use crate::model::*;

/// Knative's default user container port.
const DEFAULT_CONTAINER_PORT: u16 = 8080;
const ROUTE_PORT: u16 = 80;
/// Where Knative Serving keeps its configuration.
pub const KNATIVE_NAMESPACE: &str = "knative-serving";
/// The ConfigMap naming the domains of external URLs.
pub const CONFIG_DOMAIN: &str = "config-domain";
/// The domain without a `config-domain` ConfigMap (Knative's documented example domain).
pub const DEFAULT_DOMAIN: &str = "example.com";
/// Knative's external gateway, which net-istio installs and binds its VirtualServices to.
pub const INGRESS_GATEWAY: &str = "knative-ingress-gateway";
/// A route with this label set to `cluster-local` gets no external URL.
pub const VISIBILITY_LABEL: &str = "networking.knative.dev/visibility";
/// The label's older name, still honoured by Knative.
const OLD_VISIBILITY_LABEL: &str = "serving.knative.dev/visibility";
const CLUSTER_LOCAL: &str = "cluster-local";
/// The domain that means "cluster-local" in `config-domain`.
const CLUSTER_LOCAL_DOMAIN: &str = "svc.cluster.local";
/// The headers Knative's ingress sets for the revision that serves a request.
pub const REVISION_HEADER: &str = "Knative-Serving-Revision";
pub const NAMESPACE_HEADER: &str = "Knative-Serving-Namespace";

pub fn parse(doc: &Document<'_>) -> ParseResult {
    if doc.meta.kind == "ConfigMap"
        && doc.meta.group().is_empty()
        && doc.meta.namespace == KNATIVE_NAMESPACE
        && doc.meta.name == CONFIG_DOMAIN
    {
        return Some(parse_config_domain(doc).map(|d| Box::new(d) as Box<dyn MeshResource>));
    }
    if doc.meta.group() != "serving.knative.dev" {
        return None;
    }
    Some(match doc.meta.kind.as_str() {
        "Route" | "Service" => parse_traffic(doc).map(|r| Box::new(r) as Box<dyn MeshResource>),
        _ => Ok(Box::new(Accepted) as Box<dyn MeshResource>),
    })
}

// === model state ===

/// What the Knative dialect keeps in the model until every resource is translated: the
/// external hosts depend on `config-domain`, and on whether VirtualServices route the same
/// hosts, neither of which a Route can know while it is translated.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KnativeState {
    /// `config-domain`'s rules; `None` when there is no such ConfigMap.
    pub domains: Option<Vec<DomainRule>>,
    /// Routes (and Knative Services) whose gateway tables [`finish`] builds.
    pub routes: Vec<KnativeRoute>,
}

/// One `config-domain` entry: routes whose labels match `selector` get `domain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DomainRule {
    pub domain: String,
    pub selector: Labels,
}

/// A translated Route: the rules of its hosts, to be served on its external hosts too.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KnativeRoute {
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    /// The split of the route's own host.
    pub http: Vec<HttpRoute>,
    /// `(tag, rules)` of each tagged target.
    pub tags: Vec<(String, Vec<HttpRoute>)>,
    pub source: ResourceRef,
}

// === config-domain ===

#[derive(Debug, Deserialize)]
struct ConfigMapDoc {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct DomainValue {
    #[serde(default)]
    selector: Labels,
}

#[derive(Debug)]
struct DomainConfig(Vec<DomainRule>);

fn parse_config_domain(doc: &Document<'_>) -> Result<DomainConfig, Vec<FieldError>> {
    let cm: ConfigMapDoc = deserialize(doc).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    for (domain, value) in cm.data {
        // `_example` holds Knative's documentation, not configuration.
        if domain.starts_with('_') {
            continue;
        }
        let f = format!("data.{domain}");
        if domain.is_empty()
            || !domain.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        {
            errors.push(FieldError::new(&f, "not a valid domain name"));
            continue;
        }
        let parsed: DomainValue = if value.trim().is_empty() {
            DomainValue::default()
        } else {
            match serde_saphyr::from_str(&value) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(FieldError::new(&f, super::short_message(&e.to_string())));
                    continue;
                }
            }
        };
        rules.push(DomainRule {
            domain: domain.to_ascii_lowercase(),
            selector: parsed.selector,
        });
    }
    if errors.is_empty() {
        Ok(DomainConfig(rules))
    } else {
        Err(errors)
    }
}

impl MeshResource for DomainConfig {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.knative.domains = Some(self.0.clone());
    }
}

/// The domain of a route with these labels, as Knative picks it: `svc.cluster.local` for a
/// cluster-local route; else the matching rule with the most selector labels (ties: the
/// greatest domain name); else `None` (no rule matches: no external URL).
pub fn domain_for(domains: Option<&[DomainRule]>, labels: &Labels) -> Option<String> {
    let local = |k: &str| labels.get(k).is_some_and(|v| v == CLUSTER_LOCAL);
    if local(VISIBILITY_LABEL) || local(OLD_VISIBILITY_LABEL) {
        return Some(CLUSTER_LOCAL_DOMAIN.to_string());
    }
    let Some(domains) = domains else {
        return Some(DEFAULT_DOMAIN.to_string());
    };
    domains
        .iter()
        .filter(|r| labels_match(&r.selector, labels))
        .max_by(|a, b| (a.selector.len(), &a.domain).cmp(&(b.selector.len(), &b.domain)))
        .map(|r| r.domain.clone())
}

// === Route and Service ===

#[derive(Debug, Deserialize)]
struct KnDoc {
    #[serde(default)]
    spec: KnSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KnSpec {
    traffic: Option<Vec<Target>>,
    template: Option<Template>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    revision_name: Option<String>,
    configuration_name: Option<String>,
    latest_revision: Option<bool>,
    percent: Option<i64>,
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Template {
    spec: Option<TemplateSpec>,
}

#[derive(Debug, Deserialize)]
struct TemplateSpec {
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Debug, Deserialize)]
struct Container {
    #[serde(default)]
    ports: Vec<ContainerPort>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    container_port: i64,
}

#[derive(Debug)]
struct TrafficResource {
    services: Vec<Service>,
    tables: Vec<RouteTable>,
    route: KnativeRoute,
}

fn service(
    name: &str,
    ns: &str,
    selector: Option<Labels>,
    target: u16,
    source: &ResourceRef,
) -> Service {
    Service {
        hostname: service_fqdn(name, ns),
        name: name.to_string(),
        namespace: ns.to_string(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: ROUTE_PORT,
            target_port: Some(TargetPort::Number(target)),
            protocol: Protocol::Http,
        }],
        selector,
        endpoints: Vec::new(),
        addresses: Vec::new(),
        resolution: Resolution::Static,
        mesh_external: false,
        export_to: Vec::new(),
        source: source.clone(),
    }
}

/// A weighted destination with the headers Knative's ingress sets for its revision (none for
/// `latestRevision`, whose revision name only Knative's status knows).
fn split(
    destination: Destination,
    weight: u32,
    revision: Option<&str>,
    ns: &str,
) -> WeightedDestination {
    let mut headers = HeaderOperations::default();
    if let Some(rev) = revision {
        headers.request.set = vec![
            (REVISION_HEADER.to_string(), rev.to_string()),
            (NAMESPACE_HEADER.to_string(), ns.to_string()),
        ];
    }
    WeightedDestination {
        destination,
        weight,
        headers,
    }
}

fn parse_traffic(doc: &Document<'_>) -> Result<TrafficResource, Vec<FieldError>> {
    let kn: KnDoc = deserialize(doc).map_err(|e| vec![e])?;
    let meta = &doc.meta;
    let ns = meta.namespace.as_str();
    let is_ksvc = meta.kind == "Service";
    let mut errors = Vec::new();
    let target_port = kn
        .spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.first())
        .and_then(|p| {
            port_number(
                p.container_port,
                "spec.template.spec.containers[0].ports[0].containerPort",
                &mut errors,
            )
        })
        .unwrap_or(DEFAULT_CONTAINER_PORT);
    // A ksvc without a traffic block sends everything to its latest revision.
    let traffic = kn.spec.traffic.unwrap_or_else(|| {
        vec![Target {
            revision_name: None,
            configuration_name: None,
            latest_revision: Some(true),
            percent: Some(100),
            tag: None,
        }]
    });
    let source = meta.resource_ref();
    let mut services = vec![service(&meta.name, ns, None, target_port, &source)];
    let mut synthesized = BTreeSet::new();
    let mut weighted = Vec::new();
    let mut tables = Vec::new();
    let mut tag_rules = Vec::new();
    let mut tags = BTreeSet::new();
    let mut sum = 0;
    for (i, t) in traffic.iter().enumerate() {
        let f = format!("spec.traffic[{i}]");
        let latest = t.latest_revision == Some(true);
        let (backend, selector) = match (&t.revision_name, latest, &t.configuration_name) {
            (Some(_), true, _) => {
                errors.push(FieldError::new(
                    format!("{f}.revisionName"),
                    "revisionName and latestRevision: true are mutually exclusive",
                ));
                continue;
            }
            (Some(rev), false, _) => (rev.clone(), ("serving.knative.dev/revision", rev.clone())),
            (None, _, Some(config)) => (
                format!("{config}-latest"),
                ("serving.knative.dev/configuration", config.clone()),
            ),
            (None, true, None) if is_ksvc => (
                format!("{}-latest", meta.name),
                ("serving.knative.dev/configuration", meta.name.clone()),
            ),
            (None, _, None) => {
                errors.push(FieldError::new(
                    f.clone(),
                    "one of revisionName, configurationName or latestRevision is required",
                ));
                continue;
            }
        };
        let percent = t.percent.unwrap_or(0);
        if !(0..=100).contains(&percent) {
            errors.push(FieldError::new(
                format!("{f}.percent"),
                format!("{percent} is not in 0-100"),
            ));
        }
        sum += percent;
        if synthesized.insert(backend.clone()) {
            let labels = Labels::from([(selector.0.to_string(), selector.1)]);
            services.push(service(&backend, ns, Some(labels), target_port, &source));
        }
        let destination = Destination {
            host: service_fqdn(&backend, ns),
            subset: None,
            port: Some(ROUTE_PORT),
        };
        let revision = t.revision_name.as_deref();
        if let Some(tag) = &t.tag {
            if !tags.insert(tag.clone()) {
                errors.push(FieldError::new(
                    format!("{f}.tag"),
                    format!("duplicate tag {tag:?}"),
                ));
            }
            let tag_host = format!("{tag}-{}", meta.name);
            services.push(service(&tag_host, ns, None, target_port, &source));
            let http = rules(vec![split(destination.clone(), 100, revision, ns)]);
            tables.push(table(
                service_fqdn(&tag_host, ns),
                ns,
                http.clone(),
                &source,
            ));
            tag_rules.push((tag.clone(), http));
        }
        if percent > 0 {
            weighted.push(split(destination, percent as u32, revision, ns));
        }
    }
    if sum != 100 {
        errors.push(FieldError::new(
            "spec.traffic",
            format!("percents sum to {sum}, must be 100"),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let http = rules(weighted);
    tables.insert(
        0,
        table(service_fqdn(&meta.name, ns), ns, http.clone(), &source),
    );
    Ok(TrafficResource {
        services,
        tables,
        route: KnativeRoute {
            name: meta.name.clone(),
            namespace: ns.to_string(),
            labels: meta.labels.clone(),
            http,
            tags: tag_rules,
            source,
        },
    })
}

/// One catch-all rule to the split, without retries (net-istio's `retries: {}`: Knative's
/// activator and queue-proxy decide about retrying, not the mesh).
fn rules(split: Vec<WeightedDestination>) -> Vec<HttpRoute> {
    vec![HttpRoute {
        action: RouteAction::Forward(split),
        retries: Some(RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            retry_on: None,
            retry_remote_localities: false,
        }),
        ..HttpRoute::default()
    }]
}

fn table(host: String, ns: &str, http: Vec<HttpRoute>, source: &ResourceRef) -> RouteTable {
    RouteTable {
        hosts: vec![host],
        namespace: ns.to_string(),
        export_to: Vec::new(),
        port: None,
        section: None,
        gateways: Vec::new(),
        tls: Vec::new(),
        http,
        tcp: Vec::new(),
        source: source.clone(),
    }
}

impl MeshResource for TrafficResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        for s in &self.services {
            model
                .services
                .entry(s.hostname.clone())
                .or_insert_with(|| s.clone());
        }
        model.routes.extend(self.tables.iter().cloned());
        model.knative.routes.push(self.route.clone());
    }
}

// === after translation ===

/// Once every resource is in `model`: add the external hosts' gateway tables of the Knative
/// routes (and Knative's ingress Gateway when none is configured), then give way to
/// VirtualServices routing the same hosts. Returns the overlaps found.
pub fn finish(model: &mut MeshModel) -> Vec<ConfigWarning> {
    let gateway_ref = format!("{KNATIVE_NAMESPACE}/{INGRESS_GATEWAY}");
    let routes = std::mem::take(&mut model.knative.routes);
    let mut external = false;
    for r in &routes {
        let Some(domain) = domain_for(model.knative.domains.as_deref(), &r.labels) else {
            continue;
        };
        if domain == CLUSTER_LOCAL_DOMAIN {
            continue;
        }
        external = true;
        let hosts = std::iter::once((r.name.clone(), r.http.clone())).chain(
            r.tags
                .iter()
                .map(|(tag, http)| (format!("{tag}-{}", r.name), http.clone())),
        );
        for (name, http) in hosts {
            let mut t = table(
                format!("{name}.{}.{domain}", r.namespace),
                &r.namespace,
                http,
                &r.source,
            );
            t.gateways = vec![gateway_ref.clone()];
            model.routes.push(t);
        }
    }
    let has_gateway = model
        .gateways
        .iter()
        .any(|g| g.namespace == KNATIVE_NAMESPACE && g.name == INGRESS_GATEWAY);
    if external && !has_gateway {
        model.gateways.push(default_ingress_gateway());
    }
    let warnings = give_way_to_virtual_services(model, &routes);
    model.knative.routes = routes;
    warnings
}

/// The `knative-ingress-gateway` net-istio installs (config/202-gateway.yaml): the Istio
/// ingress gateway's pods, plain HTTP on port 80 for every host.
fn default_ingress_gateway() -> Gateway {
    Gateway {
        name: INGRESS_GATEWAY.into(),
        namespace: KNATIVE_NAMESPACE.into(),
        selector: Labels::from([("istio".to_string(), "ingressgateway".to_string())]),
        namespace_scoped: false,
        servers: vec![GatewayServer {
            port: 80,
            port_name: "http".into(),
            protocol: Protocol::Http,
            bind: None,
            hosts: vec![GatewayHost {
                namespace: None,
                host: "*".into(),
            }],
            tls: None,
        }],
        source: ResourceRef {
            kind: "Gateway".into(),
            namespace: KNATIVE_NAMESPACE.into(),
            name: INGRESS_GATEWAY.into(),
        },
    }
}

/// Drop the tables of Knative routes whose host a VirtualService also routes: with net-istio
/// installed its VirtualServices carry what Knative asked for (probe route, headers, the
/// cluster-local gateway), and Istio reads only those.
fn give_way_to_virtual_services(
    model: &mut MeshModel,
    routes: &[KnativeRoute],
) -> Vec<ConfigWarning> {
    let knative: BTreeSet<&ResourceRef> = routes.iter().map(|r| &r.source).collect();
    let routed: BTreeMap<String, ResourceRef> = model
        .routes
        .iter()
        .filter(|t| t.source.kind == "VirtualService")
        .flat_map(|t| {
            t.hosts
                .iter()
                .map(|h| (h.to_ascii_lowercase(), t.source.clone()))
        })
        .collect();
    let mut warnings = Vec::new();
    model.routes.retain(|t| {
        if !knative.contains(&t.source) {
            return true;
        }
        let Some((host, vs)) = t
            .hosts
            .iter()
            .find_map(|h| routed.get(&h.to_ascii_lowercase()).map(|vs| (h, vs)))
        else {
            return true;
        };
        warnings.push(ConfigWarning {
            // `Knative Service`: not the Kubernetes Service of the same name.
            resource: ResourceRef {
                kind: format!("Knative {}", t.source.kind),
                ..t.source.clone()
            },
            message: format!(
                "host {host} is also routed by {vs}; the VirtualService is used (as Istio, \
                 which does not read Knative objects: net-istio's resources win)"
            ),
        });
        false
    });
    warnings
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::store::{ApplyReport, ConfigStore};

    const KSVC: &str = "apiVersion: serving.knative.dev/v1\nkind: Service\n\
        metadata: {name: myapp, namespace: default}\n\
        spec:\n  traffic:\n  - {revisionName: myapp-00001, percent: 50}\n\
        \x20 - {revisionName: myapp-00002, percent: 50, tag: v2}\n";

    fn apply(files: &[(&str, &str)]) -> (ApplyReport, std::sync::Arc<MeshModel>) {
        let mut store = ConfigStore::default();
        let report = store.apply_files(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect(),
        );
        (report, store.model())
    }

    fn tables<'a>(model: &'a MeshModel, host: &str) -> Vec<&'a RouteTable> {
        model
            .routes
            .iter()
            .filter(|t| t.hosts.iter().any(|h| h == host))
            .collect()
    }

    #[test]
    fn external_url_is_bound_to_knatives_gateway_and_mesh_names_stay_on_the_mesh() {
        let (report, model) = apply(&[("ksvc.yaml", KSVC)]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let mesh = tables(&model, "myapp.default.svc.cluster.local");
        assert_eq!(mesh.len(), 1);
        assert!(mesh[0].applies_to_mesh());
        let ext = tables(&model, "myapp.default.example.com");
        assert_eq!(ext.len(), 1);
        assert!(!ext[0].applies_to_mesh());
        assert!(ext[0].applies_to_gateway(KNATIVE_NAMESPACE, INGRESS_GATEWAY));
        // The same split, with Knative's revision headers and no retries.
        assert_eq!(ext[0].http, mesh[0].http);
        let RouteAction::Forward(split) = &ext[0].http[0].action else {
            panic!("not a forward");
        };
        let weights: Vec<_> = split
            .iter()
            .map(|d| (d.destination.host.as_str(), d.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("myapp-00001.default.svc.cluster.local", 50),
                ("myapp-00002.default.svc.cluster.local", 50)
            ]
        );
        assert_eq!(
            split[1].headers.request.set,
            [
                (REVISION_HEADER.to_string(), "myapp-00002".to_string()),
                (NAMESPACE_HEADER.to_string(), "default".to_string())
            ]
        );
        assert_eq!(ext[0].http[0].retries.as_ref().map(|r| r.attempts), Some(0));
        // The tag's external host too.
        assert_eq!(tables(&model, "v2-myapp.default.example.com").len(), 1);
        // No knative-ingress-gateway configured: the one net-istio installs.
        let gw: Vec<_> = model
            .gateways
            .iter()
            .filter(|g| g.name == INGRESS_GATEWAY)
            .collect();
        assert_eq!(gw.len(), 1);
        assert_eq!(gw[0].servers[0].port, 80);
        assert_eq!(
            gw[0].selector.get("istio").map(String::as_str),
            Some("ingressgateway")
        );
    }

    #[test]
    fn a_configured_knative_ingress_gateway_is_used_as_it_is() {
        let gw = "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\n\
            metadata: {name: knative-ingress-gateway, namespace: knative-serving}\n\
            spec:\n  selector: {istio: ingressgateway}\n  servers:\n\
            \x20 - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: ['*']\n";
        let (report, model) = apply(&[("ksvc.yaml", KSVC), ("gw.yaml", gw)]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let ports: Vec<u16> = model
            .gateways
            .iter()
            .flat_map(|g| g.servers.iter().map(|s| s.port))
            .collect();
        assert_eq!(ports, [8080]);
    }

    #[test]
    fn config_domain_selectors_and_cluster_local_visibility() {
        let cm = "apiVersion: v1\nkind: ConfigMap\n\
            metadata: {name: config-domain, namespace: knative-serving}\n\
            data:\n  _example: 'documentation'\n  apps.example.org: ''\n\
            \x20 shop.example.org: |\n    selector:\n      app: shop\n";
        let route = |name: &str, labels: &str| {
            format!(
                "apiVersion: serving.knative.dev/v1\nkind: Route\n\
                 metadata: {{name: {name}, namespace: prod, labels: {{{labels}}}}}\n\
                 spec:\n  traffic:\n  - {{revisionName: {name}-1, percent: 100}}\n"
            )
        };
        let (report, model) = apply(&[
            ("cm.yaml", cm),
            ("a.yaml", &route("web", "")),
            ("b.yaml", &route("cart", "app: shop")),
            (
                "c.yaml",
                &route(
                    "internal",
                    "networking.knative.dev/visibility: cluster-local",
                ),
            ),
        ]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(tables(&model, "web.prod.apps.example.org").len(), 1);
        assert_eq!(tables(&model, "cart.prod.shop.example.org").len(), 1);
        assert_eq!(tables(&model, "internal.prod.svc.cluster.local").len(), 1);
        let gateway_hosts: Vec<&String> = model
            .routes
            .iter()
            .filter(|t| !t.applies_to_mesh())
            .flat_map(|t| &t.hosts)
            .collect();
        assert_eq!(
            gateway_hosts,
            ["web.prod.apps.example.org", "cart.prod.shop.example.org"]
        );
        // A domain that is not one is refused with its key.
        let bad = "apiVersion: v1\nkind: ConfigMap\n\
            metadata: {name: config-domain, namespace: knative-serving}\n\
            data:\n  'bad_domain.com': ''\n";
        let (report, _) = apply(&[("cm.yaml", bad)]);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].field, "data.bad_domain.com");
    }

    #[test]
    fn net_istio_virtual_services_win_and_the_overlap_is_reported() {
        // net-istio's mesh VirtualService for the same route (shape of MakeMeshVirtualService).
        let vs = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n\
            metadata: {name: myapp-mesh, namespace: default}\n\
            spec:\n  gateways: [mesh]\n\
            \x20 hosts: [myapp.default, myapp.default.svc, myapp.default.svc.cluster.local]\n\
            \x20 http:\n  - match:\n    - authority: {prefix: myapp.default}\n      gateways: [mesh]\n\
            \x20   retries: {}\n    route:\n\
            \x20   - destination: {host: myapp-00001.default.svc.cluster.local, port: {number: 80}}\n\
            \x20     weight: 100\n";
        let (report, model) = apply(&[("ksvc.yaml", KSVC), ("vs.yaml", vs)]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mesh = tables(&model, "myapp.default.svc.cluster.local");
        assert_eq!(mesh.len(), 1);
        assert_eq!(mesh[0].source.kind, "VirtualService");
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        let w = report.warnings[0].to_string();
        assert!(
            w.contains("Knative Service default/myapp")
                && w.contains("myapp.default.svc.cluster.local")
                && w.contains("VirtualService default/myapp-mesh"),
            "{w}"
        );
        // Hosts no VirtualService routes keep Knative's own rules.
        assert_eq!(tables(&model, "myapp.default.example.com").len(), 1);
    }
}
