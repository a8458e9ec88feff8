//! Rewrites a schemars (JSON Schema draft 7, subschemas inlined) schema into the structural
//! OpenAPI v3 subset the Kubernetes API server accepts for a CRD.
//!
//! The API server refuses a CRD whose schema is not structural: every node needs a `type`
//! (or `x-kubernetes-preserve-unknown-fields`), `additionalProperties` may not sit next to
//! `properties` and may not be `false`, `$ref` and `const` do not exist, and `anyOf`/`oneOf`
//! may only repeat validations, never introduce types. schemars expresses `Option<T>` as a
//! union with `null`, a free-form `serde_json::Value` as `true`, and Rust integer widths as
//! formats the API server does not know; each of those is mapped here to what Kubernetes
//! means by it. [`violations`] checks the result so a new Rust type that schemars renders
//! differently fails a test instead of a `kubectl apply`.

use serde_json::{Map, Value, json};

const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";

/// Keys that only document or default a JSON Schema; defaults in particular would make the
/// API server write `[]`/`{}` into every stored object.
const DROPPED: &[&str] = &[
    "$schema",
    "$id",
    "title",
    "default",
    "examples",
    "definitions",
    "$defs",
];

/// The structural form of `schema`.
pub fn structural(schema: Value) -> Value {
    match schema {
        // `true` (a `serde_json::Value`): anything, kept as given.
        Value::Bool(_) => json!({ PRESERVE: true }),
        Value::Object(map) => Value::Object(node(map)),
        other => other,
    }
}

fn node(mut map: Map<String, Value>) -> Map<String, Value> {
    for key in DROPPED {
        map.remove(*key);
    }
    // Option<T>: a union of T and null. Null is not a value Kubernetes stores, so the union
    // is T itself (its description, if the union had one, wins).
    for union in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(variants)) = map.remove(union) {
            let variants: Vec<Value> = variants.into_iter().filter(|v| !is_null(v)).collect();
            if variants.len() == 1 {
                if let Some(Value::Object(inner)) = variants.into_iter().next() {
                    for (k, v) in inner {
                        map.entry(k).or_insert(v);
                    }
                }
            } else if let Some(values) = all_consts(&variants) {
                map.insert("type".into(), json!("string"));
                map.insert("enum".into(), Value::Array(values));
            } else {
                map.insert(union.into(), Value::Array(variants));
            }
        }
    }
    for key in DROPPED {
        map.remove(*key);
    }
    if let Some(c) = map.remove("const") {
        map.insert("enum".into(), json!([c]));
    }
    if let Some(Value::Array(types)) = map.get("type") {
        let types: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if types.len() == 1 {
            map.insert("type".into(), types[0].clone());
        } else {
            map.insert("type".into(), Value::Array(types));
        }
    }
    if let Some(Value::Array(values)) = map.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    integer_format(&mut map);
    match map.remove("additionalProperties") {
        Some(Value::Bool(true)) => {
            map.insert(PRESERVE.into(), json!(true));
        }
        Some(Value::Object(inner)) if inner.is_empty() => {
            map.insert(PRESERVE.into(), json!(true));
        }
        Some(Value::Object(inner)) => {
            map.insert("additionalProperties".into(), Value::Object(node(inner)));
        }
        // `false` (deny_unknown_fields) is not allowed: the API server prunes or, with
        // strict field validation, refuses unknown fields anyway.
        _ => {}
    }
    if let Some(Value::Object(props)) = map.remove("properties") {
        let props: Map<String, Value> =
            props.into_iter().map(|(k, v)| (k, structural(v))).collect();
        map.insert("properties".into(), Value::Object(props));
        map.entry("type").or_insert_with(|| json!("object"));
    }
    if let Some(items) = map.remove("items") {
        map.insert("items".into(), structural(items));
    }
    if let Some(Value::Array(required)) = map.get("required")
        && required.is_empty()
    {
        map.remove("required");
    }
    if !map.contains_key("type") && !map.contains_key(PRESERVE) {
        map.insert(PRESERVE.into(), json!(true));
    }
    map
}

