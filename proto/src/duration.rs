//! Durations in Go's `time.ParseDuration` syntax: `7s`, `0.5s`, `250us`, `1m30s`, `1h`.
//!
//! Istio's YAML (protobuf durations written as strings), its agent's flags and environment
//! (`SECRET_TTL`, `terminationDrainDuration`) all take Go's syntax. Mast reads durations in the
//! mesh config (mast-mesh-config) and in the sidecar's flags and environment (mast-proxy);
//! parsing both with this one function means a value Istio accepts is accepted everywhere,
//! with the same message when it is not.

use std::time::Duration;

/// Go's units and their length in seconds.
const UNITS: &[(&str, f64)] = &[
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("μs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// Why a duration was refused; the message quotes the input and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "invalid duration {0:?}: expected a number with a unit (ns, us, ms, s, m, h), e.g. \"1.5s\" or \"1m30s\""
    )]
    Syntax(String),
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
}

/// Parse a Go-style duration (`1h30m`, `2.5s`, `250ms`, `0`). A sequence of numbers, each
/// with a unit, is summed. Negative durations are rejected: nothing Mast configures takes one.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Syntax(input.to_string());
    let s = input.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(input.to_string()));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, s)| *s)
            .ok_or_else(bad)?;
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ok("7s"), Duration::from_secs(7));
        assert_eq!(ok("0.5s"), Duration::from_millis(500));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("10ns"), Duration::from_nanos(10));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("2160h"), Duration::from_secs(2160 * 3600));
        assert_eq!(ok(" 5s "), Duration::from_secs(5));
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "5", "s", "1x", "abc", "1.2.3s", "1s2", ".s", "1 s"] {
            assert_eq!(
                parse_go_duration(bad),
                Err(DurationError::Syntax(bad.to_string())),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_go_duration("-1s"),
            Err(DurationError::Negative("-1s".into()))
        );
    }

    #[test]
    fn messages_say_what_was_expected() {
        let e = parse_go_duration("5").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid duration \"5\": expected a number with a unit (ns, us, ms, s, m, h), e.g. \"1.5s\" or \"1m30s\""
        );
        let e = parse_go_duration("-1s").unwrap_err().to_string();
        assert_eq!(e, "invalid duration \"-1s\": must not be negative");
    }
}
