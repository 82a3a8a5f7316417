//! The inbound listener (mesh → app): mutual TLS as the port's mode demands, the peer's
//! identity to the app (XFCC), authentication and authorization, then the local app.

use std::sync::Arc;

use bytes::Bytes;
use halyard_certs::tls::{ALPN_H2, ALPN_HTTP11};
use halyard_xds::{MtlsMode, Protocol};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use super::accept::detect_for;
use super::http::{carry, connect, strip_mesh_headers};
use halyard_filters::attrs::OwnedRequest;

use crate::chain;
use crate::ctx::{ConnInfo, ListenerKind, LocalReply, PeerCert};
use crate::detect::Detected;
use crate::exec::tunnel::Tunnel;
use crate::headers;
use crate::io::body::ProxyBody;
use crate::io::{DownstreamIo, PrefixedIo};
use crate::mtls::{port_from_server_name, read_client_hello, HANDSHAKE_TIMEOUT};
use crate::plan;
use crate::request::RequestCtx;
use crate::routes::normalize_host;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::peer;
use crate::watched::Revoked;

/// A request from the mesh (or, where the port allows, from plaintext clients): the peer's
/// verified identity replaces any XFCC it sent, its metadata is read, policy decides, and
/// the app on the workload port gets it.
pub(super) async fn request(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    ex: &mut RequestCtx,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, LocalReply> {
    let mesh = strip_mesh_headers(&mut req);
    // Only a sidecar may say the request was HTTP/1.1 before it crossed the mesh as HTTP/2.
    let orig_h1 = mesh.orig_h1 && conn.peer_cert.is_some();
    // Only what this proxy verified may reach the app as the client certificate.
    let h = req.headers_mut();
    if mesh.xfcc {
        h.remove(&headers::XFCC);
    }
    if let Some(peer) = &conn.peer_cert {
        h.insert(headers::XFCC.clone(), peer.xfcc.clone());
        // Only an authenticated mesh peer may say which workload it is.
        ex.peer_meta = mesh.meta.as_ref().and_then(peer::decode);
    }
    if let Some(host) = plan::http_authority(&req).map(|a| normalize_host(a).0) {
        ex.service = snap
            .outbound
            .cluster_for_host(host)
            .map(|c| c.service.clone());
    }
    let tunnel_opener = req.method() == Method::CONNECT || headers::is_upgrade(req.headers());
    // A gRPC call may stream for as long as a tunnel lives: it is watched the same way.
    let watch_call = ex.grpc && !tunnel_opener && snap.settings.reset_denied_streams;
    if snap.inbound_chain.is_some() || tunnel_opener || watch_call {
        let port = conn
            .dst_port
            .or_else(|| snap.inbound.target(None).map(|t| t.port))
            .unwrap_or(0);
        let (mut parts, body) = req.into_parts();
        if let Some(chain) = &snap.inbound_chain {
            chain::run(chain, shared, conn, port, &mut parts, ex).await?;
        }
        if tunnel_opener || watch_call {
            // It outlives this decision: it is decided again when the policy changes.
            let decided = OwnedRequest::of(&parts, ex.notes.auth.as_deref().cloned());
            if tunnel_opener {
                ex.tunnel_request = Some(Box::new(decided));
            } else {
                let conns = &shared.open_conns;
                let c = ex.conn.clone();
                ex.stream_watch = Some(conns.register_stream(c, port, decided, snap.generation));
            }
        }
        req = Request::from_parts(parts, body);
    }
    if req.method() == Method::CONNECT {
        let target = plan::connect_inbound(snap, &req)?;
        return connect(shared, target, req, ex, tunnel).await;
    }
    let plan = plan::inbound(snap, &req, conn, orig_h1)?;
    let Some(closed) = ex
        .stream_watch
        .as_ref()
        .map(|r| r.watched().closed().clone())
    else {
        return carry(shared, snap, conn, req, plan, ex, tunnel).await;
    };
    // Revoked before the app answered: the call gets the answer a new one would.
    match closed
        .run_until_cancelled(carry(shared, snap, conn, req, plan, ex, tunnel))
        .await
    {
        Some(answer) => answer,
        None => Err(ex
            .stream_watch
            .as_ref()
            .and_then(|r| r.watched().why())
            .map_or(LocalReply::FORBIDDEN, Revoked::reply)),
    }
}

/// Applies the inbound port's mutual TLS mode: terminates mesh TLS (recording the verified
/// peer), passes other TLS or plaintext through as the mode allows, and refuses the rest.
/// Returns the inner protocol and stream, or `None` when the connection was refused.
pub(super) async fn security(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    info: &mut ConnInfo,
    stream: TcpStream,
    proto: Detected,
    prefix: Bytes,
) -> Option<(Detected, DownstreamIo)> {
    let metrics = &shared.metrics;
    let refuse = |reason: &str| {
        metrics.tls_failure(ListenerKind::Inbound, reason);
        tracing::debug!(peer = %info.peer, reason, "inbound connection refused");
        None
    };
    if proto != Detected::Tls {
        if snap.inbound.mtls(info.dst_port) == MtlsMode::Strict {
            return refuse("plaintext");
        }
        metrics
            .inbound_security
            .with_label_values(&["plaintext"])
            .inc();
        return Some((proto, DownstreamIo::Plain(PrefixedIo::new(prefix, stream))));
    }
    let hello = match read_client_hello(stream, prefix, HANDSHAKE_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(peer = %info.peer, error = %e, "no ClientHello");
            return refuse("malformed");
        }
    };
    info.sni = hello.server_name().map(Into::into);
    // Without iptables the server name tells which workload port the client meant.
    if info.dst_port.is_none() {
        info.dst_port = hello.server_name().and_then(port_from_server_name);
    }
    let mode = snap.inbound.mtls(info.dst_port);
    let tls = match (mode, &shared.mtls) {
        (MtlsMode::Disable, _) | (MtlsMode::Permissive, None) => {
            metrics
                .inbound_security
                .with_label_values(&["passthrough"])
                .inc();
            return Some((Detected::Tls, DownstreamIo::Plain(hello.into_passthrough())));
        }
        (_, None) => return refuse("no_certificate"),
        (_, Some(tls)) => tls,
    };
    let mut stream = match tls.accept(hello).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(peer = %info.peer, error = %e, "inbound mutual TLS failed");
            return refuse(e.reason());
        }
    };
    let (alpn, peer) = {
        let conn = stream.get_ref().1;
        (
            conn.alpn_protocol().map(<[u8]>::to_vec),
            PeerCert::of(conn, tls.identity()),
        )
    };
    info.peer_cert = peer;
    metrics
        .inbound_security
        .with_label_values(&["mutual_tls"])
        .inc();
    let (proto, prefix) = inner_protocol(snap, info, &mut stream, alpn.as_deref()).await?;
    Some((
        proto,
        DownstreamIo::Tls(Box::new(PrefixedIo::new(prefix, stream))),
    ))
}

