//! A small parser for the Prometheus text exposition format (and the OpenMetrics text that
//! prometheus-client writes), enough for counters and histograms with labels.
//!
//! Why not a crate: the one maintained candidate (`prometheus-parse`) finds the label set
//! with a `[^}]+` regex, so a label value holding `}` (legal, and possible in principals,
//! hosts or paths) splits a sample wrongly, and it allocates a map per sample. The collector
//! parses every proxy's page every few seconds, so this parser borrows from the page, checks
//! the label block once while finding its end (quotes and escapes respected), and unescapes a
//! value only when it is asked for.

use std::borrow::Cow;

/// Why a line is not a valid sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number in the page.
    pub line: usize,
    pub reason: &'static str,
}

/// One sample line, borrowed from the page.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Metric name as written (`istio_requests_total`, `…_bucket`).
    pub name: &'a str,
    /// `name{labels}` exactly as written: identifies the series within one target's pages.
    pub series: &'a str,
    /// The text between the braces (already checked to be well formed).
    raw_labels: &'a str,
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The labels in page order, values unescaped.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            rest: self.raw_labels,
        }
    }

    /// One label's value (unescaped), if present.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        self.labels().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

/// Iterator over a sample's labels.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        // The block was validated by `scan_labels`, so a malformed remainder only ends the
        // iteration (never panics).
        let s = self.rest.trim_start_matches([' ', '\t', ',']);
        let eq = s.find('=')?;
        let name = s[..eq].trim();
        let after = s[eq + 1..].trim_start();
        let body = after.strip_prefix('"')?;
        let end = closing_quote(body)?;
        let raw = &body[..end];
        self.rest = &body[end + 1..];
        Some((name, unescape(raw)))
    }
}

/// Every sample of a page, skipping comments (`# HELP`, `# TYPE`, `# EOF`) and blank lines.
pub fn samples(page: &str) -> impl Iterator<Item = Result<Sample<'_>, ParseError>> {
    page.lines().enumerate().filter_map(|(i, line)| {
        parse_line(line)
            .map_err(|reason| ParseError {
                line: i + 1,
                reason,
            })
            .transpose()
    })
}

/// One line: `Ok(None)` for comments and blank lines.
pub fn parse_line(line: &str) -> Result<Option<Sample<'_>>, &'static str> {
    let line = line.trim_start_matches([' ', '\t']).trim_end_matches('\r');
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("expected a metric name");
    }
    let rest = &line[name_end..];
    let (raw_labels, series_end, rest) = match rest.trim_start_matches([' ', '\t']) {
        r if r.starts_with('{') => {
            let inner = &r[1..];
            let close = scan_labels(inner)?;
            let after = &inner[close + 1..];
            let series_end = line.len() - after.len();
            (&inner[..close], series_end, after)
        }
        _ => ("", name_end, rest),
    };
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("missing value")?;
    let value = parse_value(value).ok_or("value is not a number")?;
    // An optional timestamp and an OpenMetrics exemplar (` # {…} v`) may follow; the
    // collector uses its own scrape time, so both are ignored.
    Ok(Some(Sample {
        name,
        series: &line[..series_end],
        raw_labels,
        value,
    }))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Checks `l="v",…}` and returns the index of the closing brace.
fn scan_labels(s: &str) -> Result<usize, &'static str> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        match bytes.get(i) {
            None => return Err("unterminated label set"),
            Some(b'}') => return Ok(i),
            _ => {}
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i == start || bytes[start].is_ascii_digit() {
            return Err("expected a label name");
        }
        skip_ws(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err("expected '=' after a label name");
        }
        i += 1;
        skip_ws(&mut i);
        if bytes.get(i) != Some(&b'"') {
            return Err("expected a quoted label value");
        }
        i += 1;
        i += closing_quote(&s[i..]).ok_or("unterminated label value")? + 1;
        skip_ws(&mut i);
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i),
            None => return Err("unterminated label set"),
            _ => return Err("expected ',' or '}' after a label value"),
        }
    }
}

/// Index of the first unescaped `"` in `s`.
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// `\\`, `\"` and `\n` as the format defines them; any other escape is kept as written.
fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What mast-proxy's `/stats/prometheus` looks like (prometheus-client 0.25's encoder,
    /// the label order of `proxy/src/metrics.rs`), trimmed to a few buckets.
    const MAST_PROXY_PAGE: &str = r#"# HELP istio_requests Requests.
