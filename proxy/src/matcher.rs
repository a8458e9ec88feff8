//! Envoy's string and header matchers, compiled once from xDS and shared by every consumer.
//!
//! Routes (`RouteMatch.headers`, `query_parameters`) and RBAC (`header`, `url_path`,
//! `requested_server_name`, `principal_name`) all match with the same two protos. They used
//! to have a copy each, and the copies drifted apart from each other and from Envoy (one
//! joined repeated headers, the other read the first; one treated a deprecated
//! `exact_match: ""` as "any value", the other as "empty"; one refused `:authority`). An
//! AuthorizationPolicy and a VirtualService that name the same header must see the same
//! value, so there is one implementation here, following Envoy's `HeaderUtility::matchHeaders`
//! and `StringMatcherImpl`:
//!
//! - a header with several values matches when any one of them does, and `invert_match`
//!   inverts that answer: what Envoy 1.40 does (measured with the same requests: `x-m: a` and
//!   `x-m: b` match `exact: a` and `range [10,20)` matches `15`, `16`; `exact: "a,b"` does
//!   not match them, although `HeaderUtility` once joined the values with `,`);
//! - an absent header matches nothing, whatever `invert_match` says, unless the matcher is a
//!   `present_match` (then "absent" is its answer, inverted if asked) or
//!   `treat_missing_header_as_empty` is set (then the value is `""`);
//! - `range_match` parses the whole value as a signed 64-bit integer, `[start, end)`;
//! - the deprecated `exact_match: ""` matches any value;
//! - `ignore_case` folds ASCII only and is refused with `safe_regex` (Envoy NACKs it too);
//! - regexes are full matches;
//! - the pseudo-headers are read as Envoy's request header map holds them: `:authority` (the
//!   `Host` header for HTTP/1), `:path` (with the query), `:method`, `:scheme`; a matcher on
//!   `host` reads `:authority` too, as Envoy's header map answers for `host` with it.
//!
//! Matching runs on bytes: a header value need not be UTF-8, and Envoy compares bytes.

use envoy_types::pb::envoy::config::route::v3::HeaderMatcher as HeaderMatcherProto;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher as StringMatcherProto,
};
use http::HeaderName;
use http::request::Parts;

use crate::resources::{At, FieldError, FieldResult};

/// `envoy.type.matcher.v3.StringMatcher`, compiled.
#[derive(Debug)]
pub struct StringMatcher {
    pattern: Pattern,
    ignore_case: bool,
}

#[derive(Debug)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::bytes::Regex),
}

/// `envoy.config.route.v3.HeaderMatcher`, compiled.
#[derive(Debug)]
pub struct HeaderMatcher {
    source: Source,
    kind: Kind,
    invert: bool,
    missing_as_empty: bool,
}

/// Where a matcher's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Authority,
    Path,
    Method,
    Scheme,
    /// A pseudo-header a request never has here (`:protocol`, `:status`, …).
    Absent,
    Named(HeaderName),
}

#[derive(Debug)]
enum Kind {
    Str(StringMatcher),
    /// The deprecated `exact_match`: an empty value matches any value.
    LegacyExact(String),
    Present(bool),
    /// `[start, end)`.
    Range(i64, i64),
}

/// What a header matcher reads from a request: the regular headers and the pseudo-headers
/// as Envoy's request header map holds them.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub headers: &'a http::HeaderMap,
    pub method: Option<&'a str>,
    /// `:authority`: the URI's authority, else the `Host` header.
    pub authority: Option<&'a str>,
    /// `:path`: the path with its query, as sent (after normalisation).
    pub path: Option<&'a str>,
    /// `:scheme`: see [`scheme`].
    pub scheme: Option<&'a str>,
}

// === impl StringMatcher ===

