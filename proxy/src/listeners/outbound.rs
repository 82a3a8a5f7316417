//! The outbound listener (app → mesh): TLS from the app is routed by its server name
//! without being terminated; HTTP requests are planned by route and sent to the service.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use super::http::{carry, connect, strip_mesh_headers};
use crate::ctx::{ConnInfo, LocalReply};
use crate::exec::tunnel::Tunnel;
use crate::io::body::ProxyBody;
use crate::io::{DownstreamIo, PrefixedIo};
use crate::mtls::{read_client_hello, HANDSHAKE_TIMEOUT};
use crate::plan;
use crate::request::RequestCtx;
use crate::shared::Shared;
use crate::snapshot::Snapshot;

/// The app's connection as the outbound side relays it: TLS is read up to its ClientHello
/// (whose server name routes it) and passed on untouched. `None`: no readable ClientHello.
pub(super) async fn downstream(
    info: &mut ConnInfo,
    stream: TcpStream,
    tls: bool,
    prefix: Bytes,
) -> Option<DownstreamIo> {
    if !tls {
        return Some(DownstreamIo::Plain(PrefixedIo::new(prefix, stream)));
    }
    match read_client_hello(stream, prefix, HANDSHAKE_TIMEOUT).await {
        Ok(hello) => {
            info.sni = hello.server_name().map(Into::into);
            Some(DownstreamIo::Plain(hello.into_passthrough()))
        }
        Err(e) => {
            tracing::debug!(peer = %info.peer, error = %e, "outbound TLS without a readable ClientHello");
            None
        }
    }
}

/// An app's request: routed by host, path and headers to a service (or passed through to
/// its original destination), after the route's fault.
pub(super) async fn request(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    ex: &mut RequestCtx,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, LocalReply> {
    // An app cannot speak for a mesh peer: its copies of the mesh headers go.
    strip_mesh_headers(&mut req);
    if req.method() == Method::CONNECT {
        let target = plan::connect(snap, &req)?;
        return connect(shared, target, req, ex, tunnel).await;
    }
    let plan = plan::outbound(snap, &req, conn, false, fastrand::u64(..))?;
    carry(shared, snap, conn, req, plan, ex, tunnel).await
}
