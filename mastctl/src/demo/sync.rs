//! How long a split edit took to come into force, measured rather than assumed: from the
//! moment the file was saved (its mtime) to the moment myapp's sidecar — the caller, which
//! is where the split happens — acknowledged the new routes to pilot.
//!
//! pilot's `/debug/syncz` lists each connected proxy's last acknowledged RouteConfiguration
//! version with the time of that ACK. The demo reads it every tick and keeps a short history,
//! so it knows which version was in force before the save; the edit is in force once the
//! sidecar has acknowledged a different one.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Snapshots kept: a few seconds of ticks, enough to look back past a save.
const HISTORY: usize = 64;

/// myapp's sidecar's route acknowledgements as seen over time.
#[derive(Default)]
pub struct RouteAcks {
    /// `(when read, acked version, acked at)`, oldest first.
    seen: VecDeque<(SystemTime, Option<String>, Option<SystemTime>)>,
}

impl RouteAcks {
    /// Records one read of `/debug/syncz` (its JSON) for the proxy whose id contains
    /// `proxy`.
    pub fn record(&mut self, now: SystemTime, syncz: &serde_json::Value, proxy: &str) {
        let Some(status) = syncz.as_array().and_then(|all| {
            all.iter()
                .rev()
                .find(|p| p["proxy"].as_str().is_some_and(|id| id.contains(proxy)))
        }) else {
            return;
        };
        let rds = &status["types"]["rds"];
        let version = rds["acked_version"].as_str().map(str::to_string);
        let at = rds["acked_at_ms"]
            .as_u64()
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        if self.seen.len() == HISTORY {
            self.seen.pop_front();
        }
        self.seen.push_back((now, version, at));
    }

    /// How long after `saved` the proxy acknowledged new routes; `None` while it has not
    /// (or when nothing was read before the save to compare with).
    pub fn took_effect(&self, saved: SystemTime) -> Option<Duration> {
        let (_, before, _) = self.seen.iter().rev().find(|(read, ..)| *read < saved)?;
        let (_, now, acked_at) = self.seen.back()?;
        if now == before {
            return None;
        }
        Some(acked_at.as_ref()?.duration_since(saved).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn syncz(version: &str, at_ms: u64) -> serde_json::Value {
        json!([
            {"proxy": "sidecar~10.0.0.2~user-v1.default~default.svc.cluster.local",
             "types": {"rds": {"acked_version": "other", "acked_at_ms": 1}}},
            {"proxy": "sidecar~10.0.0.1~myapp-v1.default~default.svc.cluster.local",
             "types": {"rds": {"acked_version": version, "acked_at_ms": at_ms}}},
        ])
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn the_delay_runs_from_the_save_to_the_callers_ack() {
        let mut acks = RouteAcks::default();
        acks.record(at(1_000), &syncz("v7", 500), "myapp");
        acks.record(at(1_200), &syncz("v7", 500), "myapp");
        let saved = at(1_300);
        // Not yet: the sidecar still has the version it had before the save.
        acks.record(at(1_400), &syncz("v7", 500), "myapp");
        assert_eq!(acks.took_effect(saved), None);
        acks.record(at(1_600), &syncz("v8", 1_540), "myapp");
        assert_eq!(acks.took_effect(saved), Some(Duration::from_millis(240)));
    }

    #[test]
    fn nothing_to_compare_with_is_no_answer() {
        let mut acks = RouteAcks::default();
        acks.record(at(2_000), &syncz("v8", 1_900), "myapp");
        assert_eq!(acks.took_effect(at(1_000)), None);
        // Another proxy's id does not count.
        let mut other = RouteAcks::default();
        other.record(at(1_000), &syncz("v7", 500), "todo");
        assert!(other.seen.is_empty());
    }
}
