//! Request matching: the compiled conditions of a route's `match` alternatives.

use halyard_xds as xds;
use http::header::HeaderName;
use http::{HeaderMap, Method};
use regex::Regex;

/// A compiled string condition.
#[derive(Debug, Clone)]
pub enum StrMatch {
    /// Equal to.
    Exact(Box<str>),
    /// Starts with.
    Prefix(Box<str>),
    /// The whole string matches (RE2 syntax, anchored).
    Regex(Regex),
    /// Any value (presence only).
    Present,
}

/// Why a condition could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("invalid regex `{pattern}`: {reason}")]
pub struct MatchError {
    pattern: String,
    reason: String,
}

impl StrMatch {
    /// Compiles a condition; `lower` folds exact/prefix values to lower case (for
    /// case-insensitive matching against a lower-cased value).
    pub fn from_xds(m: &xds::StringMatch, lower: bool) -> Result<Self, MatchError> {
        use xds::string_match::MatchType;
        let fold = |s: &str| -> Box<str> {
            if lower {
                s.to_ascii_lowercase().into()
            } else {
                s.into()
            }
        };
        Ok(match &m.match_type {
            None => Self::Present,
            Some(MatchType::Exact(s)) => Self::Exact(fold(s)),
            Some(MatchType::Prefix(s)) => Self::Prefix(fold(s)),
            Some(MatchType::Regex(r)) => {
                // Envoy and Istio match the whole value (RE2 full match).
                let anchored = format!("^(?:{r})$");
                let re = regex::RegexBuilder::new(&anchored)
                    .case_insensitive(lower)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| MatchError {
                        pattern: r.clone(),
                        reason: e.to_string(),
                    })?;
                Self::Regex(re)
            }
        })
    }

    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == &**s,
            Self::Prefix(p) => value.starts_with(&**p),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }

    /// The literal prefix, for rewriting the matched part of a path.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            Self::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

/// What a route looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path without the query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// Host without port, lower case.
    pub host: &'a str,
    /// Authority as sent (host and port).
    pub authority: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The service port addressed.
    pub port: Option<u16>,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// One alternative of a route's match list: every condition must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    uri: Option<StrMatch>,
    /// Compare the path lower-cased (the condition is lower-cased already).
    ignore_uri_case: bool,
    method: Option<StrMatch>,
    authority: Option<StrMatch>,
    scheme: Option<StrMatch>,
    headers: Vec<(HeaderName, StrMatch)>,
    without_headers: Vec<(HeaderName, StrMatch)>,
    query: Vec<(Box<str>, StrMatch)>,
    port: Option<u16>,
}

fn header_name(name: &str) -> Result<HeaderName, MatchError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| MatchError {
        pattern: name.to_string(),
        reason: "not a header name".into(),
    })
}

/// Whether any value of header `name` satisfies `m` (presence for [`StrMatch::Present`]).
fn header_matches(headers: &HeaderMap, name: &HeaderName, m: &StrMatch) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
}

/// The first value of `name` in a query string (undecoded, as Envoy compares it).
pub fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

impl RouteMatch {
    /// Compiles one `match` alternative.
    pub fn compile(m: &xds::HttpMatch) -> Result<Self, MatchError> {
        let opt = |sm: &Option<xds::StringMatch>, lower: bool| {
            sm.as_ref()
                .map(|s| StrMatch::from_xds(s, lower))
                .transpose()
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for (name, sm) in &m.headers {
            headers.push((header_name(name)?, StrMatch::from_xds(sm, false)?));
        }
        let mut without_headers = Vec::with_capacity(m.without_headers.len());
        for (name, sm) in &m.without_headers {
            without_headers.push((header_name(name)?, StrMatch::from_xds(sm, false)?));
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for (name, sm) in &m.query_params {
            query.push((name.as_str().into(), StrMatch::from_xds(sm, false)?));
        }
        // Deterministic order whatever the map gave us.
        headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(Self {
            uri: opt(&m.uri, m.ignore_uri_case)?,
            ignore_uri_case: m.ignore_uri_case,
            method: opt(&m.method, false)?,
            authority: opt(&m.authority, false)?,
            scheme: opt(&m.scheme, false)?,
            headers,
            without_headers,
            query,
            port: u16::try_from(m.port).ok().filter(|p| *p != 0),
        })
    }

    /// Whether the request satisfies every condition.
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        if let Some(u) = &self.uri {
            let ok = if self.ignore_uri_case && r.path.bytes().any(|b| b.is_ascii_uppercase()) {
                u.matches(&r.path.to_ascii_lowercase())
            } else {
                u.matches(r.path)
            };
            if !ok {
                return false;
            }
        }
        self.method
            .as_ref()
            .is_none_or(|m| m.matches(r.method.as_str()))
            && self.port.is_none_or(|p| r.port == Some(p))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.matches(r.authority))
            && self.scheme.as_ref().is_none_or(|m| m.matches(r.scheme))
            && self
                .headers
                .iter()
                .all(|(name, m)| header_matches(r.headers, name, m))
            && !self
                .without_headers
                .iter()
                .any(|(name, m)| header_matches(r.headers, name, m))
            && self
                .query
                .iter()
                .all(|(name, m)| query_value(r.query, name).is_some_and(|v| m.matches(v)))
    }