/// Authorizes an inbound TCP connection with the rules that need only L4 attributes.
pub(super) fn tcp_allowed(shared: &Shared, snap: &Snapshot, info: &ConnInfo, port: u16) -> bool {
    snap.inbound_chain.as_ref().is_none_or(|c| {
        c.rbac
            .allows_connection(&info.attrs(port), &shared.metrics.filters)
    })
}

/// The protocol inside mesh TLS: from ALPN, else detected (as the port declares it). Mesh
/// TLS carries no TLS inside as far as we are concerned: that is relayed as bytes.
async fn inner_protocol<I: tokio::io::AsyncRead + Unpin>(
    snap: &Snapshot,
    info: &ConnInfo,
    stream: &mut I,
    alpn: Option<&[u8]>,
) -> Option<(Detected, Bytes)> {
    let (proto, prefix) = match alpn {
        Some(ALPN_H2) => (Detected::Http2, Bytes::new()),
        Some(ALPN_HTTP11) => (Detected::Http1, Bytes::new()),
        _ => {
            let hint = snap
                .inbound
                .target(info.dst_port)
                .map_or(Protocol::Auto, |t| t.protocol);
            match detect_for(stream, hint, false, snap.settings.detection_timeout).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(peer = %info.peer, error = %e, "read failed after TLS handshake");
                    return None;
                }
            }
        }
    };
    let proto = if proto == Detected::Tls {
        Detected::Tcp
    } else {
        proto
    };
    Some((proto, prefix))
}
