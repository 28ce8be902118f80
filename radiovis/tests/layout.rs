//! The shape of the code, checked on every test run (the rules are the README's
//! "Architecture" section; `docs/protocol.md` is the protocol's):
//!
//! - dependencies between the library's modules point one way: no two top-level
//!   modules (and no two sibling modules in a folder) reach each other, directly or
//!   round a longer circle;
//! - no source file in the workspace is over 600 lines unless its first lines say why
//!   (a line containing `Long file:`);
//! - no code comment cites a document outside the repository.
//!
//! It reads the sources as text: `crate::a::b` and `super::` paths in the library name
//! the modules a file depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the library sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, except build output and fuzzing corpora.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !(name == "target"
                || name.starts_with('.')
                || name == "corpus"
                || name == "artifacts")
            {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The module path of a library source file: `hub/index.rs` -> `["hub", "index"]`,
/// `hub/mod.rs` -> `["hub"]`, `lib.rs` -> `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments (line comments and doc comments), so that
/// a path in prose does not count as a dependency.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file refers to: `crate::x::y` and `super::x` (resolved against
/// the file's own module). Grouped imports (`crate::{a, b::c}`) are expanded.
fn references(module: &[String], is_mod_file: bool, code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            // `super` of `a::b` (file b.rs) is `a`; of `a` (a/mod.rs) it is the root.
            let mut m = module.to_vec();
            if !is_mod_file || !m.is_empty() {
                m.pop();
            }
            m
        }),
    ] {
        let mut from = 0;
        while let Some(i) = code[from..].find(prefix) {
            let at = from + i;
            from = at + prefix.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            for path in expand(rest) {
                let mut full = base.clone();
                full.extend(path);
                found.push(full);
            }
        }
    }
    found
}

/// The paths at the start of `rest` (after `crate::`): `a::b::C` -> `[a, b, C]`,
/// `{a::X, b}` -> `[a, X]`, `[b]`.
fn expand(rest: &str) -> Vec<Vec<String>> {
    let ident_end = |s: &str| {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut path = Vec::new();
    let mut s = rest;
    loop {
        if let Some(inner) = s.strip_prefix('{') {
            // A group: split at top-level commas up to the matching brace.
            let mut depth = 0;
            let mut end = inner.len();
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let group = &inner[..end];
            let mut out = Vec::new();
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        for p in expand(group[start..i].trim_start()) {
                            let mut full = path.clone();
                            full.extend(p);
                            out.push(full);
                        }
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            for p in expand(group[start..].trim_start()) {
                let mut full = path.clone();
                full.extend(p);
                out.push(full);
            }
            return out;
        }
        let n = ident_end(s);
        if n == 0 {
            break;
        }
        path.push(s[..n].to_owned());
        s = &s[n..];
        match s.strip_prefix("::") {
            Some(next) => s = next,
            None => break,
        }
    }
    vec![path]
}

/// Turns a referenced path into the module it lands in: its longest prefix that is a
/// module of the crate.
fn landing(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// Edges `from -> to` between modules of the library.
fn module_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let is_mod_file = matches!(
            file.file_name().and_then(|n| n.to_str()),
            Some("mod.rs" | "lib.rs")
        );
        let text = std::fs::read_to_string(file).expect("readable source");
        for path in references(&module, is_mod_file, &code_only(&text)) {
            let to = landing(&modules, &path);
            if to != module {
                graph.entry(module.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// A circle in `edges`, if there is one (as the list of nodes round it).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            let mut stack = Vec::new();
            if let Some(c) = visit(node, edges, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn library_modules_depend_one_way() {
    let graph = module_graph();
    // Level by level: the top-level modules, then the children of each folder. A
    // module's edges to its own descendants or ancestors (a folder re-exporting its
    // parts, a part naming its folder's types) are inside one unit and do not count.
    let mut parents: BTreeSet<Vec<String>> = BTreeSet::new();
    parents.insert(Vec::new());
    for m in graph.keys().chain(graph.values().flatten()) {
        for n in 1..m.len() {
            parents.insert(m[..n].to_vec());
        }
    }
    let mut problems = Vec::new();
    for parent in &parents {
        let depth = parent.len();
        let child_of = |m: &Vec<String>| -> Option<String> {
            (m.len() > depth && m[..depth] == parent[..]).then(|| m[depth].clone())
        };
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, tos) in &graph {
            let Some(a) = child_of(from) else { continue };
            for to in tos {
                if let Some(b) = child_of(to) {
                    if a != b {
                        edges.entry(a.clone()).or_default().insert(b);
                    }
                }
            }
        }
        if let Some(cycle) = find_cycle(&edges) {
            let prefix = if parent.is_empty() {
                "crate".to_owned()
            } else {
                format!("crate::{}", parent.join("::"))
            };
            problems.push(format!("{prefix}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        problems.is_empty(),
        "modules that depend on each other (make one of them not know the other):\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_long_file_without_a_reason() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable source");
        let lines = text.lines().count();
        let explained = text.lines().take(20).any(|l| l.contains("Long file:"));
        if lines > MAX_LINES && !explained {
            long.push(format!("{} ({lines} lines)", f.display()));
        }
    }
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines without a `Long file:` reason at the top:\n{}",
        long.join("\n")
    );
}

#[test]
fn comments_cite_only_the_repository() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let outside = ["behaviour.md", "shared/docs"];
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o)) && !f.ends_with("tests/layout.rs") {
                found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "comments that cite a document outside the repository (cite docs/protocol.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_graph_reader_sees_imports() {
    // The checks above are only as good as the reader: it must see grouped, nested and
    // `super::` imports, and no paths in comments.
    let module = vec!["hub".to_owned(), "index".to_owned()];
    let code = code_only(
        "use crate::{stomp::{Frame, Version}, topic};\nuse super::last::Last;\n// crate::session\nlet x = crate::outbound::Outbound::new();",
    );
    let refs = references(&module, false, &code);
    let expect = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(refs.contains(&expect(&["stomp", "Frame"])), "{refs:?}");
    assert!(refs.contains(&expect(&["stomp", "Version"])), "{refs:?}");
    assert!(refs.contains(&expect(&["topic"])), "{refs:?}");
    assert!(refs.contains(&expect(&["hub", "last", "Last"])), "{refs:?}");
    assert!(
        refs.contains(&expect(&["outbound", "Outbound", "new"])),
        "{refs:?}"
    );
    assert!(!refs
        .iter()
        .any(|r| r.first().map(String::as_str) == Some("session")));
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    edges.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    assert_eq!(find_cycle(&edges), None);
    edges.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(find_cycle(&edges).is_some());
}
