//! The documentation's links hold: every relative link in README.md and docs/*.md
//! names a file of the repository, and every `#anchor` names an `<a id>` of the target
//! (docs/protocol.md) or a heading of it (GitHub's heading anchors, for the README and
//! the guides). A renamed section or a moved file fails here rather than in a reader's
//! browser.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// GitHub's anchor of a heading: lower case, punctuation dropped except `-` and `_`,
/// spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors a Markdown file offers: `<a id="...">` and its headings' slugs.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in text.split("<a id=\"").skip(1) {
        if let Some(id) = part.split('"').next() {
            out.insert(id.to_owned());
        }
    }
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// The `(target)` of every `[text](target)` in `text`, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for part in line.split("](").skip(1) {
            if let Some(target) = part.split(')').next() {
                out.push(target.to_owned());
            }
        }
    }
    out
}

#[test]
fn relative_links_and_anchors_resolve() {
    let root = root();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    for guide in ["operators", "broadcasters", "developers", "embedding"] {
        assert!(
            files.contains(&root.join("docs").join(format!("{guide}.md"))),
            "docs/{guide}.md is missing"
        );
    }
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let dir = file.parent().expect("dir");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            assert!(
                target.exists(),
                "{}: link {link:?}: {} does not exist",
                file.display(),
                target.display()
            );
            if let Some(anchor) = anchor {
                let target_text = std::fs::read_to_string(&target).expect("read target");
                assert!(
                    anchors(&target_text).contains(anchor),
                    "{}: link {link:?}: no anchor {anchor:?} in {}",
                    file.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser right?"
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug(" For web and app developers: HTTP, WebSocket, server-sent events"),
        "for-web-and-app-developers-http-websocket-server-sent-events"
    );
    assert_eq!(
        slug(" 17. TLS **(beyond the original)**"),
        "17-tls-beyond-the-original"
    );
}
