//! The value matchers an authorization rule is made of, each parsed once from Istio's string
//! syntax and then applied without allocating: wildcard strings, hosts, paths and path
//! templates, CIDRs, JWT principals and claims.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

/// Istio's string wildcards: `*` alone, `prefix*`, `*suffix`, otherwise exact. What `*` alone
/// accepts depends on where it is used: a value that is present and non-empty (Istio compiles
/// it to the regex `.+`), or, for headers, methods and hosts, a header that is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrMatch {
    /// `*`.
    Any,
    /// `prefix*`.
    Prefix(Box<str>),
    /// `*suffix`.
    Suffix(Box<str>),
    /// No wildcard.
    Exact(Box<str>),
}

impl StrMatch {
    /// Parses Istio's syntax (a leading `*` wins over a trailing one, as in Istio).
    pub(crate) fn parse(v: &str) -> Self {
        if v == "*" {
            StrMatch::Any
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.into())
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.into())
        } else {
            StrMatch::Exact(v.into())
        }
    }

    /// Parses with the pattern lower-cased, for [`StrMatch::matches_ignore_case`].
    pub(crate) fn parse_lowercase(v: &str) -> Self {
        Self::parse(&v.to_ascii_lowercase())
    }

    /// The exact value, when the pattern has no wildcard.
    pub(crate) fn exact(&self) -> Option<&str> {
        match self {
            StrMatch::Exact(e) => Some(e),
            _ => None,
        }
    }

    /// String-matcher semantics: `*` needs a non-empty value.
    pub(crate) fn matches(&self, v: &str) -> bool {
        self.matches_bytes(v.as_bytes())
    }

    /// [`StrMatch::matches`] over bytes (header values need not be UTF-8).
    pub(crate) fn matches_bytes(&self, v: &[u8]) -> bool {
        match self {
            StrMatch::Any => !v.is_empty(),
            StrMatch::Prefix(p) => v.starts_with(p.as_bytes()),
            StrMatch::Suffix(s) => v.ends_with(s.as_bytes()),
            StrMatch::Exact(e) => v == e.as_bytes(),
        }
    }

    /// Header-matcher semantics: `*` means "present", even with an empty value.
    pub(crate) fn matches_present(&self, v: &[u8]) -> bool {
        matches!(self, StrMatch::Any) || self.matches_bytes(v)
    }

    /// ASCII case-insensitive, header semantics; the pattern must have been parsed with
    /// [`StrMatch::parse_lowercase`].
    pub(crate) fn matches_ignore_case(&self, v: &str) -> bool {
        let v = v.as_bytes();
        match self {
            StrMatch::Any => true,
            StrMatch::Prefix(p) => {
                v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Suffix(s) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StrMatch::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
        }
    }
}

/// A host pattern matches the `Host`/`:authority` as sent or with its port removed.
pub(crate) fn host_matches(m: &StrMatch, host: &str, without_port: Option<&str>) -> bool {
    m.matches_ignore_case(host) || without_port.is_some_and(|h| m.matches_ignore_case(h))
}

/// The host without its `:port`, when it has one (`[::1]:80` → `[::1]`, `a:80` → `a`).
pub(crate) fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = host.rsplit_once(':')?;
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let bracketed_v6 = name.starts_with('[') && name.ends_with(']');
    (digits && (bracketed_v6 || !name.contains(':'))).then_some(name)
}

/// A parsed `ipBlocks`/`source.ip` value: an address (a /32 or /128) or a CIDR.
pub(crate) fn parse_cidr(v: &str) -> Result<IpNet, String> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    v.parse::<IpNet>()
        .map_err(|_| format!("{v:?} is neither an IP address nor a CIDR"))
}

/// Whether `ip` is inside `net` (an IPv4-mapped IPv6 peer counts as its IPv4 address).
pub(crate) fn cidr_contains(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip.to_canonical())
}

/// A path pattern: Istio's wildcards, or an Envoy URI template with `{*}`/`{**}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Exact, `prefix*`, `*suffix`, or `*`.
    Str(StrMatch),
    /// A template.
    Template(Template),
}

impl PathMatch {
    /// Parses a path as Istio does: a template when it contains `{*}` or `{**}`.
    pub(crate) fn parse(v: &str) -> Result<Self, String> {
        if v.contains("{*}") || v.contains("{**}") {
            Template::parse(v).map(PathMatch::Template)
        } else {
            Ok(PathMatch::Str(StrMatch::parse(v)))
        }
    }

