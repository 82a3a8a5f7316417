//! The attributes of a connection and of a request that policy decisions look at, borrowed
//! from the proxy's own records so that building them costs no allocation.

use std::net::IpAddr;

/// What is known about a connection once it is accepted (all an L4 decision can use).
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The peer's address (the downstream socket).
    pub source_ip: IpAddr,
    /// The original client's address: the peer, or the first X-Forwarded-For hop when the
    /// proxy trusts it.
    pub remote_ip: IpAddr,
    /// The address the connection was sent to.
    pub destination_ip: IpAddr,
    /// The workload port the connection was meant for.
    pub destination_port: u16,
    /// The peer's identity verified by mutual TLS, without `spiffe://`
    /// (`cluster.local/ns/default/sa/frontend`).
    pub principal: Option<&'a str>,
    /// The TLS server name the peer sent.
    pub sni: Option<&'a str>,
}

impl Connection<'_> {
    /// The peer's namespace, read from its principal (`<td>/ns/<namespace>/sa/<sa>`).
    pub fn namespace(&self) -> Option<&str> {
        let mut parts = self.principal?.split('/');
        parts.next()?;
        (parts.next()? == "ns").then_some(())?;
        parts.next()
    }
}

/// What an HTTP request adds to its connection.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The normalised path without the query (see [`crate::path::normalize`]).
    pub path: &'a str,
    /// The `Host`/`:authority` value as sent.
    pub host: &'a str,
    /// All request headers.
    pub headers: &'a http::HeaderMap,
    /// The verified JWT, when the request carried one.
    pub auth: Option<&'a Authenticated>,
}

/// A request's host as sent: the URI's authority, else `Host` (empty when neither is there).
pub fn host_of(parts: &http::request::Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// A request's attributes kept past the request, for deciding again what it opened (a
/// tunnel, an upgraded connection) when the policy changes.
#[derive(Debug, Clone)]
pub struct OwnedRequest {
    method: http::Method,
    path: String,
    host: String,
    headers: http::HeaderMap,
    auth: Option<Authenticated>,
}

impl OwnedRequest {
    /// Keeps what a decision reads from a request's head (the path normalised as policy
    /// sees it) and its verified JWT.
    pub fn of(parts: &http::request::Parts, auth: Option<Authenticated>) -> Self {
        let raw = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = match crate::path::normalize(raw) {
            Ok(p) => p.into_owned(),
            Err(_) => parts.uri.path().to_string(),
        };
        let host = crate::attrs::host_of(parts).to_string();
        Self {
            method: parts.method.clone(),
            path,
            host,
            headers: parts.headers.clone(),
            auth,
        }
    }

    /// The attributes as a decision reads them.
    pub fn view(&self) -> Request<'_> {
        Request {
            method: self.method.as_str(),
            path: &self.path,
            host: &self.host,
            headers: &self.headers,
            auth: self.auth.as_ref(),
        }
    }
}

/// A verified JWT: who it names and what it claims.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Authenticated {
    /// `iss/sub`, matched by `requestPrincipals` and `request.auth.principal`.
    pub principal: String,
    /// The `aud` claim (a string or a list), matched by `request.auth.audiences`.
    pub audiences: Vec<String>,
    /// The `azp` claim, matched by `request.auth.presenter`.
    pub presenter: Option<String>,
    /// The whole payload, matched by `request.auth.claims[...]`.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Authenticated {
    /// The `iss` and `sub` claims; when the payload lacks them as strings, `principal` split
    /// at its last `/`.
    pub fn issuer_subject(&self) -> Option<(&str, &str)> {
        let claim = |k: &str| self.claims.get(k).and_then(serde_json::Value::as_str);
        match (claim("iss"), claim("sub")) {
            (Some(iss), Some(sub)) => Some((iss, sub)),
            _ => self.principal.rsplit_once('/'),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plaintext connection from 127.0.0.1 to port 80.
    pub(crate) fn connection() -> Connection<'static> {
        Connection {
            source_ip: [127, 0, 0, 1].into(),
            remote_ip: [127, 0, 0, 1].into(),
            destination_ip: [127, 0, 0, 1].into(),
            destination_port: 80,
            principal: None,
            sni: None,
        }
    }

    #[test]
    fn namespace_from_principal() {
        let mut c = Connection {
            source_ip: [127, 0, 0, 1].into(),
            remote_ip: [127, 0, 0, 1].into(),
            destination_ip: [127, 0, 0, 1].into(),
            destination_port: 80,
            principal: Some("cluster.local/ns/demo/sa/frontend"),
            sni: None,
        };
        assert_eq!(c.namespace(), Some("demo"));
        c.principal = Some("cluster.local/x/demo/sa/frontend");
        assert_eq!(c.namespace(), None);
        c.principal = None;
        assert_eq!(c.namespace(), None);
    }
}
