//! RBAC's `metadata` / `sourced_metadata` matchers over a request's dynamic metadata.
//!
//! Istio turns `requestPrincipals`, `request.auth.principal`, `request.auth.claims[...]`,
//! `request.auth.audiences` and `request.auth.presenter` into matchers on the metadata the
//! `jwt_authn` filter writes (`envoy.filters.http.jwt_authn` → `payload` → claim). mast-proxy
//! keeps dynamic metadata as JSON — one object per filter name, as Envoy keeps one Struct per
//! filter — so the JWT filter stores the verified payload as it was signed, and these
//! matchers read it with Envoy's `ValueMatcher` semantics: a string matcher matches only a
//! string, `list_match.one_of` any element of a list, `present_match` whether the path
//! resolves, `or_match` any of its matchers; `invert` negates the whole result.

use envoy_types::pb::envoy::config::rbac::v3::SourcedMetadata;
use envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher as MetadataMatcherProto;
use envoy_types::pb::envoy::r#type::matcher::v3::ValueMatcher as ValueMatcherProto;
use envoy_types::pb::envoy::r#type::matcher::v3::double_matcher::MatchPattern as DoublePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern;
use serde_json::Value;

use crate::matcher::StringMatcher;
use crate::resources::{At, FieldError, FieldResult};

/// A request's dynamic metadata: one JSON object per filter name.
pub type DynamicMetadata = serde_json::Map<String, Value>;

/// A compiled `MetadataMatcher`.
#[derive(Debug)]
pub struct MetadataMatcher {
    filter: String,
    path: Vec<String>,
    value: ValueMatch,
    invert: bool,
}

#[derive(Debug)]
enum ValueMatch {
    Null,
    Double(DoubleMatch),
    String(StringMatcher),
    Bool(bool),
    Present(bool),
    ListOneOf(Box<ValueMatch>),
    Or(Vec<ValueMatch>),
}

#[derive(Debug)]
enum DoubleMatch {
    Exact(f64),
    /// `[start, end)`.
    Range(f64, f64),
}

// === impl MetadataMatcher ===

impl MetadataMatcher {
    pub fn from_proto(m: &MetadataMatcherProto) -> FieldResult<Self> {
        let path = m
            .path
            .iter()
            .enumerate()
            .map(|(i, s)| match &s.segment {
                Some(Segment::Key(k)) => Ok(k.clone()),
                None => Err(FieldError::new(format!("path[{i}].key"), "required")),
            })
            .collect::<FieldResult<Vec<_>>>()?;
        if path.is_empty() {
            return Err(FieldError::new("path", "at least one segment is required"));
        }
        let value = m
            .value
            .as_ref()
            .ok_or_else(|| FieldError::new("value", "required"))?;
        Ok(Self {
            filter: m.filter.clone(),
            path,
            value: ValueMatch::from_proto(value).at("value")?,
            invert: m.invert,
        })
    }

    /// `sourced_metadata`: only dynamic metadata (the default source) can be read here.
    pub fn from_sourced(s: &SourcedMetadata) -> FieldResult<Option<Self>> {
        // 0 is DYNAMIC; ROUTE metadata is not kept by mast-proxy and never matches.
        if s.metadata_source != 0 {
            return Ok(None);
        }
        let m = s
            .metadata_matcher
            .as_ref()
            .ok_or_else(|| FieldError::new("metadata_matcher", "required"))?;
        Self::from_proto(m).at("metadata_matcher").map(Some)
    }

    pub fn matches(&self, metadata: Option<&DynamicMetadata>) -> bool {
        let value = metadata.and_then(|m| {
            self.path
                .iter()
                .try_fold(m.get(&self.filter)?, |v, key| v.get(key))
        });
        self.value.matches(value) != self.invert
    }
}

// === impl ValueMatch ===

