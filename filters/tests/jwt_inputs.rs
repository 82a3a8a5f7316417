//! Seeded random inputs: mutated tokens and JWKS documents never panic, and a token whose
//! text was changed never verifies. Deterministic (fixed seeds), so failures reproduce.

use std::sync::Arc;

use halyard_filters::attrs::Authenticated;
use halyard_filters::jwt::{Authenticator, AuthnError, JwksStore};
use halyard_xds::{JwtRule, RequestAuthentication};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[path = "fixtures/jwt_keys.rs"]
mod keys;
use keys::{b64, jwks, Signer};

const ISS: &str = "https://fuzz.example.com";

/// SplitMix64: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        const INTERESTING: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \"{}[]:,\\\0\x7f";
        match self.below(4) {
            0 => self.next() as u8,
            _ => INTERESTING[self.below(INTERESTING.len())],
        }
    }
}

/// One random edit of `input`: replace, insert, delete, bit flip, truncate or duplicate.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let at = rng.below(out.len() + 1);
    match rng.below(7) {
        0 if at < out.len() => out[at] = rng.byte(),
        1 => {
            let n = 1 + rng.below(3);
            for _ in 0..n {
                let b = rng.byte();
                out.insert(at.min(out.len()), b);
            }
        }
        2 if at < out.len() => {
            let end = (at + 1 + rng.below(4)).min(out.len());
            out.drain(at..end);
        }
        3 if at < out.len() => out[at] ^= 1 << rng.below(8),
        4 => out.truncate(at),
        5 if at < out.len() => {
            let end = (at + 1 + rng.below(16)).min(out.len());
            let piece = out[at..end].to_vec();
            let to = rng.below(out.len() + 1);
            out.splice(to..to, piece);
        }
        _ => {
            if let Some(b) = out.get_mut(at) {
                *b = b.wrapping_add(1);
            }
        }
    }
    out
}

fn store() -> Arc<JwksStore> {
    JwksStore::new(CancellationToken::new())
}

fn authenticator(jwks: String) -> Result<Authenticator, halyard_filters::jwt::JwtError> {
    let policy = RequestAuthentication {
        name: "ns/fuzz".into(),
        jwt_rules: vec![JwtRule {
            issuer: ISS.into(),
            jwks,
            ..Default::default()
        }],
    };
    Authenticator::compile(&[policy], &store())
}

fn signers() -> Vec<Signer> {
    vec![
        Signer::ed25519("ed"),
        Signer::es256("es256"),
        Signer::es384("es384"),
        Signer::rsa("RS256", "rs"),
        Signer::rsa("PS512", "ps"),
    ]
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": ["a", "b"], "exp": 4_102_444_800u64,
           "groups": ["x", "y"], "n": 1.5, "nested": {"k": [1, {"z": null}]}})
}

/// Runs a token through the public API as a bearer header (or query parameter when it
/// cannot be a header value).
async fn run(auth: &Authenticator, token: &[u8]) -> Result<Option<Authenticated>, AuthnError> {
    let mut b = http::Request::get("/");
    match http::HeaderValue::from_bytes(&[b"Bearer ", token].concat()) {
        Ok(v) => b = b.header("authorization", v),
        Err(_) => {
            let q: String = token.iter().map(|c| format!("%{c:02X}")).collect();
            b = http::Request::get(format!("/?access_token={q}"));
        }
    }
    let mut parts = b.body(()).expect("request").into_parts().0;
    auth.authenticate(&mut parts).await
}

#[tokio::test]
async fn mutated_tokens_never_verify() {
    let signers = signers();
    let refs: Vec<&Signer> = signers.iter().collect();
    let auth = authenticator(jwks(&refs)).expect("compiles");
    let mut rng = Rng(0x5eed_0001);
    let mut refused = 0;
    for signer in &signers {
        let token = signer.token(&claims());
        assert!(matches!(run(&auth, token.as_bytes()).await, Ok(Some(_))));
        for _ in 0..600 {
            let mut mutated = mutate(&mut rng, token.as_bytes());
            if rng.below(4) == 0 {
                mutated = mutate(&mut rng, &mutated);
            }
            // The carrier trims whitespace: that does not change the token.
            if mutated.trim_ascii() == token.as_bytes() {
                continue;
            }
            let got = run(&auth, &mutated).await;
            assert!(
                !matches!(got, Ok(Some(_))),
                "{}: mutated token verified: {:?}",
                signer.alg,
                String::from_utf8_lossy(&mutated)
            );
            refused += usize::from(got.is_err());
        }
    }
    assert!(
        refused > 2500,
        "most mutations are found and refused: {refused}"
    );
}

