//! Accepting connections: the accept loop, the original destination, protocol detection as
//! the port declares it, the listener's own connection steps, then HTTP serving or the TCP
//! relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halyard_xds::{MtlsMode, Protocol};
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};

use super::{inbound, outbound, server};
use crate::ctx::{ConnInfo, Flags, ListenerKind};
use crate::detect::{detect, Detected};
use crate::exec::{self, tcp::TcpLog};
use crate::io::abort::Abort;
use crate::io::DownstreamIo;
use crate::plan;
use crate::shared::Shared;
use crate::snapshot::Snapshot;

/// Wait for the first bytes on a port declared HTTP (no fallback to TCP is needed there).
const HINTED_DETECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads `SO_ORIGINAL_DST`; `None` when the connection was not redirected to us.
pub fn original_dst(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    addr.ok()
        .and_then(|a| a.as_socket())
        .filter(|a| *a != local)
}

/// Accepts connections until shutdown; each is served on its own task.
pub async fn run(shared: Arc<Shared>, kind: ListenerKind, listener: TcpListener) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(listener = kind.as_str(), error = %e, "listener has no local address");
            return;
        }
    };
    let metrics = shared.metrics.listener(kind);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(listener = kind.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let max = shared.live.load().settings.max_connections;
        if metrics.connections_active.get() as usize >= max {
            shared.metrics.connections_rejected.inc();
            continue;
        }
        metrics.connections_total.inc();
        metrics.connections_active.inc();
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            connection(&shared2, kind, stream, peer, local).await;
            shared2.metrics.listener(kind).connections_active.dec();
        });
    }
    tracing::debug!(listener = kind.as_str(), "stopped accepting");
}

/// The protocol a port declares, from the original destination.
fn hint(snap: &Snapshot, kind: ListenerKind, orig: Option<SocketAddr>) -> Protocol {
    match kind {
        ListenerKind::Outbound => orig
            .and_then(|o| snap.outbound.by_addr(o))
            .map(|(_, p)| p.protocol),
        ListenerKind::Inbound => snap
            .inbound
            .target(orig.map(|o| o.port()))
            .map(|t| t.protocol),
    }
    .unwrap_or(Protocol::Auto)
}

/// Detects the protocol as a port's declaration allows: declared TCP is not peeked at
/// (unless mesh TLS may arrive there), declared HTTP waits longer for the client to speak.
pub(super) async fn detect_for<I: AsyncRead + Unpin>(
    io: &mut I,
    hint: Protocol,
    peek_tls: bool,
    timeout: Duration,
) -> std::io::Result<(Detected, Bytes)> {
    match hint {
        Protocol::Tcp if !peek_tls => Ok((Detected::Tcp, Bytes::new())),
        Protocol::Tcp => {
            // Only mesh TLS is looked for: bytes that look like HTTP are still opaque here.
            let (d, b) = detect(io, timeout).await?;
            let d = if d == Detected::Tls { d } else { Detected::Tcp };
            Ok((d, b))
        }
        Protocol::Auto => detect(io, timeout).await,
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => {
            let (d, b) = detect(io, HINTED_DETECTION_TIMEOUT).await?;
            // A TLS handshake stays TLS; anything else on an HTTP port is served as HTTP.
            let d = match d {
                Detected::Http2 | Detected::Tls => d,
                _ => Detected::Http1,
            };
            Ok((d, b))
        }
    }
}

async fn connection(
    shared: &Arc<Shared>,
    kind: ListenerKind,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let orig_dst = original_dst(&stream, local);
    let snap = shared.live.load();
    let mut info = ConnInfo::new(kind, peer, orig_dst);
    info.local = Some(local);
    let orig_port = orig_dst.map(|d| d.port());
    let mode = snap.inbound.mtls(orig_port);
    // Mesh TLS may arrive on any inbound port that is not DISABLE; a STRICT port waits
    // as long as a declared HTTP port for the client's first bytes (it must speak first).
    let peek_tls = kind == ListenerKind::Inbound && mode != MtlsMode::Disable;
    let timeout = if kind == ListenerKind::Inbound && mode == MtlsMode::Strict {
        HINTED_DETECTION_TIMEOUT
    } else {
        snap.settings.detection_timeout
    };
    let detected = detect_for(&mut stream, hint(&snap, kind, orig_dst), peek_tls, timeout).await;
    let (proto, prefix) = match detected {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "read failed during protocol detection");
            return;
        }
    };
    let downstream = match kind {
        ListenerKind::Outbound => {
            let io = outbound::downstream(&mut info, stream, proto == Detected::Tls, prefix).await;
            io.map(|io| (proto, io))
        }
        ListenerKind::Inbound => {
            info.dst_port = orig_port;
            inbound::security(shared, &snap, &mut info, stream, proto, prefix).await
        }
    };
    let Some((proto, io)) = downstream else {
        return;
    };
    let info = Arc::new(info);
    match proto {
        Detected::Http1 | Detected::Http2 => {
            let limits = server::Limits {
                max_headers: snap.settings.max_request_headers,
                idle_timeout: snap.settings.downstream_idle_timeout,
            };
            drop(snap);
            server::serve(shared.clone(), info, io, proto == Detected::Http2, limits).await;
        }
        Detected::Tls | Detected::Tcp => tcp(shared, &snap, &info, io).await,
    }
}

/// An opaque TCP connection: planned by its destination (and server name), authorized on
/// the inbound side with the rules that need only L4 attributes (and watched while open, so
/// that a tightened policy closes it), then relayed.
async fn tcp(shared: &Shared, snap: &Snapshot, info: &Arc<ConnInfo>, io: DownstreamIo) {
    let log = TcpLog::begin();
    let target = match plan::tcp(snap, info, fastrand::u64(..)) {
        Ok(t) => t,
        Err(local) => return log.refused(shared, snap, info, local.flags),
    };
    let mut watch = None;
    if info.listener == ListenerKind::Inbound {
        let port = info.dst_port.or(target.service_port).unwrap_or(0);
        if !inbound::tcp_allowed(shared, snap, info, port) {
            // Reset before a byte reaches the app: the caller's sidecar passes the reset on,
            // and the caller sees a refusal, not an empty answer.
            io.abort();
            return log.refused(shared, snap, info, Flags::RBAC);
        }
        let conns = &shared.open_conns;
        watch = Some(conns.register(info.clone(), port, None, snap.generation));
    }
    exec::tcp::carry(shared, snap, info, target, io, log, watch.as_ref()).await;
}
