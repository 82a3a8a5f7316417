//! Forwarding one HTTP request: pick the target, fix headers, choose an endpoint, send with
//! retries on connect failure, and hand back the streamed response.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use hyper::upgrade::OnUpgrade;

use crate::http::attempts::{self, note_connect_failure, Call, Template};
use crate::http::body::{OnFinish, ProxyBody, ResponseBody};
use crate::http::headers;
use crate::http::local::Local;
use crate::http::mirror;
use crate::http::ops;
use crate::http::policy::{self, Refusal};
use crate::http::replay::{ReplayBody, REPLAY_LIMIT};
use crate::io::UpstreamIo;
use crate::mtls::Alpn;
use crate::plan::{self, Forward, Step};
use crate::routes::{normalize_host, Destination, Fault, Matched, RouteAction};
use crate::shared::Shared;
use crate::snapshot::{defaults, Snapshot};
use crate::telemetry::access_log::{grpc_status_of, Exchange};
use crate::telemetry::flags::Flags;
use crate::telemetry::peer::{self, PEER_METADATA, PEER_METADATA_ID};
use crate::telemetry::trace::SpanKind;
use crate::telemetry::ListenerKind;
use crate::upstream::{pick, Avoid, HttpVersion, Upstream};

pub use super::conn::ConnInfo;

/// Attempts to open a CONNECT tunnel (Istio's default: 2 retries).
const CONNECT_ATTEMPTS: u32 = 3;

/// A connection to splice with the downstream once it is upgraded (WebSocket, CONNECT).
struct Tunnel {
    down: OnUpgrade,
    up: TunnelEnd,
    idle: Duration,
}

/// The upstream side of a tunnel.
enum TunnelEnd {
    /// An upstream HTTP connection that switched protocols.
    Upgraded(OnUpgrade),
    /// A connection opened for CONNECT.
    Io(UpstreamIo),
}

/// Handles one request from a downstream connection.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<ResponseBody<Option<Box<Exchange>>>> {
    // Room for the headers the proxy adds (request id, forwarding, trace context, peer
    // metadata) up front, instead of growing the map once or twice on the way.
    req.headers_mut().reserve(8);
    let snap = shared.live.load();
    let mut ex = Exchange::start(&shared, &conn, &req, &snap.settings, &snap.local);
    if snap.local.tracing.is_some() {
        let kind = match conn.listener {
            ListenerKind::Inbound => SpanKind::Server,
            ListenerKind::Outbound => SpanKind::Client,
        };
        // Rewritten before anything else, so that local replies are traced too.
        ex.span = shared
            .tracers
            .begin(snap.local.tracing.as_ref(), kind, req.headers_mut())
            .map(Box::new);
    }
    let mut tunnel = None;
    let result = forward(&shared, &snap, &conn, req, &mut ex, &mut tunnel).await;
    let resp = match result {
        Ok(resp) => resp,
        Err(local) => {
            ex.flags.set(local.flags);
            local.response_for(ex.grpc)
        }
    };
    ex.code = resp.status().as_u16();
    if ex.grpc {
        // A trailers-only gRPC response carries its status in the headers.
        ex.grpc_status = grpc_status_of(resp.headers());
    }
    let (parts, body) = resp.into_parts();
    match tunnel {
        // The exchange ends with the tunnel, not with this (empty) response.
        Some(t) => {
            shared.tasks.spawn(run_tunnel(t, ex));
            Response::from_parts(parts, ResponseBody::new(body, None))
        }
        None => Response::from_parts(parts, ResponseBody::new(body, Some(Box::new(ex)))),
    }
}

/// Relays a tunnel to its end, then records the exchange with the bytes it carried.
async fn run_tunnel(t: Tunnel, mut ex: Exchange) {
    let result = match t.up {
        TunnelEnd::Upgraded(up) => match tokio::try_join!(t.down, up) {
            Ok((d, u)) => {
                let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                Some(crate::tcp::relay(&mut d, &mut u, t.idle).await)
            }
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                None
            }
        },
        TunnelEnd::Io(mut up) => match t.down.await {
            Ok(d) => {
                let mut d = TokioIo::new(d);
                Some(crate::tcp::relay(&mut d, &mut up, t.idle).await)
            }
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                None
            }
        },
    };
    let moved = match result {
        Some(Ok(m)) => m,
        Some(Err(crate::tcp::RelayError::Idle(m))) => {
            ex.flags.set(Flags::IDLE);
            m
        }
        Some(Err(crate::tcp::RelayError::Io { moved, source })) => {
            tracing::debug!(error = %source, "tunnel ended with error");
            moved
        }
        None => {
            ex.flags.set(Flags::DC);
            Default::default()
        }
    };
    ex.request_bytes = Some(Arc::new(AtomicU64::new(moved.client_to_server)));
    ex.finish(true, moved.server_to_client);
}

