//! SMI TrafficSplit (`split.smi-spec.io` v1alpha1–v1alpha4): traffic for a root service is
//! split across backend services by weight. v1alpha1 weights are Kubernetes quantities
//! (`500m`, `1`), later versions integers; both are relative, so they become route weights
//! in thousandths. The SMI spec and access kinds are accepted as they are.

use serde::Deserialize;
use serde_json::Value;

use super::istio::resolve_host;
use super::{Accepted, Document, FieldError, MeshResource, Meta, ParseResult, deserialize};
use crate::model::*;

pub fn parse(doc: &Document<'_>) -> ParseResult {
    match (doc.meta.group(), doc.meta.kind.as_str()) {
        ("split.smi-spec.io", "TrafficSplit") => {
            Some(parse_split(doc).map(|r| Box::new(r) as Box<dyn MeshResource>))
        }
        ("specs.smi-spec.io", _) | ("access.smi-spec.io", _) => {
            Some(Ok(Box::new(Accepted) as Box<dyn MeshResource>))
        }
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
struct SplitDoc {
    spec: SplitSpec,
}

#[derive(Debug, Deserialize)]
struct SplitSpec {
    #[serde(default)]
    service: String,
    #[serde(default)]
    backends: Vec<Backend>,
}

#[derive(Debug, Deserialize)]
struct Backend {
    #[serde(default)]
    service: String,
    weight: Option<Value>,
}

#[derive(Debug)]
struct SplitResource(RouteTable);

/// A Kubernetes quantity (`500m`, `1`, `2k`, `1Ki`) as a number.
pub fn parse_quantity(s: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    let s = s.trim();
    for (suffix, scale) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|v| v * scale);
        }
    }
    s.parse().ok()
}

fn parse_split(doc: &Document<'_>) -> Result<SplitResource, Vec<FieldError>> {
    let split: SplitDoc = deserialize(doc).map_err(|e| vec![e])?;
    let ns = doc.meta.namespace.as_str();
    let mut errors = Vec::new();
    if split.spec.service.is_empty() {
        errors.push(FieldError::new("spec.service", "required"));
    }
    if split.spec.backends.is_empty() {
        errors.push(FieldError::new(
            "spec.backends",
            "at least one backend is required",
        ));
    }
    let mut destinations = Vec::new();
    for (i, b) in split.spec.backends.iter().enumerate() {
        let f = format!("spec.backends[{i}]");
        if b.service.is_empty() {
            errors.push(FieldError::new(format!("{f}.service"), "required"));
        }
        let weight = match &b.weight {
            None => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => parse_quantity(s),
            Some(_) => None,
        };
        let weight = match weight {
            Some(w) if w >= 0.0 => (w * 1000.0).round() as u32,
            _ => {
                errors.push(FieldError::new(
                    format!("{f}.weight"),
                    "must be a non-negative number or quantity",
                ));
                0
            }
        };
        destinations.push(WeightedDestination {
            destination: Destination {
                host: resolve_host(&b.service, ns),
                subset: None,
                port: None,
            },
            weight,
            headers: HeaderOperations::default(),
        });
    }
    if !destinations.is_empty() && destinations.iter().all(|d| d.weight == 0) {
        errors.push(FieldError::new("spec.backends", "the weights sum to 0"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SplitResource(RouteTable {
        hosts: vec![resolve_host(&split.spec.service, ns)],
        namespace: ns.to_string(),
        export_to: Vec::new(),
        port: None,
        section: None,
        gateways: Vec::new(),
        tls: Vec::new(),
        http: vec![HttpRoute {
            action: RouteAction::Forward(destinations.clone()),
            ..HttpRoute::default()
        }],
        tcp: vec![TcpRoute {
            port: None,
            destinations,
        }],
        source: doc.meta.resource_ref(),
    }))
}

impl MeshResource for SplitResource {
    fn translate(&self, _meta: &Meta, model: &mut MeshModel) {
        model.routes.push(self.0.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1"), Some(1.0));
        assert_eq!(parse_quantity("2k"), Some(2000.0));
        assert_eq!(parse_quantity("abc"), None);
    }
}
