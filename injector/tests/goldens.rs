//! Every input of Istio's injector golden tests (testdata/upstream/istio-inject), injected by
//! Mast and compared with Istio's golden.
//!
//! The comparison is structural and strict: whole documents, every field, in order where
//! Kubernetes gives order a meaning (containers, args, env), after removing only what Go's
//! serializer adds (`creationTimestamp: null`, `status: {}`, empty `resources`/`strategy`).
//! Mast's image stands where Istio's test image stood. JSON held in strings (status,
//! overrides, probers, PROXY_CONFIG) is compared as JSON. The documented differences
//! (docs/injection.md) are the only exceptions, and each is asserted here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mast_injector::inject::Settings;
use mast_injector::kube_inject::inject_yaml;
use serde_json::{Value, json};

const ISTIO_TEST_IMAGE: &str = "registry.istio.io/testing/proxyv2:latest";

fn corpus() -> PathBuf {
    mast_testdata::corpus("istio-inject")
}

/// The settings upstream's inject_test.go used for each golden (corpus SOURCES.md).
fn cases() -> Vec<(&'static str, &'static str, Settings)> {
    let d = Settings::default;
    let mut cases = Vec::new();
    let dir = corpus();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("corpus present")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && !n.starts_with("traffic-annotations-bad-"))
        .collect();
    names.sort();
    for n in names {
        let golden: &'static str = Box::leak(format!("{n}.injected").into_boxed_str());
        let input: &'static str = Box::leak(n.into_boxed_str());
        let mut s = d();
        match input {
            "hello-probes-localhost.yaml" => s.inbound_localhost = true,
            "kubevirtInterfaces.yaml" => {
                s.status_port = 123;
                s.readiness_initial_delay_seconds = 100;
                s.readiness_period_seconds = 200;
                s.readiness_failure_threshold = 300;
            }
            "merge-probers.yaml" => s.hold_application_until_proxy_starts = true,
            "traffic-annotations.yaml" => {
                s.default_proxy_config.insert(
                    "proxyMetadata".into(),
                    json!({"ISTIO_META_TLS_CLIENT_KEY": "/etc/identity/client/keys/client-key.pem"}),
                );
            }
            "traffic-params.yaml" => {
                s.include_ip_ranges = "127.0.0.1/24,10.96.0.1/24".into();
                s.exclude_ip_ranges = "10.96.0.2/24,10.96.0.3/24".into();
                s.exclude_inbound_ports = "4,5,6".into();
                s.status_port = 0;
            }
            _ => {}
        }
        cases.push((input, golden, s));
    }
    let variant = |input: &'static str, golden: &'static str, f: &dyn Fn(&mut Settings)| {
        let mut s = Settings::default();
        f(&mut s);
        (input, golden, s)
    };
    cases.push(variant(
        "hello.yaml",
        "hello.yaml.cni.injected",
        &|s: &mut Settings| {
            s.cni = true;
            s.network = Some("network1".into());
        },
    ));
    cases.push(variant(
        "hello.yaml",
        "hello-tproxy.yaml.injected",
        &|s: &mut Settings| {
            s.default_proxy_config
                .insert("interceptionMode".into(), json!("TPROXY"));
        },
    ));
    for (input, golden) in [
        ("hello.yaml", "hello-old-version.yaml.injected"),
        ("pod.yaml", "pod-old-version.yaml.injected"),
        (
            "native-sidecar.yaml",
            "native-sidecar-old-version.yaml.injected",
        ),
    ] {
        cases.push(variant(input, golden, &|s: &mut Settings| {
            s.native_sidecar = false
        }));
    }
    for (input, golden) in [
        ("hello.yaml", "hello.proxyHoldsApplication.yaml.injected"),
        (
            "hello-probes.yaml",
            "hello-probes.proxyHoldsApplication.yaml.injected",
        ),
    ] {
        cases.push(variant(input, golden, &|s: &mut Settings| {
            s.hold_application_until_proxy_starts = true
        }));
    }
    cases
}

/// Inputs Mast refuses on purpose (docs/injection.md), with the words the error must contain.
const REFUSED: &[(&str, &str)] = &[
    ("grpc-agent.yaml", "inject.istio.io/templates"),
    ("grpc-simple.yaml", "inject.istio.io/templates"),
];

