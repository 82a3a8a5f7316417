//! The bodies of halyard-filters' fuzz targets, with the properties they check.
//!
//! Each function takes arbitrary bytes, drives the filters crate through its public API only
//! and panics if and only if it finds a bug: a panic inside the crate, or a result that breaks a
//! property stated here. The fuzz targets in `fuzz_targets/` call these;
//! `filters/tests/fuzz_inputs.rs` compiles this same file (`#[path]`) and runs it on stable
//! over the seeds and seeded mutations, so `cargo test` checks the same properties.
#![forbid(unsafe_code)]

use std::borrow::Cow;

use halyard_filters::attrs::{Authenticated, Connection, Request};
use halyard_filters::path::{normalize, PathError};
use halyard_filters::rbac::Engine;
use halyard_xds::{AuthorizationCondition, AuthorizationPolicy, AuthorizationRule};
use serde_json::Value;

/// Seeds for both targets: `(target, file name, bytes)`.
pub const SEEDS: &[(&str, &str, &[u8])] = &[
    (
        "path_normalize",
        "seed-admin-dot-dot",
        b"/public/%2e%2E/admin?x=1",
    ),
    (
        "path_normalize",
        "seed-encoded-slashes",
        b"/a%2F..%5c..%2fadmin//x/./y/",
    ),
    ("path_normalize", "seed-backslashes", b"\\\\a\\..\\b#frag"),
    ("path_normalize", "seed-escapes", b"/%41%7e%3a%3A%25%00%zz"),
    (
        "path_normalize",
        "seed-non-ascii",
        "/caf\u{e9}/ \"<>/%C3%A9".as_bytes(),
    ),
    ("path_normalize", "seed-normal", b"/api/v1/users/42"),
    (
        "claim_match",
        "seed-string",
        b"admin\ngroups\n{\"groups\": \"admin\"}",
    ),
    (
        "claim_match",
        "seed-list",
        b"dev*\ngroups\n{\"groups\": [\"ops\", \"developers\"]}",
    ),
    (
        "claim_match",
        "seed-nested",
        b"*@foo.com\na.b\n{\"a\": {\"b\": [\"x@foo.com\", 1]}}",
    ),
    ("claim_match", "seed-number", b"42\nn\n{\"n\": 42}"),
    (
        "claim_match",
        "seed-bool",
        b"true\nadmin\n{\"admin\": true}",
    ),
    ("claim_match", "seed-bracket", b"x\na[b\n{}"),
    (
        "claim_match",
        "seed-brackets-make-a-path",
        b"x\na][b\n{\"a\": {\"b\": \"x\"}}",
    ),
];

/// Normalises `data` (as UTF-8, lossily) and checks: the result equals an independent
/// reference implementation (same output, same error); a result is a fixed point (normalising
/// it again returns it, borrowed); it is absolute, ASCII, without `//`, `/./`, `/../`, a
/// trailing `/.` or `/..`, backslashes, query, fragment or control bytes, and every escape it
/// keeps is upper-case and decodes to a byte that may not be decoded (not unreserved, not a
/// separator, not a control byte); a borrowed result is a prefix of the input (or the static
/// `/` for an empty path).
pub fn path_normalize(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let got = normalize(&input);
    let want = reference_normalize(&input);
    match (&got, &want) {
        (Ok(g), Ok(w)) => assert_eq!(g, w, "normalize({input:?})"),
        (Err(g), Err(w)) => assert_eq!(g, w, "normalize({input:?})"),
        _ => panic!("normalize({input:?}) = {got:?}, the reference says {want:?}"),
    }
    let Ok(out) = got else { return };
    if let Cow::Borrowed(b) = &out {
        // An empty path is the static "/"; anything else borrowed is the input's own path.
        let empty = input.is_empty() || input.starts_with(['?', '#']);
        assert!(
            (empty && *b == "/") || input.as_ptr() == b.as_ptr(),
            "borrowed {b:?} is not a prefix of {input:?}"
        );
    }
    if &*out == "*" {
        return;
    }
    match normalize(&out) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, &*out, "not idempotent"),
        other => panic!("normalize({out:?}) = {other:?}: not a fixed point"),
    }
    assert!(out.starts_with('/'), "{out:?}");
    assert!(out.is_ascii(), "{out:?}");
    for bad in ["//", "/./", "/../", "\\", "?", "#"] {
        assert!(!out.contains(bad), "{input:?} → {out:?} contains {bad:?}");
    }
    assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{out:?}");
    let b = out.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        assert!(!(c < 0x20 || c == 0x7f), "{out:?} has a control byte");
        if c == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            let upper = hex.is_some_and(|h| h == h.to_ascii_uppercase());
            match v {
                Some(v) if upper => assert!(
                    !(unreserved(v) || v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f),
                    "{out:?} keeps an escape it must decode or refuse"
                ),
                _ => panic!("{out:?} has a bad escape at {i}"),
            }
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// Path normalisation written differently: decode into segments first, then resolve dot
/// segments with a stack.
fn reference_normalize(raw: &str) -> Result<String, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return Ok("/".into());
    }
    if path == "*" {
        return Ok(path.into());
    }
    if !path.starts_with(['/', '\\']) {
        return Err(PathError::NotAbsolute);
    }
    let b = path.as_bytes();
    let mut segments: Vec<String> = vec![String::new()];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (byte, escaped) = if c == b'%' {
            let v = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|x| x.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PathError::InvalidPercentEncoding(i))?;
            (v, true)
        } else {
            (c, false)
        };
        if byte == b'/' || byte == b'\\' {
            segments.push(String::new());
        } else if byte < 0x20 || byte == 0x7f {
            return Err(PathError::ControlCharacter(i));
        } else if unreserved(byte) || (!escaped && b"!$&'()*+,;=:@".contains(&byte)) {
            if let Some(s) = segments.last_mut() {
                s.push(char::from(byte));
            }
        } else if let Some(s) = segments.last_mut() {
            s.push_str(&format!("%{byte:02X}"));
        }
        i += if escaped { 3 } else { 1 };
    }
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in &segments[1..] {
        trailing = true;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => {
                stack.push(s);
                trailing = false;
            }
        }
    }
    let mut out = format!("/{}", stack.join("/"));
    if trailing && !stack.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Splits `data` (UTF-8, lossily) into `pattern\nclaim.path\nJSON claims`, compiles an ALLOW
