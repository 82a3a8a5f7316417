//! Reading a `ProxyConfig` from a YAML or JSON file with errors that name file, line and field.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::locate::line_of;
use crate::validate::{validate, ValidationError};
use crate::ProxyConfig;

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not a valid rendering of the resource types.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, starting with the field path when known.
        message: String,
    },
    /// The resources parsed but break one or more rules.
    #[error("{}", Located(path, errors))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem with its line.
        errors: Vec<(usize, ValidationError)>,
    },
}

struct Located<'a>(&'a Path, &'a [(usize, ValidationError)]);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (line, err)) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{line}: {err}", self.0.display())?;
        }
        Ok(())
    }
}

/// Reads, parses and validates a configuration file.
pub fn load_file(path: &Path) -> Result<ProxyConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path)
}

/// Parses and validates configuration text; `path` is used in error messages and
/// to choose JSON (`.json`) or YAML (anything else).
pub fn parse_str(text: &str, path: &Path) -> Result<ProxyConfig, LoadError> {
    let parse_err = |line: usize, column: usize, message: String| LoadError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    if text.trim().is_empty() {
        return Err(parse_err(1, 1, "the file is empty".into()));
    }
    let normalized = crate::duration::normalize(text);
    let text: &str = &normalized;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let config: ProxyConfig = if is_json {
        serde_json::from_str(text).map_err(|e| {
            let msg = strip_location(&e.to_string());
            parse_err(e.line(), e.column(), msg)
        })?
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            parse_err(line, column, strip_location(&e.to_string()))
        })?
    };
    let errors = validate(&config);
    if errors.is_empty() {
        return Ok(config);
    }
    let errors = errors
        .into_iter()
        .map(|e| (line_of(text, &e.path).unwrap_or(1), e))
        .collect();
    Err(LoadError::Invalid {
        path: path.to_path_buf(),
        errors,
    })
}

/// serde's messages end with " at line L column C"; the location is reported separately.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_str(text, Path::new("proxy.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let e = err("services:\n  - name: a\n    prots: []\n");
        assert!(e.starts_with("proxy.yaml:3:"), "{e}");
        assert!(e.contains("prots"), "{e}");
    }

    #[test]
    fn wrong_type_names_field() {
        let e = err("services:\n  - name: a\n    ports:\n      - port: eighty\n");
        assert!(e.starts_with("proxy.yaml:4:"), "{e}");
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn bad_enum_is_reported() {
        let e =
            err("services:\n  - name: a\n    ports:\n      - port: 80\n        protocol: SMTP\n");
        assert!(e.starts_with("proxy.yaml:5:"), "{e}");
    }

    #[test]
    fn semantic_errors_have_lines() {
        let text = "services:\n  - name: a\n    ports:\n      - port: 80\n    endpoints:\n      - address: ''\n";
        let e = err(text);
        assert!(
            e.starts_with("proxy.yaml:6: services[0].endpoints[0].address:"),
            "{e}"
        );
    }

    #[test]
    fn json_and_durations() {
        let cfg = parse_str(
            r#"{"services":[{"name":"a","hosts":["a.local"],"connect_timeout":"1.5s","ports":[{"port":80,"protocol":"HTTP"}],"endpoints":[{"address":"127.0.0.1"}]}]}"#,
            Path::new("p.json"),
        )
        .unwrap();
        let d = cfg.services[0].connect_timeout.as_ref().unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
        assert_eq!(cfg.services[0].ports[0].protocol(), crate::Protocol::Http);
    }

    #[test]
    fn empty_file() {
        assert!(err("  \n").contains("empty"));
    }
}
