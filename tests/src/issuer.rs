//! The OpenID Connect issuer peer (`peers/jwt_issuer.py`, PyJWT): tokens signed with keys it
//! publishes over JWKS and discovery, and key rotation on demand.

use std::net::SocketAddr;

use crate::{http, start_peer_server, Proc};

/// The issuer peer, running: its address and issuer URL (`http://ADDR`).
pub struct Issuer {
    _proc: Proc,
    addr: SocketAddr,
}

impl Issuer {
    /// Starts the peer (new keys for every algorithm).
    pub fn start() -> Issuer {
        let (proc, port) = start_peer_server("jwt_issuer.py");
        Issuer {
            _proc: proc,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The issuer URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token from the issuer; `query` as for its `/token` (e.g. `alg=ES256&aud=backend`).
    pub fn token(&self, query: &str) -> String {
        let r = http(self.addr, "GET", &format!("/token?{query}"), &[], b"").expect("GET /token");
        assert_eq!(r.status, 200, "issuer: {}", r.text());
        r.text()
    }

    /// New keys with new key ids; the old ones stay published only with `keep_old`.
    pub fn rotate(&self, keep_old: bool) {
        let q = if keep_old { "1" } else { "0" };
        let r = http(
            self.addr,
            "POST",
            &format!("/rotate?keep_old={q}"),
            &[],
            b"",
        )
        .expect("POST /rotate");
        assert_eq!(r.status, 200);
    }

    /// How often its JWKS and discovery document were fetched.
    pub fn stats(&self) -> serde_json::Value {
        http(self.addr, "GET", "/stats", &[], b"")
            .expect("GET /stats")
            .json()
    }
}