    /// Whether the (normalised) request path matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(s) => s.matches(path),
            PathMatch::Template(t) => t.matches(path),
        }
    }

    /// The first path segment every matching path has, when the pattern fixes it
    /// (`/api/v1` → `api`, `/api/*` → `api`, `/api*` → none).
    pub(crate) fn first_segment(&self) -> Option<&str> {
        let lit = match self {
            PathMatch::Str(StrMatch::Exact(e)) => return first_segment(e),
            PathMatch::Str(StrMatch::Prefix(p)) => &**p,
            PathMatch::Template(t) => match t.tokens.first() {
                Some(Tok::Lit(l)) => &**l,
                _ => return None,
            },
            PathMatch::Str(_) => return None,
        };
        // A literal prefix fixes the first segment only when that segment is closed by '/'.
        let rest = lit.strip_prefix('/')?;
        rest.split_once('/').map(|(seg, _)| seg)
    }
}

/// The first segment of a path: `/a/b` → `a`, `/a` → `a`, `/` → `` (paths start with '/').
pub(crate) fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    Some(rest.split_once('/').map_or(rest, |(seg, _)| seg))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// Literal text, separators included.
    Lit(Box<str>),
    /// `{*}`: one non-empty segment.
    Seg,
    /// `{**}`: anything, separators included, possibly empty; always the last operator.
    Rest,
}

/// An Envoy URI template as Istio allows it in `paths`: segments that are literals, `{*}` or
/// `{**}` (the last operator), e.g. `/foo/{*}/bar/{**}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    tokens: Box<[Tok]>,
}

/// Characters a glob may match: RFC 3986 pchar without `*` and `=` (Envoy's template glob).
fn is_glob_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'+'
                | b','
                | b';'
                | b':'
                | b'@'
        )
}

impl Template {
    /// Parses and validates a template (Istio's rules: `*`, `{`, `}` only inside a whole-segment
    /// `{*}`/`{**}`, and nothing but literals after `{**}`).
    fn parse(v: &str) -> Result<Self, String> {
        let body = v
            .strip_prefix('/')
            .ok_or_else(|| format!("path template {v:?} must start with '/'"))?;
        let mut tokens: Vec<Tok> = Vec::new();
        let mut lit = String::from("/");
        let mut seen_rest = false;
        let segments: Vec<&str> = body.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            let op = match *seg {
                "{*}" => Some(Tok::Seg),
                "{**}" => Some(Tok::Rest),
                s if s.contains(['*', '{', '}']) => {
                    return Err(format!(
                        "path template {v:?}: segment {s:?} mixes an operator with other text"
                    ))
                }
                s => {
                    lit.push_str(s);
                    None
                }
            };
            if let Some(op) = op {
                if seen_rest {
                    return Err(format!(
                        "path template {v:?}: {{**}} must be the last operator"
                    ));
                }
                seen_rest = op == Tok::Rest;
                if !lit.is_empty() {
                    tokens.push(Tok::Lit(std::mem::take(&mut lit).into()));
                }
                tokens.push(op);
            }
            if i + 1 < segments.len() {
                lit.push('/');
            }
        }
        if !lit.is_empty() {
            tokens.push(Tok::Lit(lit.into()));
        }
        Ok(Template {
            tokens: tokens.into(),
        })
    }

    /// Whether the whole path matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let p = path.as_bytes();
        let mut pos = 0;
        let mut toks = self.tokens.iter();
        while let Some(t) = toks.next() {
            match t {
                Tok::Lit(l) => {
                    if !p[pos..].starts_with(l.as_bytes()) {
                        return false;
                    }
                    pos += l.len();
                }
                Tok::Seg => {
                    let n = p[pos..].iter().take_while(|&&b| is_glob_char(b)).count();
                    if n == 0 {
                        return false;
                    }
                    pos += n;
                }
                Tok::Rest => {
                    // Only a literal may follow (the parser guarantees it).
                    let tail = match toks.next() {
                        Some(Tok::Lit(l)) => l.as_bytes(),
                        _ => b"",
                    };
                    let rest = &p[pos..];
                    return rest.len() >= tail.len()
                        && rest.ends_with(tail)
                        && rest[..rest.len() - tail.len()]
                            .iter()
                            .all(|&b| b == b'/' || is_glob_char(b));
                }
            }
        }
        pos == p.len()
    }
}

/// A JWT principal pattern, `<iss>/<sub>`, matched against the two claims separately, as
/// Istio does: the pattern is split at its last `/`, and a wildcard applies to its own side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestPrincipal {
    iss: StrMatch,
    sub: StrMatch,
}

