//! Prometheus' HTTP API, the part the Prometheus source needs: instant and range queries
//! (`/api/v1/query`, `/api/v1/query_range`) over a pooled HTTP/1 client with a deadline, and
//! the parsing of their JSON answers.
//!
//! Why a module of its own: the answers come from a server Mast does not control (another
//! Prometheus version, a proxy in front of it, an overloaded one), so every odd shape — an
//! error envelope, an HTML error page, `NaN` and `±Inf` sample values, native-histogram
//! samples without a float value, a truncated body — becomes a typed result or a
//! [`PrometheusError`] the API can show, never a panic. Queries are POSTed as a form, as
//! Prometheus' own Go client does, so long PromQL does not hit URL length limits.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::Value;
use tracing::debug;

/// Characters left as they are in a form value (`application/x-www-form-urlencoded`).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'*');

/// Why a Prometheus query failed; the API answers it as 502 with this text.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("Prometheus URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach Prometheus: {0}")]
    Unreachable(String),
    /// Prometheus' own error envelope (`{"status": "error", "errorType": …, "error": …}`).
    #[error("{error_type}: {message}")]
    Api { error_type: String, message: String },
    #[error("HTTP status {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("unexpected answer: {0}")]
    BadResponse(String),
}

/// One series of an instant query's vector (a scalar answer is one sample without labels).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSample {
    pub labels: BTreeMap<String, String>,
    /// Evaluation time, Unix seconds.
    pub time: f64,
    /// As Prometheus computed it: may be `NaN` or `±Inf`.
    pub value: f64,
}

/// One series of a range query's matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    /// `(Unix seconds, value)`, oldest first; values may be `NaN` or `±Inf`.
    pub points: Vec<(f64, f64)>,
}

/// The `data` of a successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryData {
    Vector(Vec<VectorSample>),
    Matrix(Vec<RangeSeries>),
    Scalar { time: f64, value: f64 },
    String { time: f64, value: String },
}

impl QueryData {
    fn kind(&self) -> &'static str {
        match self {
            QueryData::Vector(_) => "vector",
            QueryData::Matrix(_) => "matrix",
            QueryData::Scalar { .. } => "scalar",
            QueryData::String { .. } => "string",
        }
    }
}

/// A parsed answer: its data and Prometheus' warnings (e.g. a partial answer).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub data: QueryData,
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct Envelope {
    status: Option<String>,
    data: Option<RawData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct RawData {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: Value,
}

/// Parses the body of an answer to `/api/v1/query` or `/api/v1/query_range`.
///
/// Prometheus answers errors with a JSON envelope and a 4xx/5xx status (400 `bad_data`, 422
/// `execution`, 503 `timeout`); anything that is not that JSON (a proxy's HTML page) is an
/// error naming the HTTP status and the start of the body.
pub fn parse_answer(status: StatusCode, body: &[u8]) -> Result<Answer, PrometheusError> {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) if status.is_success() => {
            return Err(PrometheusError::BadResponse(format!(
                "not Prometheus JSON ({e}): {}",
                snippet(body)
            )));
        }
        Err(_) => {
            return Err(PrometheusError::Status {
                status,
                body: snippet(body),
            });
        }
    };
    match envelope.status.as_deref() {
        Some("success") => {}
        Some("error") => {
            return Err(PrometheusError::Api {
                error_type: envelope.error_type.unwrap_or_else(|| "error".into()),
                message: envelope
                    .error
                    .unwrap_or_else(|| format!("HTTP status {status}")),
            });
        }
        _ if !status.is_success() => {
            return Err(PrometheusError::Status {
                status,
                body: snippet(body),
            });
        }
        other => {
            return Err(PrometheusError::BadResponse(format!(
                "status {other:?} (expected \"success\" or \"error\")"
            )));
        }
    }
    let raw = envelope
        .data
        .ok_or_else(|| PrometheusError::BadResponse("success without data".into()))?;
    let data = match raw.result_type.as_str() {
        "vector" => QueryData::Vector(vector(&raw.result)?),
        "matrix" => QueryData::Matrix(matrix(&raw.result)?),
        "scalar" => {
            let (time, value) = point(&raw.result)?;
            QueryData::Scalar { time, value }
        }
        "string" => {
            let (time, value) = string_point(&raw.result)?;
            QueryData::String { time, value }
        }
        other => {
            return Err(PrometheusError::BadResponse(format!(
                "unknown resultType {other:?}"
            )));
        }
    };
    Ok(Answer {
        data,
        warnings: envelope.warnings,
    })
}

