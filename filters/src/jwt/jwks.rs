//! JSON Web Key Sets: the public keys of an issuer, parsed once and used to verify signatures.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::error::AuthnError;
use super::token::Alg;

/// Most keys a JWKS may hold.
pub const MAX_KEYS: usize = 100;
/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_LEN: usize = 1024 * 1024;

/// The public part of a signing key.
#[derive(Clone, PartialEq, Eq)]
enum Material {
    /// Big-endian modulus and exponent without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed point `04 || x || y`.
    P256(Vec<u8>),
    /// Uncompressed point `04 || x || y`.
    P384(Vec<u8>),
    /// The 32-byte public key.
    Ed25519(Vec<u8>),
}

impl Material {
    fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (
                Material::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ) | (Material::P256(_), Alg::ES256)
                | (Material::P384(_), Alg::ES384)
                | (Material::Ed25519(_), Alg::EdDSA)
        )
    }

    fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        let rsa = |params: &'static RsaParameters, n: &[u8], e: &[u8]| {
            RsaPublicKeyComponents { n, e }
                .verify(params, message, sig)
                .is_ok()
        };
        match (self, alg) {
            (Material::Rsa { n, e }, Alg::RS256) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA256, n, e)
            }
            (Material::Rsa { n, e }, Alg::RS384) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA384, n, e)
            }
            (Material::Rsa { n, e }, Alg::RS512) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA512, n, e)
            }
            (Material::Rsa { n, e }, Alg::PS256) => rsa(&signature::RSA_PSS_2048_8192_SHA256, n, e),
            (Material::Rsa { n, e }, Alg::PS384) => rsa(&signature::RSA_PSS_2048_8192_SHA384, n, e),
            (Material::Rsa { n, e }, Alg::PS512) => rsa(&signature::RSA_PSS_2048_8192_SHA512, n, e),
            (Material::P256(point), Alg::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::P384(point), Alg::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Ed25519(key), Alg::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, key)
                    .verify(message, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// One usable signing key of a set.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    kid: Option<String>,
    alg: Option<Alg>,
    material: Material,
}

/// Why a signature was not accepted by a key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The token names a `kid` the set does not have (a refetch may find it).
    UnknownKid,
    /// Keys match the `kid` (or there is no `kid`) but none fits the token's `alg`.
    NoKeyForAlg,
    /// Some key fits; the signature verifies with none.
    BadSignature,
}

impl From<KeyError> for AuthnError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::UnknownKid => AuthnError::UnknownKey,
            KeyError::NoKeyForAlg => AuthnError::KeyMismatch,
            KeyError::BadSignature => AuthnError::BadSignature,
        }
    }
}

/// A parsed JWKS: only keys usable to verify signatures.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`).
    ///
    /// `strict` (inline keys): any key that cannot verify signatures (wrong `use`, unsupported
    /// type or curve, malformed) is an error. Otherwise (fetched keys) such keys are skipped,
    /// as issuers publish encryption keys next to signing keys; a set with no usable key but
    /// some unusable ones is an error.
    pub fn parse(json: &[u8], strict: bool) -> Result<KeySet, String> {
        if json.len() > MAX_JWKS_LEN {
            return Err(format!("JWKS larger than {MAX_JWKS_LEN} bytes"));
        }
        let doc: Map<String, Value> =
            serde_json::from_slice(json).map_err(|e| format!("JWKS is not a JSON object: {e}"))?;
        let Some(Value::Array(list)) = doc.get("keys") else {
            return Err("JWKS has no \"keys\" list".to_owned());
        };
        if list.len() > MAX_KEYS {
            return Err(format!(
                "JWKS has {} keys, at most {MAX_KEYS} are accepted",
                list.len()
            ));
        }
        let mut keys = Vec::with_capacity(list.len());
        let mut skipped = Vec::new();
        for (i, jwk) in list.iter().enumerate() {
            match parse_key(jwk) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("");
                    let why = format!("key {i} (kid {kid:?}): {reason}");
                    if strict {
                        return Err(why);
                    }
                    skipped.push(why);
                }
            }
        }
        if keys.is_empty() && !skipped.is_empty() {
            return Err(format!(
                "JWKS has no usable signing key: {}",
                skipped.join("; ")
            ));
        }
        for why in skipped {
            tracing::debug!(%why, "JWKS key skipped");
        }
        Ok(KeySet { keys })
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `sig` over `message` with the keys that match `kid` (a key without `kid`
    /// matches any) and fit `alg`.
    pub fn verify(
        &self,
        alg: Alg,
        kid: Option<&str>,
        message: &[u8],
        sig: &[u8],
    ) -> Result<(), KeyError> {
        let mut named = false;
        let mut fitting = false;
        for key in &self.keys {
            if let (Some(want), Some(have)) = (kid, key.kid.as_deref()) {
                if want != have {
                    continue;
                }
            }
            named = true;
            if key.alg.is_some_and(|a| a != alg) || !key.material.fits(alg) {
                continue;
            }
            fitting = true;
            if key.material.verify(alg, message, sig) {
                return Ok(());
            }
        }
        Err(match (named, fitting) {
            (false, _) if kid.is_some() => KeyError::UnknownKid,
            (_, false) => KeyError::NoKeyForAlg,
            _ => KeyError::BadSignature,
        })
    }
}