#[tokio::test]
async fn re_signed_claims_and_headers_never_verify() {
    let signers = signers();
    let refs: Vec<&Signer> = signers.iter().collect();
    let auth = authenticator(jwks(&refs)).expect("compiles");
    let mut rng = Rng(0x5eed_0002);
    let algs = [
        "RS256", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256", "none",
    ];
    for signer in &signers {
        let token = signer.token(&claims());
        let mut parts = token.split('.');
        let (header, _, sig) = (
            parts.next().unwrap_or_default(),
            parts.next(),
            parts.next().unwrap_or_default(),
        );
        for i in 0..200 {
            // Claims changed as JSON, re-encoded, the original signature kept.
            let mut c = claims();
            match i % 4 {
                0 => c["sub"] = json!(format!("admin{}", rng.below(100))),
                1 => c["exp"] = json!(rng.next() >> 12),
                2 => c["aud"] = json!("a"),
                _ => c[format!("x{}", rng.below(10))] = json!(rng.next()),
            }
            let forged = format!("{header}.{}.{sig}", b64(c.to_string().as_bytes()));
            let got = run(&auth, forged.as_bytes()).await;
            assert!(got.is_err(), "{}: forged claims: {got:?}", signer.alg);
            // Same payload and signature under another header (alg confusion, other kid).
            let alg = algs[rng.below(algs.len())];
            let kid = ["ed", "es256", "es384", "rs", "ps"][rng.below(5)];
            let h = json!({"alg": alg, "kid": kid, "typ": "JWT"});
            let payload = token.split('.').nth(1).unwrap_or_default();
            let forged = format!("{}.{payload}.{sig}", b64(h.to_string().as_bytes()));
            if forged != token {
                let got = run(&auth, forged.as_bytes()).await;
                assert!(got.is_err(), "{}: header {h}: {got:?}", signer.alg);
            }
        }
    }
}

#[tokio::test]
async fn random_garbage_never_panics() {
    let auth = authenticator(jwks(&[&Signer::ed25519("k")])).expect("compiles");
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..2000 {
        let parts = 1 + rng.below(4);
        let token: Vec<String> = (0..parts)
            .map(|_| match rng.below(3) {
                0 => {
                    let json = [
                        r#"{"alg":"EdDSA"}"#,
                        r#"{"alg":"ES256","kid":"k","crit":["x"]}"#,
                        r#"{"iss":"https://fuzz.example.com","exp":1e400}"#,
                        r#"{"iss":"https://fuzz.example.com","nbf":-1e308,"aud":[[]]}"#,
                        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]",
                        "null",
                    ][rng.below(6)];
                    b64(json.as_bytes())
                }
                1 => (0..rng.below(64)).map(|_| char::from(rng.byte())).collect(),
                _ => {
                    let bytes: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
                    b64(&bytes)
                }
            })
            .collect();
        let got = run(&auth, token.join(".").as_bytes()).await;
        assert!(!matches!(got, Ok(Some(_))), "garbage verified: {token:?}");
    }
    // Deep nesting stops at serde_json's recursion limit, without overflowing the stack.
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let token = format!(
        "{}.{}.c2ln",
        b64(br#"{"alg":"EdDSA"}"#),
        b64(deep.as_bytes())
    );
    assert!(run(&auth, token.as_bytes()).await.is_err());
}

/// The key material fields of a JWK, base64url without padding.
fn material(jwk: &Value) -> Vec<String> {
    ["n", "e", "x", "y", "crv", "kty"]
        .iter()
        .filter_map(|f| jwk.get(f).and_then(Value::as_str))
        .map(|v| v.trim_end_matches('=').to_owned())
        .collect()
}

#[tokio::test]
async fn mutated_jwks_never_panic_nor_accept_other_keys() {
    let mut rng = Rng(0x5eed_0004);
    let (mut compiled, mut verified) = (0, 0);
    for signer in signers() {
        let doc = jwks(&[&signer]);
        let token = signer.token(&claims());
        let original = material(&signer.jwk());
        for _ in 0..400 {
            let mut mutated = mutate(&mut rng, doc.as_bytes());
            if rng.below(3) == 0 {
                mutated = mutate(&mut rng, &mutated);
            }
            let text = String::from_utf8_lossy(&mutated).into_owned();
            let Ok(auth) = authenticator(text.clone()) else {
                continue;
            };
            compiled += 1;
            if let Ok(Some(_)) = run(&auth, token.as_bytes()).await {
                verified += 1;
                // Verifying is fine only when the document still holds the same key.
                let parsed: Value = serde_json::from_str(&text).expect("compiled, so JSON");
                let same = parsed["keys"]
                    .as_array()
                    .is_some_and(|keys| keys.iter().any(|k| material(k) == original));
                assert!(same, "{}: verified with a changed key: {text}", signer.alg);
            }
        }
    }
    // Both outcomes were exercised: many mutants still compile, some still verify.
    assert!(
        compiled > 200 && verified > 0,
        "{compiled} compiled, {verified} verified"
    );
    // Structural oddities.
    let k = Signer::ed25519("k").jwk();
    let docs = [
        json!({"keys": [k, k]}),
        json!({"keys": [k], "extra": {"deep": [[[[]]]]}}),
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": k["x"], "kid": 5}]}),
        json!({"keys": [{"kty": "RSA", "n": "", "e": ""}]}),
        json!({"keys": [{"kty": "RSA", "n": "AA".repeat(600), "e": "AQAB"}]}),
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "", "y": ""}]}),
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "A".repeat(43), "y": "A".repeat(43)}]}),
        json!({"keys": vec![k.clone(); 101]}),
        json!({"keys": null}),
    ];
    for doc in docs {
        let _ = authenticator(doc.to_string());
    }
    // A point that is not on the curve compiles (shape is right) but verifies nothing.
    let es = Signer::es256("p");
    let mut jwk = es.jwk();
    jwk["y"] = json!("A".repeat(43));
    let auth = authenticator(json!({ "keys": [jwk] }).to_string()).expect("compiles");
    let got = run(&auth, es.token(&claims()).as_bytes()).await;
    assert_eq!(got, Err(AuthnError::BadSignature));
}