impl ValueMatch {
    fn from_proto(v: &ValueMatcherProto) -> FieldResult<Self> {
        Ok(match &v.match_pattern {
            Some(MatchPattern::NullMatch(_)) => Self::Null,
            Some(MatchPattern::DoubleMatch(d)) => Self::Double(match &d.match_pattern {
                Some(DoublePattern::Exact(x)) => DoubleMatch::Exact(*x),
                Some(DoublePattern::Range(r)) => DoubleMatch::Range(r.start, r.end),
                None => return Err(FieldError::new("double_match", "a pattern is required")),
            }),
            Some(MatchPattern::StringMatch(s)) => {
                Self::String(StringMatcher::from_proto(s).at("string_match")?)
            }
            Some(MatchPattern::BoolMatch(b)) => Self::Bool(*b),
            Some(MatchPattern::PresentMatch(p)) => Self::Present(*p),
            Some(MatchPattern::ListMatch(l)) => match &l.match_pattern {
                Some(ListPattern::OneOf(one)) => {
                    Self::ListOneOf(Box::new(Self::from_proto(one).at("list_match.one_of")?))
                }
                None => return Err(FieldError::new("list_match", "a pattern is required")),
            },
            Some(MatchPattern::OrMatch(o)) => Self::Or(
                o.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| Self::from_proto(m).at(format!("or_match.value_matchers[{i}]")))
                    .collect::<FieldResult<Vec<_>>>()?,
            ),
            None => return Err(FieldError::new("match_pattern", "required")),
        })
    }

    fn matches(&self, v: Option<&Value>) -> bool {
        match (self, v) {
            (Self::Present(want), v) => *want == v.is_some(),
            (Self::Or(ms), v) => ms.iter().any(|m| m.matches(v)),
            (_, None) => false,
            (Self::Null, Some(v)) => v.is_null(),
            (Self::Double(d), Some(Value::Number(n))) => n.as_f64().is_some_and(|x| match d {
                DoubleMatch::Exact(e) => x == *e,
                DoubleMatch::Range(lo, hi) => *lo <= x && x < *hi,
            }),
            (Self::String(m), Some(Value::String(s))) => m.matches(s),
            (Self::Bool(b), Some(Value::Bool(x))) => b == x,
            (Self::ListOneOf(m), Some(Value::Array(items))) => {
                items.iter().any(|i| m.matches(Some(i)))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as StringPattern;
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        ListMatcher, OrMatcher, StringMatcher as StringMatcherProto,
    };

    use super::*;

    fn string(exact: &str) -> ValueMatcherProto {
        ValueMatcherProto {
            match_pattern: Some(MatchPattern::StringMatch(StringMatcherProto {
                match_pattern: Some(StringPattern::Exact(exact.into())),
                ..Default::default()
            })),
        }
    }

    /// Istio's claim matcher: a list containing the value, or the value itself.
    fn claim(path: &[&str], value: &str) -> MetadataMatcher {
        let proto = MetadataMatcherProto {
            filter: "envoy.filters.http.jwt_authn".into(),
            path: path
                .iter()
                .map(|k| PathSegment {
                    segment: Some(Segment::Key(k.to_string())),
                })
                .collect(),
            value: Some(ValueMatcherProto {
                match_pattern: Some(MatchPattern::OrMatch(OrMatcher {
                    value_matchers: vec![
                        ValueMatcherProto {
                            match_pattern: Some(MatchPattern::ListMatch(Box::new(ListMatcher {
                                match_pattern: Some(ListPattern::OneOf(Box::new(string(value)))),
                            }))),
                        },
                        string(value),
                    ],
                })),
            }),
            invert: false,
        };
        MetadataMatcher::from_proto(&proto).unwrap()
    }

    #[test]
    fn claims_match_as_string_or_list_element() {
        let md: DynamicMetadata = serde_json::from_str(
            r#"{"envoy.filters.http.jwt_authn":{"payload":{"iss":"i","groups":["dev","admin"],"n":3}}}"#,
        )
        .unwrap();
        assert!(claim(&["payload", "groups"], "admin").matches(Some(&md)));
        assert!(!claim(&["payload", "groups"], "ops").matches(Some(&md)));
        assert!(claim(&["payload", "iss"], "i").matches(Some(&md)));
        assert!(!claim(&["payload", "n"], "3").matches(Some(&md)));
        assert!(!claim(&["payload", "missing"], "i").matches(Some(&md)));
        assert!(!claim(&["payload", "iss"], "i").matches(None));
    }
}