fn string<'a>(jwk: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match jwk.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{field} is not a string")),
    }
}

fn bytes(jwk: &Map<String, Value>, field: &str) -> Result<Vec<u8>, String> {
    let value = string(jwk, field)?.ok_or_else(|| format!("no {field}"))?;
    // Some issuers pad base64url; the padding carries nothing.
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| format!("{field} is not base64url"))
}

fn fixed(jwk: &Map<String, Value>, field: &str, len: usize) -> Result<Vec<u8>, String> {
    let b = bytes(jwk, field)?;
    if b.len() != len {
        return Err(format!("{field} is {} bytes, expected {len}", b.len()));
    }
    Ok(b)
}

fn without_leading_zeros(mut b: Vec<u8>) -> Vec<u8> {
    let zeros = b.iter().take_while(|&&x| x == 0).count();
    b.drain(..zeros);
    b
}

fn parse_key(jwk: &Value) -> Result<Key, String> {
    let Value::Object(jwk) = jwk else {
        return Err("not a JSON object".to_owned());
    };
    if let Some(usage) = string(jwk, "use")? {
        if usage != "sig" {
            return Err(format!("use is {usage:?}, not \"sig\""));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verify {
            return Err("key_ops does not allow \"verify\"".to_owned());
        }
    }
    let alg = match string(jwk, "alg")? {
        None => None,
        Some(name) => {
            Some(Alg::from_name(name).ok_or_else(|| format!("alg {name:?} is not supported"))?)
        }
    };
    let kid = string(jwk, "kid")?.map(str::to_owned);
    let kty = string(jwk, "kty")?.ok_or("no kty")?;
    let material = match kty {
        "RSA" => {
            let n = without_leading_zeros(bytes(jwk, "n")?);
            let e = without_leading_zeros(bytes(jwk, "e")?);
            let bits = n
                .first()
                .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits (2048 to 8192 accepted)"
                ));
            }
            if e.is_empty() || e.len() > 4 {
                return Err("RSA exponent out of range".to_owned());
            }
            Material::Rsa { n, e }
        }
        "EC" => {
            let (len, make): (usize, fn(Vec<u8>) -> Material) = match string(jwk, "crv")? {
                Some("P-256") => (32, Material::P256),
                Some("P-384") => (48, Material::P384),
                Some(crv) => return Err(format!("curve {crv:?} is not supported")),
                None => return Err("no crv".to_owned()),
            };
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend(fixed(jwk, "x", len)?);
            point.extend(fixed(jwk, "y", len)?);
            make(point)
        }
        "OKP" => match string(jwk, "crv")? {
            Some("Ed25519") => Material::Ed25519(fixed(jwk, "x", 32)?),
            Some(crv) => return Err(format!("curve {crv:?} is not supported")),
            None => return Err("no crv".to_owned()),
        },
        "oct" => return Err("symmetric keys are not accepted".to_owned()),
        other => return Err(format!("key type {other:?} is not supported")),
    };
    if let Some(alg) = alg {
        if !material.fits(alg) {
            return Err(format!("alg {alg:?} does not fit key type {kty}"));
        }
    }
    Ok(Key { kid, alg, material })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn ed_key() -> (Ed25519KeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let x = b64(pair.public_key().as_ref());
        (pair, x)
    }

    fn jwks(keys: &str) -> Result<KeySet, String> {
        KeySet::parse(format!(r#"{{"keys":[{keys}]}}"#).as_bytes(), true)
    }

    #[test]
    fn selects_keys_by_kid_and_alg() {
        let (pair, x) = ed_key();
        let set = jwks(&format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"a","use":"sig","alg":"EdDSA"}}"#
        ))
        .expect("jwks");
        assert_eq!(set.len(), 1);
        let sig = pair.sign(b"msg");
        let sig = sig.as_ref();
        assert_eq!(set.verify(Alg::EdDSA, Some("a"), b"msg", sig), Ok(()));
        assert_eq!(set.verify(Alg::EdDSA, None, b"msg", sig), Ok(()));
        assert_eq!(
            set.verify(Alg::EdDSA, Some("a"), b"msh", sig),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            set.verify(Alg::EdDSA, Some("b"), b"msg", sig),
            Err(KeyError::UnknownKid)
        );
        assert_eq!(
            set.verify(Alg::ES256, Some("a"), b"msg", sig),
            Err(KeyError::NoKeyForAlg)
        );
        assert_eq!(
            set.verify(Alg::RS256, None, b"msg", sig),
            Err(KeyError::NoKeyForAlg)
        );
    }

    #[test]
    fn key_without_kid_matches_any_kid() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
        let public = pair.public_key().as_ref();
        let (x, y) = (b64(&public[1..33]), b64(&public[33..]));
        let set = jwks(&format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}"}}"#
        ))
        .expect("jwks");
        let sig = pair.sign(&rng, b"m").expect("sign");
        assert_eq!(
            set.verify(Alg::ES256, Some("any"), b"m", sig.as_ref()),
            Ok(())
        );
        // A key whose alg disagrees with the token is never used.
        let set = jwks(&format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}","alg":"ES384"}}"#
        ));
        assert!(set.is_err(), "alg ES384 on a P-256 key");
    }

    #[test]
    fn refuses_unusable_keys() {
        let (_, x) = ed_key();
        let bad = [
            r#"{"kty":"oct","k":"c2VjcmV0"}"#.to_owned(),
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","use":"enc"}}"#),
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","key_ops":["encrypt"]}}"#),
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","alg":"RS256"}}"#),
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","alg":"HS256"}}"#),
            format!(r#"{{"kty":"OKP","crv":"X25519","x":"{x}"}}"#),
            r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#.to_owned(),
            r#"{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}"#.to_owned(),
            r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#.to_owned(),
            format!(r#"{{"kty":"RSA","n":"{}","e":""}}"#, b64(&[0xff; 256])),
            r#"{"n":"AQAB"}"#.to_owned(),
            r#""key""#.to_owned(),
        ];
        for key in &bad {
            assert!(jwks(key).is_err(), "{key}");
        }
        // Fetched sets skip what they cannot use, unless nothing is left.
        let good = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}"#);
        let doc = format!(r#"{{"keys":[{},{good}]}}"#, bad[1]);
        assert_eq!(KeySet::parse(doc.as_bytes(), false).map(|s| s.len()), Ok(1));
        assert!(KeySet::parse(doc.as_bytes(), true).is_err());
        let doc = format!(r#"{{"keys":[{}]}}"#, bad[1]);
        assert!(KeySet::parse(doc.as_bytes(), false).is_err());
        assert_eq!(
            KeySet::parse(br#"{"keys":[]}"#, true).map(|s| s.len()),
            Ok(0)
        );
        for doc in [&br#"{}"#[..], br#"{"keys":{}}"#, b"[]", b"", b"{"] {
            assert!(KeySet::parse(doc, false).is_err());
        }
        let many = vec![good.as_str(); MAX_KEYS + 1].join(",");
        assert!(jwks(&many).is_err());
        let max = vec![good.as_str(); MAX_KEYS].join(",");
        assert_eq!(jwks(&max).map(|s| s.len()), Ok(MAX_KEYS));
    }

    #[test]
    fn rsa_modulus_leading_zero_is_ignored() {
        let mut n = vec![0u8];
        n.extend([0xc5; 256]);
        let set = jwks(&format!(r#"{{"kty":"RSA","n":"{}","e":"AQAB"}}"#, b64(&n))).expect("jwks");
        assert_eq!(set.len(), 1);
        let short = b64(&[0x7f; 256]);
        assert!(jwks(&format!(r#"{{"kty":"RSA","n":"{short}","e":"AQAB"}}"#)).is_err());
    }
}
