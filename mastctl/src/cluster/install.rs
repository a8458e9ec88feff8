//! `mastctl install` and `mastctl uninstall`, as istioctl's: what `mastctl manifest generate`
//! prints, written to the cluster, and taken away again.
//!
//! Install uses server-side apply (field manager `mastctl`, forced), one document at a time,
//! so re-running it is a no-op, it takes over fields an earlier `kubectl apply` set, and it
//! needs no last-applied annotation (the CRDs are too large for one). CRDs go first and must
//! be Established before the rest, as a kind is only served once its CRD is. Each document's
//! apiVersion/kind is mapped to its resource by discovery, as kubectl does, so nothing here
//! hard-codes plurals or scopes.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde_json::Value;

use super::KubeArgs;
use crate::manifest::{self, GenerateArgs};

/// The field manager of every apply (what `kubectl get -o yaml --show-managed-fields` shows).
pub const FIELD_MANAGER: &str = "mastctl";

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    manifest: GenerateArgs,
    /// Send every object with dryRun=All: the API server validates and admits it but stores
    /// nothing (CRDs are then not waited for).
    #[arg(long)]
    dry_run: bool,
    /// After applying, wait until every Deployment has all its replicas available.
    #[arg(long)]
    wait: bool,
    /// How long to wait for each CRD to be Established, and with --wait for the rollout.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// Delete the CustomResourceDefinitions too. This deletes every resource of those kinds
    /// in the cluster (every VirtualService, DestinationRule, … users wrote), not only Mast's;
    /// without it the CRDs are kept.
    #[arg(long)]
    purge: bool,
    /// Send every delete with dryRun=All: nothing is deleted.
    #[arg(long)]
    dry_run: bool,
}

/// What [`install`] does besides applying.
#[derive(Clone, Copy, Debug)]
pub struct InstallOptions {
    pub dry_run: bool,
    pub wait: bool,
    pub timeout: Duration,
    /// How often a wait looks again.
    pub poll: Duration,
}

/// One manifest document, with what locating it on the server needs.
#[derive(Clone, Debug)]
struct Document {
    object: Value,
    gvk: GroupVersionKind,
    name: String,
    namespace: Option<String>,
}

/// The discovery answers so far: one request per group/version, not per document.
#[derive(Default)]
struct Resources {
    known: HashMap<(String, String, String), (ApiResource, ApiCapabilities)>,
}

// === the commands ===

pub fn run_install(args: &InstallArgs) -> anyhow::Result<()> {
    let text = manifest::generate(&args.manifest)?;
    let options = InstallOptions {
        dry_run: args.dry_run,
        wait: args.wait,
        timeout: Duration::from_secs(args.timeout),
        poll: Duration::from_millis(500),
    };
    super::runtime()?.block_on(async {
        let client = args.kube.client().await?;
        install(&client, &text, options, &mut std::io::stdout()).await
    })
}

pub fn run_uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    // Everything install may have applied, whatever subset it was told.
    let text = manifest::generate(&GenerateArgs::default())?;
    super::runtime()?.block_on(async {
        let client = args.kube.client().await?;
        uninstall(
            &client,
            &text,
            args.purge,
            args.dry_run,
            &mut std::io::stdout(),
        )
        .await
    })
}

/// Apply every document of `text`: CRDs first, waiting until each is Established, then the
/// rest in order. Prints one line per object.
pub async fn install(
    client: &kube::Client,
    text: &str,
    options: InstallOptions,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let documents = documents(text)?;
    let (crds, rest): (Vec<_>, Vec<_>) = documents.into_iter().partition(is_crd);
    let mut resources = Resources::default();
    let suffix = if options.dry_run {
        " (server dry run)"
    } else {
        ""
    };
    for doc in &crds {
        apply(client, &mut resources, doc, options.dry_run).await?;
        writeln!(out, "{} applied{suffix}", doc.describe())?;
    }
    if !options.dry_run {
        for doc in &crds {
            wait_established(client, &doc.name, options).await?;
        }
    }
    for doc in &rest {
        apply(client, &mut resources, doc, options.dry_run).await?;
        writeln!(out, "{} applied{suffix}", doc.describe())?;
    }
    if options.wait && !options.dry_run {
        for doc in rest.iter().filter(|d| d.gvk.kind == "Deployment") {
            let available = wait_rollout(client, doc, options).await?;
            writeln!(out, "{} rolled out ({available} available)", doc.describe())?;
        }
    }
    Ok(())
}

/// Delete every document of `text` in reverse order; CRDs only with `purge`. An object that
/// is already gone is reported, not an error.
pub async fn uninstall(
    client: &kube::Client,
    text: &str,
    purge: bool,
    dry_run: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut resources = Resources::default();
    let params = DeleteParams {
        dry_run,
        ..DeleteParams::default()
    };
    let suffix = if dry_run { " (server dry run)" } else { "" };
    for doc in documents(text)?.iter().rev() {
        if is_crd(doc) && !purge {
            writeln!(out, "{} kept (--purge deletes it)", doc.describe())?;
            continue;
        }
        let api = match resources.api(client, doc).await {
            Ok(api) => api,
            // A kind the server does not serve (its CRD is gone) has no objects.
            Err(e) if is_not_served(&e) => {
                writeln!(out, "{} not found", doc.describe())?;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("{}: discovery", doc.describe())),
        };
        match api.delete(&doc.name, &params).await {
            Ok(_) => writeln!(out, "{} deleted{suffix}", doc.describe())?,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                writeln!(out, "{} not found", doc.describe())?;
            }
            Err(e) => return Err(e).with_context(|| format!("deleting {}", doc.describe())),
        }
    }
    Ok(())
}

