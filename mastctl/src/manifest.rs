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
/// istio-ingressgateway and istio-egressgateway, run by mast-proxy as `proxy router`.
const GATEWAYS_YAML: &str = include_str!("../../manifests/install/gateways.yaml");
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

#[derive(Debug, Default, clap::Args)]
#[group(multiple = false)]
pub struct GenerateArgs {
    /// Only the CustomResourceDefinitions (manifests/install/crds.yaml).
    #[arg(long)]
    pub crds: bool,
    /// Only the control plane: mast.yaml, istiod-alias.yaml, the gateways and the injection
    /// webhook.
    #[arg(long)]
    pub install: bool,
    /// CRDs and control plane (the default).
    #[arg(long)]
    pub all: bool,
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

/// The text `generate` prints (and `mastctl install` applies).
pub fn generate(args: &GenerateArgs) -> anyhow::Result<String> {
    let everything = args.all || !(args.crds || args.install);
    let mut out = String::new();
    if args.crds || everything {
        out.push_str(&mast_crds::crds_yaml()?);
    }
    if args.install || everything {
        for file in [MAST_YAML, ISTIOD_ALIAS_YAML, GATEWAYS_YAML, WEBHOOK_YAML] {
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

    /// The committed gateway Deployments are what the injector writes for Istio's `gateway`
    /// template: injecting them again changes nothing, and they run mast-proxy as Istio's
    /// `proxy router`.
    #[test]
    fn gateways_are_the_injectors_gateway_pods() {
        use mast_injector::inject::Settings;
        let deployments: Vec<serde_json::Value> = docs(GATEWAYS_YAML)
            .into_iter()
            .filter(|d| d["kind"] == "Deployment")
            .collect();
        assert_eq!(deployments.len(), 2);
        for d in &deployments {
            let text = serde_saphyr::to_string(d).unwrap();
            let (again, _) =
                mast_injector::kube_inject::inject_yaml(&text, &Settings::default()).unwrap();
            let again: serde_json::Value = serde_saphyr::from_str(&again).unwrap();
            let strip = |mut v: serde_json::Value| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("status");
                }
                v
            };
            assert_eq!(strip(again), strip(d.clone()), "{}", d["metadata"]["name"]);
            let c = &d["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(c["args"][0], "proxy");
            assert_eq!(c["args"][1], "router");
            let version = env!("CARGO_PKG_VERSION");
            assert_eq!(
                c["image"],
                format!("ghcr.io/mast-mesh/mast-proxy:{version}").as_str()
            );
        }
        let services: Vec<serde_json::Value> = docs(GATEWAYS_YAML)
            .into_iter()
            .filter(|d| d["kind"] == "Service")
            .collect();
        assert_eq!(services[0]["metadata"]["name"], "istio-ingressgateway");
        assert_eq!(services[0]["spec"]["type"], "LoadBalancer");
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

    /// The workspace's (package, binary) pairs, read from the members' Cargo.toml files: a
    /// `[[bin]]` table's name, or the package name when `src/main.rs` exists.
    fn workspace_bins() -> Vec<(String, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let members = text
            .split("members = [")
            .nth(1)
            .unwrap()
            .split(']')
            .next()
            .unwrap();
        let name_of = |line: &str| line.split('"').nth(1).map(str::to_string);
        let mut out = Vec::new();
        for member in members.split(',').filter_map(name_of) {
            let dir = root.join(&member);
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let (mut package, mut section) = (String::new(), String::new());
            for line in manifest.lines().map(str::trim) {
                if line.starts_with('[') {
                    section = line.to_string();
                } else if line.starts_with("name =") {
                    let name = name_of(line).unwrap();
                    match section.as_str() {
                        "[package]" => package = name,
                        "[[bin]]" => out.push((package.clone(), name)),
                        _ => {}
                    }
                }
            }
            if dir.join("src/main.rs").exists() {
                out.push((package.clone(), package));
            }
        }
        out
    }

    /// What the Dockerfiles build exists in the workspace, what they copy is what they built,
    /// and the images are the ones the manifests name. (They cannot be built here: no
    /// registry access for base images.)
    #[test]
    fn dockerfiles_build_workspace_binaries() {
        let bins = workspace_bins();
        let docker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker");
        let mut images = Vec::new();
        for name in ["mastd", "proxy", "samples"] {
            let path = docker.join(format!("{name}.Dockerfile"));
            let text = std::fs::read_to_string(&path).unwrap();
            let words: Vec<&str> = text.split_whitespace().collect();
            let after = |flag: &str| -> Vec<&str> {
                words
                    .windows(2)
                    .filter(|w| w[0] == flag)
                    .map(|w| w[1])
                    .collect()
            };
            let (packages, built) = (after("-p"), after("--bin"));
            assert!(!built.is_empty(), "{name}: builds nothing");
            for bin in &built {
                assert!(
                    bins.iter()
                        .any(|(p, b)| b == bin && packages.contains(&p.as_str())),
                    "{name}: --bin {bin} is no binary of the packages {packages:?}"
                );
            }
            for copied in words.iter().filter_map(|w| {
                w.strip_prefix("target/release/")
                    .or_else(|| w.strip_prefix("target/sidecar/"))
            }) {
                assert!(
                    built.contains(&copied),
                    "{name}: copies {copied}, not built"
                );
            }
            assert!(
                text.contains("FROM rust:1.95-bookworm AS build"),
                "{name}: builder"
            );
            assert!(text.contains("--locked"), "{name}: builds without --locked");
            images.extend(
                words
                    .iter()
                    .filter(|w| w.starts_with("ghcr.io/mast-mesh/"))
                    .map(|w| w.to_string()),
            );
        }
        let proxy = std::fs::read_to_string(docker.join("proxy.Dockerfile")).unwrap();
        // The sidecar ships built with its own profile (root Cargo.toml), copied from its dir.
        assert!(proxy.contains("--profile sidecar --locked -p mast-proxy --bin mast-proxy"));
        assert!(proxy.contains("cp target/sidecar/mast-proxy"));
        assert!(proxy.contains("ln -s mast-proxy /usr/local/bin/pilot-agent"));
        assert!(proxy.contains(r#"ENTRYPOINT ["/usr/local/bin/pilot-agent"]"#));
        assert!(proxy.contains("iptables"));
        // Every image the manifests run is one a Dockerfile says it builds.
        let samples = include_str!("../../manifests/samples/kubernetes/todolist.yaml");
        for text in [MAST_YAML, samples] {
            for line in text.lines() {
                if let Some(at) = line.find("ghcr.io/mast-mesh/") {
                    let image = line[at..].trim_end_matches(['"', '}', ' ']);
                    assert!(
                        images.iter().any(|i| i == image),
                        "no Dockerfile builds {image}"
                    );
                }
            }
        }
    }

    /// Every flag and MAST_* variable the Deployment gives mastd is one mastd declares (asked
    /// of mastd's own command line: a renamed flag fails here, not in a crash-looping pod).
    #[test]
    fn mastd_knows_the_deployments_flags_and_env() {
        use clap::CommandFactory as _;
        let mastd = mastd::Config::command();
        let longs: Vec<&str> = mastd.get_arguments().filter_map(|a| a.get_long()).collect();
        let envs: Vec<&str> = mastd
            .get_arguments()
            .filter_map(|a| a.get_env()?.to_str())
            .collect();
        let deploy = docs(MAST_YAML)
            .into_iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
        let c = &deploy["spec"]["template"]["spec"]["containers"][0];
        for arg in c["args"].as_array().unwrap() {
            let arg = arg.as_str().unwrap().trim_start_matches("--");
            let flag = arg.split_once('=').map_or(arg, |(flag, _)| flag);
            assert!(longs.contains(&flag), "mastd has no --{flag}");
        }
        for env in c["env"].as_array().unwrap() {
            let name = env["name"].as_str().unwrap();
            if name.starts_with("MAST_") {
                assert!(envs.contains(&name), "mastd reads no {name}");
            }
        }
    }
}
