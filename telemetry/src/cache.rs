//! The graph JSON, memoised per query until the next scrape round lands.
//!
//! Why: the collector's data only change once per round (every 5 s), but building the whole
//! mesh's graph costs ~60 ms of CPU, and a page refreshing every few seconds asks for the same
//! graph again and again. Worse, a build that runs while a round is being scraped on the same
//! core waited for it: the benchmark's whole-mesh p99 was ~0.5 s against a 66 ms median. So
//! each query's answer is built once per round, by one caller while any others asking for it
//! wait for that build (not build it again), and served from memory until the round changes.
//! When a round lands, the collector rebuilds the graphs asked for during the round before
//! ([`GraphCache::hot`]), so a page that keeps refreshing finds its graph ready.
//!
//! The answer stays exactly what an uncached build would give: the JSON is kept without its
//! `timestamp` (the only field that depends on the time of the request), and the service badges,
//! which come from the mesh config rather than from the round, are checked against the
//! [`MeshView`] on every hit; a change rebuilds the entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::graph::{GraphQuery, GraphResponse, GraphType, Period};
use crate::mesh::{MeshView, ServiceFeatures};

/// What identifies a graph answer within one round.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    namespaces: Vec<String>,
    graph_type: GraphType,
    period: Period,
}

impl Key {
    pub(crate) fn new(q: &GraphQuery) -> Self {
        Self {
            namespaces: q.namespaces.clone(),
            graph_type: q.graph_type,
            period: q.period,
        }
    }

    pub(crate) fn query(&self) -> GraphQuery {
        GraphQuery {
            namespaces: self.namespaces.clone(),
            graph_type: self.graph_type,
            period: self.period,
        }
    }
}

/// One built answer.
#[derive(Debug)]
pub(crate) struct Built {
    /// The JSON after `{"timestamp":N` (i.e. starting with `,"duration":` …), or, should the
    /// serializer ever put the timestamp elsewhere, the whole JSON ([`Built::spliced`] false).
    rest: Vec<u8>,
    spliced: bool,
    /// The badges of every service node, as the answer shows them.
    features: Vec<(String, String, ServiceFeatures)>,
}

const PREFIX: &[u8] = b"{\"timestamp\":0";

impl Built {
    /// Serializes `response` once, keeping what does not depend on the time of the request.
    pub(crate) fn new(mut response: GraphResponse) -> Result<Self, serde_json::Error> {
        let features = response
            .elements
            .nodes
            .iter()
            .filter(|n| n.data.node_type == "service")
            .map(|n| {
                let d = &n.data;
                (
                    d.namespace.clone(),
                    d.service.clone().unwrap_or_default(),
                    ServiceFeatures {
                        traffic_shifting: d.has_traffic_shifting.unwrap_or(false),
                        fault_injection: d.has_fault_injection.unwrap_or(false),
                        request_timeout: d.has_request_timeout.unwrap_or(false),
                        circuit_breaker: d.has_cb.unwrap_or(false),
                        virtual_services: d
                            .has_vs
                            .as_ref()
                            .map(|v| v.hostnames.clone())
                            .unwrap_or_default(),
                    },
                )
            })
            .collect();
        let timestamp = response.timestamp;
        response.timestamp = 0;
        let json = serde_json::to_vec(&response)?;
        let (rest, spliced) = match json.strip_prefix(PREFIX) {
            Some(rest) => (rest.to_vec(), true),
            None => {
                response.timestamp = timestamp;
                (serde_json::to_vec(&response)?, false)
            }
        };
        Ok(Self {
            rest,
            spliced,
            features,
        })
    }

    /// The JSON an uncached build at time `now` would give.
    pub(crate) fn json(&self, now: u64) -> Vec<u8> {
        if !self.spliced {
            return self.rest.clone();
        }
        let stamp = format!("{{\"timestamp\":{now}");
        let mut out = Vec::with_capacity(stamp.len() + self.rest.len());
        out.extend_from_slice(stamp.as_bytes());
        out.extend_from_slice(&self.rest);
        out
    }

    /// Whether the mesh still gives every service node the badges this answer shows.
    pub(crate) fn badges_current(&self, mesh: &dyn MeshView) -> bool {
        self.features
            .iter()
            .all(|(ns, name, f)| mesh.service_features(ns, name) == *f)
    }
}

type Cell = Arc<OnceLock<Result<Arc<Built>, String>>>;

struct Slot {
    /// The round this slot is for (its answer may show a later one, if a round landed while it
    /// was being built).
    round: u64,
    cell: Cell,
    /// Asked for by a request (not only rebuilt by the collector) while this round was current.
    asked: bool,
}

/// Graph answers by query, for the current round.
#[derive(Default)]
pub(crate) struct GraphCache {
    slots: Mutex<HashMap<Key, Slot>>,
}

/// More distinct queries than this in one round (a client walking through namespaces): the
/// older answers are dropped rather than kept until the round ends.
const MAX_SLOTS: usize = 64;
/// Rebuilt at most this many graphs when a round lands.
const MAX_HOT: usize = 16;

