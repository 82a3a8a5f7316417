//! `halyard-control check DIR` through the built binary: exit codes, the output format, a clean
//! run over real-world manifests, and every marked line of the broken manifests.
//!
//! In `tests/manifests/broken/*.yaml` a line that must be reported ends with
//! `# expect: <fragment>`: the check passes when every such line gets a diagnostic whose text
//! contains the fragment, and no other line gets one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifests(which: &str) -> PathBuf {
    Path::new("tests/manifests").join(which)
}

fn check(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halyard-control"))
        .arg("check")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running halyard-control: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether `line` looks like `file:line: Kind/ns/name: field.path: message`.
fn well_formed(line: &str) -> bool {
    let re = regex::Regex::new(
        r"^[^:\s]+\.ya?ml:[1-9][0-9]*: (-|[A-Za-z?]+/[a-z0-9-]+/[a-z0-9.?-]+): (-|[A-Za-z0-9_.\[\]/*-]+): .+$",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    re.is_match(line)
}

#[test]
fn valid_manifests_have_no_problems() {
    let out = check(&manifests("valid"));
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert_eq!(stdout, "38 resources, no problems\n");
    assert_eq!(text(&out.stderr), "");
}

/// (file name, line) → expected fragment, from the `# expect:` markers.
fn expectations(dir: &Path) -> BTreeMap<(String, usize), String> {
    let mut out = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let before = out.len();
        for (i, line) in body.lines().enumerate() {
            if let Some((_, fragment)) = line.split_once("# expect: ") {
                out.insert((name.clone(), i + 1), fragment.trim().to_string());
            }
        }
        assert!(out.len() > before, "{name} marks no expected line");
    }
    out
}

#[test]
fn broken_manifests_report_exactly_the_marked_lines() {
    let dir = manifests("broken");
    let out = check(&dir);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}");
    let expected = expectations(&dir);

    let prefix = format!("{}/", dir.display());
    let mut got: BTreeMap<(String, usize), Vec<String>> = BTreeMap::new();
    for line in stdout.lines() {
        assert!(well_formed(line), "malformed diagnostic: {line}");
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("diagnostic outside {prefix}: {line}"));
        let mut parts = rest.splitn(3, ':');
        let file = parts.next().unwrap_or_default().to_string();
        let n: usize = parts
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line number: {line}"));
        got.entry((file, n)).or_default().push(rest.to_string());
    }

    let mut problems = Vec::new();
    for ((file, n), fragment) in &expected {
        match got.get(&(file.clone(), *n)) {
            None => problems.push(format!("{file}:{n}: expected `{fragment}`, got nothing")),
            Some(lines) => {
                for l in lines {
                    if !l.contains(fragment.as_str()) {
                        problems.push(format!("{file}:{n}: expected `{fragment}`, got: {l}"));
                    }
                }
            }
        }
    }
    for ((file, n), lines) in &got {
        if !expected.contains_key(&(file.clone(), *n)) {
            for l in lines {
                problems.push(format!("unexpected: {l}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let stderr = text(&out.stderr);
    let warnings = stdout.lines().filter(|l| l.contains(": warning: ")).count();
    let errors = stdout.lines().count() - warnings;
    assert!(
        stderr.ends_with(&format!(": {errors} errors, {warnings} warnings\n")),
        "{stderr}"
    );
    assert!(stderr.starts_with("halyard-control check: "), "{stderr}");
}

#[test]
fn warnings_alone_do_not_fail() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("dr.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ghost\nspec:\n  host: ghost.example.com\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout,
        format!(
            "{}/dr.yaml:6: DestinationRule/default/ghost: spec.host: warning: no ServiceEntry defines host `ghost.example.com`; the rule applies to nothing\n",
            dir.path().display()
        )
    );
    assert_eq!(
        text(&out.stderr),
        "halyard-control check: 1 resource: 0 errors, 1 warning\n"
    );
}

#[test]
fn nested_files_are_found_and_others_ignored() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sub = dir.path().join("a/b");
    std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(sub.join("x.yml"), "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: x}\nspec: {address: 10.0.0.1}\n---\n# only a comment\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("notes.txt"), "kind: nonsense")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join(".hidden.yaml"), "kind: nonsense")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout), "1 resource, no problems\n");
}

#[test]
fn empty_directory_is_clean() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "0 resources, no problems\n");
}

#[test]
fn not_a_directory_exits_2() {
    let out = check(Path::new("/nonexistent/halyard"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not a directory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
}
