//! Remote keys end to end: a small HTTP(S) server in the test serves a JWKS and an OpenID
//! Connect discovery document; the `JwksStore` fetches, caches, refreshes and refetches them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use halyard_filters::attrs::Authenticated;
use halyard_filters::jwt::{Authenticator, AuthnError, JwksStatus, JwksStore, JwksStoreOptions};
use halyard_xds::{JwtRule, RequestAuthentication};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[path = "fixtures/jwt_keys.rs"]
mod keys;
use keys::{jwks, Signer};

const CA: &[u8] = include_bytes!("fixtures/jwt/ca.pem");
const SERVER_CERT: &[u8] = include_bytes!("fixtures/jwt/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("fixtures/jwt/server.key");
const DEADLINE: Duration = Duration::from_secs(10);

/// What the test server answers on a path.
#[derive(Clone)]
enum Reply {
    Json(String),
    /// The JSON after a delay (a slow issuer).
    Slow(String, Duration),
    /// A chunked body of this many bytes, without content-length.
    Chunked(usize),
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Reply>>,
    hits: Mutex<HashMap<String, usize>>,
}

/// A chunked body of zeros.
struct Zeros(usize);

impl hyper::body::Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        let n = self.0.min(64 * 1024);
        self.0 -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; n])))))
    }
}

struct Server {
    addr: SocketAddr,
    host: &'static str,
    tls: bool,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Server {
    async fn start() -> Server {
        Server::spawn(None).await
    }

    async fn start_tls() -> Server {
        let certs = vec![CertificateDer::from_pem_slice(SERVER_CERT).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        Server::spawn(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn spawn(tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        let server = Server {
            addr,
            host: if tls.is_some() {
                "localhost"
            } else {
                "127.0.0.1"
            },
            tls: tls.is_some(),
            state: state.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let (state, stop, tls) = (state.clone(), stop.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(state.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            let Ok(stream) = tls.accept(tcp).await else {
                                return;
                            };
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = http.serve_connection(TokioIo::new(stream), svc) => {}
                            }
                        }
                        None => tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = http.serve_connection(TokioIo::new(tcp), svc) => {}
                        },
                    }
                });
            }
        });
        server
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}{path}", self.host, self.addr.port())
    }

    fn set(&self, path: &str, reply: Reply) {
        self.state
            .routes
            .lock()
            .expect("lock")
            .insert(path.to_owned(), reply);
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(
    state: Arc<State>,
    req: http::Request<Incoming>,
) -> Result<http::Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let path = req.uri().path().to_owned();
    *state
        .hits
        .lock()
        .expect("lock")
        .entry(path.clone())
        .or_default() += 1;
    let reply = state.routes.lock().expect("lock").get(&path).cloned();
    let (status, body) = match reply {
        None => (404, Full::new(Bytes::new()).boxed()),
        Some(Reply::Json(body)) => (200, Full::new(Bytes::from(body)).boxed()),
        Some(Reply::Slow(body, delay)) => {
            tokio::time::sleep(delay).await;
            (200, Full::new(Bytes::from(body)).boxed())
        }
        Some(Reply::Chunked(len)) => (200, Zeros(len).boxed()),
    };
    let response = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .expect("response");
    Ok(response)
}

/// Polls `check` every 10 ms until it holds or the deadline passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn options() -> JwksStoreOptions {
    JwksStoreOptions {
        min_refetch_interval: Duration::ZERO,
        ..Default::default()
    }
}

fn store_with(options: JwksStoreOptions) -> Arc<JwksStore> {
    JwksStore::with_options(CancellationToken::new(), options).expect("store")
}

fn policy(rule: JwtRule) -> Vec<RequestAuthentication> {
    vec![RequestAuthentication {
        name: "ns/remote".into(),
        jwt_rules: vec![rule],
    }]
}

fn remote_rule(issuer: &str, jwks_uri: &str) -> JwtRule {
    JwtRule {
        issuer: issuer.into(),
        jwks_uri: jwks_uri.into(),
        ..Default::default()
    }
}

fn token(signer: &Signer, issuer: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    signer.token(&json!({"iss": issuer, "sub": "svc", "exp": now + 600}))
}

