//! The proxy's modules are layers: each may use only modules of its own layer or below, and
//! the graph of uses between top-level modules has no cycle. This reads the sources, so a
//! `use` (or a `crate::` path in code) that breaks the rule fails here, naming file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, bottom layer first (test files, `tests*.rs`, are not checked). Keep in
/// step with `src/lib.rs` and the README.
const LAYERS: &[&[&str]] = &[
    &["hex"],
    &["ctx", "headers"],
    &["detect", "io", "mtls", "telemetry"],
    &["identity", "upstream"],
    &["live", "routes", "shared", "snapshot", "watched"],
    &["plan", "request"],
    &["chain"],
    &["exec"],
    &["admin", "listeners"],
    &["app", "discovery"],
    &["test_util"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`None` for `lib.rs` and `main.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// Every top-level module a line names through `crate::`, including `use crate::{a, b::c}`.
fn uses_in(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Names at the group's top level: split on commas outside nested braces.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(after));
        }
        rest = after;
    }
    out.retain(|m| !m.is_empty());
    out
}

fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn modules_use_only_their_layer_or_below_and_form_no_cycle() {
    let src = Path::new("src");
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(src, file) else {
            continue;
        };
        // Test modules may use the in-process proxy of `test_util`.
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("tests") {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "{}: module `{module}` has no layer",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for used in uses_in(code) {
                if used == module || used == "self" || used == "super" {
                    continue;
                }
                match layer_of(&used) {
                    Some(l) if l <= own => {
                        graph.entry(module.clone()).or_default().insert(used);
                    }
                    Some(l) => problems.push(format!(
                        "{}:{}: `{module}` (layer {own}) uses `{used}` (layer {l})",
                        file.display(),
                        n + 1
                    )),
                    None => problems.push(format!(
                        "{}:{}: `{used}` is not a layered module",
                        file.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("modules use each other: {}", cycle.join(" -> ")));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_use_scanner_sees_groups_and_paths() {
    assert_eq!(uses_in("use crate::ctx::Flags;"), ["ctx"]);
    assert_eq!(
        uses_in("use crate::{io::body, plan::{self, Step}, shared};"),
        ["io", "plan", "shared"]
    );
    assert_eq!(
        uses_in("let x = crate::exec::tcp::relay(a, crate::hex::f());"),
        ["exec", "hex"]
    );
    assert!(uses_in("let crate_ = 1;").is_empty());
}
