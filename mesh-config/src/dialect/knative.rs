//! Knative Serving (`serving.knative.dev/v1`) Route and Service traffic blocks.
//!
//! A revision is the set of pods labelled `serving.knative.dev/revision=<name>`; as Knative
//! itself does, each referenced revision gets a Service of its own name (port 80 → the
//! container port). The route's host `<route>.<ns>.svc.cluster.local` splits by `percent`
//! across them, and every `tag` gets its own host `<tag>-<route>.<ns>.svc.cluster.local`.
//!
//! `latestRevision: true` (or a bare `configurationName`) cannot be resolved from static
//! files — Knative knows the latest ready revision from status — so it targets every pod of
//! the configuration (`serving.knative.dev/configuration=<name>`) through a service named
//! `<configuration>-latest`. That is the one approximation of this dialect.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::kube::port_number;
use super::{Accepted, Document, FieldError, MeshResource, Meta, ParseResult, deserialize};
use crate::model::*;

/// Knative's default user container port.
const DEFAULT_CONTAINER_PORT: u16 = 8080;
const ROUTE_PORT: u16 = 80;

pub fn parse(doc: &Document<'_>) -> ParseResult {
    if doc.meta.group() != "serving.knative.dev" {
        return None;
    }
    Some(match doc.meta.kind.as_str() {
        "Route" | "Service" => parse_traffic(doc).map(|r| Box::new(r) as Box<dyn MeshResource>),
        _ => Ok(Box::new(Accepted) as Box<dyn MeshResource>),
    })
}

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
        if let Some(tag) = &t.tag {
            if !tags.insert(tag.clone()) {
                errors.push(FieldError::new(
                    format!("{f}.tag"),
                    format!("duplicate tag {tag:?}"),
                ));
            }
            let tag_host = format!("{tag}-{}", meta.name);
            services.push(service(&tag_host, ns, None, target_port, &source));
            tables.push(table(
                service_fqdn(&tag_host, ns),
                ns,
                vec![(destination.clone(), 100)],
                &source,
            ));
        }
        if percent > 0 {
            weighted.push((destination, percent as u32));
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
    tables.insert(
        0,
        table(service_fqdn(&meta.name, ns), ns, weighted, &source),
    );
    Ok(TrafficResource { services, tables })
}

fn table(
    host: String,
    ns: &str,
    dests: Vec<(Destination, u32)>,
    source: &ResourceRef,
) -> RouteTable {
    RouteTable {
        hosts: vec![host],
        namespace: ns.to_string(),
        export_to: Vec::new(),
        port: None,
        gateways: Vec::new(),
        tls: Vec::new(),
        http: vec![HttpRoute {
            action: RouteAction::Forward(
                dests
                    .into_iter()
                    .map(|(destination, weight)| WeightedDestination {
                        destination,
                        weight,
                        headers: HeaderOperations::default(),
                    })
                    .collect(),
            ),
            ..HttpRoute::default()
        }],
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
    }
}