# TYPE istio_requests counter
istio_requests_total{reporter="destination",source_workload="client",source_workload_namespace="default",source_principal="spiffe://cluster.local/ns/default/sa/client",source_app="client",source_version="unknown",source_cluster="Kubernetes",destination_workload="user-v1",destination_workload_namespace="default",destination_principal="spiffe://cluster.local/ns/default/sa/user",destination_app="user",destination_version="v1",destination_service="user.default.svc.cluster.local",destination_service_name="user",destination_service_namespace="default",destination_cluster="Kubernetes",request_protocol="http",response_code="200",grpc_response_status="",connection_security_policy="mutual_tls",response_flags="-"} 42
# HELP istio_request_duration_milliseconds Request duration.
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_sum{reporter="destination",source_workload="client",response_code="200"} 123.5
istio_request_duration_milliseconds_count{reporter="destination",source_workload="client",response_code="200"} 42
istio_request_duration_milliseconds_bucket{le="0.5",reporter="destination",source_workload="client",response_code="200"} 0
istio_request_duration_milliseconds_bucket{le="1.0",reporter="destination",source_workload="client",response_code="200"} 2
istio_request_duration_milliseconds_bucket{le="+Inf",reporter="destination",source_workload="client",response_code="200"} 42
# HELP istio_tcp_sent_bytes Bytes sent.
# TYPE istio_tcp_sent_bytes counter
istio_tcp_sent_bytes_total{reporter="source",source_workload="client",connection_security_policy="unknown",response_flags="-"} 1234
# EOF
"#;

    #[test]
    fn parses_mast_proxy_page() {
        let samples: Vec<Sample> = samples(MAST_PROXY_PAGE).collect::<Result<_, _>>().unwrap();
        assert_eq!(samples.len(), 7);
        let req = &samples[0];
        assert_eq!(req.name, "istio_requests_total");
        assert_eq!(req.value, 42.0);
        assert_eq!(req.labels().count(), 21);
        assert_eq!(req.label("destination_workload").unwrap(), "user-v1");
        assert_eq!(
            req.label("connection_security_policy").unwrap(),
            "mutual_tls"
        );
        assert_eq!(req.label("grpc_response_status").unwrap(), "");
        assert!(req.series.starts_with("istio_requests_total{reporter="));
        assert!(req.series.ends_with("response_flags=\"-\"}"));
        assert_eq!(samples[1].value, 123.5);
        let inf = &samples[5];
        assert_eq!(inf.name, "istio_request_duration_milliseconds_bucket");
        assert_eq!(inf.label("le").unwrap(), "+Inf");
        assert_eq!(inf.value, 42.0);
        assert_eq!(samples[6].value, 1234.0);
    }

    #[test]
    fn escaped_quotes_backslashes_braces_and_newlines() {
        let line = r#"m{a="we\"ird\\na}me,x=\n",b="plain"} 7 1700000000000"#;
        let s = parse_line(line).unwrap().unwrap();
        assert_eq!(s.value, 7.0);
        let labels: Vec<(&str, String)> = s.labels().map(|(k, v)| (k, v.into_owned())).collect();
        assert_eq!(
            labels,
            vec![
                ("a", "we\"ird\\na}me,x=\n".to_string()),
                ("b", "plain".to_string())
            ]
        );
        assert_eq!(s.series, &line[..line.len() - " 7 1700000000000".len()]);
    }

    #[test]
    fn envoy_style_and_odd_but_valid_lines() {
        // Envoy writes `le` last, integers for bounds, and no `# EOF`.
        let s = parse_line(
            r#"istio_request_duration_milliseconds_bucket{reporter="source",le="0.5"} 3"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.label("le").unwrap(), "0.5");
        // Trailing comma, spaces, no labels, special values, exemplar.
        let s = parse_line(r#"m{ a = "1" , } +Inf"#).unwrap().unwrap();
        assert_eq!(s.label("a").unwrap(), "1");
        assert!(s.value.is_infinite());
        let s = parse_line("up 1").unwrap().unwrap();
        assert_eq!((s.name, s.series, s.labels().count()), ("up", "up", 0));
        assert!(parse_line("m NaN").unwrap().unwrap().value.is_nan());
        let s = parse_line(r#"m_total{a="b"} 5 # {trace_id="x"} 1.0"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.value, 5.0);
        assert_eq!(parse_line("   ").unwrap(), None);
        assert_eq!(parse_line("# TYPE m counter").unwrap(), None);
        assert_eq!(parse_line("m 1\r").unwrap().unwrap().value, 1.0);
    }

    #[test]
    fn rejects_broken_lines_with_line_numbers() {
        for bad in [
            r#"m{a="1"} "#,
            r#"m{a="1" 3"#,
            r#"m{a=1} 3"#,
            r#"m{a="unterminated} 3"#,
            r#"m{="x"} 3"#,
            r#"m{a="1" b="2"} 3"#,
            "m abc",
            "{a=\"1\"} 3",
            "9m 3",
        ] {
            assert!(parse_line(bad).is_err(), "{bad} should be rejected");
        }
        let page = "ok 1\nbroken{ 2\nok 3\n";
        let results: Vec<_> = samples(page).collect();
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[1].as_ref().unwrap_err(),
            &ParseError {
                line: 2,
                reason: "expected a label name"
            }
        );
    }

    #[test]
    fn multibyte_label_values() {
        let s = parse_line(r#"m{a="héllo \"wörld\"",b="ü"} 2"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.label("a").unwrap(), "héllo \"wörld\"");
        assert_eq!(s.label("b").unwrap(), "ü");
    }
}
