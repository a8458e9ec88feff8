//! A small randomized-input harness for the parser fuzz tests (`*/tests/fuzz.rs`).
//!
//! The machine's toolchain is stable Rust, where coverage-guided engines (cargo-fuzz's
//! libFuzzer, AFL) do not run without extra tooling (see `docs/fuzzing.md`), so the fuzz
//! targets are seeded property tests: each case gets its own deterministic RNG, mutates a
//! committed seed or a real corpus document, and runs the parser under `catch_unwind`. A
//! panic fails the test naming the target, the case and the input. `MAST_FUZZ_SCALE`
//! multiplies every target's default number of cases (CI uses the defaults), `MAST_FUZZ_CASES`
//! sets it outright, `MAST_FUZZ_SEED` sets the base seed. No dependency: the RNG is SplitMix64, which is all a mutator needs.

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Number of cases for every target (overrides each target's default).
pub const CASES_ENV: &str = "MAST_FUZZ_CASES";
/// A multiplier of every target's default number of cases (a longer run keeps the targets'
/// proportions); `MAST_FUZZ_CASES` wins when both are set.
pub const SCALE_ENV: &str = "MAST_FUZZ_SCALE";
/// Base seed (default: a fixed one, so CI runs are reproducible).
pub const SEED_ENV: &str = "MAST_FUZZ_SEED";

const DEFAULT_SEED: u64 = 0x6d61_7374_2d66_757a;

/// SplitMix64: deterministic, fast, good enough to drive mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

// === impl Rng ===

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// A number biased towards the edges: 0, ±1, powers of two, the type limits.
    pub fn edgy_u64(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => u64::MAX >> self.below(64),
            4 => 1u64 << self.below(64),
            5 => (1u64 << self.below(64)).wrapping_sub(1),
            6 => self.below(1000) as u64,
            _ => self.next_u64(),
        }
    }

    pub fn edgy_i64(&mut self) -> i64 {
        match self.below(6) {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => -1,
            3 => -(self.below(1000) as i64),
            _ => self.edgy_u64() as i64,
        }
    }
}

/// The number of cases to run: `MAST_FUZZ_CASES` when set, else `default` times
/// `MAST_FUZZ_SCALE` (1 unless set).
pub fn cases(default: usize) -> usize {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    var(CASES_ENV).unwrap_or_else(|| default.saturating_mul(var(SCALE_ENV).unwrap_or(1)))
}

/// The longest one case may take (`MAST_FUZZ_SLOW_MS`, default 3 s: debug builds on a busy
/// machine); a slower case fails the target.
pub const SLOW_ENV: &str = "MAST_FUZZ_SLOW_MS";

fn slow_case_limit() -> Duration {
    let ms = std::env::var(SLOW_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    Duration::from_millis(ms)
}

fn base_seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// Run `check` on `cases(default_cases)` inputs made by `generate`. Each case has its own RNG
/// (seeded from the base seed, the target's name and the case number), so a failure names
/// everything needed to replay it. A panic in `check` fails the test with the input.
pub fn run<T: Debug>(
    target: &str,
    default_cases: usize,
    mut generate: impl FnMut(&mut Rng) -> T,
    mut check: impl FnMut(&T),
) -> usize {
    let n = cases(default_cases);
    let seed = base_seed() ^ fnv(target.as_bytes());
    let started = Instant::now();
    let slow = slow_case_limit();
    for case in 0..n {
        let mut rng = Rng::new(
            seed.wrapping_add(case as u64)
                .wrapping_mul(0x2545_f491_4f6c_dd1d),
        );
        let input = generate(&mut rng);
        let case_started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        let took = case_started.elapsed();
        let failure = match outcome {
            Err(_) => Some("panicked".to_string()),
            // A hang is a denial of service too (libFuzzer's -timeout): reported once the
            // case returns, with its input.
            Ok(()) if took > slow => Some(format!("took {:.1} s", took.as_secs_f64())),
            Ok(()) => None,
        };
        if let Some(failure) = failure {
            let mut shown = format!("{input:?}");
            if shown.len() > 4000 {
                let mut cut = 4000;
                while !shown.is_char_boundary(cut) {
                    cut -= 1;
                }
                shown.truncate(cut);
                shown.push('…');
            }
            panic!(
                "fuzz target {target}: case {case} {failure} ({SEED_ENV}={}): input {shown}",
                base_seed()
            );
        }
    }
    eprintln!(
        "fuzz target {target}: {n} cases in {:.2} s, no panic",
        started.elapsed().as_secs_f64()
    );
    n
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The committed seed inputs of one target: every file in `testdata/fuzz-seeds/<target>/`,
/// sorted by name. Panics when there are none (a target without seeds is a mistake).
pub fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = crate::workspace_root()
        .join("testdata")
        .join("fuzz-seeds")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz seeds {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fuzz seeds in {}", dir.display());
    out
}

/// Byte-level mutations (AFL's havoc, in small): bit flips, random and interesting bytes,
/// insertions, deletions, duplications, truncation, and splices of `dict` tokens.
pub fn mutate_bytes(rng: &mut Rng, input: &[u8], dict: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    // Often one small change, so inputs get past a parser's first checks.
    let rounds = if rng.one_in(2) { 1 } else { 1 + rng.below(8) };
    for _ in 0..rounds {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'\r', b'\n', b' ', b':', b'\0']);
            }
            2 => {
                let at = rng.below(len + 1);
                let extra = rng.bytes(16);
                out.splice(at..at, extra);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                out.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = out[at..at + n].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, copy);
            }
            5 if len > 0 => out.truncate(rng.below(len)),
            6 | 7 if !dict.is_empty() => {
                let at = rng.below(len + 1);
                let token = rng.pick(dict).to_vec();
                out.splice(at..at, token);
            }
            _ if len > 0 => {
                // Overwrite a byte with a random one.
                let i = rng.below(len);
                out[i] = rng.next_u64() as u8;
            }
            _ => out.extend(rng.bytes(8)),
        }
    }
    out
}

