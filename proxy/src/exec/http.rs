//! Carrying out a forwarding plan for one HTTP request: the upstream request's headers and
//! body (kept for retries and mirrors), mirrors, admission, the attempts under the route's
//! timeout, and the response on its way back.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::attempts::{self, Call, Template};
use super::mirror;
use super::tunnel::{Tunnel, TunnelEnd};
use crate::chain::ops;
use crate::ctx::ListenerKind;
use crate::ctx::{ConnInfo, LocalReply};
use crate::headers;
use crate::io::body::ProxyBody;
use crate::io::replay::{ReplayBody, REPLAY_LIMIT};
use crate::plan::{Forward, Target};
use crate::request::RequestCtx;
use halyard_filters::fault::Fault;
use halyard_filters::filter::Filter as _;
use halyard_filters::header_ops::RouteHeaders;

use crate::routes::{Destination, Matched, Mirror, RouteAction};
use crate::shared::Shared;
use crate::snapshot::{defaults, Snapshot};
use crate::telemetry::peer::{self, PEER_METADATA, PEER_METADATA_ID};
use crate::upstream::hash::Ring;
use crate::upstream::HttpVersion;

/// Carries out a forwarding plan: the upstream request, mirrors, admission, the attempts,
/// and the response on its way back.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    matched: Option<Matched<'_>>,
    fwd: Forward<'_>,
    ex: &mut RequestCtx,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, LocalReply> {
    let target = &fwd.target;
    record_target(ex, target);
    let action = matched.map(|m| &m.route.action);
    let downstream_upgrade = fwd.upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut set_cookie = None;
    let hash = match (target.ring, target.cluster.and_then(|c| c.hash.as_ref())) {
        (Some(ring), Some(on)) => {
            ops::hash_key(on, &req, conn.peer.ip(), &mut set_cookie).map(|k| (ring, k))
        }
        _ => None,
    };
    let (mut parts, body) = req.into_parts();
    upstream_headers(snap, &mut parts, matched, &fwd)?;
    let counter = Arc::new(AtomicU64::new(0));
    ex.request_bytes = Some(counter.clone());
    let mirrors = action.map_or(&[][..], |a| &a.mirrors[..]);
    let keep = !fwd.upgrade && (fwd.retry.attempts > 0 || !mirrors.is_empty());
    let (body, replay) = if keep && !body.is_end_stream() {
        // The kept reader is never sent itself: retries and mirrors replay from it.
        let kept = ReplayBody::new(body, REPLAY_LIMIT, Some(counter));
        let first = kept.replay();
        (
            first.map_or(ProxyBody::Empty, |b| ProxyBody::Replay { body: b }),
            Some(kept),
        )
    } else {
        (ProxyBody::streamed(body, Some(counter)), None)
    };
    let mut upstream_req = Request::from_parts(parts, body);
    set_uri_for(&mut upstream_req, fwd.version)?;
    spawn_mirrors(shared, snap, mirrors, &upstream_req, replay.as_ref());
    let template = (keep && fwd.retry.attempts > 0).then(|| Template::of(&upstream_req, replay));
    let resp = attempt(shared, &fwd, hash, upstream_req, template.as_ref(), ex).await?;
    let back = Back {
        action,
        dest: fwd.dest,
        set_cookie,
        downstream_upgrade,
        idle: target.idle,
    };
    Ok(respond(snap, conn, ex, resp, back, tunnel))
}

/// Notes the service and cluster a request goes to.
fn record_target(ex: &mut RequestCtx, target: &Target<'_>) {
    ex.service_port = target.service_port;
    if let Some(c) = target.cluster {
        ex.cluster = Some(c.name.clone());
        ex.service = Some(c.service.clone());
    } else if target.is_passthrough() {
        ex.cluster = Some("PassthroughCluster".into());
    }
}

/// What the proxy does to the headers of every request it forwards, before the route's own
/// changes: hop-by-hop ones gone, `Expect` answered here, a request id and forwarding added.
pub fn clean_headers(parts: &mut Parts, conn: &ConnInfo, upgrade: bool, ex: &mut RequestCtx) {
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    // 100-continue is answered by our server side when the body is first read.
    parts.headers.remove(header::EXPECT);
    ex.request_id = Some(headers::ensure_request_id(&mut parts.headers));
    headers::add_forwarded(&mut parts.headers, conn.peer.ip());
}

/// The upstream request's headers after the route's filters: its rewrite, and Istio's
/// metadata exchange for mesh peers.
fn upstream_headers(
    snap: &Snapshot,
    parts: &mut Parts,
    matched: Option<Matched<'_>>,
    fwd: &Forward<'_>,
) -> Result<(), LocalReply> {
    if let Some(m) = matched {
        if let Some(rw) = &m.route.action.rewrite {
            ops::rewrite(rw, m.by, parts)?;
        }
    }
    if fwd.peer_metadata {
        // Tell mesh peers who is calling (Istio's metadata exchange); never external hosts.
        parts
            .headers
            .insert(PEER_METADATA, snap.local.headers.metadata.clone());
        parts
            .headers
            .insert(PEER_METADATA_ID, snap.local.headers.id.clone());
    }
    Ok(())
}

