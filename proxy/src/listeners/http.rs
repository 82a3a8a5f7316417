//! One HTTP request from a downstream connection, whichever listener accepted it: its
//! context and span begin here, the listener's own steps decide and carry it out, and a
//! local reply or the upstream's response goes back (a tunnel takes the record with it).

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::{inbound, outbound};
use halyard_filters::header_ops::RouteHeaders;

use crate::chain;
use crate::ctx::{ConnInfo, ListenerKind, LocalReply};
use crate::exec::tunnel::{self, Tunnel};
use crate::io::body::{ProxyBody, ResponseBody};
use crate::io::reply::Render;
use crate::plan::{HttpPlan, Step, Target};
use crate::request::{grpc_status_of, RequestCtx};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::trace::SpanKind;

/// The response a request gets, with the context that is finished when its body ends.
pub type HttpResponse = Response<ResponseBody<Option<Box<RequestCtx>>>>;

/// Handles one request from a downstream connection.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> HttpResponse {
    // Room for the headers the proxy adds (request id, forwarding, trace context, peer
    // metadata) up front, instead of growing the map once or twice on the way.
    req.headers_mut().reserve(8);
    let snap = shared.live.load();
    let mut ex = RequestCtx::start(&shared, &conn, &req, &snap.settings, &snap.local);
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
    let result = match conn.listener {
        ListenerKind::Outbound => {
            outbound::request(&shared, &snap, &conn, req, &mut ex, &mut tunnel).await
        }
        ListenerKind::Inbound => {
            inbound::request(&shared, &snap, &conn, req, &mut ex, &mut tunnel).await
        }
    };
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
            let watch = ex.tunnel_request.take().map(|r| {
                let port = conn.dst_port.or(ex.service_port).unwrap_or(0);
                let conns = &shared.open_conns;
                conns.register(conn.clone(), port, Some(*r), snap.generation)
            });
            shared.tasks.spawn(tunnel::run(t, ex, watch));
            Response::from_parts(parts, ResponseBody::new(body, None))
        }
        None => {
            let cut = ex.cut_signal();
            let body = ResponseBody::cut_by(body, Some(Box::new(ex)), cut);
            Response::from_parts(parts, body)
        }
    }
}

/// Carries out an HTTP plan: the route's filters first (its fault; for a forwarded request
/// the header operations of its route and destination), then its step (forward, or answer with
/// a local reply such as a redirect).
pub(super) async fn carry(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    plan: HttpPlan<'_>,
    ex: &mut RequestCtx,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, LocalReply> {
    let route = plan.route.map(|m| &m.route.action);
    if let Some(m) = plan.route {
        ex.route = Some(m.route.name.clone());
    }
    let fwd = match plan.step {
        Step::Forward(fwd) => fwd,
        Step::Reply(local) => {
            if let Some(fault) = plan.fault {
                let (mut parts, _) = req.into_parts();
                chain::run(fault, shared, conn, 0, &mut parts, ex).await?;
            }
            return Err(local);
        }
    };
    let (mut parts, body) = req.into_parts();
    // What the proxy does to every forwarded request comes before the route's own changes,
    // which may override it.
    crate::exec::http::clean_headers(&mut parts, conn, fwd.upgrade, ex);
    let headers = RouteHeaders {
        dest: fwd.dest.map(|d| &d.headers),
        route: route.map(|a| &a.headers),
    };
    let port = fwd.target.service_port.unwrap_or(0);
    chain::run(&(plan.fault, headers), shared, conn, port, &mut parts, ex).await?;
    let req = Request::from_parts(parts, body);
    crate::exec::http::send(shared, snap, conn, req, plan.route, fwd, ex, tunnel).await
}

/// CONNECT: opens the tunnel to its planned target.
pub(super) async fn connect(
    shared: &Shared,
    target: Target<'_>,
    mut req: Request<Incoming>,
    ex: &mut RequestCtx,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, LocalReply> {
    tunnel::connect(shared, target, &mut req, ex, tunnel).await
}

/// The headers only mesh peers may send, as a request arrived with them.
pub(super) struct MeshHeaders {
    /// `halyard-orig-proto: HTTP/1.1` was there (to be trusted from a verified peer only).
    pub orig_h1: bool,
    /// The peer-metadata header (to be decoded from a verified peer only).
    pub meta: Option<http::HeaderValue>,
    /// An `x-forwarded-client-cert` header was there.
    pub xfcc: bool,
}

/// Takes out the headers only mesh peers may send: `halyard-orig-proto` and the
/// peer-metadata pair (an app's copy is never passed on). XFCC is only looked for.
pub(super) fn strip_mesh_headers(req: &mut Request<Incoming>) -> MeshHeaders {
    use crate::headers::{self, ORIG_PROTO, XFCC};
    use crate::telemetry::peer::{PEER_METADATA, PEER_METADATA_ID};
    let [orig_proto, meta, meta_id, xfcc] = headers::present(
        req.headers(),
        [&ORIG_PROTO, &PEER_METADATA, &PEER_METADATA_ID, &XFCC],
    );
    let h = req.headers_mut();
    let orig_h1 = orig_proto && h.remove(&ORIG_PROTO).is_some();
    let meta = meta.then(|| h.remove(&PEER_METADATA)).flatten();
    if meta_id {
        h.remove(&PEER_METADATA_ID);
    }
    MeshHeaders {
        orig_h1,
        meta,
        xfcc,
    }
}
