//! Path normalisation before policy matching.
//!
//! Authorization policies name paths such as `/admin`; a client must not reach `/admin` under
//! another spelling that the application would resolve to the same resource. Before RBAC looks
//! at a path, the proxy normalises it the way Envoy does for Istio (`normalize_path` plus
//! Istio's `MERGE_SLASHES` and `DECODE_AND_MERGE_SLASHES`), taking the safe reading wherever
//! there is a choice:
//!
//! - the query (`?…`) and fragment (`#…`) are cut off;
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!   escape is kept with upper-case hex (`%3a` → `%3A`);
//! - `%2F` and `%5C` (any case) are decoded and act as path separators, and a backslash is a
//!   separator too;
//! - repeated separators are merged (`//` → `/`);
//! - `.` and `..` segments are resolved as RFC 3986 says, never above the root (`/..` → `/`);
//!   a trailing `/` is kept (`/admin/` stays distinct from `/admin`);
//! - characters that may not appear raw in a path (space, `"`, `<`, non-ASCII bytes, …) are
//!   percent-encoded, so the result is always ASCII;
//! - an invalid escape (`%G1`, a lone `%`) and any control byte, raw or encoded (`%00`, `%0A`,
//!   DEL), are errors: the proxy answers 400.
//!
//! The result is a fixed point: normalising it again returns it unchanged (and borrowed).

use std::borrow::Cow;

/// Why a request path cannot be normalised (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits, at this byte offset.
    #[error("invalid percent-encoding at byte {0}")]
    InvalidPercentEncoding(usize),
    /// A control byte (NUL, CR, LF, DEL, …), raw or percent-encoded, at this byte offset.
    #[error("control character at byte {0}")]
    ControlCharacter(usize),
    /// The path does not start with `/` (and is not `*`).
    #[error("path is not absolute")]
    NotAbsolute,
}

/// Normalises a request's path-and-query for policy matching (see the module docs).
///
/// Returns the input, borrowed, when it is already normal (the common case: no allocation).
/// `*` (the target of `OPTIONS *`) is returned as is; an empty path is `/`.
pub fn normalize(raw_path_and_query: &str) -> Result<Cow<'_, str>, PathError> {
    let end = raw_path_and_query
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(raw_path_and_query.len());
    let path = &raw_path_and_query[..end];
    match path.as_bytes().first() {
        None => return Ok(Cow::Borrowed("/")),
        Some(b'/' | b'\\') => {}
        Some(b'*') if path.len() == 1 => return Ok(Cow::Borrowed(path)),
        Some(_) => return Err(PathError::NotAbsolute),
    }
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    rebuild(path.as_bytes()).map(Cow::Owned)
}