fn load(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("corpus YAML parses");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Removes what Go's serializer adds and turns JSON-in-strings into JSON.
fn normalise(v: &mut Value, key: &str) {
    match v {
        Value::Object(map) => {
            map.retain(|k, v| {
                !(v.is_null()
                    || (matches!(
                        k.as_str(),
                        "strategy" | "resources" | "metadata" | "updateStrategy" | "status"
                    ) && v.as_object().is_some_and(|o| o.is_empty())))
            });
            for (k, v) in map.iter_mut() {
                normalise(v, k);
            }
            // env entries: compare JSON values as JSON.
            if map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| matches!(n, "ISTIO_KUBE_APP_PROBERS" | "PROXY_CONFIG"))
                && let Some(Value::String(text)) = map.get("value")
                && let Ok(parsed) = serde_json::from_str::<Value>(text)
            {
                map.insert("value".into(), parsed);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| normalise(i, key)),
        Value::String(s) if s == ISTIO_TEST_IMAGE => {
            *s = Settings::default().image;
        }
        Value::String(s)
            if matches!(key, "sidecar.istio.io/status" | "proxy.istio.io/overrides") =>
        {
            if let Ok(mut parsed) = serde_json::from_str::<Value>(s) {
                normalise(&mut parsed, "");
                *v = parsed;
            }
        }
        _ => {}
    }
}

fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let keys: std::collections::BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            for k in keys {
                match (w.get(k), g.get(k)) {
                    (Some(a), Some(b)) => diff(&format!("{path}.{k}"), a, b, out),
                    (Some(a), None) => out.push(format!("{path}.{k}: missing (want {a})")),
                    (None, Some(b)) => out.push(format!("{path}.{k}: unexpected {b}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                let label = a["name"].as_str().map(|n| format!("[{n}]"));
                diff(
                    &format!("{path}{}", label.unwrap_or(format!("[{i}]"))),
                    a,
                    b,
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path}: want {a}, got {b}")),
        _ => {}
    }
}

/// Istio's kube-inject writes a CronJob's injected labels and annotations on
/// `spec.jobTemplate.metadata`, where they never reach the pods (the webhook path puts them on
/// the pod). Mast puts them on the pod template in both paths; docs/injection.md lists this.
fn cronjob_labels_on_the_pod(golden: &mut Value) {
    let Some(meta) = golden
        .pointer_mut("/spec/jobTemplate/metadata")
        .map(std::mem::take)
    else {
        return;
    };
    if let Some(obj) = golden
        .pointer_mut("/spec/jobTemplate")
        .and_then(Value::as_object_mut)
    {
        obj.remove("metadata");
    }
    if let Some(pod_meta) = golden.pointer_mut("/spec/jobTemplate/spec/template/metadata") {
        for key in ["labels", "annotations"] {
            if let Some(Value::Object(add)) = meta.get(key) {
                let entry = &mut pod_meta[key];
                if entry.is_null() {
                    *entry = json!({});
                }
                if let Some(map) = entry.as_object_mut() {
                    map.extend(add.clone());
                }
            }
        }
    }
}

#[test]
fn every_corpus_input_matches_istios_golden() {
    let mut failures = BTreeMap::new();
    let mut compared = 0;
    for (input, golden, settings) in cases() {
        let input_path = corpus().join(input);
        let golden_path = corpus().join(golden);
        if !golden_path.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&input_path).expect("input");
        let result = inject_yaml(&text, &settings);
        if let Some((_, words)) = REFUSED.iter().find(|(n, _)| *n == input) {
            match result {
                Err(e) => assert!(e.to_string().contains(words), "{input}: {e}"),
                Ok(_) => {
                    failures.insert(golden, vec!["expected a refusal".into()]);
                }
            }
            compared += 1;
            continue;
        }
        let (out, _) = match result {
            Ok(r) => r,
            Err(e) => {
                failures.insert(golden, vec![format!("error: {e}")]);
                continue;
            }
        };
        let mut got: Vec<Value> = serde_saphyr::from_str_multiple(&out).expect("our YAML parses");
        got.retain(|d| !d.is_null());
        let mut want = load(&golden_path);
        let mut problems = Vec::new();
        if got.len() != want.len() {
            problems.push(format!("{} documents, want {}", got.len(), want.len()));
        }
        for (i, (w, g)) in want.iter_mut().zip(got.iter_mut()).enumerate() {
            // A workload's status is the API server's, not the injector's.
            for doc in [&mut *w, &mut *g] {
                if let Some(obj) = doc.as_object_mut() {
                    obj.remove("status");
                }
            }
            if golden == "cronjob.yaml.injected" {
                cronjob_labels_on_the_pod(w);
            }
            normalise(w, "");
            normalise(g, "");
            diff(&format!("doc{i}"), w, g, &mut problems);
        }
        compared += 1;
        if !problems.is_empty() {
            failures.insert(golden, problems);
        }
    }
    let mut report = String::new();
    for (golden, problems) in &failures {
        report.push_str(&format!("\n== {golden}\n"));
        for p in problems.iter().take(12) {
            report.push_str(&format!("   {p}\n"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} goldens differ:{report}",
        failures.len()
    );
    assert_eq!(compared, 49, "every golden compared");
}

#[test]
fn bad_traffic_annotations_are_refused_naming_the_annotation() {
    let expected = [
        (
            "traffic-annotations-bad-excludeinboundports.yaml",
            "traffic.sidecar.istio.io/excludeInboundPorts",
        ),
        (
            "traffic-annotations-bad-excludeipranges.yaml",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        ),
        (
            "traffic-annotations-bad-excludeoutboundports.yaml",
            "traffic.sidecar.istio.io/excludeOutboundPorts",
        ),
        (
            "traffic-annotations-bad-includeinboundports.yaml",
            "traffic.sidecar.istio.io/includeInboundPorts",
        ),
        (
            "traffic-annotations-bad-includeipranges.yaml",
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
        ),
    ];
    for (file, annotation) in expected {
        let text = std::fs::read_to_string(corpus().join(file)).expect("input");
        let err = inject_yaml(&text, &Settings::default()).expect_err(file);
        let message = err.to_string();
        assert!(message.contains(annotation), "{file}: {message}");
    }
}
