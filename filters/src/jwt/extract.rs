//! Where tokens travel in a request (headers with a prefix, query parameters, cookies), how
//! they are found, and how they are taken out before the request goes to the app.

use std::borrow::Cow;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use percent_encoding::percent_decode_str;

use super::error::AuthnError;

/// Most tokens looked at in one request.
pub const MAX_TOKENS: usize = 8;

/// A place a token may be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header whose value is `<prefix><token>` (prefix compared case-insensitively).
    Header {
        /// The header.
        name: HeaderName,
        /// What precedes the token, e.g. `Bearer `.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl Location {
    /// Istio's default: `Authorization: Bearer <token>`.
    pub fn bearer() -> Location {
        Location::Header {
            name: header::AUTHORIZATION,
            prefix: "Bearer ".to_owned(),
        }
    }
}

/// A token found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Index of its location in the list searched.
    pub location: usize,
    /// The token text.
    pub token: String,
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn header_token<'a>(value: &'a HeaderValue, prefix: &str) -> Option<&'a str> {
    let token = strip_prefix_ignore_case(value.to_str().ok()?, prefix)?.trim();
    (!token.is_empty()).then_some(token)
}

fn decode(s: &str) -> Option<Cow<'_, str>> {
    percent_decode_str(s).decode_utf8().ok()
}

/// The decoded `(name, value)` pairs of a query string.
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        Some((decode(name)?, decode(value)?))
    })
}

/// The `(name, value)` pairs of a `cookie` header value.
fn cookie_pairs(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value.split(';').filter_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((name.trim(), value))
    })
}

/// Every token at every location, in location order; more than [`MAX_TOKENS`] is an error.
pub fn find(locations: &[Location], parts: &Parts) -> Result<Vec<Found>, AuthnError> {
    let mut found = Vec::new();
    let mut push = |location: usize, token: &str| {
        if found.len() == MAX_TOKENS {
            return Err(AuthnError::TooManyTokens);
        }
        found.push(Found {
            location,
            token: token.to_owned(),
        });
        Ok(())
    };
    for (i, location) in locations.iter().enumerate() {
        match location {
            Location::Header { name, prefix } => {
                for value in parts.headers.get_all(name) {
                    if let Some(token) = header_token(value, prefix) {
                        push(i, token)?;
                    }
                }
            }
            Location::Param(param) => {
                let Some(query) = parts.uri.query() else {
                    continue;
                };
                for (name, value) in query_pairs(query) {
                    if name == param.as_str() && !value.is_empty() {
                        push(i, &value)?;
                    }
                }
            }
            Location::Cookie(cookie) => {
                for value in parts.headers.get_all(header::COOKIE) {
                    let Ok(value) = value.to_str() else { continue };
                    for (name, value) in cookie_pairs(value) {
                        if name == cookie && !value.is_empty() {
                            push(i, value)?;
                        }
                    }
                }
            }
        }
    }
    Ok(found)
}