/// policy with `request.auth.claims[…]` `values: [pattern]` and another with `notValues`, and
/// checks: names without brackets always compile (with brackets the key may still be valid,
/// e.g. names `a][b` make `[a][b]`); for a request with those claims exactly one of the two
/// policies allows it, and (names without brackets) the first does exactly when an
/// independent reference of Istio's claim matching says so; without a JWT only the second
/// allows.
pub fn claim_match(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let pattern = parts.next().unwrap_or_default().to_string();
    let mut names: Vec<&str> = parts
        .next()
        .unwrap_or_default()
        .split('.')
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        names.push("c");
    }
    let json = parts.next().unwrap_or_default();
    let value = serde_json::from_str::<Value>(json).unwrap_or_else(|_| Value::String(json.into()));
    let claims = match value {
        Value::Object(m) => m,
        other => {
            let mut m = serde_json::Map::new();
            m.insert(names[0].to_string(), other);
            m
        }
    };
    let key: String = names.iter().map(|n| format!("[{n}]")).collect();
    let key = format!("request.auth.claims{key}");
    let engine = |values: Vec<String>, not_values: Vec<String>| {
        Engine::compile(&[AuthorizationPolicy {
            name: "fuzz/claims".into(),
            action: 0,
            rules: vec![AuthorizationRule {
                when: vec![AuthorizationCondition {
                    key: key.clone(),
                    values,
                    not_values,
                }],
                ..Default::default()
            }],
            dry_run: false,
        }])
    };
    let bracket = names.iter().any(|n| n.contains(['[', ']']));
    let (with, without) = match (
        engine(vec![pattern.clone()], vec![]),
        engine(vec![], vec![pattern.clone()]),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            assert!(
                bracket,
                "{key:?} did not compile: {:?} {:?}",
                a.err(),
                b.err()
            );
            return;
        }
    };
    let auth = Authenticated {
        principal: "iss/sub".into(),
        claims: claims.clone(),
        ..Default::default()
    };
    let headers = http::HeaderMap::new();
    let conn = Connection {
        source_ip: [127, 0, 0, 1].into(),
        remote_ip: [127, 0, 0, 1].into(),
        destination_ip: [127, 0, 0, 1].into(),
        destination_port: 80,
        principal: None,
        sni: None,
    };
    let mut req = Request {
        method: "GET",
        path: "/",
        host: "h",
        headers: &headers,
        auth: Some(&auth),
    };
    let yes = with.evaluate_http(&conn, &req).allowed();
    let no = without.evaluate_http(&conn, &req).allowed();
    assert!(
        yes != no,
        "values and notValues agree ({yes}) for {pattern:?} on {claims:?}"
    );
    if !bracket {
        let want = reference_claim(&pattern, &claims, &names);
        assert_eq!(yes, want, "{pattern:?} on {key} of {claims:?}");
    }
    req.auth = None;
    assert!(
        !with.evaluate_http(&conn, &req).allowed(),
        "matched without a JWT"
    );
    assert!(
        without.evaluate_http(&conn, &req).allowed(),
        "notValues failed without a JWT"
    );
}

/// Istio's claim matching, independently: walk the names, then compare a string, any
/// non-list element of a list, or a boolean/number by its JSON text, with Istio's wildcards.
fn reference_claim(pattern: &str, claims: &serde_json::Map<String, Value>, names: &[&str]) -> bool {
    let mut v = claims.get(names[0]);
    for n in &names[1..] {
        v = v.and_then(|v| v.get(n));
    }
    let text_matches = |s: &str| {
        if pattern == "*" {
            !s.is_empty()
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            s.ends_with(suffix)
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            s.starts_with(prefix)
        } else {
            s == pattern
        }
    };
    let scalar = |v: &Value| match v {
        Value::String(s) => text_matches(s),
        Value::Bool(_) | Value::Number(_) => text_matches(&v.to_string()),
        _ => false,
    };
    match v {
        Some(Value::Array(items)) => items.iter().any(scalar),
        Some(v) => scalar(v),
        None => false,
    }
}
