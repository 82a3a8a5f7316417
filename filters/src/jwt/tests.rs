//! Authenticator tests with inline keys (remote keys: `tests/jwt_fetch.rs`).

use std::sync::Arc;

use halyard_xds::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::*;

#[path = "../../tests/fixtures/jwt_keys.rs"]
mod keys;
use keys::{b64, jwks, Signer};

const ISS: &str = "https://issuer.example.com";
const NOW: i64 = 1_700_000_000;

fn store() -> Arc<JwksStore> {
    JwksStore::new(CancellationToken::new())
}

fn rule(issuer: &str, signers: &[&Signer]) -> JwtRule {
    JwtRule {
        issuer: issuer.to_owned(),
        jwks: jwks(signers),
        ..Default::default()
    }
}

fn policy(name: &str, rules: Vec<JwtRule>) -> RequestAuthentication {
    RequestAuthentication {
        name: name.to_owned(),
        jwt_rules: rules,
    }
}

fn compile(rules: Vec<JwtRule>) -> Authenticator {
    Authenticator::compile(&[policy("ns/authn", rules)], &store()).expect("compiles")
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "api", "azp": "web", "exp": NOW + 600, "nbf": NOW - 5})
}

fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).expect("request").into_parts().0
}

fn bearer(token: &str) -> http::request::Parts {
    request("/", &[("authorization", &format!("Bearer {token}"))])
}

async fn check(auth: &Authenticator, token: &str) -> Result<Option<Authenticated>, AuthnError> {
    auth.authenticate_at(&mut bearer(token), NOW).await
}

#[tokio::test]
async fn every_algorithm_verifies() {
    let mut signers: Vec<Signer> = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
        .iter()
        .map(|alg| Signer::rsa(alg, alg))
        .collect();
    signers.push(Signer::es256("es256"));
    signers.push(Signer::es384("es384"));
    signers.push(Signer::ed25519("ed"));
    let refs: Vec<&Signer> = signers.iter().collect();
    let auth = compile(vec![rule(ISS, &refs)]);
    for s in &signers {
        let got = check(&auth, &s.token(&claims())).await;
        let want = Authenticated {
            principal: format!("{ISS}/alice"),
            audiences: vec!["api".into()],
            presenter: Some("web".into()),
            claims: claims().as_object().cloned().unwrap_or_default(),
        };
        assert_eq!(got, Ok(Some(want)), "{}", s.alg);
    }
    // The same RSA key signing under another alg than its kid names still verifies (the JWK
    // has no alg); a JWK that names its alg refuses other algs.
    let rs = Signer::rsa("RS256", "k");
    let mut jwk = rs.jwk();
    jwk["alg"] = json!("RS256");
    let auth = compile(vec![JwtRule {
        issuer: ISS.into(),
        jwks: json!({ "keys": [jwk] }).to_string(),
        ..Default::default()
    }]);
    assert!(check(&auth, &rs.token(&claims())).await.is_ok());
    let ps = Signer::rsa("PS256", "k");
    assert_eq!(
        check(&auth, &ps.token(&claims())).await,
        Err(AuthnError::KeyMismatch)
    );
}

#[tokio::test]
async fn pyjwt_tokens_verify() {
    let fixture: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/jwt/pyjwt.json")).expect("json");
    let issuer = fixture["issuer"].as_str().expect("issuer");
    let auth = compile(vec![JwtRule {
        issuer: issuer.into(),
        audiences: vec!["halyard".into()],
        jwks: fixture["jwks"].to_string(),
        ..Default::default()
    }]);
    let tokens = fixture["tokens"].as_object().expect("tokens");
    assert!(tokens.len() >= 10);
    for (name, token) in tokens {
        let token = token.as_str().expect("token");
        let got = auth.authenticate(&mut bearer(token)).await;
        if name.ends_with("_expired") {
            assert_eq!(got, Err(AuthnError::Expired), "{name}");
            continue;
        }
        let got = got.expect(name).expect(name);
        assert_eq!(got.principal, format!("{issuer}/alice"), "{name}");
        assert_eq!(got.presenter.as_deref(), Some("cli"));
        assert!(got.audiences.contains(&"halyard".to_owned()));
        assert_eq!(got.claims["groups"], json!(["dev", "ops"]));
    }
}

#[tokio::test]
async fn no_token_is_not_an_error() {
    let s = Signer::ed25519("k");
    let auth = compile(vec![rule(ISS, &[&s])]);
    assert!(!auth.is_empty());
    assert_eq!(
        auth.authenticate_at(&mut request("/", &[]), NOW).await,
        Ok(None)
    );
    let mut basic = request("/?x=1", &[("authorization", "Basic Zm9vOmJhcg==")]);
    assert_eq!(auth.authenticate_at(&mut basic, NOW).await, Ok(None));
    assert_eq!(basic.headers["authorization"], "Basic Zm9vOmJhcg==");
    let empty = compile(vec![]);
    assert!(empty.is_empty());
    assert_eq!(check(&empty, "garbage").await, Ok(None));
}

