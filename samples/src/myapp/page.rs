//! The HTML of `GET /`: one self-contained page (inline CSS and a few lines of script, nothing
//! fetched from elsewhere, so it works on a closed network). The version badge is the point
//! of the demo: it names the `user` version that answered this request, in its own colour.

use std::fmt::Write as _;

use super::{Failure, Page};

const HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Todo list</title>
<style>
  :root { --ink: #1f2933; --muted: #687482; --line: #e6e9ee; --accent: #3b63d8; }
  * { box-sizing: border-box; }
  body { margin: 0; min-height: 100vh; display: flex; justify-content: center;
         align-items: flex-start; background: linear-gradient(160deg, #eef2ff, #f8fafc 60%);
         font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: var(--ink); }
  main { width: 100%; max-width: 34rem; margin: 4rem 1rem; padding: 2rem 2.25rem;
         background: #fff; border-radius: 16px; box-shadow: 0 12px 32px rgba(15, 23, 42, .08); }
  header { display: flex; justify-content: space-between; align-items: baseline; gap: 1rem; }
  h1 { margin: 0; font-size: 1.6rem; }
  .badge { padding: .2rem .7rem; border-radius: 999px; font-size: .8rem; white-space: nowrap;
           background: #e0e7ff; color: #3730a3; }
  .badge[data-version="v2"] { background: #ffedd5; color: #9a3412; }
  .hello { margin: .25rem 0 1.5rem; color: var(--muted); }
  ul { list-style: none; margin: 0 0 1.5rem; padding: 0; }
  li { display: flex; justify-content: space-between; align-items: center; gap: 1rem;
       padding: .65rem 0; border-bottom: 1px solid var(--line); }
  li:last-child { border-bottom: 0; }
  li button { border: 0; background: none; color: var(--muted); font-size: 1.1rem;
              cursor: pointer; }
  li button:hover { color: #c2410c; }
  .empty { color: var(--muted); font-style: italic; }
  form { display: flex; gap: .5rem; }
  input { flex: 1; padding: .6rem .8rem; border: 1px solid var(--line); border-radius: 8px;
          font: inherit; }
  input:focus { outline: 2px solid #c7d2fe; border-color: var(--accent); }
  form button { padding: .6rem 1.1rem; border: 0; border-radius: 8px; background: var(--accent);
                color: #fff; font: inherit; cursor: pointer; }
  .error { padding: 1rem; border-radius: 8px; background: #fef2f2; color: #991b1b; }
  footer { margin-top: 1.5rem; font-size: .8rem; color: var(--muted); }
  code { font-size: .9em; }
</style>
</head>
<body>
<main>
"#;

const FORM: &str = r#"<form id="add">
  <input name="title" placeholder="Something to do" maxlength="200" required autocomplete="off">
  <button>Add</button>
</form>
<footer>Reload to let the mesh pick a <code>user</code> version for this request.</footer>
<script>
  const send = (method, path, body) =>
    fetch(path, { method, headers: { "content-type": "application/json" },
                  body: body && JSON.stringify(body) })
      .then(r => r.ok ? location.reload()
                      : r.json().then(e => alert(e.error), () => alert(r.status)));
  document.getElementById("add").addEventListener("submit", e => {
    e.preventDefault();
    send("POST", "/api/todos", { title: e.target.title.value });
  });
  document.querySelectorAll("li button").forEach(b =>
    b.addEventListener("click", () => send("DELETE", "/api/todos/" + b.dataset.id)));
</script>
"#;

const TAIL: &str = "</main>\n</body>\n</html>\n";

/// The todo list, greeting the user and naming the version that answered.
pub(super) fn render(page: &Page) -> String {
    let version = escape(&page.user.version);
    let mut html = String::from(HEAD);
    let _ = write!(
        html,
        "<header><h1>Todo list</h1><span class=\"badge\" data-version=\"{version}\">served by \
         user {version}</span></header>\n<p class=\"hello\">Hello, {}.</p>\n<ul>\n",
        escape(&page.user.name),
    );
    for todo in &page.todos {
        let _ = writeln!(
            html,
            "  <li><span>{}</span><button data-id=\"{}\" title=\"Done\">✓</button></li>",
            escape(&todo.title),
            todo.id,
        );
    }
    if page.todos.is_empty() {
        html.push_str("  <li class=\"empty\">Nothing to do.</li>\n");
    }
    html.push_str("</ul>\n");
    html.push_str(FORM);
    html.push_str(TAIL);
    html
}

/// The page when a backend failed: which one, and why.
pub(super) fn render_failure(failure: &Failure) -> String {
    let mut html = String::from(HEAD);
    let _ = write!(
        html,
        "<header><h1>Todo list</h1></header>\n<p class=\"error\">The <b>{}</b> service failed: \
         {}</p>\n<footer>Reload to try again.</footer>\n",
        failure.backend,
        escape(&failure.error.chain()),
    );
    html.push_str(TAIL);
    html
}

/// Text as HTML (titles are typed by whoever uses the demo).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::todo::Todo;
    use crate::user::User;

    #[test]
    fn renders_the_version_and_escapes_titles() {
        let page = Page {
            user: User {
                id: 1,
                name: "Ada".into(),
                version: "v2".into(),
            },
            todos: vec![Todo {
                id: 7,
                title: "<script>alert(1)</script> & more".into(),
            }],
        };
        let html = render(&page);
        assert!(html.contains(r#"data-version="v2">served by user v2</span>"#));
        assert!(html.contains("Hello, Ada."));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
        assert!(html.contains(r#"data-id="7""#));
        assert!(!html.contains("<script>alert"));
    }
}
