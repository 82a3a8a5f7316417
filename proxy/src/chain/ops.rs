//! Route operations around forwarding: path/authority rewrites, consistent-hash keys and
//! request copies for mirrors.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Uri};
use hyper::body::Incoming;

use crate::ctx::LocalReply;
use crate::io::body::ProxyBody;
use crate::io::replay::ReplayBody;
use crate::routes::{query_value, Rewrite, RouteMatch};
use crate::snapshot::HashOn;
use crate::upstream::hash::hash_key as hash_bytes;

/// Rewrites the path (the prefix `by` matched, else the whole path) and the authority.
pub fn rewrite(rw: &Rewrite, by: Option<&RouteMatch>, parts: &mut Parts) -> Result<(), LocalReply> {
    let new_path = rw.path(
        parts.uri.path(),
        parts.uri.query(),
        by.and_then(RouteMatch::uri_prefix),
    );
    if new_path.is_none() && rw.authority.is_none() {
        return Ok(());
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(p) = new_path {
        uri.path_and_query = Some(PathAndQuery::try_from(p).map_err(|_| LocalReply::BAD_REQUEST)?);
    }
    if let Some(a) = &rw.authority {
        if uri.authority.is_some() {
            uri.authority = Some(
                a.to_str()
                    .ok()
                    .and_then(|a| a.parse().ok())
                    .ok_or(LocalReply::BAD_REQUEST)?,
            );
        }
        parts.headers.insert(header::HOST, a.clone());
    }
    parts.uri = Uri::from_parts(uri).map_err(|_| LocalReply::BAD_REQUEST)?;
    Ok(())
}

/// The consistent-hash key of a request; a missing hash cookie with a ttl is generated and
/// its `Set-Cookie` returned in `set_cookie`. None when the request has no key (the cluster's
/// balancer then decides).
pub fn hash_key(
    on: &HashOn,
    req: &Request<Incoming>,
    client: IpAddr,
    set_cookie: &mut Option<HeaderValue>,
) -> Option<u64> {
    match on {
        HashOn::Header(name) => req.headers().get(name).map(|v| hash_bytes(v.as_bytes())),
        HashOn::SourceIp => Some(match client {
            IpAddr::V4(a) => hash_bytes(&a.octets()),
            IpAddr::V6(a) => hash_bytes(&a.octets()),
        }),
        HashOn::Query(name) => {
            query_value(req.uri().query(), name).map(|v| hash_bytes(v.as_bytes()))
        }
        HashOn::Cookie { name, path, ttl } => {
            let found = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == &**name).then(|| hash_bytes(v.as_bytes()))
                });
            if found.is_some() {
                return found;
            }
            let ttl = (*ttl)?;
            let value = format!("{:016x}", fastrand::u64(..));
            let mut cookie = format!("{name}={value}; Max-Age={}; HttpOnly", ttl.as_secs().max(1));
            if !path.is_empty() {
                cookie.push_str("; Path=");
                cookie.push_str(path);
            }
            *set_cookie = HeaderValue::from_str(&cookie).ok();
            Some(hash_bytes(value.as_bytes()))
        }
    }
}

/// A copy of `req` for a mirror (None when its body can no longer be replayed).
pub fn copy_request(
    req: &Request<ProxyBody>,
    body: Option<&ReplayBody<Incoming>>,
) -> Option<Request<ProxyBody>> {
    let body = match body {
        Some(b) => ProxyBody::Replay { body: b.replay()? },
        None if http_body::Body::is_end_stream(req.body()) => ProxyBody::full(Bytes::new()),
        None => return None,
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}