/// Sends each mirror its share of copies (skipped, and counted, when the body is too large
/// to keep).
fn spawn_mirrors(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    mirrors: &[Mirror],
    req: &Request<ProxyBody>,
    replay: Option<&ReplayBody<Incoming>>,
) {
    for m in mirrors {
        if !Fault::roll(m.share) {
            continue;
        }
        let Some(c) = snap.outbound.clusters.get(m.destination.cluster) else {
            continue;
        };
        match ops::copy_request(req, replay) {
            Some(copy) => mirror::spawn(shared, c.clone(), m.destination.port, copy),
            None => shared
                .metrics
                .traffic
                .mirrors
                .with_label_values(&["skipped"])
                .inc(),
        }
    }
}

/// Admission by the cluster's circuit breaker, then the attempts, all under the route's
/// timeout.
async fn attempt(
    shared: &Arc<Shared>,
    fwd: &Forward<'_>,
    hash: Option<(&Ring, u64)>,
    req: Request<ProxyBody>,
    template: Option<&Template>,
    ex: &mut RequestCtx,
) -> Result<Response<Incoming>, LocalReply> {
    let target = &fwd.target;
    if let Some(c) = target.cluster {
        let wait = fwd.timeout.unwrap_or(defaults::CONNECT_TIMEOUT);
        let http1 = fwd.version == HttpVersion::Http1;
        ex.guards.admitted = Some(attempts::admit(shared, c, http1, wait).await?);
    }
    let call = Call {
        cluster: target.cluster.map(|c| &**c),
        endpoints: target.endpoints.as_slice(),
        lb: target.lb,
        rr: target.rr.unwrap_or(&shared.unclustered_rr),
        hash,
        version: fwd.version,
        upgrade: fwd.upgrade,
        retry: fwd.retry,
        max_requests_per_connection: target
            .cluster
            .map_or(0, |c| c.limits.max_requests_per_connection),
    };
    let send = attempts::send(shared, &call, req, template, ex);
    let (resp, pooled) = match fwd.timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| LocalReply::TIMEOUT)??,
        None => send.await?,
    };
    ex.guards.pooled = pooled;
    Ok(resp)
}

/// What the way back needs from the way out.
struct Back<'s> {
    action: Option<&'s RouteAction>,
    dest: Option<&'s Destination>,
    set_cookie: Option<HeaderValue>,
    downstream_upgrade: Option<OnUpgrade>,
    idle: Duration,
}

/// The upstream's response on its way back: hop-by-hop headers, the tunnel of a switched
/// protocol, the route's response headers, a hash cookie, and Istio's peer metadata.
fn respond(
    snap: &Snapshot,
    conn: &ConnInfo,
    ex: &mut RequestCtx,
    mut resp: Response<Incoming>,
    back: Back<'_>,
    tunnel: &mut Option<Tunnel>,
) -> Response<ProxyBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, back.downstream_upgrade) {
        (true, Some(down)) => {
            *tunnel = Some(Tunnel {
                down,
                up: TunnelEnd::Upgraded(hyper::upgrade::on(&mut resp)),
                idle: back.idle,
                slot: None,
            });
            headers::remove_hop_by_hop(resp.headers_mut(), true);
        }
        _ => headers::remove_hop_by_hop(resp.headers_mut(), false),
    }
    let (mut parts, body) = resp.into_parts();
    let route_headers = RouteHeaders {
        dest: back.dest.map(|d| &d.headers),
        route: back.action.map(|a| &a.headers),
    };
    route_headers.on_response(&mut parts, &mut ex.notes);
    let h = &mut parts.headers;
    if let Some(c) = back.set_cookie {
        h.append(header::SET_COOKIE, c);
    }
    let [meta, meta_id] = headers::present(h, [&PEER_METADATA, &PEER_METADATA_ID]);
    let meta = meta.then(|| h.remove(&PEER_METADATA)).flatten();
    if meta_id {
        h.remove(&PEER_METADATA_ID);
    }
    match conn.listener {
        ListenerKind::Outbound if ex.upstream_identity.is_some() => {
            ex.peer_meta = meta.as_ref().and_then(peer::decode);
        }
        ListenerKind::Inbound if conn.peer_cert.is_some() => {
            h.insert(PEER_METADATA, snap.local.headers.metadata.clone());
            h.insert(PEER_METADATA_ID, snap.local.headers.id.clone());
        }
        _ => {}
    }
    Response::from_parts(parts, ProxyBody::streamed(body, None))
}

/// Puts the URI and Host in the form the upstream protocol wants.
pub fn set_uri_for<B>(req: &mut Request<B>, version: HttpVersion) -> Result<(), LocalReply> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
            .ok_or(LocalReply::BAD_REQUEST)?,
    };
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match version {
        HttpVersion::Http1 => {
            if !req.headers().contains_key(header::HOST) {
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| LocalReply::BAD_REQUEST)?;
                req.headers_mut().insert(header::HOST, host);
            }
            *req.uri_mut() = Uri::from(pq);
            *req.version_mut() = Version::HTTP_11;
        }
        HttpVersion::Http2 => {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(authority);
            uri.path_and_query = Some(pq);
            *req.uri_mut() = Uri::from_parts(uri).map_err(|_| LocalReply::BAD_REQUEST)?;
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
        }
    }
    Ok(())
}
