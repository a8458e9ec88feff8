//! `mastctl manifest generate`: print what installs Mast on Kubernetes, as `istioctl manifest
//! generate` does, so it can be reviewed, diffed or piped to `kubectl apply -f -`.
//!
//! The CRDs are generated here from the Rust types (mast-crds), the same function whose output
//! is committed as `manifests/install/crds.yaml`; the install manifests are the committed
//! files, embedded at build time so the binary prints exactly what the repository validates.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

/// The control plane (namespace, RBAC, Deployment, Services, PDB).
const MAST_YAML: &str = include_str!("../../manifests/install/mast.yaml");
/// `istiod.istio-system.svc` → mastd (clusters without Istio).
const ISTIOD_ALIAS_YAML: &str = include_str!("../../manifests/install/istiod-alias.yaml");
/// The sidecar injection webhook; applied last, once mastd can answer it.
const WEBHOOK_YAML: &str = include_str!("../../manifests/install/injector-webhook.yaml");

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the manifests as multi-document YAML (default: everything, CRDs first).
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
#[group(multiple = false)]
pub struct GenerateArgs {
    /// Only the CustomResourceDefinitions (manifests/install/crds.yaml).
    #[arg(long)]
    crds: bool,
    /// Only the control plane: mast.yaml, istiod-alias.yaml and the injection webhook.
    #[arg(long)]
    install: bool,
    /// CRDs and control plane (the default).
    #[arg(long)]
    all: bool,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Command::Generate(g) => {
            let text = generate(g)?;
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The text `generate` prints.
fn generate(args: &GenerateArgs) -> anyhow::Result<String> {
    let everything = args.all || !(args.crds || args.install);
    let mut out = String::new();
    if args.crds || everything {
        out.push_str(&mast_crds::crds_yaml()?);
    }
    if args.install || everything {
        for file in [MAST_YAML, ISTIOD_ALIAS_YAML, WEBHOOK_YAML] {
            if !out.is_empty() {
                out.push_str("---\n");
            }
            out.push_str(file);
            if !file.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(crds: bool, install: bool, all: bool) -> GenerateArgs {
        GenerateArgs { crds, install, all }
    }

    fn docs(text: &str) -> Vec<serde_json::Value> {
        serde_saphyr::from_str_multiple::<serde_json::Value, Vec<_>>(text)
            .unwrap()
            .into_iter()
            .filter(|d| d.is_object())
            .collect()
    }

    fn kinds(text: &str) -> Vec<String> {
        docs(text)
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn crds_are_the_committed_file() {
        let committed = include_str!("../../manifests/install/crds.yaml");
        assert_eq!(generate(&args(true, false, false)).unwrap(), committed);
    }

    #[test]
    fn install_holds_the_control_plane_and_the_webhook_last() {
        let k = kinds(&generate(&args(false, true, false)).unwrap());
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ] {
            assert!(k.iter().any(|x| x == kind), "no {kind} in {k:?}");
        }
        assert_eq!(
            k.last().map(String::as_str),
            Some("MutatingWebhookConfiguration")
        );
        assert!(!k.iter().any(|x| x == "CustomResourceDefinition"));
    }

    #[test]
    fn all_is_the_default_and_puts_crds_first() {
        let default = generate(&args(false, false, false)).unwrap();
        assert_eq!(default, generate(&args(false, false, true)).unwrap());
        let k = kinds(&default);
        assert_eq!(
            k.first().map(String::as_str),
            Some("CustomResourceDefinition")
        );
        assert_eq!(
            k.iter()
                .filter(|x| *x == "CustomResourceDefinition")
                .count(),
            mast_crds::KINDS.len()
        );
    }

    /// The images the install and the Kubernetes sample name are this release's.
    #[test]
    fn image_tags_are_the_workspace_version() {
        let samples = include_str!("../../manifests/samples/kubernetes/todolist.yaml");
        let version = env!("CARGO_PKG_VERSION");
        let mut seen = 0;
        for text in [MAST_YAML, samples] {
            for line in text.lines() {
                if let Some(at) = line.find("ghcr.io/mast-mesh/") {
                    let image = line[at..].trim_end_matches(['"', '}', ' ']);
                    assert!(
                        image.ends_with(&format!(":{version}")),
                        "{image} is not tagged {version}"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 3, "only {seen} images found");
    }

    /// The Deployment runs mastd in Kubernetes mode on the ports of ARCHITECTURE.md.
    #[test]
    fn mastd_deployment_ports_and_probe() {
        let all = docs(MAST_YAML);
        let deploy = all
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
        assert_eq!(deploy["spec"]["replicas"], 2);
        let c = &deploy["spec"]["template"]["spec"]["containers"][0];
        assert!(c["args"].as_array().unwrap().contains(&"--kube".into()));
        let ports: Vec<(i64, &str)> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["containerPort"].as_i64().unwrap(),
                    p["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                (15010, "grpc-xds"),
                (15012, "https-dds"),
                (15014, "http-monitoring"),
                (15017, "https-webhook"),
                (20001, "http-web"),
            ]
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15014);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        // The webhook's Service port 443 reaches the injector.
        let svc = all
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "mastd")
            .expect("the mastd Service");
        let webhook = docs(WEBHOOK_YAML);
        let port = &webhook[0]["webhooks"][0]["clientConfig"]["service"]["port"];
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| &p["port"] == port && p["targetPort"] == "https-webhook")
        );
    }
}