async fn check(auth: &Authenticator, token: &str) -> Result<Option<Authenticated>, AuthnError> {
    let mut parts = http::Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .expect("request")
        .into_parts()
        .0;
    auth.authenticate(&mut parts).await
}

fn status(store: &JwksStore) -> JwksStatus {
    let all = store.status();
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().expect("one source")
}

#[tokio::test]
async fn keys_are_fetched_once_and_cached() {
    let server = Server::start().await;
    let k1 = Signer::ed25519("k1");
    // A slow issuer: the first request waits for the first fetch rather than failing.
    server.set(
        "/keys",
        Reply::Slow(jwks(&[&k1]), Duration::from_millis(300)),
    );
    let store = store_with(JwksStoreOptions::default());
    let auth = Authenticator::compile(&policy(remote_rule("iss", &server.url("/keys"))), &store)
        .expect("compiles");
    let t = token(&k1, "iss");
    for _ in 0..20 {
        let got = check(&auth, &t).await.expect("verifies").expect("token");
        assert_eq!(got.principal, "iss/svc");
    }
    assert_eq!(server.hits("/keys"), 1);
    let s = status(&store);
    assert_eq!((s.keys, s.fetches, s.failures), (Some(1), 1, 0));
    assert_eq!(s.source, server.url("/keys"));

    // A new configuration naming the same URI shares the cached keys: no fetch, no wait.
    let again = Authenticator::compile(&policy(remote_rule("iss", &server.url("/keys"))), &store)
        .expect("compiles");
    drop(auth);
    assert!(check(&again, &t).await.is_ok());
    assert_eq!(server.hits("/keys"), 1);
    assert_eq!(store.running_tasks(), 1);
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background() {
    let server = Server::start().await;
    let (k1, k2) = (Signer::es256("k1"), Signer::es256("k2"));
    server.set("/keys", Reply::Json(jwks(&[&k1])));
    let store = store_with(JwksStoreOptions {
        refresh_interval: Duration::from_millis(50),
        min_refetch_interval: Duration::from_secs(3600),
        ..Default::default()
    });
    let auth = Authenticator::compile(&policy(remote_rule("iss", &server.url("/keys"))), &store)
        .expect("compiles");
    assert!(check(&auth, &token(&k1, "iss")).await.is_ok());
    // The first unknown kid uses up the refetch allowance (min interval 1 h).
    assert_eq!(
        check(&auth, &token(&k2, "iss")).await,
        Err(AuthnError::UnknownKey)
    );
    let before = status(&store).fetches;
    server.set("/keys", Reply::Json(jwks(&[&k2])));
    // Two more attempts: at least one of them started after the change.
    eventually("a refresh picks up k2", || {
        status(&store).fetches >= before + 2
    })
    .await;
    assert!(server.hits("/keys") >= 3);
    assert!(check(&auth, &token(&k2, "iss")).await.is_ok());
    assert_eq!(
        check(&auth, &token(&k1, "iss")).await,
        Err(AuthnError::UnknownKey)
    );
}

#[tokio::test]
async fn rotation_refetches_on_unknown_kid() {
    let server = Server::start().await;
    let (k1, k2, k3) = (
        Signer::rsa("RS256", "k1"),
        Signer::es384("k2"),
        Signer::ed25519("k3"),
    );
    server.set("/keys", Reply::Json(jwks(&[&k1])));
    let store = store_with(options());
    let auth = Authenticator::compile(&policy(remote_rule("iss", &server.url("/keys"))), &store)
        .expect("compiles");
    assert!(check(&auth, &token(&k1, "iss")).await.is_ok());
    assert_eq!(server.hits("/keys"), 1);

    // The issuer adds k2: the first token signed with it triggers a refetch and verifies.
    server.set("/keys", Reply::Json(jwks(&[&k1, &k2])));
    assert!(check(&auth, &token(&k2, "iss")).await.is_ok());
    assert_eq!(server.hits("/keys"), 2);
    // The issuer drops k1: tokens with k1 keep working from the cache...
    server.set("/keys", Reply::Json(jwks(&[&k2])));
    assert!(check(&auth, &token(&k1, "iss")).await.is_ok());
    assert_eq!(server.hits("/keys"), 2);
    // ...until a refetch (here caused by an unknown kid) brings the new set.
    assert_eq!(
        check(&auth, &token(&k3, "iss")).await,
        Err(AuthnError::UnknownKey)
    );
    assert_eq!(server.hits("/keys"), 3);
    assert_eq!(
        check(&auth, &token(&k1, "iss")).await,
        Err(AuthnError::UnknownKey)
    );
    assert!(check(&auth, &token(&k2, "iss")).await.is_ok());
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_interval() {
    let server = Server::start().await;
    let k1 = Signer::ed25519("k1");
    server.set("/keys", Reply::Json(jwks(&[&k1])));
    let store = store_with(JwksStoreOptions {
        min_refetch_interval: Duration::from_secs(3600),
        ..Default::default()
    });
    let auth = Authenticator::compile(&policy(remote_rule("iss", &server.url("/keys"))), &store)
        .expect("compiles");
    assert!(check(&auth, &token(&k1, "iss")).await.is_ok());
    for i in 0..20 {
        let stranger = Signer::ed25519(&format!("random-{i}"));
        assert_eq!(
            check(&auth, &token(&stranger, "iss")).await,
            Err(AuthnError::UnknownKey)
        );
    }
    assert_eq!(server.hits("/keys"), 2, "one initial fetch, one refetch");
}

#[tokio::test]
async fn openid_connect_discovery() {
    let server = Server::start().await;
    let k1 = Signer::es256("k1");
    let issuer = server.url("/realms/mesh");
    server.set(
        "/realms/mesh/.well-known/openid-configuration",
        Reply::Json(
            json!({"issuer": issuer, "jwks_uri": server.url("/realms/mesh/certs")}).to_string(),
        ),
    );
    server.set("/realms/mesh/certs", Reply::Json(jwks(&[&k1])));
    let store = store_with(options());
    let rule = JwtRule {
        issuer: issuer.clone(),
        ..Default::default()
    };
    let auth = Authenticator::compile(&policy(rule), &store).expect("compiles");
    let got = check(&auth, &token(&k1, &issuer))
        .await
        .expect("verifies")
        .expect("token");
    assert_eq!(got.principal, format!("{issuer}/svc"));
    assert_eq!(
        server.hits("/realms/mesh/.well-known/openid-configuration"),
        1
    );
    assert_eq!(server.hits("/realms/mesh/certs"), 1);
    assert_eq!(
        status(&store).source,
        format!("{issuer}/.well-known/openid-configuration")
    );

    // A discovery document without jwks_uri is an error that keeps the last good keys.
    server.set(
        "/realms/mesh/.well-known/openid-configuration",
        Reply::Json("{}".into()),
    );
    let k2 = Signer::es256("k2");
    assert_eq!(
        check(&auth, &token(&k2, &issuer)).await,
        Err(AuthnError::UnknownKey)
    );
    let s = status(&store);
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no jwks_uri")),
        "{s:?}"
    );
    assert!(check(&auth, &token(&k1, &issuer)).await.is_ok());
}

#[tokio::test]
async fn fetch_timeout_bounds_the_wait() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let store = store_with(options());
    let mut rule = remote_rule("iss", &format!("http://{addr}/keys"));
    rule.timeout = Some(Default::default());
    if let Some(d) = rule.timeout.as_mut() {
        d.nanos = 300_000_000;
    }
    let auth = Authenticator::compile(&policy(rule), &store).expect("compiles");
    let started = Instant::now();
    let got = check(&auth, &token(&Signer::ed25519("k"), "iss")).await;
    let took = started.elapsed();
    assert_eq!(got, Err(AuthnError::KeysUnavailable));
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    eventually("the fetch reports its timeout", || {
        status(&store)
            .last_error
            .is_some_and(|e| e.contains("no answer within"))
    })
    .await;
    held.abort();
}