impl StringMatcher {
    pub fn from_proto(s: &StringMatcherProto) -> FieldResult<Self> {
        let pattern = match &s.match_pattern {
            Some(MatchPattern::Exact(v)) => Pattern::Exact(v.clone()),
            Some(MatchPattern::Prefix(v)) => Pattern::Prefix(nonempty(v, "prefix")?),
            Some(MatchPattern::Suffix(v)) => Pattern::Suffix(nonempty(v, "suffix")?),
            Some(MatchPattern::Contains(v)) => Pattern::Contains(nonempty(v, "contains")?),
            Some(MatchPattern::SafeRegex(r)) => {
                if s.ignore_case {
                    return Err(FieldError::new(
                        "ignore_case",
                        "has no effect for safe_regex (Envoy refuses it)",
                    ));
                }
                Pattern::Regex(bytes_regex(r).at("safe_regex")?)
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(FieldError::new(
                    "custom",
                    "custom string matchers are not supported",
                ));
            }
            None => {
                return Err(FieldError::new(
                    "match_pattern",
                    "one of exact, prefix, suffix, contains, safe_regex is required",
                ));
            }
        };
        Ok(Self {
            pattern,
            ignore_case: s.ignore_case,
        })
    }

    fn literal(pattern: Pattern) -> Self {
        Self {
            pattern,
            ignore_case: false,
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        self.matches_bytes(v.as_bytes())
    }

    /// `ignore_case` folds ASCII only, as absl's `EqualsIgnoreCase` does.
    pub fn matches_bytes(&self, v: &[u8]) -> bool {
        let ic = self.ignore_case;
        let eq = |a: &[u8], b: &[u8]| {
            if ic {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.pattern {
            Pattern::Exact(p) => eq(v, p.as_bytes()),
            Pattern::Prefix(p) => v.len() >= p.len() && eq(&v[..p.len()], p.as_bytes()),
            Pattern::Suffix(p) => v.len() >= p.len() && eq(&v[v.len() - p.len()..], p.as_bytes()),
            Pattern::Contains(p) => p.is_empty() || v.windows(p.len()).any(|w| eq(w, p.as_bytes())),
            Pattern::Regex(r) => r.is_match(v),
        }
    }
}

/// An RE2 regex (`safe_regex`) as a full match over a `&str`, errors at `field`.
pub fn full_match_regex(r: &RegexMatcher, field: &str) -> FieldResult<regex::Regex> {
    regex::Regex::new(&anchored(&r.regex))
        .map_err(|e| FieldError::new(field, format!("bad regex {:?}: {e}", r.regex)))
}

fn bytes_regex(r: &RegexMatcher) -> FieldResult<regex::bytes::Regex> {
    if r.regex.is_empty() {
        return Err(FieldError::new("regex", "must not be empty"));
    }
    regex::bytes::Regex::new(&anchored(&r.regex))
        .map_err(|e| FieldError::new("regex", format!("bad regex {:?}: {e}", r.regex)))
}

/// Envoy's proto validation (`min_len: 1`) refuses empty prefixes, suffixes and substrings.
fn nonempty(v: &str, field: &str) -> FieldResult<String> {
    if v.is_empty() {
        Err(FieldError::new(field, "must not be empty"))
    } else {
        Ok(v.to_string())
    }
}

fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

// === impl HeaderMatcher ===

impl HeaderMatcher {
    // Istio and older control planes still write the deprecated exact/prefix/regex forms.
    #[allow(deprecated)]
    pub fn from_proto(h: &HeaderMatcherProto) -> FieldResult<Self> {
        let lower = h.name.to_ascii_lowercase();
        let source = match lower.as_str() {
            "" => return Err(FieldError::new("name", "must not be empty")),
            ":authority" | "host" => Source::Authority,
            ":path" => Source::Path,
            ":method" => Source::Method,
            ":scheme" => Source::Scheme,
            n if n.starts_with(':') => Source::Absent,
            n => Source::Named(HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                FieldError::new("name", format!("{:?} is not a header name", h.name))
            })?),
        };
        let literal = |p| Kind::Str(StringMatcher::literal(p));
        let kind = match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::ExactMatch(v)) => Kind::LegacyExact(v.clone()),
            Some(HeaderMatchSpecifier::PrefixMatch(v)) => {
                literal(Pattern::Prefix(nonempty(v, "prefix_match")?))
            }
            Some(HeaderMatchSpecifier::SuffixMatch(v)) => {
                literal(Pattern::Suffix(nonempty(v, "suffix_match")?))
            }
            Some(HeaderMatchSpecifier::ContainsMatch(v)) => {
                literal(Pattern::Contains(nonempty(v, "contains_match")?))
            }
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
                literal(Pattern::Regex(bytes_regex(r).at("safe_regex_match")?))
            }
            Some(HeaderMatchSpecifier::StringMatch(s)) => {
                Kind::Str(StringMatcher::from_proto(s).at("string_match")?)
            }
            Some(HeaderMatchSpecifier::PresentMatch(p)) => Kind::Present(*p),
            Some(HeaderMatchSpecifier::RangeMatch(r)) => Kind::Range(r.start, r.end),
            // No specifier: the header must be present.
            None => Kind::Present(true),
        };
        Ok(Self {
            source,
            kind,
            invert: h.invert_match,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        let one = |v: Option<&str>| v.map(|v| self.kind_matches(v.as_bytes()));
        let hit = match &self.source {
            Source::Authority => one(req.authority),
            Source::Path => one(req.path),
            Source::Method => one(req.method),
            Source::Scheme => one(req.scheme),
            Source::Absent => None,
            // Several values: any one of them matching is a match (Envoy 1.40, measured).
            Source::Named(n) => {
                let mut values = req.headers.get_all(n).iter().peekable();
                values
                    .peek()
                    .is_some()
                    .then(|| values.any(|v| self.kind_matches(v.as_bytes())))
            }
        };
        match hit {
            Some(hit) => hit != self.invert,
            None if self.missing_as_empty => self.kind_matches(b"") != self.invert,
            // Absent: only a presence check can say anything, and `invert_match` applies to
            // its answer; every other matcher fails, inverted or not.
            None => match self.kind {
                Kind::Present(want) => want == self.invert,
                _ => false,
            },
        }
    }

    /// The match itself on one value, before `invert_match`.
    fn kind_matches(&self, value: &[u8]) -> bool {
        match &self.kind {
            Kind::Str(m) => m.matches_bytes(value),
            Kind::LegacyExact(e) => e.is_empty() || e.as_bytes() == value,
            Kind::Present(want) => *want,
            Kind::Range(lo, hi) => parse_i64(value).is_some_and(|n| *lo <= n && n < *hi),
        }
    }
}