fn bad(what: &str, v: &Value) -> PrometheusError {
    PrometheusError::BadResponse(format!("{what}: {}", snippet(v.to_string().as_bytes())))
}

fn vector(result: &Value) -> Result<Vec<VectorSample>, PrometheusError> {
    let Some(items) = result.as_array() else {
        return match result {
            Value::Null => Ok(Vec::new()),
            _ => Err(bad("vector result is not a list", result)),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        // A native-histogram sample has `histogram` instead of `value`: no float to read.
        let Some(value) = item.get("value") else {
            if item.get("histogram").is_some() {
                continue;
            }
            return Err(bad("vector sample without value", item));
        };
        let (time, value) = point(value)?;
        out.push(VectorSample {
            labels: labels(item.get("metric"))?,
            time,
            value,
        });
    }
    Ok(out)
}

fn matrix(result: &Value) -> Result<Vec<RangeSeries>, PrometheusError> {
    let Some(items) = result.as_array() else {
        return match result {
            Value::Null => Ok(Vec::new()),
            _ => Err(bad("matrix result is not a list", result)),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let points = match item.get("values") {
            Some(Value::Array(values)) => values.iter().map(point).collect::<Result<_, _>>()?,
            None | Some(Value::Null) => Vec::new(),
            Some(other) => return Err(bad("matrix values are not a list", other)),
        };
        out.push(RangeSeries {
            labels: labels(item.get("metric"))?,
            points,
        });
    }
    Ok(out)
}

fn labels(metric: Option<&Value>) -> Result<BTreeMap<String, String>, PrometheusError> {
    match metric {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(bad("label value is not a string", other)),
            })
            .collect(),
        Some(other) => Err(bad("metric is not an object", other)),
    }
}

/// `[1700000000.123, "1.5"]`.
fn point(v: &Value) -> Result<(f64, f64), PrometheusError> {
    let (time, text) = string_point(v)?;
    let value = parse_value(&text).ok_or_else(|| bad("sample value is not a number", v))?;
    Ok((time, value))
}

fn string_point(v: &Value) -> Result<(f64, String), PrometheusError> {
    match v.as_array().map(Vec::as_slice) {
        Some([t, Value::String(s)]) => {
            let time = t
                .as_f64()
                .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| bad("sample time is not a number", v))?;
            Ok((time, s.clone()))
        }
        _ => Err(bad("expected [time, \"value\"]", v)),
    }
}

/// Prometheus' float formatting: Go's `strconv.FormatFloat`, plus `NaN`, `+Inf`, `-Inf`.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        // Rust would also read "inf" and "nan" in any case; Prometheus never writes those.
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("(empty body)");
    }
    out
}

