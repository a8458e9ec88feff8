//! The CRDs against Istio's: names and versions from Istio's own CRD file, every Istio sample
//! and validation example of our kinds validated by an independent JSON-schema validator,
//! wrong types refused, and the committed `manifests/install/crds.yaml` kept current.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;

use mast_testdata::workspace_root as repo;

/// The corpus folder (`testdata/upstream`). Missing is a failure, not a skip: these tests are
/// the proof that Istio YAML applies.
fn corpus() -> PathBuf {
    mast_testdata::corpus("istio-crds/crd-all.gen.yaml");
    mast_testdata::corpus_dir()
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| d.is_object())
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Our kind for a document's apiVersion and kind, if we ship its CRD.
fn kind_of(doc: &Value) -> Option<&'static Kind> {
    let api_version = doc.get("apiVersion")?.as_str()?;
    let (group, version) = api_version.split_once('/')?;
    let kind = doc.get("kind")?.as_str()?;
    KINDS
        .iter()
        .find(|k| k.group == group && k.kind == kind && k.versions.contains(&version))
}

/// The CRD schema as a JSON-schema validator sees it, with the API server's strict field
/// validation (`kubectl apply` refuses unknown fields): objects that list properties and do
/// not preserve unknown fields take no others. apiVersion, kind and metadata are the API
/// server's own and are only type-checked.
fn strict(schema: &Value) -> Value {
    fn walk(v: &mut Value) {
        let Some(map) = v.as_object_mut() else { return };
        if map.contains_key("properties")
            && map.get("x-kubernetes-preserve-unknown-fields") != Some(&json!(true))
        {
            map.insert("additionalProperties".into(), json!(false));
        }
        for key in ["properties"] {
            if let Some(Value::Object(props)) = map.get_mut(key) {
                props.values_mut().for_each(walk);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(inner) = map.get_mut(key) {
                walk(inner);
            }
        }
    }
    let mut schema = schema.clone();
    walk(&mut schema);
    let props = schema["properties"].as_object_mut().unwrap();
    props.insert("apiVersion".into(), json!({"type": "string"}));
    props.insert("kind".into(), json!({"type": "string"}));
    props.insert("metadata".into(), json!({"type": "object"}));
    schema
}

fn validator(kind: &Kind) -> jsonschema::Validator {
    jsonschema::validator_for(&strict(&kind.open_api_v3_schema())).unwrap()
}

/// The validation errors of `doc` (empty when valid).
fn errors(doc: &Value) -> Vec<String> {
    let kind = kind_of(doc).expect("a kind we ship");
    validator(kind)
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Deserializes `spec` into our Rust type for the kind: the types, not only the schema,
/// read every valid document.
fn typed(doc: &Value) -> Result<(), String> {
    let kind = kind_of(doc).expect("a kind we ship").kind;
    let spec = doc.get("spec").cloned().unwrap_or(json!({}));
    fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<(), String> {
        serde_json::from_value::<T>(v)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    match kind {
        "VirtualService" => de::<networking::VirtualServiceSpec>(spec),
        "DestinationRule" => de::<networking::DestinationRuleSpec>(spec),
        "ServiceEntry" => de::<networking::ServiceEntrySpec>(spec),
        "WorkloadEntry" => de::<networking::WorkloadEntrySpec>(spec),
        "WorkloadGroup" => de::<networking::WorkloadGroupSpec>(spec),
        "Sidecar" => de::<networking::SidecarSpec>(spec),
        "Gateway" => de::<networking::GatewaySpec>(spec),
        "PeerAuthentication" => de::<security::PeerAuthenticationSpec>(spec),
        "AuthorizationPolicy" => de::<security::AuthorizationPolicySpec>(spec),
        "RequestAuthentication" => de::<security::RequestAuthenticationSpec>(spec),
        other => Err(format!("no type for {other}")),
    }
}

#[test]
fn every_schema_is_structural() {
    for kind in KINDS {
        let v = structural::violations(&kind.open_api_v3_schema());
        assert!(v.is_empty(), "{}: {v:#?}", kind.kind);
    }
}

#[test]
fn names_scope_and_versions_are_istios() {
    let istio: Vec<Value> = yaml_docs(&corpus().join("istio-crds/crd-all.gen.yaml"));
    let columns = |v: &Value| -> Vec<(String, String, String)> {
        v.get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("name"), s("type"), s("jsonPath"))
            })
            .collect()
    };
    let versions = |crd: &Value| -> Vec<(String, bool, bool)> {
        let mut v: Vec<_> = crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let name = v["name"].as_str().unwrap().to_string();
                (
                    name,
                    v["served"] == json!(true),
                    v["storage"] == json!(true),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mut compared = 0;
    for ours in crds() {
        let name = ours["metadata"]["name"].as_str().unwrap();
        let theirs = istio
            .iter()
            .find(|c| c["metadata"]["name"] == json!(name))
            .unwrap_or_else(|| panic!("Istio has no CRD {name}"));
        for field in ["group", "scope"] {
            assert_eq!(
                ours["spec"][field], theirs["spec"][field],
                "{name}: {field}"
            );
        }
        for field in [
            "kind",
            "listKind",
            "plural",
            "singular",
            "shortNames",
            "categories",
        ] {
            assert_eq!(
                ours["spec"]["names"][field], theirs["spec"]["names"][field],
                "{name}: names.{field}"
            );
        }
        assert_eq!(versions(&ours), versions(theirs), "{name}: versions");
        let required = |crd: &Value| {
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["required"].clone()
        };
        assert_eq!(
            required(&ours),
            required(theirs),
            "{name}: required at the top"
        );
        for (o, t) in ours["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(theirs["spec"]["versions"].as_array().unwrap())
        {
            assert_eq!(columns(o), columns(t), "{name}: printer columns");
            assert_eq!(o["subresources"], t["subresources"], "{name}: subresources");
        }
        compared += 1;
    }
    assert_eq!(compared, KINDS.len());
    eprintln!("{compared} CRDs compared with Istio's");
}

/// Every document of our kinds that Istio (or we) consider valid is accepted.
#[test]
fn every_valid_sample_validates() {
    let corpus = corpus();
    let mut files = Vec::new();
    yaml_files(&corpus.join("istio-samples"), &mut files);
    yaml_files(&corpus.join("istio-crds/validation-dataset"), &mut files);
    let mut testdata = Vec::new();
    yaml_files(
        &corpus.join("istio-crds/validation-testdata"),
        &mut testdata,
    );
    files.extend(
        testdata
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with("-valid.yaml")),
    );
    yaml_files(&repo().join("manifests/samples"), &mut files);
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in &files {
        for mut doc in yaml_docs(path) {
            if kind_of(&doc).is_none() {
                continue;
            }
            unquoted_ipv6_in_flow_sequence(&mut doc);
            let name = format!(
                "{} {}/{}",
                path.strip_prefix(repo()).unwrap_or(path).display(),
                doc["kind"].as_str().unwrap_or_default(),
                doc["metadata"]["name"].as_str().unwrap_or_default()
            );
            let errs = errors(&doc);
            if !errs.is_empty() {
                failures.push(format!("{name}: {errs:?}"));
            }
            if let Err(e) = typed(&doc) {
                failures.push(format!("{name}: Rust type: {e}"));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{checked} custom resources validated from {} files",
        files.len()
    );
    assert!(checked >= 80, "only {checked} documents found");
}

/// `addresses: [1.2.3.4, 001:db8::]` in serviceentry-valid.yaml: Go's YAML reads the second
/// item as a string, YAML 1.2 parsers (serde-saphyr, PyYAML) as the one-key mapping
/// `{"001:db8:": null}`. A parser difference, not a schema one: take it as Go does.
fn unquoted_ipv6_in_flow_sequence(doc: &mut Value) {
    if let Some(Value::Array(addresses)) = doc.pointer_mut("/spec/addresses") {
        for a in addresses {
            if let Some(m) = a.as_object()
                && m.len() == 1
                && let Some((k, Value::Null)) = m.iter().next()
            {
                *a = json!(format!("{k}:"));
            }
        }
    }
}

fn doc(kind: &str, api: &str, spec: Value) -> Value {
    json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}, "spec": spec})
}

#[test]
fn wrong_types_and_unknown_fields_are_refused() {
    let vs = "networking.istio.io/v1";
    let bad = [
        // weight must be an integer
        doc(
            "VirtualService",
            vs,
            json!({"hosts": ["a"], "http": [{"route": [
            {"destination": {"host": "a"}, "weight": "50"}]}]}),
        ),
        // hosts is a list
        doc("VirtualService", vs, json!({"hosts": "a"})),
        // destination.host is required
        doc(
            "VirtualService",
            vs,
            json!({"http": [{"route": [{"destination": {"subset": "v1"}}]}]}),
        ),
        // a string match is one kind of match
        doc(
            "VirtualService",
            vs,
            json!({"http": [{"match": [{"uri": {"exact": "/a", "prefix": "/"}}]}]}),
        ),
        // a field Istio does not have
        doc("VirtualService", vs, json!({"hosts": ["a"], "htpp": []})),
        // host is required
        doc("DestinationRule", vs, json!({"subsets": [{"name": "v1"}]})),
        // subset labels are strings
        doc(
            "DestinationRule",
            vs,
            json!({"host": "a", "subsets": [{"name": "v1", "labels": {"v": 1}}]}),
        ),
        // not a load balancer
        doc(
            "DestinationRule",
            vs,
            json!({"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}),
        ),
        doc(
            "ServiceEntry",
            vs,
            json!({"hosts": ["a"], "ports": [{"number": "80", "name": "http"}]}),
        ),
        doc(
            "ServiceEntry",
            vs,
            json!({"hosts": ["a"], "resolution": "MAGIC"}),
        ),
        // ServiceEntry requires spec
        json!({"apiVersion": vs, "kind": "ServiceEntry", "metadata": {"name": "x"}}),
        doc(
            "WorkloadEntry",
            vs,
            json!({"address": "1.2.3.4", "ports": {"http": -1}}),
        ),
        doc("Sidecar", vs, json!({"egress": [{"captureMode": "NONE"}]})),
        doc(
            "Gateway",
            vs,
            json!({"servers": [{"port": {"number": 80}, "hosts": ["*"]}]}),
        ),
        doc(
            "PeerAuthentication",
            "security.istio.io/v1",
            json!({"mtls": {"mode": "strict"}}),
        ),
        doc(
            "AuthorizationPolicy",
            "security.istio.io/v1beta1",
            json!({"action": "ALLOW",
            "rules": [{"to": [{"operation": {"ports": [8080]}}]}]}),
        ),
        doc(
            "AuthorizationPolicy",
            "security.istio.io/v1",
            json!({"rules": [{"when": [{"values": ["a"]}]}]}),
        ),
        // a header to read the token from needs a name
        doc(
            "RequestAuthentication",
            "security.istio.io/v1",
            json!({"jwtRules": [{"issuer": "a", "fromHeaders": [{"prefix": "Bearer "}]}]}),
        ),
        doc(
            "RequestAuthentication",
            "security.istio.io/v1beta1",
            json!({"jwtRules": [{"issuer": "a", "presence": "MANDATORY"}]}),
        ),
    ];
    for d in &bad {
        assert!(!errors(d).is_empty(), "accepted: {d}");
    }
}

/// Istio's own invalid examples: the ones whose error is a type, an enum value or a missing
/// field (what a schema can say; the rest are CEL rules and istiod's semantic checks, which
/// Mast applies when it reads the resource and reports in its status) are refused.
#[test]
fn istios_schema_level_invalid_examples_are_refused() {
    let mut files = Vec::new();
    yaml_files(&corpus().join("istio-crds/validation-testdata"), &mut files);
    let (mut refused, mut schema_level) = (0, 0);
    for path in files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("-invalid.yaml"))
    {
        for mut doc in yaml_docs(path) {
            let expected = doc
                .as_object_mut()
                .and_then(|m| m.remove("_err"))
                .and_then(|e| e.as_str().map(str::to_string))
                .unwrap_or_default();
            if kind_of(&doc).is_none() {
                continue;
            }
            let is_schema_level = ["Invalid type", "Unsupported value", "Required value"]
                .iter()
                .any(|s| expected.contains(s));
            let rejected = !errors(&doc).is_empty();
            if is_schema_level {
                schema_level += 1;
                assert!(
                    rejected,
                    "{}: accepted, Istio says {expected}",
                    path.display()
                );
            }
            refused += usize::from(rejected);
        }
    }
    eprintln!("{schema_level} schema-level invalid examples refused ({refused} refused in all)");
}

#[test]
fn committed_crds_yaml_is_current() {
    let path = repo().join("manifests/install/crds.yaml");
    let generated = crds_yaml().unwrap();
    if std::env::var_os("MAST_REGENERATE").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not what the Rust types generate; regenerate with\n  \
         cargo run -p mastctl -- manifest generate --crds > manifests/install/crds.yaml\n\
         or\n  MAST_REGENERATE=1 cargo test -p mast-crds committed_crds_yaml_is_current",
        path.display()
    );
    // And it reads back as the same objects.
    let back: Vec<Value> = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&committed)
        .unwrap()
        .into_iter()
        .filter(|d| d.is_object())
        .collect();
    assert_eq!(back, crds());
}