    /// The literal path prefix this alternative matched on, if it is a prefix match.
    pub fn uri_prefix(&self) -> Option<&str> {
        self.uri.as_ref().and_then(StrMatch::prefix)
    }
}

/// Whether a match alternative applies to this proxy's own workload (Istio `sourceLabels`,
/// `sourceNamespace`): decided once per config, not per request.
pub fn applies_to_source(
    labels: &std::collections::HashMap<String, String>,
    namespace: &str,
    want_labels: &std::collections::HashMap<String, String>,
    want_namespace: &str,
) -> bool {
    (want_namespace.is_empty() || want_namespace == namespace)
        && want_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds::string_match::MatchType;

    fn sm(t: MatchType) -> xds::StringMatch {
        xds::StringMatch {
            match_type: Some(t),
        }
    }

    fn view<'a>(path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            path,
            query,
            host: "a.local",
            authority: "a.local:80",
            scheme: "http",
            port: Some(80),
            headers,
        }
    }

    #[test]
    fn regex_is_anchored_and_case_folding_applies() {
        let m = RouteMatch::compile(&xds::HttpMatch {
            uri: Some(sm(MatchType::Regex("/v[0-9]+/.*".into()))),
            ..Default::default()
        })
        .unwrap();
        let h = HeaderMap::new();
        assert!(m.matches(&view("/v1/x", None, &h)));
        assert!(!m.matches(&view("/api/v1/x", None, &h)));
        let m = RouteMatch::compile(&xds::HttpMatch {
            uri: Some(sm(MatchType::Prefix("/API".into()))),
            ignore_uri_case: true,
            ..Default::default()
        })
        .unwrap();
        assert!(m.matches(&view("/api/x", None, &h)));
        assert!(m.matches(&view("/Api/x", None, &h)));
        assert_eq!(m.uri_prefix(), Some("/api"));
        assert!(RouteMatch::compile(&xds::HttpMatch {
            uri: Some(sm(MatchType::Regex("(".into()))),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn headers_presence_absence_and_query() {
        let mut hm = std::collections::HashMap::new();
        hm.insert(
            "x-canary".to_string(),
            xds::StringMatch { match_type: None },
        );
        let mut without = std::collections::HashMap::new();
        without.insert("x-block".to_string(), sm(MatchType::Exact("yes".into())));
        let mut query = std::collections::HashMap::new();
        query.insert("v".to_string(), sm(MatchType::Regex("[0-9]+".into())));
        let m = RouteMatch::compile(&xds::HttpMatch {
            headers: hm,
            without_headers: without,
            query_params: query,
            port: 80,
            ..Default::default()
        })
        .unwrap();
        let mut h = HeaderMap::new();
        assert!(!m.matches(&view("/", Some("v=1"), &h)));
        h.insert("x-canary", "".parse().unwrap());
        assert!(m.matches(&view("/", Some("a=b&v=12"), &h)));
        assert!(!m.matches(&view("/", Some("v=x"), &h)));
        assert!(!m.matches(&view("/", None, &h)));
        h.insert("x-block", "yes".parse().unwrap());
        assert!(!m.matches(&view("/", Some("v=1"), &h)));
    }

    #[test]
    fn source_conditions() {
        let mut labels = std::collections::HashMap::new();
        labels.insert("app".to_string(), "web".to_string());
        let mut want = std::collections::HashMap::new();
        assert!(applies_to_source(&labels, "demo", &want, ""));
        want.insert("app".to_string(), "web".to_string());
        assert!(applies_to_source(&labels, "demo", &want, "demo"));
        assert!(!applies_to_source(&labels, "other", &want, "demo"));
        want.insert("version".to_string(), "v1".to_string());
        assert!(!applies_to_source(&labels, "demo", &want, ""));
    }
}
