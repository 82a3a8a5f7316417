//! Tunnels: a downstream connection spliced with an upstream one once both are upgraded
//! (WebSocket through an upstream that switched protocols, or CONNECT to an opened
//! connection); the request's record ends with the tunnel.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
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
use crate::watched::Registration;

/// Attempts to open a CONNECT tunnel (Istio's default: 2 retries).
const CONNECT_ATTEMPTS: u32 = 3;

/// A connection to splice with the downstream once it is upgraded (WebSocket, CONNECT).
pub struct Tunnel {
    pub(super) down: OnUpgrade,
    pub(super) up: TunnelEnd,
    pub(super) idle: Duration,
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
    let opened = connect::open(shared, &target, CONNECT_ATTEMPTS, |up| {
        ex.upstream = Some(up.authority.clone());
        ex.upstream_identity = up.identity.clone();
    })
    .await;
    let c = match opened {
        Ok(c) => c,
        Err(failed) => {
            if failed.tls_reason.is_some() {
                ex.transport_failure = failed.tls_reason;
            }
            return Err(if failed.no_healthy {
                LocalReply::NO_HEALTHY
            } else {
                LocalReply::connect_failed(failed.failures > 1)
            });
        }
    };
    ex.guards.in_flight = Some(c.in_flight);
    *tunnel = Some(Tunnel {
        down: hyper::upgrade::on(req),
        up: TunnelEnd::Io(c.io),
        idle: target.idle,
    });
    Ok(Response::new(ProxyBody::Empty))
}

/// Relays a tunnel to its end (or until `watch` says it must close), then records the
/// exchange with the bytes it carried.
pub async fn run(t: Tunnel, mut ex: RequestCtx, watch: Option<Registration>) {
    let stop = watch.as_ref().map(|w| w.watched().closed());
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
        Some(Err(RelayError::Io { moved, source })) => {
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
