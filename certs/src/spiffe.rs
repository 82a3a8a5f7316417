//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`, validated as the SPIFFE ID spec requires.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not `spiffe://`.
    #[error("a SPIFFE ID starts with `spiffe://`")]
    Scheme,
    /// Empty or malformed trust domain.
    #[error("bad trust domain `{0}`: use lower-case letters, digits, `.`, `-` and `_`")]
    TrustDomain(String),
    /// Empty, `.`/`..` or badly spelled path segment.
    #[error("bad path segment `{0}`: use letters, digits, `.`, `-` and `_`, not `.` or `..`")]
    Segment(String),
    /// Query, fragment, port or user info present.
    #[error("a SPIFFE ID has no query, fragment, port or user info")]
    Extra,
    /// Longer than 2048 bytes.
    #[error("a SPIFFE ID is at most 2048 bytes")]
    TooLong,
}

/// A validated SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    td_end: usize,
}

const PREFIX: &str = "spiffe://";

fn td_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Checks a trust domain name.
pub fn check_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() || td.len() > 255 || !td.chars().all(td_char) {
        return Err(IdError::TrustDomain(td.to_string()));
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<(), IdError> {
    if seg.is_empty() || seg == "." || seg == ".." || !seg.chars().all(path_char) {
        return Err(IdError::Segment(seg.to_string()));
    }
    Ok(())
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() > 2048 {
            return Err(IdError::TooLong);
        }
        let rest = s.strip_prefix(PREFIX).ok_or(IdError::Scheme)?;
        if rest.contains(['?', '#', '@']) {
            return Err(IdError::Extra);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.contains(':') {
            return Err(IdError::Extra);
        }
        check_trust_domain(td)?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                check_segment(seg)?;
            }
        }
        Ok(SpiffeId {
            uri: s.to_string(),
            td_end: PREFIX.len() + td.len(),
        })
    }

    /// The Istio-style workload identity `spiffe://TD/ns/NS/sa/SA`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdError> {
        Self::parse(&format!(
            "{PREFIX}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain (`cluster.local`).
    pub fn trust_domain(&self) -> &str {
        &self.uri[PREFIX.len()..self.td_end]
    }

    /// The path, with its leading `/` (empty for a trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// The namespace of an Istio-style ID (`/ns/NS/sa/SA`).
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account of an Istio-style ID.
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }

    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/demo/sa/frontend").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), Some("demo"));
        assert_eq!(id.service_account(), Some("frontend"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/frontend");
        assert_eq!(
            SpiffeId::workload("cluster.local", "demo", "frontend").unwrap(),
            id
        );
        let other = SpiffeId::parse("spiffe://example.org/workloads/x").unwrap();
        assert_eq!(other.namespace(), None);
        assert_eq!(SpiffeId::parse("spiffe://example.org").unwrap().path(), "");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe:///ns/a",
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local:8080/ns/a",
            "spiffe://user@cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/",
            "spiffe://cluster.local//a",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/./sa",
            "spiffe://cluster.local/ns/a?x=1",
            "spiffe://cluster.local/ns/a#f",
            "spiffe://cluster.local/ns/a b",
            "spiffe://cluster.local/ns/%41",
            "SPIFFE://cluster.local/ns/a",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://a/{}", "x".repeat(2100))),
            Err(IdError::TooLong)
        );
    }
}
