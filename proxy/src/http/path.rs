//! Request path normalisation as Envoy's connection manager does it, before routing and
//! before RBAC: `path_with_escaped_slashes_action`, then `normalize_path` (the URL
//! canonicaliser Envoy took from Chromium), then `merge_slashes`.
//!
//! Why it must match Envoy byte for byte: an AuthorizationPolicy is written against the path
//! the application will serve. If the proxy checks `/public/../admin` against `/admin*` and
//! forwards it unchanged, the application resolves it to `/admin` and the DENY is bypassed.
//! Envoy rewrites `:path` to the canonical form, checks and routes that, and forwards that;
//! so does mast-proxy. The rules below are Envoy's (tested against a real Envoy in
//! `tests/tests/hostile_http.rs`):
//!
//! - `.` and `..` segments are resolved, also when spelled `%2e`/`%2E` (`/a/%2E%2e/b` → `/b`);
//!   `..` never climbs above the root.
//! - A backslash is a slash (`/a\..\b` → `/b`).
//! - Percent-escapes of unreserved characters are decoded (`/%61dmin` → `/admin`); other
//!   escapes are kept exactly as sent (`%2F` stays `%2F`, hex case untouched).
//! - Characters that may not appear in a path are escaped (`"`, `<`, `>`, `^`, `` ` ``,
//!   `{`, `|`, `}`, controls, bytes ≥ 0x7F).
//! - An escaped NUL (`%00`) makes the path invalid: the request is refused with 400.
//! - The query is never touched.

/// What `path_with_escaped_slashes_action` asks for `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Envoy's default (`IMPLEMENTATION_SPECIFIC_DEFAULT` and `KEEP_UNCHANGED`).
    #[default]
    Keep,
    /// `REJECT_REQUEST`: 400.
    Reject,
    /// `UNESCAPE_AND_REDIRECT`: a redirect to the unescaped path.
    Redirect,
    /// `UNESCAPE_AND_FORWARD`: unescape, then normalise as usual.
    Forward,
}