async fn forward(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    ex: &mut Exchange,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, Local> {
    let [orig_proto, meta, meta_id, xfcc] = headers::present(
        req.headers(),
        [
            &headers::ORIG_PROTO,
            &PEER_METADATA,
            &PEER_METADATA_ID,
            &headers::XFCC,
        ],
    );
    // Only a sidecar may say the request was HTTP/1.1 before it crossed the mesh as HTTP/2.
    let orig_h1 = orig_proto
        && req.headers_mut().remove(&headers::ORIG_PROTO).is_some()
        && conn.listener == ListenerKind::Inbound
        && conn.peer_cert.is_some();
    // Peer metadata is ours to add and read; an app's copy is never passed on.
    let meta = meta
        .then(|| req.headers_mut().remove(&PEER_METADATA))
        .flatten();
    if meta_id {
        req.headers_mut().remove(&PEER_METADATA_ID);
    }
    if conn.listener == ListenerKind::Inbound {
        // Only what this proxy verified may reach the app as the client certificate.
        let h = req.headers_mut();
        if xfcc {
            h.remove(&headers::XFCC);
        }
        if let Some(peer) = &conn.peer_cert {
            h.insert(headers::XFCC.clone(), peer.xfcc.clone());
            // Only an authenticated mesh peer may say which workload it is.
            ex.peer_meta = meta.as_ref().and_then(peer::decode);
        }
        if let Some(host) = plan::http_authority(&req).map(|a| normalize_host(a).0) {
            ex.service = snap.cluster_for_host(host).map(|c| c.service.clone());
        }
    }
    if conn.listener == ListenerKind::Inbound && !(snap.rbac.is_empty() && snap.authn.is_empty()) {
        let port = conn
            .dst_port
            .or_else(|| snap.inbound_target(None).map(|t| t.port))
            .unwrap_or(0);
        let (mut parts, body) = req.into_parts();
        match policy::inbound(shared, snap, conn, port, &mut parts, ex).await {
            Ok(()) => {}
            Err(Refusal::Local(local)) => return Err(local),
            Err(Refusal::Unauthenticated(resp)) => return Ok(resp),
        }
        req = Request::from_parts(parts, body);
    }
    if req.method() == Method::CONNECT {
        return connect_tunnel(shared, snap, req, ex, tunnel).await;
    }
    let plan = match conn.listener {
        ListenerKind::Inbound => plan::inbound(snap, &req, conn, orig_h1)?,
        ListenerKind::Outbound => plan::outbound(snap, &req, conn, orig_h1, fastrand::u64(..))?,
    };
    if let Some(m) = plan.route {
        ex.route = Some(m.route.name.clone());
    }
    if let Some(fault) = plan.fault {
        if let Some(resp) = ops::inject_fault(shared, fault, ex).await {
            return Ok(resp);
        }
    }
    match plan.step {
        Step::Forward(fwd) => send(shared, snap, conn, req, plan.route, fwd, ex, tunnel).await,
        Step::Redirect {
            redirect,
            host,
            port,
        } => {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            Ok(ops::redirect(redirect, &host, port, pq))
        }
        Step::Reply(local) => Err(local),
    }
}

/// Carries out a forwarding plan: the upstream request (headers, body kept for retries and
/// mirrors), admission, the attempts, and the response on its way back.
#[allow(clippy::too_many_arguments)]
async fn send(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    matched: Option<Matched<'_>>,
    fwd: Forward<'_>,
    ex: &mut Exchange,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, Local> {
    let target = &fwd.target;
    ex.service_port = target.service_port;
    if let Some(c) = target.cluster {
        ex.cluster = Some(c.name.clone());
        ex.service = Some(c.service.clone());
    } else if target.is_passthrough() {
        ex.cluster = Some("PassthroughCluster".into());
    }
    let action = matched.map(|m| &m.route.action);
    let (dest, retry, version, upgrade) = (fwd.dest, fwd.retry, fwd.version, fwd.upgrade);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut set_cookie = None;
    let hash = match (target.ring, target.cluster.and_then(|c| c.hash.as_ref())) {
        (Some(ring), Some(on)) => {
            ops::hash_key(on, &req, conn.peer.ip(), &mut set_cookie).map(|k| (ring, k))
        }
        _ => None,
    };

    let (mut parts, body) = req.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    // 100-continue is answered by our server side when the body is first read.
    parts.headers.remove(header::EXPECT);
    ex.request_id = Some(headers::ensure_request_id(&mut parts.headers));
    headers::add_forwarded(&mut parts.headers, conn.peer.ip());
    if let Some(a) = action {
        if let Some(d) = dest {
            d.request_headers.apply(&mut parts.headers);
        }
        a.request_headers.apply(&mut parts.headers);
        if let Some(rw) = &a.rewrite {
            ops::rewrite(rw, matched.and_then(|m| m.by), &mut parts)?;
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
    let counter = Arc::new(AtomicU64::new(0));
    ex.request_bytes = Some(counter.clone());
    let mirrors = action.map_or(&[][..], |a| &a.mirrors[..]);
    let keep = !upgrade && (retry.attempts > 0 || !mirrors.is_empty());
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
    set_uri_for(&mut upstream_req, version)?;
    for m in mirrors {
        if Fault::roll(m.share) {
            if let Some(c) = snap.clusters.get(m.destination.cluster) {
                match ops::copy_request(&upstream_req, replay.as_ref()) {
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
    }
    let template = (keep && retry.attempts > 0).then(|| Template::of(&upstream_req, replay));

    if let Some(c) = target.cluster {
        let wait = fwd.timeout.unwrap_or(defaults::CONNECT_TIMEOUT);
        ex.admitted = Some(attempts::admit(shared, c, version == HttpVersion::Http1, wait).await?);
    }
    let call = Call {
        cluster: target.cluster.map(|c| &**c),
        endpoints: target.endpoints.as_slice(),
        lb: target.lb,
        rr: target.rr.unwrap_or(&shared.inbound_rr),
        hash,
        version,
        upgrade,
        retry,
        max_requests_per_connection: target
            .cluster
            .map_or(0, |c| c.limits.max_requests_per_connection),
    };
    let send = attempts::send(shared, &call, upstream_req, template.as_ref(), ex);
    let (resp, pooled) = match fwd.timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| Local::TIMEOUT)??,
        None => send.await?,
    };
    ex.pooled = pooled;

    let back = Back {
        action,
        dest,
        set_cookie,
        downstream_upgrade,
        idle: target.idle,
    };
    Ok(respond(snap, conn, ex, resp, back, tunnel))
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
    ex: &mut Exchange,
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
            });
            headers::remove_hop_by_hop(resp.headers_mut(), true);
        }
        _ => headers::remove_hop_by_hop(resp.headers_mut(), false),
    }
    if let Some(a) = back.action {
        if let Some(d) = back.dest {
            d.response_headers.apply(resp.headers_mut());
        }
        a.response_headers.apply(resp.headers_mut());
    }
    if let Some(c) = back.set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    let [meta, meta_id] = headers::present(resp.headers(), [&PEER_METADATA, &PEER_METADATA_ID]);
    let meta = meta
        .then(|| resp.headers_mut().remove(&PEER_METADATA))
        .flatten();
    if meta_id {
        resp.headers_mut().remove(&PEER_METADATA_ID);
    }
    match conn.listener {
        ListenerKind::Outbound if ex.upstream_identity.is_some() => {
            ex.peer_meta = meta.as_ref().and_then(peer::decode);
        }
        ListenerKind::Inbound if conn.peer_cert.is_some() => {
            let h = resp.headers_mut();
            h.insert(PEER_METADATA, snap.local.headers.metadata.clone());
            h.insert(PEER_METADATA_ID, snap.local.headers.id.clone());
        }
        _ => {}
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::streamed(body, None))
}

/// Puts the URI and Host in the form the upstream protocol wants.
pub fn set_uri_for<B>(req: &mut Request<B>, version: HttpVersion) -> Result<(), Local> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
            .ok_or(Local::BAD_REQUEST)?,
    };
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match version {
        HttpVersion::Http1 => {
            if !req.headers().contains_key(header::HOST) {
                let host =
                    HeaderValue::from_str(authority.as_str()).map_err(|_| Local::BAD_REQUEST)?;
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
            *req.uri_mut() = Uri::from_parts(uri).map_err(|_| Local::BAD_REQUEST)?;
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
        }
    }
    Ok(())
}