impl GraphCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // Slots are replaced whole: a panic elsewhere cannot leave one half-written.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to `key` for `round`: from the cache, or built now by `build` (once per
    /// round and key, however many ask at the same time). `asked`: a request wants it, as
    /// opposed to the collector rebuilding it ahead of requests. Blocking: call it off the
    /// async threads.
    pub(crate) fn get(
        &self,
        key: &Key,
        round: u64,
        asked: bool,
        build: impl FnOnce() -> Result<Built, String>,
    ) -> Result<Arc<Built>, String> {
        let cell = {
            let mut slots = self.lock();
            match slots.get_mut(key) {
                Some(slot) if slot.round >= round => {
                    slot.asked |= asked;
                    Arc::clone(&slot.cell)
                }
                _ => {
                    if slots.len() >= MAX_SLOTS {
                        slots.retain(|_, s| s.round >= round);
                        if slots.len() >= MAX_SLOTS {
                            slots.clear();
                        }
                    }
                    let cell = Cell::default();
                    slots.insert(
                        key.clone(),
                        Slot {
                            round,
                            cell: Arc::clone(&cell),
                            asked,
                        },
                    );
                    cell
                }
            }
        };
        cell.get_or_init(|| build().map(Arc::new)).clone()
    }

    /// Drops `key`'s answer if it is still `stale` (its badges changed): the next
    /// [`get`](Self::get) builds it again.
    pub(crate) fn invalidate(&self, key: &Key, stale: &Arc<Built>) {
        let mut slots = self.lock();
        let same = slots.get(key).is_some_and(|slot| {
            slot.cell
                .get()
                .is_some_and(|r| r.as_ref().is_ok_and(|b| Arc::ptr_eq(b, stale)))
        });
        if same {
            slots.remove(key);
        }
    }

    /// The queries requests asked for while a round before `round` was current: worth building
    /// for `round` before anyone asks again. Forgets every older answer.
    pub(crate) fn hot(&self, round: u64) -> Vec<Key> {
        let mut slots = self.lock();
        let mut hot: Vec<Key> = slots
            .iter()
            .filter(|(_, s)| s.asked && s.round < round)
            .map(|(k, _)| k.clone())
            .collect();
        slots.retain(|_, s| s.round >= round);
        hot.truncate(MAX_HOT);
        hot
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::graph::Elements;

    fn key(ns: &str) -> Key {
        Key::new(&GraphQuery {
            namespaces: vec![ns.into()],
            graph_type: GraphType::VersionedApp,
            period: Period::M5,
        })
    }

    fn built() -> Result<Built, String> {
        Built::new(GraphResponse {
            timestamp: 7,
            duration: 300,
            graph_type: "versionedApp",
            elements: Elements {
                nodes: Vec::new(),
                edges: Vec::new(),
            },
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn json_is_the_uncached_json_with_the_request_time() {
        let b = built().expect("serializes");
        let uncached = serde_json::to_vec(&GraphResponse {
            timestamp: 1764457200,
            duration: 300,
            graph_type: "versionedApp",
            elements: Elements {
                nodes: Vec::new(),
                edges: Vec::new(),
            },
        })
        .expect("serializes");
        assert_eq!(b.json(1764457200), uncached);
    }

    #[test]
    fn one_build_per_round_and_key() {
        let cache = GraphCache::default();
        let builds = AtomicUsize::new(0);
        let build = || {
            builds.fetch_add(1, Ordering::SeqCst);
            built()
        };
        for _ in 0..3 {
            cache.get(&key("a"), 1, true, build).expect("built");
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        cache.get(&key("b"), 1, true, build).expect("built");
        assert_eq!(
            builds.load(Ordering::SeqCst),
            2,
            "another key is another build"
        );
        cache.get(&key("a"), 2, true, build).expect("built");
        assert_eq!(builds.load(Ordering::SeqCst), 3, "a new round rebuilds");
    }

    #[test]
    fn hot_lists_what_was_asked_and_forgets_old_rounds() {
        let cache = GraphCache::default();
        cache.get(&key("a"), 1, true, built).expect("built");
        cache.get(&key("b"), 1, false, built).expect("built");
        assert_eq!(cache.hot(2), vec![key("a")]);
        assert_eq!(cache.len(), 0, "round 1's answers are gone");
        // Rebuilt ahead for round 2 but not asked again: not hot for round 3.
        cache.get(&key("a"), 2, false, built).expect("built");
        assert!(cache.hot(3).is_empty());
    }

    #[test]
    fn a_failed_build_is_not_kept_past_its_round() {
        let cache = GraphCache::default();
        let e = cache.get(&key("a"), 1, true, || Err("boom".into()));
        assert_eq!(e.err().as_deref(), Some("boom"));
        assert!(cache.get(&key("a"), 2, true, built).is_ok());
    }

    #[test]
    fn invalidate_drops_only_the_stale_answer() {
        let cache = GraphCache::default();
        let old = cache.get(&key("a"), 1, true, built).expect("built");
        cache.invalidate(&key("a"), &old);
        let new = cache.get(&key("a"), 1, true, built).expect("built");
        assert!(!Arc::ptr_eq(&old, &new));
        cache.invalidate(&key("a"), &old); // already replaced: kept
        let again = cache.get(&key("a"), 1, true, built).expect("built");
        assert!(Arc::ptr_eq(&new, &again));
    }
}