// === the steps ===

/// Server-side apply of one document.
async fn apply(
    client: &kube::Client,
    resources: &mut Resources,
    doc: &Document,
    dry_run: bool,
) -> anyhow::Result<()> {
    let api = resources
        .api(client, doc)
        .await
        .with_context(|| format!("{}: the cluster does not serve its kind", doc.describe()))?;
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    api.patch(&doc.name, &params, &Patch::Apply(&doc.object))
        .await
        .with_context(|| format!("applying {}", doc.describe()))?;
    Ok(())
}

/// Wait until the CRD `name` has the condition Established=True.
async fn wait_established(
    client: &kube::Client,
    name: &str,
    options: InstallOptions,
) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let established = |crd: &CustomResourceDefinition| {
        crd.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    };
    let deadline = tokio::time::Instant::now() + options.timeout;
    loop {
        let crd = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading CustomResourceDefinition {name}"))?;
        if crd.as_ref().is_some_and(established) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "CustomResourceDefinition {name} is not Established after {} s (see `kubectl \
                 get crd {name} -o yaml`, status.conditions); nothing after the CRDs was applied",
                options.timeout.as_secs()
            );
        }
        tokio::time::sleep(options.poll).await;
    }
}

/// Wait until a Deployment's current generation has all its replicas available; returns
/// `available/wanted`.
async fn wait_rollout(
    client: &kube::Client,
    doc: &Document,
    options: InstallOptions,
) -> anyhow::Result<String> {
    let namespace = doc
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &namespace);
    let deadline = tokio::time::Instant::now() + options.timeout;
    loop {
        let d = api
            .get(&doc.name)
            .await
            .with_context(|| format!("reading {}", doc.describe()))?;
        let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.unwrap_or_default();
        let observed =
            status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
        let available = status.available_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        if observed && available >= wanted && updated >= wanted {
            return Ok(format!("{available}/{wanted}"));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} in {namespace}: {available}/{wanted} replicas available, {updated} updated \
                 after {} s (see `kubectl -n {namespace} describe deployment {}`)",
                doc.describe(),
                options.timeout.as_secs(),
                doc.name
            );
        }
        tokio::time::sleep(options.poll).await;
    }
}

// === impl Resources ===

impl Resources {
    /// The dynamic API of a document's kind, in its namespace when the kind is namespaced.
    async fn api(
        &mut self,
        client: &kube::Client,
        doc: &Document,
    ) -> Result<Api<DynamicObject>, kube::Error> {
        let key = (
            doc.gvk.group.clone(),
            doc.gvk.version.clone(),
            doc.gvk.kind.clone(),
        );
        let (resource, caps) = match self.known.get(&key) {
            Some(found) => found.clone(),
            None => {
                let found = kube::discovery::pinned_kind(client, &doc.gvk).await?;
                self.known.insert(key, found.clone());
                found
            }
        };
        Ok(match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                let namespace = doc
                    .namespace
                    .as_deref()
                    .unwrap_or_else(|| client.default_namespace());
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
        })
    }
}

fn is_not_served(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 404,
        kube::Error::Discovery(_) => true,
        _ => false,
    }
}

// === impl Document ===

impl Document {
    /// As kubectl names it: `deployment.apps/mastd`, `namespace/mast-system`.
    fn describe(&self) -> String {
        let kind = self.gvk.kind.to_ascii_lowercase();
        if self.gvk.group.is_empty() {
            format!("{kind}/{}", self.name)
        } else {
            format!("{kind}.{}/{}", self.gvk.group, self.name)
        }
    }
}

fn is_crd(doc: &Document) -> bool {
    doc.gvk.group == "apiextensions.k8s.io" && doc.gvk.kind == "CustomResourceDefinition"
}

/// The objects of a multi-document YAML stream, in order (empty documents skipped).
fn documents(text: &str) -> anyhow::Result<Vec<Document>> {
    let values: Vec<Value> =
        serde_saphyr::from_str_multiple(text).context("the generated manifests are not YAML")?;
    let mut out = Vec::new();
    for (index, object) in values.into_iter().enumerate() {
        if object.is_null() {
            continue;
        }
        let field = |f: &str| -> anyhow::Result<String> {
            let v = match f {
                "name" | "namespace" => &object["metadata"][f],
                _ => &object[f],
            };
            v.as_str()
                .map(String::from)
                .with_context(|| format!("manifest document {}: no {f}", index + 1))
        };
        let (api_version, kind, name) = (field("apiVersion")?, field("kind")?, field("name")?);
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        out.push(Document {
            gvk: GroupVersionKind {
                group,
                version,
                kind,
            },
            name,
            namespace: field("namespace").ok(),
            object,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