#[tokio::test]
async fn invalid_tokens_are_refused() {
    let s = Signer::es256("k");
    let other = Signer::es256("k");
    let ed = Signer::ed25519("ed");
    let auth = compile(vec![JwtRule {
        audiences: vec!["api".into(), "api2".into()],
        ..rule(ISS, &[&s, &ed])
    }]);
    let with = |patch: Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().cloned().unwrap_or_default() {
            c[k] = v;
        }
        c
    };
    let good = s.token(&claims());
    let (input, _) = good.rsplit_once('.').expect("three parts");
    let forged_payload = format!(
        "{}.{}.{}",
        input.split('.').next().unwrap_or_default(),
        b64(with(json!({"sub": "admin"})).to_string().as_bytes()),
        good.rsplit('.').next().unwrap_or_default()
    );
    let hs = {
        // HS256 with the public key as the HMAC secret: the classic key-confusion forgery.
        let header = b64(br#"{"alg":"HS256","kid":"k"}"#);
        let payload = b64(claims().to_string().as_bytes());
        let secret = s.jwk()["x"].as_str().unwrap_or_default().to_owned();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let input = format!("{header}.{payload}");
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    };
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(claims().to_string().as_bytes())
    );
    let cases: Vec<(&str, String, AuthnError)> = vec![
        (
            "other key",
            other.token(&claims()),
            AuthnError::BadSignature,
        ),
        ("payload swapped", forged_payload, AuthnError::BadSignature),
        (
            "unknown issuer",
            s.token(&with(json!({"iss": "https://evil"}))),
            AuthnError::UnknownIssuer,
        ),
        (
            "no issuer",
            s.token(&json!({"sub": "x"})),
            AuthnError::UnknownIssuer,
        ),
        (
            "expired",
            s.token(&with(json!({"exp": NOW - 61}))),
            AuthnError::Expired,
        ),
        (
            "not yet valid",
            s.token(&with(json!({"nbf": NOW + 61}))),
            AuthnError::NotYetValid,
        ),
        (
            "audience",
            s.token(&with(json!({"aud": ["web", "x"]}))),
            AuthnError::AudienceNotAllowed,
        ),
        (
            "no audience",
            s.token(&with(json!({"aud": null}))),
            AuthnError::Malformed("aud is not a string"),
        ),
        (
            "unknown kid",
            Signer::es256("k2").token(&claims()),
            AuthnError::UnknownKey,
        ),
        (
            "alg/key mismatch",
            ed.token_with_header(&json!({"alg": "ES256", "kid": "ed"}), &claims()),
            AuthnError::KeyMismatch,
        ),
        ("hs256", hs, AuthnError::UnsupportedAlg),
        ("none", none, AuthnError::UnsupportedAlg),
        (
            "garbage",
            "not-a-jwt".into(),
            AuthnError::Malformed("not three parts"),
        ),
        (
            "too large",
            s.token(&with(json!({"pad": "x".repeat(MAX_TOKEN_LEN)}))),
            AuthnError::TooLarge,
        ),
    ];
    for (name, token, want) in cases {
        let mut parts = bearer(&token);
        assert_eq!(
            auth.authenticate_at(&mut parts, NOW).await,
            Err(want),
            "{name}"
        );
        // A refused request keeps its headers (it is answered 401 anyway).
        assert!(parts.headers.contains_key("authorization"));
    }
    // Clock skew: 60 s either side.
    assert!(check(&auth, &s.token(&with(json!({"exp": NOW - 59}))))
        .await
        .is_ok());
    assert!(check(&auth, &s.token(&with(json!({"nbf": NOW + 59}))))
        .await
        .is_ok());
    assert!(check(&auth, &s.token(&with(json!({"aud": ["x", "api2"]}))))
        .await
        .is_ok());
    // No exp: the token does not expire.
    assert!(check(&auth, &s.token(&with(json!({"exp": null}))))
        .await
        .is_err());
    let mut c = claims();
    c.as_object_mut().map(|m| m.remove("exp"));
    assert!(check(&auth, &s.token(&c)).await.is_ok());
}

