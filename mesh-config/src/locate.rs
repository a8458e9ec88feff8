//! Finding the line of a field path (`spec.http[0].route[1].weight`) in a YAML document.
//!
//! The parser reports lines only for what it rejects itself; most mistakes in mesh config are
//! semantic (a negative weight, a bad duration, an unknown subset) and found
//! after parsing. People edit block-style YAML, so walking its indentation is enough to point
//! at the offending line; when a step cannot be followed (flow style, anchors) the deepest
//! line found so far is returned, which is still the right neighbourhood.

/// One line of the document: its 1-based number, indentation and content.
#[derive(Clone, Copy, Debug)]
struct Line<'a> {
    number: usize,
    indent: usize,
    content: &'a str,
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for idx in rest.split('[') {
            if let Some(n) = idx
                .trim_end_matches(']')
                .parse()
                .ok()
                .filter(|_| !idx.is_empty())
            {
                out.push(Segment::Index(n));
            }
        }
    }
    out
}

fn lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let content = l.trim_start();
            if content.is_empty() || content.starts_with('#') {
                return None;
            }
            Some(Line {
                number: i + 1,
                indent: l.len() - content.len(),
                content,
            })
        })
        .collect()
}

/// The 1-based line (within `text`) of `path`, or of its deepest ancestor that can be found.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let mut scope: Vec<Line<'_>> = lines(text);
    let mut found = None;
    for seg in segments(path) {
        let Some(first) = scope.first().copied() else {
            break;
        };
        let level = scope.iter().map(|l| l.indent).min().unwrap_or(first.indent);
        let next = match seg {
            Segment::Key(key) => scope.iter().position(|l| {
                l.indent == level
                    && l.content
                        .strip_prefix(key)
                        .is_some_and(|rest| rest.starts_with(':'))
            }),
            Segment::Index(n) => scope
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.indent == level && (l.content == "-" || l.content.starts_with("- "))
                })
                .nth(n)
                .map(|(i, _)| i),
        };
        let Some(at) = next else {
            break;
        };
        let line = scope[at];
        found = Some(line.number);
        // The new scope: what is nested under this line.
        let mut inner: Vec<Line<'_>> = Vec::new();
        match seg {
            Segment::Key(key) => {
                let value = line.content[key.len() + 1..].trim();
                if !value.is_empty() && !value.starts_with('#') {
                    // A scalar or flow value on the same line: nothing nested to walk.
                    scope = Vec::new();
                    continue;
                }
                // A sequence may sit at the key's own indentation (`key:\n- a`).
                inner.extend(
                    scope[at + 1..]
                        .iter()
                        .take_while(|l| {
                            l.indent > line.indent
                                || (l.indent == line.indent && l.content.starts_with('-'))
                        })
                        .copied(),
                );
            }
            Segment::Index(_) => {
                let after_dash = line.content[1..].trim_start();
                if !after_dash.is_empty() {
                    inner.push(Line {
                        number: line.number,
                        indent: line.indent + (line.content.len() - after_dash.len()),
                        content: after_dash,
                    });
                }
                inner.extend(
                    scope[at + 1..]
                        .iter()
                        .take_while(|l| l.indent > line.indent)
                        .copied(),
                );
            }
        }
        scope = inner;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: user
spec:
  hosts:
  - user
  http:
  - route:
    - destination:
        host: user
        subset: v1
      weight: 80
    - destination:
        host: user
        subset: v2
      weight: 30
    timeout: 5 seconds
";

    #[test]
    fn finds_nested_fields() {
        assert_eq!(line_of(VS, "spec.http[0].route[1].weight"), Some(17));
        assert_eq!(
            line_of(VS, "spec.http[0].route[0].destination.subset"),
            Some(12)
        );
        assert_eq!(line_of(VS, "spec.http[0].timeout"), Some(18));
        assert_eq!(line_of(VS, "spec.hosts[0]"), Some(7));
        assert_eq!(line_of(VS, "metadata.name"), Some(4));
    }

    #[test]
    fn falls_back_to_the_deepest_ancestor() {
        assert_eq!(line_of(VS, "spec.http[0].route[5].weight"), Some(9));
        assert_eq!(line_of(VS, "nope"), None);
        let flow = "spec:\n  ports: [{name: a, port: 99999}]\n";
        assert_eq!(line_of(flow, "spec.ports[0].port"), Some(2));
    }
}