/// Client-side `kubectl apply` stores the whole object in the last-applied-configuration
/// annotation, and annotations are limited to 256 KiB: every CRD stays well below, so the
/// plain `kubectl apply -f crds.yaml` works (no `--server-side` needed).
#[test]
fn every_crd_fits_kubectl_apply_annotation() {
    for crd in crds() {
        let size = serde_json::to_vec(&crd).unwrap().len();
        assert!(
            size < 128 * 1024,
            "{}: {size} bytes",
            crd["metadata"]["name"]
        );
    }
}

/// Fields Istio's schema requires but proto3 lets default (`DestinationRule.host`…) are
/// required by the schema and default in Rust, so a reader of the types (mesh-config) reports
/// the missing field by its own path instead of serde's "missing field" on the parent.
#[test]
fn schema_only_required_fields_default_in_rust() {
    let dr = KINDS
        .iter()
        .find(|k| k.kind == "DestinationRule")
        .unwrap()
        .spec_schema();
    assert_eq!(dr["required"], json!(["host"]));
    assert_eq!(
        dr["properties"]["subsets"]["items"]["required"],
        json!(["name"])
    );
    let spec: networking::DestinationRuleSpec =
        serde_json::from_value(json!({"subsets": [{"labels": {"v": "1"}}]})).unwrap();
    assert_eq!(
        (spec.host.as_str(), spec.subsets[0].name.as_str()),
        ("", "")
    );
    let se = KINDS
        .iter()
        .find(|k| k.kind == "ServiceEntry")
        .unwrap()
        .spec_schema();
    assert_eq!(se["required"], json!(["hosts"]));
    assert!(serde_json::from_value::<networking::ServiceEntrySpec>(json!({})).is_ok());
    // Istio's int32 weight: a larger value is not a weight.
    assert!(
        serde_json::from_value::<networking::HttpRouteDestination>(
            json!({"destination": {"host": "a"}, "weight": 3_000_000_000_i64})
        )
        .is_err()
    );
}
