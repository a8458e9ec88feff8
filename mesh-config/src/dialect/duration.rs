//! Durations as users write them in mesh YAML.
//!
//! Istio and Gateway API fields are protobuf/Go durations in YAML: `7s`, `0.5s`, `100ms`,
//! `1m30s`, `1h`. Istio accepts Go's `time.ParseDuration` syntax, so we do too, and reject
//! anything else with a message that says what was expected.

use std::time::Duration;

const UNITS: &[(&str, f64)] = &[
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// Parse a Go-style duration (`1h30m`, `2.5s`, `250ms`). Negative durations are rejected:
/// no mesh field takes one.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {input:?}: expected a number with a unit (ns, us, ms, s, m, h), e.g. \"1.5s\" or \"1m30s\""
        )
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("invalid duration {input:?}: must not be negative"));
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
        assert_eq!(parse_duration("7s"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "5", "s", "1x", "abc", "-1s", "1.2.3s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
