//! Fuzz targets for what the injector reads from outside (issue 21 §1): the API server's
//! AdmissionReview (the webhook) and the YAML `kube-inject` is given. Never a panic: a bad
//! review is a `ReviewError` (an HTTP error) or a denied review, bad YAML an `Error`.
//!
//! Seeds: the AdmissionReviews in `testdata/upstream/admission` and the pods of the
//! injector goldens in `testdata/upstream/istio-inject` (read, never modified), wrapped in
//! reviews; mutated as bytes and as JSON trees. `MAST_FUZZ_CASES` runs longer; see
//! `docs/fuzzing.md`.

use std::collections::BTreeMap;

use mast_injector::cli::{Command, parse};
use mast_injector::inject::Settings;
use mast_injector::kube_inject::inject_yaml;
use mast_injector::webhook::{Outcome, review};
use mast_testdata::fuzz::{self, HOSTILE_YAML_VALUES, Rng};
use serde_json::{Value, json};

fn admission(pod: Value, namespace: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b3f1c2d4-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    })
}

/// The injector goldens' inputs (text), and the pods in them (a workload's template).
fn golden_inputs() -> Vec<(String, String)> {
    let dir = mast_testdata::corpus("istio-inject");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.display().to_string(), text)
        })
        .collect()
}

fn review_seeds(goldens: &[(String, String)]) -> Vec<Value> {
    let mut seeds = Vec::new();
    let dir = mast_testdata::corpus("admission");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        seeds.push(serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap());
    }
    for (_, text) in goldens {
        let Ok(docs) = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(text) else {
            continue;
        };
        for doc in docs {
            let pod = match doc["kind"].as_str() {
                Some("Pod") => doc.clone(),
                Some(_) if doc["spec"]["template"].is_object() => {
                    let mut pod = doc["spec"]["template"].clone();
                    pod["apiVersion"] = json!("v1");
                    pod["kind"] = json!("Pod");
                    pod
                }
                _ => continue,
            };
            seeds.push(admission(pod, "default"));
        }
    }
    seeds
}

#[test]
fn fuzz_admission_review() {
    let goldens = golden_inputs();
    let seeds = review_seeds(&goldens);
    let settings = Settings::default();
    let injected = seeds
        .iter()
        .filter(|s| {
            let body = serde_json::to_vec(s).unwrap();
            matches!(review(&body, &settings), Ok((_, Outcome::Injected { .. })))
        })
        .count();
    eprintln!(
        "AdmissionReview seeds: {injected} of {} injected",
        seeds.len()
    );
    assert!(injected >= 10, "{injected} seeds injected");
    fuzz::run(
        "admission-review",
        8000,
        |rng| {
            let mut seed = seeds[rng.below(seeds.len())].clone();
            if rng.one_in(4) {
                let bytes = serde_json::to_vec(&seed).unwrap();
                fuzz::mutate_bytes(rng, &bytes, &[b"{", b"}", b"[", b"\"", b":", b","])
            } else {
                for _ in 0..1 + rng.below(4) {
                    fuzz::mutate_json(rng, &mut seed);
                }
                serde_json::to_vec(&seed).unwrap()
            }
        },
        |body| {
            if let Ok((response, _)) = review(body, &settings) {
                // Whatever the input, the answer is an AdmissionReview with a response.
                assert_eq!(response["kind"], "AdmissionReview");
                assert!(response["response"]["allowed"].is_boolean(), "{response}");
            }
        },
    );
}

#[test]
fn fuzz_kube_inject_yaml() {
    let goldens = golden_inputs();
    let settings = Settings::default();
    fuzz::run(
        "kube-inject-yaml",
        4000,
        |rng| {
            let text = &goldens[rng.below(goldens.len())].1;
            if rng.one_in(3) {
                let bytes = fuzz::mutate_bytes(rng, text.as_bytes(), &[b"\n---\n", b": ", b"- "]);
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                fuzz::mutate_lines(rng, text, HOSTILE_YAML_VALUES)
            }
        },
        |text| {
            let _ = inject_yaml(text, &settings);
        },
    );
}

/// mast-init's flags and environment (what the injected init container is given).
const INIT_FLAGS: &[&str] = &[
    "-p",
    "-z",
    "-e",
    "-u",
    "-g",
    "-m",
    "-b",
    "-d",
    "-i",
    "-x",
    "-q",
    "-o",
    "-c",
    "-k",
    "-t",
    "-r",
    "--envoy-port",
    "--inbound-capture-port",
    "--istio-inbound-ports",
    "--istio-service-cidr",
    "--istio-service-exclude-cidr",
    "--proxy-uid",
    "--dual-stack",
    "-n",
    "--cleanup",
    "--skip-rule-apply",
    "--run-validation",
    "-f",
    "--log_level",
    "-h",
    "--",
    "-",
    "--envoy-port=15001",
    "--x=",
];
const INIT_ENV: &[&str] = &[
    "ENVOY_PORT",
    "INBOUND_CAPTURE_PORT",
    "INBOUND_TUNNEL_PORT",
    "PROXY_UID",
    "PROXY_GID",
    "ISTIO_INBOUND_INTERCEPTION_MODE",
    "ISTIO_INBOUND_PORTS",
    "ISTIO_LOCAL_EXCLUDE_PORTS",
    "ISTIO_SERVICE_CIDR",
    "ISTIO_SERVICE_EXCLUDE_CIDR",
    "ISTIO_OUTBOUND_PORTS",
    "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
    "ISTIO_EXCLUDE_INTERFACES",
    "KUBE_VIRT_INTERFACES",
    "ISTIO_INBOUND_TPROXY_MARK",
    "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
    "ISTIO_AGENT_DUAL_STACK",
];
const INIT_VALUES: &[&str] = &[
    "15001",
    "0",
    "65535",
    "65536",
    "-1",
    "*",
    "",
    ",",
    "1,2,,3",
    "80-90",
    "1337,0",
    "4294967295",
    "4294967296",
    "REDIRECT",
    "TPROXY",
    "redirect",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "::/0",
    "fe80::1/129",
    "1.2.3.4",
    "*,10.0.0.0/8",
    "eth0,lo",
    "true",
    "false",
    "yes",
    "%",
    "\u{0}",
    "1e3",
];

fn init_value(rng: &mut Rng) -> String {
    let v = INIT_VALUES[rng.below(INIT_VALUES.len())];
    if rng.one_in(4) {
        String::from_utf8_lossy(&fuzz::mutate_bytes(rng, v.as_bytes(), &[b",", b"/", b":"]))
            .into_owned()
    } else {
        v.to_string()
    }
}

#[test]
fn fuzz_mast_init_flags_and_env() {
    fuzz::run(
        "mast-init-cli",
        20000,
        |rng| {
            let mut args = Vec::new();
            for _ in 0..rng.below(8) {
                args.push(INIT_FLAGS[rng.below(INIT_FLAGS.len())].to_string());
                if rng.one_in(2) {
                    args.push(init_value(rng));
                }
            }
            let mut env = BTreeMap::new();
            for _ in 0..rng.below(6) {
                env.insert(
                    INIT_ENV[rng.below(INIT_ENV.len())].to_string(),
                    init_value(rng),
                );
            }
            (args, env)
        },
        |(args, env)| {
            if let Ok(Command::Run { config, .. }) = parse(args.iter().cloned(), env) {
                // What the dry run prints: the rules themselves.
                let _ = mast_injector::iptables::render(&config);
            }
        },
    );
}