/// The connection manager's path settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathNormalization {
    /// `normalize_path` (Istio sets it: meshConfig.pathNormalization BASE and above).
    pub normalize: bool,
    /// `merge_slashes` (Istio: MERGE_SLASHES and DECODE_AND_MERGE_SLASHES).
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action` (Istio: UNESCAPE_AND_FORWARD for
    /// DECODE_AND_MERGE_SLASHES).
    pub escaped_slashes: EscapedSlashes,
}

/// The outcome for one request's path.
#[derive(Debug, PartialEq, Eq)]
pub enum Normalized {
    /// Route, authorise and forward this path (it may be the one that was sent).
    Path(String),
    /// Answer with a redirect to this path (`UNESCAPE_AND_REDIRECT`).
    Redirect(String),
    /// Refuse the request with 400.
    Reject,
}

impl PathNormalization {
    /// Normalise `path_and_query` (the request target in origin form).
    pub fn apply(&self, path_and_query: &str) -> Normalized {
        let (path, query) = match path_and_query.find('?') {
            Some(i) => path_and_query.split_at(i),
            None => (path_and_query, ""),
        };
        let mut redirect = false;
        let mut path = std::borrow::Cow::Borrowed(path);
        if self.escaped_slashes != EscapedSlashes::Keep
            && let Some(unescaped) = unescape_slashes(&path)
        {
            match self.escaped_slashes {
                EscapedSlashes::Reject => return Normalized::Reject,
                EscapedSlashes::Redirect => redirect = true,
                _ => {}
            }
            path = unescaped.into();
        }
        if self.normalize {
            match canonicalize(&path) {
                Some(p) => path = p.into(),
                None => return Normalized::Reject,
            }
        }
        if self.merge_slashes && path.contains("//") {
            path = merge_slashes(&path).into();
        }
        let mut out = path.into_owned();
        out.push_str(query);
        if redirect {
            Normalized::Redirect(out)
        } else {
            Normalized::Path(out)
        }
    }
}

/// `%2F`/`%2f` → `/` and `%5C`/`%5c` → `\`; `None` when there are none.
fn unescape_slashes(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let is_slash_escape = |i: usize| {
        b.get(i) == Some(&b'%')
            && matches!(
                (b.get(i + 1), b.get(i + 2).map(u8::to_ascii_uppercase)),
                (Some(b'2'), Some(b'F')) | (Some(b'5'), Some(b'C'))
            )
    };
    if !(0..b.len()).any(is_slash_escape) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if is_slash_escape(i) {
            out.push(if b[i + 1] == b'2' { b'/' } else { b'\\' });
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Only ASCII sequences were replaced by ASCII bytes: still UTF-8.
    String::from_utf8(out).ok()
}

/// Runs of `/` become one `/` (the query is not part of `path`).
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        out.push(c);
    }
    out
}

/// How a byte is written in a canonical path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as it is.
    Pass,
    /// Written as `%XX`.
    Escape,
    /// Unreserved: copied as it is, and decoded when it arrives escaped.
    Unescape,
    /// Not allowed at all (NUL): the path is invalid.
    Invalid,
}

fn class(b: u8) -> Class {
    match b {
        0 => Class::Invalid,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Unescape,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';'
        | b'=' | b'@' | b'[' | b']' => Class::Pass,
        // Controls, space, `"`, `#`, `%`, `<`, `>`, `?`, `\`, `^`, `` ` ``, `{`, `|`, `}`,
        // DEL and every byte with the high bit set.
        _ => Class::Escape,
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte a valid `%XX` at `i` stands for.
fn decode_escape(b: &[u8], i: usize) -> Option<u8> {
    if b.get(i) != Some(&b'%') {
        return None;
    }
    let hi = hex_value(*b.get(i + 1)?)?;
    let lo = hex_value(*b.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// Length of a dot at `i`: 1 for `.`, 3 for `%2e`/`%2E`, 0 for no dot.
fn dot_len(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(b'.') => 1,
        Some(b'%') if decode_escape(b, i) == Some(b'.') => 3,
        _ => 0,
    }
}

/// A segment at `i` of one or two literal dots followed by `;` parameters: where it ends
/// (the index of the next slash, or the end). Percent-encoded dots do not count, as in Envoy.
fn dot_params_segment(b: &[u8], i: usize) -> Option<usize> {
    let dots = b[i..].iter().take_while(|c| **c == b'.').count();
    if !(dots == 1 || dots == 2) || b.get(i + dots) != Some(&b';') {
        return None;
    }
    let rest = &b[i + dots..];
    Some(
        i + dots
            + rest
                .iter()
                .position(|c| is_slash(Some(c)))
                .unwrap_or(rest.len()),
    )
}

fn is_slash(b: Option<&u8>) -> bool {
    matches!(b, Some(b'/' | b'\\'))
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
}

/// Drop the last segment of `out`, which ends in `/`, keeping the slash before it; never
/// above the root.
fn back_up(out: &mut Vec<u8>) {
    let Some(last) = out.len().checked_sub(1) else {
        return;
    };
    if last == 0 {
        return;
    }
    let keep = out[..last].iter().rposition(|c| *c == b'/').unwrap_or(0);
    out.truncate(keep + 1);
}

/// Envoy's `normalize_path`: the canonical form of a path, `None` if it is invalid.
pub fn canonicalize(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len() + 1);
    if !is_slash(b.first()) {
        out.push(b'/');
    }
    let mut valid = true;
    // Where in `out` a '%' that began no valid escape was written, for nested escapes.
    let mut stray_percent: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let dot = dot_len(b, i);
        if dot > 0 {
            if out.last() == Some(&b'/') {
                let after = i + dot;
                let second = dot_len(b, after);
                if after == b.len() {
                    // "." at the end: the current directory.
                    i = after;
                } else if is_slash(b.get(after)) {
                    i = after + 1;
                } else if second > 0
                    && (after + second == b.len() || is_slash(b.get(after + second)))
                {
                    back_up(&mut out);
                    i = after + second + usize::from(after + second < b.len());
                } else if let Some(end) = dot_params_segment(b, i) {
                    // `.;params` and `..;params` are dot segments, their parameters dropped
                    // (Envoy: `/a/..;/b` → `/b`, closing the Tomcat `..;` bypass).
                    if b[i + 1] == b'.' {
                        back_up(&mut out);
                    }
                    i = end + usize::from(end < b.len());
                } else {
                    out.push(b'.');
                    i += dot;
                }
            } else {
                out.push(b'.');
                i += dot;
            }
            continue;
        }
        match c {
            b'\\' => out.push(b'/'),
            b'%' => match decode_escape(b, i) {
                Some(v) if class(v) == Class::Unescape => {
                    out.push(v);
                    i += 2;
                    if let Some(p) = stray_percent
                        && p + 3 >= out.len()
                    {
                        fix_nested_escape(b, i + 1, p, &mut out);
                    }
                }
                Some(v) => {
                    out.extend_from_slice(&b[i..i + 3]);
                    i += 2;
                    if class(v) == Class::Invalid {
                        valid = false;
                    }
                }
                None => {
                    stray_percent = Some(out.len());
                    out.push(b'%');
                }
            },
            _ => match class(c) {
                Class::Pass | Class::Unescape => out.push(c),
                Class::Escape => push_escaped(&mut out, c),
                Class::Invalid => {
                    push_escaped(&mut out, c);
                    valid = false;
                }
            },
        }
        i += 1;
    }
    if !valid {
        return None;
    }
    // Every byte written is ASCII.
    String::from_utf8(out).ok()
}