/// A Prometheus server's query API.
#[derive(Clone)]
pub struct PrometheusClient {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port[/prefix]`, without a trailing `/`.
    base: String,
    timeout: Duration,
    max_body_bytes: usize,
}

impl std::fmt::Debug for PrometheusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PrometheusClient {
    /// `url` is Prometheus' address, `http://host:9090` (a path prefix such as
    /// `http://host/prometheus` is kept); `timeout` bounds each query, start to last byte.
    pub fn new(
        url: &str,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Result<Self, PrometheusError> {
        let bad = |reason: &str| PrometheusError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; give Prometheus' plain-HTTP address (in-cluster \
                     service, port-forward or sidecar)",
                ));
            }
            _ => return Err(bad("expected http://host:port")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("expected http://host:port"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(bad("no query string expected"));
        }
        if timeout.is_zero() {
            return Err(bad("the query timeout must be more than zero"));
        }
        let base = format!(
            "http://{}{}",
            authority.as_str(),
            uri.path().trim_end_matches('/')
        );
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            client,
            base,
            timeout,
            max_body_bytes,
        })
    }

    /// `http://host:port[/prefix]`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// An instant query evaluated at `time` (Unix seconds): its vector (a scalar answer is
    /// one sample without labels).
    pub async fn query(
        &self,
        promql: &str,
        time: f64,
    ) -> Result<Vec<VectorSample>, PrometheusError> {
        let answer = self
            .post(
                "/api/v1/query",
                &[("query", promql.to_string()), ("time", fmt_time(time))],
            )
            .await?;
        match answer.data {
            QueryData::Vector(v) => Ok(v),
            QueryData::Scalar { time, value } => Ok(vec![VectorSample {
                labels: BTreeMap::new(),
                time,
                value,
            }]),
            other => Err(PrometheusError::BadResponse(format!(
                "a {} where an instant vector was expected",
                other.kind()
            ))),
        }
    }

    /// A range query from `start` to `end` (Unix seconds) every `step`.
    pub async fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<RangeSeries>, PrometheusError> {
        let answer = self
            .post(
                "/api/v1/query_range",
                &[
                    ("query", promql.to_string()),
                    ("start", fmt_time(start)),
                    ("end", fmt_time(end)),
                    ("step", format!("{}", step.as_secs_f64())),
                ],
            )
            .await?;
        match answer.data {
            QueryData::Matrix(m) => Ok(m),
            other => Err(PrometheusError::BadResponse(format!(
                "a {} where a range matrix was expected",
                other.kind()
            ))),
        }
    }

    async fn post(&self, path: &str, form: &[(&str, String)]) -> Result<Answer, PrometheusError> {
        let mut body = String::new();
        // Prometheus stops the evaluation itself at the same deadline.
        let timeout = format!("{}ms", self.timeout.as_millis().max(1));
        for (k, v) in form.iter().chain(std::iter::once(&("timeout", timeout))) {
            if !body.is_empty() {
                body.push('&');
            }
            body.push_str(k);
            body.push('=');
            body.extend(utf8_percent_encode(v, FORM));
        }
        let url = format!("{}{path}", self.base);
        match tokio::time::timeout(self.timeout, self.exchange(&url, body)).await {
            Ok(r) => {
                let answer = r?;
                if !answer.warnings.is_empty() {
                    debug!(url = %url, warnings = ?answer.warnings, "Prometheus warnings");
                }
                Ok(answer)
            }
            Err(_) => Err(PrometheusError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, url: &str, body: String) -> Result<Answer, PrometheusError> {
        let req = Request::post(url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "mast-telemetry")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PrometheusError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| PrometheusError::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), self.max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    PrometheusError::TooLarge(self.max_body_bytes)
                } else {
                    PrometheusError::Unreachable(format!("reading the answer: {e}"))
                }
            })?
            .to_bytes();
        parse_answer(status, &body)
    }
}

fn fmt_time(t: f64) -> String {
    format!("{t:.3}")
}