#[tokio::test]
async fn oversized_documents_are_refused() {
    let server = Server::start().await;
    let k = Signer::ed25519("k");
    let store = store_with(options());
    // With content-length (a JWKS padded past 1 MiB) and chunked without a length.
    let padded = format!("{}{}", jwks(&[&k]), " ".repeat(1024 * 1024));
    server.set("/big", Reply::Json(padded));
    server.set("/chunked", Reply::Chunked(3 * 1024 * 1024));
    for path in ["/big", "/chunked"] {
        let auth = Authenticator::compile(&policy(remote_rule("iss", &server.url(path))), &store)
            .expect("compiles");
        assert_eq!(
            check(&auth, &token(&k, "iss")).await,
            Err(AuthnError::KeysUnavailable)
        );
        let s = status(&store);
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("larger than")),
            "{path}: {s:?}"
        );
    }
}

#[tokio::test]
async fn last_good_keys_survive_a_dead_server() {
    let server = Server::start().await;
    let k = Signer::ed25519("k");
    server.set("/keys", Reply::Json(jwks(&[&k])));
    let url = server.url("/keys");
    let store = store_with(JwksStoreOptions {
        refresh_interval: Duration::from_millis(50),
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        ..options()
    });
    let auth = Authenticator::compile(&policy(remote_rule("iss", &url)), &store).expect("compiles");
    assert!(check(&auth, &token(&k, "iss")).await.is_ok());
    drop(server);
    eventually("refreshes fail", || status(&store).failures >= 3).await;
    let s = status(&store);
    assert_eq!(s.keys, Some(1));
    assert!(s.last_error.is_some());
    assert!(check(&auth, &token(&k, "iss")).await.is_ok());
}

