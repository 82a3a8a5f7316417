//! Planning an opaque TCP connection (outbound by server name or original destination,
//! inbound to the app) and an HTTP CONNECT tunnel.

use halyard_xds::Protocol;
use http::{Request, Version};

use super::http::{passthrough, Endpoints, Target};
use crate::ctx::ConnInfo;
use crate::ctx::ListenerKind;
use crate::ctx::LocalReply;
use crate::snapshot::Snapshot;

/// Plans a TCP connection. Outbound: a TLS route for its server name, a TCP route or the
/// service at its original destination, else the original destination itself (ALLOW_ANY);
/// inbound: the app behind the workload port. `roll`: a random number for weighted routes.
pub fn tcp<'s>(snap: &'s Snapshot, conn: &ConnInfo, roll: u64) -> Result<Target<'s>, LocalReply> {
    match conn.listener {
        ListenerKind::Inbound => {
            let t = snap
                .inbound
                .target(conn.dst_port)
                .ok_or(LocalReply::NO_ROUTE)?;
            Ok(Target::single(
                Endpoints::Shared(std::slice::from_ref(&t.app)),
                t.protocol,
                Some(t.port),
            ))
        }
        ListenerKind::Outbound => {
            if let Some((c, p)) = snap
                .outbound
                .tcp_target(conn.orig_dst, conn.sni.as_deref(), roll)
            {
                return Ok(Target::service(c, p));
            }
            match conn.orig_dst.filter(|_| !snap.outbound.registry_only) {
                Some(dst) => Ok(passthrough(dst.ip().to_string(), dst.port())),
                None => Err(LocalReply::NO_ROUTE),
            }
        }
    }
}

/// Plans an inbound `CONNECT host:port` (a mesh peer's tunnel, over HTTP/2 or HTTP/1.1): the
/// workload port it names, and the app behind it.
pub fn connect_inbound<'s, B>(
    snap: &'s Snapshot,
    req: &Request<B>,
) -> Result<Target<'s>, LocalReply> {
    let authority = req.uri().authority().ok_or(LocalReply::BAD_REQUEST)?;
    let port = authority.port_u16().ok_or(LocalReply::BAD_REQUEST)?;
    let t = snap
        .inbound
        .target(Some(port))
        .filter(|t| t.port == port)
        .ok_or(LocalReply::NO_ROUTE)?;
    Ok(Target::single(
        Endpoints::Shared(std::slice::from_ref(&t.app)),
        Protocol::Tcp,
        Some(t.port),
    ))
}

/// Plans `CONNECT host:port` (HTTP/1.1 only): the service named by the host at that port, or
/// with ALLOW_ANY the named address itself.
pub fn connect<'s, B>(snap: &'s Snapshot, req: &Request<B>) -> Result<Target<'s>, LocalReply> {
    if req.version() != Version::HTTP_11 {
        return Err(LocalReply::NOT_ALLOWED);
    }
    let authority = req.uri().authority().ok_or(LocalReply::BAD_REQUEST)?;
    let port = authority.port_u16().ok_or(LocalReply::BAD_REQUEST)?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    match snap.outbound.cluster_for_host(&host) {
        Some(c) => {
            let cp = c.port(Some(port)).ok_or(LocalReply::NO_HEALTHY)?;
            Ok(Target::service(c, cp))
        }
        None if snap.outbound.registry_only => Err(LocalReply::NO_ROUTE),
        None => Ok(passthrough(host, port)),
    }
}
