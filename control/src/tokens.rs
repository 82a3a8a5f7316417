//! The tokens file: which bearer token may claim which workload identity.
//!
//! ```yaml
//! - token: 3q2+7wAAAAAAAAAAAAAAAA
//!   namespace: default
//!   serviceAccount: reviews
//! ```
//!
//! JSON (`[{"token": ..., "namespace": ..., "serviceAccount": ...}]`) is read the same way.
//! Tokens are kept only as SHA-256 digests and compared in constant time; no error message
//! or log line ever contains one.

use std::path::{Path, PathBuf};

use halyard_certs::SpiffeId;
use halyard_xds::{line_of, Segment};
use ring::digest::{digest, SHA256};
use serde::Deserialize;

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a YAML/JSON list of entries.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// An entry is well-formed but not acceptable.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending field.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One entry as written; the token may be any scalar so that a type error never echoes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    token: serde_yaml::Value,
    namespace: String,
    #[serde(rename = "serviceAccount", alias = "service_account")]
    service_account: String,
}

type Digest = [u8; 32];

/// The tokens in force: SHA-256 digests of tokens and the identity each may claim.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: Vec<(Digest, SpiffeId)>,
}

fn sha256(token: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// Compares two digests without an early exit.
fn ct_eq(a: &Digest, b: &Digest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl TokenTable {
    /// A table that accepts no token.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads and parses the tokens file at `path` for `trust_domain`.
    pub fn load(path: &Path, trust_domain: &str) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, trust_domain)
    }

    /// Parses tokens file text; `path` is used in error messages only.
    pub fn parse(text: &str, path: &Path, trust_domain: &str) -> Result<Self, TokensError> {
        if text.trim().is_empty() {
            return Ok(Self::empty());
        }
        let raw: Vec<RawEntry> = serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            TokensError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: if message.contains("expected a sequence") {
                    format!(
                        "{message} (the file is a list of {{token, namespace, serviceAccount}})"
                    )
                } else {
                    message
                },
            }
        })?;
        let invalid = |index: usize, field: &str, message: String| TokensError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, &[Segment::Index(index), Segment::Field(field.into())])
                .unwrap_or(1),
            message: format!("entry {}: {message}", index + 1),
        };
        let mut entries: Vec<(Digest, SpiffeId)> = Vec::with_capacity(raw.len());
        let mut first_index: Vec<usize> = Vec::with_capacity(raw.len());
        for (i, entry) in raw.into_iter().enumerate() {
            let token = match &entry.token {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => return Err(invalid(i, "token", "`token` must be a string".into())),
            };
            if token.is_empty() {
                return Err(invalid(i, "token", "`token` is empty".into()));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    i,
                    "token",
                    "`token` may hold only visible ASCII characters (no spaces)".into(),
                ));
            }
            for (field, value) in [
                ("namespace", &entry.namespace),
                ("serviceAccount", &entry.service_account),
            ] {
                let segment = SpiffeId::workload(trust_domain, value, "x");
                if value.is_empty() || value.contains('/') || segment.is_err() {
                    return Err(invalid(
                        i,
                        field,
                        format!(
                            "`{field}` must be one path segment of letters, digits, `.`, `-` and `_`"
                        ),
                    ));
                }
            }
            let id = SpiffeId::workload(trust_domain, &entry.namespace, &entry.service_account)
                .map_err(|e| invalid(i, "namespace", e.to_string()))?;
            let d = sha256(&token);
            if let Some(j) = entries.iter().position(|(other, _)| ct_eq(other, &d)) {
                let earlier = line_of(
                    text,
                    &[
                        Segment::Index(first_index[j]),
                        Segment::Field("token".into()),
                    ],
                )
                .unwrap_or(1);
                return Err(invalid(
                    i,
                    "token",
                    format!("the same token as the entry at line {earlier}; tokens must be unique"),
                ));
            }
            entries.push((d, id));
            first_index.push(i);
        }
        Ok(TokenTable { entries })
    }

    /// The identity `token` may claim, if it is known. Every entry is compared, each in
    /// constant time, so the time taken does not reveal how much of a token was right.
    pub fn lookup(&self, token: &str) -> Option<&SpiffeId> {
        let want = sha256(token);
        let mut found = None;
        for (d, id) in &self.entries {
            if ct_eq(d, &want) {
                found = Some(id);
            }
        }
        found
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TokenTable, TokensError> {
        TokenTable::parse(text, Path::new("tokens.yaml"), "cluster.local")
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::workload("cluster.local", ns, sa).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn yaml_and_json() {
        let yaml = "- token: alpha-token-0001\n  namespace: default\n  serviceAccount: reviews\n\
                    - token: beta-token-0002\n  namespace: shop\n  service_account: cart\n";
        let t = parse(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.lookup("alpha-token-0001"),
            Some(&id("default", "reviews"))
        );
        assert_eq!(t.lookup("beta-token-0002"), Some(&id("shop", "cart")));
        assert_eq!(t.lookup("alpha-token-000"), None);
        assert_eq!(t.lookup(""), None);

        let json = r#"[{"token": "j1", "namespace": "a", "serviceAccount": "b"}]"#;
        let t = parse(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.lookup("j1"), Some(&id("a", "b")));
    }

    #[test]
    fn empty_file_accepts_nothing() {
        let t = parse("\n  \n").unwrap_or_else(|e| panic!("{e}"));
        assert!(t.is_empty());
        assert_eq!(t.lookup("anything"), None);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = parse("- token: a\n  namespace: default\n  serviceAccount: x\n  colour: red\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("tokens.yaml:4:"), "{e}");
        assert!(e.contains("colour"), "{e}");

        let e = parse("token: a\n").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.starts_with("tokens.yaml:1:") && e.contains("list")));

        let e = parse("- token: a\n  namespace: default\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("serviceAccount"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_line_and_never_the_token() {
        let text = "- token: secret-one\n  namespace: default\n  serviceAccount: a\n\
                    - token: secret-two\n  namespace: Bad/NS\n  serviceAccount: b\n";
        let e = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("tokens.yaml:5: entry 2: `namespace`"), "{e}");

        let text = "- token: secret-one\n  namespace: default\n  serviceAccount: a\n\
                    - token: secret-one\n  namespace: default\n  serviceAccount: b\n";
        let e = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("tokens.yaml:4: entry 2:"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("secret-one"), "{e}");

        let text = "- token: \"has space\"\n  namespace: default\n  serviceAccount: a\n";
        let e = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.starts_with("tokens.yaml:1:") && !e.contains("has space"),
            "{e}"
        );

        let text = "- token: ''\n  namespace: default\n  serviceAccount: a\n";
        assert!(parse(text).is_err());

        let text = "- token: [1, 2]\n  namespace: default\n  serviceAccount: a\n";
        assert!(parse(text).is_err());
    }

    #[test]
    fn numeric_tokens_are_strings() {
        let t = parse("- token: 123456\n  namespace: default\n  serviceAccount: a\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.lookup("123456"), Some(&id("default", "a")));
    }

    #[test]
    fn constant_time_compare() {
        let a = sha256("x");
        assert!(ct_eq(&a, &a));
        assert!(!ct_eq(&a, &sha256("y")));
    }
}