/// `A-Z a-z 0-9 - . _ ~`: decoded when percent-encoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What may stay raw in a normal path: unreserved, sub-delims, `:` and `@` (RFC 3986 pchar).
fn is_raw_ok(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `p` (starting with a byte that is `/` or `\`) is already what [`rebuild`] would
/// produce: only `/` separators, no empty segment but a trailing one, no `.`/`..` segment,
/// every escape upper-case and needed, nothing that has to be encoded.
fn is_normal(p: &[u8]) -> bool {
    if p[0] != b'/' {
        return false;
    }
    let mut seg_start = 1;
    let mut i = 1;
    while i <= p.len() {
        if i == p.len() || p[i] == b'/' {
            let seg = &p[seg_start..i];
            let bad = match seg {
                b"" => i != p.len(),
                b"." | b".." => true,
                _ => false,
            };
            if bad {
                return false;
            }
            seg_start = i + 1;
            i += 1;
            continue;
        }
        let b = p[i];
        if b == b'%' {
            let (Some(&h), Some(&l)) = (p.get(i + 1), p.get(i + 2)) else {
                return false;
            };
            let upper = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
            if !upper(h) || !upper(l) {
                return false;
            }
            let (Some(h), Some(l)) = (hex_val(h), hex_val(l)) else {
                return false;
            };
            let d = h << 4 | l;
            if is_unreserved(d) || d == b'/' || d == b'\\' || is_control(d) {
                return false;
            }
            i += 3;
        } else if is_raw_ok(b) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// The slow path: decode, split, resolve dot segments and re-encode into a new string.
fn rebuild(p: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(p.len());
    out.push('/');
    // Where the segment being written starts in `out` (just after its leading '/').
    let mut seg_start = out.len();
    let mut i = 0;
    // The first byte is a separator (checked by the caller).
    loop {
        let mut at_separator = false;
        let mut at_end = false;
        if i >= p.len() {
            at_end = true;
        } else {
            let b = p[i];
            match b {
                b'/' | b'\\' => {
                    at_separator = true;
                    i += 1;
                }
                b'%' => {
                    let h = p.get(i + 1).copied().and_then(hex_val);
                    let l = p.get(i + 2).copied().and_then(hex_val);
                    let (Some(h), Some(l)) = (h, l) else {
                        return Err(PathError::InvalidPercentEncoding(i));
                    };
                    let d = h << 4 | l;
                    if d == b'/' || d == b'\\' {
                        at_separator = true;
                    } else if is_control(d) {
                        return Err(PathError::ControlCharacter(i));
                    } else if is_unreserved(d) {
                        out.push(char::from(d));
                    } else {
                        push_escape(&mut out, d);
                    }
                    i += 3;
                }
                _ if is_control(b) => return Err(PathError::ControlCharacter(i)),
                _ if is_raw_ok(b) => {
                    out.push(char::from(b));
                    i += 1;
                }
                _ => {
                    push_escape(&mut out, b);
                    i += 1;
                }
            }
        }
        if !(at_separator || at_end) {
            continue;
        }
        // A segment ends here: `out[seg_start..]` holds it, decoded.
        match &out[seg_start..] {
            "" => {}
            "." => out.truncate(seg_start),
            ".." => {
                out.truncate(seg_start);
                if seg_start > 1 {
                    // Drop the previous segment and its trailing '/'.
                    let prev = out[..seg_start - 1].rfind('/').map_or(1, |k| k + 1);
                    out.truncate(prev);
                }
            }
            _ => {
                if at_separator {
                    out.push('/');
                }
            }
        }
        if at_end {
            return Ok(out);
        }
        seg_start = out.len();
    }
}

fn push_escape(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
    out.push(char::from(HEX_UPPER[usize::from(b & 0xf)]));
}

/// Path normalisation as a filter: the request goes on with its path normalised (so the app
/// gets the path that was authorized, and cannot resolve a spelling the policy did not see,
/// such as `/public/%2e%2e/admin`), or is answered 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct NormalizePath;

impl NormalizePath {
    /// The request's URI with its path normalised; `None` when it is already normal.
    fn normalised(uri: &http::Uri) -> Result<Option<http::Uri>, ()> {
        // An authority-form target (CONNECT) has no path to normalise.
        if uri.path_and_query().is_none() {
            return Ok(None);
        }
        let path = normalize(uri.path_and_query().map_or("/", |p| p.as_str())).map_err(|e| {
            tracing::debug!(error = %e, "request path cannot be normalised");
        })?;
        if path == uri.path() {
            return Ok(None);
        }
        let rewritten = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(rewritten.parse().map_err(|_| ())?);
        http::Uri::from_parts(parts).map(Some).map_err(|_| ())
    }
}

impl crate::filter::Filter for NormalizePath {
    async fn on_request(
        &self,
        req: &mut http::request::Parts,
        _cx: &mut crate::filter::Ctx<'_>,
    ) -> crate::filter::Flow {
        match Self::normalised(&req.uri) {
            Ok(Some(uri)) => req.uri = uri,
            Ok(None) => {}
            Err(()) => return crate::filter::Flow::Respond(crate::reply::LocalReply::BAD_PATH),
        }
        crate::filter::Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        match normalize(p) {
            Ok(s) => s.into_owned(),
            Err(e) => panic!("{p:?}: {e}"),
        }
    }

    fn borrowed(p: &str) -> bool {
        matches!(normalize(p), Ok(Cow::Borrowed(_)))
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for p in [
            "/",
            "/admin",
            "/admin/",
            "/api/v1/users/42",
            "/a:b@c!$&'()*+,;=",
            "/%3A%2B%25",
            "/~user/.profile/..x/x..",
            "/a.b/...",
        ] {
            assert!(borrowed(p), "{p}");
            assert_eq!(n(p), p);
        }
        assert!(borrowed("/admin?x=/../y"));
        assert_eq!(n("/admin?x=/../y"), "/admin");
    }

    #[test]
    fn query_and_fragment_are_cut() {
        assert_eq!(n("/a/b?c=d"), "/a/b");
        assert_eq!(n("/a/b#frag"), "/a/b");
        assert_eq!(n("/a/./b?x#y"), "/a/b");
        assert_eq!(n("?x"), "/");
        assert_eq!(n(""), "/");
    }

    #[test]
    fn bypass_attempts_on_admin() {
        for p in [
            "/admin",
            "/./admin",
            "//admin",
            "///admin",
            "/%2Fadmin",
            "/%2fadmin",
            "/%5Cadmin",
            "/%5cadmin",
            "\\admin",
            "/\\admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "/%2e/admin",
            "/foo/../admin",
            "/foo/%2e%2e/admin",
            "/foo%2F..%2Fadmin",
            "/a%2F..%2Fadmin",
            "/a%5C..%5Cadmin",
            "/foo/bar/../../admin",
            "/../admin",
            "/../../../admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "/%61%64%6d%69%6e",
            "/admin/.",
            "/admin/x/..",
        ] {
            let got = n(p);
            assert!(got == "/admin" || got == "/admin/", "{p:?} → {got:?}");
        }
        assert_eq!(n("/admin/."), "/admin/");
        assert_eq!(n("/admin/x/.."), "/admin/");
    }

    #[test]
    fn trailing_slash_is_kept() {
        assert_eq!(n("/admin/"), "/admin/");
        assert_eq!(n("/admin//"), "/admin/");
        assert_eq!(n("/admin/%2F"), "/admin/");
        assert_ne!(n("/admin/"), "/admin");
    }

    #[test]
    fn dot_segments_never_go_above_root() {
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/../.."), "/");
        assert_eq!(n("/a/../../b"), "/b");
        assert_eq!(n("/."), "/");
        assert_eq!(n("//"), "/");
        assert_eq!(n("/a/b/c/../../d"), "/a/d");
    }

    #[test]
    fn dots_inside_names_are_not_segments() {
        assert_eq!(n("/a/..b/c"), "/a/..b/c");
        assert_eq!(n("/a/b../c"), "/a/b../c");
        assert_eq!(n("/a/.../c"), "/a/.../c");
        assert_eq!(n("/a/%2e%2e%2e"), "/a/...");
    }

    #[test]
    fn escapes_are_canonical() {
        // Unreserved decoded, whatever the case of the hex.
        assert_eq!(n("/%7Euser/%5f%2D%2e"), "/~user/_-.");
        // Reserved kept, hex upper-cased.
        assert_eq!(n("/a%3ab%3Fc%23d%25e"), "/a%3Ab%3Fc%23d%25e");
        // No double decoding.
        assert_eq!(n("/%252e%252e/admin"), "/%252e%252e/admin");
        assert_eq!(n("/%252F"), "/%252F");
        // Non-ASCII and characters that are not allowed raw are encoded.
        assert_eq!(n("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(n("/a b\"<>`{}|^[]"), "/a%20b%22%3C%3E%60%7B%7D%7C%5E%5B%5D");
        // Overlong UTF-8 stays encoded, so never becomes '.' or '/'.
        assert_eq!(n("/%c0%ae%c0%ae/admin"), "/%C0%AE%C0%AE/admin");
    }

    #[test]
    fn invalid_inputs_are_errors() {
        assert_eq!(normalize("/a%"), Err(PathError::InvalidPercentEncoding(2)));
        assert_eq!(normalize("/a%2"), Err(PathError::InvalidPercentEncoding(2)));
        assert_eq!(
            normalize("/a%g0"),
            Err(PathError::InvalidPercentEncoding(2))
        );
        assert_eq!(
            normalize("/a%0g"),
            Err(PathError::InvalidPercentEncoding(2))
        );
        assert_eq!(normalize("/a%00"), Err(PathError::ControlCharacter(2)));
        assert_eq!(normalize("/a%0A"), Err(PathError::ControlCharacter(2)));
        assert_eq!(normalize("/a%7f"), Err(PathError::ControlCharacter(2)));
        assert_eq!(normalize("/a\0"), Err(PathError::ControlCharacter(2)));
        assert_eq!(normalize("/a\r\n"), Err(PathError::ControlCharacter(2)));
        assert_eq!(normalize("/a\x7f"), Err(PathError::ControlCharacter(2)));
        assert_eq!(normalize("admin"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("%2Fadmin"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("http://x/admin"), Err(PathError::NotAbsolute));
        // A bad escape in the query does not matter: the query is not matched.
        assert_eq!(n("/a?%zz"), "/a");
    }

    #[test]
    fn asterisk_form() {
        assert_eq!(n("*"), "*");
        assert_eq!(normalize("**"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn idempotent_and_clean_on_samples() {
        for p in [
            "/a/./b/../c//d/%2e/%2E%2e/e%2F%2Ff/",
            "\\\\a\\..\\b",
            "/%41%42%43/%7a%7A",
            "/x/%20/%2525/..%2f..",
            "/é/ü/../ß",
        ] {
            let once = n(p);
            assert!(borrowed(&once), "{p:?} → {once:?} is not a fixed point");
            for bad in ["//", "/./", "/../", "\\"] {
                assert!(!once.contains(bad), "{p:?} → {once:?} contains {bad:?}");
            }
            assert!(!once.ends_with("/.") && !once.ends_with("/.."));
        }
    }
}