#[tokio::test]
async fn tokens_are_removed_unless_forwarded() {
    let s = Signer::ed25519("k");
    let t = s.token(&claims());
    let auth = compile(vec![rule(ISS, &[&s])]);
    let mut parts = request(
        &format!("/p?a=1&access_token={t}&b=2"),
        &[("authorization", &format!("Bearer {t}")), ("x-other", "1")],
    );
    let got = auth.authenticate_at(&mut parts, NOW).await;
    assert_eq!(
        got.map(|a| a.map(|a| a.principal)),
        Ok(Some(format!("{ISS}/alice")))
    );
    assert!(parts.headers.get("authorization").is_none());
    assert_eq!(parts.uri, "/p?a=1&b=2");
    assert_eq!(parts.headers["x-other"], "1");

    let auth = compile(vec![JwtRule {
        forward_original_token: true,
        ..rule(ISS, &[&s])
    }]);
    let mut parts = bearer(&t);
    assert!(auth.authenticate_at(&mut parts, NOW).await.is_ok());
    assert_eq!(parts.headers["authorization"], format!("Bearer {t}"));
}

#[tokio::test]
async fn outputs_cannot_be_forged() {
    let s = Signer::rsa("RS256", "k");
    let auth = compile(vec![JwtRule {
        output_payload_to_header: "x-jwt-payload".into(),
        output_claim_to_headers: vec![
            ClaimToHeader {
                header: "x-sub".into(),
                claim: "sub".into(),
            },
            ClaimToHeader {
                header: "x-level".into(),
                claim: "level".into(),
            },
            ClaimToHeader {
                header: "x-admin".into(),
                claim: "admin".into(),
            },
            ClaimToHeader {
                header: "x-team".into(),
                claim: "org.team".into(),
            },
            ClaimToHeader {
                header: "x-groups".into(),
                claim: "groups".into(),
            },
        ],
        ..rule(ISS, &[&s])
    }]);
    let mut c = claims();
    c["level"] = json!(3);
    c["admin"] = json!(false);
    c["org"] = json!({"team": "mesh"});
    c["groups"] = json!(["a"]);
    let t = s.token(&c);
    let forged = [
        ("x-sub", "mallory"),
        ("x-groups", "admins"),
        ("x-jwt-payload", "e30"),
    ];
    let mut parts = request("/", &[("authorization", &format!("Bearer {t}"))]);
    for (h, v) in forged {
        parts.headers.insert(h, v.parse().expect("value"));
    }
    assert!(auth.authenticate_at(&mut parts, NOW).await.is_ok());
    let h = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(h("x-jwt-payload"), t.split('.').nth(1).map(str::to_owned));
    assert_eq!(h("x-sub").as_deref(), Some("alice"));
    assert_eq!(h("x-level").as_deref(), Some("3"));
    assert_eq!(h("x-admin").as_deref(), Some("false"));
    assert_eq!(h("x-team").as_deref(), Some("mesh"));
    assert_eq!(
        h("x-groups"),
        None,
        "lists are not copied, and the forged value is gone"
    );
    // Without any token the forged headers are removed too.
    let mut parts = request("/", &forged);
    assert_eq!(auth.authenticate_at(&mut parts, NOW).await, Ok(None));
    assert!(parts.headers.is_empty());
}

#[tokio::test]
async fn configured_locations_replace_the_defaults() {
    let s = Signer::es384("k");
    let t = s.token(&claims());
    let auth = compile(vec![JwtRule {
        from_headers: vec![JwtHeader {
            name: "X-Jwt-Assertion".into(),
            prefix: "".into(),
        }],
        from_params: vec!["token".into()],
        from_cookies: vec!["session".into()],
        ..rule(ISS, &[&s])
    }]);
    let ok = |r: Result<Option<Authenticated>, AuthnError>| matches!(r, Ok(Some(_)));
    let mut p = request("/", &[("x-jwt-assertion", &t)]);
    assert!(ok(auth.authenticate_at(&mut p, NOW).await));
    assert!(p.headers.get("x-jwt-assertion").is_none());
    let mut p = request(&format!("/x?token={t}"), &[]);
    assert!(ok(auth.authenticate_at(&mut p, NOW).await));
    assert_eq!(p.uri, "/x");
    let mut p = request("/", &[("cookie", &format!("a=b; session={t}"))]);
    assert!(ok(auth.authenticate_at(&mut p, NOW).await));
    assert_eq!(p.headers["cookie"], "a=b");
    // The default places are not looked at any more.
    assert_eq!(check(&auth, &t).await, Ok(None));
    let mut p = request(&format!("/?access_token={t}"), &[]);
    assert_eq!(auth.authenticate_at(&mut p, NOW).await, Ok(None));
}