impl RequestPrincipal {
    /// Parses `iss/sub`, `*`, `*/sub`, `iss/*`, `*suffix`, `prefix*`.
    pub(crate) fn parse(v: &str) -> Self {
        let split = v.rsplit_once('/');
        let (iss, sub) = split.unwrap_or((v, ""));
        let (iss, sub) = if v == "*" {
            (StrMatch::Any, StrMatch::Any)
        } else if let Some(stripped) = v.strip_prefix('*') {
            match split {
                Some(_) if iss == "*" => (StrMatch::Any, StrMatch::Exact(sub.into())),
                Some(_) => (
                    StrMatch::Suffix(iss[1..].into()),
                    StrMatch::Exact(sub.into()),
                ),
                None => (StrMatch::Any, StrMatch::Suffix(stripped.into())),
            }
        } else if let Some(stripped) = v.strip_suffix('*') {
            match split {
                Some(_) if sub == "*" => (StrMatch::Exact(iss.into()), StrMatch::Any),
                Some(_) => (
                    StrMatch::Exact(iss.into()),
                    StrMatch::Prefix(sub[..sub.len() - 1].into()),
                ),
                None => (StrMatch::Prefix(stripped.into()), StrMatch::Any),
            }
        } else {
            (StrMatch::Exact(iss.into()), StrMatch::Exact(sub.into()))
        };
        RequestPrincipal { iss, sub }
    }

    /// The exact `(iss, sub)`, when neither side has a wildcard.
    pub(crate) fn exact(&self) -> Option<(&str, &str)> {
        Some((self.iss.exact()?, self.sub.exact()?))
    }

    /// Whether a token's `(iss, sub)` matches.
    pub(crate) fn matches(&self, iss_sub: Option<(&str, &str)>) -> bool {
        iss_sub.is_some_and(|(i, s)| self.iss.matches(i) && self.sub.matches(s))
    }
}

/// Whether a JWT claim value matches: a string, any string of a list, or a boolean or number
/// compared as its JSON text (`true`, `42`, `1.5`); objects and null never match.
pub(crate) fn claim_matches(m: &StrMatch, v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => m.matches(s),
        Value::Array(items) => items
            .iter()
            .any(|i| !matches!(i, Value::Array(_)) && claim_matches(m, i)),
        Value::Bool(b) => m.matches(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let mut buf = StackStr::default();
            write!(buf, "{n}").is_ok() && m.matches(buf.as_str())
        }
        Value::Null | Value::Object(_) => false,
    }
}

/// The claim at `path` (`[a][b]` → `claims["a"]["b"]`).
pub(crate) fn claim_at<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &[Box<str>],
) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(&**first)?;
    for k in rest {
        v = v.as_object()?.get(&**k)?;
    }
    Some(v)
}

/// A small formatting buffer on the stack, so numbers are compared without allocating.
struct StackStr {
    buf: [u8; 40],
    len: usize,
}

impl Default for StackStr {
    fn default() -> Self {
        StackStr {
            buf: [0; 40],
            len: 0,
        }
    }
}

impl StackStr {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcards() {
        assert!(StrMatch::parse("*").matches("x"));
        assert!(!StrMatch::parse("*").matches(""));
        assert!(StrMatch::parse("*").matches_present(b""));
        assert!(StrMatch::parse("ab*").matches("abc"));
        assert!(StrMatch::parse("ab*").matches("ab"));
        assert!(!StrMatch::parse("ab*").matches("a"));
        assert!(StrMatch::parse("*bc").matches("abc"));
        assert!(!StrMatch::parse("*bc").matches("abd"));
        assert!(StrMatch::parse("a*c").matches("a*c"));
        assert!(!StrMatch::parse("a*c").matches("abc"));
        assert_eq!(StrMatch::parse("*a*"), StrMatch::Suffix("a*".into()));
    }

