//! Compact JWS tokens: parsing (before any key is looked at) and the checks of their claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::error::AuthnError;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// A JWS signature algorithm this crate verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// The algorithm named by a JOSE `alg` value; `None` for `none`, HMAC and the rest.
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            // RFC 9864 names Ed25519 explicitly; the key type (OKP/Ed25519) is checked anyway.
            "EdDSA" | "Ed25519" => Alg::EdDSA,
            _ => return None,
        })
    }
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub struct Token<'a> {
    /// `header.payload` as sent: what the signature covers.
    pub signing_input: &'a str,
    /// The header's `alg`.
    pub alg: Alg,
    /// The header's `kid`.
    pub kid: Option<String>,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// The decoded payload.
    pub claims: Map<String, Value>,
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, AuthnError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthnError::Malformed(what))
}

/// Splits and decodes a compact JWS; checks the header (supported `alg`, no `crit`).
pub fn parse(token: &str) -> Result<Token<'_>, AuthnError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthnError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed("not three parts"));
    };
    let header_json = b64(header, "header is not base64url")?;
    let header_map: Map<String, Value> =
        serde_json::from_slice(&header_json).map_err(|_| AuthnError::Malformed("bad header"))?;
    let alg = match header_map.get("alg") {
        Some(Value::String(name)) => Alg::from_name(name).ok_or(AuthnError::UnsupportedAlg)?,
        _ => return Err(AuthnError::Malformed("header without alg")),
    };
    // Extensions that must be understood: none are, so such a token cannot be accepted.
    if header_map.contains_key("crit") {
        return Err(AuthnError::Malformed("unsupported crit header"));
    }
    let kid = match header_map.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthnError::Malformed("kid is not a string")),
    };
    let payload_json = b64(payload, "payload is not base64url")?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload_json)
        .map_err(|_| AuthnError::Malformed("payload is not a JSON object"))?;
    let signature = b64(signature, "signature is not base64url")?;
    if signature.is_empty() {
        return Err(AuthnError::Malformed("empty signature"));
    }
    Ok(Token {
        signing_input: &token[..header.len() + 1 + payload.len()],
        alg,
        kid,
        signature,
        claims,
    })
}

