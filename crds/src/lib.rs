//! The CustomResourceDefinitions of the Istio kinds Mast reads.
//!
//! A cluster without Istio has no `networking.istio.io` or `security.istio.io` API, so the
//! VirtualServices and PeerAuthentications users already have would not apply. Mast ships
//! these CRDs itself, generated from the Rust spec types in [`networking`] and [`security`]
//! with schemars, so the schema the API server enforces can never drift from the types.
//! Group, names, short names, categories, served versions and printer columns are Istio's, so
//! the same YAML and the same `kubectl get vs` work; a cluster that already has Istio's CRDs
//! does not need these (they describe the same resources).
//!
//! The API server only accepts *structural* schemas (every node typed, no `$ref`, no
//! `additionalProperties` next to `properties`…), which is not what schemars emits:
//! [`structural`] rewrites it.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

pub mod networking;
pub mod security;
pub mod structural;

/// An object kept as given: a sub-API of Istio that Mast does not act on. Its schema is an
/// object with `x-kubernetes-preserve-unknown-fields`, so valid Istio YAML is never refused
/// for a feature Mast merely ignores.
pub type Open = Map<String, Value>;

/// Errors rendering the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot render the CRDs as YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser_error::Error),
}

/// A printer column of `kubectl get`.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub type_: &'static str,
    pub json_path: &'static str,
    pub description: &'static str,
}

/// One custom resource kind: its names as Istio spells them and its spec type's schema.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Served versions; the first is the storage version.
    pub versions: &'static [&'static str],
    pub columns: &'static [Column],
    /// Whether `spec` is required at the top level (as Istio: ServiceEntry, WorkloadEntry and
    /// WorkloadGroup).
    pub spec_required: bool,
    spec_schema: fn() -> Value,
}

const NETWORKING: &str = "networking.istio.io";
const SECURITY: &str = "security.istio.io";
const NETWORKING_CATEGORIES: &[&str] = &["istio-io", "networking-istio-io"];
const SECURITY_CATEGORIES: &[&str] = &["istio-io", "security-istio-io"];
const NETWORKING_VERSIONS: &[&str] = &["v1", "v1alpha3", "v1beta1"];
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];

const AGE: Column = Column {
    name: "Age",
    type_: "date",
    json_path: ".metadata.creationTimestamp",
    description: "Time since the resource was created.",
};

/// Every kind Mast ships a CRD for, in a stable order.
pub const KINDS: &[Kind] = &[
    Kind {
        group: NETWORKING,
        kind: "VirtualService",
        plural: "virtualservices",
        short_names: &["vs"],
        categories: NETWORKING_CATEGORIES,
        versions: NETWORKING_VERSIONS,
        columns: &[
            Column {
                name: "Gateways",
                type_: "string",
                json_path: ".spec.gateways",
                description: "The gateways and sidecars that apply these routes.",
            },
            Column {
                name: "Hosts",
                type_: "string",
                json_path: ".spec.hosts",
                description: "The destination hosts to which traffic is being sent.",
            },
            AGE,
        ],
        spec_required: false,
        spec_schema: schema_of::<networking::VirtualServiceSpec>,
    },
    Kind {
        group: NETWORKING,
        kind: "DestinationRule",
        plural: "destinationrules",
        short_names: &["dr"],
        categories: NETWORKING_CATEGORIES,
        versions: NETWORKING_VERSIONS,
        columns: &[
            Column {
                name: "Host",
                type_: "string",
                json_path: ".spec.host",
                description: "The name of a service from the service registry.",
            },
            AGE,
        ],
        spec_required: false,
        spec_schema: schema_of::<networking::DestinationRuleSpec>,
    },
    Kind {
        group: NETWORKING,
        kind: "ServiceEntry",
        plural: "serviceentries",
        short_names: &["se"],
        categories: NETWORKING_CATEGORIES,
        versions: NETWORKING_VERSIONS,
        columns: &[
            Column {
                name: "Hosts",
                type_: "string",
                json_path: ".spec.hosts",
                description: "The hosts associated with the ServiceEntry.",
            },
            Column {
                name: "Location",
                type_: "string",
                json_path: ".spec.location",
                description: "Whether the service is external to the mesh or part of it.",
            },
            Column {
                name: "Resolution",
                type_: "string",
                json_path: ".spec.resolution",
                description: "How the endpoints of the service are found.",
            },
            AGE,
        ],
        spec_required: true,
        spec_schema: schema_of::<networking::ServiceEntrySpec>,
    },
    Kind {
        group: NETWORKING,
        kind: "WorkloadEntry",
        plural: "workloadentries",
        short_names: &["we"],
        categories: NETWORKING_CATEGORIES,
        versions: NETWORKING_VERSIONS,
        columns: &[
            AGE,
            Column {
                name: "Address",
                type_: "string",
                json_path: ".spec.address",
                description: "Address of the workload.",
            },
        ],
        spec_required: true,
        spec_schema: schema_of::<networking::WorkloadEntrySpec>,
    },
    Kind {
        group: NETWORKING,
        kind: "WorkloadGroup",
        plural: "workloadgroups",
        short_names: &["wg"],
        categories: NETWORKING_CATEGORIES,
        versions: NETWORKING_VERSIONS,
        columns: &[AGE],
        spec_required: true,
        spec_schema: schema_of::<networking::WorkloadGroupSpec>,
    },
    Kind {
        group: NETWORKING,
        kind: "Sidecar",
        plural: "sidecars",
        short_names: &[],
        categories: NETWORKING_CATEGORIES,
        versions: NETWORKING_VERSIONS,
        columns: &[],
        spec_required: false,
        spec_schema: schema_of::<networking::SidecarSpec>,
    },
    Kind {
        group: NETWORKING,
        kind: "Gateway",
        plural: "gateways",
        short_names: &["gw"],
        categories: NETWORKING_CATEGORIES,
        versions: NETWORKING_VERSIONS,
        columns: &[],
        spec_required: false,
        spec_schema: schema_of::<networking::GatewaySpec>,
    },
    Kind {
        group: SECURITY,
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        short_names: &["pa"],
        categories: SECURITY_CATEGORIES,
        versions: SECURITY_VERSIONS,
        columns: &[
            Column {
                name: "Mode",
                type_: "string",
                json_path: ".spec.mtls.mode",
                description: "The mTLS mode the workloads accept.",
            },
            AGE,
        ],
        spec_required: false,
        spec_schema: schema_of::<security::PeerAuthenticationSpec>,
    },
    Kind {
        group: SECURITY,
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        categories: SECURITY_CATEGORIES,
        versions: SECURITY_VERSIONS,
        columns: &[
            Column {
                name: "Action",
                type_: "string",
                json_path: ".spec.action",
                description: "The action to take when a rule matches.",
            },
            AGE,
        ],
        spec_required: false,
        spec_schema: schema_of::<security::AuthorizationPolicySpec>,
    },
    Kind {
        group: SECURITY,
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        short_names: &["ra"],
        categories: SECURITY_CATEGORIES,
        versions: SECURITY_VERSIONS,
        columns: &[],
        spec_required: false,
        spec_schema: schema_of::<security::RequestAuthenticationSpec>,
    },
];