/// `client error (Connect): tcp connect error: Connection refused (os error 111)`: hyper's
/// errors say little without their sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Answer {
        parse_answer(StatusCode::OK, body.as_bytes()).unwrap()
    }

    #[test]
    fn vector_with_nan_and_infinities() {
        let a = ok(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"reporter":"destination","source_workload":"client"},"value":[1700000000.5,"20.25"]},
            {"metric":{"le":"+Inf"},"value":[1700000000.5,"+Inf"]},
            {"metric":{},"value":[1700000000.5,"-Inf"]},
            {"metric":{"x":"y"},"value":[1700000000.5,"NaN"]},
            {"metric":{"x":"z"},"value":[1700000000,"1e-3"]}
        ]}}"#,
        );
        let QueryData::Vector(v) = a.data else {
            panic!("not a vector")
        };
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].labels["source_workload"], "client");
        assert_eq!(v[0].time, 1_700_000_000.5);
        assert_eq!(v[0].value, 20.25);
        assert_eq!(v[1].value, f64::INFINITY);
        assert_eq!(v[2].value, f64::NEG_INFINITY);
        assert!(v[3].value.is_nan());
        assert_eq!(v[4].value, 0.001);
        assert!(a.warnings.is_empty());
    }

    #[test]
    fn empty_vector_matrix_and_null_result() {
        let a = ok(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#);
        assert_eq!(a.data, QueryData::Vector(Vec::new()));
        let a = ok(r#"{"status":"success","data":{"resultType":"matrix","result":null}}"#);
        assert_eq!(a.data, QueryData::Matrix(Vec::new()));
        let a = ok(r#"{"status":"success","data":{"resultType":"vector"}}"#);
        assert_eq!(a.data, QueryData::Vector(Vec::new()));
    }

    #[test]
    fn matrix_points_and_warnings() {
        let a = ok(
            r#"{"status":"success","warnings":["partial answer"],"data":{"resultType":"matrix","result":[
            {"metric":{"destination_workload":"user-v1"},"values":[[10,"1"],[11,"NaN"],[12,"2.5"]]},
            {"metric":{"destination_workload":"user-v2"},"values":[]}
        ]}}"#,
        );
        let QueryData::Matrix(m) = a.data else {
            panic!("not a matrix")
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].points[0], (10.0, 1.0));
        assert!(m[0].points[1].1.is_nan());
        assert_eq!(m[0].points[2], (12.0, 2.5));
        assert!(m[1].points.is_empty());
        assert_eq!(a.warnings, vec!["partial answer".to_string()]);
    }

    #[test]
    fn scalar_and_string() {
        let a = ok(r#"{"status":"success","data":{"resultType":"scalar","result":[5,"NaN"]}}"#);
        let QueryData::Scalar { time, value } = a.data else {
            panic!("not a scalar")
        };
        assert_eq!(time, 5.0);
        assert!(value.is_nan());
        let a = ok(r#"{"status":"success","data":{"resultType":"string","result":[5,"hello"]}}"#);
        assert_eq!(
            a.data,
            QueryData::String {
                time: 5.0,
                value: "hello".into()
            }
        );
    }

    #[test]
    fn native_histogram_samples_are_skipped() {
        let a = ok(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"a":"b"},"histogram":[5,{"count":"2","sum":"3","buckets":[]}]},
            {"metric":{"a":"c"},"value":[5,"1"]}
        ]}}"#,
        );
        let QueryData::Vector(v) = a.data else {
            panic!("not a vector")
        };
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels["a"], "c");
    }

    #[test]
    fn prometheus_errors_keep_their_message() {
        let e = parse_answer(
            StatusCode::BAD_REQUEST,
            br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \"}\""}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"bad_data: 1:5: parse error: unexpected "}""#
        );
        let e = parse_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, PrometheusError::Api { ref error_type, .. } if error_type == "timeout")
        );
        // A proxy's HTML page in front of Prometheus.
        let e = parse_answer(StatusCode::BAD_GATEWAY, b"<html>502 Bad Gateway</html>").unwrap_err();
        assert_eq!(
            e.to_string(),
            "HTTP status 502 Bad Gateway: <html>502 Bad Gateway</html>"
        );
        let e = parse_answer(StatusCode::NOT_FOUND, b"").unwrap_err();
        assert_eq!(e.to_string(), "HTTP status 404 Not Found: (empty body)");
    }

    #[test]
    fn odd_answers_are_errors_not_panics() {
        for body in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"status":"success"}"#,
            r#"{"status":"weird","data":{"resultType":"vector","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"tensor","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":{"a":1}}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,2]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":["x","2"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"two"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"inf"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":1},"value":[1,"2"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":[],"value":[1,"2"]}]}}"#,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":"x"}]}}"#,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1]]}]}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":null}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}"#,
        ] {
            let r = parse_answer(StatusCode::OK, body.as_bytes());
            assert!(r.is_err(), "{body:?} → {r:?}");
        }
    }

    #[test]
    fn values_as_prometheus_writes_them() {
        assert_eq!(parse_value("0"), Some(0.0));
        assert_eq!(parse_value("-2.5e+06"), Some(-2.5e6));
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert!(parse_value("NaN").unwrap().is_nan());
        assert_eq!(parse_value(""), None);
        assert_eq!(parse_value("infinity"), None);
        assert_eq!(parse_value("0x10"), None);
    }

    #[test]
    fn urls() {
        let t = Duration::from_secs(10);
        let c = PrometheusClient::new("http://prometheus.istio-system:9090/", t, 1 << 20).unwrap();
        assert_eq!(c.base_url(), "http://prometheus.istio-system:9090");
        let c = PrometheusClient::new("http://host/prometheus/", t, 1 << 20).unwrap();
        assert_eq!(c.base_url(), "http://host/prometheus");
        for bad in [
            "",
            "prometheus:9090",
            "https://host:9090",
            "ftp://host",
            "http://user:pw@host:9090",
            "http://host:9090/?x=1",
            "http://",
        ] {
            let e = PrometheusClient::new(bad, t, 1 << 20);
            assert!(
                matches!(e, Err(PrometheusError::BadUrl { .. })),
                "{bad:?} → {e:?}"
            );
        }
        assert!(PrometheusClient::new("http://host:9090", Duration::ZERO, 1).is_err());
    }

    #[test]
    fn form_encoding() {
        let v: String =
            utf8_percent_encode(r#"sum(rate(x{a="b c"}[60s])) by (le)"#, FORM).collect();
        assert_eq!(
            v,
            "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B60s%5D%29%29%20by%20%28le%29"
        );
    }
}
