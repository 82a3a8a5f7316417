//! Accept loops and per-connection handling: original destination, protocol detection, then
//! HTTP serving or an opaque TCP relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use halyard_xds::{LoadBalancer, Protocol};
use tokio::net::{TcpListener, TcpStream};

use crate::detect::{detect, Detected};
use crate::http::proxy::ConnInfo;
use crate::io::PrefixedIo;
use crate::shared::Shared;
use crate::snapshot::{defaults, Snapshot};
use crate::telemetry::access_log::TcpRecord;
use crate::telemetry::flags::Flags;
use crate::telemetry::ListenerKind;
use crate::upstream::{pick, Upstream, UpstreamKey};

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
        ListenerKind::Outbound => orig.and_then(|o| snap.by_addr(o)).map(|(_, p)| p.protocol),
        ListenerKind::Inbound => snap
            .inbound_target(orig.map(|o| o.port()))
            .map(|t| t.protocol),
    }
    .unwrap_or(Protocol::Auto)
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
    let max_headers = snap.settings.max_request_headers;
    let idle_timeout = snap.settings.downstream_idle_timeout;
    let detected = match hint(&snap, kind, orig_dst) {
        Protocol::Tcp => Ok((Detected::Tcp, Bytes::new())),
        Protocol::Auto => detect(&mut stream, snap.settings.detection_timeout).await,
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => {
            detect(&mut stream, HINTED_DETECTION_TIMEOUT)
                .await
                .map(|(d, b)| {
                    (
                        if d == Detected::Http2 {
                            d
                        } else {
                            Detected::Http1
                        },
                        b,
                    )
                })
        }
    };
    let (proto, prefix) = match detected {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "read failed during protocol detection");
            return;
        }
    };
    let info = Arc::new(ConnInfo::new(kind, peer, orig_dst));
    let io = PrefixedIo::new(prefix, stream);
    match proto {
        Detected::Http1 | Detected::Http2 => {
            drop(snap);
            let limits = crate::http::server::Limits {
                max_headers,
                idle_timeout,
            };
            crate::http::server::serve(shared.clone(), info, io, proto == Detected::Http2, limits)
                .await;
        }
        Detected::Tls | Detected::Tcp => forward_tcp(shared, &snap, &info, io).await,
    }
}

/// Relays an opaque TCP connection to its destination.
async fn forward_tcp(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    info: &ConnInfo,
    mut io: PrefixedIo<TcpStream>,
) {
    let start_wall = SystemTime::now();
    let start = Instant::now();
    let passthrough;
    let (endpoints, lb, rr, idle, cluster): (&[Arc<Upstream>], _, _, _, Option<Arc<str>>) =
        match info.listener {
            ListenerKind::Inbound => match snap.inbound_target(info.orig_dst.map(|d| d.port())) {
                Some(t) => (
                    std::slice::from_ref(&t.app),
                    LoadBalancer::RoundRobin,
                    &shared.inbound_rr,
                    defaults::TCP_IDLE_TIMEOUT,
                    None,
                ),
                None => {
                    return log_tcp(
                        shared,
                        snap,
                        info,
                        start_wall,
                        start,
                        None,
                        None,
                        Default::default(),
                        Flags::NR,
                    )
                }
            },
            ListenerKind::Outbound => match info.orig_dst.map(|d| (d, snap.by_addr(d))) {
                Some((_, Some((c, p)))) => (
                    &p.endpoints[..],
                    c.lb,
                    &c.rr,
                    c.tcp_idle_timeout,
                    Some(c.name.clone()),
                ),
                Some((dst, None)) if !snap.registry_only => {
                    passthrough = [Arc::new(Upstream::new(UpstreamKey {
                        host: dst.ip().to_string(),
                        port: dst.port(),
                        connect_timeout: defaults::CONNECT_TIMEOUT,
                        idle_timeout: defaults::IDLE_TIMEOUT,
                    }))];
                    (
                        &passthrough[..],
                        LoadBalancer::RoundRobin,
                        &shared.inbound_rr,
                        defaults::TCP_IDLE_TIMEOUT,
                        Some("PassthroughCluster".into()),
                    )
                }
                _ => {
                    return log_tcp(
                        shared,
                        snap,
                        info,
                        start_wall,
                        start,
                        None,
                        None,
                        Default::default(),
                        Flags::NR,
                    )
                }
            },
        };
    let mut failed: Option<Arc<Upstream>> = None;
    let mut flags = Flags::default();
    for attempt in 1..=3 {
        let Some(up) = pick(endpoints, lb, rr, failed.as_ref()) else {
            flags.set(Flags::UH);
            break;
        };
        let _in_flight = up.begin();
        match up.connect_tcp().await {
            Ok(mut server) => {
                let (moved, f) = match crate::tcp::relay(&mut io, &mut server, idle).await {
                    Ok(m) => (m, Flags::default()),
                    Err(crate::tcp::RelayError::Idle(m)) => (m, Flags::IDLE),
                    Err(crate::tcp::RelayError::Io { moved, source }) => {
                        tracing::debug!(error = %source, "TCP relay ended with error");
                        (moved, Flags::default())
                    }
                };
                return log_tcp(
                    shared,
                    snap,
                    info,
                    start_wall,
                    start,
                    Some(&up.authority),
                    cluster.as_deref(),
                    moved,
                    f,
                );
            }
            Err(e) => {
                shared.metrics.connect_failures.inc();
                tracing::debug!(upstream = %up.authority, error = %e, attempt, "TCP upstream connect failed");
                flags.set(Flags::UF);
                if attempt > 1 {
                    flags.set(Flags::URX);
                }
                failed = Some(up.clone());
            }
        }
    }
    let upstream = failed.as_ref().map(|u| u.authority.clone());
    log_tcp(
        shared,
        snap,
        info,
        start_wall,
        start,
        upstream.as_deref(),
        cluster.as_deref(),
        Default::default(),
        flags,
    )
}

#[allow(clippy::too_many_arguments)]
fn log_tcp(
    shared: &Shared,
    snap: &Snapshot,
    info: &ConnInfo,
    start_wall: SystemTime,
    start: Instant,
    upstream: Option<&str>,
    cluster: Option<&str>,
    moved: crate::tcp::Transferred,
    flags: Flags,
) {
    if !snap.settings.access_log {
        return;
    }
    if let Some(log) = &shared.access_log {
        let rec = TcpRecord {
            listener: info.listener,
            start_wall,
            duration: start.elapsed(),
            peer: info.peer,
            upstream,
            cluster,
            received: moved.client_to_server,
            sent: moved.server_to_client,
            flags,
        };
        log.write(rec.line());
    }
}
