//! Errors: configuration that cannot be compiled, and tokens that do not verify.

use http::HeaderValue;

/// A `RequestAuthentication` that cannot be compiled (the proxy refuses the configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// A rule of a policy is wrong: bad inline JWKS, bad URI, bad header name, ...
    #[error("RequestAuthentication {policy}, issuer {issuer:?}: {reason}")]
    Rule {
        /// `namespace/name` of the policy.
        policy: String,
        /// The rule's issuer.
        issuer: String,
        /// What is wrong.
        reason: String,
    },
    /// Remote keys need a Tokio runtime to fetch them in the background.
    #[error("fetching JWKS needs a Tokio runtime: create the JwksStore inside one")]
    NoRuntime,
    /// The extra CA certificates given to the [`super::JwksStore`] are not usable.
    #[error("JWKS fetch CA certificates: {0}")]
    Roots(String),
}

/// Why a request carrying a token is refused (the proxy answers 401).
///
/// The reasons are short and never contain the token or its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Longer than the bound on token size.
    #[error("token too large")]
    TooLarge,
    /// More tokens in the request than the bound.
    #[error("too many tokens in the request")]
    TooManyTokens,
    /// `alg` is `none`, HMAC or otherwise not supported.
    #[error("token algorithm not supported")]
    UnsupportedAlg,
    /// No rule accepts tokens of this `iss` at the place the token was found.
    #[error("token issuer not accepted")]
    UnknownIssuer,
    /// `exp` has passed (beyond the clock skew).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    #[error("token not yet valid")]
    NotYetValid,
    /// None of the token's audiences is accepted.
    #[error("token audience not accepted")]
    AudienceNotAllowed,
    /// No key of the issuer has the token's `kid`.
    #[error("no key matches the token's kid")]
    UnknownKey,
    /// Keys with the token's `kid` exist but none is of the token's algorithm.
    #[error("token algorithm does not match its key")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("token signature invalid")]
    BadSignature,
    /// The issuer's keys could not be fetched (and none were fetched before).
    #[error("issuer keys unavailable")]
    KeysUnavailable,
}

impl AuthnError {
    /// The `www-authenticate` value of the 401 answer, e.g.
    /// `Bearer realm="http://host/path", error="invalid_token"`.
    ///
    /// `url` should not include the query (it may carry the token); see [`super::realm_url`].
    pub fn www_authenticate(&self, url: &str) -> HeaderValue {
        let mut value = String::with_capacity(url.len() + 48);
        value.push_str("Bearer realm=\"");
        for b in url.bytes() {
            match b {
                b'"' | b'\\' => {
                    value.push('\\');
                    value.push(char::from(b));
                }
                0x20..=0x7e => value.push(char::from(b)),
                _ => value.push_str(&format!("%{b:02X}")),
            }
        }
        value.push_str("\", error=\"invalid_token\"");
        HeaderValue::from_str(&value)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn www_authenticate_escapes() {
        let v = AuthnError::Expired.www_authenticate("http://h/a\"b\\c\n");
        assert_eq!(
            v.to_str().ok(),
            Some(r#"Bearer realm="http://h/a\"b\\c%0A", error="invalid_token""#)
        );
        let v = AuthnError::BadSignature.www_authenticate("https://example.com/x");
        assert_eq!(
            v.to_str().ok(),
            Some(r#"Bearer realm="https://example.com/x", error="invalid_token""#)
        );
    }
}