/// Rust integer widths → OpenAPI formats Kubernetes knows (int32, int64) and bounds.
fn integer_format(map: &mut Map<String, Value>) {
    let Some(format) = map.get("format").and_then(Value::as_str) else {
        return;
    };
    let (keep, max): (Option<&str>, Option<u64>) = match format {
        "int8" | "int16" | "int32" => (Some("int32"), None),
        "int64" => (Some("int64"), None),
        "uint8" => (None, Some(u8::MAX.into())),
        "uint16" => (None, Some(u16::MAX.into())),
        "uint32" => (None, Some(u32::MAX.into())),
        "uint64" | "uint" | "uint128" | "int128" => (None, None),
        "float" | "double" | "byte" | "date-time" => return,
        _ => (None, None),
    };
    match keep {
        Some(f) => map.insert("format".into(), json!(f)),
        None => map.remove("format"),
    };
    // schemars states its own bounds for i32 and friends; keep those, add the unsigned maximum.
    if let Some(max) = max {
        map.entry("maximum").or_insert(json!(max));
    }
}

fn is_null(v: &Value) -> bool {
    v.get("type") == Some(&json!("null"))
        || v.get("const") == Some(&Value::Null)
        || v.get("enum") == Some(&json!([null]))
}

/// The values of a union of single-value string schemas (an enum whose variants carry docs).
fn all_consts(variants: &[Value]) -> Option<Vec<Value>> {
    variants
        .iter()
        .map(|v| match (v.get("const"), v.get("enum")) {
            (Some(c @ Value::String(_)), _) => Some(c.clone()),
            (None, Some(Value::Array(e))) if e.len() == 1 && e[0].is_string() => Some(e[0].clone()),
            _ => None,
        })
        .collect()
}

/// Why `schema` is not a structural schema the API server accepts (empty when it is),
/// each as `<path>: <reason>`.
pub fn violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, "", &mut out);
    out
}

fn check(schema: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        out.push(format!("{path}: not an object schema"));
        return;
    };
    let preserve = map.get(PRESERVE) == Some(&json!(true));
    match map.get("type") {
        Some(Value::String(t))
            if ["object", "array", "string", "integer", "number", "boolean"]
                .contains(&t.as_str()) => {}
        Some(other) => out.push(format!("{path}: type {other} is not a single OpenAPI type")),
        None if preserve || map.get("x-kubernetes-int-or-string") == Some(&json!(true)) => {}
        None => out.push(format!("{path}: no type")),
    }
    for forbidden in [
        "$ref",
        "const",
        "definitions",
        "$defs",
        "$schema",
        "default",
        "nullable",
        "additionalItems",
        "patternProperties",
        "dependencies",
    ] {
        if map.contains_key(forbidden) {
            out.push(format!("{path}: {forbidden} is not allowed"));
        }
    }
    for union in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(v) = map.get(union) {
            // Value validations only: no types or properties inside.
            let text = v.to_string();
            if text.contains("\"type\"") || text.contains("\"properties\"") {
                out.push(format!(
                    "{path}: {union} may not declare types or properties"
                ));
            }
        }
    }
    if let Some(Value::Array(values)) = map.get("enum")
        && values.iter().any(Value::is_null)
    {
        out.push(format!("{path}: enum contains null"));
    }
    if let Some(format) = map.get("format").and_then(Value::as_str)
        && !["int32", "int64", "float", "double", "byte", "date-time"].contains(&format)
    {
        out.push(format!("{path}: format {format} unknown to the API server"));
    }
    match map.get("additionalProperties") {
        None => {}
        Some(Value::Object(_)) if map.contains_key("properties") => {
            out.push(format!("{path}: additionalProperties next to properties"))
        }
        Some(inner @ Value::Object(_)) => check(inner, &format!("{path}{{}}"), out),
        Some(_) => out.push(format!("{path}: additionalProperties must be a schema")),
    }
    if let Some(Value::Object(props)) = map.get("properties") {
        for (k, v) in props {
            check(v, &format!("{path}.{k}"), out);
        }
    }
    match (map.get("type"), map.get("items")) {
        (Some(t), Some(items)) if t == "array" => check(items, &format!("{path}[]"), out),
        (Some(t), None) if t == "array" => out.push(format!("{path}: array without items")),
        (_, Some(_)) => out.push(format!("{path}: items on a non-array")),
        _ => {}
    }
}