/// Takes `token` out of the request at `location` (the other values stay).
pub fn remove(parts: &mut Parts, location: &Location, token: &str) {
    match location {
        Location::Header { name, prefix } => {
            let keep: Vec<HeaderValue> = parts
                .headers
                .get_all(name)
                .iter()
                .filter(|v| header_token(v, prefix) != Some(token))
                .cloned()
                .collect();
            parts.headers.remove(name);
            for value in keep {
                parts.headers.append(name.clone(), value);
            }
        }
        Location::Param(param) => {
            let Some(query) = parts.uri.query() else {
                return;
            };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|raw| {
                    let (name, value) = raw.split_once('=').unwrap_or((raw, ""));
                    let is_name = decode(name).is_some_and(|n| n == param.as_str());
                    !(is_name && decode(value).is_some_and(|v| v == token))
                })
                .collect();
            let path = parts.uri.path();
            let new = if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            };
            let mut uri = parts.uri.clone().into_parts();
            let rewritten = PathAndQuery::try_from(new).ok().and_then(|pq| {
                uri.path_and_query = Some(pq);
                http::Uri::from_parts(uri).ok()
            });
            match rewritten {
                Some(new) => parts.uri = new,
                None => tracing::warn!("could not remove the token from the query"),
            }
        }
        Location::Cookie(cookie) => {
            let mut rewritten = Vec::new();
            for value in parts.headers.get_all(header::COOKIE) {
                let Ok(text) = value.to_str() else {
                    rewritten.push(value.clone());
                    continue;
                };
                let kept: Vec<&str> = text
                    .split(';')
                    .map(str::trim)
                    .filter(|c| {
                        cookie_pairs(c)
                            .next()
                            .is_none_or(|(n, v)| !(n == cookie && v == token))
                    })
                    .filter(|c| !c.is_empty())
                    .collect();
                if !kept.is_empty() {
                    if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                        rewritten.push(v);
                    }
                }
            }
            parts.headers.remove(header::COOKIE);
            for value in rewritten {
                parts.headers.append(header::COOKIE, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn defaults() -> Vec<Location> {
        vec![Location::bearer(), Location::Param("access_token".into())]
    }

    #[test]
    fn finds_bearer_and_query_tokens() {
        let p = parts(
            "/a?x=1&access_token=q.q.q&y=2",
            &[
                ("authorization", "bearer h.h.h "),
                ("authorization", "Basic Zm9v"),
            ],
        );
        let found = find(&defaults(), &p).expect("found");
        let tokens: Vec<_> = found
            .iter()
            .map(|f| (f.location, f.token.as_str()))
            .collect();
        assert_eq!(tokens, [(0, "h.h.h"), (1, "q.q.q")]);

        let p = parts("/a?access_token=", &[("authorization", "Bearer ")]);
        assert_eq!(find(&defaults(), &p), Ok(vec![]));
        let p = parts("/a?access%5Ftoken=a%2Eb.c", &[]);
        assert_eq!(find(&defaults(), &p).expect("found")[0].token, "a.b.c");
    }

    #[test]
    fn removes_only_the_token() {
        let mut p = parts(
            "http://h/a?x=1&access_token=q.q.q&y=%zz",
            &[
                ("authorization", "Bearer h.h.h"),
                ("authorization", "Basic Zm9v"),
            ],
        );
        remove(&mut p, &Location::bearer(), "h.h.h");
        let auth: Vec<_> = p.headers.get_all("authorization").iter().collect();
        assert_eq!(auth, ["Basic Zm9v"]);
        remove(&mut p, &Location::Param("access_token".into()), "q.q.q");
        assert_eq!(p.uri.to_string(), "http://h/a?x=1&y=%zz");
        let mut p = parts("/a?access_token=q.q.q", &[]);
        remove(&mut p, &Location::Param("access_token".into()), "q.q.q");
        assert_eq!(p.uri.to_string(), "/a");
    }

    #[test]
    fn cookies_and_custom_headers() {
        let locations = vec![
            Location::Header {
                name: HeaderName::from_static("x-jwt"),
                prefix: String::new(),
            },
            Location::Cookie("session".into()),
        ];
        let mut p = parts(
            "/",
            &[
                ("x-jwt", "a.b.c"),
                ("cookie", "theme=dark; session=\"s.s.s\""),
                ("cookie", "session=t.t.t"),
            ],
        );
        let found = find(&locations, &p).expect("found");
        let tokens: Vec<_> = found.iter().map(|f| f.token.as_str()).collect();
        assert_eq!(tokens, ["a.b.c", "s.s.s", "t.t.t"]);
        remove(&mut p, &locations[1], "s.s.s");
        remove(&mut p, &locations[1], "t.t.t");
        remove(&mut p, &locations[0], "a.b.c");
        let cookies: Vec<_> = p.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["theme=dark"]);
        assert!(p.headers.get("x-jwt").is_none());
    }

    #[test]
    fn bounds_the_number_of_tokens() {
        let headers: Vec<_> = (0..=MAX_TOKENS)
            .map(|_| ("authorization", "Bearer x"))
            .collect();
        let p = parts("/", &headers);
        assert_eq!(find(&defaults(), &p), Err(AuthnError::TooManyTokens));
    }
}
