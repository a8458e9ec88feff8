//! The RBAC filters against istiod's goldens (corpus `security/authz-builder`): the proxy
//! is in namespace `foo` with labels `app=httpbin, version=v1`, trust domain `cluster.local`.

use std::path::PathBuf;

use mast_mesh_config::model::Labels;
use mast_mesh_config::store::ConfigStore;
use serde_json::Value;

use super::*;

fn corpus() -> PathBuf {
    mast_testdata::corpus("istio-samples/security/authz-builder")
}

fn filters_for(input: &str) -> Vec<Value> {
    let mut store = ConfigStore::default();
    let report = store.apply_files(
        [(
            PathBuf::from(input),
            std::fs::read_to_string(corpus().join(input)).unwrap(),
        )]
        .into(),
    );
    assert!(report.errors.is_empty(), "{input}: {:?}", report.errors);
    let model = store.model();
    let labels: Labels = [("app", "httpbin"), ("version", "v1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let policies = model.authz_policies_for("foo", &labels);
    http_rbac_filters(&policies)
        .iter()
        .map(|f| camel(mast_proto::json::message_to_json(f).unwrap()))
        .collect()
}

/// Proto field names to proto-JSON names (`and_rules` → `andRules`), as the goldens are
/// written; map keys (policy names) have no underscores and stay as they are.
fn camel(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let mut out = String::new();
                    let mut up = false;
                    for c in k.chars() {
                        if c == '_' {
                            up = true;
                        } else if up {
                            out.extend(c.to_uppercase());
                            up = false;
                        } else {
                            out.push(c);
                        }
                    }
                    (out, camel(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(camel).collect()),
        other => other,
    }
}

fn golden(name: &str) -> Value {
    let text = std::fs::read_to_string(corpus().join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// The first difference between two JSON values, as a path.
fn diff(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = diff(&p, u, v) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: ours {u:?}, golden {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} items, golden {}", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| diff(&format!("{path}[{i}]"), u, v))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: ours {a}, golden {b}")),
    }
}

#[test]
fn every_golden_pair_matches() {
    let mut inputs: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with("-in.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 11, "{inputs:?}");
    let mut failures = Vec::new();
    for input in &inputs {
        let base = input.trim_end_matches("-in.yaml");
        let goldens: Vec<String> = if corpus().join(format!("{base}-out.yaml")).exists() {
            vec![format!("{base}-out.yaml")]
        } else {
            vec![format!("{base}-out1.yaml"), format!("{base}-out2.yaml")]
        };
        let ours = filters_for(input);
        if ours.len() != goldens.len() {
            failures.push(format!(
                "{input}: {} filters, golden {}",
                ours.len(),
                goldens.len()
            ));
            continue;
        }
        for (o, g) in ours.iter().zip(&goldens) {
            if let Some(d) = diff("", o, &golden(g)) {
                if let Some(dir) = std::env::var_os("AUTHZ_DUMP") {
                    let _ = std::fs::write(
                        PathBuf::from(dir).join(format!("{g}.json")),
                        serde_json::to_string_pretty(o).unwrap_or_default(),
                    );
                }
                failures.push(format!("{g}: {d}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

#[test]
fn tcp_filters_drop_http_only_allow_rules_and_keep_deny_rules_broader() {
    let mut store = ConfigStore::default();
    let text = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: foo}
spec:
  rules:
  - to: [{operation: {methods: ["GET"]}}]
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/a"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["bad"]}}]
    to: [{operation: {paths: ["/admin"]}}]
"#;
    let report = store.apply_files([(PathBuf::from("p.yaml"), text.to_string())].into());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let model = store.model();
    let policies = model.authz_policies_for("foo", &Labels::new());
    let tcp = network_rbac_filters(&policies);
    assert_eq!(tcp.len(), 2);
    let json: Vec<Value> = tcp
        .iter()
        .map(|f| camel(mast_proto::json::message_to_json(f).unwrap()))
        .collect();
    let deny = &json[0]["typedConfig"]["rules"];
    assert_eq!(deny["action"], "DENY");
    let deny_policy = &deny["policies"]["ns[foo]-policy[deny-admin]-rule[0]"];
    assert_eq!(
        deny_policy["permissions"][0]["andRules"]["rules"][0]["any"], true,
        "the path is dropped for TCP: {deny_policy}"
    );
    let allow = &json[1]["typedConfig"]["rules"]["policies"];
    assert!(
        allow.get("ns[foo]-policy[allow-get]-rule[0]").is_none(),
        "{allow}"
    );
    assert!(
        allow.get("ns[foo]-policy[allow-get]-rule[1]").is_some(),
        "{allow}"
    );
    assert_eq!(json[0]["typedConfig"]["statPrefix"], "tcp.");
}