/// A decoded byte may have turned an earlier stray `%` into a valid escape (`%%30%30` would
/// read as `%00` once canonical): that `%` is written `%25` instead, so that canonicalising
/// the output again gives the same path.
fn fix_nested_escape(b: &[u8], next: usize, percent: usize, out: &mut Vec<u8>) {
    let len = out.len();
    let last = out[len - 1];
    let append_next = percent + 2 == len;
    if append_next {
        match b.get(next) {
            Some(n) if *n < 0x80 => out.push(*n),
            _ => return,
        }
    }
    if decode_escape(out, percent).is_some() {
        if !append_next {
            let after = out[percent + 1];
            out.push(after);
        }
        out[percent + 1] = b'2';
        out[percent + 2] = b'5';
        out.push(last);
    } else if append_next {
        out.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Option<String> {
        canonicalize(p)
    }

    #[test]
    fn envoy_canonical_paths() {
        // Envoy's own path_utility_test cases.
        for (input, want) in [
            ("/xyz", "/xyz"),
            ("/x/y/z", "/x/y/z"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/./c", "/a/b/c"),
            ("a/b/../c", "/a/c"),
            ("/a/b/../../../../c", "/c"),
            ("/a/..\\c", "/c"),
            ("/%c0%af", "/%c0%af"),
            ("/%5c%25", "/%5c%25"),
            ("/a/b/%2E%2E/c", "/a/c"),
            ("/a/b/%2E./c", "/a/c"),
            ("/a/b/%2E/c", "/a/b/c"),
            ("..", "/"),
            ("/../a/b", "/a/b"),
            ("/./a/b", "/a/b"),
            ("/A/B/C", "/A/B/C"),
            ("/a/b/%2e%2e/c", "/a/c"),
            ("/a/%2F%2f/c", "/a/%2F%2f/c"),
        ] {
            assert_eq!(canon(input).as_deref(), Some(want), "{input}");
        }
        for invalid in [
            "/xyz/.%00../abc",
            "/xyz/%00.%00./abc",
            "/xyz/AAAAA%%0000/abc",
        ] {
            assert_eq!(canon(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn attacker_paths_resolve_to_what_the_app_serves() {
        for (input, want) in [
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/a/%2E%2e/../../b", "/b"),
            ("/a/./b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/public\\..\\admin", "/admin"),
            ("/public/..;/admin", "/admin"),
            ("/public/..;x/admin", "/admin"),
            ("/public/.;/admin", "/public/admin"),
            ("/x/..;/ok/x", "/ok/x"),
            ("/a/..;", "/"),
            ("/public/%2e%2e;/admin", "/public/..;/admin"),
            ("/a/...;/b", "/a/...;/b"),
            ("/a/x..;/b", "/a/x..;/b"),
            ("/public/..%2fadmin", "/public/..%2fadmin"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/.hidden/..x", "/a/.hidden/..x"),
            ("/a b", "/a%20b"),
            ("/a\"<>`{|}^", "/a%22%3C%3E%60%7B%7C%7D%5E"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/100%", "/100%"),
            ("/%zz", "/%zz"),
            // A stray '%' that decoding would complete into an escape is escaped itself.
            ("/%%30%30", "/%2500"),
            ("/%%36%31", "/%2561"),
            ("", "/"),
        ] {
            assert_eq!(canon(input).as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn canonical_output_is_stable() {
        for p in [
            "/a/%2e%2e/b",
            "/%%30%30",
            "/%%36%31",
            "/x/%41%42/../c",
            "/%25%32%65",
        ] {
            let once = canon(p).unwrap();
            assert_eq!(canon(&once).as_deref(), Some(once.as_str()), "{p}");
        }
    }

    #[test]
    fn merge_slashes_as_envoy() {
        let n = PathNormalization {
            merge_slashes: true,
            ..Default::default()
        };
        for (input, want) in [
            ("a//b/c", "a/b/c"),
            ("/a//b/c/", "/a/b/c/"),
            ("//a/b/c", "/a/b/c"),
            ("/a////b/c", "/a/b/c"),
            ("/a//b?a=///c", "/a/b?a=///c"),
            ("/a//b?", "/a/b?"),
            ("//a/?b", "/a/?b"),
        ] {
            assert_eq!(n.apply(input), Normalized::Path(want.into()), "{input}");
        }
    }

    #[test]
    fn escaped_slash_actions() {
        let with = |escaped_slashes| PathNormalization {
            normalize: true,
            merge_slashes: false,
            escaped_slashes,
        };
        let p = "/public%2F..%2Fadmin?q=%2F";
        assert_eq!(
            with(EscapedSlashes::Keep).apply(p),
            Normalized::Path("/public%2F..%2Fadmin?q=%2F".into())
        );
        assert_eq!(with(EscapedSlashes::Reject).apply(p), Normalized::Reject);
        assert_eq!(
            with(EscapedSlashes::Forward).apply(p),
            Normalized::Path("/admin?q=%2F".into())
        );
        assert_eq!(
            with(EscapedSlashes::Redirect).apply(p),
            Normalized::Redirect("/admin?q=%2F".into())
        );
        assert_eq!(
            with(EscapedSlashes::Forward).apply("/a%5c..%5Cb"),
            Normalized::Path("/b".into())
        );
        // Nothing to unescape: no redirect.
        assert_eq!(
            with(EscapedSlashes::Redirect).apply("/a/b"),
            Normalized::Path("/a/b".into())
        );
    }

    #[test]
    fn query_is_left_alone_and_off_means_off() {
        let on = PathNormalization {
            normalize: true,
            ..Default::default()
        };
        assert_eq!(
            on.apply("/a/../b?x=/../y&%2e"),
            Normalized::Path("/b?x=/../y&%2e".into())
        );
        assert_eq!(
            PathNormalization::default().apply("/a/../b"),
            Normalized::Path("/a/../b".into())
        );
        assert_eq!(on.apply("/a/%00"), Normalized::Reject);
    }
}