/// `CONNECT host:port`: open a TCP tunnel to the named service (or, with ALLOW_ANY, the
/// named address) and relay bytes once the client's connection is upgraded.
async fn connect_tunnel(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    mut req: Request<Incoming>,
    ex: &mut Exchange,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, Local> {
    let target = plan::connect(snap, &req)?;
    ex.service_port = target.service_port;
    if let Some(c) = target.cluster {
        ex.cluster = Some(c.name.clone());
    } else if target.is_passthrough() {
        ex.cluster = Some("PassthroughCluster".into());
    }
    let (endpoints, lb, idle) = (target.endpoints.as_slice(), target.lb, target.idle);
    let rr = target.rr.unwrap_or(&shared.inbound_rr);
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    let mut attempts = 0;
    let (io, guard) = loop {
        let avoid = Avoid {
            tried: &tried,
            now: Instant::now(),
        };
        let up = pick(endpoints, lb, rr, None, avoid).ok_or(Local::NO_HEALTHY)?;
        ex.upstream = Some(up.authority.clone());
        ex.upstream_identity = up.identity.clone();
        let guard = up.begin();
        match up.connect(shared.mtls.as_deref(), Alpn::Opaque).await {
            Ok(s) => break (s, guard),
            Err(e) => {
                attempts += 1;
                note_connect_failure(shared, ex, &e);
                tracing::debug!(upstream = %up.authority, error = %e, "tunnel connect failed");
                if attempts >= CONNECT_ATTEMPTS {
                    return Err(Local::connect_failed(attempts > 1));
                }
                tried.push(up.clone());
            }
        }
    };
    ex.in_flight = Some(guard);
    *tunnel = Some(Tunnel {
        down: hyper::upgrade::on(&mut req),
        up: TunnelEnd::Io(io),
        idle,
    });
    Ok(Response::new(ProxyBody::Empty))
}