#[tokio::test]
async fn https_with_an_extra_ca() {
    let server = Server::start_tls().await;
    let k = Signer::es256("k");
    server.set("/keys", Reply::Json(jwks(&[&k])));
    let ca = CertificateDer::from_pem_slice(CA).expect("ca");
    let store = store_with(JwksStoreOptions {
        extra_roots: vec![ca],
        ..options()
    });
    let url = server.url("/keys");
    assert!(url.starts_with("https://localhost:"));
    let auth = Authenticator::compile(&policy(remote_rule("iss", &url)), &store).expect("compiles");
    assert!(check(&auth, &token(&k, "iss")).await.is_ok());

    // Without the CA the server is not trusted.
    let untrusting = store_with(options());
    let auth =
        Authenticator::compile(&policy(remote_rule("iss", &url)), &untrusting).expect("compiles");
    assert_eq!(
        check(&auth, &token(&k, "iss")).await,
        Err(AuthnError::KeysUnavailable)
    );
    let s = status(&untrusting);
    assert!(
        s.last_error.as_deref().is_some_and(|e| e.contains("TLS")),
        "{s:?}"
    );
    assert_eq!(server.hits("/keys"), 1);
}

#[tokio::test]
async fn fetch_tasks_end_with_their_last_user_or_shutdown() {
    let server = Server::start().await;
    let k = Signer::ed25519("k");
    server.set("/a", Reply::Json(jwks(&[&k])));
    server.set("/b", Reply::Json(jwks(&[&k])));
    let shutdown = CancellationToken::new();
    let store = JwksStore::with_options(
        shutdown.clone(),
        JwksStoreOptions {
            refresh_interval: Duration::from_millis(20),
            ..options()
        },
    )
    .expect("store");
    let a = Authenticator::compile(&policy(remote_rule("iss", &server.url("/a"))), &store)
        .expect("compiles");
    let b = Authenticator::compile(&policy(remote_rule("iss", &server.url("/b"))), &store)
        .expect("compiles");
    assert_eq!(store.running_tasks(), 2);
    assert!(check(&a, &token(&k, "iss")).await.is_ok());
    drop(a);
    eventually("the task of /a ends", || store.running_tasks() == 1).await;
    assert_eq!(store.status().len(), 1);
    let hits = server.hits("/a");
    eventually("/b keeps refreshing", || server.hits("/b") >= 3).await;
    assert_eq!(server.hits("/a"), hits);
    shutdown.cancel();
    eventually("the task of /b ends", || store.running_tasks() == 0).await;
    drop(b);
}