/// absl's `SimpleAtoi` for `int64_t`: optional surrounding ASCII whitespace, an optional sign,
/// decimal digits, no overflow.
fn parse_i64(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.trim_ascii();
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// === impl RequestHead ===

impl<'a> RequestHead<'a> {
    /// A request as the router sees it (after sanitising), without TLS: `:scheme` comes from
    /// the URI (HTTP/2), else [`scheme`] with a plaintext connection.
    pub fn from_parts(parts: &'a Parts) -> Self {
        Self {
            headers: &parts.headers,
            method: Some(parts.method.as_str()),
            authority: parts
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok()),
            path: parts.uri.path_and_query().map(|p| p.as_str()),
            scheme: Some(scheme(parts.uri.scheme_str(), &parts.headers, false)),
        }
    }
}

/// `:scheme` as Envoy's connection manager leaves it: the one the client sent (HTTP/2), else
/// a valid `x-forwarded-proto` (`http` or `https`), else the connection's (`https` over TLS).
pub fn scheme<'a>(sent: Option<&'a str>, headers: &'a http::HeaderMap, tls: bool) -> &'a str {
    if let Some(s) = sent {
        return s;
    }
    match headers
        .get("x-forwarded-proto")
        .map(http::HeaderValue::as_bytes)
    {
        Some(b"http") => "http",
        Some(b"https") => "https",
        _ if tls => "https",
        _ => "http",
    }
}

#[cfg(test)]
mod tests {
    // The deprecated forms are part of what is tested.
    #![allow(deprecated)]

    use envoy_types::pb::envoy::r#type::v3::Int64Range;

    use super::*;

    fn sm(p: MatchPattern, ignore_case: bool) -> StringMatcherProto {
        StringMatcherProto {
            match_pattern: Some(p),
            ignore_case,
        }
    }

    fn re(r: &str) -> RegexMatcher {
        RegexMatcher {
            regex: r.into(),
            ..Default::default()
        }
    }

    fn hm(name: &str, spec: Option<HeaderMatchSpecifier>) -> HeaderMatcherProto {
        HeaderMatcherProto {
            name: name.into(),
            header_match_specifier: spec,
            ..Default::default()
        }
    }