#[tokio::test]
async fn policies_are_merged_and_every_token_must_verify() {
    let a = Signer::ed25519("a");
    let b = Signer::es256("b");
    let iss_b = "https://b.example.com";
    let auth = Authenticator::compile(
        &[
            policy("ns/one", vec![rule(ISS, &[&a])]),
            policy(
                "ns/two",
                vec![JwtRule {
                    audiences: vec!["b-api".into()],
                    ..rule(iss_b, &[&b])
                }],
            ),
        ],
        &store(),
    )
    .expect("compiles");
    let ta = a.token(&claims());
    let tb = b.token(&json!({"iss": iss_b, "sub": "bob", "aud": ["b-api"]}));
    assert_eq!(
        check(&auth, &ta).await.map(|a| a.map(|a| a.principal)),
        Ok(Some(format!("{ISS}/alice")))
    );
    assert_eq!(
        check(&auth, &tb).await.map(|a| a.map(|a| a.principal)),
        Ok(Some(format!("{iss_b}/bob")))
    );
    // Issuer a's token under b's key, and b's issuer with a's key: refused.
    let swapped = a.token(&json!({"iss": iss_b, "sub": "bob", "aud": "b-api"}));
    assert_eq!(check(&auth, &swapped).await, Err(AuthnError::UnknownKey));
    // Two tokens: both must verify; the first one names the request.
    let two = |x: &str, y: &str| {
        let mut p = request("/", &[("authorization", &format!("Bearer {x}"))]);
        p.headers.append(
            "authorization",
            format!("Bearer {y}").parse().expect("value"),
        );
        p
    };
    let got = auth.authenticate_at(&mut two(&tb, &ta), NOW).await;
    assert_eq!(
        got.map(|a| a.map(|a| a.principal)),
        Ok(Some(format!("{iss_b}/bob")))
    );
    let bad = b.token(&json!({"iss": ISS, "sub": "x"}));
    let got = auth.authenticate_at(&mut two(&ta, &bad), NOW).await;
    assert_eq!(got, Err(AuthnError::UnknownKey));
    // No sub: verified, but without a principal.
    let got = check(&auth, &a.token(&json!({"iss": ISS}))).await;
    assert_eq!(got.map(|a| a.map(|a| a.principal)), Ok(Some(String::new())));
}

#[tokio::test]
async fn compile_errors_name_policy_and_issuer() {
    let s = Signer::ed25519("k");
    let cases = [
        JwtRule {
            jwks: "{not json".into(),
            ..rule(ISS, &[])
        },
        JwtRule {
            jwks: r#"{"keys":[{"kty":"oct","k":"AA"}]}"#.into(),
            ..rule(ISS, &[])
        },
        JwtRule {
            jwks_uri: "https://x/jwks".into(),
            ..rule(ISS, &[&s])
        },
        JwtRule {
            jwks: String::new(),
            jwks_uri: "ftp://x/jwks".into(),
            ..rule(ISS, &[])
        },
        JwtRule {
            issuer: "not-a-url".into(),
            jwks: String::new(),
            ..Default::default()
        },
        JwtRule {
            from_headers: vec![JwtHeader {
                name: "bad header".into(),
                prefix: "".into(),
            }],
            ..rule(ISS, &[&s])
        },
        JwtRule {
            from_params: vec![String::new()],
            ..rule(ISS, &[&s])
        },
        JwtRule {
            output_payload_to_header: "content-length".into(),
            ..rule(ISS, &[&s])
        },
        JwtRule {
            output_claim_to_headers: vec![ClaimToHeader {
                header: "x-a".into(),
                claim: "".into(),
            }],
            ..rule(ISS, &[&s])
        },
        JwtRule {
            timeout: Some(Default::default()),
            jwks_uri: "https://x/j".into(),
            jwks: String::new(),
            ..rule(ISS, &[])
        },
    ];
    let mut cases = cases;
    if let Some(d) = cases[9].timeout.as_mut() {
        d.seconds = -1;
    }
    for (i, r) in cases.into_iter().enumerate() {
        let issuer = r.issuer.clone();
        let err =
            Authenticator::compile(&[policy("ns/p", vec![r])], &store()).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("ns/p") && text.contains(&format!("{issuer:?}")),
            "{i}: {text}"
        );
    }
    let err = Authenticator::compile(&[policy("ns/p", vec![rule("", &[&s])])], &store());
    assert!(err.is_err());
}

#[test]
fn usable_from_tower_services() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let auth = compile(vec![]);
    send_sync(&auth);
    send_sync(&*store());
    let mut parts = request("/", &[]);
    send(auth.authenticate(&mut parts));
}

#[test]
fn realm_has_no_query() {
    let p = request("http://api.example.com/a/b?access_token=secret", &[]);
    assert_eq!(realm_url(&p, "http"), "http://api.example.com/a/b");
    let p = request("/a?access_token=secret", &[("host", "h:8080")]);
    assert_eq!(realm_url(&p, "https"), "https://h:8080/a");
}