    #[test]
    fn hosts() {
        let m = StrMatch::parse_lowercase("*.Example.com");
        assert!(host_matches(&m, "API.example.COM", None));
        let h = "api.example.com:8080";
        assert!(host_matches(&m, h, strip_port(h)));
        let exact = StrMatch::parse_lowercase("example.com");
        assert!(host_matches(
            &exact,
            "EXAMPLE.com:80",
            strip_port("EXAMPLE.com:80")
        ));
        assert!(!host_matches(&exact, "example.com.evil", None));
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("::1"), None);
        assert_eq!(strip_port("a:"), None);
        assert_eq!(strip_port("a"), None);
    }

    #[test]
    fn cidrs() {
        let n = parse_cidr("10.0.0.0/8").unwrap();
        assert!(cidr_contains(&n, "10.1.2.3".parse().unwrap()));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(cidr_contains(&n, mapped));
        assert!(parse_cidr("10.0.0.1").is_ok());
        assert!(parse_cidr("2001:db8::/32").is_ok());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("ten").is_err());
    }

    fn template(v: &str) -> Template {
        Template::parse(v).unwrap()
    }

    #[test]
    fn templates_from_istio_reference() {
        let t = template("/foo/{*}");
        assert!(t.matches("/foo/bar"));
        assert!(!t.matches("/foo/bar/baz"));
        assert!(!t.matches("/foo/"));
        let t = template("/foo/{**}/");
        assert!(t.matches("/foo/bar/"));
        assert!(t.matches("/foo//"));
        assert!(!t.matches("/foo/bar"));
        let t = template("/foo/{*}/bar/{**}");
        assert!(t.matches("/foo/buzz/bar/"));
        assert!(t.matches("/foo/buzz/bar/baz"));
        assert!(!t.matches("/foo/buzz/bar"));
        let t = template("/{**}");
        assert!(t.matches("/"));
        assert!(t.matches("/a/b/c"));
        // Envoy's glob excludes '=' and '*'.
        assert!(!template("/a/{*}").matches("/a/b=c"));
        for bad in [
            "/*/baz/{*}",
            "/**/baz/{*}",
            "/{**}/foo/{*}",
            "/a{*}",
            "foo/{*}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_segments() {
        let seg = |v: &str| {
            PathMatch::parse(v)
                .unwrap()
                .first_segment()
                .map(str::to_owned)
        };
        assert_eq!(seg("/api/v1").as_deref(), Some("api"));
        assert_eq!(seg("/api").as_deref(), Some("api"));
        assert_eq!(seg("/api/*").as_deref(), Some("api"));
        assert_eq!(seg("/api*"), None);
        assert_eq!(seg("/api/{*}").as_deref(), Some("api"));
        assert_eq!(seg("/{*}/x"), None);
        assert_eq!(seg("*/x"), None);
        assert_eq!(first_segment("/a/b"), Some("a"));
        assert_eq!(first_segment("/"), Some(""));
    }

    #[test]
    fn request_principals_split_like_istio() {
        let ok =
            |p: &str, iss: &str, sub: &str| RequestPrincipal::parse(p).matches(Some((iss, sub)));
        assert!(ok("https://a.io/alice", "https://a.io", "alice"));
        assert!(!ok("https://a.io/alice", "https://a.io/x", "alice"));
        assert!(ok("*", "i", "s"));
        assert!(!ok("*", "i", ""));
        assert!(ok("https://a.io/*", "https://a.io", "bob"));
        assert!(!ok("https://a.io/*", "https://a.io/x", "bob"));
        assert!(ok("*/alice", "https://b.io", "alice"));
        assert!(ok("*.io/alice", "https://b.io", "alice"));
        // As in Istio, the split is at the last '/', even inside a wildcard pattern.
        assert!(ok("https://a*", "https:/", "abc"));
        assert!(!ok("https://a*", "https://a.io", "x"));
        assert!(ok("iss*", "issuer", "anyone"));
        assert!(ok("*alice", "x", "malice"));
        assert!(!RequestPrincipal::parse("*").matches(None));
        assert_eq!(RequestPrincipal::parse("i/s").exact(), Some(("i", "s")));
    }

    #[test]
    fn claims() {
        let m = StrMatch::parse("admin");
        assert!(claim_matches(&m, &json!("admin")));
        assert!(claim_matches(&m, &json!(["user", "admin"])));
        assert!(!claim_matches(&m, &json!({"admin": 1})));
        assert!(claim_matches(&StrMatch::parse("true"), &json!(true)));
        assert!(claim_matches(&StrMatch::parse("42"), &json!(42)));
        assert!(claim_matches(&StrMatch::parse("1.5"), &json!(1.5)));
        assert!(!claim_matches(&StrMatch::parse("*"), &json!(null)));
        let claims = json!({"a": {"b": ["x"]}});
        let claims = claims.as_object().cloned().unwrap_or_default();
        let path: Vec<Box<str>> = vec!["a".into(), "b".into()];
        assert!(claim_at(&claims, &path).is_some_and(|v| claim_matches(&StrMatch::parse("x"), v)));
        assert!(claim_at(&claims, &path[1..]).is_none());
    }
}