/// Structure-aware mutations of line-based text (YAML, HTTP heads): lines deleted,
/// duplicated, swapped, re-indented, values of `key: value` lines swapped between lines or
/// replaced by a `values` token.
pub fn mutate_lines(rng: &mut Rng, text: &str, values: &[&str]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = lines.len();
        if len == 0 {
            lines.push(rng.pick(values).to_string());
            continue;
        }
        let i = rng.below(len);
        match rng.below(7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(rng.below(len + 1), l);
            }
            2 => lines.swap(i, rng.below(len)),
            3 => {
                // Re-indent: a YAML line moved to another nesting level.
                let l = lines[i].trim_start().to_string();
                lines[i] = format!("{}{l}", " ".repeat(rng.below(12)));
            }
            4 => {
                // Swap the values of two `key: value` lines (a field given another's value).
                let j = rng.below(len);
                if let (Some((ka, va)), Some((kb, vb))) =
                    (lines[i].split_once(": "), lines[j].split_once(": "))
                {
                    let (a, b) = (format!("{ka}: {vb}"), format!("{kb}: {va}"));
                    lines[i] = a;
                    lines[j] = b;
                }
            }
            _ => {
                let v = rng.pick(values);
                lines[i] = match lines[i].split_once(": ") {
                    Some((k, _)) => format!("{k}: {v}"),
                    None => match lines[i].split_once(':') {
                        Some((k, _)) => format!("{k}: {v}"),
                        None => format!("{}{v}", lines[i]),
                    },
                };
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Structure-aware mutation of a JSON document: a random node replaced by a hostile value
/// (another type, an edge number, an empty or odd string, deep nesting), removed, or
/// duplicated under another key.
pub fn mutate_json(rng: &mut Rng, value: &mut serde_json::Value) {
    let depth = rng.below(12);
    mutate_json_at(rng, value, depth);
}

/// Go down `depth` levels along a random path (stopping at a leaf), then mutate there.
fn mutate_json_at(rng: &mut Rng, node: &mut serde_json::Value, depth: usize) {
    use serde_json::Value;
    if depth > 0 {
        match node {
            Value::Object(m) if !m.is_empty() => {
                let i = rng.below(m.len());
                if let Some((_, child)) = m.iter_mut().nth(i) {
                    return mutate_json_at(rng, child, depth - 1);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.below(a.len());
                return mutate_json_at(rng, &mut a[i], depth - 1);
            }
            _ => {}
        }
    }
    match (rng.below(4), &mut *node) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).cloned();
            if let Some(k) = k {
                m.remove(&k);
            }
        }
        (1, Value::Object(m)) => {
            let key = (*rng.pick(HOSTILE_JSON_KEYS)).to_string();
            m.insert(key, hostile_json(rng));
        }
        (2, Value::Array(a)) if !a.is_empty() => {
            let copy = a[rng.below(a.len())].clone();
            a.push(copy);
        }
        _ => *node = hostile_json(rng),
    }
}

const HOSTILE_JSON_KEYS: &[&str] = &[
    "", "name", "metadata", "spec", "port", "ports", "-", "a.b", "$ref",
];

fn hostile_json(rng: &mut Rng) -> serde_json::Value {
    use serde_json::{Value, json};
    match rng.below(14) {
        0 => Value::Null,
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1e308),
        5 => json!(0.5),
        6 => json!(""),
        7 => json!("x".repeat(rng.below(70000))),
        8 => json!([]),
        9 => json!({}),
        10 => json!(true),
        11 => {
            let mut v = json!(1);
            for _ in 0..rng.below(100) {
                v = json!([v]);
            }
            v
        }
        12 => json!(rng.pick(HOSTILE_YAML_VALUES).trim_matches('"')),
        _ => json!(rng.edgy_i64().to_string()),
    }
}

/// Scalars that break naive config code: edge numbers, wrong types, empty and odd strings.
pub const HOSTILE_YAML_VALUES: &[&str] = &[
    "-1",
    "0",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "-9223372036854775809",
    "1e400",
    "-0.0",
    ".nan",
    ".inf",
    "\"\"",
    "''",
    "null",
    "~",
    "[]",
    "{}",
    "[1, [2, [3, [4]]]]",
    "{a: {b: {c: {d: {}}}}}",
    "true",
    "\"\\u0000\"",
    "\"*\"",
    "\"*.\"",
    "\".\"",
    "\"/\"",
    "\"[\"",
    "\"(a\"",
    "\"::\"",
    "\"1.2.3.4/99\"",
    "\"300.1.1.1\"",
    "\"-1s\"",
    "\"0s\"",
    "\"999999999999h\"",
    "\"1.5.5s\"",
    "\"100%\"",
    "\"é\"",
    "&a x",
    "*a",
    "!!binary aGk=",
    "|\n  block",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_deterministic_and_mutations_stay_in_bounds() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut rng = Rng::new(1);
        for _ in 0..2000 {
            let _ = mutate_bytes(&mut rng, b"GET / HTTP/1.1\r\n\r\n", &[b"\r\n"]);
            let _ = mutate_bytes(&mut rng, b"", &[]);
            let _ = mutate_lines(&mut rng, "a: 1\nb: 2\n", HOSTILE_YAML_VALUES);
            let _ = mutate_lines(&mut rng, "", HOSTILE_YAML_VALUES);
            let mut v = serde_json::json!({"a": [1, {"b": "c"}]});
            mutate_json(&mut rng, &mut v);
        }
    }
}