// === impl Kind ===

impl Kind {
    /// `<plural>.<group>`, the CRD's object name.
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// The structural schema of `spec`.
    pub fn spec_schema(&self) -> Value {
        (self.spec_schema)()
    }

    /// The whole object's `openAPIV3Schema` (spec and status; the API server itself checks
    /// apiVersion, kind and metadata).
    pub fn open_api_v3_schema(&self) -> Value {
        let mut schema = json!({
            "type": "object",
            "description": format!(
                "Istio's {} ({}), as read by Mast.",
                self.kind, self.group
            ),
            "properties": {
                "spec": self.spec_schema(),
                "status": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                },
            },
        });
        if self.spec_required {
            schema["required"] = json!(["spec"]);
        }
        schema
    }

    /// The apiextensions.k8s.io/v1 CustomResourceDefinition, keys sorted.
    pub fn crd(&self) -> Value {
        let schema = self.open_api_v3_schema();
        let columns: Vec<Value> = self
            .columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.type_,
                    "jsonPath": c.json_path,
                    "description": c.description,
                })
            })
            .collect();
        let versions: Vec<Value> = self
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut version = json!({
                    "name": v,
                    "served": true,
                    "storage": i == 0,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                });
                if !columns.is_empty() {
                    version["additionalPrinterColumns"] = json!(columns);
                }
                version
            })
            .collect();
        let mut names = json!({
            "kind": self.kind,
            "listKind": format!("{}List", self.kind),
            "plural": self.plural,
            "singular": self.kind.to_ascii_lowercase(),
            "categories": self.categories,
        });
        if !self.short_names.is_empty() {
            names["shortNames"] = json!(self.short_names);
        }
        sorted(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": self.crd_name(),
                "labels": {
                    "app.kubernetes.io/part-of": "mast",
                    "app.kubernetes.io/component": "crds",
                },
            },
            "spec": {
                "group": self.group,
                "names": names,
                "scope": "Namespaced",
                "versions": versions,
            },
        }))
    }
}

/// Every CRD, as JSON values (keys sorted), in [`KINDS`] order.
pub fn crds() -> Vec<Value> {
    KINDS.iter().map(Kind::crd).collect()
}

/// The CRDs as one multi-document YAML stream: the content of `manifests/install/crds.yaml`.
pub fn crds_yaml() -> Result<String, Error> {
    let mut out = String::from(CRDS_HEADER);
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

const CRDS_HEADER: &str = "\
# Generated by `mastctl manifest generate --crds` from the Rust types in crds/ — do not edit.
# Regenerate: cargo run -p mastctl -- manifest generate --crds > manifests/install/crds.yaml
#
# The Istio kinds Mast reads (networking.istio.io, security.istio.io), with Istio's names and
# served versions, so Istio YAML applies unchanged. On a cluster that already has Istio's CRDs,
# skip this file: those describe the same resources.
";

/// The structural schema of a spec type.
fn schema_of<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft07()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let schema = generator.into_root_schema_for::<T>().to_value();
    sorted(structural::structural(schema))
}

/// The same value with every object's keys inserted in sorted order, so the output is the
/// same whether or not serde_json keeps insertion order (a feature another crate in the
/// build may turn on).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests;
