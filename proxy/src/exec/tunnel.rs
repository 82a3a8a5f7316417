//! Tunnels: a downstream connection spliced with an upstream one once both are upgraded
//! (WebSocket through an upstream that switched protocols, or CONNECT to an opened
//! connection); the request's record ends with the tunnel.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::connect;
use super::relay::{self, RelayError};
use crate::ctx::{Flags, LocalReply};
use crate::io::body::{OnFinish, ProxyBody};
use crate::io::UpstreamIo;
use crate::plan::Target;
use crate::request::RequestCtx;
use crate::shared::Shared;
use crate::upstream::{ConnectError, TunnelSlot, Upstream};
use crate::watched::Registration;

/// Attempts to open a CONNECT tunnel (Istio's default: 2 retries).
const CONNECT_ATTEMPTS: u32 = 3;

/// A connection to splice with the downstream once it is upgraded (WebSocket, CONNECT).
pub struct Tunnel {
    pub(super) down: OnUpgrade,
    pub(super) up: TunnelEnd,
    pub(super) idle: Duration,
    /// Its stream's place on a shared connection to a sidecar, while it lives.
    pub(super) slot: Option<TunnelSlot>,
}

/// The upstream side of a tunnel.
pub(super) enum TunnelEnd {
    /// An upstream HTTP connection that switched protocols.
    Upgraded(OnUpgrade),
    /// A connection opened for CONNECT.
    Io(UpstreamIo),
}

/// `CONNECT host:port` to a planned target: opens the connection (trying other endpoints
/// when one fails) and answers 200; the bytes flow once the client's side is upgraded.
pub async fn connect(
    shared: &Shared,
    target: Target<'_>,
    req: &mut Request<Incoming>,
    ex: &mut RequestCtx,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, LocalReply> {
    ex.service_port = target.service_port;
    if let Some(c) = target.cluster {
        ex.cluster = Some(c.name.clone());
    } else if target.is_passthrough() {
        ex.cluster = Some("PassthroughCluster".into());
    }
    if target.endpoints.as_slice().iter().any(|u| u.mtls()) {
        return connect_over_mesh(shared, target, req, ex, tunnel).await;
    }
    let opened = connect::open(shared, &target, CONNECT_ATTEMPTS, |up| {
        ex.upstream = Some(up.authority.clone());
        ex.upstream_identity = up.identity.clone();
    })
    .await;
    let c = opened.map_err(|failed| failure_reply(ex, &failed))?;
    ex.guards.in_flight = Some(c.in_flight);
    *tunnel = Some(Tunnel {
        down: hyper::upgrade::on(req),
        up: TunnelEnd::Io(c.io),
        idle: target.idle,
        slot: None,
    });
    Ok(Response::new(ProxyBody::Empty))
}

/// A tunnel to a mesh endpoint: `CONNECT` to its sidecar on a pooled mutual-TLS connection
/// (HTTP/2), so the destination's policy answers before the client is told anything — a
/// refusal there is a 403 here, not a 200 and then a closed connection.
async fn connect_over_mesh(
    shared: &Shared,
    target: Target<'_>,
    req: &mut Request<Incoming>,
    ex: &mut RequestCtx,
    tunnel: &mut Option<Tunnel>,
) -> Result<Response<ProxyBody>, LocalReply> {
    let on_pick = |up: &Arc<Upstream>| {
        ex.upstream = Some(up.authority.clone());
        ex.upstream_identity = up.identity.clone();
    };
    let opened =
        connect::open_with(shared, &target, CONNECT_ATTEMPTS, on_pick, &SidecarTunnel).await;
    let c = opened.map_err(|failed| failure_reply(ex, &failed))?;
    let (mut answer, slot) = c.io;
    match answer.status() {
        s if s.is_success() => {}
        // The destination's authorization policy refused the tunnel.
        StatusCode::FORBIDDEN => return Err(LocalReply::FORBIDDEN),
        s => {
            tracing::debug!(status = %s, upstream = %c.up.authority, "the sidecar refused the tunnel");
            return Err(LocalReply::new(
                s,
                Flags::UF,
                "the destination refused the tunnel",
            ));
        }
    }
    ex.guards.in_flight = Some(c.in_flight);
    *tunnel = Some(Tunnel {
        down: hyper::upgrade::on(req),
        up: TunnelEnd::Upgraded(hyper::upgrade::on(&mut answer)),
        idle: target.idle,
        slot: Some(slot),
    });
    Ok(Response::new(ProxyBody::Empty))
}

/// A tunnel asked of an endpoint's sidecar: its answer, whatever the status.
struct SidecarTunnel;

impl connect::Opener for SidecarTunnel {
    type Opened = (Response<Incoming>, TunnelSlot);

    async fn open(
        &self,
        shared: &Shared,
        up: &Arc<Upstream>,
    ) -> Result<Self::Opened, ConnectError> {
        let (mut sender, slot) = up.checkout_tunnel(shared.mtls.as_deref()).await?;
        let answer = sender
            .send_request(tunnel_request(up, Version::HTTP_2)?)
            .await
            .map_err(ConnectError::Handshake)?;
        Ok((answer, slot))
    }
}

/// `CONNECT <endpoint>:<port>` for an endpoint's sidecar: the port names the workload port.
fn tunnel_request(up: &Upstream, version: Version) -> Result<Request<ProxyBody>, ConnectError> {
    let key = up.key();
    let authority = if key.host.contains(':') {
        format!("[{}]:{}", key.host, key.port)
    } else {
        format!("{}:{}", key.host, key.port)
    };
    let mut req = Request::new(ProxyBody::Empty);
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = version;
    *req.uri_mut() = authority.parse().map_err(|_| {
        ConnectError::Resolve(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "endpoint address is not a valid authority",
        ))
    })?;
    Ok(req)
}