    fn exact(v: &str) -> Option<HeaderMatchSpecifier> {
        Some(HeaderMatchSpecifier::StringMatch(sm(
            MatchPattern::Exact(v.into()),
            false,
        )))
    }

    /// What, the matcher, the request's headers, Envoy's answer.
    type Row = (
        &'static str,
        HeaderMatcherProto,
        Vec<(&'static str, &'static str)>,
        bool,
    );

    struct Req {
        headers: http::HeaderMap,
        method: &'static str,
        authority: &'static str,
        path: &'static str,
        scheme: &'static str,
    }

    fn req(headers: &[(&'static str, &'static str)]) -> Req {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, http::HeaderValue::from_static(v));
        }
        Req {
            headers: map,
            method: "GET",
            authority: "web.example:8080",
            path: "/a/b?q=1",
            scheme: "http",
        }
    }

    impl Req {
        fn head(&self) -> RequestHead<'_> {
            RequestHead {
                headers: &self.headers,
                method: Some(self.method),
                authority: Some(self.authority),
                path: Some(self.path),
                scheme: Some(self.scheme),
            }
        }
    }

    #[test]
    fn header_matchers_follow_envoy() {
        use HeaderMatchSpecifier as H;
        let invert = |mut h: HeaderMatcherProto| {
            h.invert_match = true;
            h
        };
        let empty_if_missing = |mut h: HeaderMatcherProto| {
            h.treat_missing_header_as_empty = true;
            h
        };
        let multi = [("x-m", "a"), ("x-m", "b")];
        let ic = |p| Some(H::StringMatch(sm(p, true)));
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            // Several values: any one matching is a match; invert_match inverts that.
            ("multi not joined", hm("x-m", exact("a,b")), multi.to_vec(), false),
            ("multi first", hm("x-m", exact("a")), multi.to_vec(), true),
            ("multi second", hm("x-m", exact("b")), multi.to_vec(), true),
            ("multi none", hm("x-m", exact("c")), multi.to_vec(), false),
            ("multi prefix across values", hm("x-m", Some(H::PrefixMatch("a,".into()))), multi.to_vec(), false),
            ("multi inverted, one matches", invert(hm("x-m", exact("a"))), multi.to_vec(), false),
            ("multi inverted, none matches", invert(hm("x-m", exact("c"))), multi.to_vec(), true),
            ("multi range", hm("x-m", Some(H::RangeMatch(Int64Range { start: 10, end: 20 }))), vec![("x-m", "15"), ("x-m", "16")], true),
            ("multi range, one in", hm("x-m", Some(H::RangeMatch(Int64Range { start: 0, end: 9 }))), vec![("x-m", "1"), ("x-m", "20")], true),
            // Empty values and the deprecated exact_match.
            ("exact empty, empty value", hm("x-e", exact("")), vec![("x-e", "")], true),
            ("exact empty, a value", hm("x-e", exact("")), vec![("x-e", "v")], false),
            ("exact empty, absent", hm("x-e", exact("")), vec![], false),
            ("legacy exact empty matches any", hm("x-e", Some(H::ExactMatch(String::new()))), vec![("x-e", "v")], true),
            ("legacy exact empty, absent", hm("x-e", Some(H::ExactMatch(String::new()))), vec![], false),
            ("legacy exact", hm("x-e", Some(H::ExactMatch("v".into()))), vec![("x-e", "v")], true),
            // Case.
            ("exact is case-sensitive", hm("x-c", exact("Foo")), vec![("x-c", "foo")], false),
            ("exact ignore_case", hm("x-c", ic(MatchPattern::Exact("Foo".into()))), vec![("x-c", "fOO")], true),
            ("prefix ignore_case", hm("x-c", ic(MatchPattern::Prefix("AB".into()))), vec![("x-c", "abc")], true),
            ("suffix ignore_case", hm("x-c", ic(MatchPattern::Suffix("YZ".into()))), vec![("x-c", "xyz")], true),
            ("contains ignore_case", hm("x-c", ic(MatchPattern::Contains("Mid".into()))), vec![("x-c", "aMIDb")], true),
            ("legacy prefix is case-sensitive", hm("x-c", Some(H::PrefixMatch("AB".into()))), vec![("x-c", "abc")], false),
            ("header name is case-insensitive", hm("X-C", exact("v")), vec![("x-c", "v")], true),
            // Invert.
            ("invert, other value", invert(hm("x-i", exact("bad"))), vec![("x-i", "good")], true),
            ("invert, same value", invert(hm("x-i", exact("bad"))), vec![("x-i", "bad")], false),
            ("invert, absent", invert(hm("x-i", exact("bad"))), vec![], false),
            // Presence.
            ("present, present", hm("x-p", Some(H::PresentMatch(true))), vec![("x-p", "")], true),
            ("present, absent", hm("x-p", Some(H::PresentMatch(true))), vec![], false),
            ("not present, absent", hm("x-p", Some(H::PresentMatch(false))), vec![], true),
            ("not present, present", hm("x-p", Some(H::PresentMatch(false))), vec![("x-p", "1")], false),
            ("inverted present, absent", invert(hm("x-p", Some(H::PresentMatch(true)))), vec![], true),
            ("inverted present, present", invert(hm("x-p", Some(H::PresentMatch(true)))), vec![("x-p", "1")], false),
            ("inverted not present, absent", invert(hm("x-p", Some(H::PresentMatch(false)))), vec![], false),
            ("no specifier means present", hm("x-p", None), vec![("x-p", "1")], true),
            ("no specifier, absent", hm("x-p", None), vec![], false),
            // treat_missing_header_as_empty.
            ("missing as empty, exact empty", empty_if_missing(hm("x-t", exact(""))), vec![], true),
            ("missing as empty, exact other", empty_if_missing(hm("x-t", exact("v"))), vec![], false),
            ("missing as empty, inverted", empty_if_missing(invert(hm("x-t", exact("secret")))), vec![], true),
            ("missing as empty, inverted, same", empty_if_missing(invert(hm("x-t", exact("secret")))), vec![("x-t", "secret")], false),
            ("missing as empty, present", empty_if_missing(hm("x-t", Some(H::PresentMatch(true)))), vec![], true),
            // Regexes are full matches.
            ("regex full", hm("x-r", Some(H::SafeRegexMatch(re("[0-9]+")))), vec![("x-r", "123")], true),
            ("regex not a search", hm("x-r", Some(H::SafeRegexMatch(re("[0-9]+")))), vec![("x-r", "a123")], false),
            ("string_match regex", hm("x-r", Some(H::StringMatch(sm(MatchPattern::SafeRegex(re("ab.*")), false)))), vec![("x-r", "abc")], true),
            ("string_match regex anchored", hm("x-r", Some(H::StringMatch(sm(MatchPattern::SafeRegex(re("ab|cd")), false)))), vec![("x-r", "abcd")], false),
            // Ranges.
            ("range inside", hm("x-n", Some(H::RangeMatch(Int64Range { start: 10, end: 20 }))), vec![("x-n", "15")], true),
            ("range end is open", hm("x-n", Some(H::RangeMatch(Int64Range { start: 10, end: 20 }))), vec![("x-n", "20")], false),
            ("range negative", hm("x-n", Some(H::RangeMatch(Int64Range { start: -10, end: 0 }))), vec![("x-n", "-1")], true),
            ("range plus sign", hm("x-n", Some(H::RangeMatch(Int64Range { start: 10, end: 20 }))), vec![("x-n", "+15")], true),
            ("range not a number", hm("x-n", Some(H::RangeMatch(Int64Range { start: 10, end: 20 }))), vec![("x-n", "15x")], false),
            ("range overflow", hm("x-n", Some(H::RangeMatch(Int64Range { start: 0, end: i64::MAX }))), vec![("x-n", "99999999999999999999")], false),
            // Pseudo-headers.
            (":authority", hm(":authority", exact("web.example:8080")), vec![], true),
            (":authority prefix", hm(":Authority", ic(MatchPattern::Prefix("WEB.".into()))), vec![], true),
            ("host is :authority", hm("host", exact("web.example:8080")), vec![], true),
            (":authority is not folded", hm(":authority", exact("WEB.example:8080")), vec![], false),
            (":path has the query", hm(":path", exact("/a/b?q=1")), vec![], true),
            (":path without the query", hm(":path", exact("/a/b")), vec![], false),
            (":method", hm(":method", exact("GET")), vec![], true),
            (":scheme", hm(":scheme", exact("http")), vec![], true),
            (":protocol is absent", hm(":protocol", None), vec![], false),
            (":protocol not present", hm(":protocol", Some(H::PresentMatch(false))), vec![], true),
        ];
        let mut wrong = Vec::new();
        for (what, proto, headers, want) in &table {
            let m = HeaderMatcher::from_proto(proto).unwrap();
            let r = req(headers);
            if m.matches(&r.head()) != *want {
                wrong.push(*what);
            }
        }
        assert!(wrong.is_empty(), "differ from Envoy: {wrong:?}");
    }

    #[test]
    fn string_matchers_follow_envoy() {
        let m = |p, ic| StringMatcher::from_proto(&sm(p, ic)).unwrap();
        assert!(m(MatchPattern::Exact(String::new()), false).matches(""));
        assert!(!m(MatchPattern::Exact(String::new()), false).matches("x"));
        assert!(m(MatchPattern::Suffix("Z".into()), true).matches("az"));
        assert!(!m(MatchPattern::Contains("é".into()), true).matches("É"));
        assert!(m(MatchPattern::SafeRegex(re("a.c")), false).matches("abc"));
        assert!(!m(MatchPattern::SafeRegex(re("a.c")), false).matches("abcd"));
        assert!(
            m(MatchPattern::Exact("v".into()), false).matches_bytes(b"v"),
            "bytes"
        );
        assert!(!m(MatchPattern::Prefix("ab".into()), false).matches_bytes(b"a\xff"));
    }

    #[test]
    fn bad_matchers_are_refused_naming_the_field() {
        use HeaderMatchSpecifier as H;
        let err = |h: HeaderMatcherProto| HeaderMatcher::from_proto(&h).unwrap_err().field;
        assert_eq!(
            err(hm("x", Some(H::SafeRegexMatch(re("("))))),
            "safe_regex_match.regex"
        );
        assert_eq!(
            err(hm(
                "x",
                Some(H::StringMatch(sm(MatchPattern::SafeRegex(re("a")), true)))
            )),
            "string_match.ignore_case"
        );
        assert_eq!(
            err(hm(
                "x",
                Some(H::StringMatch(sm(
                    MatchPattern::Prefix(String::new()),
                    false
                )))
            )),
            "string_match.prefix"
        );
        assert_eq!(
            err(hm("x", Some(H::StringMatch(StringMatcherProto::default())))),
            "string_match.match_pattern"
        );
        assert_eq!(
            err(hm("x", Some(H::PrefixMatch(String::new())))),
            "prefix_match"
        );
        assert!(HeaderMatcher::from_proto(&hm("x", Some(H::ExactMatch(String::new())))).is_ok());
        assert_eq!(err(hm("bad name", None)), "name");
        assert_eq!(err(hm("", None)), "name");
        // Pseudo-headers are names, not errors (VirtualService `authority` becomes one).
        assert!(HeaderMatcher::from_proto(&hm(":authority", exact("a"))).is_ok());
    }

    #[test]
    fn scheme_is_what_envoy_sets() {
        let mut h = http::HeaderMap::new();
        assert_eq!(scheme(None, &h, false), "http");
        assert_eq!(scheme(None, &h, true), "https");
        assert_eq!(scheme(Some("https"), &h, false), "https");
        h.insert("x-forwarded-proto", http::HeaderValue::from_static("https"));
        assert_eq!(scheme(None, &h, false), "https");
        h.insert("x-forwarded-proto", http::HeaderValue::from_static("ftp"));
        assert_eq!(scheme(None, &h, false), "http");
    }

    #[test]
    fn request_head_from_parts() {
        let (parts, ()) = http::Request::get("/p?q")
            .header("host", "h.example")
            .body(())
            .unwrap()
            .into_parts();
        let head = RequestHead::from_parts(&parts);
        assert_eq!(head.authority, Some("h.example"));
        assert_eq!(head.path, Some("/p?q"));
        assert_eq!(head.method, Some("GET"));
        assert_eq!(head.scheme, Some("http"));
    }
}