impl Token<'_> {
    /// The `iss` claim.
    pub fn issuer(&self) -> Result<&str, AuthnError> {
        match self.claims.get("iss") {
            Some(Value::String(iss)) => Ok(iss),
            Some(_) => Err(AuthnError::Malformed("iss is not a string")),
            None => Err(AuthnError::UnknownIssuer),
        }
    }

    /// Checks `exp` and `nbf` against `now` (Unix seconds), allowing [`CLOCK_SKEW_SECS`].
    /// A token without `exp` does not expire.
    pub fn check_time(&self, now: i64) -> Result<(), AuthnError> {
        let now = now as f64;
        let skew = CLOCK_SKEW_SECS as f64;
        if let Some(exp) = self.numeric("exp")? {
            if now >= exp + skew {
                return Err(AuthnError::Expired);
            }
        }
        if let Some(nbf) = self.numeric("nbf")? {
            if now < nbf - skew {
                return Err(AuthnError::NotYetValid);
            }
        }
        Ok(())
    }

    fn numeric(&self, claim: &'static str) -> Result<Option<f64>, AuthnError> {
        match self.claims.get(claim) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .map(Some)
                .ok_or(AuthnError::Malformed("time claim out of range")),
            Some(_) => Err(AuthnError::Malformed("time claim is not a number")),
        }
    }

    /// The `aud` claim: a string or a list of strings (absent: none).
    pub fn audiences(&self) -> Result<Vec<String>, AuthnError> {
        match self.claims.get("aud") {
            None => Ok(Vec::new()),
            Some(Value::String(aud)) => Ok(vec![aud.clone()]),
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| match a {
                    Value::String(a) => Ok(a.clone()),
                    _ => Err(AuthnError::Malformed("aud is not a list of strings")),
                })
                .collect(),
            Some(_) => Err(AuthnError::Malformed("aud is not a string")),
        }
    }

    /// A string claim, when present and a string.
    pub fn string_claim(&self, claim: &str) -> Option<&str> {
        self.claims.get(claim).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", enc(header), enc(payload))
    }

    #[test]
    fn parses_and_checks_header() {
        let t = token(r#"{"alg":"ES256","kid":"k1"}"#, r#"{"iss":"i","sub":"s"}"#);
        let p = parse(&t).expect("valid token");
        assert_eq!(p.alg, Alg::ES256);
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.issuer(), Ok("i"));
        assert_eq!(p.signature, b"sig");
        assert_eq!(p.signing_input, &t[..t.rfind('.').unwrap_or(0)]);

        for alg in ["none", "HS256", "HS512", "ES512", "RSA-OAEP", ""] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#), "{}");
            assert_eq!(parse(&t).err(), Some(AuthnError::UnsupportedAlg), "{alg}");
        }
        let bad = [
            token(r#"{"kid":"x"}"#, "{}"),
            token(r#"{"alg":5}"#, "{}"),
            token(r#"{"alg":"RS256","crit":["b64"]}"#, "{}"),
            token(r#"{"alg":"RS256","kid":1}"#, "{}"),
            token(r#"{"alg":"RS256"}"#, "[1]"),
            token(r#"{"alg":"RS256"}"#, "not json"),
            token(r#"["alg"]"#, "{}"),
            format!("{}.{}", enc(r#"{"alg":"RS256"}"#), enc("{}")),
            format!("{}.{}.", enc(r#"{"alg":"RS256"}"#), enc("{}")),
            format!("{}.{}.c2ln.x", enc(r#"{"alg":"RS256"}"#), enc("{}")),
            format!("{}.{}.c2ln", enc(r#"{"alg":"RS256"}"#), "e30="),
            format!("{}.{}.c2l+", enc(r#"{"alg":"RS256"}"#), enc("{}")),
            // Non-canonical trailing bits decode to the same bytes elsewhere: refused.
            format!("{}.{}.c2l", enc(r#"{"alg":"RS256"}"#), enc("{}")),
        ];
        for t in bad {
            assert!(
                matches!(parse(&t), Err(AuthnError::Malformed(_))),
                "{t}: {:?}",
                parse(&t)
            );
        }
        let huge = format!(
            "{}.{}.c2ln",
            enc(r#"{"alg":"RS256"}"#),
            "A".repeat(MAX_TOKEN_LEN)
        );
        assert_eq!(parse(&huge).err(), Some(AuthnError::TooLarge));
    }

    #[test]
    fn time_claims_with_skew() {
        let at = |payload: &str, now: i64| {
            let t = token(r#"{"alg":"RS256"}"#, payload);
            parse(&t).and_then(|p| p.check_time(now))
        };
        assert_eq!(at("{}", 1_000), Ok(()));
        assert_eq!(at(r#"{"exp":1000}"#, 1_059), Ok(()));
        assert_eq!(at(r#"{"exp":1000}"#, 1_060), Err(AuthnError::Expired));
        assert_eq!(at(r#"{"exp":1000.5}"#, 1_060), Ok(()));
        assert_eq!(at(r#"{"nbf":1000}"#, 940), Ok(()));
        assert_eq!(at(r#"{"nbf":1000}"#, 939), Err(AuthnError::NotYetValid));
        assert!(matches!(
            at(r#"{"exp":"1000"}"#, 0),
            Err(AuthnError::Malformed(_))
        ));
        assert!(matches!(
            at(r#"{"nbf":null}"#, 0),
            Err(AuthnError::Malformed(_))
        ));
    }

    #[test]
    fn audiences_and_issuer() {
        let p = |payload: &str| {
            let t = token(r#"{"alg":"RS256"}"#, payload);
            let p = parse(&t).expect("valid");
            (p.audiences(), p.issuer().map(str::to_owned))
        };
        assert_eq!(p(r#"{"aud":"a"}"#).0, Ok(vec!["a".to_owned()]));
        assert_eq!(
            p(r#"{"aud":["a","b"]}"#).0,
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(p("{}").0, Ok(vec![]));
        assert!(p(r#"{"aud":["a",1]}"#).0.is_err());
        assert!(p(r#"{"aud":{}}"#).0.is_err());
        assert_eq!(p("{}").1, Err(AuthnError::UnknownIssuer));
        assert!(matches!(p(r#"{"iss":3}"#).1, Err(AuthnError::Malformed(_))));
    }
}
