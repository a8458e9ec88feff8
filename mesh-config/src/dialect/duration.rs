//! Durations as users write them in mesh YAML.
//!
//! Istio and Gateway API fields are protobuf/Go durations in YAML: `7s`, `0.5s`, `100ms`,
//! `1m30s`, `1h`. Istio accepts Go's `time.ParseDuration` syntax, so we do too, and reject
//! anything else with a message that says what was expected. The grammar itself lives in
//! [`mast_proto::duration`], shared with the sidecar's flags and environment; this wrapper keeps
//! the dialects' `String` errors, which become field errors.

use std::time::Duration;

/// Parse a Go-style duration (`1h30m`, `2.5s`, `250ms`). Negative durations are rejected:
/// no mesh field takes one.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    mast_proto::parse_go_duration(input).map_err(|e| e.to_string())
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

    #[test]
    fn messages_name_the_input() {
        let e = parse_duration("5").unwrap_err();
        assert!(e.starts_with("invalid duration \"5\": expected"), "{e}");
        let e = parse_duration("-1s").unwrap_err();
        assert_eq!(e, "invalid duration \"-1s\": must not be negative");
    }
}