/// The reply for a tunnel that could not be opened, with the TLS reason noted.
fn failure_reply(ex: &mut RequestCtx, failed: &connect::ConnectFailed) -> LocalReply {
    if failed.tls_reason.is_some() {
        ex.transport_failure = failed.tls_reason;
    }
    if failed.no_healthy {
        LocalReply::NO_HEALTHY
    } else {
        LocalReply::connect_failed(failed.failures > 1)
    }
}

/// Relays a tunnel to its end (or until `watch` says it must close), then records the
/// exchange with the bytes it carried.
pub async fn run(t: Tunnel, mut ex: RequestCtx, watch: Option<Registration>) {
    let stop = watch.as_ref().map(|w| w.watched().closed());
    // Given back once the tunnel is done, not before.
    let _slot = t.slot;
    let result = match t.up {
        TunnelEnd::Upgraded(up) => match tokio::try_join!(t.down, up) {
            Ok((d, u)) => {
                let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                Some(relay::relay(&mut d, &mut u, t.idle, stop).await)
            }
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                None
            }
        },
        TunnelEnd::Io(mut up) => match t.down.await {
            Ok(d) => {
                let mut d = TokioIo::new(d);
                Some(relay::relay(&mut d, &mut up, t.idle, stop).await)
            }
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                None
            }
        },
    };
    let moved = match result {
        Some(Ok(m)) => m,
        Some(Err(RelayError::Idle(m))) => {
            ex.flags.set(Flags::IDLE);
            m
        }
        Some(Err(RelayError::Stopped(m))) => {
            if let Some(why) = watch.as_ref().and_then(|w| w.watched().why()) {
                ex.flags.set(why.flag());
            }
            m
        }
        Some(Err(e @ RelayError::Io { .. })) => {
            tracing::debug!(error = %e, "tunnel ended with error");
            e.moved()
        }
        None => {
            ex.flags.set(Flags::DC);
            Default::default()
        }
    };
    ex.request_bytes = Some(Arc::new(AtomicU64::new(moved.client_to_server)));
    ex.finish(true, moved.server_to_client);
}
